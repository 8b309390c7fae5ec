//! The xenbus side of a VBD: device states (`io/xenbus.h`), the store keys each end of the
//! block handshake writes (`io/blkif.h`'s "Backend XenBus Nodes"/"Frontend XenBus Nodes"),
//! and Linux's virtual device numbers (`xvda` = 51712).

/// `enum xenbus_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    InitWait = 2,
    Initialised = 3,
    Connected = 4,
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, in number order.
    pub const ALL: [XenbusState; 9] = [
        Self::Unknown,
        Self::Initialising,
        Self::InitWait,
        Self::Initialised,
        Self::Connected,
        Self::Closing,
        Self::Closed,
        Self::Reconfiguring,
        Self::Reconfigured,
    ];

    /// The state a store value names (decimal, as written to `state`); `None` for anything
    /// else.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let n = parse_u32(value)?;
        Self::ALL.get(n as usize).copied()
    }

    /// The state's number.
    pub fn raw(self) -> u32 {
        self as u32
    }
}

/// A decimal `u32` as the store holds numbers (no sign, no spaces, a trailing NUL allowed).
pub fn parse_u32(value: &[u8]) -> Option<u32> {
    let value = value.strip_suffix(b"\0").unwrap_or(value);
    if value.is_empty() || value.len() > 10 {
        return None;
    }
    let mut n = 0u64;
    for &c in value {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    u32::try_from(n).ok()
}

/// Keys the backend writes under `backend/vbd/<frontend domid>/<devid>/`.
pub mod backend_keys {
    pub const STATE: &str = "state";
    pub const FRONTEND: &str = "frontend";
    pub const FRONTEND_ID: &str = "frontend-id";
    pub const ONLINE: &str = "online";
    pub const SECTORS: &str = "sectors";
    pub const SECTOR_SIZE: &str = "sector-size";
    pub const INFO: &str = "info";
    pub const MODE: &str = "mode";
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// The backend can keep the frontend's grants mapped across requests.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
}

/// Keys the frontend writes under `device/vbd/<devid>/`.
pub mod frontend_keys {
    pub const STATE: &str = "state";
    pub const BACKEND: &str = "backend";
    pub const BACKEND_ID: &str = "backend-id";
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
    pub const DEVICE_TYPE: &str = "device-type";
    pub const RING_REF: &str = "ring-ref";
    pub const EVENT_CHANNEL: &str = "event-channel";
    pub const PROTOCOL: &str = "protocol";
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// The frontend reuses the same grants for all its requests (and lets the backend map
    /// them writable even for writes to the disk).
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
}

/// `XEN_IO_PROTO_ABI_X86_64` (`io/protocols.h`): the only request layout served.
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

/// Linux's number for `xvd<letter>` (major 202, 16 minors per disk): `xvda` is 51712.
pub fn xvd_number(index: u8) -> Option<u32> {
    (index < 16).then(|| (202 << 8) | (u32::from(index) << 4))
}

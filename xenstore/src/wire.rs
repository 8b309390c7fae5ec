//! The store's wire format (io/xs_wire.h): a 16-byte header (`type`, `req_id`, `tx_id`,
//! `len`, little-endian u32s) followed by `len` bytes of payload (at most
//! [`PAYLOAD_MAX`]), usually NUL-terminated strings; errors travel as [`MsgType::Error`]
//! with the errno's name (`"EINVAL\0"`); the ring page's layout and its index arithmetic.
//!
//! Used by both ends: domain 0's server reassembles requests with [`Reader`] and encodes
//! replies with [`encode`]; a guest's client encodes requests and reassembles replies the
//! same way. Nothing here trusts a length: a header whose `len` exceeds [`PAYLOAD_MAX`] is
//! a protocol error, and argument splitting refuses strings without their NUL.

use alloc::vec::Vec;

/// Bytes of a message header.
pub const HEADER_SIZE: usize = 16;
/// The most payload one message may carry (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// The longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// The longest path relative to a domain's home (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;

/// `XENSTORE_RING_SIZE`: bytes of each of the request and response rings.
pub const RING_SIZE: u32 = 1024;
/// Offsets in the ring page (`struct xenstore_domain_interface`).
pub const REQ_OFFSET: usize = 0;
pub const RSP_OFFSET: usize = 1024;
pub const REQ_CONS_OFFSET: usize = 2048;
pub const REQ_PROD_OFFSET: usize = 2052;
pub const RSP_CONS_OFFSET: usize = 2056;
pub const RSP_PROD_OFFSET: usize = 2060;
pub const SERVER_FEATURES_OFFSET: usize = 2064;
pub const CONNECTION_OFFSET: usize = 2068;
pub const ERROR_OFFSET: usize = 2072;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the server reports a broken connection in `error`.
pub const SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_ERROR_*`.
pub const ERROR_NONE: u32 = 0;
pub const ERROR_COMM: u32 = 1;
pub const ERROR_RINGIDX: u32 = 2;
pub const ERROR_PROTO: u32 = 3;

/// `MASK_XENSTORE_IDX`: where index `idx` falls in a ring.
pub const fn ring_slot(idx: u32) -> usize {
    (idx & (RING_SIZE - 1)) as usize
}

/// Bytes waiting between a consumer and a producer index, or `None` when the producer is
/// more than a ring ahead (indices the other end corrupted: a protocol error).
pub const fn ring_pending(cons: u32, prod: u32) -> Option<u32> {
    let n = prod.wrapping_sub(cons);
    if n > RING_SIZE { None } else { Some(n) }
}

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    // 20 was XS_RESTRICT, removed.
    ResetWatches = 21,
    DirectoryPart = 22,
}

/// `XS_TYPE_COUNT`.
pub const TYPE_COUNT: u32 = 23;

impl MsgType {
    /// The type numbered `raw`, if Xen defines one.
    pub const fn from_raw(raw: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match raw {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// The errors a store answers with (`xsd_errors`, in Xen's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    Einval,
    Eacces,
    Eexist,
    Eisdir,
    Enoent,
    Enomem,
    Enospc,
    Eio,
    Enotempty,
    Enosys,
    Erofs,
    Ebusy,
    Eagain,
    Eisconn,
    E2big,
    Eperm,
}

impl XsError {
    /// Every error, in `xsd_errors`' order.
    pub const ALL: [XsError; 16] = {
        use XsError::*;
        [Einval, Eacces, Eexist, Eisdir, Enoent, Enomem, Enospc, Eio, Enotempty, Enosys, Erofs, Ebusy, Eagain, Eisconn, E2big, Eperm]
    };

    /// The name sent on the wire (without its NUL).
    pub const fn as_str(self) -> &'static str {
        use XsError::*;
        match self {
            Einval => "EINVAL",
            Eacces => "EACCES",
            Eexist => "EEXIST",
            Eisdir => "EISDIR",
            Enoent => "ENOENT",
            Enomem => "ENOMEM",
            Enospc => "ENOSPC",
            Eio => "EIO",
            Enotempty => "ENOTEMPTY",
            Enosys => "ENOSYS",
            Erofs => "EROFS",
            Ebusy => "EBUSY",
            Eagain => "EAGAIN",
            Eisconn => "EISCONN",
            E2big => "E2BIG",
            Eperm => "EPERM",
        }
    }

    /// The error an error reply's payload names (with or without its NUL).
    pub fn from_payload(payload: &[u8]) -> Option<XsError> {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        XsError::ALL.into_iter().find(|e| e.as_str().as_bytes() == name)
    }
}

/// A message header (`struct xsd_sockmsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The raw type (a client may send any number; [`MsgType::from_raw`] decides).
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

/// Why bytes are not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// `len` is beyond [`PAYLOAD_MAX`]: the connection is broken.
    TooLong(u32),
    /// Fewer bytes than a header.
    Short,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Result<Header, WireError> {
        let word = |i: usize| -> Result<u32, WireError> {
            let b = bytes.get(i * 4..i * 4 + 4).ok_or(WireError::Short)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let header = Header { ty: word(0)?, req_id: word(1)?, tx_id: word(2)?, len: word(3)? };
        if header.len as usize > PAYLOAD_MAX {
            return Err(WireError::TooLong(header.len));
        }
        Ok(header)
    }

    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        for (i, w) in [self.ty, self.req_id, self.tx_id, self.len].into_iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// One whole message: its header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Message {
    /// The message type, if Xen defines it.
    pub fn ty(&self) -> Option<MsgType> {
        MsgType::from_raw(self.header.ty)
    }
}

/// Encodes a message of type `ty` with `payload` (at most [`PAYLOAD_MAX`] bytes: the
/// callers' payloads are bounded by construction; a longer one is cut, never sent whole).
pub fn encode(ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(PAYLOAD_MAX)];
    let header = Header { ty: ty as u32, req_id, tx_id, len: payload.len() as u32 };
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a payload into exactly `N` NUL-terminated strings (the last may be followed by
/// nothing else); `None` when a NUL is missing or bytes are left over.
pub fn split_args<const N: usize>(payload: &[u8]) -> Option<[&[u8]; N]> {
    let mut out = [&payload[..0]; N];
    let mut rest = payload;
    for slot in out.iter_mut() {
        let nul = rest.iter().position(|&b| b == 0)?;
        *slot = &rest[..nul];
        rest = &rest[nul + 1..];
    }
    rest.is_empty().then_some(out)
}

/// The single NUL-terminated string of a payload. Xen's `onearg` also accepts a payload
/// with no NUL at all when the message has exactly the string: not here (a missing NUL is
/// `EINVAL`, which no well-formed client sends).
pub fn one_arg(payload: &[u8]) -> Option<&[u8]> {
    split_args::<1>(payload).map(|[a]| a)
}

/// Every NUL-terminated string of a payload (`None` when the last has no NUL).
pub fn all_args(payload: &[u8]) -> Option<Vec<&[u8]>> {
    if payload.is_empty() {
        return Some(Vec::new());
    }
    if payload.last() != Some(&0) {
        return None;
    }
    Some(payload[..payload.len() - 1].split(|&b| b == 0).collect())
}

/// Reassembles messages from a byte stream (a ring's bytes as they arrive): a header,
/// then its payload. Holds at most one message's bytes.
#[derive(Debug, Default)]
pub struct Reader {
    header: [u8; HEADER_SIZE],
    have_header: usize,
    parsed: Option<Header>,
    payload: Vec<u8>,
}

/// What [`Reader::feed`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Took this many bytes; no message is complete yet.
    Partial(usize),
    /// Took this many bytes and completed a message.
    Message(usize, Message),
}

impl Reader {
    /// Takes bytes from `bytes` until a message is complete or `bytes` is spent.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Fed, WireError> {
        let mut taken = 0;
        if self.parsed.is_none() {
            let n = (HEADER_SIZE - self.have_header).min(bytes.len());
            self.header[self.have_header..self.have_header + n].copy_from_slice(&bytes[..n]);
            self.have_header += n;
            taken += n;
            if self.have_header < HEADER_SIZE {
                return Ok(Fed::Partial(taken));
            }
            let header = Header::parse(&self.header)?;
            self.parsed = Some(header);
            self.payload = Vec::with_capacity(header.len as usize);
        }
        let header = self.parsed.expect("parsed above");
        let want = header.len as usize - self.payload.len();
        let n = want.min(bytes.len() - taken);
        self.payload.extend_from_slice(&bytes[taken..taken + n]);
        taken += n;
        if self.payload.len() < header.len as usize {
            return Ok(Fed::Partial(taken));
        }
        self.parsed = None;
        self.have_header = 0;
        Ok(Fed::Message(taken, Message { header, payload: core::mem::take(&mut self.payload) }))
    }

    /// Bytes of a message taken so far (0 between messages).
    pub fn buffered(&self) -> usize {
        self.have_header + self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_xs_wire() {
        assert_eq!(MsgType::from_raw(2), Some(MsgType::Read));
        assert_eq!(MsgType::from_raw(17), Some(MsgType::IsDomainIntroduced));
        assert_eq!(MsgType::from_raw(20), None, "XS_RESTRICT was removed");
        assert_eq!(MsgType::from_raw(21), Some(MsgType::ResetWatches));
        assert_eq!(MsgType::from_raw(22), Some(MsgType::DirectoryPart));
        assert_eq!(MsgType::from_raw(TYPE_COUNT), None);
        assert_eq!(MsgType::from_raw(0xffff), None);
        for raw in 0..TYPE_COUNT {
            if let Some(t) = MsgType::from_raw(raw) {
                assert_eq!(t as u32, raw);
            }
        }
    }

    #[test]
    fn errors_are_named_as_xen_names_them() {
        assert_eq!(XsError::ALL[0].as_str(), "EINVAL");
        assert_eq!(XsError::ALL[12].as_str(), "EAGAIN");
        assert_eq!(XsError::ALL[15].as_str(), "EPERM");
        assert_eq!(XsError::from_payload(b"ENOENT\0"), Some(XsError::Enoent));
        assert_eq!(XsError::from_payload(b"EBOGUS\0"), None);
    }

    #[test]
    fn headers_round_trip_and_long_ones_are_refused() {
        let h = Header { ty: 11, req_id: 7, tx_id: 3, len: 12 };
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h));
        let long = Header { len: PAYLOAD_MAX as u32 + 1, ..h };
        assert_eq!(Header::parse(&long.to_bytes()), Err(WireError::TooLong(4097)));
        assert_eq!(Header::parse(&[0; 15]), Err(WireError::Short));
    }

    #[test]
    fn arguments_need_their_nul() {
        assert_eq!(split_args::<2>(b"a\0bc\0"), Some([&b"a"[..], &b"bc"[..]]));
        assert_eq!(split_args::<2>(b"a\0bc"), None);
        assert_eq!(split_args::<1>(b"a\0b\0"), None, "left over");
        assert_eq!(one_arg(b"\0"), Some(&b""[..]));
        assert_eq!(all_args(b"r0\0w1\0"), Some(alloc::vec![&b"r0"[..], &b"w1"[..]]));
        assert_eq!(all_args(b"r0\0w1"), None);
    }

    #[test]
    fn the_reader_reassembles_byte_by_byte() {
        let bytes = encode(MsgType::Write, 9, 0, b"a\0value");
        let mut reader = Reader::default();
        let mut got = None;
        for (i, b) in bytes.iter().enumerate() {
            match reader.feed(core::slice::from_ref(b)).unwrap() {
                Fed::Partial(1) => assert!(i < bytes.len() - 1),
                Fed::Message(1, m) => got = Some(m),
                other => panic!("{other:?}"),
            }
        }
        let m = got.unwrap();
        assert_eq!(m.ty(), Some(MsgType::Write));
        assert_eq!(m.payload, b"a\0value");
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn ring_indices_more_than_a_ring_apart_are_refused() {
        assert_eq!(ring_pending(5, 5), Some(0));
        assert_eq!(ring_pending(u32::MAX, 3), Some(4));
        assert_eq!(ring_pending(0, RING_SIZE), Some(RING_SIZE));
        assert_eq!(ring_pending(0, RING_SIZE + 1), None);
        assert_eq!(ring_pending(10, 9), None);
        assert_eq!(ring_slot(1025), 1);
    }
}

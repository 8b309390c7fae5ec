//! One domain's grant table: its shared frames (and, in version 2, status frames), its
//! version, and its *active entries*, the grants another domain is using right now.
//!
//! The hypervisor keeps one [`GrantTable`] per domain behind a lock and calls it with the
//! lock held: `setup_table` grows it ([`GrantTable::grow`]); a grantee's map or copy pins an
//! entry ([`GrantTable::pin`]) and unpins it when done ([`GrantTable::unpin`]);
//! `set_version` and `swap_grant_ref` change it. The hypervisor takes (and drops) the frame
//! references that go with each pin itself, under the same lock, and allocates and frees
//! the frames this table names. Nothing here allocates a frame, touches a reference count
//! or holds a pointer into guest memory.
//!
//! # The pin protocol (Xen's `_set_status_v1`/`_v2`, `gnttab_clear_flags`)
//! The first pin of an entry checks that the granter permits access (`GTF_permit_access`,
//! not a sub-page grant for a map) to this grantee and, for a writable pin, not read-only;
//! and marks the entry `GTF_reading` (and `GTF_writing`). In version 1 the check and the
//! mark are one compare-and-swap of the entry's flags and domid, retried at most
//! [`STATUS_RETRIES`] times when the granter keeps changing the word (a guest must not be
//! able to hold the hypervisor in a loop); in version 2 the mark goes into the status
//! entry first, then the entry is read again and the mark undone if the grant changed in
//! between. From then on the active entry holds the frame the grant named: the granter
//! changing its entry no longer changes what is mapped. Later pins by the same grantee
//! check only the active entry (and, for the first writable one, the read-only flag). The
//! last writable unpin clears `GTF_writing`, the last unpin `GTF_reading`, and the granter
//! may then reuse the entry. Each kind of pin (host or device, read or write) counts to at
//! most 128, as Xen's 8-bit counters with their overflow check.
//!
//! # Frames
//! Frame 0 is allocated lazily: until the guest first asks for its frames
//! (`setup_table`, `get_status_frames`), the table has one logical frame that reads as
//! zeroes (no grant can be valid there, since nothing could have written it), so a domain
//! that never uses grants costs no frame.

use alloc::vec::Vec;

use abi::errno::Errno;
use abi::grant_table::{
    offsets, GntSt, GrantEntryV1, GNTTAB_NR_RESERVED_ENTRIES, GTF_ACCEPT_TRANSFER, GTF_INVALID, GTF_PERMIT_ACCESS,
    GTF_READING, GTF_READONLY, GTF_SUB_PAGE, GTF_TRANSFER_COMMITTED, GTF_TRANSFER_COMPLETED, GTF_TRANSITIVE,
    GTF_TYPE_MASK, GTF_WRITING,
};
use abi::ids::DomId;
use mm::addr::Mfn;

use crate::shared::{entry_location, status_frames_for, status_location, Location, SharedMemory, Version, FRAME_BYTES};

/// The most shared frames a domain's table may grow to, unless its creator says otherwise
/// (libxl's default `max_grant_frames`).
pub const DEFAULT_MAX_FRAMES: u32 = 32;
/// How many times a compare-and-swap on a granter's entry is tried before the granter is
/// judged to be racing the hypervisor on purpose (Xen: five).
pub const STATUS_RETRIES: u32 = 5;
/// A pin counter at this value refuses further pins (Xen's `0x80808080` check).
const PIN_LIMIT: u8 = 0x80;

/// What a pin is for: a mapping (host or device) or a copy (counted as a host pin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `map_grant_ref`: sub-page and transitive grants are refused.
    Map,
    /// `copy`: sub-page grants allowed (their window is returned); transitive grants are
    /// refused (as Xen with `gnttab=transitive:0`).
    Copy,
}

/// Which counter a pin uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinKind {
    /// A device (bus) mapping rather than a host (CPU) mapping or copy.
    pub device: bool,
    /// Read-only.
    pub readonly: bool,
}

/// A request to pin one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinRequest {
    pub gref: u32,
    /// The domain that will use the grant.
    pub grantee: DomId,
    pub kind: PinKind,
    pub purpose: Purpose,
}

/// What a pin gives: the frame, and the window of it the grant covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    pub mfn: Mfn,
    pub start: u16,
    pub length: u16,
}

/// The pin counts of an active entry (Xen's `GNTPIN_*` fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    pub host_read: u8,
    pub host_write: u8,
    pub device_read: u8,
    pub device_write: u8,
}

impl Pins {
    fn counter(&mut self, kind: PinKind) -> &mut u8 {
        match (kind.device, kind.readonly) {
            (false, true) => &mut self.host_read,
            (false, false) => &mut self.host_write,
            (true, true) => &mut self.device_read,
            (true, false) => &mut self.device_write,
        }
    }

    /// Whether any pin is held.
    pub const fn any(&self) -> bool {
        self.host_read | self.host_write | self.device_read | self.device_write != 0
    }

    /// Whether a writable pin is held.
    pub const fn writable(&self) -> bool {
        self.host_write | self.device_write != 0
    }

    const fn near_overflow(&self) -> bool {
        (self.host_read | self.host_write | self.device_read | self.device_write) >= PIN_LIMIT
    }
}

/// A grant in use (Xen's `active_grant_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Active {
    pub gref: u32,
    /// The one domain using it.
    pub grantee: DomId,
    /// The frame it named when first pinned.
    pub mfn: Mfn,
    /// The window a sub-page grant covers (the whole frame otherwise).
    pub start: u16,
    pub length: u16,
    pub sub_page: bool,
    pub pins: Pins,
}

/// Why a table could not grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowError {
    /// Beyond the table's maximum.
    TooLarge,
    /// A frame or the frame list could not be allocated (what was allocated stays).
    NoMemory,
}

/// What a version change leaves the caller to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VersionChange {
    /// Frames the table no longer uses (the status frames, back to version 1; or status
    /// frames allocated for a change that then failed): release and free them once no CPU
    /// can hold a translation of them.
    pub release: Vec<Mfn>,
}

/// One domain's grant table.
#[derive(Debug)]
pub struct GrantTable {
    version: Version,
    /// Shared frames allocated so far (none until first asked for).
    shared: Vec<Mfn>,
    /// Version 2: status frames, as many as the shared frames need.
    status: Vec<Mfn>,
    max_frames: u32,
    /// The entries in use, sorted by reference.
    active: Vec<Active>,
    /// The domain is dying: no new pin.
    closed: bool,
}

impl GrantTable {
    /// An empty version-1 table of one logical frame that may grow to `max_frames`.
    pub const fn new(max_frames: u32) -> GrantTable {
        GrantTable { version: Version::V1, shared: Vec::new(), status: Vec::new(), max_frames, active: Vec::new(), closed: false }
    }

    pub const fn version(&self) -> Version {
        self.version
    }

    /// Shared frames, as the guest sees them (`query_size`): at least one.
    pub fn nr_frames(&self) -> u32 {
        (self.shared.len() as u32).max(1)
    }

    pub const fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// Version 2: status frames, as the guest sees them (0 in version 1).
    pub fn nr_status_frames(&self) -> u32 {
        match self.version {
            Version::V1 => 0,
            Version::V2 => status_frames_for(self.nr_frames()),
        }
    }

    /// The shared frames allocated (frame `i` of the table is `shared_frames()[i]`).
    pub fn shared_frames(&self) -> &[Mfn] {
        &self.shared
    }

    /// The status frames allocated.
    pub fn status_frames(&self) -> &[Mfn] {
        &self.status
    }

    /// Entries the table holds.
    pub fn nr_entries(&self) -> u32 {
        self.nr_frames() * self.version.entries_per_frame()
    }

    /// Frames allocated so far that `grow(want)` would add (shared and status), for the
    /// caller's memory checks.
    pub fn frames_to_grow(&self, want: u32) -> u32 {
        let shared = want.saturating_sub(self.shared.len() as u32);
        let status = match self.version {
            Version::V1 => 0,
            Version::V2 => status_frames_for(want.max(self.shared.len() as u32)).saturating_sub(self.status.len() as u32),
        };
        shared + status
    }

    /// Grows the table to `want` shared frames (and their status frames in version 2),
    /// taking each new frame from `alloc` (allocated to the domain, zeroed, held for the
    /// hypervisor). Never shrinks.
    pub fn grow(&mut self, want: u32, alloc: &mut dyn FnMut() -> Option<Mfn>) -> Result<(), GrowError> {
        if want > self.max_frames {
            return Err(GrowError::TooLarge);
        }
        let shared_want = (want as usize).max(self.shared.len());
        let status_want = match self.version {
            Version::V1 => 0,
            Version::V2 => status_frames_for(shared_want as u32) as usize,
        };
        self.shared.try_reserve(shared_want - self.shared.len()).map_err(|_| GrowError::NoMemory)?;
        self.status.try_reserve(status_want.saturating_sub(self.status.len())).map_err(|_| GrowError::NoMemory)?;
        while self.status.len() < status_want {
            self.status.push(alloc().ok_or(GrowError::NoMemory)?);
        }
        while self.shared.len() < shared_want {
            self.shared.push(alloc().ok_or(GrowError::NoMemory)?);
        }
        Ok(())
    }

    /// Heap bytes the next first pin of an entry may allocate (the active list growing),
    /// for the caller's room check.
    pub fn active_growth_bytes(&self) -> usize {
        if self.active.len() < self.active.capacity() {
            0
        } else {
            self.active.capacity().max(4) * 2 * size_of::<Active>()
        }
    }

    /// The entries in use.
    pub fn active(&self) -> &[Active] {
        &self.active
    }

    /// Whether `grantee` uses a grant of frame `mfn` now (`cache_flush`'s check).
    pub fn is_used_by(&self, grantee: DomId, mfn: Mfn) -> bool {
        self.active.iter().any(|a| a.grantee == grantee && a.mfn == mfn && a.pins.any())
    }

    /// Refuses every new pin from now on (the domain is dying); unpins still work.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub const fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes every frame the table holds (for its teardown, once no entry is active).
    pub fn take_frames(&mut self) -> Vec<Mfn> {
        let mut frames = core::mem::take(&mut self.shared);
        let mut status = core::mem::take(&mut self.status);
        if frames.try_reserve(status.len()).is_err() {
            // Hand back the larger list; the caller asks again for the rest.
            self.status = status;
            return frames;
        }
        frames.append(&mut status);
        frames
    }

    fn find(&self, gref: u32) -> Result<usize, usize> {
        self.active.binary_search_by_key(&gref, |a| a.gref)
    }

    fn entry(&self, gref: u32) -> Option<Location> {
        entry_location(&self.shared, self.version, gref)
    }

    /// Where the status bits of `gref` live: the entry's flags (version 1) or its status
    /// entry (version 2).
    fn status_bits(&self, gref: u32) -> Option<Location> {
        match self.version {
            Version::V1 => self.entry(gref),
            Version::V2 => status_location(&self.status, gref),
        }
    }

    /// Pins entry `req.gref` for `req.grantee` (see the module doc). The caller then takes
    /// a general reference on the frame for the granter (and unpins again if that fails).
    pub fn pin<M: SharedMemory + ?Sized>(&mut self, mem: &M, req: PinRequest) -> Result<Pinned, GntSt> {
        if self.closed {
            return Err(GntSt::GeneralError);
        }
        if req.gref >= self.nr_entries() {
            return Err(GntSt::BadGntref);
        }
        let found = self.find(req.gref);
        let current = found.ok().map(|i| self.active[i]);
        if let Some(act) = current {
            let sub_page_map = req.purpose == Purpose::Map && act.sub_page;
            if act.grantee != req.grantee || act.pins.near_overflow() || sub_page_map {
                return Err(GntSt::GeneralError);
            }
        }
        let needs_status = match current {
            None => true,
            Some(act) => !req.kind.readonly && !act.pins.writable(),
        };
        if needs_status {
            self.set_status(mem, req, current.is_some())?;
        }
        let index = match found {
            Ok(index) => index,
            Err(index) => {
                let fresh = match self.read_grant(mem, req) {
                    Ok(fresh) => fresh,
                    Err(status) => {
                        self.undo_status(mem, req.gref, req.kind, Pins::default());
                        return Err(status);
                    }
                };
                if self.active.try_reserve(1).is_err() {
                    self.undo_status(mem, req.gref, req.kind, Pins::default());
                    return Err(GntSt::NoSpace);
                }
                self.active.insert(index, fresh);
                index
            }
        };
        let act = &mut self.active[index];
        *act.pins.counter(req.kind) += 1;
        Ok(Pinned { mfn: act.mfn, start: act.start, length: act.length })
    }

    /// Drops one pin of `kind` on `gref`, clearing `GTF_writing` with the last writable
    /// pin and `GTF_reading` with the last pin. False when there is no such pin (the
    /// caller's accounting is wrong).
    pub fn unpin<M: SharedMemory + ?Sized>(&mut self, mem: &M, gref: u32, kind: PinKind) -> bool {
        let Ok(index) = self.find(gref) else { return false };
        let counter = self.active[index].pins.counter(kind);
        if *counter == 0 {
            return false;
        }
        *counter -= 1;
        let pins = self.active[index].pins;
        if !pins.any() {
            self.active.remove(index);
        }
        self.undo_status(mem, gref, kind, pins);
        true
    }

    /// Clears the status bits a pin of `kind` set, given the pins left.
    fn undo_status<M: SharedMemory + ?Sized>(&self, mem: &M, gref: u32, kind: PinKind, left: Pins) {
        let mut clear = 0;
        if !kind.readonly && !left.writable() {
            clear |= GTF_WRITING;
        }
        if !left.any() {
            clear |= GTF_READING;
        }
        if clear != 0 {
            if let Some(at) = self.status_bits(gref) {
                mem.fetch_clear_u16(at.mfn, at.offset, clear);
            }
        }
    }

    /// Checks the grant and sets its status bits (Xen's `_set_status`); `pinned`: the entry
    /// is active already (only the read-only flag is checked then).
    fn set_status<M: SharedMemory + ?Sized>(&self, mem: &M, req: PinRequest, pinned: bool) -> Result<(), GntSt> {
        // No frame behind the entry: it reads as zeroes, an invalid grant.
        let Some(entry) = self.entry(req.gref) else { return Err(GntSt::GeneralError) };
        let mask = match req.purpose {
            Purpose::Map => GTF_TYPE_MASK | GTF_SUB_PAGE,
            Purpose::Copy => GTF_TYPE_MASK,
        };
        match self.version {
            Version::V1 => {
                let mut seen = mem.load_u32(entry.mfn, entry.offset + offsets::HEADER);
                for attempt in 0.. {
                    let (flags, domid) = (seen as u16, (seen >> 16) as u16);
                    if !pinned && (flags & mask != GTF_PERMIT_ACCESS || domid != req.grantee.0) {
                        return Err(GntSt::GeneralError);
                    }
                    let mut marked = flags | GTF_READING;
                    if !req.kind.readonly {
                        if flags & GTF_READONLY != 0 {
                            return Err(GntSt::GeneralError);
                        }
                        marked |= GTF_WRITING;
                    }
                    let wanted = (seen & 0xffff_0000) | u32::from(marked);
                    let found = mem.compare_exchange_u32(entry.mfn, entry.offset + offsets::HEADER, seen, wanted);
                    if found == seen {
                        return Ok(());
                    }
                    if attempt + 1 >= STATUS_RETRIES {
                        // The granter keeps changing the entry under us.
                        return Err(GntSt::GeneralError);
                    }
                    seen = found;
                }
                unreachable!("the loop returns")
            }
            Version::V2 => {
                let Some(status) = status_location(&self.status, req.gref) else { return Err(GntSt::GeneralError) };
                let valid_type = |flags: u16| matches!(flags & mask, GTF_PERMIT_ACCESS | GTF_TRANSITIVE);
                let header = |mem: &M| {
                    let word = mem.load_u32(entry.mfn, entry.offset + offsets::HEADER);
                    (word as u16, (word >> 16) as u16)
                };
                let (flags, domid) = header(mem);
                if !pinned && (!valid_type(flags) || domid != req.grantee.0) {
                    return Err(GntSt::GeneralError);
                }
                let bits = if req.kind.readonly {
                    GTF_READING
                } else {
                    if flags & GTF_READONLY != 0 {
                        return Err(GntSt::GeneralError);
                    }
                    GTF_READING | GTF_WRITING
                };
                mem.fetch_or_u16(status.mfn, status.offset, bits);
                // The granter sees the status before the hypervisor looks at its entry again.
                mem.fence();
                let (flags, domid) = header(mem);
                if !pinned {
                    if !valid_type(flags) || domid != req.grantee.0 || (!req.kind.readonly && flags & GTF_READONLY != 0) {
                        mem.fetch_clear_u16(status.mfn, status.offset, GTF_READING | GTF_WRITING);
                        return Err(GntSt::GeneralError);
                    }
                } else if flags & GTF_READONLY != 0 {
                    mem.fetch_clear_u16(status.mfn, status.offset, GTF_WRITING);
                    return Err(GntSt::GeneralError);
                }
                Ok(())
            }
        }
    }

    /// The active entry a first pin creates, from the grant as it is now.
    fn read_grant<M: SharedMemory + ?Sized>(&self, mem: &M, req: PinRequest) -> Result<Active, GntSt> {
        let entry = self.entry(req.gref).ok_or(GntSt::GeneralError)?;
        let whole = |mfn| Active {
            gref: req.gref,
            grantee: req.grantee,
            mfn,
            start: 0,
            length: FRAME_BYTES as u16,
            sub_page: false,
            pins: Pins::default(),
        };
        match self.version {
            Version::V1 => Ok(whole(Mfn(u64::from(mem.load_u32(entry.mfn, entry.offset + offsets::V1_FRAME))))),
            Version::V2 => {
                let flags = mem.load_u16(entry.mfn, entry.offset + offsets::HEADER);
                let frame = Mfn(mem.load_u64(entry.mfn, entry.offset + offsets::V2_FRAME));
                if flags & GTF_TYPE_MASK == GTF_TRANSITIVE {
                    // Transitive grants are not followed (Xen's `gnttab=transitive:0`).
                    return Err(GntSt::GeneralError);
                }
                if flags & GTF_SUB_PAGE == 0 {
                    return Ok(whole(frame));
                }
                Ok(Active {
                    start: mem.load_u16(entry.mfn, entry.offset + offsets::V2_PAGE_OFF),
                    length: mem.load_u16(entry.mfn, entry.offset + offsets::V2_LENGTH),
                    sub_page: true,
                    ..whole(frame)
                })
            }
        }
    }

    /// `GNTTABOP_set_version`. Refused while an entry beyond the reserved ones is in use
    /// (`EBUSY`); back to version 1 refused while a reserved entry cannot be expressed
    /// there (`ERANGE`) or the guest still maps a status frame (`EBUSY`: `in_use` says,
    /// XSA-255). The reserved entries are kept, in the new format; every other entry is
    /// cleared. Status frames for version 2 come from `alloc`.
    pub fn set_version<M: SharedMemory + ?Sized>(
        &mut self,
        mem: &M,
        new: Version,
        alloc: &mut dyn FnMut() -> Option<Mfn>,
        in_use: &dyn Fn(Mfn) -> bool,
    ) -> (Result<(), Errno>, VersionChange) {
        let mut change = VersionChange::default();
        if new == self.version {
            return (Ok(()), change);
        }
        if self.active.iter().any(|a| a.gref >= GNTTAB_NR_RESERVED_ENTRIES) {
            return (Err(Errno::Ebusy), change);
        }
        let reserved = match self.reserved_entries(mem) {
            Ok(reserved) => reserved,
            Err(errno) => return (Err(errno), change),
        };
        match new {
            Version::V2 => {
                let want = status_frames_for(self.shared.len() as u32) as usize;
                if self.status.try_reserve(want).is_err() {
                    return (Err(Errno::Enomem), change);
                }
                while self.status.len() < want {
                    match alloc() {
                        Some(mfn) => self.status.push(mfn),
                        None => {
                            change.release = core::mem::take(&mut self.status);
                            return (Err(Errno::Enomem), change);
                        }
                    }
                }
            }
            Version::V1 => {
                if self.status.iter().any(|&mfn| in_use(mfn)) {
                    return (Err(Errno::Ebusy), change);
                }
                change.release = core::mem::take(&mut self.status);
            }
        }
        for &frame in &self.shared {
            mem.zero(frame);
        }
        self.version = new;
        for (gref, entry) in (0u32..).zip(reserved) {
            self.write_reserved(mem, gref, entry);
        }
        (Ok(()), change)
    }

    /// The reserved entries in version-1 form, status bits in the flags.
    fn reserved_entries<M: SharedMemory + ?Sized>(&self, mem: &M) -> Result<[GrantEntryV1; 8], Errno> {
        let mut out = [GrantEntryV1::default(); GNTTAB_NR_RESERVED_ENTRIES as usize];
        for (gref, slot) in (0u32..).zip(out.iter_mut()) {
            let Some(at) = self.entry(gref) else { continue };
            let word = mem.load_u32(at.mfn, at.offset + offsets::HEADER);
            let (flags, domid) = (word as u16, DomId((word >> 16) as u16));
            *slot = match self.version {
                Version::V1 => GrantEntryV1 { flags, domid, frame: mem.load_u32(at.mfn, at.offset + offsets::V1_FRAME) },
                Version::V2 => {
                    let frame = mem.load_u64(at.mfn, at.offset + offsets::V2_FRAME);
                    match flags & GTF_TYPE_MASK {
                        GTF_PERMIT_ACCESS if frame >> 32 != 0 => return Err(Errno::Erange),
                        GTF_TRANSITIVE => return Err(Errno::Erange),
                        GTF_PERMIT_ACCESS => {
                            let status = status_location(&self.status, gref).map_or(0, |s| mem.load_u16(s.mfn, s.offset));
                            GrantEntryV1 { flags: flags | status, domid, frame: frame as u32 }
                        }
                        // Anything else is dropped, as Xen does.
                        _ => GrantEntryV1::default(),
                    }
                }
            };
        }
        Ok(out)
    }

    /// Writes reserved entry `gref` (version-1 form) in the current format.
    fn write_reserved<M: SharedMemory + ?Sized>(&self, mem: &M, gref: u32, entry: GrantEntryV1) {
        let Some(at) = self.entry(gref) else { return };
        let status_bits = GTF_READING | GTF_WRITING;
        match self.version {
            Version::V1 => {
                mem.store_u32(at.mfn, at.offset + offsets::V1_FRAME, entry.frame);
                mem.store_u32(at.mfn, at.offset + offsets::HEADER, u32::from(entry.flags) | u32::from(entry.domid.0) << 16);
            }
            Version::V2 => {
                if let Some(status) = status_location(&self.status, gref) {
                    mem.store_u16(status.mfn, status.offset, entry.flags & status_bits);
                }
                mem.store_u64(at.mfn, at.offset + offsets::V2_FRAME, u64::from(entry.frame));
                let flags = entry.flags & !status_bits;
                mem.store_u32(at.mfn, at.offset + offsets::HEADER, u32::from(flags) | u32::from(entry.domid.0) << 16);
            }
        }
    }

    /// `GNTTABOP_swap_grant_ref`: swaps two entries (and their status), unless either is in
    /// use.
    pub fn swap<M: SharedMemory + ?Sized>(&mut self, mem: &M, a: u32, b: u32) -> GntSt {
        let entries = self.nr_entries();
        if a >= entries || b >= entries {
            return GntSt::BadGntref;
        }
        if a == b {
            return GntSt::Okay;
        }
        if self.find(a).is_ok() || self.find(b).is_ok() {
            return GntSt::Eagain;
        }
        let (Some(at_a), Some(at_b)) = (self.entry(a), self.entry(b)) else {
            // No frame yet: both read as zeroes.
            return GntSt::Okay;
        };
        for word in (0..self.version.entry_bytes()).step_by(8) {
            let (x, y) = (mem.load_u64(at_a.mfn, at_a.offset + word), mem.load_u64(at_b.mfn, at_b.offset + word));
            mem.store_u64(at_a.mfn, at_a.offset + word, y);
            mem.store_u64(at_b.mfn, at_b.offset + word, x);
        }
        if let (Version::V2, Some(sa), Some(sb)) = (self.version, status_location(&self.status, a), status_location(&self.status, b)) {
            let (x, y) = (mem.load_u16(sa.mfn, sa.offset), mem.load_u16(sb.mfn, sb.offset));
            mem.store_u16(sa.mfn, sa.offset, y);
            mem.store_u16(sb.mfn, sb.offset, x);
        }
        GntSt::Okay
    }

    /// `GNTTABOP_transfer`, receiving side: entry `gref` must accept a transfer from
    /// `from` (exactly `GTF_accept_transfer` and that domain); marks it committed.
    pub fn commit_transfer<M: SharedMemory + ?Sized>(&self, mem: &M, gref: u32, from: DomId) -> bool {
        if self.closed || gref >= self.nr_entries() {
            return false;
        }
        let Some(at) = self.entry(gref) else { return false };
        let mut seen = mem.load_u32(at.mfn, at.offset + offsets::HEADER);
        for _ in 0..STATUS_RETRIES {
            if seen as u16 != GTF_ACCEPT_TRANSFER || (seen >> 16) as u16 != from.0 {
                return false;
            }
            let wanted = seen | u32::from(GTF_TRANSFER_COMMITTED);
            let found = mem.compare_exchange_u32(at.mfn, at.offset + offsets::HEADER, seen, wanted);
            if found == seen {
                return true;
            }
            seen = found;
        }
        false
    }

    /// Whether the table's format can name frame `mfn` in a transfer entry (version 1
    /// entries hold 32-bit frame numbers).
    pub fn can_name(&self, mfn: Mfn) -> bool {
        self.version == Version::V2 || mfn.0 >> 32 == 0
    }

    /// Completes a committed transfer into `gref`: the entry's frame becomes `mfn` and it is
    /// marked `GTF_transfer_completed`.
    pub fn complete_transfer<M: SharedMemory + ?Sized>(&self, mem: &M, gref: u32, mfn: Mfn) {
        let Some(at) = self.entry(gref) else { return };
        match self.version {
            Version::V1 => mem.store_u32(at.mfn, at.offset + offsets::V1_FRAME, mfn.0 as u32),
            Version::V2 => mem.store_u64(at.mfn, at.offset + offsets::V2_FRAME, mfn.0),
        }
        mem.fence();
        mem.fetch_or_u16(at.mfn, at.offset + offsets::HEADER, GTF_TRANSFER_COMPLETED);
    }

    /// The builder's seeding of a new domain's table (libxl's `xc_dom_gnttab_seed`): entry
    /// `gref` of a version-1 table grants `grantee` read-write access to `frame`. The
    /// table must have its first frames already ([`GrantTable::grow`]); `false` when the
    /// entry has none or the table is not version 1. The entry is the guest's to change
    /// afterwards, as any other.
    pub fn seed<M: SharedMemory + ?Sized>(&self, mem: &M, gref: u32, grantee: DomId, frame: u64) -> bool {
        let Some(at) = self.entry(gref) else { return false };
        if self.version != Version::V1 || frame > u64::from(u32::MAX) {
            return false;
        }
        mem.store_u32(at.mfn, at.offset + offsets::V1_FRAME, frame as u32);
        mem.fence();
        mem.store_u32(at.mfn, at.offset + offsets::HEADER, u32::from(GTF_PERMIT_ACCESS) | u32::from(grantee.0) << 16);
        true
    }

    /// Whether entry `gref` is invalid (nothing granted), for tests and diagnostics.
    pub fn is_invalid<M: SharedMemory + ?Sized>(&self, mem: &M, gref: u32) -> bool {
        self.entry(gref).is_none_or(|at| mem.load_u16(at.mfn, at.offset) & GTF_TYPE_MASK == GTF_INVALID)
    }
}

//! Boot-time mappings of firmware and loader data (multiboot2 information, PVH start info,
//! ACPI tables, the AP trampoline page) into the window's firmware region.
//!
//! A bump allocator over that region: mappings are never freed one by one; [`release_all`]
//! unmaps the whole region once boot no longer needs any of it (the caller then flushes
//! every CPU's TLB). Used only by the boot CPU during boot.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::paging::{self, MapKind};

const PAGE: u64 = 4096;

static BASE: AtomicU64 = AtomicU64::new(0);
static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

/// Why a firmware mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwMapError {
    /// The firmware region is exhausted.
    RegionFull { needed: u64, left: u64 },
    /// The physical range wraps around or is empty.
    BadRange { phys: u64, len: u64 },
    /// The page tables refused the mapping.
    Map(paging::MapError),
}

impl core::fmt::Display for FwMapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::RegionFull { needed, left } => {
                write!(f, "firmware mapping region full ({needed} bytes needed, {left} left)")
            }
            Self::BadRange { phys, len } => write!(f, "bad physical range {phys:#x}+{len:#x}"),
            Self::Map(e) => write!(f, "page tables refused the mapping: {e:?}"),
        }
    }
}

/// Sets the window range the mappings come from.
pub fn init(base: u64, size: u64) {
    BASE.store(base, Ordering::Relaxed);
    NEXT.store(base, Ordering::Relaxed);
    END.store(base + size, Ordering::Relaxed);
}

/// Maps `[phys, phys + len)` and returns the virtual address of `phys`.
pub fn map(phys: u64, len: u64, kind: MapKind) -> Result<u64, FwMapError> {
    let end = phys.checked_add(len).filter(|_| len > 0).ok_or(FwMapError::BadRange { phys, len })?;
    let first = phys & !(PAGE - 1);
    let pages = (end - first).div_ceil(PAGE);
    let bytes = pages * PAGE;
    let va = NEXT.fetch_add(bytes, Ordering::Relaxed);
    let limit = END.load(Ordering::Relaxed);
    if va + bytes > limit {
        NEXT.fetch_sub(bytes, Ordering::Relaxed);
        return Err(FwMapError::RegionFull { needed: bytes, left: limit.saturating_sub(va) });
    }
    for page in 0..pages {
        paging::map(va + page * PAGE, first + page * PAGE, kind).map_err(FwMapError::Map)?;
    }
    Ok(va + (phys - first))
}

/// Maps `[phys, phys + len)` read-only and returns it as a byte slice.
pub fn bytes(phys: u64, len: u64) -> Result<&'static [u8], FwMapError> {
    let va = map(phys, len, MapKind::ReadOnly)?;
    // SAFETY: `map` just mapped `len` bytes at `va` read-only; they stay mapped until
    // `release_all`, after which boot code holds no such slice (documented contract).
    Ok(unsafe { core::slice::from_raw_parts(va as *const u8, len as usize) })
}

/// Bytes of the region in use.
pub fn used() -> u64 {
    NEXT.load(Ordering::Relaxed) - BASE.load(Ordering::Relaxed)
}

/// Unmaps everything; the caller flushes the other CPUs' TLBs.
pub fn release_all() {
    let (base, next) = (BASE.load(Ordering::Relaxed), NEXT.load(Ordering::Relaxed));
    let mut va = base;
    while va < next {
        paging::unmap(va);
        va += PAGE;
    }
    NEXT.store(base, Ordering::Relaxed);
}

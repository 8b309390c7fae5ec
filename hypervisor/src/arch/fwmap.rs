//! Boot-time mappings of firmware and loader data (multiboot2 information, PVH start info,
//! ACPI tables, the AP trampoline page) into the window's firmware region.
//!
//! A bump allocator over that region: mappings are never freed one by one; [`release_all`]
//! unmaps the whole region once boot no longer needs any of it (the caller then flushes
//! every CPU's TLB). Used only by the boot CPU during boot.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use log::warn;
use topology::{AcpiError, AcpiHandler, AcpiInfo, PhysicalMapping};

use super::paging::{self, MapKind};
use super::view::AnyBitPattern;

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

/// Maps `[phys, phys + len)` (pinned until [`release_all`]) and returns the virtual
/// address of `phys`.
fn map(phys: u64, len: u64, kind: MapKind) -> Result<u64, FwMapError> {
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
        paging::map_pinned(va + page * PAGE, first + page * PAGE, kind).map_err(FwMapError::Map)?;
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
        paging::unmap_pinned(va);
        va += PAGE;
    }
    NEXT.store(base, Ordering::Relaxed);
}

/// Maps ACPI tables through the boot-time firmware mappings.
#[derive(Clone, Copy)]
struct FirmwareTables;

impl AcpiHandler for FirmwareTables {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let (virt, length) = match map(physical_address as u64, size as u64, MapKind::ReadOnly) {
            Ok(va) => (va as *mut T, size),
            Err(e) => {
                warn!("acpi: cannot map {size} bytes at {physical_address:#x}: {e}");
                (NonNull::dangling().as_ptr(), 0)
            }
        };
        let virt = NonNull::new(virt).unwrap_or(NonNull::dangling());
        // SAFETY: `virt` maps `length` readable bytes (0 when the mapping failed, which the
        // topology crate treats as "refused"), and stays mapped until the end of boot.
        unsafe { PhysicalMapping::new(physical_address, virt, length, length, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {
        // Firmware mappings are released all at once at the end of boot.
    }
}

/// Reads the ACPI tables from a copy of the RSDP (a multiboot2 tag's), mapping them here.
pub fn acpi_from_rsdp_copy(rsdp: &[u8]) -> Result<AcpiInfo, AcpiError> {
    // SAFETY: the handler maps any physical range read-only through the firmware region
    // and reports a zero length when it cannot, as the contract requires.
    unsafe { AcpiInfo::from_rsdp_copy(&FirmwareTables, rsdp) }
}

/// Reads the ACPI tables from the RSDP at physical `address`, mapping them here.
pub fn acpi_from_rsdp_address(address: u64) -> Result<AcpiInfo, AcpiError> {
    // SAFETY: as in `acpi_from_rsdp_copy`.
    unsafe { AcpiInfo::from_rsdp_address(&FirmwareTables, address) }
}

/// The multiboot2 information structure in `bytes` (a firmware mapping of it); `None`
/// unless `bytes` is 8-byte aligned, holds the whole structure (its own total size) and
/// the crate finds its header and tags valid.
pub fn multiboot2_info(bytes: &'static [u8]) -> Option<multiboot2::BootInformation<'static>> {
    let total = bytes.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)?;
    if !(bytes.as_ptr() as usize).is_multiple_of(8) || total > bytes.len() {
        return None;
    }
    // SAFETY: `bytes` covers the whole structure (its total size, checked) for the rest of
    // boot, 8-byte aligned (checked); the crate validates the tags inside it.
    unsafe { multiboot2::BootInformation::load(bytes.as_ptr() as *const multiboot2::BootInformationHeader) }.ok()
}

/// A writable firmware mapping (the AP trampoline's page): bytes and values written into
/// it, words shared with other CPUs through it, until [`release_all`].
#[derive(Clone, Copy, Debug)]
pub struct Writable {
    va: u64,
    len: usize,
}

impl Writable {
    /// Maps `[phys, phys + len)` writable.
    pub fn map(phys: u64, len: u64) -> Result<Writable, FwMapError> {
        Ok(Writable { va: map(phys, len, MapKind::Data)?, len: len as usize })
    }

    fn checked(&self, offset: usize, size: usize, align: usize) -> u64 {
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len) && (self.va + offset as u64).is_multiple_of(align as u64),
            "firmware mapping access of {size} bytes at {offset}"
        );
        self.va + offset as u64
    }

    /// Copies `bytes` to `offset`. Panics unless they fit in the mapping.
    pub fn copy_in(&self, offset: usize, bytes: &[u8]) {
        let at = self.checked(offset, bytes.len(), 1);
        // SAFETY: the range is inside the mapping (checked), writable until `release_all`,
        // after which the boot code holds no `Writable` (documented contract); it is not
        // part of any Rust object, so nothing else refers to it but through this mapping.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
    }

    /// Writes `value` at `offset`, unaligned. Panics unless it fits in the mapping.
    pub fn write<T: AnyBitPattern>(&self, offset: usize, value: T) {
        let at = self.checked(offset, size_of::<T>(), 1);
        // SAFETY: as in `copy_in`.
        unsafe { core::ptr::write_unaligned(at as *mut T, value) };
    }

    /// The `AtomicU32` at `offset`, shared with other CPUs. Panics unless it is aligned and
    /// fits in the mapping.
    pub fn atomic_u32(&self, offset: usize) -> &'static core::sync::atomic::AtomicU32 {
        let at = self.checked(offset, 4, 4);
        // SAFETY: aligned and inside the mapping (checked), which stays mapped until the end
        // of boot (the contract of this module: no use after `release_all`); any bits are a
        // valid AtomicU32, and all accesses to it are atomic.
        unsafe { core::sync::atomic::AtomicU32::from_ptr(at as *mut u32) }
    }
}

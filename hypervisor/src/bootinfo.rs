//! What the loader told us, whichever protocol it used: multiboot2 (GRUB) or PVH (QEMU
//! `-kernel`), decoded into one [`BootInfo`]: memory map, command line, modules, RSDP, and
//! the physical ranges that hold it all (to keep them out of the frame allocator).
//!
//! Reads loader data through boot-time firmware mappings and copies what it keeps, so
//! nothing refers to loader memory after boot. Bad loader data gives a [`BootInfoError`]
//! with a clear message, never a fault.

use arrayvec::{ArrayString, ArrayVec};
use mm::memmap::{MemoryRegion, RegionKind};

use crate::arch::boot::{MULTIBOOT2_MAGIC, PVH_MAGIC};
use crate::arch::fwmap;

/// The most memory-map entries kept; a map with more is truncated with a warning.
pub const MAX_REGIONS: usize = 128;
/// The most boot modules (guest images) kept.
pub const MAX_MODULES: usize = 64;

/// How the hypervisor was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Multiboot2,
    Pvh,
}

impl core::fmt::Display for Protocol {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Protocol::Multiboot2 => "multiboot2",
            Protocol::Pvh => "pvh",
        })
    }
}

/// Where the ACPI root pointer is.
#[derive(Clone, Debug)]
pub enum RsdpSource {
    /// A copy of the RSDP (multiboot2 tags): 20 bytes (v1) or 36 (v2).
    Copy(ArrayVec<u8, 36>),
    /// The RSDP's physical address (PVH).
    Physical(u64),
}

/// The longest module line kept (the modules live on the boot stack until copied).
pub const MODULE_LINE_MAX: usize = 256;

/// A boot module: a guest image with its own command line.
#[derive(Clone, Debug)]
pub struct Module {
    pub start: u64,
    pub end: u64,
    pub cmdline: ArrayString<MODULE_LINE_MAX>,
    /// Why it cannot be used, once checked (`pv::modules::check`); such a module is
    /// neither reserved nor read.
    pub refused: Option<hypervisor::bootmodule::Problem>,
}

/// Everything the loader handed over.
pub struct BootInfo {
    pub protocol: Protocol,
    pub memory: ArrayVec<MemoryRegion, MAX_REGIONS>,
    pub cmdline: ArrayString<1024>,
    pub modules: ArrayVec<Module, MAX_MODULES>,
    pub rsdp: Option<RsdpSource>,
    /// Physical ranges of loader data to keep out of the allocator until decoded (the
    /// information structure itself); decoded data is copied, so after [`decode`] these are
    /// only reserved to be safe during boot.
    pub loader_ranges: ArrayVec<(u64, u64), 4>,
    /// Entries dropped because the map had more than [`MAX_REGIONS`].
    pub dropped_regions: usize,
}

/// Why the loader's data could not be used.
#[derive(Debug)]
pub enum BootInfoError {
    UnknownProtocol(u32),
    Map(fwmap::FwMapError),
    Multiboot2(&'static str),
    PvhBadMagic(u32),
    PvhNoMemoryMap { version: u32 },
    NoMemoryMap,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownProtocol(m) => write!(f, "unknown boot protocol magic {m:#x}"),
            Self::Map(e) => write!(f, "cannot map boot information: {e}"),
            Self::Multiboot2(why) => write!(f, "malformed multiboot2 information: {why}"),
            Self::PvhBadMagic(m) => write!(f, "PVH start info has bad magic {m:#x}"),
            Self::PvhNoMemoryMap { version } => {
                write!(f, "PVH start info version {version} carries no memory map (need 1)")
            }
            Self::NoMemoryMap => write!(f, "the loader gave no memory map"),
        }
    }
}

impl From<fwmap::FwMapError> for BootInfoError {
    fn from(e: fwmap::FwMapError) -> Self {
        Self::Map(e)
    }
}

/// Decodes the loader's information at `info_phys` for the protocol named by `magic`.
pub fn decode(magic: u32, info_phys: u64) -> Result<BootInfo, BootInfoError> {
    let mut info = BootInfo {
        protocol: Protocol::Pvh,
        memory: ArrayVec::new(),
        cmdline: ArrayString::new(),
        modules: ArrayVec::new(),
        rsdp: None,
        loader_ranges: ArrayVec::new(),
        dropped_regions: 0,
    };
    match magic {
        MULTIBOOT2_MAGIC => decode_multiboot2(info_phys, &mut info)?,
        PVH_MAGIC => decode_pvh(info_phys, &mut info)?,
        other => return Err(BootInfoError::UnknownProtocol(other)),
    }
    if info.memory.is_empty() {
        return Err(BootInfoError::NoMemoryMap);
    }
    Ok(info)
}

fn push_region(info: &mut BootInfo, start: u64, len: u64, kind: RegionKind) {
    let Some(end) = start.checked_add(len) else {
        info.dropped_regions += 1;
        return;
    };
    if info.memory.try_push(MemoryRegion { start, end, kind }).is_err() {
        info.dropped_regions += 1;
    }
}

fn copy_str<const N: usize>(s: &str) -> ArrayString<N> {
    let mut out = ArrayString::new();
    for c in s.chars() {
        if out.try_push(c).is_err() {
            break;
        }
    }
    out
}

fn decode_multiboot2(info_phys: u64, info: &mut BootInfo) -> Result<(), BootInfoError> {
    use multiboot2::MemoryAreaType;
    info.protocol = Protocol::Multiboot2;
    let header = fwmap::bytes(info_phys, 8)?;
    let total = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
    if !(16..=16 << 20).contains(&total) {
        return Err(BootInfoError::Multiboot2("implausible total size"));
    }
    let bytes = fwmap::bytes(info_phys, total)?;
    let _ = info.loader_ranges.try_push((info_phys, info_phys + total));
    let mbi = fwmap::multiboot2_info(bytes).ok_or(BootInfoError::Multiboot2("invalid header or tags"))?;
    if let Some(map) = mbi.memory_map_tag() {
        for area in map.memory_areas() {
            let kind = match area.typ() {
                MemoryAreaType::Available => RegionKind::Usable,
                MemoryAreaType::AcpiAvailable => RegionKind::AcpiReclaimable,
                MemoryAreaType::ReservedHibernate => RegionKind::AcpiNvs,
                MemoryAreaType::Defective => RegionKind::Bad,
                _ => RegionKind::Reserved,
            };
            push_region(info, area.start_address(), area.size(), kind);
        }
    }
    if let Some(Ok(cmdline)) = mbi.command_line_tag().map(|t| t.cmdline()) {
        info.cmdline = copy_str(cmdline);
    }
    for module in mbi.module_tags() {
        let cmdline = module.cmdline().unwrap_or("");
        if cmdline.len() > MODULE_LINE_MAX {
            log::warn!("boot: module {} line cut to {MODULE_LINE_MAX} bytes (longer guest lines: after `--` on the hypervisor's line)", info.modules.len());
        }
        let entry = Module {
            start: module.start_address() as u64,
            end: module.end_address() as u64,
            cmdline: copy_str(cmdline),
            refused: None,
        };
        if info.modules.try_push(entry).is_err() {
            log::warn!("boot: more than {MAX_MODULES} modules; the rest are ignored");
            break;
        }
    }
    // The RSDP tags hold a copy of the RSDP right after their 8-byte tag header.
    // The tag lies inside the information structure (`bytes`) and the crate checked that
    // its size covers the RSDP it declares (20 bytes for v1, 36 for v2).
    let rsdp_copy = |tag: *const u8, len: usize| {
        let at = (tag as usize).wrapping_sub(bytes.as_ptr() as usize) + 8;
        bytes.get(at..at + len).unwrap_or_default().iter().copied().collect::<ArrayVec<u8, 36>>()
    };
    if let Some(v2) = mbi.rsdp_v2_tag() {
        info.rsdp = Some(RsdpSource::Copy(rsdp_copy(v2 as *const _ as *const u8, 36)));
    } else if let Some(v1) = mbi.rsdp_v1_tag() {
        info.rsdp = Some(RsdpSource::Copy(rsdp_copy(v1 as *const _ as *const u8, 20)));
    }
    Ok(())
}

/// Reads a little-endian integer of `N` bytes at `offset`, or 0 past the end.
fn read_le<const N: usize>(bytes: &[u8], offset: usize) -> u64 {
    bytes
        .get(offset..offset + N)
        .map(|b| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
        .unwrap_or(0)
}

/// Reads a NUL-terminated string of at most `max` bytes at `phys`.
fn read_cstr<const N: usize>(phys: u64) -> Result<ArrayString<N>, BootInfoError> {
    if phys == 0 {
        return Ok(ArrayString::new());
    }
    let bytes = fwmap::bytes(phys, N as u64)?;
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(N);
    Ok(copy_str(core::str::from_utf8(&bytes[..len]).unwrap_or("")))
}

// PVH hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1.
const PVH_START_INFO_SIZE: u64 = 56;
const PVH_MODLIST_ENTRY_SIZE: u64 = 32;
const PVH_MEMMAP_ENTRY_SIZE: u64 = 24;

fn decode_pvh(info_phys: u64, info: &mut BootInfo) -> Result<(), BootInfoError> {
    info.protocol = Protocol::Pvh;
    let start = fwmap::bytes(info_phys, PVH_START_INFO_SIZE)?;
    let _ = info.loader_ranges.try_push((info_phys, info_phys + PVH_START_INFO_SIZE));
    let magic = read_le::<4>(start, 0) as u32;
    if magic != PVH_MAGIC {
        return Err(BootInfoError::PvhBadMagic(magic));
    }
    let version = read_le::<4>(start, 4) as u32;
    let nr_modules = read_le::<4>(start, 12);
    let modlist = read_le::<8>(start, 16);
    info.cmdline = read_cstr(read_le::<8>(start, 24))?;
    let rsdp = read_le::<8>(start, 32);
    if rsdp != 0 {
        info.rsdp = Some(RsdpSource::Physical(rsdp));
    }
    if version < 1 {
        return Err(BootInfoError::PvhNoMemoryMap { version });
    }
    let memmap = read_le::<8>(start, 40);
    let entries = read_le::<4>(start, 48).min(4 * MAX_REGIONS as u64);
    if memmap == 0 || entries == 0 {
        return Err(BootInfoError::PvhNoMemoryMap { version });
    }
    let map = fwmap::bytes(memmap, entries * PVH_MEMMAP_ENTRY_SIZE)?;
    for entry in map.chunks_exact(PVH_MEMMAP_ENTRY_SIZE as usize) {
        let kind = match read_le::<4>(entry, 16) {
            1 => RegionKind::Usable,
            3 => RegionKind::AcpiReclaimable,
            4 => RegionKind::AcpiNvs,
            5 => RegionKind::Bad,
            _ => RegionKind::Reserved,
        };
        push_region(info, read_le::<8>(entry, 0), read_le::<8>(entry, 8), kind);
    }
    if nr_modules > 0 && modlist != 0 {
        let count = nr_modules.min(MAX_MODULES as u64);
        let list = fwmap::bytes(modlist, count * PVH_MODLIST_ENTRY_SIZE)?;
        for entry in list.chunks_exact(PVH_MODLIST_ENTRY_SIZE as usize) {
            let (paddr, size) = (read_le::<8>(entry, 0), read_le::<8>(entry, 8));
            let module = Module {
                start: paddr,
                end: paddr.saturating_add(size),
                cmdline: read_cstr(read_le::<8>(entry, 16))?,
                refused: None,
            };
            info.modules.push(module);
        }
    }
    Ok(())
}

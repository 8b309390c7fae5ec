//! Where a boot module may lie: the checks a module's machine range passes before the
//! hypervisor keeps it out of the frame allocator and reads guest images from it.
//!
//! The boot script calls [`check_placement`] for each module the loader handed over, in
//! order, right after decoding the boot information and before the frame allocator is
//! built. A module that fails is refused with a [`Problem`] the boot log prints beside its
//! name, and is neither reserved nor ever read; the others are reserved for the whole run
//! (domain 0 may build domains from them at any time). Pure and host-tested: it must
//! never map or read a module, and must accept what any sane loader does (modules in RAM,
//! apart from each other and from the hypervisor).

use core::fmt;

use mm::memmap::{MemoryRegion, PhysRange, RegionKind};

/// The first MiB: real-mode data, the BIOS and the hypervisor's AP start-up trampoline.
pub const LOW_MEMORY_END: u64 = 1 << 20;

/// What the hypervisor itself occupies, for the overlap checks.
#[derive(Clone, Copy, Debug)]
pub struct Occupied<'a> {
    /// The hypervisor image.
    pub image: PhysRange,
    /// The loader's information structures.
    pub loader: &'a [(u64, u64)],
}

/// Why a module cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// It holds no byte.
    Empty,
    /// Its end lies below its start (the loader's numbers wrap).
    Inverted,
    /// Some of it is not RAM the firmware calls usable.
    NotInRam,
    /// It overlaps the first MiB.
    LowMemory,
    /// It overlaps the hypervisor image.
    HypervisorImage,
    /// It overlaps the loader's information.
    LoaderData,
    /// It overlaps an earlier module (its index).
    Module(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::Inverted => f.write_str("its end lies below its start"),
            Self::NotInRam => f.write_str("it is not all in usable RAM"),
            Self::LowMemory => f.write_str("it overlaps the first MiB"),
            Self::HypervisorImage => f.write_str("it overlaps the hypervisor image"),
            Self::LoaderData => f.write_str("it overlaps the loader's boot information"),
            Self::Module(other) => write!(f, "it overlaps module {other}"),
        }
    }
}

fn overlaps(a: PhysRange, b: PhysRange) -> bool {
    a.start < b.end && b.start < a.end
}

/// Whether every byte of `range` lies in usable RAM and none in a region the map calls
/// anything else (maps may overlap; the stricter entry wins).
fn in_usable_ram(range: PhysRange, map: &[MemoryRegion]) -> bool {
    let usable = |r: &&MemoryRegion| r.kind == RegionKind::Usable && r.start < r.end;
    if map
        .iter()
        .filter(|r| r.kind != RegionKind::Usable)
        .any(|r| overlaps(range, PhysRange { start: r.start, end: r.end }))
    {
        return false;
    }
    let mut covered = range.start;
    while covered < range.end {
        match map.iter().filter(usable).find(|r| r.start <= covered && covered < r.end) {
            Some(region) => covered = region.end,
            None => return false,
        }
    }
    true
}

/// Checks module `index` (`start..end`) against the memory map, what the hypervisor
/// occupies and the modules before it (`earlier`: their ranges, `None` for those refused).
pub fn check_placement(
    start: u64,
    end: u64,
    map: &[MemoryRegion],
    occupied: &Occupied<'_>,
    earlier: &[Option<PhysRange>],
) -> Result<PhysRange, Problem> {
    if end < start {
        return Err(Problem::Inverted);
    }
    let range = PhysRange { start, end };
    if range.is_empty() {
        return Err(Problem::Empty);
    }
    if start < LOW_MEMORY_END {
        return Err(Problem::LowMemory);
    }
    if overlaps(range, occupied.image) {
        return Err(Problem::HypervisorImage);
    }
    if occupied.loader.iter().any(|&(s, e)| overlaps(range, PhysRange { start: s, end: e })) {
        return Err(Problem::LoaderData);
    }
    if let Some(other) = earlier.iter().position(|m| m.is_some_and(|m| overlaps(range, m))) {
        return Err(Problem::Module(other));
    }
    if !in_usable_ram(range, map) {
        return Err(Problem::NotInRam);
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn region(start: u64, end: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion { start, end, kind }
    }

    fn map() -> [MemoryRegion; 4] {
        [
            region(0, 640 << 10, RegionKind::Usable),
            region(MIB, 100 * MIB, RegionKind::Usable),
            region(100 * MIB, 200 * MIB, RegionKind::Usable),
            region(200 * MIB, 201 * MIB, RegionKind::Reserved),
        ]
    }

    const LOADER: [(u64, u64); 1] = [(0x9000, 0xa000)];

    fn occupied() -> Occupied<'static> {
        Occupied { image: PhysRange { start: 2 * MIB, end: 4 * MIB }, loader: &LOADER }
    }

    fn check(start: u64, end: u64, earlier: &[Option<PhysRange>]) -> Result<PhysRange, Problem> {
        check_placement(start, end, &map(), &occupied(), earlier)
    }

    #[test]
    fn a_module_in_ram_apart_from_everything_is_kept() {
        assert_eq!(check(10 * MIB, 90 * MIB + 5, &[]), Ok(PhysRange { start: 10 * MIB, end: 90 * MIB + 5 }));
        // Across two adjacent usable entries.
        assert!(check(99 * MIB, 150 * MIB, &[]).is_ok());
        // Touching the image and another module, not overlapping them.
        assert!(check(4 * MIB, 5 * MIB, &[Some(PhysRange { start: 5 * MIB, end: 6 * MIB })]).is_ok());
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(check(5 * MIB, 5 * MIB, &[]), Err(Problem::Empty));
        assert_eq!(check(6 * MIB, 5 * MIB, &[]), Err(Problem::Inverted));
        assert_eq!(check(0x8000, 2 * MIB, &[]), Err(Problem::LowMemory));
        assert_eq!(check(3 * MIB, 5 * MIB, &[]), Err(Problem::HypervisorImage));
        assert_eq!(check(150 * MIB, 200 * MIB + 1, &[]), Err(Problem::NotInRam));
        assert_eq!(check(150 * MIB, 300 * MIB, &[]), Err(Problem::NotInRam));
        assert_eq!(check(250 * MIB, u64::MAX, &[]), Err(Problem::NotInRam));
        let earlier = [None, Some(PhysRange { start: 10 * MIB, end: 20 * MIB })];
        assert_eq!(check(19 * MIB, 30 * MIB, &earlier), Err(Problem::Module(1)));
        // A refused module is no obstacle.
        assert!(check(19 * MIB, 30 * MIB, &[None]).is_ok());
        let loader = [(50 * MIB, 50 * MIB + 100)];
        let occupied = Occupied { loader: &loader, ..occupied() };
        assert_eq!(check_placement(40 * MIB, 60 * MIB, &map(), &occupied, &[]), Err(Problem::LoaderData));
    }

    #[test]
    fn a_reserved_entry_inside_usable_ram_wins() {
        let mut map = map().to_vec();
        map.push(region(60 * MIB, 60 * MIB + 4096, RegionKind::Reserved));
        assert_eq!(check_placement(50 * MIB, 70 * MIB, &map, &occupied(), &[]), Err(Problem::NotInRam));
        assert!(check_placement(50 * MIB, 60 * MIB, &map, &occupied(), &[]).is_ok());
    }
}

//! Layout of the hypervisor's virtual window: the top 64 MiB of every address space.
//!
//! Everything the hypervisor maps for itself lives in the window, which 32 statically
//! allocated L1 tables describe (so mapping a window page is writing one L1 entry; see
//! [`window_slot`]). Boot code creates a [`WindowLayout`] with the image size, then
//! places the other regions one after another, page-aligned, in the order it calls
//! [`WindowLayout::place`] (boot's order: frame metadata, heap, firmware, MMIO, temporary
//! mappings, per-CPU areas). Before placing the frame metadata it asks
//! [`WindowLayout::max_ram_bytes`] how much machine memory the remaining space can
//! describe, and caps usable memory to that. Later code records how much of each region
//! is really used, and the layout prints as a table. This module is arithmetic only: it
//! never maps anything, and it never lets a region cross the end of the window.

use core::fmt;

use arrayvec::ArrayVec;

use crate::addr::{page_align_down, page_align_up, pages_for, PAGE_SHIFT, PAGE_SIZE};
use crate::frame::FRAME_INFO_SIZE;

const KIB: u64 = 1 << 10;

/// First address of the window.
pub const WINDOW_BASE: u64 = 0xFFFF_FFFF_FC00_0000;
/// Size of the window: it runs to the very end of the address space.
pub const WINDOW_SIZE: u64 = 64 << 20;
/// Entries in one L1 page table.
pub const L1_ENTRIES: usize = 512;
/// L1 tables that describe the window (one per 2 MiB).
pub const WINDOW_L1_TABLES: usize = (WINDOW_SIZE / (L1_ENTRIES as u64 * PAGE_SIZE)) as usize;
const _: () = assert!(WINDOW_BASE.wrapping_add(WINDOW_SIZE) == 0);
const _: () = assert!(WINDOW_L1_TABLES == 32);

/// Temporary-mapping slots (one page each) per CPU, for mapping arbitrary machine frames.
pub const TEMP_SLOTS_PER_CPU: u64 = 16;

/// Unmapped page below every stack, so an overflow faults instead of corrupting.
pub const GUARD_BYTES: u64 = PAGE_SIZE;
/// A CPU's hypervisor stack (used on entry from guests and for hypervisor work).
pub const KERNEL_STACK_BYTES: u64 = 32 * KIB;
/// Each interrupt-stack-table stack (see [`IstStack`]).
pub const IST_STACK_BYTES: u64 = 8 * KIB;
/// Number of IST stacks per CPU.
pub const IST_STACKS: usize = 4;
/// The per-CPU data page.
pub const PER_CPU_DATA_BYTES: u64 = PAGE_SIZE;
/// Address space of a CPU's GDT: Xen's layout puts the hypervisor's descriptors in the
/// reserved page at selector 0xe000 (page 14) and the guest's own GDT frames below it.
pub const GDT_BYTES: u64 = 16 * PAGE_SIZE;
/// Offset of the reserved (hypervisor) page inside the GDT range.
pub const GDT_RESERVED_OFFSET: u64 = 0xe000;
/// Address space of a CPU's LDT: the running vCPU's LDT frames (at most 8192 descriptors,
/// Xen's limit), mapped where the LDT descriptor of the reserved GDT page points.
pub const LDT_BYTES: u64 = 16 * PAGE_SIZE;
/// One CPU's slot in [`Region::PerCpu`], from low to high addresses: guard, kernel stack,
/// then guard and stack for each [`IstStack`] in order, the data page, the GDT range, then
/// the LDT range (216 KiB of address space, 72 KiB of it backed by the hypervisor's frames;
/// the GDT's and LDT's guest pages map guest frames or the zero frame).
pub const PER_CPU_BYTES: u64 = GUARD_BYTES
    + KERNEL_STACK_BYTES
    + IST_STACKS as u64 * (GUARD_BYTES + IST_STACK_BYTES)
    + PER_CPU_DATA_BYTES
    + GDT_BYTES
    + LDT_BYTES;
const _: () = assert!(PER_CPU_BYTES.is_multiple_of(PAGE_SIZE));

/// The regions of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The hypervisor image (code, data, bss, the window's L1 tables).
    Image,
    /// The [`crate::frame::FrameInfo`] array.
    FrameMetadata,
    /// The heap's virtual range.
    Heap,
    /// Boot-time mappings of firmware data (ACPI tables, multiboot information).
    Firmware,
    /// Device registers (local APIC, IO-APIC, HPET...).
    Mmio,
    /// Per-CPU temporary mappings of arbitrary machine frames.
    TempMappings,
    /// Per-CPU stacks and data, [`PER_CPU_BYTES`] per CPU.
    PerCpu,
}

impl Region {
    /// Number of regions (each is placed at most once).
    pub const COUNT: usize = 7;

    /// Short name for the layout table.
    pub const fn name(self) -> &'static str {
        match self {
            Region::Image => "image",
            Region::FrameMetadata => "frame metadata",
            Region::Heap => "heap",
            Region::Firmware => "firmware",
            Region::Mmio => "mmio",
            Region::TempMappings => "temp mappings",
            Region::PerCpu => "per-cpu",
        }
    }
}

/// The interrupt-stack-table stacks of each CPU, in slot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IstStack {
    /// #DF.
    DoubleFault = 0,
    /// NMI.
    Nmi = 1,
    /// #MC.
    MachineCheck = 2,
    /// #DB: a guest's breakpoint may fire in hypervisor context, even at the first
    /// instruction of the `syscall` entry, with the guest's stack pointer (XSA-260).
    Debug = 3,
}

/// A non-empty, page-aligned virtual range inside the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaRange {
    /// First address.
    pub start: u64,
    /// Size in bytes (a non-zero multiple of the page size).
    pub size: u64,
}

impl VaRange {
    /// Last address in the range (its end would overflow for the last window page).
    pub const fn last(&self) -> u64 {
        self.start + (self.size - 1)
    }

    /// Whether `va` lies in the range.
    pub const fn contains(&self, va: u64) -> bool {
        va >= self.start && va <= self.last()
    }

    /// The address just above the range: a stack's initial stack pointer. `None` for a
    /// range that ends at the top of the address space.
    pub const fn top(&self) -> Option<u64> {
        self.start.checked_add(self.size)
    }
}

/// A placed region and how much of it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedRegion {
    /// Which region.
    pub region: Region,
    /// Where it is.
    pub range: VaRange,
    /// Bytes in use (set with [`WindowLayout::set_used`]).
    pub used: u64,
}

/// Why a layout operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The region does not fit in what is left of the window.
    DoesNotFit {
        /// The region.
        region: Region,
        /// Bytes asked for (page-rounded when representable).
        needed: u64,
        /// Bytes left in the window.
        available: u64,
    },
    /// A region of zero bytes was asked for.
    Empty(Region),
    /// The region was placed before.
    AlreadyPlaced(Region),
    /// The region has not been placed.
    NotPlaced(Region),
    /// More bytes recorded as used than the region holds.
    UsedExceedsReserved {
        /// The region.
        region: Region,
        /// Bytes recorded.
        used: u64,
        /// Bytes reserved.
        reserved: u64,
    },
}

/// Where a window address is mapped: entry `entry` of window L1 table `table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSlot {
    /// Which of the [`WINDOW_L1_TABLES`] tables.
    pub table: usize,
    /// Which of its [`L1_ENTRIES`] entries.
    pub entry: usize,
}

/// The L1 entry that maps `va`; `None` outside the window.
pub const fn window_slot(va: u64) -> Option<WindowSlot> {
    if va < WINDOW_BASE {
        return None;
    }
    let page = ((va - WINDOW_BASE) >> PAGE_SHIFT) as usize;
    Some(WindowSlot {
        table: page / L1_ENTRIES,
        entry: page % L1_ENTRIES,
    })
}

/// Bytes of frame metadata (page-rounded) that describe machine memory `[0, max_addr)`.
pub const fn metadata_bytes_for(max_addr: u64) -> u64 {
    pages_for(pages_for(max_addr) * FRAME_INFO_SIZE) * PAGE_SIZE
}

/// Bytes of frame metadata per GiB of machine address space (4 MiB).
pub const fn metadata_bytes_per_gib() -> u64 {
    (1 << 30) / PAGE_SIZE * FRAME_INFO_SIZE
}

/// One CPU's stacks and data page in [`Region::PerCpu`]. Guard pages lie between them
/// and must stay unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerCpuArea {
    /// The hypervisor stack.
    pub kernel_stack: VaRange,
    /// The IST stacks, indexed by [`IstStack`].
    pub ist: [VaRange; IST_STACKS],
    /// The per-CPU data page.
    pub data: VaRange,
    /// The whole GDT range; only its reserved page is backed by the hypervisor.
    pub gdt: VaRange,
    /// The LDT range, backed by the running vCPU's LDT frames (or the zero frame).
    pub ldt: VaRange,
}

impl PerCpuArea {
    fn at(slot: u64) -> PerCpuArea {
        let stack = |offset: u64, size: u64| VaRange {
            start: slot + offset,
            size,
        };
        let ist_offset = |i: u64| {
            GUARD_BYTES + KERNEL_STACK_BYTES + i * (GUARD_BYTES + IST_STACK_BYTES) + GUARD_BYTES
        };
        PerCpuArea {
            kernel_stack: stack(GUARD_BYTES, KERNEL_STACK_BYTES),
            ist: [0, 1, 2, 3].map(|i| stack(ist_offset(i), IST_STACK_BYTES)),
            data: stack(PER_CPU_BYTES - LDT_BYTES - GDT_BYTES - PER_CPU_DATA_BYTES, PER_CPU_DATA_BYTES),
            gdt: stack(PER_CPU_BYTES - LDT_BYTES - GDT_BYTES, GDT_BYTES),
            ldt: stack(PER_CPU_BYTES - LDT_BYTES, LDT_BYTES),
        }
    }

    /// The GDT's reserved page (selector 0xe000 up), the only GDT page the hypervisor backs.
    pub const fn gdt_reserved_page(&self) -> u64 {
        self.gdt.start + GDT_RESERVED_OFFSET
    }

    /// Every page of the area that needs memory behind it: the stacks, the data page and
    /// the GDT's reserved page. Guard pages and the guest part of the GDT are left out.
    pub fn backed_pages(&self) -> impl Iterator<Item = u64> {
        let ranges = [self.kernel_stack, self.ist[0], self.ist[1], self.ist[2], self.ist[3], self.data];
        let reserved = self.gdt_reserved_page();
        ranges
            .into_iter()
            .flat_map(|r| (0..r.size / PAGE_SIZE).map(move |i| r.start + i * PAGE_SIZE))
            .chain(core::iter::once(reserved))
    }

    /// Initial stack pointer of the kernel stack (the data page lies above it, so the
    /// top never overflows).
    pub const fn kernel_stack_top(&self) -> u64 {
        self.kernel_stack.start + self.kernel_stack.size
    }

    /// Initial stack pointer of an IST stack, for the TSS.
    pub const fn ist_top(&self, stack: IstStack) -> u64 {
        let range = self.ist[stack as usize];
        range.start + range.size
    }
}

/// The window's regions, placed in order from [`WINDOW_BASE`].
#[derive(Clone, Debug)]
pub struct WindowLayout {
    regions: ArrayVec<PlacedRegion, { Region::COUNT }>,
    /// Bytes of the window placed so far.
    placed: u64,
}

impl WindowLayout {
    /// A layout holding only the image at [`WINDOW_BASE`], marked fully used.
    pub fn new(image_bytes: u64) -> Result<WindowLayout, LayoutError> {
        let mut layout = WindowLayout {
            regions: ArrayVec::new(),
            placed: 0,
        };
        layout.place(Region::Image, image_bytes)?;
        layout.set_used(Region::Image, image_bytes)?;
        Ok(layout)
    }

    /// Places `region`, `bytes` rounded up to pages, right after the last placed one.
    pub fn place(&mut self, region: Region, bytes: u64) -> Result<VaRange, LayoutError> {
        if self.region(region).is_some() {
            return Err(LayoutError::AlreadyPlaced(region));
        }
        if bytes == 0 {
            return Err(LayoutError::Empty(region));
        }
        let available = self.available();
        let size = page_align_up(bytes).filter(|&size| size <= available);
        let size = size.ok_or(LayoutError::DoesNotFit {
            region,
            needed: page_align_up(bytes).unwrap_or(bytes),
            available,
        })?;
        let range = VaRange {
            start: WINDOW_BASE + self.placed,
            size,
        };
        self.regions.push(PlacedRegion {
            region,
            range,
            used: 0,
        });
        self.placed += size;
        Ok(range)
    }

    /// Records that `used` bytes of `region` are in use.
    pub fn set_used(&mut self, region: Region, used: u64) -> Result<(), LayoutError> {
        let placed = self.regions.iter_mut().find(|p| p.region == region);
        let placed = placed.ok_or(LayoutError::NotPlaced(region))?;
        if used > placed.range.size {
            return Err(LayoutError::UsedExceedsReserved {
                region,
                used,
                reserved: placed.range.size,
            });
        }
        placed.used = used;
        Ok(())
    }

    /// The placed `region`, if any.
    pub fn region(&self, region: Region) -> Option<&PlacedRegion> {
        self.regions.iter().find(|p| p.region == region)
    }

    /// All placed regions, in address order.
    pub fn regions(&self) -> &[PlacedRegion] {
        &self.regions
    }

    /// Bytes of the window not yet placed.
    pub fn available(&self) -> u64 {
        WINDOW_SIZE - self.placed
    }

    /// The largest machine address span `[0, n)` whose frame metadata fits in what is
    /// left after also placing regions of `later_regions` bytes each. Boot caps usable
    /// memory to it (with a warning) instead of failing on big machines.
    pub fn max_ram_bytes(&self, later_regions: &[u64]) -> u64 {
        let later: u64 = later_regions
            .iter()
            .map(|&b| pages_for(b) * PAGE_SIZE)
            .sum();
        let budget = page_align_down(self.available().saturating_sub(later));
        budget / FRAME_INFO_SIZE * PAGE_SIZE
    }

    /// The stacks and data page of `cpu`; `None` if [`Region::PerCpu`] is not placed or
    /// too small for it.
    pub fn per_cpu(&self, cpu: u32) -> Option<PerCpuArea> {
        let range = self.region(Region::PerCpu)?.range;
        let offset = u64::from(cpu) * PER_CPU_BYTES;
        (offset + PER_CPU_BYTES <= range.size).then(|| PerCpuArea::at(range.start + offset))
    }

    /// Address of temporary-mapping `slot` of `cpu`; `None` if the slot or CPU is out of
    /// range or [`Region::TempMappings`] is not placed.
    pub fn temp_slot(&self, cpu: u32, slot: u64) -> Option<u64> {
        let range = self.region(Region::TempMappings)?.range;
        let offset = (u64::from(cpu) * TEMP_SLOTS_PER_CPU + slot) * PAGE_SIZE;
        (slot < TEMP_SLOTS_PER_CPU && offset < range.size).then_some(range.start + offset)
    }
}

/// One line per region, then one for the unplaced rest:
/// `window: heap           0xfffffffffc400000-0xfffffffffcbfffff reserved   8192 KiB used    312 KiB`
impl fmt::Display for WindowLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.regions {
            writeln!(
                f,
                "window: {:<14} {:#018x}-{:#018x} reserved {:>6} KiB used {:>6} KiB",
                p.region.name(),
                p.range.start,
                p.range.last(),
                p.range.size / KIB,
                p.used.div_ceil(KIB),
            )?;
        }
        if self.available() > 0 {
            let start = WINDOW_BASE + self.placed;
            let free = VaRange {
                start,
                size: self.available(),
            };
            let kib = free.size / KIB;
            writeln!(
                f,
                "window: {:<14} {start:#018x}-{:#018x} {kib:>15} KiB",
                "free",
                free.last()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn boot_layout() -> WindowLayout {
        let mut layout = WindowLayout::new(2 * MIB + 123).unwrap();
        layout
            .place(Region::FrameMetadata, metadata_bytes_for(4 * GIB))
            .unwrap();
        layout.place(Region::Heap, 8 * MIB).unwrap();
        layout.place(Region::Firmware, MIB).unwrap();
        layout.place(Region::Mmio, 256 * KIB).unwrap();
        layout
            .place(Region::TempMappings, 8 * TEMP_SLOTS_PER_CPU * PAGE_SIZE)
            .unwrap();
        layout.place(Region::PerCpu, 8 * PER_CPU_BYTES).unwrap();
        layout
    }

    #[test]
    fn regions_are_consecutive_page_aligned_and_inside_the_window() {
        let layout = boot_layout();
        let regions = layout.regions();
        assert_eq!(
            regions[0].range,
            VaRange {
                start: WINDOW_BASE,
                size: 2 * MIB + PAGE_SIZE
            }
        );
        assert_eq!(regions[1].range.size, 16 * MIB);
        for pair in regions.windows(2) {
            assert_eq!(pair[0].range.last() + 1, pair[1].range.start);
        }
        for p in regions {
            assert_eq!(p.range.start % PAGE_SIZE, 0);
            assert_eq!(p.range.size % PAGE_SIZE, 0);
            assert!(p.range.start >= WINDOW_BASE);
        }
        let used: u64 = regions.iter().map(|p| p.range.size).sum();
        assert_eq!(layout.available(), WINDOW_SIZE - used);
        assert_eq!(layout.region(Region::Image).unwrap().used, 2 * MIB + 123);
    }

    #[test]
    fn overflowing_the_window_is_a_typed_error() {
        let mut layout = WindowLayout::new(4 * MIB).unwrap();
        layout.place(Region::Heap, 50 * MIB).unwrap();
        let err = layout.place(Region::FrameMetadata, 10 * MIB + 1);
        assert_eq!(
            err,
            Err(LayoutError::DoesNotFit {
                region: Region::FrameMetadata,
                needed: 10 * MIB + PAGE_SIZE,
                available: 10 * MIB,
            })
        );
        assert_eq!(
            layout.available(),
            10 * MIB,
            "a failed place changes nothing"
        );
        let last = layout.place(Region::FrameMetadata, 10 * MIB).unwrap();
        assert_eq!(last.last(), u64::MAX);
        assert_eq!(last.top(), None);
        let full = layout.place(Region::Mmio, 1);
        assert_eq!(
            full,
            Err(LayoutError::DoesNotFit {
                region: Region::Mmio,
                needed: PAGE_SIZE,
                available: 0
            })
        );
        let huge = layout.place(Region::PerCpu, u64::MAX);
        assert!(matches!(
            huge,
            Err(LayoutError::DoesNotFit {
                needed: u64::MAX,
                ..
            })
        ));
        assert!(matches!(
            WindowLayout::new(WINDOW_SIZE + 1),
            Err(LayoutError::DoesNotFit {
                region: Region::Image,
                ..
            })
        ));
    }

    #[test]
    fn misuse_is_refused() {
        let mut layout = WindowLayout::new(MIB).unwrap();
        assert_eq!(
            layout.place(Region::Image, MIB),
            Err(LayoutError::AlreadyPlaced(Region::Image))
        );
        assert_eq!(
            layout.place(Region::Heap, 0),
            Err(LayoutError::Empty(Region::Heap))
        );
        assert_eq!(
            layout.set_used(Region::Heap, 1),
            Err(LayoutError::NotPlaced(Region::Heap))
        );
        layout.place(Region::Heap, MIB).unwrap();
        layout.set_used(Region::Heap, MIB).unwrap();
        assert_eq!(
            layout.set_used(Region::Heap, MIB + 1),
            Err(LayoutError::UsedExceedsReserved {
                region: Region::Heap,
                used: MIB + 1,
                reserved: MIB
            })
        );
        assert_eq!(layout.region(Region::Heap).unwrap().used, MIB);
    }

    #[test]
    fn metadata_arithmetic() {
        assert_eq!(metadata_bytes_per_gib(), 4 * MIB);
        assert_eq!(metadata_bytes_for(GIB), 4 * MIB);
        assert_eq!(metadata_bytes_for(1), PAGE_SIZE);
        assert_eq!(metadata_bytes_for(0), 0);
        assert_eq!(metadata_bytes_for(PAGE_SIZE * 257), 2 * PAGE_SIZE);
    }

    #[test]
    fn max_ram_is_what_the_remaining_space_can_describe() {
        let layout = WindowLayout::new(4 * MIB).unwrap();
        let later = [8 * MIB, MIB, 256 * KIB, 1, 64 * PER_CPU_BYTES];
        let max = layout.max_ram_bytes(&later);
        let later_bytes = 8 * MIB + MIB + 256 * KIB + PAGE_SIZE + 64 * PER_CPU_BYTES;
        let budget = WINDOW_SIZE - 4 * MIB - later_bytes;
        assert_eq!(max, budget / FRAME_INFO_SIZE * PAGE_SIZE);
        assert!(max > 9 * GIB && max < 11 * GIB, "{max:#x}");
        // Placing metadata for exactly that much, then the rest, fits; one page more does not.
        let mut fits = layout.clone();
        fits.place(Region::FrameMetadata, metadata_bytes_for(max))
            .unwrap();
        for (region, bytes) in [
            Region::Heap,
            Region::Firmware,
            Region::Mmio,
            Region::TempMappings,
            Region::PerCpu,
        ]
        .into_iter()
        .zip(later)
        {
            fits.place(region, bytes).unwrap();
        }
        let mut too_big = layout.clone();
        too_big
            .place(
                Region::FrameMetadata,
                metadata_bytes_for(max + 256 * PAGE_SIZE),
            )
            .unwrap();
        for (region, bytes) in [
            Region::Heap,
            Region::Firmware,
            Region::Mmio,
            Region::TempMappings,
        ]
        .into_iter()
        .zip(later)
        {
            too_big.place(region, bytes).unwrap();
        }
        assert!(too_big.place(Region::PerCpu, later[4]).is_err());
        assert_eq!(
            layout.max_ram_bytes(&[WINDOW_SIZE]),
            0,
            "nothing left is no RAM"
        );
    }

    #[test]
    fn per_cpu_areas_have_guards_and_stay_in_their_region() {
        let layout = boot_layout();
        let region = layout.region(Region::PerCpu).unwrap().range;
        assert_eq!(PER_CPU_BYTES, 216 * KIB);
        let cpu0 = layout.per_cpu(0).unwrap();
        assert_eq!(cpu0.kernel_stack.start, region.start + GUARD_BYTES);
        assert_eq!(
            cpu0.kernel_stack_top(),
            region.start + GUARD_BYTES + KERNEL_STACK_BYTES
        );
        let mut previous_end = cpu0.kernel_stack_top();
        for (i, stack) in [IstStack::DoubleFault, IstStack::Nmi, IstStack::MachineCheck, IstStack::Debug]
            .into_iter()
            .enumerate()
        {
            let range = cpu0.ist[i];
            assert_eq!(
                range.start,
                previous_end + GUARD_BYTES,
                "guard below IST {i}"
            );
            assert_eq!(range.size, IST_STACK_BYTES);
            assert_eq!(cpu0.ist_top(stack), range.start + IST_STACK_BYTES);
            previous_end = cpu0.ist_top(stack);
        }
        assert_eq!(cpu0.data.start, previous_end);
        assert!(cpu0.data.contains(cpu0.data.last()) && !cpu0.data.contains(previous_end - 1));
        assert_eq!(cpu0.gdt.start, cpu0.data.start + PER_CPU_DATA_BYTES);
        assert_eq!(cpu0.gdt_reserved_page(), cpu0.gdt.start + 14 * PAGE_SIZE);
        let backed: Vec<u64> = cpu0.backed_pages().collect();
        assert_eq!(backed.len() as u64, (KERNEL_STACK_BYTES + 4 * IST_STACK_BYTES + 2 * PAGE_SIZE) / PAGE_SIZE);
        assert!(backed.iter().all(|&p| p % PAGE_SIZE == 0 && !(cpu0.gdt.contains(p) && p != cpu0.gdt_reserved_page())));
        assert!(backed.iter().all(|&p| !cpu0.ldt.contains(p)), "the LDT range is never the hypervisor's memory");
        assert_eq!(cpu0.ldt.start, cpu0.gdt.start + GDT_BYTES);
        assert!(!backed.contains(&region.start), "the guard page is never backed");
        let cpu7 = layout.per_cpu(7).unwrap();
        assert_eq!(cpu7.ldt.last(), region.last());
        assert_eq!(
            cpu7.kernel_stack.start - GUARD_BYTES,
            cpu0.kernel_stack.start - GUARD_BYTES + 7 * PER_CPU_BYTES
        );
        assert_eq!(layout.per_cpu(8), None);
        assert_eq!(WindowLayout::new(MIB).unwrap().per_cpu(0), None);
    }

    #[test]
    fn temp_slots() {
        let layout = boot_layout();
        let region = layout.region(Region::TempMappings).unwrap().range;
        assert_eq!(layout.temp_slot(0, 0), Some(region.start));
        assert_eq!(
            layout.temp_slot(1, 2),
            Some(region.start + (TEMP_SLOTS_PER_CPU + 2) * PAGE_SIZE)
        );
        assert_eq!(
            layout.temp_slot(7, TEMP_SLOTS_PER_CPU - 1),
            Some(region.last() + 1 - PAGE_SIZE)
        );
        assert_eq!(layout.temp_slot(0, TEMP_SLOTS_PER_CPU), None);
        assert_eq!(layout.temp_slot(8, 0), None);
    }

    #[test]
    fn window_slots_cover_the_window_exactly() {
        assert_eq!(window_slot(WINDOW_BASE - 1), None);
        assert_eq!(window_slot(0), None);
        assert_eq!(
            window_slot(WINDOW_BASE),
            Some(WindowSlot { table: 0, entry: 0 })
        );
        assert_eq!(
            window_slot(WINDOW_BASE + 0x20_1fff),
            Some(WindowSlot { table: 1, entry: 1 })
        );
        assert_eq!(
            window_slot(u64::MAX),
            Some(WindowSlot {
                table: WINDOW_L1_TABLES - 1,
                entry: L1_ENTRIES - 1
            })
        );
    }

    #[test]
    fn table_lists_every_region_and_the_rest() {
        let mut layout = boot_layout();
        layout.set_used(Region::Heap, 312 * KIB + 5).unwrap();
        let text = layout.to_string();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 8);
        assert_eq!(
            lines[0],
            "window: image          0xfffffffffc000000-0xfffffffffc200fff reserved   2052 KiB used   2049 KiB"
        );
        assert_eq!(
            lines[2],
            "window: heap           0xfffffffffd201000-0xfffffffffda00fff reserved   8192 KiB used    313 KiB"
        );
        assert!(lines[6].starts_with("window: per-cpu "));
        assert!(lines[7].starts_with("window: free           "));
        assert!(
            lines[7].ends_with("0xffffffffffffffff           35388 KiB"),
            "{}",
            lines[7]
        );
    }
}

//! Executes a start-of-day plan: writes a domain's initial memory through the
//! [`GuestMemory`] trait the hypervisor implements.
//!
//! The hypervisor allocates the domain's frames (any machine frames), then calls [`build`]
//! with the kernel, the domain's configuration and the entries it provides. Everything
//! that can fail (the plan, the command line) is checked before the first write, except
//! reading the image: a source may fail half-way (a decompressor finding its stream
//! corrupt), and the build then stops with the error, leaving the frames for the
//! hypervisor to release. Then, in order: every frame of the initial mapping is zeroed;
//! the segments' file bytes are copied from the image, in file order, a page at a time
//! (so the bss and all other frames stay zero); the hypercall page is filled; the P2M
//! list, `start_info` and the page tables are written. Frames past the initial
//! mapping are not touched: the hypervisor must hand them over scrubbed. This module must
//! never give frames their page-table types or pin anything: it returns the list of
//! table frames for the hypervisor to do so.

use alloc::boxed::Box;
use alloc::vec::Vec;

use abi::hypercall_page::{fill_hypercall_page, HYPERCALL_PAGE_SIZE};
use abi::ids::{Mfn, Pfn};

use crate::address_space::{P2M_ENTRIES_PER_FRAME, PAGE_SIZE};
use crate::error::BuildError;
use crate::image::{ImageSource, MAX_READ};
use crate::kernel::{LoadSegment, PvKernel};
use crate::layout::{DomainConfig, Plan};
use crate::page_tables::{build_tables, HypervisorEntries, PageTableFrame, Table};
use crate::start_info::{encode, start_info_for};

/// Bytes per frame, as a buffer length.
const FRAME_BYTES: usize = PAGE_SIZE as usize;

/// The domain's memory as the builder sees it: frames 0..nr_pages of the reservation,
/// each backed by a machine frame the hypervisor chose.
pub trait GuestMemory {
    /// The machine frame backing `pfn` (`pfn < nr_pages`).
    fn frame_mfn(&self, pfn: Pfn) -> Mfn;
    /// Copies `bytes` into frame `pfn` at `offset`; `offset + bytes.len()` never exceeds
    /// 4096.
    fn write(&mut self, pfn: Pfn, offset: usize, bytes: &[u8]);
    /// Fills frame `pfn` with zeros.
    fn zero(&mut self, pfn: Pfn);
}

/// What the hypervisor provides to every domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypervisorInputs {
    /// Machine address of the domain's shared info page (`start_info.shared_info`).
    pub shared_info_maddr: u64,
    /// Written verbatim into entry 511 of the window-L3 (the L3 under L4 slot 511, which
    /// the hypervisor validates as its own type): the hypervisor's top gigabyte.
    pub hypervisor_l3_entry: u64,
    /// Written verbatim into L4 slot 256, if given: the read-only M2P table.
    pub m2p_l4_entry: Option<u64>,
}

/// A domain ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltDomain {
    /// rip at entry.
    pub entry_rip: u64,
    /// rsi at entry: the virtual address of `start_info`.
    pub start_info_va: u64,
    /// rsp at entry: just past the boot stack page.
    pub stack_top: u64,
    /// The L4 (cr3 holds its machine frame; pin it as an L4).
    pub l4_pfn: Pfn,
    /// Every boot page-table frame with its level, the L4 first.
    pub page_tables: Vec<PageTableFrame>,
    /// The layout that was built.
    pub plan: Plan,
}

/// Builds the start-of-day memory of a domain running `kernel`.
pub fn build<I: ImageSource + ?Sized>(
    kernel: &PvKernel<'_, I>,
    config: &DomainConfig<'_>,
    hypervisor: &HypervisorInputs,
    memory: &mut impl GuestMemory,
) -> Result<BuiltDomain, BuildError> {
    let plan = Plan::new(kernel, config)?;
    let mfn_of = |pfn| memory.frame_mfn(pfn);
    let start_info = encode(&start_info_for(
        &plan,
        config,
        hypervisor.shared_info_maddr,
        mfn_of,
    )?);
    let entries = HypervisorEntries {
        hypervisor_l3_entry: hypervisor.hypervisor_l3_entry,
        m2p_l4_entry: hypervisor.m2p_l4_entry,
    };
    let tables = build_tables(&plan, mfn_of, entries);

    for pfn in plan.mapping().iter() {
        memory.zero(pfn);
    }
    // In file order, so that a source that is a stream is read front to back.
    let mut segments: Vec<&LoadSegment> = kernel.segments().iter().collect();
    segments.sort_by_key(|segment| segment.file_offset);
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(FRAME_BYTES)
        .map_err(|_| BuildError::OutOfMemory {
            bytes: FRAME_BYTES as u64,
        })?;
    buffer.resize(FRAME_BYTES, 0);
    for segment in segments {
        load_segment(&plan, kernel.image(), segment, &mut buffer, memory)?;
    }
    if let Some(pfn) = plan.hypercall_page {
        write_hypercall_page(pfn, memory);
    }
    write_p2m(&plan, memory);
    memory.write(plan.start_info, 0, &start_info);
    write_tables(&tables, memory);

    Ok(BuiltDomain {
        entry_rip: plan.entry,
        start_info_va: plan.start_info_va,
        stack_top: plan.stack_top,
        l4_pfn: plan.page_tables.start,
        page_tables: tables.iter().map(|table| table.frame).collect(),
        plan,
    })
}

/// Copies a segment's file bytes from the image, frame by frame (through `buffer`, one
/// frame long), to where the plan maps its address.
fn load_segment<I: ImageSource + ?Sized>(
    plan: &Plan,
    image: &I,
    segment: &LoadSegment,
    buffer: &mut [u8],
    memory: &mut impl GuestMemory,
) -> Result<(), BuildError> {
    const _: () = assert!(MAX_READ >= FRAME_BYTES);
    let mut offset_in_image = segment.address - plan.virt_base;
    let mut file_offset = segment.file_offset;
    let end = segment.file_offset + segment.filesz;
    while file_offset < end {
        let pfn = Pfn(offset_in_image / PAGE_SIZE);
        let offset = (offset_in_image % PAGE_SIZE) as usize;
        let len = (end - file_offset).min((FRAME_BYTES - offset) as u64) as usize;
        let chunk = &mut buffer[..len];
        image.read(file_offset, chunk)?;
        memory.write(pfn, offset, chunk);
        offset_in_image += len as u64;
        file_offset += len as u64;
    }
    Ok(())
}

fn write_hypercall_page(pfn: Pfn, memory: &mut impl GuestMemory) {
    let mut page = Box::new([0; HYPERCALL_PAGE_SIZE]);
    fill_hypercall_page(&mut page);
    memory.write(pfn, 0, &page[..]);
}

/// Writes the P2M list: entry `pfn` holds the machine frame of `pfn`.
fn write_p2m(plan: &Plan, memory: &mut impl GuestMemory) {
    let mut buffer = Vec::with_capacity(FRAME_BYTES);
    for (index, frame) in plan.p2m.iter().enumerate() {
        let first = index as u64 * P2M_ENTRIES_PER_FRAME;
        let end = (first + P2M_ENTRIES_PER_FRAME).min(plan.nr_pages);
        buffer.clear();
        for pfn in first..end {
            buffer.extend_from_slice(&memory.frame_mfn(Pfn(pfn)).0.to_le_bytes());
        }
        memory.write(frame, 0, &buffer);
    }
}

fn write_tables(tables: &[Table], memory: &mut impl GuestMemory) {
    let mut buffer = Vec::with_capacity(FRAME_BYTES);
    for table in tables {
        buffer.clear();
        for entry in &table.entries {
            buffer.extend_from_slice(&entry.to_le_bytes());
        }
        memory.write(table.frame.pfn, 0, &buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_tables::{Level, PTE_ADDRESS_MASK, PTE_PRESENT};
    use crate::test_image::{TestImage, TestSegment, VIRT_BASE};
    use abi::elfnote::ElfNote;
    use abi::features::FeatureSet;
    use abi::hypercall_page::hypercall_page;
    use abi::ids::EvtchnPort;
    use abi::start_info::CmdLineError;
    use crate::image::tests::RecordingImage;
    use alloc::vec;

    /// What frames hold before the build: anything the builder leaves must show.
    const GARBAGE: u8 = 0xAA;
    /// Machine frames are handed out descending and three apart, from here.
    const MFN_BASE: u64 = 0x9_0000;
    const HYPERVISOR_L3_ENTRY: u64 = 0x0000_0012_3456_7067;
    const M2P_L4_ENTRY: u64 = 0x8000_0000_0abc_d025;
    /// Present, writable, user, accessed.
    const TABLE_ENTRY_FLAGS: u64 = 0x27;
    /// Present, writable, user, accessed, dirty.
    const WRITABLE_PAGE_FLAGS: u64 = 0x67;
    /// Present, user, accessed, dirty: not writable.
    const READ_ONLY_PAGE_FLAGS: u64 = 0x65;

    const CONFIG: DomainConfig<'static> = DomainConfig {
        nr_pages: 2048,
        cmd_line: b"console=hvc0 root=/dev/xvda",
        is_privileged: false,
        xenstore: Some(EvtchnPort(1)),
        console: Some(EvtchnPort(2)),
    };
    const HYPERVISOR: HypervisorInputs = HypervisorInputs {
        shared_info_maddr: 0x7654_3000,
        hypervisor_l3_entry: HYPERVISOR_L3_ENTRY,
        m2p_l4_entry: Some(M2P_L4_ENTRY),
    };

    /// A reservation of non-contiguous machine frames, pre-filled with garbage.
    struct TestMemory {
        frames: Vec<Vec<u8>>,
    }

    impl TestMemory {
        fn new(nr_pages: u64) -> Self {
            Self {
                frames: (0..nr_pages).map(|_| vec![GARBAGE; FRAME_BYTES]).collect(),
            }
        }

        fn nr_pages(&self) -> u64 {
            self.frames.len() as u64
        }

        /// The frame backed by `mfn`, if it belongs to the domain.
        fn pfn_of(&self, mfn: Mfn) -> Option<Pfn> {
            let distance = mfn.0.checked_sub(MFN_BASE)?;
            let k = distance / 3;
            (distance % 3 == 0 && (1..=self.nr_pages()).contains(&k))
                .then(|| Pfn(self.nr_pages() - k))
        }

        fn frame(&self, pfn: Pfn) -> &[u8] {
            &self.frames[pfn.0 as usize]
        }

        fn u64_at(&self, pfn: Pfn, offset: usize) -> u64 {
            let bytes = &self.frame(pfn)[offset..offset + 8];
            u64::from_le_bytes(bytes.try_into().unwrap())
        }

        fn untouched(&self) -> bool {
            self.frames.iter().flatten().all(|&b| b == GARBAGE)
        }
    }

    impl GuestMemory for TestMemory {
        fn frame_mfn(&self, pfn: Pfn) -> Mfn {
            assert!(
                pfn.0 < self.nr_pages(),
                "{pfn:?} is outside the reservation"
            );
            Mfn(MFN_BASE + 3 * (self.nr_pages() - pfn.0))
        }

        fn write(&mut self, pfn: Pfn, offset: usize, bytes: &[u8]) {
            self.frames[pfn.0 as usize][offset..offset + bytes.len()].copy_from_slice(bytes);
        }

        fn zero(&mut self, pfn: Pfn) {
            self.frames[pfn.0 as usize].fill(0);
        }
    }

    /// The leaf entry mapping `va`, found by following the entries from the L4 through
    /// machine frames; `None` where an entry is not present.
    fn walk(memory: &TestMemory, l4: Pfn, va: u64) -> Option<u64> {
        let mut table = l4;
        for level in (1..=4u32).rev() {
            let index = ((va >> (12 + 9 * (level - 1))) & 511) as usize;
            let entry = memory.u64_at(table, index * 8);
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            if level == 1 {
                return Some(entry);
            }
            assert_eq!(
                entry & !PTE_ADDRESS_MASK,
                TABLE_ENTRY_FLAGS,
                "L{level} entry for {va:#x}"
            );
            table = memory
                .pfn_of(Mfn((entry & PTE_ADDRESS_MASK) >> 12))
                .expect("table entries point into the domain");
        }
        unreachable!()
    }

    /// Reads guest virtual memory through the page tables.
    fn read_virtual(memory: &TestMemory, l4: Pfn, va: u64, len: usize) -> Vec<u8> {
        (va..va + len as u64)
            .map(|address| {
                let leaf = walk(memory, l4, address).expect("mapped");
                let pfn = memory.pfn_of(Mfn((leaf & PTE_ADDRESS_MASK) >> 12)).unwrap();
                memory.frame(pfn)[(address % PAGE_SIZE) as usize]
            })
            .collect()
    }

    fn build_image(
        image: &TestImage,
        config: &DomainConfig<'_>,
        hypervisor: &HypervisorInputs,
    ) -> (Result<BuiltDomain, BuildError>, TestMemory) {
        let bytes = image.bytes();
        let kernel = PvKernel::parse(&bytes, FeatureSet::EMPTY).unwrap();
        let mut memory = TestMemory::new(config.nr_pages);
        let result = build(&kernel, config, hypervisor, &mut memory);
        (result, memory)
    }

    fn build_minimal() -> (BuiltDomain, TestMemory, TestImage) {
        let image = TestImage::minimal();
        let (built, memory) = build_image(&image, &CONFIG, &HYPERVISOR);
        (built.unwrap(), memory, image)
    }

    #[test]
    fn reports_entry_state_and_tables() {
        let (built, _, _) = build_minimal();
        let plan = built.plan;
        assert_eq!(built.entry_rip, VIRT_BASE + 0x40);
        assert_eq!(built.start_info_va, plan.va(plan.start_info));
        assert_eq!(built.stack_top, plan.va(plan.stack) + PAGE_SIZE);
        assert_eq!(built.l4_pfn, plan.page_tables.start);
        assert_eq!(built.page_tables.len() as u64, plan.nr_pt_frames);
        assert_eq!(
            built.page_tables[0],
            PageTableFrame {
                pfn: built.l4_pfn,
                level: Level::L4
            }
        );
        let levels: Vec<Level> = built.page_tables.iter().map(|t| t.level).collect();
        assert_eq!(
            levels,
            [Level::L4, Level::L3, Level::L2, Level::L1, Level::L1]
        );
        for (table, pfn) in built.page_tables.iter().zip(plan.page_tables.iter()) {
            assert_eq!(table.pfn, pfn);
        }
    }

    #[test]
    fn loads_segments_and_zeroes_the_bss() {
        let (built, memory, image) = build_minimal();
        let data = &image.segments[0].data;
        assert_eq!(memory.frame(Pfn(0)), &data[..0x1000]);
        assert_eq!(&memory.frame(Pfn(2))[..0x800], &data[0x2000..0x2800]);
        assert!(memory.frame(Pfn(2))[0x800..].iter().all(|&b| b == 0), "bss");
        assert!(memory.frame(Pfn(3)).iter().all(|&b| b == 0), "bss");
        let l4 = built.l4_pfn;
        assert_eq!(
            read_virtual(&memory, l4, VIRT_BASE + 0x2400, 0x400),
            &data[0x2400..0x2800]
        );
    }

    #[test]
    fn zeroes_the_mapping_and_leaves_the_rest() {
        let (built, memory, _) = build_minimal();
        let plan = built.plan;
        for pfn in [
            plan.stack,
            plan.xenstore.unwrap(),
            plan.console.unwrap(),
            plan.first_free_pfn,
        ] {
            assert!(memory.frame(pfn).iter().all(|&b| b == 0), "{pfn:?}");
        }
        let last_mapped = Pfn(plan.mapped_pages - 1);
        assert!(memory.frame(last_mapped).iter().all(|&b| b == 0));
        assert_eq!(plan.mapped_pages, 1024);
        let unmapped = Pfn(plan.mapped_pages);
        assert!(memory.frame(unmapped).iter().all(|&b| b == GARBAGE));
    }

    #[test]
    fn fills_the_hypercall_page() {
        let (built, memory, _) = build_minimal();
        assert_eq!(built.plan.hypercall_page, Some(Pfn(1)));
        assert_eq!(memory.frame(Pfn(1)), &hypercall_page()[..]);
        let through_tables = read_virtual(&memory, built.l4_pfn, VIRT_BASE + 0x1000 + 29 * 32, 12);
        assert_eq!(
            through_tables,
            [0x51, 0x41, 0x53, 0xb8, 29, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b]
        );
    }

    #[test]
    fn writes_the_p2m_list() {
        let (built, memory, _) = build_minimal();
        let plan = built.plan;
        assert_eq!(plan.p2m.len(), 4);
        for pfn in 0..CONFIG.nr_pages {
            let frame = Pfn(plan.p2m.start.0 + pfn / 512);
            let entry = memory.u64_at(frame, (pfn % 512) as usize * 8);
            assert_eq!(entry, memory.frame_mfn(Pfn(pfn)).0, "P2M entry {pfn}");
        }
        let tail = read_virtual(&memory, built.l4_pfn, plan.p2m_va + 2047 * 8, 8);
        assert_eq!(
            u64::from_le_bytes(tail.try_into().unwrap()),
            memory.frame_mfn(Pfn(2047)).0
        );
    }

    #[test]
    fn p2m_of_a_partial_frame_ends_in_zeros() {
        let config = DomainConfig {
            nr_pages: 600,
            ..CONFIG
        };
        let (built, memory) = build_image(&TestImage::minimal(), &config, &HYPERVISOR);
        let plan = built.unwrap().plan;
        let second = Pfn(plan.p2m.start.0 + 1);
        assert_eq!(memory.u64_at(second, 87 * 8), memory.frame_mfn(Pfn(599)).0);
        assert_eq!(memory.u64_at(second, 88 * 8), 0);
    }

    #[test]
    fn page_tables_map_every_frame_and_tables_read_only() {
        let (built, memory, _) = build_minimal();
        let plan = built.plan;
        for pfn in plan.mapping().iter() {
            let leaf = walk(&memory, built.l4_pfn, plan.va(pfn))
                .unwrap_or_else(|| panic!("{pfn:?} is not mapped"));
            assert_eq!(leaf & PTE_ADDRESS_MASK, memory.frame_mfn(pfn).address());
            let flags = leaf & !PTE_ADDRESS_MASK;
            if plan.page_tables.contains(pfn) {
                assert_eq!(
                    flags, READ_ONLY_PAGE_FLAGS,
                    "table frame {pfn:?} must be read-only"
                );
            } else {
                assert_eq!(flags, WRITABLE_PAGE_FLAGS, "{pfn:?}");
            }
        }
        assert_eq!(
            walk(&memory, built.l4_pfn, plan.va(Pfn(plan.mapped_pages))),
            None
        );
        assert_eq!(walk(&memory, built.l4_pfn, VIRT_BASE - PAGE_SIZE), None);
        assert_eq!(walk(&memory, built.l4_pfn, 0), None);
    }

    #[test]
    fn page_tables_map_nothing_else() {
        let (built, memory, _) = build_minimal();
        let present = |pfn: Pfn| (0..512).filter(|i| memory.u64_at(pfn, i * 8) != 0).count();
        let l1_entries: usize = built
            .page_tables
            .iter()
            .filter(|table| table.level == Level::L1)
            .map(|table| present(table.pfn))
            .sum();
        assert_eq!(l1_entries as u64, built.plan.mapped_pages);
        assert_eq!(
            present(built.l4_pfn),
            2,
            "the guest's slot 511 and the M2P slot"
        );
    }

    fn hypervisor_l3(memory: &TestMemory, l4: Pfn) -> Pfn {
        let entry = memory.u64_at(l4, 511 * 8);
        assert_eq!(entry & !PTE_ADDRESS_MASK, TABLE_ENTRY_FLAGS);
        memory
            .pfn_of(Mfn((entry & PTE_ADDRESS_MASK) >> 12))
            .unwrap()
    }

    #[test]
    fn hypervisor_entries_share_the_guests_slot_511() {
        let (built, memory, _) = build_minimal();
        assert_eq!(memory.u64_at(built.l4_pfn, 256 * 8), M2P_L4_ENTRY);
        let l3 = hypervisor_l3(&memory, built.l4_pfn);
        assert_eq!(l3, built.page_tables[1].pfn, "the guest's own L3");
        assert_eq!(memory.u64_at(l3, 511 * 8), HYPERVISOR_L3_ENTRY);
        assert_ne!(memory.u64_at(l3, 510 * 8), 0, "the guest's kernel mapping");
    }

    #[test]
    fn lower_half_guest_gets_its_own_hypervisor_l3() {
        let base = 0x40_0000u64;
        let image = TestImage::minimal()
            .with_note(ElfNote::VirtBase, &base.to_le_bytes())
            .with_note(ElfNote::Entry, &(base + 0x40).to_le_bytes())
            .with_note(ElfNote::HypercallPage, &(base + 0x1000).to_le_bytes());
        let hypervisor = HypervisorInputs {
            m2p_l4_entry: None,
            ..HYPERVISOR
        };
        let (built, memory) = build_image(&image, &CONFIG, &hypervisor);
        let built = built.unwrap();
        let l3 = hypervisor_l3(&memory, built.l4_pfn);
        let last = *built.page_tables.last().unwrap();
        assert_eq!(
            last,
            PageTableFrame {
                pfn: l3,
                level: Level::L3
            }
        );
        let nonzero: Vec<usize> = (0..512).filter(|i| memory.u64_at(l3, i * 8) != 0).collect();
        assert_eq!(nonzero, [511]);
        assert_eq!(memory.u64_at(l3, 511 * 8), HYPERVISOR_L3_ENTRY);
        assert_eq!(
            memory.u64_at(built.l4_pfn, 256 * 8),
            0,
            "no M2P entry given"
        );
        let leaf = walk(&memory, built.l4_pfn, base).unwrap();
        assert_eq!(leaf & PTE_ADDRESS_MASK, memory.frame_mfn(Pfn(0)).address());
    }

    /// The window entry is in the window-L3 (the L3 under L4 slot 511) and in no other
    /// boot L3: the hypervisor types tables by where they are linked, and a plain L3's
    /// entry 511 is the guest's (one holding the window entry would be refused).
    fn check_window_only_in_the_window_l3(built: &BuiltDomain, memory: &TestMemory) {
        let window_l3 = hypervisor_l3(memory, built.l4_pfn);
        for table in built.page_tables.iter().filter(|t| t.level == Level::L3) {
            let entry = memory.u64_at(table.pfn, 511 * 8);
            if table.pfn == window_l3 {
                assert_eq!(entry, HYPERVISOR_L3_ENTRY, "{:?}: the window-L3", table.pfn);
            } else {
                assert_ne!(entry, HYPERVISOR_L3_ENTRY, "{:?}: a plain L3", table.pfn);
            }
        }
    }

    #[test]
    fn only_the_window_l3_holds_the_window_entry() {
        let (built, memory, _) = build_minimal();
        check_window_only_in_the_window_l3(&built, &memory);
        // A guest mapped in the lower half, across two L4 slots: three L3s, one of them
        // the window-L3 the builder adds.
        let base = (1u64 << 39) - 0x4_0000;
        let image = TestImage::minimal()
            .with_note(ElfNote::VirtBase, &base.to_le_bytes())
            .with_note(ElfNote::Entry, &(base + 0x40).to_le_bytes())
            .with_note(ElfNote::HypercallPage, &(base + 0x1000).to_le_bytes());
        let (built, memory) = build_image(&image, &CONFIG, &HYPERVISOR);
        let built = built.unwrap();
        let l3s = built
            .page_tables
            .iter()
            .filter(|t| t.level == Level::L3)
            .count();
        assert_eq!(l3s, 3);
        check_window_only_in_the_window_l3(&built, &memory);
    }

    #[test]
    fn writes_start_info() {
        let (built, memory, _) = build_minimal();
        let plan = built.plan;
        let page = memory.frame(plan.start_info);
        let field = |offset| memory.u64_at(plan.start_info, offset);
        assert_eq!(&page[..15], b"xen-3.0-x86_64\0");
        assert_eq!(field(32), 2048, "nr_pages");
        assert_eq!(field(40), 0x7654_3000, "shared_info");
        assert_eq!(field(48), 0, "flags");
        assert_eq!(
            field(56),
            memory.frame_mfn(plan.xenstore.unwrap()).0,
            "store_mfn"
        );
        assert_eq!(field(64), 1, "store_evtchn");
        assert_eq!(
            field(72),
            memory.frame_mfn(plan.console.unwrap()).0,
            "console mfn"
        );
        assert_eq!(field(80), 2, "console evtchn");
        assert_eq!(field(88), plan.pt_base, "pt_base");
        assert_eq!(field(96), plan.nr_pt_frames, "nr_pt_frames");
        assert_eq!(field(104), plan.p2m_va, "mfn_list");
        assert_eq!((field(112), field(120)), (0, 0), "no module");
        assert_eq!(&page[128..156], b"console=hvc0 root=/dev/xvda\0");
        assert_eq!((field(1152), field(1160)), (0, 0), "no separate P2M");
        assert!(page[1168..].iter().all(|&b| b == 0));
        let through_tables = read_virtual(&memory, built.l4_pfn, built.start_info_va, 14);
        assert_eq!(through_tables, b"xen-3.0-x86_64");
    }

    #[test]
    fn privileged_domain_flags_and_no_rings() {
        let config = DomainConfig {
            is_privileged: true,
            xenstore: None,
            console: None,
            ..CONFIG
        };
        let (built, memory) = build_image(&TestImage::minimal(), &config, &HYPERVISOR);
        let plan = built.unwrap().plan;
        assert_eq!(
            memory.u64_at(plan.start_info, 48),
            3,
            "SIF_PRIVILEGED | SIF_INITDOMAIN"
        );
        assert_eq!(memory.u64_at(plan.start_info, 56), 0);
        assert_eq!(memory.u64_at(plan.start_info, 72), 0);
        assert_eq!(plan.page_tables.start.0, plan.start_info.0 + 1);
    }

    #[test]
    fn refusals_write_nothing() {
        let long = [b'x'; 1024];
        let config = DomainConfig {
            cmd_line: &long,
            ..CONFIG
        };
        let (result, memory) = build_image(&TestImage::minimal(), &config, &HYPERVISOR);
        assert_eq!(
            result,
            Err(BuildError::CmdLine(CmdLineError::TooLong { len: 1024 }))
        );
        assert!(memory.untouched());
        let config = DomainConfig {
            nr_pages: 12,
            ..CONFIG
        };
        let (result, memory) = build_image(&TestImage::minimal(), &config, &HYPERVISOR);
        assert_eq!(
            result,
            Err(BuildError::TooSmall {
                needed_pages: 13,
                nr_pages: 12
            })
        );
        assert!(memory.untouched());
    }

    #[test]
    fn segments_sharing_a_frame_both_land() {
        let mut image = TestImage::minimal();
        image
            .segments
            .push(TestSegment::new(0x4100, vec![0x77; 0x2000], 0x2100));
        let (built, memory) = build_image(&image, &CONFIG, &HYPERVISOR);
        let built = built.unwrap();
        assert_eq!(built.plan.kernel.len(), 7);
        let frame4 = memory.frame(Pfn(4));
        assert!(
            frame4[..0x100].iter().all(|&b| b == 0),
            "gap before the segment"
        );
        assert!(frame4[0x100..].iter().all(|&b| b == 0x77));
        assert!(memory.frame(Pfn(5)).iter().all(|&b| b == 0x77));
        assert!(memory.frame(Pfn(6))[..0x100].iter().all(|&b| b == 0x77));
        assert!(
            memory.frame(Pfn(6))[0x100..].iter().all(|&b| b == 0),
            "bss and tail"
        );
    }

    #[test]
    fn builds_from_notes_in_sections() {
        let mut image = TestImage::minimal();
        image.notes_in_sections = true;
        let (built, memory) = build_image(&image, &CONFIG, &HYPERVISOR);
        let built = built.unwrap();
        assert_eq!(memory.frame(Pfn(1)), &hypercall_page()[..]);
        assert_eq!(built.entry_rip, VIRT_BASE + 0x40);
    }

    #[test]
    fn smallest_reservation_builds() {
        let image = TestImage::minimal();
        let bytes = image.bytes();
        let kernel = PvKernel::parse(&bytes, FeatureSet::EMPTY).unwrap();
        let smallest = Plan::minimum_nr_pages(&kernel, &CONFIG).unwrap();
        let config = DomainConfig {
            nr_pages: smallest,
            ..CONFIG
        };
        let mut memory = TestMemory::new(smallest);
        let built = build(&kernel, &config, &HYPERVISOR, &mut memory).unwrap();
        assert_eq!(built.plan.mapped_pages, smallest);
        assert_eq!(built.plan.first_free_pfn.0, smallest);
        for pfn in built.plan.mapping().iter() {
            let leaf = walk(&memory, built.l4_pfn, built.plan.va(pfn)).unwrap();
            assert_eq!(leaf & PTE_ADDRESS_MASK, memory.frame_mfn(pfn).address());
        }
    }

    /// An image with a large segment first in the file, not page aligned in memory, and
    /// the minimal image's segment after it in the file but below it in memory.
    fn large_image() -> TestImage {
        let mut image = TestImage::minimal();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        image.segments.insert(0, TestSegment::new(0x10_0123, big, 0x6_0000));
        image
    }

    #[test]
    fn reads_the_image_in_bounded_pieces_and_the_segments_front_to_back() {
        let image = large_image();
        let source = RecordingImage::new(image.bytes());
        let kernel = PvKernel::parse(&source, FeatureSet::EMPTY).unwrap();
        let parsed = source.reads.borrow().len();
        let config = DomainConfig { nr_pages: 1024, ..CONFIG };
        let mut memory = TestMemory::new(config.nr_pages);
        let built = build(&kernel, &config, &HYPERVISOR, &mut memory).unwrap();
        // Every segment byte read once, in increasing file offset.
        let copies: Vec<(u64, u64)> = source.reads.borrow()[parsed..].to_vec();
        let copied: u64 = copies.iter().map(|&(_, len)| len).sum();
        let file_bytes: u64 = image.segments.iter().map(|s| s.data.len() as u64).sum();
        assert_eq!(copied, file_bytes);
        assert!(copies.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "reads go forward");
        // What the guest sees.
        let big = &image.segments[0];
        let at = VIRT_BASE + big.paddr;
        assert_eq!(read_virtual(&memory, built.l4_pfn, at, big.data.len()), big.data);
        let tail = big.memsz as usize - big.data.len();
        assert!(read_virtual(&memory, built.l4_pfn, at + big.data.len() as u64, tail).iter().all(|&b| b == 0));
        // Headers and notes are read, not the whole file again.
        assert!(source.bytes_read.get() < file_bytes + 4096);
    }

    /// A source whose bytes past `fail_from` cannot be produced (a corrupt stream).
    struct FailingImage {
        bytes: Vec<u8>,
        fail_from: u64,
    }

    impl ImageSource for FailingImage {
        fn size(&self) -> u64 {
            self.bytes.size()
        }

        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::image::ReadError> {
            if offset + buf.len() as u64 > self.fail_from {
                return Err(crate::image::ReadError { offset, len: buf.len() as u64 });
            }
            self.bytes.read(offset, buf)
        }
    }

    #[test]
    fn a_source_that_fails_half_way_stops_the_build_with_its_error() {
        let bytes = large_image().bytes();
        let fail_from = bytes.len() as u64 - 100_000;
        let source = FailingImage { bytes, fail_from };
        let kernel = PvKernel::parse(&source, FeatureSet::EMPTY).unwrap();
        let config = DomainConfig { nr_pages: 1024, ..CONFIG };
        let mut memory = TestMemory::new(config.nr_pages);
        let error = build(&kernel, &config, &HYPERVISOR, &mut memory).unwrap_err();
        assert!(
            matches!(error, BuildError::ImageRead { offset, len } if offset + len > fail_from && offset < fail_from + 4096),
            "{error:?}"
        );
    }
}

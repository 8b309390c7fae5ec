//! Per-CPU global descriptor tables in Xen's layout, and the task state segment.
//!
//! PV guests expect the hypervisor's descriptors in the reserved GDT page at selector
//! 0xe000 (ring-0 code 0xe008, ring-0 data 0xe010, ring-3 code32 0xe023, ring-3 data
//! 0xe02b, ring-3 code64 0xe033, TSS 0xe040, and the LDT descriptor 0xe050 that points at
//! the running vCPU's LDT, as in Xen); the entries below are the guest's own (set_gdt
//! frames, mapped later). So a CPU's GDT base is the address of its reserved page minus
//! 0xe000, and only that page has to exist for the hypervisor's own selectors to work.
//! Its descriptors all have the accessed bit set and `ltr` marks the TSS busy, after which
//! the CPU never writes the page and its owner maps it read-only (`percpu`); only the LDT
//! descriptor changes later, written by `pv::ldt` through a temporary mapping (`lldt` never
//! writes a descriptor). This module only builds and loads tables; callers own the memory.

use core::mem::size_of;

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use x86_64::instructions::tables::{lgdt, load_tss};
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::{PrivilegeLevel, VirtAddr};

/// Offset of the reserved page in the GDT (first selector of the hypervisor's entries).
pub const RESERVED_GDT_OFFSET: u64 = 0xe000;
/// Ring-0 64-bit code.
pub const HYPERVISOR_CS: u16 = 0xe008;
/// Ring-0 data.
pub const HYPERVISOR_DS: u16 = 0xe010;
/// Ring-3 32-bit (compatibility-mode) code, RPL 3.
pub const GUEST_CS32: u16 = 0xe023;
/// Ring-3 data, RPL 3.
pub const GUEST_DS: u16 = 0xe02b;
/// Ring-3 64-bit code (guest kernel and user), RPL 3.
pub const GUEST_CS64: u16 = 0xe033;
/// The TSS (a 16-byte system descriptor).
/// Frames of a guest's own GDT (the reserved hypervisor page is the 15th of a CPU's GDT
/// area; `mm::layout` gives the area 16 pages).
pub const GUEST_GDT_MAX_FRAMES: usize = 14;
/// Frames of the largest LDT (Xen's limit of 8192 descriptors, 64 KiB): a CPU's LDT area.
pub const LDT_MAX_FRAMES: usize = 16;
pub const TSS_SELECTOR: u16 = 0xe040;
/// The LDT descriptor (16 bytes) for the running vCPU's LDT (Xen's `LDT_SELECTOR`).
pub const LDT_SELECTOR: u16 = 0xe050;
/// Index in the reserved page of the LDT descriptor's first word.
pub const LDT_ENTRY: usize = ((LDT_SELECTOR as u64 - RESERVED_GDT_OFFSET) / 8) as usize;
/// Descriptors in use in the reserved page (through the LDT descriptor's second word).
const RESERVED_ENTRIES: u64 = LDT_ENTRY as u64 + 2;

/// IST slots (1-based, as the IDT encodes them).
pub const IST_DOUBLE_FAULT: u16 = 1;
pub const IST_NMI: u16 = 2;
pub const IST_MACHINE_CHECK: u16 = 3;
pub const IST_DEBUG: u16 = 4;

/// The reserved GDT page: the hypervisor's descriptors from selector 0xe000.
#[repr(C, align(4096))]
pub struct ReservedGdtPage([u64; 512]);

impl ReservedGdtPage {
    pub const fn new() -> Self {
        ReservedGdtPage([0; 512])
    }

    /// Fills in the descriptors, with the TSS at `tss`.
    pub fn build(&mut self, tss: &'static TaskStateSegment) {
        let entries = &mut self.0;
        entries[0] = 0;
        // Every descriptor has its accessed bit set, so that the CPU never writes the page
        // (it is mapped read-only once loaded).
        entries[1] = 0x00af_9b00_0000_ffff; // 0xe008 ring 0 code, 64-bit
        entries[2] = 0x00cf_9300_0000_ffff; // 0xe010 ring 0 data
        entries[3] = 0;
        entries[4] = 0x00cf_fb00_0000_ffff; // 0xe023 ring 3 code, compatibility mode
        entries[5] = 0x00cf_f300_0000_ffff; // 0xe02b ring 3 data
        entries[6] = 0x00af_fb00_0000_ffff; // 0xe033 ring 3 code, 64-bit
        entries[7] = 0;
        let (low, high) = tss_descriptor(tss);
        entries[8] = low; // 0xe040
        entries[9] = high;
        entries[LDT_ENTRY] = 0; // 0xe050: written when a vCPU with an LDT runs
        entries[LDT_ENTRY + 1] = 0;
    }
}

/// The 16-byte available-TSS descriptor for `tss`.
fn tss_descriptor(tss: &'static TaskStateSegment) -> (u64, u64) {
    let base = tss as *const TaskStateSegment as u64;
    let limit = (size_of::<TaskStateSegment>() - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, type 9: available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

/// Loads the GDT whose reserved page is `page`, reloads every segment register and the TSS.
///
/// # Safety
/// `page` must stay mapped and unchanged while it is this CPU's GDT, and its TSS descriptor
/// must point to a TSS that lives as long; the TSS descriptor must not be busy (it is loaded
/// once per CPU).
pub unsafe fn load(page: &'static ReservedGdtPage) {
    let base = page as *const ReservedGdtPage as u64 - RESERVED_GDT_OFFSET;
    let pointer = DescriptorTablePointer {
        limit: (RESERVED_GDT_OFFSET + RESERVED_ENTRIES * 8 - 1) as u16,
        base: VirtAddr::new(base),
    };
    // SAFETY: the caller guarantees the table outlives its use; the selectors loaded below
    // are the hypervisor's own descriptors built by `ReservedGdtPage::build`.
    unsafe {
        lgdt(&pointer);
        CS::set_reg(SegmentSelector::new(HYPERVISOR_CS >> 3, PrivilegeLevel::Ring0));
        SS::set_reg(SegmentSelector::new(HYPERVISOR_DS >> 3, PrivilegeLevel::Ring0));
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector(TSS_SELECTOR));
    }
}

/// A TSS whose ring-0 stack and IST slots point at the given stack tops (IST stacks in
/// slot order: double fault, NMI, machine check, debug).
pub fn tss(rsp0: u64, ist: [u64; 4]) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    tss.privilege_stack_table[0] = VirtAddr::new(rsp0);
    for (slot, top) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK, IST_DEBUG].into_iter().zip(ist) {
        tss.interrupt_stack_table[(slot - 1) as usize] = VirtAddr::new(top);
    }
    tss
}

/// Entry `index` of this CPU's GDT, for an index below the reserved page (a guest's own
/// entries: the running vCPU's GDT frames, or the zero frame where it has none, are always
/// mapped there read-only).
pub fn guest_descriptor(index: u16) -> Option<u64> {
    if u64::from(index) * 8 >= RESERVED_GDT_OFFSET {
        return None;
    }
    let pointer = x86_64::instructions::tables::sgdt();
    // SAFETY: the GDT area below the reserved page is backed page by page (guest frames or
    // the zero frame) for as long as this CPU runs, and the index is inside it.
    Some(unsafe { ((pointer.base.as_u64() + u64::from(index) * 8) as *const u64).read_volatile() })
}

/// Loads LDTR with `selector` (0: no LDT).
///
/// # Safety
/// A nonzero selector must name this CPU's LDT descriptor, present, whose table stays
/// mapped (read-only) for as long as it is loaded.
pub unsafe fn load_ldt(selector: u16) {
    // SAFETY: the caller guarantees the descriptor and its table; a null selector just
    // marks LDTR unusable.
    unsafe { core::arch::asm!("lldt {0:x}", in(reg) selector, options(nostack, preserves_flags)) };
}

core::arch::global_asm!(
    r#"
    .section .text.segment_load, "ax"
/* Each routine loads one data segment register with the selector in edi; returns 0 in
   eax, or 1 when the load faulted (#GP, #NP: the trap path resumes at the fix-up, see
   `selector_load_fixup`). Loading gs in ring 0 replaces GS_BASE (the hypervisor's per-CPU
   pointer) with the descriptor's base: it is read before and written back after, with
   interrupts off; a faulting load leaves it untouched. */
    .global segment_load_ds
segment_load_ds:
    xorl %eax, %eax
    .global segment_load_ds_insn
segment_load_ds_insn:
    movw %di, %ds
    ret
    .global segment_load_es
segment_load_es:
    xorl %eax, %eax
    .global segment_load_es_insn
segment_load_es_insn:
    movw %di, %es
    ret
    .global segment_load_fs
segment_load_fs:
    xorl %eax, %eax
    .global segment_load_fs_insn
segment_load_fs_insn:
    movw %di, %fs
    ret
    .global segment_load_gs
segment_load_gs:
    movl $0xc0000101, %ecx
    rdmsr
    .global segment_load_gs_insn
segment_load_gs_insn:
    movw %di, %gs
    wrmsr
    xorl %eax, %eax
    ret
    .global segment_load_fixup
segment_load_fixup:
    movl $1, %eax
    ret
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn segment_load_ds(selector: u32) -> u32;
    fn segment_load_es(selector: u32) -> u32;
    fn segment_load_fs(selector: u32) -> u32;
    fn segment_load_gs(selector: u32) -> u32;
    static segment_load_ds_insn: u8;
    static segment_load_es_insn: u8;
    static segment_load_fs_insn: u8;
    static segment_load_gs_insn: u8;
    static segment_load_fixup: u8;
}

/// Loads ds, es, fs and gs with a guest's selectors (in that order); returns which loads
/// faulted (bit n for register n), each of those registers left null. Loading fs and gs
/// also loads their bases from the descriptors: the caller writes the guest's bases after.
/// The hypervisor's own GS base survives.
pub fn load_data_selectors(selectors: [u16; 4]) -> u8 {
    let loads: [unsafe extern "C" fn(u32) -> u32; 4] = [segment_load_ds, segment_load_es, segment_load_fs, segment_load_gs];
    let mut failed = 0;
    for (i, (load, selector)) in loads.iter().zip(selectors).enumerate() {
        // SAFETY: a data segment load in ring 0 changes nothing the hypervisor relies on
        // (64-bit code ignores ds and es; fs is not used; gs's base is put back); a fault
        // on a bad selector resumes at the fix-up, which reports it.
        if unsafe { load(u32::from(selector)) } != 0 {
            failed |= 1 << i;
            // SAFETY: the null selector always loads.
            unsafe { load(0) };
        }
    }
    failed
}

/// If a fault at `rip` is one of [`load_data_selectors`]'s loads, where to resume.
pub fn selector_load_fixup(rip: u64) -> Option<u64> {
    let insns = [&raw const segment_load_ds_insn, &raw const segment_load_es_insn, &raw const segment_load_fs_insn, &raw const segment_load_gs_insn];
    insns.iter().any(|&insn| insn as u64 == rip).then_some(&raw const segment_load_fixup as u64)
}

/// The data segment selectors now loaded (ds, es, fs, gs): the hypervisor loads them only
/// on switching a vCPU in ([`load_data_selectors`]), so they are the running guest's.
pub fn data_selectors() -> [u16; 4] {
    [DS::get_reg().0, ES::get_reg().0, FS::get_reg().0, GS::get_reg().0]
}

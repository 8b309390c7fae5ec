//! The running vCPU's LDT as the processor sees it: the LDT descriptor in this CPU's
//! reserved GDT page, LDTR, and reading an entry through the CPU's LDT range.
//!
//! Which frames back the LDT range, and that they hold only checked descriptors, is
//! `pv::ldt`'s: it maps the vCPU's frames there (the rest of the range maps the zero
//! frame, so the whole range is always mapped, read-only) before calling [`load`].

use hypervisor::descriptor;
use mm::addr::{Mfn, PAGE_SIZE};

use super::gdt;
use super::paging;
use super::percpu;
use super::tempmap::FrameMapping;

/// Entries the LDT range holds.
const MAX_ENTRIES: u32 = (gdt::LDT_MAX_FRAMES as u64 * PAGE_SIZE / 8) as u32;

/// Makes this CPU's LDT range, with its first `entries` entries (at most the range), the
/// loaded LDT; with none, LDTR is null. Panics on a CPU still on its early state (no LDT
/// range).
pub fn load(entries: u32) {
    let cpu = percpu::current();
    if entries == 0 {
        // SAFETY: the null selector loads no descriptor.
        unsafe { gdt::load_ldt(0) };
        return;
    }
    assert!(cpu.ldt_start != 0, "an LDT on a CPU without its area");
    write_descriptor(cpu.gdt_reserved, descriptor::ldt_descriptor(cpu.ldt_start, entries.min(MAX_ENTRIES)));
    // SAFETY: the descriptor just written is a present LDT descriptor for this CPU's LDT
    // range, no larger than it; the range is mapped (supervisor-only, read-only) for the
    // whole run: the guest's checked frames or the zero frame (see the module comment).
    unsafe { gdt::load_ldt(gdt::LDT_SELECTOR) };
}

/// Writes the LDT descriptor into the reserved GDT page at `reserved` (mapped read-only),
/// through a temporary writable mapping of its frame, when it differs.
fn write_descriptor(reserved: u64, words: [u64; 2]) {
    let offset = gdt::LDT_ENTRY * 8;
    let frame = Mfn(paging::translate(reserved).expect("the reserved GDT page is mapped") / PAGE_SIZE);
    let current = [0, 1].map(|i| {
        let va = reserved + (offset + i * 8) as u64;
        // SAFETY: the reserved GDT page is mapped (read-only, checked just above) for the
        // whole run; the two words are inside it and aligned.
        unsafe { (va as *const u64).read_volatile() }
    });
    if current == words {
        return;
    }
    let mut map = FrameMapping::new(frame).expect("a temporary mapping slot is free");
    for (i, word) in words.iter().enumerate() {
        map.bytes()[offset + i * 8..offset + i * 8 + 8].copy_from_slice(&word.to_le_bytes());
    }
}

/// Entry `index` of this CPU's LDT range (what the loaded LDT holds there, if `index` is
/// below its count); `None` on a CPU still on its early state, or for an index past the
/// range.
pub fn entry(index: u16) -> Option<u64> {
    let start = percpu::current().ldt_start;
    if start == 0 || u32::from(index) >= MAX_ENTRIES {
        return None;
    }
    let va = start + u64::from(index) * 8;
    paging::translate(va)?;
    // SAFETY: `index` < MAX_ENTRIES (checked above) keeps `va` inside the LDT range, whose page is
    // mapped (checked just above; a supervisor window page, never a device's); aligned.
    Some(unsafe { (va as *const u64).read_volatile() })
}

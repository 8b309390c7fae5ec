//! Reading and writing guest memory by guest virtual address, on the guest's page tables,
//! without ever letting a bad guest pointer fault the hypervisor.
//!
//! Every range is first checked to lie in guest address space ([`check_range`]): the part
//! of the canonical address space a guest's own entries can map, so that a guest pointer
//! can never make the hypervisor read or write its own memory. Validation (`pvmm`) puts the
//! hypervisor's window in exactly one place, entry 511 of the window-L3 under L4 slot 511
//! (the top gigabyte), and nowhere else, so this check is exact and must stay so: no alias
//! of the window is guest address space. The copy itself runs in a tiny assembly routine
//! whose faults (#PF, #GP) are turned by [`fixup`] into "this many bytes were not copied".
//! Callers run on the CPU whose CR3 holds the guest's tables.
//!
//! That routine is the hypervisor's only user-access window: with SMAP on ([`super::cpu`])
//! it alone sets RFLAGS.AC, around the `rep movsb`, and restores it on both ways out. Any
//! other ring-0 access to a guest page faults, and is fatal: everything else the hypervisor
//! writes on a guest's behalf goes through window mappings of the frame.

use core::arch::global_asm;

use abi::arch_x86::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};

use super::paging::WINDOW_BASE;

/// Guest addresses below this are the lower canonical half.
const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;
/// The upper canonical half starts here, with Xen's reserved L4 slots 256-271 (the
/// read-only M2P table), which the hypervisor fills: guest address space resumes at
/// their end, as in Xen's `__addr_ok`.
const UPPER_GUEST_START: u64 = HYPERVISOR_VIRT_END;
/// The top gigabyte, entry 511 of the window-L3, is the hypervisor's: it holds the window
/// (the last 64 MiB) and nothing a guest maps.
const UPPER_GUEST_END: u64 = 0xFFFF_FFFF_C000_0000;
const _: () = assert!(HYPERVISOR_VIRT_START == 0xFFFF_8000_0000_0000);
const _: () = assert!(UPPER_GUEST_END <= WINDOW_BASE && WINDOW_BASE - UPPER_GUEST_END < 1 << 30);
const _: () = assert!(is_guest_range(0, 1) && is_guest_range(LOWER_HALF_END - 8, 8));
const _: () = assert!(!is_guest_range(LOWER_HALF_END - 8, 9) && !is_guest_range(u64::MAX, 2));
const _: () = assert!(!is_guest_range(HYPERVISOR_VIRT_START, 1) && !is_guest_range(UPPER_GUEST_START - 1, 1));
const _: () = assert!(is_guest_range(UPPER_GUEST_START, 1) && is_guest_range(UPPER_GUEST_END - 4096, 4096));
const _: () = assert!(!is_guest_range(UPPER_GUEST_END - 4096, 4097) && !is_guest_range(WINDOW_BASE, 1));

/// A guest pointer that does not name guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadGuestAddress {
    pub addr: u64,
    pub len: u64,
}

global_asm!(
    r#"
    .section .text.guest_copy, "ax"
    .global guest_copy
    .p2align 4
/* rdi = destination, rsi = source, rdx = length; returns in rax the bytes not copied.
   With SMAP on, the copy alone runs with RFLAGS.AC set: the flags are saved (AC clear),
   AC is set, and the saved flags come back on both ways out (a fault resumes at the
   fix-up with the stack as it was). Without SMAP no flag is touched (popf is slow). */
guest_copy:
    movq %rdx, %rcx
    cmpb $0, {smap_on}(%rip)
    jne 1f
    .global guest_copy_insn
guest_copy_insn:
    rep movsb
    xorl %eax, %eax
    ret
    .global guest_copy_fixup
guest_copy_fixup:
    movq %rcx, %rax
    ret
1:  pushfq
    pushfq
    orl ${ac}, (%rsp)
    popfq
    .global guest_copy_smap_insn
guest_copy_smap_insn:
    rep movsb
    xorl %eax, %eax
    popfq
    ret
    .global guest_copy_smap_fixup
guest_copy_smap_fixup:
    movq %rcx, %rax
    popfq
    ret
"#,
    smap_on = sym super::cpu::SMAP_ON,
    ac = const super::cpu::RFLAGS_AC,
    options(att_syntax)
);

unsafe extern "C" {
    fn guest_copy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    static guest_copy_insn: u8;
    static guest_copy_fixup: u8;
    static guest_copy_smap_insn: u8;
    static guest_copy_smap_fixup: u8;
}

/// Checks that `[addr, addr + len)` is guest address space: the lower canonical half, or
/// the upper half from the end of Xen's reserved slots to the top gigabyte.
pub fn check_range(addr: u64, len: u64) -> Result<(), BadGuestAddress> {
    if is_guest_range(addr, len) { Ok(()) } else { Err(BadGuestAddress { addr, len }) }
}

/// Whether `[addr, addr + len)` lies inside one of the two guest ranges.
const fn is_guest_range(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    let lower = end <= LOWER_HALF_END;
    let upper = addr >= UPPER_GUEST_START && end <= UPPER_GUEST_END;
    lower || upper
}

/// Copies `dst.len()` bytes from guest address `src`.
pub fn read(src: u64, dst: &mut [u8]) -> Result<(), BadGuestAddress> {
    check_range(src, dst.len() as u64)?;
    // SAFETY: the source range is guest address space (checked above); faults on it are
    // fixed up into a short count; the destination is a valid hypervisor slice.
    let left = unsafe { guest_copy(dst.as_mut_ptr(), src as *const u8, dst.len()) };
    if left == 0 { Ok(()) } else { Err(BadGuestAddress { addr: src, len: dst.len() as u64 }) }
}

/// Copies `src` to guest address `dst`.
pub fn write(dst: u64, src: &[u8]) -> Result<(), BadGuestAddress> {
    check_range(dst, src.len() as u64)?;
    // SAFETY: as for `read`, with the roles swapped: the destination is checked guest space.
    let left = unsafe { guest_copy(dst as *mut u8, src.as_ptr(), src.len()) };
    if left == 0 { Ok(()) } else { Err(BadGuestAddress { addr: dst, len: src.len() as u64 }) }
}

/// Reads a plain-old-data value (any bit pattern valid) from guest address `src`.
pub fn read_value<T: Copy + Default>(src: u64) -> Result<T, BadGuestAddress> {
    let mut value = T::default();
    // SAFETY: `T: Copy` with every bit pattern valid (the ABI structs are integers only);
    // the slice covers exactly `value`.
    let bytes = unsafe { core::slice::from_raw_parts_mut(&mut value as *mut T as *mut u8, size_of::<T>()) };
    read(src, bytes)?;
    Ok(value)
}

/// Writes a plain-old-data value to guest address `dst`.
pub fn write_value<T: Copy>(dst: u64, value: &T) -> Result<(), BadGuestAddress> {
    // SAFETY: reading the bytes of a `Copy` value; the slice covers exactly `value`.
    let bytes = unsafe { core::slice::from_raw_parts(value as *const T as *const u8, size_of::<T>()) };
    write(dst, bytes)
}

/// If a fault at `rip` happened inside a guest copy, returns where to resume (the copy then
/// reports the bytes it did not copy).
pub fn fixup(rip: u64) -> Option<u64> {
    if rip == &raw const guest_copy_insn as u64 {
        Some(&raw const guest_copy_fixup as u64)
    } else if rip == &raw const guest_copy_smap_insn as u64 {
        Some(&raw const guest_copy_smap_fixup as u64)
    } else {
        None
    }
}

//! The real-mode start-up trampoline that an application processor runs after its SIPI.
//!
//! The hypervisor copies [`image`] to [`TRAMPOLINE_PHYS`] (below 1 MiB, page aligned: the
//! SIPI vector is its page number), fills in [`Params`], then sends INIT-SIPI-SIPI. Each AP
//! goes real mode -> protected mode -> long mode on the hypervisor's page tables (which must
//! still identity-map the trampoline page), finds its own APIC id (CPUID leaf 0xB, else
//! leaf 1) in the start table, switches to the stack listed there and calls
//! `entry(cpu_index)`. Many APs run it at once: nothing in it is written but the CPU's own
//! registers and the gate. An AP whose APIC id is not in the table halts.
//!
//! The gate ([`Params::gate`]) keeps a late AP from running into page tables that no longer
//! map the trampoline: before it turns paging on, each AP counts itself in (a `lock
//! cmpxchg` of the gate word) unless the boot CPU has closed the gate ([`GATE_CLOSED`]),
//! in which case it halts there, in protected mode without paging, touching nothing. The
//! entry counts itself out once it runs on the hypervisor's own mappings; the boot CPU
//! closes the gate and waits for the count to reach zero before it drops the identity
//! map. An AP that answers its SIPI after bring-up (an overcommitted host, or QEMU running
//! a SIPI that was pending when it handled the boot CPU's INIT) stays halted.

use core::arch::global_asm;

/// Physical address the trampoline is copied to (SIPI vector 0x08).
pub const TRAMPOLINE_PHYS: u64 = 0x8000;

/// One AP the trampoline may start: its APIC id, logical CPU index and stack top.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartEntry {
    pub apic_id: u32,
    pub cpu_index: u32,
    pub stack_top: u64,
}

/// The parameter block inside the copied trampoline, written by the boot CPU before SIPI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Physical address of the top-level page table (below 4 GiB).
    pub cr3: u64,
    /// EFER bits to set (LME, and NXE/SCE as the boot CPU uses them).
    pub efer: u64,
    /// `extern "C" fn(cpu_index: u32) -> !` in the hypervisor window.
    pub entry: u64,
    /// Virtual address of the `StartEntry` table.
    pub table: u64,
    /// Number of entries in the table.
    pub count: u64,
    /// APs between the gate and their entry, and [`GATE_CLOSED`] once the boot CPU has
    /// closed it (0 at install: open, none in).
    pub gate: u32,
    pub _pad: u32,
}

/// The gate's closed bit: an AP that finds it set halts before paging.
pub const GATE_CLOSED: u32 = 1 << 31;

const _: () = assert!(core::mem::size_of::<StartEntry>() == 16);
const _: () = assert!(core::mem::size_of::<Params>() == 48);
const _: () = assert!(core::mem::offset_of!(Params, gate) == 40);

global_asm!(
    r#"
    .set TRAMP, {tramp}
    .set OFF_CR3,   0
    .set OFF_EFER,  8
    .set OFF_ENTRY, 16
    .set OFF_TABLE, 24
    .set OFF_COUNT, 32
    .set OFF_GATE,  40
    .set GATE,      TRAMP + (tr_params - smp_trampoline_start) + OFF_GATE

    .section .rodata.smp_trampoline, "a"
    .p2align 12
    .global smp_trampoline_start
smp_trampoline_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl TRAMP + (tr_gdt_pointer - smp_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(TRAMP + (tr_protected - smp_trampoline_start))

    .code32
tr_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* The gate: count this CPU in unless the boot CPU has closed it (then halt here,
       before paging: the page tables may no longer map this page). */
    movl GATE, %eax
6:  testl ${closed}, %eax
    jnz 7f
    leal 1(%eax), %edx
    lock cmpxchgl %edx, GATE
    jnz 6b
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 7)), %eax
    movl %eax, %cr4
    movl TRAMP + (tr_params - smp_trampoline_start) + OFF_CR3, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl TRAMP + (tr_params - smp_trampoline_start) + OFF_EFER, %eax
    wrmsr
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16)), %eax
    movl %eax, %cr0
    ljmpl $0x18, $(TRAMP + (tr_long - smp_trampoline_start))

    .code64
tr_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* Own APIC id: CPUID 0xB edx where available, else CPUID 1 ebx[31:24]. */
    xorl %eax, %eax
    cpuid
    cmpl $0xB, %eax
    jb 1f
    movl $0xB, %eax
    xorl %ecx, %ecx
    cpuid
    movl %edx, %esi
    jmp 2f
1:  movl $1, %eax
    cpuid
    shrl $24, %ebx
    movl %ebx, %esi
2:  movq TRAMP + (tr_params - smp_trampoline_start) + OFF_TABLE, %rbx
    movq TRAMP + (tr_params - smp_trampoline_start) + OFF_COUNT, %rcx
3:  testq %rcx, %rcx
    jz 5f
    cmpl %esi, (%rbx)
    je 4f
    addq $16, %rbx
    decq %rcx
    jmp 3b
4:  movq 8(%rbx), %rsp
    movl 4(%rbx), %edi
    movq TRAMP + (tr_params - smp_trampoline_start) + OFF_ENTRY, %rax
    callq *%rax
    /* Not in the table: count out (the boot CPU waits for the count), then halt. */
5:  lock decl GATE
8:  cli
    hlt
    jmp 8b

    .code32
7:  cli
    hlt
    jmp 7b

    .p2align 3
tr_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00AF9A000000FFFF    /* 0x18: 64-bit code */
tr_gdt_end:
tr_gdt_pointer:
    .short tr_gdt_end - tr_gdt - 1
    .long TRAMP + (tr_gdt - smp_trampoline_start)
    .p2align 3
    .global smp_trampoline_params
smp_trampoline_params:
tr_params:
    .skip 48
    .global smp_trampoline_end
smp_trampoline_end:
"#,
    tramp = const TRAMPOLINE_PHYS,
    closed = const GATE_CLOSED,
    options(att_syntax)
);

unsafe extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_params: u8;
    static smp_trampoline_end: u8;
}

/// The trampoline's bytes, to copy to [`TRAMPOLINE_PHYS`].
pub fn image() -> &'static [u8] {
    let start = &raw const smp_trampoline_start;
    let len = &raw const smp_trampoline_end as usize - start as usize;
    // SAFETY: both symbols delimit the trampoline in the read-only data of this image.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Offset of [`Params`] inside [`image`].
pub fn params_offset() -> usize {
    &raw const smp_trampoline_params as usize - &raw const smp_trampoline_start as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_fits_in_one_page_with_params_at_the_end() {
        let image = image();
        assert!(image.len() <= 4096, "trampoline is {} bytes", image.len());
        assert_eq!(params_offset() + core::mem::size_of::<Params>(), image.len());
        assert_eq!(params_offset() % 8, 0);
    }

    #[test]
    fn image_starts_in_real_mode_with_cli_cld() {
        assert_eq!(&image()[..2], &[0xfa, 0xfc]);
    }
}

//! The 32-bit boot stub: the first code that runs, entered by GRUB (multiboot2) or directly by
//! QEMU `-kernel` (PVH ELF note), both in 32-bit protected mode with paging off.
//!
//! It checks for long mode, builds throw-away page tables (an identity map of the first GiB
//! for itself and the AP trampoline, and the image mapped at the hypervisor window), enables
//! long mode and jumps to `boot_main` (the boot script, `main.rs`) in the window with
//! `(protocol magic, boot information physical address, TSC at entry)`.
//! Everything here is linked with VMA = LMA below 4 GiB; it must never call Rust code
//! before paging is on, and Rust code must not depend on these tables after boot.

use core::arch::global_asm;

/// Multiboot2 bootloader magic found in eax at entry.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// PVH start-info magic; the PVH entry passes it as the protocol magic.
pub const PVH_MAGIC: u32 = 0x336e_c578;

global_asm!(
    r#"
    .set MB2_MAGIC,      0xE85250D6
    .set MB2_ARCH_I386,  0
    .set CR0_PE,         1 << 0
    .set CR0_WP,         1 << 16
    .set CR0_PG,         1 << 31
    .set CR4_PAE,        1 << 5
    .set CR4_PGE,        1 << 7
    .set MSR_EFER,       0xC0000080
    .set EFER_SCE,       1 << 0
    .set EFER_LME,       1 << 8
    .set EFER_NXE,       1 << 11
    .set PTE_PRESENT_RW, 0x3
    .set PDE_HUGE_RW,    0x83
    .set DEBUGCON,       0xe9
    .set COM1,           0x3f8
    .set DEBUG_EXIT,     0xf4

    /* ---- multiboot2 header (must lie in the first 32 KiB of the file) ---- */
    .section .multiboot2_header, "a"
    .p2align 3
mb2_header_start:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header_start))
    /* entry address tag: enter the 32-bit stub */
    .p2align 3
    .short 3
    .short 0
    .long 12
    .long _start_mb2
    /* module alignment tag: page-aligned modules */
    .p2align 3
    .short 6
    .short 0
    .long 8
    /* end tag */
    .p2align 3
    .short 0
    .short 0
    .long 8
mb2_header_end:

    /* ---- PVH entry note (Xen ELF note 18, PHYS32_ENTRY) for QEMU -kernel ---- */
    .section .note.pvh, "a"
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .p2align 2
    .long _start_pvh

    /* ---- 32-bit entry ---- */
    .section .boot.text, "ax"
    .code32
    .global _start_mb2
_start_mb2:
    cli
    movl %eax, %edi
    movl %ebx, %esi
    cmpl ${mb2}, %eax
    jne bad_magic
    jmp boot32_common

    .global _start_pvh
_start_pvh:
    cli
    movl ${pvh}, %edi
    movl %ebx, %esi

boot32_common:
    cld
    movl $boot32_stack_top, %esp
    rdtsc
    movl %eax, boot_entry_tsc
    movl %edx, boot_entry_tsc + 4

    /* Long mode is required. */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz no_long_mode
    movl %edx, %ebp            /* keep NX support (bit 20) for EFER below */

    /* Zero the five boot tables. */
    pushl %edi
    movl $boot_pml4, %edi
    xorl %eax, %eax
    movl $(5 * 1024), %ecx
    rep stosl
    popl %edi

    movl $boot_pdpt_low, %eax
    orl $PTE_PRESENT_RW, %eax
    movl %eax, boot_pml4
    movl $boot_pdpt_high, %eax
    orl $PTE_PRESENT_RW, %eax
    movl %eax, boot_pml4 + 511 * 8
    movl $boot_pd_low, %eax
    orl $PTE_PRESENT_RW, %eax
    movl %eax, boot_pdpt_low
    movl $boot_pd_high, %eax
    orl $PTE_PRESENT_RW, %eax
    movl %eax, boot_pdpt_high + 511 * 8

    /* Identity map of the first GiB with 2 MiB pages. */
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $PDE_HUGE_RW, %eax
    movl %eax, boot_pd_low(, %ecx, 8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b

    /* The image at the window: PD index 480 onwards (0xFFFFFFFFFC000000). */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    addl $__image_phys_start, %eax
    orl $PDE_HUGE_RW, %eax
    movl %eax, boot_pd_high + 480 * 8(, %ecx, 8)
    incl %ecx
    cmpl $__image_2m_pages, %ecx
    jb 2b

    movl %cr4, %eax
    orl $(CR4_PAE | CR4_PGE), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3

    movl $MSR_EFER, %ecx
    rdmsr
    orl $(EFER_LME | EFER_SCE), %eax
    testl $(1 << 20), %ebp
    jz 3f
    orl $EFER_NXE, %eax
3:  wrmsr

    movl %cr0, %eax
    orl $(CR0_PE | CR0_WP | CR0_PG), %eax
    movl %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $boot64

bad_magic:
    movl $msg_bad_magic, %esi
    jmp fail32
no_long_mode:
    movl $msg_no_long_mode, %esi
fail32:
    /* Print the NUL-terminated message at esi on debugcon and COM1, then exit QEMU. */
    movb (%esi), %al
    testb %al, %al
    jz 5f
    outb %al, $DEBUGCON
    movw $COM1, %dx
    outb %al, %dx
    incl %esi
    jmp fail32
5:  movl $0x11, %eax
    outl %eax, $DEBUG_EXIT
6:  hlt
    jmp 6b

    .code64
boot64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    movl %edi, %edi
    movl %esi, %esi
    movq boot_entry_tsc, %rdx
    movabsq ${entry}, %rax
    callq *%rax
7:  hlt
    jmp 7b

    .section .boot.rodata, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_end:
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
msg_no_long_mode:
    .asciz "hypervisor: this processor has no long mode (x86_64); cannot boot\n"
msg_bad_magic:
    .asciz "hypervisor: not entered by a multiboot2 loader (bad magic in eax); cannot boot\n"

    .section .boot.bss, "aw", @nobits
    .p2align 12
    .global boot_pml4
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pd_low:    .skip 4096
boot_pdpt_high: .skip 4096
boot_pd_high:   .skip 4096
boot32_stack:   .skip 1024
boot32_stack_top:
    .p2align 3
boot_entry_tsc: .skip 8
"#,
    mb2 = const MULTIBOOT2_MAGIC,
    pvh = const PVH_MAGIC,
    entry = sym boot_main,
    options(att_syntax)
);

/// Stack for the boot CPU until its per-CPU stack exists.
#[unsafe(no_mangle)]
#[used]
static mut boot_stack: BootStack = BootStack([0; BOOT_STACK_BYTES]);

const BOOT_STACK_BYTES: usize = 64 * 1024;

#[repr(C, align(4096))]
struct BootStack([u8; BOOT_STACK_BYTES]);

global_asm!(
    r#"
    .global boot_stack_top
    .set boot_stack_top, boot_stack + {size}
"#,
    size = const BOOT_STACK_BYTES,
);

unsafe extern "C" {
    /// The boot script (`main.rs`), entered once from the stub above: named by its link
    /// name, so that the arch layer imports nothing above it.
    fn boot_main(magic: u32, info_phys: u32, entry_tsc: u64) -> !;
    /// The boot stub's top-level table; its slot 0 (the identity map) is borrowed by the
    /// window page tables until every AP is up ([`take_identity_slot`]).
    static boot_pml4: [u64; 512];
}

unsafe extern "C" {
    static __text_start: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __image_end: u8;
    static boot_stack_top: u8;
}

/// Window addresses of the image's sections, from the linker script.
#[derive(Clone, Copy, Debug)]
pub struct Sections {
    /// Code, up to `rodata`.
    pub text: u64,
    /// Read-only data, up to `data`.
    pub rodata: u64,
    /// Data and bss, up to `end`.
    pub data: u64,
    /// One past the image's last byte.
    pub end: u64,
}

/// The image's sections.
pub fn image_sections() -> Sections {
    Sections {
        text: &raw const __text_start as u64,
        rodata: &raw const __rodata_start as u64,
        data: &raw const __data_start as u64,
        end: &raw const __image_end as u64,
    }
}

/// The top of the boot stack (the boot CPU's stack until it moves to its own area).
pub fn stack_top() -> u64 {
    &raw const boot_stack_top as u64
}

/// Whether `address` lies in the boot stack.
pub fn on_boot_stack(address: u64) -> bool {
    (stack_top() - BOOT_STACK_BYTES as u64..stack_top()).contains(&address)
}

/// Set once slot 0 of the boot stub's table has been read.
static IDENTITY_TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Slot 0 of the boot stub's top-level table (its identity map), for the window page
/// tables to borrow: the first call only (the boot script's, on the stub's tables, before
/// the window tables are loaded); `None` after that.
pub fn take_identity_slot() -> Option<u64> {
    if IDENTITY_TAKEN.swap(true, core::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the first call runs on the boot stub's tables (the boot script's first steps,
    // before `paging::init`), whose identity map covers the stub's table.
    Some(unsafe { core::ptr::read_volatile(&raw const boot_pml4[0]) })
}

//! The x86-64 specifics of the PV interface (arch-x86/xen.h, arch-x86/xen-x86_64.h): flat
//! segment selectors, the hypervisor's reserved address range, trap-table entries, the
//! iret frame, register and vCPU context layouts, and the forced-emulation prefix.
//!
//! The hypervisor uses these to build bounce frames, decode `iret`, `set_trap_table` and
//! `VCPUOP_initialise`, and to lay out its GDT; our guests use the same selectors and
//! frames. Constants only describe the interface: where our hypervisor really lives is
//! decided elsewhere (it keeps itself in the top 64 MiB, not at `HYPERVISOR_VIRT_START`).

use crate::macros::assert_layout;

// ---- Flat segment selectors (xen-x86_64.h): in the Xen-reserved GDT page, all RPL 3. ----

/// 32-bit ring-3 code (GDT index 260).
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// 64-bit ring-3 code (GDT index 261).
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// Ring-3 data, 32-bit (GDT index 262).
pub const FLAT_RING3_DS32: u16 = 0xe02b;
/// 64-bit data segments use the NULL selector.
pub const FLAT_RING3_DS64: u16 = 0x0000;
/// Ring-3 stack, 32-bit (GDT index 262).
pub const FLAT_RING3_SS32: u16 = 0xe02b;
/// Ring-3 stack, 64-bit (GDT index 262).
pub const FLAT_RING3_SS64: u16 = 0xe02b;

/// Guest kernel 64-bit code: the kernel runs in ring 3 too.
pub const FLAT_KERNEL_CS64: u16 = FLAT_RING3_CS64;
/// Guest kernel 32-bit code.
pub const FLAT_KERNEL_CS32: u16 = FLAT_RING3_CS32;
/// Guest kernel 64-bit data (NULL).
pub const FLAT_KERNEL_DS64: u16 = FLAT_RING3_DS64;
/// Guest kernel 32-bit data.
pub const FLAT_KERNEL_DS32: u16 = FLAT_RING3_DS32;
/// Guest kernel 64-bit stack.
pub const FLAT_KERNEL_SS64: u16 = FLAT_RING3_SS64;
/// Guest kernel 32-bit stack.
pub const FLAT_KERNEL_SS32: u16 = FLAT_RING3_SS32;
/// Guest user 64-bit code.
pub const FLAT_USER_CS64: u16 = FLAT_RING3_CS64;
/// Guest user 32-bit code.
pub const FLAT_USER_CS32: u16 = FLAT_RING3_CS32;
/// Guest user 64-bit data (NULL).
pub const FLAT_USER_DS64: u16 = FLAT_RING3_DS64;
/// Guest user 32-bit data.
pub const FLAT_USER_DS32: u16 = FLAT_RING3_DS32;
/// Guest user 64-bit stack.
pub const FLAT_USER_SS64: u16 = FLAT_RING3_SS64;
/// Guest user 32-bit stack.
pub const FLAT_USER_SS32: u16 = FLAT_RING3_SS32;

/// First GDT page reserved for the hypervisor (`FIRST_RESERVED_GDT_PAGE`); guest GDT
/// frames given to `set_gdt` occupy the pages below it.
pub const FIRST_RESERVED_GDT_PAGE: u64 = 14;
/// Byte offset of the reserved GDT page: selector 0xe000.
pub const FIRST_RESERVED_GDT_BYTE: u64 = FIRST_RESERVED_GDT_PAGE * 4096;
/// First reserved GDT entry (8-byte entries).
pub const FIRST_RESERVED_GDT_ENTRY: u64 = FIRST_RESERVED_GDT_BYTE / 8;

// ---- Xen's address-space layout (xen-x86_64.h). ----

/// Start of Xen's reserved virtual range (L4 slots 256-271).
pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// End of Xen's reserved virtual range.
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
/// Start of the read-only machine-to-physical table that PV guests read.
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// End of the machine-to-physical table window.
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;
/// Entries (8 bytes each) the M2P window can hold.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3;

/// The forced-emulation prefix (`XEN_EMULATE_PREFIX`: ud2; 'x' 'e' 'n'). Followed by
/// `cpuid` (0f a2) it asks the hypervisor to emulate CPUID.
pub const XEN_EMULATE_PREFIX: [u8; 5] = [0x0f, 0x0b, 0x78, 0x65, 0x6e];
/// The whole forced-emulation CPUID sequence (`XEN_CPUID`), 7 bytes.
pub const XEN_CPUID: [u8; 7] = [0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2];

// ---- Trap table (arch-x86/xen.h). ----

/// `TrapInfo::flags` bits 0-1: which modes may raise the vector with a software `int`
/// (0 none, 1-2 guest kernel, 3 everyone).
pub const TI_DPL_MASK: u8 = 3;
/// `TrapInfo::flags` bit 2: mask events on entry, like an interrupt gate.
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// One virtual IDT entry (`struct trap_info`, arch-x86/xen.h, 16 bytes). `set_trap_table`
/// takes an array ended by an entry whose `address` is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TrapInfo {
    pub vector: u8,
    /// `TI_DPL_MASK` and `TI_MASK_EVENTS` bits.
    pub flags: u8,
    /// Code selector of the handler.
    pub cs: u16,
    pub _pad: u32,
    /// Handler address; 0 ends a `set_trap_table` array.
    pub address: u64,
}

assert_layout!(TrapInfo, size = 16, { vector @ 0, flags @ 1, cs @ 2, address @ 8 });

impl TrapInfo {
    /// Whether this entry ends a `set_trap_table` array.
    pub const fn is_terminator(&self) -> bool {
        self.address == 0
    }

    /// The software-interrupt privilege level (flags bits 0-1).
    pub const fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }

    /// Whether entering the handler masks events.
    pub const fn masks_events(&self) -> bool {
        self.flags & TI_MASK_EVENTS != 0
    }
}

// ---- vCPU context flags (arch-x86/xen.h, xen-x86_64.h). ----

/// `VGCF_i387_valid`: the FPU context is valid.
pub const VGCF_I387_VALID: u64 = 1 << 0;
/// `VGCF_in_kernel`: the vCPU is in guest kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_failsafe_disables_events`: the failsafe callback masks events.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `VGCF_syscall_disables_events`: the syscall callback masks events.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
/// `VGCF_online`: the vCPU is online.
pub const VGCF_ONLINE: u64 = 1 << 5;
/// `VGCF_in_syscall` in [`IretContext::flags`]: return as from SYSCALL, restoring only
/// rax, rip, rflags and rsp (rcx, r11, cs and ss are discarded).
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;

/// The frame the `iret` hypercall pops from the guest kernel stack (`struct iret_context`,
/// xen-x86_64.h), lowest address (rsp at the hypercall) first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IretContext {
    pub rax: u64,
    pub r11: u64,
    pub rcx: u64,
    /// `VGCF_IN_SYSCALL` or 0.
    pub flags: u64,
    pub rip: u64,
    /// RPL 3 returns to guest user mode, RPL 0-2 to guest kernel mode.
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

assert_layout!(IretContext, size = 72, {
    rax @ 0, r11 @ 8, rcx @ 16, flags @ 24, rip @ 32, cs @ 40, rflags @ 48, rsp @ 56,
    ss @ 64,
});

impl IretContext {
    /// Whether the guest asked for a SYSCALL-style return.
    pub const fn in_syscall(&self) -> bool {
        self.flags & VGCF_IN_SYSCALL != 0
    }

    /// Whether the frame returns to guest user mode (cs RPL 3).
    pub const fn returns_to_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// A vCPU's general registers (`struct cpu_user_regs`, xen-x86_64.h, 200 bytes), as in
/// `vcpu_guest_context`. `error_code` and `entry_vector` are hypervisor-private.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub _pad0: u16,
    /// Upcall mask saved in a bounce frame (rflags.IF == !saved_upcall_mask).
    pub saved_upcall_mask: u8,
    pub _pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub _pad2: [u16; 3],
    pub es: u16,
    pub _pad3: [u16; 3],
    pub ds: u16,
    pub _pad4: [u16; 3],
    /// Non-zero takes precedence over `fs_base`.
    pub fs: u16,
    pub _pad5: [u16; 3],
    /// Non-zero takes precedence over `gs_base_user`.
    pub gs: u16,
    pub _pad6: [u16; 3],
}

assert_layout!(CpuUserRegs, size = 200, {
    r15 @ 0, rbp @ 32, r11 @ 48, r8 @ 72, rax @ 80, rdi @ 112, error_code @ 120,
    entry_vector @ 124, rip @ 128, cs @ 136, saved_upcall_mask @ 140, rflags @ 144,
    rsp @ 152, ss @ 160, es @ 168, ds @ 176, fs @ 184, gs @ 192,
});

/// Entries of the virtual IDT in a vCPU context.
pub const TRAP_CTXT_ENTRIES: usize = 256;

/// A PV vCPU's initial state for `VCPUOP_initialise` (`struct vcpu_guest_context`,
/// arch-x86/xen.h, x86-64 guest view, 5168 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuGuestContext {
    /// FXSAVE image of the FPU state.
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*` flags.
    pub flags: u64,
    pub user_regs: CpuUserRegs,
    /// Virtual IDT.
    pub trap_ctxt: [TrapInfo; TRAP_CTXT_ENTRIES],
    /// LDT linear address and entry count.
    pub ldt_base: u64,
    pub ldt_ents: u64,
    /// GDT machine frames and entry count.
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    /// Kernel stack for ring transitions (the virtual TSS).
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    /// cr0-cr7; cr3 holds the kernel top-level table, cr1 the user one (`xen_pfn_to_cr3`).
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    /// `VMASST_TYPE_*` bitmap.
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

assert_layout!(VcpuGuestContext, size = 5168, {
    fpu_ctxt @ 0, flags @ 512, user_regs @ 520, trap_ctxt @ 720, ldt_base @ 4816,
    ldt_ents @ 4824, gdt_frames @ 4832, gdt_ents @ 4960, kernel_ss @ 4968,
    kernel_sp @ 4976, ctrlreg @ 4984, debugreg @ 5048, event_callback_eip @ 5112,
    failsafe_callback_eip @ 5120, syscall_callback_eip @ 5128, vm_assist @ 5136,
    fs_base @ 5144, gs_base_kernel @ 5152, gs_base_user @ 5160,
});

impl Default for VcpuGuestContext {
    /// All zero.
    fn default() -> Self {
        Self {
            fpu_ctxt: [0; 512],
            flags: 0,
            user_regs: CpuUserRegs::default(),
            trap_ctxt: [TrapInfo::default(); TRAP_CTXT_ENTRIES],
            ldt_base: 0,
            ldt_ents: 0,
            gdt_frames: [0; 16],
            gdt_ents: 0,
            kernel_ss: 0,
            kernel_sp: 0,
            ctrlreg: [0; 8],
            debugreg: [0; 8],
            event_callback_eip: 0,
            failsafe_callback_eip: 0,
            syscall_callback_eip: 0,
            vm_assist: 0,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
        }
    }
}

/// `xen_pfn_to_cr3`: the cr3 value (in `ctrlreg`) naming a top-level table frame.
pub const fn pfn_to_cr3(pfn: u64) -> u64 {
    pfn << 12
}

/// `xen_cr3_to_pfn`: the frame a cr3 value names.
pub const fn cr3_to_pfn(cr3: u64) -> u64 {
    cr3 >> 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_ring3_and_in_the_reserved_page() {
        for sel in [
            FLAT_KERNEL_CS64,
            FLAT_KERNEL_SS64,
            FLAT_USER_CS32,
            FLAT_RING3_DS32,
        ] {
            assert_eq!(sel & 3, 3);
            assert_eq!(u64::from(sel & !7) / 8 / 512, FIRST_RESERVED_GDT_PAGE);
        }
        assert_eq!(FLAT_KERNEL_CS64, 0xe033);
        assert_eq!(FLAT_KERNEL_SS64, 0xe02b);
        assert_eq!(FLAT_USER_CS32, 0xe023);
        assert_eq!(FLAT_KERNEL_DS64, 0, "64-bit data segments are NULL");
        assert_eq!(FIRST_RESERVED_GDT_BYTE, 0xe000);
        assert_eq!(FIRST_RESERVED_GDT_ENTRY, 7168);
        assert_eq!(
            u64::from(FLAT_RING3_CS64 >> 3),
            FIRST_RESERVED_GDT_ENTRY + 6
        );
    }

    #[test]
    fn m2p_window_holds_32g_entries() {
        assert_eq!(MACH2PHYS_NR_ENTRIES, 1 << 35);
        const { assert!(MACH2PHYS_VIRT_END <= HYPERVISOR_VIRT_END) };
    }

    #[test]
    fn trap_info_flags_decode() {
        let entry = TrapInfo {
            vector: 0x80,
            flags: 3 | TI_MASK_EVENTS,
            cs: FLAT_KERNEL_CS64,
            _pad: 0,
            address: 0xffff_ffff_8000_1000,
        };
        assert_eq!(entry.dpl(), 3);
        assert!(entry.masks_events());
        assert!(!entry.is_terminator());
        assert!(TrapInfo::default().is_terminator());
        assert_eq!(TrapInfo { flags: 1, ..entry }.dpl(), 1);
        assert!(!TrapInfo { flags: 1, ..entry }.masks_events());
    }

    #[test]
    fn iret_frame_decodes_mode_and_syscall_flag() {
        let frame = IretContext {
            cs: u64::from(FLAT_USER_CS64),
            flags: VGCF_IN_SYSCALL,
            ..IretContext::default()
        };
        assert!(frame.returns_to_user());
        assert!(frame.in_syscall());
        let kernel = IretContext {
            cs: 0xe030,
            ..frame
        };
        assert!(!kernel.returns_to_user());
        assert_eq!(VGCF_IN_SYSCALL, 0x100);
    }

    #[test]
    fn cr3_helpers_round_trip() {
        assert_eq!(pfn_to_cr3(0x1234), 0x123_4000);
        assert_eq!(cr3_to_pfn(pfn_to_cr3(0x1234)), 0x1234);
    }

    #[test]
    fn emulate_prefix_spells_xen() {
        assert_eq!(&XEN_EMULATE_PREFIX[2..], b"xen");
        assert_eq!(XEN_CPUID[..5], XEN_EMULATE_PREFIX);
    }
}

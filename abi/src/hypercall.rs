//! The numbers of the PV hypercall interface: hypercall numbers (xen.h), their sub-operation
//! numbers (sched.h, event_channel.h, memory.h, callback.h, vcpu.h, version.h and xen.h's
//! console_io, vm_assist and mmuext_op), shutdown reasons, VIRQs, and the multicall entry.
//!
//! The hypervisor's dispatcher decodes rax with [`Hypercall::from_number`] and each
//! sub-op with its enum's `from_raw`; our guests use the same enums to issue calls. A
//! sub-op argument is a C `int`/`unsigned int` in the headers, so decoders take the low 32
//! bits of the register; the hypercall number itself is compared in full. This module only
//! names numbers: it must never decide what a call does.
//!
//! Calling convention (xen-x86_64.h): rax = number; rdi, rsi, rdx, r10, r8, r9 = arguments
//! 1 to 6; the result comes back in rax (a negative [`crate::errno::Errno`] on failure);
//! rcx and r11 are clobbered by `syscall`.

use crate::macros::{abi_enum, assert_layout};

/// The hypercall arguments' registers, in argument order (xen-x86_64.h).
pub const ARGUMENT_REGISTERS: [&str; 6] = ["rdi", "rsi", "rdx", "r10", "r8", "r9"];

abi_enum! {
    /// A hypercall number (`__HYPERVISOR_*`, xen.h). Number 11 is unassigned; the
    /// architecture range 48-55 is not listed.
    pub enum Hypercall: u32 {
        SetTrapTable = 0,
        MmuUpdate = 1,
        SetGdt = 2,
        StackSwitch = 3,
        SetCallbacks = 4,
        FpuTaskswitch = 5,
        /// Legacy form of `sched_op` (compat since 0x00030101).
        SchedOpCompat = 6,
        PlatformOp = 7,
        SetDebugreg = 8,
        GetDebugreg = 9,
        UpdateDescriptor = 10,
        MemoryOp = 12,
        Multicall = 13,
        UpdateVaMapping = 14,
        SetTimerOp = 15,
        /// Legacy form of `event_channel_op` (compat since 0x00030202).
        EventChannelOpCompat = 16,
        XenVersion = 17,
        ConsoleIo = 18,
        /// Legacy form of `physdev_op` (compat since 0x00030202).
        PhysdevOpCompat = 19,
        GrantTableOp = 20,
        VmAssist = 21,
        UpdateVaMappingOtherdomain = 22,
        /// x86 only; never returns on success.
        Iret = 23,
        VcpuOp = 24,
        /// x86-64 only.
        SetSegmentBase = 25,
        MmuextOp = 26,
        XsmOp = 27,
        NmiOp = 28,
        SchedOp = 29,
        CallbackOp = 30,
        XenoprofOp = 31,
        EventChannelOp = 32,
        PhysdevOp = 33,
        HvmOp = 34,
        Sysctl = 35,
        Domctl = 36,
        KexecOp = 37,
        TmemOp = 38,
        ArgoOp = 39,
        XenpmuOp = 40,
        DmOp = 41,
        HypfsOp = 42,
    }
}

impl Hypercall {
    /// Decodes rax at hypercall entry. The whole register counts: a number with any of
    /// bits 32-63 set is not a hypercall.
    pub const fn from_number(number: u64) -> Option<Self> {
        if number > u32::MAX as u64 {
            return None;
        }
        Self::from_raw(number as u32)
    }

    /// The number as it goes into rax.
    pub const fn number(self) -> u64 {
        self.raw() as u64
    }
}

abi_enum! {
    /// `sched_op` commands (`SCHEDOP_*`, sched.h).
    pub enum SchedOp: u32 {
        Yield = 0,
        Block = 1,
        /// arg: `SchedShutdown`.
        Shutdown = 2,
        /// arg: `SchedPoll`.
        Poll = 3,
        /// arg: `SchedRemoteShutdown`.
        RemoteShutdown = 4,
        /// arg: `SchedShutdown`; latches the code reported at a later shutdown.
        ShutdownCode = 5,
        Watchdog = 6,
        PinOverride = 7,
    }
}

abi_enum! {
    /// Shutdown reasons (`SHUTDOWN_*`, sched.h).
    pub enum ShutdownReason: u32 {
        /// Exited normally: clean up and kill.
        Poweroff = 0,
        /// Clean up, kill, then restart.
        Reboot = 1,
        /// Clean up, save suspend info, kill.
        Suspend = 2,
        /// The guest crashed.
        Crash = 3,
        /// The watchdog expired: restart.
        Watchdog = 4,
        /// Reset the domain's hypervisor state, keeping memory and vCPU contexts.
        SoftReset = 5,
    }
}

abi_enum! {
    /// `event_channel_op` commands (`EVTCHNOP_*`, event_channel.h).
    pub enum EvtchnOp: u32 {
        BindInterdomain = 0,
        BindVirq = 1,
        BindPirq = 2,
        Close = 3,
        Send = 4,
        Status = 5,
        AllocUnbound = 6,
        BindIpi = 7,
        BindVcpu = 8,
        Unmask = 9,
        Reset = 10,
        InitControl = 11,
        ExpandArray = 12,
        SetPriority = 13,
        /// `EVTCHNOP_reset` continued (Xen 4.17): same argument.
        ResetCont = 14,
    }
}

abi_enum! {
    /// Virtual interrupts (`VIRQ_*`, xen.h). Per-vCPU VIRQs bind once per vCPU; global
    /// ones bind once per domain, on vCPU 0.
    pub enum Virq: u32 {
        /// Per vCPU: timebase update or requested timeout.
        Timer = 0,
        /// Per vCPU: dump debug info.
        Debug = 1,
        /// Global (dom0): bytes received on the emergency console.
        Console = 2,
        /// Global (dom0): exceptional event for some domain.
        DomExc = 3,
        /// Global (dom0): trace buffer has records.
        Tbuf = 4,
        /// Global (dom0): a domain paused for debugging.
        Debugger = 6,
        /// Per vCPU: XenOprofile sample available.
        Xenoprof = 7,
        /// Global (dom0): bytes received on the console.
        ConRing = 8,
        /// Global (dom0): physical CPU state changed.
        PcpuState = 9,
        /// Global (dom0): a memory event occurred.
        MemEvent = 10,
        /// Global: Argo interdomain message.
        Argo = 11,
        /// Global (dom0): low on heap memory.
        Enomem = 12,
        /// Per vCPU: PMC interrupt.
        Xenpmu = 13,
        /// x86 (`VIRQ_ARCH_0`): machine-check event.
        Mca = 16,
    }
}

/// Number of VIRQ slots (`NR_VIRQS`, xen.h); architecture VIRQs are 16-23.
pub const NR_VIRQS: u32 = 24;

abi_enum! {
    /// `console_io` commands (`CONSOLEIO_*`, xen.h).
    pub enum ConsoleIoOp: u32 {
        Write = 0,
        Read = 1,
    }
}

abi_enum! {
    /// `memory_op` commands (`XENMEM_*`, memory.h). The command sits in the low bits of
    /// the first argument; see [`MEMOP_CMD_MASK`].
    pub enum MemoryOp: u32 {
        /// arg: `XenMemoryReservation`.
        IncreaseReservation = 0,
        /// arg: `XenMemoryReservation`.
        DecreaseReservation = 1,
        /// arg: none; returns the highest machine frame of RAM.
        MaximumRamPage = 2,
        /// arg: `domid_t`.
        CurrentReservation = 3,
        /// arg: `domid_t`.
        MaximumReservation = 4,
        MachphysMfnList = 5,
        /// arg: `XenMemoryReservation`.
        PopulatePhysmap = 6,
        AddToPhysmap = 7,
        /// arg: `XenMemoryMap`.
        MemoryMap = 9,
        MachineMemoryMap = 10,
        Exchange = 11,
        /// arg: `XenMachphysMapping`.
        MachphysMapping = 12,
        SetMemoryMap = 13,
        /// arg: `domid_t`.
        MaximumGpfn = 14,
        RemoveFromPhysmap = 15,
        ClaimPages = 24,
    }
}

/// `memory_op`'s first argument holds the command in bits 0-5 (`MEMOP_CMD_MASK`) and a
/// continuation start extent above `MEMOP_EXTENT_SHIFT` (xen/hypercall.h, Xen-internal but
/// fixed by the guest-visible encoding).
pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;
/// See [`MEMOP_CMD_MASK`].
pub const MEMOP_EXTENT_SHIFT: u32 = 6;

abi_enum! {
    /// `callback_op` commands (`CALLBACKOP_*`, callback.h).
    pub enum CallbackOp: u32 {
        /// arg: `CallbackRegister`.
        Register = 0,
        /// arg: `CallbackUnregister`.
        Unregister = 1,
    }
}

abi_enum! {
    /// Callback types (`CALLBACKTYPE_*`, callback.h).
    pub enum CallbackType: u16 {
        /// Event (upcall) delivery.
        Event = 0,
        /// State could not be restored by the hypervisor.
        Failsafe = 1,
        /// `syscall` from 64-bit guest user mode.
        Syscall = 2,
        /// Deprecated x86-32 sysenter.
        SysenterDeprecated = 3,
        /// NMI delivery.
        Nmi = 4,
        /// `sysenter` from 32-bit guest user mode.
        Sysenter = 5,
        /// `syscall` from 32-bit guest user mode (AMD).
        Syscall32 = 7,
    }
}

abi_enum! {
    /// `mmuext_op` commands (`MMUEXT_*`, xen.h).
    pub enum MmuextCmd: u32 {
        PinL1Table = 0,
        PinL2Table = 1,
        PinL3Table = 2,
        PinL4Table = 3,
        UnpinTable = 4,
        NewBaseptr = 5,
        TlbFlushLocal = 6,
        InvlpgLocal = 7,
        TlbFlushMulti = 8,
        InvlpgMulti = 9,
        TlbFlushAll = 10,
        InvlpgAll = 11,
        FlushCache = 12,
        SetLdt = 13,
        NewUserBaseptr = 15,
        ClearPage = 16,
        CopyPage = 17,
        FlushCacheGlobal = 18,
        MarkSuper = 19,
        UnmarkSuper = 20,
    }
}

abi_enum! {
    /// The command in bits 0-2 of an `mmu_update` request's `ptr` (`MMU_*`, xen.h).
    pub enum MmuUpdateCmd: u64 {
        /// Checked `*ptr = val`; ptr is the machine address of a page-table entry.
        NormalPtUpdate = 0,
        /// Update the M2P entry of the frame containing ptr to val.
        MachphysUpdate = 1,
        /// As `NormalPtUpdate`, OR-ing in the entry's current accessed/dirty bits.
        PtUpdatePreserveAd = 2,
        /// As `NormalPtUpdate`, val never translated (translated guests).
        PtUpdateNoTranslate = 3,
    }
}

abi_enum! {
    /// `vcpu_op` commands (`VCPUOP_*`, vcpu.h).
    pub enum VcpuOp: u32 {
        /// arg: `VcpuGuestContext`.
        Initialise = 0,
        Up = 1,
        Down = 2,
        /// Returns 1 if the vCPU is up.
        IsUp = 3,
        /// arg: `VcpuRunstateInfo` (out).
        GetRunstateInfo = 4,
        /// arg: `VcpuRegisterRunstateMemoryArea`.
        RegisterRunstateMemoryArea = 5,
        /// arg: `VcpuSetPeriodicTimer`.
        SetPeriodicTimer = 6,
        StopPeriodicTimer = 7,
        /// arg: `VcpuSetSingleshotTimer`.
        SetSingleshotTimer = 8,
        StopSingleshotTimer = 9,
        /// arg: `VcpuRegisterVcpuInfo`.
        RegisterVcpuInfo = 10,
        SendNmi = 11,
        GetPhysid = 12,
        RegisterVcpuTimeMemoryArea = 13,
        RegisterRunstatePhysArea = 14,
        RegisterVcpuTimePhysArea = 15,
    }
}

abi_enum! {
    /// `xen_version` commands (`XENVER_*`, version.h). All return 0 on success except
    /// `Version` (major << 16 | minor), `Pagesize` and the `*2`/`BuildId` ones (lengths).
    pub enum XenVersionOp: u32 {
        Version = 0,
        /// arg: 16 bytes.
        Extraversion = 1,
        /// arg: `XenCompileInfo`.
        CompileInfo = 2,
        /// arg: 1024 bytes.
        Capabilities = 3,
        /// arg: 64 bytes.
        Changeset = 4,
        /// arg: `XenPlatformParameters`.
        PlatformParameters = 5,
        /// arg: `XenFeatureInfo`.
        GetFeatures = 6,
        Pagesize = 7,
        /// arg: 16-byte domain handle.
        GuestHandle = 8,
        /// arg: 1024 bytes.
        Commandline = 9,
        BuildId = 10,
        Extraversion2 = 11,
        Capabilities2 = 12,
        Changeset2 = 13,
        Commandline2 = 14,
    }
}

abi_enum! {
    /// `vm_assist` commands (`VMASST_CMD_*`, xen.h).
    pub enum VmAssistCmd: u32 {
        Enable = 0,
        Disable = 1,
    }
}

abi_enum! {
    /// `vm_assist` types (`VMASST_TYPE_*`, xen.h).
    pub enum VmAssistType: u32 {
        /// x86-32: emulate 4 GiB segment limits.
        FourGbSegments = 0,
        /// x86-32: trap when the above is used.
        FourGbSegmentsNotify = 1,
        /// Writes to bottom-level page-table entries are emulated.
        WritablePagetables = 2,
        /// x86-32 PAE: page directories above 4 GiB.
        PaeExtendedCr3 = 3,
        /// Architectural IOPL semantics.
        ArchitecturalIopl = 4,
        /// Set `XEN_RUNSTATE_UPDATE` while updating the guest's runstate area.
        RunstateUpdateFlag = 5,
        /// x86-64: strictly hide the M2P from user mode.
        M2pStrict = 32,
        /// x86-64: no IBPB on guest user-to-kernel switches.
        ModeSwitchNoIbpb = 33,
    }
}

abi_enum! {
    /// `set_segment_base` selectors (`SEGBASE_*`, xen-x86_64.h).
    pub enum SegmentBase: u32 {
        Fs = 0,
        GsUser = 1,
        GsKernel = 2,
        /// Load user %gs from the selector in bits 0-15 of the base.
        GsUserSel = 3,
    }
}

/// One call of a `multicall` batch (`struct multicall_entry`, xen.h): the hypervisor runs
/// `op` with `args` and writes the result back into `result`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MulticallEntry {
    pub op: u64,
    pub result: u64,
    pub args: [u64; 6],
}

assert_layout!(MulticallEntry, size = 64, { op @ 0, result @ 8, args @ 16 });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_numbers_match_xen_h() {
        assert_eq!(Hypercall::SetTrapTable.number(), 0);
        assert_eq!(Hypercall::MmuUpdate.number(), 1);
        assert_eq!(Hypercall::MemoryOp.number(), 12);
        assert_eq!(Hypercall::Iret.number(), 23);
        assert_eq!(Hypercall::SchedOp.number(), 29);
        assert_eq!(Hypercall::EventChannelOp.number(), 32);
        assert_eq!(Hypercall::Domctl.number(), 36);
        assert_eq!(Hypercall::ALL.len(), 42);
    }

    #[test]
    fn every_listed_number_decodes_to_itself() {
        for &call in Hypercall::ALL {
            assert_eq!(Hypercall::from_number(call.number()), Some(call));
        }
    }

    #[test]
    fn unassigned_and_oversized_numbers_are_rejected() {
        assert_eq!(Hypercall::from_number(11), None);
        assert_eq!(Hypercall::from_number(43), None);
        assert_eq!(Hypercall::from_number(48), None);
        assert_eq!(Hypercall::from_number(1 << 32 | 1), None);
        assert_eq!(Hypercall::from_number(u64::MAX), None);
    }

    #[test]
    fn sub_op_numbers_match_headers() {
        assert_eq!(SchedOp::from_raw(3), Some(SchedOp::Poll));
        assert_eq!(ShutdownReason::from_raw(3), Some(ShutdownReason::Crash));
        assert_eq!(ShutdownReason::from_raw(6), None);
        assert_eq!(EvtchnOp::AllocUnbound.raw(), 6);
        assert_eq!(EvtchnOp::Unmask.raw(), 9);
        assert_eq!(MemoryOp::MachphysMapping.raw(), 12);
        assert_eq!(MemoryOp::MaximumGpfn.raw(), 14);
        assert_eq!(
            MemoryOp::from_raw(8),
            None,
            "translate_gpfn_list was removed"
        );
        assert_eq!(CallbackType::Syscall32.raw(), 7);
        assert_eq!(CallbackType::from_raw(6), None);
        assert_eq!(MmuextCmd::NewUserBaseptr.raw(), 15);
        assert_eq!(MmuextCmd::from_raw(14), None);
        assert_eq!(VcpuOp::SetSingleshotTimer.raw(), 8);
        assert_eq!(VcpuOp::IsUp.raw(), 3);
        assert_eq!(XenVersionOp::GetFeatures.raw(), 6);
        assert_eq!(XenVersionOp::GuestHandle.raw(), 8);
        assert_eq!(VmAssistType::M2pStrict.raw(), 32);
        assert_eq!(Virq::DomExc.raw(), 3);
        assert_eq!(Virq::from_raw(5), None);
        assert!(Virq::ALL.iter().all(|v| v.raw() < NR_VIRQS));
    }

    #[test]
    fn memory_op_command_mask_keeps_six_bits() {
        let arg = (5u64 << MEMOP_EXTENT_SHIFT) | MemoryOp::PopulatePhysmap.raw() as u64;
        assert_eq!(arg & MEMOP_CMD_MASK, 6);
    }
}

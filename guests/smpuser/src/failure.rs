//! What can go wrong in the checks, and how it is reported: one typed [`Failure`] per kind
//! of problem, printed as "smpuser: FAILED <failure>" before the domain crashes.
//!
//! Both vCPUs report through [`fail`]; the QEMU test sees the line and the crash. This
//! module must never retry or weaken a check: it only reports.

use core::fmt;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::{shutdown, HypercallError};
use guest_rt::println;
use guest_rt::traps::TrapError;

/// The hypercall that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    MapSharedInfo,
    VcpuInitialise,
    VcpuUp,
    VcpuIsUp,
    UpdateVaMapping,
    PinUserL4,
    NewUserBaseptr,
    RegisterSyscallCallback,
    StackSwitch,
}

/// What a vCPU waited for too long (each wait is bounded in yields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// vCPU 1 for vCPU 0 to announce the bring-up.
    Release,
    /// vCPU 0 for vCPU 1 to announce itself.
    SecondaryStart,
    /// vCPU 0 for vCPU 1's counter to reach its target.
    SecondaryCount,
    /// vCPU 1 for vCPU 0 to map the probe page to frame A.
    ProbeMapped,
    /// vCPU 0 for vCPU 1 to read and write the probe page through frame A.
    SecondaryUsedA,
    /// vCPU 1 for vCPU 0 to remap the probe page to frame B.
    ProbeRemapped,
    /// vCPU 0 for vCPU 1 to report what it saw after the remap.
    SecondaryReport,
    /// vCPU 1, parked, for the domain to be shut down.
    Shutdown,
}

/// A checked value that differed from what the ABI promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `VCPUOP_is_up` of vCPU 1 after `VCPUOP_initialise`, before `VCPUOP_up`.
    IsUpBeforeUp,
    /// `VCPUOP_is_up` of vCPU 1 after `VCPUOP_up`.
    IsUpAfterUp,
    /// rdi and rsi vCPU 1 started with (from its `vcpu_guest_context`).
    SecondaryRdi,
    SecondaryRsi,
    /// The probe page's marker vCPU 1 read while it mapped frame A.
    SeenBeforeRemap,
    /// The probe page's marker vCPU 1 read once vCPU 0 had remapped it to frame B.
    SeenAfterRemap,
    /// Frame A's written word at the end: vCPU 1's write through the probe page before
    /// the remap, not overwritten by its write after.
    WriteInFrameA,
    /// Frame B's written word at the end: vCPU 1's write through the probe page after the
    /// remap.
    WriteInFrameB,
    /// Times the page-fault handler saw the kernel's load from the unmapped address.
    KernelFaults,
    /// The kernel-mode page fault's error code (U bit clear).
    KernelFaultErrorCode,
    /// The kernel-mode page fault's address (cr2).
    KernelFaultAddress,
    /// The RPL of the kernel-mode page fault's frame cs (0: guest kernel mode).
    KernelFaultCsRpl,
    /// Times the breakpoint handler saw the user program's `int3`.
    UserBreakpoints,
    /// rip in the user `int3`'s frame (just after the instruction).
    UserBreakpointRip,
    /// The RPL of the user `int3`'s frame cs (3: guest user mode).
    UserBreakpointCsRpl,
    /// Times the page-fault handler saw the user program's load.
    UserFaults,
    /// The user-mode page fault's error code (U bit set).
    UserFaultErrorCode,
    /// The user-mode page fault's address (cr2).
    UserFaultAddress,
    /// The RPL of the user-mode page fault's frame cs (3: guest user mode).
    UserFaultCsRpl,
    /// Times the syscall callback was entered.
    Syscalls,
    /// rax the user program made `syscall` with.
    SyscallRax,
    /// The syscall frame's fields.
    SyscallRip,
    SyscallRcx,
    SyscallCsRpl,
    SyscallRsp,
    SyscallSs,
    /// Times the general-protection handler saw the user program's `mov` from and to cr3
    /// (each must raise #GP in the guest kernel: no emulation from user mode).
    UserCr3Faults,
    /// rax after the user `mov rax, cr3`: the marker it held before (not a base pointer).
    UserCr3Rax,
    /// The RPL of the user #GP frames' cs (3: guest user mode).
    UserCr3CsRpl,
}

/// Why the guest gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A hypercall failed.
    Call(Call, HypercallError),
    /// A trap handler could not be routed.
    Trap(TrapError),
    /// A wait ran out of yields.
    Timeout(Wait),
    /// A value differed from the expected one.
    Mismatch {
        check: Check,
        got: u64,
        expected: u64,
    },
    /// `start_info.pt_base` is not in the initial mapping.
    BadPtBase(u64),
    /// The reservation has no free frame left.
    NoFreeFrame,
    /// A trap arrived at a place no check expects it (vector, rip).
    UnexpectedTrap { vector: u64, rip: u64 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Call(call, error) => write!(f, "hypercall {call:?}: {error:?}"),
            Self::Trap(error) => write!(f, "trap handler: {error:?}"),
            Self::Timeout(wait) => write!(f, "timed out waiting: {wait:?}"),
            Self::Mismatch {
                check,
                got,
                expected,
            } => write!(f, "{check:?}: got {got:#x}, expected {expected:#x}"),
            Self::BadPtBase(va) => write!(f, "pt_base {va:#x} outside the initial mapping"),
            Self::NoFreeFrame => write!(f, "no free frame left"),
            Self::UnexpectedTrap { vector, rip } => {
                write!(f, "unexpected exception {vector} at rip {rip:#x}")
            }
        }
    }
}

/// Fails with a [`Failure::Mismatch`] unless `got == expected`.
pub fn expect(check: Check, got: u64, expected: u64) -> Result<(), Failure> {
    if got == expected {
        Ok(())
    } else {
        Err(Failure::Mismatch {
            check,
            got,
            expected,
        })
    }
}

/// Reports `failure` and crashes the domain (all its vCPUs).
pub fn fail(failure: Failure) -> ! {
    println!("smpuser: FAILED {failure}");
    shutdown(ShutdownReason::Crash)
}

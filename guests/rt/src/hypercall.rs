//! Hypercalls through the hypercall page: the page itself (page 0 of the image, named by
//! the `HYPERCALL_PAGE` note and filled by the domain builder), the raw `hypercall0` to
//! `hypercall5` calls, and typed wrappers for the calls our guests make.
//!
//! Stub n sits at `guest_rt_hypercall_page + n * 32`; we `call` it with the arguments in
//! rdi, rsi, rdx, r10 and r8 and get the result in rax (a negative Xen errno on failure,
//! decoded by [`decode`]). Every argument register, rcx and r11 are treated as clobbered
//! (a debug Xen poisons unused argument registers). Wrappers whose argument is one plain
//! struct (no address inside, see [`Plain`]) are safe and take the struct by reference,
//! the command following from its type (`abi::args`); wrappers that hand the hypervisor
//! addresses to read or write, or that change page tables, trap handlers or stacks, are
//! `unsafe` (the `_raw` ones take any command and pointer, for probing the hypervisor). This module must never keep state or decide policy: it only makes calls.

use core::arch::{asm, global_asm};

use abi::arch_x86::TrapInfo;
use abi::args::{EvtchnArg, VcpuArg, XenVersionArg};
use abi::callback::CallbackRegister;
use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindPirq, EvtchnBindVcpu, EvtchnBindVirq,
    EvtchnClose, EvtchnReset, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use abi::errno::Errno;
use abi::hypercall::{
    CallbackOp, CallbackType, ConsoleIoOp, EvtchnOp, Hypercall, MemoryOp, MulticallEntry, SchedOp,
    ShutdownReason, VcpuOp, XenVersionOp,
};
use abi::hypercall_page::{stub_offset, HYPERCALL_PAGE_SIZE};
use abi::ids::{DomId, VcpuId};
use abi::mmu::{MmuUpdate, MmuextOp};
use abi::sched::SchedShutdown;
use abi::vcpu::{VcpuGetPhysid, VcpuRunstateInfo, VcpuSetPeriodicTimer, VcpuSetSingleshotTimer};
use abi::version::{XenCompileInfo, XenFeatureInfo, XenPlatformParameters};

// The hypercall page: 4 KiB of int3 until the builder writes the stubs over it. guest.ld
// places `.text.hypercall_page` first, at VIRT_BASE (pfn 0).
global_asm!(
    ".pushsection .text.hypercall_page,\"ax\",@progbits",
    ".balign 4096",
    ".globl guest_rt_hypercall_page",
    "guest_rt_hypercall_page:",
    ".fill {size}, 1, 0xcc",
    ".popsection",
    size = const HYPERCALL_PAGE_SIZE,
);

extern "C" {
    /// The first byte of the hypercall page (defined above).
    static guest_rt_hypercall_page: [u8; HYPERCALL_PAGE_SIZE];
}

/// Why a hypercall failed, or why it was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallError {
    /// The hypervisor returned this Xen error number.
    Xen(Errno),
    /// The hypervisor returned a negative value that is not a known Xen error number.
    Unknown(i64),
    /// The call was not made: the argument cannot be expressed in the ABI (a list longer
    /// than its 31-bit count field, or a trap table without its terminating entry).
    BadArgument,
}

impl HypercallError {
    /// The Xen error number, when the hypervisor returned a known one.
    pub const fn errno(self) -> Option<Errno> {
        match self {
            Self::Xen(errno) => Some(errno),
            Self::Unknown(_) | Self::BadArgument => None,
        }
    }
}

/// The result of a hypercall: its non-negative return value, or the error.
pub type Result<T> = core::result::Result<T, HypercallError>;

/// Decodes rax after a hypercall: non-negative is success, negative an error number.
pub const fn decode(ret: i64) -> Result<u64> {
    if ret >= 0 {
        return Ok(ret as u64);
    }
    match Errno::from_return(ret) {
        Some(errno) => Err(HypercallError::Xen(errno)),
        None => Err(HypercallError::Unknown(ret)),
    }
}

/// The largest list a count argument can describe: Xen's counts are 32-bit and some
/// (`mmu_update`, `mmuext_op`) use bit 31 to mark a preempted continuation.
pub const MAX_LIST_LEN: usize = (1 << 31) - 1;

/// A list's length as a count argument, or [`HypercallError::BadArgument`] when too long.
pub const fn list_len(len: usize) -> Result<u64> {
    if len > MAX_LIST_LEN {
        return Err(HypercallError::BadArgument);
    }
    Ok(len as u64)
}

/// The address of hypercall `call`'s stub.
fn stub_address(call: Hypercall) -> u64 {
    let page = &raw const guest_rt_hypercall_page;
    page as u64 + stub_offset(call) as u64
}

/// Makes hypercall `call` with five arguments; unused ones should be 0.
///
/// # Safety
/// The arguments must be valid for `call` as the Xen ABI defines it: every guest address
/// among them must point to memory of the right type and size, readable (and writable
/// where the hypervisor writes) for the whole call, and the call's effect (on page
/// tables, handlers, stacks, the domain's existence) must not break the Rust program's
/// assumptions about its own memory.
pub unsafe fn hypercall5(call: Hypercall, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the stub address lies in the hypercall page, which the builder filled with
    // stubs that save rcx and r11, `syscall` and return; the caller vouches for the
    // arguments. Argument registers, rcx and r11 are declared clobbered, memory is
    // assumed read and written (no `nomem`), and the stub uses our stack (no `nostack`).
    unsafe {
        asm!(
            "call {stub}",
            stub = in(reg) stub_address(call),
            lateout("rax") ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("r9") _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Makes hypercall `call` with four arguments.
///
/// # Safety
/// As [`hypercall5`].
pub unsafe fn hypercall4(call: Hypercall, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    // SAFETY: forwarded; the caller upholds hypercall5's contract.
    unsafe { hypercall5(call, a1, a2, a3, a4, 0) }
}

/// Makes hypercall `call` with three arguments.
///
/// # Safety
/// As [`hypercall5`].
pub unsafe fn hypercall3(call: Hypercall, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded; the caller upholds hypercall5's contract.
    unsafe { hypercall5(call, a1, a2, a3, 0, 0) }
}

/// Makes hypercall `call` with two arguments.
///
/// # Safety
/// As [`hypercall5`].
pub unsafe fn hypercall2(call: Hypercall, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded; the caller upholds hypercall5's contract.
    unsafe { hypercall5(call, a1, a2, 0, 0, 0) }
}

/// Makes hypercall `call` with one argument.
///
/// # Safety
/// As [`hypercall5`].
pub unsafe fn hypercall1(call: Hypercall, a1: u64) -> i64 {
    // SAFETY: forwarded; the caller upholds hypercall5's contract.
    unsafe { hypercall5(call, a1, 0, 0, 0, 0) }
}

/// Makes hypercall `call` without arguments.
///
/// # Safety
/// As [`hypercall5`].
pub unsafe fn hypercall0(call: Hypercall) -> i64 {
    // SAFETY: forwarded; the caller upholds hypercall5's contract.
    unsafe { hypercall5(call, 0, 0, 0, 0, 0) }
}

// ---- Console and scheduling: safe, they touch no guest memory but their arguments. ----

/// Writes `bytes` to the hypervisor console (`console_io` write).
pub fn console_write(bytes: &[u8]) -> Result<()> {
    let count = list_len(bytes.len())?;
    let op = u64::from(ConsoleIoOp::Write.raw());
    // SAFETY: the hypervisor only reads `count` bytes from the live slice.
    let ret = unsafe { hypercall3(Hypercall::ConsoleIo, op, count, bytes.as_ptr() as u64) };
    decode(ret).map(drop)
}

/// Reads console input into `buffer` (`console_io` read: domain 0's serial input); returns
/// how many bytes came.
pub fn console_read(buffer: &mut [u8]) -> Result<usize> {
    let count = list_len(buffer.len())?;
    let op = u64::from(ConsoleIoOp::Read.raw());
    // SAFETY: the hypervisor writes at most `count` bytes into the live slice.
    let ret = unsafe { hypercall3(Hypercall::ConsoleIo, op, count, buffer.as_mut_ptr() as u64) };
    decode(ret).map(|n| n as usize)
}

/// Gives up the CPU to other vCPUs (`sched_op` yield).
pub fn sched_yield() -> Result<()> {
    // SAFETY: yield takes no argument and has no effect on guest memory.
    let ret = unsafe { hypercall2(Hypercall::SchedOp, SchedOp::Yield.raw().into(), 0) };
    decode(ret).map(drop)
}

/// Blocks until an event is pending (`sched_op` block). Xen unmasks event delivery on
/// the way in, as an `sti; hlt` would.
pub fn sched_block() -> Result<()> {
    // SAFETY: block takes no argument and has no effect on guest memory.
    let ret = unsafe { hypercall2(Hypercall::SchedOp, SchedOp::Block.raw().into(), 0) };
    decode(ret).map(drop)
}

/// Ends the domain (`sched_op` shutdown). Should the hypervisor refuse, this reports it
/// once and keeps retrying, yielding in between: it never returns.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let arg = SchedShutdown {
        reason: reason.raw(),
    };
    let mut reported = false;
    loop {
        // SAFETY: the hypervisor reads the 4-byte `SchedShutdown` on our stack.
        let ret = unsafe {
            hypercall2(
                Hypercall::SchedOp,
                SchedOp::Shutdown.raw().into(),
                &raw const arg as u64,
            )
        };
        if !reported {
            crate::println!("guest-rt: shutdown({reason:?}) returned {:?}", decode(ret));
            reported = true;
        }
        let _ = sched_yield();
    }
}

/// Arms the one-shot timer for system time `deadline_ns` (0 disarms it).
pub fn set_timer_op(deadline_ns: u64) -> Result<()> {
    // SAFETY: the deadline is a plain number; the timer only raises an event.
    let ret = unsafe { hypercall1(Hypercall::SetTimerOp, deadline_ns) };
    decode(ret).map(drop)
}

/// The hypervisor's version (`XENVER_version`): (major, minor).
pub fn version() -> Result<(u16, u16)> {
    // SAFETY: XENVER_version takes no buffer (NULL).
    let raw = decode(unsafe {
        hypercall2(Hypercall::XenVersion, XenVersionOp::Version.raw().into(), 0)
    })?;
    Ok(((raw >> 16) as u16, raw as u16))
}

// ---- Calls whose argument is one plain struct: safe. ----

/// A command argument the hypervisor only reads and writes in place: no guest address
/// inside it, and the command that takes it changes no memory of the caller beyond the
/// struct (it may change event channels, timers or vCPU states, none of which the Rust
/// program's memory depends on).
///
/// # Safety
/// Implement only for such structs: the safe wrappers below hand the hypervisor a pointer
/// to the struct and nothing else vouches for what the call does with memory.
pub unsafe trait Plain {}

// The event-channel structs hold ports, domain ids, vCPU numbers and VIRQ/PIRQ numbers
// only; `EVTCHNOP_init_control` (a control frame the hypervisor writes) is left out.
// SAFETY: as said above.
unsafe impl Plain for EvtchnBindInterdomain {}
// SAFETY: as above.
unsafe impl Plain for EvtchnBindVirq {}
// SAFETY: as above.
unsafe impl Plain for EvtchnBindPirq {}
// SAFETY: as above.
unsafe impl Plain for EvtchnClose {}
// SAFETY: as above.
unsafe impl Plain for EvtchnSend {}
// SAFETY: as above.
unsafe impl Plain for EvtchnStatus {}
// SAFETY: as above.
unsafe impl Plain for EvtchnAllocUnbound {}
// SAFETY: as above.
unsafe impl Plain for EvtchnBindIpi {}
// SAFETY: as above.
unsafe impl Plain for EvtchnBindVcpu {}
// SAFETY: as above.
unsafe impl Plain for EvtchnUnmask {}
// SAFETY: as above.
unsafe impl Plain for EvtchnReset {}
// SAFETY: a copy of the runstate written into the struct; `VCPUOP_register_runstate_memory_area`
// (written from then on) and `VCPUOP_register_vcpu_info` (a frame) are left out.
unsafe impl Plain for VcpuRunstateInfo {}
// SAFETY: a period in ns.
unsafe impl Plain for VcpuSetPeriodicTimer {}
// SAFETY: a deadline and flags.
unsafe impl Plain for VcpuSetSingleshotTimer {}
// SAFETY: an id written into the struct.
unsafe impl Plain for VcpuGetPhysid {}
// SAFETY: strings and numbers written into the struct.
unsafe impl Plain for XenCompileInfo {}
// SAFETY: a number written into the struct.
unsafe impl Plain for XenPlatformParameters {}
// SAFETY: an index read, a bitmap written, in the struct.
unsafe impl Plain for XenFeatureInfo {}

/// `event_channel_op` with `arg`'s command.
pub fn event_channel_op<A: EvtchnArg + Plain>(arg: &mut A) -> Result<()> {
    // SAFETY: `arg` is the whole argument of `A::OP` and holds no address (`Plain`).
    unsafe { event_channel_op_raw(A::OP, arg as *mut A) }
}

/// `vcpu_op` with `arg`'s command for `vcpu`; the result is the command's value.
pub fn vcpu_op<A: VcpuArg + Plain>(vcpu: VcpuId, arg: &mut A) -> Result<u64> {
    // SAFETY: `arg` is the whole argument of `A::OP` and holds no address (`Plain`).
    unsafe { vcpu_op_raw(A::OP, vcpu, arg as *mut A) }
}

/// The `vcpu_op` commands that take no argument and touch no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuControl {
    /// Starts a vCPU given a context by `VCPUOP_initialise` (whose call is the unsafe one).
    Up,
    /// Stops a vCPU (the caller's own: it runs no further until another brings it up).
    Down,
    /// 1 if the vCPU is up, else 0.
    IsUp,
    StopPeriodicTimer,
    StopSingleshotTimer,
}

impl VcpuControl {
    const fn op(self) -> VcpuOp {
        match self {
            Self::Up => VcpuOp::Up,
            Self::Down => VcpuOp::Down,
            Self::IsUp => VcpuOp::IsUp,
            Self::StopPeriodicTimer => VcpuOp::StopPeriodicTimer,
            Self::StopSingleshotTimer => VcpuOp::StopSingleshotTimer,
        }
    }
}

/// `vcpu_op(cmd, vcpu, NULL)`; the result is the command's value.
pub fn vcpu_control(cmd: VcpuControl, vcpu: VcpuId) -> Result<u64> {
    // SAFETY: these commands read no argument and change no memory of ours.
    unsafe { vcpu_op_raw(cmd.op(), vcpu, core::ptr::null_mut::<u8>()) }
}

/// `xen_version` filling `arg` (the command follows from its type).
pub fn xen_version<A: XenVersionArg + Plain>(arg: &mut A) -> Result<u64> {
    // SAFETY: `arg` is the whole buffer of `A::OP`, written in place (`Plain`).
    unsafe { xen_version_raw(A::OP, arg as *mut A) }
}

// ---- Calls that read or write guest memory given by address: unsafe. ----

/// `xen_version(cmd, arg)` with a raw buffer (for probing the hypervisor with bad ones);
/// [`xen_version`] is the safe form.
///
/// # Safety
/// `arg` must be null or point to a writable buffer of the type `cmd` fills.
pub unsafe fn xen_version_raw<T>(cmd: XenVersionOp, arg: *mut T) -> Result<u64> {
    // SAFETY: the caller vouches for `arg`.
    decode(unsafe { hypercall2(Hypercall::XenVersion, cmd.raw().into(), arg as u64) })
}

/// Installs virtual IDT entries (`set_trap_table`). `table` must end with an entry whose
/// address is 0 (else [`HypercallError::BadArgument`], no call made); a table listing
/// fewer vectors updates only those.
///
/// # Safety
/// Every non-terminating entry's address must be an entry point that handles the PV
/// bounce frame of its vector and returns with the `iret` hypercall (or never returns).
pub unsafe fn set_trap_table(table: &[TrapInfo]) -> Result<()> {
    if !table.last().is_some_and(TrapInfo::is_terminator) {
        return Err(HypercallError::BadArgument);
    }
    // SAFETY: the table is terminated, so the hypervisor reads within the slice; the
    // caller vouches for the handler addresses.
    decode(unsafe { hypercall1(Hypercall::SetTrapTable, table.as_ptr() as u64) }).map(drop)
}

/// Registers the event, failsafe and syscall callbacks at once (`set_callbacks`).
///
/// # Safety
/// Each address must be 0 or an entry point for its callback's frame.
pub unsafe fn set_callbacks(event: u64, failsafe: u64, syscall: u64) -> Result<()> {
    // SAFETY: the caller vouches for the entry points.
    decode(unsafe { hypercall3(Hypercall::SetCallbacks, event, failsafe, syscall) }).map(drop)
}

/// Registers one callback (`callback_op` register); `flags` are `CALLBACKF_*`.
///
/// # Safety
/// `address` must be an entry point for the frame of callback `kind`.
pub unsafe fn callback_register(kind: CallbackType, address: u64, flags: u16) -> Result<()> {
    let arg = CallbackRegister {
        kind: kind.raw(),
        flags,
        _pad: 0,
        address,
    };
    let op = u64::from(CallbackOp::Register.raw());
    // SAFETY: the hypervisor reads `arg` on our stack; the caller vouches for `address`.
    decode(unsafe { hypercall2(Hypercall::CallbackOp, op, &raw const arg as u64) }).map(drop)
}

/// Applies page-table updates (`mmu_update`) for domain `domid` (normally
/// `DomId::SELF`); `done` receives the number of requests that succeeded.
///
/// # Safety
/// The updates must not unmap or remap memory the program still uses as ordinary
/// memory (its image, stacks, anything borrowed).
pub unsafe fn mmu_update(requests: &[MmuUpdate], done: &mut u32, domid: DomId) -> Result<()> {
    let count = list_len(requests.len())?;
    // SAFETY: the hypervisor reads `count` requests and writes `done`; the caller vouches
    // for the updates' effect.
    let ret = unsafe {
        hypercall4(
            Hypercall::MmuUpdate,
            requests.as_ptr() as u64,
            count,
            done as *mut u32 as u64,
            domid.0.into(),
        )
    };
    decode(ret).map(drop)
}

/// Extended MMU operations (`mmuext_op`): pins, base pointers, TLB flushes.
///
/// # Safety
/// As [`mmu_update`]: a new base pointer or an unpin must leave the program's memory
/// mapped as it expects.
pub unsafe fn mmuext_op(ops: &[MmuextOp], done: &mut u32, domid: DomId) -> Result<()> {
    let count = list_len(ops.len())?;
    // SAFETY: the hypervisor reads `count` ops and writes `done`; the caller vouches for
    // their effect (and for any vCPU mask addresses inside them).
    let ret = unsafe {
        hypercall4(
            Hypercall::MmuextOp,
            ops.as_ptr() as u64,
            count,
            done as *mut u32 as u64,
            domid.0.into(),
        )
    };
    decode(ret).map(drop)
}

/// Replaces the leaf entry mapping `va` with `pte` (`update_va_mapping`); `flags` are
/// `UVMF_*` (flush type and scope).
///
/// # Safety
/// Nothing may still use the old mapping of `va` as ordinary memory.
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Result<()> {
    // SAFETY: the caller vouches that the page at `va` may change underneath.
    decode(unsafe { hypercall3(Hypercall::UpdateVaMapping, va, pte, flags) }).map(drop)
}

/// `memory_op(cmd, arg)`; the result is the command's count or value.
///
/// # Safety
/// `arg` must point to the argument type `cmd` takes, with every guest address inside it
/// valid; frames given away must no longer be used.
pub unsafe fn memory_op<T>(cmd: MemoryOp, arg: *mut T) -> Result<u64> {
    // SAFETY: the caller vouches for `arg` and the effect of `cmd`.
    decode(unsafe { hypercall2(Hypercall::MemoryOp, cmd.raw().into(), arg as u64) })
}

/// `event_channel_op(cmd, arg)` with a raw argument (for probing the hypervisor with bad
/// ones, or `EVTCHNOP_init_control`); [`event_channel_op`] is the safe form.
///
/// # Safety
/// `arg` must point to the argument type `cmd` takes (read and written by the call), and
/// any frame it names must be one the program lets the hypervisor write.
pub unsafe fn event_channel_op_raw<T>(cmd: EvtchnOp, arg: *mut T) -> Result<()> {
    // SAFETY: the caller vouches for `arg`.
    decode(unsafe { hypercall2(Hypercall::EventChannelOp, cmd.raw().into(), arg as u64) }).map(drop)
}

/// `vcpu_op(cmd, vcpu, arg)` with a raw argument (`VCPUOP_initialise`, areas registered by
/// address, probes with bad arguments); [`vcpu_op`] and [`vcpu_control`] are the safe
/// forms. The result is the command's value (1 for `IsUp` when up).
///
/// # Safety
/// `arg` must be null or point to the argument type `cmd` takes; starting a vCPU needs a
/// context whose stacks and page tables are valid, and an area registered by address is
/// written by the hypervisor from then on.
pub unsafe fn vcpu_op_raw<T>(cmd: VcpuOp, vcpu: VcpuId, arg: *mut T) -> Result<u64> {
    // SAFETY: the caller vouches for `arg` and the effect of `cmd`.
    decode(unsafe {
        hypercall3(
            Hypercall::VcpuOp,
            cmd.raw().into(),
            vcpu.0.into(),
            arg as u64,
        )
    })
}

/// Sets the stack the hypervisor switches to on entry from guest user mode
/// (`stack_switch`).
///
/// # Safety
/// `ss:rsp` must be the top of a kernel stack that stays valid and unused by anything
/// else while guest user code can trap.
pub unsafe fn stack_switch(ss: u16, rsp: u64) -> Result<()> {
    // SAFETY: the caller vouches for the stack.
    decode(unsafe { hypercall2(Hypercall::StackSwitch, ss.into(), rsp) }).map(drop)
}

/// Runs a batch of hypercalls (`multicall`); each entry's `result` is written back.
///
/// # Safety
/// Every entry must satisfy the contract of the hypercall it names.
pub unsafe fn multicall(calls: &mut [MulticallEntry]) -> Result<()> {
    let count = list_len(calls.len())?;
    // SAFETY: the hypervisor reads and writes `count` entries of the live slice; the
    // caller vouches for each call.
    decode(unsafe { hypercall2(Hypercall::Multicall, calls.as_mut_ptr() as u64, count) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_negative_returns_are_values() {
        assert_eq!(decode(0), Ok(0));
        assert_eq!(decode(0x0004_0011), Ok(0x0004_0011));
        assert_eq!(decode(i64::MAX), Ok(i64::MAX as u64));
    }

    #[test]
    fn known_negative_returns_are_errnos() {
        assert_eq!(decode(-38), Err(HypercallError::Xen(Errno::Enosys)));
        assert_eq!(decode(-1), Err(HypercallError::Xen(Errno::Eperm)));
        assert_eq!(decode(-22).unwrap_err().errno(), Some(Errno::Einval));
    }

    #[test]
    fn unknown_negative_returns_keep_their_value() {
        assert_eq!(
            decode(-4),
            Err(HypercallError::Unknown(-4)),
            "EINTR is internal"
        );
        assert_eq!(decode(-5000), Err(HypercallError::Unknown(-5000)));
        assert_eq!(decode(i64::MIN), Err(HypercallError::Unknown(i64::MIN)));
        assert_eq!(HypercallError::Unknown(-4).errno(), None);
    }

    #[test]
    fn list_lengths_stop_below_bit_31() {
        assert_eq!(list_len(0), Ok(0));
        assert_eq!(list_len(MAX_LIST_LEN), Ok(0x7fff_ffff));
        assert_eq!(list_len(MAX_LIST_LEN + 1), Err(HypercallError::BadArgument));
        assert_eq!(list_len(usize::MAX), Err(HypercallError::BadArgument));
    }

    #[test]
    fn unterminated_trap_tables_are_refused_without_a_call() {
        let entry = TrapInfo {
            vector: 14,
            address: 0xffff_ffff_8000_2000,
            ..TrapInfo::default()
        };
        // No hypercall page exists on the host: reaching the call would crash the test.
        // SAFETY: both tables are refused before any call is made.
        unsafe {
            assert_eq!(set_trap_table(&[]), Err(HypercallError::BadArgument));
            assert_eq!(set_trap_table(&[entry]), Err(HypercallError::BadArgument));
            assert_eq!(
                set_trap_table(&[TrapInfo::default(), entry]),
                Err(HypercallError::BadArgument)
            );
        }
    }
}

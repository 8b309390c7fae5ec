//! Decoding a hypercall's registers into a typed request, before any handler runs.
//!
//! Pure and host-tested: every handler in the hypervisor starts from a [`Request`] whose
//! numbers are known values, whose counts are bounded and whose guest pointers are typed
//! ([`GuestVa`]) — whether a pointer names readable guest memory is checked when it is used.
//! Registers follow the x86_64 PV convention: rax = number; rdi, rsi, rdx, r10, r8 = args.
//! [`Request::encode`] is the inverse: it gives the registers that decode to a request, so
//! that a preempted call can be re-issued as a changed request (see [`crate::continuation`]).

use abi::grant_table::{GnttabOp, GNTTABOP_CMD_MASK, GNTTABOP_CONTINUATION_ARG_SHIFT};
use abi::hypercall::{CallbackOp, ConsoleIoOp, Hypercall, SchedOp, VcpuOp, XenVersionOp, MEMOP_CMD_MASK, MEMOP_EXTENT_SHIFT};

/// A guest virtual address given as a hypercall argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestVa(pub u64);

impl GuestVa {
    /// The address of element `index` of an array of `T` starting here.
    pub fn offset<T>(self, index: u64) -> Option<GuestVa> {
        index.checked_mul(size_of::<T>() as u64).and_then(|b| self.0.checked_add(b)).map(GuestVa)
    }

    pub fn is_null(self) -> bool {
        self.0 == 0
    }
}

/// The most entries one batched call (mmu_update, mmuext_op, multicall, set_trap_table)
/// may name. Larger counts are refused with EINVAL rather than trusted.
pub const MAX_BATCH: u64 = 1 << 20;
/// The most descriptors a guest GDT may hold: 14 frames, up to Xen's reserved entries.
pub const MAX_GDT_ENTRIES: u64 = 14 * 512;
/// The most bytes one console write may carry.
pub const MAX_CONSOLE_WRITE: u64 = 1 << 16;
/// Bit 31 of the count of `mmu_update` and `mmuext_op`: set in a continuation, where the
/// call resumes a preempted one and the guest's `done` count holds the work done so far
/// (Xen's `MMU_UPDATE_PREEMPTED`, asm-x86/hypercall.h: Xen-internal, but guests see it in
/// their registers after a preemption and must pass it back unchanged).
pub const MMU_UPDATE_PREEMPTED: u64 = 1 << 31;

/// A decoded hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    SetTrapTable { table: GuestVa },
    SetGdt { frames: GuestVa, entries: u64 },
    UpdateDescriptor { maddr: u64, descriptor: u64 },
    /// `preempted`: a continuation ([`MMU_UPDATE_PREEMPTED`] was set in the count).
    MmuUpdate { requests: GuestVa, count: u64, done: GuestVa, domid: u16, preempted: bool },
    StackSwitch { ss: u64, sp: u64 },
    SetCallbacks { event: u64, failsafe: u64, syscall: u64 },
    FpuTaskswitch { set: bool },
    /// `set_debugreg` / `get_debugreg`: the register number is a C `int`.
    SetDebugreg { reg: u32, value: u64 },
    GetDebugreg { reg: u32 },
    MemoryOp { cmd: u32, start_extent: u64, arg: GuestVa },
    Multicall { calls: GuestVa, count: u64 },
    UpdateVaMapping { va: u64, pte: u64, flags: u64 },
    SetTimerOp { deadline_ns: u64 },
    XenVersion { cmd: XenVersionOp, arg: GuestVa },
    ConsoleWrite { buffer: GuestVa, count: u64 },
    ConsoleRead { buffer: GuestVa, count: u64 },
    VmAssist { cmd: u32, kind: u32 },
    Iret,
    VcpuOp { cmd: VcpuOp, vcpu: u32, arg: GuestVa },
    SetSegmentBase { which: u32, base: u64 },
    /// `preempted`: as for `MmuUpdate`.
    MmuextOp { ops: GuestVa, count: u64, done: GuestVa, domid: u16, preempted: bool },
    SchedOp { cmd: SchedOp, arg: GuestVa },
    CallbackOp { cmd: CallbackOp, arg: GuestVa },
    EventChannelOp { cmd: u32, arg: GuestVa },
    /// `cmd`: a `PHYSDEVOP_*` number, any value (the handler answers `ENOSYS` for the rest).
    PhysdevOp { cmd: u32, arg: GuestVa },
    /// The legacy form: `arg` names a `struct physdev_op` holding the command.
    PhysdevOpCompat { arg: GuestVa },
    Domctl { arg: GuestVa },
    /// `grant_table_op`: `count` elements (or one struct) at `uop`; `opaque` is the
    /// continuation argument in the command's upper bits (`cache_flush` only).
    GrantTableOp { op: GnttabOp, opaque: u32, uop: GuestVa, count: u64 },
}

/// Why a hypercall was refused before any handler ran; each maps to one errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No such hypercall, or one this hypervisor does not implement (ENOSYS).
    Unknown(u64),
    /// A sub-operation this hypervisor does not implement (ENOSYS).
    UnknownOp { call: Hypercall, op: u64 },
    /// A count above the batch limit (EINVAL).
    TooMany { call: Hypercall, count: u64 },
    /// An argument no call of this kind takes (EINVAL).
    BadArgument { call: Hypercall, value: u64 },
}

impl DecodeError {
    pub fn errno(self) -> abi::errno::Errno {
        match self {
            DecodeError::Unknown(_) | DecodeError::UnknownOp { .. } => abi::errno::Errno::Enosys,
            DecodeError::TooMany { .. } | DecodeError::BadArgument { .. } => abi::errno::Errno::Einval,
        }
    }
}

fn bounded(call: Hypercall, count: u64, max: u64) -> Result<u64, DecodeError> {
    if count <= max { Ok(count) } else { Err(DecodeError::TooMany { call, count }) }
}

/// The count of `mmu_update` / `mmuext_op` (a C `unsigned int`) without its
/// [`MMU_UPDATE_PREEMPTED`] bit, bounded, and whether the bit was set.
fn batch_count(call: Hypercall, raw: u64) -> Result<(u64, bool), DecodeError> {
    let raw = raw & 0xffff_ffff;
    Ok((bounded(call, raw & !MMU_UPDATE_PREEMPTED, MAX_BATCH)?, raw & MMU_UPDATE_PREEMPTED != 0))
}

/// Decodes hypercall `number` with argument registers `a` (rdi, rsi, rdx, r10, r8).
pub fn decode(number: u64, a: [u64; 5]) -> Result<Request, DecodeError> {
    use Hypercall as H;
    let call = Hypercall::from_number(number).ok_or(DecodeError::Unknown(number))?;
    // Sub-op numbers are C ints: truncate like the C ABI does.
    let op32 = |v: u64| v as u32;
    let unknown_op = |op: u64| DecodeError::UnknownOp { call, op };
    Ok(match call {
        H::SetTrapTable => Request::SetTrapTable { table: GuestVa(a[0]) },
        H::MmuUpdate => {
            let (count, preempted) = batch_count(call, a[1])?;
            Request::MmuUpdate { requests: GuestVa(a[0]), count, done: GuestVa(a[2]), domid: a[3] as u16, preempted }
        }
        H::SetGdt => Request::SetGdt { frames: GuestVa(a[0]), entries: bounded(call, a[1] & 0xffff_ffff, MAX_GDT_ENTRIES)? },
        H::UpdateDescriptor => Request::UpdateDescriptor { maddr: a[0], descriptor: a[1] },
        H::StackSwitch => Request::StackSwitch { ss: a[0], sp: a[1] },
        H::SetCallbacks => Request::SetCallbacks { event: a[0], failsafe: a[1], syscall: a[2] },
        H::FpuTaskswitch => Request::FpuTaskswitch { set: op32(a[0]) != 0 },
        H::SetDebugreg => Request::SetDebugreg { reg: op32(a[0]), value: a[1] },
        H::GetDebugreg => Request::GetDebugreg { reg: op32(a[0]) },
        H::MemoryOp => Request::MemoryOp {
            cmd: (a[0] & MEMOP_CMD_MASK) as u32,
            start_extent: a[0] >> MEMOP_EXTENT_SHIFT,
            arg: GuestVa(a[1]),
        },
        H::Multicall => Request::Multicall { calls: GuestVa(a[0]), count: bounded(call, a[1] & 0xffff_ffff, MAX_BATCH)? },
        H::UpdateVaMapping => Request::UpdateVaMapping { va: a[0], pte: a[1], flags: a[2] },
        H::SetTimerOp => Request::SetTimerOp { deadline_ns: a[0] },
        H::XenVersion => Request::XenVersion {
            cmd: XenVersionOp::from_raw(op32(a[0])).ok_or(unknown_op(a[0]))?,
            arg: GuestVa(a[1]),
        },
        H::ConsoleIo => match ConsoleIoOp::from_raw(op32(a[0])) {
            Some(ConsoleIoOp::Write) => {
                Request::ConsoleWrite { count: bounded(call, a[1] & 0xffff_ffff, MAX_CONSOLE_WRITE)?, buffer: GuestVa(a[2]) }
            }
            Some(ConsoleIoOp::Read) => Request::ConsoleRead { count: a[1] & 0xffff_ffff, buffer: GuestVa(a[2]) },
            None => return Err(unknown_op(a[0])),
        },
        H::VmAssist => Request::VmAssist { cmd: op32(a[0]), kind: op32(a[1]) },
        H::Iret => Request::Iret,
        H::VcpuOp => Request::VcpuOp {
            cmd: VcpuOp::from_raw(op32(a[0])).ok_or(unknown_op(a[0]))?,
            vcpu: op32(a[1]),
            arg: GuestVa(a[2]),
        },
        H::SetSegmentBase => Request::SetSegmentBase { which: op32(a[0]), base: a[1] },
        H::MmuextOp => {
            let (count, preempted) = batch_count(call, a[1])?;
            Request::MmuextOp { ops: GuestVa(a[0]), count, done: GuestVa(a[2]), domid: a[3] as u16, preempted }
        }
        H::SchedOp => Request::SchedOp { cmd: SchedOp::from_raw(op32(a[0])).ok_or(unknown_op(a[0]))?, arg: GuestVa(a[1]) },
        H::CallbackOp => {
            Request::CallbackOp { cmd: CallbackOp::from_raw(op32(a[0])).ok_or(unknown_op(a[0]))?, arg: GuestVa(a[1]) }
        }
        H::EventChannelOp => Request::EventChannelOp { cmd: op32(a[0]), arg: GuestVa(a[1]) },
        H::PhysdevOp => Request::PhysdevOp { cmd: op32(a[0]), arg: GuestVa(a[1]) },
        H::PhysdevOpCompat => Request::PhysdevOpCompat { arg: GuestVa(a[0]) },
        H::Domctl => Request::Domctl { arg: GuestVa(a[0]) },
        H::GrantTableOp => {
            // Xen's order: a negative count, then continuation bits on a command that has
            // none (both EINVAL), then an unknown command (ENOSYS).
            let (raw, count) = (op32(a[0]), a[2] as u32);
            if count as i32 <= -1 {
                return Err(DecodeError::TooMany { call, count: count.into() });
            }
            let (op, opaque) = (GnttabOp::from_raw(raw & GNTTABOP_CMD_MASK), raw >> GNTTABOP_CONTINUATION_ARG_SHIFT);
            if opaque != 0 && op != Some(GnttabOp::CacheFlush) {
                return Err(DecodeError::BadArgument { call, value: a[0] });
            }
            Request::GrantTableOp { op: op.ok_or(unknown_op(a[0]))?, opaque, uop: GuestVa(a[1]), count: count.into() }
        }
        _ => return Err(DecodeError::Unknown(number)),
    })
}

impl Request {
    /// How many argument registers (rdi, rsi, rdx, r10, r8, in that order) the call takes,
    /// as Xen's prototype of it has them. A continuation rewrites only those, as Xen's
    /// `hypercall_create_continuation` does: the others are the guest's, and a guest may
    /// keep values in them across the call (Xen's hypercall page preserves every register
    /// but rax; XTF's compiled code relies on it).
    pub const fn arg_count(&self) -> usize {
        match self {
            Request::Iret => 0,
            Request::SetTrapTable { .. }
            | Request::FpuTaskswitch { .. }
            | Request::GetDebugreg { .. }
            | Request::SetTimerOp { .. }
            | Request::PhysdevOpCompat { .. }
            | Request::Domctl { .. } => 1,
            Request::SetGdt { .. }
            | Request::UpdateDescriptor { .. }
            | Request::StackSwitch { .. }
            | Request::SetDebugreg { .. }
            | Request::MemoryOp { .. }
            | Request::Multicall { .. }
            | Request::XenVersion { .. }
            | Request::VmAssist { .. }
            | Request::SetSegmentBase { .. }
            | Request::SchedOp { .. }
            | Request::CallbackOp { .. }
            | Request::EventChannelOp { .. }
            | Request::PhysdevOp { .. } => 2,
            Request::SetCallbacks { .. }
            | Request::UpdateVaMapping { .. }
            | Request::ConsoleWrite { .. }
            | Request::ConsoleRead { .. }
            | Request::VcpuOp { .. }
            | Request::GrantTableOp { .. } => 3,
            Request::MmuUpdate { .. } | Request::MmuextOp { .. } => 4,
        }
    }

    /// The hypercall number and argument registers (rdi, rsi, rdx, r10, r8) that
    /// [`decode`] turns into this request: `decode(n, a) == Ok(r)` for `(n, a) =
    /// r.encode()`. Bits that decoding ignores (the upper half of 32-bit arguments) are 0.
    pub fn encode(&self) -> (u64, [u64; 5]) {
        use Hypercall as H;
        let batch = |count: u64, preempted: bool| count | if preempted { MMU_UPDATE_PREEMPTED } else { 0 };
        let (call, args) = match *self {
            Request::SetTrapTable { table } => (H::SetTrapTable, [table.0, 0, 0, 0, 0]),
            Request::SetGdt { frames, entries } => (H::SetGdt, [frames.0, entries, 0, 0, 0]),
            Request::UpdateDescriptor { maddr, descriptor } => (H::UpdateDescriptor, [maddr, descriptor, 0, 0, 0]),
            Request::MmuUpdate { requests, count, done, domid, preempted } => {
                (H::MmuUpdate, [requests.0, batch(count, preempted), done.0, domid.into(), 0])
            }
            Request::StackSwitch { ss, sp } => (H::StackSwitch, [ss, sp, 0, 0, 0]),
            Request::SetCallbacks { event, failsafe, syscall } => (H::SetCallbacks, [event, failsafe, syscall, 0, 0]),
            Request::FpuTaskswitch { set } => (H::FpuTaskswitch, [set.into(), 0, 0, 0, 0]),
            Request::SetDebugreg { reg, value } => (H::SetDebugreg, [reg.into(), value, 0, 0, 0]),
            Request::GetDebugreg { reg } => (H::GetDebugreg, [reg.into(), 0, 0, 0, 0]),
            Request::MemoryOp { cmd, start_extent, arg } => {
                (H::MemoryOp, [u64::from(cmd) | (start_extent << MEMOP_EXTENT_SHIFT), arg.0, 0, 0, 0])
            }
            Request::Multicall { calls, count } => (H::Multicall, [calls.0, count, 0, 0, 0]),
            Request::UpdateVaMapping { va, pte, flags } => (H::UpdateVaMapping, [va, pte, flags, 0, 0]),
            Request::SetTimerOp { deadline_ns } => (H::SetTimerOp, [deadline_ns, 0, 0, 0, 0]),
            Request::XenVersion { cmd, arg } => (H::XenVersion, [cmd.raw().into(), arg.0, 0, 0, 0]),
            Request::ConsoleWrite { buffer, count } => (H::ConsoleIo, [ConsoleIoOp::Write.raw().into(), count, buffer.0, 0, 0]),
            Request::ConsoleRead { buffer, count } => (H::ConsoleIo, [ConsoleIoOp::Read.raw().into(), count, buffer.0, 0, 0]),
            Request::VmAssist { cmd, kind } => (H::VmAssist, [cmd.into(), kind.into(), 0, 0, 0]),
            Request::Iret => (H::Iret, [0; 5]),
            Request::VcpuOp { cmd, vcpu, arg } => (H::VcpuOp, [cmd.raw().into(), vcpu.into(), arg.0, 0, 0]),
            Request::SetSegmentBase { which, base } => (H::SetSegmentBase, [which.into(), base, 0, 0, 0]),
            Request::MmuextOp { ops, count, done, domid, preempted } => {
                (H::MmuextOp, [ops.0, batch(count, preempted), done.0, domid.into(), 0])
            }
            Request::SchedOp { cmd, arg } => (H::SchedOp, [cmd.raw().into(), arg.0, 0, 0, 0]),
            Request::CallbackOp { cmd, arg } => (H::CallbackOp, [cmd.raw().into(), arg.0, 0, 0, 0]),
            Request::EventChannelOp { cmd, arg } => (H::EventChannelOp, [cmd.into(), arg.0, 0, 0, 0]),
            Request::PhysdevOp { cmd, arg } => (H::PhysdevOp, [cmd.into(), arg.0, 0, 0, 0]),
            Request::PhysdevOpCompat { arg } => (H::PhysdevOpCompat, [arg.0, 0, 0, 0, 0]),
            Request::Domctl { arg } => (H::Domctl, [arg.0, 0, 0, 0, 0]),
            Request::GrantTableOp { op, opaque, uop, count } => {
                (H::GrantTableOp, [u64::from(op.raw() | opaque << GNTTABOP_CONTINUATION_ARG_SHIFT), uop.0, count, 0, 0])
            }
        };
        (call.number(), args)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn numbers_decode_to_their_requests() {
        assert_eq!(decode(23, [0; 5]), Ok(Request::Iret));
        assert_eq!(decode(3, [0xe02b, 0x1000, 0, 0, 0]), Ok(Request::StackSwitch { ss: 0xe02b, sp: 0x1000 }));
        assert_eq!(
            decode(18, [0, 5, 0x2000, 0, 0]),
            Ok(Request::ConsoleWrite { buffer: GuestVa(0x2000), count: 5 })
        );
        assert_eq!(
            decode(29, [2, 0x3000, 0, 0, 0]),
            Ok(Request::SchedOp { cmd: SchedOp::Shutdown, arg: GuestVa(0x3000) })
        );
    }

    #[test]
    fn unknown_numbers_and_ops_are_enosys() {
        for n in [11, 43, 64, 1 << 32, u64::MAX] {
            assert_eq!(decode(n, [0; 5]).unwrap_err().errno(), abi::errno::Errno::Enosys, "hypercall {n}");
        }
        // Known but not implemented (platform ops) are ENOSYS too, as are unknown grant-table
        // commands.
        assert_eq!(decode(7, [0; 5]), Err(DecodeError::Unknown(7)));
        assert_eq!(decode(20, [13, 0, 1, 0, 0]).unwrap_err().errno(), abi::errno::Errno::Enosys);
        assert_eq!(decode(29, [99, 0, 0, 0, 0]).unwrap_err().errno(), abi::errno::Errno::Enosys);
        assert_eq!(decode(18, [7, 0, 0, 0, 0]).unwrap_err().errno(), abi::errno::Errno::Enosys);
    }

    #[test]
    fn sub_ops_are_truncated_like_c_ints() {
        // The upper half of a sub-op register is ignored, as the C ABI's `int` would be.
        assert_eq!(
            decode(29, [0xdead_beef_0000_0000, 0, 0, 0, 0]),
            Ok(Request::SchedOp { cmd: SchedOp::Yield, arg: GuestVa(0) })
        );
    }

    #[test]
    fn huge_counts_are_refused() {
        let huge = MAX_BATCH + 1;
        assert!(matches!(decode(1, [0x1000, huge, 0, 0x7ff0, 0]), Err(DecodeError::TooMany { .. })));
        assert!(matches!(decode(26, [0x1000, huge, 0, 0x7ff0, 0]), Err(DecodeError::TooMany { .. })));
        assert!(matches!(decode(13, [0x1000, huge, 0, 0, 0]), Err(DecodeError::TooMany { .. })));
        assert!(matches!(decode(18, [0, MAX_CONSOLE_WRITE + 1, 0x1000, 0, 0]), Err(DecodeError::TooMany { .. })));
        assert!(matches!(decode(2, [0x1000, MAX_GDT_ENTRIES + 1, 0, 0, 0]), Err(DecodeError::TooMany { .. })));
        assert_eq!(decode(2, [0x1000, MAX_GDT_ENTRIES, 0, 0, 0]), Ok(Request::SetGdt { frames: GuestVa(0x1000), entries: MAX_GDT_ENTRIES }));
        // Counts are 32-bit: the upper half does not count.
        assert!(decode(1, [0x1000, (1 << 32) | 4, 0, 0x7ff0, 0]).is_ok());
        // The preempted bit is not part of the count, but the rest is still bounded.
        assert!(matches!(decode(1, [0x1000, MMU_UPDATE_PREEMPTED | huge, 0, 0x7ff0, 0]), Err(DecodeError::TooMany { .. })));
        assert!(matches!(decode(13, [0x1000, MMU_UPDATE_PREEMPTED | 4, 0, 0, 0]), Err(DecodeError::TooMany { .. })));
    }

    #[test]
    fn the_preempted_bit_of_batch_counts_is_decoded_apart() {
        let fresh = Request::MmuUpdate { requests: GuestVa(0x1000), count: 4, done: GuestVa(0x2000), domid: 0x7ff0, preempted: false };
        assert_eq!(decode(1, [0x1000, 4, 0x2000, 0x7ff0, 0]), Ok(fresh));
        let resumed = Request::MmuUpdate { requests: GuestVa(0x1000), count: 4, done: GuestVa(0x2000), domid: 0x7ff0, preempted: true };
        assert_eq!(decode(1, [0x1000, MMU_UPDATE_PREEMPTED | 4, 0x2000, 0x7ff0, 0]), Ok(resumed));
        assert_eq!(
            decode(26, [0x3000, (1 << 32) | MMU_UPDATE_PREEMPTED | MAX_BATCH, 0, 0x7ff0, 0]),
            Ok(Request::MmuextOp { ops: GuestVa(0x3000), count: MAX_BATCH, done: GuestVa(0), domid: 0x7ff0, preempted: true })
        );
    }

    /// One request of every kind, with arguments that use every decoded bit.
    pub(crate) fn every_request() -> [Request; 29] {
        let va = GuestVa(0xffff_8000_dead_b000);
        [
            Request::SetTrapTable { table: va },
            Request::SetGdt { frames: va, entries: MAX_GDT_ENTRIES },
            Request::UpdateDescriptor { maddr: 0x1234_5678, descriptor: u64::MAX },
            Request::MmuUpdate { requests: va, count: MAX_BATCH, done: GuestVa(8), domid: 0x7ff0, preempted: true },
            Request::StackSwitch { ss: 0xe02b, sp: u64::MAX },
            Request::SetCallbacks { event: 1, failsafe: 2, syscall: 3 },
            Request::FpuTaskswitch { set: true },
            Request::SetDebugreg { reg: u32::MAX, value: u64::MAX },
            Request::GetDebugreg { reg: 7 },
            Request::MemoryOp { cmd: 63, start_extent: u64::MAX >> MEMOP_EXTENT_SHIFT, arg: va },
            Request::Multicall { calls: va, count: MAX_BATCH },
            Request::UpdateVaMapping { va: 1, pte: 2, flags: 3 },
            Request::SetTimerOp { deadline_ns: u64::MAX },
            Request::XenVersion { cmd: XenVersionOp::GetFeatures, arg: va },
            Request::ConsoleWrite { buffer: va, count: MAX_CONSOLE_WRITE },
            Request::ConsoleRead { buffer: va, count: 0xffff_ffff },
            Request::VmAssist { cmd: u32::MAX, kind: 7 },
            Request::Iret,
            Request::VcpuOp { cmd: VcpuOp::IsUp, vcpu: u32::MAX, arg: va },
            Request::SetSegmentBase { which: 2, base: u64::MAX },
            Request::MmuextOp { ops: va, count: 0, done: GuestVa(0), domid: 0, preempted: false },
            Request::SchedOp { cmd: SchedOp::Poll, arg: va },
            Request::CallbackOp { cmd: CallbackOp::Register, arg: va },
            Request::EventChannelOp { cmd: u32::MAX, arg: va },
            Request::Domctl { arg: va },
            Request::MmuUpdate { requests: GuestVa(0), count: 0, done: GuestVa(0), domid: 0, preempted: false },
            Request::PhysdevOp { cmd: u32::MAX, arg: va },
            Request::PhysdevOpCompat { arg: va },
            Request::GrantTableOp { op: GnttabOp::CacheFlush, opaque: (1 << 20) - 1, uop: va, count: 0x7fff_ffff },
        ]
    }

    #[test]
    fn grant_table_ops_decode_as_xen_checks_them() {
        let map = Request::GrantTableOp { op: GnttabOp::MapGrantRef, opaque: 0, uop: GuestVa(0x1000), count: 3 };
        assert_eq!(decode(20, [0, 0x1000, 3, 0, 0]), Ok(map));
        // The count is an unsigned int the hypervisor refuses when negative as an int.
        assert_eq!(decode(20, [0, 0x1000, 0x8000_0000, 0, 0]).unwrap_err().errno(), abi::errno::Errno::Einval);
        assert!(decode(20, [0, 0x1000, (1 << 32) | 3, 0, 0]).is_ok());
        // Continuation bits only on cache_flush (EINVAL elsewhere, before ENOSYS).
        assert_eq!(decode(20, [1 << 12, 0x1000, 1, 0, 0]).unwrap_err().errno(), abi::errno::Errno::Einval);
        assert_eq!(decode(20, [(1 << 12) | 13, 0x1000, 1, 0, 0]).unwrap_err().errno(), abi::errno::Errno::Einval);
        assert_eq!(
            decode(20, [(5 << 12) | 12, 0x1000, 1, 0, 0]),
            Ok(Request::GrantTableOp { op: GnttabOp::CacheFlush, opaque: 5, uop: GuestVa(0x1000), count: 1 })
        );
    }

    #[test]
    fn encoding_is_the_inverse_of_decoding() {
        for request in every_request() {
            let (number, args) = request.encode();
            assert_eq!(decode(number, args), Ok(request), "{request:?} encodes as {number} {args:x?}");
        }
    }

    #[test]
    fn only_the_counted_arguments_matter() {
        // Registers past a call's arguments decode to the same request, and encode as 0:
        // a continuation that rewrites only the counted ones loses nothing.
        for request in every_request() {
            let (number, mut args) = request.encode();
            let n = request.arg_count();
            assert!(args[n..].iter().all(|a| *a == 0), "{request:?} encodes {args:x?} past {n} arguments");
            args[n..].fill(0xdead_beef_dead_beef);
            assert_eq!(decode(number, args), Ok(request), "{request:?} with junk past {n} arguments");
        }
    }

    #[test]
    fn decoded_registers_encode_to_registers_that_decode_the_same() {
        // Registers with bits decoding ignores (upper halves of 32-bit arguments) come
        // back without them, and decode to the same request.
        let raw = [(18, [0xffff_0000_0000_0000, 5, 0x2000, 9, 9]), (1, [0x1000, (7 << 32) | 4, 0, 0xffff_7ff0, 0]), (29, [u64::MAX << 32, 1, 2, 3, 4])];
        for (number, args) in raw {
            let request = decode(number, args).unwrap();
            let (again, encoded) = request.encode();
            assert_eq!((again, decode(again, encoded)), (number, Ok(request)));
        }
    }

    #[test]
    fn memory_op_splits_command_and_start_extent() {
        let raw = (5 << MEMOP_EXTENT_SHIFT) | 6;
        assert_eq!(decode(12, [raw, 0x4000, 0, 0, 0]), Ok(Request::MemoryOp { cmd: 6, start_extent: 5, arg: GuestVa(0x4000) }));
    }

    #[test]
    fn guest_array_offsets_do_not_overflow() {
        assert_eq!(GuestVa(0x1000).offset::<u64>(2), Some(GuestVa(0x1010)));
        assert_eq!(GuestVa(u64::MAX - 4).offset::<u64>(1), None);
        assert_eq!(GuestVa(0).offset::<[u8; 16]>(u64::MAX), None);
    }
}

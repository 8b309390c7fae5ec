//! Continuations: how a hypercall that has done a bounded amount of work, and has more to
//! do, stops and is resumed later, as Xen's `hypercall_create_continuation` does. Pure and
//! host-tested; the image's dispatcher (`pv::hypercall`) carries the result out.
//!
//! A handler that may run long checks, between units of work, whether it should stop (the
//! image's `preempt::should_stop`, always after at least one unit so that every call makes
//! progress). To stop it returns [`Stop::Continue`] with the request that does the rest,
//! made by [`Request::continuation`] from the work done so far. The dispatcher then
//! rewrites the guest's argument registers with that request's encoding
//! ([`Request::encode`]; only the [`Request::arg_count`] registers the call takes) and
//! moves rip back over the 2-byte `syscall`, so that the guest issues the rest when it next
//! runs; in between, the trap returns normally: interrupts, events, cross-CPU calls and
//! scheduling happen as after any hypercall. A call inside a multicall instead has its
//! entry's arguments rewritten in guest memory ([`resume_entry`]), and the multicall
//! itself continues from that entry. The guest never sees a continuation as a result.
//!
//! Xen's conventions, so that unmodified guests work: `mmu_update` and `mmuext_op`
//! continue with the list advanced, the count reduced and [`MMU_UPDATE_PREEMPTED`] set
//! in it, and their `done` count accumulated through the guest's `pdone` (a continuation
//! reads it back); `memory_op` continues through the start-extent bits of its command;
//! a console write with its buffer advanced; a multicall from the entry it stopped at.
//!
//! The contract for handlers: stop only where the state is consistent — every unit
//! before the stop is wholly done and visible (flushed, counted, written back to the
//! guest), none after it is begun — and hold no lock across the stop (the guest may never
//! come back). A handler that stopped before changing anything returns [`Stop::Retry`]
//! (the call is re-issued as it stands): that is what a page-table validation that can
//! stop part-way (`pvmm`'s restart) maps to, in one line, wherever it is called.
//!
//! [`MMU_UPDATE_PREEMPTED`]: crate::hypercall::MMU_UPDATE_PREEMPTED

use abi::errno::Errno;
use abi::hypercall::{MulticallEntry, MEMOP_EXTENT_SHIFT};
use abi::mmu::{MmuUpdate, MmuextOp};

use crate::hypercall::{GuestVa, Request};

/// Why a handler returned without a value for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The call failed: the guest gets this error number.
    Failed(Errno),
    /// The call stopped part-way, with consistent state: the guest re-issues it as this
    /// request.
    Continue(Request),
    /// The call stopped before changing anything: the guest re-issues it unchanged.
    Retry,
}

impl From<Errno> for Stop {
    fn from(errno: Errno) -> Self {
        Stop::Failed(errno)
    }
}

/// What a handler that may stop part-way returns: a value for rax, or why not.
pub type Outcome = Result<u64, Stop>;

impl Request {
    /// The request that resumes this call once `progress` more units of its work are done:
    /// entries for `mmu_update`, `mmuext_op` and `multicall`, bytes for a console write,
    /// extents (from its start extent) for `memory_op`. `progress` 0 gives the request
    /// unchanged. `None` when nothing would be left (`progress` reaches the count), when
    /// the call has no units (any other call, with `progress` above 0), or when the
    /// resumed request would not fit its registers.
    pub fn continuation(self, progress: u64) -> Option<Request> {
        if progress == 0 {
            return Some(self);
        }
        let left = |count: u64| count.checked_sub(progress).filter(|&left| left > 0);
        Some(match self {
            Request::MmuUpdate { requests, count, done, domid, .. } => Request::MmuUpdate {
                requests: requests.offset::<MmuUpdate>(progress)?,
                count: left(count)?,
                done,
                domid,
                preempted: true,
            },
            Request::MmuextOp { ops, count, done, domid, .. } => Request::MmuextOp {
                ops: ops.offset::<MmuextOp>(progress)?,
                count: left(count)?,
                done,
                domid,
                preempted: true,
            },
            Request::Multicall { calls, count } => {
                Request::Multicall { calls: calls.offset::<MulticallEntry>(progress)?, count: left(count)? }
            }
            Request::ConsoleWrite { buffer, count } => {
                Request::ConsoleWrite { buffer: buffer.offset::<u8>(progress)?, count: left(count)? }
            }
            Request::GrantTableOp { op, opaque, uop, count } => Request::GrantTableOp {
                op,
                opaque,
                uop: GuestVa(uop.0.checked_add(op.element_size()?.checked_mul(progress)?)?),
                count: left(count)?,
            },
            Request::MemoryOp { cmd, start_extent, arg } => Request::MemoryOp {
                cmd,
                start_extent: start_extent.checked_add(progress).filter(|&s| s <= u64::MAX >> MEMOP_EXTENT_SHIFT)?,
                arg,
            },
            _ => return None,
        })
    }
}

/// Rewrites a multicall entry so that issuing it again runs `rest` (the continuation of
/// the call it held, which must be the same hypercall); its result field is left alone.
pub fn resume_entry(entry: &mut MulticallEntry, rest: &Request) {
    let (number, args) = rest.encode();
    entry.op = number;
    entry.args[..args.len()].copy_from_slice(&args);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::{decode, MAX_BATCH, MMU_UPDATE_PREEMPTED};

    fn mmu_update(count: u64) -> Request {
        Request::MmuUpdate { requests: GuestVa(0x10_0000), count, done: GuestVa(0x2000), domid: 0x7ff0, preempted: false }
    }

    #[test]
    fn mmu_batches_continue_advanced_and_marked_preempted() {
        let rest = mmu_update(100).continuation(40).unwrap();
        assert_eq!(
            rest,
            Request::MmuUpdate { requests: GuestVa(0x10_0000 + 40 * 16), count: 60, done: GuestVa(0x2000), domid: 0x7ff0, preempted: true }
        );
        // In the registers: the pointer advanced, the count reduced with bit 31 set, the
        // same done pointer and domain.
        assert_eq!(rest.encode(), (1, [0x10_0000 + 640, MMU_UPDATE_PREEMPTED | 60, 0x2000, 0x7ff0, 0]));
        // A continuation of a continuation goes on from where that one was.
        assert_eq!(rest.continuation(10).unwrap().encode().1[..2], [0x10_0000 + 50 * 16, MMU_UPDATE_PREEMPTED | 50]);
        let ops = Request::MmuextOp { ops: GuestVa(0x4000), count: MAX_BATCH, done: GuestVa(0), domid: 0x7ff0, preempted: false };
        assert_eq!(
            ops.continuation(3),
            Some(Request::MmuextOp { ops: GuestVa(0x4000 + 3 * 24), count: MAX_BATCH - 3, done: GuestVa(0), domid: 0x7ff0, preempted: true })
        );
    }

    #[test]
    fn nothing_left_is_no_continuation() {
        assert_eq!(mmu_update(5).continuation(5), None);
        assert_eq!(mmu_update(5).continuation(6), None);
        assert_eq!(Request::Multicall { calls: GuestVa(0x1000), count: 1 }.continuation(1), None);
        // Progress 0 (stopped before any unit) re-issues the call unchanged, even one that
        // has no units.
        assert_eq!(mmu_update(5).continuation(0), Some(mmu_update(5)));
        assert_eq!(Request::Iret.continuation(0), Some(Request::Iret));
        assert_eq!(Request::SetTrapTable { table: GuestVa(0x1000) }.continuation(1), None);
    }

    #[test]
    fn addresses_that_would_wrap_are_no_continuation() {
        let near_top = Request::ConsoleWrite { buffer: GuestVa(u64::MAX - 2), count: 10 };
        assert_eq!(near_top.continuation(3), None);
        assert_eq!(near_top.continuation(2), Some(Request::ConsoleWrite { buffer: GuestVa(u64::MAX), count: 8 }));
        let top = Request::MemoryOp { cmd: 1, start_extent: u64::MAX >> MEMOP_EXTENT_SHIFT, arg: GuestVa(0) };
        assert_eq!(top.continuation(1), None);
    }

    #[test]
    fn multicalls_resume_at_the_entry_they_stopped_at() {
        let calls = Request::Multicall { calls: GuestVa(0x8000), count: 64 };
        assert_eq!(calls.continuation(17).unwrap().encode(), (13, [0x8000 + 17 * 64, 47, 0, 0, 0]));
    }

    #[test]
    fn memory_op_continues_through_its_start_extent() {
        let decrease = decode(12, [1, 0x5000, 0, 0, 0]).unwrap();
        let rest = decrease.continuation(300).unwrap();
        assert_eq!(rest.encode(), (12, [(300 << MEMOP_EXTENT_SHIFT) | 1, 0x5000, 0, 0, 0]));
        assert_eq!(rest.continuation(200).unwrap(), Request::MemoryOp { cmd: 1, start_extent: 500, arg: GuestVa(0x5000) });
    }

    #[test]
    fn grant_table_arrays_continue_advanced_by_their_element_size() {
        let copies = decode(20, [5, 0x9000, 10, 0, 0]).unwrap();
        assert_eq!(copies.continuation(4).unwrap().encode(), (20, [5, 0x9000 + 4 * 40, 6, 0, 0]));
        // A single-struct command has no units to continue through.
        let setup = decode(20, [2, 0x9000, 1, 0, 0]).unwrap();
        assert_eq!(setup.continuation(1), None);
        assert_eq!(setup.continuation(0), Some(setup));
    }

    #[test]
    fn console_writes_continue_with_the_buffer_advanced() {
        let write = decode(18, [0, 65536, 0x7000, 0, 0]).unwrap();
        assert_eq!(write.continuation(4096).unwrap().encode(), (18, [0, 61440, 0x7000 + 4096, 0, 0]));
    }

    #[test]
    fn a_preempted_entry_is_rewritten_to_its_continuation() {
        let (number, args) = mmu_update(100).encode();
        let mut entry = MulticallEntry { op: number, result: 7, args: [args[0], args[1], args[2], args[3], args[4], 0xdead] };
        let rest = mmu_update(100).continuation(99).unwrap();
        resume_entry(&mut entry, &rest);
        assert_eq!(entry.result, 7);
        assert_eq!(entry.args[5], 0xdead, "the sixth argument is no hypercall's here");
        let args = [entry.args[0], entry.args[1], entry.args[2], entry.args[3], entry.args[4]];
        assert_eq!(decode(entry.op, args), Ok(rest));
    }

    #[test]
    fn every_continuation_decodes_back() {
        for request in crate::hypercall::tests::every_request() {
            for progress in [0, 1, 7] {
                if let Some(rest) = request.continuation(progress) {
                    let (number, args) = rest.encode();
                    assert_eq!(decode(number, args), Ok(rest), "{request:?} after {progress}");
                }
            }
        }
    }
}

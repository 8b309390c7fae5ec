//! Writable page tables (`VMASST_TYPE_writable_pagetables`): a guest kernel maps its page
//! tables read-only, and when it writes one of their entries directly (Linux clears and
//! ages its L1 entries with `xchg` and `lock btr`), the write faults; this emulates it, as
//! Xen's `ptwr_do_page_fault` does, and the guest resumes after the instruction.
//!
//! Called by `pv::traps` on a guest #PF before the fault is bounced. The fault must be a
//! write to a present page (not a reserved-bit or instruction-fetch fault) from guest
//! kernel mode of a domain that enabled the assist. The instruction at rip is fetched and
//! decoded (`ptwr` crate: `mov`, `xchg`, `cmpxchg`, `cmpxchg8b`, `add`/`or`/`and`/`sub`/
//! `xor`, `bts`/`btr`/`btc`), its write must be a naturally aligned access of at most 8
//! bytes in the faulting page, and the page must be one of the domain's page tables in
//! use, mapped read-only where it faulted ([`mmu::emulated_write`], under the page-table
//! lock). The entry's new value is validated exactly as `mmu_update` validates one (any
//! level: Xen emulates L1 writes only and faults the others; here a write to an L2-L4
//! entry gets the same checks and is carried out), then stored (a read-modify-write only
//! over the value it read, or the instruction runs again: a dirty bit a processor sets
//! meanwhile is never lost), and only then are the
//! guest's registers, flags and rip updated; a guest single-stepping gets its #DB after
//! the instruction. Anything else — another kind of fault, user mode, an instruction or
//! operand not emulated, an entry the validation refuses, bytes that changed under us —
//! leaves the guest's state as it was and the caller bounces the original #PF.
//!
//! This must never write anything but the one entry the instruction names in the frame
//! the fault was on, never trust the decoded bytes beyond that, and never commit a
//! register before the entry is stored.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::hypercall::VmAssistType;
use ptwr::{DecodeError, Operation, State, ARITHMETIC_FLAGS, MAX_LEN};
use x86_64::registers::model_specific::{FsBase, KernelGsBase};

use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::Vcpu;
use crate::pv::mmu::{self, TableWrite};

/// Page-fault error code bits.
const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
const PF_RESERVED: u64 = 1 << 3;
const PF_FETCH: u64 = 1 << 4;

const RFLAGS_TF: u64 = 1 << 8;
const VECTOR_DEBUG: u8 = 1;

/// Handles the guest #PF at `fault_address` if it is an emulated page-table write: true
/// when it was (the instruction completed, or is to run again), false when the caller is to
/// bounce the fault.
pub fn page_fault(vcpu: &Vcpu, frame: &mut TrapFrame, fault_address: u64) -> bool {
    if frame.error_code & (PF_PRESENT | PF_WRITE | PF_RESERVED | PF_FETCH) != PF_PRESENT | PF_WRITE {
        return false;
    }
    if !vcpu.domain.vm_assist(VmAssistType::WritablePagetables) {
        return false;
    }
    let (in_kernel, l4) = {
        let ctx = vcpu.ctx.lock();
        (ctx.in_kernel, ctx.active_l4())
    };
    let Some(l4) = l4.filter(|_| in_kernel) else { return false };
    let outcome = emulate(vcpu, frame, l4, fault_address);
    let counter = match outcome {
        TableWrite::Done => &EMULATED,
        TableWrite::Again => &AGAIN,
        TableWrite::Refused => &REFUSED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    !matches!(outcome, TableWrite::Refused)
}

/// Emulated writes, writes whose validation stopped half-way (the instruction runs again),
/// and faulting writes to read-only pages that were not emulated, since boot.
static EMULATED: AtomicU64 = AtomicU64::new(0);
static AGAIN: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Prints `summary: ptwr.emulated=<n>`, `ptwr.again=<n>` and `ptwr.refused=<n>` (end of
/// the run).
pub fn report() {
    log::info!("summary: ptwr.emulated={}", EMULATED.load(Ordering::Relaxed));
    log::info!("summary: ptwr.again={}", AGAIN.load(Ordering::Relaxed));
    log::info!("summary: ptwr.refused={}", REFUSED.load(Ordering::Relaxed));
}

fn emulate(vcpu: &Vcpu, frame: &mut TrapFrame, l4: mm::addr::Mfn, fault_address: u64) -> TableWrite {
    let mut bytes = [0u8; MAX_LEN];
    let fetched = fetch(frame.rip, &mut bytes);
    let instruction = match ptwr::decode(&bytes[..fetched]) {
        Ok(instruction) => instruction,
        Err(DecodeError::Truncated | DecodeError::Unsupported) => return TableWrite::Refused,
    };
    let mut state = state_of(frame);
    // FS's base is live in its MSR; the guest's GS base is in KERNEL_GS_BASE while the
    // hypervisor runs (the entry swapped it out).
    let access = instruction.access(&state, frame.rip, FsBase::read().as_u64(), KernelGsBase::read().as_u64());
    let Ok(spot) = ptwr::entry_of(access, fault_address) else { return TableWrite::Refused };
    // Only a `mov` of a whole entry does not depend on the entry's value.
    let read_modify_write = !(matches!(instruction.operation, Operation::Mov(_)) && spot.size == 8);
    let outcome = mmu::emulated_write(&vcpu.domain, l4, fault_address, spot.index, read_modify_write, |entry| {
        ptwr::emulate_on_entry(&instruction, &mut state, spot, entry)
    });
    if let TableWrite::Done = outcome {
        commit(frame, &state);
        frame.rip = frame.rip.wrapping_add(u64::from(instruction.len));
        if frame.rflags & RFLAGS_TF != 0 {
            crate::pv::traps::bounce(vcpu, frame, VECTOR_DEBUG, None);
        }
    }
    outcome
}

/// Reads up to [`MAX_LEN`] instruction bytes at `rip` (fewer where the next page is not
/// readable); returns how many.
fn fetch(rip: u64, bytes: &mut [u8; MAX_LEN]) -> usize {
    let in_page = (0x1000 - (rip & 0xfff)).min(MAX_LEN as u64) as usize;
    if uaccess::read(rip, &mut bytes[..in_page]).is_err() {
        return 0;
    }
    if in_page < MAX_LEN && uaccess::read(rip.wrapping_add(in_page as u64), &mut bytes[in_page..]).is_ok() {
        return MAX_LEN;
    }
    in_page
}

/// The general registers by encoding number, and RFLAGS.
fn state_of(frame: &TrapFrame) -> State {
    State {
        gpr: [
            frame.rax, frame.rcx, frame.rdx, frame.rbx, frame.rsp, frame.rbp, frame.rsi, frame.rdi,
            frame.r8, frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15,
        ],
        rflags: frame.rflags,
    }
}

/// Writes the emulated registers and arithmetic flags back; nothing else of RFLAGS.
fn commit(frame: &mut TrapFrame, state: &State) {
    let [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] = state.gpr;
    (frame.rax, frame.rcx, frame.rdx, frame.rbx, frame.rsp, frame.rbp, frame.rsi, frame.rdi) = (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi);
    (frame.r8, frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15) = (r8, r9, r10, r11, r12, r13, r14, r15);
    frame.rflags = (frame.rflags & !ARITHMETIC_FLAGS) | (state.rflags & ARITHMETIC_FLAGS);
}

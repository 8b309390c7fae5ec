//! Xen security advisories' proofs of concept, as XTF makes them, against this hypervisor:
//! each one's attack must be refused or harmless here as it is on a fixed Xen, by the
//! answer Xen gives (so that `make test` catches what `make xtf` found, without XTF).
//!
//! - XSA-122: `xen_version`'s string commands write exactly their structure, NUL-padded
//!   (no rubble after the text, nothing past the end; XTF's PoC died when
//!   `XENVER_compile_info` wrote 256 bytes into its 144-byte structure on its stack).
//! - XSA-213: an `iret` entry in a multicall returns from the guest's frame and ends the
//!   batch there: no later entry runs (after an iret to user mode, it would run in user
//!   mode). The frame here returns to kernel mode, right after the `syscall`.
//!
//! Called once by `main`; this module must never leave the guest's stacks or registers
//! other than it found them.

use core::arch::asm;

use guest_rt::abi::arch_x86::{IretContext, FLAT_KERNEL_SS64};
use guest_rt::abi::hypercall::{Hypercall, MulticallEntry, XenVersionOp};
use guest_rt::hypercall::hypercall2;
use guest_rt::shared_info;

use crate::verdict::{Outcome, Tally};

/// What fills a buffer before the hypervisor writes it.
const FILL: u8 = 0xA5;
/// How far past a structure a write is looked for.
const BEYOND: usize = 64;
/// The kernel's 64-bit code selector as a kernel iret frame carries it (RPL 0).
const KERNEL_CS_RPL0: u64 = 0xe030;
/// rax of the iret frame: what the multicall must return.
const IRET_RAX: u64 = 0xdead;
/// What the entry after the iret holds as its result while it has not run.
const NOT_RUN: u64 = 0x5a5a_5a5a;

/// Runs the advisories' attacks.
pub fn run(tally: &mut Tally) {
    xsa_122(tally);
    xsa_213(tally);
}

/// XSA-122: every string command's buffer, filled, then checked for exactly its size.
fn xsa_122(tally: &mut Tally) {
    let commands = [(XenVersionOp::Extraversion, 16), (XenVersionOp::CompileInfo, 144), (XenVersionOp::Changeset, 64), (XenVersionOp::Capabilities, 1024)];
    for (cmd, size) in commands {
        let mut buffer = [FILL; 1024 + BEYOND];
        // SAFETY: the buffer is ours and larger than the structure by BEYOND bytes.
        let ret = unsafe { hypercall2(Hypercall::XenVersion, u64::from(cmd.raw()), buffer.as_mut_ptr() as u64) };
        let outcome = if ret < 0 {
            Outcome::NotPrepared { step: "xen_version", errno: ret.unsigned_abs() }
        } else {
            let (inside, beyond) = buffer.split_at(size);
            // Each string field ends in NULs to its end (compile info: four fields).
            let fields: &[usize] = if cmd == XenVersionOp::CompileInfo { &[64, 16, 32, 32] } else { &[size] };
            let mut at = 0;
            let padded = fields.iter().all(|len| {
                let field = &inside[at..at + len];
                at += len;
                field.iter().position(|b| *b == 0).is_some_and(|nul| field[nul..].iter().all(|b| *b == 0))
            });
            if padded && beyond[..BEYOND].iter().all(|b| *b == FILL) {
                Outcome::Contained
            } else {
                Outcome::Succeeded
            }
        };
        tally.record(
            format_args!("xsa-122: xen_version {cmd:?} writes its {size} bytes NUL-padded and nothing past them"),
            outcome,
        );
    }
}

/// A stack for the iret frame of [`xsa_213`] (and anything pushed below it, should the
/// multicall come back with rsp still there).
#[repr(C, align(16))]
struct FrameStack([u8; 4096]);
static mut FRAME_STACK: FrameStack = FrameStack([0; 4096]);

/// XSA-213: a multicall of `iret` (back to kernel mode, right after the `syscall`) and
/// `xen_version`; the second must not run, and the multicall returns the frame's rax.
fn xsa_213(tally: &mut Tally) {
    let mut entries = [
        MulticallEntry { op: Hypercall::Iret.number(), result: 0, args: [0; 6] },
        MulticallEntry { op: Hypercall::XenVersion.number(), result: NOT_RUN, args: [u64::from(XenVersionOp::Version.raw()), 0, 0, 0, 0, 0] },
    ];
    // The frame keeps the virtual interrupt flag as it is (events masked or not).
    let masked = shared_info::shared_info().is_some_and(|page| {
        // SAFETY: shared info is mapped; the mask byte is read once.
        unsafe { core::ptr::addr_of!((*page.as_ptr()).vcpu_info[0].evtchn_upcall_mask).read_volatile() != 0 }
    });
    let frame = IretContext {
        rax: IRET_RAX,
        r11: 0,
        rcx: 0,
        flags: 0,
        rip: 0,
        cs: KERNEL_CS_RPL0,
        rflags: if masked { 0x2 } else { 0x202 },
        rsp: 0,
        ss: u64::from(FLAT_KERNEL_SS64),
    };
    let stack = &raw mut FRAME_STACK;
    // SAFETY: one vCPU runs this, once; the frame sits at the top of its own stack.
    let at = unsafe {
        let at = stack.cast::<u8>().add(size_of::<FrameStack>() - size_of::<IretContext>()).cast::<IretContext>();
        at.write(frame);
        at
    };
    let ret: u64;
    // SAFETY: the frame's rip and rsp are filled in here: the iret resumes at the label
    // with this rsp; should the multicall return instead, rsp is put back from the frame
    // the same way. The hypervisor changes only rax, rcx, r11 and the argument registers.
    unsafe {
        asm!(
            "mov [r12 + {rsp}], rsp",
            "lea rax, [rip + 2f]",
            "mov [r12 + {rip}], rax",
            "mov rsp, r12",
            "mov eax, {multicall}",
            "syscall",
            "2:",
            "mov rsp, [r12 + {rsp}]",
            rsp = const core::mem::offset_of!(IretContext, rsp),
            rip = const core::mem::offset_of!(IretContext, rip),
            multicall = const Hypercall::Multicall as u32,
            in("r12") at,
            inout("rdi") entries.as_mut_ptr() => _,
            inout("rsi") entries.len() => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
            lateout("rdx") _,
            lateout("r10") _,
            lateout("r8") _,
        );
    }
    let [iret, version] = entries;
    let outcome = if ret == IRET_RAX && iret.result == IRET_RAX && version.result == NOT_RUN { Outcome::Contained } else { Outcome::Succeeded };
    tally.record(
        format_args!(
            "xsa-213: a multicall's iret ends it (returned {ret:#x}, iret result {:#x}, the next entry's {:#x})",
            iret.result, version.result
        ),
        outcome,
    );
}

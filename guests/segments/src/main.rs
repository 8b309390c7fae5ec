//! guest-segments: a PV guest that checks the segment and privilege parts of Xen's x86-64
//! PV ABI against what Xen does (issue 16).
//!
//! In order:
//! 1. [`ldt`]: `MMUEXT_SET_LDT` — refusals (a frame mapped writable, unaligned, too many
//!    entries, the hypervisor's range, nothing mapped, a call gate in the frame), then an
//!    LDT of three entries whose ring-0 descriptors come back with DPL 3, data selectors and
//!    a 64-bit code selector (an `iret` into it, a far return out) from it, a selector past
//!    its count faulting in the guest (a data load, and a `rex64 lcall` through a pointer
//!    laid out for the vendor, as XTF's xsa-298), `update_descriptor` on it, the frame refused writable while in use; the
//!    LDT kept across yields (other domains run in between when there are several), and
//!    released;
//! 2. [`softint`]: `int n` through trap-table entries of DPL 0 to 3 from guest kernel and
//!    user mode: delivered with rip after the instruction (prefixes included) where the DPL
//!    allows, #GP with error code n*8+2 at it otherwise (QEMU's TCG reports 2n: the
//!    hypervisor must decode the instruction);
//! 3. [`memops`]: stores at a non-canonical address from user mode, #SS(0) through rsp or
//!    rbp and #GP(0) through rax (XTF's memop-seg);
//! 4. [`iopl`]: `PHYSDEVOP_set_iopl` (and `physdev_op_compat`) at IOPL 0, 1 and 3 with `cli`
//!    and `outb` from both modes (as XTF's pv-iopl), port reads (all ones), `rep insb` and
//!    `rep outsb` (a fault in the middle), the I/O bitmap, `vm_assist` (valid types,
//!    refusals) and `VMASST_TYPE_architectural_iopl` (IOPL from `iret`, shown in bounce
//!    frames, the kernel at privilege 0).
//!
//! Console: "segments: ..." lines, then "segments: ok" and power-off, or "segments: FAILED
//! <what>" and a crash. The QEMU case runs two of it on one CPU, one with `ds=0x17` on its
//! command line (the selector it keeps in ds over yields). It needs about 10 free frames
//! and must never change a mapping the program itself uses.

#![no_std]
#![no_main]

mod iopl;
mod ldt;
mod memops;
mod probe;
mod softint;
mod user_tables;

use core::fmt;

use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::{shutdown, HypercallError};
use guest_rt::{println, shared_info, StartInfo};

use guest_rt::frames::{Frame, FreeFrames};

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    if let Err(failure) = run(start) {
        println!("segments: FAILED {failure}");
        shutdown(ShutdownReason::Crash);
    }
    println!("segments: ok");
}

fn run(start: &StartInfo) -> Result<(), Failure> {
    shared_info::map_shared_info().map_err(|e| Failure::Call("mapping shared info", e))?;
    let mut free = FreeFrames::new(start).ok_or(Failure::NoFrame)?;
    let l4 = take(&mut free)?;
    // SAFETY: a free frame nothing else uses; it becomes the user L4 for good.
    unsafe { user_tables::install(l4, start.pt_base)? };
    probe::install().map_err(|e| Failure::Call("installing the trap table", e))?;
    ldt::check(&mut free)?;
    softint::check()?;
    memops::check()?;
    iopl::check(&mut free)
}

/// Why a check failed.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// A hypercall that must succeed failed.
    Call(&'static str, HypercallError),
    /// A hypercall that must fail succeeded.
    NotRefused(&'static str),
    /// A hypercall failed with another error than Xen's.
    WrongError { what: &'static str, seen: HypercallError, wanted: Errno },
    /// A value is not what the ABI says.
    Wrong { what: &'static str, seen: u64, wanted: u64 },
    /// No free frame was left.
    NoFrame,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Call(what, e) => write!(f, "{what}: hypercall error {e:?}"),
            Self::NotRefused(what) => write!(f, "{what}: succeeded, must be refused"),
            Self::WrongError { what, seen, wanted } => write!(f, "{what}: {seen:?}, expected {wanted:?}"),
            Self::Wrong { what, seen, wanted } => write!(f, "{what}: {seen:#x}, expected {wanted:#x}"),
            Self::NoFrame => f.write_str("no free frame left"),
        }
    }
}

/// `seen == wanted`, or the failure naming `what`.
pub fn expect(what: &'static str, seen: u64, wanted: u64) -> Result<(), Failure> {
    if seen == wanted { Ok(()) } else { Err(Failure::Wrong { what, seen, wanted }) }
}

/// A hypercall result that must be a success.
pub fn call<T>(what: &'static str, result: Result<T, HypercallError>) -> Result<T, Failure> {
    result.map_err(|e| Failure::Call(what, e))
}

/// A hypercall result that must be the error `wanted`.
pub fn refused<T>(what: &'static str, result: Result<T, HypercallError>, wanted: Errno) -> Result<(), Failure> {
    match result {
        Ok(_) => Err(Failure::NotRefused(what)),
        Err(HypercallError::Xen(errno)) if errno == wanted => Ok(()),
        Err(seen) => Err(Failure::WrongError { what, seen, wanted }),
    }
}

/// Whether the guest's command line holds `word`.
pub fn cmdline_has(word: &[u8]) -> bool {
    guest_rt::start_info::cmd_line().split(|&b| b == b' ').any(|w| w == word)
}

/// The next free frame.
pub fn take(free: &mut FreeFrames) -> Result<Frame, Failure> {
    free.take().ok_or(Failure::NoFrame)
}

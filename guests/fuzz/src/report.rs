//! What the fuzzer says on the console, and the counters behind it.
//!
//! Lines (each starts with "fuzz: "; the host tool of `make fuzz` reads them):
//! `fuzz: seed=S vcpus=V avoid=<classes> only=<families>` at start;
//! `fuzz: progress seed=S calls=C per_s=R faults=F events=E` every `progress_ms`;
//! `fuzz: fatal seed=S calls=C op=<name>` right before a call meant to end the domain;
//! `fuzz: trace seed=S vcpu=K n=C op=<name> nr=.. args=..` for the traced calls;
//! `fuzz: end seed=S calls=C` before the domain powers off at its `calls=` budget;
//! `fuzz: UNEXPECTED seed=S calls=C op=<name> ...` and `fuzz: failsafe ...` (from
//! [`crate::guard`]) when the fuzzer is hit by something it did not ask for (or, after a
//! `fuzz: fatal` line, by the fatal call's consequence). Calls are counted over both vCPUs: every
//! generated hypercall (each entry of a multicall too), probe and `iret`; the calls that
//! only put the fuzzer's own state back are not counted. This module must never print
//! more than a line per call it is asked to trace, and a line per progress period else:
//! the console rate limit would drop the lines that matter.

use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use guest_rt::println;

/// The run's seed.
pub static SEED: AtomicU64 = AtomicU64::new(0);
/// Calls made by both vCPUs.
pub static CALLS: AtomicU64 = AtomicU64::new(0);
/// Calls from this number on are traced.
pub static TRACE_FROM: AtomicU64 = AtomicU64::new(u64::MAX);
/// How many calls a trace covers (the console's burst allowance, less the other lines).
pub const TRACE_CALLS: u64 = 150;

/// Each fuzzing vCPU's last call's name.
static LAST_NAME: [AtomicPtr<u8>; 2] = [AtomicPtr::new(core::ptr::null_mut()), AtomicPtr::new(core::ptr::null_mut())];
static LAST_LEN: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Notes vCPU `vcpu`'s next call and counts it; returns its number.
pub fn begin(vcpu: usize, name: &'static str) -> u64 {
    LAST_LEN[vcpu].store(0, Ordering::Relaxed);
    LAST_NAME[vcpu].store(name.as_ptr().cast_mut(), Ordering::Relaxed);
    LAST_LEN[vcpu].store(name.len(), Ordering::Release);
    CALLS.fetch_add(1, Ordering::Relaxed)
}

/// vCPU `vcpu`'s last call's name.
fn last_name(vcpu: usize) -> &'static str {
    let len = LAST_LEN[vcpu].load(Ordering::Acquire);
    let ptr = LAST_NAME[vcpu].load(Ordering::Relaxed);
    if ptr.is_null() || len == 0 {
        return "none";
    }
    // SAFETY: `begin` stores the pointer and length of a `&'static str` (the length last,
    // after zeroing it), so a non-zero length read after the pointer belongs to it.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// Whether call number `n` is traced.
pub fn traced(n: u64) -> bool {
    let from = TRACE_FROM.load(Ordering::Relaxed);
    n >= from && n - from < TRACE_CALLS
}

/// "seed=S calls=C op=<vCPU's last call>", for the lines about a vCPU.
pub struct Last(pub usize);

impl fmt::Display for Last {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} calls={} op={}",
            SEED.load(Ordering::Relaxed),
            CALLS.load(Ordering::Relaxed),
            last_name(self.0.min(1))
        )
    }
}

/// Prints the line before a call meant to end the domain.
pub fn fatal(vcpu: usize, name: &'static str) {
    begin(vcpu, name);
    println!("fuzz: fatal {}", Last(vcpu));
}

/// Prints a traced call.
pub fn trace(vcpu: usize, n: u64, name: &str, nr: u64, args: &[u64]) {
    println!(
        "fuzz: trace seed={} vcpu={vcpu} n={n} op={name} nr={nr:#x} args={:#x},{:#x},{:#x},{:#x},{:#x}",
        SEED.load(Ordering::Relaxed),
        args.first().copied().unwrap_or(0),
        args.get(1).copied().unwrap_or(0),
        args.get(2).copied().unwrap_or(0),
        args.get(3).copied().unwrap_or(0),
        args.get(4).copied().unwrap_or(0),
    );
}

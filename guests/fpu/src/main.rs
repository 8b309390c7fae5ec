//! guest-fpu: checks that a domain's x87, SSE and AVX registers are its own, and the FPU
//! control and debug registers a PV kernel uses. Run two or more of it on one CPU: each
//! yields to the others between filling its registers and checking them, so every check
//! follows switches to other domains that filled theirs.
//!
//! 0. Where CPUID (through the hypervisor) offers XSAVE and AVX (and unless `noavx`): `xsetbv`
//!    must be #UD before CR4.OSXSAVE is set (`mov %cr4`), #GP for XCR1 and for values Xen
//!    refuses, and then enable x87, SSE and AVX (XCR0 7, read back with `xgetbv`); leaf 0xD
//!    must describe that. The rounds below then also fill and compare YMM0-15 whole.
//! 1. The initial state: a new vCPU must start with the architectural one (FNINIT's
//!    control word 0x37f, empty x87 stack, MXCSR 0x1f80, zero XMM registers), whatever
//!    the domains before it left in the CPU.
//! 2. `rounds=N` (default 2000) rounds: fill the x87 stack (eight `fild`s), the x87 control
//!    word, MXCSR and XMM0-15 with a pattern of this domain and round, take an FXSAVE
//!    image, yield, take another and compare the two (control and status words, tags,
//!    MXCSR, the eight x87 registers, the sixteen XMM registers).
//! 3. With `x87` on its command line, only the x87 part of 1 and 2 (for a hypervisor that
//!    has not enabled SSE: its instructions fault there).
//! 4. With `bench` on its command line: times `yields=N` (default 2000) yields with
//!    nothing else in the loop, and prints the median round trip (with two domains on one
//!    CPU: two switches and the other's loop); with `dirty` too, each loop first loads all
//!    sixteen YMM (or XMM) registers, so that every switch has changed state to save.
//! 5. With `checks` on its command line, before the rounds: `fpu_taskswitch`, `clts`, CR0
//!    and #NM as Linux PV and XTF use them, FSGSBASE hidden and off, and the debug registers (initial state, Xen's
//!    refusals, a data breakpoint armed every other round across `rounds=` switches, which
//!    must fire for this domain exactly then, breakpoints on buffers the hypervisor reads
//!    and writes, a data breakpoint hit by `mov ss` held back over the next instruction or
//!    dropped by a `syscall` right after it, a single step): see `checks`.
//!
//! The pattern comes from the machine address of the domain's shared info page, which no
//! two domains share. Console: "fpu: initial state ok", "fpu: N rounds checked ok (x87,
//! SSE and AVX)", "fpu: yield round trip median N ns", or "fpu: FAILED <what>" and a crash.
//! The guest is soft-float: no code but the assembly here touches these registers.

#![no_std]
#![no_main]

use core::arch::asm;

mod checks;
mod cpu;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::{sched_yield, shutdown};
use guest_rt::time::Clock;
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

/// An FXSAVE image: 512 bytes, 16-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct FxImage([u8; 512]);

/// Byte ranges of an FXSAVE image: what the checks compare.
const FCW: core::ops::Range<usize> = 0..2;
const FSW: core::ops::Range<usize> = 2..4;
const FTW: usize = 4;
const MXCSR: core::ops::Range<usize> = 24..28;
/// ST0-7: 10 bytes each in 16-byte slots from byte 32.
const ST_BASE: usize = 32;
/// XMM0-15: 16 bytes each from byte 160.
const XMM: core::ops::Range<usize> = 160..416;

const DEFAULT_ROUNDS: u32 = 2000;
const DEFAULT_YIELDS: usize = 2000;
/// The most yields timed (their samples live on the 32 KiB stack: 8 KiB).
const MAX_YIELDS: usize = 2048;

fn main(start: &'static StartInfo) {
    let line = core::str::from_utf8(start.cmd_line()).unwrap_or("");
    let value = |key: &str| line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<u64>().ok());
    let word = |w: &str| line.split_ascii_whitespace().any(|x| x == w);
    let seed = start.shared_info;
    let sse = !word("x87");
    if let Err(what) = check_initial(sse) {
        fail(format_args!("initial state: {what}"));
    }
    cpu::install_handlers();
    let avx = sse && !word("noavx") && enable_avx();
    if avx && ymm_dump().iter().any(|&b| b != 0) {
        fail(format_args!("initial state: YMM registers are not zero"));
    }
    println!("fpu: initial state ok");
    let rounds = value("rounds=").map_or(DEFAULT_ROUNDS, |r| r as u32);
    if word("checks") {
        checks::taskswitch();
        checks::fsgsbase();
        checks::debugregs(rounds.min(200));
    }
    for round in 0..rounds {
        fill_x87(seed, round);
        if sse {
            fill_sse(seed, round);
        }
        if avx {
            fill_avx(seed, round);
        }
        let before = fxsave();
        let ymm_before = if avx { ymm_dump() } else { [0; 512] };
        let _ = sched_yield();
        let after = fxsave();
        if let Some(what) = difference(&before, &after, sse) {
            fail(format_args!("round {round}: {what} changed across a yield"));
        }
        if avx && ymm_dump() != ymm_before {
            fail(format_args!("round {round}: a YMM register changed across a yield"));
        }
    }
    println!("fpu: {rounds} rounds checked ok ({})", if avx { "x87, SSE and AVX" } else if sse { "x87 and SSE" } else { "x87" });
    if word("bench") {
        bench(value("yields=").map_or(DEFAULT_YIELDS, |y| (y as usize).clamp(1, MAX_YIELDS)), word("dirty"), avx, seed);
    }
}

/// Turns AVX on as a PV kernel does (CR4.OSXSAVE, then `xsetbv`), checking the refusals
/// Xen's emulation gives on the way; false where XSAVE or AVX is not offered.
fn enable_avx() -> bool {
    const XSAVE: u32 = 1 << 26;
    const OSXSAVE: u32 = 1 << 27;
    const AVX: u32 = 1 << 28;
    let leaf1 = cpu::cpuid(1, 0)[2];
    if leaf1 & (XSAVE | AVX) != XSAVE | AVX {
        return false;
    }
    if leaf1 & OSXSAVE == 0 {
        fail(format_args!("CPUID from the kernel lacks OSXSAVE (Xen reports the hardware's)"));
    }
    let cr4 = cpu::read_cr4();
    if cr4 & cpu::CR4_OSXSAVE != 0 {
        fail(format_args!("CR4.OSXSAVE set before the guest set it"));
    }
    let early = cpu::expect_fault(3, || cpu::xsetbv(0, 7));
    if early != Some("#UD") {
        fail(format_args!("xsetbv with CR4.OSXSAVE clear: {early:?}, not #UD"));
    }
    cpu::write_cr4(cr4 | cpu::CR4_OSXSAVE);
    if cpu::read_cr4() & cpu::CR4_OSXSAVE == 0 {
        fail(format_args!("CR4.OSXSAVE not taken"));
    }
    for (index, value, what) in [(1, 7, "XCR1"), (0, 0x5, "AVX without SSE"), (0, 0x2, "no x87"), (0, 0x27, "part of AVX-512"), (0, 1 << 9 | 7, "PKRU")] {
        let refused = cpu::expect_fault(3, || cpu::xsetbv(index, value));
        if refused != Some("#GP") {
            fail(format_args!("xsetbv of {what}: {refused:?}, not #GP"));
        }
    }
    if cpu::xgetbv() != 3 {
        fail(format_args!("XCR0 {:#x} before xsetbv, not 3", cpu::xgetbv()));
    }
    cpu::xsetbv(0, 7);
    if cpu::xgetbv() != 7 {
        fail(format_args!("XCR0 {:#x} after xsetbv 7", cpu::xgetbv()));
    }
    let [eax, ebx, ..] = cpu::cpuid(0xd, 0);
    if eax & 7 != 7 || ebx < 832 {
        fail(format_args!("CPUID 0xd: components {eax:#x}, {ebx} bytes for XCR0 7"));
    }
    true
}

/// YMM0-15 as they are now (32 bytes each).
fn ymm_dump() -> [u8; 512] {
    let mut out = [0u8; 512];
    // SAFETY: stores the sixteen YMM registers into the 512-byte buffer; AVX is enabled.
    unsafe {
        asm!(
            "vmovdqu [{o}], ymm0", "vmovdqu [{o} + 32], ymm1", "vmovdqu [{o} + 64], ymm2",
            "vmovdqu [{o} + 96], ymm3", "vmovdqu [{o} + 128], ymm4", "vmovdqu [{o} + 160], ymm5",
            "vmovdqu [{o} + 192], ymm6", "vmovdqu [{o} + 224], ymm7", "vmovdqu [{o} + 256], ymm8",
            "vmovdqu [{o} + 288], ymm9", "vmovdqu [{o} + 320], ymm10", "vmovdqu [{o} + 352], ymm11",
            "vmovdqu [{o} + 384], ymm12", "vmovdqu [{o} + 416], ymm13", "vmovdqu [{o} + 448], ymm14",
            "vmovdqu [{o} + 480], ymm15",
            o = in(reg) out.as_mut_ptr(),
            options(nostack),
        );
    }
    out
}

/// Fills YMM0-15 whole with this domain's pattern for `round`.
fn fill_avx(seed: u64, round: u32) {
    let base = pattern(seed, round).rotate_left(17);
    let ymm: [u64; 64] = core::array::from_fn(|i| base.rotate_left(i as u32 * 5) ^ (i as u64) << 48);
    // SAFETY: the AVX registers belong to this guest's code alone (it is soft-float); the
    // source is a live local of 512 bytes.
    unsafe {
        asm!(
            "vmovdqu ymm0, [{y}]", "vmovdqu ymm1, [{y} + 32]", "vmovdqu ymm2, [{y} + 64]",
            "vmovdqu ymm3, [{y} + 96]", "vmovdqu ymm4, [{y} + 128]", "vmovdqu ymm5, [{y} + 160]",
            "vmovdqu ymm6, [{y} + 192]", "vmovdqu ymm7, [{y} + 224]", "vmovdqu ymm8, [{y} + 256]",
            "vmovdqu ymm9, [{y} + 288]", "vmovdqu ymm10, [{y} + 320]", "vmovdqu ymm11, [{y} + 352]",
            "vmovdqu ymm12, [{y} + 384]", "vmovdqu ymm13, [{y} + 416]", "vmovdqu ymm14, [{y} + 448]",
            "vmovdqu ymm15, [{y} + 480]",
            y = in(reg) ymm.as_ptr(),
            options(nostack),
        );
    }
}

/// Prints the failure and crashes the domain.
pub(crate) fn fail(what: core::fmt::Arguments) -> ! {
    println!("fpu: FAILED {what}");
    shutdown(ShutdownReason::Crash)
}

/// Checks the state a new vCPU must start with (without `sse`, the x87 part only).
fn check_initial(sse: bool) -> Result<(), &'static str> {
    let image = fxsave();
    let u16_at = |r: core::ops::Range<usize>| u16::from_le_bytes([image.0[r.start], image.0[r.start + 1]]);
    if u16_at(FCW) != 0x037f {
        return Err("x87 control word is not 0x37f");
    }
    if u16_at(FSW) != 0 {
        return Err("x87 status word is not 0");
    }
    if image.0[FTW] != 0 {
        return Err("x87 registers are not all empty");
    }
    if image.0[ST_BASE..XMM.start].iter().any(|&b| b != 0) {
        return Err("x87 registers are not zero");
    }
    if !sse {
        return Ok(());
    }
    if u32::from_le_bytes(image.0[MXCSR].try_into().unwrap_or([0; 4])) != 0x1f80 {
        return Err("MXCSR is not 0x1f80");
    }
    if image.0[XMM].iter().any(|&b| b != 0) {
        return Err("XMM registers are not zero");
    }
    Ok(())
}

/// What differs between two images, in the parts the checks own (without `sse`, the x87
/// part only).
fn difference(a: &FxImage, b: &FxImage, sse: bool) -> Option<&'static str> {
    if a.0[FCW] != b.0[FCW] {
        return Some("the x87 control word");
    }
    if a.0[FSW] != b.0[FSW] || a.0[FTW] != b.0[FTW] {
        return Some("the x87 status or tag word");
    }
    for i in 0..8 {
        let slot = ST_BASE + 16 * i;
        if a.0[slot..slot + 10] != b.0[slot..slot + 10] {
            return Some("an x87 register");
        }
    }
    if sse && a.0[MXCSR] != b.0[MXCSR] {
        return Some("MXCSR");
    }
    if sse && a.0[XMM] != b.0[XMM] {
        return Some("an XMM register");
    }
    None
}

/// The FXSAVE image of the registers now.
fn fxsave() -> FxImage {
    let mut image = FxImage([0; 512]);
    // SAFETY: FXSAVE64 writes 512 bytes to the 16-byte aligned image.
    unsafe { asm!("fxsave64 [{}]", in(reg) image.0.as_mut_ptr(), options(nostack)) };
    image
}

/// The pattern of this domain (`seed`) for `round`.
fn pattern(seed: u64, round: u32) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(round).wrapping_mul(0x0100_0193)
}

/// Fills the x87 stack and control word with this domain's pattern for `round`.
fn fill_x87(seed: u64, round: u32) {
    let base = pattern(seed, round);
    let ints: [u64; 8] = core::array::from_fn(|i| (base.rotate_left(i as u32 * 8) >> 12) | 1);
    // Rounding and precision control vary with the round; exceptions stay masked.
    let fcw: u16 = 0x037f ^ (((round & 3) as u16) << 10) ^ (((round >> 2 & 1) as u16) << 9);
    // SAFETY: the x87 registers belong to this guest's code alone (it is soft-float); the
    // memory operands are live locals of the right sizes.
    unsafe {
        asm!(
            "fninit",
            "fldcw [{fcw}]",
            "fild qword ptr [{ints}]",
            "fild qword ptr [{ints} + 8]",
            "fild qword ptr [{ints} + 16]",
            "fild qword ptr [{ints} + 24]",
            "fild qword ptr [{ints} + 32]",
            "fild qword ptr [{ints} + 40]",
            "fild qword ptr [{ints} + 48]",
            "fild qword ptr [{ints} + 56]",
            fcw = in(reg) &fcw,
            ints = in(reg) ints.as_ptr(),
            options(nostack),
        );
    }
}

/// Fills MXCSR and XMM0-15 with this domain's pattern for `round`.
fn fill_sse(seed: u64, round: u32) {
    let base = pattern(seed, round);
    let xmm: [u64; 32] = core::array::from_fn(|i| base.rotate_left(i as u32 * 3) ^ (i as u64) << 56);
    let mxcsr: u32 = 0x1f80 | ((round & 3) << 13);
    // SAFETY: the SSE registers belong to this guest's code alone (it is soft-float); the
    // memory operands are live locals of the right sizes.
    unsafe {
        asm!(
            "ldmxcsr [{mxcsr}]",
            "movdqu xmm0, [{xmm}]",
            "movdqu xmm1, [{xmm} + 16]",
            "movdqu xmm2, [{xmm} + 32]",
            "movdqu xmm3, [{xmm} + 48]",
            "movdqu xmm4, [{xmm} + 64]",
            "movdqu xmm5, [{xmm} + 80]",
            "movdqu xmm6, [{xmm} + 96]",
            "movdqu xmm7, [{xmm} + 112]",
            "movdqu xmm8, [{xmm} + 128]",
            "movdqu xmm9, [{xmm} + 144]",
            "movdqu xmm10, [{xmm} + 160]",
            "movdqu xmm11, [{xmm} + 176]",
            "movdqu xmm12, [{xmm} + 192]",
            "movdqu xmm13, [{xmm} + 208]",
            "movdqu xmm14, [{xmm} + 224]",
            "movdqu xmm15, [{xmm} + 240]",
            mxcsr = in(reg) &mxcsr,
            xmm = in(reg) xmm.as_ptr(),
            options(nostack),
        );
    }
}

/// Times `count` yields and prints the median round trip; with `dirty`, each loop first
/// loads every YMM (`avx`) or XMM register.
fn bench(count: usize, dirty: bool, avx: bool, seed: u64) {
    let Ok(clock) = Clock::new() else {
        fail(format_args!("no clock for the yield timing"));
    };
    let mut all = [0u32; MAX_YIELDS];
    let samples = &mut all[..count];
    for (i, sample) in samples.iter_mut().enumerate() {
        if dirty && avx {
            fill_avx(seed, i as u32);
        } else if dirty {
            fill_sse(seed, i as u32);
        }
        let before = clock.now_ns();
        let _ = sched_yield();
        *sample = (clock.now_ns() - before).min(u64::from(u32::MAX)) as u32;
    }
    samples.sort_unstable();
    let state = if !dirty { "clean" } else if avx { "YMM dirty" } else { "XMM dirty" };
    println!(
        "fpu: yield round trip median {} ns over {count} ({state}; p10 {} ns, p90 {} ns)",
        samples[count / 2],
        samples[count / 10],
        samples[count * 9 / 10]
    );
}

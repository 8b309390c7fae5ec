//! The TLB-shootdown check: vCPU 0 points a probe page at frame A, vCPU 1 reads A's
//! marker and writes a word through the probe page, vCPU 0 remaps the probe page to frame B
//! with `update_va_mapping(UVMF_INVLPG | UVMF_ALL)`, and vCPU 1, which kept reading the
//! probe page (so that its TLB holds the old translation) until it saw the "remapped"
//! stage, must then read B's marker, and its second write must land in B, not A.
//!
//! The probe page is a page of the image's bss reserved for this (defined in assembly so
//! that Rust never treats it as ordinary memory); its L1 table is a boot table, so
//! `update_va_mapping` can retarget it. vCPU 1 reads it in bursts of [`SPIN_READS`] without
//! any hypercall (a yield switches address spaces, which would flush its TLB and hide a
//! missing shootdown), yielding only between bursts. `smp` calls [`run_primary`] on vCPU 0
//! and [`run_secondary`] on vCPU 1. This module must never touch the probe page's original
//! frame or any frame other than A and B through it.

use core::arch::global_asm;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::ids::PAGE_SIZE;
use guest_rt::abi::mmu::{UVMF_ALL, UVMF_INVLPG};
use guest_rt::hypercall;
use guest_rt::layout::kernel_rw_pte;
use guest_rt::println;

use crate::failure::{expect, Call, Check, Failure, Wait};
use guest_rt::frames::Frame;
use crate::wait::yield_until;

/// Word 0 of frames A and B: the marker telling them apart.
const MARKER_WORD: usize = 0;
/// Word 1: where vCPU 1 writes through the probe page.
const WRITE_WORD: usize = 1;
const MARKER_A: u64 = 0xAAAA_0000_5EED_000A;
const MARKER_B: u64 = 0xBBBB_0000_5EED_000B;
/// What vCPU 1 writes through the probe page before and after the remap.
const WRITE_BEFORE: u64 = 0x1111_0000_0000_0001;
const WRITE_AFTER: u64 = 0x2222_0000_0000_0002;
/// Probe reads per burst on vCPU 1 between yields.
const SPIN_READS: u32 = 4096;

/// The stages of the protocol; each vCPU waits for the other's.
const STAGE_MAPPED_A: u32 = 1;
const STAGE_USED_A: u32 = 2;
const STAGE_REMAPPED: u32 = 3;
const STAGE_REPORTED: u32 = 4;

static STAGE: AtomicU32 = AtomicU32::new(0);
/// The markers vCPU 1 read through the probe page before and after the remap.
static SEEN_BEFORE: AtomicU64 = AtomicU64::new(0);
static SEEN_AFTER: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".pushsection .bss.smpuser_probe_page,\"aw\",@nobits",
    ".balign {page}",
    ".globl smpuser_probe_page",
    "smpuser_probe_page:",
    ".skip {page}",
    ".popsection",
    page = const PAGE_SIZE,
);

extern "C" {
    /// The probe page (defined above), reached only through raw pointers.
    static smpuser_probe_page: [u64; 512];
}

/// vCPU 0's half: maps, waits, remaps, waits, and checks what vCPU 1 saw and wrote.
pub fn run_primary(a: Frame, b: Frame) -> Result<(), Failure> {
    // SAFETY: A and B are free frames, mapped writable at their own addresses, that
    // nothing else uses.
    unsafe {
        prepare(a, MARKER_A);
        prepare(b, MARKER_B);
    }
    map_probe(a)?;
    STAGE.store(STAGE_MAPPED_A, Ordering::Release);
    yield_until(Wait::SecondaryUsedA, || {
        STAGE.load(Ordering::Acquire) == STAGE_USED_A
    })?;
    map_probe(b)?;
    STAGE.store(STAGE_REMAPPED, Ordering::Release);
    yield_until(Wait::SecondaryReport, || {
        STAGE.load(Ordering::Acquire) == STAGE_REPORTED
    })?;
    expect(
        Check::SeenBeforeRemap,
        SEEN_BEFORE.load(Ordering::Relaxed),
        MARKER_A,
    )?;
    expect(
        Check::SeenAfterRemap,
        SEEN_AFTER.load(Ordering::Relaxed),
        MARKER_B,
    )?;
    // SAFETY: both frames are still mapped at their own addresses.
    let (in_a, in_b) = unsafe { (read_word(a.va(), WRITE_WORD), read_word(b.va(), WRITE_WORD)) };
    expect(Check::WriteInFrameA, in_a, WRITE_BEFORE)?;
    expect(Check::WriteInFrameB, in_b, WRITE_AFTER)
}

/// vCPU 1's half.
pub fn run_secondary() -> Result<(), Failure> {
    yield_until(Wait::ProbeMapped, || {
        STAGE.load(Ordering::Acquire) == STAGE_MAPPED_A
    })?;
    let before = probe_read(MARKER_WORD);
    SEEN_BEFORE.store(before, Ordering::Relaxed);
    probe_write(WRITE_WORD, WRITE_BEFORE);
    STAGE.store(STAGE_USED_A, Ordering::Release);
    let after = watch_for_remap()?;
    SEEN_AFTER.store(after, Ordering::Relaxed);
    probe_write(WRITE_WORD, WRITE_AFTER);
    println!(
        "smpuser: vcpu1 read marker {before:#x} through the probe page, {after:#x} after the remap"
    );
    STAGE.store(STAGE_REPORTED, Ordering::Release);
    Ok(())
}

/// Reads the probe page until vCPU 0 announces the remap, and returns the marker read
/// after the announcement.
fn watch_for_remap() -> Result<u64, Failure> {
    let mut seen = 0;
    yield_until(Wait::ProbeRemapped, || {
        for _ in 0..SPIN_READS {
            // The stage first: once it says "remapped", the remap and its flush are done.
            let remapped = STAGE.load(Ordering::Acquire) == STAGE_REMAPPED;
            let marker = probe_read(MARKER_WORD);
            if remapped {
                seen = marker;
                return true;
            }
            spin_loop();
        }
        false
    })?;
    Ok(seen)
}

/// Writes `marker` to word 0 of `frame` and clears word 1, through its own address.
///
/// # Safety
/// `frame` must be mapped writable at its own address, and nothing else may use it.
unsafe fn prepare(frame: Frame, marker: u64) {
    let page = frame.va() as *mut u64;
    // SAFETY: the caller vouches for the page; both words lie in it.
    unsafe {
        page.add(MARKER_WORD).write_volatile(marker);
        page.add(WRITE_WORD).write_volatile(0);
    }
}

/// Word `index` of the page at `va`.
///
/// # Safety
/// `va` must map a readable page.
unsafe fn read_word(va: u64, index: usize) -> u64 {
    // SAFETY: the caller vouches for the page; `index` is one of this module's words.
    unsafe { (va as *const u64).add(index).read_volatile() }
}

/// Points the probe page at `frame`, flushing its translation on every CPU that runs one
/// of the domain's vCPUs.
fn map_probe(frame: Frame) -> Result<(), Failure> {
    let va = probe() as u64;
    // SAFETY: the probe page is reserved for this check and only reached through raw
    // pointers; `frame` is A or B, ordinary free memory.
    unsafe {
        hypercall::update_va_mapping(
            va,
            kernel_rw_pte(frame.mfn.address()),
            UVMF_INVLPG | UVMF_ALL,
        )
    }
    .map_err(|e| Failure::Call(Call::UpdateVaMapping, e))
}

/// The probe page's first word.
fn probe() -> *mut u64 {
    (&raw const smpuser_probe_page).cast::<u64>().cast_mut()
}

/// Word `index` of whatever frame the probe page maps now.
fn probe_read(index: usize) -> u64 {
    // SAFETY: the probe page is always mapped (to its own frame, A or B); volatile, so
    // that each read goes through the current translation.
    unsafe { probe().add(index).read_volatile() }
}

/// Writes word `index` of whatever frame the probe page maps now.
fn probe_write(index: usize, value: u64) {
    // SAFETY: as `probe_read`; the probe page maps writable, and only this module writes
    // through it.
    unsafe { probe().add(index).write_volatile(value) }
}

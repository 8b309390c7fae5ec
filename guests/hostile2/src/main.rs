//! guest-hostile2: a PV guest with two vCPUs on two CPUs that races the hypervisor where one
//! CPU's view of memory must follow another's (issue 15, holes 3 and 6). Each race runs
//! `rounds=` times (default 100000; command-line word `rounds=N`); races (a) and (b) race
//! [`RACE_FRAMES`] frames per round, (c) splits its flushes between the two vCPUs:
//!
//! - [`pin_race`] (a): a frame another vCPU still writes through a stale TLB entry becomes
//!   a page table: no write may land in it once the pin has returned;
//! - [`free_race`] (b): a frame another vCPU still reads through a stale TLB entry is given
//!   back: no read may reach it once `decrease_reservation` has returned;
//! - [`flush_race`] (c): both vCPUs ask for cross-CPU flushes at once; a hypervisor that
//!   waits for the other CPU with a lock held that it spins on hangs here;
//!
//! and a check that flushes naming vCPUs by bitmap ([`multi_flush`], `UVMF_MULTI`,
//! `MMUEXT_*_MULTI`) reach the CPU of the vCPU named ("hostile2: check vcpumask_flushes").
//!
//! Console: "hostile2: race <name>: N races ..., held" or "... FAILED (BUG)" per race, then
//! the check's line, "hostile2: all races held" and power-off, or "hostile2: K races FAILED
//! (BUG)" and a crash.
//! A broken step of the guest itself prints "hostile2: FAILED <what>" and crashes. The QEMU
//! case `iso-races-smp2` runs it on two CPUs (`RACE_ROUNDS=` to change the rounds) and looks
//! for the verdict lines.

#![no_std]
#![no_main]

mod calls;
mod crew;
mod flush_race;
mod free_race;
mod frames;
mod multi_flush;
mod pin_race;
mod probe;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::Pfn;
use guest_rt::hypercall::shutdown;
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT};
use guest_rt::traps::{self, Vector};
use guest_rt::{println, start_info, StartInfo};

use crew::Failure;
use arrayvec::ArrayVec;
use frames::{Frame, FreeFrames};

/// vCPU 1's commands: which race's half to run.
pub const RACE_PIN: u32 = 1;
pub const RACE_FREE: u32 = 2;
pub const RACE_FLUSH: u32 = 3;
pub const CHECK_MULTI: u32 = 4;
/// Remaps the bitmap-flush check makes (a check, not a race: no need for more).
const MULTI_ROUNDS: u64 = 3000;
const DEFAULT_ROUNDS: u64 = 100_000;
/// Frames raced at once in races (a) and (b): each round is that many races, for the price
/// of one round's hand-overs between the vCPUs.
pub const RACE_FRAMES: usize = 32;

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    match run(start) {
        Ok(0) => println!("hostile2: all races held"),
        Ok(failed) => {
            println!("hostile2: {failed} races FAILED (BUG)");
            shutdown(ShutdownReason::Crash);
        }
        Err(failure) => crew::fail(failure),
    }
    crew::start_on_secondary(crew::PARK);
}

/// Runs the three races and the check; returns how many failed.
fn run(start: &StartInfo) -> Result<u32, Failure> {
    let races = rounds_option(start_info::cmd_line()).unwrap_or(DEFAULT_ROUNDS);
    let mut free = FreeFrames::new(start).ok_or(Failure::BadPtBase(start.pt_base))?;
    let mut take = |n: usize| -> Result<ArrayVec<Frame, RACE_FRAMES>, Failure> { (0..n).map(|_| free.take().ok_or(Failure::NoFreeFrame)).collect() };
    let (fs, rs, gs) = (take(RACE_FRAMES)?, take(RACE_FRAMES)?, take(RACE_FRAMES)?);
    let others = take(5)?;
    let (mine, theirs, probe_page, frame_a, frame_b) = (others[0], others[1], others[2], others[3], others[4]);
    traps::set_handler(Vector::PAGE_FAULT, probe::page_fault).map_err(|_| Failure::Walk(0))?;
    crew::bring_up(start)?;
    let mut failed = 0;
    let rounds = races.div_ceil(RACE_FRAMES as u64);

    let a = pin_race::run(&fs, &rs, rounds)?;
    let held = a.stale_writes == 0 && a.landed == 0;
    println!(
        "hostile2: race pin_stale_write: {} races ({} rounds of {}), {} stale writes, {} pinned frames changed: {}",
        a.rounds * a.frames as u64,
        a.rounds,
        a.frames,
        a.stale_writes,
        a.landed,
        verdict(held)
    );
    failed += u32::from(!held);

    let b = free_race::run(&gs, rounds)?;
    let held = b.stale_reads == 0;
    println!(
        "hostile2: race free_stale_read: {} races ({} rounds of {}), {} stale reads (last {:#x}): {}",
        b.rounds * b.frames as u64,
        b.rounds,
        b.frames,
        b.stale_reads,
        b.last_value,
        verdict(held)
    );
    failed += u32::from(!held);

    let flushes = flush_race::run((mine, l1_entry(start, mine.va)?), (theirs, l1_entry(start, theirs.va)?), races.div_ceil(2))?;
    println!("hostile2: race concurrent_flushes: {flushes} flushes from both vCPUs at once: held");

    let missed = multi_flush::run(probe_page, frame_a, frame_b, MULTI_ROUNDS)?;
    println!(
        "hostile2: check vcpumask_flushes: {MULTI_ROUNDS} remaps flushed on vCPU 1 by bitmap, {missed} missed: {}",
        if missed == 0 { "ok" } else { "FAILED (BUG)" }
    );
    failed += u32::from(missed != 0);
    Ok(failed)
}

fn verdict(held: bool) -> &'static str {
    if held { "held" } else { "FAILED (BUG)" }
}

/// The `rounds=N` word of the command line.
fn rounds_option(cmdline: &[u8]) -> Option<u64> {
    let text = core::str::from_utf8(cmdline).ok()?;
    text.split_ascii_whitespace().find_map(|w| w.strip_prefix("rounds=")).and_then(|n| n.parse().ok())
}

/// The machine address of the boot L1 entry that maps `va` (the boot tables are mapped
/// read-only in the initial mapping).
fn l1_entry(start: &StartInfo, va: u64) -> Result<u64, Failure> {
    let mut table = start.pt_base;
    for shift in [39u32, 30, 21] {
        // SAFETY: `table` is a boot page table, mapped read-only; the index is below 512.
        let entry = unsafe { core::ptr::read_volatile((table + ((va >> shift) & 511) * 8) as *const u64) };
        if entry & PTE_PRESENT == 0 {
            return Err(Failure::Walk(va));
        }
        let mfn = (entry & PTE_ADDRESS_MASK) >> 12;
        let pfn = start_info::mfn_list().iter().position(|m| m.0 == mfn).ok_or(Failure::Walk(va))?;
        table = layout::pfn_to_virt(Pfn(pfn as u64)).ok_or(Failure::Walk(va))?;
        if shift == 21 {
            return Ok((mfn << 12) + ((va >> 12) & 511) * 8);
        }
    }
    Err(Failure::Walk(va))
}

/// vCPU 1's half of race `command`.
pub fn run_secondary_half(command: u32) -> Result<(), Failure> {
    match command {
        RACE_PIN => pin_race::secondary(),
        RACE_FREE => free_race::secondary(),
        RACE_FLUSH => flush_race::secondary(),
        CHECK_MULTI => multi_flush::secondary(),
        _ => Ok(()),
    }
}


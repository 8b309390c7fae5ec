//! `attack=share hog_vcpus=N seconds=S`: a domain's share of the machine must not grow with
//! its vCPU count. Domain 0 creates two CPU hogs of boot module 1 (guest-vcpus) with the
//! same weight, both placed and pinned on CPU 0 (a CPU mask of CPU 0 alone): one with one
//! vCPU, one with `hog_vcpus` (default 2) that it brings up itself. After a 500 ms warm-up
//! it reads both domains' CPU time over `seconds` (default 2): each must have had half of
//! CPU 0, within [`TOLERANCE_PERCENT`]. When each vCPU carried its domain's whole weight,
//! the two-vCPU hog had two thirds.

use guest_rt::abi::control::SchedParams;
use guest_rt::abi::ids::DomId;
use guest_rt::control::{self, NewDomain};
use guest_rt::println;

use super::{settled, expect_as_before, Compare, option,  warm_up, Failure, Waiter, MODULE};

/// How far from an even split the many-vCPU hog's share may be, in percentage points.
const TOLERANCE_PERCENT: u64 = 5;

fn hog(vcpus: u32, line: &[u8]) -> Result<DomId, Failure> {
    control::create_domain(&spec(vcpus, line)).map_err(|e| Failure::Control("CreateDomain", e))
}

/// A hog of `vcpus` vCPUs on CPU 0 alone, created paused.
fn spec(vcpus: u32, line: &[u8]) -> NewDomain<'_> {
    NewDomain {
        module: MODULE,
        mem_kib: 512,
        max_kib: 512,
        cpu: Some(0),
        pinned: true,
        params: SchedParams { weight: 1, ..SchedParams::default() },
        cmdline: line,
        paused: true,
        max_vcpus: vcpus,
        cpu_mask: 1,
        hostile: false,
    }
}

fn cpu_ns(domid: DomId) -> Result<u64, Failure> {
    control::domain_info(domid).map(|i| i.cpu_time_ns).map_err(|e| Failure::Control("GetDomainInfo", e))
}

pub fn run(waiter: Waiter, cmdline: &[u8]) -> Result<(), Failure> {
    let vcpus = option(cmdline, "hog_vcpus").unwrap_or(2).clamp(2, 8) as u32;
    let seconds = option(cmdline, "seconds").unwrap_or(2).max(1);
    let mut line = *b"vcpus=0";
    line[6] = b'0' + vcpus as u8;
    warm_up(waiter, &spec(vcpus, &line), 100)?;
    let before = settled(waiter)?;
    let single = hog(1, b"vcpus=1")?;
    let many = hog(vcpus, &line)?;
    let result = measure(waiter, single, many, vcpus, seconds);
    for domid in [single, many] {
        let _ = control::destroy_domain(domid);
    }
    result?;
    expect_as_before(waiter, &before, Compare::FreeMemory, 5000)?;
    Ok(())
}

fn measure(waiter: Waiter, single: DomId, many: DomId, vcpus: u32, seconds: u64) -> Result<(), Failure> {
    for domid in [single, many] {
        control::unpause_domain(domid).map_err(|e| Failure::Control("UnpauseDomain", e))?;
    }
    waiter.sleep_ms(500)?;
    let start = (cpu_ns(single)?, cpu_ns(many)?);
    waiter.sleep_ms(seconds * 1000)?;
    let single_ns = cpu_ns(single)? - start.0;
    let many_ns = cpu_ns(many)? - start.1;
    let up = control::domain_info(many).map(|i| i.vcpus).unwrap_or(0);
    let total = (single_ns + many_ns).max(1);
    let share = many_ns * 1000 / total;
    println!(
        "dom0: attack share: over {seconds} s on CPU 0, the {vcpus}-vCPU hog ({up} vCPUs up) ran {} ms, the 1-vCPU hog {} ms: {}.{}% against {}.{}% (same weight)",
        many_ns / 1_000_000,
        single_ns / 1_000_000,
        share / 10,
        share % 10,
        (1000 - share) / 10,
        (1000 - share) % 10
    );
    if up != vcpus {
        return Err(Failure::OutOfBounds("the many-vCPU hog did not get all its vCPUs"));
    }
    if share.abs_diff(500) > TOLERANCE_PERCENT * 10 {
        return Err(Failure::OutOfBounds("the hogs' shares are not even"));
    }
    Ok(())
}

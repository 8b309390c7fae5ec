//! `plan=xtf`: domain 0 of a Xen Test Framework run (`tests/xtf.py`), as a Linux domain 0
//! with xl is under Xen: it creates the test's domain from boot module 1 with the memory,
//! vCPUs and command line its line names ([`guest_dom0::xtfplan`]), waits until that
//! domain has ended (shut down or killed, and gone: `GetDomainInfo` answers `ESRCH`),
//! and powers off. Its lines: "dom0: xtf: domain N created (...)", then
//! "dom0: xtf: domain N ended after S ms" (or "dom0: xtf: FAILED <why>" and a crash). How
//! the test's domain ended is the hypervisor's line ("domain N (xtf) ended: ..."), its
//! verdict the test's own console line. Domain 0 sleeps on its one-shot timer between
//! looks, so it takes next to no CPU time from the test.

use guest_dom0::xtfplan::XtfOptions;
use guest_rt::abi::control::SchedParams;
use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::control::{self, NewDomain};
use guest_rt::events::Events;
use guest_rt::hypercall::shutdown;
use guest_rt::println;
use guest_rt::time::Clock;
use guest_rt::timer::Timer;
use protocol::keyvalue::OptionError;

/// The boot module the test's image is.
const MODULE: u32 = 1;
/// How often domain 0 looks whether the test's domain has gone.
const POLL_NS: u64 = 10_000_000;

/// Runs the plan (`options` as parsed) and ends domain 0.
pub fn run(options: Result<XtfOptions<'_>, OptionError>) -> ! {
    match options.map_err(option_reason).and_then(create_and_wait) {
        Ok(()) => shutdown(ShutdownReason::Poweroff),
        Err(why) => {
            println!("dom0: xtf: FAILED {why}");
            shutdown(ShutdownReason::Crash)
        }
    }
}

/// A bad option as a failure line.
fn option_reason(error: OptionError) -> &'static str {
    match error {
        OptionError::BadValue(key) => key,
        _ => "bad command line",
    }
}

fn create_and_wait(options: XtfOptions<'_>) -> Result<(), &'static str> {
    let clock = Clock::new().map_err(|_| "no clock")?;
    let events = Events::init().map_err(|_| "no events")?;
    let timer = Timer::bind(events).map_err(|_| "no timer")?;
    events.enable();
    let spec = NewDomain {
        module: MODULE,
        mem_kib: options.mem_kib,
        max_kib: options.mem_kib,
        cpu: None,
        pinned: false,
        params: SchedParams { weight: 1, ..SchedParams::default() },
        cmdline: options.cmdline.as_bytes(),
        paused: false,
        max_vcpus: options.vcpus,
        cpu_mask: 0,
        hostile: false,
    };
    let started = clock.now_ns();
    let domid = match control::create_domain(&spec) {
        Ok(domid) => domid,
        Err(error) => {
            // The hypervisor's log says why ("control: domain from module 1 not created").
            println!("dom0: xtf: the test's domain was not created: {error:?}");
            return Err("create");
        }
    };
    println!(
        "dom0: xtf: domain {} created ({} KiB, {} vCPUs, command line {:?})",
        domid.0, options.mem_kib, options.vcpus, options.cmdline
    );
    loop {
        match control::domain_info(domid) {
            Ok(_) => {}
            Err(error) if error.errno() == Some(Errno::Esrch) => break,
            Err(_) => return Err("domain_info"),
        }
        timer.sleep_until(clock.now_ns() + POLL_NS).map_err(|_| "timer refused")?;
    }
    println!("dom0: xtf: domain {} ended after {} ms", domid.0, (clock.now_ns() - started) / 1_000_000);
    Ok(())
}

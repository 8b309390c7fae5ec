//! The `log` backend: every line on the serial console, tagged with CPU and time since boot.
//!
//! Lines from different CPUs never interleave (one lock around the write). The panic and
//! fatal-exception paths call [`force_unlock`] first so that a CPU that died holding the lock
//! cannot silence the report. Never allocates.

use core::fmt::Write;

use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::arch::serial::Console;
use crate::{percpu, time};

static LOCK: Mutex<()> = Mutex::new(());

struct Logger;

static LOGGER: Logger = Logger;

/// Installs the logger; `verbose` lowers the threshold to debug.
pub fn init(verbose: bool) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if verbose { LevelFilter::Debug } else { LevelFilter::Info });
}

/// Changes the threshold after the command line has been read.
pub fn set_verbose(verbose: bool) {
    log::set_max_level(if verbose { LevelFilter::Debug } else { LevelFilter::Info });
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let _guard = LOCK.lock();
        write_line_prefix();
        let level = match record.level() {
            log::Level::Error => "ERROR ",
            log::Level::Warn => "WARN ",
            _ => "",
        };
        let _ = writeln!(Console, "{level}{}", record.args());
    }

    fn flush(&self) {}
}

/// Writes the `[cpuN  seconds]` tag.
pub fn write_line_prefix() {
    let ns = time::since_boot_ns();
    let _ = write!(
        Console,
        "[cpu{:<2} {:>4}.{:06}] ",
        percpu::current_index_or_boot(),
        ns / 1_000_000_000,
        (ns / 1000) % 1_000_000
    );
}

/// Prints a line without taking the lock (for the fatal paths).
pub fn emergency(args: core::fmt::Arguments) {
    write_line_prefix();
    let _ = writeln!(Console, "{args}");
}

/// Takes the console over for a fatal report.
pub fn force_unlock() {
    // SAFETY: called only on the fatal path, where this CPU is about to stop the machine; a
    // torn line from another CPU is acceptable, a silent death is not.
    unsafe { LOCK.force_unlock() };
}

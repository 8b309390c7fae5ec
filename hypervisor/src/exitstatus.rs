//! What the run's exit status says when a guest is run by hand (`exit=guest`): how the boot
//! domains ended, the worst of them, as QEMU's exit status.
//!
//! `pv::lifecycle` calls [`guest_status`] at the end of the run with each boot domain's
//! ending and how many could not be built; `arch::exit` writes the value. The statuses are
//! odd (isa-debug-exit gives `(value << 1) | 1`) and apart from QEMU's own 0 and 1 and from
//! a shell's 128+signal; 33 and 35 keep the meaning they have for the test harness
//! (`exit=summary`). Pure and host-tested; the README's table lists the same numbers.

/// How a boot domain ended, as a hand-run guest's exit status tells it, least severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuestEnd {
    /// It powered off (or domain 0 destroyed it): 33.
    Poweroff,
    /// It asked to reboot: 37.
    Reboot,
    /// It crashed, asked to suspend (nothing here resumes it) or its watchdog fired: 39.
    Crash,
    /// The hypervisor killed it (a fault it could not deliver, a bad frame...): 41.
    Killed,
    /// It could not be built (its module refused at boot, a bad image, too little
    /// memory): 43.
    NotStarted,
}

/// The hypervisor failed (a panic, a failed self-check, leaked memory): 35.
pub const FAILURE_STATUS: u32 = 35;

impl GuestEnd {
    /// The value written to isa-debug-exit.
    pub const fn exit_value(self) -> u32 {
        match self {
            Self::Poweroff => 0x10,
            Self::Reboot => 0x12,
            Self::Crash => 0x13,
            Self::Killed => 0x14,
            Self::NotStarted => 0x15,
        }
    }

    /// The ending's name in the summary (`summary: guest.ending=`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Crash => "crash",
            Self::Killed => "killed",
            Self::NotStarted => "not_started",
        }
    }

    /// QEMU's exit status.
    pub const fn status(self) -> u32 {
        (self.exit_value() << 1) | 1
    }
}

/// The ending a hand-run guest's status reports: the worst of the boot domains' endings,
/// [`GuestEnd::NotStarted`] when one could not be built; `None` when there was nothing at
/// all (no boot domain).
pub fn guest_status(endings: impl IntoIterator<Item = GuestEnd>, not_started: usize) -> Option<GuestEnd> {
    let worst = endings.into_iter().max();
    if not_started > 0 { Some(GuestEnd::NotStarted) } else { worst }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct_odd_and_keep_33_for_poweroff() {
        let all = [GuestEnd::Poweroff, GuestEnd::Reboot, GuestEnd::Crash, GuestEnd::Killed, GuestEnd::NotStarted];
        let statuses: Vec<u32> = all.iter().map(|e| e.status()).collect();
        assert_eq!(statuses, [33, 37, 39, 41, 43]);
        assert!(!statuses.contains(&FAILURE_STATUS));
    }

    #[test]
    fn the_worst_ending_wins() {
        use GuestEnd::*;
        assert_eq!(guest_status([Poweroff], 0), Some(Poweroff));
        assert_eq!(guest_status([Poweroff, Crash, Reboot], 0), Some(Crash));
        assert_eq!(guest_status([Killed, Crash], 0), Some(Killed));
        assert_eq!(guest_status([Poweroff], 1), Some(NotStarted));
        assert_eq!(guest_status([], 2), Some(NotStarted));
        assert_eq!(guest_status([], 0), None);
    }
}

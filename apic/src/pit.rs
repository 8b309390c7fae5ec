//! The 8254 PIT, channel 0, as a reference clock: a free-running mode-0 countdown read with
//! the read-back command, busy-waits of a given number of PIT ticks (1.193182 MHz), and the
//! TSC reader.
//!
//! The hypervisor starts one [`Pit`] at boot and uses it to calibrate the TSC and APIC timer
//! ([`crate::LocalApic::calibrate_timers`]) and for the 10 ms INIT wait of AP start-up. It
//! avoids channel 2 and port 0x61, which `-M microvm` lacks. Port access goes through the
//! [`PitPorts`] trait so the polling logic is host-tested against a simulated PIT. The PIT is
//! one device for the whole machine: the caller serialises access (one owner, or a lock), and
//! nothing here enables its interrupt.

use core::hint::spin_loop;
use x86_64::instructions::port::{Port, PortWriteOnly};

use crate::consts::pit::{
    CMD_CH0_LOHI_MODE0, CMD_READBACK_CH0_COUNT, CMD_READBACK_CH0_STATUS, FREE_RUNNING_COUNT,
    HZ_DENOMINATOR, HZ_NUMERATOR, PORT_CHANNEL0, PORT_COMMAND, STALL_POLL_LIMIT, STATUS_NULL_COUNT,
};

/// Microseconds per second, for [`ticks_for_us`].
const US_PER_SECOND: u64 = 1_000_000;

/// Reads the time-stamp counter of the current CPU.
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU, reads no memory, and the hypervisor never
    // sets CR4.TSD at CPL 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// PIT ticks needed to cover `us` microseconds, rounded up (saturating at `u32::MAX`).
pub const fn ticks_for_us(us: u32) -> u32 {
    let den = US_PER_SECOND * HZ_DENOMINATOR;
    let ticks = (us as u64 * HZ_NUMERATOR).div_ceil(den);
    if ticks > u32::MAX as u64 {
        u32::MAX
    } else {
        ticks as u32
    }
}

/// The two PIT ports this module uses.
pub trait PitPorts {
    /// Writes the mode/command register (port 0x43).
    fn write_command(&mut self, command: u8);
    /// Writes one byte to channel 0 (port 0x40).
    fn write_channel0(&mut self, byte: u8);
    /// Reads one byte from channel 0 (port 0x40).
    fn read_channel0(&mut self) -> u8;
}

/// The real PIT ports.
#[derive(Debug)]
pub struct IoPorts {
    command: PortWriteOnly<u8>,
    channel0: Port<u8>,
}

impl IoPorts {
    /// # Safety
    ///
    /// Must be used at CPL 0 (or with I/O permission for ports 0x40 and 0x43), and nothing
    /// else may program or read PIT channel 0 while the value exists.
    pub unsafe fn new() -> IoPorts {
        IoPorts {
            command: PortWriteOnly::new(PORT_COMMAND),
            channel0: Port::new(PORT_CHANNEL0),
        }
    }
}

impl PitPorts for IoPorts {
    fn write_command(&mut self, command: u8) {
        // SAFETY: `new`'s contract gives exclusive use of the PIT ports; PIT commands do not
        // touch memory.
        unsafe { self.command.write(command) }
    }

    fn write_channel0(&mut self, byte: u8) {
        // SAFETY: as in `write_command`.
        unsafe { self.channel0.write(byte) }
    }

    fn read_channel0(&mut self) -> u8 {
        // SAFETY: as in `write_command`.
        unsafe { self.channel0.read() }
    }
}

/// Why a PIT wait failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PitError {
    /// The counter did not change for [`STALL_POLL_LIMIT`] consecutive reads (no PIT, or a
    /// PIT that is not counting).
    Stalled,
}

/// PIT channel 0 counting down freely from 0xFFFF (mode 0 wraps through 0 and continues).
#[derive(Debug)]
pub struct Pit<P> {
    ports: P,
}

impl<P: PitPorts> Pit<P> {
    /// Programs channel 0 for the free-running countdown and waits until the count is loaded.
    pub fn start(mut ports: P) -> Result<Pit<P>, PitError> {
        ports.write_command(CMD_CH0_LOHI_MODE0);
        let [low, high] = FREE_RUNNING_COUNT.to_le_bytes();
        ports.write_channel0(low);
        ports.write_channel0(high);
        let mut pit = Pit { ports };
        for _ in 0..STALL_POLL_LIMIT {
            if pit.read_status() & STATUS_NULL_COUNT == 0 {
                return Ok(pit);
            }
            spin_loop();
        }
        Err(PitError::Stalled)
    }

    /// The current count (decreasing by one per PIT tick, wrapping from 0 to 0xFFFF).
    pub fn read_count(&mut self) -> u16 {
        self.ports.write_command(CMD_READBACK_CH0_COUNT);
        let low = self.ports.read_channel0();
        let high = self.ports.read_channel0();
        u16::from_le_bytes([low, high])
    }

    /// Busy-waits until at least `ticks` whole PIT periods have passed.
    ///
    /// Counts decrements between successive reads, so waits of any length work as long as
    /// two reads are less than 55 ms apart (a longer gap only lengthens the wait).
    pub fn wait_ticks(&mut self, ticks: u32) -> Result<(), PitError> {
        if ticks == 0 {
            return Ok(());
        }
        // The first decrement may come right after the first read: count one extra.
        let needed = u64::from(ticks) + 1;
        let mut elapsed = 0u64;
        let mut previous = self.read_count();
        let mut unchanged = 0u32;
        while elapsed < needed {
            spin_loop();
            let now = self.read_count();
            let step = previous.wrapping_sub(now);
            if step == 0 {
                unchanged += 1;
                if unchanged >= STALL_POLL_LIMIT {
                    return Err(PitError::Stalled);
                }
            } else {
                unchanged = 0;
                elapsed += u64::from(step);
                previous = now;
            }
        }
        Ok(())
    }

    /// Busy-waits for at least `us` microseconds.
    pub fn wait_us(&mut self, us: u32) -> Result<(), PitError> {
        self.wait_ticks(ticks_for_us(us))
    }

    fn read_status(&mut self) -> u8 {
        self.ports.write_command(CMD_READBACK_CH0_STATUS);
        self.ports.read_channel0()
    }
}

/// A simulated PIT channel 0 for host tests, shared with [`crate::calibrate`]'s tests.
#[cfg(test)]
pub(crate) mod sim {
    use super::*;
    use std::collections::VecDeque;

    /// Picoseconds per second.
    const PS_PER_SECOND: u128 = 1_000_000_000_000;

    /// PIT ticks completed after `ps` picoseconds.
    pub(crate) fn ticks_at(ps: u128) -> u128 {
        ps * u128::from(HZ_NUMERATOR) / (PS_PER_SECOND * u128::from(HZ_DENOMINATOR))
    }

    /// Picoseconds taken by `ticks` PIT ticks.
    pub(crate) fn ps_for_ticks(ticks: u64) -> u128 {
        u128::from(ticks) * PS_PER_SECOND * u128::from(HZ_DENOMINATOR) / u128::from(HZ_NUMERATOR)
    }

    /// A PIT whose clock advances `access_ps` per port access; `frozen` stops the counter;
    /// `null_count_reads` status reads report the count as not yet loaded.
    #[derive(Debug, Default)]
    pub(crate) struct SimPit {
        pub(crate) now_ps: u128,
        pub(crate) access_ps: u128,
        pub(crate) frozen: bool,
        pub(crate) null_count_reads: u32,
        pub(crate) commands: Vec<u8>,
        pub(crate) data_written: Vec<u8>,
        load: Option<(u16, u128)>,
        pending_low: Option<u8>,
        latched: VecDeque<u8>,
    }

    impl SimPit {
        pub(crate) fn new(access_ps: u128) -> SimPit {
            SimPit {
                access_ps,
                ..SimPit::default()
            }
        }

        fn tick(&mut self) {
            self.now_ps += self.access_ps;
        }

        fn count(&self) -> u16 {
            let Some((initial, loaded_at)) = self.load else {
                return 0x1234;
            };
            let elapsed = if self.frozen {
                0
            } else {
                ticks_at(self.now_ps) - ticks_at(loaded_at)
            };
            initial.wrapping_sub(elapsed as u16)
        }
    }

    impl PitPorts for SimPit {
        fn write_command(&mut self, command: u8) {
            self.tick();
            self.commands.push(command);
            match command {
                CMD_CH0_LOHI_MODE0 => self.pending_low = None,
                CMD_READBACK_CH0_COUNT => self.latched.extend(self.count().to_le_bytes()),
                CMD_READBACK_CH0_STATUS => {
                    let null = if self.null_count_reads > 0 {
                        STATUS_NULL_COUNT
                    } else {
                        0
                    };
                    self.null_count_reads = self.null_count_reads.saturating_sub(1);
                    self.latched.push_back(null);
                }
                other => panic!("unexpected PIT command {other:#x}"),
            }
        }

        fn write_channel0(&mut self, byte: u8) {
            self.tick();
            self.data_written.push(byte);
            match self.pending_low.take() {
                None => self.pending_low = Some(byte),
                Some(low) => self.load = Some((u16::from_le_bytes([low, byte]), self.now_ps)),
            }
        }

        fn read_channel0(&mut self) -> u8 {
            self.tick();
            self.latched
                .pop_front()
                .expect("read without a latched value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::*;
    use super::*;

    /// A port access costs 300 ns in these tests.
    const ACCESS_PS: u128 = 300_000;

    fn started(sim: SimPit) -> Pit<SimPit> {
        Pit::start(sim).expect("simulated PIT starts")
    }

    #[test]
    fn start_programs_mode0_low_byte_first_and_waits_for_the_load() {
        let mut sim = SimPit::new(ACCESS_PS);
        sim.null_count_reads = 3;
        let pit = started(sim);
        assert_eq!(pit.ports.commands[0], 0x30);
        assert_eq!(pit.ports.data_written, [0xFF, 0xFF]);
        assert_eq!(
            pit.ports.commands[1..],
            [0xE2; 4],
            "polls status until the count loads"
        );
    }

    #[test]
    fn start_gives_up_on_a_pit_that_never_loads() {
        let mut sim = SimPit::new(ACCESS_PS);
        sim.null_count_reads = u32::MAX;
        assert_eq!(Pit::start(sim).err(), Some(PitError::Stalled));
    }

    #[test]
    fn read_count_latches_with_read_back_and_counts_down() {
        let mut pit = started(SimPit::new(ACCESS_PS));
        let first = pit.read_count();
        pit.ports.now_ps += ps_for_ticks(100);
        let second = pit.read_count();
        assert_eq!(pit.ports.commands.last(), Some(&0xD2));
        assert!(
            (100..=102).contains(&first.wrapping_sub(second)),
            "{first} -> {second}"
        );
    }

    #[test]
    fn ten_millisecond_wait_lasts_ten_milliseconds() {
        let mut pit = started(SimPit::new(ACCESS_PS));
        let before = pit.ports.now_ps;
        pit.wait_us(10_000).unwrap();
        let waited = pit.ports.now_ps - before;
        assert!(waited >= 10_000_000_000, "waited only {waited} ps");
        // At most one extra tick (the partial first one) plus the reads before and after.
        assert!(
            waited < ps_for_ticks(11_932 + 1) + 6 * ACCESS_PS,
            "{waited} ps"
        );
    }

    #[test]
    fn long_waits_survive_counter_wraps() {
        let mut pit = started(SimPit::new(ACCESS_PS));
        let before = pit.ports.now_ps;
        pit.wait_ticks(200_000).unwrap();
        let waited = pit.ports.now_ps - before;
        assert!(waited >= ps_for_ticks(200_000), "{waited} ps");
        assert!(
            waited < ps_for_ticks(200_000 + 1) + 6 * ACCESS_PS,
            "{waited} ps"
        );
    }

    #[test]
    fn zero_wait_touches_no_port() {
        let mut pit = started(SimPit::new(ACCESS_PS));
        let accesses = pit.ports.commands.len();
        pit.wait_ticks(0).unwrap();
        assert_eq!(pit.ports.commands.len(), accesses);
    }

    #[test]
    fn a_frozen_counter_is_reported_as_stalled() {
        let mut pit = started(SimPit::new(ACCESS_PS));
        pit.ports.frozen = true;
        assert_eq!(pit.wait_ticks(10), Err(PitError::Stalled));
    }

    #[test]
    fn microseconds_round_up_to_ticks() {
        assert_eq!(ticks_for_us(0), 0);
        assert_eq!(ticks_for_us(1), 2);
        assert_eq!(ticks_for_us(10_000), 11_932);
        assert_eq!(ticks_for_us(1_000_000), 1_193_182);
        assert_eq!(ticks_for_us(u32::MAX), u32::MAX, "saturates");
    }
}

//! The local APIC of the current CPU: enabling it in xAPIC or x2APIC mode, EOI, IPIs
//! (fixed, INIT, start-up), the one-shot and TSC-deadline timers, and timer calibration.
//!
//! Every CPU calls [`LocalApic::enable`] once for itself and keeps the returned value in its
//! per-CPU data; interrupt handlers use it for [`LocalApic::eoi`], the scheduler for timer
//! deadlines, the SMP code for IPIs. A `LocalApic` addresses whichever CPU runs it, so it is
//! neither `Send` nor `Sync` and must never be handed to another CPU. Legacy LINT0/LINT1
//! wires are masked and stay masked; this module never routes external interrupts.

use core::cell::Cell;
use core::hint::spin_loop;
use core::marker::PhantomData;
use x86_64::instructions::interrupts::without_interrupts;

use crate::apic_base::{mode_switch_writes, read_apic_base};
use crate::calibrate::{calibrate_with, Calibration, CalibrationError};
use crate::consts::lapic::{
    ICR_DELIVERY_PENDING, ICR_IDLE_POLL_LIMIT, MSR_APIC_BASE, MSR_TSC_DEADLINE, TIMER_DIVIDE_BY_16,
    XAPIC_ID_SHIFT,
};
use crate::consts::vectors::FIRST_INTERRUPT_VECTOR;
use crate::icr::{self, Delivery, Target};
use crate::lapic_regs::{self, LapicRegs, Reg};
use crate::lvt::{self, TimerLvt};
use crate::pit::{read_tsc, Pit, PitPorts};
use crate::timer_choice::CpuFeatures;
use crate::{ApicId, ApicMode};

/// Size and alignment of the xAPIC MMIO page.
const XAPIC_PAGE: u64 = 0x1000;

/// The vectors the local APIC itself raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicVectors {
    /// One-shot or TSC-deadline timer expiry.
    pub timer: u8,
    /// Local APIC internal error (read the cause with [`LocalApic::take_error_status`]).
    pub error: u8,
    /// Spurious interrupt (needs no EOI).
    pub spurious: u8,
}

impl ApicVectors {
    /// Checks that every vector is an interrupt vector (>= 32) and that they are distinct.
    pub fn validate(&self) -> Result<(), ApicError> {
        let all = [self.timer, self.error, self.spurious];
        if let Some(&bad) = all.iter().find(|&&v| v < FIRST_INTERRUPT_VECTOR) {
            return Err(ApicError::ReservedVector(bad));
        }
        let duplicate = if self.timer == self.error || self.timer == self.spurious {
            Some(self.timer)
        } else {
            (self.error == self.spurious).then_some(self.error)
        };
        match duplicate {
            Some(vector) => Err(ApicError::DuplicateVector(vector)),
            None => Ok(()),
        }
    }
}

/// Why a local APIC operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The vector lies in the CPU exception range 0-31.
    ReservedVector(u8),
    /// Two of the timer, error and spurious vectors are equal.
    DuplicateVector(u8),
    /// xAPIC mode was requested without a virtual address for the APIC page.
    MissingXApicBase,
    /// The xAPIC virtual address is zero or not 4 KiB aligned.
    MisalignedXApicBase(u64),
    /// x2APIC mode was requested but CPUID does not offer it.
    X2ApicUnsupported,
    /// xAPIC mode was requested but firmware left the APIC in x2APIC mode.
    X2ApicAlreadyEnabled,
    /// `IA32_APIC_BASE` has x2APIC enabled while the APIC is globally disabled.
    InvalidApicBaseState(u64),
    /// The destination does not fit this mode's ID width, or is the broadcast ID.
    DestinationOutOfRange { dest: ApicId, mode: ApicMode },
    /// The previous xAPIC IPI was still pending after the poll limit.
    IcrBusy,
    /// CPUID does not offer the TSC-deadline timer.
    TscDeadlineUnsupported,
    /// Start-up code must be 4 KiB aligned and below 1 MiB.
    InvalidStartupAddress(u64),
}

/// The current CPU's local APIC, enabled. See the module documentation.
#[derive(Debug)]
pub struct LocalApic {
    regs: LapicRegs,
    id: ApicId,
    vectors: ApicVectors,
    tsc_deadline_supported: bool,
    timer: Cell<TimerLvt>,
    /// A `LocalApic` talks to the CPU it runs on: keep it on its CPU (neither Send nor Sync).
    _this_cpu_only: PhantomData<*mut ()>,
}

impl LocalApic {
    /// Enables the current CPU's local APIC in `mode`.
    ///
    /// Switches `IA32_APIC_BASE` into `mode` (enabling the APIC if firmware left it off),
    /// software-enables it with `vectors.spurious`, accepts all priorities, masks LINT0 and
    /// LINT1, unmasks the error LVT, sets the timer to one-shot (divide by 16, stopped) on
    /// `vectors.timer`, and clears the error status. `xapic_virt_base` is ignored in x2APIC
    /// mode.
    ///
    /// # Safety
    ///
    /// Must run at CPL 0 on the CPU being enabled, and nothing else may program this CPU's
    /// local APIC meanwhile. In xAPIC mode `xapic_virt_base` must be the virtual address of
    /// this CPU's APIC page (physical address [`crate::ApicBase::phys_base`]), mapped uncached
    /// and writable for the rest of the run.
    pub unsafe fn enable(
        mode: ApicMode,
        xapic_virt_base: Option<u64>,
        vectors: ApicVectors,
    ) -> Result<LocalApic, ApicError> {
        let features = CpuFeatures::detect();
        let xapic_base = check_enable_request(mode, xapic_virt_base, vectors, features)?;
        // SAFETY: CPL 0 is the caller's promise.
        let writes = mode_switch_writes(unsafe { read_apic_base() }, mode)?;
        for value in writes.into_iter().flatten() {
            // SAFETY: CPL 0; the values only change EN/EXTD along a legal transition and keep
            // the base address, so no memory mapping changes.
            unsafe { lapic_regs::write_msr(MSR_APIC_BASE, value) };
        }
        let regs = match xapic_base {
            // SAFETY: the APIC is now in x2APIC mode on this CPU, at CPL 0.
            None => unsafe { LapicRegs::x2apic() },
            // SAFETY: the APIC is now in xAPIC mode; the caller promises the mapping.
            Some(base) => unsafe { LapicRegs::xapic(base) },
        };
        program_registers(regs, vectors);
        Ok(LocalApic {
            regs,
            id: read_id(regs),
            vectors,
            tsc_deadline_supported: features.tsc_deadline,
            timer: Cell::new(TimerLvt::OneShot),
            _this_cpu_only: PhantomData,
        })
    }

    /// The mode the APIC was enabled in.
    pub fn mode(&self) -> ApicMode {
        self.regs.mode()
    }

    /// This CPU's APIC ID (read once at enable).
    pub fn id(&self) -> ApicId {
        self.id
    }

    /// The vectors the APIC was enabled with.
    pub fn vectors(&self) -> ApicVectors {
        self.vectors
    }

    /// Signals end of interrupt for the highest-priority in-service interrupt.
    pub fn eoi(&self) {
        self.regs.write(Reg::Eoi, 0);
    }

    /// Sends a fixed IPI on `vector` to the CPU with APIC ID `dest`.
    pub fn send_ipi(&self, dest: ApicId, vector: u8) -> Result<(), ApicError> {
        self.send(Delivery::Fixed(vector), Target::One(dest))
    }

    /// Sends a fixed IPI on `vector` to every CPU except this one.
    pub fn send_ipi_all_others(&self, vector: u8) -> Result<(), ApicError> {
        self.send(Delivery::Fixed(vector), Target::AllOthers)
    }

    /// Sends INIT to `dest` (the caller then waits 10 ms before the start-up IPI).
    pub fn send_init(&self, dest: ApicId) -> Result<(), ApicError> {
        self.send(Delivery::Init, Target::One(dest))
    }

    /// Sends a start-up IPI to `dest`: it starts in real mode at physical `page << 12`
    /// (see [`crate::startup_page`]).
    pub fn send_sipi(&self, dest: ApicId, page: u8) -> Result<(), ApicError> {
        self.send(Delivery::Startup(page), Target::One(dest))
    }

    /// Waits, at most [`ICR_IDLE_POLL_LIMIT`] polls, until the previous xAPIC IPI has been
    /// delivered. Returns at once in x2APIC mode, which has no pending state.
    pub fn wait_icr_idle(&self) -> Result<(), ApicError> {
        if self.mode() == ApicMode::X2Apic {
            return Ok(());
        }
        for _ in 0..ICR_IDLE_POLL_LIMIT {
            if self.regs.read_icr_low() & ICR_DELIVERY_PENDING == 0 {
                return Ok(());
            }
            spin_loop();
        }
        Err(ApicError::IcrBusy)
    }

    /// Arms the one-shot timer to fire `ticks` APIC timer ticks from now (0 is taken as 1,
    /// so an overdue deadline still fires). Leaves TSC-deadline mode if it was on.
    pub fn timer_oneshot_ticks(&self, ticks: u32) {
        self.set_timer_lvt(TimerLvt::OneShot);
        self.regs.write(Reg::TimerInitial, ticks.max(1));
    }

    /// Disarms the timer, whichever mode it is in.
    pub fn timer_stop(&self) {
        match self.timer.get() {
            TimerLvt::TscDeadline => self.write_tsc_deadline(0),
            TimerLvt::OneShot | TimerLvt::SilentCountdown => self.regs.write(Reg::TimerInitial, 0),
        }
    }

    /// Remaining APIC timer ticks of the current one-shot countdown (0 when idle or in
    /// TSC-deadline mode).
    pub fn timer_current_count(&self) -> u32 {
        self.regs.read(Reg::TimerCurrent)
    }

    /// Arms the TSC-deadline timer to fire once the TSC reaches `deadline` (0 is taken as 1,
    /// which is already past, rather than as "disarm"). Enters TSC-deadline mode if needed.
    ///
    /// # Errors
    ///
    /// [`ApicError::TscDeadlineUnsupported`] when CPUID does not offer the TSC-deadline timer.
    pub fn tsc_deadline(&self, deadline: u64) -> Result<(), ApicError> {
        if !self.tsc_deadline_supported {
            return Err(ApicError::TscDeadlineUnsupported);
        }
        if self.timer.get() != TimerLvt::TscDeadline {
            self.set_timer_lvt(TimerLvt::TscDeadline);
            // The LVT write must reach the APIC before the deadline MSR write (SDM).
            lapic_regs::store_fence_before_wrmsr();
        }
        self.write_tsc_deadline(deadline.max(1));
        Ok(())
    }

    /// Returns the APIC errors recorded since the last call (ESR bits) and clears them.
    pub fn take_error_status(&self) -> u32 {
        // The ESR latches the errors on a write; the read then returns them.
        self.regs.write(Reg::Esr, 0);
        self.regs.read(Reg::Esr)
    }

    /// Measures the TSC and APIC timer frequencies against the PIT (see
    /// [`calibrate_with`]). The APIC timer counts down masked meanwhile and is stopped after.
    pub fn calibrate_timers<P: PitPorts>(
        &self,
        pit: &mut Pit<P>,
    ) -> Result<Calibration, CalibrationError> {
        self.set_timer_lvt(TimerLvt::SilentCountdown);
        self.regs.write(Reg::TimerInitial, u32::MAX);
        let result = calibrate_with(|| pit.read_count(), read_tsc, || self.timer_current_count());
        self.timer_stop();
        result
    }

    fn send(&self, delivery: Delivery, target: Target) -> Result<(), ApicError> {
        let icr = icr::encode(delivery, target, self.mode())?;
        // An interrupt handler sending its own IPI between the two xAPIC ICR writes would
        // redirect ours, so keep interrupts off around wait-and-write.
        without_interrupts(|| {
            self.wait_icr_idle()?;
            self.regs.write_icr(icr);
            Ok(())
        })
    }

    fn set_timer_lvt(&self, state: TimerLvt) {
        if self.timer.get() != state {
            self.regs
                .write(Reg::LvtTimer, lvt::timer(self.vectors.timer, state));
            self.timer.set(state);
        }
    }

    fn write_tsc_deadline(&self, deadline: u64) {
        // SAFETY: CPL 0 (enable's contract); a LocalApic only reaches TscDeadline state when
        // CPUID offers the MSR; writing a deadline has no effect on memory.
        unsafe { lapic_regs::write_msr(MSR_TSC_DEADLINE, deadline) }
    }
}

/// Checks an enable request against the CPU's features before any register is touched.
/// Returns the xAPIC page address to use, or `None` in x2APIC mode.
fn check_enable_request(
    mode: ApicMode,
    xapic_virt_base: Option<u64>,
    vectors: ApicVectors,
    features: CpuFeatures,
) -> Result<Option<u64>, ApicError> {
    vectors.validate()?;
    match (mode, xapic_virt_base) {
        (ApicMode::X2Apic, _) if !features.x2apic => Err(ApicError::X2ApicUnsupported),
        (ApicMode::X2Apic, _) => Ok(None),
        (ApicMode::XApic, None) => Err(ApicError::MissingXApicBase),
        (ApicMode::XApic, Some(base)) if base == 0 || !base.is_multiple_of(XAPIC_PAGE) => {
            Err(ApicError::MisalignedXApicBase(base))
        }
        (ApicMode::XApic, Some(base)) => Ok(Some(base)),
    }
}

/// Programs a freshly enabled APIC. The software enable comes first: while the APIC is
/// software-disabled, LVT mask bits cannot be cleared.
fn program_registers(regs: LapicRegs, vectors: ApicVectors) {
    regs.write(Reg::Svr, lvt::svr(vectors.spurious));
    regs.write(Reg::Tpr, 0);
    regs.write(Reg::LvtLint0, lvt::lint_masked());
    regs.write(Reg::LvtLint1, lvt::lint_masked());
    regs.write(Reg::TimerDivide, TIMER_DIVIDE_BY_16);
    regs.write(Reg::TimerInitial, 0);
    regs.write(Reg::LvtTimer, lvt::timer(vectors.timer, TimerLvt::OneShot));
    regs.write(Reg::LvtError, lvt::error(vectors.error));
    // Two ESR writes: the first latches stale errors, the second clears them.
    regs.write(Reg::Esr, 0);
    regs.write(Reg::Esr, 0);
}

fn read_id(regs: LapicRegs) -> ApicId {
    let raw = regs.read(Reg::Id);
    ApicId(match regs.mode() {
        ApicMode::X2Apic => raw,
        ApicMode::XApic => raw >> XAPIC_ID_SHIFT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: ApicVectors = ApicVectors {
        timer: 0xEF,
        error: 0xFE,
        spurious: 0xFF,
    };
    const ALL: CpuFeatures = CpuFeatures {
        x2apic: true,
        tsc_deadline: true,
        invariant_tsc: true,
    };
    const NONE: CpuFeatures = CpuFeatures {
        x2apic: false,
        tsc_deadline: false,
        invariant_tsc: false,
    };

    #[test]
    fn vectors_must_be_interrupts_and_distinct() {
        assert_eq!(VECTORS.validate(), Ok(()));
        let low = ApicVectors {
            timer: 0x1F,
            ..VECTORS
        };
        assert_eq!(low.validate(), Err(ApicError::ReservedVector(0x1F)));
        let low = ApicVectors {
            spurious: 0,
            ..VECTORS
        };
        assert_eq!(low.validate(), Err(ApicError::ReservedVector(0)));
        let dup = ApicVectors {
            error: 0xEF,
            ..VECTORS
        };
        assert_eq!(dup.validate(), Err(ApicError::DuplicateVector(0xEF)));
        let dup = ApicVectors {
            spurious: 0xEF,
            ..VECTORS
        };
        assert_eq!(dup.validate(), Err(ApicError::DuplicateVector(0xEF)));
        let dup = ApicVectors {
            spurious: 0xFE,
            ..VECTORS
        };
        assert_eq!(dup.validate(), Err(ApicError::DuplicateVector(0xFE)));
    }

    #[test]
    fn x2apic_needs_cpuid_support_and_ignores_the_base() {
        assert_eq!(
            check_enable_request(ApicMode::X2Apic, None, VECTORS, ALL),
            Ok(None)
        );
        assert_eq!(
            check_enable_request(ApicMode::X2Apic, Some(3), VECTORS, ALL),
            Ok(None)
        );
        assert_eq!(
            check_enable_request(ApicMode::X2Apic, None, VECTORS, NONE),
            Err(ApicError::X2ApicUnsupported)
        );
    }

    #[test]
    fn xapic_needs_an_aligned_nonzero_base() {
        let base = 0xFFFF_8000_FEE0_0000;
        let ok = check_enable_request(ApicMode::XApic, Some(base), VECTORS, NONE);
        assert_eq!(ok, Ok(Some(base)));
        assert_eq!(
            check_enable_request(ApicMode::XApic, None, VECTORS, ALL),
            Err(ApicError::MissingXApicBase)
        );
        for bad in [0, 0xFEE0_0010, 0xFFFF_8000_0000_0800] {
            assert_eq!(
                check_enable_request(ApicMode::XApic, Some(bad), VECTORS, ALL),
                Err(ApicError::MisalignedXApicBase(bad))
            );
        }
    }

    #[test]
    fn vectors_are_checked_before_the_mode() {
        let bad = ApicVectors {
            error: 2,
            ..VECTORS
        };
        assert_eq!(
            check_enable_request(ApicMode::X2Apic, None, bad, NONE),
            Err(ApicError::ReservedVector(2))
        );
    }
}

//! VIRQs as the channel table sees them: validating a guest's VIRQ number, telling
//! per-vCPU VIRQs from global ones, and a domain's VIRQ-to-port map.
//!
//! Used by [`crate::table::Channels`] only (under the caller's lock). Xen's rules: a
//! per-vCPU VIRQ (timer, debug, xenoprof, xenpmu) binds at most once per vCPU and always
//! notifies that vCPU; a global VIRQ binds on vCPU 0 and may later notify another vCPU.
//! This module must never allocate ports or raise events.

use alloc::vec::Vec;
use core::num::NonZeroU16;

use abi::hypercall::{Virq, NR_VIRQS};
use abi::ids::{EvtchnPort, VcpuId};

use crate::error::EventError;

/// A VIRQ number below `NR_VIRQS`, as a guest may bind it (numbers the header leaves
/// unassigned included, as Xen allows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirqNumber(u8);

impl VirqNumber {
    /// Validates a guest's number.
    pub fn new(raw: u32) -> Result<Self, EventError> {
        if raw < NR_VIRQS {
            Ok(Self(raw as u8))
        } else {
            Err(EventError::InvalidVirq)
        }
    }

    /// The number of a VIRQ the hypervisor raises.
    pub const fn of(virq: Virq) -> Self {
        Self(virq.raw() as u8)
    }

    /// The raw number, as `EVTCHNOP_status` reports it.
    pub const fn raw(self) -> u32 {
        self.0 as u32
    }

    /// Whether each vCPU has its own binding (Xen's `virq_is_global` is false). On x86
    /// every architecture VIRQ is global.
    pub const fn is_per_vcpu(self) -> bool {
        matches!(
            Virq::from_raw(self.0 as u32),
            Some(Virq::Timer | Virq::Debug | Virq::Xenoprof | Virq::Xenpmu)
        )
    }

    /// The vCPU whose map slot holds the binding: `vcpu` itself for a per-vCPU VIRQ,
    /// vCPU 0 for a global one.
    pub const fn map_vcpu(self, vcpu: VcpuId) -> VcpuId {
        if self.is_per_vcpu() {
            vcpu
        } else {
            VcpuId(0)
        }
    }
}

/// One vCPU's bound ports, by VIRQ number; `None` is unbound (port 0 is never bound).
type VcpuVirqs = [Option<NonZeroU16>; NR_VIRQS as usize];

/// VIRQ -> port for each vCPU that has bound a VIRQ. Grows to the highest such vCPU only,
/// 48 bytes per vCPU.
#[derive(Debug, Default)]
pub struct VirqMap {
    per_vcpu: Vec<VcpuVirqs>,
}

impl VirqMap {
    /// The port bound to `virq` in `vcpu`'s slot.
    pub fn get(&self, vcpu: VcpuId, virq: VirqNumber) -> Option<EvtchnPort> {
        let slots = self.per_vcpu.get(vcpu.0 as usize)?;
        slots[virq.0 as usize].map(|port| EvtchnPort(port.get().into()))
    }

    /// Records `port` (non-zero, below 65536) for `virq` in `vcpu`'s slot.
    pub fn set(&mut self, vcpu: VcpuId, virq: VirqNumber, port: EvtchnPort) {
        let port = u16::try_from(port.0).ok().and_then(NonZeroU16::new);
        debug_assert!(port.is_some(), "VIRQ ports are 1..4096");
        let index = vcpu.0 as usize;
        if index >= self.per_vcpu.len() {
            self.per_vcpu.reserve_exact(index + 1 - self.per_vcpu.len());
            self.per_vcpu.resize(index + 1, [None; NR_VIRQS as usize]);
        }
        self.per_vcpu[index][virq.0 as usize] = port;
    }

    /// Forgets `vcpu`'s binding of `virq`.
    pub fn clear(&mut self, vcpu: VcpuId, virq: VirqNumber) {
        if let Some(slots) = self.per_vcpu.get_mut(vcpu.0 as usize) {
            slots[virq.0 as usize] = None;
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.per_vcpu.capacity() * core::mem::size_of::<VcpuVirqs>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_at_or_above_nr_virqs_are_rejected() {
        assert_eq!(VirqNumber::new(23).map(VirqNumber::raw), Ok(23));
        assert_eq!(VirqNumber::new(24), Err(EventError::InvalidVirq));
        assert_eq!(VirqNumber::new(u32::MAX), Err(EventError::InvalidVirq));
    }

    #[test]
    fn per_vcpu_virqs_are_timer_debug_xenoprof_xenpmu() {
        let per_vcpu: Vec<u32> = (0..NR_VIRQS)
            .filter(|&raw| VirqNumber::new(raw).unwrap().is_per_vcpu())
            .collect();
        assert_eq!(per_vcpu, [0, 1, 7, 13]);
        assert_eq!(VirqNumber::of(Virq::Console).map_vcpu(VcpuId(3)), VcpuId(0));
        assert_eq!(VirqNumber::of(Virq::Timer).map_vcpu(VcpuId(3)), VcpuId(3));
    }

    #[test]
    fn map_grows_only_to_the_highest_vcpu() {
        let mut map = VirqMap::default();
        let timer = VirqNumber::of(Virq::Timer);
        assert_eq!(map.get(VcpuId(0), timer), None);
        map.set(VcpuId(2), timer, EvtchnPort(4095));
        assert_eq!(map.heap_bytes(), 3 * 48);
        assert_eq!(map.get(VcpuId(2), timer), Some(EvtchnPort(4095)));
        assert_eq!(map.get(VcpuId(1), timer), None);
        assert_eq!(map.get(VcpuId(9), timer), None);
        map.clear(VcpuId(2), timer);
        map.clear(VcpuId(9), timer);
        assert_eq!(map.get(VcpuId(2), timer), None);
    }
}

//! Console output through the console ring the builder announces in
//! `start_info.console.domU` (Xen's `struct xencons_interface`, io/console.h), as a Linux
//! domU's hvc driver writes it: bytes go into the output ring at `out_prod`, the producer
//! index moves after them, and a send on the ring's event channel tells the other end (here
//! the hypervisor, which prints them with the domain's name) to take them.
//!
//! The ring page is a frame of the reservation inside the initial mapping (`VIRT_BASE +
//! pfn * 4096`), so no mapping hypercall is needed; [`ConsoleRing::get`] finds it through
//! the P2M list. A full ring waits for the consumer (yielding the vCPU) up to a bound, then
//! drops the rest. Who uses it: guests that print through the ring (guest-vcpuop) and the
//! hostile guest's ring attacks. Unlike [`crate::console`], it is for one vCPU at a time:
//! two writers on one ring would interleave. Input (what the console's backend, domain 0,
//! puts in the input ring) is read with [`ConsoleRing::read`]. This module must never
//! write the output ring's consumer index, the input ring or its producer index.

use core::sync::atomic::{AtomicU32, Ordering};

use abi::console::{
    pending, room, slot, IN_CONS_OFFSET, IN_PROD_OFFSET, IN_RING_SIZE, OUT_CONS_OFFSET, OUT_PROD_OFFSET, OUT_RING_OFFSET, OUT_RING_SIZE,
};
use abi::ids::{EvtchnPort, Pfn};

use crate::console::Sink;
use crate::{evtchn, hypercall, layout, start_info};

/// How many times a writer yields for room before it drops what is left.
const MAX_WAITS: u32 = 100_000;

/// The domain's console ring, found in `start_info`.
#[derive(Clone, Copy, Debug)]
pub struct ConsoleRing {
    page: u64,
    port: EvtchnPort,
}

impl ConsoleRing {
    /// The ring `start_info` names, if it names one inside the initial mapping.
    pub fn get() -> Option<ConsoleRing> {
        let info = start_info::start_info();
        if info.console_mfn == 0 || info.console_evtchn.0 == 0 {
            return None;
        }
        let pfn = start_info::mfn_list().iter().position(|m| m.0 == info.console_mfn)?;
        let page = layout::pfn_to_virt(Pfn(pfn as u64))?;
        Some(ConsoleRing { page, port: info.console_evtchn })
    }

    /// The ring's event channel.
    pub fn port(self) -> EvtchnPort {
        self.port
    }

    /// The address of the ring page (for guests that write it directly).
    pub fn page(self) -> u64 {
        self.page
    }

    fn index(self, offset: usize) -> &'static AtomicU32 {
        // SAFETY: the offsets are the aligned u32 indices of the ring page, which the
        // initial mapping maps for the guest's life; the other end reads and writes them
        // concurrently, hence atomics.
        unsafe { &*((self.page + offset as u64) as *const AtomicU32) }
    }

    /// Writes all of `bytes` into the output ring, notifying the other end after each
    /// chunk; returns how many went in (fewer only when the consumer stopped taking them,
    /// or the indices are out of range).
    pub fn write(self, bytes: &[u8]) -> usize {
        let (cons_index, prod_index) = (self.index(OUT_CONS_OFFSET), self.index(OUT_PROD_OFFSET));
        let mut written = 0;
        let mut waits = 0;
        while written < bytes.len() {
            let cons = cons_index.load(Ordering::Acquire);
            let prod = prod_index.load(Ordering::Relaxed);
            let Some(free) = room(cons, prod, OUT_RING_SIZE) else { return written };
            if free == 0 {
                waits += 1;
                if waits > MAX_WAITS {
                    return written;
                }
                let _ = hypercall::sched_yield();
                continue;
            }
            let n = (free as usize).min(bytes.len() - written);
            self.put(prod, &bytes[written..written + n]);
            prod_index.store(prod.wrapping_add(n as u32), Ordering::Release);
            written += n;
            let _ = evtchn::send(self.port);
        }
        written
    }

    /// Writes what fits of `bytes` into the output ring now, without waiting and without
    /// notifying the other end (as a guest that dies in the middle of a print leaves its
    /// ring: its backend must still find the bytes when it drains the ring at the domain's
    /// end); returns how many went in.
    pub fn write_quiet(self, bytes: &[u8]) -> usize {
        let (cons_index, prod_index) = (self.index(OUT_CONS_OFFSET), self.index(OUT_PROD_OFFSET));
        let cons = cons_index.load(Ordering::Acquire);
        let prod = prod_index.load(Ordering::Relaxed);
        let Some(free) = room(cons, prod, OUT_RING_SIZE) else { return 0 };
        let n = (free as usize).min(bytes.len());
        self.put(prod, &bytes[..n]);
        prod_index.store(prod.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Copies `bytes` into the output ring from index `prod` on.
    fn put(self, prod: u32, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let at = self.page + (OUT_RING_OFFSET + slot(prod.wrapping_add(i as u32), OUT_RING_SIZE)) as u64;
            // SAFETY: `at` is inside the output ring of the mapped ring page.
            unsafe { (at as *mut u8).write_volatile(byte) };
        }
    }

    /// Takes what the input ring holds into `out`; returns how many bytes (0 also when the
    /// other end's indices are out of range).
    pub fn read(self, out: &mut [u8]) -> usize {
        let (cons_index, prod_index) = (self.index(IN_CONS_OFFSET), self.index(IN_PROD_OFFSET));
        let cons = cons_index.load(Ordering::Relaxed);
        let prod = prod_index.load(Ordering::Acquire);
        let Some(waiting) = pending(cons, prod, IN_RING_SIZE) else { return 0 };
        let n = (waiting as usize).min(out.len());
        for (i, byte) in out[..n].iter_mut().enumerate() {
            let at = self.page + slot(cons.wrapping_add(i as u32), IN_RING_SIZE) as u64;
            // SAFETY: `at` is inside the input ring (offset 0) of the mapped ring page.
            *byte = unsafe { (at as *const u8).read_volatile() };
        }
        cons_index.store(cons.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Whether input waits in the input ring.
    pub fn input_pending(self) -> bool {
        self.index(IN_CONS_OFFSET).load(Ordering::Acquire) != self.index(IN_PROD_OFFSET).load(Ordering::Acquire)
    }

    /// Bytes written and not yet taken by the other end (`None`: indices out of range).
    pub fn unconsumed(self) -> Option<u32> {
        pending(self.index(OUT_CONS_OFFSET).load(Ordering::Acquire), self.index(OUT_PROD_OFFSET).load(Ordering::Acquire), OUT_RING_SIZE)
    }
}

impl Sink for ConsoleRing {
    fn write(&mut self, bytes: &[u8]) {
        ConsoleRing::write(*self, bytes);
    }
}

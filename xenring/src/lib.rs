//! Xen's shared I/O ring (`io/ring.h`) as pure logic, used by both ends of a split driver:
//! the frontend in a guest (`guests/rt`'s block client) and the backend in domain 0
//! (`guests/dom0`'s blkback).
//!
//! The shared ring is one or more pages: a 64-byte header (`req_prod`, `req_event`,
//! `rsp_prod`, `rsp_event`, 4 private bytes and 44 bytes of padding) followed by as many
//! entries as fit, rounded down to a power of two ([`Layout`]). An entry slot holds either a
//! request or a response (Xen's union), so a slot is as large as the larger of the two. The
//! frontend produces requests and consumes responses ([`FrontRing`]); the backend consumes
//! requests and produces responses ([`BackRing`]); each keeps its own private indices, as
//! Xen's `front_ring`/`back_ring`, and notifications follow Xen's rules exactly
//! (`RING_PUSH_*_AND_CHECK_NOTIFY`, `RING_FINAL_CHECK_FOR_*`) so that either end
//! interoperates with Xen's own drivers.
//!
//! Who calls it: the block frontend and backend (through `blkif`'s entry types), and any
//! later ring user. Entries are any type that implements [`Entry`] (encoded and decoded as
//! bytes, so every bit pattern the other side writes decodes to some value); the ring
//! memory is anything that implements [`RingMemory`]: [`RawMemory`] for a mapped page
//! (volatile entry copies, atomic index accesses, the barriers Xen uses) and [`PlainMemory`]
//! for host tests.
//!
//! What it must never do: trust the other end. Every index read from the shared header is
//! checked against the private ones before it is used (a producer that claims more entries
//! than can exist, or moves backwards, is a [`RingError`] the caller acts on: the backend
//! cuts that frontend off); every entry is copied out once before it is looked at, so the
//! other end cannot change it under the reader; nothing here panics on any content of
//! the shared memory.

#![cfg_attr(not(test), no_std)]

mod back;
mod front;
mod layout;
mod memory;

pub use back::BackRing;
pub use front::FrontRing;
pub use layout::{Layout, LayoutError, HEADER_BYTES, MAX_ENTRY_BYTES, PAGE_BYTES};
pub use memory::{PlainMemory, RawMemory, RingMemory};

/// A ring index (`RING_IDX`): free-running, compared modulo 2^32.
pub type RingIdx = u32;

/// A request or response type carried in the ring's slots.
///
/// Decoding must accept any bytes (the other end writes them): fields with a closed set of
/// values are kept raw and checked by the protocol crate, never turned into a Rust enum
/// here.
pub trait Entry: Sized {
    /// The C struct's size in bytes (at most [`MAX_ENTRY_BYTES`]).
    const SIZE: usize;
    /// Decodes an entry from exactly `SIZE` bytes.
    fn decode(bytes: &[u8]) -> Self;
    /// Encodes the entry into exactly `SIZE` bytes.
    fn encode(&self, out: &mut [u8]);
}

/// What the other end did wrong, as seen by a consumer (or a producer with nothing to answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The frontend's `req_prod` claims more requests than the ring can hold beyond those
    /// answered, or lies behind requests already consumed (`RING_REQUEST_PROD_OVERFLOW`,
    /// and a producer that moved backwards).
    RequestProducer { req_prod: RingIdx, req_cons: RingIdx, rsp_prod: RingIdx },
    /// The backend's `rsp_prod` claims responses to requests never sent, or lies behind
    /// responses already consumed.
    ResponseProducer { rsp_prod: RingIdx, rsp_cons: RingIdx, req_prod: RingIdx },
}

/// What a producer may not do because of its own state (the caller's mistake, not the
/// other end's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The frontend has no free slot (every slot holds a request not yet answered).
    Full,
    /// The backend has answered every request it consumed.
    NothingToAnswer,
}

/// Offsets of the shared header's fields.
pub(crate) mod header {
    pub const REQ_PROD: usize = 0;
    pub const REQ_EVENT: usize = 4;
    pub const RSP_PROD: usize = 8;
    pub const RSP_EVENT: usize = 12;
}

/// `xen_wmb()`: entries written before the producer index that publishes them.
#[inline]
pub(crate) fn wmb() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
}

/// `xen_rmb()`: the producer index read before the entries it publishes.
#[inline]
pub(crate) fn rmb() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
}

/// `xen_mb()`: a full barrier (the store of an index ordered before the load of the other
/// end's event index; `mfence` on x86).
#[inline]
pub(crate) fn mb() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests;

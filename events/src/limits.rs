//! The numbers that bound event channels: how many ports the 2-level ABI can name, how
//! many a domain gets by default, and how many ports one poll may name.
//!
//! The table and the poll check read them; the hypervisor picks a per-domain limit from
//! them. This module must never hold anything but constants.

use abi::shared_info::EVTCHN_2L_NR_CHANNELS;

/// Ports the 2-level ABI can name: 64 words of 64 bits in `shared_info`.
pub const MAX_PORTS: u32 = EVTCHN_2L_NR_CHANNELS;

/// A sensible per-domain limit: ports 1 to 1023 (port 0 is reserved). The table grows on
/// demand, so a limit costs nothing until ports are used.
pub const DEFAULT_MAX_PORTS: u32 = 1024;

/// Ports one `SCHEDOP_poll` may name (Xen rejects more with `EINVAL`).
pub const MAX_POLL_PORTS: usize = 128;

/// Bits in one word of the pending and mask bitmaps.
pub const BITS_PER_WORD: u32 = 64;

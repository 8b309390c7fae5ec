//! The stress run's protocol, defined once (`stress/PROTOCOL.md` describes it in prose):
//! the `key=value` word grammar of every command line ([`keyvalue`]: the hypervisor's, the
//! boot modules', domain 0's and the workers'), the worker's command line that domain 0
//! writes and the worker reads ([`worker`]), the roles ([`Role`]), the histogram buckets
//! ([`histogram`]), the console records the guests print and the host tool reads
//! ([`record`]) and the console prefixes that say whose line it is ([`console`]: the
//! hypervisor's `(dN) `, and domain 0's `[dM] ` for a console ring it relays). Every format
//! is written and parsed here, and every round trip is tested here.
//!
//! Used by the stress worker (`guest-stress`), domain 0 (`guest-dom0`), the host tool
//! (`stress`) and the hypervisor (its command-line parsers and its console's prefixes). It builds without `std` and
//! without an allocator (the guests have neither); it must never touch hardware or make a
//! hypercall, and it must never decide what a run does or means: it only writes and reads.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod console;
pub mod histogram;
pub mod keyvalue;
pub mod record;
pub mod role;
pub mod worker;

pub use abi::ids::{DomId, EvtchnPort};
pub use role::Role;

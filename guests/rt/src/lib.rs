//! guest-rt: the runtime of our minimal Rust Xen PV64 guest kernels. A guest binary writes
//! `guest_rt::entry!(main)` and gets: the Xen ELF notes and the `_start` entry point
//! ([`entry`](crate#entry-and-shutdown), guest target only), typed hypercalls through the
//! hypercall page ([`hypercall`]), [`print!`]/[`println!`] on the hypervisor console
//! ([`console`]), the start-of-day page and P2M list ([`mod@start_info`]), exception handling
//! ([`traps`]), accesses that may fault ([`probe`]), the free frames past the boot stack
//! ([`frames`]), the shared info page
//! ([`shared_info`]) and the address layout ([`layout`]); system time ([`time`]), event delivery ([`events`]), event channels
//! ([`evtchn`]), the one-shot timer ([`timer`]), ballooning ([`balloon`]), grant tables ([`grants`]), secondary vCPUs ([`smp`]), the console ring ([`ring`]) and, for domain
//! 0, the control interface ([`control`]); with the `heap` feature, a global allocator
//! (`heap`), the store client ([`xs`]) and, with `blk`, the block frontend ([`blkfront`]). Guests link with `guest.ld`: their build script passes `-T` with the
//! path this crate publishes as `DEP_GUEST_RT_LD`.
//!
//! # Entry and shutdown
//! `_start` switches to the runtime's stack and calls `guest_rt_start`, which checks
//! `start_info`, installs the trap table and calls the guest's main with the page. When
//! main returns the domain powers off; a panic prints its message and crashes the domain.
//!
//! Who uses it: guest kernels only, built for `x86_64-unknown-none`. The pure parts
//! (layout arithmetic, result decoding, line buffering, trap tables, start-info checks)
//! also build and test on the host. What it must never do: assume a hypervisor feature
//! beyond Xen's PV64 ABI, or change page tables other than through hypercalls.

#![cfg_attr(not(test), no_std)]

#[cfg(feature = "blk")]
extern crate alloc;

pub mod balloon;
#[cfg(feature = "blk")]
pub mod blkfront;
pub mod console;
pub mod control;
pub mod events;
pub mod evtchn;
pub mod frames;
pub mod grants;
#[cfg(feature = "heap")]
pub mod heap;
pub mod hypercall;
pub mod layout;
pub mod probe;
pub mod ring;
pub mod shared_info;
pub mod smp;
pub mod start_info;
pub mod time;
pub mod timer;
pub mod traps;
#[cfg(feature = "xs")]
pub mod xs;

#[cfg(target_os = "none")]
mod entry;

pub use abi;
pub use abi::start_info::StartInfo;
pub use start_info::start_info;

/// Names the guest's main function: `guest_rt::entry!(main);` with
/// `fn main(start: &'static StartInfo)` (or `-> !`). The runtime calls it once, on the
/// runtime's stack, with the trap table installed; the domain powers off when it returns.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The guest's main function, as the runtime calls it.
        #[unsafe(no_mangle)]
        pub fn guest_main(start: &'static $crate::StartInfo) {
            $main(start)
        }
    };
}

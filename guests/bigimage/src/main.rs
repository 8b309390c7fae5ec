//! A guest whose image is larger than anything the hypervisor maps at once: `tests/bigimage.py`
//! appends to this ELF a loadable segment of many megabytes (a header page, then pages of a
//! known pattern, then bss), and the guest checks, page by page, that the domain builder
//! copied every byte of it where the segment says and zeroed its bss. The QEMU case
//! `pvh-loader-big` boots it from an 80 MiB boot module.
//!
//! The segment is loaded at [`BLOB_PADDR`] (its `p_paddr`, so `VIRT_BASE + BLOB_PADDR`),
//! far above this small image. Page 0 holds `BIGIMAGE`, the page count, the seed of the
//! pattern and the bss size; page p > 0 holds `TAG ^ p`, then the 511 words of an
//! xorshift64 stream from the seed (the same on every page, so that a page copied from the
//! wrong offset or to the wrong place shows). Prints "bigimage: ... ok" and powers off,
//! or names the first wrong page and crashes. Without the segment it says so and crashes.

#![no_std]
#![no_main]

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::shutdown;
use guest_rt::layout::VIRT_BASE;
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

/// Where `tests/bigimage.py` loads the segment, from `VIRT_BASE` (16 MiB: past any image of
/// ours). The script uses the same number.
const BLOB_PADDR: u64 = 16 << 20;
const MAGIC: &[u8; 8] = b"BIGIMAGE";
const TAG: u64 = 0x5eed_0000_0000_0000;
const WORDS: usize = 512;

/// The 511 pattern words of every page after the header.
fn pattern(seed: u64) -> [u64; WORDS - 1] {
    let mut state = seed;
    core::array::from_fn(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    })
}

fn main(start: &'static StartInfo) {
    let base = VIRT_BASE + BLOB_PADDR;
    // The builder puts the P2M list right after the image: the image reaches the header
    // page only if the list starts past it.
    let image_end = start.mfn_list;
    // SAFETY: the initial mapping covers the whole image (and more); the header is read
    // only if the image holds it.
    let header = (base + 4096 <= image_end).then(|| unsafe { &*(base as *const [u64; 4]) });
    let Some(header) = header.filter(|h| h[0] == u64::from_le_bytes(*MAGIC)) else {
        println!("bigimage: no segment at {base:#x}: not built by tests/bigimage.py");
        shutdown(ShutdownReason::Crash)
    };
    let (pages, seed, bss) = (header[1], header[2], header[3]);
    let words = pattern(seed);
    for page in 1..pages {
        // SAFETY: the segment's pages lie in the initial mapping (the builder loaded them).
        let data = unsafe { &*((base + page * 4096) as *const [u64; WORDS]) };
        if data[0] != TAG ^ page || data[1..] != words[..] {
            let word = (1..WORDS).find(|&i| data[i] != words[i - 1]).unwrap_or(0);
            println!("bigimage: page {page} of {pages} is wrong (word {word}: {:#x})", data[word]);
            shutdown(ShutdownReason::Crash)
        }
    }
    let bss_start = base + pages * 4096;
    // SAFETY: the bss follows the file bytes in the same segment, mapped likewise.
    let zeros = unsafe { core::slice::from_raw_parts(bss_start as *const u64, (bss / 8) as usize) };
    if let Some(at) = zeros.iter().position(|&w| w != 0) {
        println!("bigimage: bss word {at} is not zero");
        shutdown(ShutdownReason::Crash)
    }
    println!("bigimage: {pages} pages ({} MiB) of the image checked and {} KiB of bss zero: ok", (pages * 4096) >> 20, bss >> 10);
}

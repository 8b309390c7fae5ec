//! guest-grants: two domains of this one image share pages through Xen's grant tables and
//! check every step from both sides. Command line: `role=granter peer=<id>` or
//! `role=mapper peer=<id>` (the other domain's id; boot modules get ids in order from 1).
//!
//! The granter sets up its table, grants pages to the mapper (read-write, read-only, for
//! copies) and a mailbox page through which the two hand over, phase by phase:
//! 1. version 1: the mapper maps (read-write, read-only, twice, a read-only grant
//!    writable: refused), reads and writes; the granter sees `GTF_reading`/`GTF_writing`
//!    and the mapper's writes; the mapper unmaps (twice: refused), copies (grant to own
//!    page, own page to grant, across the page end: refused, into a read-only grant:
//!    refused); the granter sees the flags clear and the copied bytes, and ends access;
//! 2. the mapper measures map+unmap and 4 KiB copy round trips (medians, printed);
//! 3. version 2: the granter switches while the mailbox (a reserved entry) stays mapped,
//!    maps its status frame; the mapper maps a full-page grant (status bits seen by the
//!    granter) and copies from a sub-page grant (outside its window: refused; mapping it:
//!    refused); back to version 1 is refused while the status frame is mapped (EBUSY,
//!    XSA-255) and done once it is not;
//! 4. death: the mapper maps a granter's page and grants the granter a page of its own,
//!    which the granter maps; the granter then powers off holding its mapping. The mapper
//!    sees its grant released by the granter's death, still reads and writes the dead
//!    granter's page (freed only once it unmaps), unmaps, and ends.
//!
//! Any failure panics (the domain crashes and the run fails). Console: "grants: <phase>
//! ok" lines, the figures, then "grants: granter done" / "grants: mapper all ok".

#![no_std]
#![no_main]

mod pages;

use guest_rt::abi::grant_table::{
    GntSt, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabOp, GnttabUnmapGrantRef, GrantRef, GNTCOPY_DEST_GREF,
    GNTCOPY_SOURCE_GREF, GNTMAP_HOST_MAP, GNTMAP_READONLY, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING,
};
use guest_rt::abi::errno::Errno;
use guest_rt::abi::ids::{DomId, PAGE_SIZE};
use guest_rt::abi::mmu::UVMF_INVLPG;
use guest_rt::grants;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::layout::{kernel_rw_pte, PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER};
use guest_rt::time::Clock;
use guest_rt::{println, StartInfo};

use pages::{byte, fill, holds, own, own_mfn, pattern, read, window, write};

guest_rt::entry!(main);

// Windows.
const W_TABLE: usize = 0;
const W_STATUS: usize = 1;
const W_MAILBOX: usize = 2;
const W_A: usize = 3;
const W_B: usize = 4;
const W_C: usize = 5;
const W_GIFT: usize = 6;

// The granter's pages and the grants of them.
const MAILBOX: usize = 0;
const DATA_RW: usize = 1;
const DATA_RO: usize = 2;
const COPY_SRC: usize = 3;
const COPY_DST: usize = 4;
/// The mailbox stays in a reserved entry, which survives version changes while mapped.
const MAILBOX_REF: GrantRef = 7;
const DATA_RW_REF: GrantRef = 9;
const DATA_RO_REF: GrantRef = 10;
const COPY_SRC_REF: GrantRef = 11;
const COPY_DST_REF: GrantRef = 12;
const SUB_PAGE_REF: GrantRef = 13;
const SEED_RW: u64 = 0xA;
const SEED_RW_WRITTEN: u64 = 0xA1;
const SEED_RO: u64 = 0xB;
const SEED_COPY: u64 = 0xC;

// The mapper's pages.
const LOCAL: usize = 0;
const LOCAL_SRC: usize = 1;
const GIFT: usize = 2;
const GIFT_REF: GrantRef = 8;
const SEED_LOCAL: u64 = 0xD;
const SEED_GIFT: u64 = 0xE;

// Mailbox words.
const GRANTER: usize = 0;
const MAPPER: usize = 1;

/// Rounds each figure is the median of.
const ROUNDS: usize = 201;
/// How long either side waits for the other.
const PATIENCE_NS: u64 = 60_000_000_000;
/// How long the mapper keeps its mapping of the dead granter's page before checking and
/// unmapping it (guest time).
const HOLD_AFTER_DEATH_NS: u64 = 200_000_000;

fn main(start: &'static StartInfo) {
    let line = core::str::from_utf8(start.cmd_line()).unwrap_or("");
    let word = |key: &str| line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key));
    let peer = word("peer=").and_then(|p| p.parse::<u16>().ok()).map(DomId).expect("peer=<domain id> on the command line");
    let clock = Clock::new().expect("time info");
    match word("role=") {
        Some("granter") => granter(peer, clock),
        Some("mapper") => mapper(peer, clock),
        _ => panic!("role=granter or role=mapper on the command line"),
    }
}

// ---- Helpers ---------------------------------------------------------------------------

fn map(dom: DomId, gref: GrantRef, va: u64, flags: u32) -> Result<u32, GntSt> {
    let mut op = GnttabMapGrantRef { host_addr: va, flags, ref_: gref, dom, ..Default::default() };
    // SAFETY: `va` is a window the program uses for nothing else.
    unsafe { grants::grant_table_op(GnttabOp::MapGrantRef, &mut op, 1) }.expect("map_grant_ref call");
    grants::status(op.status).map(|()| op.handle)
}

fn unmap(handle: u32, va: u64) -> Result<(), GntSt> {
    let mut op = GnttabUnmapGrantRef { host_addr: va, handle, ..Default::default() };
    // SAFETY: the program no longer uses what is mapped at `va`.
    unsafe { grants::grant_table_op(GnttabOp::UnmapGrantRef, &mut op, 1) }.expect("unmap_grant_ref call");
    grants::status(op.status)
}

fn copy(source: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: u16) -> Result<(), GntSt> {
    let mut op = GnttabCopy { source, dest, len, flags, ..Default::default() };
    // SAFETY: `op` is ours; the pages it names are ours or granted for this.
    unsafe { grants::grant_table_op(GnttabOp::Copy, &mut op, 1) }.expect("copy call");
    grants::status(op.status)
}

fn gref_ptr(dom: DomId, gref: GrantRef, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr { u: gref.into(), domid: dom, offset, _pad: 0 }
}

fn frame_ptr(page: usize, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr { u: own_mfn(page).0, domid: DomId::SELF, offset, _pad: 0 }
}

#[track_caller]
fn expect<T: core::fmt::Debug>(got: Result<T, GntSt>, want: Result<(), GntSt>, what: &str) -> Option<T> {
    match (got, want) {
        (Ok(value), Ok(())) => Some(value),
        (Err(status), Err(wanted)) if status == wanted => None,
        (got, want) => panic!("grants: {what}: got {got:?}, want {want:?}"),
    }
}

/// Maps machine frame `mfn` at window `w`, writable or not, for the program's own use.
fn map_own(w: usize, mfn: u64, writable: bool) {
    let pte = if writable { kernel_rw_pte(mfn << 12) } else { (mfn << 12) & PTE_ADDRESS_MASK | PTE_PRESENT | PTE_USER };
    // SAFETY: windows are used for nothing else.
    unsafe { hypercall::update_va_mapping(window(w), pte, UVMF_INVLPG) }.expect("map a frame of our own");
}

fn unmap_own(w: usize) {
    // SAFETY: as `map_own`.
    unsafe { hypercall::update_va_mapping(window(w), 0, UVMF_INVLPG) }.expect("unmap a window");
}

/// Sets up a one-frame table and maps it at [`W_TABLE`]; its address.
fn own_table() -> u64 {
    let mut frames = [0u64; 1];
    grants::setup_table(&mut frames).expect("setup_table");
    map_own(W_TABLE, frames[0], true);
    window(W_TABLE)
}

/// Waits until word `index` of the mailbox at `mailbox` holds `value`.
#[track_caller]
fn wait_for(clock: Clock, mailbox: u64, index: usize, value: u64) {
    let start = clock.now_ns();
    while read(mailbox, index) != value {
        assert!(clock.now_ns() - start < PATIENCE_NS, "grants: waited too long for word {index} = {value} (now {})", read(mailbox, index));
        hypercall::sched_yield().expect("yield");
    }
}

fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The flags of v1 entry `gref` of the table at `table`.
fn flags_v1(table: u64, gref: GrantRef) -> u16 {
    // SAFETY: `table` maps this domain's grant table.
    unsafe { grants::flags(table, gref, 8) }
}

// ---- The granter ------------------------------------------------------------------------

fn granter(peer: DomId, clock: Clock) {
    let table = own_table();
    let (frames, max) = grants::query_size().expect("query_size");
    assert_eq!((frames, max), (1, 32), "query_size");
    let mailbox = own(MAILBOX);
    fill(own(DATA_RW), SEED_RW);
    fill(own(DATA_RO), SEED_RO);
    fill(own(COPY_SRC), SEED_COPY);
    let grant = |gref, page, flags| {
        // SAFETY: `table` maps our table frame writable.
        unsafe { grants::write_v1(table, gref, peer, own_mfn(page).0, flags) }
    };
    grant(MAILBOX_REF, MAILBOX, GTF_PERMIT_ACCESS);
    grant(DATA_RW_REF, DATA_RW, GTF_PERMIT_ACCESS);
    grant(DATA_RO_REF, DATA_RO, GTF_PERMIT_ACCESS | GTF_READONLY);
    grant(COPY_SRC_REF, COPY_SRC, GTF_PERMIT_ACCESS | GTF_READONLY);
    grant(COPY_DST_REF, COPY_DST, GTF_PERMIT_ACCESS);
    write(mailbox, GRANTER, 1);
    println!("grants: granter: granted 5 pages to domain {}", peer.0);

    // Phase 1: what the mapper's maps and copies did, as the granter sees it.
    wait_for(clock, mailbox, MAPPER, 2);
    assert_eq!(flags_v1(table, DATA_RW_REF), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING, "a read-write mapping");
    assert_eq!(flags_v1(table, DATA_RO_REF), GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING, "a read-only mapping");
    assert!(holds(own(DATA_RW), SEED_RW_WRITTEN, 0..8), "the mapper's writes");
    assert!(holds(own(DATA_RW), SEED_RW, 8..512), "the rest of the page");
    write(mailbox, GRANTER, 3);
    wait_for(clock, mailbox, MAPPER, 4);
    for gref in DATA_RW_REF..=COPY_DST_REF {
        assert_eq!(flags_v1(table, gref) & (GTF_READING | GTF_WRITING), 0, "entry {gref} still marked in use");
    }
    for index in 1000..PAGE_SIZE as usize {
        let want = pattern(SEED_LOCAL, index / 8).to_le_bytes()[index % 8];
        assert_eq!(byte(own(COPY_DST), index), want, "byte {index} copied into our page");
    }
    assert!((0..1000).all(|i| byte(own(COPY_DST), i) == 0), "bytes before the copy untouched");
    for gref in DATA_RW_REF..=COPY_DST_REF {
        // SAFETY: `table` maps our table.
        assert!(unsafe { grants::end_access_v1(table, gref) }, "end access to entry {gref}");
    }
    println!("grants: granter: v1 maps, unmaps and copies seen from the granting side ok");
    write(mailbox, GRANTER, 5);

    // Phase 3: version 2.
    wait_for(clock, mailbox, MAPPER, 6);
    assert_eq!(grants::set_version(2), Ok(2), "to version 2 with a reserved entry mapped");
    let mut status = [0u64; 1];
    grants::get_status_frames(&mut status).expect("get_status_frames");
    map_own(W_STATUS, status[0], false);
    let status_of = |gref: GrantRef| u16::from_le_bytes([byte(window(W_STATUS), gref as usize * 2), byte(window(W_STATUS), gref as usize * 2 + 1)]);
    assert_eq!(status_of(MAILBOX_REF), GTF_READING | GTF_WRITING, "the mailbox's mapping kept across the change");
    // SAFETY: `table` maps our table.
    unsafe {
        grants::write_v2(table, DATA_RW_REF, peer, own_mfn(DATA_RW).0, GTF_PERMIT_ACCESS);
        grants::write_v2_sub_page(table, SUB_PAGE_REF, peer, own_mfn(COPY_SRC).0, 256, 512, GTF_PERMIT_ACCESS | GTF_READONLY);
    }
    write(mailbox, GRANTER, 7);
    wait_for(clock, mailbox, MAPPER, 8);
    assert_eq!(status_of(DATA_RW_REF), GTF_READING | GTF_WRITING, "v2 status of a read-write mapping");
    write(mailbox, GRANTER, 9);
    wait_for(clock, mailbox, MAPPER, 10);
    assert_eq!(status_of(DATA_RW_REF), 0, "v2 status after the unmap");
    assert_eq!(status_of(SUB_PAGE_REF), 0, "v2 status after the copies");
    // Back to version 1: refused while our status frame is mapped (XSA-255), then done.
    assert_eq!(grants::set_version(1), Err((HypercallError::Xen(Errno::Ebusy), 2)), "v1 with the status frame mapped");
    unmap_own(W_STATUS);
    assert_eq!(grants::set_version(1), Ok(1), "v1 once the status frame is unmapped");
    assert_eq!(flags_v1(table, MAILBOX_REF), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING, "the mailbox back in v1");
    println!("grants: granter: v2 status frames and version changes ok");

    // Phase 4: die with a page of ours mapped by the mapper and a page of its mapped here.
    fill(own(DATA_RW), SEED_RW);
    grant(DATA_RW_REF, DATA_RW, GTF_PERMIT_ACCESS);
    write(mailbox, GRANTER, 11);
    wait_for(clock, mailbox, MAPPER, 12);
    expect(map(peer, read(mailbox, 2) as GrantRef, window(W_GIFT), GNTMAP_HOST_MAP), Ok(()), "map the mapper's page");
    assert!(holds(window(W_GIFT), SEED_GIFT, 0..512), "the mapper's page");
    println!("grants: granter: powering off with a grant mapped and a page of ours mapped by domain {}", peer.0);
    write(mailbox, GRANTER, 13);
    println!("grants: granter done");
}

// ---- The mapper -------------------------------------------------------------------------

fn mapper(peer: DomId, clock: Clock) {
    let table = own_table();
    let mailbox = window(W_MAILBOX);
    let start = clock.now_ns();
    let mailbox_handle = loop {
        match map(peer, MAILBOX_REF, mailbox, GNTMAP_HOST_MAP) {
            Ok(handle) => break handle,
            // Not granted yet.
            Err(GntSt::GeneralError) => {
                assert!(clock.now_ns() - start < PATIENCE_NS, "grants: the granter never granted its mailbox");
                hypercall::sched_yield().expect("yield");
            }
            Err(status) => panic!("grants: map the mailbox: {status:?}"),
        }
    };
    wait_for(clock, mailbox, GRANTER, 1);

    // Phase 1: maps.
    let (a, b, c) = (window(W_A), window(W_B), window(W_C));
    let rw = expect(map(peer, DATA_RW_REF, a, GNTMAP_HOST_MAP), Ok(()), "map read-write").unwrap();
    assert!(holds(a, SEED_RW, 0..512), "the granted page through the mapping");
    fill_words(a, SEED_RW_WRITTEN, 0..8);
    let ro = expect(map(peer, DATA_RO_REF, b, GNTMAP_HOST_MAP | GNTMAP_READONLY), Ok(()), "map read-only").unwrap();
    assert!(holds(b, SEED_RO, 0..512), "the read-only page");
    expect(map(peer, DATA_RO_REF, c, GNTMAP_HOST_MAP), Err(GntSt::GeneralError), "map a read-only grant writable");
    let again = expect(map(peer, DATA_RW_REF, c, GNTMAP_HOST_MAP | GNTMAP_READONLY), Ok(()), "map a grant twice").unwrap();
    assert!(holds(c, SEED_RW_WRITTEN, 0..8), "the second mapping sees the first one's writes");
    expect(map(peer, 4096, window(W_GIFT), GNTMAP_HOST_MAP), Err(GntSt::BadGntref), "map a reference beyond the table");
    expect(map(peer, DATA_RW_REF, window(W_GIFT), 0), Err(GntSt::BadGntref), "map with neither host nor device");
    expect(map(DomId(0x7FF0), DATA_RW_REF, window(W_GIFT), GNTMAP_HOST_MAP), Err(GntSt::BadDomain), "map from DOMID_SELF");
    println!("grants: mapper: v1 maps ok");
    write(mailbox, MAPPER, 2);
    wait_for(clock, mailbox, GRANTER, 3);

    // Unmaps and copies.
    expect(unmap(rw, a), Ok(()), "unmap read-write");
    expect(unmap(ro, b), Ok(()), "unmap read-only");
    expect(unmap(again, c), Ok(()), "unmap the second mapping");
    expect(unmap(rw, a), Err(GntSt::BadHandle), "unmap a handle twice");
    expect(unmap(u32::MAX, a), Err(GntSt::BadHandle), "unmap a handle never given");
    fill(own(LOCAL_SRC), SEED_LOCAL);
    expect(copy(gref_ptr(peer, COPY_SRC_REF, 100), frame_ptr(LOCAL, 200), 500, GNTCOPY_SOURCE_GREF), Ok(()), "copy from a grant");
    for i in 0..500 {
        let want = pattern(SEED_COPY, (100 + i) / 8).to_le_bytes()[(100 + i) % 8];
        assert_eq!(byte(own(LOCAL), 200 + i), want, "copied byte {i}");
    }
    expect(copy(frame_ptr(LOCAL_SRC, 1000), gref_ptr(peer, COPY_DST_REF, 1000), 3096, GNTCOPY_DEST_GREF), Ok(()), "copy into a grant");
    expect(copy(frame_ptr(LOCAL_SRC, 0), gref_ptr(peer, COPY_DST_REF, 1), 4096, GNTCOPY_DEST_GREF), Err(GntSt::BadCopyArg), "copy across the page end");
    expect(copy(frame_ptr(LOCAL_SRC, 0), gref_ptr(peer, COPY_SRC_REF, 0), 16, GNTCOPY_DEST_GREF), Err(GntSt::GeneralError), "copy into a read-only grant");
    let other = GnttabCopyPtr { domid: peer, ..frame_ptr(LOCAL_SRC, 0) };
    expect(copy(other, frame_ptr(LOCAL, 0), 16, 0), Err(GntSt::PermissionDenied), "copy from another domain's frame by number");
    println!("grants: mapper: v1 unmaps and copies ok");
    write(mailbox, MAPPER, 4);
    wait_for(clock, mailbox, GRANTER, 5);

    // Phase 2: the figures, through the mailbox grant.
    let mut samples = [0u64; ROUNDS];
    for sample in samples.iter_mut() {
        let t0 = clock.now_ns();
        let handle = expect(map(peer, MAILBOX_REF, a, GNTMAP_HOST_MAP), Ok(()), "map (timed)").unwrap();
        expect(unmap(handle, a), Ok(()), "unmap (timed)");
        *sample = clock.now_ns() - t0;
    }
    let map_unmap = median(&mut samples);
    for sample in samples.iter_mut() {
        let t0 = clock.now_ns();
        expect(copy(gref_ptr(peer, MAILBOX_REF, 0), frame_ptr(LOCAL, 0), PAGE_SIZE as u16, GNTCOPY_SOURCE_GREF), Ok(()), "copy (timed)");
        *sample = clock.now_ns() - t0;
    }
    let copy_4k = median(&mut samples);
    println!("grants: mapper: map+unmap round trip median {map_unmap} ns, 4096-byte copy median {copy_4k} ns ({ROUNDS} rounds)");
    write(mailbox, MAPPER, 6);
    wait_for(clock, mailbox, GRANTER, 7);

    // Phase 3: version 2.
    let rw = expect(map(peer, DATA_RW_REF, a, GNTMAP_HOST_MAP), Ok(()), "map a v2 grant").unwrap();
    assert!(holds(a, SEED_RW_WRITTEN, 0..8), "the v2 grant's page");
    write(mailbox, MAPPER, 8);
    wait_for(clock, mailbox, GRANTER, 9);
    expect(unmap(rw, a), Ok(()), "unmap a v2 grant");
    expect(copy(gref_ptr(peer, SUB_PAGE_REF, 300), frame_ptr(LOCAL, 0), 100, GNTCOPY_SOURCE_GREF), Ok(()), "copy inside a sub-page grant");
    assert!((0..100).all(|i| byte(own(LOCAL), i) == pattern(SEED_COPY, (300 + i) / 8).to_le_bytes()[(300 + i) % 8]), "sub-page bytes");
    expect(copy(gref_ptr(peer, SUB_PAGE_REF, 700), frame_ptr(LOCAL, 0), 100, GNTCOPY_SOURCE_GREF), Err(GntSt::GeneralError), "copy beyond a sub-page grant");
    expect(map(peer, SUB_PAGE_REF, a, GNTMAP_HOST_MAP | GNTMAP_READONLY), Err(GntSt::GeneralError), "map a sub-page grant");
    println!("grants: mapper: v2 maps and sub-page copies ok");
    write(mailbox, MAPPER, 10);
    wait_for(clock, mailbox, GRANTER, 11);

    // Phase 4: hold a mapping of the granter's page, grant it one of ours, let it die.
    let held = expect(map(peer, DATA_RW_REF, a, GNTMAP_HOST_MAP), Ok(()), "map before the granter dies").unwrap();
    fill(own(GIFT), SEED_GIFT);
    // SAFETY: `table` maps our table frame writable.
    unsafe { grants::write_v1(table, GIFT_REF, peer, own_mfn(GIFT).0, GTF_PERMIT_ACCESS) };
    write(mailbox, 2, u64::from(GIFT_REF));
    write(mailbox, MAPPER, 12);
    // The granter maps our page, says so and dies; its mailbox stays readable through our
    // mapping even then.
    wait_for(clock, mailbox, GRANTER, 13);
    let start = clock.now_ns();
    // Its death releases its mapping of our page...
    while flags_v1(table, GIFT_REF) & (GTF_READING | GTF_WRITING) != 0 {
        assert!(clock.now_ns() - start < PATIENCE_NS, "grants: the dead granter's mapping of our page was never released");
        hypercall::sched_yield().expect("yield");
    }
    // ...and its page stays valid for us until we unmap it. Held a while longer first, so
    // that the granter's teardown, which released that mapping a step before it looks for
    // other domains' references to its frames, finds ours and waits for it (the
    // `teardown.waited_for_grants` the QEMU case checks) rather than racing our unmap.
    let released = clock.now_ns();
    while clock.now_ns() - released < HOLD_AFTER_DEATH_NS {
        hypercall::sched_yield().expect("yield");
    }
    assert!(holds(a, SEED_RW, 0..512), "the dead granter's page through our mapping");
    fill(a, SEED_GIFT);
    assert!(holds(a, SEED_GIFT, 0..512), "writes to the dead granter's page");
    expect(unmap(held, a), Ok(()), "unmap the dead granter's page");
    expect(unmap(mailbox_handle, mailbox), Ok(()), "unmap the dead granter's mailbox");
    // SAFETY: `table` maps our table.
    assert!(unsafe { grants::end_access_v1(table, GIFT_REF) }, "end access to our page");
    println!("grants: mapper: the granter died holding our page (released) and granting its own (still mapped, then unmapped) ok");
    println!("grants: mapper all ok");
}

/// Fills words `words` of the page at `va` with the pattern of `seed`.
fn fill_words(va: u64, seed: u64, words: core::ops::Range<usize>) {
    for index in words {
        write(va, index, pattern(seed, index));
    }
}

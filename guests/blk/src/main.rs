//! guest-blk: a block frontend (guest-rt's `blkfront`) on the VBDs domain 0's blkback
//! serves it, connected through the store as Linux's blkfront.
//!
//! `mode=good`: on its first VBD (the test script's pattern: sector `s` starts with `s`
//! as 4 little-endian bytes, then byte `j` is `(s * 7 + j) & 0xff`) it reads a page and
//! checks it, reads with 11 segments of partial pages, reads the last sector, is refused a
//! read past the end, writes 16 sectors of its own pattern (one straddling request of
//! sub-page segments), flushes, reads them back into other pages, keeps 16 reads in flight
//! at once (answers matched by id in whatever order), and on a read-only VBD (a second
//! one, when it has it) is refused a write. Then the ring round trip: an empty request
//! (a flush without data) answered, median of 201 ("blk: ring round trip median=<n> ns"),
//! blocking on the port for the answer, then polling the ring ("... polled median=").
//! Prints "blk: all checks passed"; any failure panics (the domain crashes).
//!
//! `mode=hostile`: requests that must each be answered with an error while the
//! connection stays up (unknown and unoffered operations, grant references it never
//! granted, granted to another domain, granted read-only for a read, sectors past the
//! end and at 2^64 - 1, too many segments, segments out of order or past their page, a
//! write to a read-only VBD), a good read still served, then garbage ring indices (a
//! producer 1000 ahead) that must get it cut off: the backend leaves `Connected`
//! ("blk: cut off, backend state <n>"). With `base=<sector>` its first VBD is a slice of
//! domain 0's virtio disk from that sector (the good read is checked against its pattern).
//!
//! `mode=vbench base=<sector> [bench=1] [crash=1]`: its first VBD is a slice of domain
//! 0's virtio disk from sector `base` (the `io-vbd-virtio` case's pattern checked, a read
//! past the slice refused, with `bench=1` sequential 64 KiB reads timed, then its writes
//! flushed; see [`vbench`]).
//!
//! Every mode offers persistent grants (`feature-persistent`: its data pages are granted
//! once and reused) unless its line says `persistent=0`.
//!
//! `mode=die`: fills the ring with reads, notifies, and powers off at once, with every
//! request in flight (domain 0 must release everything of it).
//!
//! `mode=flood seconds=<s>`: keeps its first VBD's ring full of 4 KiB reads (of every
//! other page, so that no two join into one disk request) for `s`
//! seconds (a frontend hogging a shared disk), then takes every answer and powers off;
//! the longest wait between two answers must stay under [`FLOOD_MAX_WAIT_MS`] (several
//! flooders on slices of one virtio disk each get a share of it), else it crashes.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::{DomId, Pfn};
use guest_rt::blkfront::{Options, 
    backend_state, wait_backend, Blkfront, XenbusState, GrantTable, Request, Segment, OP_FLUSH_DISKCACHE, OP_READ, OP_WRITE, RSP_EOPNOTSUPP,
    RSP_ERROR, RSP_OKAY,
};
use guest_rt::events::Events;
use guest_rt::frames::{Frame, FreeFrames};
use guest_rt::time::Clock;
use guest_rt::xs::Xs;
use guest_rt::{evtchn, hypercall, println, StartInfo};

guest_rt::entry!(main);

/// Data pages granted to the backend.
const PAGES: usize = 24;

fn check(name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
    if ok {
        println!("blk: check {name}: ok");
    } else {
        panic!("blk: check {name}: FAILED {detail}");
    }
}

/// The test script's byte `j` of sector `s`.
fn pattern(s: u64, j: usize) -> u8 {
    if j < 4 {
        (s as u32).to_le_bytes()[j]
    } else {
        ((s * 7 + j as u64) & 0xff) as u8
    }
}

/// This guest's own pattern for the sectors it writes.
fn mine(s: u64, j: usize) -> u8 {
    ((s * 13 + j as u64 * 3 + 0x5a) & 0xff) as u8
}

struct Page {
    frame: Frame,
    gref: u32,
}

impl Page {
    fn bytes(&self) -> &'static mut [u8; 4096] {
        // SAFETY: a free frame of ours, mapped at its address, used only as this buffer
        // (the backend writes it through grant copies, between our requests).
        unsafe { &mut *(self.frame.va() as *mut [u8; 4096]) }
    }
}

fn seg(page: &Page, first: u8, last: u8) -> Segment {
    Segment { gref: page.gref, first_sect: first, last_sect: last }
}

fn main(start: &'static StartInfo) {
    let line = core::str::from_utf8(start.cmd_line()).unwrap_or("");
    let word = |key: &str| line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key));
    let mut frames = FreeFrames::new(start).expect("free frames");
    guest_rt::heap::init(&mut frames, 8);
    let events = Events::init().expect("events");
    let mut xs = Xs::open(events).expect("a store ring in start_info");
    events.enable();
    // Two table frames (1016 grants) for the benchmark's 512 pages and the rest.
    let table_frames = [frames.take().expect("a frame for the grant table"), frames.take().expect("a frame for the grant table")];
    let mut table = GrantTable::map_frames(&table_frames).expect("grant table");
    let mut list = [0u8; 256];
    let n = xs.directory(0, "device/vbd", &mut list).expect("device/vbd");
    let devids: Vec<u32> = list[..n].split(|&b| b == 0).filter_map(|w| core::str::from_utf8(w).ok()?.parse().ok()).collect();
    check("vbds listed", !devids.is_empty(), format_args!("{:?}", &list[..n]));
    let mut disks = Vec::new();
    for &devid in &devids {
        // Its data pages are granted once and reused for every request: persistent grants,
        // unless the line says `persistent=0` (the backend then copies every request). The
        // benchmark asks for a two-page ring (64 requests in flight).
        let options = Options {
            persistent: word("persistent=") != Some("0"),
            max_ring_order: if word("bench=") == Some("1") { 1 } else { 0 },
        };
        let d = Blkfront::connect(&mut xs, events, &mut frames, &mut table, devid, options).expect("connect");
        println!("blk: vbd {devid} connected: {} sectors, {}", d.sectors, if d.read_only { "ro" } else { "rw" });
        disks.push(d);
    }
    let backend = disks[0].backend_id;
    let pages: Vec<Page> = (0..PAGES)
        .map(|_| {
            let frame = frames.take().expect("a data page");
            Page { frame, gref: table.grant(backend, frame.mfn.0, false).expect("grant") }
        })
        .collect();
    match word("mode=") {
        Some("vbench") => {
            let base = word("base=").and_then(|b| b.parse().ok()).expect("base=<sector>");
            let mut past = frames
                .past_slack(start)
                .filter_map(|pfn| Some(Frame { pfn: Pfn(pfn), mfn: guest_rt::start_info::pfn_to_mfn(Pfn(pfn))? }));
            // The pattern check and the writes use the first 24; the benchmark all.
            let count = if word("bench=") == Some("1") { VBENCH_PAGES } else { VBENCH_MAPPED };
            let extra: Vec<Page> = (0..count)
                .map(|i| {
                    let frame = if i < VBENCH_MAPPED { frames.take() } else { past.next() }.expect("a benchmark page");
                    Page { frame, gref: table.grant(backend, frame.mfn.0, false).expect("grant") }
                })
                .collect();
            vbench(&mut xs, &mut disks[0], &pages, &extra, base, word("bench=") == Some("1"), word("crash=") == Some("1"))
        }
        Some("hostile") => hostile(&mut xs, &mut disks, &pages, &mut table, word("base=").and_then(|b| b.parse().ok())),
        Some("die") => die(&mut disks[0], &pages),
        Some("flood") => flood(&mut disks[0], &pages, word("seconds=").and_then(|s| s.parse().ok()).unwrap_or(10)),
        _ => good(&mut disks, &pages),
    }
}

fn expect_status(what: &str, got: i16, want: i16) {
    check(what, got == want, format_args!("status {got}, want {want}"));
}

fn good(disks: &mut [Blkfront], pages: &[Page]) {
    let d = &mut disks[0];
    let st = d.io(OP_READ, 0, &[seg(&pages[0], 0, 7)]).expect("read");
    let ok = (0..8u64).all(|s| (0..512).all(|j| pages[0].bytes()[s as usize * 512 + j] == pattern(s, j)));
    check("read a page", st == RSP_OKAY && ok, format_args!("status {st}"));

    // 11 segments of partial pages: sectors 100.. in pages 1..=11, sectors 1..=5 of each.
    let segs: Vec<Segment> = (1..=11).map(|i| seg(&pages[i], 1, 5)).collect();
    let st = d.io(OP_READ, 100, &segs).expect("read");
    let ok = (0..11).all(|i| (0..5).all(|k| {
        let s = 100 + (i * 5 + k) as u64;
        let off = (1 + k) * 512;
        (0..512).all(|j| pages[1 + i].bytes()[off + j] == pattern(s, j))
    }));
    check("read 11 partial segments", st == RSP_OKAY && ok, format_args!("status {st}"));

    let last = d.sectors - 1;
    let st = d.io(OP_READ, last, &[seg(&pages[0], 0, 0)]).expect("read");
    check("read the last sector", st == RSP_OKAY && (0..512).all(|j| pages[0].bytes()[j] == pattern(last, j)), format_args!("status {st}"));
    let st = d.io(OP_READ, last, &[seg(&pages[0], 0, 1)]).expect("read");
    expect_status("a read past the end refused", st, RSP_ERROR);

    // Writes: sectors 1000..1016, two requests, the second of sub-page segments.
    let base = 1000u64;
    for s in 0..16u64 {
        let (p, o) = ((s / 8) as usize, (s % 8) as usize * 512);
        for j in 0..512 {
            pages[12 + p].bytes()[o + j] = mine(base + s, j);
        }
    }
    let st = d.io(OP_WRITE, base, &[seg(&pages[12], 0, 7)]).expect("write");
    expect_status("write a page", st, RSP_OKAY);
    let st = d.io(OP_WRITE, base + 8, &[seg(&pages[13], 0, 2), seg(&pages[13], 3, 7)]).expect("write");
    expect_status("write sub-page segments", st, RSP_OKAY);
    let st = d.io(OP_FLUSH_DISKCACHE, 0, &[]).expect("flush");
    expect_status("flush", st, RSP_OKAY);
    for p in &pages[14..16] {
        p.bytes().fill(0);
    }
    let st = d.io(OP_READ, base, &[seg(&pages[14], 0, 7), seg(&pages[15], 0, 7)]).expect("read");
    let ok = (0..16u64).all(|s| (0..512).all(|j| pages[14 + (s / 8) as usize].bytes()[(s % 8) as usize * 512 + j] == mine(base + s, j)));
    check("own writes read back", st == RSP_OKAY && ok, format_args!("status {st}"));

    // 16 reads in flight at once, each a page at sector 8 * k.
    let mut ids = [0u64; 16];
    for (k, id) in ids.iter_mut().enumerate() {
        pages[k].bytes().fill(0);
        *id = d.front.submit(OP_READ, d.devid as u16, 8 * k as u64, &[seg(&pages[k], 0, 7)]).expect("submit");
    }
    d.kick();
    let mut done = 0;
    while done < ids.len() {
        let c = d.wait().expect("completion");
        let k = ids.iter().position(|&id| id == c.id).expect("a known id");
        let ok = (0..8u64).all(|s| (0..512).all(|j| pages[k].bytes()[s as usize * 512 + j] == pattern(8 * k as u64 + s, j)));
        check("a read in flight", c.status == RSP_OKAY && ok, format_args!("slot {k} status {}", c.status));
        done += 1;
    }
    if let Some(ro) = disks.iter_mut().find(|d| d.read_only) {
        let st = ro.io(OP_WRITE, 0, &[seg(&pages[0], 0, 0)]).expect("write");
        expect_status("a write to a read-only vbd refused", st, RSP_ERROR);
        let st = ro.io(OP_READ, 0, &[seg(&pages[0], 0, 0)]).expect("read");
        expect_status("a read of a read-only vbd", st, RSP_OKAY);
    }
    let d = &mut disks[0];
    // The ring round trip: empty requests.
    let clock = Clock::new().expect("clock");
    let mut times = [0u64; 201];
    for t in times.iter_mut() {
        let start = clock.now_ns();
        let st = d.io(OP_FLUSH_DISKCACHE, 0, &[]).expect("flush");
        *t = clock.now_ns() - start;
        assert_eq!(st, RSP_OKAY, "an empty request failed");
    }
    times.sort_unstable();
    println!("blk: ring round trip median={} ns over {} (p90 {} ns)", times[times.len() / 2], times.len(), times[times.len() * 9 / 10]);
    // The same, the frontend polling the ring (yielding its CPU) instead of blocking on
    // the port: what the backend's side costs without the frontend's wake-up.
    for t in times.iter_mut() {
        let start = clock.now_ns();
        let id = d.front.submit(OP_FLUSH_DISKCACHE, d.devid as u16, 0, &[]).expect("submit");
        d.kick();
        let c = loop {
            if let Some(c) = d.front.complete().expect("ring") {
                break c;
            }
            let _ = hypercall::sched_yield();
        };
        *t = clock.now_ns() - start;
        assert!(c.id == id && c.status == RSP_OKAY, "an empty request failed");
    }
    times.sort_unstable();
    println!("blk: ring round trip polled median={} ns over {} (p90 {} ns)", times[times.len() / 2], times.len(), times[times.len() * 9 / 10]);
    println!("blk: all checks passed");
}

/// The benchmark's 64 KiB reads in flight at most (two ring requests each: a two-page
/// ring's 64 slots, or a one-page ring's 32 when the backend offers no larger one), so that
/// the backend finds the next one waiting whenever the disk finishes one, without a round
/// trip through this guest (as Linux's blkfront keeps its ring full).
const VBENCH_DEPTH: usize = 32;
/// Pages of the benchmark's reads in flight.
const VBENCH_PAGES: usize = 16 * VBENCH_DEPTH;
/// Of them, the ones the guest maps and checks (the rest are only granted: frames past
/// the boot slack, which the reads fill unseen).
const VBENCH_MAPPED: usize = 48;
/// Passes over the VBD the benchmark makes (as domain 0's direct one).
const VBENCH_RUNS: usize = 5;
/// Where `mode=vbench` writes (sectors from its VBD's start) and how many.
const VWRITE_AT: u64 = 1024;
const VWRITE_SECTORS: u64 = 64;

/// Byte `j` of (absolute) sector `s` of the virtio disk as the test script fills it.
fn vpattern(s: u64, j: usize) -> u8 {
    if j < 8 {
        s.to_le_bytes()[j]
    } else {
        (s as u32).wrapping_mul(31).wrapping_add(j as u32) as u8
    }
}

/// Byte `j` of (absolute) sector `s` as `mode=vbench` writes it (domain 0's `written`).
fn vwritten(s: u64, j: usize) -> u8 {
    if j < 8 {
        (!s).to_le_bytes()[j]
    } else {
        (s as u32).wrapping_mul(17).wrapping_add(j as u32 * 3).wrapping_add(0x5a) as u8
    }
}

/// A 64 KiB read (16 pages from `pages[first..]`) at `sector` as two requests of 11 and 5
/// segments; their ids.
fn read64k(d: &mut Blkfront, pages: &[Page], first: usize, sector: u64) -> [u64; 2] {
    let segs: Vec<Segment> = pages[first..first + 16].iter().map(|p| seg(p, 0, 7)).collect();
    let a = d.front.submit(OP_READ, d.devid as u16, sector, &segs[..11]).expect("submit");
    let b = d.front.submit(OP_READ, d.devid as u16, sector + 88, &segs[11..]).expect("submit");
    [a, b]
}

/// `mode=vbench base=<sector> [bench=1]`: on a VBD that is a slice of domain 0's virtio
/// disk from sector `base`: the test script's pattern read and checked (64 KiB as 11 + 5
/// segments, and the last sector), a read past the slice's end refused; with `bench=1`
/// sequential 64 KiB reads over the whole VBD, [`VBENCH_DEPTH`] in flight (each two requests),
/// median MB/s of five passes written to `data/vbench` for domain 0; then 64 sectors
/// from its sector 1024 written, read back and flushed, and with `crash=1` the domain
/// crashes at once: the test script finds them in the image after QEMU exits.
fn vbench(xs: &mut Xs, d: &mut Blkfront, small: &[Page], pages: &[Page], base: u64, bench: bool, crash: bool) {
    let ids = read64k(d, pages, 0, 0);
    d.kick();
    for _ in 0..2 {
        let c = d.wait().expect("completion");
        check("a 64 KiB read", ids.contains(&c.id) && c.status == RSP_OKAY, format_args!("status {}", c.status));
    }
    let ok = (0..128u64).all(|s| (0..512).all(|j| pages[(s / 8) as usize].bytes()[(s % 8) as usize * 512 + j] == vpattern(base + s, j)));
    check("the virtio pattern", ok, format_args!("data"));
    let last = d.sectors - 1;
    let st = d.io(OP_READ, last, &[seg(&small[0], 0, 0)]).expect("read");
    check("the slice's last sector", st == RSP_OKAY && (0..512).all(|j| small[0].bytes()[j] == vpattern(base + last, j)), format_args!("status {st}"));
    let st = d.io(OP_READ, last, &[seg(&small[0], 0, 1)]).expect("read");
    expect_status("a read past the slice refused", st, RSP_ERROR);
    if bench {
        let clock = Clock::new().expect("clock");
        let depth = (d.front.capacity() / 2).min(VBENCH_DEPTH);
        let reads = d.sectors / 128;
        let mut rates = [0u64; VBENCH_RUNS];
        // Where the guest's time goes: answers, and how often (and how long) it blocked
        // for the next one.
        let (mut answers, mut blocks, mut blocked_ns) = (0u64, 0u64, 0u64);
        let all = clock.now_ns();
        for rate in rates.iter_mut() {
            let begin = clock.now_ns();
            let (mut next, mut done) = (0u64, 0u64);
            // `depth` 64 KiB reads in flight: page set k is pages 16k..16k + 16.
            let mut sets = [[0u64; 2]; VBENCH_DEPTH];
            let mut left = [0u8; VBENCH_DEPTH];
            while done < reads {
                for (k, set) in sets.iter_mut().enumerate().take(depth) {
                    if left[k] == 0 && next < reads {
                        *set = read64k(d, pages, 16 * k, next * 128);
                        left[k] = 2;
                        next += 1;
                    }
                }
                d.kick();
                let mut c = match d.front.complete().expect("a good answer") {
                    Some(c) => c,
                    None => {
                        let at = clock.now_ns();
                        // Woken once half of what is in flight is answered, not per answer:
                        // each event costs both sides a hypercall and the other CPU an IPI.
                        let c = d.wait_batch(d.front.in_flight() as u32 / 2).expect("completion");
                        blocks += 1;
                        blocked_ns += clock.now_ns().saturating_sub(at);
                        c
                    }
                };
                // Every answer there is, then the freed reads submitted again together (one
                // pass over the sets and one publish per batch, not per answer).
                loop {
                    answers += 1;
                    assert_eq!(c.status, RSP_OKAY, "a benchmark read failed");
                    let k = sets.iter().position(|s| s.contains(&c.id)).expect("a known id");
                    left[k] -= 1;
                    if left[k] == 0 {
                        done += 1;
                    }
                    match d.front.complete().expect("a good answer") {
                        Some(next) => c = next,
                        None => break,
                    }
                }
            }
            let ns = clock.now_ns().saturating_sub(begin).max(1);
            *rate = reads * 65536 * 100_000 / ns;
        }
        rates.sort_unstable();
        let median = rates[VBENCH_RUNS / 2];
        println!(
            "blk: vbench seq64k bytes={} runs={VBENCH_RUNS} median_mbps={}.{:02} min_mbps={}.{:02} max_mbps={}.{:02}",
            reads * 65536,
            median / 100,
            median % 100,
            rates[0] / 100,
            rates[0] % 100,
            rates[VBENCH_RUNS - 1] / 100,
            rates[VBENCH_RUNS - 1] % 100
        );
        println!(
            "blk: vbench {answers} answers, blocked {blocks} times for {} of {} ms",
            blocked_ns / 1_000_000,
            clock.now_ns().saturating_sub(all) / 1_000_000
        );
        xs.write(0, "data/vbench", alloc::format!("{median}").as_bytes()).expect("data/vbench");
    }
    for s in 0..VWRITE_SECTORS {
        for j in 0..512 {
            pages[(s / 8) as usize].bytes()[(s % 8) as usize * 512 + j] = vwritten(base + VWRITE_AT + s, j);
        }
    }
    let segs: Vec<Segment> = pages[..8].iter().map(|p| seg(p, 0, 7)).collect();
    expect_status("write 64 sectors", d.io(OP_WRITE, VWRITE_AT, &segs).expect("write"), RSP_OKAY);
    let back: Vec<Segment> = pages[16..24].iter().map(|p| seg(p, 0, 7)).collect();
    expect_status("read them back", d.io(OP_READ, VWRITE_AT, &back).expect("read"), RSP_OKAY);
    let ok = (0..VWRITE_SECTORS).all(|s| (0..512).all(|j| pages[16 + (s / 8) as usize].bytes()[(s % 8) as usize * 512 + j] == vwritten(base + VWRITE_AT + s, j)));
    check("own writes read back", ok, format_args!("data"));
    expect_status("flush", d.io(OP_FLUSH_DISKCACHE, 0, &[]).expect("flush"), RSP_OKAY);
    if crash {
        println!("blk: vbench written and flushed, crashing now");
        hypercall::shutdown(ShutdownReason::Crash);
    }
    println!("blk: vbench written and flushed");
}

/// Sends `req` raw and returns the status of its answer.
fn raw(d: &mut Blkfront, req: &Request) -> i16 {
    d.front.submit_raw(req).expect("submit raw");
    d.kick();
    loop {
        if let Some(rsp) = d.front.complete_raw().expect("ring") {
            assert_eq!(rsp.id, req.id, "an answer to another request");
            return rsp.status;
        }
        let _ = hypercall::sched_yield();
    }
}

/// `base`: its first VBD is a slice of domain 0's virtio disk from that sector (its
/// pattern is the virtio disk's), else a disk module with the test script's pattern.
fn hostile(xs: &mut Xs, disks: &mut [Blkfront], pages: &[Page], table: &mut GrantTable, base: Option<u64>) {
    let me = evtchn::own_domid().expect("own id");
    let d = &mut disks[0];
    let handle = d.devid as u16;
    let read = |id: u64, sector: u64, segs: &[Segment]| {
        let mut r = Request { operation: OP_READ, nr_segments: segs.len() as u8, handle, id, sector_number: sector, ..Default::default() };
        r.seg[..segs.len()].copy_from_slice(segs);
        r
    };
    let good = seg(&pages[0], 0, 7);
    let mut r = read(1, 0, &[good]);
    r.operation = 99;
    expect_status("unknown operation", raw(d, &r), RSP_EOPNOTSUPP);
    for op in [2u8, 5, 6] {
        r.operation = op;
        expect_status("barrier/discard/indirect not offered", raw(d, &r), RSP_EOPNOTSUPP);
    }
    expect_status("a reference never granted", raw(d, &read(2, 0, &[Segment { gref: 400, first_sect: 0, last_sect: 7 }])), RSP_ERROR);
    expect_status("a reference past the table", raw(d, &read(3, 0, &[Segment { gref: 0x00ff_ffff, first_sect: 0, last_sect: 7 }])), RSP_ERROR);
    // Granted to another domain.
    table.set(300, DomId(me.0.wrapping_add(7)), pages[1].frame.mfn.0, false);
    expect_status("a reference granted to another domain", raw(d, &read(4, 0, &[Segment { gref: 300, first_sect: 0, last_sect: 7 }])), RSP_ERROR);
    // Granted read-only, used for a read (the backend writes into it).
    table.set(301, d.backend_id, pages[2].frame.mfn.0, true);
    pages[2].bytes().fill(0xee);
    expect_status("a read into a read-only grant", raw(d, &read(5, 0, &[Segment { gref: 301, first_sect: 0, last_sect: 7 }])), RSP_ERROR);
    check("the read-only page untouched", pages[2].bytes().iter().all(|&b| b == 0xee), format_args!("written"));
    let sectors = d.sectors;
    expect_status("past the end", raw(d, &read(7, sectors - 7, &[good])), RSP_ERROR);
    expect_status("at 2^64 - 1", raw(d, &read(8, u64::MAX, &[good])), RSP_ERROR);
    let mut r = read(9, 0, &[good; 11]);
    r.nr_segments = 12;
    expect_status("12 segments", raw(d, &r), RSP_ERROR);
    r.nr_segments = 255;
    expect_status("255 segments", raw(d, &r), RSP_ERROR);
    expect_status("sectors out of order", raw(d, &read(10, 0, &[Segment { gref: pages[0].gref, first_sect: 5, last_sect: 2 }])), RSP_ERROR);
    expect_status("past the page", raw(d, &read(11, 0, &[Segment { gref: pages[0].gref, first_sect: 0, last_sect: 8 }])), RSP_ERROR);
    let mut w = read(12, 0, &[good]);
    w.operation = OP_WRITE;
    if d.read_only {
        expect_status("a write to a read-only vbd", raw(d, &w), RSP_ERROR);
    }
    let st = raw(d, &read(13, 0, &[good]));
    let data = match base {
        Some(base) => (0..512).all(|j| pages[0].bytes()[j] == vpattern(base, j)),
        None => pages[0].bytes()[..4] == [0, 0, 0, 0],
    };
    check("still served", st == RSP_OKAY && data, format_args!("status {st}"));
    // Garbage indices: a producer 1000 past what the backend consumed.
    let ring = d.ring_va as *mut u32;
    // SAFETY: the ring page is ours (shared with the backend); req_prod is its first word.
    unsafe { ring.write_volatile(ring.read_volatile().wrapping_add(1000)) };
    let _ = evtchn::send(d.port);
    let backend = d.backend.clone();
    let left = wait_backend(xs, &backend, XenbusState::Closing);
    let state = backend_state(xs, &backend).unwrap_or(0);
    println!("blk: cut off, backend state {state} ({left:?})");
    check("cut off", state >= 5, format_args!("backend state {state}"));
    hypercall::shutdown(ShutdownReason::Poweroff);
}

fn die(d: &mut Blkfront, pages: &[Page]) -> ! {
    let mut sent = 0;
    for k in 0..32u64 {
        let p = &pages[k as usize % pages.len()];
        if d.front.submit(OP_READ, d.devid as u16, 8 * k, &[seg(p, 0, 7)]).is_ok() {
            sent += 1;
        }
    }
    d.kick();
    println!("blk: dying with {sent} requests in flight");
    hypercall::shutdown(ShutdownReason::Poweroff);
}

/// The longest a `mode=flood` frontend may wait for its next answer.
const FLOOD_MAX_WAIT_MS: u64 = 3000;

/// `mode=flood seconds=<s>`: see the module documentation.
fn flood(d: &mut Blkfront, pages: &[Page], seconds: u64) {
    let clock = Clock::new().expect("clock");
    let begin = clock.now_ns();
    let end = begin + seconds * 1_000_000_000;
    // Every other page: reads that never join into one disk request.
    let places = (d.sectors / 16).clamp(1, 64);
    let (mut next, mut outstanding, mut answers, mut longest, mut last) = (0u64, 0u32, 0u64, 0u64, begin);
    loop {
        if clock.now_ns() < end {
            while d.front.submit(OP_READ, d.devid as u16, (next % places) * 16, &[seg(&pages[next as usize % pages.len()], 0, 7)]).is_ok() {
                next += 1;
                outstanding += 1;
            }
        } else if outstanding == 0 {
            break;
        }
        d.kick();
        let c = d.wait().expect("completion");
        assert_eq!(c.status, RSP_OKAY, "a flood read failed");
        let now = clock.now_ns();
        longest = longest.max(now.saturating_sub(last));
        last = now;
        outstanding -= 1;
        answers += 1;
    }
    let ms = longest / 1_000_000;
    println!("blk: flood {answers} answers in {} ms, longest wait {ms} ms", clock.now_ns().saturating_sub(begin) / 1_000_000);
    check("the flood got its share of the disk", ms < FLOOD_MAX_WAIT_MS, format_args!("waited {ms} ms for an answer"));
}

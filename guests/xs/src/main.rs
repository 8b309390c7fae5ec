//! guest-xs: a store client (domain 0's xenstored, over the ring `start_info` names).
//!
//! `mode=good peer=next|prev|none`: writes its own keys and reads them back, lists them, is
//! refused its peer's keys (the domain created after or before it) and domain 0's
//! (`EACCES`), reads its store port where libxl writes it, is refused serial input
//! (`CONSOLEIO_read`: `EPERM`), gets a watch's initial event and the event of a write beneath it, commits a
//! transaction and sees a conflicting one fail with `EAGAIN`, then times reads of a small
//! key (the store round trip: "xs: read round trip median=<n> ns over <k>") and prints
//! "xs: all checks passed". Any failure panics (the domain crashes).
//!
//! `mode=garbage`: one request, then the garbage indices at once (so that the good
//! domains do their checks with this one already cut off).
//!
//! `mode=amplify`: a hostile client that makes one request fire thousands of watch events
//! (nodes under `data/a`, every watch it may have on `data`, then `rm data/a`); domain 0
//! must answer it and drop the events past the domain's queue, then cut it off for the
//! garbage indices that follow ("xs: amplify: rm answered Ok(())").
//!
//! `mode=unread`: a hostile client that fills its request ring with requests whose replies
//! are 4 KiB each and leaves the replies unread for a while (domain 0 must stop reading its
//! requests before their output costs more than its share), then reads them and is cut off
//! for garbage indices.
//!
//! `mode=flood`: a hostile client. It floods the store (nodes, watches, transactions and a
//! value past their quotas) and must get the quota errors (`ENOSPC` or `ENOMEM` for
//! nodes, `E2BIG` for watches, `ENOSPC` for transactions and the value), then
//! writes garbage into its request ring (a producer index far past the consumer) and must
//! see domain 0 cut it off ("xs: cut off error=<n>", the page's `error` field); it powers
//! off either way, printing what it saw. It also writes 64 KiB of lines into its console
//! ring, which domain 0's per-domain rate limit must cut down. A good domain prints three
//! lines through its console ring ("xs: ring line <i> of d<id>"), which domain 0 relays;
//! with `input=1` it then waits for a line in its console's input ring (serial input that
//! domain 0 routed to it) and prints it ("xs: console input: <line>"). It ends with a line
//! it writes into the ring without a newline or a notification just before it powers off
//! ("xs: last words of d<id>, ..."), which domain 0 finds only by draining the ring after
//! the domain's end.

#![no_std]
#![no_main]

use core::fmt::Write as _;

use guest_rt::abi::errno::Errno;
use guest_rt::abi::ids::DomId;
use guest_rt::hypercall::HypercallError;
use guest_rt::events::Events;
use guest_rt::frames::FreeFrames;
use guest_rt::time::Clock;
use guest_rt::xs::{Xs, XsFail};
use guest_rt::{evtchn, hypercall, println, StartInfo};
use guest_rt::xs::wire::{XsError, ERROR_OFFSET, REQ_PROD_OFFSET};

guest_rt::entry!(main);

fn check(name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
    if ok {
        println!("xs: check {name}: ok");
    } else {
        panic!("xs: check {name}: FAILED {detail}");
    }
}

fn main(start: &'static StartInfo) {
    let line = core::str::from_utf8(start.cmd_line()).unwrap_or("");
    let word = |key: &str| line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key));
    let mut frames = FreeFrames::new(start).expect("free frames");
    guest_rt::heap::init(&mut frames, 8);
    let events = Events::init().expect("events");
    let mut xs = Xs::open(events).expect("a store ring in start_info");
    events.enable();
    let me = evtchn::own_domid().expect("own domain id");
    match word("mode=") {
        Some("flood") => {
            flood(&mut xs);
            garbage(&mut xs);
        }
        Some("garbage") => {
            xs.write(0, "data/before", b"served").expect("served before the attack");
            garbage(&mut xs);
        }
        Some("unread") => {
            unread(&mut xs);
            garbage(&mut xs);
        }
        Some("amplify") => {
            amplify(&mut xs);
            garbage(&mut xs);
        }
        _ => {
            let peer = match word("peer=") {
                Some("prev") => Some(DomId(me.0 - 1)),
                Some("none") => None,
                _ => Some(DomId(me.0 + 1)),
            };
            good(&mut xs, events, me, peer, word("input=") == Some("1"));
        }
    }
}

fn text(bytes: &[u8]) -> &str {
    core::str::from_utf8(bytes).unwrap_or("<bytes>")
}

fn good(xs: &mut Xs, events: Events, me: DomId, peer: Option<DomId>, input: bool) {
    let mut buf = [0u8; 512];
    let mut value = arrayvec_like::Line::new();
    let _ = write!(value, "hello from {}", me.0);
    let wrote = xs.write(0, "data/greeting", value.as_bytes());
    let n = xs.read(0, "data/greeting", &mut buf);
    check("own key", wrote.is_ok() && n.map(|n| &buf[..n]) == Ok(value.as_bytes()), format_args!("{wrote:?} {:?}", n.map(|n| text(&buf[..n]))));
    let name = xs.read(0, "name", &mut buf).map(|n| text(&buf[..n]).len());
    check("home readable", name.is_ok(), format_args!("{name:?}"));
    xs.write(0, "data/list/a", b"1").expect("write a");
    xs.write(0, "data/list/b", b"2").expect("write b");
    let dir = xs.directory(0, "data/list", &mut buf);
    let listed = dir.map(|n| &buf[..n] == b"a\0b\0");
    check("directory", listed == Ok(true), format_args!("{dir:?}"));
    if let Some(peer) = peer {
        let mut path = arrayvec_like::Line::new();
        let _ = write!(path, "/local/domain/{}/name", peer.0);
        let theirs = xs.read(0, path.as_str(), &mut buf);
        check("peer refused", theirs == Err(XsFail::Store(XsError::Eacces)), format_args!("reading {}: {theirs:?}", path.as_str()));
        let mut path2 = arrayvec_like::Line::new();
        let _ = write!(path2, "/local/domain/{}/data/mine", peer.0);
        let write_theirs = xs.write(0, path2.as_str(), b"x");
        check("peer write refused", write_theirs == Err(XsFail::Store(XsError::Eacces)), format_args!("{write_theirs:?}"));
    } else {
        println!("xs: check peer refused: skipped (no peer: peer=none)");
    }
    let dom0 = xs.write(0, "/tool/evil", b"x");
    check("domain 0's refused", dom0 == Err(XsFail::Store(XsError::Eacces)), format_args!("{dom0:?}"));
    let mut port = [0u8; 16];
    let store_port = xs.read(0, "store/port", &mut port).map(|n| text(&port[..n]).parse::<u32>().ok());
    check("store/port as libxl writes it", store_port == Ok(Some(xs.port().0)), format_args!("{store_port:?}"));
    let read = hypercall::console_read(&mut buf);
    check("serial input refused", read == Err(HypercallError::Xen(Errno::Eperm)), format_args!("{read:?}"));
    let bad = xs.read(0, "data/../name", &mut buf);
    check("bad path refused", bad == Err(XsFail::Store(XsError::Einval)), format_args!("{bad:?}"));

    // Watches: the initial event, then one for a write beneath.
    xs.watch("data/watched", "tok").expect("watch");
    let n = xs.next_event(&mut buf).expect("initial event");
    check("watch initial event", &buf[..n] == b"data/watched\0tok\0", format_args!("{:?}", text(&buf[..n])));
    xs.write(0, "data/watched/child", b"v").expect("write under the watch");
    let n = xs.next_event(&mut buf).expect("event");
    check("watch event", &buf[..n] == b"data/watched/child\0tok\0", format_args!("{:?}", text(&buf[..n])));
    xs.unwatch("data/watched", "tok").expect("unwatch");

    // Transactions.
    let tx = xs.transaction_start().expect("transaction");
    xs.write(tx, "data/tx/a", b"A").expect("write in tx");
    xs.write(tx, "data/tx/b", b"B").expect("write in tx");
    let outside = xs.read(0, "data/tx/a", &mut buf);
    let committed = xs.transaction_end(tx, true);
    let after = xs.read(0, "data/tx/b", &mut buf).map(|n| buf[..n] == *b"B");
    check("transaction", outside == Err(XsFail::Store(XsError::Enoent)) && committed.is_ok() && after == Ok(true), format_args!("{outside:?} {committed:?} {after:?}"));
    let tx = xs.transaction_start().expect("transaction");
    xs.read(tx, "data/tx/a", &mut buf).expect("read in tx");
    xs.write(tx, "data/tx/c", b"C").expect("write in tx");
    xs.write(0, "data/tx/a", b"changed").expect("write outside");
    let conflict = xs.transaction_end(tx, true);
    check("transaction conflict", conflict == Err(XsFail::Store(XsError::Eagain)), format_args!("{conflict:?}"));

    // The round trip: reads of a small key.
    let clock = Clock::new().expect("clock");
    let mut times = [0u64; 201];
    for t in times.iter_mut() {
        let start = clock.now_ns();
        xs.read(0, "data/greeting", &mut buf).expect("read");
        *t = clock.now_ns() - start;
    }
    times.sort_unstable();
    println!("xs: read round trip median={} ns over {} (p90 {} ns)", times[times.len() / 2], times.len(), times[times.len() * 9 / 10]);
    // Console lines through the ring, which domain 0 relays.
    let ring = guest_rt::ring::ConsoleRing::get().expect("a console ring");
    for i in 0..3 {
        let mut l = arrayvec_like::Line::new();
        let _ = writeln!(l, "xs: ring line {i} of d{}", me.0);
        ring.write(l.as_bytes());
    }
    if input {
        // A line typed on the serial port, routed here by domain 0 (Ctrl-A three times).
        events.set_handler(ring.port(), ignore).expect("a handler for the console port");
        println!("xs: waiting for console input");
        let mut line = arrayvec_like::Line::new();
        let mut byte = [0u8; 1];
        loop {
            events.wait_until(|| ring.input_pending()).expect("block");
            if ring.read(&mut byte) == 1 {
                if byte[0] == b'\n' || byte[0] == b'\r' {
                    break;
                }
                let _ = line.write_char(byte[0] as char);
            }
        }
        println!("xs: console input: {}", line.as_str());
    }
    println!("xs: all checks passed");
    // Last words into the ring, with no newline and no notification, right before the
    // domain powers off: domain 0 must drain the ring after the domain's end to find them.
    let mut l = arrayvec_like::Line::new();
    let _ = write!(l, "xs: last words of d{}, unnotified, no newline", me.0);
    ring.write_quiet(l.as_bytes());
}

fn ignore(_: guest_rt::abi::ids::EvtchnPort) {}

fn flood(xs: &mut Xs) {
    let mut path = arrayvec_like::Line::new();
    let mut nodes = 0;
    let node_error = loop {
        path.clear();
        let _ = write!(path, "data/n{nodes}");
        match xs.write(0, path.as_str(), b"x") {
            Ok(()) => nodes += 1,
            Err(e) => break e,
        }
        if nodes > 5000 {
            break XsFail::Protocol;
        }
    };
    println!("xs: flood: nodes refused after {nodes} with {node_error:?}");
    // Room again for the counted quotas (the memory quota held first).
    xs.rm(0, "data").expect("rm of its own data");
    let mut watches = 0;
    let watch_error = loop {
        path.clear();
        let _ = write!(path, "w{watches}");
        match xs.watch("data", path.as_str()) {
            Ok(()) => watches += 1,
            Err(e) => break e,
        }
        if watches > 1000 {
            break XsFail::Protocol;
        }
    };
    println!("xs: flood: watches refused after {watches} with {watch_error:?} ({} events dropped here)", xs.dropped_events);
    let mut txs = 0;
    let tx_error = loop {
        match xs.transaction_start() {
            Ok(_) => txs += 1,
            Err(e) => break e,
        }
        if txs > 100 {
            break XsFail::Protocol;
        }
    };
    println!("xs: flood: transactions refused after {txs} with {tx_error:?}");
    let big = [b'v'; 3000];
    let value_error = xs.write(0, "data/n0", &big);
    println!("xs: flood: a 3000-byte value: {value_error:?}");
    let refused = matches!(node_error, XsFail::Store(XsError::Enospc | XsError::Enomem))
        && watch_error == XsFail::Store(XsError::E2big)
        && tx_error == XsFail::Store(XsError::Enospc)
        && value_error == Err(XsFail::Store(XsError::Enospc));
    println!("xs: flood: {}", if refused { "every quota held" } else { "a quota did not hold" });
    // The console too: 64 KiB of lines through the ring (domain 0's rate limit holds).
    let ring = guest_rt::ring::ConsoleRing::get().expect("a console ring");
    let mut written = 0;
    for _ in 0..128 {
        written += ring.write(&[b'f'; 511]);
        written += ring.write(b"\n");
    }
    println!("xs: flood: {written} bytes into the console ring");
}

/// Watch amplification (as XSA-115's): nodes beneath `data/a` up to half the memory quota,
/// as many watches on `data` as the quotas allow, then one `rm` of `data/a`: every watch
/// fires for every node removed, thousands of events from one request for domain 0 to
/// build and queue. Domain 0 must answer the `rm`, drop the events beyond its per-domain
/// event queue (this domain reads none of them) and serve on.
fn amplify(xs: &mut Xs) {
    let mut path = arrayvec_like::Line::new();
    let mut nodes = 0;
    // About half the memory quota (24 KiB in domain 0's store check; a node costs ~155
    // bytes), the rest for the watches.
    while nodes < 80 {
        path.clear();
        let _ = write!(path, "data/a/n{nodes}");
        if xs.write(0, path.as_str(), b"x").is_err() {
            break;
        }
        nodes += 1;
    }
    let mut watches = 0;
    let watch_error = loop {
        path.clear();
        let _ = write!(path, "t{watches}");
        match xs.watch("data", path.as_str()) {
            Ok(()) => watches += 1,
            Err(e) => break e,
        }
        if watches > 1000 {
            break XsFail::Protocol;
        }
    };
    println!("xs: amplify: {nodes} nodes, {watches} watches (then {watch_error:?}); rm of data/a fires {} events", nodes * watches);
    let removed = xs.rm(0, "data/a");
    println!("xs: amplify: rm answered {removed:?} ({} events dropped here)", xs.dropped_events);
}

/// Replies left unread (as XSA-326's): two children with 2000-byte names under `data/d`,
/// then as many `directory data/d` requests as the request ring holds (44), each answered
/// with 4 KiB, and none of the replies read for a while: domain 0 must stop reading this
/// domain's requests before its queued output costs more than the domain's share. Then it
/// reads every reply (so that it is served again) and counts them.
fn unread(xs: &mut Xs) {
    use guest_rt::xs::wire::{encode, ring_slot, MsgType, REQ_OFFSET, RSP_CONS_OFFSET, RSP_PROD_OFFSET};
    let mut name = [0u8; 7 + 2000];
    name[..7].copy_from_slice(b"data/d/");
    for fill in [b'a', b'b'] {
        name[7..].fill(fill);
        xs.write(0, core::str::from_utf8(&name).expect("ascii"), b"").expect("a child with a long name");
    }
    let page = xs.page();
    let word = |offset: usize| (page + offset as u64) as *mut u32;
    let request = encode(MsgType::Directory, 0x7700, 0, b"data/d\0");
    // SAFETY: the ring page is mapped writable for the guest's life; Xs has no request in
    // flight (its last call returned), so the ring's indices are this function's now.
    let prod = unsafe { word(REQ_PROD_OFFSET).read_volatile() };
    let count = wire_ring_room() / request.len() as u32;
    for k in 0..count {
        for (i, &b) in request.iter().enumerate() {
            let at = REQ_OFFSET + ring_slot(prod.wrapping_add(k * request.len() as u32 + i as u32));
            // SAFETY: `at` is inside the request ring of the mapped page.
            unsafe { ((page + at as u64) as *mut u8).write_volatile(b) };
        }
    }
    // SAFETY: as above.
    unsafe { word(REQ_PROD_OFFSET).write_volatile(prod.wrapping_add(count * request.len() as u32)) };
    let _ = evtchn::send(xs.port());
    // Leave the replies unread while domain 0 serves (it is woken by the send and its tick).
    for _ in 0..20_000 {
        let _ = hypercall::sched_yield();
    }
    // SAFETY: as above; the server writes rsp_prod.
    let waiting = unsafe { word(RSP_PROD_OFFSET).read_volatile().wrapping_sub(word(RSP_CONS_OFFSET).read_volatile()) };
    println!("xs: unread: {count} directory requests of 4 KiB replies sent, {waiting} bytes in the reply ring unread");
    // Now read them all (discarding), so that domain 0 serves this domain again.
    let want = u64::from(count) * (16 + 2 * 2001) as u64;
    let mut got = 0u64;
    for _ in 0..200_000 {
        // SAFETY: as above.
        let (cons, prod) = unsafe { (word(RSP_CONS_OFFSET).read_volatile(), word(RSP_PROD_OFFSET).read_volatile()) };
        if prod != cons {
            got += u64::from(prod.wrapping_sub(cons));
            // SAFETY: as above.
            unsafe { word(RSP_CONS_OFFSET).write_volatile(prod) };
            let _ = evtchn::send(xs.port());
        }
        if got >= want {
            break;
        }
        let _ = hypercall::sched_yield();
    }
    println!("xs: unread: then read {got} of {want} reply bytes");
}

/// The request ring's size.
fn wire_ring_room() -> u32 {
    guest_rt::xs::wire::RING_SIZE
}

/// Garbage indices: a producer far past the consumer; domain 0 must cut this domain off.
fn garbage(xs: &mut Xs) {
    let page = xs.page();
    let at = |offset: usize| (page + offset as u64) as *mut u32;
    // SAFETY: the ring page is mapped writable for the guest's life; this is the attack.
    unsafe { at(REQ_PROD_OFFSET).write_volatile(at(REQ_PROD_OFFSET).read_volatile().wrapping_add(50_000)) };
    let _ = evtchn::send(xs.port());
    let mut error = 0;
    for _ in 0..200_000 {
        // SAFETY: as above; the server writes the field.
        error = unsafe { at(ERROR_OFFSET).read_volatile() };
        if error != 0 {
            break;
        }
        let _ = hypercall::sched_yield();
    }
    println!("xs: cut off error={error}");
}

/// A small line buffer (no allocation needed).
mod arrayvec_like {
    pub struct Line {
        buf: [u8; 96],
        len: usize,
    }

    impl Line {
        pub const fn new() -> Self {
            Line { buf: [0; 96], len: 0 }
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
        }
        pub fn as_bytes(&self) -> &[u8] {
            &self.buf[..self.len]
        }
        pub fn clear(&mut self) {
            self.len = 0;
        }
    }

    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
}

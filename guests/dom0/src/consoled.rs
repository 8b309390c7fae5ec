//! Consoles through domain 0 (xenconsoled's part): one [`Relay`] per domain whose console
//! ring (`struct xencons_interface`, io/console.h) domain 0 has taken drains its output
//! ring into lines and hands each complete line, with the domain's id, to its caller, which
//! prints it on domain 0's own console after the domain's tag (`[dN] `,
//! `protocol::console::RelayTag`, which the stress tool reads back); and puts input bytes
//! into its input ring ([`Relay::feed`]).
//! Which domain serial input is for is the [`Focus`]: [`SWITCH_KEY`] (Ctrl-A) three times
//! in a row moves it on.
//!
//! Rate limit: as the hypervisor limits a domain's console (its `pv::console`), a domain
//! may print a burst of [`BURST_BYTES`] and then [`BYTES_PER_SECOND`], each line costing
//! [`LINE_COST`] more than its bytes; lines over the limit are dropped and counted, and a
//! line says how many once the domain may print again. Domain 0 prints every relayed line
//! through its own console, which the hypervisor does not limit (domain 0 is privileged),
//! so this limit is what stops one domain from drowning the others.
//!
//! The guest writes the indices: output more than a ring ahead of the consumer is not read
//! (reported once, as the hypervisor reports it), nothing is read or written outside the
//! rings, and each drain reads at most one ring. Called by domain 0's console service;
//! pure (the page is reached through [`ConsolePage`]), tested on the host.

use arrayvec::ArrayVec;
use protocol::console::Suppressed;
use guest_rt::abi::console::{
    pending, room, slot, IN_CONS_OFFSET, IN_PROD_OFFSET, IN_RING_SIZE, OUT_CONS_OFFSET, OUT_PROD_OFFSET, OUT_RING_OFFSET,
    OUT_RING_SIZE,
};

/// Bytes a domain may print in a burst.
pub const BURST_BYTES: u64 = 32 << 10;
/// Bytes per second once the burst is spent.
pub const BYTES_PER_SECOND: u64 = 8 << 10;
/// What a line costs beyond its bytes.
pub const LINE_COST: u64 = 32;
/// Longest line kept; longer ones are split (so that with its `[dN] ` tag a relayed line
/// stays within the hypervisor's console line and is never split again; a stress record
/// fits whole).
pub const LINE_MAX: usize = protocol::console::RELAY_TEXT_MAX;
/// Offset of the input ring in the page.
pub const IN_RING_OFFSET: usize = 0;

/// The key that, typed three times in a row, moves the serial input's focus to the next
/// domain (domain 0, then each served domain in turn): Ctrl-A, as Xen's switch between
/// the hypervisor and domain 0.
pub const SWITCH_KEY: u8 = 0x01;
/// How many [`SWITCH_KEY`]s in a row switch.
pub const SWITCH_PRESSES: u8 = 3;

/// What one input byte means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// For the domain in focus.
    Byte(u8),
    /// Move the focus on.
    Switch,
    /// A switch key, held until the next byte says whether it is a switch.
    Held,
}

/// The serial input's focus keys.
#[derive(Debug, Default)]
pub struct Focus {
    presses: u8,
}

impl Focus {
    /// Reads one byte: three switch keys in a row switch (fewer, followed by another byte,
    /// are dropped: a lone Ctrl-A reaches no domain).
    pub fn key(&mut self, byte: u8) -> Key {
        if byte == SWITCH_KEY {
            self.presses += 1;
            if self.presses == SWITCH_PRESSES {
                self.presses = 0;
                return Key::Switch;
            }
            return Key::Held;
        }
        self.presses = 0;
        Key::Byte(byte)
    }
}

/// A console ring page as domain 0 reaches it (a mapped grant; plain memory in tests).
pub trait ConsolePage {
    fn load_u32(&self, offset: usize) -> u32;
    fn store_u32(&self, offset: usize, value: u32);
    fn load_u8(&self, offset: usize) -> u8;
    fn store_u8(&self, offset: usize, value: u8);
}

/// What one drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Bytes taken from the output ring (the guest may be notified).
    pub bytes: u32,
    /// Lines handed out.
    pub lines: u32,
    /// The indices were more than a ring apart (first time only).
    pub bogus_reported: bool,
}

/// One domain's console as domain 0 relays it.
#[derive(Debug)]
pub struct Relay {
    pub domid: u16,
    line: ArrayVec<u8, LINE_MAX>,
    tokens: u64,
    refilled_at_ns: u64,
    suppressed: u64,
    bogus: bool,
    /// Lines dropped over the rate limit, in all.
    pub dropped_lines: u64,
    /// Input bytes that found the input ring full (the caller counts them).
    pub dropped_input: u64,
}

impl Relay {
    pub fn new(domid: u16, now_ns: u64) -> Relay {
        Relay { domid, line: ArrayVec::new(), tokens: BURST_BYTES, refilled_at_ns: now_ns, suppressed: 0, bogus: false, dropped_lines: 0, dropped_input: 0 }
    }

    fn refill(&mut self, now_ns: u64) {
        let earned = now_ns.saturating_sub(self.refilled_at_ns).saturating_mul(BYTES_PER_SECOND) / 1_000_000_000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST_BYTES);
            self.refilled_at_ns = now_ns;
        }
    }

    /// Ends the current line: hands it to `out` (with the prefix) or drops it over the limit.
    fn emit(&mut self, now_ns: u64, out: &mut dyn FnMut(u16, &str)) -> bool {
        self.refill(now_ns);
        let cost = self.line.len() as u64 + LINE_COST;
        let text = core::str::from_utf8(&self.line).unwrap_or("<invalid>");
        let emitted = if self.tokens < cost {
            self.suppressed += 1;
            self.dropped_lines += 1;
            false
        } else {
            if self.suppressed > 0 {
                let mut note = arrayvec::ArrayString::<80>::new();
                let _ = core::fmt::Write::write_fmt(&mut note, format_args!("{}", Suppressed(self.suppressed)));
                out(self.domid, &note);
                self.suppressed = 0;
            }
            out(self.domid, text);
            self.tokens -= cost;
            true
        };
        self.line.clear();
        emitted
    }

    /// Takes what the output ring holds (at most one ring) into lines, handing each
    /// complete one to `out(domid, text)`; moves `out_cons` past it.
    pub fn drain(&mut self, page: &dyn ConsolePage, now_ns: u64, out: &mut dyn FnMut(u16, &str)) -> Drained {
        let cons = page.load_u32(OUT_CONS_OFFSET);
        let prod = page.load_u32(OUT_PROD_OFFSET);
        let mut drained = Drained::default();
        let Some(waiting) = pending(cons, prod, OUT_RING_SIZE) else {
            drained.bogus_reported = !core::mem::replace(&mut self.bogus, true);
            return drained;
        };
        for i in 0..waiting {
            let byte = page.load_u8(OUT_RING_OFFSET + slot(cons.wrapping_add(i), OUT_RING_SIZE));
            match byte {
                b'\n' => drained.lines += u32::from(self.emit(now_ns, out)),
                b'\r' => {}
                _ => {
                    if self.line.is_full() {
                        drained.lines += u32::from(self.emit(now_ns, out));
                    }
                    self.line.push(if byte.is_ascii_graphic() || byte == b' ' || byte == b'\t' { byte } else { b'.' });
                }
            }
        }
        page.store_u32(OUT_CONS_OFFSET, cons.wrapping_add(waiting));
        drained.bytes = waiting;
        drained
    }

    /// At the domain's end: what is left of its line.
    pub fn flush(&mut self, now_ns: u64, out: &mut dyn FnMut(u16, &str)) {
        if !self.line.is_empty() {
            self.emit(now_ns, out);
        }
    }

    /// Puts `bytes` into the input ring as room allows; returns how many went in (none
    /// when the guest's indices are out of range).
    pub fn feed(&mut self, page: &dyn ConsolePage, bytes: &[u8]) -> usize {
        let cons = page.load_u32(IN_CONS_OFFSET);
        let prod = page.load_u32(IN_PROD_OFFSET);
        let Some(free) = room(cons, prod, IN_RING_SIZE) else { return 0 };
        let n = (free as usize).min(bytes.len());
        for (i, &b) in bytes[..n].iter().enumerate() {
            page.store_u8(IN_RING_OFFSET + slot(prod.wrapping_add(i as u32), IN_RING_SIZE), b);
        }
        page.store_u32(IN_PROD_OFFSET, prod.wrapping_add(n as u32));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    extern crate std;
    use std::string::{String, ToString};
    use std::vec::Vec;

    struct Page(RefCell<Vec<u8>>);

    impl ConsolePage for Page {
        fn load_u32(&self, o: usize) -> u32 {
            let p = self.0.borrow();
            u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
        }
        fn store_u32(&self, o: usize, v: u32) {
            self.0.borrow_mut()[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn load_u8(&self, o: usize) -> u8 {
            self.0.borrow()[o]
        }
        fn store_u8(&self, o: usize, v: u8) {
            self.0.borrow_mut()[o] = v;
        }
    }

    fn page() -> Page {
        Page(RefCell::new(std::vec![0; 4096]))
    }

    /// The guest's side: writes into the output ring.
    fn print(p: &Page, text: &[u8]) {
        let prod = p.load_u32(OUT_PROD_OFFSET);
        for (i, &b) in text.iter().enumerate() {
            p.store_u8(OUT_RING_OFFSET + slot(prod.wrapping_add(i as u32), OUT_RING_SIZE), b);
        }
        p.store_u32(OUT_PROD_OFFSET, prod.wrapping_add(text.len() as u32));
    }

    #[test]
    fn lines_come_out_whole_with_the_domain() {
        let p = page();
        let mut r = Relay::new(3, 0);
        let mut lines: Vec<(u16, String)> = Vec::new();
        print(&p, b"hello\nwor");
        let d = r.drain(&p, 0, &mut |d, t| lines.push((d, t.to_string())));
        assert_eq!((d.bytes, d.lines), (9, 1));
        print(&p, b"ld\x07\r\n");
        r.drain(&p, 0, &mut |d, t| lines.push((d, t.to_string())));
        assert_eq!(lines, [(3, "hello".to_string()), (3, "world.".to_string())]);
        assert_eq!(p.load_u32(OUT_CONS_OFFSET), p.load_u32(OUT_PROD_OFFSET));
    }

    #[test]
    fn a_stress_record_is_relayed_whole() {
        let p = page();
        let mut r = Relay::new(65535, 0);
        let record = "stress: hist domid=7 role=periodic part=0 buckets=".to_string() + &"1:1,".repeat(40);
        let record = &record[..protocol::record::LINE_MAX];
        print(&p, record.as_bytes());
        print(&p, b"\n");
        let mut lines: Vec<String> = Vec::new();
        r.drain(&p, 0, &mut |d, t| lines.push(std::format!("{} {t}", protocol::console::RelayTag(protocol::DomId(d)))));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].len() <= protocol::console::LINE_MAX);
        assert!(lines[0].ends_with(record));
    }

    #[test]
    fn a_flood_is_limited_and_the_suppressed_lines_are_told() {
        let p = page();
        let mut r = Relay::new(1, 0);
        let mut printed = 0u64;
        let mut notes = Vec::new();
        for _ in 0..200 {
            print(&p, &[b'x'; 511]);
            print(&p, b"\n");
            r.drain(&p, 0, &mut |_, t| {
                if t.starts_with('[') {
                    notes.push(t.to_string());
                } else {
                    printed += t.len() as u64 + LINE_COST;
                }
            });
        }
        assert!(printed <= BURST_BYTES, "{printed} bytes within the burst");
        assert!(r.dropped_lines > 0);
        // A second later, 8 KiB more may go, the suppressed lines told first.
        print(&p, b"after\n");
        r.drain(&p, 1_000_000_000, &mut |_, t| notes.push(t.to_string()));
        assert!(notes[0].contains("lines suppressed"), "{notes:?}");
        assert_eq!(notes.last().unwrap(), "after");
    }

    #[test]
    fn bogus_indices_are_not_read_and_reported_once() {
        let p = page();
        let mut r = Relay::new(1, 0);
        p.store_u32(OUT_PROD_OFFSET, 5000);
        let mut n = 0;
        assert!(r.drain(&p, 0, &mut |_, _| n += 1).bogus_reported);
        assert!(!r.drain(&p, 0, &mut |_, _| n += 1).bogus_reported);
        assert_eq!((n, p.load_u32(OUT_CONS_OFFSET)), (0, 0));
    }

    #[test]
    fn input_goes_into_the_input_ring_as_room_allows() {
        let p = page();
        let mut r = Relay::new(1, 0);
        assert_eq!(r.feed(&p, b"ab"), 2);
        assert_eq!((p.load_u8(0), p.load_u8(1), p.load_u32(IN_PROD_OFFSET)), (b'a', b'b', 2));
        assert_eq!(r.feed(&p, &[b'x'; 2000]), IN_RING_SIZE as usize - 2);
        p.store_u32(IN_CONS_OFFSET, 7777);
        assert_eq!(r.feed(&p, b"c"), 0, "indices out of range");
    }

    #[test]
    fn three_switch_keys_switch() {
        let mut f = Focus::default();
        let keys: Vec<Key> = b"a\x01\x01\x01b\x01c".iter().map(|&b| f.key(b)).collect();
        assert_eq!(keys, [Key::Byte(b'a'), Key::Held, Key::Held, Key::Switch, Key::Byte(b'b'), Key::Held, Key::Byte(b'c')]);
    }

    proptest::proptest! {
        #[test]
        fn random_pages_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 4096)) {
            let p = Page(RefCell::new(bytes));
            let mut r = Relay::new(1, 0);
            r.drain(&p, 0, &mut |_, t| assert!(t.len() <= LINE_MAX + 64));
            r.feed(&p, b"input");
        }
    }
}

//! `attack=store good=N hostile=M seconds=S [input=1] [mem_kib=K]`: domain 0 runs the store
//! (xenstored) for the domains it creates from boot module 1 (guest-xs, or an unmodified
//! guest such as GRUB's Xen image, given `mem_kib` of memory): `good` well-behaved ones (`mode=good
//! peer=<another's id>`) and `hostile` ones (in turn `mode=flood`: quota floods, then
//! garbage ring indices, `mode=garbage`: garbage indices at once, and `mode=amplify`: one
//! request firing thousands of watch events, then garbage indices; with `unread=1` every
//! hostile one is `mode=unread`: replies of 4 KiB left unread, then garbage indices); with `input=1` the
//! first good one also waits for a line of serial input. For each, as Xen's toolstack does: created paused, its store ring reached the
//! way `GetDomainDevices` says (grant reference 1 mapped into a page of domain 0, its
//! unbound store port bound), its home written and the domain introduced
//! (`xenstore::Store::create_domain`), then unpaused. Domain 0 then serves every ring
//! ([`xenstore::server::Connection`]: a budget of requests per domain per round, round
//! robin, woken by the ports' events or a 10 ms tick) and relays every console
//! (`guest_dom0::consoled`: each domain's lines prefixed `[dN]`, rate-limited per domain;
//! domain 0 binds each console port, so the hypervisor drains none of these rings), routes
//! serial input (`VIRQ_CONSOLE`, `CONSOLEIO_read`) to the domain in focus (Ctrl-A three
//! times moves the focus: domain 0, then each served domain in turn), and
//! when a domain shuts down (`VIRQ_DOM_EXC` says one did; every [`ENDING_POLL_ROUNDS`]
//! rounds domain 0 looks anyway) it drains what is left in its console ring (its last
//! line too), unmaps its rings, closes its ports, removes its home and releases it
//! (`Store::destroy_domain`), and destroys it. The check passes when every good domain
//! powered off (its own checks passed: "xs: all checks passed"), every hostile one was cut
//! off alone (its connection broken, the others served on), no node, watch or connection
//! of theirs is left, and free memory and the domain records come back as before.

use alloc::vec::Vec;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use arrayvec::ArrayString;
use guest_rt::abi::control::{SchedParams, DOMAIN_SHUTTING_DOWN};
use guest_rt::abi::grant_table::{GnttabMapGrantRef, GnttabOp, GnttabUnmapGrantRef, GNTMAP_HOST_MAP};
use guest_rt::abi::ids::{DomId, EvtchnPort};
use guest_rt::control::{self, NewDomain};
use guest_rt::events::Events;
use guest_rt::frames::FreeFrames;
use guest_rt::{evtchn, grants, println};
use guest_dom0::consoled::{ConsolePage, Focus, Key, Relay};
use guest_rt::abi::hypercall::Virq;
use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall;
use xenstore::server::{Connection, RingPage};
use xenstore::Store;

use super::{expect_as_before, option, settled, Compare, Failure, Waiter, MODULE};

const MS: u64 = 1_000_000;
/// Pages of domain 0's heap for the store (the free frames of its initial mapping leave
/// room for about this many).
const HEAP_PAGES: usize = 96;
/// Each domain's memory quota in the store: with at most [`MAX_DOMAINS`], their worst
/// case (every one flooding) fits the heap with room for the server's own.
const DOMAIN_MEMORY: usize = 24 << 10;
/// Requests served per domain per round.
const BUDGET: usize = 8;
/// The most domains this check serves at once.
const MAX_DOMAINS: usize = 8;
/// The largest `mem_kib` a domain of this check may ask for (64 MiB).
const MAX_MEM_KIB: u64 = 64 << 10;
/// Without `VIRQ_DOM_EXC`, domain 0 looks for domains that ended every this many rounds.
pub(super) const ENDING_POLL_ROUNDS: u64 = 64;

/// Binds `VIRQ_DOM_EXC` (a domain ended) to [`on_event`].
pub(super) fn bind_dom_exc(events: Events) -> Result<EvtchnPort, Failure> {
    let port = evtchn::bind_virq(Virq::DomExc, VcpuId(0)).map_err(|_| Failure::Setup("bind VIRQ_DOM_EXC"))?;
    events.set_handler(port, on_event).map_err(|_| Failure::Setup("a handler for VIRQ_DOM_EXC"))?;
    Ok(port)
}

/// How domain 0 learnt that a domain ended, for its report line: `VIRQ_DOM_EXC` came this
/// round (`woke`), or has come since (a look that was due anyway found the domain just
/// before the event arrived).
pub(super) fn told(woke: bool, dom_exc: EvtchnPort) -> &'static str {
    if woke || PENDING.load(Ordering::Acquire) & (1 << (dom_exc.0 % 64)) != 0 {
        "told by VIRQ_DOM_EXC"
    } else {
        "found by polling"
    }
}

/// Ports whose event came since the last round (ports below 64: the runtime's handlers).
pub(super) static PENDING: AtomicU64 = AtomicU64::new(0);

pub(super) fn on_event(port: EvtchnPort) {
    PENDING.fetch_or(1 << (port.0 % 64), Ordering::AcqRel);
}

/// A ring page mapped at `va` in domain 0.
pub(crate) struct Mapped(pub(crate) u64);

impl RingPage for Mapped {
    fn load_u32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is an aligned field of the mapped page (the server's fixed
        // offsets); the guest writes it concurrently, hence volatile.
        unsafe { ((self.0 + offset as u64) as *const u32).read_volatile() }
    }
    fn store_u32(&self, offset: usize, value: u32) {
        // SAFETY: as in `load_u32`.
        unsafe { ((self.0 + offset as u64) as *mut u32).write_volatile(value) }
    }
    fn load_u8(&self, offset: usize) -> u8 {
        // SAFETY: `offset` is inside the mapped page (the server masks ring indices).
        unsafe { ((self.0 + offset as u64) as *const u8).read_volatile() }
    }
    fn store_u8(&self, offset: usize, value: u8) {
        // SAFETY: as in `load_u8`.
        unsafe { ((self.0 + offset as u64) as *mut u8).write_volatile(value) }
    }
}

impl ConsolePage for Mapped {
    fn load_u32(&self, offset: usize) -> u32 {
        RingPage::load_u32(self, offset)
    }
    fn store_u32(&self, offset: usize, value: u32) {
        RingPage::store_u32(self, offset, value)
    }
    fn load_u8(&self, offset: usize) -> u8 {
        RingPage::load_u8(self, offset)
    }
    fn store_u8(&self, offset: usize, value: u8) {
        RingPage::store_u8(self, offset, value)
    }
}

/// One domain served.
pub(super) struct Served {
    pub(super) id: DomId,
    pub(super) hostile: bool,
    /// Domain 0's end of the store channel.
    pub(super) port: EvtchnPort,
    pub(super) handle: u32,
    pub(super) page: Mapped,
    pub(super) conn: Connection,
    /// Its console: domain 0's end of the channel, the grant mapping, the relay.
    pub(super) console_port: EvtchnPort,
    pub(super) console_handle: u32,
    pub(super) console: Mapped,
    pub(super) relay: Relay,
    pub(super) ended: bool,
}

/// Prints a relayed console line after its domain's tag (`[dN] `; the hypervisor adds
/// domain 0's `(d0) `: `protocol::console` reads it back).
pub(crate) fn relay_line(domid: u16, text: &str) {
    println!("{} {text}", protocol::console::RelayTag(DomId(domid)));
}

/// Drains `s`'s console ring, notifying it when bytes were taken.
pub(super) fn drain_console(s: &mut Served, now_ns: u64) {
    let drained = s.relay.drain(&s.console, now_ns, &mut relay_line);
    if drained.bogus_reported {
        println!("dom0: console of domain {}: ring indices out of range; output ignored", s.id.0);
    }
    if drained.bytes > 0 {
        let _ = evtchn::send(s.console_port);
    }
}

pub(super) fn spec(line: &[u8], hostile: bool, mem_kib: u32) -> NewDomain<'_> {
    NewDomain {
        module: MODULE,
        mem_kib,
        max_kib: mem_kib,
        cpu: None,
        pinned: false,
        params: SchedParams { weight: 1, ..SchedParams::default() },
        cmdline: line,
        paused: true,
        max_vcpus: 1,
        cpu_mask: 0,
        hostile,
    }
}

pub(crate) fn map_ring(dom: DomId, gref: u32, va: u64) -> Result<u32, Failure> {
    let mut op = GnttabMapGrantRef { host_addr: va, flags: GNTMAP_HOST_MAP, ref_: gref, dom, ..Default::default() };
    // SAFETY: `va` is a free page of domain 0 used for nothing else.
    unsafe { grants::grant_table_op(GnttabOp::MapGrantRef, &mut op, 1) }.map_err(|_| Failure::Setup("map_grant_ref call"))?;
    grants::status(op.status).map_err(|_| Failure::Setup("the store grant was refused"))?;
    Ok(op.handle)
}

pub(crate) fn unmap_ring(handle: u32, va: u64) {
    let mut op = GnttabUnmapGrantRef { host_addr: va, handle, ..Default::default() };
    // SAFETY: nothing uses the ring at `va` any more.
    let _ = unsafe { grants::grant_table_op(GnttabOp::UnmapGrantRef, &mut op, 1) };
}

/// Sets a created domain up as the toolstack does and returns what serves it: its store
/// ring mapped at `va`, its console ring at `console_va` (domain 0 takes the console: once
/// it binds the port, the hypervisor no longer drains the ring).
pub(super) fn attach(store: &mut Store, events: Events, id: DomId, hostile: bool, va: u64, console_va: u64, now_ns: u64) -> Result<Served, Failure> {
    let devices = control::domain_devices(id).map_err(|e| Failure::Control("GetDomainDevices", e))?;
    let handle = map_ring(id, devices.store_gref, va)?;
    let port = evtchn::bind_interdomain(id, EvtchnPort(devices.store_port)).map_err(|_| Failure::Setup("bind to the store port"))?;
    events.set_handler(port, on_event).map_err(|_| Failure::Setup("a handler for the store port"))?;
    let console_handle = map_ring(id, devices.console_gref, console_va)?;
    let console_port =
        evtchn::bind_interdomain(id, EvtchnPort(devices.console_port)).map_err(|_| Failure::Setup("bind to the console port"))?;
    events.set_handler(console_port, on_event).map_err(|_| Failure::Setup("a handler for the console port"))?;
    let mut name = ArrayString::<16>::new();
    let _ = write!(name, "xs{}", id.0);
    store.create_domain(id.0, &name).map_err(|_| Failure::Setup("the domain's home"))?;
    store
        .write_rings(id.0, (devices.console_mfn, devices.console_port), (devices.store_mfn, devices.store_port))
        .map_err(|_| Failure::Setup("the domain's ring nodes"))?;
    Ok(Served {
        id,
        hostile,
        port,
        handle,
        page: Mapped(va),
        conn: Connection::new(id.0),
        console_port,
        console_handle,
        console: Mapped(console_va),
        relay: Relay::new(id.0, now_ns),
        ended: false,
    })
}

/// Undoes [`attach`] for a domain that ended, and destroys it.
pub(super) fn detach(store: &mut Store, s: &mut Served, now_ns: u64) {
    drain_console(s, now_ns);
    s.relay.flush(now_ns, &mut relay_line);
    unmap_ring(s.console_handle, s.console.0);
    let _ = evtchn::close(s.console_port);
    unmap_ring(s.handle, s.page.0);
    let _ = evtchn::close(s.port);
    store.destroy_domain(s.id.0);
    let _ = control::destroy_domain(s.id);
    s.ended = true;
}

pub fn run(waiter: Waiter, cmdline: &[u8]) -> Result<(), Failure> {
    let good = option(cmdline, "good").unwrap_or(2).clamp(1, MAX_DOMAINS as u64) as usize;
    let hostile = option(cmdline, "hostile").unwrap_or(1).min((MAX_DOMAINS - good) as u64) as usize;
    let seconds = option(cmdline, "seconds").unwrap_or(60).max(1);
    // Each domain's memory: guest-xs runs in 1 MiB; an unmodified guest such as GRUB's Xen
    // image (io-grub-*) needs more.
    let mem_kib = option(cmdline, "mem_kib").unwrap_or(1024).clamp(1024, MAX_MEM_KIB) as u32;
    let mut frames = FreeFrames::new(guest_rt::start_info()).ok_or(Failure::Setup("no free frames"))?;
    let heap = guest_rt::heap::init(&mut frames, HEAP_PAGES);
    if heap < MAX_DOMAINS * DOMAIN_MEMORY + (64 << 10) {
        return Err(Failure::Setup("no room for the store's heap"));
    }
    let events = Events::init().map_err(|_| Failure::Setup("no events"))?;
    let before = settled(waiter)?;
    let mut store = Store::new();
    store.quota.memory = DOMAIN_MEMORY;
    let (heap_before, _) = guest_rt::heap::HEAP.usage();
    let mut served: Vec<Served> = Vec::new();
    // Ids are handed out in order: a good domain's peer (whose keys it must be refused) is
    // the domain created after it, or for the last one the one before.
    let all = good + hostile;
    for i in 0..all {
        let hostile = i >= good;
        let mut line = ArrayString::<64>::new();
        let peer = match (all, i + 1 < all) {
            (1, _) => "none",
            (_, true) => "next",
            (_, false) => "prev",
        };
        let mode = match (hostile, (i - good.min(i)) % 3) {
            (false, _) => "good",
            (true, _) if option(cmdline, "unread") == Some(1) => "unread",
            (true, 0) => "flood",
            (true, 1) => "garbage",
            (true, _) => "amplify",
        };
        let _ = write!(line, "mode={mode} peer={peer}");
        if i == 0 && option(cmdline, "input") == Some(1) {
            let _ = write!(line, " input=1");
        }
        let id = control::create_domain(&spec(line.as_bytes(), hostile, mem_kib)).map_err(|e| Failure::Control("CreateDomain", e))?;
        let window = frames.take().ok_or(Failure::Setup("no page to map a ring at"))?;
        let console_window = frames.take().ok_or(Failure::Setup("no page to map a console at"))?;
        let s = attach(&mut store, events, id, hostile, window.va(), console_window.va(), waiter.now())?;
        served.push(s);
    }
    let (heap_after, _) = guest_rt::heap::HEAP.usage();
    println!(
        "dom0: store: an introduced domain costs {} bytes of domain 0's heap ({} nodes in all; the server's own records included)",
        heap_after.saturating_sub(heap_before) / served.len().max(1),
        store.tree().len()
    );
    // Serial input: VIRQ_CONSOLE says it came; Ctrl-A three times moves the focus.
    let input_port = evtchn::bind_virq(Virq::Console, VcpuId(0)).map_err(|_| Failure::Setup("bind VIRQ_CONSOLE"))?;
    events.set_handler(input_port, on_event).map_err(|_| Failure::Setup("a handler for VIRQ_CONSOLE"))?;
    let mut input = Input { focus: Focus::default(), at: 0, line: ArrayString::new() };
    let dom_exc = bind_dom_exc(events)?;
    events.enable();
    for s in &served {
        control::unpause_domain(s.id).map_err(|e| Failure::Control("UnpauseDomain", e))?;
    }
    // Its time stamp starts the domains' clock (io-grub-*: boot to halt).
    println!("dom0: store: {} domains unpaused", served.len());
    let deadline = waiter.now() + seconds * 1000 * MS;
    let mut rounds = 0u64;
    while served.iter().any(|s| !s.ended) {
        if waiter.now() > deadline {
            let now = waiter.now();
            for s in served.iter_mut().filter(|s| !s.ended) {
                detach(&mut store, s, now);
            }
            return Err(Failure::OutOfBounds("the store's domains did not all end in time"));
        }
        let pending = PENDING.swap(0, Ordering::AcqRel);
        if pending & (1 << (input_port.0 % 64)) != 0 {
            input.take(&mut served);
        }
        let mut more = false;
        for s in served.iter_mut().filter(|s| !s.ended) {
            if pending & (1 << (s.console_port.0 % 64)) != 0 || rounds.is_multiple_of(16) {
                drain_console(s, waiter.now());
            }
            let woke = pending & (1 << (s.port.0 % 64)) != 0;
            if woke || rounds.is_multiple_of(16) || s.conn.broken().is_none() {
                let r = s.conn.serve(&mut store, &s.page, BUDGET);
                if r.notify {
                    let _ = evtchn::send(s.port);
                }
                more |= r.more;
            }
        }
        rounds += 1;
        // Domains that ended: the toolstack's part.
        let by_virq = pending & (1 << (dom_exc.0 % 64)) != 0;
        if by_virq || rounds.is_multiple_of(ENDING_POLL_ROUNDS) {
            for s in served.iter_mut().filter(|s| !s.ended) {
                let state = control::domain_info(s.id).map(|i| i.state).unwrap_or(DOMAIN_SHUTTING_DOWN);
                if state == DOMAIN_SHUTTING_DOWN {
                    report(&store, s, told(by_virq, dom_exc));
                    detach(&mut store, s, waiter.now());
                }
            }
        }
        if !more {
            waiter.wait_for(waiter.now() + 10 * MS, || PENDING.load(Ordering::Acquire) != 0)?;
        }
    }
    let total: u64 = served.iter().map(|s| s.conn.requests).sum();
    let cut = served.iter().filter(|s| s.conn.broken().is_some()).count();
    println!("dom0: store: served {} domains, {total} requests in {rounds} rounds; {cut} cut off", served.len());
    // Every hostile domain cut off, no good one.
    if served.iter().any(|s| s.hostile != s.conn.broken().is_some()) {
        return Err(Failure::OutOfBounds("a hostile domain was not cut off, or a good one was"));
    }
    // Nothing of theirs left in the store.
    let left: Vec<u16> = store.domains().filter(|&d| d != 0).collect();
    if !left.is_empty() || served.iter().any(|s| store.tree().owned_by(s.id.0) != 0) {
        return Err(Failure::OutOfBounds("a released domain left nodes or a connection"));
    }
    let (used, size) = guest_rt::heap::HEAP.usage();
    println!("dom0: store: {} nodes, heap {used} of {size} bytes in use", store.tree().len());
    expect_as_before(waiter, &before, Compare::FreeMemory, 5000)?;
    Ok(())
}

/// Serial input as domain 0 routes it: to the domain in focus (`at`: 0 is domain 0, `k`
/// the `k`-th served domain).
struct Input {
    focus: Focus,
    at: usize,
    /// Domain 0's own input line.
    line: ArrayString<80>,
}

impl Input {
    /// Reads what came (`CONSOLEIO_read`) and hands each byte to its domain.
    fn take(&mut self, served: &mut [Served]) {
        let mut buf = [0u8; 64];
        loop {
            let n = hypercall::console_read(&mut buf).unwrap_or(0);
            if n == 0 {
                return;
            }
            for &b in &buf[..n] {
                match self.focus.key(b) {
                    Key::Held => {}
                    Key::Switch => {
                        // The next domain still running, or domain 0.
                        let count = served.len() + 1;
                        self.at = (1..=count).map(|k| (self.at + k) % count).find(|&k| k == 0 || !served[k - 1].ended).unwrap_or(0);
                        match self.at {
                            0 => println!("dom0: console input goes to domain 0"),
                            k => println!("dom0: console input goes to d{}", served[k - 1].id.0),
                        }
                    }
                    Key::Byte(b) if self.at == 0 => {
                        if b == b'\n' || b == b'\r' || self.line.is_full() {
                            println!("dom0: console input for domain 0: {}", self.line.as_str());
                            self.line.clear();
                        } else if b.is_ascii_graphic() || b == b' ' {
                            self.line.push(b as char);
                        }
                    }
                    Key::Byte(b) => {
                        let s = &mut served[self.at - 1];
                        if s.ended {
                            continue;
                        }
                        if s.relay.feed(&s.console, &[b]) == 0 {
                            s.relay.dropped_input += 1;
                        }
                        let _ = evtchn::send(s.console_port);
                    }
                }
            }
        }
    }
}

fn report(store: &Store, s: &Served, told: &str) {
    if let Some(f) = store.figures(s.id.0) {
        println!(
            "dom0: store: domain {} ({}) ended ({}): {} requests, {} nodes, {} watches, {} events dropped, cut off: {:?}",
            s.id.0,
            if s.hostile { "hostile" } else { "good" },
            told,
            s.conn.requests,
            f.nodes,
            f.watches,
            f.dropped_events,
            s.conn.broken()
        );
    }
}

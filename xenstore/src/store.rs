//! The store: the tree, one connection per introduced domain (its watches, its open
//! transactions, its queued output), quotas, and the dispatcher that answers each request
//! as xenstored does.
//!
//! [`Store::handle`] takes one whole request of a domain and queues the reply (and any
//! watch events it causes, in every connection concerned) as encoded messages;
//! [`Store::pop_output`] hands them out for the domain's response ring. Domain 0 is
//! privileged (it may read and write everything, introduce and release domains) and uses
//! the same entry point for its own accesses (no ring).
//!
//! Quotas ([`Quota`], xenstored's defaults) hold for every domain but domain 0: nodes it
//! owns (`ENOSPC`), value size (`ENOSPC`), permission entries (`ENOSPC`), watches
//! (`E2BIG`), open transactions (`ENOSPC`), nodes one transaction touches (`ENOSPC`), and
//! the bytes its nodes, watches and transactions hold (`ENOMEM`: the bound that keeps the
//! server's heap safe whatever the counts allow);
//! [`Store::may_read_requests`] says whether a domain may have another request read (its
//! queued replies are fewer than the outstanding-request quota), so that one that never
//! reads its replies stops being served rather than growing domain 0's memory; watch events
//! beyond [`EVENT_QUEUE_BYTES`] of queued output are dropped and counted.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{self, Perm, PermKind};
use crate::tree::{Changes, Node, Tree, Tx, View};
use crate::wire::{self, all_args, encode, one_arg, split_args, Message, MsgType, XsError, PAYLOAD_MAX};
use crate::DomId;

/// Per-domain limits (xenstored's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Nodes a domain may own (`quota_nb_entry_per_domain`).
    pub nodes: u32,
    /// Bytes of one value (`quota_max_entry_size`).
    pub value_bytes: usize,
    /// Watches per domain (`quota_nb_watch_per_domain`).
    pub watches: usize,
    /// Open transactions per domain (`quota_max_transaction`).
    pub transactions: usize,
    /// Replies a domain may leave unread before its requests wait (`quota_req_outstanding`).
    pub outstanding: usize,
    /// Permission entries of one node (`quota_nb_perms_per_node`).
    pub perms: usize,
    /// Nodes one transaction may touch (`quota_trans_nodes`).
    pub tx_nodes: usize,
    /// Bytes of the store a domain's nodes, watches and open transactions may hold
    /// (`ENOMEM` beyond; as xenstored's per-domain memory quota, here the bound that keeps
    /// domain 0's heap safe: its server sizes it to its heap and the domains it serves).
    pub memory: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { nodes: 1000, value_bytes: 2048, watches: 128, transactions: 10, outstanding: 20, perms: 5, tx_nodes: 1024, memory: 256 << 10 }
    }
}

/// What a watch costs the memory quota beyond its path and token.
const WATCH_OVERHEAD: usize = 64;

/// Queued output beyond which a domain's watch events are dropped.
pub const EVENT_QUEUE_BYTES: usize = 16 << 10;

/// One registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Watch {
    /// Canonical path, or a special `@` name.
    path: String,
    token: Vec<u8>,
    /// Registered relative to the domain's home: events name paths relative to it.
    relative: bool,
}

/// One domain's connection.
#[derive(Debug, Default)]
struct Conn {
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Tx>,
    next_tx: u32,
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    /// Replies (not events) in `out`.
    replies: usize,
    dropped_events: u64,
}

/// Figures of one domain's connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnFigures {
    pub watches: usize,
    pub transactions: usize,
    pub queued: usize,
    pub dropped_events: u64,
    pub nodes: u32,
}

/// The whole store.
#[derive(Debug, Default)]
pub struct Store {
    tree: Tree,
    conns: BTreeMap<DomId, Conn>,
    pub quota: Quota,
    /// A new watch's initial event, queued after the reply.
    initial: Option<Vec<u8>>,
}

impl Store {
    pub fn new() -> Store {
        let mut store = Store { tree: Tree::new(), conns: BTreeMap::new(), quota: Quota::default(), initial: None };
        store.conns.insert(0, Conn::default());
        store
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Whether `domid` has a connection (domain 0 always has).
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.conns.contains_key(&domid)
    }

    /// Domains with a connection.
    pub fn domains(&self) -> impl Iterator<Item = DomId> + '_ {
        self.conns.keys().copied()
    }

    pub fn figures(&self, domid: DomId) -> Option<ConnFigures> {
        let c = self.conns.get(&domid)?;
        Some(ConnFigures {
            watches: c.watches.len(),
            transactions: c.txs.len(),
            queued: c.out.len(),
            dropped_events: c.dropped_events,
            nodes: self.tree.owned_by(domid),
        })
    }

    /// Gives `domid` a connection (`XS_INTRODUCE`); fires `@introduceDomain`. An already
    /// introduced domain is left as it is (`false`).
    pub fn introduce(&mut self, domid: DomId) -> bool {
        if self.conns.contains_key(&domid) {
            return false;
        }
        self.conns.insert(domid, Conn::default());
        self.fire_special(INTRODUCE_DOMAIN);
        true
    }

    /// Ends `domid`'s connection (`XS_RELEASE`): its watches, transactions and queued
    /// output go, permissions naming it are forgotten (its nodes pass to domain 0), and
    /// `@releaseDomain` fires. Its home is the toolstack's to remove first.
    pub fn release(&mut self, domid: DomId) -> bool {
        if domid == 0 || self.conns.remove(&domid).is_none() {
            return false;
        }
        self.tree.forget_domain(domid);
        self.fire_special(RELEASE_DOMAIN);
        true
    }

    /// The next message queued for `domid`'s response ring.
    pub fn pop_output(&mut self, domid: DomId) -> Option<Vec<u8>> {
        let c = self.conns.get_mut(&domid)?;
        let msg = c.out.pop_front()?;
        c.out_bytes -= msg.len();
        let ty = wire::Header::parse(&msg).map(|h| h.ty).unwrap_or(0);
        if ty != MsgType::WatchEvent as u32 {
            c.replies = c.replies.saturating_sub(1);
        }
        Some(msg)
    }

    /// Puts back a message [`Store::pop_output`] gave that did not fit the ring yet.
    pub fn unpop_output(&mut self, domid: DomId, msg: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&domid) {
            let ty = wire::Header::parse(&msg).map(|h| h.ty).unwrap_or(0);
            if ty != MsgType::WatchEvent as u32 {
                c.replies += 1;
            }
            c.out_bytes += msg.len();
            c.out.push_front(msg);
        }
    }

    /// Whether another request of `domid` may be read: it is introduced and leaves fewer
    /// than the outstanding-request quota of replies unread (domain 0: always).
    pub fn may_read_requests(&self, domid: DomId) -> bool {
        self.conns.get(&domid).is_some_and(|c| domid == 0 || c.replies < self.quota.outstanding)
    }

    fn queue_reply(&mut self, domid: DomId, msg: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&domid) {
            c.out_bytes += msg.len();
            c.replies += 1;
            c.out.push_back(msg);
        }
    }

    fn queue_event(&mut self, domid: DomId, payload: &[u8]) {
        if let Some(c) = self.conns.get_mut(&domid) {
            if c.out_bytes > EVENT_QUEUE_BYTES {
                c.dropped_events += 1;
                return;
            }
            let msg = encode(MsgType::WatchEvent, 0, 0, payload);
            c.out_bytes += msg.len();
            c.out.push_back(msg);
        }
    }

    fn fire_special(&mut self, name: &str) {
        let mut events = Vec::new();
        for (&domid, c) in &self.conns {
            // The special nodes belong to domain 0 with no access for others (as xenstored
            // since XSA-372's fix): only privileged connections hear them.
            if domid != 0 {
                continue;
            }
            for w in c.watches.iter().filter(|w| w.path == name) {
                events.push((domid, event_payload(name, &w.token)));
            }
        }
        for (domid, payload) in events {
            self.queue_event(domid, &payload);
        }
    }

    /// Fires the watches `changes` concern.
    fn fire(&mut self, changes: &Changes) {
        let mut events = Vec::new();
        for (&domid, c) in &self.conns {
            for w in &c.watches {
                if w.path.starts_with('@') {
                    continue;
                }
                for (p, perms) in &changes.written {
                    if path::is_within(p, &w.path) && perms::access(perms, domid, domid == 0).reads() {
                        events.push((domid, event_payload(&shown(domid, w, p), &w.token)));
                    }
                }
                for (p, node) in &changes.removed {
                    let reported = if path::is_within(p, &w.path) {
                        Some(p.as_str())
                    } else if path::is_within(&w.path, p) {
                        Some(w.path.as_str())
                    } else {
                        None
                    };
                    if let Some(r) = reported {
                        if perms::access(&node.perms, domid, domid == 0).reads() {
                            events.push((domid, event_payload(&shown(domid, w, r), &w.token)));
                        }
                    }
                }
            }
        }
        events.dedup();
        for (domid, payload) in events {
            self.queue_event(domid, &payload);
        }
    }

    /// Answers one request of `domid` (which must be introduced; others are ignored).
    pub fn handle(&mut self, domid: DomId, msg: &Message) {
        if !self.conns.contains_key(&domid) {
            return;
        }
        let h = msg.header;
        let ty = msg.ty();
        let reply = match ty {
            Some(ty) => self.dispatch(domid, ty, h.tx_id, &msg.payload),
            None => Err(XsError::Einval),
        };
        let out = match reply {
            Ok(payload) => encode(ty.expect("dispatched"), h.req_id, h.tx_id, &payload),
            Err(e) => {
                let mut payload = Vec::from(e.as_str().as_bytes());
                payload.push(0);
                encode(MsgType::Error, h.req_id, h.tx_id, &payload)
            }
        };
        self.queue_reply(domid, out);
        if let Some(event) = self.initial.take() {
            self.queue_event(domid, &event);
        }
    }

    fn dispatch(&mut self, domid: DomId, ty: MsgType, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        let privileged = domid == 0;
        let ok = || Ok(b"OK\0".to_vec());
        if tx_id != 0 && !self.conns[&domid].txs.contains_key(&tx_id) {
            return Err(XsError::Enoent);
        }
        match ty {
            MsgType::Read => {
                let p = path::canonical(domid, privileged, one_arg(payload).ok_or(XsError::Einval)?)?;
                let node = self.readable(domid, tx_id, &p)?;
                Ok(node.value)
            }
            MsgType::Directory | MsgType::DirectoryPart => {
                let (raw, offset) = if ty == MsgType::Directory {
                    (one_arg(payload).ok_or(XsError::Einval)?, None)
                } else {
                    let [raw, off] = split_args::<2>(payload).ok_or(XsError::Einval)?;
                    (raw, Some(parse_u32(off)? as usize))
                };
                let p = path::canonical(domid, privileged, raw)?;
                let node = self.readable(domid, tx_id, &p)?;
                let names = self.view(domid, tx_id).children(&p);
                let mut list = Vec::new();
                for n in &names {
                    list.extend_from_slice(n.as_bytes());
                    list.push(0);
                }
                match offset {
                    None if list.len() > PAYLOAD_MAX => Err(XsError::E2big),
                    None => Ok(list),
                    Some(offset) => {
                        // The generation, then as many whole names from `offset` as fit, then
                        // an empty string once the list is complete (xenstored's format).
                        let mut out = format!("{}", node.generation).into_bytes();
                        out.push(0);
                        let rest = list.get(offset..).ok_or(XsError::Einval)?;
                        let room = PAYLOAD_MAX - out.len() - 1;
                        if rest.len() <= room {
                            out.extend_from_slice(rest);
                            out.push(0);
                        } else {
                            let cut = rest[..room].iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
                            out.extend_from_slice(&rest[..cut]);
                        }
                        Ok(out)
                    }
                }
            }
            MsgType::GetPerms => {
                let raw = one_arg(payload).ok_or(XsError::Einval)?;
                let p = path::canonical(domid, privileged, raw)?;
                let node = self.readable(domid, tx_id, &p)?;
                let mut out = Vec::new();
                for perm in node.perms {
                    perm.write_to(&mut out);
                }
                Ok(out)
            }
            MsgType::Write => {
                let nul = payload.iter().position(|&b| b == 0).ok_or(XsError::Einval)?;
                let p = path::canonical(domid, privileged, &payload[..nul])?;
                let value = &payload[nul + 1..];
                if !privileged && value.len() > self.quota.value_bytes {
                    return Err(XsError::Enospc);
                }
                self.write(domid, tx_id, &p, value.to_vec())?;
                ok()
            }
            MsgType::Mkdir => {
                let p = path::canonical(domid, privileged, one_arg(payload).ok_or(XsError::Einval)?)?;
                if self.view(domid, tx_id).get(&p).is_some() {
                    return ok();
                }
                self.write(domid, tx_id, &p, Vec::new())?;
                ok()
            }
            MsgType::Rm => {
                let p = path::canonical(domid, privileged, one_arg(payload).ok_or(XsError::Einval)?)?;
                if p == "/" {
                    return Err(XsError::Einval);
                }
                let mut view = self.view(domid, tx_id);
                let Some(node) = view.get(&p) else {
                    // Gone already: fine if its parent is there (xenstored).
                    let parent = path::parent(&p).unwrap_or("/");
                    return if view.get(parent).is_some() { ok() } else { Err(XsError::Enoent) };
                };
                if !perms::access(&node.perms, domid, privileged).writes() {
                    return Err(XsError::Eacces);
                }
                self.check_tx_size(domid, tx_id)?;
                let changes = self.view(domid, tx_id).remove(&p);
                self.fire(&changes);
                ok()
            }
            MsgType::SetPerms => {
                let args = all_args(payload).ok_or(XsError::Einval)?;
                let (raw, perm_texts) = args.split_first().ok_or(XsError::Einval)?;
                let p = path::canonical(domid, privileged, raw)?;
                let perms: Vec<Perm> = perm_texts.iter().map(|t| Perm::parse(t)).collect::<Option<_>>().ok_or(XsError::Einval)?;
                if perms.is_empty() {
                    return Err(XsError::Einval);
                }
                if !privileged && perms.len() > self.quota.perms {
                    return Err(XsError::Enospc);
                }
                let node = self.view(domid, tx_id).get(&p).ok_or(XsError::Enoent)?;
                // The owner (or domain 0) only; an unprivileged owner may not give it away.
                if !privileged && node.owner() != domid {
                    return Err(XsError::Eacces);
                }
                if !privileged && perms[0].domid != node.owner() {
                    return Err(XsError::Eperm);
                }
                self.check_tx_size(domid, tx_id)?;
                let changes = self.view(domid, tx_id).set(&p, node.value, perms);
                self.fire(&changes);
                ok()
            }
            MsgType::Watch => {
                let [raw, token] = split_args::<2>(payload).ok_or(XsError::Einval)?;
                let p = path::watch_path(domid, privileged, raw)?;
                let relative = raw.first() != Some(&b'/') && raw.first() != Some(&b'@');
                let watch = Watch { path: p, token: token.to_vec(), relative };
                let quota = self.quota.watches;
                let c = self.conns.get_mut(&domid).expect("checked");
                if c.watches.iter().any(|w| w.path == watch.path && w.token == watch.token) {
                    return Err(XsError::Eexist);
                }
                if !privileged && c.watches.len() >= quota {
                    return Err(XsError::E2big);
                }
                let cost = WATCH_OVERHEAD + watch.path.len() + watch.token.len();
                if !privileged && self.memory_of(domid) + cost > self.quota.memory {
                    return Err(XsError::Enomem);
                }
                let c = self.conns.get_mut(&domid).expect("checked");
                // The reply first, then the initial event (xenstored's order).
                let shown_path = String::from(shown(domid, &watch, &watch.path));
                self.initial = Some(event_payload(&shown_path, &watch.token));
                c.watches.push(watch);
                ok()
            }
            MsgType::Unwatch => {
                let [raw, token] = split_args::<2>(payload).ok_or(XsError::Einval)?;
                let p = path::watch_path(domid, privileged, raw)?;
                let c = self.conns.get_mut(&domid).expect("checked");
                let at = c.watches.iter().position(|w| w.path == p && w.token == token).ok_or(XsError::Enoent)?;
                c.watches.remove(at);
                ok()
            }
            MsgType::TransactionStart => {
                if tx_id != 0 {
                    return Err(XsError::Ebusy);
                }
                let quota = self.quota.transactions;
                let c = self.conns.get_mut(&domid).expect("checked");
                if !privileged && c.txs.len() >= quota {
                    return Err(XsError::Enospc);
                }
                let mut id = c.next_tx.wrapping_add(1).max(1);
                while c.txs.contains_key(&id) {
                    id = id.wrapping_add(1).max(1);
                }
                c.next_tx = id;
                c.txs.insert(id, Tx::default());
                let mut out = format!("{id}").into_bytes();
                out.push(0);
                Ok(out)
            }
            MsgType::TransactionEnd => {
                let arg = one_arg(payload).ok_or(XsError::Einval)?;
                let commit = match arg {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsError::Einval),
                };
                if tx_id == 0 {
                    return Err(XsError::Enoent);
                }
                let tx = self.conns.get_mut(&domid).expect("checked").txs.remove(&tx_id).ok_or(XsError::Enoent)?;
                if commit {
                    if !privileged {
                        let limit = i64::from(self.quota.nodes);
                        if i64::from(self.tree.owned_by(domid)) + i64::from(tx.added_for(domid)) > limit {
                            return Err(XsError::Enospc);
                        }
                    }
                    let changes = tx.commit(&mut self.tree)?;
                    self.fire(&changes);
                }
                ok()
            }
            MsgType::Introduce => {
                if !privileged {
                    return Err(XsError::Eacces);
                }
                let [d, mfn, port] = split_args::<3>(payload).ok_or(XsError::Einval)?;
                let d = parse_domid(d)?;
                parse_u64(mfn)?;
                parse_u32(port)?;
                if d == 0 {
                    return Err(XsError::Einval);
                }
                self.introduce(d);
                ok()
            }
            MsgType::Release => {
                if !privileged {
                    return Err(XsError::Eacces);
                }
                let d = parse_domid(one_arg(payload).ok_or(XsError::Einval)?)?;
                if self.release(d) { ok() } else { Err(XsError::Enoent) }
            }
            MsgType::Resume => {
                if !privileged {
                    return Err(XsError::Eacces);
                }
                let d = parse_domid(one_arg(payload).ok_or(XsError::Einval)?)?;
                if self.conns.contains_key(&d) { ok() } else { Err(XsError::Enoent) }
            }
            MsgType::GetDomainPath => {
                let d = parse_domid(one_arg(payload).ok_or(XsError::Einval)?)?;
                let mut out = path::home(d).into_bytes();
                out.push(0);
                Ok(out)
            }
            MsgType::IsDomainIntroduced => {
                let d = parse_domid(one_arg(payload).ok_or(XsError::Einval)?)?;
                Ok(if self.conns.contains_key(&d) { b"T\0".to_vec() } else { b"F\0".to_vec() })
            }
            MsgType::ResetWatches => {
                let c = self.conns.get_mut(&domid).expect("checked");
                c.watches.clear();
                c.txs.clear();
                ok()
            }
            // Stub domains' targets and the debug interface are not offered.
            MsgType::SetTarget | MsgType::Control => Err(if privileged { XsError::Enosys } else { XsError::Eacces }),
            // Sent by the server only.
            MsgType::WatchEvent | MsgType::Error => Err(XsError::Einval),
        }
    }

    fn view(&mut self, domid: DomId, tx_id: u32) -> View<'_> {
        let tx = if tx_id == 0 { None } else { self.conns.get_mut(&domid).and_then(|c| c.txs.get_mut(&tx_id)) };
        View { tree: &mut self.tree, tx }
    }

    fn readable(&mut self, domid: DomId, tx_id: u32, p: &str) -> Result<Node, XsError> {
        let node = self.view(domid, tx_id).get(p).ok_or(XsError::Enoent)?;
        if !perms::access(&node.perms, domid, domid == 0).reads() {
            return Err(XsError::Eacces);
        }
        Ok(node)
    }

    /// Bytes of the store `domid` holds: its nodes, watches and open transactions.
    pub fn memory_of(&self, domid: DomId) -> usize {
        let conn = self.conns.get(&domid).map_or(0, |c| {
            c.watches.iter().map(|w| WATCH_OVERHEAD + w.path.len() + w.token.len()).sum::<usize>() + c.txs.values().map(Tx::bytes).sum::<usize>()
        });
        self.tree.bytes_of(domid) + conn
    }

    /// `ENOMEM` when `domid` (unprivileged) would go past its memory quota with `more`.
    fn check_memory(&self, domid: DomId, more: usize) -> Result<(), XsError> {
        if domid != 0 && self.memory_of(domid) + more > self.quota.memory { Err(XsError::Enomem) } else { Ok(()) }
    }

    fn check_tx_size(&self, domid: DomId, tx_id: u32) -> Result<(), XsError> {
        if domid == 0 || tx_id == 0 {
            return Ok(());
        }
        let size = self.conns[&domid].txs.get(&tx_id).map_or(0, Tx::size);
        if size >= self.quota.tx_nodes { Err(XsError::Enospc) } else { Ok(()) }
    }

    /// Writes `value` at `p` for `domid`: an existing node needs write access to it; a new
    /// one write access to its nearest existing ancestor, and every missing node between
    /// is created with its parent's permissions (owned by the writer, if unprivileged).
    fn write(&mut self, domid: DomId, tx_id: u32, p: &str, mut value: Vec<u8>) -> Result<(), XsError> {
        let privileged = domid == 0;
        self.check_tx_size(domid, tx_id)?;
        let existing = self.view(domid, tx_id).get(p);
        if let Some(node) = existing {
            if !perms::access(&node.perms, domid, privileged).writes() {
                return Err(XsError::Eacces);
            }
            // The owner pays for a value that grows (in a transaction: the overlay's copy).
            let grows = if tx_id != 0 { crate::tree::node_cost(p, value.len(), node.perms.len()) } else { value.len().saturating_sub(node.value.len()) };
            self.check_memory(node.owner(), grows)?;
            let changes = self.view(domid, tx_id).set(p, value, node.perms);
            self.fire(&changes);
            return Ok(());
        }
        // The missing nodes from the top down.
        let mut view = self.view(domid, tx_id);
        let mut missing = alloc::vec![String::from(p)];
        let mut ancestor = path::parent(p).unwrap_or("/");
        let parent = loop {
            if let Some(node) = view.get(ancestor) {
                break node;
            }
            missing.push(String::from(ancestor));
            ancestor = path::parent(ancestor).unwrap_or("/");
        };
        if !perms::access(&parent.perms, domid, privileged).writes() {
            return Err(XsError::Eacces);
        }
        let mut perms = parent.perms.clone();
        if !privileged {
            perms[0].domid = domid;
            let quota = i64::from(self.quota.nodes);
            let pending = self.conns[&domid].txs.get(&tx_id).map_or(0, |t| t.added_for(domid));
            if i64::from(self.tree.owned_by(domid)) + i64::from(pending) + missing.len() as i64 > quota {
                return Err(XsError::Enospc);
            }
            let cost: usize = missing.iter().map(|m| crate::tree::node_cost(m, if m == p { value.len() } else { 0 }, perms.len())).sum();
            self.check_memory(domid, cost)?;
        }
        let mut all = Changes::default();
        let mut view = self.view(domid, tx_id);
        while let Some(m) = missing.pop() {
            let v = if missing.is_empty() { core::mem::take(&mut value) } else { Vec::new() };
            let c = view.set(&m, v, perms.clone());
            // Watches fire for the path written (intermediate nodes lie above it, so a
            // watch on one of them fires with it), as xenstored.
            if m == p {
                all.written.extend(c.written);
            }
        }
        self.fire(&all);
        Ok(())
    }

    // ---- Domain 0's own accesses (no ring) ----------------------------------------------

    /// Writes `value` at absolute `p` as `domid` (domain 0's toolstack writes as 0).
    pub fn write_as(&mut self, domid: DomId, p: &str, value: &[u8]) -> Result<(), XsError> {
        let p = path::canonical(domid, domid == 0, p.as_bytes())?;
        self.write(domid, 0, &p, value.to_vec())
    }

    /// Reads `p` as `domid`.
    pub fn read_as(&mut self, domid: DomId, p: &str) -> Result<Vec<u8>, XsError> {
        let p = path::canonical(domid, domid == 0, p.as_bytes())?;
        self.readable(domid, 0, &p).map(|n| n.value)
    }

    /// Sets the permissions of `p` as domain 0.
    pub fn set_perms(&mut self, p: &str, perms: Vec<Perm>) -> Result<(), XsError> {
        let node = self.tree.get(p).cloned().ok_or(XsError::Enoent)?;
        if perms.is_empty() {
            return Err(XsError::Einval);
        }
        let changes = View { tree: &mut self.tree, tx: None }.set(p, node.value, perms);
        self.fire(&changes);
        Ok(())
    }

    /// Removes `p` and its subtree as domain 0 (watches fire).
    pub fn rm(&mut self, p: &str) {
        let changes = View { tree: &mut self.tree, tx: None }.remove(p);
        self.fire(&changes);
    }

    /// What Xen's toolstack (libxl) writes for a new domain, then its introduction: its
    /// home readable by it and owned by domain 0, `name` and `domid` there, and the
    /// directories it may write (`data`, `device`, `control`, `error`, `drivers`,
    /// `feature`, `attr`) owned by it.
    pub fn create_domain(&mut self, domid: DomId, name: &str) -> Result<(), XsError> {
        let home = path::home(domid);
        let ro = alloc::vec![Perm { domid: 0, kind: PermKind::None }, Perm { domid, kind: PermKind::Read }];
        let rw = alloc::vec![Perm { domid, kind: PermKind::None }];
        self.write_as(0, &home, b"")?;
        self.set_perms(&home, ro)?;
        self.write_as(0, &format!("{home}/name"), name.as_bytes())?;
        self.write_as(0, &format!("{home}/domid"), format!("{domid}").as_bytes())?;
        for dir in ["data", "device", "control", "error", "drivers", "feature", "attr"] {
            let p = format!("{home}/{dir}");
            self.write_as(0, &p, b"")?;
            self.set_perms(&p, rw.clone())?;
        }
        self.introduce(domid);
        Ok(())
    }

    /// The toolstack's side of a domain's end: its home removed, then its release.
    pub fn destroy_domain(&mut self, domid: DomId) {
        self.rm(&path::home(domid));
        self.release(domid);
    }
}

/// How `w` names `p` in an event: relative to the home if it was registered so.
fn shown<'a>(domid: DomId, w: &Watch, p: &'a str) -> alloc::borrow::Cow<'a, str> {
    if w.relative {
        if let Some(rel) = path::relative_to_home(domid, p) {
            return alloc::borrow::Cow::Owned(String::from(rel));
        }
    }
    alloc::borrow::Cow::Borrowed(p)
}

fn event_payload(p: &str, token: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len() + token.len() + 2);
    out.extend_from_slice(p.as_bytes());
    out.push(0);
    out.extend_from_slice(token);
    out.push(0);
    out
}

fn parse_u64(text: &[u8]) -> Result<u64, XsError> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return Err(XsError::Einval);
    }
    text.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))).ok_or(XsError::Einval)
}

fn parse_u32(text: &[u8]) -> Result<u32, XsError> {
    u32::try_from(parse_u64(text)?).map_err(|_| XsError::Einval)
}

fn parse_domid(text: &[u8]) -> Result<DomId, XsError> {
    u16::try_from(parse_u64(text)?).map_err(|_| XsError::Einval)
}

//! Tests of the whole store through its wire interface: Xen's semantics on hand-made
//! requests, property tests of hostile bytes (never a panic, every request answered) and
//! of the tree against a simple model (a map of paths to values).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::store::{Quota, Store};
use crate::wire::{self, encode, Fed, Header, Message, MsgType, Reader, XsError};

/// A request message.
fn req(ty: MsgType, tx: u32, payload: &[u8]) -> Message {
    Message { header: Header { ty: ty as u32, req_id: 77, tx_id: tx, len: payload.len() as u32 }, payload: payload.to_vec() }
}

/// Every message queued for `domid`, decoded.
fn drain(store: &mut Store, domid: u16) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(bytes) = store.pop_output(domid) {
        let mut r = Reader::default();
        match r.feed(&bytes).unwrap() {
            Fed::Message(n, m) => {
                assert_eq!(n, bytes.len());
                out.push(m)
            }
            Fed::Partial(_) => panic!("a queued message is whole"),
        }
    }
    out
}

/// Sends one request and returns its reply (type, payload); events are dropped.
fn call(store: &mut Store, domid: u16, ty: MsgType, tx: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
    store.handle(domid, &req(ty, tx, payload));
    let msgs = drain(store, domid);
    let reply = msgs.iter().find(|m| m.header.ty != MsgType::WatchEvent as u32).expect("a reply");
    assert_eq!(reply.header.req_id, 77, "req_id echoed");
    assert_eq!(reply.header.tx_id, tx, "tx_id echoed");
    if reply.header.ty == MsgType::Error as u32 {
        Err(XsError::from_payload(&reply.payload).expect("an error Xen names"))
    } else {
        assert_eq!(reply.header.ty, ty as u32);
        Ok(reply.payload.clone())
    }
}

fn with_domains() -> Store {
    let mut s = Store::new();
    s.create_domain(1, "one").unwrap();
    s.create_domain(2, "two").unwrap();
    s
}

#[test]
fn a_domain_writes_and_reads_its_own_keys() {
    let mut s = with_domains();
    assert_eq!(call(&mut s, 1, MsgType::Write, 0, b"data/x\0hello"), Ok(b"OK\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"data/x\0"), Ok(b"hello".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"/local/domain/1/data/x\0"), Ok(b"hello".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"name\0"), Ok(b"one".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Write, 0, b"name\0evil"), Err(XsError::Eacces), "the home's keys are domain 0's");
    assert_eq!(call(&mut s, 1, MsgType::Directory, 0, b"data\0"), Ok(b"x\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::GetPerms, 0, b"data/x\0"), Ok(b"n1\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"data/none\0"), Err(XsError::Enoent));
    assert_eq!(call(&mut s, 1, MsgType::Rm, 0, b"data/x\0"), Ok(b"OK\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Rm, 0, b"data/x\0"), Ok(b"OK\0".to_vec()), "gone, parent there");
    assert_eq!(call(&mut s, 1, MsgType::Rm, 0, b"data/x/y\0"), Err(XsError::Enoent));
}

#[test]
fn another_domains_keys_are_refused() {
    let mut s = with_domains();
    call(&mut s, 1, MsgType::Write, 0, b"data/secret\0s").unwrap();
    assert_eq!(call(&mut s, 2, MsgType::Read, 0, b"/local/domain/1/data/secret\0"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 2, MsgType::Write, 0, b"/local/domain/1/data/secret\0x"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 2, MsgType::Write, 0, b"/local/domain/1/data/new\0x"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 2, MsgType::Rm, 0, b"/local/domain/1/data/secret\0"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 2, MsgType::Read, 0, b"/local/domain/1/name\0"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 0, MsgType::Read, 0, b"/local/domain/1/data/secret\0"), Ok(b"s".to_vec()), "domain 0 reads all");
    // The owner shares it: now readable, still not writable.
    call(&mut s, 1, MsgType::SetPerms, 0, b"data/secret\0n1\0r2\0").unwrap();
    assert_eq!(call(&mut s, 2, MsgType::Read, 0, b"/local/domain/1/data/secret\0"), Ok(b"s".to_vec()));
    assert_eq!(call(&mut s, 2, MsgType::Write, 0, b"/local/domain/1/data/secret\0x"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 1, MsgType::SetPerms, 0, b"data/secret\0n2\0"), Err(XsError::Eperm), "no giving away");
    assert_eq!(call(&mut s, 2, MsgType::SetPerms, 0, b"/local/domain/1/data/secret\0b2\0"), Err(XsError::Eacces));
}

#[test]
fn watches_fire_at_registration_and_on_subtree_changes() {
    let mut s = with_domains();
    call(&mut s, 1, MsgType::Watch, 0, b"data\0tok\0").unwrap();
    // `call` dropped the initial event; register another to see it.
    s.handle(1, &req(MsgType::Watch, 0, b"/local/domain/1/data\0abs\0"));
    let msgs = drain(&mut s, 1);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].header.ty, MsgType::Watch as u32, "the reply first");
    assert_eq!(msgs[1].header.ty, MsgType::WatchEvent as u32);
    assert_eq!(msgs[1].payload, b"/local/domain/1/data\0abs\0");
    s.handle(1, &req(MsgType::Write, 0, b"data/a/b\0v"));
    let events: Vec<Vec<u8>> = drain(&mut s, 1).into_iter().filter(|m| m.header.ty == MsgType::WatchEvent as u32).map(|m| m.payload).collect();
    assert!(events.contains(&b"data/a/b\0tok\0".to_vec()), "relative watch, relative path: {events:?}");
    assert!(events.contains(&b"/local/domain/1/data/a/b\0abs\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Watch, 0, b"data\0tok\0"), Err(XsError::Eexist));
    // Removing a parent fires a watch beneath it, with the watch's own path.
    call(&mut s, 2, MsgType::Watch, 0, b"data/deep/node\0t2\0").unwrap();
    call(&mut s, 2, MsgType::Write, 0, b"data/deep/node\0x").unwrap();
    s.handle(2, &req(MsgType::Rm, 0, b"data/deep\0"));
    let events: Vec<Vec<u8>> = drain(&mut s, 2).into_iter().filter(|m| m.header.ty == MsgType::WatchEvent as u32).map(|m| m.payload).collect();
    assert!(events.contains(&b"data/deep/node\0t2\0".to_vec()), "{events:?}");
    // No event about a node the watcher may not read.
    call(&mut s, 2, MsgType::Watch, 0, b"/local/domain/1\0spy\0").unwrap();
    call(&mut s, 1, MsgType::Write, 0, b"data/private\0x").unwrap();
    assert!(drain(&mut s, 2).is_empty(), "domain 2 heard of domain 1's private node");
    assert_eq!(call(&mut s, 1, MsgType::Unwatch, 0, b"data\0tok\0"), Ok(b"OK\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Unwatch, 0, b"data\0tok\0"), Err(XsError::Enoent));
}

#[test]
fn special_watches_tell_domain_0_of_introductions_and_releases() {
    let mut s = Store::new();
    call(&mut s, 0, MsgType::Watch, 0, b"@releaseDomain\0r\0").unwrap();
    call(&mut s, 0, MsgType::Watch, 0, b"@introduceDomain\0i\0").unwrap();
    s.create_domain(5, "five").unwrap();
    let events: Vec<Vec<u8>> = drain(&mut s, 0).into_iter().map(|m| m.payload).collect();
    assert_eq!(events, [b"@introduceDomain\0i\0".to_vec()]);
    call(&mut s, 5, MsgType::Write, 0, b"data/k\0v").unwrap();
    call(&mut s, 5, MsgType::Watch, 0, b"data\0w\0").unwrap();
    assert_eq!(call(&mut s, 0, MsgType::IsDomainIntroduced, 0, b"5\0"), Ok(b"T\0".to_vec()));
    s.handle(3, &req(MsgType::Read, 0, b"/\0"));
    assert!(s.pop_output(3).is_none(), "a domain never introduced is not answered");
    s.destroy_domain(5);
    let events: Vec<Vec<u8>> = drain(&mut s, 0).into_iter().map(|m| m.payload).collect();
    assert_eq!(events, [b"@releaseDomain\0r\0".to_vec()]);
    assert_eq!(call(&mut s, 0, MsgType::IsDomainIntroduced, 0, b"5\0"), Ok(b"F\0".to_vec()));
    assert!(s.tree().get("/local/domain/5").is_none());
    assert_eq!(s.tree().owned_by(5), 0, "nothing left owned by the released domain");
    assert_eq!(s.figures(5), None, "its watches went with its connection");
    assert_eq!(call(&mut s, 0, MsgType::GetDomainPath, 0, b"5\0"), Ok(b"/local/domain/5\0".to_vec()));
}

#[test]
fn only_domain_0_introduces_and_releases() {
    let mut s = with_domains();
    assert_eq!(call(&mut s, 1, MsgType::Introduce, 0, b"9\x0012\x003\0"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 1, MsgType::Release, 0, b"2\0"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 0, MsgType::Introduce, 0, b"9\x0012\x003\0"), Ok(b"OK\0".to_vec()));
    assert!(s.is_introduced(9));
    assert_eq!(call(&mut s, 0, MsgType::Release, 0, b"9\0"), Ok(b"OK\0".to_vec()));
    assert_eq!(call(&mut s, 0, MsgType::Release, 0, b"9\0"), Err(XsError::Enoent));
    assert_eq!(call(&mut s, 0, MsgType::Introduce, 0, b"99999\x0012\x003\0"), Err(XsError::Einval));
    assert_eq!(call(&mut s, 1, MsgType::Control, 0, b"x\0"), Err(XsError::Eacces));
    assert_eq!(call(&mut s, 1, MsgType::WatchEvent, 0, b"x\0t\0"), Err(XsError::Einval));
}

#[test]
fn transactions_commit_or_conflict_with_eagain() {
    let mut s = with_domains();
    let id = call(&mut s, 1, MsgType::TransactionStart, 0, b"\0").unwrap();
    let tx: u32 = core::str::from_utf8(&id[..id.len() - 1]).unwrap().parse().unwrap();
    call(&mut s, 1, MsgType::Write, tx, b"data/t\0in-tx").unwrap();
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"data/t\0"), Err(XsError::Enoent), "invisible outside");
    assert_eq!(call(&mut s, 1, MsgType::Read, tx, b"data/t\0"), Ok(b"in-tx".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::TransactionEnd, tx, b"T\0"), Ok(b"OK\0".to_vec()));
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"data/t\0"), Ok(b"in-tx".to_vec()));
    // A conflict: read in the transaction, changed outside.
    let id = call(&mut s, 1, MsgType::TransactionStart, 0, b"\0").unwrap();
    let tx: u32 = core::str::from_utf8(&id[..id.len() - 1]).unwrap().parse().unwrap();
    call(&mut s, 1, MsgType::Read, tx, b"data/t\0").unwrap();
    call(&mut s, 1, MsgType::Write, tx, b"data/u\0x").unwrap();
    call(&mut s, 1, MsgType::Write, 0, b"data/t\0changed").unwrap();
    assert_eq!(call(&mut s, 1, MsgType::TransactionEnd, tx, b"T\0"), Err(XsError::Eagain));
    assert_eq!(call(&mut s, 1, MsgType::Read, 0, b"data/u\0"), Err(XsError::Enoent), "nothing applied");
    assert_eq!(call(&mut s, 1, MsgType::TransactionEnd, tx, b"T\0"), Err(XsError::Enoent), "ended");
    assert_eq!(call(&mut s, 1, MsgType::Read, 12345, b"data/t\0"), Err(XsError::Enoent), "no such transaction");
}

#[test]
fn quotas_hold_for_domains_but_domain_0() {
    let mut s = with_domains();
    s.quota = Quota { nodes: 20, watches: 3, transactions: 2, ..Quota::default() };
    let mut refused = None;
    for i in 0..30 {
        if let Err(e) = call(&mut s, 1, MsgType::Write, 0, alloc::format!("data/n{i}\0x").as_bytes()) {
            refused = Some((i, e));
            break;
        }
    }
    let (at, e) = refused.expect("the node quota");
    assert_eq!(e, XsError::Enospc);
    assert!(at < 20);
    for i in 0..3 {
        call(&mut s, 1, MsgType::Watch, 0, alloc::format!("data\0t{i}\0").as_bytes()).unwrap();
    }
    assert_eq!(call(&mut s, 1, MsgType::Watch, 0, b"data\0t9\0"), Err(XsError::E2big));
    call(&mut s, 1, MsgType::TransactionStart, 0, b"\0").unwrap();
    call(&mut s, 1, MsgType::TransactionStart, 0, b"\0").unwrap();
    assert_eq!(call(&mut s, 1, MsgType::TransactionStart, 0, b"\0"), Err(XsError::Enospc));
    let big = [b'v'; 2049];
    let mut w = b"data/n0\0".to_vec();
    w.extend_from_slice(&big);
    assert_eq!(call(&mut s, 1, MsgType::Write, 0, &w), Err(XsError::Enospc));
    // Domain 2 is not slowed: its quota is its own.
    assert_eq!(call(&mut s, 2, MsgType::Write, 0, b"data/k\0v"), Ok(b"OK\0".to_vec()));
    let mut w0 = b"/x\0".to_vec();
    w0.extend_from_slice(&big);
    assert_eq!(call(&mut s, 0, MsgType::Write, 0, &w0), Ok(b"OK\0".to_vec()));
}

#[test]
fn the_memory_quota_bounds_what_a_domain_holds() {
    let mut s = with_domains();
    s.quota = Quota { memory: 16 << 10, ..Quota::default() };
    let before = s.memory_of(1);
    let value = [b'v'; 2000];
    let mut refused = None;
    for i in 0..20 {
        let mut w = alloc::format!("data/big{i}\0").into_bytes();
        w.extend_from_slice(&value);
        if let Err(e) = call(&mut s, 1, MsgType::Write, 0, &w) {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(refused, Some(XsError::Enomem));
    assert!(s.memory_of(1) <= 16 << 10);
    assert_eq!(call(&mut s, 2, MsgType::Write, 0, b"data/k\0v"), Ok(b"OK\0".to_vec()), "others unaffected");
    call(&mut s, 1, MsgType::Rm, 0, b"data\0").unwrap();
    assert!(s.memory_of(1) < before, "removing gives it back");
    s.destroy_domain(1);
    assert_eq!(s.memory_of(1), 0);
    assert_eq!(s.tree().bytes_of(1), 0);
}

#[test]
fn a_domain_that_never_reads_its_replies_stops_being_read() {
    let mut s = with_domains();
    for _ in 0..s.quota.outstanding {
        assert!(s.may_read_requests(1));
        s.handle(1, &req(MsgType::Read, 0, b"name\0"));
    }
    assert!(!s.may_read_requests(1));
    assert!(s.may_read_requests(2));
    s.pop_output(1);
    assert!(s.may_read_requests(1));
    // Events beyond the queue's room are dropped, not kept.
    call(&mut s, 2, MsgType::Watch, 0, b"data\0t\0").unwrap();
    for i in 0..2000 {
        s.handle(0, &req(MsgType::Write, 0, alloc::format!("/local/domain/2/data/k{}\0x", i % 50).as_bytes()));
        drain(&mut s, 0);
    }
    assert!(s.figures(2).unwrap().dropped_events > 0);
}

#[test]
fn directory_part_lists_in_pieces() {
    let mut s = Store::new();
    for i in 0..400 {
        s.write_as(0, &alloc::format!("/big/child-with-a-long-name-{i:04}"), b"").unwrap();
    }
    assert_eq!(call(&mut s, 0, MsgType::Directory, 0, b"/big\0"), Err(XsError::E2big));
    let mut names = Vec::new();
    let mut offset = 0usize;
    loop {
        let part = call(&mut s, 0, MsgType::DirectoryPart, 0, alloc::format!("/big\0{offset}\0").as_bytes()).unwrap();
        let gen_end = part.iter().position(|&b| b == 0).unwrap();
        let body = &part[gen_end + 1..];
        if body.ends_with(b"\0\0") || body == b"\0" {
            names.extend(body[..body.len() - 1].split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| n.to_vec()));
            break;
        }
        offset += body.len();
        names.extend(body.split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| n.to_vec()));
    }
    assert_eq!(names.len(), 400);
}

// ---- Property tests ----------------------------------------------------------------------

fn any_type() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..24, any::<u32>()]
}

proptest! {
    /// Random requests (any type, any payload, any transaction id) from a domain never
    /// panic, and each gets exactly one reply with its request id.
    #[test]
    fn hostile_requests_get_answers_never_panics(reqs in proptest::collection::vec((any_type(), any::<u32>(), prop_oneof![Just(0u32), 1u32..4, any::<u32>()], proptest::collection::vec(prop_oneof![any::<u8>(), Just(0u8), Just(b'/'), Just(b'a')], 0..64)), 1..40)) {
        let mut s = with_domains();
        for (ty, req_id, tx, payload) in reqs {
            let m = Message { header: Header { ty, req_id, tx_id: tx, len: payload.len() as u32 }, payload };
            s.handle(1, &m);
            let replies: Vec<Message> = drain(&mut s, 1).into_iter().filter(|m| m.header.ty != MsgType::WatchEvent as u32).collect();
            prop_assert_eq!(replies.len(), 1);
            prop_assert_eq!(replies[0].header.req_id, req_id);
        }
        prop_assert!(s.tree().get("/local/domain/2/name").is_some(), "domain 2's keys survive");
    }

    /// Random bytes through the reader: whole messages or a protocol error, never a panic,
    /// never more bytes held than one message.
    #[test]
    fn the_reader_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..9000), chunk in 1usize..300) {
        let mut r = Reader::default();
        let mut s = with_domains();
        for piece in bytes.chunks(chunk) {
            let mut rest = piece;
            while !rest.is_empty() {
                match r.feed(rest) {
                    Ok(Fed::Partial(n)) => { prop_assert_eq!(n, rest.len()); rest = &[]; }
                    Ok(Fed::Message(n, m)) => { s.handle(1, &m); drain(&mut s, 1); rest = &rest[n..]; }
                    Err(_) => return Ok(()),
                }
                prop_assert!(r.buffered() <= wire::HEADER_SIZE + wire::PAYLOAD_MAX);
            }
        }
    }

    /// Domain 0's writes, removals and reads, in or out of a transaction, agree with a map
    /// of paths to values (parents implied).
    #[test]
    fn the_tree_matches_a_model(ops in proptest::collection::vec((0u8..4, 0usize..6, 0usize..6, any::<u8>()), 1..80)) {
        let names = ["a", "b", "c", "a/x", "a/y", "b/z"];
        let mut s = Store::new();
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let tx = {
            let id = call(&mut s, 0, MsgType::TransactionStart, 0, b"\0").unwrap();
            core::str::from_utf8(&id[..id.len() - 1]).unwrap().parse::<u32>().unwrap()
        };
        let mut tx_model = model.clone();
        for (op, n, _m, v) in ops {
            let p = alloc::format!("/t/{}", names[n]);
            match op {
                0 => {
                    let mut payload = p.clone().into_bytes();
                    payload.push(0);
                    payload.push(v);
                    call(&mut s, 0, MsgType::Write, tx, &payload).unwrap();
                    let mut q = p.as_str();
                    while let Some(parent) = crate::path::parent(q) {
                        if parent == "/" { break; }
                        tx_model.entry(String::from(parent)).or_default();
                        q = parent;
                    }
                    tx_model.insert(p, alloc::vec![v]);
                }
                1 => {
                    let mut payload = p.clone().into_bytes();
                    payload.push(0);
                    let _ = call(&mut s, 0, MsgType::Rm, tx, &payload);
                    let prefix = alloc::format!("{p}/");
                    tx_model.retain(|k, _| *k != p && !k.starts_with(prefix.as_str()));
                }
                2 => {
                    let mut payload = p.clone().into_bytes();
                    payload.push(0);
                    let got = call(&mut s, 0, MsgType::Read, tx, &payload).ok();
                    prop_assert_eq!(got, tx_model.get(&p).cloned());
                }
                _ => {
                    call(&mut s, 0, MsgType::TransactionEnd, tx, b"T\0").unwrap();
                    model = tx_model.clone();
                    let id = call(&mut s, 0, MsgType::TransactionStart, 0, b"\0").unwrap();
                    let new = core::str::from_utf8(&id[..id.len() - 1]).unwrap().parse::<u32>().unwrap();
                    return proptest_check(&mut s, &model, new);
                }
            }
        }
        call(&mut s, 0, MsgType::TransactionEnd, tx, b"F\0").unwrap();
        proptest_check(&mut s, &model, 0)?;
    }
}

/// The committed tree under `/t` equals `model`.
fn proptest_check(s: &mut Store, model: &BTreeMap<String, Vec<u8>>, _tx: u32) -> Result<(), TestCaseError> {
    for (p, v) in model {
        let got = s.read_as(0, p).ok();
        prop_assert_eq!(got.as_ref(), Some(v), "{}", p);
    }
    let mut count = 0;
    let mut stack = alloc::vec![String::from("/t")];
    while let Some(p) = stack.pop() {
        for c in s.tree().children(&p) {
            count += 1;
            stack.push(alloc::format!("{p}/{c}"));
        }
    }
    prop_assert_eq!(count, model.keys().filter(|k| k.as_str() != "/t").count());
    let _ = encode;
    Ok(())
}

//! GRUB's Xen image as a store client, replayed byte for byte through the ring server:
//! the conversation its `grub_xendisk_init` and disk open have with the store (GRUB 2.06,
//! `grub-core/kern/xen/init.c` and `disk/xen/xendisk.c`; docs/abi.md lists it), framed as
//! GRUB frames it (`grub_xen_store_send` writes the header and the payload as separate
//! chunks, with a notification and a yield after each; `grub_xen_store_recv` reads the
//! reply's header, then its payload). Every request has `req_id` 0 and `tx_id` 0, paths are
//! relative to the domain's home, and written values carry no NUL.
//!
//! The tree is set up as Xen's toolstack (libxl) sets up a VBD: the frontend directory
//! owned by the guest and readable by the backend, the backend directory owned by domain 0
//! and readable by the guest. A store or a layout that GRUB cannot use fails here first.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::perms::{Perm, PermKind};
use crate::server::{Connection, RingPage};
use crate::wire::{self, Header, MsgType};
use crate::Store;

const GRUB: u16 = 1;
const VBD: &str = "51712";
const BACKEND: &str = "/local/domain/0/backend/vbd/1/51712";
const FRONTEND: &str = "/local/domain/1/device/vbd/51712";
/// The ring size of `req` and `rsp` (io/xs_wire.h).
const RING: u32 = 1024;

struct Page(RefCell<[u8; 4096]>);

impl RingPage for Page {
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

/// Domain 0's server and GRUB's end of one ring.
struct World {
    store: Store,
    page: Page,
    conn: Connection,
    /// Server passes: every GRUB notification (a send then a yield) lets one pass run.
    passes: u32,
}

impl World {
    fn new() -> World {
        let mut store = Store::new();
        store.create_domain(GRUB, "grub").unwrap();
        let mut world = World { store, page: Page(RefCell::new([0; 4096])), conn: Connection::new(GRUB), passes: 0 };
        world.toolstack_vbd();
        world
    }

    /// What libxl writes for a VBD `xvda` of the guest, backend in domain 0, before it runs.
    fn toolstack_vbd(&mut self) {
        let s = &mut self.store;
        let front = [("backend", BACKEND), ("backend-id", "0"), ("state", "1"), ("virtual-device", VBD), ("device-type", "disk")];
        for (key, value) in front {
            s.write_as(0, &format!("{FRONTEND}/{key}"), value.as_bytes()).unwrap();
        }
        let back = [
            ("frontend", FRONTEND),
            ("frontend-id", "1"),
            ("online", "1"),
            ("state", "2"),
            ("dev", "xvda"),
            ("type", "phy"),
            ("mode", "r"),
            ("sectors", "4096"),
            ("sector-size", "512"),
            ("info", "4"),
        ];
        for (key, value) in back {
            s.write_as(0, &format!("{BACKEND}/{key}"), value.as_bytes()).unwrap();
        }
        let guest_owns = || alloc::vec![Perm { domid: GRUB, kind: PermKind::None }, Perm { domid: 0, kind: PermKind::Read }];
        let backend_owns = || alloc::vec![Perm { domid: 0, kind: PermKind::None }, Perm { domid: GRUB, kind: PermKind::Read }];
        s.set_perms(FRONTEND, guest_owns()).unwrap();
        for (key, _) in front {
            s.set_perms(&format!("{FRONTEND}/{key}"), guest_owns()).unwrap();
        }
        s.set_perms(BACKEND, backend_owns()).unwrap();
        for (key, _) in back {
            s.set_perms(&format!("{BACKEND}/{key}"), backend_owns()).unwrap();
        }
    }

    /// `EVTCHNOP_send` on the store port and `SCHEDOP_yield`: the server runs a pass.
    fn notify(&mut self) {
        self.conn.serve(&mut self.store, &self.page, 8);
        self.passes += 1;
        assert!(self.passes < 10_000, "GRUB waits for ever");
    }

    /// `grub_xen_store_send`: as much as the request ring takes, a notification after
    /// each chunk.
    fn send(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let prod = self.page.load_u32(wire::REQ_PROD_OFFSET);
            let cons = self.page.load_u32(wire::REQ_CONS_OFFSET);
            let room = (cons.wrapping_add(RING).wrapping_sub(prod)).min(RING - (prod % RING)) as usize;
            let n = room.min(bytes.len());
            for (i, &b) in bytes[..n].iter().enumerate() {
                self.page.store_u8(wire::REQ_OFFSET + wire::ring_slot(prod.wrapping_add(i as u32)), b);
            }
            self.page.store_u32(wire::REQ_PROD_OFFSET, prod.wrapping_add(n as u32));
            bytes = &bytes[n..];
            self.notify();
        }
    }

    /// `grub_xen_store_recv` of `len` bytes: polls (notify and yield) until they are there.
    fn recv(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < len {
            let prod = self.page.load_u32(wire::RSP_PROD_OFFSET);
            let cons = self.page.load_u32(wire::RSP_CONS_OFFSET);
            let n = (prod.wrapping_sub(cons) as usize).min(len - out.len()).min((RING - cons % RING) as usize);
            for i in 0..n {
                out.push(self.page.load_u8(wire::RSP_OFFSET + wire::ring_slot(cons.wrapping_add(i as u32))));
            }
            self.page.store_u32(wire::RSP_CONS_OFFSET, cons.wrapping_add(n as u32));
            self.notify();
        }
        out
    }

    /// One of GRUB's requests: the header, then the path with its NUL, then the value (no
    /// NUL). Returns the reply's type and payload.
    fn request(&mut self, ty: MsgType, path: &str, value: &[u8]) -> (u32, Vec<u8>) {
        let mut dir = Vec::from(path.as_bytes());
        dir.push(0);
        let header = Header { ty: ty as u32, req_id: 0, tx_id: 0, len: (dir.len() + value.len()) as u32 };
        self.send(&header.to_bytes());
        self.send(&dir);
        if !value.is_empty() {
            self.send(value);
        }
        let reply = Header::parse(&self.recv(wire::HEADER_SIZE)).unwrap();
        assert_eq!((reply.req_id, reply.tx_id), (0, 0), "{path}: the reply names GRUB's request");
        let payload = self.recv(reply.len as usize);
        (reply.ty, payload)
    }

    /// `grub_xenstore_get_file`: the value, or the error's name.
    fn read(&mut self, path: &str) -> Result<String, String> {
        let (ty, payload) = self.request(MsgType::Read, path, &[]);
        let text = String::from_utf8(payload).unwrap();
        if ty == MsgType::Error as u32 {
            Err(text)
        } else {
            assert_eq!(ty, MsgType::Read as u32);
            Ok(text)
        }
    }

    /// `grub_xenstore_write_file`.
    fn write(&mut self, path: &str, value: &str) {
        let (ty, payload) = self.request(MsgType::Write, path, value.as_bytes());
        assert_eq!(ty, MsgType::Write as u32, "{path}: {}", String::from_utf8_lossy(&payload));
    }

    /// `grub_xenstore_dir`: the entries.
    fn directory(&mut self, path: &str) -> Vec<String> {
        let (ty, payload) = self.request(MsgType::Directory, path, &[]);
        assert_eq!(ty, MsgType::Directory as u32, "{path}: {}", String::from_utf8_lossy(&payload));
        payload.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8(s.to_vec()).unwrap()).collect()
    }
}

#[test]
fn grub_finds_connects_and_opens_its_disk() {
    let mut w = World::new();
    // grub_xendisk_init: count the disks, then fill.
    assert_eq!(w.directory("device/vbd"), [VBD]);
    assert_eq!(w.directory("device/vbd"), [VBD]);
    let backend = w.read(&format!("device/vbd/{VBD}/backend")).unwrap();
    assert_eq!(backend, BACKEND);
    assert_eq!(w.read(&format!("{backend}/dev")).unwrap(), "xvda", "GRUB names the disk (xen/xvda)");
    assert_eq!(w.read(&format!("device/vbd/{VBD}/backend-id")).unwrap(), "0");
    w.write(&format!("device/vbd/{VBD}/ring-ref"), "8");
    w.write(&format!("device/vbd/{VBD}/event-channel"), "5");
    w.write(&format!("device/vbd/{VBD}/protocol"), "x86_64-abi");
    w.write(&format!("device/vbd/{VBD}/state"), "3");
    // The backend sees what GRUB wrote, exactly, and connects.
    for (key, value) in [("ring-ref", "8"), ("event-channel", "5"), ("protocol", "x86_64-abi"), ("state", "3")] {
        assert_eq!(w.store.read_as(0, &format!("{FRONTEND}/{key}")).unwrap(), value.as_bytes(), "{key}");
    }
    assert_eq!(w.read(&format!("{backend}/state")).unwrap(), "2", "GRUB polls while it reads 2");
    w.store.write_as(0, &format!("{BACKEND}/state"), b"4").unwrap();
    assert_eq!(w.read(&format!("{backend}/state")).unwrap(), "4");
    // grub_virtdisk_open.
    assert_eq!(w.read(&format!("{backend}/sectors")).unwrap(), "4096");
    assert_eq!(w.read(&format!("{backend}/sector-size")).unwrap(), "512");
    // Only its own disk: another domain's backend directory is not readable.
    w.store.write_as(0, "/local/domain/0/backend/vbd/2/51712/sectors", b"1").unwrap();
    assert_eq!(w.read("/local/domain/0/backend/vbd/2/51712/sectors"), Err(String::from("EACCES\0")), "error names end in NUL, as xenstored's");
    assert_eq!(w.conn.broken(), None);
}

#[test]
fn grub_without_disks_gets_an_error_or_nothing_and_goes_on() {
    let mut store = Store::new();
    store.create_domain(GRUB, "grub").unwrap();
    let mut w = World { store, page: Page(RefCell::new([0; 4096])), conn: Connection::new(GRUB), passes: 0 };
    // No device/vbd: XS_ERROR, which GRUB takes as no disks.
    let (ty, payload) = w.request(MsgType::Directory, "device/vbd", &[]);
    assert_eq!((ty, payload.as_slice()), (MsgType::Error as u32, &b"ENOENT\0"[..]));
}

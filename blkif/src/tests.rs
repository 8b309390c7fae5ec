//! Host tests: codec round trips, each refusal, and random requests (never a panic; what
//! passes stays inside the VBD and its pages; what fails gets the right status).

use proptest::prelude::*;
use xenring::Entry;

use crate::check::{check_request, Reason, Vbd};
use crate::wire::*;
use crate::xenbus::{parse_u32, xvd_number, XenbusState};

fn rw(operation: u8, sector_number: u64, segs: &[(u32, u8, u8)]) -> Request {
    let mut r = Request { operation, nr_segments: segs.len() as u8, handle: 51712, id: 0xfeed, sector_number, ..Default::default() };
    for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
        r.seg[i] = Segment { gref, first_sect, last_sect };
    }
    r
}

const DISK: Vbd = Vbd { sectors: 2048, read_only: false };
const RO: Vbd = Vbd { sectors: 2048, read_only: true };

#[test]
fn ring_holds_32_requests_per_page() {
    assert_eq!(ring_layout(1).unwrap().entries(), 32);
    assert_eq!(ring_layout(2).unwrap().entries(), 64);
    assert_eq!(Request::SIZE, 112);
    assert_eq!(Response::SIZE, 16);
}

#[test]
fn codec_round_trip_and_c_offsets() {
    let r = rw(OP_WRITE, 0x1122334455667788, &[(0xdeadbeef, 1, 7), (5, 0, 0)]);
    let mut b = [0u8; 112];
    r.encode(&mut b);
    assert_eq!(b[0], OP_WRITE);
    assert_eq!(b[1], 2);
    assert_eq!(u16::from_le_bytes([b[2], b[3]]), 51712);
    assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 0xfeed);
    assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0x1122334455667788);
    assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 0xdeadbeef);
    assert_eq!((b[28], b[29]), (1, 7));
    assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 5);
    assert_eq!(Request::decode(&b), r);
    let rsp = Response { id: 9, operation: OP_READ, status: RSP_EOPNOTSUPP };
    let mut b = [0u8; 16];
    rsp.encode(&mut b);
    assert_eq!(b[8], OP_READ);
    assert_eq!(i16::from_le_bytes([b[10], b[11]]), -2);
    assert_eq!(Response::decode(&b), rsp);
}

#[test]
fn good_read_and_write_become_chunks() {
    let w = check_request(&rw(OP_READ, 10, &[(7, 0, 7), (8, 2, 3)]), &DISK).unwrap();
    assert!(!w.write && !w.flush);
    let c: Vec<_> = w.chunks().collect();
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].gref, c[0].page_offset, c[0].vbd_offset, c[0].len), (7, 0, 5120, 4096));
    assert_eq!((c[1].gref, c[1].page_offset, c[1].vbd_offset, c[1].len), (8, 1024, 5120 + 4096, 1024));
    assert_eq!(w.response(true), Response { id: 0xfeed, operation: OP_READ, status: RSP_OKAY });
    assert_eq!(w.response(false).status, RSP_ERROR);
    let w = check_request(&rw(OP_WRITE, 2047, &[(1, 0, 0)]), &DISK).unwrap();
    assert!(w.write);
}

#[test]
fn flush_with_and_without_data() {
    let w = check_request(&rw(OP_FLUSH_DISKCACHE, 0, &[]), &DISK).unwrap();
    assert!(w.flush && !w.write && w.chunks().count() == 0);
    let w = check_request(&rw(OP_FLUSH_DISKCACHE, 0, &[]), &RO).unwrap();
    assert!(w.flush);
    let w = check_request(&rw(OP_FLUSH_DISKCACHE, 4, &[(3, 0, 7)]), &DISK).unwrap();
    assert!(w.flush && w.write);
    let e = check_request(&rw(OP_FLUSH_DISKCACHE, 4, &[(3, 0, 7)]), &RO).unwrap_err();
    assert_eq!(e.reason, Reason::ReadOnly);
}

#[test]
fn each_refusal_has_its_status() {
    let cases: &[(Request, Vbd, Reason, i16)] = &[
        (rw(OP_WRITE_BARRIER, 0, &[(1, 0, 7)]), DISK, Reason::NotOffered(2), RSP_EOPNOTSUPP),
        (rw(OP_DISCARD, 0, &[]), DISK, Reason::NotOffered(5), RSP_EOPNOTSUPP),
        (rw(OP_INDIRECT, 0, &[]), DISK, Reason::NotOffered(6), RSP_EOPNOTSUPP),
        (rw(OP_RESERVED_1, 0, &[]), DISK, Reason::NotOffered(4), RSP_EOPNOTSUPP),
        (rw(7, 0, &[]), DISK, Reason::UnknownOperation(7), RSP_EOPNOTSUPP),
        (rw(255, 0, &[]), DISK, Reason::UnknownOperation(255), RSP_EOPNOTSUPP),
        (rw(OP_READ, 0, &[]), DISK, Reason::NoSegments, RSP_ERROR),
        (rw(OP_WRITE, 0, &[(1, 0, 0)]), RO, Reason::ReadOnly, RSP_ERROR),
        (rw(OP_READ, 0, &[(1, 3, 2)]), DISK, Reason::BadSegment { index: 0, first_sect: 3, last_sect: 2 }, RSP_ERROR),
        (rw(OP_READ, 0, &[(1, 0, 7), (1, 0, 8)]), DISK, Reason::BadSegment { index: 1, first_sect: 0, last_sect: 8 }, RSP_ERROR),
        (rw(OP_READ, 2047, &[(1, 0, 1)]), DISK, Reason::PastEnd { sector_number: 2047, sectors: 2, vbd_sectors: 2048 }, RSP_ERROR),
        (rw(OP_READ, u64::MAX, &[(1, 0, 0)]), DISK, Reason::PastEnd { sector_number: u64::MAX, sectors: 1, vbd_sectors: 2048 }, RSP_ERROR),
    ];
    for (req, vbd, reason, status) in cases {
        let e = check_request(req, vbd).unwrap_err();
        assert_eq!(e.reason, *reason, "{req:?}");
        assert_eq!(e.response, Response { id: 0xfeed, operation: req.operation, status: *status });
    }
    let mut many = rw(OP_READ, 0, &[(1, 0, 0)]);
    many.nr_segments = 12;
    assert_eq!(check_request(&many, &DISK).unwrap_err().reason, Reason::TooManySegments(12));
    many.nr_segments = 255;
    assert_eq!(check_request(&many, &DISK).unwrap_err().reason, Reason::TooManySegments(255));
}

#[test]
fn xenbus_numbers() {
    assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
    assert_eq!(XenbusState::parse(b"6\0"), Some(XenbusState::Closed));
    assert_eq!(XenbusState::parse(b"9"), None);
    assert_eq!(XenbusState::parse(b""), None);
    assert_eq!(XenbusState::parse(b"-1"), None);
    assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
    assert_eq!(parse_u32(b"4294967296"), None);
    assert_eq!(parse_u32(b"99999999999"), None);
    assert_eq!(xvd_number(0), Some(51712));
    assert_eq!(xvd_number(1), Some(51728));
    assert_eq!(xvd_number(16), None);
}

proptest! {
    /// Any bytes as a request against any VBD: never a panic; what passes stays inside the
    /// VBD and inside each segment's page and was allowed (no write to a read-only VBD, a
    /// known operation, at most 11 segments); what fails answers the request's id and
    /// operation with an error status, EOPNOTSUPP exactly for operations not served.
    #[test]
    fn random_requests(bytes in proptest::collection::vec(any::<u8>(), 112),
                       op in 0u8..9, nseg in 0u8..14, sectors in 0u64..5000, read_only in any::<bool>(),
                       sector in prop_oneof![0u64..5000, any::<u64>()], force in any::<bool>()) {
        let mut req = Request::decode(&bytes);
        if force {
            req.operation = op;
            req.nr_segments = nseg;
            req.sector_number = sector;
            for s in req.seg.iter_mut() {
                s.first_sect %= 9;
                s.last_sect %= 9;
            }
        }
        let vbd = Vbd { sectors, read_only };
        match check_request(&req, &vbd) {
            Ok(w) => {
                prop_assert!(matches!(req.operation, OP_READ | OP_WRITE | OP_FLUSH_DISKCACHE));
                prop_assert!(w.segments() <= MAX_SEGMENTS);
                prop_assert!(!(w.write && read_only));
                prop_assert_eq!(w.write, req.operation == OP_WRITE || (req.operation == OP_FLUSH_DISKCACHE && req.nr_segments > 0));
                let mut next = None;
                for c in w.chunks() {
                    prop_assert!(c.len > 0 && c.len % 512 == 0);
                    prop_assert!(c.page_offset as u32 + c.len as u32 <= 4096);
                    prop_assert!(c.vbd_offset + c.len as u64 <= sectors * 512);
                    if let Some(n) = next {
                        prop_assert_eq!(c.vbd_offset, n);
                    }
                    next = Some(c.vbd_offset + c.len as u64);
                }
                prop_assert_eq!(w.response(true).id, req.id);
            }
            Err(r) => {
                prop_assert_eq!(r.response.id, req.id);
                prop_assert_eq!(r.response.operation, req.operation);
                let unsupported = !matches!(req.operation, OP_READ | OP_WRITE | OP_FLUSH_DISKCACHE);
                prop_assert_eq!(r.response.status == RSP_EOPNOTSUPP, unsupported);
                if !unsupported {
                    prop_assert_eq!(r.response.status, RSP_ERROR);
                }
            }
        }
    }
}

//! Checks `blkif::wire`'s layouts and numbers against Xen's own `io/blkif.h`,
//! `io/xenbus.h` and `io/protocols.h`: compiles a small C program with gcc that prints every
//! size, offset and constant, and compares each with the Rust one. Skipped, with a message
//! saying why, when the headers or gcc are missing (`make deps` installs them).

use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use blkif::wire::*;
use blkif::xenbus::XenbusState;

struct Check {
    c: String,
    rust: i64,
}

macro_rules! layout {
    ($checks:ident, $c_type:literal, $rust:ty, { $($c_field:literal => $field:ident),* $(,)? }) => {
        $checks.push(Check { c: format!("sizeof({})", $c_type), rust: size_of::<$rust>() as i64 });
        $( $checks.push(Check { c: format!("offsetof({}, {})", $c_type, $c_field), rust: offset_of!($rust, $field) as i64 }); )*
    };
}

fn checks() -> Vec<Check> {
    let mut checks = Vec::new();
    layout!(checks, "struct blkif_request_segment", Segment, { "gref" => gref, "first_sect" => first_sect, "last_sect" => last_sect });
    layout!(checks, "struct blkif_request", Request, {
        "operation" => operation, "nr_segments" => nr_segments, "handle" => handle, "id" => id,
        "sector_number" => sector_number, "seg" => seg,
    });
    layout!(checks, "struct blkif_request_discard", RequestDiscard, {
        "operation" => operation, "flag" => flag, "handle" => handle, "id" => id,
        "sector_number" => sector_number, "nr_sectors" => nr_sectors,
    });
    layout!(checks, "struct blkif_request_indirect", RequestIndirect, {
        "operation" => operation, "indirect_op" => indirect_op, "nr_segments" => nr_segments, "id" => id,
        "sector_number" => sector_number, "handle" => handle, "indirect_grefs" => indirect_grefs,
    });
    layout!(checks, "struct blkif_response", Response, { "id" => id, "operation" => operation, "status" => status });
    let ring = ring_layout(1).unwrap();
    checks.push(Check { c: "__CONST_RING_SIZE(blkif, 4096)".into(), rust: ring.entries() as i64 });
    checks.push(Check { c: "__CONST_RING_SIZE(blkif, 8192)".into(), rust: ring_layout(2).unwrap().entries() as i64 });
    checks.push(Check { c: "sizeof(union blkif_sring_entry)".into(), rust: ring.entry_bytes() as i64 });
    checks.push(Check { c: "offsetof(struct blkif_sring, ring)".into(), rust: xenring::HEADER_BYTES as i64 });
    checks.push(Check { c: "offsetof(struct blkif_sring, req_prod)".into(), rust: xenring::Layout::REQ_PROD as i64 });
    checks.push(Check { c: "offsetof(struct blkif_sring, req_event)".into(), rust: xenring::Layout::REQ_EVENT as i64 });
    checks.push(Check { c: "offsetof(struct blkif_sring, rsp_prod)".into(), rust: xenring::Layout::RSP_PROD as i64 });
    checks.push(Check { c: "offsetof(struct blkif_sring, rsp_event)".into(), rust: xenring::Layout::RSP_EVENT as i64 });
    for (name, value) in [
        ("BLKIF_OP_READ", OP_READ as i64),
        ("BLKIF_OP_WRITE", OP_WRITE as i64),
        ("BLKIF_OP_WRITE_BARRIER", OP_WRITE_BARRIER as i64),
        ("BLKIF_OP_FLUSH_DISKCACHE", OP_FLUSH_DISKCACHE as i64),
        ("BLKIF_OP_RESERVED_1", OP_RESERVED_1 as i64),
        ("BLKIF_OP_DISCARD", OP_DISCARD as i64),
        ("BLKIF_OP_INDIRECT", OP_INDIRECT as i64),
        ("BLKIF_MAX_SEGMENTS_PER_REQUEST", MAX_SEGMENTS as i64),
        ("BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", MAX_INDIRECT_PAGES as i64),
        ("BLKIF_DISCARD_SECURE", DISCARD_SECURE as i64),
        ("BLKIF_RSP_OKAY", RSP_OKAY as i64),
        ("BLKIF_RSP_ERROR", RSP_ERROR as i64),
        ("BLKIF_RSP_EOPNOTSUPP", RSP_EOPNOTSUPP as i64),
        ("VDISK_CDROM", VDISK_CDROM as i64),
        ("VDISK_REMOVABLE", VDISK_REMOVABLE as i64),
        ("VDISK_READONLY", VDISK_READONLY as i64),
    ] {
        checks.push(Check { c: format!("(long)({name})"), rust: value });
    }
    let names = [
        "XenbusStateUnknown", "XenbusStateInitialising", "XenbusStateInitWait", "XenbusStateInitialised",
        "XenbusStateConnected", "XenbusStateClosing", "XenbusStateClosed", "XenbusStateReconfiguring",
        "XenbusStateReconfigured",
    ];
    for (name, state) in names.iter().zip(XenbusState::ALL) {
        checks.push(Check { c: format!("(long)({name})"), rust: state.raw() as i64 });
    }
    checks.push(Check {
        c: format!("(long)strcmp(XEN_IO_PROTO_ABI_X86_64, \"{}\")", blkif::xenbus::PROTOCOL_X86_64),
        rust: 0,
    });
    checks
}

#[test]
fn blkif_layouts_match_xen_headers() {
    let header = Path::new("/usr/include/xen/io/blkif.h");
    if !header.exists() {
        eprintln!("skipped: {} is missing (install libxen-dev: make deps)", header.display());
        return;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipped: gcc is missing");
        return;
    }
    let checks = checks();
    let dir = std::env::temp_dir().join(format!("blkif-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut program = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <string.h>\n#include <xen/xen.h>\n#include <xen/grant_table.h>\n#include <xen/io/blkif.h>\n#include <xen/io/xenbus.h>\n#include <xen/io/protocols.h>\nint main(void) {\n",
    );
    for check in &checks {
        program.push_str(&format!("    printf(\"%ld\\n\", (long)({}));\n", check.c));
    }
    program.push_str("    return 0;\n}\n");
    let source = dir.join("layout.c");
    let binary = dir.join("layout");
    std::fs::write(&source, program).unwrap();
    let compiled = Command::new("gcc").arg("-o").arg(&binary).arg(&source).output().unwrap();
    assert!(compiled.status.success(), "gcc failed:\n{}", String::from_utf8_lossy(&compiled.stderr));
    let run = Command::new(&binary).output().unwrap();
    assert!(run.status.success());
    let printed = String::from_utf8(run.stdout).unwrap();
    let values: Vec<i64> = printed.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), checks.len());
    let wrong: Vec<String> = checks
        .iter()
        .zip(&values)
        .filter(|(check, &c)| c != check.rust)
        .map(|(check, c)| format!("{}: C {} / Rust {}", check.c, c, check.rust))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "layouts differ from Xen's headers:\n{}", wrong.join("\n"));
    eprintln!("{} sizes, offsets and numbers match io/blkif.h", checks.len());
}

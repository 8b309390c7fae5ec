//! Checks the grant-table layouts of `abi::grant_table` against Xen's own public header:
//! compiles a small C program with gcc against `/usr/include/xen/grant_table.h` (Debian's
//! `libxen-dev`) that prints the size of every struct and the offset of every field, and
//! compares each number with the Rust type's. Skipped, with a message saying why, when the
//! headers or gcc are missing (`make deps` installs them; CI has them).

use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use abi::grant_table::*;

/// One number to compare: the C expression and the Rust value.
struct Check {
    c: String,
    rust: usize,
}

macro_rules! layout {
    ($checks:ident, $c_type:literal, $rust:ty, { $($c_field:literal => $field:ident),* $(,)? }) => {
        $checks.push(Check { c: format!("sizeof({})", $c_type), rust: size_of::<$rust>() });
        $( $checks.push(Check { c: format!("offsetof({}, {})", $c_type, $c_field), rust: offset_of!($rust, $field) }); )*
    };
}

macro_rules! constant {
    ($checks:ident, $c_name:literal, $value:expr) => {
        // Compared as the value's bits (negative statuses included).
        $checks.push(Check { c: format!("(unsigned long)(long)({})", $c_name), rust: $value as i64 as usize });
    };
}

fn checks() -> Vec<Check> {
    let mut checks = Vec::new();
    layout!(checks, "grant_entry_v1_t", GrantEntryV1, { "flags" => flags, "domid" => domid, "frame" => frame });
    layout!(checks, "grant_entry_header_t", GrantEntryHeader, { "flags" => flags, "domid" => domid });
    layout!(checks, "grant_entry_v2_t", GrantEntryV2, { "hdr" => hdr, "full_page.pad0" => word1, "full_page.frame" => frame });
    checks.push(Check { c: "offsetof(grant_entry_v2_t, sub_page.page_off)".into(), rust: offsets::V2_PAGE_OFF });
    checks.push(Check { c: "offsetof(grant_entry_v2_t, sub_page.length)".into(), rust: offsets::V2_LENGTH });
    checks.push(Check { c: "offsetof(grant_entry_v2_t, sub_page.frame)".into(), rust: offsets::V2_FRAME });
    checks.push(Check { c: "offsetof(grant_entry_v2_t, transitive.trans_domid)".into(), rust: offsets::V2_TRANS_DOMID });
    checks.push(Check { c: "offsetof(grant_entry_v2_t, transitive.gref)".into(), rust: offsets::V2_TRANS_GREF });
    checks.push(Check { c: "offsetof(grant_entry_v1_t, frame)".into(), rust: offsets::V1_FRAME });
    checks.push(Check { c: "sizeof(grant_status_t)".into(), rust: 2 });
    layout!(checks, "gnttab_map_grant_ref_t", GnttabMapGrantRef, {
        "host_addr" => host_addr, "flags" => flags, "ref" => ref_, "dom" => dom, "status" => status,
        "handle" => handle, "dev_bus_addr" => dev_bus_addr,
    });
    layout!(checks, "gnttab_unmap_grant_ref_t", GnttabUnmapGrantRef, {
        "host_addr" => host_addr, "dev_bus_addr" => dev_bus_addr, "handle" => handle, "status" => status,
    });
    layout!(checks, "gnttab_unmap_and_replace_t", GnttabUnmapAndReplace, {
        "host_addr" => host_addr, "new_addr" => new_addr, "handle" => handle, "status" => status,
    });
    layout!(checks, "gnttab_setup_table_t", GnttabSetupTable, {
        "dom" => dom, "nr_frames" => nr_frames, "status" => status, "frame_list" => frame_list,
    });
    layout!(checks, "gnttab_query_size_t", GnttabQuerySize, {
        "dom" => dom, "nr_frames" => nr_frames, "max_nr_frames" => max_nr_frames, "status" => status,
    });
    layout!(checks, "gnttab_set_version_t", GnttabSetVersion, { "version" => version });
    layout!(checks, "gnttab_get_status_frames_t", GnttabGetStatusFrames, {
        "nr_frames" => nr_frames, "dom" => dom, "status" => status, "frame_list" => frame_list,
    });
    layout!(checks, "gnttab_get_version_t", GnttabGetVersion, { "dom" => dom, "pad" => pad, "version" => version });
    layout!(checks, "gnttab_swap_grant_ref_t", GnttabSwapGrantRef, { "ref_a" => ref_a, "ref_b" => ref_b, "status" => status });
    layout!(checks, "gnttab_transfer_t", GnttabTransfer, { "mfn" => mfn, "domid" => domid, "ref" => ref_, "status" => status });
    layout!(checks, "struct gnttab_copy_ptr", GnttabCopyPtr, { "u.ref" => u, "u.gmfn" => u, "domid" => domid, "offset" => offset });
    layout!(checks, "gnttab_copy_t", GnttabCopy, {
        "source" => source, "dest" => dest, "len" => len, "flags" => flags, "status" => status,
    });
    layout!(checks, "gnttab_cache_flush_t", GnttabCacheFlush, {
        "a.dev_bus_addr" => a, "a.ref" => a, "offset" => offset, "length" => length, "op" => op,
    });
    for &op in GnttabOp::ALL {
        let name = match op {
            GnttabOp::MapGrantRef => "GNTTABOP_map_grant_ref",
            GnttabOp::UnmapGrantRef => "GNTTABOP_unmap_grant_ref",
            GnttabOp::SetupTable => "GNTTABOP_setup_table",
            GnttabOp::DumpTable => "GNTTABOP_dump_table",
            GnttabOp::Transfer => "GNTTABOP_transfer",
            GnttabOp::Copy => "GNTTABOP_copy",
            GnttabOp::QuerySize => "GNTTABOP_query_size",
            GnttabOp::UnmapAndReplace => "GNTTABOP_unmap_and_replace",
            GnttabOp::SetVersion => "GNTTABOP_set_version",
            GnttabOp::GetStatusFrames => "GNTTABOP_get_status_frames",
            GnttabOp::GetVersion => "GNTTABOP_get_version",
            GnttabOp::SwapGrantRef => "GNTTABOP_swap_grant_ref",
            GnttabOp::CacheFlush => "GNTTABOP_cache_flush",
        };
        checks.push(Check { c: format!("(unsigned long)({name})"), rust: op.raw() as usize });
    }
    constant!(checks, "GNTST_okay", GntSt::Okay.raw());
    constant!(checks, "GNTST_general_error", GntSt::GeneralError.raw());
    constant!(checks, "GNTST_bad_domain", GntSt::BadDomain.raw());
    constant!(checks, "GNTST_bad_gntref", GntSt::BadGntref.raw());
    constant!(checks, "GNTST_bad_handle", GntSt::BadHandle.raw());
    constant!(checks, "GNTST_bad_virt_addr", GntSt::BadVirtAddr.raw());
    constant!(checks, "GNTST_bad_dev_addr", GntSt::BadDevAddr.raw());
    constant!(checks, "GNTST_no_device_space", GntSt::NoDeviceSpace.raw());
    constant!(checks, "GNTST_permission_denied", GntSt::PermissionDenied.raw());
    constant!(checks, "GNTST_bad_page", GntSt::BadPage.raw());
    constant!(checks, "GNTST_bad_copy_arg", GntSt::BadCopyArg.raw());
    constant!(checks, "GNTST_address_too_big", GntSt::AddressTooBig.raw());
    constant!(checks, "GNTST_eagain", GntSt::Eagain.raw());
    constant!(checks, "GNTST_no_space", GntSt::NoSpace.raw());
    constant!(checks, "GTF_permit_access", GTF_PERMIT_ACCESS);
    constant!(checks, "GTF_accept_transfer", GTF_ACCEPT_TRANSFER);
    constant!(checks, "GTF_transitive", GTF_TRANSITIVE);
    constant!(checks, "GTF_type_mask", GTF_TYPE_MASK);
    constant!(checks, "GTF_readonly", GTF_READONLY);
    constant!(checks, "GTF_reading", GTF_READING);
    constant!(checks, "GTF_writing", GTF_WRITING);
    constant!(checks, "GTF_PWT", GTF_PWT);
    constant!(checks, "GTF_PCD", GTF_PCD);
    constant!(checks, "GTF_PAT", GTF_PAT);
    constant!(checks, "GTF_sub_page", GTF_SUB_PAGE);
    constant!(checks, "GTF_transfer_committed", GTF_TRANSFER_COMMITTED);
    constant!(checks, "GTF_transfer_completed", GTF_TRANSFER_COMPLETED);
    constant!(checks, "GNTMAP_device_map", GNTMAP_DEVICE_MAP);
    constant!(checks, "GNTMAP_host_map", GNTMAP_HOST_MAP);
    constant!(checks, "GNTMAP_readonly", GNTMAP_READONLY);
    constant!(checks, "GNTMAP_application_map", GNTMAP_APPLICATION_MAP);
    constant!(checks, "GNTMAP_contains_pte", GNTMAP_CONTAINS_PTE);
    constant!(checks, "_GNTMAP_guest_avail0", GNTMAP_GUEST_AVAIL0_SHIFT);
    constant!(checks, "GNTMAP_guest_avail_mask", GNTMAP_GUEST_AVAIL_MASK);
    constant!(checks, "GNTCOPY_source_gref", GNTCOPY_SOURCE_GREF);
    constant!(checks, "GNTCOPY_dest_gref", GNTCOPY_DEST_GREF);
    constant!(checks, "GNTTAB_CACHE_CLEAN", GNTTAB_CACHE_CLEAN);
    constant!(checks, "GNTTAB_CACHE_INVAL", GNTTAB_CACHE_INVAL);
    constant!(checks, "GNTTAB_CACHE_SOURCE_GREF", GNTTAB_CACHE_SOURCE_GREF);
    constant!(checks, "GNTTAB_NR_RESERVED_ENTRIES", GNTTAB_NR_RESERVED_ENTRIES);
    constant!(checks, "GNTTAB_RESERVED_CONSOLE", GNTTAB_RESERVED_CONSOLE);
    constant!(checks, "GNTTAB_RESERVED_XENSTORE", GNTTAB_RESERVED_XENSTORE);
    checks
}

#[test]
fn grant_table_layouts_match_xen_headers() {
    let header = Path::new("/usr/include/xen/grant_table.h");
    if !header.exists() {
        eprintln!("skipped: {} is missing (install libxen-dev: make deps)", header.display());
        return;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipped: gcc is missing");
        return;
    }
    let checks = checks();
    let dir = std::env::temp_dir().join(format!("xen-abi-grant-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut program = String::from(
        "#define __XEN_INTERFACE_VERSION__ 0x00040e00\n#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <xen/xen.h>\n#include <xen/grant_table.h>\nint main(void) {\n",
    );
    for check in &checks {
        program.push_str(&format!("    printf(\"%lu\\n\", (unsigned long)({}));\n", check.c));
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
    let values: Vec<u64> = printed.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), checks.len());
    let mut wrong = Vec::new();
    for (check, &c_value) in checks.iter().zip(&values) {
        if c_value != check.rust as u64 {
            wrong.push(format!("{}: C {} / Rust {}", check.c, c_value, check.rust));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "layouts differ from Xen's headers:\n{}", wrong.join("\n"));
    eprintln!("{} sizes, offsets and numbers match grant_table.h", checks.len());
}

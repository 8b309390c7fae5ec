//! The software-interrupt checks (`main`'s step 2): `int 0x80` to `int 0x83` (trap-table
//! DPL 0 to 3) from guest kernel and user mode, and a prefixed `int 0x82`. Xen's rule
//! (`permit_softint`): the kernel counts as privilege 1, user mode as 3; a permitted one
//! reaches its handler with rip after the instruction (4 bytes for the prefixed one) and cs
//! of the mode it came from, any other raises #GP with error code n*8+2 at it.

use crate::probe::{self, run_kernel, run_user, SOFTINT_BASE};
use crate::{address, expect, Failure};

/// User-mode rflags: reserved bit 1, events masked, IOPL 0.
pub const USER_RFLAGS: u64 = 0x2;

/// What one `int` must do.
fn expect_int(what: &'static str, vector: u8, allowed: bool, after: u64, rpl: u64) -> Result<(), Failure> {
    match (probe::softint(), probe::fault()) {
        (Some((seen, rip, cs)), None) if allowed => {
            expect(what, seen, u64::from(vector))?;
            expect(what, rip, after)?;
            expect(what, cs & 3, rpl)
        }
        (None, Some(fault)) if !allowed => {
            expect(what, fault.vector, 13)?;
            expect(what, fault.error_code, (u64::from(vector) << 3) | 2)?;
            expect(what, fault.cs & 3, rpl)
        }
        (softint, fault) => Err(Failure::Wrong {
            what,
            seen: softint.map_or(0, |s| s.0) | fault.map_or(0, |f| f.vector << 32),
            wanted: if allowed { u64::from(vector) } else { 13 << 32 },
        }),
    }
}

pub fn check() -> Result<(), Failure> {
    let probes = [
        (address!(segments_probe_int_0x80), address!(segments_after_int_0x80)),
        (address!(segments_probe_int_0x81), address!(segments_after_int_0x81)),
        (address!(segments_probe_int_0x82), address!(segments_after_int_0x82)),
        (address!(segments_probe_int_0x83), address!(segments_after_int_0x83)),
    ];
    const KERNEL: [&str; 4] = ["kernel int 0x80 (DPL 0)", "kernel int 0x81 (DPL 1)", "kernel int 0x82 (DPL 2)", "kernel int 0x83 (DPL 3)"];
    const USER: [&str; 4] = ["user int 0x80 (DPL 0)", "user int 0x81 (DPL 1)", "user int 0x82 (DPL 2)", "user int 0x83 (DPL 3)"];
    for (dpl, &(probe, after)) in probes.iter().enumerate() {
        let vector = SOFTINT_BASE + dpl as u8;
        run_kernel(probe);
        expect_int(KERNEL[dpl], vector, dpl >= 1, after, 0)?;
        run_user(probe, USER_RFLAGS);
        expect_int(USER[dpl], vector, dpl == 3, after, 3)?;
    }
    let (prefixed, after) = (address!(segments_probe_int_prefixed), address!(segments_after_int_prefixed));
    run_kernel(prefixed);
    expect_int("kernel 2e 66 cd 82", 0x82, true, after, 0)?;
    run_user(prefixed, USER_RFLAGS);
    expect_int("user 2e 66 cd 82", 0x82, false, after, 3)?;
    guest_rt::println!(
        "segments: int 0x80-0x83 (DPL 0-3): kernel delivers DPL 1-3, user DPL 3 only, #GP(n*8+2) otherwise; prefixed int returns after its 4 bytes"
    );
    Ok(())
}

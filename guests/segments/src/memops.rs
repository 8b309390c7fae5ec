//! Memory operands at non-canonical addresses from guest user mode, as XTF's memop-seg:
//! through SS (a base of rsp or rbp) the processor raises #SS(0), through DS #GP(0). QEMU's
//! TCG raises #GP(0) for all of them; the hypervisor decodes the instruction and gives
//! the guest what a processor gives.

use crate::probe::{self, run_user_with};
use crate::softint::USER_RFLAGS;
use crate::{address, expect, Failure};

/// Non-canonical: the top bit set, plus 1 GiB (XTF's address).
const NON_CANONICAL: u64 = 0x8000_0000_4000_0000;
const STACK_FAULT: u64 = 12;
const GENERAL_PROTECTION: u64 = 13;

pub fn check() -> Result<(), Failure> {
    let probes = [
        ("movb $0,(%rsp) at a non-canonical address", address!(segments_probe_store_rsp), STACK_FAULT),
        ("movb $0,(%rbp) at a non-canonical address", address!(segments_probe_store_rbp), STACK_FAULT),
        ("movb $0,%ds:(%rax) at a non-canonical address", address!(segments_probe_store_rax), GENERAL_PROTECTION),
    ];
    for (what, probe, vector) in probes {
        run_user_with(probe, USER_RFLAGS, NON_CANONICAL);
        let fault = probe::fault().ok_or(Failure::Wrong { what, seen: 0, wanted: vector })?;
        expect(what, fault.vector, vector)?;
        expect(what, fault.error_code, 0)?;
    }
    guest_rt::println!("segments: non-canonical stores from user mode: through rsp and rbp #SS(0), through rax #GP(0)");
    Ok(())
}

//! `attack=huge`: `CreateDomain` requests whose sizes no machine could honour. Every
//! value domain 0 sends must be checked before it sizes an allocation: a reservation of
//! 4 TiB reached `Vec::with_capacity` before any check, and an allocation the hypervisor's
//! heap refuses stops the machine.
//!
//! Each request must fail with an error (whichever: the refusal is what counts); a domain
//! created anyway is destroyed and fails the check. At the end domain 0 must be alone and
//! free memory and the heap must read as before.

use guest_rt::abi::control::{ControlArgs, ControlCmd, CreateDomain, SchedParams, CREATE_PAUSED};
use guest_rt::abi::hypercall::Hypercall;
use guest_rt::abi::ids::DomId;
use guest_rt::control;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::println;

use super::{settled, expect_as_before, Compare,  Failure, Waiter, MODULE};

/// A hypervisor address, for a command line that is not the guest's to give.
const HYPERVISOR_ADDRESS: u64 = 0xffff_ffff_fc00_0000;

/// `CreateDomain` with `args` as they are; returns the new domain's id.
fn create(args: &CreateDomain) -> Result<u64, HypercallError> {
    let mut op = control::request(ControlCmd::CreateDomain, DomId::DOM0, args.encode());
    // SAFETY: the hypervisor reads the 128-byte request on our stack and the command line
    // it names (live memory of this domain, or an address it must refuse).
    hypercall::decode(unsafe { hypercall::hypercall1(Hypercall::Domctl, &raw mut op as u64) })
}

pub fn run(waiter: Waiter) -> Result<(), Failure> {
    let cmdline = *b"attack";
    let sane = CreateDomain {
        module: MODULE,
        mem_kib: 512,
        max_kib: 512,
        cpu: u32::MAX,
        params: SchedParams { weight: 1, ..SchedParams::default() },
        cmdline: cmdline.as_ptr() as u64,
        cmdline_len: cmdline.len() as u64,
        flags: CREATE_PAUSED,
        max_vcpus: 1,
        cpu_mask: 0,
    };
    // A sane request works, and its domain goes (warming up what is grown once for good).
    for _ in 0..2 {
        let id = create(&sane).map_err(|e| Failure::Control("CreateDomain of 512 KiB", e.into()))?;
        control::destroy_domain(DomId(id as u16)).map_err(|e| Failure::Control("DestroyDomain", e))?;
    }
    waiter.sleep_ms(100)?;
    let before = settled(waiter)?;
    let requests: [(&str, CreateDomain); 15] = [
        ("a reservation of 4 TiB (mem_kib u32::MAX)", CreateDomain { mem_kib: u32::MAX, max_kib: u32::MAX, ..sane }),
        ("a reservation of 2 TiB", CreateDomain { mem_kib: 1 << 31, max_kib: 1 << 31, ..sane }),
        ("a reservation of 1 TiB", CreateDomain { mem_kib: 1 << 30, max_kib: 1 << 30, ..sane }),
        ("a reservation of 64 GiB", CreateDomain { mem_kib: 1 << 26, max_kib: 1 << 26, ..sane }),
        ("a reservation of 4 GiB", CreateDomain { mem_kib: 1 << 22, max_kib: 1 << 22, ..sane }),
        ("a reservation of 4 GiB - 4 KiB", CreateDomain { mem_kib: (1 << 22) - 4, max_kib: (1 << 22) - 4, ..sane }),
        ("a command line of 2^64 - 1 bytes", CreateDomain { cmdline_len: u64::MAX, ..sane }),
        ("a command line of 2^40 bytes", CreateDomain { cmdline_len: 1 << 40, ..sane }),
        ("a command line in the hypervisor", CreateDomain { cmdline: HYPERVISOR_ADDRESS, ..sane }),
        ("boot module u32::MAX", CreateDomain { module: u32::MAX, ..sane }),
        ("CPU u32::MAX - 1", CreateDomain { cpu: u32::MAX - 1, ..sane }),
        ("u32::MAX vCPUs", CreateDomain { max_vcpus: u32::MAX, ..sane }),
        ("33 vCPUs", CreateDomain { max_vcpus: 33, ..sane }),
        ("a CPU mask of no online CPU", CreateDomain { cpu_mask: 1 << 63, ..sane }),
        ("CPU 0 outside its CPU mask", CreateDomain { cpu: 0, cpu_mask: 1 << 62, ..sane }),
    ];
    let mut accepted = None;
    for (what, args) in &requests {
        match create(args) {
            Err(error) => println!("dom0: attack huge: {what}: refused ({error:?})"),
            Ok(id) => {
                println!("dom0: attack huge: {what}: ACCEPTED as domain {id} (BUG)");
                let _ = control::destroy_domain(DomId(id as u16));
                accepted = accepted.or(Some(*what));
            }
        }
    }
    if let Some(what) = accepted {
        return Err(Failure::Accepted(what));
    }
    let after = expect_as_before(waiter, &before, Compare::HeapExactly, 2000)?;
    println!(
        "dom0: attack huge: {} requests refused; free {} KiB and heap {} bytes as before",
        requests.len(),
        after.free_kib,
        after.heap_bytes
    );
    Ok(())
}

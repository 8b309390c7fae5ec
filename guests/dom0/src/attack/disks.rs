//! `attack=disks`: domain 0 reads every disk module (`disk=` on its line) through
//! `ReadDisk` a page at a time and prints its size, `xvd` name, mode, the image module it
//! belongs to and an FNV-1a hash of its bytes (the QEMU case compares the hash with the
//! file's), and checks the refusals: a module that is not a disk, more than a page at once
//! and a buffer in the hypervisor are refused; a read past the end copies nothing;
//! `CreateDomain` from a disk module is refused. Modules: 1 an image, then disks.

use guest_rt::abi::control::{ControlArgs, ControlCmd, ReadDisk, READ_DISK_MAX};
use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::Hypercall;
use guest_rt::abi::ids::DomId;
use guest_rt::control::{self, NewDomain};
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::println;

use super::{phys, Failure, Waiter, MODULE};

/// A hypervisor address, for a buffer that is not the guest's to give.
const HYPERVISOR_ADDRESS: u64 = 0xffff_ffff_fc00_0000;

fn raw_read(args: &ReadDisk) -> Result<u64, HypercallError> {
    let mut op = control::request(ControlCmd::ReadDisk, DomId::DOM0, args.encode());
    // SAFETY: the hypervisor reads the 128-byte request on our stack and writes at most
    // `len` bytes at `buffer`: here none that is ours (each call is one it must refuse).
    hypercall::decode(unsafe { hypercall::hypercall1(Hypercall::Domctl, &raw mut op as u64) })
}

fn refused(what: &'static str, args: &ReadDisk, errno: Errno) -> Result<(), Failure> {
    match raw_read(args) {
        Err(HypercallError::Xen(e)) if e == errno => Ok(()),
        Err(_) => Err(Failure::OutOfBounds(what)),
        Ok(_) => Err(Failure::Accepted(what)),
    }
}

pub fn run(_waiter: Waiter) -> Result<(), Failure> {
    let modules = phys()?.modules;
    let mut page = [0u8; READ_DISK_MAX as usize];
    let mut disks = 0;
    for module in 1..modules {
        let first = match control::read_disk(module, 0, &mut page[..0]) {
            Ok((_, disk)) => disk,
            Err(e) if e.errno() == Some(Errno::Einval) => continue,
            Err(e) => return Err(Failure::Control("ReadDisk", e)),
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut offset = 0;
        while offset < first.size {
            let (n, _) = control::read_disk(module, offset, &mut page).map_err(|e| Failure::Control("ReadDisk", e))?;
            if n == 0 {
                return Err(Failure::OutOfBounds("ReadDisk copied nothing before the end"));
            }
            for &b in &page[..n] {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            offset += n as u64;
        }
        let (n, _) = control::read_disk(module, first.size, &mut page).map_err(|e| Failure::Control("ReadDisk", e))?;
        if n != 0 {
            return Err(Failure::OutOfBounds("ReadDisk copied bytes past the end"));
        }
        let (n, _) = control::read_disk(module, u64::MAX, &mut page).map_err(|e| Failure::Control("ReadDisk", e))?;
        if n != 0 {
            return Err(Failure::OutOfBounds("ReadDisk copied bytes at offset 2^64 - 1"));
        }
        refused("a read of a page and a byte", &ReadDisk { module, len: READ_DISK_MAX + 1, buffer: page.as_mut_ptr() as u64, ..Default::default() }, Errno::Einval)?;
        refused("a read into the hypervisor", &ReadDisk { module, len: 64, buffer: HYPERVISOR_ADDRESS, ..Default::default() }, Errno::Efault)?;
        let spec = NewDomain {
            module,
            mem_kib: 1024,
            max_kib: 1024,
            cpu: None,
            pinned: false,
            params: guest_rt::abi::control::SchedParams { weight: 1, ..Default::default() },
            cmdline: b"",
            paused: true,
            max_vcpus: 1,
            cpu_mask: 0,
            hostile: false,
        };
        if let Ok(id) = control::create_domain(&spec) {
            let _ = control::destroy_domain(id);
            return Err(Failure::Accepted("CreateDomain from a disk module"));
        }
        println!(
            "dom0: disk module {module}: xvd{} size={} {} for_module={} fnv1a={hash:016x}",
            (b'a' + first.index as u8) as char,
            first.size,
            if first.read_only { "ro" } else { "rw" },
            first.for_module.map_or(-1, i64::from),
        );
        disks += 1;
    }
    refused("ReadDisk of an image module", &ReadDisk { module: MODULE, len: 16, buffer: page.as_mut_ptr() as u64, ..Default::default() }, Errno::Einval)?;
    refused("ReadDisk of a module past the last", &ReadDisk { module: modules, len: 16, buffer: page.as_mut_ptr() as u64, ..Default::default() }, Errno::Einval)?;
    if disks == 0 {
        return Err(Failure::Setup("no disk module"));
    }
    Ok(())
}

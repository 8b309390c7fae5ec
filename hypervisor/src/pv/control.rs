//! The control interface (`abi::control`, hypercall 36): the mechanisms domain 0 uses to make
//! policy — create a domain from a boot module, destroy, pause and unpause it, set its memory
//! limit and scheduling parameters, read its counters and the machine's — and a heartbeat
//! that times every other CPU's answer to a cross-CPU call; and where a created domain's
//! console and store rings are (`GetDomainDevices`, what `pv::build` recorded).
//!
//! Refused to every unprivileged domain (`EPERM`). Domain 0 cannot destroy or pause itself
//! through it (it shuts down like any guest). A domain still being built is invisible
//! here (`ESRCH`: only its builder may end it), and one shutting down may only be looked
//! at or destroyed again (pausing, unpausing it or changing its limits gets `ESRCH`).
//! Every value in a request is checked before it sizes anything: no request reaches an
//! allocation that cannot fail. `GetPhysInfo` waits (as a continuation, re-issued while
//! teardown slices run) until every destroyed domain is torn down, so that the free memory
//! it reports counts them all, and `CreateDomain` waits the same way, so that the memory they
//! give back is there for it.

use abi::control::{
    ControlArgs, ControlCmd, ControlOp, CreateDomain, DomainDevices, DomainInfo, Heartbeat, MaxMem, PhysInfo, ReadDisk,
    SchedParams, CONTROL_INTERFACE_VERSION, DISK_READ_ONLY, READ_DISK_MAX, CREATE_FLAGS, CREATE_HOSTILE, CREATE_PAUSED, CREATE_UNPINNED, DOMAIN_PAUSED, DOMAIN_RUNNING,
    DOMAIN_SHUTTING_DOWN, MAX_VCPUS,
};
use abi::errno::Errno;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use hypervisor::hypercall::GuestVa;
use log::warn;
use mm::frame::DomainId;

use crate::arch::uaccess;
use crate::domain::{self, Domain, Ending, LifeState, Vcpu, VcpuPlacement};
use crate::pv::build::{self, BuildRequest};
use crate::pv::hypercall::HcResult;
use hypervisor::continuation::{Outcome, Stop};
use crate::{cpus, memory, sched, time};

/// The longest command line a created domain may get.
const MAX_CMDLINE: u64 = 1023;
/// The teardown work a `GetPhysInfo` does before it is issued again, while destroyed
/// domains are still being torn down.
const TEARDOWN_SLICE_NS: u64 = 40_000;

pub fn control(vcpu: &Vcpu, arg: GuestVa) -> Outcome {
    if !vcpu.domain.privileged {
        return Err(Errno::Eperm.into());
    }
    let op: ControlOp = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let cmd = ControlCmd::from_raw(op.cmd);
    let waits = matches!(cmd, Some(ControlCmd::GetPhysInfo | ControlCmd::CreateDomain));
    if waits && super::teardown::work(TEARDOWN_SLICE_NS) {
        // Destroyed domains are still being torn down: free memory is not final yet, and
        // what they give back is memory to come. The call is issued again (teardown slices
        // run in between) until they are gone.
        return Err(Stop::Retry);
    }
    Ok(control_op(vcpu, arg)?)
}

fn control_op(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    let mut op: ControlOp = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    if op.interface_version != CONTROL_INTERFACE_VERSION {
        return Err(Errno::Eacces);
    }
    let cmd = ControlCmd::from_raw(op.cmd).ok_or(Errno::Enosys)?;
    let result = match cmd {
        ControlCmd::CreateDomain => create(&CreateDomain::decode(&op.args)),
        ControlCmd::GetPhysInfo => {
            op.args = phys_info().encode();
            Ok(0)
        }
        ControlCmd::Heartbeat => {
            op.args = heartbeat().encode();
            Ok(0)
        }
        ControlCmd::ReadDisk => {
            let mut args = ReadDisk::decode(&op.args);
            let copied = read_disk(&mut args);
            op.args = args.encode();
            copied
        }
        _ => {
            // Domain 0 may read its own figures and set its own scheduling; it may not
            // destroy, pause or shrink itself.
            let target = match cmd {
                ControlCmd::SetSchedParams | ControlCmd::GetSchedParams | ControlCmd::GetDomainInfo | ControlCmd::GetDomainDevices => {
                    domain::lookup(DomainId(op.domain)).ok_or(Errno::Esrch)?
                }
                _ => other_domain(vcpu, op.domain)?,
            };
            let alive = target.state() == LifeState::Running;
            if !alive && matches!(cmd, ControlCmd::PauseDomain | ControlCmd::UnpauseDomain | ControlCmd::SetMaxMem | ControlCmd::SetSchedParams) {
                return Err(Errno::Esrch);
            }
            match cmd {
                ControlCmd::DestroyDomain => {
                    super::teardown::kill(&target, Ending::Destroyed);
                    Ok(0)
                }
                ControlCmd::PauseDomain => {
                    sched::pause(&target);
                    Ok(0)
                }
                ControlCmd::UnpauseDomain => {
                    sched::unpause(&target);
                    Ok(0)
                }
                ControlCmd::SetMaxMem => {
                    target.memory.lock().max_pages = MaxMem::decode(&op.args).max_kib / 4;
                    Ok(0)
                }
                ControlCmd::SetSchedParams => {
                    sched::set_params(&target, checked(SchedParams::decode(&op.args))?);
                    Ok(0)
                }
                ControlCmd::GetSchedParams => {
                    op.args = target.params.lock().encode();
                    Ok(0)
                }
                ControlCmd::GetDomainInfo => {
                    op.args = domain_info(&target).encode();
                    Ok(0)
                }
                ControlCmd::GetDomainDevices => {
                    let devices: DomainDevices = (*target.devices.lock()).ok_or(Errno::Enoent)?;
                    op.args = devices.encode();
                    Ok(0)
                }
                ControlCmd::CreateDomain | ControlCmd::GetPhysInfo | ControlCmd::Heartbeat | ControlCmd::ReadDisk => {
                    unreachable!("handled above")
                }
            }
        }
    };
    if result.is_ok()
        && matches!(
            cmd,
            ControlCmd::GetPhysInfo
                | ControlCmd::GetDomainInfo
                | ControlCmd::GetSchedParams
                | ControlCmd::Heartbeat
                | ControlCmd::GetDomainDevices
                | ControlCmd::ReadDisk
        )
    {
        uaccess::write_value(arg.0, &op).map_err(|_| Errno::Efault)?;
    }
    result
}

/// The live domain `id`, other than the caller.
fn other_domain(vcpu: &Vcpu, id: u16) -> Result<Arc<Domain>, Errno> {
    let target = domain::lookup(DomainId(id)).ok_or(Errno::Esrch)?;
    if target.id == vcpu.domain.id {
        return Err(Errno::Einval);
    }
    Ok(target)
}

fn checked(params: SchedParams) -> Result<SchedParams, Errno> {
    if params.weight == 0 { Err(Errno::Einval) } else { Ok(params) }
}

/// Copies part of a disk module to domain 0 (`ReadDisk`): only a module marked `disk=` and
/// not refused at boot, at most a page, through a bounce buffer on this stack (the module
/// is read a page at a time through the temporary mappings, never mapped into domain 0).
fn read_disk(args: &mut ReadDisk) -> HcResult {
    let modules = crate::pv::modules::modules();
    let module = modules.get(args.module as usize).ok_or(Errno::Einval)?;
    let disk = module.spec.disk.ok_or(Errno::Einval)?;
    let image = module.image.as_ref().map_err(|_| Errno::Einval)?;
    if args.len > READ_DISK_MAX {
        return Err(Errno::Einval);
    }
    let size = builder::ImageSource::size(image);
    args.size = size;
    args.flags = if disk.read_only { DISK_READ_ONLY } else { 0 };
    args.index = u32::from(disk.index);
    args.for_module = modules[..args.module as usize].iter().rposition(|m| m.spec.disk.is_none()).map_or(u32::MAX, |i| i as u32);
    let len = u64::from(args.len).min(size.saturating_sub(args.offset)) as usize;
    if len == 0 {
        return Ok(0);
    }
    let mut bounce = [0u8; READ_DISK_MAX as usize];
    builder::ImageSource::read(image, args.offset, &mut bounce[..len]).map_err(|_| Errno::Eio)?;
    uaccess::write(args.buffer, &bounce[..len]).map_err(|_| Errno::Efault)?;
    Ok(len as u64)
}

/// Builds a domain from a boot module and starts it, or leaves it paused.
fn create(args: &CreateDomain) -> HcResult {
    let module = crate::pv::modules::modules().get(args.module as usize).ok_or(Errno::Einval)?;
    // A disk is data for domain 0 to serve, never a kernel.
    if module.spec.disk.is_some() {
        return Err(Errno::Einval);
    }
    // A module refused at boot is never read.
    let image = module.image.as_ref().map_err(|_| Errno::Einval)?;
    if args.cmdline_len > MAX_CMDLINE || args.mem_kib < 4 || args.flags & !CREATE_FLAGS != 0 || args.max_vcpus > MAX_VCPUS {
        return Err(Errno::Einval);
    }
    let mask = args.cpu_mask;
    let allowed = |cpu: u32| is_online(cpu) && (mask == 0 || (cpu < 64 && mask & (1 << cpu) != 0));
    let cpu = if args.cpu == u32::MAX { next_cpu(allowed)? } else { args.cpu };
    if !allowed(cpu) {
        return Err(Errno::Einval);
    }
    let mut cmdline = [0u8; MAX_CMDLINE as usize];
    let cmdline = &mut cmdline[..args.cmdline_len as usize];
    uaccess::read(args.cmdline, cmdline).map_err(|_| Errno::Efault)?;
    let request = BuildRequest {
        image,
        name: &module.spec.name,
        mem_kib: args.mem_kib as u64,
        max_kib: args.max_kib as u64,
        cmdline,
        privileged: false,
        cpu,
        placement: VcpuPlacement {
            max_vcpus: args.max_vcpus.max(1),
            cpu_mask: mask,
            // Placed by domain 0: pinned there (Xen's hard affinity) unless it says otherwise.
            pinned: args.cpu != u32::MAX && args.flags & CREATE_UNPINNED == 0,
        },
        params: checked(args.params)?,
        devices: true,
    };
    match build::build_domain(&request) {
        Ok(domain) => {
            domain.hostile.store(args.flags & CREATE_HOSTILE != 0, Ordering::Relaxed);
            if args.flags & CREATE_PAUSED != 0 {
                // Paused before its vCPU is queued: it never runs until unpaused.
                sched::pause(&domain);
            }
            build::start(&domain);
            Ok(domain.id.0 as u64)
        }
        Err(e) => {
            warn!("control: domain from module {} not created: {e}", args.module);
            Err(match e {
                build::BuildFailure::Memory(_)
                | build::BuildFailure::Create(domain::CreateError::OutOfMemory(_) | domain::CreateError::HeapFull) => Errno::Enomem,
                build::BuildFailure::Create(domain::CreateError::TooManyDomains) => Errno::Enospc,
                _ => Errno::Einval,
            })
        }
    }
}

fn is_online(cpu: u32) -> bool {
    cpus::all().get(cpu as usize).is_some_and(|s| s.state() == cpus::CpuState::Online)
}

/// Round-robin CPU choice, among those `allowed`, for domains domain 0 does not place
/// (`EINVAL` when it allows none).
fn next_cpu(allowed: impl Fn(u32) -> bool) -> Result<u32, Errno> {
    static NEXT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    let all = cpus::all().len() as u32;
    let count = (0..all).filter(|&c| allowed(c)).count() as u32;
    if count == 0 {
        return Err(Errno::Einval);
    }
    let nth = NEXT.fetch_add(1, Ordering::Relaxed) % count;
    (0..all).filter(|&c| allowed(c)).nth(nth as usize).ok_or(Errno::Einval)
}

fn domain_info(domain: &Domain) -> DomainInfo {
    let mem = domain.memory.lock();
    DomainInfo {
        tot_pages: mem.held(),
        max_pages: mem.max_pages,
        state: match (domain.state(), domain.paused.load(Ordering::Relaxed)) {
            (LifeState::Running, false) => DOMAIN_RUNNING,
            (LifeState::Running, true) => DOMAIN_PAUSED,
            _ => DOMAIN_SHUTTING_DOWN,
        },
        vcpus: domain.vcpus().len() as u32,
        cpu_time_ns: domain.counters.cpu_time_ns.load(Ordering::Relaxed),
        hypercalls: domain.counters.hypercalls.load(Ordering::Relaxed),
        exceptions_bounced: domain.counters.exceptions_bounced.load(Ordering::Relaxed),
        events_sent: domain.counters.events_sent.load(Ordering::Relaxed),
        build_ns: domain.build_ns.load(Ordering::Relaxed),
    }
}

/// Asks every other online CPU, one at a time, to run an empty cross-CPU call, and times
/// each answer. A CPU held with interrupts off answers only when it lets them in again.
fn heartbeat() -> Heartbeat {
    fn answer(_: usize) {}
    let me = crate::arch::percpu::current().index;
    let mut beat = Heartbeat::default();
    for (index, slot) in cpus::all().iter().enumerate() {
        let cpu = crate::arch::percpu::CpuIndex(index as u32);
        if cpu == me || slot.state() != cpus::CpuState::Online {
            continue;
        }
        let started = time::rdtsc();
        if cpus::call(cpu, answer, 0).is_ok() {
            let ns = time::tsc_to_ns(time::rdtsc() - started);
            beat.answered += 1;
            beat.total_ns += ns;
            if ns >= beat.max_ns {
                beat.max_ns = ns;
                beat.slowest_cpu = index as u32;
            }
        }
    }
    beat
}

fn phys_info() -> PhysInfo {
    // The heap gives back what it holds unused first (and moves what it keeps onto its own
    // pool's frames), so that free memory includes it.
    memory::compact_heap();
    // Domain 0 reads the heap here before and after its runs: what is live at each read.
    #[cfg(feature = "heap-trace")]
    crate::heaptrace::dump();
    let stats = memory::frames().stats();
    PhysInfo {
        total_kib: stats.usable * 4,
        free_kib: stats.free * 4,
        heap_bytes: memory::heap_used_bytes(),
        domains: domain::live_count() as u32,
        cpus: cpus::online_count() as u32,
        window_used_kib: 0,
        modules: crate::pv::modules::modules().len() as u32,
        domains_held: domain::held_count(),
        tsc_khz: time::tsc_hz() / 1000,
        domain_records: domain::DOMAIN_RECORDS.load(Ordering::Relaxed),
        vcpu_records: domain::vcpu::VCPU_RECORDS.load(Ordering::Relaxed),
    }
}

//! Building domains from boot modules: turns one into a running domain — reservation,
//! start-of-day memory laid out by the `builder` crate (which reads the image through
//! `pv::modules`, a page at a time), each frame's guest frame in the machine-to-physical
//! table, page-table types validated and the top level pinned, a vCPU in a run queue.
//! Every domain but domain 0 also gets a console ring page (a frame of its reservation, as
//! Xen's toolstack gives one, held writable for the hypervisor) in `start_info.console.domU`
//! (domain 0's `start_info` has the VGA console information in that place, as in Xen). A
//! domain built from a boot module has its console channel bound to the hypervisor, which
//! drains the ring. A domain domain 0 creates ([`BuildRequest::devices`]) is set up as
//! libxl sets one up: a store ring page too (`start_info.store_mfn`), one unbound port per
//! ring whose remote end is domain 0 (console port 1, store port 2), and its grant table
//! seeded (entry 0 grants domain 0 the console page, entry 1 the store page, read-write);
//! `Domain::devices` records them for `GetDomainDevices`. Until domain 0 binds the console
//! port, the hypervisor stands in and drains that ring too (`pv::console`).
//!
//! A bad image is refused with the builder's message and everything the attempt allocated
//! is returned; the other domains still start. So is a request the machine cannot hold:
//! the frames and the heap the build needs (the domain's frame list, the builder's page
//! tables) are checked before anything is allocated, so no size domain 0 or a module line
//! asks for reaches an allocation that cannot fail. The domain is invisible to everyone
//! else until its build is over ([`Domain::publish`]): this module alone may destroy it
//! meanwhile, when the build fails.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use abi::control::SchedParams;
use abi::features::FeatureSet;
use abi::ids::{Mfn as AbiMfn, Pfn};
use builder::{build, DomainConfig, GuestMemory, HypervisorInputs, ImageSource, PvKernel};
use hypervisor::domspec::Expect;
use log::{info, warn};
use mm::addr::{Mfn, PAGE_SIZE};

use crate::arch::gdt::{GUEST_CS64, GUEST_DS};
use crate::arch::paging;
use crate::arch::trap::TrapFrame;
use crate::domain::{Domain, Ending, JoinError, Vcpu, VcpuPlacement};
use crate::memory::FrameMapping;
use crate::pv::modules::{modules, BootModule};
use crate::pv::{console, lifecycle, mmu, shared};
use crate::{cpus, sched, time};

/// Builds and starts domain 0 from the first boot module; the other modules wait for its
/// `CreateDomain` requests.
pub fn start_domain0() {
    lifecycle::record_free_before();
    let Some(module) = modules().first() else {
        warn!("dom0: no boot module to build domain 0 from");
        lifecycle::boot_domains_built(0);
        return;
    };
    if module.spec.disk.is_some() {
        warn!("dom0: not started: its module is a disk (disk=)");
        lifecycle::not_started();
        lifecycle::boot_domains_built(0);
        return;
    }
    let Ok(request) = BuildRequest::from_module(module, 0) else {
        warn!("dom0: not started: its module was refused at boot");
        lifecycle::not_started();
        lifecycle::boot_domains_built(0);
        return;
    };
    let request = BuildRequest { name: "dom0", privileged: true, max_kib: module.spec.mem_kib.saturating_mul(4), ..request };
    match build_domain(&request) {
        Ok(domain) => {
            lifecycle::started(domain.id, expected(module.spec.expect));
            info!("domain 0 built in {} us: {} KiB", domain.build_ns.load(Ordering::Relaxed) / 1000, module.spec.mem_kib);
            start(&domain);
            lifecycle::boot_domains_built(1);
        }
        Err(e) => {
            warn!("dom0: not started: {e}");
            lifecycle::not_started();
            lifecycle::boot_domains_built(0);
        }
    }
}

/// Builds and starts every domain the boot modules ask for; returns how many started.
/// Also reports what a domain costs the hypervisor beyond its reservation, build times, and
/// each image's smallest workable reservation.
pub fn start_boot_domains() -> usize {
    lifecycle::record_free_before();
    report_minimum_reservations();
    let heap_before = crate::memory::heap_used_bytes();
    let mut build_us = Vec::new();
    let mut built = Vec::new();
    let online: Vec<u32> = cpus::all()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state() == cpus::CpuState::Online)
        .map(|(i, _)| i as u32)
        .collect();
    let mut started = 0;
    for module in modules() {
        if module.spec.disk.is_some() {
            // A disk, for domain 0 to serve; without domain 0 nobody does.
            info!("module {}: a disk (disk=), not built as a domain", module.spec.name);
            continue;
        }
        for copy in 0..module.spec.count {
            let cpu = online[started % online.len()];
            let request = match BuildRequest::from_module(module, cpu) {
                Ok(request) => request,
                Err(problem) => {
                    warn!("domain {} copy {copy}: not started: its module was refused at boot ({problem})", module.spec.name);
                    lifecycle::not_started();
                    continue;
                }
            };
            match build_domain(&request) {
                Ok(domain) => {
                    lifecycle::started(domain.id, expected(module.spec.expect));
                    build_us.push(domain.build_ns.load(Ordering::Relaxed) / 1000);
                    built.push(domain.clone());
                    info!(
                        "domain {} ({}) built in {} us: {} KiB, vcpu 0 on cpu {cpu}",
                        domain.id.0,
                        domain.name,
                        domain.build_ns.load(Ordering::Relaxed) / 1000,
                        module.spec.mem_kib
                    );
                    started += 1;
                }
                Err(e) => {
                    warn!("domain {} copy {copy}: not started: {e}", module.spec.name);
                    lifecycle::not_started();
                }
            }
        }
    }
    if started > 0 {
        // Beyond its reservation a domain costs the hypervisor heap (measured here, as the
        // growth over building them all, before any runs) and one frame: its shared-info page.
        let heap = crate::memory::heap_used_bytes().saturating_sub(heap_before) / started as u64;
        info!("summary: domains.hypervisor_bytes_per_domain={}", heap + PAGE_SIZE);
        info!("summary: domains.heap_bytes_per_domain={heap}");
        build_us.sort_unstable();
        info!("summary: domains.build_us_median={}", build_us[build_us.len() / 2]);
    }
    for domain in built {
        start(&domain);
    }
    lifecycle::boot_domains_built(started);
    started
}

/// Makes a built domain's vCPUs runnable.
pub fn start(domain: &Domain) {
    for vcpu in domain.vcpus() {
        sched::add(vcpu);
    }
}

/// Logs, per module, the smallest reservation its image can be laid out in.
fn report_minimum_reservations() {
    for module in modules() {
        let Ok(image) = &module.image else { continue };
        if module.spec.disk.is_some() {
            continue;
        }
        let Ok(kernel) = PvKernel::parse(image, offered_features()) else { continue };
        let config = DomainConfig {
            nr_pages: 0,
            cmd_line: module.spec.guest_cmdline.as_bytes(),
            is_privileged: false,
            xenstore: None,
            console: Some(CONSOLE_PORT),
        };
        if let Ok(pages) = builder::Plan::minimum_nr_pages(&kernel, &config) {
            info!("summary: module.{}.min_reservation_kib={}", module.spec.name, pages * 4);
        }
    }
}

fn expected(expect: Expect) -> Ending {
    match expect {
        Expect::Poweroff => Ending::Poweroff,
        Expect::Reboot => Ending::Reboot,
        Expect::Crash => Ending::Crash,
        Expect::Killed => Ending::Killed,
    }
}

/// Why a domain could not be built.
#[derive(Debug)]
pub enum BuildFailure {
    Image(builder::BuildError),
    Create(crate::domain::CreateError),
    Memory(abi::errno::Errno),
    Tables(abi::errno::Errno),
    /// vCPU 0 could not join the domain.
    Vcpu(JoinError),
    /// The console ring or its channel could not be set up.
    Console(abi::errno::Errno),
}

impl core::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Image(e) => write!(f, "bad image: {e}"),
            Self::Create(e) => write!(f, "{e}"),
            Self::Memory(e) => write!(f, "reservation refused: {e:?}"),
            Self::Tables(e) => write!(f, "initial page tables refused: {e:?}"),
            Self::Vcpu(e) => write!(f, "vCPU 0 refused: {e:?}"),
            Self::Console(e) => write!(f, "console ring refused: {e:?}"),
        }
    }
}

/// The features an image may require (`hypervisor::features`).
fn offered_features() -> FeatureSet {
    hypervisor::features::HONOURED
}

/// What to build: an image and how to run it.
pub struct BuildRequest<'a> {
    pub image: &'a dyn ImageSource,
    pub name: &'a str,
    pub mem_kib: u64,
    /// The most memory it may balloon up to (at least `mem_kib`).
    pub max_kib: u64,
    pub cmdline: &'a [u8],
    /// Domain 0: privileged, id 0, may use the control interface.
    pub privileged: bool,
    /// CPU for vCPU 0.
    pub cpu: u32,
    /// How many vCPUs it may have, on which CPUs, pinned there or not.
    pub placement: VcpuPlacement,
    pub params: SchedParams,
    /// Console and store rings served by domain 0 (a domain domain 0 creates); false: the
    /// console bound to the hypervisor, no store.
    pub devices: bool,
}

impl<'a> BuildRequest<'a> {
    /// A request for one domain of a boot module, as its command line asks (the module's
    /// problem if it was refused at boot).
    pub fn from_module(module: &'a BootModule, cpu: u32) -> Result<BuildRequest<'a>, hypervisor::bootmodule::Problem> {
        let image = module.image.as_ref().map_err(|problem| *problem)?;
        Ok(BuildRequest {
            image,
            name: &module.spec.name,
            mem_kib: module.spec.mem_kib,
            max_kib: module.spec.mem_kib,
            cmdline: module.spec.guest_cmdline.as_bytes(),
            privileged: false,
            cpu,
            placement: VcpuPlacement { max_vcpus: module.spec.vcpus.unwrap_or(1), cpu_mask: 0, pinned: false },
            params: SchedParams::default(),
            devices: false,
        })
    }
}

/// Builds one domain with its vCPU on `request.cpu` (not yet runnable: [`start`]).
pub fn build_domain(request: &BuildRequest) -> Result<Arc<Domain>, BuildFailure> {
    let start = time::rdtsc();
    let kernel = PvKernel::parse(request.image, offered_features()).map_err(BuildFailure::Image)?;
    let nr_pages = request.mem_kib / 4;
    let config = DomainConfig {
        nr_pages,
        cmd_line: request.cmdline,
        is_privileged: request.privileged,
        xenstore: request.devices.then_some(STORE_PORT),
        // The port numbers are the first a new domain's table hands out; checked at binding.
        console: (!request.privileged).then_some(CONSOLE_PORT),
    };
    // Refuse a bad layout, or one the machine cannot hold, before any memory is taken.
    let plan = builder::Plan::new(&kernel, &config).map_err(BuildFailure::Image)?;
    check_room(&plan)?;
    let max_pages = request.max_kib.max(request.mem_kib) / 4;
    let reserve_teardown = |domains| super::teardown::reserve(domains).is_ok();
    let domain = Domain::create(request.name, max_pages, request.privileged, request.params, request.placement, reserve_teardown, super::mmu::hold_for_hypervisor)
        .map_err(BuildFailure::Create)?;
    match fill(&domain, &kernel, &config, request.cpu, request.devices) {
        Ok(_) => {
            domain.build_ns.store(time::tsc_to_ns(time::rdtsc() - start), Ordering::Relaxed);
            domain.publish();
            Ok(domain)
        }
        Err(e) => {
            super::teardown::shutdown(&domain, Ending::Killed);
            super::teardown::destroy(&domain);
            Err(e)
        }
    }
}

/// The console ring's event channel in every domain that has one: its first port.
const CONSOLE_PORT: abi::ids::EvtchnPort = abi::ids::EvtchnPort(abi::control::CREATED_CONSOLE_PORT);
/// The store ring's event channel in a domain domain 0 creates: its second port.
const STORE_PORT: abi::ids::EvtchnPort = abi::ids::EvtchnPort(abi::control::CREATED_STORE_PORT);
/// The backend of every created domain's console and store: domain 0.
const BACKEND: abi::ids::DomId = abi::ids::DomId(0);

/// Heap the builder takes besides its page tables (its buffers, the hypercall page, the
/// start-info page, the list of tables), with room to spare.
const BUILD_HEAP_BYTES: u64 = 32 << 10;
/// Heap each boot page table takes while the builder makes it (512 entries and its record).
const BUILD_HEAP_PER_TABLE: u64 = 4096 + 128;

/// Whether the machine can hold a domain laid out as `plan`: free frames for its
/// reservation, and heap room for its list of frames and for the builder's page tables.
fn check_room(plan: &builder::Plan) -> Result<(), BuildFailure> {
    let tables = plan.page_tables.end.0.saturating_sub(plan.page_tables.start.0);
    let heap = BUILD_HEAP_BYTES
        .saturating_add(tables.saturating_mul(BUILD_HEAP_PER_TABLE))
        .saturating_add(plan.nr_pages.saturating_mul(core::mem::size_of::<Mfn>() as u64));
    if !crate::memory::frames_for_guests(plan.nr_pages) || !crate::memory::heap_has_room_for(heap) {
        return Err(BuildFailure::Memory(abi::errno::Errno::Enomem));
    }
    Ok(())
}

/// Populates the reservation, lays out the start-of-day memory and creates vCPU 0.
fn fill(domain: &Arc<Domain>, kernel: &PvKernel<'_, dyn ImageSource + '_>, config: &DomainConfig, cpu: u32, devices: bool) -> Result<Arc<Vcpu>, BuildFailure> {
    // The domain's own list of its frames is the one the builder reads (nobody else sees
    // the domain yet, so holding its lock stops no one).
    let mut mem = domain.memory.lock();
    let pages = domain.populate_into(&mut mem, config.nr_pages).map_err(BuildFailure::Memory)?;
    let inputs = HypervisorInputs {
        shared_info_maddr: domain.shared_info.addr().0,
        hypervisor_l3_entry: paging::window_l3_entry(),
        m2p_l4_entry: crate::m2p::l4_entry(),
    };
    let built = build(kernel, config, &inputs, &mut DomainFrames { pages }).map_err(BuildFailure::Image)?;
    let l4 = pages[built.l4_pfn.0 as usize];
    // The machine-to-physical table learns each frame's guest frame, as the P2M list
    // (`mfn_list`) the builder wrote says the other way round.
    let mut m2p = crate::m2p::Writer::new();
    for (pfn, &mfn) in pages.iter().enumerate() {
        m2p.set(mfn, pfn as u64);
    }
    drop(m2p);
    let console_frame = built.plan.console.map(|pfn| pages[pfn.0 as usize]);
    let store_frame = built.plan.xenstore.map(|pfn| pages[pfn.0 as usize]);
    drop(mem);
    match (console_frame, store_frame, devices) {
        (Some(console), Some(store), true) => attach_devices(domain, console, store)?,
        (Some(console), _, false) => attach_console(domain, console, CONSOLE_PORT)?,
        (None, None, false) => {}
        _ => return Err(BuildFailure::Console(abi::errno::Errno::Einval)),
    }
    let base = mmu::pin_initial_tables(domain, l4).map_err(BuildFailure::Tables)?;
    let regs = TrapFrame {
        rip: built.entry_rip,
        cs: GUEST_CS64 as u64,
        rflags: 0x202,
        rsp: built.stack_top,
        ss: GUEST_DS as u64,
        rsi: built.start_info_va,
        ..TrapFrame::zeroed()
    };
    let vcpu = Vcpu::new(domain.clone(), 0, regs, base, cpu);
    if let Err(e) = domain.add_vcpu(vcpu.clone()) {
        crate::pv::mmu::release_bases(&vcpu);
        return Err(BuildFailure::Vcpu(e));
    }
    shared::with_vcpu_info(&vcpu, |info| info.evtchn_upcall_mask = 1);
    shared::publish_time(&vcpu);
    Ok(vcpu)
}

/// Gives a new domain its console ring: the frame held writable for the hypervisor, the
/// channel bound to the hypervisor on the port `start_info` names.
fn attach_console(domain: &Domain, mfn: Mfn, port: abi::ids::EvtchnPort) -> Result<(), BuildFailure> {
    let bound = domain.channels.lock().bind_hypervisor().map_err(|_| BuildFailure::Console(abi::errno::Errno::Enospc))?;
    if bound != port {
        return Err(BuildFailure::Console(abi::errno::Errno::Einval));
    }
    mmu::hold_for_hypervisor(domain.id, mfn).map_err(BuildFailure::Console)?;
    console::attach_ring(domain, mfn, port);
    Ok(())
}

/// Gives a domain domain 0 creates its console and store rings as libxl does: an unbound
/// port per ring for domain 0 (on the ports `start_info` names), the console frame held
/// writable for the hypervisor (which drains it until domain 0 binds the port), the grant
/// table seeded, and the whole recorded for `GetDomainDevices`.
fn attach_devices(domain: &Domain, console: Mfn, store: Mfn) -> Result<(), BuildFailure> {
    use abi::grant_table::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
    let ports = {
        let mut channels = domain.channels.lock();
        (channels.alloc_unbound(BACKEND), channels.alloc_unbound(BACKEND))
    };
    if ports != (Ok(CONSOLE_PORT), Ok(STORE_PORT)) {
        return Err(BuildFailure::Console(abi::errno::Errno::Enospc));
    }
    crate::pv::grants::seed(domain, BACKEND, &[(GNTTAB_RESERVED_CONSOLE, console), (GNTTAB_RESERVED_XENSTORE, store)])
        .map_err(BuildFailure::Console)?;
    mmu::hold_for_hypervisor(domain.id, console).map_err(BuildFailure::Console)?;
    console::attach_ring(domain, console, CONSOLE_PORT);
    *domain.devices.lock() = Some(abi::control::DomainDevices {
        console_mfn: console.0,
        store_mfn: store.0,
        console_port: CONSOLE_PORT.0,
        store_port: STORE_PORT.0,
        console_gref: GNTTAB_RESERVED_CONSOLE,
        store_gref: GNTTAB_RESERVED_XENSTORE,
    });
    Ok(())
}

/// The reservation as the builder writes it: through temporary mappings.
struct DomainFrames<'a> {
    pages: &'a [Mfn],
}

impl GuestMemory for DomainFrames<'_> {
    fn frame_mfn(&self, pfn: Pfn) -> AbiMfn {
        AbiMfn(self.pages[pfn.0 as usize].0)
    }

    fn write(&mut self, pfn: Pfn, offset: usize, bytes: &[u8]) {
        let mut map = FrameMapping::new(self.pages[pfn.0 as usize]).expect("a temporary mapping slot is free");
        map.bytes()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn zero(&mut self, pfn: Pfn) {
        let mut map = FrameMapping::new(self.pages[pfn.0 as usize]).expect("a temporary mapping slot is free");
        map.bytes().fill(0);
    }
}

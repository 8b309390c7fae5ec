//! The control interface: how domain 0 makes policy (creating and destroying domains,
//! pausing them, their memory limits and scheduling parameters, reading counters).
//!
//! This is this hypervisor's own interface, not Xen's versioned domctl/sysctl ABI (which
//! tracks Xen's toolstack): it travels in the `domctl` hypercall slot (36) as one
//! [`ControlOp`] whose `cmd` selects the operation and whose 112 argument bytes hold the
//! command's struct ([`CreateDomain`], [`SchedParams`], [`DomainInfo`], [`PhysInfo`],
//! [`MaxMem`], [`Heartbeat`], [`DomainDevices`]). Only the privileged domain may use it; every
//! other caller gets `EPERM`. The return value is 0 or a negative errno; `CreateDomain`
//! returns the new domain id.
//!
//! Devices (version 2): every domain `CreateDomain` builds gets, as Xen's toolstack gives
//! it, a console ring page and a store ring page (frames of its reservation, named in its
//! `start_info`), one unbound event channel per ring whose remote end is domain 0
//! ([`CREATED_CONSOLE_PORT`], [`CREATED_STORE_PORT`]; its first free port is
//! [`CREATED_FIRST_FREE_PORT`]), and a grant table seeded as libxl seeds it: entry
//! `GNTTAB_RESERVED_CONSOLE` (0) grants domain 0 the console page, `GNTTAB_RESERVED_XENSTORE`
//! (1) the store page, both read-write (the entries are the guest's to change afterwards).
//! `GetDomainDevices` tells domain 0 where they are. Until domain 0 binds the console port,
//! the hypervisor drains the console ring itself (as it does for domains built from boot
//! modules without domain 0, whose console port is bound to the hypervisor and which get
//! no store page).

use crate::macros::{abi_enum, assert_layout};

/// Version of this interface; a `ControlOp` with another version is refused (`EACCES`).
/// Version 2: created domains get store and console pages served by domain 0, and
/// `GetDomainDevices` (see the module documentation).
pub const CONTROL_INTERFACE_VERSION: u32 = 2;

/// The console ring's port in every domain `CreateDomain` builds (unbound, remote domain 0).
pub const CREATED_CONSOLE_PORT: u32 = 1;
/// The store ring's port in every domain `CreateDomain` builds (unbound, remote domain 0).
pub const CREATED_STORE_PORT: u32 = 2;
/// The first port a domain `CreateDomain` builds allocates itself.
pub const CREATED_FIRST_FREE_PORT: u32 = 3;

abi_enum! {
    /// Control operations.
    pub enum ControlCmd: u32 {
        /// args: [`CreateDomain`]; returns the new domain id.
        CreateDomain = 1,
        /// Destroys `domain` (its memory returns to the hypervisor).
        DestroyDomain = 2,
        /// Stops `domain`'s vCPUs from running until unpaused.
        PauseDomain = 3,
        UnpauseDomain = 4,
        /// args: [`MaxMem`].
        SetMaxMem = 5,
        /// args: [`SchedParams`].
        SetSchedParams = 6,
        /// args (out): [`SchedParams`].
        GetSchedParams = 7,
        /// args (out): [`DomainInfo`].
        GetDomainInfo = 8,
        /// args (out): [`PhysInfo`]; `domain` is ignored.
        GetPhysInfo = 9,
        /// args (out): [`Heartbeat`]; `domain` is ignored. Every other online CPU must
        /// answer a cross-CPU call, timed one by one: a CPU held in the hypervisor with
        /// interrupts off answers late (or, hung, never, and the caller hangs with it).
        Heartbeat = 10,
        /// args (out): [`DomainDevices`] of `domain` (`ENOENT` for a domain built without
        /// them: domain 0, or one built from a boot module).
        GetDomainDevices = 11,
        /// args (in/out): [`ReadDisk`]; `domain` is ignored. Copies bytes of a boot module
        /// marked as a disk (`disk=` on its line) into the caller's memory; returns the
        /// bytes copied (0 at or past the end). `EINVAL` for a module that is not a usable
        /// disk or more than a page at once, `EFAULT` for a buffer the caller cannot write.
        /// (Added in version 2 after `GetDomainDevices`: an older hypervisor answers
        /// `ENOSYS`.)
        ReadDisk = 20,
    }
}

/// One control request (128 bytes): the command, the interface version, the target domain
/// and the command's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ControlOp {
    pub cmd: u32,
    pub interface_version: u32,
    pub domain: u16,
    pub _pad: [u16; 3],
    pub args: [u8; 112],
}

assert_layout!(ControlOp, size = 128, { cmd @ 0, interface_version @ 4, domain @ 8, args @ 16 });

impl Default for ControlOp {
    fn default() -> Self {
        ControlOp { cmd: 0, interface_version: CONTROL_INTERFACE_VERSION, domain: 0, _pad: [0; 3], args: [0; 112] }
    }
}

/// Borrowed Virtual Time parameters of a domain (all its vCPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SchedParams {
    /// Relative share of the CPU (at least 1).
    pub weight: u32,
    pub _pad: u32,
    /// Warp: how far (in virtual ns) a latency-sensitive domain jumps ahead on waking; 0: never warps.
    pub warp_ns: u64,
    /// Real time a domain may stay warped before it is unwarped.
    pub warp_limit_ns: u64,
    /// Real time a domain must stay unwarped before it may warp again.
    pub unwarp_req_ns: u64,
}

assert_layout!(SchedParams, size = 32, { weight @ 0, warp_ns @ 8, warp_limit_ns @ 16, unwarp_req_ns @ 24 });

/// `CreateDomain` arguments: build a domain from boot module `module` (its index among
/// the boot modules), give it `mem_kib` now and at most `max_kib`, schedule it with
/// `params`, and pass it the command line at `cmdline` (`cmdline_len` bytes, guest
/// address). The domain starts running at once, or with [`CREATE_PAUSED`] in `flags`
/// waits, paused, for `UnpauseDomain` (as Xen's toolstack builds domains paused and
/// unpauses them when everything is ready). Unknown flags are refused (`EINVAL`).
///
/// vCPUs (as Xen's `max_vcpus` and vCPU affinity): the domain may bring up vCPUs
/// `0..max_vcpus` (0 counts as 1; at most [`MAX_VCPUS`], else `EINVAL`); `VCPUOP_initialise`
/// of any other id fails with `ENOENT`. Its weight in `params` is its share of the machine
/// as a whole: each of its vCPUs that is up runs with an equal part of it, as Xen's credit
/// scheduler divides a domain's credit among its vCPUs. vCPU 0 runs on `cpu`; vCPU `k` on
/// the `k`-th CPU after `cpu` among those set in `cpu_mask` (bit `i` is CPU `i`; 0 means
/// every online CPU), round robin. With `cpu` placed and no [`CREATE_UNPINNED`], every vCPU
/// stays where it was placed (hard affinity); a `cpu` outside a non-zero mask, or a mask
/// naming no online CPU, is refused (`EINVAL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CreateDomain {
    pub module: u32,
    pub mem_kib: u32,
    pub max_kib: u32,
    /// The CPU to run vCPU 0 on, pinned there unless [`CREATE_UNPINNED`]; `u32::MAX`: the
    /// hypervisor chooses (and may move it).
    pub cpu: u32,
    pub params: SchedParams,
    pub cmdline: u64,
    pub cmdline_len: u64,
    /// [`CREATE_PAUSED`] and [`CREATE_UNPINNED`], or 0.
    pub flags: u32,
    /// The most vCPUs it may bring up (0: one).
    pub max_vcpus: u32,
    /// The CPUs its vCPUs are placed on, one bit per CPU (0: every online CPU).
    pub cpu_mask: u64,
}

assert_layout!(CreateDomain, size = 80, { module @ 0, mem_kib @ 4, max_kib @ 8, cpu @ 12, params @ 16, cmdline @ 48, cmdline_len @ 56, flags @ 64, max_vcpus @ 68, cpu_mask @ 72 });

/// The most vCPUs a domain may have: the `vcpu_info` slots of its shared info page.
pub const MAX_VCPUS: u32 = 32;

/// [`CreateDomain::flags`]: create the domain paused.
pub const CREATE_PAUSED: u32 = 1 << 0;
/// [`CreateDomain::flags`]: [`CreateDomain::cpu`] is where the domain starts, not where it
/// must stay (Xen's soft affinity against its hard one): the scheduler may move it.
pub const CREATE_UNPINNED: u32 = 1 << 1;
/// [`CreateDomain::flags`]: a hostile or fuzzing domain, expected to be killed or to crash:
/// however it ends, that is not a failure of the run, and its ending is counted apart
/// (`summary: domains.hostile_*`).
pub const CREATE_HOSTILE: u32 = 1 << 2;
/// Every flag [`CreateDomain::flags`] may hold.
pub const CREATE_FLAGS: u32 = CREATE_PAUSED | CREATE_UNPINNED | CREATE_HOSTILE;

/// `SetMaxMem` arguments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MaxMem {
    pub max_kib: u64,
}

assert_layout!(MaxMem, size = 8, { max_kib @ 0 });

/// Domain states in [`DomainInfo::state`].
pub const DOMAIN_RUNNING: u32 = 0;
pub const DOMAIN_PAUSED: u32 = 1;
pub const DOMAIN_SHUTTING_DOWN: u32 = 2;

/// `GetDomainInfo` result: a domain's memory, state and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DomainInfo {
    pub tot_pages: u64,
    pub max_pages: u64,
    pub state: u32,
    pub vcpus: u32,
    /// Time its vCPUs have run, in ns.
    pub cpu_time_ns: u64,
    pub hypercalls: u64,
    pub exceptions_bounced: u64,
    pub events_sent: u64,
    /// Time its creation took in the hypervisor, in ns.
    pub build_ns: u64,
}

assert_layout!(DomainInfo, size = 64, { tot_pages @ 0, max_pages @ 8, state @ 16, vcpus @ 20, cpu_time_ns @ 24, hypercalls @ 32, exceptions_bounced @ 40, events_sent @ 48, build_ns @ 56 });

/// `GetPhysInfo` result: the machine and the hypervisor's own memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysInfo {
    pub total_kib: u64,
    pub free_kib: u64,
    /// Hypervisor heap in use, in bytes.
    pub heap_bytes: u64,
    pub domains: u32,
    pub cpus: u32,
    /// Hypervisor window in use, in KiB.
    pub window_used_kib: u64,
    /// Boot modules available to `CreateDomain`.
    pub modules: u32,
    /// Domain records the hypervisor still holds in memory, in the domain table or not: a
    /// destroyed domain that something still references counts here after it has left
    /// `domains` (a leak; domain 0 checks that the two agree).
    pub domains_held: u32,
    pub tsc_khz: u64,
    /// Domain records still in the hypervisor's heap, live or destroyed but still held (a
    /// record held forever is a leak).
    pub domain_records: u32,
    /// vCPU records likewise.
    pub vcpu_records: u32,
}

assert_layout!(PhysInfo, size = 64, { total_kib @ 0, free_kib @ 8, heap_bytes @ 16, domains @ 24, cpus @ 28, window_used_kib @ 32, modules @ 40, domains_held @ 44, tsc_khz @ 48, domain_records @ 56, vcpu_records @ 60 });

/// `Heartbeat` result: how long the other online CPUs took to answer a cross-CPU call each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Heartbeat {
    /// CPUs that answered (the caller's own CPU is not asked).
    pub answered: u32,
    /// The CPU that took longest.
    pub slowest_cpu: u32,
    /// Its round trip, in ns.
    pub max_ns: u64,
    /// All round trips together, in ns.
    pub total_ns: u64,
}

assert_layout!(Heartbeat, size = 24, { answered @ 0, slowest_cpu @ 4, max_ns @ 8, total_ns @ 16 });

/// `GetDomainDevices` result: where a created domain's console and store rings are and
/// how domain 0 reaches them (the grant references it was given, the ports to bind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DomainDevices {
    /// The console ring's frame (a PV guest's grant frame number: its machine frame).
    pub console_mfn: u64,
    /// The store ring's frame.
    pub store_mfn: u64,
    /// The domain's unbound port for the console, remote domain 0.
    pub console_port: u32,
    /// The domain's unbound port for the store, remote domain 0.
    pub store_port: u32,
    /// The grant reference of the console page (`GNTTAB_RESERVED_CONSOLE`).
    pub console_gref: u32,
    /// The grant reference of the store page (`GNTTAB_RESERVED_XENSTORE`).
    pub store_gref: u32,
}

assert_layout!(DomainDevices, size = 32, { console_mfn @ 0, store_mfn @ 8, console_port @ 16, store_port @ 20, console_gref @ 24, store_gref @ 28 });

/// `ReadDisk` arguments: copy `len` bytes (at most [`READ_DISK_MAX`]) at `offset` of disk
/// module `module` to `buffer` (a guest address). On the way out, whatever was copied,
/// the disk's `size` in bytes, its `xvd` index (0: `xvda`), [`DISK_READ_ONLY`] in `flags`,
/// and `for_module`, the image module whose domains get it (the closest image module before
/// it; `u32::MAX`: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ReadDisk {
    pub module: u32,
    pub len: u32,
    pub offset: u64,
    pub buffer: u64,
    pub size: u64,
    pub flags: u32,
    pub index: u32,
    pub for_module: u32,
}

assert_layout!(ReadDisk, size = 48, { module @ 0, len @ 4, offset @ 8, buffer @ 16, size @ 24, flags @ 32, index @ 36, for_module @ 40 });

/// The most bytes one `ReadDisk` copies.
pub const READ_DISK_MAX: u32 = 4096;
/// `ReadDisk` flag: the VBD is read-only (`disk=xvdX,ro`).
pub const DISK_READ_ONLY: u32 = 1;

/// A struct that travels in [`ControlOp::args`], encoded field by field in little endian
/// at its `#[repr(C)]` offsets.
pub trait ControlArgs: Sized {
    fn encode(&self) -> [u8; 112];
    fn decode(args: &[u8; 112]) -> Self;
}

fn put(args: &mut [u8; 112], offset: usize, bytes: &[u8]) {
    args[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn u32_at(args: &[u8; 112], offset: usize) -> u32 {
    u32::from_le_bytes([args[offset], args[offset + 1], args[offset + 2], args[offset + 3]])
}

fn u64_at(args: &[u8; 112], offset: usize) -> u64 {
    u64::from(u32_at(args, offset)) | (u64::from(u32_at(args, offset + 4)) << 32)
}

/// Implements [`ControlArgs`] from a list of `field: u32|u64 @ offset` (matching the
/// struct's asserted layout).
macro_rules! control_args {
    ($ty:ident { $($field:ident : $kind:ident @ $offset:expr),* $(,)? } $(nested $nested:ident : $nty:ident @ $noffset:expr)?) => {
        impl ControlArgs for $ty {
            fn encode(&self) -> [u8; 112] {
                let mut args = [0u8; 112];
                $( put(&mut args, $offset, &self.$field.to_le_bytes()); )*
                $( {
                    let inner = self.$nested.encode();
                    args[$noffset..$noffset + core::mem::size_of::<$nty>()].copy_from_slice(&inner[..core::mem::size_of::<$nty>()]);
                } )?
                args
            }

            #[allow(clippy::needless_update)] // padding fields, where a struct has them
            fn decode(args: &[u8; 112]) -> Self {
                $ty {
                    $( $field: control_args!(@read $kind, args, $offset), )*
                    $( $nested: {
                        let mut inner = [0u8; 112];
                        inner[..core::mem::size_of::<$nty>()].copy_from_slice(&args[$noffset..$noffset + core::mem::size_of::<$nty>()]);
                        $nty::decode(&inner)
                    }, )?
                    ..Default::default()
                }
            }
        }
    };
    (@read u32, $args:ident, $offset:expr) => { u32_at($args, $offset) };
    (@read u64, $args:ident, $offset:expr) => { u64_at($args, $offset) };
}

control_args!(SchedParams { weight: u32 @ 0, warp_ns: u64 @ 8, warp_limit_ns: u64 @ 16, unwarp_req_ns: u64 @ 24 });
control_args!(CreateDomain { module: u32 @ 0, mem_kib: u32 @ 4, max_kib: u32 @ 8, cpu: u32 @ 12, cmdline: u64 @ 48, cmdline_len: u64 @ 56, flags: u32 @ 64, max_vcpus: u32 @ 68, cpu_mask: u64 @ 72 } nested params: SchedParams @ 16);
control_args!(MaxMem { max_kib: u64 @ 0 });
control_args!(DomainInfo {
    tot_pages: u64 @ 0, max_pages: u64 @ 8, state: u32 @ 16, vcpus: u32 @ 20, cpu_time_ns: u64 @ 24,
    hypercalls: u64 @ 32, exceptions_bounced: u64 @ 40, events_sent: u64 @ 48, build_ns: u64 @ 56,
});
control_args!(DomainDevices { console_mfn: u64 @ 0, store_mfn: u64 @ 8, console_port: u32 @ 16, store_port: u32 @ 20, console_gref: u32 @ 24, store_gref: u32 @ 28 });
control_args!(ReadDisk { module: u32 @ 0, len: u32 @ 4, offset: u64 @ 8, buffer: u64 @ 16, size: u64 @ 24, flags: u32 @ 32, index: u32 @ 36, for_module: u32 @ 40 });
control_args!(Heartbeat { answered: u32 @ 0, slowest_cpu: u32 @ 4, max_ns: u64 @ 8, total_ns: u64 @ 16 });
control_args!(PhysInfo {
    total_kib: u64 @ 0, free_kib: u64 @ 8, heap_bytes: u64 @ 16, domains: u32 @ 24, cpus: u32 @ 28,
    window_used_kib: u64 @ 32, modules: u32 @ 40, domains_held: u32 @ 44, tsc_khz: u64 @ 48, domain_records: u32 @ 56, vcpu_records: u32 @ 60,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_at_their_offsets() {
        let create = CreateDomain {
            module: 1,
            mem_kib: 512,
            max_kib: 1024,
            cpu: u32::MAX,
            params: SchedParams { weight: 3, _pad: 0, warp_ns: 5, warp_limit_ns: 6, unwarp_req_ns: 7 },
            cmdline: 0xffff_ffff_8000_1000,
            cmdline_len: 12,
            flags: CREATE_PAUSED,
            max_vcpus: 4,
            cpu_mask: 0x8000_0000_0000_0005,
        };
        let args = create.encode();
        assert_eq!(CreateDomain::decode(&args), create);
        assert_eq!(u32_at(&args, 68), 4, "max_vcpus at offset 68");
        assert_eq!(u64_at(&args, 72), 0x8000_0000_0000_0005, "cpu_mask at offset 72");
        assert_eq!(u32_at(&args, 16), 3, "params.weight at offset 16");
        assert_eq!(u64_at(&args, 48), 0xffff_ffff_8000_1000);
        assert_eq!(u32_at(&args, 64), CREATE_PAUSED, "flags at offset 64");
        let info = PhysInfo { total_kib: 1, free_kib: 2, heap_bytes: 3, domains: 4, cpus: 5, window_used_kib: 6, modules: 7, domains_held: 11, tsc_khz: 8, domain_records: 9, vcpu_records: 10 };
        assert_eq!(PhysInfo::decode(&info.encode()), info);
        let dom = DomainInfo { tot_pages: 9, max_pages: 8, state: 1, vcpus: 2, cpu_time_ns: 3, hypercalls: 4, exceptions_bounced: 5, events_sent: 6, build_ns: 7 };
        assert_eq!(DomainInfo::decode(&dom.encode()), dom);
        assert_eq!(MaxMem::decode(&MaxMem { max_kib: 77 }.encode()), MaxMem { max_kib: 77 });
        let beat = Heartbeat { answered: 3, slowest_cpu: 2, max_ns: 40_000, total_ns: 90_000 };
        assert_eq!(Heartbeat::decode(&beat.encode()), beat);
        let devices = DomainDevices { console_mfn: 0x1234, store_mfn: 0x5678, console_port: 1, store_port: 2, console_gref: 0, store_gref: 1 };
        let args = devices.encode();
        assert_eq!(DomainDevices::decode(&args), devices);
        assert_eq!(u64_at(&args, 8), 0x5678, "store_mfn at offset 8");
        assert_eq!(u32_at(&args, 20), 2, "store_port at offset 20");
        let disk = ReadDisk { module: 2, len: 4096, offset: 8192, buffer: 0xffff_8000_0000_0000, size: 1 << 20, flags: DISK_READ_ONLY, index: 1, for_module: 1 };
        let args = disk.encode();
        assert_eq!(ReadDisk::decode(&args), disk);
        assert_eq!(u32_at(&args, 40), 1, "for_module at offset 40");
    }

    #[test]
    fn commands_decode() {
        assert_eq!(ControlCmd::from_raw(1), Some(ControlCmd::CreateDomain));
        assert_eq!(ControlCmd::from_raw(0), None);
        assert_eq!(ControlCmd::from_raw(10), Some(ControlCmd::Heartbeat));
        assert_eq!(ControlCmd::from_raw(11), Some(ControlCmd::GetDomainDevices));
        assert_eq!(ControlCmd::from_raw(12), None);
        assert_eq!(ControlCmd::from_raw(20), Some(ControlCmd::ReadDisk));
    }
}

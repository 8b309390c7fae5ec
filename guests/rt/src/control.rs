//! The control interface of domain 0 ([`abi::control`], hypercall 36 `domctl`): typed
//! calls to create, destroy, pause and unpause domains, set their memory limit and
//! scheduling parameters, read domain and machine information, and time every CPU's
//! answer to a cross-CPU call (the heartbeat), and learn where a created domain's console
//! and store rings are (its devices, which domain 0 serves), and read the disk modules it
//! serves as virtual block devices.
//!
//! Each call builds one [`ControlOp`] on the stack (current interface version, target
//! domain, the command's arguments encoded with [`ControlArgs`]), passes its address, and
//! decodes the arguments the hypervisor wrote back for the commands that return data.
//! Only domain 0 may call them; other domains get `EPERM`. This module must never decide
//! policy (which domains to create, where): that is domain 0's own code.

use abi::control::{
    ControlArgs, ControlCmd, ControlOp, CreateDomain, DomainDevices, DomainInfo, Heartbeat, MaxMem, PhysInfo, ReadDisk,
    SchedParams, CREATE_HOSTILE, CREATE_PAUSED, CREATE_UNPINNED, DISK_READ_ONLY,
};
use abi::errno::Errno;
use abi::hypercall::Hypercall;
use abi::ids::DomId;

use crate::hypercall::{self, HypercallError};

/// Why a control call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The hypercall failed.
    Call(HypercallError),
    /// `CreateDomain` returned a value that is not an ordinary domain id.
    BadDomainId(u64),
}

impl ControlError {
    /// The Xen error number, when the hypervisor returned one.
    pub const fn errno(self) -> Option<Errno> {
        match self {
            Self::Call(error) => error.errno(),
            Self::BadDomainId(_) => None,
        }
    }
}

impl From<HypercallError> for ControlError {
    fn from(error: HypercallError) -> Self {
        Self::Call(error)
    }
}

/// The result of a control call.
pub type Result<T> = core::result::Result<T, ControlError>;

/// What domain 0 asks for when it creates a domain.
#[derive(Clone, Copy, Debug)]
pub struct NewDomain<'a> {
    /// Boot module to build it from (domain 0 itself is module 0).
    pub module: u32,
    /// Reservation at start, in KiB.
    pub mem_kib: u32,
    /// Largest reservation it may balloon up to, in KiB.
    pub max_kib: u32,
    /// The CPU for its vCPU 0; `None`: the hypervisor chooses.
    pub cpu: Option<u32>,
    /// Keep it on `cpu` (hard affinity); false: `cpu` is only where it starts.
    pub pinned: bool,
    /// Its BVT parameters.
    pub params: SchedParams,
    /// Its command line.
    pub cmdline: &'a [u8],
    /// Create it paused: it runs once [`unpause_domain`] lets it.
    pub paused: bool,
    /// The most vCPUs it may bring up (at least one).
    pub max_vcpus: u32,
    /// The CPUs its vCPUs go on, one bit per CPU; 0: any online CPU.
    pub cpu_mask: u64,
    /// A hostile domain (a fuzzer, an attack): however it ends is no failure of the run.
    pub hostile: bool,
}

/// `CreateDomain`'s arguments for `spec` (the command line by address, in this domain).
pub fn create_args(spec: &NewDomain<'_>) -> CreateDomain {
    CreateDomain {
        module: spec.module,
        mem_kib: spec.mem_kib,
        max_kib: spec.max_kib,
        cpu: spec.cpu.unwrap_or(u32::MAX),
        params: spec.params,
        cmdline: spec.cmdline.as_ptr() as u64,
        cmdline_len: spec.cmdline.len() as u64,
        flags: flag(spec.paused, CREATE_PAUSED) | flag(!spec.pinned, CREATE_UNPINNED) | flag(spec.hostile, CREATE_HOSTILE),
        max_vcpus: spec.max_vcpus,
        cpu_mask: spec.cpu_mask,
    }
}

/// `flag` if `set`, else 0.
fn flag(set: bool, flag: u32) -> u32 {
    if set { flag } else { 0 }
}

/// The request for `cmd` on `domain` with `args`.
pub fn request(cmd: ControlCmd, domain: DomId, args: [u8; 112]) -> ControlOp {
    ControlOp {
        cmd: cmd.raw(),
        domain: domain.0,
        args,
        ..ControlOp::default()
    }
}

/// The domain id in `CreateDomain`'s return value: an ordinary id other than 0.
pub fn domid_from_return(value: u64) -> Result<DomId> {
    match u16::try_from(value) {
        Ok(id) if id != 0 && !DomId(id).is_reserved() => Ok(DomId(id)),
        _ => Err(ControlError::BadDomainId(value)),
    }
}

/// Makes control call `cmd` on `domain`; returns the result and the arguments as the
/// hypervisor left them.
fn call(cmd: ControlCmd, domain: DomId, args: [u8; 112]) -> Result<(u64, [u8; 112])> {
    let mut op = request(cmd, domain, args);
    // SAFETY: the hypervisor reads and writes the 128-byte `op` on our stack; addresses
    // inside the arguments (a command line) point to live memory of this domain.
    let ret = unsafe { hypercall::hypercall1(Hypercall::Domctl, &raw mut op as u64) };
    let value = hypercall::decode(ret)?;
    Ok((value, op.args))
}

/// Builds a domain and starts it (or leaves it paused, as `spec` asks); returns its id.
pub fn create_domain(spec: &NewDomain<'_>) -> Result<DomId> {
    let args = create_args(spec).encode();
    // `spec.cmdline` is borrowed for the call, so the address stays valid.
    let (value, _) = call(ControlCmd::CreateDomain, DomId::DOM0, args)?;
    domid_from_return(value)
}

/// Destroys `domain`; its memory returns to the hypervisor once its vCPUs stop.
pub fn destroy_domain(domain: DomId) -> Result<()> {
    call(ControlCmd::DestroyDomain, domain, [0; 112]).map(drop)
}

/// Stops `domain`'s vCPUs until [`unpause_domain`].
pub fn pause_domain(domain: DomId) -> Result<()> {
    call(ControlCmd::PauseDomain, domain, [0; 112]).map(drop)
}

/// Lets a paused `domain` run again.
pub fn unpause_domain(domain: DomId) -> Result<()> {
    call(ControlCmd::UnpauseDomain, domain, [0; 112]).map(drop)
}

/// Sets the largest reservation `domain` may hold, in KiB.
pub fn set_max_mem(domain: DomId, max_kib: u64) -> Result<()> {
    call(ControlCmd::SetMaxMem, domain, MaxMem { max_kib }.encode()).map(drop)
}

/// Sets `domain`'s BVT parameters.
pub fn set_sched_params(domain: DomId, params: &SchedParams) -> Result<()> {
    call(ControlCmd::SetSchedParams, domain, params.encode()).map(drop)
}

/// `domain`'s BVT parameters.
pub fn sched_params(domain: DomId) -> Result<SchedParams> {
    let (_, args) = call(ControlCmd::GetSchedParams, domain, [0; 112])?;
    Ok(SchedParams::decode(&args))
}

/// `domain`'s memory, state and counters.
pub fn domain_info(domain: DomId) -> Result<DomainInfo> {
    let (_, args) = call(ControlCmd::GetDomainInfo, domain, [0; 112])?;
    Ok(DomainInfo::decode(&args))
}

/// Where `domain`'s console and store rings are: their frames, the grant references that
/// give them to domain 0 and the unbound ports to bind (`ENOENT` for a domain without them).
pub fn domain_devices(domain: DomId) -> Result<DomainDevices> {
    let (_, args) = call(ControlCmd::GetDomainDevices, domain, [0; 112])?;
    Ok(DomainDevices::decode(&args))
}

/// How long each other CPU took to answer a cross-CPU call (see [`Heartbeat`]).
pub fn heartbeat() -> Result<Heartbeat> {
    let (_, args) = call(ControlCmd::Heartbeat, DomId::DOM0, [0; 112])?;
    Ok(Heartbeat::decode(&args))
}

/// What [`read_disk`] learnt of a disk module besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskModule {
    /// Its size in bytes.
    pub size: u64,
    /// Its `xvd` index (0: `xvda`).
    pub index: u32,
    pub read_only: bool,
    /// The image module whose domains get it (`None`: no image module before it).
    pub for_module: Option<u32>,
}

/// Copies `buf.len()` bytes (at most a page) at `offset` of disk module `module` (a boot
/// module whose line says `disk=`) into `buf`; returns the bytes copied (0 past the end) and
/// what the module is.
pub fn read_disk(module: u32, offset: u64, buf: &mut [u8]) -> Result<(usize, DiskModule)> {
    let args = ReadDisk { module, len: buf.len() as u32, offset, buffer: buf.as_mut_ptr() as u64, ..Default::default() };
    // `buf` is borrowed mutably for the call: the hypervisor writes at most `len` bytes to it.
    let (copied, args) = call(ControlCmd::ReadDisk, DomId::DOM0, args.encode())?;
    let args = ReadDisk::decode(&args);
    let disk = DiskModule {
        size: args.size,
        index: args.index,
        read_only: args.flags & DISK_READ_ONLY != 0,
        for_module: (args.for_module != u32::MAX).then_some(args.for_module),
    };
    Ok((copied as usize, disk))
}

/// The machine's memory, CPUs and boot modules, and the hypervisor's heap.
pub fn phys_info() -> Result<PhysInfo> {
    let (_, args) = call(ControlCmd::GetPhysInfo, DomId::DOM0, [0; 112])?;
    Ok(PhysInfo::decode(&args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::control::CONTROL_INTERFACE_VERSION;

    #[test]
    fn create_arguments_carry_the_command_line_by_address() {
        let cmdline = b"role=hog seconds=3";
        let spec = NewDomain {
            module: 1,
            mem_kib: 512,
            max_kib: 1024,
            cpu: None,
            pinned: true,
            params: SchedParams {
                weight: 2,
                ..SchedParams::default()
            },
            cmdline,
            paused: false,
            max_vcpus: 2,
            cpu_mask: 0b10,
            hostile: false,
        };
        let args = create_args(&spec);
        assert_eq!((args.max_vcpus, args.cpu_mask), (2, 0b10));
        assert_eq!(args.flags, 0, "not paused");
        assert_eq!(args.cpu, u32::MAX, "no CPU: the hypervisor chooses");
        assert_eq!(args.cmdline, cmdline.as_ptr() as u64);
        assert_eq!(args.cmdline_len, 18);
        assert_eq!((args.module, args.mem_kib, args.max_kib), (1, 512, 1024));
        assert_eq!(args.params.weight, 2);
        let pinned = create_args(&NewDomain {
            cpu: Some(1),
            ..spec
        });
        assert_eq!(pinned.cpu, 1);
        assert_eq!(CreateDomain::decode(&pinned.encode()), pinned);
        let paused = create_args(&NewDomain {
            paused: true,
            ..spec
        });
        assert_eq!(paused.flags, CREATE_PAUSED);
        let movable = create_args(&NewDomain {
            cpu: Some(1),
            pinned: false,
            ..spec
        });
        assert_eq!((movable.cpu, movable.flags), (1, CREATE_UNPINNED), "starts on CPU 1, may move");
        let hostile = create_args(&NewDomain { hostile: true, ..spec });
        assert_eq!(hostile.flags, CREATE_HOSTILE);
    }

    #[test]
    fn requests_carry_command_version_and_domain() {
        let op = request(ControlCmd::GetDomainInfo, DomId(7), [9; 112]);
        assert_eq!(op.cmd, 8);
        assert_eq!(op.interface_version, CONTROL_INTERFACE_VERSION);
        assert_eq!(op.domain, 7);
        assert_eq!(op.args, [9; 112]);
    }

    #[test]
    fn only_ordinary_ids_come_back_from_create() {
        assert_eq!(domid_from_return(1), Ok(DomId(1)));
        assert_eq!(domid_from_return(0x7fef), Ok(DomId(0x7fef)));
        for bad in [0, 0x7ff0, 0x7fff, 0x1_0001, u64::MAX] {
            assert_eq!(domid_from_return(bad), Err(ControlError::BadDomainId(bad)));
        }
    }

    #[test]
    fn errnos_surface_through_the_error() {
        let esrch = ControlError::Call(HypercallError::Xen(Errno::Esrch));
        assert_eq!(esrch.errno(), Some(Errno::Esrch));
        assert_eq!(ControlError::BadDomainId(0).errno(), None);
    }
}

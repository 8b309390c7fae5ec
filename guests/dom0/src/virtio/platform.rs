//! What domain 0 needs from the hypervisor to drive a PCI device: configuration space
//! through ports 0xCF8/0xCFC (which the hypervisor filters: `pci::policy`), device memory
//! mapped uncached, machine-contiguous DMA memory with its machine addresses (domain 0 is
//! PV: it knows its P2M), and the device's interrupt as an event (`map_pirq`, `bind_pirq`,
//! `eoi`).
//!
//! Memory: this module takes frames from the runtime's free frames past the boot stack
//! (mapped at start of day, [`guest_rt::frames::FreeFrames`]): a run of them is exchanged
//! for one machine-contiguous extent, the DMA pool, and device frames are mapped over the
//! virtual addresses of others (`update_va_mapping`: the RAM frame there is left unused).
//! The runtime's P2M list (read-only to it) is not updated for the exchanged frames: the
//! pool's machine address is kept here.

use core::arch::asm;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use guest_rt::abi::event_channel::EvtchnBindPirq;
use guest_rt::abi::hypercall::Hypercall;
use guest_rt::abi::ids::EvtchnPort;
use guest_rt::abi::physdev::{PhysdevEoi, PhysdevIrqStatusQuery, PhysdevMapPirq, PhysdevOp, PhysdevSetIopl, MAP_PIRQ_TYPE_GSI, XENIRQSTAT_NEEDS_EOI};
use guest_rt::abi::hypercall::MemoryOp;
use guest_rt::abi::ids::DomId;
use guest_rt::abi::memory::{XenMemoryExchange, XenMemoryReservation};
use guest_rt::abi::mmu::UVMF_INVLPG;
use guest_rt::frames::FreeFrames;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::layout::{PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Page-table cache bits for device memory (the hypervisor forces them anyway).
const PTE_UNCACHED: u64 = (1 << 3) | (1 << 4);

/// Frames the DMA pool holds (one extent of order [`POOL_ORDER`]): the virtqueue's three
/// parts, requests and responses, and the data buffers (three of 64 KiB). It comes out of
/// the initial mapping's free frames (Xen's 512 KiB boot slack), which bounds it.
pub const POOL_ORDER: u32 = 6;
pub const POOL_PAGES: usize = 1 << POOL_ORDER;

/// Why the platform could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// No machine-contiguous run of [`POOL_PAGES`] free frames.
    NotContiguous,
    /// Too few free frames for the pool and the device mappings.
    TooFewFrames,
    /// A hypercall failed.
    Hypercall(&'static str, HypercallError),
}

/// `physdev_op(cmd, arg)`.
fn physdev<T>(op: PhysdevOp, arg: &mut T) -> Result<(), HypercallError> {
    // SAFETY: `arg` is the live argument struct of `op`, which the hypervisor reads and
    // writes within its size.
    let ret = unsafe { hypercall::hypercall2(Hypercall::PhysdevOp, u64::from(op.raw()), core::ptr::from_mut(arg) as u64) };
    hypercall::decode(ret).map(drop)
}

/// Asks for I/O privilege level 1 (the guest kernel's), so that its port I/O is carried
/// out (and the configuration ports filtered) by the hypervisor.
pub fn enable_port_io() -> Result<(), PlatformError> {
    physdev(PhysdevOp::SetIopl, &mut PhysdevSetIopl { iopl: 1 }).map_err(|e| PlatformError::Hypercall("set_iopl", e))
}

/// The device's interrupt line as an event channel: `map_pirq` of the GSI, `bind_pirq`.
/// Returns the port and whether each interrupt needs [`eoi`].
pub fn bind_interrupt(gsi: u32) -> Result<(EvtchnPort, bool), PlatformError> {
    let mut map = PhysdevMapPirq { domid: 0x7ff0, kind: MAP_PIRQ_TYPE_GSI, index: gsi as i32, pirq: -1, ..Default::default() };
    physdev(PhysdevOp::MapPirq, &mut map).map_err(|e| PlatformError::Hypercall("map_pirq", e))?;
    let mut bind = EvtchnBindPirq { pirq: map.pirq as u32, flags: 0, port: EvtchnPort(0) };
    hypercall::event_channel_op(&mut bind).map_err(|e| PlatformError::Hypercall("bind_pirq", e))?;
    let mut query = PhysdevIrqStatusQuery { irq: map.pirq as u32, flags: 0 };
    physdev(PhysdevOp::IrqStatusQuery, &mut query).map_err(|e| PlatformError::Hypercall("irq_status_query", e))?;
    PIRQ.store(map.pirq as u64, Ordering::Relaxed);
    Ok((bind.port, query.flags & XENIRQSTAT_NEEDS_EOI != 0))
}

static PIRQ: AtomicU64 = AtomicU64::new(0);

/// The pirq [`bind_interrupt`] mapped and bound.
pub fn pirq() -> u32 {
    PIRQ.load(Ordering::Relaxed) as u32
}

/// The first device frame mapped, and where (for domain 0's checks of its own misuse).
pub fn first_device_mapping() -> Option<(u64, u64)> {
    let (mfn, va) = &MAPPED[0];
    let va = va.load(Ordering::Relaxed);
    (va != 0).then(|| (mfn.load(Ordering::Relaxed), va))
}

/// `PHYSDEVOP_eoi` for the bound pirq: the hypervisor unmasks the line.
pub fn eoi() -> Result<(), HypercallError> {
    physdev(PhysdevOp::Eoi, &mut PhysdevEoi { irq: PIRQ.load(Ordering::Relaxed) as u32 })
}

/// Configuration space through ports 0xCF8/0xCFC.
pub struct PortCam;

fn address(df: DeviceFunction, offset: u8) -> u32 {
    1 << 31 | u32::from(df.bus) << 16 | u32::from(df.device) << 11 | u32::from(df.function) << 8 | u32::from(offset & 0xfc)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let value: u32;
        // SAFETY: port I/O traps to the hypervisor (IOPL 0 in hardware), which carries out
        // domain 0's configuration accesses through its filter; no memory is touched.
        unsafe {
            asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") address(df, offset), options(nostack, nomem));
            asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") value, options(nostack, nomem));
        }
        value
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: as in `read_word`.
        unsafe {
            asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") address(df, offset), options(nostack, nomem));
            asm!("out dx, eax", in("dx") 0xcfcu16, in("eax") data, options(nostack, nomem));
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

static POOL_VA: AtomicU64 = AtomicU64::new(0);
static POOL_MA: AtomicU64 = AtomicU64::new(0);
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Spare mapped frames whose virtual addresses device frames are mapped over.
static SPARE_VA: AtomicU64 = AtomicU64::new(0);
static SPARE_LEFT: AtomicUsize = AtomicUsize::new(0);
/// Device frames mapped so far: (machine frame, virtual address), for reuse.
static MAPPED: [(AtomicU64, AtomicU64); 16] = [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 16];

/// Sets up the DMA pool and the spare frames from the free frames: [`POOL_PAGES`] frames
/// consecutive in the initial mapping are unmapped and exchanged for one
/// machine-contiguous extent (`XENMEM_exchange`, as Linux's `xen_create_contiguous_region`),
/// which is mapped at the same addresses.
pub fn init(frames: &mut FreeFrames) -> Result<(), PlatformError> {
    let first = frames.take().ok_or(PlatformError::TooFewFrames)?;
    let mut input = [0u64; POOL_PAGES];
    input[0] = first.mfn.0;
    for (i, slot) in input.iter_mut().enumerate().skip(1) {
        let frame = frames.take().ok_or(PlatformError::TooFewFrames)?;
        if frame.pfn.0 != first.pfn.0 + i as u64 {
            return Err(PlatformError::TooFewFrames);
        }
        *slot = frame.mfn.0;
    }
    let va = first.va();
    for i in 0..POOL_PAGES {
        // SAFETY: the frames are free (nothing of the runtime's uses them); their only
        // mapping goes, so that the hypervisor may take them back.
        unsafe { hypercall::update_va_mapping(va + (i * PAGE_SIZE) as u64, 0, UVMF_INVLPG) }
            .map_err(|e| PlatformError::Hypercall("update_va_mapping (unmap)", e))?;
    }
    let mut output = [first.pfn.0];
    let reservation = |list: u64, count: u64, order: u32| XenMemoryReservation {
        extent_start: list,
        nr_extents: count,
        extent_order: order,
        domid: DomId::SELF,
        ..Default::default()
    };
    let mut exchange = XenMemoryExchange {
        input: reservation(input.as_ptr() as u64, POOL_PAGES as u64, 0),
        output: reservation(output.as_mut_ptr() as u64, 1, POOL_ORDER),
        nr_exchanged: 0,
    };
    // SAFETY: the lists are live arrays of the sizes named; the input frames are unmapped.
    unsafe { hypercall::memory_op(MemoryOp::Exchange, &raw mut exchange) }.map_err(|e| PlatformError::Hypercall("exchange", e))?;
    if exchange.nr_exchanged != POOL_PAGES as u64 {
        return Err(PlatformError::NotContiguous);
    }
    let base = output[0];
    for i in 0..POOL_PAGES {
        let pte = ((base + i as u64) * PAGE_SIZE as u64) | PTE_PRESENT | PTE_WRITABLE | PTE_USER;
        // SAFETY: maps the new extent's frames where the old ones were.
        unsafe { hypercall::update_va_mapping(va + (i * PAGE_SIZE) as u64, pte, UVMF_INVLPG) }
            .map_err(|e| PlatformError::Hypercall("update_va_mapping (map)", e))?;
    }
    POOL_VA.store(va, Ordering::Relaxed);
    POOL_MA.store(base * PAGE_SIZE as u64, Ordering::Relaxed);
    // Device mappings: spare frames, consecutive in the initial mapping.
    let spare = frames.take().ok_or(PlatformError::TooFewFrames)?;
    let mut last = spare;
    for _ in 1..MAPPED.len() {
        let next = frames.take().ok_or(PlatformError::TooFewFrames)?;
        if next.pfn.0 != last.pfn.0 + 1 {
            return Err(PlatformError::TooFewFrames);
        }
        last = next;
    }
    SPARE_VA.store(spare.va(), Ordering::Relaxed);
    SPARE_LEFT.store(MAPPED.len(), Ordering::Relaxed);
    Ok(())
}

/// `pages` zeroed pages of the DMA pool: (machine address, virtual address).
pub fn alloc_pages(pages: usize) -> Option<(u64, NonNull<u8>)> {
    let first = POOL_NEXT.fetch_add(pages, Ordering::Relaxed);
    if first + pages > POOL_PAGES {
        return None;
    }
    let offset = (first * PAGE_SIZE) as u64;
    let va = POOL_VA.load(Ordering::Relaxed) + offset;
    // SAFETY: the pages are part of the pool, mapped writable, handed out once.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, pages * PAGE_SIZE) };
    Some((POOL_MA.load(Ordering::Relaxed) + offset, NonNull::new(va as *mut u8)?))
}

/// The machine address of `va` if it lies in the pool.
fn pool_machine_address(va: u64, len: usize) -> Option<u64> {
    let base = POOL_VA.load(Ordering::Relaxed);
    let end = base + (POOL_PAGES * PAGE_SIZE) as u64;
    (va >= base && va + len as u64 <= end).then(|| POOL_MA.load(Ordering::Relaxed) + (va - base))
}

/// The machine address of `va..va + len` in the initial mapping (the image, its stack),
/// through the P2M list, when its frames are machine-contiguous: the small request headers
/// and status bytes `virtio-drivers` keeps on the stack for its blocking calls (flush).
fn initial_machine_address(va: u64, len: usize) -> Option<u64> {
    let first = va / PAGE_SIZE as u64;
    let last = (va + len.max(1) as u64 - 1) / PAGE_SIZE as u64;
    let base = guest_rt::start_info::virt_to_mfn(first * PAGE_SIZE as u64)?.0;
    for (i, page) in (first..=last).enumerate() {
        if guest_rt::start_info::virt_to_mfn(page * PAGE_SIZE as u64)?.0 != base + i as u64 {
            return None;
        }
    }
    Some(base * PAGE_SIZE as u64 + va % PAGE_SIZE as u64)
}

/// Maps device frame `mfn` (uncached), reusing an earlier mapping of it.
fn map_device_frame(mfn: u64) -> Option<u64> {
    for (m, va) in &MAPPED {
        if m.load(Ordering::Relaxed) == mfn && va.load(Ordering::Relaxed) != 0 {
            return Some(va.load(Ordering::Relaxed));
        }
    }
    let left = SPARE_LEFT.load(Ordering::Relaxed);
    let slot = MAPPED.len().checked_sub(left)?;
    let va = SPARE_VA.load(Ordering::Relaxed) + (slot * PAGE_SIZE) as u64;
    let pte = (mfn * PAGE_SIZE as u64) | PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_UNCACHED;
    // SAFETY: `va` is a spare frame's address in the initial mapping, used for nothing
    // else; from here on it maps the device's registers.
    unsafe { hypercall::update_va_mapping(va, pte, UVMF_INVLPG) }.ok()?;
    SPARE_LEFT.store(left - 1, Ordering::Relaxed);
    MAPPED[slot].0.store(mfn, Ordering::Relaxed);
    MAPPED[slot].1.store(va, Ordering::Relaxed);
    Some(va)
}

/// virtio-drivers' platform half.
pub struct DomainHal;

// SAFETY: DMA memory is machine-contiguous, mapped, zeroed and never handed out twice;
// `share` gives the device the machine address of memory that stays valid for the
// request (the pool, or a machine-contiguous buffer of the initial mapping, which is never
// exchanged), and refuses (panics on) anything else.
unsafe impl Hal for DomainHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        alloc_pages(pages).map_or((0, NonNull::dangling()), |(ma, va)| (ma, va))
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The pool is never given back: the driver's allocations live for the run.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let first = paddr / PAGE_SIZE as u64;
        let last = (paddr + size as u64 - 1) / PAGE_SIZE as u64;
        let mut base = 0;
        for (i, mfn) in (first..=last).enumerate() {
            let va = map_device_frame(mfn).expect("the hypervisor maps domain 0's device frames");
            if i == 0 {
                base = va;
            } else {
                assert_eq!(va, base + (i * PAGE_SIZE) as u64, "device pages mapped consecutively");
            }
        }
        NonNull::new((base + paddr % PAGE_SIZE as u64) as *mut u8).expect("mapped")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr().cast::<u8>() as u64;
        pool_machine_address(va, buffer.len())
            .or_else(|| initial_machine_address(va, buffer.len()))
            .expect("a device buffer is in the DMA pool, or machine-contiguous in the initial mapping")
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

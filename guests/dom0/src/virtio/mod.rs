//! Domain 0's real disk: QEMU's virtio-blk PCI device (modern transport), driven over the
//! `virtio-drivers` crate's PCI transport (feature negotiation, configuration, notify) and
//! domain 0's own split virtqueue ([`guest_dom0::virtq`]) on [`platform`] (configuration
//! ports, device memory, DMA pool, the interrupt as an event channel), behind
//! [`SectorDisk`]: requests are submitted and complete later, so that a block backend can
//! serve several frontends from it.
//!
//! A request names its data by bus (machine) address, as many pieces as it has
//! ([`Extent`]s, one descriptor each between the header and the status byte): domain 0's
//! own DMA buffers ([`Buffers`], machine-contiguous pool memory) or a frontend's pages the
//! block backend mapped for the device (`GNTMAP_device_map`, [`vbd`]). The queue has
//! [`QUEUE_SIZE`] entries, so that [`DEPTH`] requests of [`MAX_SEGMENTS`] pieces fit at
//! once (`virtio-drivers`' own block driver fixes its queue at 16 entries and one buffer per
//! request).
//!
//! `plan=virtio` on domain 0's command line runs [`run`]: find the device, check the
//! pattern the test script wrote into the image, write and flush a region (the script
//! checks it in the image after QEMU exits), read it back, and measure sequential 64 KiB
//! reads (median MB/s of [`BENCH_RUNS`] passes over the disk), then power off. Lines:
//! `virtio: ...`, ending with `virtio: disk ok` or `virtio: FAILED <why>`.
//!
//! Waiting: a submitted request is waited for by blocking on the interrupt's event
//! (`Events::wait_until`, [`SectorDisk::wait`]), never by spinning, or, in a loop that
//! serves other things too, by [`interrupted`] and [`SectorDisk::poll`]; each interrupt is
//! acknowledged to the device (its ISR read, which lowers the line) and then to the
//! hypervisor (`PHYSDEVOP_eoi`, which unmasks it). A flush is a request like the others.

pub mod platform;
pub mod review;
pub mod vbd;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use arrayvec::ArrayVec;
pub use blkif::persistent::Extent;
use guest_dom0::virtq::{Buffer, Queue};
use guest_rt::abi::ids::EvtchnPort;
use guest_rt::events::Events;
use guest_rt::frames::FreeFrames;
use guest_rt::time::Clock;
use guest_rt::{println, StartInfo};
use virtio_drivers::transport::pci::bus::{Command, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::Hal;
use xenring::{RawMemory, RingMemory};

use platform::{DomainHal, PortCam};

/// Bytes of one data buffer (and of one benchmark read).
pub const CHUNK: usize = 64 * 1024;
/// Bytes of a sector.
pub const SECTOR_SIZE: usize = 512;
/// Passes over the disk the benchmark makes.
pub const BENCH_RUNS: usize = 5;
/// Where the write check writes (in sectors) and how much.
pub const WRITE_AT: u64 = 1024;
pub const WRITE_SECTORS: usize = 64;
/// Entries of the virtqueue (QEMU offers 256).
pub const QUEUE_SIZE: usize = 256;
/// Data pieces one request may have: with its header and status, 32 descriptors.
pub const MAX_SEGMENTS: usize = 30;
/// Requests in flight at most (each may take [`MAX_SEGMENTS`] + 2 descriptors).
pub const DEPTH: usize = 8;

/// One request's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// Makes every completed write durable (no data).
    Flush,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// Every request slot (or descriptor) is in use.
    Busy,
    /// Past the end of the disk, not whole sectors, too many pieces, or a write to a
    /// read-only disk.
    OutOfRange,
    /// The device refused or failed it.
    Device,
}

/// A request's handle, from [`SectorDisk::start`] to [`SectorDisk::complete`].
pub type Tag = usize;

/// A disk of 512-byte sectors whose requests complete later: the interface the block
/// backend uses for a real disk.
pub trait SectorDisk {
    /// Sectors on the disk.
    fn sectors(&self) -> u64;
    /// Whether it refuses writes.
    fn read_only(&self) -> bool;
    /// Requests in flight at most.
    fn depth(&self) -> usize;
    /// Starts `op` on the sectors from `sector` whose bytes `data` holds, in order (whole
    /// sectors in all; none for a flush): the device reads or writes those bus addresses
    /// until the request completes. The device hears of it at the next
    /// [`kick`](Self::kick) (requests started together share one notification).
    ///
    /// # Safety
    /// Every extent must be memory the caller lets the device write (a read) or read (a
    /// write) until [`complete`](Self::complete) returns the tag: its own DMA buffers, or
    /// frames it holds mapped for the device, never freed or unmapped before.
    unsafe fn start(&mut self, op: Op, sector: u64, data: &[Extent]) -> Result<Tag, DiskError>;
    /// Tells the device of the requests started since the last kick (if it wants to hear).
    fn kick(&mut self);
    /// Whether a request finished that [`complete`](Self::complete) has not returned yet
    /// (without waiting for the interrupt that says so).
    fn has_completed(&self) -> bool;
    /// Asks the device for its interrupt when requests finish, or not (a caller that looks
    /// for completions itself while it runs). Turning it on returns whether one finished
    /// meanwhile: then the caller must not block for the interrupt. [`wait`](Self::wait)
    /// turns it on while it blocks.
    fn interrupts(&mut self, on: bool) -> bool;
    /// A request that finished, with its result, if any (without waiting).
    fn complete(&mut self) -> Option<(Tag, Result<(), DiskError>)>;
    /// Waits (blocked on the interrupt's event) until some request may have finished
    /// (kicking the device first).
    fn wait(&mut self);
    /// Without waiting: acknowledges an interrupt that arrived (device, then hypervisor);
    /// whether one did.
    fn poll(&mut self) -> bool;
}

/// Whether the disk's interrupt arrived and is not yet acknowledged ([`SectorDisk::poll`]):
/// for a loop that waits on several kinds of event.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// Domain 0's bounce buffers: [`CHUNK`] bytes each, machine-contiguous pool memory.
pub struct Buffers {
    slots: ArrayVec<(u64, &'static mut [u8]), SLOTS>,
}

/// Bounce buffers [`Buffers::alloc`] takes (the pool holds the queue, the request headers
/// and three of them).
pub const SLOTS: usize = 3;

impl Buffers {
    /// `n` (at most [`SLOTS`]) buffers from the DMA pool; `None` when it is exhausted.
    pub fn alloc(n: usize) -> Option<Buffers> {
        let mut slots = ArrayVec::new();
        for _ in 0..n.min(SLOTS) {
            let (ma, va) = platform::alloc_pages(CHUNK / 4096)?;
            // SAFETY: fresh pool pages, handed out once, for the run.
            slots.push((ma, unsafe { core::slice::from_raw_parts_mut(va.as_ptr(), CHUNK) }));
        }
        Some(Buffers { slots })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Buffer `slot`'s bytes.
    pub fn buffer(&mut self, slot: usize) -> &mut [u8] {
        self.slots[slot].1
    }

    /// The machine frame of page `page` of buffer `slot`, `None` past its end.
    pub fn frame(&self, slot: usize, page: usize) -> Option<u64> {
        let (ma, _) = self.slots.get(slot)?;
        (page < CHUNK / 4096).then_some(ma / 4096 + page as u64)
    }

    /// The first `bytes` of buffer `slot` as one extent.
    pub fn extent(&self, slot: usize, bytes: usize) -> Extent {
        Extent { addr: self.slots[slot].0, len: bytes.min(CHUNK) as u32 }
    }
}

/// What driving the device cost domain 0 (see [`VirtioDisk::costs`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceCosts {
    pub notifies: u64,
    pub notify_cycles: u64,
    pub interrupts: u64,
    pub isr_cycles: u64,
    pub eoi_cycles: u64,
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Set by the interrupt's event handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn on_interrupt(_port: EvtchnPort) {
    INTERRUPTED.store(true, Ordering::Release);
}

/// `VIRTIO_BLK_F_SEG_MAX`, `_RO`, `_FLUSH` and `VIRTIO_F_VERSION_1`.
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_BLK_T_IN`, `_OUT`, `_FLUSH`.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Where request slot `i`'s status byte lies in the header page (its 16-byte header at
/// `16 * i`).
const STATUS_AT: usize = 2048;

/// The virtio-blk device as a [`SectorDisk`].
pub struct VirtioDisk {
    transport: PciTransport,
    queue: Queue<RawMemory>,
    /// The request headers and status bytes (one pool page) and its machine address.
    headers: RawMemory,
    headers_ma: u64,
    /// The queue token of each request slot in flight.
    requests: [Option<u16>; DEPTH],
    capacity: u64,
    read_only: bool,
    can_flush: bool,
    max_segments: usize,
    depth: usize,
    /// Requests were started since the device was last notified.
    unkicked: bool,
    /// The device is asked for interrupts ([`SectorDisk::interrupts`]).
    interrupts_on: bool,
    /// Queue 0's notification register, found once (the transport's `notify` selects the
    /// queue and reads its offset each time: three device accesses instead of one).
    notify: Option<NonNull<u16>>,
    /// What the device accesses cost domain 0 (TSC cycles): notifications, interrupt status
    /// reads, `PHYSDEVOP_eoi` calls.
    pub costs: DeviceCosts,
    events: Events,
    needs_eoi: bool,
    /// The interrupt's port (re-bound by [`review`]).
    port: EvtchnPort,
}

impl VirtioDisk {
    /// Reads the device's ISR (which lowers its line) without telling the hypervisor.
    pub fn ack_device(&mut self) {
        let _ = self.transport.ack_interrupt();
    }
}

impl SectorDisk for VirtioDisk {
    fn sectors(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn depth(&self) -> usize {
        self.depth
    }

    unsafe fn start(&mut self, op: Op, sector: u64, data: &[Extent]) -> Result<Tag, DiskError> {
        let bytes: u64 = data.iter().map(|e| u64::from(e.len)).sum();
        let shape_ok = match op {
            Op::Flush => data.is_empty(),
            Op::Read | Op::Write => {
                !data.is_empty()
                    && data.len() <= self.max_segments
                    && data.iter().all(|e| e.len > 0)
                    && bytes.is_multiple_of(SECTOR_SIZE as u64)
                    && sector.checked_add(bytes / SECTOR_SIZE as u64).is_some_and(|end| end <= self.capacity)
                    && !(op == Op::Write && self.read_only)
            }
        };
        if !shape_ok {
            return Err(DiskError::OutOfRange);
        }
        if op == Op::Flush && !self.can_flush {
            return Err(DiskError::Device);
        }
        let slot = self.requests[..self.depth].iter().position(Option::is_none).ok_or(DiskError::Busy)?;
        let kind = match op {
            Op::Read => T_IN,
            Op::Write => T_OUT,
            Op::Flush => T_FLUSH,
        };
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&(if op == Op::Flush { 0 } else { sector }).to_le_bytes());
        self.headers.write(16 * slot, &header);
        self.headers.write(STATUS_AT + slot, &[0xff]);
        let mut chain = ArrayVec::<Buffer, { MAX_SEGMENTS + 2 }>::new();
        chain.push(Buffer { addr: self.headers_ma + 16 * slot as u64, len: 16, device_writes: false });
        for e in data {
            chain.push(Buffer { addr: e.addr, len: e.len, device_writes: op == Op::Read });
        }
        chain.push(Buffer { addr: self.headers_ma + (STATUS_AT + slot) as u64, len: 1, device_writes: true });
        let token = self.queue.add(&chain).map_err(|_| DiskError::Busy)?;
        self.requests[slot] = Some(token);
        self.unkicked = true;
        Ok(slot)
    }

    fn kick(&mut self) {
        if core::mem::take(&mut self.unkicked) && self.queue.should_notify() {
            let begin = rdtsc();
            match self.notify {
                // SAFETY: the queue's notification register, mapped uncached for the run; a
                // 16-bit write of the queue's index is what the device expects there.
                Some(at) => unsafe { at.as_ptr().write_volatile(0) },
                None => self.transport.notify(0),
            }
            self.costs.notifies += 1;
            self.costs.notify_cycles += rdtsc().wrapping_sub(begin);
        }
    }

    fn complete(&mut self) -> Option<(Tag, Result<(), DiskError>)> {
        loop {
            let (token, _) = match self.queue.pop_used() {
                Ok(Some(used)) => used,
                Ok(None) => return None,
                Err(e) => {
                    println!("virtio: the device returned what is not in flight: {e:?}");
                    return None;
                }
            };
            let Some(slot) = self.requests.iter().position(|r| *r == Some(token)) else { continue };
            self.requests[slot] = None;
            let mut status = [0u8];
            self.headers.read(STATUS_AT + slot, &mut status);
            return Some((slot, if status[0] == 0 { Ok(()) } else { Err(DiskError::Device) }));
        }
    }

    fn has_completed(&self) -> bool {
        self.queue.has_used()
    }

    fn interrupts(&mut self, on: bool) -> bool {
        self.interrupts_on = on;
        self.queue.set_interrupts(on)
    }

    fn wait(&mut self) {
        self.kick();
        let was_on = self.interrupts_on;
        // On while blocked; a completion that came meanwhile ends the wait at once.
        if !self.queue.set_interrupts(true) {
            let _ = self.events.wait_until(|| INTERRUPTED.swap(false, Ordering::AcqRel));
            // The device lowers its line when its ISR is read; then the hypervisor may
            // unmask.
            let _ = self.transport.ack_interrupt();
            if self.needs_eoi {
                let _ = platform::eoi();
            }
        }
        if !was_on {
            let _ = self.queue.set_interrupts(false);
        }
    }

    fn poll(&mut self) -> bool {
        if !INTERRUPTED.swap(false, Ordering::AcqRel) {
            return false;
        }
        let begin = rdtsc();
        let _ = self.transport.ack_interrupt();
        let acked = rdtsc();
        if self.needs_eoi {
            let _ = platform::eoi();
        }
        self.costs.interrupts += 1;
        self.costs.isr_cycles += acked.wrapping_sub(begin);
        self.costs.eoi_cycles += rdtsc().wrapping_sub(acked);
        true
    }
}

/// `pages` fresh pool pages as ring memory: (machine address, memory).
fn pool_memory(pages: usize) -> Option<(u64, RawMemory)> {
    let (ma, va) = platform::alloc_pages(pages)?;
    // SAFETY: fresh, page-aligned pool pages handed out once, mapped for the run; only the
    // device (by DMA) and this memory reach them.
    Some((ma, unsafe { RawMemory::new(va, pages * 4096) }))
}

/// The device started: features negotiated (`VERSION_1`, and `RO`, `FLUSH`, `SEG_MAX`
/// when offered), queue 0 set up over pool memory, `DRIVER_OK`.
fn start_device(transport: &mut PciTransport) -> Result<(Queue<RawMemory>, u64, u64, u32), &'static str> {
    transport.set_status(DeviceStatus::empty());
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = transport.read_device_features();
    if offered & F_VERSION_1 == 0 {
        return Err("virtio-blk without VERSION_1");
    }
    let features = offered & (F_VERSION_1 | F_RO | F_FLUSH | F_SEG_MAX);
    transport.write_driver_features(features);
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
        return Err("virtio-blk refused the features");
    }
    let config = |offset: usize| transport.read_config_space::<u32>(offset).map_err(|_| "virtio-blk configuration");
    let capacity = u64::from(config(0)?) | u64::from(config(4)?) << 32;
    let seg_max = if features & F_SEG_MAX != 0 { config(12)? } else { 1 };
    let offered_size = transport.max_queue_size(0) as usize;
    let size = QUEUE_SIZE.min(offered_size);
    if size == 0 || !size.is_power_of_two() {
        return Err("virtio-blk queue size");
    }
    let (desc_ma, desc) = pool_memory(1).ok_or("DMA pool")?;
    let (rings_ma, rings) = pool_memory(1).ok_or("DMA pool")?;
    // The available ring at the page's start, the used ring (4-aligned) at 1 KiB.
    // SAFETY: both lie in the page `rings` covers, apart (518 and 2054 bytes at most).
    let (avail, used) = unsafe {
        (RawMemory::new(rings.base(), 1024), RawMemory::new(rings.base().add(1024), 4096 - 1024))
    };
    let queue = Queue::new(desc, avail, used, size).map_err(|_| "virtqueue layout")?;
    transport.queue_set(0, size as u32, desc_ma, rings_ma, rings_ma + 1024);
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK | DeviceStatus::DRIVER_OK);
    Ok((queue, capacity, features, seg_max))
}

/// Finds the first virtio block device on bus 0 and starts it; its DMA pool and device
/// mappings come from `frames`.
pub fn open(frames: &mut FreeFrames, events: Events) -> Result<VirtioDisk, &'static str> {
    platform::enable_port_io().map_err(|_| "set_iopl")?;
    let mut root = PciRoot::new(PortCam);
    let (df, _info) = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
        .ok_or("no virtio block device")?;
    println!("virtio: block device at {:02x}:{:02x}.{}", df.bus, df.device, df.function);
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    let line = interrupt_line(&root, df);
    platform::init(frames).map_err(|e| match e {
        platform::PlatformError::NotContiguous => "no machine-contiguous DMA pool",
        _ => "frames for the DMA pool and device mappings",
    })?;
    let mut transport = PciTransport::new::<DomainHal, _>(&mut root, df).map_err(|_| "virtio PCI transport")?;
    let (queue, capacity, features, seg_max) = start_device(&mut transport)?;
    let notify = notify_register(df);
    let (headers_ma, headers) = pool_memory(1).ok_or("DMA pool")?;
    let max_segments = MAX_SEGMENTS.min(seg_max.max(1) as usize);
    let depth = DEPTH.min(queue.size() / (max_segments + 2)).max(1);
    let (port, needs_eoi) = platform::bind_interrupt(u32::from(line)).map_err(|_| "binding the interrupt")?;
    events.set_handler(port, on_interrupt).map_err(|_| "event handler")?;
    events.enable();
    let read_only = features & F_RO != 0;
    println!(
        "virtio: {capacity} sectors{}, queue {} entries, {depth} requests of {max_segments} pieces, line {line} as port {}, needs_eoi {needs_eoi}",
        if read_only { " (read-only)" } else { "" },
        queue.size(),
        port.0
    );
    Ok(VirtioDisk {
        transport,
        queue,
        headers,
        headers_ma,
        requests: [None; DEPTH],
        capacity,
        read_only,
        can_flush: features & F_FLUSH != 0,
        max_segments,
        depth,
        unkicked: false,
        interrupts_on: true,
        notify,
        costs: DeviceCosts::default(),
        events,
        needs_eoi,
        port,
    })
}

/// Where queue 0's notification register is (virtio 1.1, 4.1.4.4: the notify capability's
/// BAR and offset plus the queue's `queue_notify_off` times the multiplier), mapped; `None`
/// when the capabilities do not say (the transport's own `notify` is used then).
fn notify_register(df: DeviceFunction) -> Option<NonNull<u16>> {
    use virtio_drivers::transport::pci::bus::ConfigurationAccess;
    let cam = PortCam;
    // (BAR, offset, multiplier) of the notify capability, (BAR, offset) of the common one.
    let (mut notify, mut common) = (None, None);
    let mut at = cam.read_word(df, 0x34) as u8 & 0xfc;
    for _ in 0..48 {
        if at < 0x40 {
            break;
        }
        let head = cam.read_word(df, at);
        if head & 0xff == 0x09 {
            let bar = cam.read_word(df, at + 4) as u8;
            let offset = u64::from(cam.read_word(df, at + 8));
            match (head >> 24) as u8 {
                1 => common = Some((bar, offset)),
                2 => notify = Some((bar, offset, u64::from(cam.read_word(df, at + 16)))),
                _ => {}
            }
        }
        at = (head >> 8) as u8 & 0xfc;
    }
    let bar_base = |bar: u8| -> Option<u64> {
        let register = 0x10 + 4 * bar.min(5);
        let low = cam.read_word(df, register);
        if low & 1 != 0 {
            return None;
        }
        let high = if low & 0x6 == 0x4 { u64::from(cam.read_word(df, register + 4)) } else { 0 };
        Some(u64::from(low & !0xf) | high << 32)
    };
    let (nbar, noffset, multiplier) = notify?;
    let (cbar, coffset) = common?;
    // SAFETY: the common configuration's registers, mapped uncached by the platform (the
    // transport mapped them already); `queue_select` (0x16) then `queue_notify_off` (0x1e).
    let queue_offset = unsafe {
        let common = DomainHal::mmio_phys_to_virt(bar_base(cbar)? + coffset, 0x20).as_ptr();
        common.add(0x16).cast::<u16>().write_volatile(0);
        u64::from(common.add(0x1e).cast::<u16>().read_volatile())
    };
    let at = bar_base(nbar)? + noffset + queue_offset * multiplier;
    // SAFETY: device memory of the notify capability, mapped by the platform.
    Some(unsafe { DomainHal::mmio_phys_to_virt(at, 2) }.cast::<u16>())
}

fn interrupt_line(root: &PciRoot<PortCam>, df: DeviceFunction) -> u8 {
    use virtio_drivers::transport::pci::bus::ConfigurationAccess;
    let _ = root;
    PortCam.read_word(df, 0x3c) as u8
}

/// Byte `j` of sector `s` as the test script fills the image.
pub fn pattern(s: u64, j: usize) -> u8 {
    if j < 8 {
        s.to_le_bytes()[j]
    } else {
        (s as u32).wrapping_mul(31).wrapping_add(j as u32) as u8
    }
}

/// Byte `j` of sector `s` as [`run`] writes it.
pub fn written(s: u64, j: usize) -> u8 {
    if j < 8 {
        (!s).to_le_bytes()[j]
    } else {
        (s as u32).wrapping_mul(17).wrapping_add(j as u32 * 3).wrapping_add(0x5a) as u8
    }
}

/// Runs one request and waits for it.
///
/// # Safety
/// As [`SectorDisk::start`].
unsafe fn run_one(disk: &mut impl SectorDisk, op: Op, sector: u64, data: &[Extent]) -> Result<(), DiskError> {
    // SAFETY: the caller's promise.
    let tag = unsafe { disk.start(op, sector, data) }?;
    disk.kick();
    loop {
        match disk.complete() {
            Some((t, result)) if t == tag => return result,
            Some(_) => {}
            None => disk.wait(),
        }
    }
}

fn check(disk: &mut impl SectorDisk, buffers: &mut Buffers, sector: u64, sectors: usize, want: fn(u64, usize) -> u8) -> Result<(), &'static str> {
    // SAFETY: buffer 0 is domain 0's pool memory, used by nothing else meanwhile.
    unsafe { run_one(disk, Op::Read, sector, &[buffers.extent(0, sectors * SECTOR_SIZE)]) }.map_err(|_| "read")?;
    let buffer = buffers.buffer(0);
    for i in 0..sectors {
        let s = sector + i as u64;
        for j in 0..SECTOR_SIZE {
            if buffer[i * SECTOR_SIZE + j] != want(s, j) {
                println!("virtio: sector {s} byte {j}: {:#x}, expected {:#x}", buffer[i * SECTOR_SIZE + j], want(s, j));
                return Err("data");
            }
        }
    }
    Ok(())
}

/// The `plan=virtio` run (see the module documentation).
pub fn run(start: &StartInfo) {
    match run_checks(start) {
        Ok(()) => println!("virtio: disk ok"),
        Err(why) => println!("virtio: FAILED {why}"),
    }
}

fn run_checks(start: &StartInfo) -> Result<(), &'static str> {
    let events = Events::init().map_err(|_| "events")?;
    let mut frames = FreeFrames::new(start).ok_or("free frames")?;
    let mut disk = open(&mut frames, events)?;
    let mut buffers = Buffers::alloc(SLOTS).ok_or("DMA pool")?;
    let clock = Clock::new().map_err(|_| "clock")?;
    let per_chunk = CHUNK / SECTOR_SIZE;
    // The pattern the test script wrote: the first 512 KiB, and the last chunk.
    for chunk in 0..8 {
        check(&mut disk, &mut buffers, (chunk * per_chunk) as u64, per_chunk, pattern)?;
    }
    let last = disk.sectors() - per_chunk as u64;
    check(&mut disk, &mut buffers, last, per_chunk, pattern)?;
    println!("virtio: pattern read ok");
    if disk.read_only() {
        return Err("the disk is read-only: nothing to write");
    }
    // Write a region, flush, read it back.
    for (i, byte) in buffers.buffer(1)[..WRITE_SECTORS * SECTOR_SIZE].iter_mut().enumerate() {
        *byte = written(WRITE_AT + (i / SECTOR_SIZE) as u64, i % SECTOR_SIZE);
    }
    // SAFETY: buffer 1 is domain 0's pool memory, used by nothing else meanwhile.
    unsafe { run_one(&mut disk, Op::Write, WRITE_AT, &[buffers.extent(1, WRITE_SECTORS * SECTOR_SIZE)]) }.map_err(|_| "write")?;
    // SAFETY: a flush names no memory.
    unsafe { run_one(&mut disk, Op::Flush, 0, &[]) }.map_err(|_| "flush")?;
    check(&mut disk, &mut buffers, WRITE_AT, WRITE_SECTORS, written)?;
    println!("virtio: write, flush and read back ok (sectors {WRITE_AT}-{})", WRITE_AT + WRITE_SECTORS as u64 - 1);
    let sectors = disk.sectors();
    let targets: ArrayVec<ArrayVec<Extent, 16>, SLOTS> = (0..buffers.len()).map(|i| [buffers.extent(i, CHUNK)].into_iter().collect()).collect();
    // SAFETY: the targets are domain 0's pool buffers, used by nothing else meanwhile.
    let bench = unsafe { bench(&mut disk, &clock, sectors, &targets) }?;
    println!("virtio: bench seq64k {bench}");
    Ok(())
}

/// Medians of a sequential read benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Bench {
    pub bytes: u64,
    /// Reads in flight.
    pub depth: usize,
    /// MB/s in hundredths.
    pub median: u64,
    pub min: u64,
    pub max: u64,
    /// The disk's average depth while busy, in hundredths (all passes).
    pub avg_depth: u64,
}

impl core::fmt::Display for Bench {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "bytes={} depth={} avg_depth={}.{:02} runs={BENCH_RUNS} median_mbps={}.{:02} min_mbps={}.{:02} max_mbps={}.{:02}",
            self.bytes,
            self.depth,
            self.avg_depth / 100,
            self.avg_depth % 100,
            self.median / 100,
            self.median % 100,
            self.min / 100,
            self.min % 100,
            self.max / 100,
            self.max % 100
        )
    }
}

/// Sequential [`CHUNK`]-byte reads over the first `sectors` sectors, one in flight per
/// target (each target: where one read's [`CHUNK`] bytes go, in order): [`BENCH_RUNS`]
/// passes, MB/s of each.
///
/// # Safety
/// As [`SectorDisk::start`] for every target, for the whole call.
pub unsafe fn bench<const N: usize>(disk: &mut impl SectorDisk, clock: &Clock, sectors: u64, targets: &[ArrayVec<Extent, N>]) -> Result<Bench, &'static str> {
    let per_chunk = CHUNK / SECTOR_SIZE;
    let chunks = sectors / per_chunk as u64;
    let depth = targets.len().min(disk.depth()).min(DEPTH);
    let mut rates = [0u64; BENCH_RUNS];
    // No interrupt while it looks for completions itself: `wait` asks for one when it
    // blocks (as the VBD loop does).
    let _ = disk.interrupts(false);
    // Cycles with reads in flight, and weighted by how many.
    let (mut busy_cycles, mut depth_cycles, mut at) = (0u64, 0u64, rdtsc());
    let mut tick = |in_flight: u64| {
        let now = rdtsc();
        if in_flight > 0 {
            busy_cycles += now.wrapping_sub(at);
            depth_cycles += now.wrapping_sub(at) * in_flight;
        }
        at = now;
    };
    for rate in rates.iter_mut() {
        let begin = clock.now_ns();
        let mut next = 0u64;
        let mut done = 0u64;
        // The disk's tag of the read each target holds.
        let mut busy: [Option<Tag>; DEPTH] = [None; DEPTH];
        let in_flight = |busy: &[Option<Tag>; DEPTH]| busy.iter().filter(|b| b.is_some()).count() as u64;
        while done < chunks {
            for t in 0..depth {
                if busy[t].is_none() && next < chunks {
                    // SAFETY: the caller's promise; the target is not in flight.
                    if let Ok(tag) = unsafe { disk.start(Op::Read, next * per_chunk as u64, &targets[t]) } {
                        tick(in_flight(&busy));
                        busy[t] = Some(tag);
                        next += 1;
                    }
                }
            }
            disk.kick();
            match disk.complete() {
                Some((tag, result)) => {
                    result.map_err(|_| "benchmark read")?;
                    tick(in_flight(&busy));
                    if let Some(slot) = busy.iter_mut().find(|b| **b == Some(tag)) {
                        *slot = None;
                    }
                    done += 1;
                }
                None => disk.wait(),
            }
        }
        let ns = clock.now_ns().saturating_sub(begin).max(1);
        // Bytes per microsecond is MB/s; kept in hundredths.
        *rate = chunks * CHUNK as u64 * 100_000 / ns;
    }
    let _ = disk.interrupts(true);
    rates.sort_unstable();
    Ok(Bench {
        bytes: chunks * CHUNK as u64,
        depth,
        median: rates[BENCH_RUNS / 2],
        min: rates[0],
        max: rates[BENCH_RUNS - 1],
        avg_depth: depth_cycles * 100 / busy_cycles.max(1),
    })
}

//! Domain 0's real disk: QEMU's virtio-blk PCI device (modern transport), driven with the
//! `virtio-drivers` crate on [`platform`] (configuration ports, device memory, DMA pool,
//! the interrupt as an event channel), behind [`SectorDisk`]: requests are submitted and
//! complete later, so that a block backend can serve several frontends from it.
//!
//! `plan=virtio` on domain 0's command line runs [`run`]: find the device, check the
//! pattern the test script wrote into the image, write and flush a region (the script
//! checks it in the image after QEMU exits), read it back, and measure sequential 64 KiB
//! reads (median MB/s of [`BENCH_RUNS`] passes over the disk), then power off. Lines:
//! `virtio: ...`, ending with `virtio: disk ok` or `virtio: FAILED <why>`.
//!
//! Waiting: a submitted request is waited for by blocking on the interrupt's event
//! (`Events::wait_until`, [`SectorDisk::wait`]), never by spinning, or, in a loop that
//! serves other things too, by [`interrupted`] and [`SectorDisk::poll`]; each interrupt is acknowledged to the device
//! (its ISR read, which lowers the line) and then to the hypervisor (`PHYSDEVOP_eoi`,
//! which unmasks it). The flush is the exception: `virtio-drivers` has no non-blocking
//! flush, so it spins for its completion, with nothing else in flight (it takes the first
//! used entry as its own).

pub mod platform;
pub mod review;
pub mod vbd;

use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::abi::ids::EvtchnPort;
use guest_rt::events::Events;
use guest_rt::frames::FreeFrames;
use guest_rt::time::Clock;
use guest_rt::{println, StartInfo};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::{Command, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;

use platform::{DomainHal, PortCam};

/// Bytes of one data buffer (and of one benchmark read).
pub const CHUNK: usize = 64 * 1024;
/// Passes over the disk the benchmark makes.
pub const BENCH_RUNS: usize = 5;
/// Where the write check writes (in sectors) and how much.
pub const WRITE_AT: u64 = 1024;
pub const WRITE_SECTORS: usize = 64;

/// One request's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// Every request slot is in use.
    Busy,
    /// Past the end of the disk, or not whole sectors of a buffer.
    OutOfRange,
    /// The device refused or failed it.
    Device,
}

/// A disk of 512-byte sectors whose requests complete later: the interface the block
/// backend uses for a real disk. Data moves through the disk's own buffers
/// ([`SectorDisk::buffer`]), so that the device's DMA never reaches another domain's memory.
pub trait SectorDisk {
    /// Sectors on the disk.
    fn sectors(&self) -> u64;
    /// Whether it refuses writes.
    fn read_only(&self) -> bool;
    /// Request slots (each with a [`CHUNK`]-byte buffer).
    fn slots(&self) -> usize;
    /// Slot `slot`'s buffer: filled before a write is submitted, read after a read completes.
    fn buffer(&mut self, slot: usize) -> &mut [u8];
    /// Starts `op` on `sectors` sectors from `sector` through slot `slot`'s buffer.
    fn submit(&mut self, slot: usize, op: Op, sector: u64, sectors: usize) -> Result<(), DiskError>;
    /// A slot whose request finished, with its result, if any (without waiting).
    fn complete(&mut self) -> Option<(usize, Result<(), DiskError>)>;
    /// Waits (blocked on the interrupt's event) until some request may have finished.
    fn wait(&mut self);
    /// Writes every completed write to stable storage. `Busy` while any request is in
    /// flight (the caller lets them finish first).
    fn flush(&mut self) -> Result<(), DiskError>;
    /// The machine frame of page `page` of slot `slot`'s buffer (grant copies reach the
    /// buffer by frame), `None` past its end.
    fn buffer_frame(&self, slot: usize, page: usize) -> Option<u64>;
    /// Without waiting: acknowledges an interrupt that arrived (device, then hypervisor);
    /// whether one did.
    fn poll(&mut self) -> bool;
}

/// Whether the disk's interrupt arrived and is not yet acknowledged ([`SectorDisk::poll`]):
/// for a loop that waits on several kinds of event.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// Request slots of [`VirtioDisk`] (each request takes three of the queue's 16
/// descriptors, so at most five fit; the DMA pool holds three buffers).
pub const SLOTS: usize = 3;

/// Set by the interrupt's event handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn on_interrupt(_port: EvtchnPort) {
    INTERRUPTED.store(true, Ordering::Release);
}

struct Slot {
    buffer: &'static mut [u8],
    /// The buffer's first machine frame (the buffer is machine-contiguous).
    mfn: u64,
    req: &'static mut BlkReq,
    resp: &'static mut BlkResp,
    /// (virtqueue token, op, bytes) of the request in flight.
    busy: Option<(u16, Op, usize)>,
}

/// The virtio-blk device as a [`SectorDisk`].
pub struct VirtioDisk {
    blk: VirtIOBlk<DomainHal, PciTransport>,
    slots: [Slot; SLOTS],
    events: Events,
    needs_eoi: bool,
    /// The interrupt's port (re-bound by [`review`]).
    port: EvtchnPort,
}

/// A request header and its response status placed in one fresh pool page.
fn pool_pair() -> Option<(&'static mut BlkReq, &'static mut BlkResp)> {
    let (_, va) = platform::alloc_pages(1)?;
    let req = va.as_ptr().cast::<BlkReq>();
    // SAFETY: 2048 bytes into the same page: apart from the header (16 bytes).
    let resp = unsafe { va.as_ptr().add(2048) }.cast::<BlkResp>();
    // SAFETY: a fresh, zeroed, page-aligned pool page, large enough for both (a few bytes
    // each, apart), handed out once and never freed.
    unsafe {
        req.write(BlkReq::default());
        resp.write(BlkResp::default());
        Some((&mut *req, &mut *resp))
    }
}

impl SectorDisk for VirtioDisk {
    fn sectors(&self) -> u64 {
        self.blk.capacity()
    }

    fn read_only(&self) -> bool {
        self.blk.readonly()
    }

    fn slots(&self) -> usize {
        SLOTS
    }

    fn buffer(&mut self, slot: usize) -> &mut [u8] {
        self.slots[slot].buffer
    }

    fn submit(&mut self, slot: usize, op: Op, sector: u64, sectors: usize) -> Result<(), DiskError> {
        let bytes = sectors.checked_mul(SECTOR_SIZE).filter(|&b| b > 0 && b <= CHUNK).ok_or(DiskError::OutOfRange)?;
        if sector.checked_add(sectors as u64).is_none_or(|end| end > self.blk.capacity()) || (op == Op::Write && self.blk.readonly()) {
            return Err(DiskError::OutOfRange);
        }
        let Self { blk, slots, .. } = self;
        let s = slots.get_mut(slot).ok_or(DiskError::OutOfRange)?;
        if s.busy.is_some() {
            return Err(DiskError::Busy);
        }
        let buffer = &mut s.buffer[..bytes];
        // SAFETY: the request, buffer and response are pool memory of this slot, untouched
        // until `complete` hands them back with the same token.
        let token = unsafe {
            match op {
                Op::Read => blk.read_blocks_nb(sector as usize, s.req, buffer, s.resp),
                Op::Write => blk.write_blocks_nb(sector as usize, s.req, buffer, s.resp),
            }
        }
        .map_err(|e| match e {
            virtio_drivers::Error::QueueFull | virtio_drivers::Error::NotReady => DiskError::Busy,
            _ => DiskError::Device,
        })?;
        s.busy = Some((token, op, bytes));
        Ok(())
    }

    fn complete(&mut self) -> Option<(usize, Result<(), DiskError>)> {
        let token = self.blk.peek_used()?;
        let Self { blk, slots, .. } = self;
        let (index, s) = slots.iter_mut().enumerate().find(|(_, s)| s.busy.is_some_and(|b| b.0 == token))?;
        let (_, op, bytes) = s.busy.take()?;
        let buffer = &mut s.buffer[..bytes];
        // SAFETY: the same request, buffer and response `submit` gave with this token.
        let result = unsafe {
            match op {
                Op::Read => blk.complete_read_blocks(token, s.req, buffer, s.resp),
                Op::Write => blk.complete_write_blocks(token, s.req, buffer, s.resp),
            }
        };
        Some((index, result.map_err(|_| DiskError::Device)))
    }

    fn wait(&mut self) {
        if self.blk.peek_used().is_some() {
            return;
        }
        let _ = self.events.wait_until(|| INTERRUPTED.swap(false, Ordering::AcqRel));
        // The device lowers its line when its ISR is read; then the hypervisor may unmask.
        let _ = self.blk.ack_interrupt();
        if self.needs_eoi {
            let _ = platform::eoi();
        }
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        // virtio-drivers' flush waits for the first used entry and takes it as its own:
        // nothing else may be in flight.
        if self.slots.iter().any(|s| s.busy.is_some()) {
            return Err(DiskError::Busy);
        }
        self.blk.flush().map_err(|_| DiskError::Device)
    }

    fn buffer_frame(&self, slot: usize, page: usize) -> Option<u64> {
        let s = self.slots.get(slot)?;
        (page < CHUNK / 4096).then_some(s.mfn + page as u64)
    }

    fn poll(&mut self) -> bool {
        if !INTERRUPTED.swap(false, Ordering::AcqRel) {
            return false;
        }
        let _ = self.blk.ack_interrupt();
        if self.needs_eoi {
            let _ = platform::eoi();
        }
        true
    }
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
    let transport = PciTransport::new::<DomainHal, _>(&mut root, df).map_err(|_| "virtio PCI transport")?;
    let blk = VirtIOBlk::<DomainHal, _>::new(transport).map_err(|_| "virtio-blk start")?;
    let slot = || -> Option<Slot> {
        let (ma, va) = platform::alloc_pages(CHUNK / 4096)?;
        // SAFETY: fresh pool pages, handed out once, for the run.
        let buffer = unsafe { core::slice::from_raw_parts_mut(va.as_ptr(), CHUNK) };
        let (req, resp) = pool_pair()?;
        Some(Slot { buffer, mfn: ma / 4096, req, resp, busy: None })
    };
    let mut slots = arrayvec::ArrayVec::<Slot, SLOTS>::new();
    for _ in 0..SLOTS {
        slots.push(slot().ok_or("DMA pool")?);
    }
    let slots = slots.into_inner().map_err(|_| "DMA pool")?;
    let (port, needs_eoi) = platform::bind_interrupt(u32::from(line)).map_err(|_| "binding the interrupt")?;
    events.set_handler(port, on_interrupt).map_err(|_| "event handler")?;
    events.enable();
    println!("virtio: {} sectors{}, line {line} as port {}, needs_eoi {needs_eoi}", blk.capacity(), if blk.readonly() { " (read-only)" } else { "" }, port.0);
    Ok(VirtioDisk { blk, slots, events, needs_eoi, port })
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

/// Reads `sectors` sectors at `sector` into slot 0 and waits for them.
fn read_blocking(disk: &mut impl SectorDisk, sector: u64, sectors: usize) -> Result<(), DiskError> {
    disk.submit(0, Op::Read, sector, sectors)?;
    loop {
        if let Some((_, result)) = disk.complete() {
            return result;
        }
        disk.wait();
    }
}

fn check(disk: &mut impl SectorDisk, sector: u64, sectors: usize, want: fn(u64, usize) -> u8) -> Result<(), &'static str> {
    read_blocking(disk, sector, sectors).map_err(|_| "read")?;
    let buffer = disk.buffer(0);
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
    let clock = Clock::new().map_err(|_| "clock")?;
    let per_chunk = CHUNK / SECTOR_SIZE;
    // The pattern the test script wrote: the first 512 KiB, and the last chunk.
    for chunk in 0..8 {
        check(&mut disk, (chunk * per_chunk) as u64, per_chunk, pattern)?;
    }
    let last = disk.sectors() - per_chunk as u64;
    check(&mut disk, last, per_chunk, pattern)?;
    println!("virtio: pattern read ok");
    if disk.read_only() {
        return Err("the disk is read-only: nothing to write");
    }
    // Write a region, flush, read it back.
    for (i, byte) in disk.buffer(1)[..WRITE_SECTORS * SECTOR_SIZE].iter_mut().enumerate() {
        *byte = written(WRITE_AT + (i / SECTOR_SIZE) as u64, i % SECTOR_SIZE);
    }
    disk.submit(1, Op::Write, WRITE_AT, WRITE_SECTORS).map_err(|_| "write submit")?;
    loop {
        if let Some((_, result)) = disk.complete() {
            result.map_err(|_| "write")?;
            break;
        }
        disk.wait();
    }
    disk.flush().map_err(|_| "flush")?;
    check(&mut disk, WRITE_AT, WRITE_SECTORS, written)?;
    println!("virtio: write, flush and read back ok (sectors {WRITE_AT}-{})", WRITE_AT + WRITE_SECTORS as u64 - 1);
    let sectors = disk.sectors();
    let bench = bench(&mut disk, &clock, sectors)?;
    println!("virtio: bench seq64k {bench}");
    Ok(())
}

/// Medians of a sequential read benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Bench {
    pub bytes: u64,
    /// MB/s in hundredths.
    pub median: u64,
    pub min: u64,
    pub max: u64,
}

impl core::fmt::Display for Bench {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "bytes={} runs={BENCH_RUNS} median_mbps={}.{:02} min_mbps={}.{:02} max_mbps={}.{:02}",
            self.bytes,
            self.median / 100,
            self.median % 100,
            self.min / 100,
            self.min % 100,
            self.max / 100,
            self.max % 100
        )
    }
}

/// Sequential [`CHUNK`]-byte reads over the first `sectors` sectors, every slot in flight:
/// [`BENCH_RUNS`] passes, MB/s of each.
pub fn bench(disk: &mut impl SectorDisk, clock: &Clock, sectors: u64) -> Result<Bench, &'static str> {
    let per_chunk = CHUNK / SECTOR_SIZE;
    let chunks = sectors / per_chunk as u64;
    let mut rates = [0u64; BENCH_RUNS];
    for rate in rates.iter_mut() {
        let begin = clock.now_ns();
        let mut next = 0u64;
        let mut done = 0u64;
        while done < chunks {
            for slot in 0..disk.slots() {
                if next < chunks && disk.submit(slot, Op::Read, next * per_chunk as u64, per_chunk).is_ok() {
                    next += 1;
                }
            }
            match disk.complete() {
                Some((_, result)) => {
                    result.map_err(|_| "benchmark read")?;
                    done += 1;
                }
                None => disk.wait(),
            }
        }
        let ns = clock.now_ns().saturating_sub(begin).max(1);
        // Bytes per microsecond is MB/s; kept in hundredths.
        *rate = chunks * CHUNK as u64 * 100_000 / ns;
    }
    rates.sort_unstable();
    Ok(Bench { bytes: chunks * CHUNK as u64, median: rates[BENCH_RUNS / 2], min: rates[0], max: rates[BENCH_RUNS - 1] })
}

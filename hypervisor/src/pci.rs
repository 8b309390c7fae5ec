//! The machine's PCI devices, which domain 0 alone drives: the boot-time scan, the device
//! memory it may map, and its configuration-space accesses.
//!
//! [`init`] (boot CPU, before any domain) enumerates every bus through ports 0xCF8/0xCFC
//! (`arch::pciconf`), sizes the BARs, and keeps what the `pci` crate's policy needs: the
//! functions ([`pci::DeviceAccess`]) and the device-memory frames ([`pci::IoRanges`]: whole
//! memory BARs that overlap no range of the firmware's memory map, nothing below 1 MiB,
//! and none of the local APIC, the I/O APICs or the HPET). It hands the functions'
//! interrupt lines to the boot script's callback (`pv::pirq`: the layer above).
//!
//! Domain 0 reaches configuration space as Xen's PV domain 0 does, with `in`/`out` on
//! ports 0xCF8 (a dword: the address latch, kept per run for domain 0) and 0xCFC-0xCFF,
//! which trap and come here from `pv::emulate` ([`port_io`]) once its virtual IOPL allows
//! port I/O. Reads pass (or answer a latched BAR sizing probe); writes are judged by
//! `pci::policy` and carried out with the guest's size and offset, or dropped. Another
//! domain's accesses to those ports are not device accesses: they read all ones and write
//! nowhere, as every port does for it. String I/O on these ports is not a device access
//! either.
//!
//! [`Devices`] is the `pvmm::DeviceMemory` every page-table view uses: the frames of the
//! scan's BARs, which domain 0 (only) may map, uncached.
//!
//! What this must never do: let domain 0 move a BAR, program MSI, or write a bridge (see
//! `pci::policy`), or let any domain map RAM or a device the hypervisor uses through the
//! device-memory path.

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use log::{info, warn};
use mm::addr::Mfn;
use mm::frame::DomainId;
use pci::config::{ADDRESS_PORT, DATA_PORT};
use pci::{ConfigAddress, ConfigWrite, DeviceAccess, IoRanges};
use spin::{Mutex, Once};

use crate::arch::pciconf;
use crate::bootinfo::BootInfo;
use crate::platform::Machine;

/// The domain that drives the devices.
pub const DEVICE_DOMAIN: DomainId = DomainId(0);

static ACCESS: Once<Mutex<DeviceAccess>> = Once::new();
static IO: Once<IoRanges> = Once::new();
/// Domain 0's configuration address latch (port 0xCF8).
static DOM0_CF8: AtomicU32 = AtomicU32::new(0);
/// Domain 0's configuration writes dropped by the policy.
static DROPPED_WRITES: AtomicU64 = AtomicU64::new(0);

/// Fixed PC ranges kept from domain 0 whatever the firmware says: the first MiB (legacy
/// video, BIOS), the I/O APIC and HPET default pages, and the whole MiB of the local APIC
/// and MSI range (a CPU's access anywhere there reaches its own local APIC: QEMU repeats
/// the 4 KiB of registers over the MiB), not only its default page.
const ALWAYS_EXCLUDED: [Range<u64>; 4] = [0..0x10_0000, 0xfec0_0000..0xfec0_1000, 0xfed0_0000..0xfed0_1000, 0xfee0_0000..0xfef0_0000];

/// Scans the buses and records the devices (boot CPU, before any domain).
pub fn init(boot: &BootInfo, machine: &Machine, register_lines: impl FnOnce(&[pci::Function])) {
    let functions = pci::scan(&mut pciconf::Ports);
    for f in &functions {
        info!(
            "pci: {} {:04x}:{:04x} class {:06x}{} pin {} line {}",
            f.bdf,
            f.vendor,
            f.device,
            f.class,
            if f.is_bridge() { " (bridge)" } else { "" },
            f.interrupt_pin,
            f.interrupt_line
        );
        for bar in &f.bars {
            info!("pci: {}   bar {} {:?} at {:#x}, {:#x} bytes", f.bdf, bar.index, bar.kind, bar.base, bar.size);
        }
    }
    let mut exclude: Vec<Range<u64>> = boot.memory.iter().map(|r| r.start..r.end).collect();
    exclude.extend(ALWAYS_EXCLUDED);
    let page = |base: u64| (base & !0xfff)..(base & !0xfff) + 0x1000;
    exclude.push(page(machine.acpi.local_apic_address));
    exclude.extend(machine.acpi.io_apics.iter().map(|io| page(u64::from(io.address))));
    exclude.extend(machine.acpi.hpet.iter().map(|h| page(h.base_address)));
    let limit = 1u64 << physical_address_bits();
    let (ranges, left_out) = IoRanges::from_functions(&functions, &exclude, limit);
    for l in &left_out {
        warn!("pci: {} bar {} at {:#x} not mappable by domain 0: {:?}", l.bdf, l.bar.index, l.bar.base, l.why);
    }
    for r in ranges.ranges() {
        info!("pci: device memory for domain 0: frames {:#x}-{:#x}", r.start, r.end - 1);
    }
    register_lines(&functions);
    IO.call_once(|| ranges);
    ACCESS.call_once(|| Mutex::new(DeviceAccess::new(functions)));
}

/// The physical address width (CPUID 0x80000008), 36 bits without that leaf.
fn physical_address_bits() -> u32 {
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff
    } else {
        36
    }
}

/// Device memory for every page-table view (see the module documentation).
pub struct Devices;

impl pvmm::DeviceMemory for Devices {
    fn is_device(&self, mfn: Mfn) -> bool {
        IO.get().is_some_and(|io| io.contains(mfn.0))
    }

    fn may_map(&self, _mfn: Mfn, dom: DomainId) -> bool {
        dom == DEVICE_DOMAIN
    }
}

/// Domain 0's non-string `in`/`out` of `size` bytes on `port`: `Some(value read)` for a
/// read (`value` ignored), `Some(0)` for a write carried out or dropped; `None` when the
/// port is not a configuration port or the caller (domain `dom`, `privileged` or not) not
/// domain 0 (the caller gives the ordinary answer: all ones, writes ignored).
pub fn port_io(dom: DomainId, privileged: bool, port: u16, size: u8, write: Option<u32>) -> Option<u32> {
    if dom != DEVICE_DOMAIN || !privileged {
        return None;
    }
    let access = ACCESS.get()?;
    if port == ADDRESS_PORT && size == 4 {
        return Some(match write {
            Some(value) => {
                DOM0_CF8.store(value, Ordering::Relaxed);
                0
            }
            None => DOM0_CF8.load(Ordering::Relaxed),
        });
    }
    if !(DATA_PORT..DATA_PORT + 4).contains(&port) {
        return None;
    }
    let all_ones = u32::MAX >> (32 - 8 * u32::from(size.min(4)));
    let Some((bdf, register)) = ConfigAddress(DOM0_CF8.load(Ordering::Relaxed)).decode() else {
        return Some(if write.is_some() { 0 } else { all_ones });
    };
    let offset = register + (port - DATA_PORT) as u8;
    if (offset & 3) + size > 4 {
        return Some(if write.is_some() { 0 } else { all_ones });
    }
    let mut access = access.lock();
    match write {
        None => Some(access.read_override(bdf, offset, size).unwrap_or_else(|| pciconf::read(bdf, offset, size))),
        Some(value) => {
            match access.check_write(bdf, offset, size, value) {
                ConfigWrite::Pass => pciconf::write(bdf, offset, size, value),
                ConfigWrite::Latched => {}
                ConfigWrite::Dropped(why) => {
                    if DROPPED_WRITES.fetch_add(1, Ordering::Relaxed) < 16 {
                        warn!("pci: domain 0's write of {value:#x} ({size} bytes) at {bdf} {offset:#x} dropped: {why:?}");
                    }
                }
            }
            Some(0)
        }
    }
}

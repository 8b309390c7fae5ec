//! PCI configuration space through ports 0xCF8/0xCFC (configuration mechanism #1): one
//! access of 1, 2 or 4 bytes at any offset within a dword, the address latch and the data
//! access under one lock so that CPUs never interleave them.
//!
//! Used by `crate::pci` (the boot scan, and domain 0's filtered accesses); the offsets are
//! the caller's to check (`pci::policy`). Must never be reached by a guest unfiltered.

use pci::config::{ADDRESS_PORT, DATA_PORT};
use pci::{Bdf, ConfigAddress, ConfigSpace};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// Serialises the address/data pair.
static LOCK: Mutex<()> = Mutex::new(());

/// Reads `size` (1, 2 or 4) bytes at `offset` of `bdf` (the access must not cross its
/// dword; a larger size is read as 4).
pub fn read(bdf: Bdf, offset: u8, size: u8) -> u32 {
    let _held = LOCK.lock();
    let data = DATA_PORT + u16::from(offset & 3);
    // SAFETY: 0xCF8/0xCFC-0xCFF are the host bridge's configuration ports, owned by the
    // hypervisor; the lock keeps the address and data accesses together. A configuration
    // read has no effect on memory the hypervisor uses.
    unsafe {
        Port::<u32>::new(ADDRESS_PORT).write(ConfigAddress::new(bdf, offset).0);
        match size {
            1 => u32::from(Port::<u8>::new(data).read()),
            2 => u32::from(Port::<u16>::new(data).read()),
            _ => Port::<u32>::new(DATA_PORT).read(),
        }
    }
}

/// Writes `size` (1, 2 or 4) bytes of `value` at `offset` of `bdf` (see [`read`]).
pub fn write(bdf: Bdf, offset: u8, size: u8, value: u32) {
    let _held = LOCK.lock();
    let data = DATA_PORT + u16::from(offset & 3);
    // SAFETY: as in `read`; what is written is the caller's policy (`pci::policy`), which
    // never lets a guest move a BAR, program MSI or touch a bridge.
    unsafe {
        Port::<u32>::new(ADDRESS_PORT).write(ConfigAddress::new(bdf, offset).0);
        match size {
            1 => Port::<u8>::new(data).write(value as u8),
            2 => Port::<u16>::new(data).write(value as u16),
            _ => Port::<u32>::new(DATA_PORT).write(value),
        }
    }
}

/// Configuration space as the `pci` crate's enumeration sees it.
pub struct Ports;

impl ConfigSpace for Ports {
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
        read(bdf, offset & 0xfc, 4)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        write(bdf, offset & 0xfc, 4, value)
    }
}

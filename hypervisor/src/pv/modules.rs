//! Boot modules: the guest images the loader handed over, where they lie in machine memory,
//! what their lines ask for, and how their bytes are read.
//!
//! The boot script calls [`check`] right after decoding the boot information (before the
//! frame allocator exists: a refused module is not reserved) and [`register`] once the
//! heap is up. A module that cannot be used (empty, outside usable RAM, overlapping the
//! hypervisor, the loader's data or another module: `hypervisor::bootmodule`) is refused
//! with a line naming it and is never read; the others stay reserved for the whole run,
//! since domain 0 may build domains from them at any time. Images are never mapped whole:
//! a [`ModuleImage`] is the builder's `ImageSource`, reading through this CPU's temporary
//! mapping slots a page at a time, so a module may be of any size. This module must never
//! write a module, nor read one that was refused.

use alloc::vec::Vec;

use builder::{ImageSource, ReadError};
use hypervisor::bootmodule::{self, Occupied, Problem};
use hypervisor::cmdline::Options;
use hypervisor::domspec::DomainSpec;
use log::warn;
use mm::memmap::PhysRange;
use spin::Once;

use crate::arch::paging;
use crate::bootinfo::BootInfo;
use crate::memory;

/// A boot module's bytes in machine memory (reserved at boot, never written).
#[derive(Clone, Copy, Debug)]
pub struct ModuleImage {
    start: u64,
    len: u64,
}

impl ImageSource for ModuleImage {
    fn size(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let error = ReadError { offset, len: buf.len() as u64 };
        let end = offset.checked_add(buf.len() as u64).ok_or(error)?;
        if end > self.len {
            return Err(error);
        }
        // Fails only when every temporary-mapping slot of this CPU is taken.
        memory::read_machine(self.start + offset, buf).then_some(()).ok_or(error)
    }
}

/// A boot module: its image (`None`: refused at boot, with why) and what its line asks.
pub struct BootModule {
    pub image: Result<ModuleImage, Problem>,
    pub spec: DomainSpec,
}

static MODULES: Once<Vec<BootModule>> = Once::new();

/// The line a module's domains are built by: its own, or the hypervisor's after `--`.
fn line<'a>(module: &'a crate::bootinfo::Module, options: &'a Options) -> &'a str {
    if module.cmdline.trim().is_empty() { &options.module_line } else { &module.cmdline }
}

/// The module's name for messages and its domains (`name=`, or `guestN`).
fn spec_of(module: &crate::bootinfo::Module, index: usize, options: &Options) -> DomainSpec {
    let mut spec = DomainSpec::parse(line(module, options), default_name(index), options.guests);
    spec.vcpus = Some(spec.vcpus.unwrap_or(options.vcpus));
    spec
}

/// Checks where each module lies; marks (and reports) those that cannot be used, so that
/// the frame allocator does not keep their memory and nothing reads them.
pub fn check(boot: &mut BootInfo, options: &Options) {
    let image = PhysRange { start: paging::image_phys(paging::WINDOW_BASE), end: paging::image_phys(memory::image_end_va()) };
    let occupied = Occupied { image, loader: &boot.loader_ranges };
    let mut placed = arrayvec::ArrayVec::<Option<PhysRange>, { crate::bootinfo::MAX_MODULES }>::new();
    let mut refused = arrayvec::ArrayVec::<Option<Problem>, { crate::bootinfo::MAX_MODULES }>::new();
    for (i, module) in boot.modules.iter().enumerate() {
        let result = bootmodule::check_placement(module.start, module.end, &boot.memory, &occupied, &placed);
        if let Err(problem) = result {
            let spec = spec_of(module, i, options);
            warn!(
                "modules: module {i} ({}, {:#x}..{:#x}) refused: {problem}; no domain will be built from it",
                spec.name, module.start, module.end
            );
        }
        placed.push(result.ok());
        refused.push(result.err());
    }
    for (module, problem) in boot.modules.iter_mut().zip(refused) {
        module.refused = problem;
    }
}

/// Records every boot module (refused ones too, so that domain 0's module numbers stay the
/// loader's) with what its line asks for. A module whose line does not say how many vCPUs
/// its domains may have gets the hypervisor's `vcpus=`.
pub fn register(boot: &BootInfo, options: &Options) {
    let mut modules = Vec::with_capacity(boot.modules.len());
    for (i, module) in boot.modules.iter().enumerate() {
        let spec = spec_of(module, i, options);
        for word in &spec.invalid {
            warn!("modules: module {i} ({}): bad option {:?} ignored", spec.name, word.as_str());
        }
        let image = match module.refused {
            None => Ok(ModuleImage { start: module.start, len: module.end - module.start }),
            Some(problem) => Err(problem),
        };
        modules.push(BootModule { image, spec });
    }
    MODULES.call_once(|| modules);
}

fn default_name(index: usize) -> &'static str {
    const NAMES: [&str; 8] = ["guest0", "guest1", "guest2", "guest3", "guest4", "guest5", "guest6", "guest7"];
    NAMES.get(index).copied().unwrap_or("guest")
}

/// The boot modules, in the loader's order.
pub fn modules() -> &'static [BootModule] {
    MODULES.get().map_or(&[], |m| m.as_slice())
}

//! The hypervisor image: boot script and glue between the hardware layer and the logic crates.
#![no_std]
#![no_main]

mod arch;
mod interrupts;
mod logger;
mod percpu;
mod time;
mod traps;

use log::info;

use arch::paging::{self, MapKind};

unsafe extern "C" {
    static __text_start: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __image_end: u8;
    static boot_stack_top: u8;
}

/// Entered from the boot stub in long mode, on the boot stack, in the window.
#[unsafe(no_mangle)]
pub extern "C" fn boot_main(magic: u32, info_phys: u32, entry_tsc: u64) -> ! {
    time::set_boot_tsc(entry_tsc);
    arch::serial::init();
    init_window();
    percpu::init_boot_cpu_early(&raw const boot_stack_top as u64);
    arch::trap::init();
    arch::trap::load();
    logger::init(false);
    info!("hypervisor: entered via {} (info at {info_phys:#x})", if magic == arch::boot::PVH_MAGIC { "PVH" } else { "multiboot2" });
    x86_64::instructions::interrupts::int3();
    arch::exit::exit(arch::exit::Outcome::Success)
}

/// Moves onto the window page tables with the image mapped by section permissions.
fn init_window() {
    let addr = |sym: *const u8| sym as u64;
    let (text, rodata, data, end) = (
        addr(&raw const __text_start),
        addr(&raw const __rodata_start),
        addr(&raw const __data_start),
        addr(&raw const __image_end),
    );
    let sections = [(text, rodata, MapKind::Text), (rodata, data, MapKind::ReadOnly), (data, end, MapKind::Data)];
    // SAFETY: the boot stub's tables are still live (identity mapped) while we read slot 0.
    let identity = unsafe { core::ptr::read_volatile(&raw const arch::boot::boot_pml4[0]) };
    let nx = x86_64::registers::model_specific::Efer::read().contains(x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE);
    paging::init(&sections, nx, identity);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    logger::force_unlock();
    logger::emergency(format_args!("PANIC on cpu {}: {info}", percpu::current_index_or_boot()));
    arch::exit::exit(arch::exit::Outcome::Failure)
}

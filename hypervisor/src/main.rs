//! The hypervisor image: boot script and glue between the hardware layer and the logic crates.
#![no_std]
#![no_main]

mod arch;

use core::fmt::Write;

/// Entered from the boot stub in long mode, on the boot stack, in the window.
#[unsafe(no_mangle)]
pub extern "C" fn boot_main(magic: u32, info_phys: u32, entry_tsc: u64) -> ! {
    arch::serial::init();
    let _ = writeln!(arch::serial::Console, "hypervisor: hello magic={magic:#x} info={info_phys:#x} tsc={entry_tsc}");
    arch::exit::exit(arch::exit::Outcome::Success)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(arch::serial::Console, "PANIC: {info}");
    arch::exit::exit(arch::exit::Outcome::Failure)
}

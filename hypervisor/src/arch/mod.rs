//! The thin hardware layer: the only place with assembly, port I/O, MSRs, control registers
//! and page-table entries.
pub mod boot;
pub mod cpu;
pub mod debugreg;
pub mod entry;
pub mod exit;
pub mod fpu;
pub mod fwmap;
pub mod gdt;
pub mod gs;
pub mod lapic;
pub mod ldt;
pub mod owned;
pub mod paging;
pub mod pciconf;
pub mod percpu;
pub mod serial;
pub mod tempmap;
pub mod trap;
pub mod uaccess;
pub mod vectors;
pub mod view;

//! The marker traits for typed views of mapped memory (`tempmap`'s frame views, `paging`'s
//! regions mapped for good, `fwmap`'s firmware pages): which types may be read from memory
//! whatever it holds, and which may be shared with other writers of the same memory.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8};

/// Types that may be viewed in place in mapped memory through a shared reference, while
/// other mappings of the same memory (the guest's, another CPU's) may read and write it.
///
/// # Safety
/// Every bit pattern of the type's size is a valid value, and every access through a
/// `&Self` is atomic: the atomic integers, and nothing else.
pub unsafe trait Shared: Sized {}

// SAFETY: atomic integers are valid for any bits and are only accessed atomically.
unsafe impl Shared for AtomicU8 {}
// SAFETY: as for `AtomicU8`.
unsafe impl Shared for AtomicU16 {}
// SAFETY: as for `AtomicU8`.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as for `AtomicU8`.
unsafe impl Shared for AtomicU64 {}

/// Plain data: types that may be read from, or viewed in place in, mapped memory whatever
/// it holds.
///
/// # Safety
/// Every bit pattern of the type's size is a valid value: integers and atomic integers,
/// and arrays and `#[repr(C)]` structs of them (no `bool`, `char`, enum, reference or
/// pointer).
pub unsafe trait AnyBitPattern {}

// SAFETY: integers are valid for any bits.
unsafe impl AnyBitPattern for u8 {}
// SAFETY: as for `u8`.
unsafe impl AnyBitPattern for u16 {}
// SAFETY: as for `u8`.
unsafe impl AnyBitPattern for u32 {}
// SAFETY: as for `u8`.
unsafe impl AnyBitPattern for u64 {}
// SAFETY: an array of values valid for any bits is valid for any bits.
unsafe impl<T: AnyBitPattern, const N: usize> AnyBitPattern for [T; N] {}
// SAFETY: `#[repr(C)]`, integers and arrays of integers only (the `abi` crate asserts its
// layout: 64 bytes, no field beyond them).
unsafe impl AnyBitPattern for abi::shared_info::VcpuInfo {}
// SAFETY: as for `VcpuInfo`: `#[repr(C)]`, `VcpuInfo`s, integers and arrays of integers.
unsafe impl AnyBitPattern for abi::shared_info::SharedInfo {}

// SAFETY: `#[repr(C)]`, integers only (the AP trampoline's parameters, `smp` checks its
// layout against the assembly's).
unsafe impl AnyBitPattern for smp::trampoline::Params {}

// SAFETY: `#[repr(C)]`, four `AtomicU32`s: any bits are a valid value (`FrameTable::new`
// resets them, and takes storage that "may hold any bytes").
unsafe impl AnyBitPattern for mm::frame::FrameInfo {}

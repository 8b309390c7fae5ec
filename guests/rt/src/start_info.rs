//! The start-of-day page: checked once at entry, then kept for the guest's lifetime, with
//! accessors for the fields guests use (page count, command line, boot page tables) and
//! the P2M list (guest frame to machine frame) it points to.
//!
//! `guest_rt_start` calls [`adopt`] with the pointer the builder left in rsi; everything
//! else reads through [`start_info`]. The checks here are what the runtime relies on when
//! it turns builder-given addresses into references: the page and the P2M must lie in the
//! initial mapping (`VIRT_BASE + pfn * 4096`, at most `nr_pages` pages). This module must
//! never write to the page.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use abi::ids::{Mfn, Pfn, PAGE_SIZE};
pub use abi::start_info::StartInfo;

use crate::layout::{self, VIRT_BASE};

/// Why the runtime refused the builder's start-of-day information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// rsi does not point into the initial mapping with 8-byte alignment.
    BadPointer { address: u64 },
    /// The page does not start with "xen-3.0-x86_64".
    BadMagic,
    /// `mfn_list` is not 8-byte aligned.
    MisalignedP2m { address: u64 },
    /// The P2M list (`nr_pages` entries at `mfn_list`) leaves the initial mapping.
    P2mOutsideMapping { address: u64, nr_pages: u64 },
}

/// The page, once adopted.
static START_INFO: AtomicPtr<StartInfo> = AtomicPtr::new(ptr::null_mut());

/// Checks the address the builder passed in rsi: 8-byte aligned, in the initial mapping.
pub const fn check_pointer(address: u64) -> Result<(), StartInfoError> {
    let in_mapping =
        address >= VIRT_BASE && address.checked_add(size_of::<StartInfo>() as u64).is_some();
    if !in_mapping || !address.is_multiple_of(8) {
        return Err(StartInfoError::BadPointer { address });
    }
    Ok(())
}

/// Checks the page's contents: the magic, and that the P2M list lies within the first
/// `nr_pages` pages of the initial mapping.
pub fn check(info: &StartInfo) -> Result<(), StartInfoError> {
    if !info.has_valid_magic() {
        return Err(StartInfoError::BadMagic);
    }
    let (address, nr_pages) = (info.mfn_list, info.nr_pages);
    if !address.is_multiple_of(8) {
        return Err(StartInfoError::MisalignedP2m { address });
    }
    let outside = StartInfoError::P2mOutsideMapping { address, nr_pages };
    let mapping_end = nr_pages
        .checked_mul(PAGE_SIZE)
        .and_then(|len| VIRT_BASE.checked_add(len))
        .ok_or(outside)?;
    let list_end = nr_pages
        .checked_mul(size_of::<Mfn>() as u64)
        .and_then(|len| address.checked_add(len))
        .ok_or(outside)?;
    if address < VIRT_BASE || list_end > mapping_end {
        return Err(outside);
    }
    Ok(())
}

/// Checks and keeps the start-of-day page at `address` (rsi at entry).
///
/// # Safety
/// If `address` passes [`check_pointer`], the builder must have mapped a `StartInfo`
/// there (and, if its contents pass [`check`], the P2M list it names), readable for the
/// guest's lifetime and never written again.
pub unsafe fn adopt(address: u64) -> Result<&'static StartInfo, StartInfoError> {
    check_pointer(address)?;
    // SAFETY: the address is aligned and in the initial mapping, where the builder put the
    // page (the caller's contract); nothing writes it from now on.
    let info = unsafe { &*(address as *const StartInfo) };
    check(info)?;
    START_INFO.store(address as *mut StartInfo, Ordering::Release);
    Ok(info)
}

/// The start-of-day page. Panics if called before the runtime adopted it, which cannot
/// happen from code reached through `guest_main`.
pub fn start_info() -> &'static StartInfo {
    let info = START_INFO.load(Ordering::Acquire);
    assert!(
        !info.is_null(),
        "start_info() called before the runtime started"
    );
    // SAFETY: only `adopt` stores the pointer, after checking it; the page stays mapped
    // and unwritten for the guest's lifetime.
    unsafe { &*info }
}

/// Pages allocated to the domain.
pub fn nr_pages() -> u64 {
    start_info().nr_pages
}

/// The virtual address of the top-level boot page table.
pub fn pt_base() -> u64 {
    start_info().pt_base
}

/// The command line the domain was started with, up to its NUL.
pub fn cmd_line() -> &'static [u8] {
    start_info().cmd_line()
}

/// The P2M list: entry n is the machine frame backing guest frame n.
pub fn mfn_list() -> &'static [Mfn] {
    let info = start_info();
    // SAFETY: `adopt` checked that `nr_pages` 8-byte entries at the aligned `mfn_list` lie
    // in the initial mapping, where the builder wrote the list; `Mfn` is a transparent
    // `u64`, so any contents are valid. The runtime never writes the list.
    unsafe { core::slice::from_raw_parts(info.mfn_list as *const Mfn, info.nr_pages as usize) }
}

/// The machine frame backing guest frame `pfn`, if the domain has that frame.
pub fn pfn_to_mfn(pfn: Pfn) -> Option<Mfn> {
    mfn_list().get(usize::try_from(pfn.0).ok()?).copied()
}

/// The machine frame backing virtual address `virt` under the initial mapping.
pub fn virt_to_mfn(virt: u64) -> Option<Mfn> {
    pfn_to_mfn(layout::virt_to_pfn(virt)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_with_p2m(mfn_list: u64, nr_pages: u64) -> StartInfo {
        StartInfo {
            mfn_list,
            nr_pages,
            ..StartInfo::new()
        }
    }

    #[test]
    fn a_builder_shaped_page_passes() {
        // 1024 pages; P2M (8 KiB) right after a 64 KiB image.
        let info = info_with_p2m(VIRT_BASE + 0x10000, 1024);
        assert_eq!(check(&info), Ok(()));
        assert_eq!(check_pointer(VIRT_BASE + 0x12000), Ok(()));
    }

    #[test]
    fn pointers_outside_the_mapping_or_misaligned_are_refused() {
        for address in [0, 0x1000, VIRT_BASE - 8, VIRT_BASE + 4, u64::MAX - 7] {
            assert_eq!(
                check_pointer(address),
                Err(StartInfoError::BadPointer { address }),
                "{address:#x}"
            );
        }
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut info = info_with_p2m(VIRT_BASE, 1);
        info.magic[7] = b'9';
        assert_eq!(check(&info), Err(StartInfoError::BadMagic));
        let blank = StartInfo {
            mfn_list: VIRT_BASE,
            nr_pages: 1,
            ..StartInfo::default()
        };
        assert_eq!(check(&blank), Err(StartInfoError::BadMagic));
    }

    #[test]
    fn misaligned_p2m_is_refused() {
        let info = info_with_p2m(VIRT_BASE + 0x10004, 1024);
        assert_eq!(
            check(&info),
            Err(StartInfoError::MisalignedP2m {
                address: VIRT_BASE + 0x10004
            })
        );
    }

    #[test]
    fn p2m_must_fit_in_the_initial_mapping() {
        let outside = |address, nr_pages| {
            check(&info_with_p2m(address, nr_pages))
                == Err(StartInfoError::P2mOutsideMapping { address, nr_pages })
        };
        assert!(outside(0x10000, 1024), "below VIRT_BASE");
        // 2 pages map 8 KiB; a 16-byte list at the last 8 bytes overruns.
        assert!(outside(VIRT_BASE + 0x1ff8, 2));
        assert!(
            !outside(VIRT_BASE + 0x1ff0, 2),
            "exactly at the end is fine"
        );
        assert!(outside(VIRT_BASE, u64::MAX), "page count overflows");
        assert!(
            outside(VIRT_BASE, 1 << 52),
            "mapping overflows the address space"
        );
        assert!(outside(u64::MAX - 7, 1 << 18), "list end overflows");
    }

    #[test]
    fn empty_p2m_is_not_an_error() {
        assert_eq!(check(&info_with_p2m(VIRT_BASE, 0)), Ok(()));
    }
}

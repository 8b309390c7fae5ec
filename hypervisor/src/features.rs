//! Which Xen features (`XENFEAT_*`) a PV64 domain gets: what `XENVER_get_features`
//! reports, and what a kernel image may require in its `FEATURES` note and still be built.
//! The one place that decides both; `pv::hypercall` answers with [`reported`] and
//! `pv::build` checks images against [`HONOURED`].
//!
//! Reported (each bit must work, or a guest that believes it breaks):
//! - `mmu_pt_update_preserve_ad`: `mmu_update`'s `MMU_PT_UPDATE_PRESERVE_AD` (Linux panics
//!   without it).
//! - `gnttab_map_avail_bits`: grant maps carry `GNTMAP_guest_avail` bits into the PTE.
//!
//! Not reported, as Xen reports none of them to a PV64 domain: `writable_page_tables`
//! (Xen sets it for translated guests only; it tells a guest that its tables need not be
//! mapped read-only, and a PV Linux that saw it would write-map its tables and fail to pin
//! them. PV guests get the emulation of their writes instead, with
//! `VMASST_TYPE_writable_pagetables`), `auto_translated_physmap`, `supervisor_mode_kernel`.
//! Not reported yet, although Xen reports them to PV domains: `highmem_assist`
//! (`MMUEXT_CLEAR_PAGE`/`COPY_PAGE` are not implemented) and `dom0` (no domain runs as a
//! hardware domain).
//!
//! Honoured requirements: an image may require (`!name`) a reported feature,
//! `writable_page_tables` (the emulation exists) and `pae_pgdir_above_4gb` (meaningless
//! for 64-bit guests, whose L4 may live anywhere). Xen's PV loader (libxenguest) accepts
//! any requirement the image itself lists as supported, which a `!` does; this builder
//! refuses one it cannot meet (auto-translation, a ring-0 kernel, writable descriptor
//! tables, HVM-only features), naming it, rather than start a guest that cannot work.

use abi::features::{FeatureSet, XenFeature};

/// What `XENVER_get_features` reports in submap 0.
pub const REPORTED: FeatureSet = FeatureSet::EMPTY.with(XenFeature::MmuPtUpdatePreserveAd).with(XenFeature::GnttabMapAvailBits);

/// What an image's `FEATURES` note may require.
pub const HONOURED: FeatureSet =
    REPORTED.with(XenFeature::WritablePageTables).with(XenFeature::PaePgdirAbove4gb);

/// The feature bits of submap `index` (only submap 0 has any).
pub const fn reported(index: u32) -> u32 {
    if index == 0 {
        REPORTED.0
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::features::GuestFeatures;

    #[test]
    fn reports_only_what_works_and_never_what_breaks_pv_linux() {
        assert_eq!(reported(0), 1 << 5 | 1 << 7, "mmu_pt_update_preserve_ad and gnttab_map_avail_bits only");
        assert_eq!(reported(1), 0);
        for never in [XenFeature::WritablePageTables, XenFeature::AutoTranslatedPhysmap, XenFeature::Dom0] {
            assert!(!REPORTED.contains(never), "{never:?}");
        }
    }

    #[test]
    fn xtf_and_linux_notes_are_honoured() {
        for note in [&b"!writable_page_tables|pae_pgdir_above_4gb"[..], b"!writable_page_tables", b"writable_descriptor_tables"] {
            let features = GuestFeatures::parse(note).unwrap();
            assert!(features.unmet(HONOURED).is_empty(), "{}", String::from_utf8_lossy(note));
        }
    }

    #[test]
    fn requirements_a_pv64_domain_cannot_meet_are_not() {
        for note in [&b"!auto_translated_physmap"[..], b"!supervisor_mode_kernel", b"!writable_descriptor_tables", b"!hvm_callback_vector", b"!dom0"] {
            let features = GuestFeatures::parse(note).unwrap();
            assert!(!features.unmet(HONOURED).is_empty(), "{}", String::from_utf8_lossy(note));
        }
    }
}

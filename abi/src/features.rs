//! Xen feature bits (features.h) and the parser of the guest's `FEATURES` ELF note.
//!
//! The hypervisor's domain builder parses a kernel's `FEATURES` string (and ORs in its
//! numeric `SUPPORTED_FEATURES` note) to learn what the guest supports and requires, and
//! answers `XENVER_get_features` with a [`FeatureSet`]; our guests read that set. Parsing
//! follows Xen's libelf: names separated by `|`, a leading `!` marks a required feature,
//! empty items are skipped, an unknown optional name is ignored and an unknown required
//! one is an error. This module must never decide which features the hypervisor offers.

use crate::macros::abi_enum;

abi_enum! {
    /// A feature bit number (`XENFEAT_*`, features.h). Bit 12 (`grant_map_identity`) is
    /// deprecated and not listed.
    pub enum XenFeature: u8 {
        /// The guest may update its page tables by direct writes.
        WritablePageTables = 0,
        /// The guest may update its descriptor tables by direct writes.
        WritableDescriptorTables = 1,
        /// The hypervisor translates pseudo-physical to machine addresses.
        AutoTranslatedPhysmap = 2,
        /// The guest kernel runs in ring 0.
        SupervisorModeKernel = 3,
        /// PAE page directories may live above 4 GiB.
        PaePgdirAbove4gb = 4,
        /// `MMU_PT_UPDATE_PRESERVE_AD` is available.
        MmuPtUpdatePreserveAd = 5,
        /// `MMUEXT_{CLEAR,COPY}_PAGE` are available.
        HighmemAssist = 6,
        /// Grant mappings honour the guest-available PTE bits.
        GnttabMapAvailBits = 7,
        /// The HVM callback vector is available.
        HvmCallbackVector = 8,
        /// pvclock is safe on HVM.
        HvmSafePvclock = 9,
        /// PIRQs are usable by HVM guests.
        HvmPirqs = 10,
        /// The guest can run as dom0.
        Dom0 = 11,
        /// `XENMEMF_vnode` is supported.
        MemoryOpVnodeSupported = 13,
        /// Arm SMCCC is supported.
        ArmSmcccSupported = 14,
        /// PVH: the ACPI RSDP may sit anywhere.
        LinuxRsdpUnrestricted = 15,
        /// The domain is not direct-mapped.
        NotDirectMapped = 16,
        /// The domain is direct-mapped (gfn == mfn).
        DirectMapped = 17,
        /// `VCPUOP_register_runstate_phys_area` is available.
        RunstatePhysArea = 18,
        /// `VCPUOP_register_vcpu_time_phys_area` is available.
        VcpuTimePhysArea = 19,
        /// All MSI-X vector-control writes reach the device model.
        DmMsixAllWrites = 20,
    }
}

impl XenFeature {
    /// The name used in the `FEATURES` note: the header's name without `XENFEAT_`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::WritablePageTables => "writable_page_tables",
            Self::WritableDescriptorTables => "writable_descriptor_tables",
            Self::AutoTranslatedPhysmap => "auto_translated_physmap",
            Self::SupervisorModeKernel => "supervisor_mode_kernel",
            Self::PaePgdirAbove4gb => "pae_pgdir_above_4gb",
            Self::MmuPtUpdatePreserveAd => "mmu_pt_update_preserve_ad",
            Self::HighmemAssist => "highmem_assist",
            Self::GnttabMapAvailBits => "gnttab_map_avail_bits",
            Self::HvmCallbackVector => "hvm_callback_vector",
            Self::HvmSafePvclock => "hvm_safe_pvclock",
            Self::HvmPirqs => "hvm_pirqs",
            Self::Dom0 => "dom0",
            Self::MemoryOpVnodeSupported => "memory_op_vnode_supported",
            Self::ArmSmcccSupported => "ARM_SMCCC_supported",
            Self::LinuxRsdpUnrestricted => "linux_rsdp_unrestricted",
            Self::NotDirectMapped => "not_direct_mapped",
            Self::DirectMapped => "direct_mapped",
            Self::RunstatePhysArea => "runstate_phys_area",
            Self::VcpuTimePhysArea => "vcpu_time_phys_area",
            Self::DmMsixAllWrites => "dm_msix_all_writes",
        }
    }

    /// The feature with this exact (case-sensitive) name.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|feature| feature.name().as_bytes() == name)
    }
}

/// A set of features: bit n stands for `XENFEAT` n (submap 0, the only one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FeatureSet(pub u32);

impl FeatureSet {
    /// No features.
    pub const EMPTY: Self = Self(0);

    /// The set holding exactly `features`.
    pub fn of(features: &[XenFeature]) -> Self {
        features
            .iter()
            .fold(Self::EMPTY, |set, &feature| set.with(feature))
    }

    /// This set plus `feature`.
    pub const fn with(self, feature: XenFeature) -> Self {
        Self(self.0 | 1 << feature.raw())
    }

    /// Whether `feature` is in the set.
    pub const fn contains(self, feature: XenFeature) -> bool {
        self.0 & 1 << feature.raw() != 0
    }

    /// Every feature in either set.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The features of this set missing from `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The listed features in the set, in bit order (unlisted bits are skipped).
    pub fn iter(self) -> impl Iterator<Item = XenFeature> {
        XenFeature::ALL
            .iter()
            .copied()
            .filter(move |&feature| self.contains(feature))
    }
}

/// What a guest kernel declares in its ELF notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestFeatures {
    /// Features the guest can use (the required ones included).
    pub supported: FeatureSet,
    /// Features the guest cannot run without.
    pub required: FeatureSet,
}

/// A `FEATURES` note the domain builder must refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureParseError {
    /// A `!`-marked (required) item names no known feature; `offset` and `len` locate the
    /// item (with its `!`) in the note.
    UnknownRequired { offset: usize, len: usize },
}

impl GuestFeatures {
    /// Parses a `FEATURES` note's string (its desc bytes; parsing stops at the first NUL).
    pub fn parse(note: &[u8]) -> Result<Self, FeatureParseError> {
        let text = note.split(|&b| b == 0).next().unwrap_or_default();
        let mut features = Self::default();
        let mut offset = 0;
        for item in text.split(|&b| b == b'|') {
            features.add_item(item, offset)?;
            offset += item.len() + 1;
        }
        Ok(features)
    }

    fn add_item(&mut self, item: &[u8], offset: usize) -> Result<(), FeatureParseError> {
        match item.split_first() {
            None => Ok(()),
            Some((b'!', name)) => {
                let feature =
                    XenFeature::from_name(name).ok_or(FeatureParseError::UnknownRequired {
                        offset,
                        len: item.len(),
                    })?;
                self.supported = self.supported.with(feature);
                self.required = self.required.with(feature);
                Ok(())
            }
            Some(_) => {
                if let Some(feature) = XenFeature::from_name(item) {
                    self.supported = self.supported.with(feature);
                }
                Ok(())
            }
        }
    }

    /// Adds the bitmap of a `SUPPORTED_FEATURES` note (its first 32-bit word).
    pub fn add_supported(&mut self, set: FeatureSet) {
        self.supported = self.supported.union(set);
    }

    /// The required features missing from `offered`; the guest cannot be started unless
    /// this is empty.
    pub const fn unmet(&self, offered: FeatureSet) -> FeatureSet {
        self.required.difference(offered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XenFeature::*;

    #[test]
    fn numbers_match_features_h() {
        assert_eq!(WritablePageTables.raw(), 0);
        assert_eq!(AutoTranslatedPhysmap.raw(), 2);
        assert_eq!(PaePgdirAbove4gb.raw(), 4);
        assert_eq!(Dom0.raw(), 11);
        assert_eq!(XenFeature::from_raw(12), None);
        assert_eq!(DmMsixAllWrites.raw(), 20);
    }

    #[test]
    fn names_round_trip() {
        for &feature in XenFeature::ALL {
            assert_eq!(
                XenFeature::from_name(feature.name().as_bytes()),
                Some(feature)
            );
        }
        assert_eq!(
            XenFeature::from_name(b"Dom0"),
            None,
            "names are case-sensitive"
        );
        assert_eq!(XenFeature::from_name(b""), None);
    }

    #[test]
    fn parses_supported_and_required() {
        let parsed =
            GuestFeatures::parse(b"writable_page_tables|!auto_translated_physmap|dom0\0").unwrap();
        assert_eq!(
            parsed.supported,
            FeatureSet::of(&[WritablePageTables, AutoTranslatedPhysmap, Dom0])
        );
        assert_eq!(parsed.required, FeatureSet::of(&[AutoTranslatedPhysmap]));
    }

    #[test]
    fn linux_style_note() {
        let parsed = GuestFeatures::parse(b"!writable_page_tables|pae_pgdir_above_4gb").unwrap();
        assert!(parsed.required.contains(WritablePageTables));
        assert!(parsed.supported.contains(PaePgdirAbove4gb));
        assert!(!parsed.required.contains(PaePgdirAbove4gb));
    }

    #[test]
    fn empty_items_and_empty_notes_are_fine() {
        assert_eq!(GuestFeatures::parse(b""), Ok(GuestFeatures::default()));
        assert_eq!(
            GuestFeatures::parse(b"\0garbage"),
            Ok(GuestFeatures::default())
        );
        let parsed = GuestFeatures::parse(b"||dom0||").unwrap();
        assert_eq!(parsed.supported, FeatureSet::of(&[Dom0]));
    }

    #[test]
    fn unknown_optional_feature_is_ignored() {
        let parsed = GuestFeatures::parse(b"flying_pigs|dom0").unwrap();
        assert_eq!(parsed.supported, FeatureSet::of(&[Dom0]));
        assert!(parsed.required.is_empty());
    }

    #[test]
    fn unknown_required_feature_is_refused_with_its_location() {
        assert_eq!(
            GuestFeatures::parse(b"dom0|!flying_pigs|x"),
            Err(FeatureParseError::UnknownRequired { offset: 5, len: 12 })
        );
        assert_eq!(
            GuestFeatures::parse(b"!"),
            Err(FeatureParseError::UnknownRequired { offset: 0, len: 1 })
        );
        assert!(GuestFeatures::parse(b"!!dom0").is_err());
        assert!(
            GuestFeatures::parse(b"! dom0").is_err(),
            "no whitespace trimming"
        );
    }

    #[test]
    fn text_after_nul_is_ignored() {
        let parsed = GuestFeatures::parse(b"dom0\0|!flying_pigs").unwrap();
        assert_eq!(parsed.supported, FeatureSet::of(&[Dom0]));
    }

    #[test]
    fn non_utf8_bytes_are_just_unknown() {
        assert!(GuestFeatures::parse(b"\xff\xfe|dom0").is_ok());
        assert!(GuestFeatures::parse(b"!\xff").is_err());
    }

    #[test]
    fn supported_bitmap_and_unmet_requirements() {
        let mut parsed = GuestFeatures::parse(b"!writable_page_tables|!dom0").unwrap();
        parsed.add_supported(FeatureSet(1 << 5));
        assert!(parsed.supported.contains(MmuPtUpdatePreserveAd));
        let offered = FeatureSet::of(&[Dom0, MmuPtUpdatePreserveAd]);
        assert_eq!(parsed.unmet(offered), FeatureSet::of(&[WritablePageTables]));
        assert!(parsed.unmet(offered.with(WritablePageTables)).is_empty());
    }

    #[test]
    fn iter_lists_members_in_bit_order() {
        let set = FeatureSet::of(&[Dom0, WritablePageTables]).union(FeatureSet(1 << 12));
        let mut listed = set.iter();
        assert_eq!(listed.next(), Some(WritablePageTables));
        assert_eq!(listed.next(), Some(Dom0));
        assert_eq!(listed.next(), None, "bit 12 has no listed feature");
    }
}

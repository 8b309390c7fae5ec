//! Collects a kernel's Xen ELF notes into [`XenNotes`] and applies Xen's acceptance rules.
//!
//! The kernel-image checks (`kernel`) call it once per image. Notes are read as Xen's
//! libelf reads them: from the PT_NOTE segments (skipping any whose `p_offset` is 0, a
//! known binutils fault); only if those hold no Xen note, from the SHT_NOTE sections. Only
//! notes named "Xen" count; unknown types are ignored; a later note of a type replaces an
//! earlier one. The image is then refused, as libelf refuses it, when:
//! - it has no Xen note at all (not a Xen PV guest; the legacy `__xen_guest` section is
//!   not supported);
//! - neither `LOADER` starts with "generic" nor `GUEST_OS` with "linux" (so one of the
//!   two is required, as in libelf's `elf_xen_note_check`);
//! - `XEN_VERSION` is missing or does not start with "xen-3.0";
//! - `PADDR_OFFSET` is given without `VIRT_BASE`;
//! - `FEATURES` requires (`!name`) an unknown feature.
//!
//! Stricter than libelf: a numeric note whose value is not 1, 2, 4 or 8 bytes long is
//! refused rather than read as 0. This module must never decide where anything is loaded.

use alloc::vec::Vec;

use abi::elfnote::{numeric_desc, string_desc, ElfNote};
use abi::features::{FeatureParseError, FeatureSet, GuestFeatures};

use crate::elf::{ElfFile, Note, Notes, PT_NOTE, SHT_NOTE};
use crate::error::BuildError;
use crate::image::ImageSource;

/// The name every Xen note carries.
const XEN_NOTE_NAME: &[u8] = b"Xen";
/// The loader name an image must declare (or be a Linux image).
const GENERIC_LOADER: &[u8] = b"generic";
/// The guest OS name that stands in for `LOADER=generic`.
const LINUX_GUEST_OS: &[u8] = b"linux";
/// The Xen interface version an image must declare.
const XEN_3_0: &[u8] = b"xen-3.0";

/// Where the Xen notes were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteSource {
    /// In PT_NOTE program segments.
    ProgramHeaders,
    /// In SHT_NOTE sections (the image had no Xen note in a PT_NOTE segment).
    SectionHeaders,
}

/// What a PV kernel declares in its Xen notes, with Xen's defaults applied. Strings are
/// the note's bytes up to their NUL, copied out of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenNotes {
    /// `ENTRY`, or `e_entry` when absent.
    pub entry: u64,
    /// `HYPERCALL_PAGE`: virtual address of the page to fill with hypercall stubs.
    pub hypercall_page: Option<u64>,
    /// `VIRT_BASE`, or 0 when absent: the virtual address of pseudo-physical frame 0.
    pub virt_base: u64,
    /// `PADDR_OFFSET`, or 0 when absent: a segment loads at `p_paddr + virt_base -
    /// paddr_offset`.
    pub paddr_offset: u64,
    /// `GUEST_OS`.
    pub guest_os: Option<Vec<u8>>,
    /// `GUEST_VERSION`.
    pub guest_version: Option<Vec<u8>>,
    /// `XEN_VERSION` (starts with "xen-3.0" in any accepted image).
    pub xen_version: Option<Vec<u8>>,
    /// `LOADER`.
    pub loader: Option<Vec<u8>>,
    /// `PAE_MODE` (meaningful to 32-bit guests only).
    pub pae_mode: Option<Vec<u8>>,
    /// `FEATURES` parsed, with `SUPPORTED_FEATURES` ORed into the supported set.
    pub features: GuestFeatures,
    /// `SUPPORTED_FEATURES` as given (its first 32-bit word).
    pub supported_features: Option<FeatureSet>,
    /// `INIT_P2M`: where the guest would like its P2M list mapped. Recorded only: this
    /// builder always places the P2M list in the initial mapping.
    pub init_p2m: Option<u64>,
    /// `MOD_START_PFN` is non-zero: the guest accepts `mod_start` as a frame number.
    pub mod_start_pfn: bool,
    /// `SUSPEND_CANCEL` is non-zero.
    pub suspend_cancel: bool,
    /// `BSD_SYMTAB` is "yes". Recorded only: no symbol table is loaded.
    pub bsd_symtab: bool,
    /// `PHYS32_ENTRY`: the PVH entry point (unused by a PV build).
    pub phys32_entry: Option<u64>,
    /// Where the notes were found.
    pub source: NoteSource,
    /// Number of Xen notes read.
    pub count: usize,
}

/// The most note bytes one image's parse reads, all segments and sections together.
pub const MAX_NOTE_BYTES_TOTAL: u64 = 256 << 10;

impl XenNotes {
    /// Collects and checks the Xen notes of `elf`. Each note segment or section is read
    /// whole (at most [`crate::elf::MAX_NOTES_BYTES`]), and all of them together at most
    /// [`MAX_NOTE_BYTES_TOTAL`]: otherwise an image whose thousands of headers name the same
    /// 64 KiB of notes would make one parse copy and walk hundreds of MiB.
    pub fn from_elf<I: ImageSource + ?Sized>(elf: &ElfFile<'_, I>) -> Result<Self, BuildError> {
        Self::from_elf_within(elf, MAX_NOTE_BYTES_TOTAL)
    }

    /// [`Self::from_elf`], reading at most `budget` note bytes in all.
    fn from_elf_within<I: ImageSource + ?Sized>(elf: &ElfFile<'_, I>, budget: u64) -> Result<Self, BuildError> {
        let mut collector = Collector::default();
        let mut left = budget;
        let mut read = |range: crate::elf::FileRange| -> Result<Vec<u8>, BuildError> {
            left = left.checked_sub(range.size).ok_or(BuildError::NotesTooLarge { offset: range.offset, size: range.size })?;
            elf.read_notes(range)
        };
        for (index, segment) in elf.segments().iter().enumerate() {
            if segment.p_type == PT_NOTE && segment.p_offset != 0 {
                let bytes = read(elf.segment_range(index)?)?;
                collector.read(Notes::new(&bytes, segment.p_offset))?;
            }
        }
        let mut source = NoteSource::ProgramHeaders;
        if collector.count == 0 {
            source = NoteSource::SectionHeaders;
            for (index, section) in elf.sections().iter().enumerate().skip(1) {
                if section.sh_type == SHT_NOTE {
                    let bytes = read(elf.section_range(index)?)?;
                    collector.read(Notes::new(&bytes, section.sh_offset))?;
                }
            }
        }
        collector.finish(elf.entry(), source)
    }

    /// Refuses the image if it requires a feature that `offered` lacks.
    pub fn check_offered(&self, offered: FeatureSet) -> Result<(), BuildError> {
        let missing = self.features.unmet(offered);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(BuildError::UnofferedFeatures { missing })
        }
    }
}

/// The notes read so far (`None`: not seen).
#[derive(Default)]
struct Collector {
    entry: Option<u64>,
    hypercall_page: Option<u64>,
    virt_base: Option<u64>,
    paddr_offset: Option<u64>,
    guest_os: Option<Vec<u8>>,
    guest_version: Option<Vec<u8>>,
    xen_version: Option<Vec<u8>>,
    loader: Option<Vec<u8>>,
    pae_mode: Option<Vec<u8>>,
    features: GuestFeatures,
    supported_features: Option<FeatureSet>,
    init_p2m: Option<u64>,
    mod_start_pfn: bool,
    suspend_cancel: bool,
    bsd_symtab: bool,
    phys32_entry: Option<u64>,
    count: usize,
}

impl Collector {
    fn read(&mut self, notes: Notes<'_>) -> Result<(), BuildError> {
        for note in notes {
            let note = note?;
            if note.has_name(XEN_NOTE_NAME) {
                self.count += 1;
                if let Some(kind) = ElfNote::from_raw(note.note_type) {
                    self.record(kind, &note)?;
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, kind: ElfNote, note: &Note<'_>) -> Result<(), BuildError> {
        let text = string_desc(note.desc);
        let owned = || Some(text.to_vec());
        match kind {
            ElfNote::Entry => self.entry = Some(numeric(kind, note)?),
            ElfNote::HypercallPage => self.hypercall_page = Some(numeric(kind, note)?),
            ElfNote::VirtBase => self.virt_base = Some(numeric(kind, note)?),
            ElfNote::PaddrOffset => self.paddr_offset = Some(numeric(kind, note)?),
            ElfNote::InitP2m => self.init_p2m = Some(numeric(kind, note)?),
            ElfNote::ModStartPfn => self.mod_start_pfn = numeric(kind, note)? != 0,
            ElfNote::SuspendCancel => self.suspend_cancel = numeric(kind, note)? != 0,
            ElfNote::Phys32Entry => self.phys32_entry = Some(numeric(kind, note)?),
            ElfNote::SupportedFeatures => {
                let set = first_word(note.desc).ok_or(BuildError::BadNumericNote {
                    note: kind,
                    len: note.desc.len(),
                })?;
                self.supported_features = Some(set);
                self.features.add_supported(set);
            }
            ElfNote::GuestOs => self.guest_os = owned(),
            ElfNote::GuestVersion => self.guest_version = owned(),
            ElfNote::XenVersion => self.xen_version = owned(),
            ElfNote::Loader => self.loader = owned(),
            ElfNote::PaeMode => self.pae_mode = owned(),
            ElfNote::BsdSymtab => self.bsd_symtab = text == b"yes",
            ElfNote::Features => self.parse_features(text)?,
            ElfNote::Info | ElfNote::HvStartLow | ElfNote::L1MfnValid | ElfNote::Phys32Reloc => {}
        }
        Ok(())
    }

    /// Parses `FEATURES`, keeping the supported set that `SUPPORTED_FEATURES` notes read
    /// so far contributed.
    fn parse_features(&mut self, text: &[u8]) -> Result<(), BuildError> {
        let mut parsed = GuestFeatures::parse(text).map_err(
            |FeatureParseError::UnknownRequired { offset, len }| {
                BuildError::UnknownRequiredFeature { offset, len }
            },
        )?;
        parsed.add_supported(self.supported_features.unwrap_or_default());
        self.features = parsed;
        Ok(())
    }

    fn finish(self, e_entry: u64, source: NoteSource) -> Result<XenNotes, BuildError> {
        if self.count == 0 {
            return Err(BuildError::NotXenGuest);
        }
        let generic = self
            .loader
            .as_ref()
            .is_some_and(|l| l.starts_with(GENERIC_LOADER));
        let linux = self
            .guest_os
            .as_ref()
            .is_some_and(|os| os.starts_with(LINUX_GUEST_OS));
        if !generic && !linux {
            return Err(BuildError::UnsupportedLoader);
        }
        if !self
            .xen_version
            .as_ref()
            .is_some_and(|v| v.starts_with(XEN_3_0))
        {
            return Err(BuildError::UnsupportedXenVersion);
        }
        if self.paddr_offset.is_some() && self.virt_base.is_none() {
            return Err(BuildError::PaddrOffsetWithoutVirtBase);
        }
        Ok(XenNotes {
            entry: self.entry.unwrap_or(e_entry),
            hypercall_page: self.hypercall_page,
            virt_base: self.virt_base.unwrap_or(0),
            paddr_offset: self.paddr_offset.unwrap_or(0),
            guest_os: self.guest_os,
            guest_version: self.guest_version,
            xen_version: self.xen_version,
            loader: self.loader,
            pae_mode: self.pae_mode,
            features: self.features,
            supported_features: self.supported_features,
            init_p2m: self.init_p2m,
            mod_start_pfn: self.mod_start_pfn,
            suspend_cancel: self.suspend_cancel,
            bsd_symtab: self.bsd_symtab,
            phys32_entry: self.phys32_entry,
            source,
            count: self.count,
        })
    }
}

/// A numeric note's value.
fn numeric(kind: ElfNote, note: &Note<'_>) -> Result<u64, BuildError> {
    numeric_desc(note.desc).ok_or(BuildError::BadNumericNote {
        note: kind,
        len: note.desc.len(),
    })
}

/// The first 32-bit word of a `SUPPORTED_FEATURES` bitmap (submap 0).
fn first_word(desc: &[u8]) -> Option<FeatureSet> {
    Some(FeatureSet(u32::from_le_bytes(*desc.first_chunk::<4>()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_image::{TestImage, VIRT_BASE};
    use abi::features::XenFeature;

    fn notes_in(bytes: &[u8]) -> Result<XenNotes, BuildError> {
        XenNotes::from_elf(&ElfFile::parse(bytes)?)
    }

    /// The refusal of an image, or `Ok(())`.
    fn notes_of(image: &TestImage) -> Result<(), BuildError> {
        notes_in(&image.bytes()).map(|_| ())
    }

    #[test]
    fn collects_every_note() {
        let image = TestImage::minimal()
            .with_note(ElfNote::GuestVersion, b"1.2\0")
            .with_note(ElfNote::PaeMode, b"yes\0")
            .with_note(ElfNote::InitP2m, &0x80_0000_0000u64.to_le_bytes())
            .with_note(ElfNote::ModStartPfn, &1u32.to_le_bytes())
            .with_note(ElfNote::SuspendCancel, &1u32.to_le_bytes())
            .with_note(ElfNote::BsdSymtab, b"yes\0")
            .with_note(ElfNote::Phys32Entry, &0x10_0000u32.to_le_bytes())
            .with_note(ElfNote::PaddrOffset, &0u64.to_le_bytes());
        let bytes = image.bytes();
        let notes = notes_in(&bytes).unwrap();
        assert_eq!(notes.entry, VIRT_BASE + 0x40);
        assert_eq!(notes.hypercall_page, Some(VIRT_BASE + 0x1000));
        assert_eq!(notes.virt_base, VIRT_BASE);
        assert_eq!(notes.paddr_offset, 0);
        assert_eq!(notes.guest_os.as_deref(), Some(&b"TestOS"[..]));
        assert_eq!(notes.guest_version.as_deref(), Some(&b"1.2"[..]));
        assert_eq!(notes.xen_version.as_deref(), Some(&b"xen-3.0"[..]));
        assert_eq!(notes.loader.as_deref(), Some(&b"generic"[..]));
        assert_eq!(notes.pae_mode.as_deref(), Some(&b"yes"[..]));
        assert_eq!(notes.init_p2m, Some(0x80_0000_0000));
        assert!(notes.mod_start_pfn && notes.suspend_cancel && notes.bsd_symtab);
        assert_eq!(notes.phys32_entry, Some(0x10_0000));
        assert_eq!(notes.source, NoteSource::ProgramHeaders);
        assert_eq!(notes.count, image.notes.len());
        assert!(notes
            .features
            .supported
            .contains(XenFeature::WritableDescriptorTables));
        assert!(notes.features.required.is_empty());
    }

    #[test]
    fn all_note_ranges_together_stay_within_the_budget() {
        let bytes = TestImage::minimal().bytes();
        let elf = ElfFile::parse(&bytes[..]).unwrap();
        let size = elf.segments().iter().enumerate().filter(|(_, s)| s.p_type == PT_NOTE).map(|(i, _)| elf.segment_range(i).unwrap().size).sum::<u64>();
        assert!(XenNotes::from_elf_within(&elf, size).is_ok());
        assert!(matches!(XenNotes::from_elf_within(&elf, size - 1), Err(BuildError::NotesTooLarge { .. })));
    }

    #[test]
    fn entry_and_virt_base_defaults() {
        let image = TestImage::minimal()
            .without_note(ElfNote::Entry)
            .without_note(ElfNote::VirtBase);
        let bytes = image.bytes();
        let notes = notes_in(&bytes).unwrap();
        assert_eq!(notes.entry, image.entry, "ENTRY defaults to e_entry");
        assert_eq!(notes.virt_base, 0);
        assert_eq!(notes.paddr_offset, 0);
    }

    #[test]
    fn reads_notes_from_sections_when_there_is_no_pt_note() {
        let mut image = TestImage::minimal();
        image.notes_in_sections = true;
        let bytes = image.bytes();
        let notes = notes_in(&bytes).unwrap();
        assert_eq!(notes.source, NoteSource::SectionHeaders);
        assert_eq!(notes.virt_base, VIRT_BASE);
        assert_eq!(notes.guest_os.as_deref(), Some(&b"TestOS"[..]));
    }

    #[test]
    fn ignores_foreign_and_unknown_notes() {
        let mut image = TestImage::minimal();
        image
            .notes
            .insert(0, (b"GNU\0".to_vec(), 1, b"build-id".to_vec()));
        image
            .notes
            .push((b"Xen\0".to_vec(), 0x1234, b"??".to_vec()));
        let bytes = image.bytes();
        let notes = notes_in(&bytes).unwrap();
        assert_eq!(
            notes.count,
            image.notes.len() - 1,
            "the GNU note is not counted"
        );
    }

    #[test]
    fn refuses_an_image_without_xen_notes() {
        let mut image = TestImage::minimal();
        image.notes = alloc::vec![(b"GNU\0".to_vec(), 1, b"build-id".to_vec())];
        assert_eq!(notes_of(&image).unwrap_err(), BuildError::NotXenGuest);
        image.notes.clear();
        assert_eq!(notes_of(&image).unwrap_err(), BuildError::NotXenGuest);
    }

    #[test]
    fn loader_or_linux_is_required() {
        let image = TestImage::minimal().without_note(ElfNote::Loader);
        assert_eq!(notes_of(&image).unwrap_err(), BuildError::UnsupportedLoader);
        let linux = image.clone().with_note(ElfNote::GuestOs, b"linux\0");
        assert!(notes_of(&linux).is_ok(), "a Linux image needs no LOADER");
        let other = TestImage::minimal().with_note(ElfNote::Loader, b"special\0");
        assert_eq!(notes_of(&other).unwrap_err(), BuildError::UnsupportedLoader);
    }

    #[test]
    fn xen_version_must_be_3_0() {
        let missing = TestImage::minimal().without_note(ElfNote::XenVersion);
        assert_eq!(
            notes_of(&missing).unwrap_err(),
            BuildError::UnsupportedXenVersion
        );
        let old = TestImage::minimal().with_note(ElfNote::XenVersion, b"xen-2.0\0");
        assert_eq!(
            notes_of(&old).unwrap_err(),
            BuildError::UnsupportedXenVersion
        );
    }

    #[test]
    fn paddr_offset_needs_virt_base() {
        let image = TestImage::minimal()
            .without_note(ElfNote::VirtBase)
            .with_note(ElfNote::PaddrOffset, &0u64.to_le_bytes());
        assert_eq!(
            notes_of(&image).unwrap_err(),
            BuildError::PaddrOffsetWithoutVirtBase
        );
    }

    #[test]
    fn refuses_bad_numeric_notes() {
        let image = TestImage::minimal().with_note(ElfNote::VirtBase, &[0; 3]);
        assert_eq!(
            notes_of(&image).unwrap_err(),
            BuildError::BadNumericNote {
                note: ElfNote::VirtBase,
                len: 3
            }
        );
        let image = TestImage::minimal().with_note(ElfNote::SupportedFeatures, &[1, 2]);
        assert_eq!(
            notes_of(&image).unwrap_err(),
            BuildError::BadNumericNote {
                note: ElfNote::SupportedFeatures,
                len: 2
            }
        );
    }

    #[test]
    fn features_and_supported_features_combine() {
        let dom0_bit = 1u32 << XenFeature::Dom0.raw();
        let image = TestImage::minimal()
            .with_note(ElfNote::SupportedFeatures, &dom0_bit.to_le_bytes())
            .with_note(
                ElfNote::Features,
                b"!writable_page_tables|pae_pgdir_above_4gb\0",
            );
        let bytes = image.bytes();
        let notes = notes_in(&bytes).unwrap();
        assert_eq!(notes.supported_features, Some(FeatureSet(dom0_bit)));
        assert_eq!(
            notes.features.supported,
            FeatureSet::of(&[
                XenFeature::Dom0,
                XenFeature::WritablePageTables,
                XenFeature::PaePgdirAbove4gb
            ])
        );
        assert_eq!(
            notes.features.required,
            FeatureSet::of(&[XenFeature::WritablePageTables])
        );
    }

    #[test]
    fn unknown_required_feature_is_refused() {
        let image = TestImage::minimal().with_note(ElfNote::Features, b"dom0|!flying_pigs\0");
        assert_eq!(
            notes_of(&image).unwrap_err(),
            BuildError::UnknownRequiredFeature { offset: 5, len: 12 }
        );
    }

    #[test]
    fn required_features_must_be_offered() {
        let image = TestImage::minimal().with_note(
            ElfNote::Features,
            b"!auto_translated_physmap|!writable_page_tables\0",
        );
        let bytes = image.bytes();
        let notes = notes_in(&bytes).unwrap();
        let offered = FeatureSet::of(&[XenFeature::WritablePageTables]);
        assert_eq!(
            notes.check_offered(offered),
            Err(BuildError::UnofferedFeatures {
                missing: FeatureSet::of(&[XenFeature::AutoTranslatedPhysmap])
            })
        );
        let all = offered.with(XenFeature::AutoTranslatedPhysmap);
        assert_eq!(notes.check_offered(all), Ok(()));
    }
}

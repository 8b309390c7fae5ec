//! The one error type of the domain builder: every reason an image, a layout or a
//! build request is refused, with a message that says what is wrong with the image.
//!
//! Every other module returns it; the hypervisor prints it (it implements `Display`) and
//! may match on it. It must never carry borrowed data from the image, so that a refusal
//! outlives the module bytes it describes.

use core::fmt;

use abi::elfnote::ElfNote;
use abi::features::FeatureSet;
use abi::start_info::CmdLineError;

/// Which ELF header table an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderTable {
    /// The program header table (`e_phoff`, `e_phnum`, `e_phentsize`).
    Program,
    /// The section header table (`e_shoff`, `e_shnum`, `e_shentsize`).
    Section,
}

/// Why a domain cannot be built from an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    // ---- The ELF container. ----
    /// The file does not start with the ELF magic.
    NotElf,
    /// A 32-bit ELF file (class 1): only 64-bit PV guests are supported.
    Elf32,
    /// An ELF class other than 32 or 64 bits.
    UnknownClass { class: u8 },
    /// Not little-endian (`EI_DATA` is not 1).
    NotLittleEndian { data: u8 },
    /// An ELF version other than 1 (in `e_ident` or `e_version`).
    UnknownElfVersion { version: u32 },
    /// Not an executable (`e_type` is not `ET_EXEC`).
    NotExecutable { elf_type: u16 },
    /// Not an x86-64 file (`e_machine` is not 62).
    WrongMachine { machine: u16 },
    /// The file is shorter than the 64-byte ELF header.
    TruncatedHeader { len: u64 },
    /// A header table's entry size is not the ELF64 one (56 or 64 bytes).
    BadEntrySize { table: HeaderTable, size: u16 },
    /// A header table runs past the end of the file.
    TableOutOfFile {
        table: HeaderTable,
        offset: u64,
        count: u16,
        file_len: u64,
    },
    /// A header table has more entries than the builder keeps
    /// ([`crate::elf::MAX_TABLE_ENTRIES`]).
    TooManyEntries { table: HeaderTable, count: u16 },
    /// A loadable or note segment's file bytes run past the end of the file.
    SegmentOutOfFile {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: u64,
    },
    /// A note section's bytes run past the end of the file.
    SectionOutOfFile {
        index: usize,
        offset: u64,
        size: u64,
        file_len: u64,
    },
    /// A loadable segment has more file bytes than memory bytes.
    SegmentFileExceedsMemory {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    /// An ELF note at this file offset does not fit in its segment or section.
    MalformedNote { offset: u64 },
    /// A note segment or section is larger than the builder reads
    /// ([`crate::elf::MAX_NOTES_BYTES`]), or the notes together more than
    /// [`crate::xen_notes::MAX_NOTE_BYTES_TOTAL`].
    NotesTooLarge { offset: u64, size: u64 },
    /// The image source could not give these bytes (a source that decompresses may find
    /// its stream corrupt).
    ImageRead { offset: u64, len: u64 },
    /// The builder's own buffers could not be allocated.
    OutOfMemory { bytes: u64 },

    // ---- The Xen notes. ----
    /// No Xen ELF note at all: not a Xen PV guest.
    NotXenGuest,
    /// A numeric Xen note whose value has an unsupported size.
    BadNumericNote { note: ElfNote, len: usize },
    /// Neither `LOADER` starts with "generic" nor `GUEST_OS` with "linux".
    UnsupportedLoader,
    /// `XEN_VERSION` is missing or does not start with "xen-3.0".
    UnsupportedXenVersion,
    /// `PADDR_OFFSET` is given without `VIRT_BASE`.
    PaddrOffsetWithoutVirtBase,
    /// A `!`-marked (required) feature in `FEATURES` has an unknown name; `offset` and
    /// `len` locate the item within the note.
    UnknownRequiredFeature { offset: usize, len: usize },
    /// The image requires features the hypervisor does not offer.
    UnofferedFeatures { missing: FeatureSet },

    // ---- The image's placement in the guest's virtual address space. ----
    /// No loadable (PT_LOAD, non-empty) segment.
    NoLoadableSegments,
    /// `VIRT_BASE` is not page aligned.
    VirtBaseMisaligned { virt_base: u64 },
    /// A segment's end lies past the top of the address space.
    SegmentWraps { index: usize },
    /// A segment would be loaded below `VIRT_BASE`.
    SegmentBelowVirtBase {
        index: usize,
        address: u64,
        virt_base: u64,
    },
    /// Two segments overlap in memory (`index` is the one at the higher address).
    SegmentOverlap { index: usize, other: usize },
    /// The entry point lies outside the loaded image.
    EntryOutsideImage { entry: u64, start: u64, end: u64 },
    /// The hypercall page address is not page aligned.
    HypercallPageMisaligned { address: u64 },
    /// The hypercall page lies outside the loaded image.
    HypercallPageOutsideImage { address: u64, start: u64, end: u64 },

    // ---- The start-of-day layout. ----
    /// The start-of-day layout needs more pages than the reservation holds.
    TooSmall { needed_pages: u64, nr_pages: u64 },
    /// The initial mapping `start` (+`pages` pages) crosses the non-canonical hole.
    NonCanonical { start: u64, pages: u64 },
    /// The initial mapping would use L4 slot 256 (the machine-to-physical table).
    CollidesWithM2p { start: u64, pages: u64 },
    /// The initial mapping would reach the hypervisor's top gigabyte.
    CollidesWithHypervisor { start: u64, pages: u64 },

    // ---- The start-of-day page. ----
    /// The command line does not fit in `start_info`.
    CmdLine(CmdLineError),
}

impl fmt::Display for HeaderTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Program => "program header table",
            Self::Section => "section header table",
        })
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotElf => f.write_str("not an ELF file (bad magic)"),
            Self::Elf32 => f.write_str("32-bit ELF image: only 64-bit PV guests are supported"),
            Self::UnknownClass { class } => write!(f, "unknown ELF class {class}"),
            Self::NotLittleEndian { data } => {
                write!(f, "ELF data encoding {data} is not little-endian")
            }
            Self::UnknownElfVersion { version } => write!(f, "unknown ELF version {version}"),
            Self::NotExecutable { elf_type } => {
                write!(f, "ELF type {elf_type} is not an executable (ET_EXEC)")
            }
            Self::WrongMachine { machine } => {
                write!(f, "ELF machine {machine} is not x86-64 (62)")
            }
            Self::TruncatedHeader { len } => {
                write!(
                    f,
                    "file of {len} bytes is too short for the 64-byte ELF header"
                )
            }
            Self::BadEntrySize { table, size } => {
                write!(f, "{table} entries are {size} bytes, not the ELF64 size")
            }
            Self::TableOutOfFile {
                table,
                offset,
                count,
                file_len,
            } => write!(
                f,
                "{table} at offset {offset:#x} ({count} entries) runs past the end of the \
                 {file_len}-byte file"
            ),
            Self::TooManyEntries { table, count } => write!(
                f,
                "{table} has {count} entries, more than the {} the builder reads",
                crate::elf::MAX_TABLE_ENTRIES
            ),
            Self::SegmentOutOfFile {
                index,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "segment {index} (offset {offset:#x}, {filesz:#x} bytes) runs past the end of \
                 the {file_len}-byte file"
            ),
            Self::SectionOutOfFile {
                index,
                offset,
                size,
                file_len,
            } => write!(
                f,
                "note section {index} (offset {offset:#x}, {size:#x} bytes) runs past the end \
                 of the {file_len}-byte file"
            ),
            Self::SegmentFileExceedsMemory {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "segment {index} has {filesz:#x} file bytes but only {memsz:#x} memory bytes"
            ),
            Self::MalformedNote { offset } => {
                write!(f, "malformed ELF note at file offset {offset:#x}")
            }
            Self::NotesTooLarge { offset, size } => write!(
                f,
                "note segment or section at file offset {offset:#x} ({size:#x} bytes) goes past \
                 what the builder reads: {:#x} bytes each, {:#x} in all",
                crate::elf::MAX_NOTES_BYTES,
                crate::xen_notes::MAX_NOTE_BYTES_TOTAL
            ),
            Self::ImageRead { offset, len } => write!(
                f,
                "the image's bytes {offset:#x}..+{len:#x} could not be read"
            ),
            Self::OutOfMemory { bytes } => {
                write!(f, "no memory for the builder's {bytes}-byte buffer")
            }
            Self::NotXenGuest => f.write_str("no Xen ELF notes: not a Xen PV guest"),
            Self::BadNumericNote { note, len } => {
                write!(
                    f,
                    "Xen note {note:?} has a {len}-byte value (need 1, 2, 4 or 8)"
                )
            }
            Self::UnsupportedLoader => f.write_str(
                "image is neither for the generic loader (LOADER) nor a Linux image (GUEST_OS)",
            ),
            Self::UnsupportedXenVersion => {
                f.write_str("image is not built for Xen 3.0 (XEN_VERSION missing or wrong)")
            }
            Self::PaddrOffsetWithoutVirtBase => {
                f.write_str("Xen note PADDR_OFFSET is given without VIRT_BASE")
            }
            Self::UnknownRequiredFeature { offset, len } => write!(
                f,
                "FEATURES note requires an unknown feature (bytes {offset}..{})",
                offset + len
            ),
            Self::UnofferedFeatures { missing } => {
                f.write_str("image requires features the hypervisor does not offer:")?;
                write_features(f, missing)
            }
            Self::NoLoadableSegments => f.write_str("image has no loadable segment"),
            Self::VirtBaseMisaligned { virt_base } => {
                write!(f, "VIRT_BASE {virt_base:#x} is not page aligned")
            }
            Self::SegmentWraps { index } => {
                write!(f, "segment {index} ends past the top of the address space")
            }
            Self::SegmentBelowVirtBase {
                index,
                address,
                virt_base,
            } => write!(
                f,
                "segment {index} loads at {address:#x}, below VIRT_BASE {virt_base:#x}"
            ),
            Self::SegmentOverlap { index, other } => {
                write!(f, "segment {index} overlaps segment {other}")
            }
            Self::EntryOutsideImage { entry, start, end } => write!(
                f,
                "entry point {entry:#x} is outside the image {start:#x}..{end:#x}"
            ),
            Self::HypercallPageMisaligned { address } => {
                write!(f, "hypercall page {address:#x} is not page aligned")
            }
            Self::HypercallPageOutsideImage {
                address,
                start,
                end,
            } => write!(
                f,
                "hypercall page {address:#x} is outside the image {start:#x}..{end:#x}"
            ),
            Self::TooSmall {
                needed_pages,
                nr_pages,
            } => write!(
                f,
                "image needs {needed_pages} pages but the reservation is {nr_pages}"
            ),
            Self::NonCanonical { start, pages } => write!(
                f,
                "initial mapping at {start:#x} ({pages} pages) crosses the non-canonical hole"
            ),
            Self::CollidesWithM2p { start, pages } => write!(
                f,
                "initial mapping at {start:#x} ({pages} pages) would use L4 slot 256, \
                 reserved for the machine-to-physical table"
            ),
            Self::CollidesWithHypervisor { start, pages } => write!(
                f,
                "initial mapping at {start:#x} ({pages} pages) would reach the hypervisor's \
                 top gigabyte"
            ),
            Self::CmdLine(CmdLineError::TooLong { len }) => {
                write!(f, "command line of {len} bytes does not fit in start_info")
            }
            Self::CmdLine(CmdLineError::ContainsNul { at }) => {
                write!(f, "command line holds a NUL byte at {at}")
            }
        }
    }
}

/// Writes " name, name, ..." for the listed features and the raw bits of unlisted ones.
fn write_features(f: &mut fmt::Formatter<'_>, set: FeatureSet) -> fmt::Result {
    let mut named = FeatureSet::EMPTY;
    for feature in set.iter() {
        write!(f, " {}", feature.name())?;
        named = named.with(feature);
    }
    let unnamed = set.difference(named);
    if !unnamed.is_empty() {
        write!(f, " (bits {:#x})", unnamed.0)?;
    }
    Ok(())
}

impl From<CmdLineError> for BuildError {
    fn from(error: CmdLineError) -> Self {
        Self::CmdLine(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::features::XenFeature;
    use alloc::string::ToString;

    #[test]
    fn messages_name_what_is_wrong() {
        assert_eq!(
            BuildError::SegmentOverlap { index: 2, other: 1 }.to_string(),
            "segment 2 overlaps segment 1"
        );
        assert_eq!(
            BuildError::TooSmall {
                needed_pages: 300,
                nr_pages: 256
            }
            .to_string(),
            "image needs 300 pages but the reservation is 256"
        );
        assert_eq!(
            BuildError::NotXenGuest.to_string(),
            "no Xen ELF notes: not a Xen PV guest"
        );
    }

    #[test]
    fn missing_features_are_named() {
        let missing =
            FeatureSet::of(&[XenFeature::AutoTranslatedPhysmap]).union(FeatureSet(1 << 31));
        assert_eq!(
            BuildError::UnofferedFeatures { missing }.to_string(),
            "image requires features the hypervisor does not offer: auto_translated_physmap \
             (bits 0x80000000)"
        );
    }
}

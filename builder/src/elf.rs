//! The builder's ELF64 reading: the file header and the program and section header
//! tables decoded by the `elf` crate, read through an [`ImageSource`] and bounded here,
//! and an iterator over the notes of a segment or section.
//!
//! The Xen-note collector and the kernel-image checks call it with a boot module, which
//! may be hostile, read through an [`ImageSource`] (never as one slice: a module may be
//! larger than anything the hypervisor maps at once, so the `elf` crate's whole-file
//! `ElfBytes` is not used; its per-structure parsers decode each header as it is read).
//! Every offset and size read from the file is checked (overflow and end of file) before
//! use, what it keeps is bounded ([`MAX_TABLE_ENTRIES`], [`MAX_NOTES_BYTES`]), and every
//! failure is a typed [`BuildError`]. It accepts only what a Xen PV64 kernel is: 64-bit,
//! little-endian, x86-64, `ET_EXEC`. Notes are walked by [`Notes`], not by the `elf`
//! crate's `NoteIterator`, which ends silently at a note that does not fit (the builder
//! refuses it) and at a short GNU ABI-tag note (hiding the notes after it); the tests show
//! both. It must never panic on any input, and never interpret Xen notes (that is
//! `xen_notes`' job).

use alloc::vec::Vec;

use ::elf::abi::{EI_NIDENT, ELFMAGIC, EM_X86_64, ET_EXEC, EV_CURRENT, PF_R, PF_W, PF_X};
use ::elf::endian::LittleEndian;
use ::elf::file::{parse_ident, Class, FileHeader};
use ::elf::parse::{ParseAt, ParseError};

pub use ::elf::abi::{PT_LOAD, PT_NOTE, SHT_NOTE};
/// One program header, as the `elf` crate decodes it.
pub use ::elf::segment::ProgramHeader;
/// One section header, as the `elf` crate decodes it.
pub use ::elf::section::SectionHeader;

use crate::error::{BuildError, HeaderTable};
use crate::image::{read_exact, read_to_vec, ImageSource};

/// Size of the ELF64 file header.
const EHDR_SIZE: usize = 64;
/// The larger of an ELF64 program header (56 bytes) and section header (64 bytes).
const MAX_ENTRY_SIZE: usize = 64;
/// Size of a note header (`namesz`, `descsz`, `type`).
const NOTE_HEADER_SIZE: usize = 12;
/// Alignment of a note's name and desc fields.
const NOTE_ALIGN: usize = 4;
/// The most entries a header table may have. Kernels have a handful of segments and at
/// most a few hundred sections; the decoded tables live in the hypervisor's heap.
pub const MAX_TABLE_ENTRIES: usize = 4096;
/// The most bytes one note segment or section may have (Linux's are under 1 KiB); they are
/// read whole into the hypervisor's heap.
pub const MAX_NOTES_BYTES: usize = 64 << 10;

/// Whether a segment is loaded: `PT_LOAD` with some permission (as Xen's libelf decides).
pub const fn is_loadable(segment: &ProgramHeader) -> bool {
    segment.p_type == PT_LOAD && segment.p_flags & (PF_R | PF_W | PF_X) != 0
}

/// Whether a segment's file bytes must lie inside the file.
const fn has_file_bytes(segment: &ProgramHeader) -> bool {
    segment.p_type == PT_LOAD || segment.p_type == PT_NOTE
}

/// A parsed ELF64 x86-64 executable whose header tables, loadable and note segments and
/// note sections all lie inside the file. It keeps the decoded header tables and reads
/// everything else from the image when asked.
#[derive(Clone, Debug)]
pub struct ElfFile<'a, I: ImageSource + ?Sized = [u8]> {
    image: &'a I,
    entry: u64,
    segments: Vec<ProgramHeader>,
    sections: Vec<SectionHeader>,
}

/// A checked byte range of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

impl<'a, I: ImageSource + ?Sized> ElfFile<'a, I> {
    /// Checks the header and both header tables of `image`.
    pub fn parse(image: &'a I) -> Result<Self, BuildError> {
        let file_len = image.size();
        let mut bytes = [0; EHDR_SIZE];
        let have = usize::try_from(file_len.min(EHDR_SIZE as u64)).unwrap_or(EHDR_SIZE);
        read_exact(image, 0, &mut bytes[..have])?;
        let header = parse_header(&bytes, have, file_len)?;
        let file = Self {
            image,
            entry: header.e_entry,
            segments: read_table(image, &header, HeaderTable::Program)?,
            sections: read_table(image, &header, HeaderTable::Section)?,
        };
        file.check_segments()?;
        file.check_note_sections()?;
        Ok(file)
    }

    /// The image the file is read from.
    pub fn image(&self) -> &'a I {
        self.image
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.image.size()
    }

    /// `e_entry`.
    pub const fn entry(&self) -> u64 {
        self.entry
    }

    /// The program headers, in file order.
    pub fn segments(&self) -> &[ProgramHeader] {
        &self.segments
    }

    /// The section headers, in file order (index 0 is the null section).
    pub fn sections(&self) -> &[SectionHeader] {
        &self.sections
    }

    /// Where the file bytes of program header `index` are (`p_offset`, `p_filesz`).
    pub fn segment_range(&self, index: usize) -> Result<FileRange, BuildError> {
        let (offset, filesz) = self
            .segments
            .get(index)
            .map_or((0, 0), |segment| (segment.p_offset, segment.p_filesz));
        let out_of_file = BuildError::SegmentOutOfFile {
            index,
            offset,
            filesz,
            file_len: self.file_len(),
        };
        match (self.segments.get(index), self.range(offset, filesz)) {
            (Some(_), Some(range)) => Ok(range),
            _ => Err(out_of_file),
        }
    }

    /// Where the bytes of section `index` are (`sh_offset`, `sh_size`).
    pub fn section_range(&self, index: usize) -> Result<FileRange, BuildError> {
        let (offset, size) = self
            .sections
            .get(index)
            .map_or((0, 0), |section| (section.sh_offset, section.sh_size));
        let out_of_file = BuildError::SectionOutOfFile {
            index,
            offset,
            size,
            file_len: self.file_len(),
        };
        match (self.sections.get(index), self.range(offset, size)) {
            (Some(_), Some(range)) => Ok(range),
            _ => Err(out_of_file),
        }
    }

    /// The bytes of a note segment or section (`range`, at most [`MAX_NOTES_BYTES`]).
    pub fn read_notes(&self, range: FileRange) -> Result<Vec<u8>, BuildError> {
        let size = usize::try_from(range.size)
            .ok()
            .filter(|&size| size <= MAX_NOTES_BYTES)
            .ok_or(BuildError::NotesTooLarge {
                offset: range.offset,
                size: range.size,
            })?;
        read_to_vec(self.image, range.offset, size)
    }

    /// `offset..offset + size` if it lies inside the file.
    fn range(&self, offset: u64, size: u64) -> Option<FileRange> {
        let end = offset.checked_add(size)?;
        (end <= self.file_len()).then_some(FileRange { offset, size })
    }

    fn check_segments(&self) -> Result<(), BuildError> {
        for (index, segment) in self.segments.iter().enumerate() {
            if !has_file_bytes(segment) {
                continue;
            }
            self.segment_range(index)?;
            if segment.p_type == PT_LOAD && segment.p_filesz > segment.p_memsz {
                return Err(BuildError::SegmentFileExceedsMemory {
                    index,
                    filesz: segment.p_filesz,
                    memsz: segment.p_memsz,
                });
            }
        }
        Ok(())
    }

    fn check_note_sections(&self) -> Result<(), BuildError> {
        for (index, section) in self.sections.iter().enumerate() {
            if section.sh_type == SHT_NOTE {
                self.section_range(index)?;
            }
        }
        Ok(())
    }
}

/// Decodes and checks the file header: magic, 64-bit class, little-endian, version 1 in
/// `e_ident` and `e_version`, `ET_EXEC`, x86-64. `bytes` holds the first `have` bytes of a
/// file of `file_len` bytes, zero after them.
fn parse_header(
    bytes: &[u8; EHDR_SIZE],
    have: usize,
    file_len: u64,
) -> Result<FileHeader<LittleEndian>, BuildError> {
    let truncated = BuildError::TruncatedHeader { len: file_len };
    if !bytes[..have].starts_with(&ELFMAGIC) {
        return Err(BuildError::NotElf);
    }
    if have < EI_NIDENT {
        return Err(truncated);
    }
    // `parse_ident` indexes `e_ident` without checking the slice's length (a short one
    // panics: see the tests), so it is always given all 16 bytes.
    let ident = parse_ident::<LittleEndian>(&bytes[..EI_NIDENT]).map_err(|e| match e {
        ParseError::UnsupportedElfClass(class) => BuildError::UnknownClass { class },
        ParseError::UnsupportedElfEndianness(data) => BuildError::NotLittleEndian { data },
        ParseError::UnsupportedVersion((version, _)) => BuildError::UnknownElfVersion {
            version: u32::try_from(version).unwrap_or(u32::MAX),
        },
        _ => BuildError::NotElf,
    })?;
    if ident.1 == Class::ELF32 {
        return Err(BuildError::Elf32);
    }
    if have < EHDR_SIZE {
        return Err(truncated);
    }
    let header = FileHeader::parse_tail(ident, &bytes[EI_NIDENT..]).map_err(|_| truncated)?;
    if header.e_type != ET_EXEC {
        return Err(BuildError::NotExecutable {
            elf_type: header.e_type,
        });
    }
    if header.e_machine != EM_X86_64 {
        return Err(BuildError::WrongMachine {
            machine: header.e_machine,
        });
    }
    if header.version != u32::from(EV_CURRENT) {
        return Err(BuildError::UnknownElfVersion {
            version: header.version,
        });
    }
    Ok(header)
}

/// The entries of a header table, decoded by the `elf` crate, after checking the entry
/// size, that the table lies inside the file and the count ([`MAX_TABLE_ENTRIES`]). An
/// empty table has no entries whatever its offset says. Entries are read one at a time.
fn read_table<I: ImageSource + ?Sized, P: ParseAt>(
    image: &I,
    header: &FileHeader<LittleEndian>,
    table: HeaderTable,
) -> Result<Vec<P>, BuildError> {
    let (offset, entry_size, count) = match table {
        HeaderTable::Program => (header.e_phoff, header.e_phentsize, header.e_phnum),
        HeaderTable::Section => (header.e_shoff, header.e_shentsize, header.e_shnum),
    };
    if count == 0 {
        return Ok(Vec::new());
    }
    let entry_len = usize::from(entry_size);
    if P::validate_entsize(Class::ELF64, entry_len).is_err() || entry_len > MAX_ENTRY_SIZE {
        return Err(BuildError::BadEntrySize {
            table,
            size: entry_size,
        });
    }
    let size = u64::from(count) * u64::from(entry_size);
    let file_len = image.size();
    let out_of_file = BuildError::TableOutOfFile {
        table,
        offset,
        count,
        file_len,
    };
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(out_of_file);
    }
    if usize::from(count) > MAX_TABLE_ENTRIES {
        return Err(BuildError::TooManyEntries { table, count });
    }
    let mut entries = Vec::new();
    entries
        .try_reserve_exact(usize::from(count))
        .map_err(|_| BuildError::OutOfMemory {
            bytes: u64::from(count) * core::mem::size_of::<P>() as u64,
        })?;
    let mut buffer = [0; MAX_ENTRY_SIZE];
    let raw = &mut buffer[..entry_len];
    for at in (offset..offset + size).step_by(entry_len) {
        read_exact(image, at, raw)?;
        entries.push(P::parse_at(LittleEndian, Class::ELF64, &mut 0, raw).map_err(|_| out_of_file)?);
    }
    Ok(entries)
}

/// One ELF note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// The name field (`namesz` bytes, its NUL included).
    pub name: &'a [u8],
    /// The note type.
    pub note_type: u32,
    /// The desc field (`descsz` bytes).
    pub desc: &'a [u8],
}

impl Note<'_> {
    /// Whether the note's name, up to its NUL, is `name`.
    pub fn has_name(&self, name: &[u8]) -> bool {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        &self.name[..end] == name
    }
}

/// The notes packed in a segment's or section's bytes, each name and desc padded to 4
/// bytes. Yields an error (and then stops) at the first note that does not fit.
#[derive(Clone, Debug)]
pub struct Notes<'a> {
    data: &'a [u8],
    /// File offset of `data`, for error messages.
    file_offset: u64,
    position: usize,
    failed: bool,
}

impl<'a> Notes<'a> {
    /// The notes in `data`, which starts at `file_offset` in the file.
    pub const fn new(data: &'a [u8], file_offset: u64) -> Self {
        Self {
            data,
            file_offset,
            position: 0,
            failed: false,
        }
    }

    /// The note at `position` and the position of the next one.
    fn note_at(&self, position: usize) -> Option<(Note<'a>, usize)> {
        let header = self
            .data
            .get(position..)?
            .first_chunk::<NOTE_HEADER_SIZE>()?;
        let name_len = usize::try_from(u32_at(header, 0)).ok()?;
        let desc_len = usize::try_from(u32_at(header, 4)).ok()?;
        let name_start = position + NOTE_HEADER_SIZE;
        let name = self
            .data
            .get(name_start..name_start.checked_add(name_len)?)?;
        let desc_start = name_start.checked_add(align_note(name_len)?)?;
        let desc = self
            .data
            .get(desc_start..desc_start.checked_add(desc_len)?)?;
        let next = desc_start.checked_add(align_note(desc_len)?)?;
        let note = Note {
            name,
            note_type: u32_at(header, 8),
            desc,
        };
        Some((note, next))
    }
}

impl<'a> Iterator for Notes<'a> {
    type Item = Result<Note<'a>, BuildError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.data.len() {
            return None;
        }
        match self.note_at(self.position) {
            Some((note, next)) => {
                self.position = next;
                Some(Ok(note))
            }
            None => {
                self.failed = true;
                Some(Err(BuildError::MalformedNote {
                    offset: self.file_offset.saturating_add(self.position as u64),
                }))
            }
        }
    }
}

/// A note field length rounded up to the note alignment.
fn align_note(len: usize) -> Option<usize> {
    Some(len.checked_add(NOTE_ALIGN - 1)? & !(NOTE_ALIGN - 1))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_image::{note_bytes, TestImage};
    use alloc::vec;

    /// Size of an ELF64 section header.
    const SHDR_SIZE: usize = 64;

    fn parse(bytes: &[u8]) -> Result<ElfFile<'_>, BuildError> {
        ElfFile::parse(bytes)
    }

    #[test]
    fn parses_a_minimal_image() {
        let image = TestImage::minimal();
        let bytes = image.bytes();
        let elf = parse(&bytes).unwrap();
        assert_eq!(elf.entry(), image.entry);
        assert_eq!(elf.segments().len(), 2, "one PT_LOAD and one PT_NOTE");
        let load = elf.segments()[0];
        assert_eq!(load.p_type, PT_LOAD);
        assert!(is_loadable(&load));
        assert_eq!(load.p_memsz, image.segments[0].memsz);
        let range = elf.segment_range(0).unwrap();
        assert_eq!(
            &bytes[range.offset as usize..][..range.size as usize],
            &image.segments[0].data[..]
        );
        assert_eq!(elf.read_notes(range).unwrap(), image.segments[0].data);
        assert_eq!(elf.segments()[1].p_type, PT_NOTE);
        assert!(elf.sections().is_empty());
    }

    #[test]
    fn segments_without_permissions_are_not_loadable() {
        let mut image = TestImage::minimal();
        image.segments[0].flags = 0;
        let bytes = image.bytes();
        assert!(!is_loadable(&parse(&bytes).unwrap().segments()[0]));
    }

    #[test]
    fn refuses_non_elf() {
        assert_eq!(parse(b"").unwrap_err(), BuildError::NotElf);
        assert_eq!(parse(b"\x7fEL").unwrap_err(), BuildError::NotElf);
        assert_eq!(
            parse(b"MZ\x90\x00 not an elf at all").unwrap_err(),
            BuildError::NotElf
        );
    }

    #[test]
    fn refuses_32_bit_and_unknown_classes() {
        let mut image = TestImage::minimal();
        image.class = 1;
        assert_eq!(parse(&image.bytes()).unwrap_err(), BuildError::Elf32);
        image.class = 7;
        assert_eq!(
            parse(&image.bytes()).unwrap_err(),
            BuildError::UnknownClass { class: 7 }
        );
    }

    #[test]
    fn refuses_big_endian() {
        let mut image = TestImage::minimal();
        image.data_encoding = 2;
        assert_eq!(
            parse(&image.bytes()).unwrap_err(),
            BuildError::NotLittleEndian { data: 2 }
        );
    }

    #[test]
    fn refuses_wrong_machine_and_type() {
        let mut image = TestImage::minimal();
        image.machine = 3;
        assert_eq!(
            parse(&image.bytes()).unwrap_err(),
            BuildError::WrongMachine { machine: 3 }
        );
        let mut image = TestImage::minimal();
        image.elf_type = 3;
        assert_eq!(
            parse(&image.bytes()).unwrap_err(),
            BuildError::NotExecutable { elf_type: 3 }
        );
    }

    #[test]
    fn refuses_bad_versions() {
        let mut bytes = TestImage::minimal().bytes();
        bytes[6] = 2;
        assert_eq!(
            parse(&bytes).unwrap_err(),
            BuildError::UnknownElfVersion { version: 2 }
        );
        let mut bytes = TestImage::minimal().bytes();
        bytes[20] = 0;
        assert_eq!(
            parse(&bytes).unwrap_err(),
            BuildError::UnknownElfVersion { version: 0 }
        );
    }

    #[test]
    fn refuses_truncated_headers() {
        let bytes = TestImage::minimal().bytes();
        assert_eq!(
            parse(&bytes[..10]).unwrap_err(),
            BuildError::TruncatedHeader { len: 10 }
        );
        assert_eq!(
            parse(&bytes[..40]).unwrap_err(),
            BuildError::TruncatedHeader { len: 40 }
        );
        assert_eq!(
            parse(&bytes[..100]).unwrap_err(),
            BuildError::TableOutOfFile {
                table: HeaderTable::Program,
                offset: 64,
                count: 2,
                file_len: 100
            }
        );
    }

    #[test]
    fn refuses_bad_entry_sizes() {
        let mut bytes = TestImage::minimal().bytes();
        bytes[54] = 32;
        assert_eq!(
            parse(&bytes).unwrap_err(),
            BuildError::BadEntrySize {
                table: HeaderTable::Program,
                size: 32
            }
        );
    }

    #[test]
    fn refuses_a_huge_table_offset() {
        let mut bytes = TestImage::minimal().bytes();
        bytes[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&bytes).unwrap_err(),
            BuildError::TableOutOfFile {
                table: HeaderTable::Program,
                offset: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn refuses_more_table_entries_than_it_keeps() {
        let mut bytes = TestImage::minimal().bytes();
        // 4097 section headers of 64 bytes, all inside the file (zero bytes at its end).
        let count = MAX_TABLE_ENTRIES as u16 + 1;
        let shoff = bytes.len() as u64;
        bytes.resize(bytes.len() + usize::from(count) * SHDR_SIZE, 0);
        bytes[40..48].copy_from_slice(&shoff.to_le_bytes());
        bytes[58..60].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        bytes[60..62].copy_from_slice(&count.to_le_bytes());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            BuildError::TooManyEntries {
                table: HeaderTable::Section,
                count
            }
        );
        bytes[60..62].copy_from_slice(&(count - 1).to_le_bytes());
        assert_eq!(parse(&bytes).unwrap().sections().len(), MAX_TABLE_ENTRIES);
    }

    #[test]
    fn refuses_note_segments_larger_than_it_reads() {
        let mut image = TestImage::minimal();
        image.segments[0].data = vec![0; MAX_NOTES_BYTES + 1];
        image.segments[0].memsz = image.segments[0].data.len() as u64;
        let bytes = image.bytes();
        let elf = parse(&bytes).unwrap();
        let range = elf.segment_range(0).unwrap();
        assert_eq!(
            elf.read_notes(range).unwrap_err(),
            BuildError::NotesTooLarge {
                offset: range.offset,
                size: MAX_NOTES_BYTES as u64 + 1
            }
        );
    }

    #[test]
    fn refuses_segment_past_file_end() {
        let mut image = TestImage::minimal();
        image.file_size_override = Some((0, 0x10_0000));
        let bytes = image.bytes();
        assert!(matches!(
            parse(&bytes).unwrap_err(),
            BuildError::SegmentOutOfFile {
                index: 0,
                filesz: 0x10_0000,
                ..
            }
        ));
        // An offset that overflows when the size is added.
        let mut image = TestImage::minimal();
        image.offset_override = Some((0, u64::MAX - 4));
        assert!(matches!(
            parse(&image.bytes()).unwrap_err(),
            BuildError::SegmentOutOfFile { index: 0, offset, .. } if offset == u64::MAX - 4
        ));
    }

    #[test]
    fn refuses_more_file_than_memory_bytes() {
        let mut image = TestImage::minimal();
        image.segments[0].memsz = 16;
        assert!(matches!(
            parse(&image.bytes()).unwrap_err(),
            BuildError::SegmentFileExceedsMemory {
                index: 0,
                memsz: 16,
                ..
            }
        ));
    }

    #[test]
    fn refuses_note_section_past_file_end() {
        let mut image = TestImage::minimal();
        image.notes_in_sections = true;
        let mut bytes = image.bytes();
        // The note section header is the last 64 bytes; its size field is at +32.
        let at = bytes.len() - SHDR_SIZE + 32;
        bytes[at..at + 8].copy_from_slice(&0x1_0000u64.to_le_bytes());
        assert!(matches!(
            parse(&bytes).unwrap_err(),
            BuildError::SectionOutOfFile {
                index: 1,
                size: 0x1_0000,
                ..
            }
        ));
    }

    #[test]
    fn iterates_notes_with_padding() {
        let mut data = note_bytes(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        data.extend(note_bytes(b"Xen\0", 6, b"TestOS\0"));
        let notes: Vec<_> = Notes::new(&data, 0).map(Result::unwrap).collect();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].desc, &[1, 2, 3, 4, 5]);
        assert!(notes[0].has_name(b"GNU"));
        assert!(!notes[0].has_name(b"Xen"));
        assert!(notes[1].has_name(b"Xen"));
        assert_eq!(notes[1].note_type, 6);
        assert_eq!(notes[1].desc, b"TestOS\0");
    }

    #[test]
    fn last_note_may_omit_its_padding() {
        let mut data = note_bytes(b"Xen\0", 5, b"xen-3.0\0x");
        data.truncate(data.len() - 3);
        let notes: Vec<_> = Notes::new(&data, 0).collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].unwrap().desc, b"xen-3.0\0x");
    }

    #[test]
    fn malformed_notes_are_errors_and_end_the_iteration() {
        let mut data = note_bytes(b"Xen\0", 6, b"ok\0");
        let good_len = data.len();
        // A second note claiming a desc far larger than what follows.
        data.extend(&4u32.to_le_bytes());
        data.extend(&u32::MAX.to_le_bytes());
        data.extend(&6u32.to_le_bytes());
        data.extend(b"Xen\0");
        let results: Vec<_> = Notes::new(&data, 0x100).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1],
            Err(BuildError::MalformedNote {
                offset: 0x100 + good_len as u64
            })
        );
        // A note header cut short.
        let stub = vec![4, 0, 0, 0, 0];
        assert_eq!(
            Notes::new(&stub, 0).collect::<Vec<_>>(),
            vec![Err(BuildError::MalformedNote { offset: 0 })]
        );
    }

    /// Why the notes are walked by [`Notes`] and not by the `elf` crate's `NoteIterator`.
    #[test]
    fn the_elf_crates_note_iterator_hides_bad_notes() {
        use ::elf::abi::NT_GNU_ABI_TAG;
        use ::elf::note::NoteIterator;
        let theirs = |data: &[u8]| NoteIterator::new(LittleEndian, Class::ELF64, NOTE_ALIGN, data).count();
        // A note whose desc runs past the end: `NoteIterator` just stops, as at the end of
        // good notes, where the builder must refuse the image.
        let mut data = note_bytes(b"Xen\0", 6, b"ok\0");
        let good = data.clone();
        data.extend(&4u32.to_le_bytes());
        data.extend(&64u32.to_le_bytes());
        data.extend(&6u32.to_le_bytes());
        data.extend(b"Xen\0");
        assert_eq!(theirs(&data), theirs(&good));
        assert!(Notes::new(&data, 0).any(|note| note.is_err()));
        // A GNU ABI-tag note with a 4-byte desc (the crate expects 16) ends its iteration:
        // the Xen note after it is never seen.
        let mut data = note_bytes(b"GNU\0", u32::try_from(NT_GNU_ABI_TAG).unwrap(), &[0; 4]);
        data.extend(note_bytes(b"Xen\0", 6, b"linux\0"));
        assert_eq!(theirs(&data), 0);
        let ours: Vec<_> = Notes::new(&data, 0).collect::<Result<_, _>>().unwrap();
        assert!(ours[1].has_name(b"Xen"));
    }

    /// Why `parse_header` gives `parse_ident` a whole `e_ident` even for a short file.
    #[test]
    fn the_elf_crates_ident_parser_panics_on_a_short_slice() {
        let short = std::panic::catch_unwind(|| parse_ident::<LittleEndian>(b"\x7fELF\x02"));
        assert!(short.is_err(), "parse_ident checks the slice's length now");
        for len in 0..=EI_NIDENT {
            let bytes = &TestImage::minimal().bytes()[..len];
            let expected = if len < ELFMAGIC.len() {
                BuildError::NotElf
            } else {
                BuildError::TruncatedHeader { len: len as u64 }
            };
            assert_eq!(parse(bytes).unwrap_err(), expected);
        }
    }

    #[test]
    fn every_prefix_and_corruption_is_handled_without_panicking() {
        let bytes = TestImage::minimal().bytes();
        for len in 0..bytes.len() {
            let _ = parse(&bytes[..len]).map(|elf| elf.segments().len());
        }
        let mut state = 0x1234_5678_u32;
        for _ in 0..4000 {
            let mut corrupt = bytes.clone();
            for _ in 0..4 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (state >> 8) as usize % corrupt.len();
                corrupt[at] = (state >> 24) as u8;
            }
            if let Ok(elf) = parse(&corrupt) {
                for index in 0..elf.segments().len() {
                    if let Ok(data) = elf.segment_range(index).and_then(|r| elf.read_notes(r)) {
                        let _ = Notes::new(&data, 0).count();
                    }
                }
            }
        }
    }
}

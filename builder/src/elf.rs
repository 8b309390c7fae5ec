//! A small, strictly bounds-checked ELF64 reader: the file header, the program and
//! section header tables, and an iterator over the notes of a segment or section.
//!
//! The Xen-note collector and the kernel-image checks call it with a boot module, which
//! may be hostile, read through an [`ImageSource`] (never as one slice: a module may be
//! larger than anything the hypervisor maps at once). Every offset and size read from the
//! file is checked (overflow and end of file) before use, what it keeps is bounded
//! ([`MAX_TABLE_ENTRIES`], [`MAX_NOTES_BYTES`]), and every failure is a typed [`BuildError`]. It accepts
//! only what a Xen PV64 kernel is: 64-bit, little-endian, x86-64, `ET_EXEC`. It must never
//! panic on any input, and never interpret Xen notes (that is `xen_notes`' job).

use alloc::vec::Vec;

use crate::error::{BuildError, HeaderTable};
use crate::image::{read_exact, read_to_vec, ImageSource};

/// `\x7fELF`.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Size of `e_ident`.
const EI_NIDENT: usize = 16;
/// `e_ident[EI_CLASS]` of a 32-bit file.
const ELFCLASS32: u8 = 1;
/// `e_ident[EI_CLASS]` of a 64-bit file.
const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]` of a little-endian file.
const ELFDATA2LSB: u8 = 1;
/// The only ELF version (`EV_CURRENT`).
const EV_CURRENT: u32 = 1;
/// `e_type` of an executable.
const ET_EXEC: u16 = 2;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;

/// Size of the ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;
/// Size of an ELF64 section header.
const SHDR_SIZE: usize = 64;
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

/// Program header type of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// Program header type of a note segment.
pub const PT_NOTE: u32 = 4;
/// Section header type of a note section.
pub const SHT_NOTE: u32 = 7;
/// Segment permission bits (`PF_X | PF_W | PF_R`).
pub const PF_RWX: u32 = 0b111;

/// One ELF64 program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

impl ProgramHeader {
    fn decode(raw: &[u8; PHDR_SIZE]) -> Self {
        Self {
            p_type: u32_at(raw, 0),
            flags: u32_at(raw, 4),
            offset: u64_at(raw, 8),
            vaddr: u64_at(raw, 16),
            paddr: u64_at(raw, 24),
            filesz: u64_at(raw, 32),
            memsz: u64_at(raw, 40),
            align: u64_at(raw, 48),
        }
    }

    /// Whether the segment is loaded: `PT_LOAD` with some permission (as Xen's libelf
    /// decides).
    pub const fn is_loadable(&self) -> bool {
        self.p_type == PT_LOAD && self.flags & PF_RWX != 0
    }

    /// Whether the segment's file bytes must lie inside the file.
    const fn has_file_bytes(&self) -> bool {
        self.p_type == PT_LOAD || self.p_type == PT_NOTE
    }
}

/// The fields of an ELF64 section header that the builder uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    pub sh_type: u32,
    pub offset: u64,
    pub size: u64,
}

impl SectionHeader {
    fn decode(raw: &[u8; SHDR_SIZE]) -> Self {
        Self {
            sh_type: u32_at(raw, 4),
            offset: u64_at(raw, 24),
            size: u64_at(raw, 32),
        }
    }
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
        let mut header = [0; EHDR_SIZE];
        let have = usize::try_from(file_len.min(EHDR_SIZE as u64)).unwrap_or(EHDR_SIZE);
        read_exact(image, 0, &mut header[..have])?;
        check_ident(&header[..have])?;
        if have < EHDR_SIZE {
            return Err(BuildError::TruncatedHeader { len: file_len });
        }
        check_header(&header)?;
        let file = Self {
            image,
            entry: u64_at(&header, 24),
            segments: read_table(image, &header, HeaderTable::Program, ProgramHeader::decode)?,
            sections: read_table(image, &header, HeaderTable::Section, SectionHeader::decode)?,
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
            .map_or((0, 0), |segment| (segment.offset, segment.filesz));
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
            .map_or((0, 0), |section| (section.offset, section.size));
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
            if !segment.has_file_bytes() {
                continue;
            }
            self.segment_range(index)?;
            if segment.p_type == PT_LOAD && segment.filesz > segment.memsz {
                return Err(BuildError::SegmentFileExceedsMemory {
                    index,
                    filesz: segment.filesz,
                    memsz: segment.memsz,
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

/// Checks `e_ident`: magic, 64-bit class, little-endian, version 1 (`bytes`: the first
/// bytes of the file, up to 64).
fn check_ident(bytes: &[u8]) -> Result<(), BuildError> {
    if bytes.get(..ELF_MAGIC.len()) != Some(&ELF_MAGIC[..]) {
        return Err(BuildError::NotElf);
    }
    let ident = bytes
        .first_chunk::<EI_NIDENT>()
        .ok_or(BuildError::TruncatedHeader {
            len: bytes.len() as u64,
        })?;
    match ident[4] {
        ELFCLASS64 => {}
        ELFCLASS32 => return Err(BuildError::Elf32),
        class => return Err(BuildError::UnknownClass { class }),
    }
    if ident[5] != ELFDATA2LSB {
        return Err(BuildError::NotLittleEndian { data: ident[5] });
    }
    if u32::from(ident[6]) != EV_CURRENT {
        return Err(BuildError::UnknownElfVersion {
            version: ident[6].into(),
        });
    }
    Ok(())
}

/// Checks `e_type`, `e_machine` and `e_version`.
fn check_header(header: &[u8; EHDR_SIZE]) -> Result<(), BuildError> {
    let elf_type = u16_at(header, 16);
    if elf_type != ET_EXEC {
        return Err(BuildError::NotExecutable { elf_type });
    }
    let machine = u16_at(header, 18);
    if machine != EM_X86_64 {
        return Err(BuildError::WrongMachine { machine });
    }
    let version = u32_at(header, 20);
    if version != EV_CURRENT {
        return Err(BuildError::UnknownElfVersion { version });
    }
    Ok(())
}

/// The entries of a header table, decoded, after checking the entry size, the count
/// ([`MAX_TABLE_ENTRIES`]) and that the table lies inside the file. An empty table has no
/// entries whatever its offset says. Entries are read one at a time.
fn read_table<I: ImageSource + ?Sized, T, const N: usize>(
    image: &I,
    header: &[u8; EHDR_SIZE],
    table: HeaderTable,
    decode: fn(&[u8; N]) -> T,
) -> Result<Vec<T>, BuildError> {
    let (offset, entry_size, count) = match table {
        HeaderTable::Program => (u64_at(header, 32), u16_at(header, 54), u16_at(header, 56)),
        HeaderTable::Section => (u64_at(header, 40), u16_at(header, 58), u16_at(header, 60)),
    };
    if count == 0 {
        return Ok(Vec::new());
    }
    if usize::from(entry_size) != N {
        return Err(BuildError::BadEntrySize {
            table,
            size: entry_size,
        });
    }
    let size = u64::from(count) * N as u64;
    let file_len = image.size();
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(BuildError::TableOutOfFile {
            table,
            offset,
            count,
            file_len,
        });
    }
    if usize::from(count) > MAX_TABLE_ENTRIES {
        return Err(BuildError::TooManyEntries { table, count });
    }
    let mut entries = Vec::with_capacity(usize::from(count));
    let mut raw = [0; N];
    for at in (offset..offset + size).step_by(N) {
        read_exact(image, at, &mut raw)?;
        entries.push(decode(&raw));
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

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_image::{note_bytes, TestImage};
    use alloc::vec;

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
        assert!(load.is_loadable());
        assert_eq!(load.memsz, image.segments[0].memsz);
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
        assert!(!parse(&bytes).unwrap().segments()[0].is_loadable());
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

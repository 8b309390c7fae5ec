//! Test-only assembler of tiny ELF64 images: a header, PT_LOAD segments and Xen notes in a
//! PT_NOTE segment or an SHT_NOTE section, with knobs to break each part.
//!
//! Every module's tests build their inputs with it. It must never be compiled outside
//! tests.

use alloc::vec;
use alloc::vec::Vec;

use abi::elfnote::ElfNote;

/// `VIRT_BASE` of the minimal image (Linux's).
pub const VIRT_BASE: u64 = 0xFFFF_FFFF_8000_0000;

/// One PT_LOAD segment.
#[derive(Clone, Debug)]
pub struct TestSegment {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    pub flags: u32,
}

impl TestSegment {
    /// A readable, executable segment at `paddr`.
    pub fn new(paddr: u64, data: Vec<u8>, memsz: u64) -> Self {
        Self {
            paddr,
            data,
            memsz,
            flags: 0b101,
        }
    }
}

/// An image under construction.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub class: u8,
    pub data_encoding: u8,
    pub machine: u16,
    pub elf_type: u16,
    /// `e_entry`.
    pub entry: u64,
    pub segments: Vec<TestSegment>,
    /// (name with NUL, type, desc) of every note, in order.
    pub notes: Vec<(Vec<u8>, u32, Vec<u8>)>,
    /// Put the notes in an SHT_NOTE section instead of a PT_NOTE segment.
    pub notes_in_sections: bool,
    /// Replace segment n's `p_filesz` in the header.
    pub file_size_override: Option<(usize, u64)>,
    /// Replace segment n's `p_offset` in the header.
    pub offset_override: Option<(usize, u64)>,
}

impl TestImage {
    /// A valid Xen PV64 image: one 16 KiB segment at `VIRT_BASE` holding 10 KiB of file
    /// bytes (the rest is bss), entry at +0x40, hypercall page at +0x1000.
    pub fn minimal() -> Self {
        let data = (0..0x2800u32).map(|i| (i % 251) as u8 + 1).collect();
        Self {
            class: 2,
            data_encoding: 1,
            machine: 62,
            elf_type: 2,
            entry: VIRT_BASE + 0x80,
            segments: vec![TestSegment::new(0, data, 0x4000)],
            notes: Vec::new(),
            notes_in_sections: false,
            file_size_override: None,
            offset_override: None,
        }
        .with_note(ElfNote::GuestOs, b"TestOS\0")
        .with_note(ElfNote::XenVersion, b"xen-3.0\0")
        .with_note(ElfNote::Loader, b"generic\0")
        .with_note(ElfNote::VirtBase, &VIRT_BASE.to_le_bytes())
        .with_note(ElfNote::Entry, &(VIRT_BASE + 0x40).to_le_bytes())
        .with_note(ElfNote::HypercallPage, &(VIRT_BASE + 0x1000).to_le_bytes())
        .with_note(ElfNote::Features, b"writable_descriptor_tables\0")
    }

    /// Sets the Xen note of type `note` (replacing any earlier one).
    pub fn with_note(self, note: ElfNote, desc: &[u8]) -> Self {
        let mut image = self.without_note(note);
        image
            .notes
            .push((b"Xen\0".to_vec(), note.raw(), desc.to_vec()));
        image
    }

    /// Removes the Xen note of type `note`.
    pub fn without_note(mut self, note: ElfNote) -> Self {
        self.notes
            .retain(|(name, kind, _)| !(name == b"Xen\0" && *kind == note.raw()));
        self
    }

    /// The file.
    pub fn bytes(&self) -> Vec<u8> {
        let note_blob: Vec<u8> = self
            .notes
            .iter()
            .flat_map(|(name, kind, desc)| note_bytes(name, *kind, desc))
            .collect();
        let note_segment = !self.notes_in_sections && !self.notes.is_empty();
        let phnum = self.segments.len() + usize::from(note_segment);
        let mut file = vec![0u8; 64 + phnum * 56];
        let notes_offset = file.len();
        file.extend(&note_blob);
        let mut offsets = Vec::new();
        for segment in &self.segments {
            file.resize(file.len().next_multiple_of(16), 0);
            offsets.push(file.len() as u64);
            file.extend(&segment.data);
        }
        let mut shnum = 0;
        let mut shoff = 0;
        if self.notes_in_sections {
            file.resize(file.len().next_multiple_of(8), 0);
            shoff = file.len() as u64;
            shnum = 2;
            file.extend([0u8; 64]);
            file.extend(section_header(
                7,
                notes_offset as u64,
                note_blob.len() as u64,
            ));
        }
        self.write_header(&mut file, phnum as u16, shoff, shnum);
        for (index, segment) in self.segments.iter().enumerate() {
            let filesz = match self.file_size_override {
                Some((n, value)) if n == index => value,
                _ => segment.data.len() as u64,
            };
            let offset = match self.offset_override {
                Some((n, value)) if n == index => value,
                _ => offsets[index],
            };
            let header = program_header(
                1,
                segment.flags,
                offset,
                segment.paddr,
                filesz,
                segment.memsz,
            );
            file[64 + index * 56..][..56].copy_from_slice(&header);
        }
        if note_segment {
            let size = note_blob.len() as u64;
            let header = program_header(4, 4, notes_offset as u64, 0, size, size);
            file[64 + self.segments.len() * 56..][..56].copy_from_slice(&header);
        }
        file
    }

    fn write_header(&self, file: &mut [u8], phnum: u16, shoff: u64, shnum: u16) {
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = self.class;
        file[5] = self.data_encoding;
        file[6] = 1;
        file[16..18].copy_from_slice(&self.elf_type.to_le_bytes());
        file[18..20].copy_from_slice(&self.machine.to_le_bytes());
        file[20..24].copy_from_slice(&1u32.to_le_bytes());
        file[24..32].copy_from_slice(&self.entry.to_le_bytes());
        file[32..40].copy_from_slice(&64u64.to_le_bytes());
        file[40..48].copy_from_slice(&shoff.to_le_bytes());
        file[52..54].copy_from_slice(&64u16.to_le_bytes());
        file[54..56].copy_from_slice(&56u16.to_le_bytes());
        file[56..58].copy_from_slice(&phnum.to_le_bytes());
        file[58..60].copy_from_slice(&64u16.to_le_bytes());
        file[60..62].copy_from_slice(&shnum.to_le_bytes());
    }
}

/// One note: header, name and desc, each padded to 4 bytes.
pub fn note_bytes(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend((name.len() as u32).to_le_bytes());
    note.extend((desc.len() as u32).to_le_bytes());
    note.extend(kind.to_le_bytes());
    note.extend(name);
    note.resize(note.len().next_multiple_of(4), 0);
    note.extend(desc);
    note.resize(note.len().next_multiple_of(4), 0);
    note
}

fn program_header(
    kind: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
) -> [u8; 56] {
    let mut header = [0u8; 56];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    header[4..8].copy_from_slice(&flags.to_le_bytes());
    header[8..16].copy_from_slice(&offset.to_le_bytes());
    // p_vaddr: deliberately unrelated to p_paddr, which is what the builder loads by.
    header[16..24].copy_from_slice(&(paddr ^ 0x5555_0000).to_le_bytes());
    header[24..32].copy_from_slice(&paddr.to_le_bytes());
    header[32..40].copy_from_slice(&filesz.to_le_bytes());
    header[40..48].copy_from_slice(&memsz.to_le_bytes());
    header[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    header
}

fn section_header(kind: u32, offset: u64, size: u64) -> [u8; 64] {
    let mut header = [0u8; 64];
    header[4..8].copy_from_slice(&kind.to_le_bytes());
    header[24..32].copy_from_slice(&offset.to_le_bytes());
    header[32..40].copy_from_slice(&size.to_le_bytes());
    header[48..56].copy_from_slice(&4u64.to_le_bytes());
    header
}

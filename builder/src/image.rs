//! The bytes of a kernel image as the builder reads them: [`ImageSource`], a source of
//! byte ranges, never one slice of the whole image.
//!
//! The ELF reader, the note collector and the segment copy all read through it, so that an
//! image need not be mapped whole anywhere: the hypervisor implements it over a boot module
//! in machine memory, read through short-lived mappings of a page or two at a time; host
//! tests use a byte slice (`[u8]` and `Vec<u8>` implement it). A source that is a stream,
//! such as a decompressor, can implement it too: the builder reads the ELF header and its
//! header tables first, then the note segments (or sections), and copies the loadable
//! segments last, in increasing file offset, each front to back, in reads of at most
//! [`MAX_READ`] bytes. This module must never hold image bytes itself.

use alloc::vec::Vec;

use crate::error::BuildError;

/// The most bytes the builder asks of a source in one read.
pub const MAX_READ: usize = 4096;

/// A kernel image: its size and its bytes, range by range.
pub trait ImageSource {
    /// The image's size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the image's bytes at `offset..offset + buf.len()`. A range that
    /// does not lie inside the image, or bytes the source cannot produce (a corrupt
    /// compressed stream), give an error and leave `buf` unspecified.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

/// A read the source could not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError {
    /// The first byte asked for.
    pub offset: u64,
    /// How many bytes were asked for.
    pub len: u64,
}

impl From<ReadError> for BuildError {
    fn from(e: ReadError) -> Self {
        BuildError::ImageRead {
            offset: e.offset,
            len: e.len,
        }
    }
}

impl ImageSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let error = ReadError {
            offset,
            len: buf.len() as u64,
        };
        let start = usize::try_from(offset).map_err(|_| error)?;
        let end = start.checked_add(buf.len()).ok_or(error)?;
        buf.copy_from_slice(self.get(start..end).ok_or(error)?);
        Ok(())
    }
}

impl ImageSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.as_slice().read(offset, buf)
    }
}

impl<const N: usize> ImageSource for [u8; N] {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.as_slice().read(offset, buf)
    }
}

/// Reads `buf.len()` bytes at `offset` in reads of at most [`MAX_READ`] bytes.
pub(crate) fn read_exact<I: ImageSource + ?Sized>(
    image: &I,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), BuildError> {
    let mut at = offset;
    for chunk in buf.chunks_mut(MAX_READ) {
        image.read(at, chunk)?;
        at += chunk.len() as u64;
    }
    Ok(())
}

/// `size` bytes at `offset` in a new vector; `size` is bounded by the caller, and the
/// allocation is tried rather than assumed (the hypervisor's heap is small).
pub(crate) fn read_to_vec<I: ImageSource + ?Sized>(
    image: &I,
    offset: u64,
    size: usize,
) -> Result<Vec<u8>, BuildError> {
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(size)
        .map_err(|_| BuildError::OutOfMemory { bytes: size as u64 })?;
    bytes.resize(size, 0);
    read_exact(image, offset, &mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::cell::{Cell, RefCell};

    /// A source over `bytes` that records its reads and refuses reads longer than
    /// [`MAX_READ`], as a stream with a small buffer would.
    pub struct RecordingImage {
        pub bytes: Vec<u8>,
        pub reads: RefCell<Vec<(u64, u64)>>,
        pub bytes_read: Cell<u64>,
    }

    impl RecordingImage {
        pub fn new(bytes: Vec<u8>) -> Self {
            Self {
                bytes,
                reads: RefCell::new(Vec::new()),
                bytes_read: Cell::new(0),
            }
        }
    }

    impl ImageSource for RecordingImage {
        fn size(&self) -> u64 {
            self.bytes.size()
        }

        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            assert!(buf.len() <= MAX_READ, "a read of {} bytes", buf.len());
            self.reads.borrow_mut().push((offset, buf.len() as u64));
            self.bytes_read.set(self.bytes_read.get() + buf.len() as u64);
            self.bytes.read(offset, buf)
        }
    }

    #[test]
    fn slices_serve_ranges_inside_them_only() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut buf = [0; 4];
        bytes.read(10, &mut buf).unwrap();
        assert_eq!(buf, [10, 11, 12, 13]);
        bytes.read(252, &mut buf).unwrap();
        assert_eq!(
            bytes.read(253, &mut buf),
            Err(ReadError {
                offset: 253,
                len: 4
            })
        );
        assert!(bytes.read(u64::MAX - 1, &mut buf).is_err());
        assert!(bytes.read(0, &mut []).is_ok());
        assert_eq!(bytes.size(), 256);
    }

    #[test]
    fn long_reads_are_cut_into_pieces() {
        let image = RecordingImage::new((0..3 * MAX_READ + 5).map(|i| i as u8).collect());
        let got = read_to_vec(&image, 3, 2 * MAX_READ + 1).unwrap();
        assert_eq!(got, image.bytes[3..3 + 2 * MAX_READ + 1]);
        assert_eq!(
            *image.reads.borrow(),
            [
                (3, MAX_READ as u64),
                (3 + MAX_READ as u64, MAX_READ as u64),
                (3 + 2 * MAX_READ as u64, 1)
            ]
        );
    }
}

//! Console output over the `console_io` write hypercall: the [`print!`](crate::print) and
//! [`println!`](crate::println) macros, a line buffer that batches bytes into few
//! hypercalls, and a [`Bytes`] adaptor that prints raw bytes (a command line) readably.
//!
//! Every `print!` formats into its own buffer on the stack and flushes it at each newline,
//! when full, and at the end of the call, so nothing is shared: a trap handler or a panic
//! may print in the middle of another print without locks. Write errors are dropped,
//! there being no other channel to report them on. This module must never block or
//! allocate.

use core::fmt;

use crate::hypercall;

/// Bytes a [`LineWriter`] holds before it must flush.
pub const LINE_CAPACITY: usize = 128;

/// Where a [`LineWriter`] sends its chunks.
pub trait Sink {
    /// Outputs `bytes` (never empty).
    fn write(&mut self, bytes: &[u8]);
}

/// The hypervisor console.
#[derive(Clone, Copy, Debug, Default)]
pub struct HypervisorConsole;

impl Sink for HypervisorConsole {
    fn write(&mut self, bytes: &[u8]) {
        let _ = hypercall::console_write(bytes);
    }
}

/// A line buffer in front of a [`Sink`]: flushes after each newline, when full, and when
/// dropped.
pub struct LineWriter<S: Sink> {
    sink: S,
    buf: [u8; LINE_CAPACITY],
    len: usize,
}

impl<S: Sink> LineWriter<S> {
    /// An empty buffer in front of `sink`.
    pub const fn new(sink: S) -> Self {
        Self {
            sink,
            buf: [0; LINE_CAPACITY],
            len: 0,
        }
    }

    /// Buffers `bytes`, flushing as lines complete or the buffer fills.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.buf[self.len] = byte;
            self.len += 1;
            if byte == b'\n' || self.len == LINE_CAPACITY {
                self.flush();
            }
        }
    }

    /// Sends whatever is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            self.sink.write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<S: Sink> fmt::Write for LineWriter<S> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}

impl<S: Sink> Drop for LineWriter<S> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes `bytes` to the console unbuffered (one hypercall), for paths that must not
/// format: early start-up and nested panics.
pub fn write_bytes(bytes: &[u8]) {
    HypervisorConsole.write(bytes);
}

/// The implementation of [`print!`](crate::print) and [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut writer = LineWriter::new(HypervisorConsole);
    let _ = fmt::write(&mut writer, args);
}

/// Prints to the hypervisor console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints to the hypervisor console, with a newline.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// Displays bytes as text: printable ASCII as itself, a backslash as `\\`, anything else
/// as `\xNN`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        loop {
            let plain = rest
                .iter()
                .position(|&b| !is_plain(b))
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(plain);
            // Plain bytes are ASCII, hence UTF-8.
            f.write_str(core::str::from_utf8(run).map_err(|_| fmt::Error)?)?;
            let Some((&byte, tail)) = tail.split_first() else {
                return Ok(());
            };
            match byte {
                b'\\' => f.write_str("\\\\")?,
                _ => write!(f, "\\x{byte:02x}")?,
            }
            rest = tail;
        }
    }
}

/// Whether a byte prints as itself.
fn is_plain(byte: u8) -> bool {
    matches!(byte, b' '..=b'~') && byte != b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    /// Records each chunk it is given.
    #[derive(Default)]
    struct Recorder {
        chunks: Vec<Vec<u8>>,
    }

    impl Sink for &mut Recorder {
        fn write(&mut self, bytes: &[u8]) {
            assert!(!bytes.is_empty(), "sinks never get empty writes");
            self.chunks.push(bytes.to_vec());
        }
    }

    fn chunks_of(write: impl FnOnce(&mut LineWriter<&mut Recorder>)) -> Vec<String> {
        let mut recorder = Recorder::default();
        let mut writer = LineWriter::new(&mut recorder);
        write(&mut writer);
        drop(writer);
        recorder
            .chunks
            .iter()
            .map(|c| String::from_utf8(c.clone()).unwrap())
            .collect()
    }

    #[test]
    fn each_line_is_one_write() {
        let chunks = chunks_of(|w| {
            w.write_bytes(b"hello ");
            w.write_bytes(b"world\nsecond");
            w.write_bytes(b" line\n");
        });
        assert_eq!(chunks, ["hello world\n", "second line\n"]);
    }

    #[test]
    fn unterminated_text_is_flushed_on_drop() {
        assert_eq!(chunks_of(|w| w.write_bytes(b"no newline")), ["no newline"]);
        assert!(
            chunks_of(|_| {}).is_empty(),
            "nothing written, nothing sent"
        );
    }

    #[test]
    fn long_lines_are_split_at_capacity() {
        let long = [b'x'; 2 * LINE_CAPACITY + 5];
        let chunks = chunks_of(|w| w.write_bytes(&long));
        let lens: Vec<usize> = chunks.iter().map(String::len).collect();
        assert_eq!(lens, [LINE_CAPACITY, LINE_CAPACITY, 5]);
    }

    #[test]
    fn a_newline_in_the_last_slot_flushes_once() {
        let mut line = [b'y'; LINE_CAPACITY];
        line[LINE_CAPACITY - 1] = b'\n';
        let chunks = chunks_of(|w| w.write_bytes(&line));
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), LINE_CAPACITY);
    }

    #[test]
    fn formatting_goes_through_the_buffer() {
        use core::fmt::Write;
        let chunks = chunks_of(|w| write!(w, "n={} hex={:#x}\nend", 42, 255).unwrap());
        assert_eq!(chunks, ["n=42 hex=0xff\n", "end"]);
    }

    #[test]
    fn bytes_escape_what_does_not_print() {
        assert_eq!(
            format!("{}", Bytes(b"console=hvc0 quiet")),
            "console=hvc0 quiet"
        );
        assert_eq!(format!("{}", Bytes(b"a\nb\0c")), "a\\x0ab\\x00c");
        assert_eq!(format!("{}", Bytes(b"\xff\x80~")), "\\xff\\x80~");
        assert_eq!(
            format!("{}", Bytes(b"C:\\x")),
            "C:\\\\x",
            "backslashes stay unambiguous"
        );
        assert_eq!(format!("{}", Bytes(b"")), "");
    }
}

//! The PV start-of-day page (`struct start_info`, xen.h): what the domain builder tells a
//! new PV guest, whose virtual address the guest finds in rsi at entry.
//!
//! The hypervisor's domain builder fills one per domain; our guests read it. The `SIF_*`
//! flags here also apply to the PVH start info ([`crate::pvh`]). This module only
//! describes the page: it must never decide where the builder places things.

use crate::ids::{EvtchnPort, Mfn};
use crate::macros::assert_layout;

/// The magic a 64-bit PV guest expects at the start of the page (`xen-<version>-<platform>`).
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";
/// Size of the command line buffer, NUL terminator included (`MAX_GUEST_CMDLINE`).
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `SIF_PRIVILEGED`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN`: this is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `SIF_MULTIBOOT_MOD`: `mod_start` is a multiboot module package.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `SIF_MOD_START_PFN`: `mod_start` is a PFN rather than a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `SIF_VIRT_P2M_4TOOLS`: the tools understand a virtually mapped P2M.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `SIF_PM_MASK`: one byte reserved for power-management options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;

/// The start-of-day page of a 64-bit PV guest (xen.h `struct start_info`, 1168 bytes).
/// Addresses are guest virtual unless the field says machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct StartInfo {
    /// "xen-3.0-x86_64", NUL padded.
    pub magic: [u8; 32],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    pub _pad0: u32,
    /// Machine frame of the xenstore ring.
    pub store_mfn: Mfn,
    /// Event channel of the xenstore ring.
    pub store_evtchn: EvtchnPort,
    pub _pad1: u32,
    /// Console union, domU view: machine frame of the console ring. In the dom0 view the
    /// same 8 bytes are `info_off`, `info_size` (see [`StartInfo::dom0_console_info`]).
    pub console_mfn: u64,
    /// Console union, domU view: event channel of the console ring.
    pub console_evtchn: EvtchnPort,
    pub _pad2: u32,
    /// Virtual address of the top-level boot page table.
    pub pt_base: u64,
    /// Number of boot page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the P2M array (one `u64` machine frame per guest page).
    pub mfn_list: u64,
    /// Virtual address (or PFN, with `SIF_MOD_START_PFN`) of the initial module.
    pub mod_start: u64,
    /// Size of the initial module in bytes.
    pub mod_len: u64,
    /// NUL-terminated command line.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First PFN of the initial P2M table's frames (page tables included).
    pub first_p2m_pfn: u64,
    /// Number of frames forming the initial P2M table.
    pub nr_p2m_frames: u64,
}

assert_layout!(StartInfo, size = 1168, {
    magic @ 0, nr_pages @ 32, shared_info @ 40, flags @ 48, store_mfn @ 56,
    store_evtchn @ 64, console_mfn @ 72, console_evtchn @ 80, pt_base @ 88,
    nr_pt_frames @ 96, mfn_list @ 104, mod_start @ 112, mod_len @ 120, cmd_line @ 128,
    first_p2m_pfn @ 1152, nr_p2m_frames @ 1160,
});

/// The command line did not fit in [`MAX_GUEST_CMDLINE`] bytes with its terminator, or
/// contained a NUL byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdLineError {
    /// Longer than `MAX_GUEST_CMDLINE - 1` bytes.
    TooLong { len: usize },
    /// Holds a NUL byte, which would cut it short.
    ContainsNul { at: usize },
}

impl Default for StartInfo {
    /// All zero: no magic, no flags, empty command line.
    fn default() -> Self {
        Self {
            magic: [0; 32],
            nr_pages: 0,
            shared_info: 0,
            flags: 0,
            _pad0: 0,
            store_mfn: Mfn(0),
            store_evtchn: EvtchnPort(0),
            _pad1: 0,
            console_mfn: 0,
            console_evtchn: EvtchnPort(0),
            _pad2: 0,
            pt_base: 0,
            nr_pt_frames: 0,
            mfn_list: 0,
            mod_start: 0,
            mod_len: 0,
            cmd_line: [0; MAX_GUEST_CMDLINE],
            first_p2m_pfn: 0,
            nr_p2m_frames: 0,
        }
    }
}

impl StartInfo {
    /// A zeroed page carrying the x86-64 PV magic.
    pub fn new() -> Self {
        let mut info = Self::default();
        info.magic[..START_INFO_MAGIC.len()].copy_from_slice(START_INFO_MAGIC);
        info
    }

    /// The magic up to its first NUL.
    pub fn magic(&self) -> &[u8] {
        until_nul(&self.magic)
    }

    /// Whether the magic is the x86-64 PV one.
    pub fn has_valid_magic(&self) -> bool {
        self.magic() == START_INFO_MAGIC
    }

    /// The command line up to its first NUL (all 1024 bytes if there is none).
    pub fn cmd_line(&self) -> &[u8] {
        until_nul(&self.cmd_line)
    }

    /// Stores `line` NUL-terminated, zeroing the rest of the buffer.
    pub fn set_cmd_line(&mut self, line: &[u8]) -> Result<(), CmdLineError> {
        if let Some(at) = line.iter().position(|&b| b == 0) {
            return Err(CmdLineError::ContainsNul { at });
        }
        if line.len() >= MAX_GUEST_CMDLINE {
            return Err(CmdLineError::TooLong { len: line.len() });
        }
        self.cmd_line = [0; MAX_GUEST_CMDLINE];
        self.cmd_line[..line.len()].copy_from_slice(line);
        Ok(())
    }

    /// The console union's dom0 view: (`info_off`, `info_size`) of the
    /// `dom0_vga_console_info` within this page.
    pub fn dom0_console_info(&self) -> (u32, u32) {
        (self.console_mfn as u32, (self.console_mfn >> 32) as u32)
    }

    /// Sets the console union's dom0 view (see [`StartInfo::dom0_console_info`]).
    pub fn set_dom0_console_info(&mut self, info_off: u32, info_size: u32) {
        self.console_mfn = u64::from(info_off) | u64::from(info_size) << 32;
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_carries_magic_and_default_does_not() {
        assert!(StartInfo::new().has_valid_magic());
        assert_eq!(StartInfo::new().magic(), b"xen-3.0-x86_64");
        assert!(!StartInfo::default().has_valid_magic());
    }

    #[test]
    fn magic_with_trailing_garbage_is_invalid() {
        let mut info = StartInfo::new();
        info.magic[14] = b'x';
        assert!(!info.has_valid_magic());
    }

    #[test]
    fn cmd_line_round_trips_and_clears_old_text() {
        let mut info = StartInfo::new();
        info.set_cmd_line(b"console=hvc0 loglevel=8").unwrap();
        info.set_cmd_line(b"quiet").unwrap();
        assert_eq!(info.cmd_line(), b"quiet");
        assert!(info.cmd_line[5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn cmd_line_limits() {
        let mut info = StartInfo::new();
        let longest = [b'a'; MAX_GUEST_CMDLINE - 1];
        assert_eq!(info.set_cmd_line(&longest), Ok(()));
        assert_eq!(info.cmd_line().len(), MAX_GUEST_CMDLINE - 1);
        let too_long = [b'a'; MAX_GUEST_CMDLINE];
        assert_eq!(
            info.set_cmd_line(&too_long),
            Err(CmdLineError::TooLong {
                len: MAX_GUEST_CMDLINE
            })
        );
        assert_eq!(
            info.set_cmd_line(b"a\0b"),
            Err(CmdLineError::ContainsNul { at: 1 })
        );
        assert_eq!(
            info.cmd_line().len(),
            MAX_GUEST_CMDLINE - 1,
            "failed sets change nothing"
        );
    }

    #[test]
    fn unterminated_cmd_line_reads_whole_buffer() {
        let mut info = StartInfo::new();
        info.cmd_line = [b'z'; MAX_GUEST_CMDLINE];
        assert_eq!(info.cmd_line().len(), MAX_GUEST_CMDLINE);
    }

    #[test]
    fn dom0_console_view_aliases_console_mfn() {
        let mut info = StartInfo::new();
        info.set_dom0_console_info(0x800, 0x40);
        assert_eq!(info.dom0_console_info(), (0x800, 0x40));
        assert_eq!(info.console_mfn, 0x40_0000_0800);
    }
}

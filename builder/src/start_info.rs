//! The contents of a new domain's `start_info` page, and its encoding as bytes.
//!
//! The builder fills one from the plan, the domain's configuration and the machine frames
//! of the ring pages, and writes the bytes into the plan's `start_info` frame. No module
//! or initrd is passed (`mod_start`, `mod_len` 0) and the P2M list is in the initial
//! mapping (`first_p2m_pfn`, `nr_p2m_frames` 0). This module must never touch guest
//! memory.

use core::mem::{offset_of, size_of};

use abi::ids::{Mfn, Pfn};
use abi::start_info::{StartInfo, SIF_INITDOMAIN, SIF_PRIVILEGED};

use crate::error::BuildError;
use crate::layout::{DomainConfig, Plan};

/// Size of the encoded page contents.
pub const START_INFO_SIZE: usize = size_of::<StartInfo>();

/// The `start_info` of a domain laid out by `plan`; `shared_info_maddr` is the machine
/// address of its shared info page and `mfn_of` gives machine frames.
pub(crate) fn start_info_for(
    plan: &Plan,
    config: &DomainConfig<'_>,
    shared_info_maddr: u64,
    mfn_of: impl Fn(Pfn) -> Mfn,
) -> Result<StartInfo, BuildError> {
    let mut info = StartInfo::new();
    info.set_cmd_line(config.cmd_line)?;
    info.nr_pages = plan.nr_pages;
    info.shared_info = shared_info_maddr;
    if config.is_privileged {
        info.flags = SIF_PRIVILEGED | SIF_INITDOMAIN;
    }
    if let (Some(pfn), Some(port)) = (plan.xenstore, config.xenstore) {
        info.store_mfn = mfn_of(pfn);
        info.store_evtchn = port;
    }
    if let (Some(pfn), Some(port)) = (plan.console, config.console) {
        info.console_mfn = mfn_of(pfn).0;
        info.console_evtchn = port;
    }
    info.pt_base = plan.pt_base;
    info.nr_pt_frames = plan.nr_pt_frames;
    info.mfn_list = plan.p2m_va;
    Ok(info)
}

/// The little-endian bytes of `info`, laid out as the header's `struct start_info`.
pub fn encode(info: &StartInfo) -> [u8; START_INFO_SIZE] {
    let mut page = [0; START_INFO_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        page[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(offset_of!(StartInfo, magic), &info.magic);
    put(
        offset_of!(StartInfo, nr_pages),
        &info.nr_pages.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, shared_info),
        &info.shared_info.to_le_bytes(),
    );
    put(offset_of!(StartInfo, flags), &info.flags.to_le_bytes());
    put(
        offset_of!(StartInfo, store_mfn),
        &info.store_mfn.0.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, store_evtchn),
        &info.store_evtchn.0.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, console_mfn),
        &info.console_mfn.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, console_evtchn),
        &info.console_evtchn.0.to_le_bytes(),
    );
    put(offset_of!(StartInfo, pt_base), &info.pt_base.to_le_bytes());
    put(
        offset_of!(StartInfo, nr_pt_frames),
        &info.nr_pt_frames.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, mfn_list),
        &info.mfn_list.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, mod_start),
        &info.mod_start.to_le_bytes(),
    );
    put(offset_of!(StartInfo, mod_len), &info.mod_len.to_le_bytes());
    put(offset_of!(StartInfo, cmd_line), &info.cmd_line);
    put(
        offset_of!(StartInfo, first_p2m_pfn),
        &info.first_p2m_pfn.to_le_bytes(),
    );
    put(
        offset_of!(StartInfo, nr_p2m_frames),
        &info.nr_p2m_frames.to_le_bytes(),
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::ids::EvtchnPort;

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn encodes_at_the_header_offsets() {
        let mut info = StartInfo::new();
        info.nr_pages = 0x1111;
        info.shared_info = 0x2222_0000;
        info.flags = 3;
        info.store_mfn = Mfn(0x33);
        info.store_evtchn = EvtchnPort(4);
        info.console_mfn = 0x55;
        info.console_evtchn = EvtchnPort(6);
        info.pt_base = 0x77;
        info.nr_pt_frames = 8;
        info.mfn_list = 0x99;
        info.mod_start = 0xaa;
        info.mod_len = 0xbb;
        info.set_cmd_line(b"console=hvc0").unwrap();
        info.first_p2m_pfn = 0xcc;
        info.nr_p2m_frames = 0xdd;
        let page = encode(&info);
        assert_eq!(START_INFO_SIZE, 1168);
        assert_eq!(&page[..15], b"xen-3.0-x86_64\0");
        let fields = [
            (32, 0x1111),
            (40, 0x2222_0000),
            (48, 3),
            (56, 0x33),
            (64, 4),
            (72, 0x55),
            (80, 6),
            (88, 0x77),
            (96, 8),
            (104, 0x99),
            (112, 0xaa),
            (120, 0xbb),
            (1152, 0xcc),
            (1160, 0xdd),
        ];
        for (offset, value) in fields {
            assert_eq!(u64_at(&page, offset), value, "field at {offset}");
        }
        assert_eq!(&page[128..141], b"console=hvc0\0");
    }
}

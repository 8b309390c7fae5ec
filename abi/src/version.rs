//! Argument layouts of `xen_version` (version.h). Command numbers are in
//! [`crate::hypercall::XenVersionOp`]; feature bits are in [`crate::features`].
//!
//! The hypervisor fills these for the guest; guests read them. This module must never
//! decide which version or features the hypervisor reports.

use crate::macros::assert_layout;

/// `xen_extraversion_t`: NUL-padded extra version text, e.g. ".0".
pub type XenExtraversion = [u8; 16];
/// `xen_capabilities_info_t`: space-separated capability words, e.g. "xen-3.0-x86_64".
pub type XenCapabilitiesInfo = [u8; 1024];
/// `xen_changeset_info_t`: NUL-padded source changeset text.
pub type XenChangesetInfo = [u8; 64];
/// `xen_commandline_t`: the hypervisor's command line.
pub type XenCommandline = [u8; 1024];
/// `xen_domain_handle_t`: the domain's UUID (`XENVER_guest_handle`).
pub type XenDomainHandle = [u8; 16];

/// `XENVER_version`'s result: major in bits 16-31, minor in bits 0-15.
pub const fn encode_version(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// `XENVER_compile_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct XenCompileInfo {
    pub compiler: [u8; 64],
    pub compile_by: [u8; 16],
    pub compile_domain: [u8; 32],
    pub compile_date: [u8; 32],
}

assert_layout!(XenCompileInfo, size = 144, {
    compiler @ 0, compile_by @ 64, compile_domain @ 80, compile_date @ 112,
});

impl Default for XenCompileInfo {
    /// All zero (empty strings).
    fn default() -> Self {
        Self {
            compiler: [0; 64],
            compile_by: [0; 16],
            compile_domain: [0; 32],
            compile_date: [0; 32],
        }
    }
}

/// `XENVER_platform_parameters`: where the hypervisor's virtual range starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenPlatformParameters {
    pub virt_start: u64,
}

assert_layout!(XenPlatformParameters, size = 8, { virt_start @ 0 });

/// `XENVER_get_features`: one 32-bit word of the feature bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit word (only 0 exists: `XENFEAT_NR_SUBMAPS` is 1).
    pub submap_idx: u32,
    /// OUT: the word; bit n is `XENFEAT` n.
    pub submap: u32,
}

assert_layout!(XenFeatureInfo, size = 8, { submap_idx @ 0, submap @ 4 });

/// Number of 32-bit feature words (`XENFEAT_NR_SUBMAPS`).
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_packs_major_high() {
        assert_eq!(encode_version(4, 17), 0x0004_0011);
    }
}

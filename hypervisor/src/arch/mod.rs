//! The thin hardware layer: the only place with assembly, port I/O, MSRs and control registers.
pub mod boot;
pub mod exit;
pub mod serial;

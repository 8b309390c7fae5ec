//! Argument structs of `callback_op` (callback.h): registering the guest's event,
//! failsafe, syscall and NMI entry points. Command and type numbers are in
//! [`crate::hypercall`].
//!
//! The hypervisor records the addresses per vCPU; our guests register them at boot. This
//! module must never deliver a callback.

use crate::macros::assert_layout;

/// `CALLBACKF_mask_events`: mask events while in the callback (ignored for the event and
/// NMI callbacks, which always mask).
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;

/// `CALLBACKOP_register`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CallbackRegister {
    /// A [`crate::hypercall::CallbackType`] number.
    pub kind: u16,
    /// `CALLBACKF_*` flags.
    pub flags: u16,
    pub _pad: u32,
    /// The entry point (`xen_callback_t`: a plain address on x86-64).
    pub address: u64,
}

assert_layout!(CallbackRegister, size = 16, { kind @ 0, flags @ 2, address @ 8 });

impl CallbackRegister {
    /// Whether the callback runs with events masked by request.
    pub const fn masks_events(&self) -> bool {
        self.flags & CALLBACKF_MASK_EVENTS != 0
    }
}

/// `CALLBACKOP_unregister`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CallbackUnregister {
    /// A [`crate::hypercall::CallbackType`] number.
    pub kind: u16,
    pub _unused: u16,
}

assert_layout!(CallbackUnregister, size = 4, { kind @ 0 });

//! Encoding of interrupt command register (ICR) values: fixed IPIs, INIT and start-up IPIs,
//! to one CPU or to all others, in xAPIC or x2APIC layout.
//!
//! [`crate::local::LocalApic`] encodes here and writes the result with one accessor. Pure and
//! host-tested. It must never produce a broadcast from a unicast request (xAPIC ID 0xFF and
//! x2APIC ID 0xFFFFFFFF are broadcast addresses) nor a fixed IPI on an exception vector.

use crate::consts::lapic::{
    ICR_DELIVERY_FIXED, ICR_DELIVERY_INIT, ICR_DELIVERY_STARTUP, ICR_LEVEL_ASSERT,
    ICR_SHORTHAND_ALL_EXCLUDING_SELF, X2APIC_BROADCAST_ID, X2APIC_ICR_DEST_SHIFT,
    XAPIC_ICR_DEST_SHIFT, XAPIC_MAX_UNICAST_ID,
};
use crate::consts::vectors::FIRST_INTERRUPT_VECTOR;
use crate::local::ApicError;
use crate::{ApicId, ApicMode};

/// Highest physical address (exclusive) a start-up IPI can point at: real mode, below 1 MiB.
const STARTUP_LIMIT: u64 = 0x10_0000;
/// Start-up code must begin on a 4 KiB page.
const STARTUP_ALIGN: u64 = 0x1000;

/// What an IPI delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// An ordinary interrupt on this vector.
    Fixed(u8),
    /// INIT (assert): the target resets into wait-for-SIPI.
    Init,
    /// Start-up: the target starts in real mode at physical address `page << 12`.
    Startup(u8),
}

/// Who receives an IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One CPU, by physical APIC ID.
    One(ApicId),
    /// Every CPU except the sender.
    AllOthers,
}

/// The 64-bit ICR image for `delivery` to `target` in `mode` (xAPIC: high half in bits 63:32).
pub(crate) fn encode(delivery: Delivery, target: Target, mode: ApicMode) -> Result<u64, ApicError> {
    let low = delivery_bits(delivery)? | ICR_LEVEL_ASSERT;
    match target {
        Target::AllOthers => Ok(u64::from(low | ICR_SHORTHAND_ALL_EXCLUDING_SELF)),
        Target::One(dest) => Ok(destination_bits(dest, mode)? | u64::from(low)),
    }
}

/// The start-up IPI page for start-up code at physical address `phys`.
///
/// # Errors
///
/// [`ApicError::InvalidStartupAddress`] unless `phys` is 4 KiB aligned and below 1 MiB.
pub fn startup_page(phys: u64) -> Result<u8, ApicError> {
    if !phys.is_multiple_of(STARTUP_ALIGN) || phys >= STARTUP_LIMIT {
        return Err(ApicError::InvalidStartupAddress(phys));
    }
    Ok((phys / STARTUP_ALIGN) as u8)
}

fn delivery_bits(delivery: Delivery) -> Result<u32, ApicError> {
    match delivery {
        Delivery::Fixed(vector) if vector < FIRST_INTERRUPT_VECTOR => {
            Err(ApicError::ReservedVector(vector))
        }
        Delivery::Fixed(vector) => Ok(ICR_DELIVERY_FIXED | u32::from(vector)),
        Delivery::Init => Ok(ICR_DELIVERY_INIT),
        Delivery::Startup(page) => Ok(ICR_DELIVERY_STARTUP | u32::from(page)),
    }
}

fn destination_bits(dest: ApicId, mode: ApicMode) -> Result<u64, ApicError> {
    let out_of_range = ApicError::DestinationOutOfRange { dest, mode };
    match mode {
        ApicMode::XApic if dest.0 > XAPIC_MAX_UNICAST_ID => Err(out_of_range),
        ApicMode::XApic => Ok(u64::from(dest.0 << XAPIC_ICR_DEST_SHIFT) << 32),
        ApicMode::X2Apic if dest.0 == X2APIC_BROADCAST_ID => Err(out_of_range),
        ApicMode::X2Apic => Ok(u64::from(dest.0) << X2APIC_ICR_DEST_SHIFT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ipi_to_one_xapic_cpu() {
        let icr = encode(
            Delivery::Fixed(0xF0),
            Target::One(ApicId(3)),
            ApicMode::XApic,
        );
        // Destination 3 in bits 63:56, level assert, fixed, physical, vector 0xF0.
        assert_eq!(icr, Ok(0x0300_0000_0000_40F0));
    }

    #[test]
    fn fixed_ipi_to_one_x2apic_cpu_uses_the_whole_high_half() {
        let icr = encode(
            Delivery::Fixed(0x40),
            Target::One(ApicId(0x1234)),
            ApicMode::X2Apic,
        );
        assert_eq!(icr, Ok(0x0000_1234_0000_4040));
    }

    #[test]
    fn broadcast_to_others_has_shorthand_and_no_destination() {
        for mode in [ApicMode::XApic, ApicMode::X2Apic] {
            let icr = encode(Delivery::Fixed(0xFD), Target::AllOthers, mode);
            assert_eq!(icr, Ok(0x0000_0000_000C_40FD), "{mode:?}");
        }
    }

    #[test]
    fn init_and_startup() {
        let init = encode(Delivery::Init, Target::One(ApicId(1)), ApicMode::XApic);
        assert_eq!(init, Ok(0x0100_0000_0000_4500));
        let sipi = encode(
            Delivery::Startup(0x08),
            Target::One(ApicId(1)),
            ApicMode::XApic,
        );
        assert_eq!(sipi, Ok(0x0100_0000_0000_4608));
        let sipi = encode(
            Delivery::Startup(0x9F),
            Target::One(ApicId(300)),
            ApicMode::X2Apic,
        );
        assert_eq!(sipi, Ok(0x0000_012C_0000_469F));
    }

    #[test]
    fn refuses_exception_vectors() {
        for vector in [0, 2, 14, 15, 16, 31] {
            let icr = encode(
                Delivery::Fixed(vector),
                Target::One(ApicId(0)),
                ApicMode::X2Apic,
            );
            assert_eq!(icr, Err(ApicError::ReservedVector(vector)));
            let icr = encode(Delivery::Fixed(vector), Target::AllOthers, ApicMode::XApic);
            assert_eq!(icr, Err(ApicError::ReservedVector(vector)));
        }
        assert!(encode(Delivery::Fixed(32), Target::AllOthers, ApicMode::XApic).is_ok());
    }

    #[test]
    fn refuses_destinations_that_would_broadcast_or_truncate() {
        for id in [0xFF, 0x100, 0x1FE, u32::MAX] {
            let dest = ApicId(id);
            let icr = encode(Delivery::Init, Target::One(dest), ApicMode::XApic);
            assert_eq!(
                icr,
                Err(ApicError::DestinationOutOfRange {
                    dest,
                    mode: ApicMode::XApic
                })
            );
        }
        assert!(encode(Delivery::Init, Target::One(ApicId(0xFE)), ApicMode::XApic).is_ok());
        let dest = ApicId(u32::MAX);
        let icr = encode(Delivery::Init, Target::One(dest), ApicMode::X2Apic);
        assert_eq!(
            icr,
            Err(ApicError::DestinationOutOfRange {
                dest,
                mode: ApicMode::X2Apic
            })
        );
        assert!(encode(
            Delivery::Init,
            Target::One(ApicId(0xFFFF_FFFE)),
            ApicMode::X2Apic
        )
        .is_ok());
    }

    #[test]
    fn startup_page_from_trampoline_address() {
        assert_eq!(startup_page(0x8000), Ok(0x08));
        assert_eq!(startup_page(0x0), Ok(0x00));
        assert_eq!(startup_page(0xF_F000), Ok(0xFF));
        for bad in [0x8001, 0x8800, 0x10_0000, 0x20_0000, u64::MAX] {
            assert_eq!(
                startup_page(bad),
                Err(ApicError::InvalidStartupAddress(bad))
            );
        }
    }
}

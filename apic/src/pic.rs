//! The legacy 8259A PIC pair: remapped away from the CPU exception vectors, then fully
//! masked.
//!
//! The hypervisor calls [`disable_legacy_pics`] once at boot, before it enables interrupts.
//! At reset the master PIC delivers on vectors 8-15, which are exceptions (#DF, #GP, #PF...);
//! even masked, an 8259 can raise a spurious IRQ 7/15, so it is first re-initialised onto
//! vectors 0x20-0x2F (see [`crate::consts::vectors`]) and only then masked. The command
//! sequence is data, host-tested; this module never unmasks a PIC input.

use x86_64::instructions::port::PortWriteOnly;

use crate::consts::pic::{
    ICW1_INIT_WITH_ICW4, ICW3_MASTER_SLAVE_ON_IRQ2, ICW3_SLAVE_IDENTITY, ICW4_8086, IO_DELAY_PORT,
    MASK_ALL, MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA,
};
use crate::consts::vectors::{PIC_MASTER_BASE, PIC_SLAVE_BASE};

/// One byte written to one I/O port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortWrite {
    port: u16,
    value: u8,
}

const fn out(port: u16, value: u8) -> PortWrite {
    PortWrite { port, value }
}

/// ICW1-ICW4 to both PICs (remap to 0x20/0x28, cascade on IRQ 2, 8086 mode), then OCW1
/// masking all sixteen inputs.
const REMAP_AND_MASK: [PortWrite; 10] = [
    out(MASTER_COMMAND, ICW1_INIT_WITH_ICW4),
    out(SLAVE_COMMAND, ICW1_INIT_WITH_ICW4),
    out(MASTER_DATA, PIC_MASTER_BASE),
    out(SLAVE_DATA, PIC_SLAVE_BASE),
    out(MASTER_DATA, ICW3_MASTER_SLAVE_ON_IRQ2),
    out(SLAVE_DATA, ICW3_SLAVE_IDENTITY),
    out(MASTER_DATA, ICW4_8086),
    out(SLAVE_DATA, ICW4_8086),
    out(MASTER_DATA, MASK_ALL),
    out(SLAVE_DATA, MASK_ALL),
];

/// Remaps both legacy PICs to vectors 0x20-0x2F and masks every input.
///
/// Afterwards only spurious interrupts can come from them, on vectors 0x27 and 0x2F
/// ([`crate::consts::vectors::PIC_MASTER_SPURIOUS`], `PIC_SLAVE_SPURIOUS`): the interrupt
/// handler must ignore those (and send no EOI). Harmless where no PIC exists.
///
/// # Safety
///
/// Must run at CPL 0 with interrupts disabled, before anything else uses the PICs.
pub unsafe fn disable_legacy_pics() {
    for write in REMAP_AND_MASK {
        // SAFETY: the caller guarantees CPL 0 and exclusive use of the PICs; these ports
        // belong to the PICs and the POST-code port, and writing them touches no memory.
        unsafe {
            PortWriteOnly::<u8>::new(write.port).write(write.value);
            PortWriteOnly::<u8>::new(IO_DELAY_PORT).write(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::vectors::FIRST_INTERRUPT_VECTOR;

    fn writes_to(port: u16) -> Vec<u8> {
        REMAP_AND_MASK
            .iter()
            .filter(|w| w.port == port)
            .map(|w| w.value)
            .collect()
    }

    #[test]
    fn each_pic_gets_icw1_to_icw4_then_a_full_mask() {
        assert_eq!(writes_to(MASTER_COMMAND), [0x11]);
        assert_eq!(writes_to(SLAVE_COMMAND), [0x11]);
        assert_eq!(writes_to(MASTER_DATA), [0x20, 0x04, 0x01, 0xFF]);
        assert_eq!(writes_to(SLAVE_DATA), [0x28, 0x02, 0x01, 0xFF]);
    }

    #[test]
    fn icw1_precedes_the_data_words_of_its_pic() {
        let position = |w: PortWrite| REMAP_AND_MASK.iter().position(|&x| x == w).unwrap();
        let master_icw1 = position(out(MASTER_COMMAND, ICW1_INIT_WITH_ICW4));
        let slave_icw1 = position(out(SLAVE_COMMAND, ICW1_INIT_WITH_ICW4));
        for (i, w) in REMAP_AND_MASK.iter().enumerate() {
            match w.port {
                MASTER_DATA => assert!(i > master_icw1),
                SLAVE_DATA => assert!(i > slave_icw1),
                _ => {}
            }
        }
        let last_two = &REMAP_AND_MASK[REMAP_AND_MASK.len() - 2..];
        assert!(
            last_two.iter().all(|w| w.value == MASK_ALL),
            "masking comes last"
        );
    }

    #[test]
    fn remapped_vectors_avoid_exceptions_and_each_other() {
        for base in [PIC_MASTER_BASE, PIC_SLAVE_BASE] {
            assert!(base >= FIRST_INTERRUPT_VECTOR);
            assert_eq!(base % 8, 0, "an 8259 takes a multiple of 8 as its base");
        }
        assert!(PIC_MASTER_BASE.abs_diff(PIC_SLAVE_BASE) >= 8);
    }
}

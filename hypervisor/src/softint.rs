//! Which `int n` a guest ran, from the #GP it raised: the CPU reports a software
//! interrupt through a gate the guest may not use as a #GP whose error code names the
//! IDT entry (bit 1 set). Real CPUs put the vector in bits 3-15 (`n * 8 + 2`); QEMU's TCG
//! puts the entry's byte offset there in 64-bit mode (`n * 16 + 2`), so on the machine
//! this project tests on, `error >> 3` named vector `2n mod 256`: an `int 0x80` arrived
//! as vector 0 (found by the hypercall fuzzer). The instruction itself settles it: the
//! vector is the byte after the `int` opcode (0xcd), provided the error code names that
//! entry in one encoding or the other.
//!
//! Called by `pv::traps` with the two bytes at the guest's rip. This module must never
//! read guest memory itself.

/// The `int imm8` opcode.
const INT_IMM8: u8 = 0xcd;

/// The vector of the `int n` at the faulting rip (`insn`: its first two bytes), when the
/// #GP's `error_code` names that IDT entry; `None` for any other #GP.
pub fn vector(error_code: u64, insn: [u8; 2]) -> Option<u8> {
    if error_code & 7 != 2 || insn[0] != INT_IMM8 {
        return None;
    }
    let n = u64::from(insn[1]);
    (error_code >> 3 == n || error_code >> 4 == n).then_some(insn[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings_name_the_vector() {
        assert_eq!(vector(0x80 * 8 + 2, [0xcd, 0x80]), Some(0x80), "hardware");
        assert_eq!(vector(0x80 * 16 + 2, [0xcd, 0x80]), Some(0x80), "QEMU TCG");
        assert_eq!(vector(0xab * 16 + 2, [0xcd, 0xab]), Some(0xab));
        assert_eq!(vector(0x20 * 8 + 2, [0xcd, 0x20]), Some(0x20));
    }

    #[test]
    fn the_old_decoding_was_wrong_under_tcg() {
        // `(error >> 3) as u8` of TCG's code for int 0x80 is 0: a divide error.
        assert_eq!(((0x80u64 * 16 + 2) >> 3) as u8, 0);
        assert_eq!(vector(0x80 * 16 + 2, [0xcd, 0x80]), Some(0x80));
    }

    #[test]
    fn other_faults_are_not_software_interrupts() {
        assert_eq!(vector(0, [0xcd, 0x80]), None, "a #GP(0) at an int");
        assert_eq!(vector(0x80 * 8 + 2, [0x0f, 0x0b]), None, "not an int instruction");
        assert_eq!(vector(0x81 * 8 + 2, [0xcd, 0x80]), None, "an error code naming another entry");
        assert_eq!(vector(0x80 * 8 + 3, [0xcd, 0x80]), None, "external event bit");
        assert_eq!(vector(0x80 * 8, [0xcd, 0x80]), None, "no IDT bit");
    }
}

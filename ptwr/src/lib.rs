//! Writable page tables, the pure part: decoding the guest instruction whose write to one
//! of its own (read-only mapped) page tables faulted, and computing what it does to the
//! 8-byte entry it writes, its registers and its flags.
//!
//! The hypervisor's page-fault path (`pv::ptwr`) fetches the bytes at the faulting rip,
//! calls [`decode`], asks the [`Instruction`] for the address it writes
//! ([`Instruction::access`]), checks it against the fault with [`entry_of`], reads the
//! entry and runs [`emulate_on_entry`]; it then validates the new entry exactly as
//! `mmu_update` would (pvmm) and, only if that succeeds, stores it and commits the new
//! register state. Anything this crate does not claim is [`DecodeError::Unsupported`], and
//! the guest gets its original #PF.
//!
//! What is claimed (64-bit code only; Xen's ptwr emulation runs its full x86 emulator on
//! these, and Linux and XTF use no other form on page tables): `mov` to memory from a
//! register or an immediate, `xchg`, `cmpxchg`, `cmpxchg8b`, `add`/`or`/`and`/`sub`/`xor`
//! with a memory destination, and `bts`/`btr`/`btc` on memory, each with any operand size
//! it has, `lock` where the instruction allows it, segment overrides (FS and GS add their
//! base; the others are null in 64-bit mode), REX, ModRM/SIB/RIP-relative addressing.
//! Refused: `rep`/`repne` prefixes (and XACQUIRE/XRELEASE), the address-size prefix,
//! register destinations, `cmpxchg16b` (two entries at once; Xen refuses it too), and
//! anything longer than 15 bytes.
//!
//! This crate must never touch memory or registers itself: every input is a value, every
//! output a value. Nothing here can fail in a way a guest can exploit: all arithmetic on
//! guest values wraps, and the caller confines the write to the faulting entry.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), forbid(unsafe_code))]

mod decode;
mod exec;

#[cfg(test)]
mod decode_tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod hw_tests;

pub use decode::{decode, AluOp, BitOp, DecodeError, Instruction, Memory, Operation, Reg, Segment, Source, MAX_LEN};
pub use exec::{Access, State, AF, ARITHMETIC_FLAGS, CF, OF, PF, SF, ZF};

/// Where an access falls in the page of the entry it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySpot {
    /// The entry's index in its table (0..512).
    pub index: usize,
    /// The access's first bit within the entry (0, 8, ..., 56).
    pub shift: u32,
    /// Bytes written (1, 2, 4 or 8).
    pub size: u8,
}

/// Why an access cannot be emulated as a page-table write (Xen: "bad access").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Wider than one 8-byte entry.
    TooWide,
    /// Not naturally aligned (it would straddle two entries or two pages).
    Misaligned,
    /// Not in the page whose write faulted.
    OtherPage,
}

/// Checks that `access` is a naturally aligned write of at most 8 bytes inside the page
/// of `fault_address` (Xen's rule for emulated page-table writes), and says which entry it
/// touches.
pub fn entry_of(access: Access, fault_address: u64) -> Result<EntrySpot, Refusal> {
    let size = u64::from(access.size);
    if !matches!(access.size, 1 | 2 | 4 | 8) {
        return Err(Refusal::TooWide);
    }
    if access.address & (size - 1) != 0 {
        return Err(Refusal::Misaligned);
    }
    if (access.address ^ fault_address) & !0xfff != 0 {
        return Err(Refusal::OtherPage);
    }
    Ok(EntrySpot {
        index: ((access.address & 0xfff) >> 3) as usize,
        shift: ((access.address & 7) * 8) as u32,
        size: access.size,
    })
}

/// Runs `instruction` on the entry `entry` at `spot` (the caller read it): updates `state`
/// (registers, arithmetic flags) and returns the whole new entry, or `None` when the
/// instruction writes nothing (a `cmpxchg` whose comparison failed).
pub fn emulate_on_entry(instruction: &Instruction, state: &mut State, spot: EntrySpot, entry: u64) -> Option<u64> {
    let mask = decode::mask(spot.size);
    let old = (entry >> spot.shift) & mask;
    let new = instruction.execute(state, old)?;
    Some((entry & !(mask << spot.shift)) | ((new & mask) << spot.shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_of_follows_xens_alignment_and_page_rules() {
        let at = |address, size| Access { address, size };
        assert_eq!(entry_of(at(0x1008, 8), 0x1008), Ok(EntrySpot { index: 1, shift: 0, size: 8 }));
        assert_eq!(entry_of(at(0x1ffb, 1), 0x1ffb), Ok(EntrySpot { index: 511, shift: 24, size: 1 }));
        assert_eq!(entry_of(at(0x1006, 2), 0x1000), Ok(EntrySpot { index: 0, shift: 48, size: 2 }));
        assert_eq!(entry_of(at(0x1004, 8), 0x1004), Err(Refusal::Misaligned));
        assert_eq!(entry_of(at(0x1002, 4), 0x1002), Err(Refusal::Misaligned));
        assert_eq!(entry_of(at(0x2000, 8), 0x1ff8), Err(Refusal::OtherPage));
        assert_eq!(entry_of(at(0x1000, 16), 0x1000), Err(Refusal::TooWide));
        assert_eq!(entry_of(at(0x1000, 3), 0x1000), Err(Refusal::TooWide));
    }

    #[test]
    fn sub_entry_writes_keep_the_other_bytes() {
        // lock andb $0xfd, 1(%rdi): clears bit 9 of the entry (byte 1, bit 1).
        let insn = decode(&[0xf0, 0x80, 0x67, 0x01, 0xfd]).unwrap();
        let mut state = State::default();
        state.gpr[7] = 0x5000;
        let access = insn.access(&state, 0, 0, 0);
        let spot = entry_of(access, 0x5000).unwrap();
        assert_eq!(spot, EntrySpot { index: 0, shift: 8, size: 1 });
        let entry = 0x8000_0000_1234_5267;
        assert_eq!(emulate_on_entry(&insn, &mut state, spot, entry), Some(0x8000_0000_1234_5067));
    }
}

//! Decoding the few guest instructions the hypervisor looks at after a #GP: software
//! interrupts (`int imm8`, `int3`, `into`, `int1`) and port I/O (`in`, `out`, `ins`,
//! `outs`), plus `cli`/`sti`, each with the prefixes the hardware allows; and the memory
//! operand of an ordinary instruction in 64-bit code (`memory_access`).
//!
//! Pure and host-tested. `pv::traps` decodes the bytes at a faulting rip instead of
//! trusting #GP's error code (QEMU's TCG reports a faulting `int n` as vector `2n`), and
//! `pv::emulate` decodes port I/O and the interrupt flag instructions, which a PV guest's
//! virtual IOPL may allow. `pv::traps` also decodes the memory operand behind a #GP(0)
//! (the segment and address decide between #SS and #GP, and a far pointer's selector
//! decides the error code). The decoder only names an instruction and its length: it never
//! decides whether the guest may execute it, and returns `None` for anything else (the
//! caller then delivers the original fault). Bytes past the slice count as unreadable.

/// What the code segment the instruction runs in makes of operand and address sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMode {
    /// 64-bit code (L set): REX prefixes exist, `into` is invalid.
    Long,
    /// Compatibility mode, 32-bit default (D set).
    Compat32,
    /// Compatibility mode, 16-bit default.
    Compat16,
}

/// The most bytes an x86 instruction may take: longer ones raise #GP(0) instead.
pub const MAX_LENGTH: usize = 15;

/// A software interrupt or exception instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftInt {
    /// `int imm8` (cd ib): checked against the gate's DPL.
    Int(u8),
    /// `int3` (cc): #BP.
    Int3,
    /// `into` (ce): #OF when OF is set (compatibility mode only).
    Into,
    /// `int1`/`icebp` (f1): #DB, never checked against a DPL.
    Int1,
}

impl SoftInt {
    /// The vector it raises.
    pub const fn vector(self) -> u8 {
        match self {
            SoftInt::Int(vector) => vector,
            SoftInt::Int3 => 3,
            SoftInt::Into => 4,
            SoftInt::Int1 => 1,
        }
    }
}

/// Which way data moves through a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `in` / `ins`: port to register or memory.
    In,
    /// `out` / `outs`: register or memory to port.
    Out,
}

/// The port an I/O instruction names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// An 8-bit immediate.
    Immediate(u8),
    /// The port in dx.
    Dx,
}

/// A segment-override prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// A port I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortIo {
    pub direction: Direction,
    pub port: Port,
    /// Bytes per transfer: 1, 2 or 4.
    pub size: u8,
    /// `ins`/`outs` (memory at es:rdi or seg:rsi) rather than al/ax/eax.
    pub string: bool,
    /// A `rep` (f3) or `repne` (f2) prefix, which both repeat a string transfer.
    pub rep: bool,
    /// Address size in bits (16, 32 or 64): which part of rsi, rdi and rcx counts.
    pub address_bits: u8,
    /// `outs`'s source segment when overridden (ds otherwise; `ins` always writes es).
    pub segment: Option<Segment>,
}

/// An instruction the hypervisor may carry out for a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    SoftInt(SoftInt),
    Io(PortIo),
    /// `cli` (fa).
    Cli,
    /// `sti` (fb).
    Sti,
}

/// A decoded instruction and its length in bytes (prefixes included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub insn: Insn,
    pub len: u8,
}

/// The prefixes in front of an opcode.
#[derive(Default)]
struct Prefixes {
    operand_size: bool,
    address_size: bool,
    rep: bool,
    lock: bool,
    segment: Option<Segment>,
}

/// Decodes the instruction at the start of `bytes`, if it is one of [`Insn`]'s.
pub fn decode(bytes: &[u8], mode: CodeMode) -> Option<Decoded> {
    let mut prefixes = Prefixes::default();
    let mut at = 0;
    let opcode = loop {
        let byte = *bytes.get(at)?;
        match byte {
            0x66 => prefixes.operand_size = true,
            0x67 => prefixes.address_size = true,
            0xf2 | 0xf3 => prefixes.rep = true,
            0xf0 => prefixes.lock = true,
            0x26 => prefixes.segment = Some(Segment::Es),
            0x2e => prefixes.segment = Some(Segment::Cs),
            0x36 => prefixes.segment = Some(Segment::Ss),
            0x3e => prefixes.segment = Some(Segment::Ds),
            0x64 => prefixes.segment = Some(Segment::Fs),
            0x65 => prefixes.segment = Some(Segment::Gs),
            // REX: a prefix only in 64-bit code (inc/dec elsewhere, which we never decode).
            // None of the instructions here uses its bits (in/out stop at 32 bits).
            0x40..=0x4f if mode == CodeMode::Long => {}
            _ => break byte,
        }
        at += 1;
        if at >= MAX_LENGTH {
            return None;
        }
    };
    // LOCK on any of these raises #UD, never the #GP being looked at.
    if prefixes.lock {
        return None;
    }
    let immediate = || bytes.get(at + 1).copied();
    let (insn, operand_bytes) = match opcode {
        0xcd => (Insn::SoftInt(SoftInt::Int(immediate()?)), 1),
        0xcc => (Insn::SoftInt(SoftInt::Int3), 0),
        0xce if mode != CodeMode::Long => (Insn::SoftInt(SoftInt::Into), 0),
        0xf1 => (Insn::SoftInt(SoftInt::Int1), 0),
        0xfa => (Insn::Cli, 0),
        0xfb => (Insn::Sti, 0),
        0xe4..=0xe7 => (Insn::Io(io(opcode, Port::Immediate(immediate()?), mode, &prefixes)), 1),
        0xec..=0xef => (Insn::Io(io(opcode, Port::Dx, mode, &prefixes)), 0),
        0x6c..=0x6f => (Insn::Io(io(opcode, Port::Dx, mode, &prefixes)), 0),
        _ => return None,
    };
    let len = at + 1 + operand_bytes;
    (len <= MAX_LENGTH).then_some(Decoded { insn, len: len as u8 })
}

fn io(opcode: u8, port: Port, mode: CodeMode, prefixes: &Prefixes) -> PortIo {
    let wide_default = mode != CodeMode::Compat16;
    let wide = wide_default != prefixes.operand_size;
    let size = if opcode & 1 == 0 { 1 } else if wide { 4 } else { 2 };
    let direction = if opcode & 2 == 0 { Direction::In } else { Direction::Out };
    // ins is 6c/6d and outs 6e/6f: bit 1 alone tells them apart too.
    let string = opcode & 0xf0 == 0x60;
    let address_bits = match (mode, prefixes.address_size) {
        (CodeMode::Long, false) => 64,
        (CodeMode::Long, true) | (CodeMode::Compat32, false) | (CodeMode::Compat16, true) => 32,
        (CodeMode::Compat32, true) | (CodeMode::Compat16, false) => 16,
    };
    PortIo {
        direction,
        port,
        size,
        string,
        rep: string && prefixes.rep,
        address_bits,
        segment: if string && direction == Direction::Out { prefixes.segment } else { None },
    }
}

/// A memory operand in 64-bit code (ModRM, SIB, displacement; 64-bit addressing only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register (0-15), if any.
    pub base: Option<u8>,
    /// Index register (0-15) and its scale (1, 2, 4 or 8), if any.
    pub index: Option<(u8, u8)>,
    /// Displacement, sign-extended.
    pub disp: i64,
    /// rip-relative (`disp(%rip)`): relative to the next instruction.
    pub rip_relative: bool,
    /// The segment the access goes through: SS for a base of rsp or rbp, FS or GS when
    /// overridden, DS otherwise (64-bit code ignores ES, CS, SS and DS overrides).
    pub segment: Segment,
}

impl MemOperand {
    /// The linear address before any FS/GS base, with `reg(n)` the value of register n.
    /// (rip-relative operands are never asked: their segment is DS, and their address
    /// needs the instruction's length, which [`memory_access`] does not work out.)
    pub fn effective_address(&self, reg: impl Fn(u8) -> u64) -> u64 {
        let base = self.base.map_or(0, &reg);
        let index = self.index.map_or(0, |(r, scale)| reg(r).wrapping_mul(u64::from(scale)));
        base.wrapping_add(index).wrapping_add(self.disp as u64)
    }
}

/// A data access through a memory operand by a plain (unprivileged) instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemAccess {
    pub operand: MemOperand,
    /// `call far` or `jmp far` through memory (ff /3, ff /5): the operand is a far pointer
    /// whose offset is 2, 4 or 8 bytes ([`FarPointer::offset_bytes`]).
    pub far: Option<FarPointer>,
}

/// The operand size prefixes of an indirect far call or jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FarPointer {
    pub operand_size: bool,
    pub rex_w: bool,
}

impl FarPointer {
    /// Bytes of offset before the selector: REX.W makes it 8 on Intel's processors only
    /// (AMD's ignore REX.W here and read m16:32), the operand-size prefix makes it 2.
    pub const fn offset_bytes(self, intel: bool) -> u64 {
        if self.rex_w && intel {
            8
        } else if self.operand_size {
            2
        } else {
            4
        }
    }
}

/// Decodes the instruction at the start of `bytes` (64-bit code) if it is one of the
/// ordinary one-byte-opcode instructions with a ModRM memory operand: the ALU group
/// (00-3b), movsxd, imul, the 80-83 group, test, xchg, mov (88-8c), pop (8f), the shifts
/// (c0, c1, d0-d3), mov immediate (c6, c7), the f6/f7 and fe/ff groups; and `mov` with a
/// 64-bit absolute address (a0-a3). None of these has a privilege check, so a #GP(0) one
/// of them raises comes from its memory operand's address (or from its stack, for the
/// few that push or pop). Address-size prefixed forms (32-bit addresses, always
/// canonical) are not decoded, nor anything else.
pub fn memory_access(bytes: &[u8]) -> Option<MemAccess> {
    let mut at = 0;
    let mut rex = 0u8;
    let mut override_fs_gs = None;
    let mut operand_size = false;
    let opcode = loop {
        let byte = *bytes.get(at)?;
        match byte {
            0x67 => return None,
            0x66 => operand_size = true,
            0xf2 | 0xf3 | 0xf0 | 0x26 | 0x2e | 0x36 | 0x3e => {}
            0x64 => override_fs_gs = Some(Segment::Fs),
            0x65 => override_fs_gs = Some(Segment::Gs),
            0x40..=0x4f => {
                rex = byte;
                at += 1;
                if at >= MAX_LENGTH {
                    return None;
                }
                continue;
            }
            _ => break byte,
        }
        // A legacy prefix after REX makes the REX void.
        rex = 0;
        at += 1;
        if at >= MAX_LENGTH {
            return None;
        }
    };
    let rex_w = rex & 8 != 0;
    if (0xa0..=0xa3).contains(&opcode) {
        let moffs = bytes.get(at + 1..at + 9)?;
        let disp = i64::from_le_bytes(moffs.try_into().ok()?);
        let operand = MemOperand { base: None, index: None, disp, rip_relative: false, segment: override_fs_gs.unwrap_or(Segment::Ds) };
        return Some(MemAccess { operand, far: None });
    }
    let modrm = *bytes.get(at + 1)?;
    let reg_field = (modrm >> 3) & 7;
    let plain = matches!(opcode, 0x00..=0x3b if opcode & 7 < 4)
        || matches!(opcode, 0x63 | 0x69 | 0x6b | 0x80 | 0x81 | 0x83 | 0x84..=0x8c | 0xc0 | 0xc1 | 0xc6 | 0xc7 | 0xd0..=0xd3 | 0xf6 | 0xf7 | 0xfe | 0xff)
        || (opcode == 0x8f && reg_field == 0);
    if !plain || modrm >> 6 == 3 || (opcode == 0xff && reg_field == 7) {
        return None;
    }
    let (operand, _) = modrm_operand(&bytes[at + 1..], rex, override_fs_gs)?;
    let far = (opcode == 0xff && (reg_field == 3 || reg_field == 5)).then_some(FarPointer { operand_size, rex_w });
    Some(MemAccess { operand, far })
}

/// The memory operand a ModRM byte (at `bytes[0]`, mod != 3) and what follows name, with
/// 64-bit addressing (32-bit addressing encodes the same, but for `rip_relative`, which is
/// an absolute disp32 there), and how many bytes ModRM, SIB and displacement take.
fn modrm_operand(bytes: &[u8], rex: u8, override_fs_gs: Option<Segment>) -> Option<(MemOperand, usize)> {
    let modrm = bytes[0];
    let (mode, rm) = (modrm >> 6, modrm & 7);
    let mut at = 1;
    let (mut base, mut index, mut rip_relative) = (None, None, false);
    if rm == 4 {
        let sib = *bytes.get(1)?;
        at = 2;
        let index_reg = ((sib >> 3) & 7) | ((rex & 2) << 2);
        if index_reg != 4 {
            index = Some((index_reg, 1 << (sib >> 6)));
        }
        let base_low = sib & 7;
        if !(base_low == 5 && mode == 0) {
            base = Some(base_low | ((rex & 1) << 3));
        }
    } else if rm == 5 && mode == 0 {
        rip_relative = true;
    } else {
        base = Some(rm | ((rex & 1) << 3));
    }
    let (disp, disp_bytes) = match mode {
        1 => (i64::from(*bytes.get(at)? as i8), 1),
        2 => (i64::from(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)), 4),
        _ if rip_relative || base.is_none() => (i64::from(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)), 4),
        _ => (0, 0),
    };
    let segment = override_fs_gs.unwrap_or(if matches!(base, Some(4 | 5)) { Segment::Ss } else { Segment::Ds });
    Some((MemOperand { base, index, disp, rip_relative, segment }, at + disp_bytes))
}

/// The memory operands of every `mov` to SS from memory (8e /2) that the bytes just
/// before an instruction boundary (`before`, the boundary at its end) can end with: tried
/// for every length an instruction can have, shortest first (`41 8e 11` is `mov (%r9),%ss`,
/// and its last two bytes alone `mov (%rcx),%ss`). In 64-bit code (`long`) REX
/// prefixes count and the operand may be rip-relative (relative to the boundary); in
/// 32-bit code the same encodings address with 32-bit registers (disp32 alone is
/// absolute). Address-size prefixed forms are not looked for. Bytes before an instruction
/// may happen to look like one: the caller checks each operand against what it knows (the
/// breakpoint that fired).
pub fn mov_ss_before(before: &[u8], long: bool) -> impl Iterator<Item = MemOperand> + '_ {
    (2..=before.len().min(MAX_LENGTH)).filter_map(move |len| {
        let candidate = &before[before.len() - len..];
        let mut at = 0;
        let mut rex = 0;
        while at < candidate.len() {
            match candidate[at] {
                0x66 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => rex = 0,
                byte @ 0x40..=0x4f if long => rex = byte,
                _ => break,
            }
            at += 1;
        }
        let override_fs_gs = candidate[..at].iter().rev().find_map(|&b| match b {
            0x64 => Some(Segment::Fs),
            0x65 => Some(Segment::Gs),
            _ => None,
        });
        let modrm = *candidate.get(at + 1)?;
        if candidate[at] != 0x8e || (modrm >> 3) & 7 != 2 || modrm >> 6 == 3 {
            return None;
        }
        let (mut operand, used) = modrm_operand(&candidate[at + 1..], if long { rex } else { 0 }, override_fs_gs)?;
        if at + 1 + used != len {
            return None;
        }
        if !long && operand.rip_relative {
            operand.rip_relative = false;
        }
        Some(operand)
    })
}

/// A far return (`lret`, cb, or `lret imm16`, ca iw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FarReturn {
    /// Bytes of each of the two stack slots it pops (offset, then selector): 2, 4 or 8.
    pub slot_bytes: u8,
    /// Bytes it releases from the stack after them (the immediate).
    pub release: u16,
}

/// Decodes a far return at the start of `bytes`: its operand size (REX.W: 8 bytes in
/// 64-bit code; the operand-size prefix: the other of 2 and 4) and immediate.
pub fn far_return(bytes: &[u8], mode: CodeMode) -> Option<FarReturn> {
    let mut at = 0;
    let (mut operand_size, mut rex_w) = (false, false);
    let opcode = loop {
        let byte = *bytes.get(at)?;
        match byte {
            0x66 => (operand_size, rex_w) = (true, false),
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0xf2 | 0xf3 => rex_w = false,
            0x40..=0x4f if mode == CodeMode::Long => rex_w = byte & 8 != 0,
            _ => break byte,
        }
        at += 1;
        if at >= MAX_LENGTH {
            return None;
        }
    };
    let release = match opcode {
        0xcb => 0,
        0xca => u16::from_le_bytes(bytes.get(at + 1..at + 3)?.try_into().ok()?),
        _ => return None,
    };
    let slot_bytes = match (mode, rex_w, operand_size) {
        (CodeMode::Long, true, _) => 8,
        (CodeMode::Compat16, _, false) | (CodeMode::Long | CodeMode::Compat32, false, true) => 2,
        _ => 4,
    };
    Some(FarReturn { slot_bytes, release })
}

/// Whether `address` is canonical with 48-bit linear addresses.
pub const fn canonical(address: u64) -> bool {
    ((address as i64) << 16 >> 16) as u64 == address
}

/// Whether guest code at virtual privilege `cpl` may raise a software interrupt through a
/// trap-table entry of DPL `dpl` (Xen's `permit_softint`): the guest kernel counts as
/// privilege 1 (it cannot use DPL 0 entries, which are for exceptions), user mode as 3.
pub const fn permit_softint(dpl: u8, in_kernel: bool) -> bool {
    dpl >= if in_kernel { 1 } else { 3 }
}

/// The #GP error code a software interrupt through a gate it may not use raises: the IDT
/// bit (1) and the vector's index.
pub const fn idt_error_code(vector: u8) -> u64 {
    ((vector as u64) << 3) | 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soft(bytes: &[u8], mode: CodeMode) -> Option<(SoftInt, u8)> {
        match decode(bytes, mode)? {
            Decoded { insn: Insn::SoftInt(s), len } => Some((s, len)),
            _ => None,
        }
    }

    #[test]
    fn int_imm8_names_its_vector_and_is_two_bytes() {
        assert_eq!(soft(&[0xcd, 0x20], CodeMode::Long), Some((SoftInt::Int(0x20), 2)));
        assert_eq!(soft(&[0xcd, 0x80, 0x90], CodeMode::Compat32), Some((SoftInt::Int(0x80), 2)));
        assert_eq!(soft(&[0xcd, 0xff], CodeMode::Long), Some((SoftInt::Int(0xff), 2)));
        // The immediate is part of the instruction: without it nothing is decoded.
        assert_eq!(soft(&[0xcd], CodeMode::Long), None);
    }

    #[test]
    fn one_byte_forms() {
        assert_eq!(soft(&[0xcc], CodeMode::Long), Some((SoftInt::Int3, 1)));
        assert_eq!(soft(&[0xf1], CodeMode::Long), Some((SoftInt::Int1, 1)));
        assert_eq!(soft(&[0xce], CodeMode::Compat32), Some((SoftInt::Into, 1)));
        assert_eq!(SoftInt::Into.vector(), 4);
        assert_eq!(SoftInt::Int3.vector(), 3);
        assert_eq!(SoftInt::Int1.vector(), 1);
    }

    #[test]
    fn into_does_not_exist_in_64_bit_code() {
        assert_eq!(decode(&[0xce], CodeMode::Long), None);
    }

    #[test]
    fn prefixes_count_in_the_length() {
        // Operand size, segment, REX: all allowed before int, all part of it.
        assert_eq!(soft(&[0x66, 0xcd, 0x21], CodeMode::Long), Some((SoftInt::Int(0x21), 3)));
        assert_eq!(soft(&[0x2e, 0x3e, 0x48, 0xcd, 0x22], CodeMode::Long), Some((SoftInt::Int(0x22), 5)));
        assert_eq!(soft(&[0xf3, 0xcc], CodeMode::Long), Some((SoftInt::Int3, 2)));
        // 0x48 is `dec eax` outside 64-bit code, not a prefix.
        assert_eq!(decode(&[0x48, 0xcd, 0x22], CodeMode::Compat32), None);
    }

    #[test]
    fn lock_and_overlong_instructions_are_not_decoded() {
        assert_eq!(decode(&[0xf0, 0xcd, 0x20], CodeMode::Long), None);
        let mut long = [0x66u8; 16];
        long[13] = 0xcd;
        long[14] = 0x20;
        // 13 prefixes + cd 20 = 15 bytes: allowed.
        assert_eq!(soft(&long[..15], CodeMode::Long), Some((SoftInt::Int(0x20), 15)));
        // 14 prefixes + cd 20 = 16 bytes: the hardware raises #GP(0) instead.
        let mut longer = [0x66u8; 16];
        longer[14] = 0xcd;
        longer[15] = 0x20;
        assert_eq!(decode(&longer, CodeMode::Long), None);
        // Prefixes alone (the rest unreadable).
        assert_eq!(decode(&[0x66; 15], CodeMode::Long), None);
    }

    #[test]
    fn other_instructions_are_not_decoded() {
        for bytes in [&[0x0f, 0x0b][..], &[0x0f, 0x20, 0xd8], &[0x90], &[], &[0xcf]] {
            assert_eq!(decode(bytes, CodeMode::Long), None, "{bytes:x?}");
        }
    }

    fn io_of(bytes: &[u8], mode: CodeMode) -> (PortIo, u8) {
        match decode(bytes, mode) {
            Some(Decoded { insn: Insn::Io(io), len }) => (io, len),
            other => panic!("{bytes:x?}: {other:?}"),
        }
    }

    #[test]
    fn in_and_out_with_immediate_and_dx_ports() {
        let (io, len) = io_of(&[0xe6, 0x80], CodeMode::Long);
        assert_eq!(len, 2);
        assert_eq!((io.direction, io.port, io.size, io.string), (Direction::Out, Port::Immediate(0x80), 1, false));
        let (io, len) = io_of(&[0xe5, 0x71], CodeMode::Long);
        assert_eq!((io.direction, io.port, io.size, len), (Direction::In, Port::Immediate(0x71), 4, 2));
        let (io, len) = io_of(&[0x66, 0xed], CodeMode::Long);
        assert_eq!((io.direction, io.port, io.size, len), (Direction::In, Port::Dx, 2, 2));
        let (io, _) = io_of(&[0xee], CodeMode::Compat32);
        assert_eq!((io.direction, io.size), (Direction::Out, 1));
        // 16-bit code: 32 bits only with the operand-size prefix.
        assert_eq!(io_of(&[0xef], CodeMode::Compat16).0.size, 2);
        assert_eq!(io_of(&[0x66, 0xef], CodeMode::Compat16).0.size, 4);
        // REX.W does not make in/out 64-bit.
        assert_eq!(io_of(&[0x48, 0xed], CodeMode::Long).0.size, 4);
        // Missing immediate: nothing decoded.
        assert_eq!(decode(&[0xe4], CodeMode::Long), None);
    }

    #[test]
    fn string_forms_with_rep_address_size_and_segment() {
        let (io, len) = io_of(&[0xf3, 0x6c], CodeMode::Long);
        assert_eq!((io.direction, io.string, io.rep, io.size, io.address_bits, len), (Direction::In, true, true, 1, 64, 2));
        let (io, len) = io_of(&[0x67, 0x64, 0xf3, 0x6f], CodeMode::Long);
        assert_eq!((io.direction, io.size, io.address_bits, io.segment, len), (Direction::Out, 4, 32, Some(Segment::Fs), 4));
        // ins writes es:rdi whatever the override.
        assert_eq!(io_of(&[0x65, 0x6d], CodeMode::Long).0.segment, None);
        assert_eq!(io_of(&[0x6e], CodeMode::Compat32).0.address_bits, 32);
        assert_eq!(io_of(&[0x67, 0x6e], CodeMode::Compat32).0.address_bits, 16);
        assert_eq!(io_of(&[0x6e], CodeMode::Compat16).0.address_bits, 16);
        // rep means nothing to a plain in/out.
        assert!(!io_of(&[0xf3, 0xec], CodeMode::Long).0.rep);
    }

    #[test]
    fn cli_and_sti() {
        assert_eq!(decode(&[0xfa], CodeMode::Long), Some(Decoded { insn: Insn::Cli, len: 1 }));
        assert_eq!(decode(&[0x3e, 0xfb], CodeMode::Compat32), Some(Decoded { insn: Insn::Sti, len: 2 }));
    }

    #[test]
    fn software_interrupt_permissions_follow_xen() {
        // Kernel mode counts as privilege 1, user mode as 3.
        for dpl in 0..=3u8 {
            assert_eq!(permit_softint(dpl, true), dpl >= 1, "kernel, dpl {dpl}");
            assert_eq!(permit_softint(dpl, false), dpl == 3, "user, dpl {dpl}");
        }
        assert_eq!(idt_error_code(0x20), 0x102);
        assert_eq!(idt_error_code(0xff), 0x7fa);
    }

    fn access(bytes: &[u8]) -> MemAccess {
        memory_access(bytes).unwrap_or_else(|| panic!("{bytes:x?} not decoded"))
    }

    #[test]
    fn memory_operands_name_their_segment_as_64_bit_code_does() {
        // movb $0,(%rsp): SIB with base rsp.
        let a = access(&[0xc6, 0x04, 0x24, 0x00]);
        assert_eq!((a.operand.base, a.operand.index, a.operand.segment), (Some(4), None, Segment::Ss));
        // movb $0,%fs:0x0(%rbp): the FS override wins.
        assert_eq!(access(&[0x64, 0xc6, 0x45, 0x00, 0x00]).operand.segment, Segment::Fs);
        // %es/%cs/%ss/%ds overrides are ignored: (%rbp) stays SS, (%rax) stays DS.
        assert_eq!(access(&[0x26, 0xc6, 0x45, 0x00, 0x00]).operand.segment, Segment::Ss);
        assert_eq!(access(&[0x36, 0xc6, 0x00, 0x00]).operand.segment, Segment::Ds);
        // r12 and r13 (REX.B) are not rsp and rbp.
        let a = access(&[0x41, 0xc6, 0x04, 0x24, 0x00]);
        assert_eq!((a.operand.base, a.operand.segment), (Some(12), Segment::Ds));
        assert_eq!(access(&[0x41, 0xc6, 0x45, 0x00, 0x00]).operand.segment, Segment::Ds);
        // A legacy prefix after REX voids it.
        assert_eq!(access(&[0x41, 0x3e, 0xc6, 0x04, 0x24, 0x00]).operand.base, Some(4));
        // movabs %al,0x8000000040000000.
        let a = access(&[0xa2, 0, 0, 0, 0x40, 0, 0, 0, 0x80]);
        assert_eq!((a.operand.segment, a.operand.effective_address(|_| 0)), (Segment::Ds, 0x8000_0000_4000_0000));
        // rip-relative and no-base forms are DS.
        assert!(access(&[0x8b, 0x05, 1, 0, 0, 0]).operand.rip_relative);
        let a = access(&[0x8b, 0x04, 0x25, 0x10, 0, 0, 0]);
        assert_eq!((a.operand.base, a.operand.segment, a.operand.disp), (None, Segment::Ds, 0x10));
        // SIB base rbp with mod 0 means no base; index rbp scaled by 8.
        let a = access(&[0x8b, 0x04, 0xed, 0, 0, 0, 0]);
        assert_eq!((a.operand.base, a.operand.index, a.operand.segment), (None, Some((5, 8)), Segment::Ds));
        // Effective address: base + index*scale + disp.
        let a = access(&[0x48, 0x8b, 0x44, 0x8b, 0xf8]); // mov -8(%rbx,%rcx,4),%rax
        assert_eq!(a.operand.effective_address(|r| [0, 0x10, 0, 0x1000][r as usize]), 0x1000 + 0x40 - 8);
    }

    #[test]
    fn only_plain_memory_forms_are_decoded() {
        for bytes in [
            &[0x0f, 0x01, 0x14, 0x24][..], // lgdt (%rsp): privileged
            &[0x89, 0xc0],                 // register form
            &[0x67, 0xc6, 0x04, 0x24, 0],  // 32-bit address
            &[0x8d, 0x04, 0x24],           // lea: no access
            &[0x8e, 0x14, 0x24],           // mov to a segment register
            &[0xff, 0x3c, 0x24],           // ff /7: undefined
            &[0xc6, 0x04],                 // SIB missing
        ] {
            assert_eq!(memory_access(bytes), None, "{bytes:x?}");
        }
    }

    #[test]
    fn far_pointers_read_their_selector_where_the_vendor_does() {
        let far = access(&[0x48, 0xff, 0x18]).far.expect("rex64 lcall *(%rax)");
        assert_eq!((far.offset_bytes(true), far.offset_bytes(false)), (8, 4));
        assert_eq!(access(&[0x66, 0xff, 0x28]).far.map(|f| f.offset_bytes(true)), Some(2));
        assert_eq!(access(&[0xff, 0x30]).far, None, "push is not far");
    }

    #[test]
    fn canonical_addresses() {
        assert!(canonical(0x7fff_ffff_ffff) && canonical(0xffff_8000_0000_0000) && canonical(0));
        assert!(!canonical(0x8000_0000_0000) && !canonical(0x8000_0000_4000_0000));
    }

    #[test]
    fn mov_ss_is_found_before_a_boundary() {
        // XTF's `mov 0xc(%rsp),%ss; nop`: the four bytes before the nop.
        let first = |before: &[u8], long| mov_ss_before(before, long).next();
        let op = first(&[0x90, 0x31, 0xc0, 0x8e, 0x54, 0x24, 0x0c], true).expect("mov ss");
        assert_eq!((op.base, op.disp, op.segment), (Some(4), 0xc, Segment::Ss));
        // rip-relative: relative to the boundary.
        let op = first(&[0x8e, 0x15, 0x10, 0, 0, 0], true).expect("mov ss rip");
        assert!(op.rip_relative && op.disp == 0x10);
        // 32-bit code: `mov (%esi),%ss`, and a disp32 that is absolute.
        assert_eq!(first(&[0x0f, 0x05, 0x8e, 0x16], false).map(|o| o.base), Some(Some(6)));
        let op = first(&[0x8e, 0x15, 0x10, 0, 0, 0], false).expect("absolute");
        assert!(!op.rip_relative && op.base.is_none());
        // Every reading: `41 8e 11` is mov (%r9),%ss, and its tail mov (%rcx),%ss.
        let bases: Vec<_> = mov_ss_before(&[0x41, 0x8e, 0x11], true).map(|o| o.base).collect();
        assert_eq!(bases, [Some(1), Some(9)]);
        // Not a mov to SS: to DS (/3), or from a register.
        assert_eq!(first(&[0x8e, 0x5c, 0x24, 0x0c], true), None);
        assert_eq!(first(&[0x8e, 0xd0], true), None);
        // Bytes that end mid-way through a longer mov ss do not count.
        assert_eq!(first(&[0x8e, 0x54, 0x24], true), None);
        assert_eq!(first(&[0x90], true), None);
    }

    #[test]
    fn far_returns_and_their_operand_sizes() {
        assert_eq!(far_return(&[0x48, 0xcb], CodeMode::Long), Some(FarReturn { slot_bytes: 8, release: 0 }));
        assert_eq!(far_return(&[0xcb], CodeMode::Long), Some(FarReturn { slot_bytes: 4, release: 0 }));
        assert_eq!(far_return(&[0x66, 0xca, 0x10, 0x00], CodeMode::Compat32), Some(FarReturn { slot_bytes: 2, release: 16 }));
        assert_eq!(far_return(&[0xcb], CodeMode::Compat16).map(|r| r.slot_bytes), Some(2));
        // REX.W voided by a later prefix.
        assert_eq!(far_return(&[0x48, 0x2e, 0xcb], CodeMode::Long).map(|r| r.slot_bytes), Some(4));
        assert_eq!(far_return(&[0xc3], CodeMode::Long), None);
        assert_eq!(far_return(&[0xca, 0x10], CodeMode::Long), None);
    }
}

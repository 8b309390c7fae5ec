//! Decoding the few guest instructions the hypervisor looks at after a #GP: software
//! interrupts (`int imm8`, `int3`, `into`, `int1`) and port I/O (`in`, `out`, `ins`,
//! `outs`), plus `cli`/`sti`, each with the prefixes the hardware allows.
//!
//! Pure and host-tested. `pv::traps` decodes the bytes at a faulting rip instead of
//! trusting #GP's error code (QEMU's TCG reports a faulting `int n` as vector `2n`), and
//! `pv::emulate` decodes port I/O and the interrupt flag instructions, which a PV guest's
//! virtual IOPL may allow. The decoder only names an instruction and its length: it never
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
}

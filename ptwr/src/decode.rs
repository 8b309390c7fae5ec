//! The decoder: bytes at the faulting rip to an [`Instruction`], for the forms the crate
//! claims (see the crate doc); everything else is [`DecodeError::Unsupported`].

/// The longest x86 instruction; a longer one raises #GP on hardware.
pub const MAX_LEN: usize = 15;

/// A segment override that changes an address in 64-bit mode (CS, DS, ES and SS
/// overrides are accepted and ignored: their base is 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `fs:` (0x64): the FS base is added.
    Fs,
    /// `gs:` (0x65): the GS base is added.
    Gs,
}

/// A general register operand: `num` 0-15 (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi,
/// r8-r15), or, with `high_byte`, bits 8-15 of register `num` (0-3: AH, CH, DH, BH, which
/// byte operations without a REX prefix encode as 4-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    /// Register number.
    pub num: u8,
    /// Bits 8-15 of it.
    pub high_byte: bool,
}

impl Reg {
    const fn full(num: u8) -> Reg {
        Reg { num, high_byte: false }
    }
}

/// The memory operand: `segment base + base + index * scale + disp`, or for RIP-relative
/// addressing `rip of the next instruction + disp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Base register.
    pub base: Option<u8>,
    /// Index register (never rsp).
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// Displacement, sign-extended.
    pub disp: i32,
    /// RIP-relative (`base` and `index` are then `None`).
    pub rip_relative: bool,
    /// FS or GS override.
    pub segment: Option<Segment>,
}

/// The second operand of a two-operand instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A register of the operand size.
    Reg(Reg),
    /// An immediate, sign-extended as the encoding says and truncated to the operand size.
    Imm(u64),
}

/// The arithmetic and logic operations claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Or,
    And,
    Sub,
    Xor,
}

/// The bit operations claimed (`bt`, which writes nothing, is not one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    Bts,
    Btr,
    Btc,
}

/// What the instruction does with its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `mov m, r` / `mov m, imm`.
    Mov(Source),
    /// `xchg m, r` (locked, whatever the prefixes).
    Xchg(Reg),
    /// `cmpxchg m, r` (the accumulator is the comparand).
    Cmpxchg(Reg),
    /// `cmpxchg8b m64` (edx:eax against m64, ecx:ebx stored).
    Cmpxchg8b,
    /// `op m, r` / `op m, imm`.
    Alu(AluOp, Source),
    /// `bts`/`btr`/`btc m, r` (the register's signed value may select a bit outside the
    /// operand: the address moves, as on hardware) or `m, imm8` (taken modulo the width).
    Bit(BitOp, Source),
}

/// A decoded instruction that writes memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Its length in bytes (1-15).
    pub len: u8,
    /// Operand size in bytes: 1, 2, 4 or 8 (8 for `cmpxchg8b`).
    pub size: u8,
    /// What it does.
    pub operation: Operation,
    /// Where it writes.
    pub memory: Memory,
    /// A `lock` prefix was present.
    pub lock: bool,
}

/// Why bytes were not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// Not an instruction (or form) this crate emulates, or not a valid instruction.
    Unsupported,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::Unsupported);
        }
        let byte = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::Unsupported);
        }
        self.bytes.get(self.pos).copied().ok_or(DecodeError::Truncated)
    }

    fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..n {
            value |= u64::from(self.next()?) << (8 * i);
        }
        Ok(value)
    }
}

/// The REX bits (0 when there is none; `present` matters for byte registers).
#[derive(Clone, Copy, Default)]
struct Rex {
    present: bool,
    w: bool,
    r: u8,
    x: u8,
    b: u8,
}

impl Rex {
    fn from_byte(byte: u8) -> Rex {
        Rex { present: true, w: byte & 8 != 0, r: (byte >> 2) & 1, x: (byte >> 1) & 1, b: byte & 1 }
    }
}

/// Decodes the instruction at the start of `bytes` (64-bit code).
pub fn decode(bytes: &[u8]) -> Result<Instruction, DecodeError> {
    let mut cur = Cursor { bytes, pos: 0 };
    let mut lock = false;
    let mut operand16 = false;
    let mut segment = None;
    let mut rex = Rex::default();
    loop {
        let byte = cur.peek()?;
        match byte {
            0x40..=0x4f => rex = Rex::from_byte(byte),
            _ => {
                match byte {
                    0xf0 => lock = true,
                    0x66 => operand16 = true,
                    0x26 | 0x2e | 0x36 | 0x3e => {}
                    0x64 => segment = Some(Segment::Fs),
                    0x65 => segment = Some(Segment::Gs),
                    // rep/repne (XACQUIRE/XRELEASE with lock) and the address-size prefix.
                    0xf2 | 0xf3 | 0x67 => return Err(DecodeError::Unsupported),
                    _ => break,
                }
                // A REX prefix counts only right before the opcode.
                rex = Rex::default();
            }
        }
        cur.pos += 1;
    }
    let size_v: u8 = if rex.w { 8 } else if operand16 { 2 } else { 4 };
    let opcode = cur.next()?;
    let (size, operation, memory) = match opcode {
        0x88 | 0x89 | 0x86 | 0x87 | 0x00 | 0x01 | 0x08 | 0x09 | 0x20 | 0x21 | 0x28 | 0x29 | 0x30 | 0x31 => {
            let size = if opcode & 1 == 0 { 1 } else { size_v };
            let (reg, memory) = modrm(&mut cur, rex, segment)?;
            let reg = register(reg, size, rex);
            let operation = match opcode & !1 {
                0x88 => Operation::Mov(Source::Reg(reg)),
                0x86 => Operation::Xchg(reg),
                0x00 => Operation::Alu(AluOp::Add, Source::Reg(reg)),
                0x08 => Operation::Alu(AluOp::Or, Source::Reg(reg)),
                0x20 => Operation::Alu(AluOp::And, Source::Reg(reg)),
                0x28 => Operation::Alu(AluOp::Sub, Source::Reg(reg)),
                _ => Operation::Alu(AluOp::Xor, Source::Reg(reg)),
            };
            (size, operation, memory)
        }
        0xc6 | 0xc7 => {
            let size = if opcode == 0xc6 { 1 } else { size_v };
            let (reg, memory) = modrm(&mut cur, rex, segment)?;
            if reg & 7 != 0 {
                return Err(DecodeError::Unsupported);
            }
            (size, Operation::Mov(Source::Imm(immediate(&mut cur, size)?)), memory)
        }
        0x80 | 0x81 | 0x83 => {
            let size = if opcode == 0x80 { 1 } else { size_v };
            let (reg, memory) = modrm(&mut cur, rex, segment)?;
            let op = match reg & 7 {
                0 => AluOp::Add,
                1 => AluOp::Or,
                4 => AluOp::And,
                5 => AluOp::Sub,
                6 => AluOp::Xor,
                // adc, sbb (not claimed) and cmp (writes nothing).
                _ => return Err(DecodeError::Unsupported),
            };
            let imm = if opcode == 0x83 { immediate(&mut cur, 1)? as u8 as i8 as u64 & mask(size) } else { immediate(&mut cur, size)? };
            (size, Operation::Alu(op, Source::Imm(imm)), memory)
        }
        0x0f => {
            let second = cur.next()?;
            match second {
                0xb0 | 0xb1 => {
                    let size = if second == 0xb0 { 1 } else { size_v };
                    let (reg, memory) = modrm(&mut cur, rex, segment)?;
                    (size, Operation::Cmpxchg(register(reg, size, rex)), memory)
                }
                0xc7 => {
                    let (reg, memory) = modrm(&mut cur, rex, segment)?;
                    // /1 without REX.W; with it, cmpxchg16b (two entries: refused, as by Xen).
                    if reg & 7 != 1 || rex.w {
                        return Err(DecodeError::Unsupported);
                    }
                    (8, Operation::Cmpxchg8b, memory)
                }
                0xab | 0xb3 | 0xbb => {
                    let (reg, memory) = modrm(&mut cur, rex, segment)?;
                    let op = match second {
                        0xab => BitOp::Bts,
                        0xb3 => BitOp::Btr,
                        _ => BitOp::Btc,
                    };
                    (size_v, Operation::Bit(op, Source::Reg(Reg::full(reg))), memory)
                }
                0xba => {
                    let (reg, memory) = modrm(&mut cur, rex, segment)?;
                    let op = match reg & 7 {
                        5 => BitOp::Bts,
                        6 => BitOp::Btr,
                        7 => BitOp::Btc,
                        _ => return Err(DecodeError::Unsupported),
                    };
                    (size_v, Operation::Bit(op, Source::Imm(immediate(&mut cur, 1)?)), memory)
                }
                _ => return Err(DecodeError::Unsupported),
            }
        }
        _ => return Err(DecodeError::Unsupported),
    };
    // `lock` is valid on these forms only; elsewhere it raises #UD.
    if lock && matches!(operation, Operation::Mov(_)) {
        return Err(DecodeError::Unsupported);
    }
    Ok(Instruction { len: cur.pos as u8, size, operation, memory, lock })
}

/// The operand mask of a size in bytes.
pub(crate) const fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}

/// An immediate of the operand size: 8 and 16 bits as they are, 32 bits for 4- and 8-byte
/// operands (sign-extended for 8).
fn immediate(cur: &mut Cursor, size: u8) -> Result<u64, DecodeError> {
    Ok(match size {
        1 => cur.le(1)?,
        2 => cur.le(2)?,
        4 => cur.le(4)?,
        _ => cur.le(4)? as u32 as i32 as i64 as u64,
    })
}

/// The ModRM register field as a register operand of `size`.
fn register(field: u8, size: u8, rex: Rex) -> Reg {
    if size == 1 && !rex.present && (4..8).contains(&field) {
        Reg { num: field - 4, high_byte: true }
    } else {
        Reg::full(field)
    }
}

/// Reads ModRM (and SIB and displacement): the register field (with REX.R) and the memory
/// operand; a register operand (mod 3) is refused.
fn modrm(cur: &mut Cursor, rex: Rex, segment: Option<Segment>) -> Result<(u8, Memory), DecodeError> {
    let byte = cur.next()?;
    let mode = byte >> 6;
    let reg = ((byte >> 3) & 7) | (rex.r << 3);
    let rm = byte & 7;
    if mode == 3 {
        return Err(DecodeError::Unsupported);
    }
    let mut memory = Memory { base: None, index: None, scale: 1, disp: 0, rip_relative: false, segment };
    let mut disp_size = match mode {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = cur.next()?;
        let index = ((sib >> 3) & 7) | (rex.x << 3);
        let base = sib & 7;
        memory.scale = 1 << (sib >> 6);
        if index != 4 {
            memory.index = Some(index);
        }
        if base == 5 && mode == 0 {
            disp_size = 4;
        } else {
            memory.base = Some(base | (rex.b << 3));
        }
    } else if rm == 5 && mode == 0 {
        memory.rip_relative = true;
        disp_size = 4;
    } else {
        memory.base = Some(rm | (rex.b << 3));
    }
    memory.disp = match disp_size {
        1 => cur.le(1)? as u8 as i8 as i32,
        4 => cur.le(4)? as u32 as i32,
        _ => 0,
    };
    Ok((reg, memory))
}

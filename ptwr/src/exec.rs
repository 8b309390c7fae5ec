//! The semantics: the address an [`Instruction`] writes, and what it does to its memory
//! operand, its registers and the arithmetic flags, as the processor does it (the flags
//! the manuals leave undefined are left as they were).

use crate::decode::{mask, AluOp, BitOp, Instruction, Operation, Reg, Segment, Source};

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary-carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// Every flag an emulated instruction may change; the rest of RFLAGS is never touched.
pub const ARITHMETIC_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// The registers an instruction reads and writes: the 16 general registers by number
/// (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8-r15) and RFLAGS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// General registers.
    pub gpr: [u64; 16],
    /// RFLAGS.
    pub rflags: u64,
}

/// The memory an instruction writes: `size` bytes at `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Linear address (wrapped to 64 bits, as the processor computes it).
    pub address: u64,
    /// Bytes.
    pub size: u8,
}

impl State {
    /// The value of `reg` at operand `size`.
    fn read(&self, reg: Reg, size: u8) -> u64 {
        let full = self.gpr[usize::from(reg.num & 15)];
        if reg.high_byte {
            (full >> 8) & 0xff
        } else {
            full & mask(size)
        }
    }

    /// Writes `value` to `reg` at operand `size`: a 4-byte write clears bits 32-63, 1- and
    /// 2-byte writes keep the other bits.
    fn write(&mut self, reg: Reg, size: u8, value: u64) {
        let slot = &mut self.gpr[usize::from(reg.num & 15)];
        *slot = if reg.high_byte {
            (*slot & !0xff00) | ((value & 0xff) << 8)
        } else if size == 4 {
            value & mask(4)
        } else {
            (*slot & !mask(size)) | (value & mask(size))
        };
    }

    fn set_flags(&mut self, changed: u64, set: u64) {
        self.rflags = (self.rflags & !changed) | (set & changed);
    }
}

const fn sign(size: u8) -> u64 {
    1 << (size as u32 * 8 - 1)
}

/// ZF, SF and PF of a result.
fn result_flags(result: u64, size: u8) -> u64 {
    let mut flags = 0;
    if result & mask(size) == 0 {
        flags |= ZF;
    }
    if result & sign(size) != 0 {
        flags |= SF;
    }
    if (result as u8).count_ones().is_multiple_of(2) {
        flags |= PF;
    }
    flags
}

/// `a + b` and its flags.
fn add(a: u64, b: u64, size: u8) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = u128::from(a) + u128::from(b);
    let result = (wide as u64) & m;
    let mut flags = result_flags(result, size);
    if wide > u128::from(m) {
        flags |= CF;
    }
    if (a ^ result) & (b ^ result) & sign(size) != 0 {
        flags |= OF;
    }
    if (a ^ b ^ result) & 0x10 != 0 {
        flags |= AF;
    }
    (result, flags)
}

/// `a - b` and its flags (also `cmp`).
fn sub(a: u64, b: u64, size: u8) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let result = a.wrapping_sub(b) & m;
    let mut flags = result_flags(result, size);
    if a < b {
        flags |= CF;
    }
    if (a ^ b) & (a ^ result) & sign(size) != 0 {
        flags |= OF;
    }
    if (a ^ b ^ result) & 0x10 != 0 {
        flags |= AF;
    }
    (result, flags)
}

impl Instruction {
    /// The memory this instruction writes when run at `rip` with `state`, `fs_base` and
    /// `gs_base`: its effective address (plus the segment base of an FS or GS override),
    /// moved by the bit offset of a `bt*` with a register offset (the signed offset
    /// divided by the operand width, in whole operands, as the processor addresses a bit
    /// string).
    pub fn access(&self, state: &State, rip: u64, fs_base: u64, gs_base: u64) -> Access {
        let memory = &self.memory;
        let mut address = memory.disp as i64 as u64;
        if memory.rip_relative {
            address = address.wrapping_add(rip.wrapping_add(u64::from(self.len)));
        }
        if let Some(base) = memory.base {
            address = address.wrapping_add(state.gpr[usize::from(base & 15)]);
        }
        if let Some(index) = memory.index {
            address = address.wrapping_add(state.gpr[usize::from(index & 15)].wrapping_mul(u64::from(memory.scale)));
        }
        match memory.segment {
            Some(Segment::Fs) => address = address.wrapping_add(fs_base),
            Some(Segment::Gs) => address = address.wrapping_add(gs_base),
            None => {}
        }
        if let Operation::Bit(_, Source::Reg(reg)) = self.operation {
            let bits = u32::from(self.size) * 8;
            let offset = sign_extend(state.read(reg, self.size), self.size);
            // Whole operands before or after: an arithmetic shift rounds toward minus
            // infinity, as the processor does.
            let operands = offset >> bits.trailing_zeros();
            address = address.wrapping_add((operands as u64).wrapping_mul(u64::from(self.size)));
        }
        Access { address, size: self.size }
    }

    /// Runs the instruction on `old`, the current value of its memory operand (the
    /// [`Self::access`] bytes, little-endian): updates `state` and returns the value to
    /// store, or `None` when nothing is stored (a `cmpxchg` or `cmpxchg8b` whose comparison
    /// failed).
    pub fn execute(&self, state: &mut State, old: u64) -> Option<u64> {
        let size = self.size;
        let old = old & mask(size);
        let source = |state: &State, source: Source| match source {
            Source::Reg(reg) => state.read(reg, size),
            Source::Imm(value) => value & mask(size),
        };
        match self.operation {
            Operation::Mov(from) => Some(source(state, from)),
            Operation::Xchg(reg) => {
                let new = state.read(reg, size);
                state.write(reg, size, old);
                Some(new)
            }
            Operation::Cmpxchg(reg) => {
                let accumulator = Reg { num: 0, high_byte: false };
                let (_, flags) = sub(state.read(accumulator, size), old, size);
                state.set_flags(ARITHMETIC_FLAGS, flags);
                if flags & ZF != 0 {
                    Some(state.read(reg, size))
                } else {
                    state.write(accumulator, size, old);
                    None
                }
            }
            Operation::Cmpxchg8b => {
                let (rax, rcx, rdx, rbx) = (state.gpr[0], state.gpr[1], state.gpr[2], state.gpr[3]);
                let expected = (rdx << 32) | (rax & mask(4));
                if expected == old {
                    state.set_flags(ZF, ZF);
                    Some((rcx << 32) | (rbx & mask(4)))
                } else {
                    state.set_flags(ZF, 0);
                    state.gpr[0] = old & mask(4);
                    state.gpr[2] = old >> 32;
                    None
                }
            }
            Operation::Alu(op, from) => {
                let value = source(state, from);
                let (result, flags) = match op {
                    AluOp::Add => add(old, value, size),
                    AluOp::Sub => sub(old, value, size),
                    AluOp::Or => logic(old | value, size),
                    AluOp::And => logic(old & value, size),
                    AluOp::Xor => logic(old ^ value, size),
                };
                state.set_flags(ARITHMETIC_FLAGS, flags);
                Some(result)
            }
            Operation::Bit(op, from) => {
                let bits = u64::from(size) * 8;
                let bit = match from {
                    Source::Reg(reg) => state.read(reg, size) & (bits - 1),
                    Source::Imm(value) => value & (bits - 1),
                };
                let selected = 1u64 << bit;
                state.set_flags(CF, if old & selected != 0 { CF } else { 0 });
                Some(match op {
                    BitOp::Bts => old | selected,
                    BitOp::Btr => old & !selected,
                    BitOp::Btc => old ^ selected,
                })
            }
        }
    }
}

/// The flags of a logic operation: CF and OF clear, AF clear (undefined on hardware).
fn logic(result: u64, size: u8) -> (u64, u64) {
    let result = result & mask(size);
    (result, result_flags(result, size))
}

fn sign_extend(value: u64, size: u8) -> i64 {
    let shift = 64 - u32::from(size) * 8;
    ((value << shift) as i64) >> shift
}

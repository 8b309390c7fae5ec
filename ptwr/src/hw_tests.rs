//! The semantics against the processor running the tests: each claimed form runs for real
//! (inline assembly on a buffer, with chosen registers and flags) and through
//! [`crate::decode`], [`crate::Instruction::access`] and [`crate::emulate_on_entry`] on a
//! copy of the buffer; memory, registers and the flags the manuals define must agree.
//! The encodings are written out by hand beside each template (and each must decode to an
//! instruction, or the case fails).

use core::arch::asm;

use proptest::prelude::*;

use crate::exec::{State, ARITHMETIC_FLAGS, CF, ZF};
use crate::{decode, emulate_on_entry, entry_of, Operation};

/// The buffer the instructions write: 8 entries, the memory operand based at entry 4.
type Buffer = [u64; 8];
const BASE: usize = 4;

/// Registers in and out: rax, rcx, rdx, rbx, rsi (rdi holds the address), RFLAGS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Regs {
    rax: u64,
    rcx: u64,
    rdx: u64,
    rbx: u64,
    rsi: u64,
    flags: u64,
}

macro_rules! on_hardware {
    ($($name:ident: $template:literal,)*) => {
        $(
            fn $name(buffer: &mut Buffer, regs: Regs) -> Regs {
                let Regs { mut rax, mut rcx, mut rdx, mut rbx, mut rsi, flags } = regs;
                // Only the arithmetic flags (and the always-set bit 1) go in: DF, TF and
                // the rest stay as the compiler expects them.
                let mut flags = (flags & ARITHMETIC_FLAGS) | 2;
                let address = buffer[BASE..].as_mut_ptr();
                // SAFETY: the instruction reads and writes the buffer at `address` (entry 4)
                // and at most 4 entries before or 3 after it (the bit offsets the tests
                // choose keep within them); rbx is swapped in and out around it (LLVM
                // reserves it), the flags are restored through the stack, which the
                // compiler allows since `nostack` is not given, and every other register
                // the template writes is an output.
                unsafe {
                    asm!(
                        "xchg rbx, {rbx}",
                        "push {flags}",
                        "popfq",
                        $template,
                        "pushfq",
                        "pop {flags}",
                        "xchg rbx, {rbx}",
                        rbx = inout(reg) rbx,
                        flags = inout(reg) flags,
                        in("rdi") address,
                        inout("rsi") rsi,
                        inout("rax") rax,
                        inout("rcx") rcx,
                        inout("rdx") rdx,
                    );
                }
                Regs { rax, rcx, rdx, rbx, rsi, flags }
            }
        )*
    };
}

on_hardware! {
    add64: "lock add qword ptr [rdi], rsi",
    add32: "lock add dword ptr [rdi], esi",
    add16: "lock add word ptr [rdi], si",
    add8: "lock add byte ptr [rdi], sil",
    or64: "lock or qword ptr [rdi], rsi",
    and64: "lock and qword ptr [rdi], rsi",
    sub64: "lock sub qword ptr [rdi], rsi",
    xor32_disp: "lock xor dword ptr [rdi + 8], esi",
    and8_imm: "lock and byte ptr [rdi + 1], 0xfd",
    or64_imm8: "lock or qword ptr [rdi], -2",
    add64_imm32: "lock add qword ptr [rdi], -0x12345678",
    sub16_imm: "lock sub word ptr [rdi], 0x1234",
    mov64: "mov qword ptr [rdi], rsi",
    mov8_dh: "mov byte ptr [rdi + 3], dh",
    mov64_imm: "mov qword ptr [rdi], -5",
    mov16_imm: "mov word ptr [rdi + 2], 0xbeef",
    xchg64: "xchg qword ptr [rdi], rsi",
    xchg32: "xchg dword ptr [rdi], esi",
    xchg8_dh: "xchg byte ptr [rdi], dh",
    xchg16: "xchg word ptr [rdi], si",
    cmpxchg64: "lock cmpxchg qword ptr [rdi], rsi",
    cmpxchg32: "lock cmpxchg dword ptr [rdi], esi",
    cmpxchg8: "lock cmpxchg byte ptr [rdi], sil",
    cmpxchg8b: "lock cmpxchg8b qword ptr [rdi]",
    bts64: "lock bts qword ptr [rdi], rsi",
    btr32: "lock btr dword ptr [rdi], esi",
    btc16: "lock btc word ptr [rdi], si",
    btr64_imm: "lock btr qword ptr [rdi], 63",
    bts32_imm: "lock bts dword ptr [rdi], 37",
    btc64_imm: "lock btc qword ptr [rdi], 200",
}

/// What a case compares of the flags.
#[derive(Clone, Copy)]
enum Defined {
    /// All six arithmetic flags (changed as defined, or unchanged).
    All,
    /// All but AF (undefined after logic operations).
    NotAf,
    /// CF only (bit operations leave OF, SF, AF and PF undefined; ZF unchanged on Intel,
    /// undefined on some AMD parts).
    CarryOnly,
}

struct Case {
    name: &'static str,
    run: fn(&mut Buffer, Regs) -> Regs,
    bytes: &'static [u8],
    defined: Defined,
}

const fn case(name: &'static str, run: fn(&mut Buffer, Regs) -> Regs, bytes: &'static [u8], defined: Defined) -> Case {
    Case { name, run, bytes, defined }
}

const CASES: &[Case] = &[
    case("add64", add64, &[0xf0, 0x48, 0x01, 0x37], Defined::All),
    case("add32", add32, &[0xf0, 0x01, 0x37], Defined::All),
    case("add16", add16, &[0xf0, 0x66, 0x01, 0x37], Defined::All),
    case("add8", add8, &[0xf0, 0x40, 0x00, 0x37], Defined::All),
    case("or64", or64, &[0xf0, 0x48, 0x09, 0x37], Defined::NotAf),
    case("and64", and64, &[0xf0, 0x48, 0x21, 0x37], Defined::NotAf),
    case("sub64", sub64, &[0xf0, 0x48, 0x29, 0x37], Defined::All),
    case("xor32_disp", xor32_disp, &[0xf0, 0x31, 0x77, 0x08], Defined::NotAf),
    case("and8_imm", and8_imm, &[0xf0, 0x80, 0x67, 0x01, 0xfd], Defined::NotAf),
    case("or64_imm8", or64_imm8, &[0xf0, 0x48, 0x83, 0x0f, 0xfe], Defined::NotAf),
    case("add64_imm32", add64_imm32, &[0xf0, 0x48, 0x81, 0x07, 0x88, 0xa9, 0xcb, 0xed], Defined::All),
    case("sub16_imm", sub16_imm, &[0xf0, 0x66, 0x81, 0x2f, 0x34, 0x12], Defined::All),
    case("mov64", mov64, &[0x48, 0x89, 0x37], Defined::All),
    case("mov8_dh", mov8_dh, &[0x88, 0x77, 0x03], Defined::All),
    case("mov64_imm", mov64_imm, &[0x48, 0xc7, 0x07, 0xfb, 0xff, 0xff, 0xff], Defined::All),
    case("mov16_imm", mov16_imm, &[0x66, 0xc7, 0x47, 0x02, 0xef, 0xbe], Defined::All),
    case("xchg64", xchg64, &[0x48, 0x87, 0x37], Defined::All),
    case("xchg32", xchg32, &[0x87, 0x37], Defined::All),
    case("xchg8_dh", xchg8_dh, &[0x86, 0x37], Defined::All),
    case("xchg16", xchg16, &[0x66, 0x87, 0x37], Defined::All),
    case("cmpxchg64", cmpxchg64, &[0xf0, 0x48, 0x0f, 0xb1, 0x37], Defined::All),
    case("cmpxchg32", cmpxchg32, &[0xf0, 0x0f, 0xb1, 0x37], Defined::All),
    case("cmpxchg8", cmpxchg8, &[0xf0, 0x40, 0x0f, 0xb0, 0x37], Defined::All),
    case("cmpxchg8b", cmpxchg8b, &[0xf0, 0x0f, 0xc7, 0x0f], Defined::All),
    case("bts64", bts64, &[0xf0, 0x48, 0x0f, 0xab, 0x37], Defined::CarryOnly),
    case("btr32", btr32, &[0xf0, 0x0f, 0xb3, 0x37], Defined::CarryOnly),
    case("btc16", btc16, &[0xf0, 0x66, 0x0f, 0xbb, 0x37], Defined::CarryOnly),
    case("btr64_imm", btr64_imm, &[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x3f], Defined::CarryOnly),
    case("bts32_imm", bts32_imm, &[0xf0, 0x0f, 0xba, 0x2f, 0x25], Defined::CarryOnly),
    case("btc64_imm", btc64_imm, &[0xf0, 0x48, 0x0f, 0xba, 0x3f, 0xc8], Defined::CarryOnly),
];

/// Runs `case` through the emulation on a copy of `buffer`.
fn emulate(case: &Case, buffer: &mut Buffer, regs: Regs) -> Regs {
    let insn = decode(case.bytes).unwrap_or_else(|e| panic!("{}: {e:?}", case.name));
    assert_eq!(usize::from(insn.len), case.bytes.len(), "{}: length", case.name);
    let start = buffer.as_ptr() as u64;
    let mut state = State::default();
    state.gpr[0] = regs.rax;
    state.gpr[1] = regs.rcx;
    state.gpr[2] = regs.rdx;
    state.gpr[3] = regs.rbx;
    state.gpr[6] = regs.rsi;
    state.gpr[7] = start + (BASE as u64) * 8;
    state.rflags = regs.flags;
    let access = insn.access(&state, 0, 0, 0);
    let offset = access.address.wrapping_sub(start);
    assert!(offset + u64::from(access.size) <= 64, "{}: access at {offset} leaves the buffer", case.name);
    let spot = entry_of(access, access.address).unwrap_or_else(|e| panic!("{}: {e:?}", case.name));
    let entry = (offset / 8) as usize;
    if let Some(new) = emulate_on_entry(&insn, &mut state, spot, buffer[entry]) {
        buffer[entry] = new;
    }
    Regs { rax: state.gpr[0], rcx: state.gpr[1], rdx: state.gpr[2], rbx: state.gpr[3], rsi: state.gpr[6], flags: state.rflags }
}

fn compare(case: &Case, buffer: Buffer, regs: Regs) {
    let regs = Regs { flags: (regs.flags & ARITHMETIC_FLAGS) | 2, ..regs };
    let (mut on_hw, mut emulated) = (buffer, buffer);
    let hw = (case.run)(&mut on_hw, regs);
    let ours = emulate(case, &mut emulated, regs);
    let defined = match case.defined {
        Defined::All => ARITHMETIC_FLAGS,
        Defined::NotAf => ARITHMETIC_FLAGS & !crate::AF,
        Defined::CarryOnly => CF,
    };
    assert_eq!(emulated, on_hw, "{}: memory, from {buffer:x?} with {regs:x?}", case.name);
    let without_flags = |r: Regs| Regs { flags: 0, ..r };
    assert_eq!(without_flags(ours), without_flags(hw), "{}: registers, from {buffer:x?} with {regs:x?}", case.name);
    assert_eq!(ours.flags & defined, hw.flags & defined, "{}: flags, from {buffer:x?} with {regs:x?}", case.name);
    // Undefined flags aside, nothing else changes.
    assert_eq!(ours.flags & !ARITHMETIC_FLAGS, regs.flags & !ARITHMETIC_FLAGS, "{}", case.name);
}

/// Register values: bit offsets for the `bt*` register forms stay within the buffer (-256
/// to 191 bits at any width, upper bits random); half the time rax (and rdx) equal the
/// memory operand so that `cmpxchg` succeeds.
fn inputs() -> impl Strategy<Value = (usize, Buffer, Regs, bool, i64)> {
    (0..CASES.len(), any::<Buffer>(), any::<[u64; 6]>(), any::<bool>(), -256i64..192)
        .prop_map(|(case, buffer, [rax, rcx, rdx, rbx, rsi, flags], equal, offset)| {
            (case, buffer, Regs { rax, rcx, rdx, rbx, rsi, flags }, equal, offset)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn every_claimed_form_does_what_the_processor_does((index, buffer, mut regs, equal, offset) in inputs()) {
        let case = &CASES[index];
        let insn = decode(case.bytes).unwrap();
        if let Operation::Bit(_, crate::Source::Reg(_)) = insn.operation {
            let mask = crate::decode::mask(insn.size);
            regs.rsi = (regs.rsi & !mask) | (offset as u64 & mask);
        }
        if equal {
            let operand = buffer[BASE] & crate::decode::mask(insn.size.min(8));
            regs.rax = (regs.rax & !crate::decode::mask(insn.size)) | operand;
            regs.rdx = buffer[BASE] >> 32;
        }
        compare(case, buffer, regs);
    }
}

#[test]
fn cmpxchg_outcomes_both_happen() {
    // A failing and a succeeding compare for each width, with the flags set before.
    for case in CASES.iter().filter(|c| c.name.starts_with("cmpxchg")) {
        let buffer = [0x1111_2222_3333_4444; 8];
        let regs = Regs { rax: 0xffff_ffff_0000_0000 | 0x3333_4444, rcx: 7, rdx: 0x1111_2222, rbx: 9, rsi: 0x5555, flags: ZF };
        compare(case, buffer, regs);
        compare(case, buffer, Regs { rax: 1, flags: 0, ..regs });
    }
}

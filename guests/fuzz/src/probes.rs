//! Instructions a PV kernel may not (or may) run, run from guest kernel mode with random
//! register inputs: I/O ports, MSRs, control and debug registers, descriptor-table loads
//! and stores, `swapgs`, `sysret`, `sysenter`, `int n` for every n, `int3`, `int1`,
//! `into`, `ud2`, forced-emulation CPUID, segment loads, far jumps, calls and returns,
//! `iretq` frames, flag changes, x87/SSE state, and loads and stores at hostile
//! addresses (the hypervisor's window, its aliases, non-canonical ones).
//!
//! Each probe is a small function in assembly: optional set-up, the instruction at a
//! label, a resume label, clean-up (segment registers back to the flat ones, the stack
//! pointer back after a far call or `iretq`), `ret`. [`run`] arms the instruction's
//! address with [`crate::guard`], calls the probe, and disarms: a fault the hypervisor
//! bounces resumes after the instruction. A load or store at a hostile address must fault:
//! if it does not, the probe reports "fuzz: BUG ..." (the hypervisor's memory or another's
//! reached from a guest). Called by the op loop; this module must never run an instruction
//! whose success would change the program's own memory, stack or page tables.

use core::arch::{asm, global_asm};

use guest_fuzz::gen::Gen;
use guest_fuzz::options::Class;
use guest_fuzz::world::{alias_of, WINDOW, WINDOW_SIZE};
use guest_rt::println;

use crate::guard;
use crate::report;

/// What a probe's random register inputs (rax, rcx, rdx; rdi is always a scratch buffer)
/// should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inputs {
    Random,
    /// ax: a selector.
    Selector,
    /// cx: a far pointer's selector, never the 32-bit code one (in 32-bit mode the
    /// fuzzer's code would run at a truncated address).
    FarSelector,
    /// cx: a code selector, dx: a stack selector for an `iretq`/`lretq` frame.
    Frame,
    /// ecx: an MSR number.
    Msr,
    /// rdx: a hostile address (the window, an alias, a non-canonical one).
    Hostile,
}

/// One probe: its name and what it needs.
#[derive(Clone, Copy, Debug)]
struct Probe {
    name: &'static str,
    inputs: Inputs,
    /// It must fault (a hostile load or store).
    must_fault: bool,
    /// It is in an avoidable class.
    class: Option<Class>,
}

/// An entry of the assembly table: the probe's entry, its instruction and its resume label.
#[repr(C)]
#[derive(Clone, Copy)]
struct Addresses {
    entry: u64,
    at: u64,
    resume: u64,
}

macro_rules! probes {
    ($($name:ident: $inputs:ident, $fault:literal, $class:expr, [$($pre:literal),*], [$($insn:literal),*], [$($post:literal),*];)*) => {
        global_asm!(
            ".pushsection .text.fuzz_probes,\"ax\",@progbits",
            $(
                concat!("fuzz_probe_", stringify!($name), ":"),
                $($pre,)*
                concat!("fuzz_probe_", stringify!($name), "_at:"),
                $($insn,)*
                concat!("fuzz_probe_", stringify!($name), "_resume:"),
                $($post,)*
                "ret",
            )*
            ".popsection",
            ".pushsection .rodata.fuzz_probes,\"a\",@progbits",
            ".balign 8",
            "fuzz_probe_table:",
            $(
                concat!(".quad fuzz_probe_", stringify!($name), ", fuzz_probe_", stringify!($name), "_at, fuzz_probe_", stringify!($name), "_resume"),
            )*
            ".popsection",
        );

        const PROBES: &[Probe] = &[$(Probe { name: stringify!($name), inputs: Inputs::$inputs, must_fault: $fault, class: $class }),*];
    };
}

probes! {
    cli: Random, false, None, [], ["cli"], [];
    sti: Random, false, None, [], ["sti"], [];
    hlt: Random, false, None, [], ["hlt"], [];
    in_dx: Random, false, None, [], ["in al, dx"], [];
    out_dx: Random, false, None, [], ["out dx, al"], [];
    in_imm: Random, false, None, [], ["in al, 0x80"], [];
    out_pic: Random, false, None, [], ["out 0x21, al"], [];
    insb: Random, false, None, [], ["insb"], [];
    outsb: Random, false, None, ["mov rsi, rdi"], ["outsb"], [];
    rdmsr: Msr, false, None, [], ["rdmsr"], [];
    wrmsr: Msr, false, None, [], ["wrmsr"], [];
    read_cr0: Random, false, None, [], ["mov rax, cr0"], [];
    read_cr2: Random, false, None, [], ["mov rax, cr2"], [];
    read_cr3: Random, false, None, [], ["mov rax, cr3"], [];
    read_cr3_r9: Random, false, None, [], ["mov r9, cr3"], [];
    read_cr4: Random, false, None, [], ["mov rax, cr4"], [];
    read_cr8: Random, false, None, [], ["mov rax, cr8"], [];
    write_cr3_same: Random, false, None, ["mov rax, cr3"], ["mov cr3, rax"], [];
    write_cr0: Random, false, None, [], ["mov cr0, rax"], [];
    write_cr2: Random, false, None, [], ["mov cr2, rax"], [];
    write_cr4: Random, false, None, [], ["mov cr4, rax"], [];
    write_cr8: Random, false, None, [], ["mov cr8, rax"], [];
    read_dr7: Random, false, None, [], ["mov rax, dr7"], [];
    write_dr7: Random, false, None, [], ["mov dr7, rax"], [];
    read_dr6: Random, false, None, [], ["mov rax, dr6"], [];
    wbinvd: Random, false, None, [], ["wbinvd"], [];
    invd: Random, false, None, [], ["invd"], [];
    clts: Random, false, None, [], ["clts"], [];
    lgdt: Random, false, None, [], ["lgdt [rdi]"], [];
    lidt: Random, false, None, [], ["lidt [rdi]"], [];
    sgdt: Random, false, None, [], ["sgdt [rdi]"], [];
    sidt: Random, false, None, [], ["sidt [rdi]"], [];
    sldt: Random, false, None, [], ["sldt ax"], [];
    str_: Random, false, None, [], ["str ax"], [];
    smsw: Random, false, None, [], ["smsw ax"], [];
    lldt: Selector, false, None, [], ["lldt ax"], [];
    ltr: Selector, false, None, [], ["ltr ax"], [];
    lmsw: Random, false, None, [], ["lmsw ax"], [];
    invlpg: Random, false, None, [], ["invlpg [rdi]"], [];
    swapgs: Random, false, None, [], ["swapgs"], [];
    sysret: Random, false, None, [], ["sysretq"], [];
    sysenter: Random, false, Some(Class::Cstar), [], ["sysenter"], [];
    int3: Random, false, None, [], ["int3"], [];
    int1: Random, false, None, [], [".byte 0xf1"], [];
    into: Random, false, None, [], [".byte 0xce"], [];
    ud2: Random, false, None, [], ["ud2"], [];
    forced_cpuid: Random, false, None, ["push rbx"], [".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e", "cpuid"], ["pop rbx"];
    cpuid: Random, false, None, ["push rbx"], ["cpuid"], ["pop rbx"];
    rdtsc: Random, false, None, [], ["rdtsc"], [];
    rdtscp: Random, false, None, [], ["rdtscp"], [];
    rdpmc: Random, false, None, [], ["rdpmc"], [];
    rdrand: Random, false, None, [], ["rdrand rax"], [];
    xgetbv: Random, false, None, ["xor ecx, ecx"], ["xgetbv"], [];
    xsetbv: Random, false, None, [], ["xsetbv"], [];
    monitor: Random, false, None, ["mov rax, rdi", "xor ecx, ecx", "xor edx, edx"], ["monitor"], [];
    mwait: Random, false, None, [], ["mwait"], [];
    load_ds: Selector, false, None, [], ["mov ds, ax"], ["xor eax, eax", "mov ds, ax"];
    load_es: Selector, false, None, [], ["mov es, ax"], ["xor eax, eax", "mov es, ax"];
    load_fs: Selector, false, None, [], ["mov fs, ax"], ["xor eax, eax", "mov fs, ax"];
    load_gs: Selector, false, None, [], ["mov gs, ax"], ["xor eax, eax", "mov gs, ax"];
    load_ss: Selector, false, None, [], ["mov ss, ax"], ["mov eax, 0xe02b", "mov ss, ax"];
    lar: Selector, false, None, [], ["lar ecx, ax"], [];
    lsl: Selector, false, None, [], ["lsl ecx, ax"], [];
    verr: Selector, false, None, [], ["verr ax"], [];
    verw: Selector, false, None, [], ["verw ax"], [];
    far_jmp: FarSelector, false, None,
        ["lea rax, [rip + fuzz_probe_far_jmp_resume]", "mov [rdi], rax", "mov [rdi + 8], cx"],
        [".byte 0x48, 0xff, 0x2f"], [];
    far_call: FarSelector, false, None,
        ["mov r8, rsp", "lea rax, [rip + fuzz_probe_far_call_resume]", "mov [rdi], rax", "mov [rdi + 8], cx"],
        [".byte 0x48, 0xff, 0x1f"], ["mov rsp, r8"];
    iretq: Frame, false, None,
        ["mov r8, rsp", "push rdx", "push r8", "pushfq", "push rcx", "lea r9, [rip + fuzz_probe_iretq_resume]", "push r9"],
        ["iretq"], ["mov rsp, r8", "mov eax, 0xe02b", "mov ss, ax"];
    lretq: Frame, false, None,
        ["mov r8, rsp", "push rcx", "lea r9, [rip + fuzz_probe_lretq_resume]", "push r9"],
        [".byte 0x48, 0xcb"], ["mov rsp, r8"];
    flags: Random, false, None,
        ["pushfq", "pop rax", "or rax, rcx", "push rax"], ["popfq"],
        ["cld", "pushfq", "and qword ptr [rsp], 0xfffffffffffbbeff", "popfq"];
    x87: Random, false, None, [], ["fninit", "fld1", "fldz", "fdivp"], ["fninit"];
    sse: Random, false, None, [], ["movq xmm0, rax", "pxor xmm1, xmm1"], [];
    read_hostile: Hostile, true, None, [], ["mov rax, [rdx]"], [];
    write_hostile: Hostile, true, None, [], ["mov [rdx], rax"], [];
    read_hostile_8: Hostile, true, None, [], ["mov al, [rdx]"], [];
}

// `int n` for every n: 256 stubs of 4 bytes, `int n` (the assembler makes `int 3` the
// one-byte `int3`), padding, `ret` at offset 3, in a table of their own.
global_asm!(
    ".pushsection .text.fuzz_int_probes,\"ax\",@progbits",
    ".balign 16",
    "fuzz_int_probes:",
    ".set fuzz_int_n, 0",
    ".rept 256",
    "1:",
    "int fuzz_int_n",
    ".org 1b + 3, 0x90",
    "ret",
    ".set fuzz_int_n, fuzz_int_n + 1",
    ".endr",
    ".popsection",
);

extern "C" {
    static fuzz_probe_table: [Addresses; PROBES.len()];
    static fuzz_int_probes: u8;
}

/// MSRs worth trying: EFER, STAR, LSTAR, CSTAR, SFMASK, FS/GS/kernel GS base, the
/// SYSENTER ones, the APIC base, TSC, and a few that do not exist.
const MSRS: [u32; 14] = [
    0xC000_0080, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0100, 0xC000_0101, 0xC000_0102,
    0x174, 0x175, 0x176, 0x1B, 0x10, 0x4000_0000,
];

/// Runs one probe drawn by `gen`; returns its name (for the call's report).
/// `lock_free`: leave out the probes that take the MMU lock (a write of CR3 is emulated as
/// a new base pointer).
pub fn run(vcpu: usize, gen: &mut Gen<'_, '_>, scratch: u64, lock_free: bool) -> &'static str {
    if gen.rng.chance(250) {
        return int_n(vcpu, gen, scratch);
    }
    let (index, probe) = loop {
        let index = gen.rng.below(PROBES.len() as u64) as usize;
        let probe = PROBES[index];
        if probe.class.is_none_or(|c| !gen.avoid.has(c)) && !(lock_free && probe.name == "write_cr3_same") {
            break (index, probe);
        }
    };
    // SAFETY: the table has one entry per probe, in order (the same macro made both).
    let addresses = unsafe { fuzz_probe_table[index] };
    let r = &mut *gen.rng;
    let (mut rax, mut rcx, mut rdx) = (r.next_u64(), r.next_u64(), r.next_u64());
    match probe.inputs {
        Inputs::Random => {}
        Inputs::Selector => rax = u64::from(gen.selector()),
        Inputs::FarSelector => {
            rcx = u64::from(loop {
                let s = gen.selector();
                if s & !3 != 0xe020 {
                    break s;
                }
            })
        }
        Inputs::Frame => {
            let r = &mut *gen.rng;
            let (any_cs, any_ss) = (r.bits(16), r.bits(16));
            rcx = r.pick(&[0xe033, 0xe033, 0, 0xe008, 0xe02b, any_cs]);
            rdx = r.pick(&[0xe02b, 0xe02b, 0, 0xe010, 0xe033, any_ss]);
            if rcx & !3 == 0xe020 {
                rcx = 0xe033;
            }
        }
        Inputs::Msr => rcx = u64::from(r.pick(&MSRS)),
        Inputs::Hostile => rdx = hostile_address(gen),
    }
    let n = report::begin(vcpu, probe.name);
    if report::traced(n) {
        report::trace(vcpu, n, probe.name, 0, &[rax, rcx, rdx, scratch]);
    }
    guard::arm(vcpu, addresses.at, addresses.resume);
    // SAFETY: the probe is one of ours: it keeps the callee-saved registers (rbx, rbp,
    // r12-r15) and the stack pointer, restores the segment registers it changes, writes
    // memory only at `scratch` (rdi: this vCPU's scratch buffer) or at a hostile address
    // (which must fault and resumes after the instruction), and returns. Every other
    // register is declared clobbered; flags too (the default).
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) addresses.entry,
            inout("rax") rax => _,
            inout("rcx") rcx => _,
            inout("rdx") rdx => _,
            inout("rdi") scratch => _,
            out("rsi") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("xmm0") _, out("xmm1") _,
        );
    }
    let caught = guard::disarm(vcpu);
    if probe.must_fault && caught.is_none() {
        println!("fuzz: BUG {} at {rdx:#x} did not fault {}", probe.name, report::Last(vcpu));
    }
    probe.name
}

/// `int n` for a random n.
fn int_n(vcpu: usize, gen: &mut Gen<'_, '_>, scratch: u64) -> &'static str {
    let n = gen.rng.below(256);
    let entry = &raw const fuzz_int_probes as u64 + n * 4;
    let count = report::begin(vcpu, "int_n");
    if report::traced(count) {
        report::trace(vcpu, count, "int_n", n, &[]);
    }
    guard::arm(vcpu, entry, entry + 3);
    // SAFETY: `int n; ret`: the trap or fault it raises resumes at the `ret`; nothing is
    // written. Caller-saved registers are declared clobbered.
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            inout("rdi") scratch => _,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    guard::disarm(vcpu);
    "int_n"
}

/// An address no guest may load from or store to: the window, an alias of it (unless
/// avoided), a non-canonical one.
fn hostile_address(gen: &mut Gen<'_, '_>) -> u64 {
    let alias_ok = !gen.avoid.has(Class::Alias);
    let linked: u64 = gen.frames.linked().count() as u64;
    let r = &mut *gen.rng;
    match r.below(4) {
        0 | 1 => WINDOW + r.below(WINDOW_SIZE - 8),
        2 if alias_ok && linked > 0 => {
            let slot = gen.frames.linked().nth(r.below(linked) as usize).unwrap_or(0);
            alias_of(slot) + r.below(WINDOW_SIZE - 8)
        }
        _ => 0x0000_8000_0000_0000 + r.bits(40),
    }
}

//! Emulation of the few instructions a PV guest kernel may not execute itself: CPUID behind
//! Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`), the privileged ones the
//! ABI emulates — reads of CR0/CR2/CR3/CR4, writes of CR0 (TS only), CR3 and CR4 (the bits
//! the guest controls), `clts`, `mov` to and from DR0-DR7, `xsetbv`, `rdmsr`/`wrmsr` of
//! DEBUGCTL, `wbinvd` — and port I/O and `cli`/`sti`, which the guest's virtual IOPL may
//! allow. The FPU and debug-register parts are `pv::fpu` and `pv::debugreg`. Anything else
//! raises the original exception in the guest; an emulated instruction that fails raises
//! what the hardware would (#UD or #GP(0)), as Xen's emulator does.
//!
//! Privileged instructions are emulated for guest kernel mode only: from guest user mode
//! the #GP goes to the guest kernel, as on hardware. Forced CPUID is allowed in both modes
//! (as in Xen, which refuses it to user mode only when the guest turned on CPUID faulting,
//! which we do not offer): it reads nothing a user process could not read with `cpuid`.
//!
//! Port I/O (`in`, `out`, `ins`, `outs`, any size and prefix) and `cli`/`sti` are carried
//! out in either guest mode when `pv::physdev` says the vCPU's virtual IOPL (or I/O bitmap)
//! allows them, as Xen's `pv_emulate_privileged_op` does. Domain 0's non-string accesses
//! to the PCI configuration ports (0xCF8, 0xCFC-0xCFF) reach its devices through
//! `crate::pci`'s filter; every other port reads all ones and writes go nowhere (Xen gives
//! a domU the same for ports it was not granted). `cli` and `sti` do nothing, as in Xen, which dropped changing the event
//! mask for them (a later `popf` could not undo it). A string transfer touches guest memory
//! through `uaccess` (a fault there becomes the guest's page fault at the instruction, with
//! the elements before it done) and does at most [`MAX_STRING_ELEMENTS`] elements per trap:
//! a longer `rep` leaves rip at the instruction with rcx and rsi/rdi advanced, and the
//! guest's next #GP continues it.
//!
//! Instruction bytes are read from the guest at its rip through `uaccess`; an unreadable rip
//! is simply "not emulated".

use abi::arch_x86::XEN_EMULATE_PREFIX;

use hypervisor::insn::{self, Direction, Insn, Port, PortIo, Segment};
use x86_64::registers::model_specific::{FsBase, KernelGsBase};

use crate::arch::gdt;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::Vcpu;
use crate::pv::fpu::Raise;
use crate::pv::{debugreg, descriptors, fpu, mmu, physdev, shared, traps};

/// Elements of a `rep ins`/`rep outs` carried out per trap.
pub const MAX_STRING_ELEMENTS: u64 = 256;
const RFLAGS_DF: u64 = 1 << 10;

/// CPUID leaf range where the hypervisor describes itself ("XenVMMXenVMM").
const HYPERVISOR_LEAF: u32 = 0x4000_0000;

/// Emulates CPUID when the guest's rip holds the forced-emulation prefix and `cpuid`.
pub fn forced_cpuid(vcpu: &Vcpu, frame: &mut TrapFrame) -> bool {
    let mut bytes = [0u8; 7];
    if uaccess::read(frame.rip, &mut bytes).is_err() || bytes[..5] != XEN_EMULATE_PREFIX || bytes[5..] != [0x0f, 0xa2] {
        return false;
    }
    let (eax, ebx, ecx, edx) = cpuid(frame.rax as u32, frame.rcx as u32, fpu::cpuid_osxsave(vcpu));
    frame.rax = eax as u64;
    frame.rbx = ebx as u64;
    frame.rcx = ecx as u64;
    frame.rdx = edx as u64;
    frame.rip += 7;
    true
}

/// A leaf of CPUID as guests see it, for decisions that do not depend on the vCPU (its
/// leaf 1 OSXSAVE and leaf 0xD sizes do).
pub fn cpuid_for_policy(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    cpuid(leaf, subleaf, false)
}

/// CPUID as a PV guest sees it: the host's, filtered as `hypervisor::guest_cpuid` says
/// (`osxsave`: whether leaf 1 reports OSXSAVE), and the hypervisor leaves describing us as
/// Xen-compatible.
pub fn cpuid(leaf: u32, subleaf: u32, osxsave: bool) -> (u32, u32, u32, u32) {
    match leaf {
        HYPERVISOR_LEAF => {
            let sig = b"XenVMMXenVMM";
            let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
            (HYPERVISOR_LEAF + 2, word(0), word(4), word(8))
        }
        // Leaf 0x40000001: version 4.17 (the interface level we follow).
        l if l == HYPERVISOR_LEAF + 1 => ((4 << 16) | 17, 0, 0, 0),
        // Leaf 0x40000002: one hypercall-page MSR-less interface, no MSR.
        l if l == HYPERVISOR_LEAF + 2 => (1, 0, 0, 0),
        _ => {
            let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
            let setup = crate::arch::fpu::setup();
            let view = hypervisor::guest_cpuid::View {
                xsave: setup.xsave,
                xcr0_max: setup.xcr0_max,
                size_current: crate::arch::fpu::xsave_bytes_for_current(),
                size_max: setup.area_bytes as u32,
                osxsave,
            };
            let [a, b, c, d] = hypervisor::guest_cpuid::filter(leaf, subleaf, [r.eax, r.ebx, r.ecx, r.edx], &view);
            (a, b, c, d)
        }
    }
}

/// Carries out port I/O, `cli` or `sti` at the guest's rip after a #GP(0), in either guest
/// mode, when the vCPU's virtual IOPL or I/O bitmap allows it; false otherwise (the #GP is
/// the guest's).
pub fn port_io(vcpu: &Vcpu, frame: &mut TrapFrame) -> bool {
    let Some((mode, base)) = traps::code_mode(vcpu, frame.cs as u16) else { return false };
    let mut bytes = [0u8; insn::MAX_LENGTH];
    let readable = traps::read_code(base.wrapping_add(frame.rip), &mut bytes);
    let Some(decoded) = insn::decode(&bytes[..readable], mode) else { return false };
    let len = u64::from(decoded.len);
    match decoded.insn {
        Insn::Cli | Insn::Sti if physdev::iopl_ok(vcpu) => {
            frame.rip = frame.rip.wrapping_add(len);
            true
        }
        Insn::Io(io) => {
            let port = match io.port {
                Port::Immediate(port) => u16::from(port),
                Port::Dx => frame.rdx as u16,
            };
            if !physdev::io_allowed(vcpu, port, io.size) {
                return false;
            }
            if !io.string {
                let written = (io.direction == Direction::Out).then_some(frame.rax as u32);
                // Domain 0's configuration-space ports reach its devices (`crate::pci`).
                let device = crate::pci::port_io(vcpu.domain.id, vcpu.domain.privileged, port, io.size, written);
                if io.direction == Direction::In {
                    // All ones (or the device's answer), written as the instruction would:
                    // al and ax merge, eax zero-extends into rax.
                    let value = u64::from(device.unwrap_or(u32::MAX));
                    frame.rax = match io.size {
                        1 => frame.rax & !0xff | value & 0xff,
                        2 => frame.rax & !0xffff | value & 0xffff,
                        _ => value & 0xffff_ffff,
                    };
                }
                frame.rip = frame.rip.wrapping_add(len);
            } else if string_io(vcpu, frame, &io, mode) {
                frame.rip = frame.rip.wrapping_add(len);
            }
            true
        }
        _ => false,
    }
}

/// Up to [`MAX_STRING_ELEMENTS`] elements of `ins`/`outs`; true when the instruction is
/// complete (rip may move on), false when it stopped with elements left (the guest runs it
/// again) or a page fault was delivered.
fn string_io(vcpu: &Vcpu, frame: &mut TrapFrame, io: &PortIo, mode: insn::CodeMode) -> bool {
    let bits = io.address_bits;
    let size = u64::from(io.size);
    let mut left = if io.rep { masked(frame.rcx, bits) } else { 1 };
    let step = if frame.rflags & RFLAGS_DF != 0 { size.wrapping_neg() } else { size };
    let segment = match io.direction {
        Direction::In => Segment::Es,
        Direction::Out => io.segment.unwrap_or(Segment::Ds),
    };
    let base = segment_base(vcpu, frame, segment, mode);
    for _ in 0..MAX_STRING_ELEMENTS {
        if left == 0 {
            return true;
        }
        let offset = masked(if io.direction == Direction::In { frame.rdi } else { frame.rsi }, bits);
        let mut linear = base.wrapping_add(offset);
        if mode != insn::CodeMode::Long {
            linear &= 0xffff_ffff;
        }
        let mut data = [0xffu8; 4];
        let data = &mut data[..io.size as usize];
        let moved = match io.direction {
            Direction::In => uaccess::write(linear, data),
            Direction::Out => uaccess::read(linear, data),
        };
        if moved.is_err() {
            traps::page_fault(vcpu, frame, linear, io.direction == Direction::In);
            return false;
        }
        match io.direction {
            Direction::In => frame.rdi = advance(frame.rdi, step, bits),
            Direction::Out => frame.rsi = advance(frame.rsi, step, bits),
        }
        left -= 1;
        if io.rep {
            frame.rcx = advance(frame.rcx, u64::MAX, bits);
        }
    }
    left == 0
}

/// The part of a register an address size uses.
fn masked(value: u64, bits: u8) -> u64 {
    match bits {
        16 => value & 0xffff,
        32 => value & 0xffff_ffff,
        _ => value,
    }
}

/// `value + delta` as an instruction of that address size updates the register: 64 bits
/// whole, 32 bits zero-extended, 16 bits merged.
fn advance(value: u64, delta: u64, bits: u8) -> u64 {
    match bits {
        16 => (value & !0xffff) | u64::from((value as u16).wrapping_add(delta as u16)),
        32 => u64::from((value as u32).wrapping_add(delta as u32)),
        _ => value.wrapping_add(delta),
    }
}

/// The base of `segment` for the guest's access: fs and gs from their base registers (in
/// the hypervisor the guest's gs base is in KERNEL_GS_BASE), the others 0 in 64-bit code;
/// in compatibility mode the base of the descriptor the segment register names.
fn segment_base(vcpu: &Vcpu, frame: &TrapFrame, segment: Segment, mode: insn::CodeMode) -> u64 {
    let [ds, es, fs, gs] = gdt::data_selectors();
    if mode == insn::CodeMode::Long {
        return match segment {
            Segment::Fs => FsBase::read().as_u64(),
            Segment::Gs => KernelGsBase::read().as_u64(),
            _ => 0,
        };
    }
    let selector = match segment {
        Segment::Es => es,
        Segment::Cs => frame.cs as u16,
        Segment::Ss => frame.ss as u16,
        Segment::Ds => ds,
        Segment::Fs => fs,
        Segment::Gs => gs,
    };
    if selector >> 3 == 0 || selector >= gdt::RESERVED_GDT_OFFSET as u16 {
        return 0;
    }
    descriptors::lookup(vcpu, selector).map_or(0, hypervisor::descriptor::base)
}

/// Emulates a privileged instruction at the guest's rip after a #GP from guest kernel mode;
/// false when it is not one we emulate, or the guest is in user mode.
pub fn privileged(vcpu: &Vcpu, frame: &mut TrapFrame) -> bool {
    if !vcpu.ctx.lock().in_kernel {
        return false;
    }
    let mut bytes = [0u8; 4];
    // Instructions near the end of the guest's mapped space may be shorter than 4 bytes.
    if uaccess::read(frame.rip, &mut bytes).is_err() && uaccess::read(frame.rip, &mut bytes[..3]).is_err() {
        return false;
    }
    let (rex, rest) = match bytes[0] {
        0x40..=0x4f => (bytes[0], &bytes[1..]),
        _ => (0, &bytes[..]),
    };
    let prefix_len = u64::from(rex != 0);
    match rest {
        // wbinvd / invd: nothing to do for a guest without devices.
        [0x0f, 0x09 | 0x08, ..] => {
            frame.rip += prefix_len + 2;
            true
        }
        // clts.
        [0x0f, 0x06, ..] => {
            fpu::taskswitch(vcpu, false);
            frame.rip += prefix_len + 2;
            true
        }
        // mov crN, reg (0f 20 /r) and mov reg, crN (0f 22 /r); mov drN, reg (0f 21 /r) and
        // mov reg, drN (0f 23 /r). The mod bits are ignored: the operand is a register.
        [0x0f, op @ 0x20..=0x23, modrm, ..] => {
            let n = ((modrm >> 3) & 7) | if rex & 4 != 0 { 8 } else { 0 };
            let gpr = (modrm & 7) | if rex & 1 != 0 { 8 } else { 0 };
            let outcome = match *op {
                0x20 => Emulated::from(read_cr(vcpu, frame, n, gpr)),
                0x22 => write_cr(vcpu, frame, n, gpr),
                0x21 => move_from_dr(vcpu, frame, n, gpr),
                _ => move_to_dr(vcpu, frame, n, gpr),
            };
            finish(vcpu, frame, outcome, prefix_len + 3)
        }
        // xsetbv.
        [0x0f, 0x01, 0xd1, ..] => {
            let outcome = fpu::xsetbv(vcpu, frame).map_or_else(Emulated::Raise, |()| Emulated::Done);
            finish(vcpu, frame, outcome, prefix_len + 3)
        }
        // wrmsr / rdmsr: DEBUGCTL only.
        [0x0f, op @ (0x30 | 0x32), ..] if frame.rcx as u32 == debugreg::MSR_DEBUGCTL => {
            let outcome = if *op == 0x32 {
                let value = debugreg::read_debugctl();
                frame.rax = value & 0xffff_ffff;
                frame.rdx = value >> 32;
                Emulated::Done
            } else if debugreg::write_debugctl((frame.rax & 0xffff_ffff) | (frame.rdx << 32)) {
                Emulated::Done
            } else {
                Emulated::Raise(Raise::GeneralProtection)
            };
            finish(vcpu, frame, outcome, prefix_len + 2)
        }
        _ => false,
    }
}

/// Carries out what became of an instruction of `length` bytes; false if not emulated.
fn finish(vcpu: &Vcpu, frame: &mut TrapFrame, outcome: Emulated, length: u64) -> bool {
    match outcome {
        Emulated::Done => frame.rip += length,
        Emulated::Raise(exception) => exception.deliver(vcpu, frame),
        Emulated::Again | Emulated::No => {}
    }
    outcome != Emulated::No
}

/// `mov reg, drN`: the guest's register `n` into `gpr`.
fn move_from_dr(vcpu: &Vcpu, frame: &mut TrapFrame, n: u8, gpr: u8) -> Emulated {
    match debugreg::get(vcpu, u32::from(n)) {
        Ok(value) => {
            *gpr_mut(frame, gpr) = value;
            Emulated::Done
        }
        Err(_) => Emulated::Raise(Raise::InvalidOpcode),
    }
}

/// `mov drN, reg`: as `set_debugreg`; #UD for a register that does not exist, #GP(0) for
/// a value refused.
fn move_to_dr(vcpu: &Vcpu, frame: &mut TrapFrame, n: u8, gpr: u8) -> Emulated {
    let value = *gpr_mut(frame, gpr);
    match debugreg::set(vcpu, u32::from(n), value) {
        Ok(()) => Emulated::Done,
        Err(hypervisor::debugreg::DrError::NoDevice) => Emulated::Raise(Raise::InvalidOpcode),
        Err(_) => Emulated::Raise(Raise::GeneralProtection),
    }
}

fn read_cr(vcpu: &Vcpu, frame: &mut TrapFrame, cr: u8, gpr: u8) -> bool {
    let value = match cr {
        0 => fpu::read_cr0(vcpu),
        2 => shared::with_vcpu_info(vcpu, |info| info.arch.cr2),
        3 => vcpu.ctx.lock().active_l4().map_or(0, |l4| l4.addr().0),
        4 => fpu::read_cr4(vcpu),
        _ => return false,
    };
    *gpr_mut(frame, gpr) = value;
    true
}

/// What became of an instruction the hypervisor looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Emulated {
    /// Carried out: the guest goes on after it.
    Done,
    /// Part done: the guest runs it again (and the hypervisor carries on where it stopped).
    Again,
    /// Not one the hypervisor emulates.
    No,
    /// Emulated, and it raises this exception (the guest's, at the instruction).
    Raise(Raise),
}

impl From<bool> for Emulated {
    fn from(done: bool) -> Emulated {
        if done { Emulated::Done } else { Emulated::No }
    }
}

fn write_cr(vcpu: &Vcpu, frame: &mut TrapFrame, cr: u8, gpr: u8) -> Emulated {
    match cr {
        0 => Emulated::from(fpu::write_cr0(vcpu, *gpr_mut(frame, gpr))),
        4 => {
            fpu::write_cr4(vcpu, *gpr_mut(frame, gpr));
            Emulated::Done
        }
        3 => {
            let value = *gpr_mut(frame, gpr);
            match mmu::new_baseptr(vcpu, mm::addr::Mfn(value >> 12), false) {
                Ok(()) => Emulated::Done,
                // The new tree's validation stopped part-way: the guest's `mov` runs again
                // when it next runs, and the validation goes on from where it stopped.
                Err(pvmm::MmError::Restart) => Emulated::Again,
                Err(e) => {
                    crate::pv::traps::crash(vcpu, frame, format_args!("mov to cr3 of {value:#x} refused ({e:?})"));
                    Emulated::Done
                }
            }
        }
        _ => Emulated::No,
    }
}

/// The general register numbered as in ModRM (rax=0 .. r15=15).
fn gpr_mut(frame: &mut TrapFrame, n: u8) -> &mut u64 {
    match n {
        0 => &mut frame.rax,
        1 => &mut frame.rcx,
        2 => &mut frame.rdx,
        3 => &mut frame.rbx,
        4 => &mut frame.rsp,
        5 => &mut frame.rbp,
        6 => &mut frame.rsi,
        7 => &mut frame.rdi,
        8 => &mut frame.r8,
        9 => &mut frame.r9,
        10 => &mut frame.r10,
        11 => &mut frame.r11,
        12 => &mut frame.r12,
        13 => &mut frame.r13,
        14 => &mut frame.r14,
        _ => &mut frame.r15,
    }
}

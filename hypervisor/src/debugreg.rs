//! A PV vCPU's debug registers as its kernel sees them, and the rules Xen enforces when a
//! guest sets them (`set_debugreg`, hypercall 8, and `mov` to a debug register, which the
//! hypervisor emulates with the same rules): xen/arch/x86/pv/misc-hypercalls.c after
//! XSA-260 and XSA-444, and xen/arch/x86/debug.c.
//!
//! - DR0-DR3 may only hold guest addresses (`addr_ok`: the lower canonical half, or the
//!   guest's part of the upper half), so that no breakpoint can ever match an access or an
//!   instruction of the hypervisor (EPERM). Breakpoints are naturally aligned and at most 8
//!   bytes wide, and the hypervisor's boundaries are far more aligned, so the start decides.
//! - DR6 and DR7 take 32-bit values only (EINVAL); their reserved bits are forced to what
//!   the processor holds there (DR6: ones but bit 12; DR7: bit 10 one, bits 12, 14, 15
//!   zero, and the RTM bits as the guest's CPUID says).
//! - DR7.GD (general detect) is refused (EPERM): it would make the hypervisor's own
//!   accesses to the debug registers fault.
//! - I/O breakpoints (R/W = 10) need the guest's virtual CR4.DE (EPERM without it); their
//!   enables are kept apart (`dr7_emul`), never loaded into the hardware (whose CR4.DE the
//!   guest does not control), and read back merged.
//! - DR4 and DR5 alias DR6 and DR7 while CR4.DE is clear, and raise #UD (ENODEV) while it
//!   is set, as on hardware.
//!
//! Pure: the arch layer loads [`DebugRegs`] into the hardware (only for a vCPU whose DR7
//! enables a breakpoint: see [`DebugRegs::active`]), and the #DB handler merges what the
//! hardware reports with [`DebugRegs::merge_dr6`].

/// DR6 bits (Intel SDM vol. 3, 18.2.3).
pub const DR6_BP_MASK: u64 = 0xf;
pub const DR6_BLD: u64 = 1 << 11;
pub const DR6_BD: u64 = 1 << 13;
pub const DR6_BS: u64 = 1 << 14;
pub const DR6_BT: u64 = 1 << 15;
pub const DR6_RTM: u64 = 1 << 16;
pub const DR6_KNOWN: u64 = DR6_BP_MASK | DR6_BLD | DR6_BD | DR6_BS | DR6_BT | DR6_RTM;
/// DR6 after reset, and what the hypervisor writes back after reading it.
pub const DR6_DEFAULT: u64 = 0xffff_0ff0;
/// DR6 bits that read as zero.
pub const DR6_ZEROS: u64 = 0x1000;

/// DR7 bits (Intel SDM vol. 3, 18.2.4).
pub const DR7_ACTIVE_MASK: u64 = 0xff;
pub const DR7_RTM: u64 = 1 << 11;
pub const DR7_GD: u64 = 1 << 13;
pub const DR7_DEFAULT: u64 = 0x400;
pub const DR7_ZEROS: u64 = 0xd000;
/// DR7's R/W field for an I/O breakpoint.
const DR_IO: u64 = 2;

/// What the guest's CPUID says of the features that change reserved debug-register bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// RTM (CPUID.7.0:EBX[11]): DR6.RTM has inverted polarity, DR7.RTM exists.
    pub rtm: bool,
    /// Bus-lock detection (CPUID.7.0:ECX[24]): DR6.BLD has inverted polarity.
    pub bld: bool,
}

/// Why a debug-register access was refused, as Xen reports it: the hypercall returns the
/// errno; an emulated `mov` raises #UD for [`DrError::NoDevice`] and #GP(0) otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrError {
    /// No such register (DR4/DR5 with CR4.DE, DR8 and up): ENODEV.
    NoDevice,
    /// A reserved bit (the upper half of DR6/DR7): EINVAL.
    Invalid,
    /// A valid value that a guest may not use: EPERM.
    NotPermitted,
}

impl DrError {
    pub fn errno(self) -> abi::errno::Errno {
        match self {
            DrError::NoDevice => abi::errno::Errno::Enodev,
            DrError::Invalid => abi::errno::Errno::Einval,
            DrError::NotPermitted => abi::errno::Errno::Eperm,
        }
    }
}

/// What a successful write changed, for the arch layer to load when the vCPU is the one
/// running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// DR0-DR3 (the index).
    Address(usize),
    Dr6,
    /// DR7; `activated`: no breakpoint was enabled before, so the other registers have not
    /// been loaded either and must be now.
    Dr7 { activated: bool },
}

/// A vCPU's debug registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegs {
    pub address: [u64; 4],
    /// What the guest reads as DR6 (the hardware's is reset after every #DB).
    pub dr6: u64,
    /// The hardware DR7 of this vCPU (I/O breakpoint enables removed).
    pub dr7: u64,
    /// The enables of I/O breakpoints, emulated.
    pub dr7_emul: u64,
    /// A data breakpoint that a `mov ss` hit, held back until the instruction after it
    /// completes (see [`Deferred`]).
    pub deferred: Option<Deferred>,
}

/// A #DB that the processor holds back: a data breakpoint hit by `mov ss` (or `pop ss`)
/// is delivered only after the next instruction (Intel SDM vol. 3, 6.8.3; XSA-260). A
/// processor (QEMU's TCG) that reports it at once is made to behave so: the hypervisor
/// keeps the DR6 bits here, single-steps the guest over that next instruction, and then
/// delivers them; if the instruction enters the hypervisor instead (`syscall`, `int3`, a
/// fault), the #DB is dropped, as Xen drops the one a processor raises in its entry path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// The DR6 bits the breakpoint set.
    pub dr6: u64,
    /// RFLAGS.TF was set by the hypervisor for the single step (not the guest's own).
    pub added_tf: bool,
}

impl Default for DebugRegs {
    fn default() -> DebugRegs {
        DebugRegs { address: [0; 4], dr6: DR6_DEFAULT, dr7: DR7_DEFAULT, dr7_emul: 0, deferred: None }
    }
}

/// DR6 with its reserved bits as the processor holds them.
pub fn adjust_dr6(policy: Policy, dr6: u64) -> u64 {
    let mut ones = DR6_DEFAULT;
    if policy.rtm {
        ones &= !DR6_RTM;
    }
    if policy.bld {
        ones &= !DR6_BLD;
    }
    (dr6 | ones) & !DR6_ZEROS
}

/// DR7 with its reserved bits as the processor holds them.
pub fn adjust_dr7(policy: Policy, dr7: u64) -> u64 {
    let zeros = DR7_ZEROS | if policy.rtm { 0 } else { DR7_RTM };
    (dr7 & !zeros) | DR7_DEFAULT
}

/// The width in bytes of breakpoint `bp` in `dr7` (LEN 00, 01, 11, 10: 1, 2, 4, 8).
pub fn breakpoint_width(dr7: u64, bp: usize) -> u64 {
    match (dr7 >> (16 + 4 * bp + 2)) & 3 {
        0 => 1,
        1 => 2,
        3 => 4,
        _ => 8,
    }
}

impl DebugRegs {
    /// Whether DR7 enables a breakpoint the hardware must see: only such a vCPU has its
    /// debug registers loaded when it runs (the others cost nothing at a switch).
    pub fn active(&self) -> bool {
        self.dr7 & DR7_ACTIVE_MASK != 0
    }

    /// Whether one of the breakpoints whose bits `hit` (DR6 B0-B3) holds is an enabled
    /// data breakpoint (writes, or reads and writes) whose range meets the `len` bytes at
    /// `start`.
    pub fn data_breakpoint_covers(&self, hit: u64, start: u64, len: u64) -> bool {
        (0..4).any(|n| {
            let rw = (self.dr7 >> (16 + 4 * n)) & 3;
            let size = breakpoint_width(self.dr7, n);
            let low = self.address[n] & !(size - 1);
            hit & (1 << n) != 0
                && self.dr7 & (3 << (2 * n)) != 0
                && rw & 1 == 1
                && start < low.wrapping_add(size)
                && low < start.wrapping_add(len)
        })
    }

    /// Sets register `reg` to `value` under Xen's rules (see the module documentation);
    /// `cr4_de` is the guest's virtual CR4.DE, `addr_ok` says whether an address is the
    /// guest's. Nothing changes when the write is refused.
    pub fn set(&mut self, reg: u32, value: u64, cr4_de: bool, policy: Policy, addr_ok: impl Fn(u64) -> bool) -> Result<Written, DrError> {
        match reg {
            0..=3 => {
                if !addr_ok(value) {
                    return Err(DrError::NotPermitted);
                }
                self.address[reg as usize] = value;
                Ok(Written::Address(reg as usize))
            }
            4 | 6 => {
                if reg == 4 && cr4_de {
                    return Err(DrError::NoDevice);
                }
                if value > u64::from(u32::MAX) {
                    return Err(DrError::Invalid);
                }
                self.dr6 = adjust_dr6(policy, value);
                Ok(Written::Dr6)
            }
            5 | 7 => {
                if reg == 5 && cr4_de {
                    return Err(DrError::NoDevice);
                }
                if value > u64::from(u32::MAX) {
                    return Err(DrError::Invalid);
                }
                let mut value = adjust_dr7(policy, value);
                if value & DR7_GD != 0 {
                    return Err(DrError::NotPermitted);
                }
                let mut io_enable = 0;
                if value & DR7_ACTIVE_MASK != 0 {
                    for bp in 0..4 {
                        if (value >> (16 + 4 * bp)) & 3 == DR_IO {
                            if !cr4_de {
                                return Err(DrError::NotPermitted);
                            }
                            io_enable |= value & (3 << (2 * bp));
                        }
                    }
                    value &= !io_enable;
                }
                let activated = value & DR7_ACTIVE_MASK != 0 && !self.active();
                self.dr7_emul = io_enable;
                self.dr7 = value;
                Ok(Written::Dr7 { activated })
            }
            _ => Err(DrError::NoDevice),
        }
    }

    /// Register `reg` as the guest reads it (DR7 with the I/O breakpoint enables).
    pub fn get(&self, reg: u32, cr4_de: bool) -> Result<u64, DrError> {
        match reg {
            0..=3 => Ok(self.address[reg as usize]),
            4 | 5 if cr4_de => Err(DrError::NoDevice),
            4 | 6 => Ok(self.dr6),
            5 | 7 => Ok(self.dr7 | self.dr7_emul),
            _ => Err(DrError::NoDevice),
        }
    }

    /// Merges what a #DB reported (`pending`: DR6 as read, XOR [`DR6_DEFAULT`], so that a
    /// set bit means "happened") into the guest's DR6: breakpoint matches replace the old
    /// ones, the other bits accumulate (Xen's `x86_merge_dr6`). Unknown bits are ignored.
    pub fn merge_dr6(&mut self, policy: Policy, pending: u64) {
        let pending = pending & DR6_KNOWN;
        let positive = self.dr6 ^ DR6_DEFAULT;
        let merged = (positive & !DR6_BP_MASK) | pending;
        self.dr6 = adjust_dr6(policy, (merged ^ DR6_DEFAULT) & 0xffff_ffff);
    }

    /// The DR6 breakpoint bits of the enabled I/O breakpoints that an access of `len`
    /// bytes to `port` matches (Xen's `check_guest_io_breakpoint`), for port I/O emulation.
    pub fn io_breakpoints(&self, port: u16, len: u32, cr4_de: bool) -> u64 {
        if self.dr7_emul == 0 || !cr4_de {
            return 0;
        }
        let (port, len) = (u64::from(port), u64::from(len));
        (0..4)
            .filter(|&bp| self.dr7_emul & (3 << (2 * bp)) != 0)
            .filter(|&bp| {
                let start = self.address[bp];
                start < port + len && start.saturating_add(breakpoint_width(self.dr7, bp)) > port
            })
            .fold(0, |bits, bp| bits | 1 << bp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy { rtm: false, bld: false };
    /// The lower half, as a stand-in for the guest's address space.
    fn lower_half(a: u64) -> bool {
        a < 1 << 47
    }

    fn set(regs: &mut DebugRegs, reg: u32, value: u64, de: bool) -> Result<Written, DrError> {
        regs.set(reg, value, de, POLICY, lower_half)
    }

    #[test]
    fn the_initial_state_is_the_architectural_one() {
        let regs = DebugRegs::default();
        assert_eq!(regs.get(6, false), Ok(0xffff_0ff0));
        assert_eq!(regs.get(7, false), Ok(0x400));
        assert!((0..4).all(|r| regs.get(r, false) == Ok(0)));
        assert!(!regs.active());
    }

    #[test]
    fn breakpoints_on_hypervisor_or_non_canonical_addresses_are_refused() {
        let mut regs = DebugRegs::default();
        for bad in [0xffff_ffff_fc00_0000, 0xffff_8000_0000_0000, 1 << 47, u64::MAX] {
            assert_eq!(set(&mut regs, 0, bad, false), Err(DrError::NotPermitted), "{bad:#x}");
        }
        assert_eq!(regs.address[0], 0, "unchanged");
        assert_eq!(set(&mut regs, 3, 0x7fff_ffff_fff8, false), Ok(Written::Address(3)));
    }

    #[test]
    fn dr6_and_dr7_take_32_bit_values_with_reserved_bits_forced() {
        let mut regs = DebugRegs::default();
        assert_eq!(set(&mut regs, 6, 1 << 32, false), Err(DrError::Invalid));
        assert_eq!(set(&mut regs, 7, 1 << 40, false), Err(DrError::Invalid));
        set(&mut regs, 6, 0, false).unwrap();
        assert_eq!(regs.dr6, 0xffff_0ff0);
        set(&mut regs, 6, 0x2000 | 0x1000, false).unwrap();
        assert_eq!(regs.dr6, 0xffff_2ff0, "BD kept, bit 12 forced clear");
        set(&mut regs, 7, 0xd800, false).unwrap();
        assert_eq!(regs.dr7, 0x400, "bits 11, 12, 14, 15 forced clear, bit 10 set");
        let rtm = Policy { rtm: true, bld: true };
        regs.set(7, 0x800, false, rtm, lower_half).unwrap();
        assert_eq!(regs.dr7, 0xc00, "DR7.RTM kept where RTM exists");
        regs.set(6, 0, false, rtm, lower_half).unwrap();
        assert_eq!(regs.dr6, 0xfffe_07f0, "RTM and BLD have inverted polarity");
    }

    #[test]
    fn general_detect_is_refused() {
        let mut regs = DebugRegs::default();
        assert_eq!(set(&mut regs, 7, DR7_GD | 1, false), Err(DrError::NotPermitted));
        assert_eq!(set(&mut regs, 7, DR7_GD, false), Err(DrError::NotPermitted));
        assert_eq!(regs, DebugRegs::default());
    }

    #[test]
    fn io_breakpoints_need_cr4_de_and_stay_out_of_the_hardware() {
        let mut regs = DebugRegs::default();
        let io0 = (2 << 16) | 0x2 | 0x200 | 0x400; // %dr0 G, IO, GE
        assert_eq!(set(&mut regs, 7, io0, false), Err(DrError::NotPermitted));
        assert_eq!(regs, DebugRegs::default(), "a refused write leaves everything");
        assert_eq!(set(&mut regs, 7, io0, true), Ok(Written::Dr7 { activated: false }));
        assert_eq!(regs.get(7, true), Ok(io0), "read back merged");
        assert_eq!(regs.dr7 & DR7_ACTIVE_MASK, 0, "the hardware never sees it");
        // An inactive I/O breakpoint clears the emulated enables (XTF debug-regs bug 1).
        let io1 = (2 << 20) | 0x400;
        set(&mut regs, 7, io1, true).unwrap();
        assert_eq!(regs.get(7, true), Ok(io1));
        set(&mut regs, 7, io0, true).unwrap();
        // With CR4.DE clear the reload fails and keeps what was there (bug 2).
        assert_eq!(set(&mut regs, 7, io0, false), Err(DrError::NotPermitted));
        assert_eq!(regs.get(7, true), Ok(io0));
        regs.address[0] = 0x60;
        assert_eq!(regs.io_breakpoints(0x60, 1, true), 1);
        assert_eq!(regs.io_breakpoints(0x5f, 2, true), 1);
        assert_eq!(regs.io_breakpoints(0x61, 1, true), 0, "one byte wide");
        assert_eq!(regs.io_breakpoints(0x60, 1, false), 0, "CR4.DE clear");
    }

    #[test]
    fn dr4_and_dr5_alias_dr6_and_dr7_only_without_cr4_de() {
        let mut regs = DebugRegs::default();
        set(&mut regs, 4, 0x4000, false).unwrap();
        assert_eq!(regs.get(6, false), Ok(0xffff_4ff0));
        assert_eq!(regs.get(4, false), Ok(0xffff_4ff0));
        assert_eq!(set(&mut regs, 5, 0x401, true), Err(DrError::NoDevice));
        assert_eq!(regs.get(5, true), Err(DrError::NoDevice));
        assert_eq!(set(&mut regs, 8, 0, false), Err(DrError::NoDevice));
        assert_eq!(regs.get(15, false), Err(DrError::NoDevice));
    }

    #[test]
    fn enabling_the_first_breakpoint_activates() {
        let mut regs = DebugRegs::default();
        assert_eq!(set(&mut regs, 7, 0x401, false), Ok(Written::Dr7 { activated: true }));
        assert!(regs.active());
        assert_eq!(set(&mut regs, 7, 0x403, false), Ok(Written::Dr7 { activated: false }));
        assert_eq!(set(&mut regs, 7, 0x400, false), Ok(Written::Dr7 { activated: false }));
        assert!(!regs.active());
    }

    #[test]
    fn dr6_merges_new_breakpoints_over_old_and_accumulates_the_rest() {
        let mut regs = DebugRegs::default();
        regs.merge_dr6(POLICY, 0x1 | DR6_BS);
        assert_eq!(regs.dr6, 0xffff_4ff1);
        regs.merge_dr6(POLICY, 0x2);
        assert_eq!(regs.dr6, 0xffff_4ff2, "B0 replaced by B1, BS stays");
        regs.merge_dr6(POLICY, 0xffff_0000_0000_1000);
        assert_eq!(regs.dr6, 0xffff_4ff0, "unknown bits ignored; no breakpoint this time");
    }

    #[test]
    fn breakpoint_widths_follow_the_len_encoding() {
        assert_eq!([0, 1, 3, 2].map(|len| breakpoint_width(len << 18, 0)), [1, 2, 4, 8]);
        assert_eq!(breakpoint_width(3 << 30, 3), 4);
    }

    #[test]
    fn data_breakpoints_cover_the_bytes_they_watch() {
        let mut regs = DebugRegs::default();
        regs.address[0] = 0x1004;
        regs.dr7 = 0x400 | 0x1 | (0b11 << 18) | (0b01 << 16); // DR0: 4 bytes, writes, L0
        assert!(regs.data_breakpoint_covers(1, 0x1004, 2));
        assert!(regs.data_breakpoint_covers(1, 0x1006, 2));
        assert!(regs.data_breakpoint_covers(1, 0x1003, 2));
        assert!(!regs.data_breakpoint_covers(1, 0x1008, 2));
        assert!(!regs.data_breakpoint_covers(1, 0x1002, 2));
        assert!(!regs.data_breakpoint_covers(2, 0x1004, 2), "B1 did not hit");
        regs.dr7 = 0x400 | 0x1 | (0b11 << 18); // an instruction breakpoint
        assert!(!regs.data_breakpoint_covers(1, 0x1004, 2));
        regs.dr7 = 0x400 | (0b11 << 18) | (0b11 << 16); // disabled
        assert!(!regs.data_breakpoint_covers(1, 0x1004, 2));
    }
}

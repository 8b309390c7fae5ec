//! Hardware numbers with meaning: register offsets, MSR indices, bit positions, I/O ports.
//!
//! Every other module of this crate takes its magic numbers from here, grouped by device and
//! named as in the Intel SDM (volume 3, chapter "Advanced Programmable Interrupt Controller"),
//! the 82093AA I/O APIC datasheet, the 8254 PIT datasheet and the 8259A PIC datasheet.
//! This module holds data only: it must never touch hardware.

/// Local APIC: MSRs, register offsets (xAPIC MMIO) and register bits.
pub mod lapic {
    /// `IA32_APIC_BASE`: physical base, BSP flag, x2APIC enable, global enable.
    pub const MSR_APIC_BASE: u32 = 0x1B;
    /// `IA32_TSC_DEADLINE`: absolute TSC value at which the TSC-deadline timer fires.
    pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
    /// First x2APIC MSR; register at xAPIC offset `o` is MSR `X2APIC_MSR_BASE + o / 16`.
    pub const X2APIC_MSR_BASE: u32 = 0x800;

    /// `IA32_APIC_BASE` bit 8: this processor is the boot processor (read-only).
    pub const APIC_BASE_BSP: u64 = 1 << 8;
    /// `IA32_APIC_BASE` bit 10 (EXTD): x2APIC mode enabled.
    pub const APIC_BASE_EXTD: u64 = 1 << 10;
    /// `IA32_APIC_BASE` bit 11 (EN): APIC globally enabled.
    pub const APIC_BASE_EN: u64 = 1 << 11;
    /// `IA32_APIC_BASE` bits 12..=51: physical base of the xAPIC MMIO page.
    pub const APIC_BASE_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

    /// xAPIC MMIO register offsets (bytes from the APIC page base).
    pub const REG_ID: usize = 0x020;
    /// Task priority register.
    pub const REG_TPR: usize = 0x080;
    /// End-of-interrupt register (write-only).
    pub const REG_EOI: usize = 0x0B0;
    /// Spurious-interrupt vector register.
    pub const REG_SVR: usize = 0x0F0;
    /// Error status register.
    pub const REG_ESR: usize = 0x280;
    /// Interrupt command register, low half (the whole 64-bit ICR in x2APIC mode).
    pub const REG_ICR_LOW: usize = 0x300;
    /// Interrupt command register, high half (xAPIC only: destination in bits 31:24).
    pub const REG_ICR_HIGH: usize = 0x310;
    /// LVT timer register.
    pub const REG_LVT_TIMER: usize = 0x320;
    /// LVT LINT0 register.
    pub const REG_LVT_LINT0: usize = 0x350;
    /// LVT LINT1 register.
    pub const REG_LVT_LINT1: usize = 0x360;
    /// LVT error register.
    pub const REG_LVT_ERROR: usize = 0x370;
    /// Timer initial-count register (writing 0 stops the one-shot timer).
    pub const REG_TIMER_INITIAL: usize = 0x380;
    /// Timer current-count register (read-only).
    pub const REG_TIMER_CURRENT: usize = 0x390;
    /// Timer divide-configuration register.
    pub const REG_TIMER_DIVIDE: usize = 0x3E0;

    /// The xAPIC shifts its 8-bit APIC ID into bits 31:24 of the ID register.
    pub const XAPIC_ID_SHIFT: u32 = 24;
    /// The xAPIC ICR high half holds the 8-bit destination in bits 31:24.
    pub const XAPIC_ICR_DEST_SHIFT: u32 = 24;
    /// The x2APIC ICR holds the 32-bit destination in bits 63:32.
    pub const X2APIC_ICR_DEST_SHIFT: u32 = 32;
    /// Largest xAPIC physical destination; 0xFF itself means "broadcast".
    pub const XAPIC_MAX_UNICAST_ID: u32 = 0xFE;
    /// x2APIC broadcast destination.
    pub const X2APIC_BROADCAST_ID: u32 = 0xFFFF_FFFF;

    /// SVR bit 8: APIC software enable.
    pub const SVR_APIC_ENABLE: u32 = 1 << 8;
    /// LVT bit 16: entry masked.
    pub const LVT_MASKED: u32 = 1 << 16;
    /// LVT timer bits 18:17 = 00: one-shot.
    pub const LVT_TIMER_ONE_SHOT: u32 = 0b00 << 17;
    /// LVT timer bits 18:17 = 10: TSC-deadline.
    pub const LVT_TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
    /// Divide configuration 0b0011: the timer counts at bus clock / 16.
    pub const TIMER_DIVIDE_BY_16: u32 = 0b0011;

    /// ICR bits 10:8, delivery mode fixed.
    pub const ICR_DELIVERY_FIXED: u32 = 0b000 << 8;
    /// ICR bits 10:8, delivery mode INIT.
    pub const ICR_DELIVERY_INIT: u32 = 0b101 << 8;
    /// ICR bits 10:8, delivery mode start-up.
    pub const ICR_DELIVERY_STARTUP: u32 = 0b110 << 8;
    /// ICR bit 12: send pending (xAPIC only; reserved in x2APIC mode).
    pub const ICR_DELIVERY_PENDING: u32 = 1 << 12;
    /// ICR bit 14: level assert (must be 1 for every mode other than INIT de-assert).
    pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
    /// ICR bits 19:18 = 11: all processors excluding self.
    pub const ICR_SHORTHAND_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;

    /// Polls of the ICR delivery-status bit before an xAPIC send gives up.
    pub const ICR_IDLE_POLL_LIMIT: u32 = 1_000_000;
}

/// Interrupt vectors with architectural meaning.
pub mod vectors {
    /// Vectors below this are CPU exceptions (0-31); an interrupt must never use them.
    pub const FIRST_INTERRUPT_VECTOR: u8 = 0x20;
    /// The legacy master PIC is remapped to vectors 0x20-0x27 before it is masked.
    pub const PIC_MASTER_BASE: u8 = 0x20;
    /// The legacy slave PIC is remapped to vectors 0x28-0x2F before it is masked.
    pub const PIC_SLAVE_BASE: u8 = 0x28;
    /// A masked 8259 can still raise a spurious IRQ 7 (master) on this vector.
    pub const PIC_MASTER_SPURIOUS: u8 = PIC_MASTER_BASE + 7;
    /// A masked 8259 can still raise a spurious IRQ 15 (slave) on this vector.
    pub const PIC_SLAVE_SPURIOUS: u8 = PIC_SLAVE_BASE + 7;
}

/// I/O APIC: indirect register window and redirection-entry bits.
pub mod ioapic {
    /// Byte offset of IOREGSEL (register index) from the I/O APIC base.
    pub const IOREGSEL: usize = 0x00;
    /// Byte offset of IOWIN (register data) from the I/O APIC base.
    pub const IOWIN: usize = 0x10;
    /// IOAPICVER register index: version in bits 7:0, max redirection entry in bits 23:16.
    pub const REG_VERSION: u32 = 0x01;
    /// Index of redirection entry 0, low half; entry `n` is at `REDTBL_BASE + 2n` (low) and
    /// `REDTBL_BASE + 2n + 1` (high).
    pub const REDTBL_BASE: u32 = 0x10;

    /// Redirection entry bit 13: input pin polarity is active low.
    pub const ENTRY_ACTIVE_LOW: u32 = 1 << 13;
    /// Redirection entry bit 15: level triggered.
    pub const ENTRY_LEVEL: u32 = 1 << 15;
    /// Redirection entry bit 16: masked.
    pub const ENTRY_MASKED: u32 = 1 << 16;
    /// High half bits 31:24: physical destination APIC ID.
    pub const ENTRY_DEST_SHIFT: u32 = 24;
    /// The destination field is 8 bits wide.
    pub const ENTRY_MAX_DEST: u32 = 0xFF;
}

/// 8254 programmable interval timer, channel 0.
pub mod pit {
    /// Channel 0 data port.
    pub const PORT_CHANNEL0: u16 = 0x40;
    /// Mode/command port.
    pub const PORT_COMMAND: u16 = 0x43;
    /// The PIT input clock is 105/88 MHz = 39 375 000 / 33 Hz (about 1.193182 MHz);
    /// frequencies are computed from this exact ratio.
    pub const HZ_NUMERATOR: u64 = 39_375_000;
    /// See [`HZ_NUMERATOR`].
    pub const HZ_DENOMINATOR: u64 = 33;
    /// Command bits 5:4 = 11: access the low byte, then the high byte. Bits 7:6 = 00 select
    /// channel 0, bits 3:1 = 000 mode 0, bit 0 = 0 binary: all zero.
    const CMD_ACCESS_LOHI: u8 = 0b11 << 4;
    /// Command bits 7:6 = 11: read-back command.
    const CMD_READBACK: u8 = 0b11 << 6;
    /// Read-back bit 5: do NOT latch the count.
    const READBACK_SKIP_COUNT: u8 = 1 << 5;
    /// Read-back bit 4: do NOT latch the status.
    const READBACK_SKIP_STATUS: u8 = 1 << 4;
    /// Read-back bit 1: channel 0.
    const READBACK_CH0: u8 = 1 << 1;
    /// Command: channel 0, access low byte then high byte, mode 0, binary (0x30).
    pub const CMD_CH0_LOHI_MODE0: u8 = CMD_ACCESS_LOHI;
    /// Read-back: latch the count (not the status) of channel 0 (0xD2).
    pub const CMD_READBACK_CH0_COUNT: u8 = CMD_READBACK | READBACK_SKIP_STATUS | READBACK_CH0;
    /// Read-back: latch the status (not the count) of channel 0 (0xE2).
    pub const CMD_READBACK_CH0_STATUS: u8 = CMD_READBACK | READBACK_SKIP_COUNT | READBACK_CH0;
    /// Status bit 6: the count written has not been loaded into the counter yet.
    pub const STATUS_NULL_COUNT: u8 = 1 << 6;
    /// Initial count for the free-running countdown (it wraps through 0 to 0xFFFF).
    pub const FREE_RUNNING_COUNT: u16 = 0xFFFF;
    /// Consecutive identical counter reads after which the PIT is declared stalled. A live
    /// PIT changes every 838 ns; a million polls of several port accesses take far longer.
    pub const STALL_POLL_LIMIT: u32 = 1_000_000;
}

/// 8259A programmable interrupt controllers (master and slave).
pub mod pic {
    /// Master command port.
    pub const MASTER_COMMAND: u16 = 0x20;
    /// Master data (mask) port.
    pub const MASTER_DATA: u16 = 0x21;
    /// Slave command port.
    pub const SLAVE_COMMAND: u16 = 0xA0;
    /// Slave data (mask) port.
    pub const SLAVE_DATA: u16 = 0xA1;
    /// ICW1: initialise, ICW4 follows (edge triggered, cascaded).
    pub const ICW1_INIT_WITH_ICW4: u8 = 0x11;
    /// ICW3 for the master: a slave hangs off IRQ 2.
    pub const ICW3_MASTER_SLAVE_ON_IRQ2: u8 = 1 << 2;
    /// ICW3 for the slave: its cascade identity is 2.
    pub const ICW3_SLAVE_IDENTITY: u8 = 2;
    /// ICW4: 8086/88 mode, normal EOI.
    pub const ICW4_8086: u8 = 0x01;
    /// OCW1 value masking all eight inputs.
    pub const MASK_ALL: u8 = 0xFF;
    /// Unused POST-code port; writing to it gives the slow 8259 time between commands.
    pub const IO_DELAY_PORT: u16 = 0x80;
}

/// CPUID feature bits used to choose the APIC mode and timer.
pub mod cpuid {
    /// CPUID.01H:ECX bit 21: x2APIC.
    pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
    /// CPUID.01H:ECX bit 24: TSC-deadline timer.
    pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
    /// The leaf holding the invariant-TSC flag.
    pub const LEAF_POWER_MANAGEMENT: u32 = 0x8000_0007;
    /// The leaf reporting the highest extended leaf.
    pub const LEAF_EXTENDED_MAX: u32 = 0x8000_0000;
    /// CPUID.80000007H:EDX bit 8: invariant TSC.
    pub const POWER_EDX_INVARIANT_TSC: u32 = 1 << 8;
}

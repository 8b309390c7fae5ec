//! guest-pagetables: a PV guest that exercises its page tables and exceptions through the
//! hypervisor, checking each answer against Xen's x86-64 PV ABI.
//!
//! In order:
//! 1. demand paging: unmaps a free page and writes to it; the page-fault handler must see
//!    the exact address (cr2) and a not-present kernel-mode write (error code 0x2), maps
//!    another free frame there, and the retried store must land;
//! 2. its own L1 table, in a zeroed free frame: pinning it while it is mapped writable must
//!    fail; remapped read-only it pins, and then mapping it writable must fail. Hooked
//!    into a free slot of the boot L2 with `mmu_update`, it maps two frames (checked
//!    through their own addresses), remaps one (`invlpg_local`), maps three pages in one
//!    `multicall` of `update_va_mapping`s, unmaps all (`tlb_flush_local`), takes a read
//!    fault through it (error code 0x0), is unhooked (`tlb_flush_all`), unpinned, and must
//!    then map writable again;
//!    Before it is unhooked, writable page tables (see `writable`): get_features must report
//!    `mmu_pt_update_preserve_ad` and neither `writable_page_tables` nor
//!    `auto_translated_physmap` (and `MMU_PT_UPDATE_PRESERVE_AD` must keep A/D); a direct write to the L1 must fault (P|W, kernel mode) until
//!    the guest enables `VMASST_TYPE_writable_pagetables`; then `mov`, `xchg`, `lock btr`,
//!    `lock cmpxchg` (stored, then refused with the entry in rax) and a locked byte `or` on
//!    its entries, and `xchg`/`mov` unlinking and relinking it in the boot L2, must do what
//!    they do to memory, the pages they map must read back, and
//!    writes that `mmu_update` would refuse (the L1 itself writable, a frame beyond RAM)
//!    must fault with the entry unchanged;
//! 3. `int3` must reach the breakpoint handler with rip after it, `int 0x80` its DPL-3
//!    trap entry with rip after it (the vector read from the instruction), a divide by zero the
//!    divide-error handler with rip at the `div`;
//! 4. its own GDT (see `gdt`): descriptor checks and fix-ups of `set_gdt` and
//!    `update_descriptor`, and the frame's protection while it is a GDT;
//! 5. forced-emulation CPUID must return "XenVMMXenVMM" at leaf 0x40000000 and a vendor at
//!    leaf 0, and `mov rax, cr3` the boot L4's machine address.
//!
//! Console: one "pagetables: ..." line per step, then "pagetables: ok" and power-off, or
//! "pagetables: FAILED <what>" and a crash (an unannounced fault prints
//! "pagetables: FAILED unexpected page fault ..."). The QEMU guest test looks for
//! "pagetables: ok". It must never change a mapping the program itself uses.

#![no_std]
#![no_main]

mod emulated;
mod faults;
mod frames;
mod gdt;
mod tables;
mod writable;

use core::fmt;

use guest_rt::abi::hypercall::{Hypercall, MmuextCmd, MulticallEntry, ShutdownReason};
use guest_rt::abi::ids::PAGE_SIZE;
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::console::Bytes;
use guest_rt::hypercall::{self, shutdown, HypercallError};
use guest_rt::layout::VIRT_BASE;
use guest_rt::traps::TrapError;
use guest_rt::{println, shared_info, StartInfo};

use faults::{PageFault, PF_PRESENT, PF_USER, PF_WRITE};
use frames::{Frame, FreeFrames};
use tables::{Table, WalkError};

/// The boot L2 slot the guest's own L1 is hooked into: the 2 MiB at `VIRT_BASE + 512 MiB`,
/// above any initial mapping this guest is given.
const HOOK_SLOT: usize = 256;
/// The first address the hooked L1 maps.
const WINDOW: u64 = VIRT_BASE + ((HOOK_SLOT as u64) << 21);
/// Pattern seeds of the pages mapped in the tests, and the word of the demand fault.
const MARKER_X: u64 = 0x5858_5858_0000_0001;
const MARKER_Y: u64 = 0x5959_5959_0000_0002;
const MARKER_DEMAND: u64 = 0xDE3A_4D00_FA17_0001;
/// CPUID's hypervisor leaf and Xen's signature there.
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
const XEN_SIGNATURE: &[u8; 12] = b"XenVMMXenVMM";

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    if let Err(failure) = run(start) {
        println!("pagetables: FAILED {failure}");
        shutdown(ShutdownReason::Crash);
    }
    println!("pagetables: ok");
}

fn run(start: &StartInfo) -> Result<(), Failure> {
    call(Step::MapSharedInfo, shared_info::map_shared_info())?;
    faults::install().map_err(Failure::Trap)?;
    let mut free =
        FreeFrames::new(start).ok_or(Failure::Walk(WalkError::BadPtBase(start.pt_base)))?;
    demand_fault(&mut free)?;
    own_l1_table(&mut free)?;
    exceptions()?;
    gdt::descriptor_tables(&mut free)?;
    emulation()
}

/// The steps at which something can go wrong.
#[derive(Clone, Copy, Debug)]
enum Step {
    MapSharedInfo,
    UnmapFreeFrame,
    DemandFault,
    PinWritableTable,
    RemapTableReadOnly,
    PinTable,
    MapPinnedTableWritable,
    HookTable,
    MapThroughTable,
    RemapThroughTable,
    Multicall,
    UnmapThroughTable,
    Flush,
    FaultThroughTable,
    UnhookTable,
    UnpinTable,
    MapUnpinnedTableWritable,
    RemapGdtReadOnly,
    SetGdtWithSystemDescriptor,
    SetGdt,
    UpdateSystemDescriptor,
    UpdateDescriptor,
    MapGdtWritable,
    ReleaseGdt,
    MapReleasedGdtWritable,
    SoftwareTrapEntry,
    Features,
    WriteWithoutAssist,
    EnableAssist,
    EmulatedWrite,
    RefusedWrite,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MapSharedInfo => "mapping the shared info page",
            Self::UnmapFreeFrame => "unmapping a free frame",
            Self::DemandFault => "write fault on an unmapped page",
            Self::PinWritableTable => "pinning an L1 that is mapped writable",
            Self::RemapTableReadOnly => "remapping the L1 read-only",
            Self::PinTable => "pinning the L1",
            Self::MapPinnedTableWritable => "mapping the pinned L1 writable",
            Self::HookTable => "hooking the L1 into the boot L2",
            Self::MapThroughTable => "mapping pages through the L1",
            Self::RemapThroughTable => "remapping a page through the L1",
            Self::Multicall => "multicall of update_va_mapping",
            Self::UnmapThroughTable => "unmapping the L1's pages",
            Self::Flush => "TLB flush",
            Self::FaultThroughTable => "read fault through the L1",
            Self::UnhookTable => "unhooking the L1",
            Self::UnpinTable => "unpinning the L1",
            Self::MapUnpinnedTableWritable => "mapping the unpinned L1 writable",
            Self::RemapGdtReadOnly => "remapping the GDT frame",
            Self::SetGdtWithSystemDescriptor => "set_gdt with a TSS descriptor in the frame",
            Self::SetGdt => "set_gdt",
            Self::UpdateSystemDescriptor => "update_descriptor with a TSS descriptor",
            Self::UpdateDescriptor => "update_descriptor with a ring-0 code descriptor",
            Self::MapGdtWritable => "mapping the GDT frame writable",
            Self::ReleaseGdt => "releasing the GDT",
            Self::MapReleasedGdtWritable => "mapping the released GDT frame writable",
            Self::SoftwareTrapEntry => "a DPL-3 trap entry for vector 0x80",
            Self::Features => "XENVER_get_features",
            Self::WriteWithoutAssist => "direct write to the L1 without the assist",
            Self::EnableAssist => "enabling VMASST_TYPE_writable_pagetables",
            Self::EmulatedWrite => "emulated write to the L1",
            Self::RefusedWrite => "emulated write mmu_update would refuse",
        })
    }
}

/// Why the test failed.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// A hypercall returned an error.
    Call {
        step: Step,
        error: HypercallError,
    },
    /// A hypercall that must fail succeeded.
    NotRefused(Step),
    /// A batch succeeded without doing every request.
    Incomplete {
        step: Step,
        done: u32,
        asked: usize,
    },
    /// No free frame was left.
    OutOfFrames,
    Trap(TrapError),
    Walk(WalkError),
    /// An access that must fault did not reach the handler.
    NoPageFault(Step),
    /// The handler saw another address or error code than the access implies.
    WrongPageFault {
        step: Step,
        seen: PageFault,
        address: u64,
        error_code: u64,
    },
    /// A page did not hold what was written to the frame it should map.
    Content {
        step: Step,
        va: u64,
    },
    /// The boot L2 slot for the guest's own L1 is already used.
    HookSlotInUse {
        entry: u64,
    },
    /// An L1 entry kept its value after being cleared.
    EntryLeft {
        index: usize,
        entry: u64,
    },
    /// One call of the multicall batch failed (or its result was not written back).
    MulticallEntry {
        index: usize,
        result: u64,
    },
    /// `int 0x80` did not reach its trap entry with rip after it (0: never reached).
    SoftwareInterrupt {
        expected: u64,
        seen: u64,
    },
    /// The breakpoint handler did not see rip after the `int3`.
    Breakpoint {
        expected: u64,
        seen: u64,
    },
    /// The divide-error handler did not see rip at the `div`.
    DivideError {
        expected: u64,
        seen: u64,
    },
    /// Forced-emulation CPUID leaf 0x40000000 did not give Xen's signature.
    Signature([u8; 12]),
    /// Forced-emulation CPUID leaf 0 gave no vendor string.
    Vendor {
        max_leaf: u32,
        vendor: [u8; 12],
    },
    /// A descriptor in the guest's GDT did not come back fixed up.
    Descriptor {
        index: u64,
        seen: u64,
    },
    /// XENVER_get_features reported a wrong set.
    Features(u32),
    /// An emulated page-table write did not do what the instruction does.
    Emulated {
        step: Step,
        what: &'static str,
        seen: u64,
    },
    /// The emulated cr3 read is not the boot L4's machine address.
    Cr3 {
        read: u64,
        expected: u64,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Call { step, error } => write!(f, "{step}: hypercall error {error:?}"),
            Self::NotRefused(step) => write!(f, "{step}: succeeded, must be refused"),
            Self::Incomplete { step, done, asked } => {
                write!(f, "{step}: {done} of {asked} requests done")
            }
            Self::OutOfFrames => f.write_str("no free frame left"),
            Self::Trap(error) => write!(f, "installing handlers: {error:?}"),
            Self::Walk(error) => write!(f, "walking the boot page tables: {error}"),
            Self::NoPageFault(step) => write!(f, "{step}: no page fault"),
            Self::WrongPageFault {
                step,
                seen,
                address,
                error_code,
            } => write!(
                f,
                "{step}: fault at {:#x} error code {:#x}, expected {address:#x} error code \
                 {error_code:#x} (P/W/U bits)",
                seen.address, seen.error_code
            ),
            Self::Content { step, va } => write!(f, "{step}: {va:#x} holds the wrong data"),
            Self::HookSlotInUse { entry } => {
                write!(f, "boot L2 slot {HOOK_SLOT} is in use ({entry:#x})")
            }
            Self::EntryLeft { index, entry } => {
                write!(f, "own L1 entry {index} still {entry:#x} after unmapping")
            }
            Self::MulticallEntry { index, result } => {
                write!(f, "multicall entry {index} returned {}", result as i64)
            }
            Self::SoftwareInterrupt { expected, seen } => {
                write!(f, "int 0x80: its trap entry saw rip {seen:#x}, expected {expected:#x}")
            }
            Self::Breakpoint { expected, seen } => {
                write!(f, "int3: handler saw rip {seen:#x}, expected {expected:#x}")
            }
            Self::DivideError { expected, seen } => {
                write!(
                    f,
                    "divide error: handler saw rip {seen:#x}, expected {expected:#x}"
                )
            }
            Self::Signature(signature) => {
                write!(
                    f,
                    "cpuid {HYPERVISOR_LEAF:#x}: signature \"{}\"",
                    Bytes(&signature)
                )
            }
            Self::Vendor { max_leaf, vendor } => write!(
                f,
                "cpuid 0: max leaf {max_leaf:#x}, vendor \"{}\"",
                Bytes(&vendor)
            ),
            Self::Descriptor { index, seen } => {
                write!(f, "GDT entry {index} is {seen:#x}, expected DPL 3 and accessed added")
            }
            Self::Features(submap) => write!(
                f,
                "get_features submap {submap:#x}: wants mmu_pt_update_preserve_ad (bit 5), \
                 never writable_page_tables (0) or auto_translated_physmap (2)"
            ),
            Self::Emulated { step, what, seen } => write!(f, "{step}: {what} (saw {seen:#x})"),
            Self::Cr3 { read, expected } => {
                write!(f, "cr3 read {read:#x}, expected the L4 at {expected:#x}")
            }
        }
    }
}

/// The hypercall result at `step`, its error turned into a [`Failure`].
fn call<T>(step: Step, result: Result<T, HypercallError>) -> Result<T, Failure> {
    result.map_err(|error| Failure::Call { step, error })
}

/// A hypercall that must fail: returns its error for the console.
fn refused(step: Step, result: Result<(), HypercallError>) -> Result<HypercallError, Failure> {
    match result {
        Ok(()) => Err(Failure::NotRefused(step)),
        Err(error) => Ok(error),
    }
}

/// Applies page-table updates, all of which must be done.
///
/// # Safety
/// As [`tables::update`].
unsafe fn update_all(
    step: Step,
    requests: &[guest_rt::abi::mmu::MmuUpdate],
) -> Result<(), Failure> {
    // SAFETY: the caller vouches for the updates.
    let done = call(step, unsafe { tables::update(requests) })?;
    if done as usize != requests.len() {
        return Err(Failure::Incomplete {
            step,
            done,
            asked: requests.len(),
        });
    }
    Ok(())
}

/// Sets the leaf entry of `va` (`update_va_mapping`, flushing that page locally).
///
/// # Safety
/// Nothing may use the page at `va` as ordinary memory.
unsafe fn map_va(step: Step, va: u64, pte: u64) -> Result<(), Failure> {
    // SAFETY: the caller vouches for the page.
    call(step, unsafe {
        hypercall::update_va_mapping(va, pte, UVMF_INVLPG | UVMF_LOCAL)
    })
}

/// Page `n` of the window the guest's own L1 maps.
const fn window(n: u64) -> u64 {
    WINDOW + n * PAGE_SIZE
}

/// The next free frame.
fn take(free: &mut FreeFrames) -> Result<Frame, Failure> {
    free.take().ok_or(Failure::OutOfFrames)
}

/// Checks that the page at `va` holds the pattern of `marker`.
///
/// # Safety
/// `va` must map a readable page.
unsafe fn expect_holds(step: Step, va: u64, marker: u64) -> Result<(), Failure> {
    // SAFETY: the caller vouches for the page.
    if unsafe { frames::holds(va, marker) } {
        Ok(())
    } else {
        Err(Failure::Content { step, va })
    }
}

/// Checks the page fault served since it was announced: at `address`, with the P, W and U
/// bits of `error_code`.
fn expect_fault(step: Step, address: u64, error_code: u64) -> Result<PageFault, Failure> {
    let seen = faults::served_page_fault().ok_or(Failure::NoPageFault(step))?;
    if seen.address != address || seen.error_code & (PF_PRESENT | PF_WRITE | PF_USER) != error_code
    {
        return Err(Failure::WrongPageFault {
            step,
            seen,
            address,
            error_code,
        });
    }
    Ok(seen)
}

/// Step 1: a write to an unmapped page faults, the handler maps a frame, the store lands.
fn demand_fault(free: &mut FreeFrames) -> Result<(), Failure> {
    let hole = take(free)?;
    let filler = take(free)?;
    // SAFETY: free frames: nothing uses their pages.
    unsafe {
        map_va(Step::UnmapFreeFrame, hole.va(), 0)?;
        map_va(Step::UnmapFreeFrame, filler.va(), 0)?;
    }
    let address = hole.va() + 0x18;
    faults::expect_page_fault(address, tables::rw_pte(filler.mfn));
    // SAFETY: the page is unmapped and the fault announced: the handler maps `filler`
    // there and the store is retried.
    unsafe { faults::store(address, MARKER_DEMAND) };
    let fault = expect_fault(Step::DemandFault, address, PF_WRITE)?;
    // SAFETY: the handler mapped the page.
    if unsafe { faults::load(address) } != MARKER_DEMAND {
        return Err(Failure::Content {
            step: Step::DemandFault,
            va: address,
        });
    }
    println!(
        "pagetables: write to unmapped {address:#x} faulted (error code {:#x}), the handler \
         mapped a frame and the store landed",
        fault.error_code
    );
    Ok(())
}

/// Step 2: the guest's own L1 table, from pinning to unpinning.
fn own_l1_table(free: &mut FreeFrames) -> Result<(), Failure> {
    let frame = pinned_table(free)?;
    let l1 = Table::new(frame.mfn, frame.va());
    let l2 = tables::boot_l2().map_err(Failure::Walk)?;
    let slot = l2.entry(HOOK_SLOT);
    if slot != 0 {
        return Err(Failure::HookSlotInUse { entry: slot });
    }
    // SAFETY: the slot was empty: the program uses nothing it maps.
    unsafe {
        update_all(
            Step::HookTable,
            &[l2.set(HOOK_SLOT, tables::table_pte(l1.mfn))],
        )?
    };
    let x = take(free)?;
    let y = take(free)?;
    map_through(&l1, x, y)?;
    unmap_through(&l1, y)?;
    writable_tables(&l1, frame.va(), x, y)?;
    // SAFETY: the window is unmapped again: the slot maps nothing in use.
    unsafe { update_all(Step::UnhookTable, &[l2.set(HOOK_SLOT, 0)])? };
    call(Step::Flush, tables::flush_tlb(MmuextCmd::TlbFlushAll))?;
    call(Step::UnpinTable, tables::unpin(frame.mfn))?;
    // SAFETY: the frame is no page table any more; nothing else uses it.
    unsafe {
        map_va(
            Step::MapUnpinnedTableWritable,
            frame.va(),
            tables::rw_pte(frame.mfn),
        )?;
        frames::fill(frame.va(), MARKER_X);
        expect_holds(Step::MapUnpinnedTableWritable, frame.va(), MARKER_X)?;
    }
    println!("pagetables: unhooked and unpinned own L1; it maps writable again");
    Ok(())
}

/// Takes a free frame, zeroes it and pins it as an L1: refused while it is mapped
/// writable, accepted once it is read-only, after which mapping it writable is refused.
fn pinned_table(free: &mut FreeFrames) -> Result<Frame, Failure> {
    let frame = take(free)?;
    // SAFETY: a free frame, mapped writable at its address; nothing uses it.
    unsafe { frames::zero(frame.va()) };
    let error = refused(Step::PinWritableTable, tables::pin_l1(frame.mfn))?;
    println!("pagetables: pinning an L1 that is mapped writable refused ({error:?})");
    // SAFETY: the frame is ours and unused; only its mapping's permission changes.
    unsafe {
        map_va(
            Step::RemapTableReadOnly,
            frame.va(),
            tables::ro_pte(frame.mfn),
        )?
    };
    call(Step::PinTable, tables::pin_l1(frame.mfn))?;
    // SAFETY: the attempt must fail; were it to succeed, it maps the same frame again.
    let attempt = unsafe {
        hypercall::update_va_mapping(
            frame.va(),
            tables::rw_pte(frame.mfn),
            UVMF_INVLPG | UVMF_LOCAL,
        )
    };
    let error = refused(Step::MapPinnedTableWritable, attempt)?;
    println!(
        "pagetables: pinned own L1 (mfn {:#x}); mapping it writable refused ({error:?})",
        frame.mfn.0
    );
    Ok(frame)
}

/// Maps `x` and `y` through the hooked `l1` (checked through their own addresses),
/// remaps one, then maps three pages in one multicall.
fn map_through(l1: &Table, x: Frame, y: Frame) -> Result<(), Failure> {
    let step = Step::MapThroughTable;
    // SAFETY: the window's entries were empty; x and y are free frames nothing uses.
    unsafe {
        update_all(
            step,
            &[
                l1.set(0, tables::rw_pte(x.mfn)),
                l1.set(1, tables::rw_pte(y.mfn)),
            ],
        )?;
        frames::fill(window(0), MARKER_X);
        frames::fill(window(1), MARKER_Y);
        expect_holds(step, x.va(), MARKER_X)?;
        expect_holds(step, y.va(), MARKER_Y)?;
    }
    let step = Step::RemapThroughTable;
    // SAFETY: window page 0 maps x, which nothing uses as ordinary memory.
    unsafe { update_all(step, &[l1.set(0, tables::rw_pte(y.mfn))])? };
    call(step, tables::invlpg_local(window(0)))?;
    // SAFETY: window page 0 maps y now.
    unsafe { expect_holds(step, window(0), MARKER_Y)? };

    let mapping = |va: u64, frame: Frame| MulticallEntry {
        op: Hypercall::UpdateVaMapping.number(),
        // Not a result any call gives: a result left unwritten shows.
        result: u64::MAX,
        args: [
            va,
            tables::rw_pte(frame.mfn),
            UVMF_INVLPG | UVMF_LOCAL,
            0,
            0,
            0,
        ],
    };
    let mut calls = [
        mapping(window(2), x),
        mapping(window(3), y),
        mapping(window(0), x),
    ];
    // SAFETY: the window pages map only x and y, which nothing uses as ordinary memory.
    call(Step::Multicall, unsafe { hypercall::multicall(&mut calls) })?;
    if let Some((index, entry)) = calls.iter().enumerate().find(|(_, c)| c.result != 0) {
        return Err(Failure::MulticallEntry {
            index,
            result: entry.result,
        });
    }
    // SAFETY: the multicall mapped these pages.
    unsafe {
        expect_holds(Step::Multicall, window(2), MARKER_X)?;
        expect_holds(Step::Multicall, window(3), MARKER_Y)?;
        expect_holds(Step::Multicall, window(0), MARKER_X)?;
    }
    println!(
        "pagetables: own L1 hooked into boot L2 slot {HOOK_SLOT}: mapped 2 pages (mmu_update), \
         remapped 1 (invlpg_local), mapped 3 in one multicall"
    );
    Ok(())
}

/// Unmaps the window, flushes, and takes a read fault in it, served by mapping `y`
/// through `l1` again; leaves the window unmapped.
fn unmap_through(l1: &Table, y: Frame) -> Result<(), Failure> {
    let clear: [_; 4] = core::array::from_fn(|index| l1.set(index, 0));
    // SAFETY: the window maps x and y, which nothing uses as ordinary memory.
    unsafe { update_all(Step::UnmapThroughTable, &clear)? };
    call(Step::Flush, tables::flush_tlb(MmuextCmd::TlbFlushLocal))?;
    if let Some((index, entry)) = (0..clear.len())
        .map(|i| (i, l1.entry(i)))
        .find(|&(_, e)| e != 0)
    {
        return Err(Failure::EntryLeft { index, entry });
    }
    let word = 5;
    let address = window(0) + 8 * word as u64;
    faults::expect_page_fault(address, tables::rw_pte(y.mfn));
    // SAFETY: the page is unmapped and the fault announced: the handler maps y there and
    // the load is retried.
    let value = unsafe { faults::load(address) };
    let fault = expect_fault(Step::FaultThroughTable, address, 0)?;
    if value != frames::pattern(MARKER_Y, word) {
        return Err(Failure::Content {
            step: Step::FaultThroughTable,
            va: address,
        });
    }
    // SAFETY: window page 0 maps y, which nothing uses as ordinary memory.
    unsafe { map_va(Step::UnmapThroughTable, window(0), 0)? };
    println!(
        "pagetables: unmapped (tlb_flush_local); read of {address:#x} faulted (error code \
         {:#x}) and was served through own L1",
        fault.error_code
    );
    Ok(())
}

/// Fails with `what` at `step` unless `ok`.
fn expect(ok: bool, step: Step, what: &'static str, seen: u64) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure::Emulated { step, what, seen })
    }
}

/// Step 2, writable page tables: direct writes to the pinned, hooked `l1` (readable at
/// `l1_va`, window pages unmapped), emulated once the guest enables the assist. Leaves
/// every entry it used at 0, flushed.
fn writable_tables(l1: &Table, l1_va: u64, x: Frame, y: Frame) -> Result<(), Failure> {
    let features = call(Step::Features, writable::features())?;
    if features & (1 << 5) == 0 || features & (1 | 1 << 2) != 0 {
        return Err(Failure::Features(features));
    }
    let entry = |index: u64| l1_va + 8 * index;
    let address = |pte: u64| pte & guest_rt::layout::PTE_ADDRESS_MASK;
    const PTE_WRITABLE: u64 = guest_rt::layout::PTE_WRITABLE;
    // SAFETY: entry 0 maps nothing in use; the write must fault and is skipped.
    unsafe { faults::store_expecting_fault(entry(0), tables::rw_pte(x.mfn)) };
    expect_fault(Step::WriteWithoutAssist, entry(0), PF_PRESENT | PF_WRITE)?;
    expect(l1.entry(0) == 0, Step::WriteWithoutAssist, "the entry changed", l1.entry(0))?;
    let unoffered = writable::vm_assist_unoffered();
    let einval = guest_rt::abi::errno::Errno::Einval.as_return();
    expect(unoffered == einval, Step::EnableAssist, "an unoffered type must be EINVAL", unoffered as u64)?;
    call(Step::EnableAssist, writable::set_writable_pagetables(true))?;

    let step = Step::EmulatedWrite;
    // Entries 0-3 of the pinned L1 map window pages 0-3, which nothing uses but these
    // checks; x and y are frames nothing else uses.
    // SAFETY: as just said, for this block and the next ones.
    unsafe { writable::mov(entry(0), tables::rw_pte(x.mfn)) };
    expect(address(l1.entry(0)) == x.mfn.address(), step, "mov: entry 0 does not map x", l1.entry(0))?;
    // SAFETY: window page 0 maps x now.
    unsafe { expect_holds(step, window(0), MARKER_X)? };
    // The reported mmu_pt_update_preserve_ad: the entry's accessed and dirty bits survive
    // an update whose value has neither.
    let accessed_dirty = (1 << 5) | (1 << 6);
    let request = guest_rt::abi::mmu::MmuUpdate::new(
        guest_rt::abi::hypercall::MmuUpdateCmd::PtUpdatePreserveAd,
        l1.mfn.address(),
        tables::rw_pte(x.mfn) & !accessed_dirty,
    );
    // SAFETY: entry 0 maps x as before; only its accessed and dirty bits are at stake.
    unsafe { update_all(step, &[request])? };
    expect(l1.entry(0) & accessed_dirty == accessed_dirty, step, "preserve-AD update lost A/D", l1.entry(0))?;
    // SAFETY: as above.
    let old = unsafe { writable::xchg(entry(1), tables::rw_pte(y.mfn)) };
    expect(old == 0, step, "xchg: old value of entry 1", old)?;
    // SAFETY: window page 1 maps y now.
    unsafe { expect_holds(step, window(1), MARKER_Y)? };
    // SAFETY: as above.
    let was_writable = unsafe { writable::lock_btr(entry(0), 1) };
    expect(was_writable, step, "lock btr: CF must hold the old RW bit", l1.entry(0))?;
    expect(l1.entry(0) & PTE_WRITABLE == 0, step, "lock btr: entry 0 still writable", l1.entry(0))?;
    // SAFETY: as above.
    let (stored, _) = unsafe { writable::lock_cmpxchg(entry(2), 0, tables::rw_pte(x.mfn)) };
    expect(stored, step, "lock cmpxchg on an empty entry did not store", l1.entry(2))?;
    // SAFETY: window page 2 maps x now.
    unsafe { expect_holds(step, window(2), MARKER_X)? };
    // SAFETY: as above.
    let (stored, seen) = unsafe { writable::lock_cmpxchg(entry(2), 0, tables::rw_pte(y.mfn)) };
    expect(!stored && seen == l1.entry(2), step, "lock cmpxchg with a stale value", seen)?;
    // SAFETY: as above.
    unsafe { writable::lock_or_byte1(entry(1)) };
    expect(l1.entry(1) & (1 << 9) != 0, step, "lock or byte: bit 9 of entry 1", l1.entry(1))?;
    expect(address(l1.entry(1)) == y.mfn.address(), step, "lock or byte: entry 1 moved", l1.entry(1))?;

    let step = Step::RefusedWrite;
    let far = guest_rt::abi::ids::Mfn(0xf_ffff_ffff);
    for refused in [tables::rw_pte(l1.mfn), tables::rw_pte(far)] {
        // SAFETY: entry 3 maps nothing in use; the write must be refused and is skipped.
        unsafe { faults::store_expecting_fault(entry(3), refused) };
        expect_fault(step, entry(3), PF_PRESENT | PF_WRITE)?;
        expect(l1.entry(3) == 0, step, "a refused write changed entry 3", l1.entry(3))?;
    }
    // An L2 entry: the boot L2's hook slot unlinked and linked again by direct writes.
    let l2 = tables::boot_l2().map_err(Failure::Walk)?;
    let hook = l2.va() + 8 * HOOK_SLOT as u64;
    // SAFETY: the hook slot maps only the window, which nothing uses but these checks.
    let old = unsafe { writable::xchg(hook, 0) };
    expect(address(old) == l1.mfn.address(), step, "xchg on the boot L2: old hook entry", old)?;
    expect(l2.entry(HOOK_SLOT) == 0, step, "xchg on the boot L2 left the hook", l2.entry(HOOK_SLOT))?;
    // SAFETY: as above.
    unsafe { writable::mov(hook, tables::table_pte(l1.mfn)) };
    expect(address(l2.entry(HOOK_SLOT)) == l1.mfn.address(), step, "mov on the boot L2: hook", l2.entry(HOOK_SLOT))?;
    call(Step::Flush, tables::flush_tlb(MmuextCmd::TlbFlushLocal))?;
    // SAFETY: window page 1 maps y through the re-linked L1.
    unsafe { expect_holds(step, window(1), MARKER_Y)? };
    for index in 0..3 {
        // SAFETY: as above.
        unsafe { writable::mov(entry(index), 0) };
    }
    call(Step::Flush, tables::flush_tlb(MmuextCmd::TlbFlushLocal))?;
    if let Some(index) = (0..4).find(|&i| l1.entry(i) != 0) {
        return Err(Failure::EntryLeft { index, entry: l1.entry(index) });
    }
    println!(
        "pagetables: writable page tables: features {features:#x}; direct write faulted until \
         vm_assist; mov, xchg, lock btr, lock cmpxchg (stored, then refused) and lock or byte \
         emulated; the boot L2's hook unlinked and linked again; the L1 mapped writable and a \
         frame beyond RAM refused with #PF"
    );
    Ok(())
}

/// Step 3: `int3` and a divide error reach their handlers with the right rip.
fn exceptions() -> Result<(), Failure> {
    let (after, seen) = faults::breakpoint();
    if seen != after {
        return Err(Failure::Breakpoint {
            expected: after,
            seen,
        });
    }
    let (div_at, seen) = faults::divide_by_zero();
    if seen != div_at {
        return Err(Failure::DivideError {
            expected: div_at,
            seen,
        });
    }
    println!(
        "pagetables: int3 trapped with rip {after:#x} (after it); divide error with rip \
         {div_at:#x} (at the div), resumed"
    );
    let (after, seen) = faults::software_interrupt().map_err(|error| Failure::Call { step: Step::SoftwareTrapEntry, error })?;
    if seen != after {
        return Err(Failure::SoftwareInterrupt { expected: after, seen });
    }
    println!("pagetables: int 0x80 reached its DPL-3 trap entry with rip {after:#x} (after it)");
    Ok(())
}

/// Step 4: forced-emulation CPUID and the emulated cr3 read.
fn emulation() -> Result<(), Failure> {
    let hypervisor = emulated::forced_cpuid(HYPERVISOR_LEAF);
    let signature = hypervisor.ebx_ecx_edx();
    if &signature != XEN_SIGNATURE {
        return Err(Failure::Signature(signature));
    }
    let basic = emulated::forced_cpuid(0);
    let vendor = basic.ebx_edx_ecx();
    let printable = vendor.iter().all(|b| (b' '..=b'~').contains(b));
    if basic.eax == 0 || !printable || vendor.iter().all(|&b| b == b' ') {
        return Err(Failure::Vendor {
            max_leaf: basic.eax,
            vendor,
        });
    }
    println!(
        "pagetables: forced-emulation cpuid: leaf {HYPERVISOR_LEAF:#x} \"{}\" (eax {:#x}), \
         leaf 0 \"{}\" (max leaf {:#x})",
        Bytes(&signature),
        hypervisor.eax,
        Bytes(&vendor),
        basic.eax
    );
    let cr3 = emulated::read_cr3();
    let l4 = tables::boot_l4().map_err(Failure::Walk)?;
    if cr3 != l4.mfn.address() {
        return Err(Failure::Cr3 {
            read: cr3,
            expected: l4.mfn.address(),
        });
    }
    println!("pagetables: mov from cr3 gave {cr3:#x}, the boot L4's machine address");
    Ok(())
}

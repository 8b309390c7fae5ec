//! The fuzzer's own pages, reserved in its image's bss (defined in assembly, so that Rust
//! never holds a reference into them): each vCPU's scratch buffer, the unmapped hole after
//! it, a view page to look at a frame read-only, vCPU 1's stack, and the stacks of the
//! vCPUs the fuzzer brings up only to park them. Plus [`Scratch`], the bump allocator
//! through which a vCPU lays out the buffers of its next calls, and [`vcpu_of_stack`],
//! which tells a handler which vCPU it runs on.
//!
//! The hypervisor writes into scratch on the fuzzer's behalf (that is what the buffers are
//! for), and nothing else of the program is ever handed to it for writing ([`guest_fuzz::gen`]
//! promises it). This module must never be given a pointer to anything but these pages.

use core::arch::global_asm;

use guest_fuzz::world::PAGE;

/// Pages of each vCPU's scratch buffer.
pub const SCRATCH_PAGES: u64 = 8;
/// Bytes of vCPU 1's stack.
pub const STACK1_BYTES: u64 = 32 * 1024;
/// vCPUs beyond the fuzzer's two that `vcpu_op` may bring up, to park.
pub const PARKED_VCPUS: u64 = 30;
/// Bytes of each parked vCPU's stack.
pub const PARK_STACK_BYTES: u64 = 512;

global_asm!(
    ".pushsection .bss.fuzz_pages,\"aw\",@nobits",
    ".balign 4096",
    ".globl fuzz_scratch0",
    "fuzz_scratch0:",
    ".skip {scratch}",
    ".globl fuzz_hole0",
    "fuzz_hole0:",
    ".skip 4096",
    ".globl fuzz_scratch1",
    "fuzz_scratch1:",
    ".skip {scratch}",
    ".globl fuzz_hole1",
    "fuzz_hole1:",
    ".skip 4096",
    ".globl fuzz_view0",
    "fuzz_view0:",
    ".skip 4096",
    ".globl fuzz_view1",
    "fuzz_view1:",
    ".skip 4096",
    ".globl fuzz_stack1_bottom",
    "fuzz_stack1_bottom:",
    ".skip {stack1}",
    ".globl fuzz_stack1_top",
    "fuzz_stack1_top:",
    ".globl fuzz_park_stacks",
    "fuzz_park_stacks:",
    ".skip {park}",
    ".globl fuzz_park_stacks_end",
    "fuzz_park_stacks_end:",
    ".balign 4096",
    ".popsection",
    scratch = const SCRATCH_PAGES * PAGE,
    stack1 = const STACK1_BYTES,
    park = const PARKED_VCPUS * PARK_STACK_BYTES,
);

extern "C" {
    static fuzz_scratch0: u8;
    static fuzz_hole0: u8;
    static fuzz_scratch1: u8;
    static fuzz_hole1: u8;
    static fuzz_view0: u8;
    static fuzz_view1: u8;
    static fuzz_stack1_bottom: u8;
    static fuzz_stack1_top: u8;
    static fuzz_park_stacks: u8;
    static fuzz_park_stacks_end: u8;
}

/// vCPU `vcpu`'s scratch buffer (its first byte).
pub fn scratch(vcpu: usize) -> u64 {
    if vcpu == 0 {
        &raw const fuzz_scratch0 as u64
    } else {
        &raw const fuzz_scratch1 as u64
    }
}

/// vCPU `vcpu`'s hole: the page after its scratch buffer, unmapped at start.
pub fn hole(vcpu: usize) -> u64 {
    if vcpu == 0 {
        &raw const fuzz_hole0 as u64
    } else {
        &raw const fuzz_hole1 as u64
    }
}

/// vCPU `vcpu`'s view page, where it maps a frame read-only to look at it.
pub fn view(vcpu: usize) -> u64 {
    if vcpu == 0 {
        &raw const fuzz_view0 as u64
    } else {
        &raw const fuzz_view1 as u64
    }
}

/// The top of vCPU 1's stack.
pub fn stack1_top() -> u64 {
    &raw const fuzz_stack1_top as u64
}

/// The top of parked vCPU `id`'s stack (`id` from 2).
pub fn park_stack_top(id: u32) -> u64 {
    &raw const fuzz_park_stacks as u64 + (u64::from(id) - 1) * PARK_STACK_BYTES - 16
}

/// Which vCPU runs on the stack `rsp` is in: 1 on vCPU 1's, a parked vCPU's id on its
/// stack, else 0 (the runtime's stack, vCPU 0's).
pub fn vcpu_of_stack(rsp: u64) -> u32 {
    let stack1 = &raw const fuzz_stack1_bottom as u64..&raw const fuzz_stack1_top as u64 + 1;
    let parks = &raw const fuzz_park_stacks as u64..&raw const fuzz_park_stacks_end as u64;
    if stack1.contains(&rsp) {
        1
    } else if parks.contains(&rsp) {
        2 + ((rsp - parks.start) / PARK_STACK_BYTES) as u32
    } else {
        0
    }
}

/// Lays out the buffers of one round of calls in a vCPU's scratch buffer.
pub struct Scratch {
    base: u64,
    used: u64,
}

/// The scratch buffer's size in bytes.
pub const SCRATCH_BYTES: u64 = SCRATCH_PAGES * PAGE;

impl Scratch {
    pub fn new(vcpu: usize) -> Self {
        Self { base: scratch(vcpu), used: 0 }
    }

    /// Forgets every buffer: the next round starts at the beginning.
    pub fn reset(&mut self) {
        self.used = 0;
    }

    /// Room for `len` bytes aligned to 16, or `None` when the buffer is full.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let start = self.used.next_multiple_of(16);
        let end = start.checked_add(len)?;
        if end > SCRATCH_BYTES {
            return None;
        }
        self.used = end;
        Some(self.base + start)
    }

    /// Bytes left after the last buffer.
    pub fn left(&self) -> u64 {
        SCRATCH_BYTES - self.used.next_multiple_of(16).min(SCRATCH_BYTES)
    }

    /// Places `value` in a new buffer; its address, or `None` when full.
    pub fn put<T: Copy>(&mut self, value: T) -> Option<u64> {
        let at = self.alloc(size_of::<T>() as u64)?;
        // SAFETY: `at` is inside this vCPU's scratch pages (mapped writable, used by nothing
        // but this vCPU's calls), with room for `T`; unaligned because any layout is allowed.
        unsafe { (at as *mut T).write_unaligned(value) };
        Some(at)
    }

    /// Places `values` in a new buffer; its address, or `None` when full.
    pub fn put_slice<T: Copy>(&mut self, values: &[T]) -> Option<u64> {
        let at = self.alloc(core::mem::size_of_val(values) as u64)?;
        for (i, &value) in values.iter().enumerate() {
            // SAFETY: as in `put`, element by element inside the buffer just taken.
            unsafe { (at as *mut T).add(i).write_unaligned(value) };
        }
        Some(at)
    }

    /// Fills `len` bytes at `at` (inside the buffer) with `byte`.
    pub fn fill(&mut self, at: u64, len: u64, byte: u8) {
        let end = (self.base + SCRATCH_BYTES).min(at.saturating_add(len));
        if at >= self.base && at < end {
            // SAFETY: the range lies inside this vCPU's scratch pages (clamped above).
            unsafe { core::ptr::write_bytes(at as *mut u8, byte, (end - at) as usize) };
        }
    }

    /// Reads a `T` from `at` (inside the buffer) back: what the hypervisor wrote there.
    pub fn get<T: Copy>(&self, at: u64) -> Option<T> {
        let end = at.checked_add(size_of::<T>() as u64)?;
        if at < self.base || end > self.base + SCRATCH_BYTES {
            return None;
        }
        // SAFETY: inside this vCPU's scratch pages; `T` is plain data (every caller reads
        // integers or ABI structs of integers), read unaligned.
        Some(unsafe { (at as *const T).read_unaligned() })
    }

    /// The end of the buffer (the hole's first byte).
    pub fn end(&self) -> u64 {
        self.base + SCRATCH_BYTES
    }
}

//! The contents of the hypercall page a domain builder writes at the guest's
//! `HYPERCALL_PAGE` note: one 32-byte stub per hypercall number, for a 64-bit PV kernel
//! that runs in ring 3 and enters the hypervisor with `syscall`.
//!
//! The domain builder writes the guest's page with [`fill_hypercall_page`]; our guests may use the same
//! bytes or `syscall` directly. Stub n (n < 128) sits at offset n * 32:
//! `push %rcx; push %r11; mov $n, %eax; syscall; pop %r11; pop %rcx; ret`. The iret stub
//! (23) is jumped to, pushes rax as well and never returns. Bytes after each stub are
//! `int3` (0xcc), so a jump into the middle of a slot traps. This module must never touch
//! guest memory itself.

use crate::hypercall::Hypercall;

/// Size of the page.
pub const HYPERCALL_PAGE_SIZE: usize = 4096;
/// Size of one stub slot.
pub const STUB_SIZE: usize = 32;
/// Number of stubs (every slot of the page).
pub const STUB_COUNT: usize = HYPERCALL_PAGE_SIZE / STUB_SIZE;
/// Filler after each stub: `int3`.
pub const FILLER: u8 = 0xcc;

const PUSH_RCX: u8 = 0x51;
const PUSH_R11: [u8; 2] = [0x41, 0x53];
const PUSH_RAX: u8 = 0x50;
const MOV_EAX_IMM32: u8 = 0xb8;
const SYSCALL: [u8; 2] = [0x0f, 0x05];
const POP_R11: [u8; 2] = [0x41, 0x5b];
const POP_RCX: u8 = 0x59;
const RET: u8 = 0xc3;

/// Fills `page` with the complete hypercall page (in place: no 4 KiB stack copy).
pub fn fill_hypercall_page(page: &mut [u8; HYPERCALL_PAGE_SIZE]) {
    page.fill(FILLER);
    for (number, slot) in page.chunks_exact_mut(STUB_SIZE).enumerate() {
        let stub = if number == Hypercall::Iret as usize {
            iret_stub()
        } else {
            call_stub(number as u32)
        };
        slot[..stub.len()].copy_from_slice(stub.as_slice());
    }
}

/// The complete hypercall page, by value.
pub fn hypercall_page() -> [u8; HYPERCALL_PAGE_SIZE] {
    let mut page = [0; HYPERCALL_PAGE_SIZE];
    fill_hypercall_page(&mut page);
    page
}

/// The offset of hypercall `call`'s stub within the page.
pub const fn stub_offset(call: Hypercall) -> usize {
    call as usize * STUB_SIZE
}

/// A returning stub: save the registers `syscall` clobbers, make the call, restore.
fn call_stub(number: u32) -> Stub {
    let mut stub = Stub::default();
    stub.push(&[PUSH_RCX]);
    stub.push(&PUSH_R11);
    stub.push(&[MOV_EAX_IMM32]);
    stub.push(&number.to_le_bytes());
    stub.push(&SYSCALL);
    stub.push(&POP_R11);
    stub.push(&[POP_RCX, RET]);
    stub
}

/// The iret stub: the guest jumps here with its iret frame on the stack (rax, r11, rcx
/// pushed on top of it complete `iret_context`); it never returns.
fn iret_stub() -> Stub {
    let mut stub = Stub::default();
    stub.push(&[PUSH_RCX]);
    stub.push(&PUSH_R11);
    stub.push(&[PUSH_RAX, MOV_EAX_IMM32]);
    stub.push(&(Hypercall::Iret as u32).to_le_bytes());
    stub.push(&SYSCALL);
    stub
}

/// A stub under construction (never longer than a slot).
#[derive(Default)]
struct Stub {
    bytes: [u8; STUB_SIZE],
    len: usize,
}

impl Stub {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(page: &[u8; HYPERCALL_PAGE_SIZE], n: usize) -> &[u8] {
        &page[n * STUB_SIZE..(n + 1) * STUB_SIZE]
    }

    #[test]
    fn ordinary_stub_bytes() {
        let page = hypercall_page();
        let expected = [
            0x51, 0x41, 0x53, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3,
        ];
        let mmu_update = slot(&page, 1);
        assert_eq!(mmu_update[..14], expected);
        assert!(mmu_update[14..].iter().all(|&b| b == 0xcc));
    }

    #[test]
    fn iret_stub_bytes() {
        let page = hypercall_page();
        let expected = [
            0x51, 0x41, 0x53, 0x50, 0xb8, 0x17, 0x00, 0x00, 0x00, 0x0f, 0x05,
        ];
        let iret = slot(&page, 23);
        assert_eq!(iret[..11], expected);
        assert!(
            iret[11..].iter().all(|&b| b == 0xcc),
            "iret never returns: no pops, no ret"
        );
    }

    #[test]
    fn every_slot_loads_its_own_number() {
        let page = hypercall_page();
        for n in 0..STUB_COUNT {
            let at = if n == 23 { 5 } else { 4 };
            let imm = u32::from_le_bytes(slot(&page, n)[at..at + 4].try_into().unwrap());
            assert_eq!(imm as usize, n, "slot {n}");
        }
    }

    #[test]
    fn last_slot_is_filled_too() {
        let page = hypercall_page();
        assert_eq!(
            slot(&page, 127)[..8],
            [0x51, 0x41, 0x53, 0xb8, 127, 0, 0, 0]
        );
        assert_eq!(page[HYPERCALL_PAGE_SIZE - 1], 0xcc);
    }

    #[test]
    fn filling_overwrites_old_contents() {
        let mut page = [0x90; HYPERCALL_PAGE_SIZE];
        fill_hypercall_page(&mut page);
        assert_eq!(page, hypercall_page());
        assert_eq!(page[14], 0xcc);
    }

    #[test]
    fn stub_offsets() {
        assert_eq!(stub_offset(Hypercall::SetTrapTable), 0);
        assert_eq!(stub_offset(Hypercall::Iret), 23 * 32);
        assert_eq!(stub_offset(Hypercall::SchedOp), 29 * 32);
    }
}

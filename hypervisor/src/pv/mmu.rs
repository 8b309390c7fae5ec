//! TEMPORARY while pvmm lands.
use abi::errno::Errno;
use hypervisor::hypercall::GuestVa;
use mm::addr::Mfn;
use crate::arch::trap::TrapFrame;
use crate::domain::{Domain, Vcpu};
use crate::pv::hypercall::HcResult;
pub fn pin_initial_tables(_d: &Domain, _l4: Mfn) -> Result<(), Errno> { Ok(()) }
pub fn relinquish(_d: &Domain, _roots: &[Mfn], _pages: &[Mfn]) {}
pub fn mmu_update(_v: &Vcpu, _f: &mut TrapFrame, _r: GuestVa, _c: u64, _d: GuestVa, _dom: u16) -> HcResult { Err(Errno::Enosys) }
pub fn mmuext_op(_v: &Vcpu, _f: &mut TrapFrame, _r: GuestVa, _c: u64, _d: GuestVa, _dom: u16) -> HcResult { Err(Errno::Enosys) }
pub fn update_va_mapping(_v: &Vcpu, _va: u64, _pte: u64, _fl: u64) -> HcResult { Err(Errno::Enosys) }
pub fn new_baseptr(_v: &Vcpu, _m: Mfn, _u: bool) -> Result<(), Errno> { Err(Errno::Enosys) }

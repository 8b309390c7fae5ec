//! Attacks that end the domain when the hypervisor contains them, or that never end and
//! must be contained while they run (the containment attacks of [`crate::containment`],
//! which domain 0's containment cycles destroy): one per boot, named on the guest's
//! command line (`attack=<name>`), so that each runs in a domain of its own and the test
//! can check both that the machine survived and how that domain ended.
//!
//! Each attack prints "hostile: attack <name>: <what it does>" before it strikes. One the
//! hypervisor refuses outright prints "hostile: attack <name>: refused (...)" and powers
//! off; one it contains by killing the domain never returns. An attack that gets through
//! prints "... SUCCEEDED (BUG)" when it still can, and crashes the domain. The QEMU case
//! names each module's expected ending (`expect=killed` or `expect=poweroff`), so a
//! hypervisor that answers differently fails the run. One more runs here because it needs
//! a domain (and a reservation) of its own, not because it ends the domain: a legitimate
//! request of huge size ([`big_tree`]), which must succeed and then powers off.
//!
//! Called by `main` instead of the survivable suite; this module must never strike an
//! attack other than the one named.

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::shutdown;
use guest_rt::println;

use crate::targets::Targets;
use crate::{big_tree, close_race, compat, console_waiters, containment, exit_path, last_attack, long_calls, m2p, nested_fault, segments, vcpu_info, window};

/// One single attack: its name on the command line and what runs it.
struct Attack {
    name: &'static str,
    run: fn(&Targets) -> !,
}

/// Every single attack, by name.
const ATTACKS: &[Attack] = &[
    Attack { name: "fault_in_fault_handler", run: fault_in_fault_handler },
    Attack { name: "long_mmu_update", run: long_calls::mmu_update },
    Attack { name: "long_mmuext", run: long_calls::mmuext },
    Attack { name: "long_console", run: long_calls::console },
    Attack { name: "console_waiters", run: console_waiters::attack },
    Attack { name: "long_decrease", run: long_calls::decrease },
    Attack { name: "long_gdt", run: long_calls::gdt },
    Attack { name: "long_exchange", run: long_calls::exchange },
    Attack { name: "m2p_leak", run: m2p::leak },
    Attack { name: "clear_l4_window", run: window::clear_live_window },
    Attack { name: "new_baseptr_no_window", run: window::new_baseptr_without_window },
    Attack { name: "new_user_baseptr_no_window", run: window::new_user_baseptr_without_window },
    Attack { name: "pin_big_tree", run: big_tree::pin_big_tree },
    Attack { name: "write_big_tree", run: big_tree::write_big_tree },
    Attack { name: "init_big_tree", run: big_tree::init_big_tree },
    Attack { name: "die_mid_pin", run: big_tree::die_mid_pin },
    Attack { name: "die_mid_write", run: big_tree::die_mid_write },
    Attack { name: "die_mid_init", run: big_tree::die_mid_init },
    Attack { name: "shared_info_table", run: crate::shared_info::table_attack },
    Attack { name: "iret_cs_null", run: exit_path::iret_cs_null },
    Attack { name: "iret_cs_null_unhandled", run: exit_path::iret_cs_null_unhandled },
    Attack { name: "iret_cs_ldt", run: exit_path::iret_cs_ldt },
    Attack { name: "iret_cs_not_present", run: exit_path::iret_cs_not_present },
    Attack { name: "iret_rip_noncanonical", run: exit_path::iret_rip_noncanonical },
    Attack { name: "iret_ss_null", run: exit_path::iret_ss_null },
    Attack { name: "stale_ss", run: exit_path::stale_ss },
    Attack { name: "syscall32", run: compat::syscall32 },
    Attack { name: "syscall32_no_callback", run: compat::syscall32_no_callback },
    Attack { name: "sysenter", run: compat::sysenter },
    Attack { name: "sysenter_no_callback", run: compat::sysenter_no_callback },
    Attack { name: "spin_masked", run: containment::spin_masked },
    Attack { name: "flood_dom0", run: containment::flood_dom0 },
    Attack { name: "exhaust_ports_timers", run: containment::exhaust_ports_timers },
    Attack { name: "console_blocked", run: containment::console_blocked },
    Attack { name: "ldt_call_gate", run: segments::ldt_call_gate },
    Attack { name: "stale_ldt_ss", run: segments::stale_ldt_ss },
    Attack { name: "stale_ldt_ds", run: segments::stale_ldt_ds },
    Attack { name: "close_race", run: close_race::attacker },
    Attack { name: "close_race_peer", run: close_race::peer },
    Attack { name: "nested_fault", run: nested_fault::run },
    Attack { name: "vcpu_info_table", run: vcpu_info::table_attack },
    Attack { name: "vcpu_info_alias", run: vcpu_info::alias_attack },
];

/// The `attack=` value on the command line, if any.
pub fn requested(cmdline: &[u8]) -> Option<&str> {
    let text = core::str::from_utf8(cmdline).ok()?;
    text.split_ascii_whitespace().find_map(|word| word.strip_prefix("attack="))
}

/// Runs the attack named `name`; an unknown name crashes the domain.
pub fn run(name: &str, targets: &Targets) -> ! {
    match ATTACKS.iter().find(|a| a.name == name) {
        Some(attack) => (attack.run)(targets),
        None => {
            println!("hostile: unknown attack {name:?}");
            shutdown(ShutdownReason::Crash)
        }
    }
}

fn fault_in_fault_handler(targets: &Targets) -> ! {
    last_attack::fault_in_fault_handler(targets.hole)
}

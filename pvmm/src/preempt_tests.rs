//! Preemption: the same scenario run with a table memory that stops every operation after
//! every `k` entries (for many `k`), each operation called again while it says `Restart`,
//! must end every step in exactly the state the unpreempted run reaches: the same answer
//! (or, for a validation whose undo stopped, the same Xen error number), the same counts
//! and types, the same table contents. Then what other operations see of a table left
//! half-validated or half torn down.

use mm::addr::Mfn;
use mm::frame::{PageType, TypeFlags, TypeInfo};

use crate::entry::PteFlags;
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::pin::BasePtr;
use crate::relinquish::RelinquishProgress;
use crate::testkit::{pte, Preempt, World, DOM};
use crate::update::AccessedDirty;

/// Calls `op` until it returns anything but `Restart`; how many calls it took.
fn complete<T>(mut op: impl FnMut() -> Result<T, MmError>) -> (Result<T, MmError>, u32) {
    for calls in 1..1_000_000 {
        match op() {
            Err(MmError::Restart) => continue,
            other => return (other, calls),
        }
    }
    panic!("an operation never completed");
}

/// The frames of the scenario.
struct Frames {
    l4: Mfn,
    window_l3: Mfn,
    l2a: Mfn,
    l2b: Mfn,
    l1s: Vec<Mfn>,
    data: Vec<Mfn>,
    plain_l3: Mfn,
    new_l2: Mfn,
    bad_l1: Mfn,
}

/// A tree of 20 L1s under two L2s under the window-L3, a plain L3 at L4 slot 3 sharing
/// the first L2, the L1s mapping 16 data frames (half of them writable) and each other
/// read-only; and, unlinked, an L2 over ten L1s (eight of them the second L2's, one whose
/// entry 300 maps a foreign frame).
fn write_scenario(w: &mut World) -> Frames {
    let o = w.owned.clone();
    let f = Frames {
        l4: o[0],
        window_l3: o[1],
        l2a: o[2],
        l2b: o[3],
        l1s: o[4..24].to_vec(),
        data: o[24..40].to_vec(),
        plain_l3: o[40],
        new_l2: o[41],
        bad_l1: o[42],
    };
    let ram = &mut w.ram;
    ram.write(f.l4, 511, pte(f.window_l3, PteFlags::WRITABLE));
    ram.write(f.l4, 3, pte(f.plain_l3, PteFlags::WRITABLE));
    ram.write(f.window_l3, 0, pte(f.l2a, PteFlags::WRITABLE));
    ram.write(f.window_l3, 1, pte(f.l2b, PteFlags::WRITABLE));
    ram.write(f.plain_l3, 5, pte(f.l2a, PteFlags::empty()));
    for (j, &l1) in f.l1s.iter().enumerate() {
        let (l2, slot) = if j < 10 { (f.l2a, j) } else { (f.l2b, j - 10) };
        ram.write(l2, slot * 3, pte(l1, PteFlags::WRITABLE));
        for k in 0..16 {
            let flags = if (j + k) % 2 == 0 { PteFlags::WRITABLE } else { PteFlags::empty() };
            ram.write(l1, k * 7, pte(f.data[(j + k) % 16], flags));
        }
        ram.write(l1, 300, pte(f.l1s[(j + 1) % 20], PteFlags::empty()));
    }
    for (slot, &l1) in f.l1s[10..18].iter().chain([&f.bad_l1]).enumerate() {
        ram.write(f.new_l2, slot, pte(l1, PteFlags::WRITABLE));
    }
    ram.write(f.bad_l1, 0, pte(f.data[3], PteFlags::empty()));
    ram.write(f.bad_l1, 300, pte(w.foreign[0], PteFlags::empty()));
    f
}

/// What one step ended with: its answer (Xen error number for failures), the counts
/// and type words, and the table contents.
type Outcome = (
    Result<(), abi::errno::Errno>,
    Vec<(u32, TypeInfo)>,
    Vec<(Mfn, Vec<u64>)>,
);

/// Runs the scenario with `preempt`; the outcome of every step, and the most calls one
/// step took.
fn run_scenario(preempt: Preempt) -> (Vec<Outcome>, u32) {
    let mut w = World::new();
    let f = write_scenario(&mut w);
    w.ram.preempt = preempt;
    let mmu = w.mmu();
    let mut outcomes = Vec::new();
    let mut most_calls = 0;
    let mut record = |w: &World, result: Result<(), MmError>, calls: u32, bases: &[Mfn]| {
        w.audit(bases);
        most_calls = most_calls.max(calls);
        outcomes.push((
            result.map_err(MmError::errno),
            w.snapshot(),
            w.ram.contents(),
        ));
    };
    let set = |w: &mut World, table: Mfn, index: usize, value: u64| {
        complete(|| {
            mmu.mod_entry(
                table,
                index,
                value,
                AccessedDirty::Overwrite,
                DOM,
                &mut w.ram,
            )
        })
    };

    // Validate the whole tree through the base pointer.
    let (result, calls) = complete(|| mmu.new_baseptr(f.l4, DOM, &mut w.ram));
    let base = result.expect("the tree validates");
    let bases = [f.l4];
    record(&w, Ok(()), calls, &bases);
    // A pin on top of a validated table, an entry dropping one of two references, an
    // unpin that devalidates a subtree of ten L1s, an L4 entry whose L3 goes.
    let (result, calls) = complete(|| mmu.pin_table(f.l2b, Level::L2, DOM, &mut w.ram));
    record(&w, result, calls, &bases);
    let (result, calls) = set(&mut w, f.window_l3, 1, 0);
    record(&w, result, calls, &bases);
    let (result, calls) = complete(|| mmu.unpin_table(f.l2b, DOM, &mut w.ram));
    record(&w, result, calls, &bases);
    let (result, calls) = set(&mut w, f.l4, 3, 0);
    record(&w, result, calls, &bases);
    // A validation that fails at its tenth L1, linked and pinned: undone both times.
    let bad = pte(f.new_l2, PteFlags::WRITABLE);
    let (result, calls) = set(&mut w, f.window_l3, 2, bad);
    record(&w, result, calls, &bases);
    let (result, calls) = complete(|| mmu.pin_table(f.new_l2, Level::L2, DOM, &mut w.ram));
    record(&w, result, calls, &bases);
    // Fixed (a plain write to the untyped L1), it goes through.
    let (result, calls) = set(&mut w, f.bad_l1, 300, 0);
    record(&w, result, calls, &bases);
    let (result, calls) = set(&mut w, f.window_l3, 2, bad);
    record(&w, result, calls, &bases);
    // The base pointer released: everything is devalidated.
    let l4 = base.mfn();
    let mut released: Option<BasePtr> = Some(base);
    let (result, calls) = complete(|| match released.take() {
        Some(base) => mmu.put_baseptr(base, &mut w.ram),
        None => mmu.finish_teardown(l4, &mut w.ram),
    });
    record(&w, result, calls, &[]);
    // A last tree, pinned, then relinquished with a base pointer.
    let (result, calls) = complete(|| mmu.pin_table(f.l4, Level::L4, DOM, &mut w.ram));
    record(&w, result, calls, &[]);
    let (held, _) = complete(|| mmu.new_baseptr(f.l4, DOM, &mut w.ram));
    let mut bases = [held.expect("the pinned L4 takes a base pointer")].into_iter();
    let mut progress = RelinquishProgress::default();
    let owned = w.owned.clone();
    let (result, calls) =
        complete(|| mmu.relinquish(DOM, &owned, &mut bases, &mut progress, &mut w.ram));
    record(&w, result, calls, &[]);
    for &frame in &owned {
        assert_eq!(
            w.counts(frame),
            (0, TypeInfo::NONE),
            "{frame} after relinquish"
        );
    }
    (outcomes, most_calls)
}

#[test]
fn every_preemption_point_ends_in_the_unpreempted_state() {
    let (reference, calls) = run_scenario(Preempt::Never);
    assert_eq!(calls, 1);
    let errors: Vec<_> = reference.iter().map(|(result, _, _)| *result).collect();
    use abi::errno::Errno;
    let ok = Ok(());
    let eperm = Err(Errno::Eperm);
    assert_eq!(
        errors,
        [ok, ok, ok, ok, ok, eperm, eperm, ok, ok, ok, ok, ok]
    );
    for k in (1..=64).chain([97, 200, 1000]) {
        let (outcomes, most_calls) = run_scenario(Preempt::Every(k));
        assert!(
            k > 300 || most_calls > 1,
            "k = {k}: no operation ever stopped"
        );
        for (step, (got, want)) in outcomes.iter().zip(&reference).enumerate() {
            assert_eq!(got.0, want.0, "k = {k}, step {step}: answer");
            assert!(got.1 == want.1, "k = {k}, step {step}: counts differ");
            assert!(got.2 == want.2, "k = {k}, step {step}: memory differs");
        }
    }
}

#[test]
fn every_stop_leaves_consistent_partial_state_others_respect() {
    let mut w = World::new();
    let f = write_scenario(&mut w);
    let mmu = w.mmu();
    // Stop the pin of the L4 after a few dozen entries, inside the first L1 (L4 slot 3
    // comes first: the plain L3, its L2 and that L2's first L1): the tables on the path
    // to where it stopped are partial, the window-L3 is not reached yet.
    w.ram.preempt = Preempt::Every(40);
    assert_eq!(
        mmu.pin_table(f.l4, Level::L4, DOM, &mut w.ram),
        Err(MmError::Restart)
    );
    w.ram.preempt = Preempt::Never;
    let partial = |w: &World, mfn: Mfn| w.counts(mfn).1.flags().contains(TypeFlags::PARTIAL);
    for table in [f.l4, f.plain_l3, f.l2a, f.l1s[0]] {
        assert!(partial(&w, table), "{table}");
        assert_eq!(
            w.counts(table).0,
            1,
            "{table}: the partial state's general reference"
        );
    }
    assert_eq!(w.counts(f.window_l3), (0, TypeInfo::NONE));
    // A table being validated takes no update, another type, or a writable mapping.
    let before = w.snapshot();
    assert_eq!(
        mmu.mod_entry(f.l2a, 100, 0, AccessedDirty::Overwrite, DOM, &mut w.ram),
        Err(MmError::Busy(f.l2a))
    );
    assert!(matches!(
        mmu.pin_table(f.l2a, Level::L1, DOM, &mut w.ram),
        Err(MmError::TypeConflict { .. })
    ));
    assert!(matches!(
        mmu.get_page_and_type(f.l2a, PageType::None, DOM, &mut w.ram),
        Err(MmError::TypeConflict { .. })
    ));
    assert!(matches!(
        mmu.new_baseptr(f.l2a, DOM, &mut w.ram),
        Err(MmError::TypeConflict { .. })
    ));
    assert!(w.snapshot() == before, "refused operations changed counts");
    // Another operation wanting the same type continues it: a pin of the L2.
    mmu.pin_table(f.l2a, Level::L2, DOM, &mut w.ram).unwrap();
    assert!(!partial(&w, f.l2a));
    // The first pin, called again, finishes the rest.
    mmu.pin_table(f.l4, Level::L4, DOM, &mut w.ram).unwrap();
    w.audit(&[]);

    // Tear it down in small steps: an unpin that stops leaves the L4 half torn down.
    mmu.unpin_table(f.l2a, DOM, &mut w.ram).unwrap();
    w.ram.preempt = Preempt::Every(25);
    assert_eq!(
        mmu.unpin_table(f.l4, DOM, &mut w.ram),
        Err(MmError::Restart)
    );
    w.ram.preempt = Preempt::Never;
    assert!(partial(&w, f.l4));
    // Plain writes to it finish the teardown first; so does any new type.
    mmu.mod_entry(f.l4, 100, 0, AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    assert_eq!(w.counts(f.l4), (0, TypeInfo::NONE));
    w.audit(&[]);

    // Relinquish finishes or undoes whatever is left half-way.
    w.ram.preempt = Preempt::Every(33);
    assert_eq!(
        mmu.pin_table(f.l4, Level::L4, DOM, &mut w.ram),
        Err(MmError::Restart)
    );
    let owned = w.owned.clone();
    let mut progress = RelinquishProgress::default();
    let (result, calls) = complete(|| {
        mmu.relinquish(
            DOM,
            &owned,
            &mut core::iter::empty(),
            &mut progress,
            &mut w.ram,
        )
    });
    assert_eq!(result, Ok(()));
    assert!(calls > 1);
    for &frame in &owned {
        assert_eq!(w.counts(frame), (0, TypeInfo::NONE), "{frame}");
    }
}

#[test]
fn a_validation_undo_that_stops_reports_its_error_when_finished() {
    let mut w = World::new();
    let f = write_scenario(&mut w);
    let mmu = w.mmu();
    w.ram.preempt = Preempt::Every(3);
    let mut answers = Vec::new();
    loop {
        match mmu.pin_table(f.new_l2, Level::L2, DOM, &mut w.ram) {
            Err(MmError::Restart) => answers.push(MmError::Restart),
            other => {
                answers.push(other.unwrap_err());
                break;
            }
        }
    }
    // It stopped while validating and while undoing, then told the refusal.
    assert!(answers.len() > 10);
    assert_eq!(
        answers.last().map(|e| e.errno()),
        Some(abi::errno::Errno::Eperm)
    );
    assert!(matches!(answers.last(), Some(MmError::FailedEarlier(_))));
    for frame in [f.new_l2, f.bad_l1].iter().chain(&f.l1s[10..18]) {
        assert_eq!(w.counts(*frame), (0, TypeInfo::NONE), "{frame}");
    }
    w.audit(&[]);
}

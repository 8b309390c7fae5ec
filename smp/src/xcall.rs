//! Cross-CPU function calls: run a function on one CPU or on all of them and wait until it
//! has run, over one mailbox per CPU and an inter-processor interrupt.
//!
//! A requester claims the target's mailbox (one call in flight per target), writes the call,
//! kicks the target through [`Platform::kick`] and spins until the target marks it done. The
//! target runs calls from its interrupt handler via [`CallBoard::service`]. While a
//! requester spins (for a claim or for completion) it services its *own* mailbox, so two
//! CPUs calling each other with interrupts off cannot deadlock. Any other wait that a CPU
//! holding up a call may be stuck in must do the same ([`CallBoard::spin_until`]): a CPU
//! that spins with interrupts off without servicing its mailbox (on a lock whose holder
//! waits for a call, say) never answers. Lock-free apart from the per-mailbox claim flag;
//! no allocation.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The most CPUs a call board serves.
pub const MAX_CPUS: usize = 256;

/// A set of CPUs by index, one bit each: CPU `i` is bit `i % 64` of word `i / 64`.
pub type CpuBits = [u64; MAX_CPUS / 64];

/// Every CPU.
pub const ALL_CPUS: CpuBits = [u64::MAX; MAX_CPUS / 64];

/// A function run on another CPU; gets the caller's argument.
pub type CallFn = fn(usize);

/// What the call board needs from the machine.
pub trait Platform {
    /// Index of the CPU running this code.
    fn this_cpu(&self) -> usize;
    /// Interrupts `cpu` so that it services its mailbox.
    fn kick(&self, cpu: usize);
    /// Whether `cpu` is online and able to take calls.
    fn is_online(&self, cpu: usize) -> bool;
}

/// One CPU's incoming-call slot.
pub struct Mailbox {
    claimed: AtomicBool,
    func: AtomicPtr<()>,
    arg: AtomicUsize,
    posted: AtomicU64,
    done: AtomicU64,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Mailbox {
    pub const fn new() -> Self {
        Mailbox {
            claimed: AtomicBool::new(false),
            func: AtomicPtr::new(core::ptr::null_mut()),
            arg: AtomicUsize::new(0),
            posted: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn try_claim(&self) -> bool {
        self.claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn post(&self, func: CallFn, arg: usize) -> u64 {
        self.func.store(func as *mut (), Ordering::Relaxed);
        self.arg.store(arg, Ordering::Relaxed);
        self.posted.fetch_add(1, Ordering::Release) + 1
    }

    fn is_done(&self, ticket: u64) -> bool {
        self.done.load(Ordering::Acquire) >= ticket
    }

    fn release(&self) {
        self.claimed.store(false, Ordering::Release);
    }

    /// Runs the pending call, if any; true when one ran.
    fn service(&self) -> bool {
        let posted = self.posted.load(Ordering::Acquire);
        if posted == self.done.load(Ordering::Relaxed) {
            return false;
        }
        let func = self.func.load(Ordering::Relaxed);
        // SAFETY: `post` stored a valid `CallFn` in `func` before the Release increment of
        // `posted` acquired above, and `func` is not rewritten until this call is done.
        let func = unsafe { core::mem::transmute::<*mut (), CallFn>(func) };
        func(self.arg.load(Ordering::Relaxed));
        self.done.store(posted, Ordering::Release);
        true
    }
}

/// Why a call could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No such CPU, or it is not online.
    Offline(usize),
}

/// The mailboxes of every CPU.
pub struct CallBoard<'a> {
    mailboxes: &'a [Mailbox],
}

impl<'a> CallBoard<'a> {
    pub const fn new(mailboxes: &'a [Mailbox]) -> Self {
        CallBoard { mailboxes }
    }

    /// Whether a call waits in this CPU's mailbox (posted, not run yet): a CPU busy with
    /// long work looks here to know that it should let its interrupts in.
    pub fn is_waiting(&self, platform: &impl Platform) -> bool {
        self.mailboxes.get(platform.this_cpu()).is_some_and(|mailbox| {
            mailbox.posted.load(Ordering::Acquire) != mailbox.done.load(Ordering::Relaxed)
        })
    }

    /// Runs pending calls for this CPU (from its IPI handler, or while it waits).
    pub fn service(&self, platform: &impl Platform) -> bool {
        self.mailboxes
            .get(platform.this_cpu())
            .is_some_and(|mailbox| mailbox.service())
    }

    /// Runs `func(arg)` on `cpu` and waits until it has run there. Calls on the current CPU
    /// run directly.
    pub fn call(&self, platform: &impl Platform, cpu: usize, func: CallFn, arg: usize) -> Result<(), CallError> {
        if cpu == platform.this_cpu() {
            func(arg);
            return Ok(());
        }
        let mailbox = self.online_mailbox(platform, cpu)?;
        while !mailbox.try_claim() {
            self.service(platform);
            core::hint::spin_loop();
        }
        let ticket = mailbox.post(func, arg);
        platform.kick(cpu);
        while !mailbox.is_done(ticket) {
            self.service(platform);
            core::hint::spin_loop();
        }
        mailbox.release();
        Ok(())
    }

    /// Runs `func(arg)` on every online CPU (this one included) and waits for all of them.
    /// Other CPUs run it in parallel. Returns how many CPUs ran it.
    pub fn call_all(&self, platform: &impl Platform, func: CallFn, arg: usize) -> usize {
        self.call_many(platform, &ALL_CPUS, func, arg)
    }

    /// Runs `func(arg)` on every online CPU in `cpus` (this one too, if it is in the set)
    /// and waits for all of them. Other CPUs run it in parallel. Returns how many CPUs ran it.
    pub fn call_many(&self, platform: &impl Platform, cpus: &CpuBits, func: CallFn, arg: usize) -> usize {
        let me = platform.this_cpu();
        let wanted = |cpu: usize| cpus[cpu / 64] & (1 << (cpu % 64)) != 0;
        let mut posted = [0u64; MAX_CPUS / 64];
        for cpu in 0..self.mailboxes.len().min(MAX_CPUS) {
            if cpu == me || !wanted(cpu) || !platform.is_online(cpu) {
                continue;
            }
            let mailbox = &self.mailboxes[cpu];
            while !mailbox.try_claim() {
                self.service(platform);
                core::hint::spin_loop();
            }
            mailbox.post(func, arg);
            platform.kick(cpu);
            posted[cpu / 64] |= 1 << (cpu % 64);
        }
        let mut count = 0;
        if me < MAX_CPUS && wanted(me) {
            func(arg);
            count += 1;
        }
        for cpu in (0..MAX_CPUS).filter(|&c| posted[c / 64] & (1 << (c % 64)) != 0) {
            let mailbox = &self.mailboxes[cpu];
            // We hold the claim, so `posted` is still our ticket.
            let ticket = mailbox.posted.load(Ordering::Relaxed);
            while !mailbox.is_done(ticket) {
                self.service(platform);
                core::hint::spin_loop();
            }
            mailbox.release();
            count += 1;
        }
        count
    }

    /// Spins until `attempt` succeeds, servicing this CPU's mailbox in between: the way to
    /// wait for anything (a lock, say) whose holder may itself be waiting for a call to this
    /// CPU.
    pub fn spin_until<R>(&self, platform: &impl Platform, mut attempt: impl FnMut() -> Option<R>) -> R {
        loop {
            if let Some(result) = attempt() {
                return result;
            }
            self.service(platform);
            core::hint::spin_loop();
        }
    }

    fn online_mailbox(&self, platform: &impl Platform, cpu: usize) -> Result<&Mailbox, CallError> {
        match self.mailboxes.get(cpu) {
            Some(mailbox) if platform.is_online(cpu) => Ok(mailbox),
            _ => Err(CallError::Offline(cpu)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as Counter;
    use std::sync::Arc;
    use std::thread;

    /// A CPU simulated by a host thread; kicks are not needed because targets poll.
    struct Cpu {
        index: usize,
        online: usize,
    }

    impl Platform for Cpu {
        fn this_cpu(&self) -> usize {
            self.index
        }
        fn kick(&self, _cpu: usize) {}
        fn is_online(&self, cpu: usize) -> bool {
            cpu < self.online
        }
    }

    fn leak_board(n: usize) -> &'static CallBoard<'static> {
        let boxes: &'static [Mailbox] = Vec::leak((0..n).map(|_| Mailbox::new()).collect());
        Box::leak(Box::new(CallBoard::new(boxes)))
    }

    fn spawn_pollers(board: &'static CallBoard<'static>, cpus: std::ops::Range<usize>, online: usize, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
        cpus.map(|index| {
            let stop = stop.clone();
            thread::spawn(move || {
                let me = Cpu { index, online };
                while !stop.load(Ordering::SeqCst) {
                    board.service(&me);
                    std::hint::spin_loop();
                }
            })
        })
        .collect()
    }

    #[test]
    fn call_runs_on_target_and_waits() {
        static RAN_ON: Counter = Counter::new(usize::MAX);
        let board = leak_board(4);
        let stop = Arc::new(AtomicBool::new(false));
        let pollers = spawn_pollers(board, 1..4, 4, stop.clone());
        let me = Cpu { index: 0, online: 4 };
        for target in 1..4 {
            board.call(&me, target, |arg| RAN_ON.store(arg, Ordering::SeqCst), target).unwrap();
            // The call has completed by the time `call` returns.
            assert_eq!(RAN_ON.load(Ordering::SeqCst), target);
        }
        stop.store(true, Ordering::SeqCst);
        pollers.into_iter().for_each(|p| p.join().unwrap());
    }

    #[test]
    fn a_posted_call_is_seen_waiting_until_it_runs() {
        let board = leak_board(2);
        let target = Cpu { index: 1, online: 2 };
        assert!(!board.is_waiting(&target));
        let caller = thread::spawn(move || board.call(&Cpu { index: 0, online: 2 }, 1, |_| {}, 0).unwrap());
        while !board.is_waiting(&target) {
            std::hint::spin_loop();
        }
        assert!(!board.is_waiting(&Cpu { index: 0, online: 2 }), "only the target's mailbox holds it");
        assert!(board.service(&target));
        caller.join().unwrap();
        assert!(!board.is_waiting(&target));
    }

    #[test]
    fn call_to_offline_or_missing_cpu_is_refused() {
        let board = leak_board(2);
        let me = Cpu { index: 0, online: 1 };
        assert_eq!(board.call(&me, 1, |_| {}, 0), Err(CallError::Offline(1)));
        assert_eq!(board.call(&me, 9, |_| {}, 0), Err(CallError::Offline(9)));
    }

    #[test]
    fn call_all_reaches_every_online_cpu_once() {
        let board = leak_board(8);
        let stop = Arc::new(AtomicBool::new(false));
        // CPUs 0-5 online; 6 and 7 exist but are offline and must not be called.
        let pollers = spawn_pollers(board, 1..6, 6, stop.clone());
        let me = Cpu { index: 0, online: 6 };
        for _ in 0..50 {
            let n = board.call_all(&me, |_| {}, 0);
            assert_eq!(n, 6);
        }
        static COUNT: Counter = Counter::new(0);
        let n = board.call_all(&me, |_| { COUNT.fetch_add(1, Ordering::SeqCst); }, 0);
        assert_eq!(n, 6);
        assert_eq!(COUNT.load(Ordering::SeqCst), 6);
        stop.store(true, Ordering::SeqCst);
        pollers.into_iter().for_each(|p| p.join().unwrap());
    }

    #[test]
    fn call_many_reaches_exactly_the_cpus_named() {
        static RAN: [Counter; 6] = [const { Counter::new(0) }; 6];
        let board = leak_board(6);
        let stop = Arc::new(AtomicBool::new(false));
        // CPUs 0-4 online, 5 offline; the set names 0, 2, 3 and 5.
        let pollers = spawn_pollers(board, 1..5, 5, stop.clone());
        let me = Cpu { index: 0, online: 5 };
        let mut set: CpuBits = [0; MAX_CPUS / 64];
        set[0] = 0b10_1101;
        let n = board.call_many(&me, &set, |_| {}, 0);
        assert_eq!(n, 3);
        // Which CPUs ran it: each records its own index.
        for cpu in 0..5 {
            let mut one: CpuBits = [0; MAX_CPUS / 64];
            one[0] = 1 << cpu;
            board.call_many(&me, &one, |arg| { RAN[arg].fetch_add(1, Ordering::SeqCst); }, cpu);
        }
        assert!(RAN.iter().take(5).all(|c| c.load(Ordering::SeqCst) == 1));
        // A set without this CPU does not run it here.
        let mut others: CpuBits = [0; MAX_CPUS / 64];
        others[0] = 0b10;
        assert_eq!(board.call_many(&me, &others, |_| {}, 0), 1);
        stop.store(true, Ordering::SeqCst);
        pollers.into_iter().for_each(|p| p.join().unwrap());
    }

    /// Issue 15, hole 6: CPU 0 holds a lock and waits for a call to CPU 1, which wants the
    /// same lock. Waiting with `spin_until` answers the call; a plain spin would not.
    #[test]
    fn a_lock_wait_that_services_calls_lets_the_holder_finish() {
        static LOCK: AtomicBool = AtomicBool::new(false);
        static FLUSHED: Counter = Counter::new(0);
        let board = leak_board(2);
        let rounds = 2000;
        let threads: Vec<_> = (0..2)
            .map(|index| {
                thread::spawn(move || {
                    let me = Cpu { index, online: 2 };
                    for _ in 0..rounds {
                        board.spin_until(&me, || LOCK.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok());
                        // With the lock held, a call the other CPU must answer.
                        board.call(&me, 1 - index, |_| { FLUSHED.fetch_add(1, Ordering::SeqCst); }, 0).unwrap();
                        LOCK.store(false, Ordering::Release);
                    }
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while FLUSHED.load(Ordering::SeqCst) < 2 * rounds && std::time::Instant::now() < deadline {
                        board.service(&me);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(FLUSHED.load(Ordering::SeqCst), 2 * rounds);
    }

    #[test]
    fn two_cpus_calling_each_other_do_not_deadlock() {
        static SUM: Counter = Counter::new(0);
        let board = leak_board(2);
        let threads: Vec<_> = (0..2)
            .map(|index| {
                thread::spawn(move || {
                    let me = Cpu { index, online: 2 };
                    for _ in 0..2000 {
                        board.call(&me, 1 - index, |arg| { SUM.fetch_add(arg, Ordering::SeqCst); }, 1).unwrap();
                    }
                    // Keep serving the other side until it has finished too.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    while SUM.load(Ordering::SeqCst) < 4000 && std::time::Instant::now() < deadline {
                        board.service(&me);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(SUM.load(Ordering::SeqCst), 4000);
    }
}

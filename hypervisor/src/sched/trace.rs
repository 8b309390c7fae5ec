//! Diagnostic trace of each CPU's scheduling (issue 18 item 2): a timeline of 100 ms buckets
//! (wake-ups, long waits, runnable load, warped vCPUs' lag behind SVT, console waits) and,
//! for the first long waits, the last switch-ins before the vCPU ran. Written by the CPU
//! concerned under an uncontended lock, printed once at the end (`schedtl`, `schedring`
//! lines, which the stress tool ignores).

use alloc::vec;
use alloc::vec::Vec;

use log::info;

/// Timeline bucket length.
const BUCKET_NS: u64 = 100_000_000;
/// Buckets kept (25.6 s).
const BUCKETS: usize = 256;
/// Switch-ins kept for a dump.
const RING: usize = 128;
/// Dumps kept per CPU.
const DUMPS: usize = 4;
/// A wait this long is dumped.
const DUMP_WAIT_NS: u64 = 150_000_000;

/// Fields of a bucket.
#[derive(Clone, Copy)]
#[repr(usize)]
pub enum Field {
    Wakes,
    Long5ms,
    MaxWaitUs,
    LoadSum,
    MaxLoad,
    Warped,
    WarpedLong1ms,
    MaxWarpedLag,
    ConsoleWaits,
    Svt,
    MaxUnwarpedLag,
    Switches,
    MinWarpedLag,
}
const FIELDS: usize = 13;

/// One switch-in.
#[derive(Clone, Copy, Default)]
pub struct Switch {
    pub t_us: u64,
    /// Domain id << 8 | vCPU id; bit 31: warped.
    pub who: u64,
    /// A - SVT after the decision, vns.
    pub lag_vns: i64,
    pub load: u64,
    pub slice_us: u64,
    /// From its wake-up (0: it was preempted, not woken).
    pub wait_us: u64,
}

pub struct Trace {
    timeline: Vec<[u64; FIELDS]>,
    ring: Vec<Switch>,
    at: usize,
    dumps: Vec<(Switch, Vec<Switch>)>,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace::new()
    }
}

impl Trace {
    pub fn new() -> Trace {
        let mut timeline = vec![[0; FIELDS]; BUCKETS];
        for b in &mut timeline {
            b[Field::MinWarpedLag as usize] = u64::MAX;
        }
        Trace { timeline, ring: vec![Switch::default(); RING], at: 0, dumps: Vec::with_capacity(DUMPS) }
    }

    fn bucket(&mut self, now_ns: u64) -> &mut [u64; FIELDS] {
        let i = ((now_ns / BUCKET_NS) as usize).min(BUCKETS - 1);
        &mut self.timeline[i]
    }

    pub fn add(&mut self, now_ns: u64, field: Field, v: u64) {
        self.bucket(now_ns)[field as usize] += v;
    }

    pub fn max(&mut self, now_ns: u64, field: Field, v: u64) {
        let slot = &mut self.bucket(now_ns)[field as usize];
        *slot = (*slot).max(v);
    }

    pub fn min(&mut self, now_ns: u64, field: Field, v: u64) {
        let slot = &mut self.bucket(now_ns)[field as usize];
        *slot = (*slot).min(v);
    }

    pub fn set(&mut self, now_ns: u64, field: Field, v: u64) {
        self.bucket(now_ns)[field as usize] = v;
    }

    /// Records a switch-in; dumps the ring if it ends a long wait.
    pub fn switch_in(&mut self, s: Switch) {
        self.ring[self.at % RING] = s;
        self.at += 1;
        if s.wait_us * 1000 >= DUMP_WAIT_NS && self.dumps.len() < DUMPS {
            let n = self.at.min(RING);
            let ring = (0..n).map(|k| self.ring[(self.at - n + k) % RING]).collect();
            self.dumps.push((s, ring));
        }
    }

    pub fn print(&self, cpu: usize) {
        for (i, b) in self.timeline.iter().enumerate() {
            if b[Field::Switches as usize] == 0 && b[Field::ConsoleWaits as usize] == 0 {
                continue;
            }
            let wakes = b[Field::Wakes as usize];
            let min_lag = b[Field::MinWarpedLag as usize];
            info!(
                "schedtl cpu{cpu} t={}.{} sw={} wakes={} long5={} maxwait_us={} avgload={} maxload={} warped={} wlong1={} wlag_min={} wlag_max={} ulag_max={} svt={} con={}",
                i / 10,
                i % 10,
                b[Field::Switches as usize],
                wakes,
                b[Field::Long5ms as usize],
                b[Field::MaxWaitUs as usize],
                b[Field::LoadSum as usize] / wakes.max(1),
                b[Field::MaxLoad as usize],
                b[Field::Warped as usize],
                b[Field::WarpedLong1ms as usize],
                if min_lag == u64::MAX { 0 } else { min_lag as i64 },
                b[Field::MaxWarpedLag as usize] as i64,
                b[Field::MaxUnwarpedLag as usize] as i64,
                b[Field::Svt as usize],
                b[Field::ConsoleWaits as usize],
            );
        }
        for (k, (s, ring)) in self.dumps.iter().enumerate() {
            info!(
                "schedring cpu{cpu} dump={k} t_us={} d{}v{} wait_us={} lag={} load={}",
                s.t_us,
                (s.who >> 8) & 0xffff,
                s.who & 0xff,
                s.wait_us,
                s.lag_vns,
                s.load
            );
            for r in ring {
                info!(
                    "schedring cpu{cpu} dump={k} t_us={} d{}v{}{} lag={} load={} slice_us={} wait_us={}",
                    r.t_us,
                    (r.who >> 8) & 0xffff,
                    r.who & 0xff,
                    if r.who & (1 << 31) != 0 { "w" } else { "" },
                    r.lag_vns,
                    r.load,
                    r.slice_us,
                    r.wait_us
                );
            }
        }
    }
}

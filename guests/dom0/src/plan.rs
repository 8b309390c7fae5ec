//! The shape of a stress run: which role each of the `n` stress domains gets, where it
//! runs, how it is scheduled, which id it will get and what its command line says.
//!
//! Role counts ([`RoleCounts`]): given ones are kept (and must fit in `n`); left out,
//! `hogs` is `min(2 * cpus, n / 4)`, `latency` and `pairs` are `min(4, n / 10)` each and
//! `periodic` is `min(4 * cpus, n / 10)`, each cut to the room the others leave, and the
//! rest are `idle`. Creation order (index 0 first): latency, then the pairs (ping before
//! its pong), then periodic, then idle, then the hogs last, so that nothing spins while
//! domain 0 is still creating. Placement: hog h runs on CPU `(h / 2) % cpus` with weight
//! `1 + h % 2`, so each CPU has a weight-1 and a weight-2 hog side by side; every other
//! domain, by index, round-robin on CPU `index % cpus`, so a ping and its pong sit on
//! different CPUs when there are two. Every domain is pinned to its CPU except the latency
//! domains: the hypervisor moves a warped vCPU that wakes behind another to a CPU that runs
//! none, so their wake-ups do not queue behind one another. Weights are 1 except for the
//! hogs and the latency domains, which get BVT warp and weight [`LATENCY_WEIGHT`]
//! ([`LATENCY_WARP`]). Domain ids: domain 0 is the only
//! creator and ids are handed out in sequence from 1, so index i gets id `1 + i` (domain 0
//! checks each). This module only computes: it must never create anything.

use guest_rt::abi::control::SchedParams;
use guest_rt::abi::ids::{DomId, EvtchnPort};
use protocol::worker::{Link, StressArgs, Task};

use crate::options::Options;

/// The id the first stress domain gets.
pub const FIRST_DOMID: u16 = 1;
/// The port a pong allocates for its ping: its first free one. Ports start at 1, and the
/// builder gives ports 1 and 2 of every domain domain 0 creates to its console and store
/// rings.
pub const PONG_PORT: EvtchnPort = EvtchnPort(guest_rt::abi::control::CREATED_FIRST_FREE_PORT);
/// Default role counts (before they are cut to fit `n`).
pub const DEFAULT_HOGS_PER_CPU: u32 = 2;
pub const DEFAULT_LATENCY: u32 = 4;
pub const DEFAULT_PAIRS: u32 = 4;
pub const DEFAULT_PERIODIC_PER_CPU: u32 = 4;
/// The weight of every domain but the hogs.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The latency domains' weight: the share of a CPU they need, as BVT has it (the warp only
/// puts a wake-up first; the weight is what the domain may use before it runs ahead of SVT,
/// and ahead by its whole warp it waits like any other). A latency domain needs 8-10% of a
/// CPU under TCG (70-95 us a wake-up, every 1 ms); SVT advances as fast as the weight-1
/// hog's virtual time, and at N=1000 the idle domains' wake-ups take most of the CPU, so
/// that hog gets 1-3% of it. Measured in the image (issue 18 item 2): at weight 1 the 3 s
/// start-up rush took the whole 200 ms warp (warped p99 13-17 ms); at weight 4 the lag
/// still grew by ~20,000 vns a second after the rush and reached the warp at ~9 s (3.1-5.2
/// ms); at weight 16 it grew by ~5,000 a second, a quarter of the warp by the end of the
/// run (0.7-2.0 ms).
pub const LATENCY_WEIGHT: u32 = 16;

/// Domain 0's own BVT weight, which it sets at start. It works in bursts (each creation
/// is a few ms of hypervisor time) on CPUs where hogs of weights 1 and 2 spin; at weight 16
/// it gets 16/19 of such a CPU while it works, so that the last creations are not slowed
/// much by the domains created before them.
pub const DOM0_PARAMS: SchedParams = weight(16);

/// BVT parameters of the latency domains: warp 200 ms (far ahead of any rival), at most
/// 20 ms run warped (summed over wake-ups less than 200 us apart), and 200 us unwarped to
/// renew that limit. A latency
/// domain wakes every 1 ms and runs well under that (about 80 us a wake-up under TCG, the
/// hypervisor's work on its behalf included), so the time it sleeps renews the limit at
/// every wake-up. One that finished a wake-up late and sleeps less than 200 us before the
/// next still wakes warped (a short sleep only pauses the warp); one that spins loses its
/// warp after 20 ms. The limit is well above what the domain needs because the hypervisor
/// can only charge elapsed time: when the host stops the vCPU's thread while it runs (stalls
/// of 10-35 ms were measured on a shared host), the stall counts as warped run time. With a
/// 1 ms limit such a stall cost the domain its warp, and that wake-up then waited behind the
/// unwarped crowd for 50-400 ms, once or twice a run.
///
/// The warp must also cover how far the domain's virtual time runs ahead of its CPU's SVT
/// while many domains are runnable: after the unpause, all N domains boot and balloon at
/// once (about 5-6 ms of CPU each under TCG), and SVT (the least virtual time of the
/// runnable ones) then advances at 1/(N/cpus) of real time while a latency domain uses 7-10%
/// of its CPU (70 us a wake-up: a switch under TCG flushes the software TLB, and the guest
/// runs cold). Hence its weight, [`LATENCY_WEIGHT`].
pub const LATENCY_WARP: SchedParams = SchedParams {
    weight: LATENCY_WEIGHT,
    _pad: 0,
    warp_ns: 200_000_000,
    warp_limit_ns: 20_000_000,
    unwarp_req_ns: 200_000,
};

/// Why a plan cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The machine reports no CPU.
    NoCpus,
    /// The given role counts need more than `n` domains.
    TooManyRoles { needed: u64, n: u32 },
}

/// How many domains get each role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleCounts {
    pub hogs: u32,
    pub latency: u32,
    /// Ping-pong pairs (two domains each).
    pub pairs: u32,
    pub periodic: u32,
    pub idle: u32,
}

impl RoleCounts {
    /// The counts for `options` on a machine with `cpus` CPUs: given counts as they are,
    /// then the defaults of those left out, each cut to the room left.
    pub fn new(options: &Options, cpus: u32) -> Result<Self, PlanError> {
        let n = options.n;
        let given = [
            options.hogs,
            options.latency,
            options.pairs.map(|p| 2 * p),
            options.periodic,
        ];
        let needed: u64 = given.iter().flatten().map(|&c| u64::from(c)).sum();
        let mut room = u64::from(n)
            .checked_sub(needed)
            .ok_or(PlanError::TooManyRoles { needed, n })? as u32;
        let mut default = |wanted: u32, size: u32| {
            let count = wanted.min(room / size);
            room -= count * size;
            count
        };
        let hogs = options
            .hogs
            .unwrap_or_else(|| default((DEFAULT_HOGS_PER_CPU * cpus).min(n / 4), 1));
        let latency = options
            .latency
            .unwrap_or_else(|| default(DEFAULT_LATENCY.min(n / 10), 1));
        let pairs = options
            .pairs
            .unwrap_or_else(|| default(DEFAULT_PAIRS.min(n / 10), 2));
        let periodic = options
            .periodic
            .unwrap_or_else(|| default((DEFAULT_PERIODIC_PER_CPU * cpus).min(n / 10), 1));
        Ok(Self {
            hogs,
            latency,
            pairs,
            periodic,
            idle: room,
        })
    }

    /// All domains.
    pub const fn total(&self) -> u32 {
        self.hogs + self.latency + 2 * self.pairs + self.periodic + self.idle
    }
}

/// One stress domain as planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Its place in the creation order (0-based).
    pub index: u32,
    /// The CPU its vCPU starts on.
    pub cpu: u32,
    /// Kept on `cpu` (hard affinity); else the hypervisor may move it.
    pub pinned: bool,
    pub params: SchedParams,
    /// Its command line (which holds its role and predicted id).
    pub args: StressArgs,
}

impl Planned {
    /// The id it should get.
    pub const fn domid(&self) -> DomId {
        self.args.domid
    }
}

/// A whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub counts: RoleCounts,
    pub cpus: u32,
    seconds: u64,
    balloon_down: u64,
    balloon_up: u64,
    /// Each domain's VBD in KiB, 0 for none.
    pub io_kib: u64,
}

impl Plan {
    /// The run `options` ask for on `cpus` CPUs.
    pub fn new(options: &Options, cpus: u32) -> Result<Self, PlanError> {
        if cpus == 0 {
            return Err(PlanError::NoCpus);
        }
        Ok(Self {
            counts: RoleCounts::new(options, cpus)?,
            cpus,
            seconds: options.seconds,
            balloon_down: options.balloon_down,
            balloon_up: options.balloon_up,
            io_kib: options.io_kib,
        })
    }

    /// Whether the workers start their runs and print their reports when domain 0
    /// notifies their [`protocol::worker::TOLD_PORT`] (`told=1`): without VBDs. Started each
    /// as it had ballooned, runs began during the start-up rush (every domain booting and
    /// ballooning at once, 2-7 s at N=1000), whose domains went first, and ended seconds
    /// apart, each report (4 ms of CPU under TCG) landing in the runs of those that started
    /// later: at N=600 the idle domains' p99 was 84-92 ms (issue 18 item 2).
    pub const fn tells(&self) -> bool {
        self.io_kib == 0
    }

    /// Stress domains in the run.
    pub const fn len(&self) -> u32 {
        self.counts.total()
    }

    /// Whether the run has no stress domain.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id stress domain `index` should get.
    pub const fn domid(index: u32) -> DomId {
        DomId(FIRST_DOMID + index as u16)
    }

    /// Stress domain `index`, if the run has it.
    pub fn domain(&self, index: u32) -> Option<Planned> {
        if index >= self.len() {
            return None;
        }
        let c = self.counts;
        let idle_from = c.latency + 2 * c.pairs + c.periodic;
        let hogs_from = idle_from + c.idle;
        let domid = Self::domid(index);
        let link = |peer: u32| Link {
            peer: Self::domid(peer),
            port: PONG_PORT,
        };
        let (task, cpu, params) = if index < c.latency {
            (Task::Latency, index % self.cpus, LATENCY_WARP)
        } else if index < c.latency + 2 * c.pairs {
            let ping_first = (index - c.latency).is_multiple_of(2);
            let task = if ping_first {
                Task::Ping(link(index + 1))
            } else {
                Task::Pong(link(index - 1))
            };
            (task, index % self.cpus, weight(DEFAULT_WEIGHT))
        } else if index < idle_from {
            (Task::Periodic, index % self.cpus, weight(DEFAULT_WEIGHT))
        } else if index < hogs_from {
            (Task::Idle, index % self.cpus, weight(DEFAULT_WEIGHT))
        } else {
            let hog = index - hogs_from;
            (Task::Hog, (hog / 2) % self.cpus, weight(1 + hog % 2))
        };
        Some(Planned {
            index,
            cpu,
            pinned: task != Task::Latency,
            params,
            args: StressArgs {
                task,
                domid,
                seconds: self.seconds,
                balloon_down: self.balloon_down,
                balloon_up: self.balloon_up,
                io_kib: self.io_kib,
                // Without VBDs the store port is free: domain 0 says there when every run
                // may start and when every run is over (with VBDs the runs start together
                // at `stress-go`, which the store carries).
                told: self.tells(),
            },
        })
    }
}

/// Plain BVT parameters of weight `weight`, no warp.
const fn weight(weight: u32) -> SchedParams {
    SchedParams {
        weight,
        _pad: 0,
        warp_ns: 0,
        warp_limit_ns: 0,
        unwarp_req_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn plan(line: &[u8], cpus: u32) -> Plan {
        Plan::new(&Options::parse(line).unwrap(), cpus).unwrap()
    }

    fn all(plan: &Plan) -> Vec<Planned> {
        (0..plan.len()).map(|i| plan.domain(i).unwrap()).collect()
    }

    #[test]
    fn the_default_run_on_two_cpus() {
        let plan = plan(b"", 2);
        assert_eq!(
            plan.counts,
            RoleCounts {
                hogs: 4,
                latency: 4,
                pairs: 4,
                periodic: 8,
                idle: 76
            }
        );
        assert_eq!(plan.len(), 100);
        assert!(plan.domain(100).is_none());
    }

    #[test]
    fn without_vbds_domain_0_tells_the_workers_on_their_store_port() {
        assert_eq!(protocol::worker::TOLD_PORT.0, guest_rt::abi::control::CREATED_STORE_PORT);
        assert!(all(&plan(b"n=20", 2)).iter().all(|d| d.args.told));
        assert!(all(&plan(b"n=20 io_kib=64", 2)).iter().all(|d| !d.args.told));
        let line = plan(b"n=20", 2).domain(0).unwrap().args.to_string();
        assert!(line.ends_with(" told=1"), "{line}");
    }

    #[test]
    fn small_runs_cut_the_defaults_to_fit() {
        let plan = plan(b"n=10 seconds=2", 2);
        assert_eq!(
            plan.counts,
            RoleCounts {
                hogs: 2,
                latency: 1,
                pairs: 1,
                periodic: 1,
                idle: 4
            }
        );
        let tiny = self::plan(b"n=1", 4);
        assert_eq!(
            tiny.counts,
            RoleCounts {
                hogs: 0,
                latency: 0,
                pairs: 0,
                periodic: 0,
                idle: 1
            }
        );
    }

    #[test]
    fn defaults_make_room_for_given_counts() {
        let plan = plan(b"n=10 hogs=9", 2);
        assert_eq!(
            plan.counts,
            RoleCounts {
                hogs: 9,
                latency: 1,
                pairs: 0,
                periodic: 0,
                idle: 0
            }
        );
        let plan = self::plan(b"n=10 hogs=10", 2);
        assert_eq!(
            plan.counts,
            RoleCounts {
                hogs: 10,
                latency: 0,
                pairs: 0,
                periodic: 0,
                idle: 0
            }
        );
    }

    #[test]
    fn given_counts_must_fit() {
        let options = Options::parse(b"n=10 hogs=4 pairs=4").unwrap();
        assert_eq!(
            Plan::new(&options, 2),
            Err(PlanError::TooManyRoles { needed: 12, n: 10 })
        );
        let options = Options::parse(b"n=10 hogs=4 periodic=7").unwrap();
        assert_eq!(
            Plan::new(&options, 2),
            Err(PlanError::TooManyRoles { needed: 11, n: 10 })
        );
        assert_eq!(Plan::new(&Options::default(), 0), Err(PlanError::NoCpus));
    }

    #[test]
    fn roles_come_in_creation_order_with_consecutive_ids() {
        let plan = plan(b"n=13 hogs=3 latency=2 pairs=2 periodic=2", 2);
        let names: Vec<_> = all(&plan).iter().map(|d| d.args.task.name()).collect();
        assert_eq!(
            names,
            [
                "latency", "latency", "ping", "pong", "ping", "pong", "periodic", "periodic",
                "idle", "idle", "hog", "hog", "hog"
            ]
        );
        for (i, d) in all(&plan).iter().enumerate() {
            assert_eq!(d.index as usize, i);
            assert_eq!(d.domid(), DomId(1 + i as u16));
        }
    }

    #[test]
    fn pairs_name_each_other() {
        let plan = plan(b"n=8 hogs=0 latency=0 pairs=2", 2);
        let domains = all(&plan);
        for pair in domains[..4].chunks(2) {
            let (Task::Ping(to_pong), Task::Pong(to_ping)) = (pair[0].args.task, pair[1].args.task)
            else {
                panic!("not a pair: {pair:?}");
            };
            assert_eq!(to_pong.peer, pair[1].domid());
            assert_eq!(to_ping.peer, pair[0].domid());
            assert_eq!((to_pong.port, to_ping.port), (PONG_PORT, PONG_PORT));
            assert_ne!(pair[0].cpu, pair[1].cpu, "across CPUs");
        }
    }

    #[test]
    fn hogs_share_cpus_in_weight_1_and_2_pairs() {
        let plan = plan(b"n=20", 2);
        let hogs: Vec<_> = all(&plan)
            .into_iter()
            .filter(|d| d.args.task == Task::Hog)
            .collect();
        let placed: Vec<_> = hogs.iter().map(|d| (d.cpu, d.params.weight)).collect();
        assert_eq!(placed, [(0, 1), (0, 2), (1, 1), (1, 2)]);
        assert!(hogs.iter().all(|d| d.params.warp_ns == 0));
    }

    #[test]
    fn only_latency_domains_warp_and_the_rest_go_round_robin() {
        let plan = plan(b"n=30", 3);
        for d in all(&plan) {
            assert!(d.cpu < 3);
            assert_eq!(d.pinned, d.args.task != Task::Latency, "only latency domains may move");
            match d.args.task {
                Task::Latency => assert_eq!(d.params, LATENCY_WARP),
                Task::Hog => {}
                _ => {
                    assert_eq!(d.params.warp_ns, 0);
                    assert_eq!(d.params.weight, DEFAULT_WEIGHT);
                    assert_eq!(d.cpu, d.index % 3);
                }
            }
        }
    }

    #[test]
    fn every_command_line_parses_back() {
        let plan = plan(b"n=40 seconds=3 balloon_down=10 balloon_up=5", 2);
        for d in all(&plan) {
            let line = std::format!("{}", d.args);
            assert_eq!(StressArgs::parse(line.as_bytes()), Ok(d.args), "{line}");
        }
    }
}

//! The worker's command line: what domain 0 tells each stress domain.
//!
//! `role=R domid=D seconds=S balloon_down=X balloon_up=Y [peer=P port=Q] [io_kib=K] [told=1]`,
//! where R is a [`Role`]; `domid` is the worker's own id (domain 0 predicts it: ids are
//! handed out in sequence), and ping and pong name each other with `peer` and the port pong
//! allocates for ping with `port`; `io_kib` (the `IO=1` run) says the worker has a VBD of
//! that size to read (absent: no I/O); `told=1` says domain 0 notifies the worker's store
//! port ([`TOLD_PORT`]) twice: once every worker has ballooned (its run starts then) and once
//! every run is over (it prints its report then).
//! Domain 0 writes it with [`StressArgs`]'s `Display`, the worker reads it with
//! [`StressArgs::parse`] (strict: see [`crate::keyvalue::Keys`]); the round trip is tested
//! here. This module must never decide a run's shape: domain 0 does.

use core::fmt;

use crate::keyvalue::{self, write_pair, Keys, OptionError};
use crate::{DomId, EvtchnPort, Role};

/// The longest run a worker accepts, in seconds.
pub const MAX_SECONDS: u64 = 3600;
/// The most pages a worker balloons down (or up) by.
pub const MAX_BALLOON_PAGES: u64 = 1 << 20;
/// The largest VBD a worker is told of, in KiB (64 MiB).
pub const MAX_IO_KIB: u64 = 64 << 10;

/// The two ends of a ping-pong pair: the peer's domain and pong's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The other domain of the pair.
    pub peer: DomId,
    /// The port pong allocates for ping (its first, hence 1) and ping binds to.
    pub port: EvtchnPort,
}

/// What a worker does for its run: its [`Role`], with the link for ping and pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Idle,
    Periodic,
    Latency,
    Hog,
    Ping(Link),
    Pong(Link),
}

impl Task {
    /// The role.
    pub const fn role(self) -> Role {
        match self {
            Self::Idle => Role::Idle,
            Self::Periodic => Role::Periodic,
            Self::Latency => Role::Latency,
            Self::Hog => Role::Hog,
            Self::Ping(_) => Role::Ping,
            Self::Pong(_) => Role::Pong,
        }
    }

    /// The role's name on command lines and in records.
    pub const fn name(self) -> &'static str {
        self.role().name()
    }

    /// The pair's link, for ping and pong.
    pub const fn link(self) -> Option<Link> {
        match self {
            Self::Ping(link) | Self::Pong(link) => Some(link),
            Self::Idle | Self::Periodic | Self::Latency | Self::Hog => None,
        }
    }

    /// The task of `role`; ping and pong need their `link`.
    const fn of(role: Role, link: Option<Link>) -> Option<Self> {
        Some(match (role, link) {
            (Role::Idle, None) => Self::Idle,
            (Role::Periodic, None) => Self::Periodic,
            (Role::Latency, None) => Self::Latency,
            (Role::Hog, None) => Self::Hog,
            (Role::Ping, Some(link)) => Self::Ping(link),
            (Role::Pong, Some(link)) => Self::Pong(link),
            _ => return None,
        })
    }
}

/// A worker's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StressArgs {
    pub task: Task,
    /// The worker's own domain id (for its records).
    pub domid: DomId,
    /// How long the role runs, in seconds of system time.
    pub seconds: u64,
    /// Pages to give back at start.
    pub balloon_down: u64,
    /// Pages to take back after that (at most `balloon_down`).
    pub balloon_up: u64,
    /// The size of the worker's VBD in KiB, 0 for none (`io_kib=`).
    pub io_kib: u64,
    /// The worker starts its run at domain 0's first notification on [`TOLD_PORT`] and
    /// prints its report at the second (`told=1`), so that every run starts together, after
    /// every start-up, and no report runs in another worker's run.
    pub told: bool,
}

/// With `told=1`, the port domain 0 notifies once every worker has ballooned (go) and once
/// every run is over (report): the worker's store port, which domain 0 holds unbound for it
/// (without `io_kib`, domain 0 serves no store: the port is free).
pub const TOLD_PORT: EvtchnPort = EvtchnPort(2);

/// The highest id of an ordinary domain.
const LAST_DOMID: u64 = DomId::FIRST_RESERVED.0 as u64 - 1;

impl StressArgs {
    /// Parses a worker's command line.
    pub fn parse(line: &[u8]) -> Result<Self, OptionError> {
        let line = keyvalue::text(line)?;
        let mut role = None;
        let mut keys = Keys::new([
            "domid",
            "seconds",
            "balloon_down",
            "balloon_up",
            "peer",
            "port",
            "io_kib",
            "told",
        ]);
        keys.parse(line, |key, value| {
            if key != "role" {
                return Ok(false);
            }
            if role.is_some() {
                return Err(OptionError::Repeated("role"));
            }
            role = Some(Role::from_name(value).ok_or(OptionError::BadValue("role"))?);
            Ok(true)
        })?;
        let role = role.ok_or(OptionError::Missing("role"))?;
        let domid = keys.get_in("domid", None, 1..=LAST_DOMID)?;
        let link = match role {
            Role::Ping | Role::Pong => {
                let peer = keys.get_in("peer", None, 1..=LAST_DOMID)?;
                let port = keys.get_in("port", None, 1..=u64::from(u32::MAX))?;
                if peer == domid {
                    return Err(OptionError::Inconsistent("peer"));
                }
                Some(Link {
                    peer: DomId(peer as u16),
                    port: EvtchnPort(port as u32),
                })
            }
            _ if keys.get("peer").is_some() || keys.get("port").is_some() => {
                return Err(OptionError::Inconsistent("peer"))
            }
            _ => None,
        };
        let task = Task::of(role, link).ok_or(OptionError::Inconsistent("peer"))?;
        let balloon_down = keys.get_in("balloon_down", Some(0), 0..=MAX_BALLOON_PAGES)?;
        let balloon_up = keys.get_in("balloon_up", Some(0), 0..=balloon_down)?;
        Ok(Self {
            task,
            domid: DomId(domid as u16),
            seconds: keys.get_in("seconds", None, 1..=MAX_SECONDS)?,
            balloon_down,
            balloon_up,
            io_kib: keys.get_in("io_kib", Some(0), 0..=MAX_IO_KIB)?,
            told: keys.get_in("told", Some(0), 0..=1)? == 1,
        })
    }
}

impl fmt::Display for StressArgs {
    /// The command line [`StressArgs::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role={}", self.task.name())?;
        write_pair(f, "domid", self.domid.0)?;
        write_pair(f, "seconds", self.seconds)?;
        write_pair(f, "balloon_down", self.balloon_down)?;
        write_pair(f, "balloon_up", self.balloon_up)?;
        if let Some(link) = self.task.link() {
            write_pair(f, "peer", link.peer.0)?;
            write_pair(f, "port", link.port.0)?;
        }
        if self.io_kib > 0 {
            write_pair(f, "io_kib", self.io_kib)?;
        }
        if self.told {
            write_pair(f, "told", 1)?;
        }
        Ok(())
    }
}

/// With `io_kib=`, the store node (in each worker's home) domain 0 writes once every VBD is
/// connected; a worker waits for it after connecting its VBD, and its role's run starts then.
pub const GO_NODE: &str = "stress-go";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyvalue::quote;
    use proptest::prelude::*;
    use std::format;
    use std::string::ToString;

    fn ping() -> StressArgs {
        StressArgs {
            task: Task::Ping(Link {
                peer: DomId(6),
                port: EvtchnPort(1),
            }),
            domid: DomId(5),
            seconds: 10,
            balloon_down: 16,
            balloon_up: 8,
            io_kib: 0,
            told: false,
        }
    }

    #[test]
    fn command_lines_round_trip() {
        let args = ping();
        let line = args.to_string();
        assert_eq!(
            line,
            "role=ping domid=5 seconds=10 balloon_down=16 balloon_up=8 peer=6 port=1"
        );
        assert_eq!(StressArgs::parse(line.as_bytes()), Ok(args));
        for task in [Task::Hog, Task::Idle, Task::Periodic, Task::Latency] {
            let args = StressArgs { task, ..args };
            assert_eq!(StressArgs::parse(args.to_string().as_bytes()), Ok(args));
            let io = StressArgs { io_kib: 1024, ..args };
            assert!(io.to_string().ends_with(" io_kib=1024"));
            assert_eq!(StressArgs::parse(io.to_string().as_bytes()), Ok(io));
            let told = StressArgs { told: true, ..args };
            assert!(told.to_string().ends_with(" told=1"));
            assert_eq!(StressArgs::parse(told.to_string().as_bytes()), Ok(told));
        }
        assert!(StressArgs::parse(b"role=idle domid=3 seconds=1 told=2").is_err());
        let too_big = format!("role=idle domid=3 seconds=1 io_kib={}", MAX_IO_KIB + 1);
        assert!(StressArgs::parse(too_big.as_bytes()).is_err());
    }

    #[test]
    fn order_does_not_matter_and_balloons_default_to_zero() {
        let args = StressArgs::parse(b"seconds=2 domid=9 role=latency").unwrap();
        assert_eq!(args.task, Task::Latency);
        assert_eq!((args.domid, args.seconds), (DomId(9), 2));
        assert_eq!((args.balloon_down, args.balloon_up), (0, 0));
    }

    #[test]
    fn pairs_need_their_link_and_others_refuse_one() {
        assert_eq!(
            StressArgs::parse(b"role=pong domid=3 seconds=1 peer=2"),
            Err(OptionError::Missing("port"))
        );
        assert_eq!(
            StressArgs::parse(b"role=ping domid=3 seconds=1 peer=3 port=1"),
            Err(OptionError::Inconsistent("peer"))
        );
        assert_eq!(
            StressArgs::parse(b"role=hog domid=3 seconds=1 port=1"),
            Err(OptionError::Inconsistent("peer"))
        );
    }

    #[test]
    fn bad_lines_are_refused() {
        let refused = |line: &[u8], error| assert_eq!(StressArgs::parse(line), Err(error));
        refused(b"domid=1 seconds=1", OptionError::Missing("role"));
        refused(
            b"role=sleepy domid=1 seconds=1",
            OptionError::BadValue("role"),
        );
        refused(
            b"role=hog role=hog domid=1 seconds=1",
            OptionError::Repeated("role"),
        );
        refused(b"role=hog seconds=1", OptionError::Missing("domid"));
        refused(
            b"role=hog domid=0 seconds=1",
            OptionError::BadValue("domid"),
        );
        refused(
            b"role=hog domid=32752 seconds=1",
            OptionError::BadValue("domid"),
        );
        refused(
            b"role=hog domid=1 seconds=0",
            OptionError::BadValue("seconds"),
        );
        refused(
            b"role=hog domid=1 seconds=1 balloon_up=1",
            OptionError::BadValue("balloon_up"),
        );
        refused(
            b"role=hog domid=1 seconds=1 colour=red",
            OptionError::UnknownKey(quote("colour")),
        );
        refused(b"role=hog domid=1 seconds=1 \xff", OptionError::NotText);
    }

    fn task() -> impl Strategy<Value = Task> {
        let link = (1u16..0x7FF0, 1u32..).prop_map(|(peer, port)| Link {
            peer: DomId(peer),
            port: EvtchnPort(port),
        });
        prop_oneof![
            Just(Task::Idle),
            Just(Task::Periodic),
            Just(Task::Latency),
            Just(Task::Hog),
            link.clone().prop_map(Task::Ping),
            link.prop_map(Task::Pong),
        ]
    }

    proptest! {
        /// Every valid command line domain 0 can write, the worker reads back.
        #[test]
        fn every_valid_line_round_trips(
            task in task(),
            domid in 1u16..0x7FF0,
            seconds in 1..=MAX_SECONDS,
            balloon in (0..=MAX_BALLOON_PAGES).prop_flat_map(|down| (Just(down), 0..=down)),
        ) {
            prop_assume!(task.link().is_none_or(|l| l.peer != DomId(domid)));
            let args = StressArgs { task, domid: DomId(domid), seconds, balloon_down: balloon.0, balloon_up: balloon.1, io_kib: 0, told: false };
            let line = args.to_string();
            prop_assert!(line.len() < 160, "{line}");
            prop_assert_eq!(StressArgs::parse(line.as_bytes()), Ok(args));
        }

        /// No byte string makes the parser panic.
        #[test]
        fn any_bytes_parse_or_fail(line in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = StressArgs::parse(&line);
        }
    }
}

//! The worker's command line: what domain 0 tells each stress domain.
//!
//! `role=R domid=D seconds=S balloon_down=X balloon_up=Y [peer=P port=Q]`, where R is
//! `idle`, `periodic`, `latency`, `hog`, `ping` or `pong`; `domid` is the worker's own id (domain
//! 0 predicts it: ids are handed out in sequence), and ping and pong name each other with
//! `peer` and the port pong allocates for ping with `port`. Domain 0 writes it with
//! [`StressArgs`]'s `Display`, the worker reads it with [`StressArgs::parse`]; the round
//! trip is tested here. This module must never decide a run's shape: domain 0 does.

use core::fmt;

use guest_rt::abi::ids::{DomId, EvtchnPort};

use crate::keyvalue::{self, Keys, OptionError};

/// The longest run a worker accepts, in seconds.
pub const MAX_SECONDS: u64 = 3600;
/// The most pages a worker balloons down (or up) by.
pub const MAX_BALLOON_PAGES: u64 = 1 << 20;

/// The two ends of a ping-pong pair: the peer's domain and pong's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The other domain of the pair.
    pub peer: DomId,
    /// The port pong allocates for ping (its first, hence 1) and ping binds to.
    pub port: EvtchnPort,
}

/// What a worker does for its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Mostly blocked: a 100 ms one-shot timer, re-armed at each wake-up; records how late
    /// each was.
    Idle,
    /// A 1 ms one-shot timer, re-armed at each wake-up; records how late each was.
    Periodic,
    /// As `Periodic`, in a domain created with BVT warp.
    Latency,
    /// Spins, counting loops, never yielding.
    Hog,
    /// Sends an event every 1 ms and measures the round trip to pong's answer.
    Ping(Link),
    /// Answers ping's events.
    Pong(Link),
}

impl Role {
    /// The role's name on command lines and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Periodic => "periodic",
            Self::Latency => "latency",
            Self::Hog => "hog",
            Self::Ping(_) => "ping",
            Self::Pong(_) => "pong",
        }
    }

    /// The pair's link, for ping and pong.
    pub const fn link(self) -> Option<Link> {
        match self {
            Self::Ping(link) | Self::Pong(link) => Some(link),
            Self::Idle | Self::Periodic | Self::Latency | Self::Hog => None,
        }
    }
}

/// A worker's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StressArgs {
    pub role: Role,
    /// The worker's own domain id (for its report lines).
    pub domid: DomId,
    /// How long the role runs, in seconds of system time.
    pub seconds: u64,
    /// Pages to give back at start.
    pub balloon_down: u64,
    /// Pages to take back after that (at most `balloon_down`).
    pub balloon_up: u64,
}

/// The role word before its link is known.
#[derive(Clone, Copy)]
enum RoleName {
    Idle,
    Periodic,
    Latency,
    Hog,
    Ping,
    Pong,
}

impl RoleName {
    fn parse(word: &str) -> Result<Self, OptionError> {
        Ok(match word {
            "idle" => Self::Idle,
            "periodic" => Self::Periodic,
            "latency" => Self::Latency,
            "hog" => Self::Hog,
            "ping" => Self::Ping,
            "pong" => Self::Pong,
            _ => return Err(OptionError::BadValue("role")),
        })
    }
}

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
        ]);
        keys.parse(line, |key, value| {
            if key != "role" {
                return Ok(false);
            }
            if role.is_some() {
                return Err(OptionError::Repeated("role"));
            }
            role = Some(RoleName::parse(value)?);
            Ok(true)
        })?;
        let role = role.ok_or(OptionError::Missing("role"))?;
        let domid = keys.get_in("domid", None, 1..=u64::from(DomId::FIRST_RESERVED.0) - 1)?;
        let link = || -> Result<Link, OptionError> {
            let peer = keys.get_in("peer", None, 1..=u64::from(DomId::FIRST_RESERVED.0) - 1)?;
            let port = keys.get_in("port", None, 1..=u64::from(u32::MAX))?;
            if peer == domid {
                return Err(OptionError::Inconsistent("peer"));
            }
            Ok(Link {
                peer: DomId(peer as u16),
                port: EvtchnPort(port as u32),
            })
        };
        let role = match role {
            RoleName::Idle => Role::Idle,
            RoleName::Periodic => Role::Periodic,
            RoleName::Latency => Role::Latency,
            RoleName::Hog => Role::Hog,
            RoleName::Ping => Role::Ping(link()?),
            RoleName::Pong => Role::Pong(link()?),
        };
        if role.link().is_none() && (keys.get("peer").is_some() || keys.get("port").is_some()) {
            return Err(OptionError::Inconsistent("peer"));
        }
        let balloon_down = keys.get_in("balloon_down", Some(0), 0..=MAX_BALLOON_PAGES)?;
        let balloon_up = keys.get_in("balloon_up", Some(0), 0..=balloon_down)?;
        Ok(Self {
            role,
            domid: DomId(domid as u16),
            seconds: keys.get_in("seconds", None, 1..=MAX_SECONDS)?,
            balloon_down,
            balloon_up,
        })
    }
}

impl fmt::Display for StressArgs {
    /// The command line [`StressArgs::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "role={} domid={} seconds={} balloon_down={} balloon_up={}",
            self.role.name(),
            self.domid.0,
            self.seconds,
            self.balloon_down,
            self.balloon_up
        )?;
        if let Some(link) = self.role.link() {
            write!(f, " peer={} port={}", link.peer.0, link.port.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyvalue::quote;
    use std::string::ToString;

    fn ping() -> StressArgs {
        StressArgs {
            role: Role::Ping(Link {
                peer: DomId(6),
                port: EvtchnPort(1),
            }),
            domid: DomId(5),
            seconds: 10,
            balloon_down: 16,
            balloon_up: 8,
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
        let hog = StressArgs {
            role: Role::Hog,
            ..args
        };
        assert_eq!(StressArgs::parse(hog.to_string().as_bytes()), Ok(hog));
        let idle = StressArgs {
            role: Role::Idle,
            ..args
        };
        assert_eq!(StressArgs::parse(idle.to_string().as_bytes()), Ok(idle));
    }

    #[test]
    fn order_does_not_matter_and_balloons_default_to_zero() {
        let args = StressArgs::parse(b"seconds=2 domid=9 role=latency").unwrap();
        assert_eq!(args.role, Role::Latency);
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
}

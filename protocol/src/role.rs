//! What a stress domain does: its role, as domain 0 assigns it (`role=` on the worker's
//! command line), as the worker and domain 0 name it in their records, and as the host
//! tool groups the figures. One enum for all three; [`crate::worker::Task`] adds the
//! ping-pong link to it for the worker's command line.

use core::fmt;

/// A stress domain's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Mostly blocked: a 100 ms one-shot timer, re-armed at each wake-up.
    Idle,
    /// A 1 ms one-shot timer, re-armed at each wake-up.
    Periodic,
    /// As `Periodic`, in a domain created with BVT warp.
    Latency,
    /// Spins, counting loops, never yielding.
    Hog,
    /// Sends an event every 1 ms and times the answer.
    Ping,
    /// Answers ping's events.
    Pong,
}

impl Role {
    /// Every role, in the order reports list them.
    pub const ALL: [Role; 6] = [
        Self::Idle,
        Self::Periodic,
        Self::Latency,
        Self::Hog,
        Self::Ping,
        Self::Pong,
    ];

    /// The role's word on command lines and in records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Periodic => "periodic",
            Self::Latency => "latency",
            Self::Hog => "hog",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }

    /// The role a word names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.name() == name)
    }

    /// True for the roles that record a histogram (timer lateness or round trips).
    pub const fn measures(self) -> bool {
        !matches!(self, Self::Hog | Self::Pong)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(Role::from_name("boss"), None);
        assert_eq!(Role::from_name("Idle"), None);
    }
}

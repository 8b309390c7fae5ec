//! Xen's error numbers (public/errno.h): the one flat status every hypercall returns to
//! the guest, as a negative number in rax.
//!
//! The hypervisor converts its internal errors into an [`Errno`] in one place and returns
//! [`Errno::as_return`]; our guests decode results with [`Errno::from_return`]. The values
//! are Xen's (which follow x86 Linux), never the host C library's. This module must never
//! list the two values errno.h reserves for the hypervisor's internal use (`EINTR` 4 and
//! `ERESTART` 85): the header forbids exposing them to guests.

use crate::macros::abi_enum;

abi_enum! {
    /// A guest-visible Xen error number (public/errno.h, `XEN_E*`).
    pub enum Errno: i32 {
        /// Operation not permitted.
        Eperm = 1,
        /// No such file or directory (no such object).
        Enoent = 2,
        /// No such process (no such domain).
        Esrch = 3,
        /// I/O error.
        Eio = 5,
        /// No such device or address.
        Enxio = 6,
        /// Argument list too long.
        E2big = 7,
        /// Exec format error.
        Enoexec = 8,
        /// Bad file number (bad port).
        Ebadf = 9,
        /// No child processes.
        Echild = 10,
        /// Try again (also `EWOULDBLOCK`).
        Eagain = 11,
        /// Out of memory.
        Enomem = 12,
        /// Permission denied.
        Eacces = 13,
        /// Bad address.
        Efault = 14,
        /// Device or resource busy.
        Ebusy = 16,
        /// Already exists.
        Eexist = 17,
        /// Cross-device link.
        Exdev = 18,
        /// No such device.
        Enodev = 19,
        /// Is a directory.
        Eisdir = 21,
        /// Invalid argument.
        Einval = 22,
        /// File table overflow.
        Enfile = 23,
        /// Too many open files.
        Emfile = 24,
        /// No space left.
        Enospc = 28,
        /// Read-only file system.
        Erofs = 30,
        /// Too many links.
        Emlink = 31,
        /// Argument out of domain.
        Edom = 33,
        /// Result not representable.
        Erange = 34,
        /// Resource deadlock would occur (also `EDEADLOCK`).
        Edeadlk = 35,
        /// Name too long.
        Enametoolong = 36,
        /// No record locks available.
        Enolck = 37,
        /// Function not implemented (unknown hypercall or sub-op).
        Enosys = 38,
        /// Directory not empty.
        Enotempty = 39,
        /// No data available.
        Enodata = 61,
        /// Timer expired.
        Etime = 62,
        /// Not a data message.
        Ebadmsg = 74,
        /// Value too large for defined data type.
        Eoverflow = 75,
        /// Illegal byte sequence.
        Eilseq = 84,
        /// Socket operation on non-socket.
        Enotsock = 88,
        /// Operation not supported.
        Eopnotsupp = 95,
        /// Address already in use.
        Eaddrinuse = 98,
        /// Cannot assign requested address.
        Eaddrnotavail = 99,
        /// No buffer space available.
        Enobufs = 105,
        /// Already connected.
        Eisconn = 106,
        /// Not connected.
        Enotconn = 107,
        /// Timed out.
        Etimedout = 110,
    }
}

impl Errno {
    /// `EWOULDBLOCK`, an alias of `EAGAIN`.
    pub const EWOULDBLOCK: Self = Self::Eagain;
    /// `EDEADLOCK`, an alias of `EDEADLK`.
    pub const EDEADLOCK: Self = Self::Edeadlk;

    /// The value a guest sees in rax: the error number, negated.
    pub const fn as_return(self) -> i64 {
        -(self.raw() as i64)
    }

    /// Decodes a hypercall result: `Some` when `ret` is the negation of a known error
    /// number, `None` for success values and for unknown negative numbers.
    pub const fn from_return(ret: i64) -> Option<Self> {
        if ret >= 0 || ret < -(i32::MAX as i64) {
            return None;
        }
        Self::from_raw((-ret) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_errno_h() {
        assert_eq!(Errno::Eperm.raw(), 1);
        assert_eq!(Errno::Efault.raw(), 14);
        assert_eq!(Errno::Einval.raw(), 22);
        assert_eq!(Errno::Enosys.raw(), 38);
        assert_eq!(Errno::Enotempty.raw(), 39);
        assert_eq!(Errno::Etimedout.raw(), 110);
        assert_eq!(Errno::EWOULDBLOCK.raw(), 11);
        assert_eq!(Errno::EDEADLOCK.raw(), 35);
    }

    #[test]
    fn internal_values_are_not_guest_visible() {
        assert_eq!(Errno::from_raw(4), None, "EINTR is hypervisor-internal");
        assert_eq!(Errno::from_raw(85), None, "ERESTART is hypervisor-internal");
    }

    #[test]
    fn return_values_are_negative() {
        assert_eq!(Errno::Enosys.as_return(), -38);
        assert_eq!(Errno::Eperm.as_return() as u64, 0xffff_ffff_ffff_ffff);
    }

    #[test]
    fn from_return_decodes_only_known_errors() {
        for &errno in Errno::ALL {
            assert_eq!(Errno::from_return(errno.as_return()), Some(errno));
        }
        assert_eq!(Errno::from_return(0), None);
        assert_eq!(Errno::from_return(22), None);
        assert_eq!(Errno::from_return(-4), None);
        assert_eq!(Errno::from_return(-1000), None);
        assert_eq!(Errno::from_return(i64::MIN), None);
    }
}

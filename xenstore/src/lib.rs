//! Xen's store (xenstore) as pure logic: the `xs_wire` codec (io/xs_wire.h), a tree of
//! nodes with per-node permissions, watches, transactions, the introduction and release of
//! domains, and per-domain quotas — what domain 0's store server (`guests/dom0`) runs, and
//! what a guest's store client (`guests/rt`) encodes and decodes its messages with.
//!
//! Who calls it: domain 0's server hands each complete request of a connection (read
//! from that domain's ring with [`wire::Reader`]) to [`Store::handle`] and writes what
//! [`Store::pop_output`] gives back into the domain's response ring; its own accesses go
//! through the same tree directly ([`Store::handle`] with domain 0's id, or the typed
//! helpers such as [`Store::write_as`]); it calls [`Store::introduce`] and
//! [`Store::release`] as it creates and destroys domains. Guests use [`wire`] alone.
//!
//! What it must never do: panic, or allocate without bound, on anything a guest sends.
//! Every length is checked against the payload, every string must end in NUL, paths are
//! checked (characters, length, no `..`), and every domain's nodes, watches, transactions,
//! value sizes and queued output are bounded ([`Quota`], xenstored's defaults), so that a
//! flooding domain gets errors and no one else is slowed. It holds no lock, maps nothing
//! and has no `unsafe`.
//!
//! Modules:
//! - [`wire`]: message types, the header, error strings, argument splitting, reassembly.
//! - [`path`]: canonical paths (relative ones under the domain's home), the checks.
//! - [`perms`]: permissions (owner + ACL) and who may do what.
//! - [`tree`]: the nodes, and transactions as overlays with Xen's conflict rule.
//! - [`store`]: connections, watches, quotas, and the request dispatcher.
//! - [`server`]: one domain's ring served through the store, hostile indices cut off.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod path;
pub mod server;
pub mod perms;
pub mod store;
pub mod tree;
pub mod wire;

#[cfg(test)]
mod grub_tests;
#[cfg(test)]
mod proptests;

pub use perms::{Perm, PermKind};
pub use store::{Quota, Store};
pub use wire::{Header, MsgType, XsError};

/// A domain id as the store sees it (the connection's, a node's owner).
pub type DomId = u16;

//! The store's nodes, and transactions over them.
//!
//! A [`Tree`] maps absolute paths to [`Node`]s (value, permissions, generation); a node's
//! children are the nodes whose path extends its own by one component. Every change
//! stamps the node (and, when a child comes or goes, its parent) with a fresh generation.
//!
//! A transaction ([`Tx`]) is an overlay: its writes and removals stay in the overlay, its
//! reads see the overlay over the tree, and it records the generation of every node it
//! read or wrote (or that it was absent) when it first touched it. Committing checks that
//! every recorded node still has that generation (Xen's rule: a transaction fails with
//! `EAGAIN` when a node it accessed changed meanwhile, including a directory whose children
//! changed) and then applies the overlay. [`View`] is the tree as a request sees it: inside
//! a transaction or not. Called only by [`crate::store`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::path;
use crate::perms::Perm;
use crate::wire::XsError;
use crate::DomId;

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    /// Never empty: the first entry is the owner.
    pub perms: Vec<Perm>,
    pub generation: u64,
}

impl Node {
    pub fn owner(&self) -> DomId {
        self.perms[0].domid
    }
}

/// The committed nodes.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    next_generation: u64,
    /// Nodes per owner, for the quota.
    owned: BTreeMap<DomId, u32>,
    /// Bytes of the nodes per owner ([`node_cost`]), for the memory quota.
    owned_bytes: BTreeMap<DomId, usize>,
}

/// What a node costs its owner's memory quota: its path, value and permissions, and a
/// fixed overhead for the tree's bookkeeping.
pub fn node_cost(path: &str, value_len: usize, perms: usize) -> usize {
    NODE_OVERHEAD + path.len() + value_len + perms * core::mem::size_of::<Perm>()
}

/// The bookkeeping of one node in the tree (map entry, allocations' headers), rounded up.
pub const NODE_OVERHEAD: usize = 128;

impl Tree {
    /// A tree with `/` owned by domain 0 (no access for others), as xenstored starts, and
    /// `/local`, `/local/domain`, `/tool` likewise.
    pub fn new() -> Tree {
        let mut tree = Tree { nodes: BTreeMap::new(), next_generation: 1, owned: BTreeMap::new(), owned_bytes: BTreeMap::new() };
        let root = alloc::vec![Perm { domid: 0, kind: crate::PermKind::None }];
        for p in ["/", "/local", "/local/domain", "/tool"] {
            tree.insert(String::from(p), Vec::new(), root.clone());
        }
        tree
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes `domid` owns.
    pub fn owned_by(&self, domid: DomId) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Bytes of the nodes `domid` owns ([`node_cost`]).
    pub fn bytes_of(&self, domid: DomId) -> usize {
        self.owned_bytes.get(&domid).copied().unwrap_or(0)
    }

    fn count_bytes(&mut self, owner: DomId, add: usize, sub: usize) {
        let n = self.owned_bytes.entry(owner).or_insert(0);
        *n = (*n + add).saturating_sub(sub);
        if *n == 0 {
            self.owned_bytes.remove(&owner);
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn count(&mut self, owner: DomId, delta: i32) {
        let n = self.owned.entry(owner).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.owned.remove(&owner);
        }
    }

    /// Every node strictly beneath `path`, in order.
    fn descendants<'a>(&'a self, path: &str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = if path == "/" { String::from("/") } else { alloc::format!("{path}/") };
        let owned = prefix.clone();
        self.nodes.range(prefix..).take_while(move |(k, _)| k.starts_with(owned.as_str())).filter(|(k, _)| k.as_str() != "/")
    }

    /// The names of `path`'s children, in order.
    pub fn children(&self, path: &str) -> Vec<String> {
        let skip = if path == "/" { 1 } else { path.len() + 1 };
        self.descendants(path).map(|(k, _)| &k[skip..]).filter(|rest| !rest.contains('/')).map(String::from).collect()
    }

    /// Sets (creates or replaces) a node; a new one bumps its parent's generation.
    pub fn insert(&mut self, path: String, value: Vec<u8>, perms: Vec<Perm>) {
        let generation = self.generation();
        let owner = perms[0].domid;
        let cost = node_cost(&path, value.len(), perms.len());
        if let Some(old) = self.nodes.insert(path.clone(), Node { value, perms, generation }) {
            self.count(old.owner(), -1);
            self.count_bytes(old.owner(), 0, node_cost(&path, old.value.len(), old.perms.len()));
        } else if let Some(parent) = path::parent(&path) {
            if let Some(p) = self.nodes.get_mut(parent) {
                p.generation = generation;
            }
        }
        self.count(owner, 1);
        self.count_bytes(owner, cost, 0);
    }

    /// Removes `path` and everything beneath it; returns what went (the top first).
    pub fn remove(&mut self, path: &str) -> Vec<(String, Node)> {
        let mut doomed: Vec<String> = self.descendants(path).map(|(k, _)| k.clone()).collect();
        if self.nodes.contains_key(path) {
            doomed.insert(0, String::from(path));
        }
        let generation = self.generation();
        let mut gone = Vec::with_capacity(doomed.len());
        for p in doomed {
            if let Some(node) = self.nodes.remove(&p) {
                self.count(node.owner(), -1);
                self.count_bytes(node.owner(), 0, node_cost(&p, node.value.len(), node.perms.len()));
                gone.push((p, node));
            }
        }
        if let Some(parent) = path::parent(path) {
            if let Some(p) = self.nodes.get_mut(parent) {
                p.generation = generation;
            }
        }
        gone
    }

    /// Replaces every mention of `domid` in permissions: as owner, domain 0 takes over; ACL
    /// entries naming it go (a released domain's id must give a later domain nothing).
    pub fn forget_domain(&mut self, domid: DomId) {
        let mut moved = 0;
        let mut moved_bytes = 0;
        for (path, node) in self.nodes.iter_mut() {
            if node.perms[0].domid == domid {
                node.perms[0].domid = 0;
                moved += 1;
                moved_bytes += node_cost(path, node.value.len(), node.perms.len());
            }
            let owner = node.perms[0];
            node.perms.retain(|p| p.domid != domid);
            if node.perms.is_empty() {
                node.perms.push(owner);
            }
        }
        self.owned.remove(&domid);
        self.owned_bytes.remove(&domid);
        for _ in 0..moved {
            self.count(0, 1);
        }
        self.count_bytes(0, moved_bytes, 0);
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// An open transaction.
#[derive(Debug, Default)]
pub struct Tx {
    /// Written (`Some`) and removed (`None`) nodes.
    changes: BTreeMap<String, Option<Node>>,
    /// The generation each touched node had in the tree (`None`: absent).
    seen: BTreeMap<String, Option<u64>>,
    /// Net nodes created per owner, for the quota.
    added: BTreeMap<DomId, i32>,
    /// Bytes the overlay holds ([`node_cost`] of each change).
    bytes: usize,
}

impl Tx {
    /// Nodes the overlay holds (for the per-transaction quota).
    pub fn size(&self) -> usize {
        self.changes.len()
    }

    fn see(&mut self, tree: &Tree, path: &str) {
        if !self.seen.contains_key(path) {
            self.seen.insert(String::from(path), tree.get(path).map(|n| n.generation));
        }
    }

    /// Bytes the overlay holds (an upper bound: a node changed twice counts twice).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Net nodes this transaction adds for `owner`.
    pub fn added_for(&self, owner: DomId) -> i32 {
        self.added.get(&owner).copied().unwrap_or(0)
    }

    /// Applies the transaction to `tree` unless a node it touched changed (`EAGAIN`);
    /// returns the paths written and the nodes removed (with their permissions), for
    /// watches.
    pub fn commit(self, tree: &mut Tree) -> Result<Changes, XsError> {
        for (p, generation) in &self.seen {
            if tree.get(p).map(|n| n.generation) != *generation {
                return Err(XsError::Eagain);
            }
        }
        let mut changes = Changes::default();
        for (p, change) in self.changes {
            match change {
                Some(node) => {
                    tree.insert(p.clone(), node.value, node.perms.clone());
                    changes.written.push((p, node.perms));
                }
                None => {
                    if tree.get(&p).is_some() {
                        changes.removed.extend(tree.remove(&p));
                    }
                }
            }
        }
        Ok(changes)
    }
}

/// What a change did, for watches.
#[derive(Debug, Default)]
pub struct Changes {
    pub written: Vec<(String, Vec<Perm>)>,
    pub removed: Vec<(String, Node)>,
}

/// The tree as one request sees it.
pub struct View<'a> {
    pub tree: &'a mut Tree,
    pub tx: Option<&'a mut Tx>,
}

impl View<'_> {
    pub fn get(&mut self, path: &str) -> Option<Node> {
        match self.tx.as_deref_mut() {
            None => self.tree.get(path).cloned(),
            Some(tx) => {
                if let Some(change) = tx.changes.get(path) {
                    return change.clone();
                }
                tx.see(self.tree, path);
                self.tree.get(path).cloned()
            }
        }
    }

    pub fn children(&mut self, path: &str) -> Vec<String> {
        let mut names = self.tree.children(path);
        let Some(tx) = self.tx.as_deref_mut() else { return names };
        tx.see(self.tree, path);
        let base = if path == "/" { String::new() } else { String::from(path) };
        names.retain(|n| !matches!(tx.changes.get(&alloc::format!("{base}/{n}")), Some(None)));
        let prefix = alloc::format!("{base}/");
        for (p, change) in tx.changes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(prefix.as_str())) {
            let rest = &p[prefix.len()..];
            if change.is_some() && !rest.is_empty() && !rest.contains('/') && !names.iter().any(|n| n == rest) {
                names.push(String::from(rest));
            }
        }
        names.sort();
        names
    }

    /// Writes a node (creating it, or replacing its value and permissions).
    pub fn set(&mut self, path: &str, value: Vec<u8>, perms: Vec<Perm>) -> Changes {
        match self.tx.as_deref_mut() {
            None => {
                self.tree.insert(String::from(path), value, perms.clone());
                Changes { written: alloc::vec![(String::from(path), perms)], removed: Vec::new() }
            }
            Some(tx) => {
                let existed = match tx.changes.get(path) {
                    Some(change) => change.as_ref().map(Node::owner),
                    None => self.tree.get(path).map(Node::owner),
                };
                tx.see(self.tree, path);
                if let Some(parent) = path::parent(path) {
                    tx.see(self.tree, parent);
                }
                if let Some(old) = existed {
                    *tx.added.entry(old).or_insert(0) -= 1;
                }
                *tx.added.entry(perms[0].domid).or_insert(0) += 1;
                tx.bytes += node_cost(path, value.len(), perms.len());
                tx.changes.insert(String::from(path), Some(Node { value, perms, generation: 0 }));
                Changes::default()
            }
        }
    }

    /// Removes a node and its subtree.
    pub fn remove(&mut self, path: &str) -> Changes {
        match self.tx.as_deref_mut() {
            None => Changes { written: Vec::new(), removed: self.tree.remove(path) },
            Some(tx) => {
                let mut doomed: Vec<(String, DomId)> =
                    self.tree.descendants(path).map(|(k, n)| (k.clone(), n.owner())).collect();
                if let Some(n) = self.tree.get(path) {
                    doomed.push((String::from(path), n.owner()));
                }
                let prefix = alloc::format!("{path}/");
                for (k, change) in tx.changes.iter() {
                    if (k == path || k.starts_with(prefix.as_str())) && change.is_some() && !doomed.iter().any(|(d, _)| d == k) {
                        doomed.push((k.clone(), change.as_ref().map_or(0, Node::owner)));
                    }
                }
                if let Some(parent) = path::parent(path) {
                    tx.see(self.tree, parent);
                }
                for (p, _) in &doomed {
                    tx.see(self.tree, p);
                }
                for (p, _) in doomed {
                    let owner = match tx.changes.get(&p) {
                        Some(Some(n)) => Some(n.owner()),
                        Some(None) => None,
                        None => self.tree.get(&p).map(Node::owner),
                    };
                    if let Some(owner) = owner {
                        *tx.added.entry(owner).or_insert(0) -= 1;
                    }
                    tx.bytes += node_cost(&p, 0, 0);
                    tx.changes.insert(p, None);
                }
                Changes::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PermKind;

    fn perms(owner: DomId) -> Vec<Perm> {
        alloc::vec![Perm { domid: owner, kind: PermKind::None }]
    }

    #[test]
    fn children_are_one_component_down() {
        let mut t = Tree::new();
        t.insert("/a".into(), b"1".to_vec(), perms(0));
        t.insert("/a/b".into(), b"2".to_vec(), perms(0));
        t.insert("/a/b/c".into(), b"3".to_vec(), perms(0));
        t.insert("/a-x".into(), b"4".to_vec(), perms(0));
        assert_eq!(t.children("/a"), ["b"]);
        assert!(t.children("/").contains(&String::from("a")));
        assert!(t.children("/").contains(&String::from("a-x")));
        let gone = t.remove("/a");
        assert_eq!(gone.len(), 3);
        assert!(t.get("/a-x").is_some());
    }

    #[test]
    fn a_transaction_conflicts_when_what_it_read_changed() {
        let mut t = Tree::new();
        t.insert("/a".into(), b"1".to_vec(), perms(0));
        let mut tx = Tx::default();
        let mut v = View { tree: &mut t, tx: Some(&mut tx) };
        assert_eq!(v.get("/a").unwrap().value, b"1");
        v.set("/b", b"2".to_vec(), perms(0));
        assert!(t.get("/b").is_none(), "not visible before commit");
        t.insert("/a".into(), b"changed".to_vec(), perms(0));
        assert_eq!(tx.commit(&mut t).unwrap_err(), XsError::Eagain);
        assert!(t.get("/b").is_none());
    }

    #[test]
    fn a_transaction_commits_its_overlay() {
        let mut t = Tree::new();
        let mut tx = Tx::default();
        let mut v = View { tree: &mut t, tx: Some(&mut tx) };
        v.set("/x", b"1".to_vec(), perms(2));
        v.set("/x/y", b"2".to_vec(), perms(2));
        assert_eq!(v.children("/x"), ["y"]);
        v.remove("/x/y");
        assert!(v.children("/x").is_empty());
        assert_eq!(tx.added_for(2), 1);
        let changes = tx.commit(&mut t).unwrap();
        assert_eq!(changes.written.len(), 1);
        assert_eq!(t.get("/x").unwrap().value, b"1");
        assert!(t.get("/x/y").is_none());
        assert_eq!(t.owned_by(2), 1);
    }

    #[test]
    fn a_new_child_conflicts_with_a_directory_read() {
        let mut t = Tree::new();
        t.insert("/d".into(), Vec::new(), perms(0));
        let mut tx = Tx::default();
        View { tree: &mut t, tx: Some(&mut tx) }.children("/d");
        t.insert("/d/new".into(), Vec::new(), perms(0));
        assert_eq!(tx.commit(&mut t).unwrap_err(), XsError::Eagain);
    }

    #[test]
    fn forgetting_a_domain_hands_its_nodes_to_domain_0() {
        let mut t = Tree::new();
        t.insert("/n".into(), Vec::new(), alloc::vec![Perm { domid: 4, kind: PermKind::None }, Perm { domid: 5, kind: PermKind::Read }]);
        t.insert("/m".into(), Vec::new(), alloc::vec![Perm { domid: 0, kind: PermKind::None }, Perm { domid: 4, kind: PermKind::Both }]);
        t.forget_domain(4);
        assert_eq!(t.get("/n").unwrap().perms[0].domid, 0);
        assert_eq!(t.get("/m").unwrap().perms.len(), 1);
        assert_eq!(t.owned_by(4), 0);
    }
}

//! The overlays of MioStream (paper §3.2): list, k-ary tree and 2D mesh,
//! with backup links, as a pure and deterministic data structure.
//!
//! A [`Topology`] holds one stream: the broadcaster (the root) and its
//! receivers. [`Topology::join`], [`Topology::leave`] and [`Topology::fail`]
//! return the [`Changes`]: every peer whose [`Links`] changed, so the
//! supervisor can send each its new link set. Links are a pure function of
//! the peers' positions, which makes repair cheap and bounded: a departure
//! moves at most one peer (tree, mesh) or none (list), and only the peers
//! around the changed positions are reconfigured.
//!
//! - **List**: ordered by capacity (faster first, slow peers at the tail);
//!   each node feeds the next and keeps backup links to the `list_backups`
//!   nodes after that, so when a node dies its successor is fed at once.
//! - **Tree**: a complete `tree_fanout`-ary tree in breadth-first positions
//!   (balanced, depth log_k N); a joiner with more capacity than its parent
//!   is swapped above it (the paper's max-heap); a departure is filled by
//!   the last node. Every node below the first level has a backup parent in
//!   another branch — its parent's sibling — which is never its descendant.
//! - **Mesh**: a grid `mesh_width` wide filled row by row, each node linked
//!   to its (up to) 8 neighbours; the broadcaster feeds `mesh_entries`
//!   nodes of the first row and chunks spread like a wave, duplicates
//!   dropped by sequence number. A departure is filled by the last node, so
//!   the grid stays dense.
//!
//! No IO, no clock, no randomness.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use miostream_protocol::signal::{Capacity, Links};
use miostream_protocol::{PeerId, TopologyKind};
use serde::Serialize;

pub mod failure;
pub use failure::FailureDistribution;

/// Overlay settings.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// List: backup links to this many nodes beyond the next one.
    pub list_backups: usize,
    /// Tree: children per node.
    pub tree_fanout: usize,
    /// Mesh: grid width.
    pub mesh_width: usize,
    /// Mesh: nodes the broadcaster feeds directly.
    pub mesh_entries: usize,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            list_backups: 2,
            tree_fanout: 2,
            mesh_width: 8,
            mesh_entries: 2,
        }
    }
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The peer is placed already (or is the root).
    #[error("{0} is already in the topology")]
    Duplicate(PeerId),
    /// The peer is not placed.
    #[error("{0} is not in the topology")]
    Unknown(PeerId),
}

/// The result of a change: every peer whose links changed (the root
/// included), each to be sent its new [`Links`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Peers to reconfigure.
    pub affected: Vec<PeerId>,
}

/// One node in a [`Snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotNode {
    /// The peer.
    pub peer: String,
    /// Hops from the broadcaster.
    pub depth: u32,
    /// Its links.
    pub parents: Vec<String>,
    /// Backup parents.
    pub backup_parents: Vec<String>,
    /// Mesh neighbours.
    pub neighbours: Vec<String>,
}

/// A serializable picture of the overlay, for the monitor.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Overlay kind.
    pub kind: String,
    /// The broadcaster.
    pub root: String,
    /// Every receiver.
    pub nodes: Vec<SnapshotNode>,
}

/// Position keys of the list: capacity first (descending), then arrival.
type ListKey = (Reverse<u64>, u64);

/// One stream's overlay.
#[derive(Debug)]
pub struct Topology {
    kind: TopologyKind,
    root: PeerId,
    config: TopologyConfig,
    /// Tree and mesh: position → peer (dense).
    slots: Vec<PeerId>,
    /// Tree and mesh: peer → position.
    slot_of: HashMap<PeerId, usize>,
    /// List: order.
    list: BTreeMap<ListKey, PeerId>,
    /// List: peer → key.
    key_of: HashMap<PeerId, ListKey>,
    capacity: HashMap<PeerId, u64>,
    arrivals: u64,
}

/// A peer's capacity as one comparable number (upload first, then low RTT).
fn score(c: Capacity) -> u64 {
    (u64::from(c.upload_kbps) << 32) | u64::from(u32::MAX - c.rtt_ms)
}

impl Topology {
    /// An empty overlay under the broadcaster `root`.
    pub fn new(kind: TopologyKind, root: PeerId, mut config: TopologyConfig) -> Self {
        config.tree_fanout = config.tree_fanout.max(1);
        config.mesh_width = config.mesh_width.max(1);
        config.mesh_entries = config.mesh_entries.clamp(1, config.mesh_width);
        Self {
            kind,
            root,
            config,
            slots: Vec::new(),
            slot_of: HashMap::new(),
            list: BTreeMap::new(),
            key_of: HashMap::new(),
            capacity: HashMap::new(),
            arrivals: 0,
        }
    }

    /// The overlay kind.
    pub fn kind(&self) -> TopologyKind {
        self.kind
    }

    /// The broadcaster.
    pub fn root(&self) -> PeerId {
        self.root
    }

    /// Receivers placed.
    pub fn len(&self) -> usize {
        self.capacity.len()
    }

    /// Whether no receiver is placed.
    pub fn is_empty(&self) -> bool {
        self.capacity.is_empty()
    }

    /// Whether `peer` is placed (the root counts).
    pub fn contains(&self, peer: PeerId) -> bool {
        peer == self.root || self.capacity.contains_key(&peer)
    }

    /// A receiver joins.
    pub fn join(&mut self, peer: PeerId, capacity: Capacity) -> Result<Changes, TopologyError> {
        if self.contains(peer) {
            return Err(TopologyError::Duplicate(peer));
        }
        let score = score(capacity);
        let seeds: Vec<PeerId> = match self.kind {
            TopologyKind::List => {
                let key = (Reverse(score), self.arrivals + 1);
                let k = self.config.list_backups + 1;
                let mut around = self.list_before(&key, k);
                around.extend(self.list.range(key..).take(k).map(|(_, p)| *p));
                around
            }
            TopologyKind::Tree => {
                // The new slot's parent; a swap upwards adds its own region below.
                self.tree_parent(self.slots.len())
                    .map(|q| self.slots[q])
                    .into_iter()
                    .collect()
            }
            TopologyKind::Mesh => {
                let p = self.slots.len();
                self.slots.push(peer);
                let around = self
                    .mesh_neighbours(p)
                    .filter(|q| *q != p)
                    .map(|q| self.slots[q])
                    .collect();
                self.slots.pop();
                around
            }
        };
        let mut before = self.before(&seeds);
        self.capacity.insert(peer, score);
        let mut moved = vec![peer];
        match self.kind {
            TopologyKind::List => {
                self.arrivals += 1;
                let key = (Reverse(score), self.arrivals);
                self.list.insert(key, peer);
                self.key_of.insert(peer, key);
            }
            TopologyKind::Tree | TopologyKind::Mesh => {
                let mut p = self.slots.len();
                self.slots.push(peer);
                self.slot_of.insert(peer, p);
                if self.kind == TopologyKind::Tree {
                    // Max-heap: a faster joiner rises above slower parents.
                    while let Some(parent) = self.tree_parent(p) {
                        let q = self.slots[parent];
                        if self.capacity[&q] >= score {
                            break;
                        }
                        // Links around the swapped parent, as they are now.
                        for (peer, links) in self.before(&[q]) {
                            before.entry(peer).or_insert(links);
                        }
                        self.swap(p, parent);
                        moved.push(q);
                        p = parent;
                    }
                }
            }
        }
        Ok(self.diff(before, &moved))
    }

    /// A receiver leaves politely.
    pub fn leave(&mut self, peer: PeerId) -> Result<Changes, TopologyError> {
        self.remove(peer)
    }

    /// A receiver failed. Same repair as a leave: the overlay cannot tell
    /// them apart, only the data plane's timing differs.
    pub fn fail(&mut self, peer: PeerId) -> Result<Changes, TopologyError> {
        self.remove(peer)
    }

    fn remove(&mut self, peer: PeerId) -> Result<Changes, TopologyError> {
        if !self.capacity.contains_key(&peer) {
            return Err(TopologyError::Unknown(peer));
        }
        let mover = match self.kind {
            TopologyKind::List => None,
            _ => self.slots.last().copied().filter(|m| *m != peer),
        };
        let seeds: Vec<PeerId> = std::iter::once(peer).chain(mover).collect();
        let before = self.before(&seeds);
        match self.kind {
            TopologyKind::List => {
                if let Some(key) = self.key_of.remove(&peer) {
                    self.list.remove(&key);
                }
            }
            TopologyKind::Tree | TopologyKind::Mesh => {
                let p = self.slot_of[&peer];
                let last = self.slots.len() - 1;
                if p != last {
                    // The last node fills the hole: one peer moves.
                    self.swap(p, last);
                }
                self.slots.pop();
                self.slot_of.remove(&peer);
            }
        }
        self.capacity.remove(&peer);
        Ok(self.diff(before, &mover.into_iter().collect::<Vec<_>>()))
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.slots.swap(a, b);
        self.slot_of.insert(self.slots[a], a);
        self.slot_of.insert(self.slots[b], b);
    }

    /// Peers within two hops of `seeds` (and the root): every peer whose
    /// links a change at the seeds can alter, with its links now.
    fn before(&self, seeds: &[PeerId]) -> HashMap<PeerId, Links> {
        let mut region: BTreeSet<PeerId> = seeds.iter().copied().chain([self.root]).collect();
        for _ in 0..2 {
            let next: Vec<PeerId> = region
                .iter()
                .filter_map(|p| self.links(*p))
                .flat_map(|l| l.all_peers().collect::<Vec<_>>())
                .collect();
            region.extend(next);
        }
        region
            .into_iter()
            .filter_map(|p| self.links(p).map(|l| (p, l)))
            .collect()
    }

    /// The peers whose links differ from `before`, looking also at the
    /// neighbourhood of the peers that moved or arrived.
    fn diff(&self, before: HashMap<PeerId, Links>, moved: &[PeerId]) -> Changes {
        let mut candidates: BTreeSet<PeerId> = before.keys().copied().collect();
        for p in moved {
            candidates.insert(*p);
            if let Some(l) = self.links(*p) {
                candidates.extend(l.all_peers());
            }
        }
        let affected = candidates
            .into_iter()
            .filter(|p| match self.links(*p) {
                Some(now) => before.get(p) != Some(&now),
                None => false,
            })
            .collect();
        Changes { affected }
    }

    // ----- tree geometry -------------------------------------------------

    /// Parent position (`None`: the root).
    fn tree_parent(&self, p: usize) -> Option<usize> {
        let k = self.config.tree_fanout;
        (p >= k).then(|| (p - k) / k)
    }

    fn tree_children(&self, p: usize) -> impl Iterator<Item = usize> + '_ {
        let k = self.config.tree_fanout;
        let first = k * p + k;
        (first..first + k).filter(move |c| *c < self.slots.len())
    }

    /// The backup parent: the parent's next sibling (another branch).
    fn tree_backup(&self, p: usize) -> Option<usize> {
        let k = self.config.tree_fanout;
        let q = self.tree_parent(p)?;
        if k == 1 {
            // A chain: the grandparent.
            return self.tree_parent(q);
        }
        let first_sibling = match self.tree_parent(q) {
            None => 0,
            Some(g) => k * g + k,
        };
        let uncle = first_sibling + (q - first_sibling + 1) % k;
        (uncle < self.slots.len()).then_some(uncle)
    }

    fn tree_depth(&self, mut p: usize) -> u32 {
        let mut d = 1;
        while let Some(q) = self.tree_parent(p) {
            d += 1;
            p = q;
        }
        d
    }

    // ----- mesh geometry -------------------------------------------------

    fn mesh_neighbours(&self, p: usize) -> impl Iterator<Item = usize> + '_ {
        let w = self.config.mesh_width as i64;
        let (r, c) = ((p as i64) / w, (p as i64) % w);
        let n = self.slots.len() as i64;
        [
            (-1i64, -1i64),
            (-1, 0),
            (-1, 1),
            (0, -1),
            (0, 1),
            (1, -1),
            (1, 0),
            (1, 1),
        ]
        .into_iter()
        .filter_map(move |(dr, dc)| {
            let (nr, nc) = (r + dr, c + dc);
            (nr >= 0 && nc >= 0 && nc < w && nr * w + nc < n).then(|| (nr * w + nc) as usize)
        })
    }

    fn mesh_is_entry(&self, p: usize) -> bool {
        p < self.config.mesh_entries
    }

    /// Rings of the wave from the entry points (Chebyshev distance).
    fn mesh_depth(&self, p: usize) -> u32 {
        let w = self.config.mesh_width;
        let (r, c) = (p / w, p % w);
        let to_entry = (0..self.config.mesh_entries.min(self.slots.len()))
            .map(|e| r.max(c.abs_diff(e % w)))
            .min()
            .unwrap_or(0);
        to_entry as u32 + 1
    }

    // ----- list geometry -------------------------------------------------

    fn list_before(&self, key: &ListKey, n: usize) -> Vec<PeerId> {
        self.list
            .range(..key)
            .rev()
            .take(n)
            .map(|(_, p)| *p)
            .collect()
    }

    fn list_after(&self, key: &ListKey, n: usize) -> Vec<PeerId> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.list
            .range((Excluded(key), Unbounded))
            .take(n)
            .map(|(_, p)| *p)
            .collect()
    }

    // ----- queries -------------------------------------------------------

    /// The full link set of a peer (the root included).
    pub fn links(&self, peer: PeerId) -> Option<Links> {
        if peer == self.root {
            return Some(self.root_links());
        }
        if !self.capacity.contains_key(&peer) {
            return None;
        }
        let mut l = Links::default();
        match self.kind {
            TopologyKind::List => {
                let key = self.key_of[&peer];
                let k = self.config.list_backups;
                let before = self.list_before(&key, k + 1);
                l.parents = vec![before.first().copied().unwrap_or(self.root)];
                // Backups: further up the list, then the root itself.
                for j in 1..=k {
                    match before.get(j) {
                        Some(p) => l.backup_parents.push(*p),
                        None => {
                            if l.parents[0] != self.root {
                                l.backup_parents.push(self.root);
                            }
                            break;
                        }
                    }
                }
                let after = self.list_after(&key, k + 1);
                l.children = after.first().copied().into_iter().collect();
                l.backup_children = after.iter().skip(1).copied().collect();
            }
            TopologyKind::Tree => {
                let p = self.slot_of[&peer];
                l.parents = vec![self.tree_parent(p).map_or(self.root, |q| self.slots[q])];
                if let Some(b) = self.tree_backup(p) {
                    l.backup_parents.push(self.slots[b]);
                }
                l.children = self.tree_children(p).map(|c| self.slots[c]).collect();
                l.backup_children = self.tree_backup_children(p);
            }
            TopologyKind::Mesh => {
                let p = self.slot_of[&peer];
                if self.mesh_is_entry(p) {
                    l.parents = vec![self.root];
                }
                l.neighbours = self.mesh_neighbours(p).map(|q| self.slots[q]).collect();
            }
        }
        Some(l)
    }

    /// Nodes whose backup parent is position `p`: the children of p's
    /// siblings whose backup is p.
    fn tree_backup_children(&self, p: usize) -> Vec<PeerId> {
        let k = self.config.tree_fanout;
        let mut out = Vec::new();
        let first_sibling = match self.tree_parent(p) {
            None => 0,
            Some(g) => k * g + k,
        };
        let candidates: Vec<usize> = if k == 1 {
            // chain: grandchildren
            self.tree_children(p)
                .flat_map(|c| self.tree_children(c).collect::<Vec<_>>())
                .collect()
        } else {
            (first_sibling..first_sibling + k)
                .filter(|s| *s != p && *s < self.slots.len())
                .flat_map(|s| self.tree_children(s).collect::<Vec<_>>())
                .collect()
        };
        for c in candidates {
            if self.tree_backup(c) == Some(p) {
                out.push(self.slots[c]);
            }
        }
        out
    }

    fn root_links(&self) -> Links {
        let mut l = Links::default();
        match self.kind {
            TopologyKind::List => {
                let mut it = self.list.values();
                l.children = it.next().copied().into_iter().collect();
                // The root backs up the first nodes of the list.
                l.backup_children = self
                    .list
                    .values()
                    .skip(1)
                    .take(self.config.list_backups)
                    .copied()
                    .collect();
            }
            TopologyKind::Tree => {
                l.children = (0..self.config.tree_fanout.min(self.slots.len()))
                    .map(|p| self.slots[p])
                    .collect();
            }
            TopologyKind::Mesh => {
                l.children = (0..self.config.mesh_entries.min(self.slots.len()))
                    .map(|p| self.slots[p])
                    .collect();
            }
        }
        l
    }

    /// Whether `a` and `b` share any edge (so they may exchange signaling).
    pub fn is_linked(&self, a: PeerId, b: PeerId) -> bool {
        a != b && self.links(a).is_some_and(|l| l.all_peers().any(|p| p == b))
    }

    /// Hops from the broadcaster (0 for the root).
    pub fn depth(&self, peer: PeerId) -> Option<u32> {
        if peer == self.root {
            return Some(0);
        }
        match self.kind {
            TopologyKind::List => {
                let key = self.key_of.get(&peer)?;
                Some(self.list.range(..key).count() as u32 + 1)
            }
            TopologyKind::Tree => Some(self.tree_depth(*self.slot_of.get(&peer)?)),
            TopologyKind::Mesh => Some(self.mesh_depth(*self.slot_of.get(&peer)?)),
        }
    }

    /// Every receiver, in overlay order.
    pub fn peers(&self) -> Vec<PeerId> {
        match self.kind {
            TopologyKind::List => self.list.values().copied().collect(),
            _ => self.slots.clone(),
        }
    }

    /// A picture of the overlay for the monitor.
    pub fn snapshot(&self) -> Snapshot {
        let s = |v: &[PeerId]| v.iter().map(|p| p.to_string()).collect();
        Snapshot {
            kind: self.kind.to_string(),
            root: self.root.to_string(),
            nodes: self
                .peers()
                .into_iter()
                .filter_map(|p| {
                    let l = self.links(p)?;
                    Some(SnapshotNode {
                        peer: p.to_string(),
                        depth: self.depth(p).unwrap_or(0),
                        parents: s(&l.parents),
                        backup_parents: s(&l.backup_parents),
                        neighbours: s(&l.neighbours),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;

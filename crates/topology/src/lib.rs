//! The overlays of MioStream (paper §3.2): list, k-ary tree and 2D mesh,
//! with backup links, as a pure and deterministic data structure.
//!
//! A [`Topology`] holds one stream: the broadcaster (the root) and its
//! receivers. [`Topology::join`], [`Topology::leave`] and [`Topology::fail`]
//! return the [`Changes`]: every peer whose [`Links`] changed, so the
//! supervisor can send each its new link set. Links are a pure function of
//! the peers' positions, which makes repair cheap and bounded: a departure
//! moves at most one peer (tree, mesh) or none (list), and only the peers
//! around the changed positions are reconfigured. A change computes the
//! links of just those peers, before and after, so it costs O(1) (tree,
//! mesh; plus the max-heap rise of a fast joiner) or O(log N) (list: where
//! a joiner goes), whatever the overlay's size.
//!
//! - **List**: the relays ordered by capacity (faster first); each feeds
//!   the next and keeps backup links to the `list_backups` relays after
//!   that, so when a relay dies its successor is fed at once.
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
//! **Leaf-only peers.** A peer whose uplink cannot carry the copies a
//! relay sends ([`Topology::join_leaf`]; the supervisor decides from its
//! measured capacity) is placed where it feeds nobody: in the tree and the
//! mesh, relays take the first positions and leaf-only peers the last ones
//! (a tree whose leaf-only peers are no more than its relays gives them no
//! child and no backup child). A relay that joins takes the first
//! leaf-only position, which moves to the end; a relay that departs is
//! replaced by the last relay, whose place the last leaf-only peer takes:
//! still at most two moves per change. In the mesh and the list the grid
//! or the chain holds the relays only, and each leaf-only peer hangs from
//! two of them — a parent that feeds it and a backup parent — chosen among
//! the relays that feed and back up the fewest (the broadcaster feeds them
//! while there is no relay); a departing relay's leaf-only peers move to
//! their backup and get a new one, so no leaf-only peer ever feeds another
//! (a row of Wi-Fi laptops would otherwise relay to the next one, and a
//! list's tail of them would each carry the stream and its backups).
//!
//! No IO, no clock, no randomness.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};

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

/// No list node (the end of the list).
const NIL: usize = usize::MAX;

/// One receiver of the list, in a slab, linked to its neighbours in list
/// order so a node's links are a walk of a few steps.
#[derive(Debug, Clone, Copy)]
struct ListNode {
    peer: PeerId,
    key: ListKey,
    prev: usize,
    next: usize,
}

/// Builds [`PeerHasher`]s with a per-overlay secret seed (drawn like std's
/// `RandomState`, so peers cannot plan collisions). Nothing iterates a
/// hashed map, so the overlay's behaviour stays deterministic.
#[derive(Debug, Clone, Copy)]
struct PeerHash {
    seed: u64,
}

impl PeerHash {
    fn new() -> Self {
        Self {
            seed: std::hash::RandomState::new().hash_one(0x6d69_6f73_7472_6561_u64),
        }
    }
}

impl BuildHasher for PeerHash {
    type Hasher = PeerHasher;

    fn build_hasher(&self) -> PeerHasher {
        PeerHasher(self.seed)
    }
}

/// A peer id is 16 bytes: one folded 64×64→128-bit multiply per 16 bytes
/// instead of SipHash.
struct PeerHasher(u64);

impl Hasher for PeerHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut buf = [0u8; 16];
            buf[..chunk.len()].copy_from_slice(chunk);
            let w = u128::from_le_bytes(buf);
            let (a, b) = (w as u64, (w >> 64) as u64);
            let m = u128::from(self.0 ^ a ^ 0x243f_6a88_85a3_08d3)
                * u128::from(b ^ 0x1319_8a2e_0370_7344 ^ chunk.len() as u64);
            self.0 = (m as u64) ^ ((m >> 64) as u64);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Reused buffers of a change: the positions (or list nodes) around it and
/// the links there before it, so a join or leave allocates nothing but its
/// [`Changes`].
#[derive(Debug, Default)]
struct Scratch {
    /// Positions (tree, mesh) or list nodes whose links the change can alter.
    around: Vec<usize>,
    /// Peer, where it was, its links before the change; the first `used`
    /// entries are current.
    before: Vec<(PeerId, usize, Links)>,
    used: usize,
    /// Links after the change.
    now: Links,
}

/// One stream's overlay.
#[derive(Debug)]
pub struct Topology {
    kind: TopologyKind,
    root: PeerId,
    config: TopologyConfig,
    /// Peer → its position (tree, mesh) or list node.
    index: HashMap<PeerId, usize, PeerHash>,
    /// Tree and mesh: position → peer (dense).
    slots: Vec<PeerId>,
    /// Tree and mesh: position → capacity score.
    scores: Vec<u64>,
    /// Tree and mesh: positions `..relays` hold relays, the rest leaf-only
    /// peers.
    relays: usize,
    /// List: leaf-only peers placed.
    list_leaves: usize,
    /// Mesh and list: which relays a leaf-only peer hangs from.
    hangs: HashMap<PeerId, Hang, PeerHash>,
    /// Mesh and list: the leaf-only peers each relay (or the root) feeds and backs up.
    feeds: HashMap<PeerId, Fed, PeerHash>,
    /// Mesh and list: relays by how many leaf-only peers they feed, and back up.
    by_fed: BTreeSet<(usize, PeerId)>,
    by_backed: BTreeSet<(usize, PeerId)>,
    /// Mesh and list: leaf-only peers without a backup (there was one relay or none).
    unbacked: BTreeSet<PeerId>,
    /// List: the nodes (a slab; freed ones are in `free`).
    nodes: Vec<ListNode>,
    free: Vec<usize>,
    /// List: first and last node.
    head: usize,
    tail: usize,
    /// List: order (finds where a joiner goes).
    order: BTreeMap<ListKey, usize>,
    arrivals: u64,
    scratch: Scratch,
}

/// Mesh and list: where a leaf-only peer hangs.
#[derive(Debug, Clone, Copy)]
struct Hang {
    /// The relay that feeds it (the root while there is no relay).
    parent: PeerId,
    /// The relay that backs it up.
    backup: Option<PeerId>,
}

/// Mesh and list: the leaf-only peers a relay (or the root) feeds and backs up.
#[derive(Debug, Clone, Default)]
struct Fed {
    children: Vec<PeerId>,
    backup_children: Vec<PeerId>,
}

/// The score of a leaf-only peer: below every relay's.
const LEAF_SCORE: u64 = 0;

/// A peer's capacity as one comparable number (upload first, then low RTT).
fn score(c: Capacity) -> u64 {
    (u64::from(c.upload_kbps) << 32) | u64::from(u32::MAX - c.rtt_ms)
}

fn clear(l: &mut Links) {
    l.parents.clear();
    l.children.clear();
    l.backup_parents.clear();
    l.backup_children.clear();
    l.neighbours.clear();
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
            index: HashMap::with_hasher(PeerHash::new()),
            slots: Vec::new(),
            scores: Vec::new(),
            relays: 0,
            list_leaves: 0,
            hangs: HashMap::with_hasher(PeerHash::new()),
            feeds: HashMap::with_hasher(PeerHash::new()),
            by_fed: BTreeSet::new(),
            by_backed: BTreeSet::new(),
            unbacked: BTreeSet::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            order: BTreeMap::new(),
            arrivals: 0,
            scratch: Scratch::default(),
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
        self.index.len()
    }

    /// Whether no receiver is placed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `peer` is placed (the root counts).
    pub fn contains(&self, peer: PeerId) -> bool {
        peer == self.root || self.index.contains_key(&peer)
    }

    /// A receiver joins as a relay.
    pub fn join(&mut self, peer: PeerId, capacity: Capacity) -> Result<Changes, TopologyError> {
        self.join_as(peer, capacity, true)
    }

    /// A receiver that must feed nobody joins (see the crate docs).
    pub fn join_leaf(
        &mut self,
        peer: PeerId,
        capacity: Capacity,
    ) -> Result<Changes, TopologyError> {
        self.join_as(peer, capacity, false)
    }

    /// Whether `peer` was placed as a relay (`None`: not placed).
    pub fn is_relay(&self, peer: PeerId) -> Option<bool> {
        let &at = self.index.get(&peer)?;
        Some(match self.kind {
            TopologyKind::List => self.nodes[at].key.0 .0 != LEAF_SCORE,
            _ => at < self.relays,
        })
    }

    /// Leaf-only receivers placed.
    pub fn leaves(&self) -> usize {
        match self.kind {
            TopologyKind::List => self.list_leaves,
            _ => self.slots.len() - self.relays,
        }
    }

    fn join_as(
        &mut self,
        peer: PeerId,
        capacity: Capacity,
        relay: bool,
    ) -> Result<Changes, TopologyError> {
        if self.contains(peer) {
            return Err(TopologyError::Duplicate(peer));
        }
        // A relay's score is above every leaf-only peer's.
        let score = if relay {
            score(capacity).max(LEAF_SCORE + 1)
        } else {
            LEAF_SCORE
        };
        let mut around = std::mem::take(&mut self.scratch.around);
        around.clear();
        match self.kind {
            TopologyKind::List => {
                self.arrivals += 1;
                let key = (Reverse(score), self.arrivals);
                let prev = self.order.range(..key).next_back().map_or(NIL, |(_, i)| *i);
                let next = if prev == NIL {
                    self.head
                } else {
                    self.nodes[prev].next
                };
                // The nodes whose windows of k + 1 either way span the gap.
                self.list_around(prev, next, &mut around);
                self.scratch.around = around;
                self.record_before();
                let node = ListNode {
                    peer,
                    key,
                    prev,
                    next,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.nodes[i] = node;
                        i
                    }
                    None => {
                        self.nodes.push(node);
                        self.nodes.len() - 1
                    }
                };
                match prev {
                    NIL => self.head = i,
                    p => self.nodes[p].next = i,
                }
                match next {
                    NIL => self.tail = i,
                    n => self.nodes[n].prev = i,
                }
                self.order.insert(key, i);
                self.index.insert(peer, i);
                if relay {
                    self.relay_added(peer);
                } else {
                    self.list_leaves += 1;
                    self.hang_leaf(peer);
                }
                self.tidy_leaves();
            }
            TopologyKind::Tree | TopologyKind::Mesh => {
                let n = self.slots.len();
                // A relay goes to the first leaf-only position, whose peer
                // moves to the new last one; a leaf-only peer goes last.
                let at = if relay { self.relays } else { n };
                // Positions that change hands: the new slot, `at` and, in
                // the tree, the parents a faster relay swaps with (max-heap).
                around.extend([n, at]);
                if self.kind == TopologyKind::Tree {
                    if relay {
                        let mut p = at;
                        while let Some(q) = self.tree_parent(p) {
                            if self.scores[q] >= score {
                                break;
                            }
                            around.push(q);
                            p = q;
                        }
                    }
                    // ... and every position linked to those, once n + 1 are placed.
                    for i in 0..around.len() {
                        self.adjacent(around[i], n + 1, &mut around);
                    }
                } else if relay {
                    // The mesh's grid (the relays) grows by one, at `at`; a
                    // leaf-only joiner moves nobody (it hangs from relays,
                    // recorded as they are chosen).
                    self.adjacent(at, self.relays + 1, &mut around);
                }
                self.scratch.around = around;
                self.record_before();
                self.slots.push(peer);
                self.scores.push(score);
                self.index.insert(peer, n);
                let mut p = n;
                if relay {
                    if at != n {
                        self.swap(at, n);
                    }
                    self.relays += 1;
                    p = at;
                }
                if self.kind == TopologyKind::Tree && relay {
                    while let Some(q) = self.tree_parent(p) {
                        if self.scores[q] >= score {
                            break;
                        }
                        self.swap(p, q);
                        p = q;
                    }
                }
                if self.kind == TopologyKind::Mesh {
                    if relay {
                        self.relay_added(peer);
                    } else {
                        self.hang_leaf(peer);
                    }
                    self.tidy_leaves();
                }
            }
        }
        Ok(self.changes(None, Some(peer)))
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
        let Some(&at) = self.index.get(&peer) else {
            return Err(TopologyError::Unknown(peer));
        };
        let mut around = std::mem::take(&mut self.scratch.around);
        around.clear();
        match self.kind {
            TopologyKind::List => {
                let ListNode {
                    key, prev, next, ..
                } = self.nodes[at];
                around.push(at);
                self.list_around(prev, next, &mut around);
                self.scratch.around = around;
                self.record_before();
                if key.0 .0 == LEAF_SCORE {
                    self.unhang_leaf(peer);
                } else {
                    self.relay_removed(peer);
                }
                match prev {
                    NIL => self.head = next,
                    p => self.nodes[p].next = next,
                }
                match next {
                    NIL => self.tail = prev,
                    n => self.nodes[n].prev = prev,
                }
                self.order.remove(&key);
                self.free.push(at);
                // Gone from the index before the leaves are tidied: no
                // relay it was can be chosen.
                self.index.remove(&peer);
                if key.0 .0 == LEAF_SCORE {
                    self.list_leaves -= 1;
                }
                self.tidy_leaves();
            }
            TopologyKind::Tree | TopologyKind::Mesh => {
                // The last node of the departed peer's kind fills the hole;
                // a relay's hole at the end of the relays is filled by the
                // last leaf-only peer: at most two peers move.
                let n = self.slots.len();
                let last = n - 1;
                let relay = at < self.relays;
                let last_relay = self.relays.saturating_sub(1);
                around.extend([at, last, last_relay]);
                if self.kind == TopologyKind::Tree {
                    for p in [at, last, last_relay] {
                        self.adjacent(p, n, &mut around);
                    }
                } else if relay {
                    // The grid loses its last position; `at` gets a new peer.
                    for p in [at, last_relay] {
                        self.adjacent(p, self.relays, &mut around);
                    }
                }
                self.scratch.around = around;
                self.record_before();
                if self.kind == TopologyKind::Mesh {
                    // While every position is where it was: the peers whose
                    // hangs change are recorded before they do.
                    if relay {
                        self.relay_removed(peer);
                    } else {
                        self.unhang_leaf(peer);
                    }
                }
                if relay {
                    if at != last_relay {
                        self.swap(at, last_relay);
                    }
                    if last_relay != last {
                        self.swap(last_relay, last);
                    }
                    self.relays -= 1;
                } else if at != last {
                    self.swap(at, last);
                }
                self.slots.pop();
                self.scores.pop();
                self.index.remove(&peer);
                if self.kind == TopologyKind::Mesh {
                    self.tidy_leaves();
                }
            }
        }
        self.index.remove(&peer);
        Ok(self.changes(Some(peer), None))
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.slots.swap(a, b);
        self.scores.swap(a, b);
        self.index.insert(self.slots[a], a);
        self.index.insert(self.slots[b], b);
    }

    /// Before a change: the links of the root and of the receivers at
    /// `scratch.around` (every position or node whose links it can alter).
    fn record_before(&mut self) {
        let mut s = std::mem::take(&mut self.scratch);
        s.around.sort_unstable();
        s.around.dedup();
        s.used = 0;
        self.record(&mut s, self.root, NIL);
        let placed = match self.kind {
            TopologyKind::List => self.nodes.len(),
            _ => self.slots.len(),
        };
        for i in 0..s.around.len() {
            let at = s.around[i];
            // Past `placed`: a slot that only the change creates.
            if at < placed {
                self.record(&mut s, self.peer_at(at), at);
            }
        }
        self.scratch = s;
    }

    /// Keeps the links of `peer`, at `at` ([`NIL`]: the root), in the next
    /// reused entry of `s.before`.
    fn record(&self, s: &mut Scratch, peer: PeerId, at: usize) {
        if s.used == s.before.len() {
            s.before.push((peer, at, Links::default()));
        }
        let entry = &mut s.before[s.used];
        s.used += 1;
        entry.0 = peer;
        entry.1 = at;
        if at == NIL {
            self.root_links_into(&mut entry.2);
        } else {
            self.links_at(at, &mut entry.2);
        }
    }

    /// After a change: every recorded peer (but the one `gone`) whose links
    /// differ now, and the one `joined`; in id order.
    fn changes(&mut self, gone: Option<PeerId>, joined: Option<PeerId>) -> Changes {
        let mut s = std::mem::take(&mut self.scratch);
        let mut affected: Vec<PeerId> = Vec::with_capacity(s.used + 1);
        for (peer, at, was) in &s.before[..s.used] {
            if Some(*peer) == gone {
                continue;
            }
            if *at == NIL {
                self.root_links_into(&mut s.now);
            } else {
                // Where it is now: where it was, unless it moved.
                let now = if self.peer_at_checked(*at) == Some(*peer) {
                    *at
                } else {
                    self.index[peer]
                };
                self.links_at(now, &mut s.now);
            }
            if s.now != *was {
                affected.push(*peer);
            }
        }
        affected.extend(joined);
        affected.sort_unstable();
        self.scratch = s;
        Changes { affected }
    }

    /// The receiver at a position (tree, mesh) or list node.
    fn peer_at(&self, at: usize) -> PeerId {
        match self.kind {
            TopologyKind::List => self.nodes[at].peer,
            _ => self.slots[at],
        }
    }

    fn peer_at_checked(&self, at: usize) -> Option<PeerId> {
        match self.kind {
            TopologyKind::List => self.nodes.get(at).map(|n| n.peer),
            _ => self.slots.get(at).copied(),
        }
    }

    /// Positions linked to `p` when `n` receivers are placed (tree, mesh;
    /// the root aside).
    fn adjacent(&self, p: usize, n: usize, out: &mut Vec<usize>) {
        match self.kind {
            TopologyKind::List => {}
            TopologyKind::Tree => {
                out.extend(self.tree_parent(p));
                out.extend(self.tree_backup(p, n));
                out.extend(self.tree_children(p, n));
                self.tree_backup_children(p, n, |c| out.push(c));
            }
            // Mesh: `n` is the grid's size (the relays placed).
            TopologyKind::Mesh => out.extend(self.mesh_neighbours(p, n)),
        }
    }

    /// List: whether node `q` is a relay (not [`NIL`], not leaf-only).
    fn list_relay(&self, q: usize) -> bool {
        q != NIL && self.nodes[q].key.0 .0 != LEAF_SCORE
    }

    // ----- mesh and list: leaf-only peers hang from relays -------------------

    /// Before `peer`'s links change outside the positions a change
    /// recorded: keeps what they were (once).
    fn touch(&mut self, peer: PeerId) {
        let at = if peer == self.root {
            NIL
        } else {
            match self.index.get(&peer) {
                Some(&at) => at,
                None => return,
            }
        };
        let mut s = std::mem::take(&mut self.scratch);
        if !s.before[..s.used].iter().any(|(p, _, _)| *p == peer) {
            self.record(&mut s, peer, at);
        }
        self.scratch = s;
    }

    /// The relay that feeds (or backs up) the fewest, but not one of `except`.
    fn least(set: &BTreeSet<(usize, PeerId)>, except: &[PeerId]) -> Option<PeerId> {
        set.iter().map(|(_, p)| *p).find(|p| !except.contains(p))
    }

    /// Records `leaf` as fed (or backed up) by `by`, keeping the load order.
    fn hang_on(&mut self, by: PeerId, leaf: PeerId, backup: bool) {
        self.touch(by);
        let fed = self.feeds.entry(by).or_default();
        let list = if backup {
            &mut fed.backup_children
        } else {
            &mut fed.children
        };
        let load = list.len();
        list.push(leaf);
        if by != self.root {
            let set = if backup {
                &mut self.by_backed
            } else {
                &mut self.by_fed
            };
            set.remove(&(load, by));
            set.insert((load + 1, by));
        }
    }

    fn unhang(&mut self, by: PeerId, leaf: PeerId, backup: bool) {
        self.touch(by);
        let Some(fed) = self.feeds.get_mut(&by) else {
            return;
        };
        let list = if backup {
            &mut fed.backup_children
        } else {
            &mut fed.children
        };
        let load = list.len();
        list.retain(|p| *p != leaf);
        if by != self.root && list.len() < load {
            let set = if backup {
                &mut self.by_backed
            } else {
                &mut self.by_fed
            };
            set.remove(&(load, by));
            set.insert((load - 1, by));
        }
    }

    /// Gives `leaf` (fed by `parent`) a backup relay, if there is one.
    fn back_up(&mut self, leaf: PeerId, parent: PeerId) -> Option<PeerId> {
        let backup = Self::least(&self.by_backed, &[parent]);
        if let Some(b) = backup {
            self.hang_on(b, leaf, true);
        }
        backup
    }

    fn set_hang(&mut self, leaf: PeerId, hang: Hang) {
        if hang.backup.is_none() {
            self.unbacked.insert(leaf);
        } else {
            self.unbacked.remove(&leaf);
        }
        self.hangs.insert(leaf, hang);
    }

    fn hang_leaf(&mut self, leaf: PeerId) {
        let parent = Self::least(&self.by_fed, &[]).unwrap_or(self.root);
        self.hang_on(parent, leaf, false);
        let backup = self.back_up(leaf, parent);
        self.set_hang(leaf, Hang { parent, backup });
    }

    fn unhang_leaf(&mut self, leaf: PeerId) {
        self.unbacked.remove(&leaf);
        if let Some(h) = self.hangs.remove(&leaf) {
            self.unhang(h.parent, leaf, false);
            if let Some(b) = h.backup {
                self.unhang(b, leaf, true);
            }
        }
    }

    fn relay_added(&mut self, relay: PeerId) {
        self.by_fed.insert((0, relay));
        self.by_backed.insert((0, relay));
        self.feeds.insert(relay, Fed::default());
    }

    /// Moves `leaf` to be fed by `to`; if `to` was its backup, its old
    /// parent backs it up instead.
    fn move_leaf(&mut self, leaf: PeerId, to: PeerId) {
        let Some(h) = self.hangs.get(&leaf).copied() else {
            return;
        };
        self.touch(leaf);
        self.unhang(h.parent, leaf, false);
        let mut backup = h.backup;
        if backup == Some(to) {
            self.unhang(to, leaf, true);
            backup = (h.parent != self.root).then_some(h.parent);
            if let Some(b) = backup {
                self.hang_on(b, leaf, true);
            }
        }
        self.hang_on(to, leaf, false);
        self.set_hang(leaf, Hang { parent: to, backup });
    }

    /// After every mesh or list change, a bounded step towards where the leaf-only
    /// peers belong: up to two of those the root feeds (there was no relay
    /// when they came) move to relays, one moves from the relay feeding the
    /// most to the one feeding the fewest if they differ by two, and up to
    /// two without a backup get one.
    fn tidy_leaves(&mut self) {
        let root = self.root;
        for _ in 0..2 {
            let orphan = self
                .feeds
                .get(&root)
                .and_then(|f| f.children.first().copied());
            match (orphan, Self::least(&self.by_fed, &[])) {
                (Some(leaf), Some(to)) => self.move_leaf(leaf, to),
                _ => break,
            }
        }
        let most = self.by_fed.iter().next_back().copied();
        let fewest = self.by_fed.iter().next().copied();
        if let (Some((m, from)), Some((f, to))) = (most, fewest) {
            if m >= f + 2 {
                let leaf = self
                    .feeds
                    .get(&from)
                    .and_then(|fed| fed.children.first().copied());
                if let Some(leaf) = leaf {
                    self.move_leaf(leaf, to);
                }
            }
        }
        let unbacked: Vec<PeerId> = self.unbacked.iter().take(2).copied().collect();
        for leaf in unbacked {
            if let Some(h) = self.hangs.get(&leaf).copied() {
                if Self::least(&self.by_backed, &[h.parent]).is_some() {
                    self.touch(leaf);
                    let backup = self.back_up(leaf, h.parent);
                    self.set_hang(leaf, Hang { backup, ..h });
                }
            }
        }
    }

    /// A departing relay's leaf-only peers move to their backup relay (or
    /// the one feeding the fewest) and get a new backup.
    fn relay_removed(&mut self, relay: PeerId) {
        let Some(fed) = self.feeds.remove(&relay) else {
            return;
        };
        self.by_fed.remove(&(fed.children.len(), relay));
        self.by_backed.remove(&(fed.backup_children.len(), relay));
        for leaf in fed.children {
            self.touch(leaf);
            let Some(h) = self.hangs.get(&leaf).copied() else {
                continue;
            };
            let parent = match h.backup {
                Some(b) => {
                    self.unhang(b, leaf, true);
                    b
                }
                None => Self::least(&self.by_fed, &[]).unwrap_or(self.root),
            };
            self.hang_on(parent, leaf, false);
            let backup = self.back_up(leaf, parent);
            self.set_hang(leaf, Hang { parent, backup });
        }
        for leaf in fed.backup_children {
            self.touch(leaf);
            let Some(h) = self.hangs.get(&leaf).copied() else {
                continue;
            };
            let backup = self.back_up(leaf, h.parent);
            self.set_hang(leaf, Hang { backup, ..h });
        }
    }

    /// List: the k + 1 nodes from `prev` backwards and from `next` forwards
    /// (either may be [`NIL`]): those whose links see the gap between them.
    fn list_around(&self, mut prev: usize, mut next: usize, out: &mut Vec<usize>) {
        for _ in 0..=self.config.list_backups {
            if prev != NIL {
                out.push(prev);
                prev = self.nodes[prev].prev;
            }
            if next != NIL {
                out.push(next);
                next = self.nodes[next].next;
            }
        }
    }

    // ----- tree geometry -------------------------------------------------

    /// Parent position (`None`: the root).
    fn tree_parent(&self, p: usize) -> Option<usize> {
        let k = self.config.tree_fanout;
        (p >= k).then(|| (p - k) / k)
    }

    /// Children positions when `n` receivers are placed.
    fn tree_children(&self, p: usize, n: usize) -> impl Iterator<Item = usize> {
        let k = self.config.tree_fanout;
        let first = k * p + k;
        (first..first + k).filter(move |c| *c < n)
    }

    /// The backup parent: the parent's next sibling (another branch).
    fn tree_backup(&self, p: usize, n: usize) -> Option<usize> {
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
        (uncle < n).then_some(uncle)
    }

    /// Nodes whose backup parent is position `p`: the children of p's
    /// siblings whose backup is p.
    fn tree_backup_children(&self, p: usize, n: usize, mut f: impl FnMut(usize)) {
        let k = self.config.tree_fanout;
        if k == 1 {
            // chain: grandchildren
            for c in self.tree_children(p, n) {
                for g in self.tree_children(c, n) {
                    if self.tree_backup(g, n) == Some(p) {
                        f(g);
                    }
                }
            }
            return;
        }
        let first_sibling = match self.tree_parent(p) {
            None => 0,
            Some(g) => k * g + k,
        };
        for s in (first_sibling..first_sibling + k).filter(|s| *s != p && *s < n) {
            for c in self.tree_children(s, n) {
                if self.tree_backup(c, n) == Some(p) {
                    f(c);
                }
            }
        }
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

    /// Neighbour positions when `n` receivers are placed.
    fn mesh_neighbours(&self, p: usize, n: usize) -> impl Iterator<Item = usize> {
        let w = self.config.mesh_width as i64;
        let (r, c) = ((p as i64) / w, (p as i64) % w);
        let n = n as i64;
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
        let to_entry = (0..self.config.mesh_entries.min(self.relays))
            .map(|e| r.max(c.abs_diff(e % w)))
            .min()
            .unwrap_or(0);
        to_entry as u32 + 1
    }

    // ----- links ---------------------------------------------------------

    /// The full link set of a peer (the root included).
    pub fn links(&self, peer: PeerId) -> Option<Links> {
        let mut l = Links::default();
        if peer == self.root {
            self.root_links_into(&mut l);
        } else {
            self.links_at(*self.index.get(&peer)?, &mut l);
        }
        Some(l)
    }

    /// The links of the receiver at position (tree, mesh) or list node `at`.
    fn links_at(&self, at: usize, l: &mut Links) {
        clear(l);
        let n = self.slots.len();
        match self.kind {
            TopologyKind::List if self.nodes[at].key.0 .0 == LEAF_SCORE => {
                if let Some(h) = self.hangs.get(&self.nodes[at].peer) {
                    l.parents.push(h.parent);
                    l.backup_parents.extend(h.backup);
                }
            }
            TopologyKind::List => {
                let k = self.config.list_backups;
                let node = &self.nodes[at];
                let mut q = node.prev;
                if q == NIL {
                    l.parents.push(self.root);
                } else {
                    l.parents.push(self.nodes[q].peer);
                    // Backups: further up the list, then the root itself.
                    for _ in 0..k {
                        q = self.nodes[q].prev;
                        if q == NIL {
                            l.backup_parents.push(self.root);
                            break;
                        }
                        l.backup_parents.push(self.nodes[q].peer);
                    }
                }
                // The chain holds the relays only (leaf-only peers, last in
                // the order, hang from them).
                let mut q = node.next;
                if self.list_relay(q) {
                    l.children.push(self.nodes[q].peer);
                    for _ in 0..k {
                        q = self.nodes[q].next;
                        if !self.list_relay(q) {
                            break;
                        }
                        l.backup_children.push(self.nodes[q].peer);
                    }
                }
                if let Some(fed) = self.feeds.get(&node.peer) {
                    l.children.extend_from_slice(&fed.children);
                    l.backup_children.extend_from_slice(&fed.backup_children);
                }
            }
            TopologyKind::Tree => {
                l.parents
                    .push(self.tree_parent(at).map_or(self.root, |q| self.slots[q]));
                if let Some(b) = self.tree_backup(at, n) {
                    l.backup_parents.push(self.slots[b]);
                }
                l.children
                    .extend(self.tree_children(at, n).map(|c| self.slots[c]));
                let backup_children = &mut l.backup_children;
                self.tree_backup_children(at, n, |c| backup_children.push(self.slots[c]));
            }
            TopologyKind::Mesh if at < self.relays => {
                if self.mesh_is_entry(at) {
                    l.parents.push(self.root);
                }
                l.neighbours
                    .extend(self.mesh_neighbours(at, self.relays).map(|q| self.slots[q]));
                if let Some(fed) = self.feeds.get(&self.slots[at]) {
                    l.children.extend_from_slice(&fed.children);
                    l.backup_children.extend_from_slice(&fed.backup_children);
                }
            }
            TopologyKind::Mesh => {
                if let Some(h) = self.hangs.get(&self.slots[at]) {
                    l.parents.push(h.parent);
                    l.backup_parents.extend(h.backup);
                }
            }
        }
    }

    fn root_links_into(&self, l: &mut Links) {
        clear(l);
        match self.kind {
            TopologyKind::List => {
                if self.list_relay(self.head) {
                    l.children.push(self.nodes[self.head].peer);
                    // The root backs up the first nodes of the list.
                    let mut q = self.nodes[self.head].next;
                    for _ in 0..self.config.list_backups {
                        if !self.list_relay(q) {
                            break;
                        }
                        l.backup_children.push(self.nodes[q].peer);
                        q = self.nodes[q].next;
                    }
                }
                if let Some(fed) = self.feeds.get(&self.root) {
                    l.children.extend_from_slice(&fed.children);
                }
            }
            TopologyKind::Tree => {
                let k = self.config.tree_fanout.min(self.slots.len());
                l.children.extend_from_slice(&self.slots[..k]);
            }
            TopologyKind::Mesh => {
                let e = self.config.mesh_entries.min(self.relays);
                l.children.extend_from_slice(&self.slots[..e]);
                if let Some(fed) = self.feeds.get(&self.root) {
                    l.children.extend_from_slice(&fed.children);
                }
            }
        }
    }

    // ----- queries -------------------------------------------------------

    /// Whether `a` and `b` share any edge (so they may exchange signaling).
    pub fn is_linked(&self, a: PeerId, b: PeerId) -> bool {
        a != b && self.links(a).is_some_and(|l| l.all_peers().any(|p| p == b))
    }

    /// Hops from the broadcaster (0 for the root).
    pub fn depth(&self, peer: PeerId) -> Option<u32> {
        if peer == self.root {
            return Some(0);
        }
        let at = *self.index.get(&peer)?;
        Some(match self.kind {
            TopologyKind::List if self.nodes[at].key.0 .0 == LEAF_SCORE => {
                match self.hangs.get(&peer) {
                    Some(h) if h.parent != self.root => self.depth(h.parent).map_or(1, |d| d + 1),
                    _ => 1,
                }
            }
            TopologyKind::List => self.order.range(..self.nodes[at].key).count() as u32 + 1,
            TopologyKind::Tree => self.tree_depth(at),
            TopologyKind::Mesh if at < self.relays => self.mesh_depth(at),
            TopologyKind::Mesh => match self.hangs.get(&peer) {
                Some(h) if h.parent != self.root => self
                    .index
                    .get(&h.parent)
                    .map_or(1, |&q| self.mesh_depth(q) + 1),
                _ => 1,
            },
        })
    }

    /// Every receiver, in overlay order.
    pub fn peers(&self) -> Vec<PeerId> {
        match self.kind {
            TopologyKind::List => {
                let mut out = Vec::with_capacity(self.index.len());
                let mut q = self.head;
                while q != NIL {
                    out.push(self.nodes[q].peer);
                    q = self.nodes[q].next;
                }
                out
            }
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

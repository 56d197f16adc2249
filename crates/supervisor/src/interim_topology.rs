//! Interim placement behind the `topology` crate's interface, used until that
//! crate lands: receivers in arrival order laid out as a list (fan-out 1), a
//! complete tree (fan-out k) or a grid with 8 neighbours, recomputed on every
//! change; the changed link sets are reported. O(N) per change, no backups.

use std::collections::HashMap;

use miostream_protocol::signal::{Capacity, Links};
use miostream_protocol::{PeerId, TopologyKind};

/// Overlay settings.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// List backups (unused here).
    pub list_backups: usize,
    /// Tree fan-out.
    pub tree_fanout: usize,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            list_backups: 2,
            tree_fanout: 2,
        }
    }
}

/// Peers whose links changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Affected peers.
    pub affected: Vec<PeerId>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Already placed.
    #[error("{0} is already in the topology")]
    Duplicate(PeerId),
    /// Not placed.
    #[error("{0} is not in the topology")]
    Unknown(PeerId),
}

/// One stream's overlay.
pub struct Topology {
    kind: TopologyKind,
    root: PeerId,
    fanout: usize,
    order: Vec<PeerId>,
    links: HashMap<PeerId, Links>,
}

impl Topology {
    /// An empty overlay under `root`.
    pub fn new(kind: TopologyKind, root: PeerId, config: TopologyConfig) -> Self {
        let mut links = HashMap::new();
        links.insert(root, Links::default());
        Self {
            kind,
            root,
            fanout: config.tree_fanout.max(1),
            order: Vec::new(),
            links,
        }
    }

    /// Receivers placed.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no receiver is placed.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// A receiver joins.
    pub fn join(&mut self, peer: PeerId, _capacity: Capacity) -> Result<Changes, TopologyError> {
        if peer == self.root || self.order.contains(&peer) {
            return Err(TopologyError::Duplicate(peer));
        }
        self.order.push(peer);
        Ok(self.rebuild())
    }

    /// A receiver leaves.
    pub fn leave(&mut self, peer: PeerId) -> Result<Changes, TopologyError> {
        let i = self
            .order
            .iter()
            .position(|p| *p == peer)
            .ok_or(TopologyError::Unknown(peer))?;
        self.order.remove(i);
        self.links.remove(&peer);
        Ok(self.rebuild())
    }

    /// A receiver failed.
    pub fn fail(&mut self, peer: PeerId) -> Result<Changes, TopologyError> {
        self.leave(peer)
    }

    /// A peer's links.
    pub fn links(&self, peer: PeerId) -> Option<Links> {
        self.links.get(&peer).cloned()
    }

    /// Whether two peers share an edge.
    pub fn is_linked(&self, a: PeerId, b: PeerId) -> bool {
        self.links
            .get(&a)
            .is_some_and(|l| l.all_peers().any(|p| p == b))
    }

    fn rebuild(&mut self) -> Changes {
        let mut next: HashMap<PeerId, Links> = std::iter::once(self.root)
            .chain(self.order.iter().copied())
            .map(|p| (p, Links::default()))
            .collect();
        let edge = |next: &mut HashMap<PeerId, Links>, parent: PeerId, child: PeerId| {
            if let Some(l) = next.get_mut(&parent) {
                l.children.push(child);
            }
            if let Some(l) = next.get_mut(&child) {
                l.parents.push(parent);
            }
        };
        match self.kind {
            TopologyKind::List | TopologyKind::Tree => {
                let k = if self.kind == TopologyKind::List {
                    1
                } else {
                    self.fanout
                };
                for (i, &p) in self.order.iter().enumerate() {
                    let parent = if i < k {
                        self.root
                    } else {
                        self.order[(i - k) / k]
                    };
                    edge(&mut next, parent, p);
                }
            }
            TopologyKind::Mesh => {
                let w = (self.order.len() as f64).sqrt().ceil().max(1.0) as usize;
                if let Some(&first) = self.order.first() {
                    edge(&mut next, self.root, first);
                }
                for (i, &p) in self.order.iter().enumerate() {
                    let (r, c) = (i / w, i % w);
                    for (dr, dc) in [(0i64, 1i64), (1, -1), (1, 0), (1, 1)] {
                        let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                        if nc < 0 || nc >= w as i64 {
                            continue;
                        }
                        let j = nr as usize * w + nc as usize;
                        if let Some(&q) = self.order.get(j) {
                            if let Some(l) = next.get_mut(&p) {
                                l.neighbours.push(q);
                            }
                            if let Some(l) = next.get_mut(&q) {
                                l.neighbours.push(p);
                            }
                        }
                    }
                }
            }
        }
        let affected = next
            .iter()
            .filter(|(p, l)| self.links.get(p) != Some(l))
            .map(|(p, _)| *p)
            .collect();
        self.links = next;
        Changes { affected }
    }
}

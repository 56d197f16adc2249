//! Invariants after any sequence of joins, leaves and failures, checked on
//! thousands of seeded random sequences, plus worked examples.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;

use super::*;

fn id(n: u64) -> PeerId {
    PeerId(uuid::Uuid::from_u64_pair(0xABCD, n))
}

const ROOT: u64 = 0;

/// Checks every invariant of the overlay.
fn check(t: &Topology, changes: Option<&Changes>, before: &HashMap<PeerId, Links>) {
    let root = t.root();
    let peers: Vec<PeerId> = t.peers();
    assert_eq!(peers.len(), t.len());
    let live: HashSet<PeerId> = peers.iter().copied().chain([root]).collect();
    let links: HashMap<PeerId, Links> = live.iter().map(|p| (*p, t.links(*p).unwrap())).collect();
    for (p, l) in &links {
        // No edge touches a departed peer; no self links.
        for q in l.all_peers() {
            assert!(live.contains(&q), "{p:?} links departed {q:?}");
            assert_ne!(q, *p);
        }
        // Edges are symmetric.
        for c in &l.children {
            assert!(
                links[c].parents.contains(p),
                "child {c:?} of {p:?} does not know it"
            );
        }
        for c in &l.backup_children {
            assert!(
                links[c].backup_parents.contains(p),
                "backup child {c:?} of {p:?}"
            );
        }
        for b in &l.backup_parents {
            assert!(
                links[b].backup_children.contains(p),
                "backup parent {b:?} of {p:?}"
            );
        }
        for n in &l.neighbours {
            assert!(links[n].neighbours.contains(p), "neighbour {n:?} of {p:?}");
        }
        // Signaling is allowed exactly along edges.
        for q in l.all_peers() {
            assert!(t.is_linked(*p, q));
        }
    }
    // Reachability from the root, and no cycles (list/tree: one parent each).
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        let l = &links[&p];
        for q in l.children.iter().chain(&l.neighbours) {
            if seen.insert(*q) {
                queue.push_back(*q);
            }
        }
    }
    assert_eq!(
        seen.len(),
        live.len(),
        "not every receiver is reachable from the root"
    );
    match t.kind() {
        TopologyKind::List | TopologyKind::Tree => {
            for p in &peers {
                assert_eq!(links[p].parents.len(), 1);
                // Walking up reaches the root within len steps: no cycle.
                let mut q = *p;
                let mut steps = 0;
                while q != root {
                    q = links[&q].parents[0];
                    steps += 1;
                    assert!(steps <= peers.len(), "cycle through {p:?}");
                }
                assert_eq!(t.depth(*p), Some(steps as u32));
            }
        }
        TopologyKind::Mesh => {
            for p in &peers {
                assert!(links[p].neighbours.len() <= 8);
            }
        }
    }
    // Degree bounds.
    let k = t.config.tree_fanout;
    for (p, l) in &links {
        match t.kind() {
            TopologyKind::Tree => assert!(l.children.len() <= k, "{p:?}"),
            // A relay feeds the next relay and the leaf-only peers hung from it.
            TopologyKind::List => {
                let relays = l
                    .children
                    .iter()
                    .filter(|c| t.is_relay(**c) == Some(true))
                    .count();
                assert!(relays <= 1, "{p:?} feeds {relays} relays");
            }
            TopologyKind::Mesh => {}
        }
    }
    // Backups are live and never the node's own descendant; below the first
    // level every node has one.
    for p in &peers {
        let l = &links[p];
        for b in &l.backup_parents {
            let mut q = *b;
            while q != root {
                assert_ne!(q, *p, "backup {b:?} of {p:?} is its descendant");
                q = links[&q].parents.first().copied().unwrap_or(root);
                if t.kind() == TopologyKind::Mesh {
                    break;
                }
            }
        }
        match t.kind() {
            TopologyKind::Tree if l.parents[0] != root && k > 1 => {
                assert_eq!(l.backup_parents.len(), 1, "{p:?} has no backup")
            }
            TopologyKind::List if l.parents[0] != root && t.is_relay(*p).unwrap() => {
                assert!(!l.backup_parents.is_empty(), "{p:?} has no backup")
            }
            _ => {}
        }
    }
    // Leaf-only peers come after every relay; in a tree whose leaf-only
    // peers are no more than its relays they feed nobody.
    let mut seen_leaf = false;
    for p in &peers {
        let relay = t.is_relay(*p).unwrap();
        if seen_leaf {
            assert!(!relay, "relay {p:?} placed after a leaf-only peer");
        }
        seen_leaf |= !relay;
    }
    let leaves = t.leaves();
    assert_eq!(
        leaves,
        peers.iter().filter(|p| !t.is_relay(**p).unwrap()).count()
    );
    // In the mesh and the list no leaf-only peer ever feeds anyone (or is a
    // neighbour): each hangs from relays (the root while there is none).
    if matches!(t.kind(), TopologyKind::Mesh | TopologyKind::List) {
        for p in peers.iter().filter(|p| !t.is_relay(**p).unwrap()) {
            let l = &links[p];
            assert!(
                l.children.is_empty() && l.backup_children.is_empty() && l.neighbours.is_empty(),
                "leaf-only {p:?} feeds {l:?}"
            );
            assert_eq!(l.parents.len(), 1, "{p:?} hangs from one parent");
            assert!(l.backup_parents.len() <= 1);
            assert!(!l.backup_parents.contains(&l.parents[0]));
            for q in l.parents.iter().chain(&l.backup_parents) {
                assert!(
                    *q == root || t.is_relay(*q).unwrap(),
                    "{p:?} hangs from a leaf"
                );
            }
        }
    }
    if t.kind() == TopologyKind::Tree && k == 2 && leaves <= peers.len() - leaves {
        for p in peers.iter().filter(|p| !t.is_relay(**p).unwrap()) {
            let l = &links[p];
            assert!(
                l.children.is_empty() && l.backup_children.is_empty(),
                "leaf-only {p:?} feeds {l:?}"
            );
        }
    }
    // Every peer whose links changed was reported, and no more than a
    // bounded neighbourhood was.
    if let Some(c) = changes {
        let reported: HashSet<PeerId> = c.affected.iter().copied().collect();
        for (p, l) in &links {
            if before.get(p) != Some(l) {
                assert!(reported.contains(p), "{p:?} changed but was not told");
            }
        }
        let bound = match t.kind() {
            TopologyKind::List => {
                6 * (t.config.list_backups + 2) + 30 + 2 * t.max_leaves_per_relay()
            }
            TopologyKind::Tree => 4 * (k + 1) * (k + 1) + 8,
            // A departing relay's leaf-only peers and their new relays.
            TopologyKind::Mesh => 50 + 2 * t.max_leaves_per_relay(),
        };
        assert!(
            c.affected.len() <= bound,
            "{} peers reconfigured",
            c.affected.len()
        );
    }
}

impl Topology {
    /// Mesh and list: the most leaf-only peers one relay (or the root) feeds and backs up.
    fn max_leaves_per_relay(&self) -> usize {
        self.feeds
            .values()
            .map(|f| f.children.len() + f.backup_children.len())
            .max()
            .unwrap_or(0)
    }
}

fn snapshot_links(t: &Topology) -> HashMap<PeerId, Links> {
    t.peers()
        .into_iter()
        .chain([t.root()])
        .map(|p| (p, t.links(p).unwrap()))
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Join(u32),
    JoinLeaf,
    Leave(usize),
    Fail(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (0u32..4).prop_map(Op::Join),
            1 => Just(Op::JoinLeaf),
            1 => any::<usize>().prop_map(Op::Leave),
            1 => any::<usize>().prop_map(Op::Fail),
        ],
        0..120,
    )
}

fn run(kind: TopologyKind, config: TopologyConfig, ops: &[Op]) {
    let mut t = Topology::new(kind, id(ROOT), config);
    let mut next = 1u64;
    check(&t, None, &HashMap::new());
    for op in ops {
        let before = snapshot_links(&t);
        let changes = match op {
            Op::Join(cap) => {
                next += 1;
                t.join(
                    id(next),
                    Capacity {
                        upload_kbps: *cap * 1000,
                        rtt_ms: 0,
                    },
                )
                .unwrap()
            }
            Op::JoinLeaf => {
                next += 1;
                t.join_leaf(id(next), Capacity::default()).unwrap()
            }
            Op::Leave(i) | Op::Fail(i) => {
                let peers = t.peers();
                if peers.is_empty() {
                    continue;
                }
                let victim = peers[i % peers.len()];
                let c = if matches!(op, Op::Leave(_)) {
                    t.leave(victim)
                } else {
                    t.fail(victim)
                };
                assert!(t.links(victim).is_none());
                c.unwrap()
            }
        };
        check(&t, Some(&changes), &before);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn list_invariants(ops in ops(), k in 1usize..4) {
        run(TopologyKind::List, TopologyConfig { list_backups: k, ..TopologyConfig::default() }, &ops);
    }

    #[test]
    fn tree_invariants(ops in ops(), k in 1usize..5) {
        run(TopologyKind::Tree, TopologyConfig { tree_fanout: k, ..TopologyConfig::default() }, &ops);
    }

    #[test]
    fn mesh_invariants(ops in ops(), w in 1usize..10, e in 1usize..4) {
        run(TopologyKind::Mesh, TopologyConfig { mesh_width: w, mesh_entries: e, ..TopologyConfig::default() }, &ops);
    }
}

#[test]
fn slow_peers_that_join_first_end_up_as_leaves() {
    // Three Wi-Fi laptops join first, then five wired desktops.
    let mut t = Topology::new(TopologyKind::Tree, id(ROOT), TopologyConfig::default());
    for i in 1..=3 {
        t.join_leaf(id(i), Capacity::default()).unwrap();
    }
    for i in 4..=8 {
        t.join(id(i), Capacity::default()).unwrap();
    }
    for i in 1..=3 {
        let l = t.links(id(i)).unwrap();
        assert!(
            l.children.is_empty() && l.backup_children.is_empty(),
            "{l:?}"
        );
        assert_eq!(t.is_relay(id(i)), Some(false));
    }
    // A relay leaves: the last relay fills its place, a leaf-only peer the
    // relay's old place; the leaf-only peers still feed nobody.
    t.fail(id(4)).unwrap();
    for i in 1..=3 {
        let l = t.links(id(i)).unwrap();
        assert!(
            l.children.is_empty() && l.backup_children.is_empty(),
            "{l:?}"
        );
    }
    assert_eq!(t.leaves(), 3);
}

#[test]
fn in_a_mesh_or_a_list_slow_peers_hang_from_relays_and_never_feed_each_other() {
    for kind in [TopologyKind::Mesh, TopologyKind::List] {
        slow_peers_hang_from_relays(kind);
    }
}

fn slow_peers_hang_from_relays(kind: TopologyKind) {
    // The office: three Wi-Fi laptops join first, then five wired desktops,
    // in an 8-wide mesh (one row: the laptops would relay to each other) or
    // a list (the laptops would be its tail, each carrying the stream on).
    let mut t = Topology::new(kind, id(ROOT), TopologyConfig::default());
    for i in 1..=3 {
        t.join_leaf(id(i), Capacity::default()).unwrap();
    }
    // No relay yet: the broadcaster feeds them.
    assert_eq!(t.links(id(1)).unwrap().parents, vec![id(ROOT)]);
    for i in 4..=8 {
        t.join(id(i), Capacity::default()).unwrap();
    }
    let relays: Vec<PeerId> = (4..=8).map(id).collect();
    let hangs = |t: &Topology| -> Vec<(PeerId, Option<PeerId>)> {
        (1..=3)
            .map(|i| {
                let l = t.links(id(i)).unwrap();
                assert!(l.neighbours.is_empty() && l.children.is_empty(), "{l:?}");
                (l.parents[0], l.backup_parents.first().copied())
            })
            .collect()
    };
    // Each laptop is fed by a desktop and backed up by another one.
    for (parent, backup) in hangs(&t) {
        assert!(relays.contains(&parent), "{parent:?}");
        let backup = backup.expect("a backup relay");
        assert!(relays.contains(&backup) && backup != parent);
    }
    // The desktops feed them evenly: no desktop feeds two while one feeds none.
    let mut fed: Vec<PeerId> = hangs(&t).into_iter().map(|(p, _)| p).collect();
    fed.sort();
    fed.dedup();
    assert_eq!(fed.len(), 3, "three laptops on three desktops");
    // A feeding desktop fails: its laptop moves to its backup at once.
    let (parent, backup) = hangs(&t)[0];
    t.fail(parent).unwrap();
    let (now, next) = hangs(&t)[0];
    assert_eq!(Some(now), backup);
    assert!(next.is_some_and(|b| b != now && b != parent));
}

#[test]
fn errors_are_typed() {
    let mut t = Topology::new(TopologyKind::Tree, id(ROOT), TopologyConfig::default());
    t.join(id(1), Capacity::default()).unwrap();
    assert_eq!(
        t.join(id(1), Capacity::default()),
        Err(TopologyError::Duplicate(id(1)))
    );
    assert_eq!(
        t.join(id(ROOT), Capacity::default()),
        Err(TopologyError::Duplicate(id(ROOT)))
    );
    assert_eq!(t.leave(id(9)), Err(TopologyError::Unknown(id(9))));
}

#[test]
fn the_list_is_ordered_by_capacity_and_backs_up_k_ahead() {
    let mut t = Topology::new(
        TopologyKind::List,
        id(ROOT),
        TopologyConfig {
            list_backups: 2,
            ..Default::default()
        },
    );
    for (n, kbps) in [(1, 100), (2, 5000), (3, 300), (4, 5000)] {
        t.join(
            id(n),
            Capacity {
                upload_kbps: kbps,
                rtt_ms: 10,
            },
        )
        .unwrap();
    }
    // Fast first (arrival breaks ties), slow at the tail.
    assert_eq!(t.peers(), vec![id(2), id(4), id(3), id(1)]);
    let l = t.links(id(3)).unwrap();
    assert_eq!(l.parents, vec![id(4)]);
    assert_eq!(l.backup_parents, vec![id(2), id(ROOT)]);
    // Its predecessor dies: it is fed by the next one up, which it held already.
    let c = t.fail(id(4)).unwrap();
    assert_eq!(t.links(id(3)).unwrap().parents, vec![id(2)]);
    assert!(c.affected.contains(&id(3)));
}

#[test]
fn a_tree_is_balanced_repairs_by_moving_one_peer_and_backs_up_across_branches() {
    let mut t = Topology::new(TopologyKind::Tree, id(ROOT), TopologyConfig::default());
    for n in 1..=15 {
        t.join(id(n), Capacity::default()).unwrap();
    }
    // 15 receivers under the broadcaster with fan-out 2: depth 4.
    assert_eq!((1..=15).filter_map(|n| t.depth(id(n))).max(), Some(4));
    // The backup of a grandchild is its parent's sibling.
    let l = t.links(id(3)).unwrap(); // position 2: parent position 0
    assert_eq!(l.parents, vec![id(1)]);
    assert_eq!(l.backup_parents, vec![id(2)]);
    // An inner node dies: the last node takes its place; nobody else moves.
    let before: Vec<PeerId> = t.peers();
    t.fail(id(1)).unwrap();
    let after = t.peers();
    assert_eq!(after[0], id(15));
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(moved, 1);
}

#[test]
fn faster_peers_rise_towards_the_root() {
    let mut t = Topology::new(TopologyKind::Tree, id(ROOT), TopologyConfig::default());
    for n in 1..=6 {
        t.join(
            id(n),
            Capacity {
                upload_kbps: 100,
                rtt_ms: 10,
            },
        )
        .unwrap();
    }
    t.join(
        id(7),
        Capacity {
            upload_kbps: 9000,
            rtt_ms: 5,
        },
    )
    .unwrap();
    assert_eq!(t.depth(id(7)), Some(1));
}

#[test]
fn the_mesh_stays_dense_and_is_fed_at_its_entries() {
    let mut t = Topology::new(
        TopologyKind::Mesh,
        id(ROOT),
        TopologyConfig {
            mesh_width: 4,
            mesh_entries: 2,
            ..Default::default()
        },
    );
    for n in 1..=16 {
        t.join(id(n), Capacity::default()).unwrap();
    }
    assert_eq!(t.links(id(ROOT)).unwrap().children, vec![id(1), id(2)]);
    // An inner cell has 8 neighbours.
    assert_eq!(t.links(id(6)).unwrap().neighbours.len(), 8);
    t.fail(id(6)).unwrap();
    // The last node filled the hole: still 15 cells in 4 rows, no gap.
    assert_eq!(t.links(id(16)).unwrap().neighbours.len(), 8);
    assert_eq!(t.len(), 15);
}

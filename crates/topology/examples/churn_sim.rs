//! Churn simulator: seeded failures drawn with the paper's distributions
//! (§4.2), each failed receiver rejoining as a new one so the size stays
//! constant; reports per topology how many receivers a failure cuts off from
//! the broadcaster before the supervisor repairs anything — following
//! primary links only ("without backups") and primary or backup links
//! ("with backups") — and the depth of the overlay.
//!
//! `cargo run --release -p miostream-topology --example churn_sim -- [N] [FAILURES] [SEED]`

use std::collections::{HashSet, VecDeque};

use miostream_protocol::signal::Capacity;
use miostream_protocol::{PeerId, TopologyKind};
use miostream_topology::{Topology, TopologyConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn id(n: u64) -> PeerId {
    PeerId(uuid::Uuid::from_u64_pair(9, n))
}

/// Receivers that can still be reached from the root once `dead` is gone.
fn cut_off(t: &Topology, dead: PeerId, use_backups: bool) -> usize {
    let mut seen = HashSet::from([t.root()]);
    let mut queue = VecDeque::from([t.root()]);
    while let Some(p) = queue.pop_front() {
        let Some(l) = t.links(p) else { continue };
        let mut next: Vec<PeerId> = l.children.clone();
        next.extend(&l.neighbours);
        if use_backups {
            next.extend(&l.backup_children);
        }
        for q in next {
            if q != dead && seen.insert(q) {
                queue.push_back(q);
            }
        }
    }
    t.len() - (seen.len() - 1) - 1 // all receivers but the reached ones and the dead one
}

fn position(dist: &str, n: usize, rng: &mut ChaCha8Rng) -> usize {
    match dist {
        "uniform" => rng.random_range(0..n),
        // 20 trials with p = 0.8, mapped onto the positions.
        "binomial" => {
            let k = (0..20).filter(|_| rng.random_bool(0.8)).count();
            (k * (n - 1)) / 20
        }
        // Poisson with mean N/2 (Knuth's method), clamped to the positions.
        _ => {
            let limit = (-(n as f64) / 2.0).exp();
            let mut k = 0usize;
            let mut p = 1.0;
            loop {
                p *= rng.random::<f64>();
                if p <= limit {
                    break;
                }
                k += 1;
            }
            k.min(n - 1)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(83);
    let failures: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let seed: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    println!("{n} receivers, {failures} failures per run, seed {seed}");
    println!(
        "{:<6} {:<9} {:>22} {:>19} {:>11} {:>10}",
        "topo", "dist", "cut off w/o backups", "cut off w/ backups", "mean depth", "max depth"
    );
    for kind in [TopologyKind::List, TopologyKind::Tree, TopologyKind::Mesh] {
        for dist in ["uniform", "binomial", "poisson"] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut t = Topology::new(kind, id(0), TopologyConfig::default());
            let mut next = 0u64;
            for _ in 0..n {
                next += 1;
                t.join(id(next), Capacity::default()).expect("join");
            }
            let (mut without, mut with, mut depth_sum, mut depth_max, mut samples) =
                (0usize, 0usize, 0u64, 0u32, 0u64);
            for _ in 0..failures {
                let peers = t.peers();
                let victim = peers[position(dist, peers.len(), &mut rng)];
                without += cut_off(&t, victim, false);
                with += cut_off(&t, victim, true);
                t.fail(victim).expect("fail");
                next += 1;
                t.join(id(next), Capacity::default()).expect("join");
                for p in t.peers() {
                    let d = t.depth(p).unwrap_or(0);
                    depth_sum += u64::from(d);
                    depth_max = depth_max.max(d);
                    samples += 1;
                }
            }
            println!(
                "{:<6} {:<9} {:>22.2} {:>19.3} {:>11.2} {:>10}",
                kind.to_string(),
                dist,
                without as f64 / failures as f64,
                with as f64 / failures as f64,
                depth_sum as f64 / samples as f64,
                depth_max
            );
        }
    }
}

//! Join + leave throughput at 100, 10,000 and 100,000 receivers per
//! topology: a receiver leaves from a random position and a new one joins,
//! keeping the size constant. `cargo bench -p miostream-topology`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use miostream_protocol::signal::Capacity;
use miostream_protocol::{PeerId, TopologyKind};
use miostream_topology::{Topology, TopologyConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn id(n: u64) -> PeerId {
    PeerId(uuid::Uuid::from_u64_pair(7, n))
}

fn bench(c: &mut Criterion) {
    for kind in [TopologyKind::List, TopologyKind::Tree, TopologyKind::Mesh] {
        let mut group = c.benchmark_group(format!("{kind}"));
        group.measurement_time(Duration::from_secs(2));
        group.warm_up_time(Duration::from_millis(300));
        group.throughput(Throughput::Elements(2)); // one leave + one join
        for n in [100u64, 10_000, 100_000] {
            let mut t = Topology::new(kind, id(0), TopologyConfig::default());
            for i in 1..=n {
                t.join(id(i), Capacity::default()).expect("join");
            }
            let mut peers = t.peers();
            let mut next = n + 1;
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    let i = rng.random_range(0..peers.len());
                    let victim = peers.swap_remove(i);
                    black_box(t.fail(victim).expect("fail"));
                    next += 1;
                    black_box(t.join(id(next), Capacity::default()).expect("join"));
                    peers.push(id(next));
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

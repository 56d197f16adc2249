//! Splitter throughput on the bundled WebM (MB/s) and the work the
//! splitter + chunker, the pacer and the receiver's reassembler add per
//! cluster. `cargo bench -p miostream-media`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use miostream_media::chunk::Chunker;
use miostream_media::{Pacer, Reassembler, ReassemblyConfig, Segment, Splitter};
use miostream_protocol::StreamId;

fn bench(c: &mut Criterion) {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"))
        .expect("assets/test.webm");
    let mut group = c.benchmark_group("splitter");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(data.len() as u64));
    for piece in [4096usize, 65536] {
        group.bench_function(format!("whole_file_in_{piece}_byte_pieces"), |b| {
            b.iter(|| {
                let mut s = Splitter::new();
                let mut n = 0;
                for p in data.chunks(piece) {
                    n += s.push(p).expect("split").len();
                }
                black_box(n)
            })
        });
    }
    group.finish();
    // Per cluster: split one cluster's bytes (as the pacer hands them over)
    // and cut it into chunks.
    let mut s = Splitter::new();
    let segments = s.push(&data).expect("split");
    let Segment::Init(init) = &segments[0] else {
        return;
    };
    let Segment::Cluster(cluster) = &segments[1] else {
        return;
    };
    let mut one = init.clone();
    one.extend_from_slice(&cluster.bytes);
    let mut group = c.benchmark_group("per_cluster");
    group.throughput(Throughput::Bytes(cluster.bytes.len() as u64));
    group.bench_function("split_and_chunk", |b| {
        b.iter(|| {
            let mut s = Splitter::new();
            let segments = s.push(&one).expect("split");
            let mut chunker = Chunker::new(StreamId(1), 0);
            let n: usize = segments
                .iter()
                .map(|seg| chunker.chunks(seg, 0).len())
                .sum();
            black_box(n)
        })
    });
    let chunks: Vec<_> = Chunker::new(StreamId(1), 0)
        .chunks(&segments[1], 0)
        .into_iter()
        .map(|(h, p)| (h, p.to_vec()))
        .collect();
    let init_chunks: Vec<_> = Chunker::new(StreamId(1), 1_000_000)
        .chunks(&segments[0], 0)
        .into_iter()
        .map(|(h, p)| (h, p.to_vec()))
        .collect();
    group.bench_function("reassemble", |b| {
        b.iter(|| {
            let mut r = Reassembler::new(ReassemblyConfig::default());
            let mut n = 0;
            for (h, p) in init_chunks.iter().chain(&chunks) {
                n += r.push(h, p).len();
            }
            black_box(n)
        })
    });
    group.bench_function("pacer_due", |b| {
        let mut pacer = Pacer::default();
        let mut ts = 0u64;
        b.iter(|| {
            ts += 1000;
            black_box(pacer.due(ts, Duration::from_millis(ts)))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Segments → chunk headers and payloads of at most one frame each.

use miostream_protocol::{ChunkFlags, ChunkHeader, ChunkKind, StreamId, MAX_CHUNK_PAYLOAD};

use crate::Segment;

/// Numbers a stream's chunks and cuts segments into frame-sized pieces.
#[derive(Debug)]
pub struct Chunker {
    stream: StreamId,
    next_seq: u64,
}

impl Chunker {
    /// Chunks of `stream`, numbered from `first_seq`.
    pub fn new(stream: StreamId, first_seq: u64) -> Self {
        Self {
            stream,
            next_seq: first_seq,
        }
    }

    /// The sequence number the next chunk gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Cuts a segment into chunks: the first flagged `CLUSTER_START` (and
    /// `KEYFRAME` for a cluster that starts with one), the last `CLUSTER_END`.
    pub fn chunks<'a>(
        &mut self,
        segment: &'a Segment,
        send_time_us: u64,
    ) -> Vec<(ChunkHeader, &'a [u8])> {
        let (kind, bytes, timestamp_ms, keyframe) = match segment {
            Segment::Init(b) => (ChunkKind::Init, b.as_slice(), 0, false),
            Segment::Cluster(c) => (
                ChunkKind::Media,
                c.bytes.as_slice(),
                c.timestamp_ms,
                c.keyframe,
            ),
        };
        let pieces: Vec<&[u8]> = if bytes.is_empty() {
            vec![bytes]
        } else {
            bytes.chunks(MAX_CHUNK_PAYLOAD).collect()
        };
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                let mut flags = ChunkFlags::empty();
                if i == 0 {
                    flags = flags.with(ChunkFlags::CLUSTER_START);
                    if keyframe {
                        flags = flags.with(ChunkFlags::KEYFRAME);
                    }
                }
                if i == last {
                    flags = flags.with(ChunkFlags::CLUSTER_END);
                }
                let header = ChunkHeader {
                    stream: self.stream,
                    seq: self.next_seq,
                    kind,
                    flags,
                    timestamp_ms,
                    send_time_us,
                };
                self.next_seq += 1;
                (header, payload)
            })
            .collect()
    }
}

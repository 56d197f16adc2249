//! The chunk buffer: the init segment (kept while it is current) and the
//! last seconds of media chunks, as encoded frames ready to resend.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use miostream_protocol::{ChunkFlags, ChunkHeader, ChunkKind};

/// Chunks an init segment may span (4 MiB of frames; real ones are a few
/// KB): chunks of one segment beyond it are refused, so a stream of
/// init chunks that never starts a new segment cannot grow the buffer.
pub const MAX_INIT_CHUNKS: usize = 256;

/// Stored chunks by sequence number.
#[derive(Debug, Default)]
pub struct ChunkStore {
    init: Vec<(ChunkHeader, Bytes)>,
    media: BTreeMap<u64, (ChunkHeader, Bytes)>,
    newest_ts: u64,
}

impl ChunkStore {
    /// Whether `seq` is held.
    pub fn contains(&self, seq: u64) -> bool {
        self.media.contains_key(&seq) || self.init.iter().any(|(h, _)| h.seq == seq)
    }

    /// Whether a complete init segment is held.
    pub fn has_init(&self) -> bool {
        self.init
            .last()
            .is_some_and(|(h, _)| h.flags.contains(ChunkFlags::CLUSTER_END))
    }

    /// Stores a chunk's frame. A new init segment (its first chunk) replaces
    /// the old one. Returns false for a sequence number held already.
    pub fn insert(&mut self, header: ChunkHeader, frame: Bytes) -> bool {
        if self.contains(header.seq) {
            return false;
        }
        match header.kind {
            ChunkKind::Init => {
                let newer = self.init.first().is_none_or(|(h, _)| header.seq > h.seq);
                if header.flags.contains(ChunkFlags::CLUSTER_START) && newer {
                    self.init.clear();
                }
                if self.init.len() >= MAX_INIT_CHUNKS {
                    return false;
                }
                self.init.push((header, frame));
                self.init.sort_by_key(|(h, _)| h.seq);
            }
            ChunkKind::Media => {
                self.newest_ts = self.newest_ts.max(header.timestamp_ms);
                self.media.insert(header.seq, (header, frame));
            }
        }
        true
    }

    /// Forgets media older than `keep` behind the newest timestamp, and
    /// beyond `max` chunks.
    pub fn evict(&mut self, keep: Duration, max: usize) {
        let horizon = self.newest_ts.saturating_sub(keep.as_millis() as u64);
        while let Some((&seq, (h, _))) = self.media.first_key_value() {
            if h.timestamp_ms >= horizon && self.media.len() <= max {
                break;
            }
            self.media.remove(&seq);
        }
    }

    /// The init segment's frames, in order.
    pub fn init_frames(&self) -> impl Iterator<Item = &Bytes> {
        self.init.iter().map(|(_, f)| f)
    }

    /// Media frames with `seq >= from`, in order.
    pub fn media_from(&self, from: u64) -> impl Iterator<Item = (&ChunkHeader, &Bytes)> {
        self.media.range(from..).map(|(_, (h, f))| (h, f))
    }

    /// The first chunk of the newest cluster that starts with a keyframe.
    pub fn latest_keyframe(&self) -> Option<u64> {
        self.media
            .values()
            .rev()
            .find(|(h, _)| {
                h.flags
                    .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME))
            })
            .map(|(h, _)| h.seq)
    }

    /// A stored frame.
    pub fn get(&self, seq: u64) -> Option<&(ChunkHeader, Bytes)> {
        self.media
            .get(&seq)
            .or_else(|| self.init.iter().find(|(h, _)| h.seq == seq))
    }

    /// Media chunks held.
    pub fn len(&self) -> usize {
        self.media.len()
    }

    /// Whether no media chunk is held.
    pub fn is_empty(&self) -> bool {
        self.media.is_empty()
    }
}

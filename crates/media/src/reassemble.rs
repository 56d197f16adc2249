//! Receiver reassembly: chunks (in any order, with duplicates and holes) →
//! the fixed-up init segment, then whole clusters from the first cluster
//! that starts with a video keyframe. After a hole, output resumes at the
//! next keyframe cluster, so what a player reads always decodes cleanly.

use std::collections::BTreeMap;

use miostream_protocol::{ChunkFlags, ChunkHeader, ChunkKind};

use crate::init::fix_up_init;
use crate::MediaError;

/// Limits of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Media chunks held while waiting for a missing one; when more are
    /// waiting, the missing ones are given up as lost.
    pub window: usize,
    /// Largest init segment or cluster assembled (bytes); a longer one is
    /// dropped as a hole.
    pub max_segment: usize,
}

impl Default for ReassemblyConfig {
    /// 1,024 chunks (≤ 16 MiB, ~100 s at 1.2 Mbit/s), 64 MiB segments (the
    /// splitter's [`MAX_ELEMENT`](crate::MAX_ELEMENT)).
    fn default() -> Self {
        Self {
            window: 1024,
            max_segment: crate::MAX_ELEMENT as usize,
        }
    }
}

/// What reassembly yields, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassembled {
    /// A (new) init segment, fixed up for a live re-serve; write it first.
    /// A repeat of the current one (a new upstream re-sending it) is not
    /// yielded again.
    Init(Vec<u8>),
    /// A whole cluster.
    Cluster {
        /// Sequence number of its first chunk.
        first_seq: u64,
        /// Its media timestamp (ms).
        timestamp_ms: u64,
        /// Whether it starts with a video keyframe.
        keyframe: bool,
        /// The Cluster element's bytes.
        bytes: Vec<u8>,
    },
    /// Media chunks `first_seq..first_seq + count` never arrived (or their
    /// cluster was unusable): the clusters they touched are dropped and
    /// output resumes at the next keyframe cluster.
    Hole {
        /// First missing sequence number.
        first_seq: u64,
        /// How many.
        count: u64,
    },
    /// An init segment that could not be fixed up was dropped.
    BadInit(MediaError),
}

#[derive(Debug)]
struct Partial {
    first_seq: u64,
    timestamp_ms: u64,
    keyframe: bool,
    bytes: Vec<u8>,
}

/// Chunks in, playable WebM pieces out. Pure; see the module docs.
#[derive(Debug)]
pub struct Reassembler {
    config: ReassemblyConfig,
    /// Init chunks of the init segment being assembled, by sequence number.
    init_parts: BTreeMap<u64, (ChunkFlags, Vec<u8>)>,
    init: Option<Vec<u8>>,
    /// Media chunks waiting for their turn.
    pending: BTreeMap<u64, (ChunkHeader, Vec<u8>)>,
    /// Next media sequence number to use; `None` before the start.
    next: Option<u64>,
    cluster: Option<Partial>,
    /// Output waits for a keyframe cluster (at the start, after a hole).
    need_keyframe: bool,
}

impl Reassembler {
    /// A receiver's reassembler, before any chunk.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            config: ReassemblyConfig {
                window: config.window.max(1),
                ..config
            },
            init_parts: BTreeMap::new(),
            init: None,
            pending: BTreeMap::new(),
            next: None,
            cluster: None,
            need_keyframe: true,
        }
    }

    /// The current init segment, once one was assembled.
    pub fn init(&self) -> Option<&[u8]> {
        self.init.as_deref()
    }

    /// The next media sequence number expected (`None` before the start).
    pub fn next_seq(&self) -> Option<u64> {
        self.next
    }

    /// Takes one chunk; returns what it completed.
    pub fn push(&mut self, header: &ChunkHeader, payload: &[u8]) -> Vec<Reassembled> {
        let mut out = Vec::new();
        match header.kind {
            ChunkKind::Init => self.push_init(header, payload, &mut out),
            ChunkKind::Media => {
                let stale = self.next.is_some_and(|n| header.seq < n);
                if !stale {
                    self.pending
                        .entry(header.seq)
                        .or_insert_with(|| (*header, payload.to_vec()));
                }
            }
        }
        self.drain(&mut out);
        out
    }

    /// Gives up on every media chunk before `seq` (the upstream reported
    /// them gone).
    pub fn skip_to(&mut self, seq: u64) -> Vec<Reassembled> {
        let mut out = Vec::new();
        if let Some(next) = self.next {
            if seq > next {
                self.lose(next, seq, &mut out);
            }
        }
        self.pending = self.pending.split_off(&seq);
        self.drain(&mut out);
        out
    }

    fn push_init(&mut self, header: &ChunkHeader, payload: &[u8], out: &mut Vec<Reassembled>) {
        if header.flags.contains(ChunkFlags::CLUSTER_START) {
            // A new init segment starts: earlier parts belonged to another.
            self.init_parts.retain(|seq, _| *seq >= header.seq);
        }
        if self.init_parts.len() >= self.config.window {
            self.init_parts.clear();
        }
        self.init_parts
            .insert(header.seq, (header.flags, payload.to_vec()));
        // Complete when a START..END run of consecutive chunks is present.
        let Some((&start, _)) = self
            .init_parts
            .iter()
            .find(|(_, (f, _))| f.contains(ChunkFlags::CLUSTER_START))
        else {
            return;
        };
        let mut bytes = Vec::new();
        let mut seq = start;
        loop {
            let Some((flags, part)) = self.init_parts.get(&seq) else {
                return;
            };
            if bytes.len() + part.len() > self.config.max_segment {
                self.init_parts.clear();
                return;
            }
            bytes.extend_from_slice(part);
            if flags.contains(ChunkFlags::CLUSTER_END) {
                break;
            }
            let Some(after) = seq.checked_add(1) else {
                return;
            };
            seq = after;
        }
        self.init_parts.clear();
        match fix_up_init(&bytes) {
            Ok(init) if self.init.as_ref() == Some(&init) => {}
            Ok(init) => {
                if self.init.is_some() {
                    // A different init (the broadcaster restarted): the
                    // clusters in flight belong to the old one.
                    self.cluster = None;
                    self.need_keyframe = true;
                }
                self.init = Some(init.clone());
                out.push(Reassembled::Init(init));
            }
            Err(e) => out.push(Reassembled::BadInit(e)),
        }
    }

    /// Moves pending chunks to the output while they are in order.
    fn drain(&mut self, out: &mut Vec<Reassembled>) {
        if self.init.is_none() {
            // Nothing plays before the init; hold what fits in the window.
            while self.pending.len() > self.config.window {
                self.pending.pop_first();
            }
            return;
        }
        loop {
            let Some(next) = self.next else {
                // The start: the lowest keyframe cluster held complete (a
                // chunk displaced in transit cannot make us skip it).
                // With a full window, the lowest keyframe start will do (a
                // cluster may be longer than the window).
                let start = self.first_complete_keyframe_cluster().or_else(|| {
                    (self.pending.len() > self.config.window)
                        .then(|| self.first_keyframe_start())
                        .flatten()
                });
                match start {
                    Some(seq) => {
                        self.pending = self.pending.split_off(&seq);
                        self.next = Some(seq);
                        continue;
                    }
                    None => {
                        while self.pending.len() > self.config.window {
                            self.pending.pop_first();
                        }
                        return;
                    }
                }
            };
            if let Some((header, payload)) = self.pending.remove(&next) {
                self.next = Some(next.saturating_add(1));
                self.take(&header, payload, out);
                continue;
            }
            if self.pending.len() > self.config.window {
                if let Some((&lowest, _)) = self.pending.first_key_value() {
                    self.lose(next, lowest, out);
                    continue;
                }
            }
            return;
        }
    }

    /// The first sequence number of the lowest keyframe cluster whose chunks
    /// are all pending.
    fn first_complete_keyframe_cluster(&self) -> Option<u64> {
        let mut start = None;
        let mut expect = 0;
        for (&seq, (h, _)) in &self.pending {
            if h.flags.contains(ChunkFlags::CLUSTER_START) {
                start = h.flags.contains(ChunkFlags::KEYFRAME).then_some(seq);
            } else if seq != expect {
                start = None;
            }
            if let Some(s) = start {
                if h.flags.contains(ChunkFlags::CLUSTER_END) {
                    return Some(s);
                }
            }
            expect = seq.saturating_add(1);
        }
        None
    }

    /// The lowest pending keyframe cluster start.
    fn first_keyframe_start(&self) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, (h, _))| {
                h.flags
                    .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME))
            })
            .map(|(&seq, _)| seq)
    }

    /// Chunks `from..to` are lost.
    fn lose(&mut self, from: u64, to: u64, out: &mut Vec<Reassembled>) {
        out.push(Reassembled::Hole {
            first_seq: from,
            count: to.saturating_sub(from),
        });
        self.next = Some(to);
        self.cluster = None;
        self.need_keyframe = true;
    }

    /// One media chunk, in order.
    fn take(&mut self, header: &ChunkHeader, payload: Vec<u8>, out: &mut Vec<Reassembled>) {
        let flags = header.flags;
        if flags.contains(ChunkFlags::CLUSTER_START) {
            if let Some(p) = self.cluster.take() {
                // The previous cluster never ended: unusable.
                out.push(Reassembled::Hole {
                    first_seq: p.first_seq,
                    count: header.seq.saturating_sub(p.first_seq),
                });
                self.need_keyframe = true;
            }
            let keyframe = flags.contains(ChunkFlags::KEYFRAME);
            if keyframe || !self.need_keyframe {
                self.need_keyframe = false;
                self.cluster = Some(Partial {
                    first_seq: header.seq,
                    timestamp_ms: header.timestamp_ms,
                    keyframe,
                    bytes: Vec::new(),
                });
            }
        }
        let Some(p) = self.cluster.as_mut() else {
            // The rest of a cluster we do not play.
            return;
        };
        if p.bytes.len() + payload.len() > self.config.max_segment {
            let first_seq = p.first_seq;
            self.cluster = None;
            self.need_keyframe = true;
            out.push(Reassembled::Hole {
                first_seq,
                count: header.seq.saturating_add(1).saturating_sub(first_seq),
            });
            return;
        }
        if p.bytes.is_empty() {
            p.bytes = payload;
        } else {
            p.bytes.extend_from_slice(&payload);
        }
        if flags.contains(ChunkFlags::CLUSTER_END) {
            if let Some(p) = self.cluster.take() {
                out.push(Reassembled::Cluster {
                    first_seq: p.first_seq,
                    timestamp_ms: p.timestamp_ms,
                    keyframe: p.keyframe,
                    bytes: p.bytes,
                });
            }
        }
    }
}

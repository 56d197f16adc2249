//! The hand-over to the local player, which must never hold up relaying.

use miostream_protocol::{ChunkFlags, ChunkKind};

use crate::core::NodeEvent;

/// Decides what a bounded player queue gets, so that a stalled player (a
/// full stdout pipe, a paused browser) never stops the node from relaying
/// or heartbeating for its subtree.
///
/// The rule: while the queue has room, chunks go in order. When a chunk
/// finds it full, it and every chunk after it are dropped until the next
/// cluster that starts with a keyframe *and* finds room for two events;
/// that one goes in after a `Skipped` for the gap, so the player resumes
/// on decodable media.
#[derive(Debug, Default)]
pub struct PlayerGate {
    /// Dropping from this sequence number on.
    skip_from: Option<u64>,
}

impl PlayerGate {
    /// A gate with nothing skipped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether chunks are being dropped.
    pub fn is_skipping(&self) -> bool {
        self.skip_from.is_some()
    }

    /// Passes `event` (a `Deliver` or a `Skipped`; others go straight
    /// through) towards a queue with `room` free slots: `emit` receives
    /// what to queue, at most `room` events.
    pub fn admit(&mut self, event: NodeEvent, room: usize, mut emit: impl FnMut(NodeEvent)) {
        match event {
            NodeEvent::Deliver { header, payload } => {
                let mut room = room;
                if let Some(first) = self.skip_from {
                    let resumes = header.kind == ChunkKind::Media
                        && header
                            .flags
                            .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME))
                        && room >= 2;
                    if !resumes {
                        return;
                    }
                    let count = header.seq.saturating_sub(first);
                    tracing::warn!(
                        skipped = count,
                        "the player fell behind: resumed at a keyframe"
                    );
                    emit(NodeEvent::Skipped { first, count });
                    self.skip_from = None;
                    room -= 1;
                }
                if room == 0 {
                    self.skip_from = Some(header.seq);
                } else {
                    emit(NodeEvent::Deliver { header, payload });
                }
            }
            NodeEvent::Skipped { first, count } => {
                // While skipping, the gap is reported when playback resumes.
                if self.skip_from.is_none() {
                    if room == 0 {
                        self.skip_from = Some(first);
                    } else {
                        emit(NodeEvent::Skipped { first, count });
                    }
                }
            }
            other => emit(other),
        }
    }
}

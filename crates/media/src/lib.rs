//! The media side of MioStream, pure (no IO, no clock).
//!
//! - [`Splitter`]: fed WebM bytes in pieces of any size (a file, a pipe from
//!   ffmpeg), it yields the init segment — EBML header, Segment header (its
//!   size rewritten as unknown), Info and Tracks; SeekHead, Cues, Tags, Void
//!   and Chapters dropped — and then every Cluster whole, with its timestamp
//!   and whether it starts with a video keyframe. Known- and unknown-size
//!   Segments and Clusters are handled; a Cluster's Timestamp can be shifted
//!   (seamless `--loop`). Malformed input is a [`MediaError`]; memory is
//!   bounded by [`MAX_ELEMENT`].
//! - [`chunk`]: init segment and clusters → chunk headers and payloads of at
//!   most one frame each, flagged with cluster boundaries and keyframes.
//! - [`Pacer`]: when each cluster of a file is due, for real-time pacing.
//! - [`Reassembler`]: the receiver's side — chunks in any order, with
//!   duplicates and holes → the init segment (passed through
//!   [`fix_up_init`]) and whole clusters from the first video-keyframe
//!   cluster on; after a hole, from the next keyframe cluster.
//! - [`live_media_type`]: the MIME type with codecs (`video/webm;
//!   codecs="vp8,opus"`) that a browser player needs, from the init segment.
//! - [`Recorder`]: a live stream → a seekable WebM file (`--out`): known
//!   Segment size, Duration, Cues and SeekHead patched in on close; a file
//!   cut off before that still plays.
//! - [`PlaybackModel`]: the startup buffer, media clock and stall
//!   accounting behind the receiver's QoS figures.
//!
//! Time is always an argument; the tokio edges (file pacing, stdin, ffmpeg,
//! the HTTP endpoint) live in `miostream-media-io`.

mod codecs;
mod ebml;
mod init;
mod pace;
mod reassemble;
mod record;
mod split;

pub mod chunk;
#[doc(hidden)]
pub mod fuzz;
pub mod playback;

pub use codecs::{init_codecs, live_media_type};
pub use init::fix_up_init;
pub use pace::{Pacer, DEFAULT_MAX_JUMP};
pub use playback::{PlaybackModel, PlaybackStats};
pub use reassemble::{Reassembled, Reassembler, ReassemblyConfig};
pub use record::{Closing, Patch, Recorder, MAX_CUES};
pub use split::{Cluster, Segment, Splitter, MAX_ELEMENT};

/// Why WebM input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The stream does not start with an EBML header.
    #[error("not WebM: no EBML header at the start (found element {found:#x})")]
    NotWebm {
        /// The first element id.
        found: u32,
    },
    /// An element id or size is not valid EBML.
    #[error("corrupt WebM at byte {offset}: {what}")]
    Corrupt {
        /// Byte offset in the input.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// An element larger than the limit.
    #[error("WebM element {id:#x} at byte {offset} is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Element id.
        id: u32,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The input ended inside an element.
    #[error("WebM truncated at byte {offset} (inside element {id:#x})")]
    Truncated {
        /// Where the input ended.
        offset: u64,
        /// The unfinished element.
        id: u32,
    },
    /// A cluster arrived before the Tracks (no init segment).
    #[error("WebM has a Cluster before its Tracks at byte {offset}")]
    NoTracks {
        /// Where.
        offset: u64,
    },
}

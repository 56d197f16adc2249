//! The tokio edges of MioStream's media pipeline; the logic they drive
//! (splitting, pacing, reassembly) is the pure `miostream-media` crate.
//!
//! - Broadcaster side, [`MediaSource`]: a WebM file paced at real time by
//!   its cluster timestamps (optionally looped: the next pass *continues the
//!   timestamps*, no re-init), a live WebM from stdin or any reader, or a
//!   V4L2 webcam or an RTMP/SRT ingest (an encoder such as OBS pushes to a
//!   listening ffmpeg child) encoded to VP8 + Opus with the [`Encoder`]
//!   settings. It yields
//!   [`Segment`]s (the init segment once, then clusters when due).
//! - Receiver side: [`StreamWriter`] writes reassembled WebM to a file or
//!   stdout; [`LiveServer`] serves it over HTTP/1.1 (hyper) to any number
//!   of players — a browser player page at `/`, the raw live WebM at
//!   `/stream.webm` for mpv, VLC or ffplay — each starting at the init
//!   segment and the latest keyframe cluster.
//!
//! Memory is bounded everywhere: one read buffer and the splitter's element
//! limit per source, a fixed ring of clusters shared by all HTTP clients
//! (a client that falls behind skips ahead to the next keyframe cluster).
//!
//! Not here: chunk framing, integrity and transport (the peer crates).

mod encode;
mod error;
mod serve;
mod sink;
mod source;

pub use encode::{Encoder, IngestUrl, VideoSize};
pub use error::MediaIoError;
pub use miostream_media::Segment;
pub use serve::{LiveServer, ServeConfig, STREAM_PATH};
pub use sink::StreamWriter;
pub use source::{MediaSource, Source, SourceConfig, LOOP_GAP_MS};

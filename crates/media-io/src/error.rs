//! The one error type of the media IO edges: each variant names what the
//! user has to fix (a path, a device, a program, an address).

use std::net::SocketAddr;
use std::path::PathBuf;

use miostream_media::MediaError;

/// Why a media source or sink failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaIoError {
    /// A file could not be opened or created.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the input failed.
    #[error("reading {what} failed: {source}")]
    Read {
        /// Which input.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the output failed (e.g. the player closed the pipe).
    #[error("writing {what} failed: {source}")]
    Write {
        /// Which output.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The input is not usable WebM.
    #[error("bad WebM in {what}: {source}")]
    Media {
        /// Which input.
        what: String,
        /// The splitter's diagnosis (offset, element id).
        source: MediaError,
    },
    /// The camera device does not exist.
    #[error("camera {device} not found")]
    CameraMissing {
        /// The device path.
        device: PathBuf,
    },
    /// The ffmpeg program could not be started.
    #[error("cannot start {program} (is ffmpeg installed?): {source}")]
    FfmpegMissing {
        /// The program that was looked for.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// ffmpeg exited with an error.
    #[error("ffmpeg failed ({status}): {stderr}")]
    FfmpegFailed {
        /// Its exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// Encoder settings out of bounds (names the flag).
    #[error("{0}")]
    Settings(String),
    /// The HTTP endpoint could not listen.
    #[error("cannot serve on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

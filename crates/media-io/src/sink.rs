//! `--out FILE.webm` and `--out -`: the reassembled stream written to a
//! file or stdout (e.g. `| mpv -`). Only whole init segments and clusters
//! are written, so the output always parses.

use std::path::Path;

use miostream_media::Reassembled;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::MediaIoError;

/// Writes a reassembled WebM stream.
pub struct StreamWriter {
    what: String,
    out: Box<dyn AsyncWrite + Unpin + Send>,
    wrote_init: bool,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl StreamWriter {
    /// Creates (truncates) `path`.
    pub async fn create(path: &Path) -> Result<Self, MediaIoError> {
        let f = tokio::fs::File::create(path)
            .await
            .map_err(|source| MediaIoError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::new(path.display().to_string(), Box::new(f)))
    }

    /// Standard output.
    pub fn stdout() -> Self {
        Self::new("stdout".into(), Box::new(tokio::io::stdout()))
    }

    /// Any writer; `what` names it in errors.
    pub fn new(what: String, out: Box<dyn AsyncWrite + Unpin + Send>) -> Self {
        Self {
            what,
            out,
            wrote_init: false,
        }
    }

    /// Writes one reassembled piece: init segments and clusters (clusters
    /// only after an init); holes and bad inits write nothing.
    pub async fn write(&mut self, item: &Reassembled) -> Result<(), MediaIoError> {
        let bytes = match item {
            Reassembled::Init(b) => {
                self.wrote_init = true;
                b
            }
            Reassembled::Cluster { bytes, .. } if self.wrote_init => bytes,
            _ => return Ok(()),
        };
        self.out
            .write_all(bytes)
            .await
            .map_err(|source| MediaIoError::Write {
                what: self.what.clone(),
                source,
            })
    }

    /// Flushes buffered bytes.
    pub async fn flush(&mut self) -> Result<(), MediaIoError> {
        self.out
            .flush()
            .await
            .map_err(|source| MediaIoError::Write {
                what: self.what.clone(),
                source,
            })
    }
}

//! `--out FILE.webm` and `--out -`: the reassembled stream written to a
//! file or stdout (e.g. `| mpv -`). Only whole init segments and clusters
//! are written, so the output always parses.
//!
//! A file is a recording: media's pure [`Recorder`] lays it out, and
//! [`StreamWriter::finish`] appends its Cues and patches its Segment size,
//! SeekHead and Duration in place, so players seek in it and show its
//! length; a file cut off before `finish` plays as live WebM. A pipe stays
//! live (unknown size, no Cues).

use std::io::SeekFrom;
use std::path::Path;

use miostream_media::{Reassembled, Recorder};
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::MediaIoError;

enum Out {
    /// A pipe or any writer: the live stream as it comes.
    Live(Box<dyn AsyncWrite + Unpin + Send>),
    /// A file: a seekable recording.
    Recording {
        file: BufWriter<tokio::fs::File>,
        // Boxed: the recorder is larger than a boxed writer.
        recorder: Box<Recorder>,
    },
}

/// Writes a reassembled WebM stream.
pub struct StreamWriter {
    what: String,
    out: Out,
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
    /// Creates (truncates) `path` for a seekable recording.
    pub async fn create(path: &Path) -> Result<Self, MediaIoError> {
        let f = tokio::fs::File::create(path)
            .await
            .map_err(|source| MediaIoError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            what: path.display().to_string(),
            out: Out::Recording {
                file: BufWriter::with_capacity(256 * 1024, f),
                recorder: Box::default(),
            },
            wrote_init: false,
        })
    }

    /// Standard output.
    pub fn stdout() -> Self {
        Self::new("stdout".into(), Box::new(tokio::io::stdout()))
    }

    /// Any writer, live (no Cues, unknown size); `what` names it in errors.
    pub fn new(what: String, out: Box<dyn AsyncWrite + Unpin + Send>) -> Self {
        Self {
            what,
            out: Out::Live(out),
            wrote_init: false,
        }
    }

    fn write_error(&self, source: std::io::Error) -> MediaIoError {
        MediaIoError::Write {
            what: self.what.clone(),
            source,
        }
    }

    /// Writes one reassembled piece: init segments and clusters (clusters
    /// only after an init); holes and bad inits write nothing. A recording
    /// keeps its first init segment's tracks.
    pub async fn write(&mut self, item: &Reassembled) -> Result<(), MediaIoError> {
        let (bytes, keyframe) = match item {
            Reassembled::Init(b) => {
                self.wrote_init = true;
                (b, true)
            }
            Reassembled::Cluster {
                bytes, keyframe, ..
            } if self.wrote_init => (bytes, *keyframe),
            _ => return Ok(()),
        };
        let result = match &mut self.out {
            Out::Live(out) => out.write_all(bytes).await,
            Out::Recording { file, recorder } => {
                let laid_out = match item {
                    Reassembled::Init(_) => {
                        recorder.init(bytes).map_err(|source| MediaIoError::Media {
                            what: self.what.clone(),
                            source,
                        })?
                    }
                    _ => recorder.cluster(bytes, keyframe),
                };
                file.write_all(&laid_out).await
            }
        };
        result.map_err(|e| self.write_error(e))
    }

    /// Flushes buffered bytes.
    pub async fn flush(&mut self) -> Result<(), MediaIoError> {
        let result = match &mut self.out {
            Out::Live(out) => out.flush().await,
            Out::Recording { file, .. } => file.flush().await,
        };
        result.map_err(|e| self.write_error(e))
    }

    /// Ends the output: a recording gets its Cues appended and its Segment
    /// size, SeekHead and Duration patched in; returns the recorded media
    /// duration (ms) for a file, `None` for a live output (just flushed).
    pub async fn finish(mut self) -> Result<Option<u64>, MediaIoError> {
        self.flush().await?;
        let what = self.what.clone();
        let err = |source| MediaIoError::Write {
            what: what.clone(),
            source,
        };
        let Out::Recording { file, recorder } = self.out else {
            return Ok(None);
        };
        let Some(closing) = recorder.finish() else {
            return Ok(Some(0));
        };
        let mut file = file.into_inner();
        file.seek(SeekFrom::Start(recorder.written()))
            .await
            .map_err(err)?;
        file.write_all(&closing.append).await.map_err(err)?;
        for patch in &closing.patches {
            file.seek(SeekFrom::Start(patch.offset))
                .await
                .map_err(err)?;
            file.write_all(&patch.bytes).await.map_err(err)?;
        }
        file.flush().await.map_err(err)?;
        file.sync_data().await.map_err(err)?;
        Ok(Some(closing.duration_ms))
    }
}

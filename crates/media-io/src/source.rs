//! Broadcaster sources: bytes from a file, a reader (stdin) or ffmpeg's
//! stdout, split into the init segment and clusters; files are paced at real
//! time by cluster timestamps (the pure [`Pacer`]) and may loop with
//! continuing timestamps.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;

use miostream_media::{Pacer, Segment, Splitter};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tracing::debug;

use crate::encode::{scrub, Encoder, IngestUrl};
use crate::MediaIoError;

/// Gap between the last block of one `--loop` pass and the first of the
/// next (ms): about one frame (40 ms at 25 fps; Opus packets are 20 ms).
pub const LOOP_GAP_MS: u64 = 40;

/// Where the media comes from.
#[non_exhaustive]
pub enum Source {
    /// A WebM file, paced at real time; `looped` replays it forever with
    /// continuing timestamps (the init segment is sent once).
    File {
        /// The file.
        path: PathBuf,
        /// Replay it forever.
        looped: bool,
    },
    /// Standard input carrying a live WebM (already real time: not paced).
    Stdin,
    /// Any reader carrying a live WebM (not paced).
    Reader(Box<dyn AsyncRead + Unpin + Send>),
    /// A V4L2 camera, encoded by ffmpeg to VP8 + Opus live WebM with
    /// keyframe-aligned clusters.
    Webcam {
        /// The device, e.g. `/dev/video0`.
        device: PathBuf,
        /// An ALSA capture device for audio; silence when `None`.
        audio: Option<String>,
    },
    /// An RTMP or SRT ingest: ffmpeg listens for one encoder (OBS, ffmpeg)
    /// and transcodes what it pushes (H.264/AAC, …) the same way.
    Ingest(IngestUrl),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File { path, looped } => f
                .debug_struct("File")
                .field("path", path)
                .field("looped", looped)
                .finish(),
            Source::Stdin => f.write_str("Stdin"),
            Source::Reader(_) => f.write_str("Reader"),
            Source::Webcam { device, audio } => f
                .debug_struct("Webcam")
                .field("device", device)
                .field("audio", audio)
                .finish(),
            Source::Ingest(url) => f.debug_tuple("Ingest").field(url).finish(),
        }
    }
}

/// Settings of a [`MediaSource`].
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The ffmpeg program (default `ffmpeg`, looked up in `PATH`).
    pub ffmpeg: PathBuf,
    /// Bytes read per system call (default 64 KiB).
    pub read_size: usize,
    /// How ffmpeg encodes a webcam or an ingest.
    pub encoder: Encoder,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            ffmpeg: PathBuf::from("ffmpeg"),
            read_size: 64 * 1024,
            encoder: Encoder::default(),
        }
    }
}

/// A running source: call [`MediaSource::next`] for each segment.
pub struct MediaSource {
    what: String,
    reader: Box<dyn AsyncRead + Unpin + Send>,
    buf: Vec<u8>,
    splitter: Splitter,
    ready: VecDeque<Segment>,
    /// Paced sources: the pacer and the time line's origin.
    pacing: Option<(Pacer, Instant)>,
    /// Looped files: the path to reopen.
    loop_path: Option<PathBuf>,
    sent_init: bool,
    first_ts: Option<u64>,
    end_ms: u64,
    child: Option<Child>,
    /// What to scrub from ffmpeg's messages (an ingest's stream key).
    secrets: Vec<String>,
    done: bool,
}

impl std::fmt::Debug for MediaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSource")
            .field("what", &self.what)
            .field("position", &self.splitter.position())
            .finish_non_exhaustive()
    }
}

async fn open_file(path: &PathBuf) -> Result<tokio::fs::File, MediaIoError> {
    tokio::fs::File::open(path)
        .await
        .map_err(|source| MediaIoError::Open {
            path: path.clone(),
            source,
        })
}

impl MediaSource {
    /// Opens the source now, so a missing file, camera or ffmpeg is
    /// reported before anything else starts.
    pub async fn open(source: Source, config: SourceConfig) -> Result<Self, MediaIoError> {
        config.encoder.check().map_err(MediaIoError::Settings)?;
        let mut secrets = Vec::new();
        let (what, reader, pacing, loop_path, child): (
            String,
            Box<dyn AsyncRead + Unpin + Send>,
            bool,
            Option<PathBuf>,
            Option<Child>,
        ) = match source {
            Source::File { path, looped } => {
                let f = open_file(&path).await?;
                let what = path.display().to_string();
                (what, Box::new(f), true, looped.then_some(path), None)
            }
            Source::Stdin => (
                "stdin".into(),
                Box::new(tokio::io::stdin()),
                false,
                None,
                None,
            ),
            Source::Reader(r) => ("input".into(), r, false, None, None),
            Source::Webcam { device, audio } => {
                if !device.exists() {
                    return Err(MediaIoError::CameraMissing { device });
                }
                let mut input: Vec<String> = vec!["-f".into(), "v4l2".into()];
                if let Some(s) = config.encoder.size {
                    input.extend(["-video_size".into(), s.to_string()]);
                }
                if let Some(f) = config.encoder.framerate {
                    input.extend(["-framerate".into(), f.to_string()]);
                }
                input.extend(["-i".into(), device.display().to_string()]);
                match audio {
                    Some(a) => input.extend(["-f".into(), "alsa".into(), "-i".into(), a]),
                    None => input.extend(
                        ["-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo"].map(String::from),
                    ),
                }
                let (stdout, child) = spawn_ffmpeg(&config.ffmpeg, &input, &config.encoder)?;
                (
                    format!("ffmpeg capturing {}", device.display()),
                    Box::new(stdout),
                    false,
                    None,
                    Some(child),
                )
            }
            Source::Ingest(url) => {
                secrets = url.secrets();
                let (stdout, child) =
                    spawn_ffmpeg(&config.ffmpeg, &url.input_args(), &config.encoder)?;
                (
                    format!("ffmpeg listening on {url}"),
                    Box::new(stdout),
                    false,
                    None,
                    Some(child),
                )
            }
        };
        Ok(Self {
            what,
            reader,
            buf: vec![0; config.read_size.max(1)],
            splitter: Splitter::new(),
            ready: VecDeque::new(),
            pacing: pacing.then(|| (Pacer::default(), Instant::now())),
            loop_path,
            sent_init: false,
            first_ts: None,
            end_ms: 0,
            child,
            secrets,
            done: false,
        })
    }

    /// What the source reads, for messages (secrets redacted).
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// The next segment: the init segment first (once, even when looping),
    /// then each cluster — for a file, not before it is due. `Ok(None)` at
    /// the end of the input.
    pub async fn next(&mut self) -> Result<Option<Segment>, MediaIoError> {
        loop {
            if let Some(segment) = self.ready.pop_front() {
                match &segment {
                    Segment::Init(_) if self.sent_init => continue, // a loop pass
                    Segment::Init(_) => self.sent_init = true,
                    Segment::Cluster(c) => {
                        self.first_ts.get_or_insert(c.timestamp_ms);
                        self.end_ms = self.end_ms.max(c.last_block_ms);
                        if let Some((pacer, origin)) = &mut self.pacing {
                            let due = pacer.due(c.timestamp_ms, origin.elapsed());
                            tokio::time::sleep_until(*origin + due).await;
                        }
                    }
                }
                return Ok(Some(segment));
            }
            if self.done {
                return Ok(None);
            }
            self.fill().await?;
        }
    }

    /// Reads once and splits; handles the end of the input.
    async fn fill(&mut self) -> Result<(), MediaIoError> {
        let n = self
            .reader
            .read(&mut self.buf)
            .await
            .map_err(|source| MediaIoError::Read {
                what: self.what.clone(),
                source,
            })?;
        let media = |source| MediaIoError::Media {
            what: self.what.clone(),
            source,
        };
        if n > 0 {
            let segments = self.splitter.push(&self.buf[..n]).map_err(media)?;
            self.ready.extend(segments);
            return Ok(());
        }
        // ffmpeg's own failure explains a cut-off stream best: first.
        if let Some(child) = &mut self.child {
            check_ffmpeg(child, &self.secrets).await?;
            tracing::info!(input = %self.what, "ffmpeg exited: its input ended");
        }
        let segments = self.splitter.finish().map_err(media)?;
        self.ready.extend(segments);
        match &self.loop_path {
            Some(path) if self.first_ts.is_some() => {
                // The next pass continues the time line one frame after the
                // last block: players see one continuous stream.
                let shift = (self.end_ms + LOOP_GAP_MS).saturating_sub(self.first_ts.unwrap_or(0));
                debug!(file = %self.what, shift, "looping");
                self.reader = Box::new(open_file(path).await?);
                self.splitter = Splitter::new();
                self.splitter.set_timestamp_shift(shift);
            }
            _ => self.done = true,
        }
        Ok(())
    }
}

impl Drop for MediaSource {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Spawns ffmpeg with `input` arguments and the encoder's output
/// arguments (live WebM on its stdout); the one way an ffmpeg child is made.
fn spawn_ffmpeg(
    ffmpeg: &PathBuf,
    input: &[String],
    encoder: &Encoder,
) -> Result<(tokio::process::ChildStdout, Child), MediaIoError> {
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(input)
        .args(encoder.output_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| MediaIoError::FfmpegMissing {
        program: ffmpeg.clone(),
        source,
    })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| MediaIoError::FfmpegFailed {
            status: "no stdout".into(),
            stderr: String::new(),
        })?;
    Ok((stdout, child))
}

/// At the end of ffmpeg's output: an error exit becomes an error with the
/// end of its error output.
async fn check_ffmpeg(child: &mut Child, secrets: &[String]) -> Result<(), MediaIoError> {
    let status = child.wait().await.map_err(|source| MediaIoError::Read {
        what: "ffmpeg".into(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let mut stderr = Vec::new();
    if let Some(e) = child.stderr.take() {
        // Bounded: the last words are what matter.
        let _ = e.take(64 * 1024).read_to_end(&mut stderr).await;
    }
    let text = scrub(&String::from_utf8_lossy(&stderr), secrets);
    let tail: String = text
        .trim()
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    Err(MediaIoError::FfmpegFailed {
        status: status.to_string(),
        stderr: tail,
    })
}

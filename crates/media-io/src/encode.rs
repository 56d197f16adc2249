//! What ffmpeg is asked to do for the inputs it encodes (a webcam, an RTMP
//! or SRT ingest): the encoder settings (`--video-bitrate`, `--video-size`,
//! `--framerate`, `--keyint`), checked with one-line errors, and the ingest
//! URLs, whose stream keys never reach a log. Pure: building arguments,
//! no process.

use std::fmt;
use std::str::FromStr;

/// A video frame size, `WxH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl FromStr for VideoSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("video size {s:?}: expected WxH, e.g. 1280x720 (even, 16..=7680)");
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let (width, height): (u32, u32) =
            (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
        let ok = |v: u32| (16..=7680).contains(&v) && v % 2 == 0;
        if !ok(width) || !ok(height) {
            return Err(bad());
        }
        Ok(Self { width, height })
    }
}

impl fmt::Display for VideoSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Bounds of the encoder settings.
pub(crate) const VIDEO_KBPS: std::ops::RangeInclusive<u32> = 50..=50_000;
/// Frames per second accepted.
pub(crate) const FRAMERATE: std::ops::RangeInclusive<u32> = 1..=120;
/// Frames between keyframes accepted.
pub(crate) const KEYINT: std::ops::RangeInclusive<u32> = 1..=600;

/// How ffmpeg encodes an input (VP8 + Opus live WebM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoder {
    /// Video bitrate (kbit/s).
    pub video_kbps: u32,
    /// Output frame size (default: the input's).
    pub size: Option<VideoSize>,
    /// Output frame rate (default: the input's).
    pub framerate: Option<u32>,
    /// Frames between keyframes: each keyframe starts a cluster.
    pub keyint: u32,
}

impl Default for Encoder {
    /// PRODUCT.md's settings: 1032 kbit/s, a keyframe every 30 frames.
    fn default() -> Self {
        Self {
            video_kbps: 1032,
            size: None,
            framerate: None,
            keyint: 30,
        }
    }
}

impl Encoder {
    /// Checks the settings; the error names the flag.
    pub fn check(&self) -> Result<(), String> {
        if !VIDEO_KBPS.contains(&self.video_kbps) {
            return Err(format!(
                "--video-bitrate {} is outside {}..={} kbit/s",
                self.video_kbps,
                VIDEO_KBPS.start(),
                VIDEO_KBPS.end()
            ));
        }
        if let Some(f) = self.framerate {
            if !FRAMERATE.contains(&f) {
                return Err(format!(
                    "--framerate {f} is outside {}..={}",
                    FRAMERATE.start(),
                    FRAMERATE.end()
                ));
            }
        }
        if !KEYINT.contains(&self.keyint) {
            return Err(format!(
                "--keyint {} is outside {}..={} frames",
                self.keyint,
                KEYINT.start(),
                KEYINT.end()
            ));
        }
        Ok(())
    }

    /// ffmpeg's output arguments: VP8 + Opus live WebM on stdout, one
    /// cluster per keyframe. The muxer starts a cluster at every video
    /// keyframe and also once a cluster spans `-cluster_time_limit`, so
    /// that limit is kept above a keyframe interval (at the set frame rate,
    /// or 25 fps when the input's rate is kept).
    pub fn output_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        if let Some(s) = self.size {
            push(&["-s", &s.to_string()]);
        }
        if let Some(f) = self.framerate {
            push(&["-r", &f.to_string()]);
        }
        let gop_ms = u64::from(self.keyint) * 1000 / u64::from(self.framerate.unwrap_or(25));
        let cluster_ms = (gop_ms + 100).max(1100);
        push(&[
            "-c:v",
            "libvpx",
            "-b:v",
            &format!("{}k", self.video_kbps),
            "-g",
            &self.keyint.to_string(),
            "-keyint_min",
            &self.keyint.to_string(),
            "-deadline",
            "realtime",
            "-cpu-used",
            "16",
            "-c:a",
            "libopus",
            "-b:a",
            "128k",
            "-ac",
            "2",
            "-ar",
            "48000",
            "-f",
            "webm",
            "-live",
            "1",
            "-cluster_size_limit",
            "5000000",
            "-cluster_time_limit",
            &cluster_ms.to_string(),
            "pipe:1",
        ]);
        a
    }
}

/// An ingest the broadcaster listens on (through ffmpeg) for an encoder
/// such as OBS to push to.
#[derive(Clone, PartialEq, Eq)]
pub enum IngestUrl {
    /// `rtmp://HOST:PORT/APP/KEY` (port 1935 when absent).
    Rtmp {
        /// Host and port to listen on.
        host: String,
        /// Port.
        port: u16,
        /// The application (`live`).
        app: String,
        /// The stream key: a secret, never logged.
        key: String,
    },
    /// `srt://HOST:PORT[?mode=listener&...]`, options kept; a `passphrase`
    /// or `streamid` is a secret, never logged.
    Srt {
        /// Host to listen on.
        host: String,
        /// Port.
        port: u16,
        /// Options after `?` other than `mode`.
        options: Vec<(String, String)>,
    },
}

/// `HOST:PORT` (or `HOST` with a default port); `url` names the URL in
/// errors without its secrets.
fn host_port(rest: &str, default: Option<u16>, url: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("{url}: {why}");
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (
            rest,
            default.ok_or_else(|| bad("a port is needed (HOST:PORT)"))?,
        ),
    };
    if host.is_empty() || host.contains(['/', '?', '@', ' ']) {
        return Err(bad("expected HOST:PORT"));
    }
    if port == 0 {
        return Err(bad("port 0 is not a port to push to"));
    }
    Ok((host.to_owned(), port))
}

impl FromStr for IngestUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = url.strip_prefix("rtmp://") {
            let mut parts = rest.splitn(3, '/');
            let authority = parts.next().unwrap_or_default();
            let (app, key) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let (host, port) = host_port(authority, Some(1935), "rtmp://…")?;
            if app.is_empty() || key.is_empty() || key.contains(['/', '?', ' ']) {
                return Err(format!(
                    "rtmp://{host}:{port}/…: expected rtmp://HOST:PORT/APP/KEY (e.g. /live/KEY)"
                ));
            }
            return Ok(Self::Rtmp {
                host,
                port,
                app: app.to_owned(),
                key: key.to_owned(),
            });
        }
        if let Some(rest) = url.strip_prefix("srt://") {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let authority = authority.trim_end_matches('/');
            let (host, port) = host_port(authority, None, "srt://…")?;
            let mut options = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k == "mode" {
                    if v != "listener" {
                        return Err(format!(
                            "srt://{host}:{port}: the broadcaster listens (mode=listener), not mode={v}"
                        ));
                    }
                    continue;
                }
                options.push((k.to_owned(), v.to_owned()));
            }
            return Ok(Self::Srt {
                host,
                port,
                options,
            });
        }
        Err("not an ingest URL: expected rtmp://HOST:PORT/APP/KEY or srt://HOST:PORT".into())
    }
}

const SECRET_SRT_OPTIONS: [&str; 2] = ["passphrase", "streamid"];

impl IngestUrl {
    /// Whether `s` names an ingest (rather than a file).
    pub fn is_ingest(s: &str) -> bool {
        s.starts_with("rtmp://") || s.starts_with("srt://")
    }

    /// The URL ffmpeg listens on (secrets included: for ffmpeg only).
    pub fn ffmpeg_url(&self) -> String {
        match self {
            Self::Rtmp {
                host,
                port,
                app,
                key,
            } => format!("rtmp://{host}:{port}/{app}/{key}"),
            Self::Srt {
                host,
                port,
                options,
            } => {
                let mut u = format!("srt://{host}:{port}?mode=listener");
                for (k, v) in options {
                    u.push_str(&format!("&{k}={v}"));
                }
                u
            }
        }
    }

    /// ffmpeg's input arguments: listen for one encoder.
    pub fn input_args(&self) -> Vec<String> {
        let mut a: Vec<String> = match self {
            Self::Rtmp { .. } => vec!["-listen".into(), "1".into()],
            Self::Srt { .. } => Vec::new(),
        };
        a.push("-i".into());
        a.push(self.ffmpeg_url());
        a
    }

    /// The secrets in this URL, to scrub from ffmpeg's messages.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            Self::Rtmp { key, .. } => vec![key.clone()],
            Self::Srt { options, .. } => options
                .iter()
                .filter(|(k, v)| SECRET_SRT_OPTIONS.contains(&k.as_str()) && !v.is_empty())
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }
}

impl fmt::Display for IngestUrl {
    /// Redacted: the RTMP key and SRT secrets are `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rtmp {
                host, port, app, ..
            } => write!(f, "rtmp://{host}:{port}/{app}/***"),
            Self::Srt {
                host,
                port,
                options,
            } => {
                write!(f, "srt://{host}:{port}?mode=listener")?;
                for (k, v) in options {
                    let v = if SECRET_SRT_OPTIONS.contains(&k.as_str()) {
                        "***"
                    } else {
                        v
                    };
                    write!(f, "&{k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for IngestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IngestUrl({self})")
    }
}

/// `text` with every secret replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_settings_are_checked_and_shape_the_arguments() {
        assert_eq!(Encoder::default().check(), Ok(()));
        let a = Encoder::default().output_args().join(" ");
        assert!(a.contains("-b:v 1032k -g 30"), "{a}");
        assert!(a.contains("-cluster_time_limit 1300"), "{a}");
        assert!(a.ends_with(
            "-f webm -live 1 -cluster_size_limit 5000000 -cluster_time_limit 1300 pipe:1"
        ));
        let e = Encoder {
            video_kbps: 2500,
            size: Some("1280x720".parse().unwrap()),
            framerate: Some(60),
            keyint: 120,
        };
        let a = e.output_args().join(" ");
        assert!(
            a.starts_with("-s 1280x720 -r 60 -c:v libvpx -b:v 2500k -g 120"),
            "{a}"
        );
        assert!(a.contains("-cluster_time_limit 2100"), "{a}");
        for (bad, flag) in [
            (
                Encoder {
                    video_kbps: 10,
                    ..Encoder::default()
                },
                "--video-bitrate 10",
            ),
            (
                Encoder {
                    framerate: Some(0),
                    ..Encoder::default()
                },
                "--framerate 0",
            ),
            (
                Encoder {
                    keyint: 0,
                    ..Encoder::default()
                },
                "--keyint 0",
            ),
            (
                Encoder {
                    keyint: 10_000,
                    ..Encoder::default()
                },
                "--keyint 10000",
            ),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.starts_with(flag), "{err}");
        }
        for bad in [
            "1280",
            "1280x",
            "x720",
            "0x0",
            "1281x720",
            "99999x720",
            "axb",
            "1280x720x3",
        ] {
            let err = bad.parse::<VideoSize>().unwrap_err();
            assert!(err.contains("expected WxH"), "{bad}: {err}");
        }
        assert_eq!(
            "640X360".parse::<VideoSize>().unwrap().to_string(),
            "640x360"
        );
    }

    #[test]
    fn ingest_urls_parse_and_never_show_their_secrets() {
        let u: IngestUrl = "rtmp://0.0.0.0:1935/live/s3cr3t-key".parse().unwrap();
        assert_eq!(u.to_string(), "rtmp://0.0.0.0:1935/live/***");
        assert_eq!(format!("{u:?}"), "IngestUrl(rtmp://0.0.0.0:1935/live/***)");
        assert_eq!(
            u.input_args(),
            ["-listen", "1", "-i", "rtmp://0.0.0.0:1935/live/s3cr3t-key"]
        );
        assert_eq!(u.secrets(), ["s3cr3t-key"]);
        assert_eq!(
            scrub(
                "rtmp://0.0.0.0:1935/live/s3cr3t-key: I/O error",
                &u.secrets()
            ),
            "rtmp://0.0.0.0:1935/live/***: I/O error"
        );
        let d: IngestUrl = "rtmp://host/live/k".parse().unwrap();
        assert_eq!(d.to_string(), "rtmp://host:1935/live/***");

        let s: IngestUrl = "srt://127.0.0.1:9000".parse().unwrap();
        assert_eq!(s.ffmpeg_url(), "srt://127.0.0.1:9000?mode=listener");
        assert_eq!(s.input_args(), ["-i", "srt://127.0.0.1:9000?mode=listener"]);
        let s: IngestUrl = "srt://0.0.0.0:9000?mode=listener&passphrase=longsecret1&latency=200000"
            .parse()
            .unwrap();
        assert_eq!(
            s.to_string(),
            "srt://0.0.0.0:9000?mode=listener&passphrase=***&latency=200000"
        );
        assert!(s.ffmpeg_url().contains("passphrase=longsecret1"));
        assert_eq!(s.secrets(), ["longsecret1"]);

        for (bad, says) in [
            ("rtmp://host:1935/live", "expected rtmp://HOST:PORT/APP/KEY"),
            (
                "rtmp://host:1935/live/",
                "expected rtmp://HOST:PORT/APP/KEY",
            ),
            ("rtmp://host:99999/live/k", "bad port"),
            ("rtmp://:1935/live/k", "expected HOST:PORT"),
            ("srt://host", "a port is needed"),
            ("srt://host:9000?mode=caller", "listens (mode=listener)"),
            ("srt://host:0", "port 0"),
            ("http://host/x", "not an ingest URL"),
        ] {
            let err = bad.parse::<IngestUrl>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // A malformed URL's error does not echo its key either.
        let err = "rtmp://host:99999/live/topsecret"
            .parse::<IngestUrl>()
            .unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(IngestUrl::is_ingest("srt://h:1") && !IngestUrl::is_ingest("talk.webm"));
    }
}

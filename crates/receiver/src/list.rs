//! `miostream-receiver list`: the supervisor's live streams as one line
//! each (tab-separated, the name first) or, with `--json`, one JSON array.
//! The schema ([`ListedStream`]) lives here once, for the binary and its
//! tests.

use miostream_protocol::signal::StreamInfo;
use miostream_protocol::{IntegrityMode, TopologyKind};
use serde::{Deserialize, Serialize};

/// One stream as `list --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedStream {
    /// Unique name (what `run --stream` and `watch` take).
    pub name: String,
    /// The broadcaster's `--title` (empty: none).
    pub title: String,
    /// Overlay kind.
    pub topology: TopologyKind,
    /// Chunk integrity mode.
    pub integrity: IntegrityMode,
    /// Receivers joined now.
    pub viewers: u32,
    /// Media bitrate (bit/s): the supervisor's average of its receivers'
    /// goodput reports; 0 until a receiver has reported.
    pub bitrate_bps: u64,
    /// MIME type with codecs.
    pub media_type: String,
}

impl From<&StreamInfo> for ListedStream {
    fn from(s: &StreamInfo) -> Self {
        Self {
            name: s.name.clone(),
            title: s.title.clone(),
            topology: s.topology,
            integrity: s.integrity,
            viewers: s.receivers,
            bitrate_bps: s.bitrate_bps,
            media_type: s.media_type.clone(),
        }
    }
}

impl ListedStream {
    /// The plain `list` line: name, title (or `-`), topology, integrity,
    /// viewers, bitrate, media type, separated by tabs.
    pub fn line(&self) -> String {
        let title = if self.title.is_empty() {
            "-"
        } else {
            &self.title
        };
        let viewers = match self.viewers {
            1 => "1 viewer".to_owned(),
            n => format!("{n} viewers"),
        };
        let rate = match self.bitrate_bps {
            0 => "bitrate unknown".to_owned(),
            b => format!("{} kbit/s", b / 1000),
        };
        format!(
            "{}\t{title}\t{} topology\t{} integrity\t{viewers}\t{rate}\t{}",
            self.name, self.topology, self.integrity, self.media_type
        )
    }
}

/// `list --json`: one JSON array.
pub fn to_json(streams: &[StreamInfo]) -> String {
    let listed: Vec<ListedStream> = streams.iter().map(ListedStream::from).collect();
    // Plain data: serializing cannot fail.
    serde_json::to_string_pretty(&listed).unwrap_or_else(|e| unreachable!("serialize: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use miostream_protocol::StreamId;

    fn info(title: &str, receivers: u32, bitrate_bps: u64) -> StreamInfo {
        StreamInfo {
            id: StreamId(7),
            name: "cam".into(),
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Sign,
            media_type: r#"video/webm; codecs="vp8,opus""#.into(),
            receivers,
            title: title.into(),
            bitrate_bps,
        }
    }

    #[test]
    fn lines_show_title_viewers_and_bitrate() {
        assert_eq!(
            ListedStream::from(&info("Friday talk", 3, 1_234_000)).line(),
            "cam\tFriday talk\ttree topology\tsign integrity\t3 viewers\t1234 kbit/s\tvideo/webm; codecs=\"vp8,opus\""
        );
        let l = ListedStream::from(&info("", 1, 0)).line();
        assert!(l.starts_with("cam\t-\t"), "{l}");
        assert!(l.contains("\t1 viewer\tbitrate unknown\t"), "{l}");
    }

    #[test]
    fn json_is_one_array_with_every_field() {
        let json = to_json(&[info("Friday talk", 3, 1_234_000), info("", 0, 0)]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0]["name"], "cam");
        assert_eq!(a[0]["title"], "Friday talk");
        assert_eq!(a[0]["topology"], "tree");
        assert_eq!(a[0]["integrity"], "sign");
        assert_eq!(a[0]["viewers"], 3);
        assert_eq!(a[0]["bitrate_bps"], 1_234_000);
        assert_eq!(a[1]["title"], "");
        assert_eq!(to_json(&[]).trim(), "[]");
        let back: Vec<ListedStream> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back[0],
            ListedStream::from(&info("Friday talk", 3, 1_234_000))
        );
    }
}

//! The MIME type of a WebM stream with its codecs (RFC 6381 `codecs=`), as
//! a browser's Media Source Extensions need it: read from the Tracks of an
//! init segment, or taken from the stream's announced type when that
//! already names its codecs.

use crate::ebml::{self, id, Read};

const CODEC_ID: u32 = 0x86;
const TRACK_TYPE_VIDEO: u64 = 1;
const TRACK_TYPE_AUDIO: u64 = 2;

/// The codecs of an init segment's tracks, as MIME `codecs` names, in track
/// order (`["vp8", "opus"]`), with whether a video track is present.
/// `None` when the Tracks cannot be read or a codec has no WebM name here
/// (a browser could not be told what to expect).
pub fn init_codecs(init: &[u8]) -> Option<(Vec<&'static str>, bool)> {
    let tracks = top_level(init)?
        .into_iter()
        .find(|(i, _)| *i == id::TRACKS)?
        .1;
    let mut codecs = Vec::new();
    let mut video = false;
    for (i, entry) in ebml::children(tracks) {
        if i != id::TRACK_ENTRY {
            continue;
        }
        let mut kind = None;
        let mut codec = None;
        for (c, body) in ebml::children(entry) {
            match c {
                id::TRACK_TYPE => kind = ebml::uint(body),
                CODEC_ID => codec = Some(body),
                _ => {}
            }
        }
        let name = match codec? {
            b"V_VP8" => "vp8",
            b"V_VP9" => "vp9",
            b"V_AV1" => "av01",
            b"A_OPUS" => "opus",
            b"A_VORBIS" => "vorbis",
            _ => return None,
        };
        match kind {
            Some(TRACK_TYPE_VIDEO) => video = true,
            Some(TRACK_TYPE_AUDIO) => {}
            _ => continue, // subtitles and the like: not for a SourceBuffer
        }
        codecs.push(name);
    }
    (!codecs.is_empty()).then_some((codecs, video))
}

/// The type to serve a live stream as: `announced` when it names codecs
/// already, else `video/webm; codecs="…"` (or `audio/webm`) from `init`,
/// else `announced` as it is.
pub fn live_media_type(announced: &str, init: Option<&[u8]>) -> String {
    if announced.contains("codecs=") {
        return announced.to_owned();
    }
    match init.and_then(init_codecs) {
        Some((codecs, video)) => format!(
            "{}/webm; codecs=\"{}\"",
            if video { "video" } else { "audio" },
            codecs.join(",")
        ),
        None => announced.to_owned(),
    }
}

/// The Segment's children (id, body) after the EBML header: whole ones
/// only, stopping at the first Cluster or anything unreadable.
fn top_level(init: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let (ebml_end, _) = element_end(init, 0)?;
    let seg = init.get(ebml_end..)?;
    let Read::Done(seg_id, il) = ebml::read_id(seg) else {
        return None;
    };
    if seg_id != id::SEGMENT {
        return None;
    }
    let Read::Done(size, sl) = ebml::read_size(seg.get(il..)?) else {
        return None;
    };
    let body = &seg[il + sl..];
    let body = match size.and_then(|s| usize::try_from(s).ok()) {
        Some(s) if s <= body.len() => &body[..s],
        _ => body,
    };
    Some(
        ebml::children(body)
            .take_while(|(i, _)| *i != id::CLUSTER)
            .collect(),
    )
}

/// Where the known-size element at `at` ends.
fn element_end(buf: &[u8], at: usize) -> Option<(usize, u32)> {
    let rest = buf.get(at..)?;
    let Read::Done(i, il) = ebml::read_id(rest) else {
        return None;
    };
    let Read::Done(Some(size), sl) = ebml::read_size(rest.get(il..)?) else {
        return None;
    };
    let end = at
        .checked_add(il + sl)?
        .checked_add(usize::try_from(size).ok()?)?;
    (end <= buf.len()).then_some((end, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_init() -> Vec<u8> {
        let data = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"),
        )
        .expect("the bundled test media");
        match crate::Splitter::new()
            .push(&data)
            .expect("it splits")
            .remove(0)
        {
            crate::Segment::Init(b) => b,
            crate::Segment::Cluster(_) => panic!("a cluster before the init"),
        }
    }

    #[test]
    fn the_bundled_media_is_vp8_and_opus() {
        let init = test_init();
        assert_eq!(init_codecs(&init), Some((vec!["vp8", "opus"], true)));
        assert_eq!(
            live_media_type("video/webm", Some(&init)),
            "video/webm; codecs=\"vp8,opus\""
        );
    }

    #[test]
    fn an_announced_type_with_codecs_wins_and_garbage_keeps_the_announced_one() {
        let init = test_init();
        let announced = "video/webm; codecs=\"vp9,opus\"";
        assert_eq!(live_media_type(announced, Some(&init)), announced);
        assert_eq!(live_media_type("video/webm", None), "video/webm");
        for cut in [0, 1, 5, 30, init.len() / 2] {
            // Truncated Tracks are not read; nothing panics.
            let _ = init_codecs(&init[..cut]);
        }
        assert_eq!(
            live_media_type("video/webm", Some(b"garbage")),
            "video/webm"
        );
    }
}

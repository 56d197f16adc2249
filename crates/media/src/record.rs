//! Seekable recordings (`--out FILE.webm`): the [`Recorder`] turns the
//! reassembled live stream (an init segment, then clusters) into the bytes
//! of a WebM file that stays playable if the writer dies at any point (an
//! unknown-size Segment, like any live WebM) and, once [`Recorder::finish`]'s
//! [`Closing`] is applied, seeks: a known Segment size, a Duration in Info,
//! Cues (one CuePoint per video-keyframe cluster) and a SeekHead pointing at
//! Info, Tracks and Cues.
//!
//! Space for the SeekHead and the Duration is reserved at write time with
//! Void elements and patched in place on close (same lengths, so no offset
//! moves); the Cues are appended. Memory is bounded: 16 bytes per keyframe
//! cluster (at most [`MAX_CUES`]), never the recording. Cluster timestamps
//! are rebased so the recording starts at 0 (a viewer joins mid-stream) and
//! never run backwards (a restarted broadcaster under `--wait`). Pure: the
//! caller writes the bytes and applies the patches (media-io's file writer).

use crate::ebml::{self, id};
use crate::init::{end_of, header_at, segment_start};
use crate::split::{block_timecode, shift_cluster, video_track};
use crate::MediaError;

/// Bytes reserved after the Segment header for the SeekHead (three Seek
/// entries with 8-byte positions take 68; the rest stays a Void).
const SEEK_RESERVE: usize = 96;

/// A Duration element: id (2 bytes), size (1), a 64-bit float.
const DURATION_LEN: usize = 11;

/// CuePoints kept at most (one per keyframe cluster: about 12 days of ~1 s
/// clusters); later keyframe clusters are not indexed.
pub const MAX_CUES: usize = 1 << 20;

/// Gap put between the last block before a timestamp rewind (a restarted
/// broadcaster) and the first block after it, in ms: about one frame.
const REWIND_GAP_MS: u64 = 40;

const MS_NS: u64 = 1_000_000;

/// Where the patched elements sit, learned from the init segment.
#[derive(Debug, Clone)]
struct Layout {
    /// Offset of the Segment's 8-byte size field.
    segment_size_at: u64,
    /// Offset of the Segment's first child (what positions count from).
    data_start: u64,
    /// Offset of the SeekHead reservation.
    seek_at: u64,
    /// Offset of the Void reserved for Duration.
    duration_at: u64,
    /// Positions (from `data_start`) of Info and Tracks.
    info_pos: u64,
    tracks_pos: u64,
    /// Nanoseconds per timestamp tick.
    scale_ns: u64,
    /// The track CuePoints name: the video track, else the first.
    cue_track: u64,
}

/// Builds a seekable WebM from a live stream; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Bytes handed out so far: the file's length.
    written: u64,
    layout: Option<Layout>,
    /// (rebased cluster timestamp in ticks, position from `data_start`).
    cues: Vec<(u64, u64)>,
    /// Input ticks minus output ticks.
    shift: Option<i128>,
    /// The last block's rebased time (ticks): later clusters start after it.
    end_ticks: u64,
    clusters: u64,
}

/// One in-place overwrite of bytes already written (same length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// File offset.
    pub offset: u64,
    /// The new bytes.
    pub bytes: Vec<u8>,
}

/// What closing a recording takes: append `append` (the Cues) at the end,
/// then apply every patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// Bytes to append at the end of the file.
    pub append: Vec<u8>,
    /// Overwrites of bytes already written.
    pub patches: Vec<Patch>,
    /// The recording's media duration (ms).
    pub duration_ms: u64,
}

impl Closing {
    /// Applies the closing to an in-memory copy of the file.
    pub fn apply(&self, file: &mut Vec<u8>) {
        file.extend_from_slice(&self.append);
        for p in &self.patches {
            let at = usize::try_from(p.offset).unwrap_or(usize::MAX);
            if let Some(dst) = at
                .checked_add(p.bytes.len())
                .and_then(|end| file.get_mut(at..end))
            {
                dst.copy_from_slice(&p.bytes);
            }
        }
    }
}

/// Writes an element: a 1-byte size when it fits, else 8 bytes.
fn element(out: &mut Vec<u8>, i: u32, body: &[u8]) {
    out.extend_from_slice(&id_bytes(i));
    match u8::try_from(body.len()) {
        Ok(n) if n < 0x7F => out.push(0x80 | n),
        _ => out.extend_from_slice(&ebml::size8(body.len() as u64)),
    }
    out.extend_from_slice(body);
}

/// An element id as written (its marker bits are part of the value).
fn id_bytes(i: u32) -> Vec<u8> {
    let b = i.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count().min(3);
    b[skip..].to_vec()
}

/// An unsigned integer element with an 8-byte value.
fn uint_element(out: &mut Vec<u8>, i: u32, v: u64) {
    element(out, i, &v.to_be_bytes());
}

/// A Void element of exactly `len` (≥ 2) bytes.
fn void(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    ebml::void_in_place(&mut v);
    v
}

const SEEK: u32 = 0x4DBB;
const SEEK_ID: u32 = 0x53AB;
const SEEK_POSITION: u32 = 0x53AC;
const CUE_POINT: u32 = 0xBB;
const CUE_TIME: u32 = 0xB3;
const CUE_TRACK_POSITIONS: u32 = 0xB7;
const CUE_TRACK: u32 = 0xF7;
const CUE_CLUSTER_POSITION: u32 = 0xF1;

impl Recorder {
    /// A recorder before its init segment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes handed out so far (the file's length before closing).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Clusters recorded.
    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// The init segment (EBML header, Segment header, Info, Tracks; other
    /// children are dropped): returns the bytes to write. Only the first
    /// one counts: later init segments (a restarted broadcaster) write
    /// nothing, the recording keeps its tracks.
    pub fn init(&mut self, init: &[u8]) -> Result<Vec<u8>, MediaError> {
        if self.layout.is_some() {
            return Ok(Vec::new());
        }
        let (ebml_end, mut at) = segment_start(init)?;
        let (mut info, mut tracks) = (None, None);
        while at < init.len() {
            let (i, size, hl) = header_at(init, at)?;
            if i == id::CLUSTER || i == id::EBML || i == id::SEGMENT {
                return Err(MediaError::Corrupt {
                    offset: at as u64,
                    what: "an init segment ends before its first Cluster",
                });
            }
            let end = end_of(init, at, i, size, hl)?;
            match i {
                id::INFO => info = Some(&init[at + hl..end]),
                id::TRACKS => tracks = Some((&init[at..end], &init[at + hl..end])),
                _ => {}
            }
            at = end;
        }
        let (Some(info), Some((tracks, tracks_body))) = (info, tracks) else {
            return Err(MediaError::Corrupt {
                offset: at as u64,
                what: "an init segment without Info or Tracks",
            });
        };
        let mut out = Vec::with_capacity(init.len() + SEEK_RESERVE + 32);
        out.extend_from_slice(&init[..ebml_end]);
        out.extend_from_slice(&id_bytes(id::SEGMENT));
        let segment_size_at = out.len() as u64;
        out.extend_from_slice(&ebml::UNKNOWN_SIZE);
        let data_start = out.len() as u64;
        let seek_at = out.len() as u64;
        out.extend_from_slice(&void(SEEK_RESERVE));
        // Info without its Duration (and Voids), plus room for ours.
        let mut scale_ns = MS_NS;
        let mut body = Vec::with_capacity(info.len() + DURATION_LEN);
        for (c, start, end) in ebml::child_ranges(info) {
            match c {
                id::DURATION | id::VOID => continue,
                id::TIMESTAMP_SCALE => {
                    let (_, _, chl) = header_at(&info[start..end], 0)?;
                    scale_ns = ebml::uint(&info[start + chl..end])
                        .filter(|v| *v > 0)
                        .unwrap_or(MS_NS);
                }
                _ => {}
            }
            body.extend_from_slice(&info[start..end]);
        }
        let duration_in_body = body.len();
        body.extend_from_slice(&void(DURATION_LEN));
        let info_pos = out.len() as u64 - data_start;
        out.extend_from_slice(&id_bytes(id::INFO));
        out.extend_from_slice(&ebml::size8(body.len() as u64));
        let duration_at = (out.len() + duration_in_body) as u64;
        out.extend_from_slice(&body);
        let tracks_pos = out.len() as u64 - data_start;
        out.extend_from_slice(tracks);
        let cue_track = video_track(tracks_body)
            .or_else(|| first_track(tracks_body))
            .unwrap_or(1);
        self.layout = Some(Layout {
            segment_size_at,
            data_start,
            seek_at,
            duration_at,
            info_pos,
            tracks_pos,
            scale_ns,
            cue_track,
        });
        self.written = out.len() as u64;
        Ok(out)
    }

    /// One whole Cluster element (`keyframe`: it starts with a video
    /// keyframe, so a CuePoint may point at it): returns the bytes to write,
    /// the cluster with its Timestamp rebased. Nothing before the init
    /// segment; a cluster that does not parse is dropped.
    pub fn cluster(&mut self, cluster: &[u8], keyframe: bool) -> Vec<u8> {
        let Some(layout) = &self.layout else {
            return Vec::new();
        };
        let Ok((i, size, hl)) = header_at(cluster, 0) else {
            return Vec::new();
        };
        if i != id::CLUSTER {
            return Vec::new();
        }
        let end = match size {
            Some(_) => match end_of(cluster, 0, i, size, hl) {
                Ok(end) => end,
                Err(_) => return Vec::new(),
            },
            None => cluster.len(),
        };
        let body = &cluster[hl..end];
        let mut ticks = 0u64;
        let mut last_offset = 0u64;
        for (child, data) in ebml::children(body) {
            match child {
                id::TIMESTAMP => ticks = ebml::uint(data).unwrap_or(0),
                id::SIMPLE_BLOCK => last_offset = last_offset.max(block_timecode(data)),
                id::BLOCK_GROUP => {
                    for (g, gd) in ebml::children(data) {
                        if g == id::BLOCK {
                            last_offset = last_offset.max(block_timecode(gd));
                        }
                    }
                }
                _ => {}
            }
        }
        let shift = *self.shift.get_or_insert(i128::from(ticks));
        let mut out_ticks = i128::from(ticks) - shift;
        let earliest = if self.clusters == 0 {
            0
        } else {
            let gap = u128::from(REWIND_GAP_MS) * u128::from(MS_NS) / u128::from(layout.scale_ns);
            i128::from(self.end_ticks) + i128::try_from(gap).unwrap_or(0)
        };
        if out_ticks < 0 || (self.clusters > 0 && out_ticks < i128::from(self.end_ticks)) {
            // The time line went backwards: continue it after what we have.
            self.shift = Some(i128::from(ticks) - earliest);
            out_ticks = earliest;
        }
        let out_ticks = u64::try_from(out_ticks).unwrap_or(0);
        let bytes = if out_ticks == ticks && size.is_some() {
            cluster[..end].to_vec()
        } else {
            shift_cluster(body, out_ticks)
        };
        self.end_ticks = self.end_ticks.max(out_ticks.saturating_add(last_offset));
        if keyframe && self.cues.len() < MAX_CUES {
            self.cues
                .push((out_ticks, self.written.saturating_sub(layout.data_start)));
        }
        self.clusters += 1;
        self.written += bytes.len() as u64;
        bytes
    }

    /// What closing the file takes (`None` before the init segment: nothing
    /// was written). The recorder stays usable: more clusters and a later
    /// `finish` would patch the same places again.
    pub fn finish(&self) -> Option<Closing> {
        let layout = self.layout.as_ref()?;
        let cues_pos = self.written - layout.data_start;
        let mut cues = Vec::new();
        if !self.cues.is_empty() {
            let mut body = Vec::with_capacity(self.cues.len() * 48);
            for &(time, pos) in &self.cues {
                let mut positions = Vec::new();
                uint_element(&mut positions, CUE_TRACK, layout.cue_track);
                uint_element(&mut positions, CUE_CLUSTER_POSITION, pos);
                let mut point = Vec::new();
                uint_element(&mut point, CUE_TIME, time);
                element(&mut point, CUE_TRACK_POSITIONS, &positions);
                element(&mut body, CUE_POINT, &point);
            }
            element(&mut cues, id::CUES, &body);
        }
        let end = self.written + cues.len() as u64;
        let mut seeks = Vec::new();
        let mut targets = vec![(id::INFO, layout.info_pos), (id::TRACKS, layout.tracks_pos)];
        if !cues.is_empty() {
            targets.push((id::CUES, cues_pos));
        }
        for (target, pos) in targets {
            let mut seek = Vec::new();
            element(&mut seek, SEEK_ID, &id_bytes(target));
            uint_element(&mut seek, SEEK_POSITION, pos);
            element(&mut seeks, SEEK, &seek);
        }
        let mut seek_head = Vec::with_capacity(SEEK_RESERVE);
        element(&mut seek_head, id::SEEK_HEAD, &seeks);
        // 68 bytes at most: the rest of the reservation stays a Void.
        let rest = SEEK_RESERVE - seek_head.len();
        seek_head.extend_from_slice(&void(rest));
        let mut duration = id_bytes(id::DURATION);
        duration.push(0x88);
        duration.extend_from_slice(&(self.end_ticks as f64).to_be_bytes());
        let duration_ms = u64::try_from(
            u128::from(self.end_ticks) * u128::from(layout.scale_ns) / u128::from(MS_NS),
        )
        .unwrap_or(u64::MAX);
        Some(Closing {
            append: cues,
            patches: vec![
                Patch {
                    offset: layout.segment_size_at,
                    bytes: ebml::size8(end - layout.data_start).to_vec(),
                },
                Patch {
                    offset: layout.seek_at,
                    bytes: seek_head,
                },
                Patch {
                    offset: layout.duration_at,
                    bytes: duration,
                },
            ],
            duration_ms,
        })
    }
}

/// The number of the first track in a Tracks body.
fn first_track(tracks: &[u8]) -> Option<u64> {
    ebml::children(tracks)
        .filter(|(i, _)| *i == id::TRACK_ENTRY)
        .find_map(|(_, entry)| {
            ebml::children(entry)
                .find(|(i, _)| *i == id::TRACK_NUMBER)
                .and_then(|(_, d)| ebml::uint(d))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fix_up_init, Segment, Splitter};

    fn bundled() -> (Vec<u8>, Vec<crate::Cluster>) {
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../assets/test.webm"
        ))
        .unwrap();
        let mut s = Splitter::new();
        let mut segments = s.push(&data).unwrap();
        segments.extend(s.finish().unwrap());
        let mut init = None;
        let mut clusters = Vec::new();
        for seg in segments {
            match seg {
                Segment::Init(i) => init = Some(fix_up_init(&i).unwrap()),
                Segment::Cluster(c) => clusters.push(c),
            }
        }
        (init.unwrap(), clusters)
    }

    /// (id, body start, end) of the top-level element at `at`.
    fn el(buf: &[u8], at: usize) -> (u32, usize, usize) {
        let (i, size, hl) = header_at(buf, at).unwrap();
        (i, at + hl, at + hl + size.unwrap() as usize)
    }

    fn uint_child(body: &[u8], want: u32) -> Option<u64> {
        ebml::children(body)
            .find(|(i, _)| *i == want)
            .and_then(|(_, d)| ebml::uint(d))
    }

    /// Records clusters `from..to` of the bundled file, as a receiver that
    /// joined mid-stream would.
    fn record(from: usize, to: usize) -> (Recorder, Vec<u8>, Vec<crate::Cluster>) {
        let (init, clusters) = bundled();
        let mut r = Recorder::new();
        let mut file = r.init(&init).unwrap();
        assert!(r.init(&init).unwrap().is_empty(), "one init only");
        for c in &clusters[from..to] {
            file.extend(r.cluster(&c.bytes, c.keyframe));
        }
        assert_eq!(r.written(), file.len() as u64);
        (r, file, clusters[from..to].to_vec())
    }

    #[test]
    fn a_closed_recording_has_its_size_duration_cues_and_seek_head() {
        let (r, mut file, clusters) = record(2, 9);
        let closing = r.finish().unwrap();
        closing.apply(&mut file);
        // EBML header, then a Segment whose size ends exactly at the file's end.
        let (ebml_id, _, ebml_end) = el(&file, 0);
        assert_eq!(ebml_id, id::EBML);
        let (seg, data, seg_end) = el(&file, ebml_end);
        assert_eq!(seg, id::SEGMENT);
        assert_eq!(seg_end, file.len());
        // Top-level children, in order.
        let mut at = data;
        let mut top = Vec::new();
        while at < seg_end {
            let (i, s, e) = el(&file, at);
            top.push((i, at, s, e));
            at = e;
        }
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(&ids[..4], &[id::SEEK_HEAD, id::VOID, id::INFO, id::TRACKS]);
        assert_eq!(*ids.last().unwrap(), id::CUES);
        assert_eq!(
            ids.iter().filter(|i| **i == id::CLUSTER).count(),
            clusters.len()
        );
        // The SeekHead names Info, Tracks and Cues at their positions.
        let (_, _, sh_body, sh_end) = top[0];
        let mut seen = Vec::new();
        for (i, seek) in ebml::children(&file[sh_body..sh_end]) {
            assert_eq!(i, SEEK);
            let target = ebml::children(seek).find(|(c, _)| *c == SEEK_ID).unwrap().1;
            let target = ebml::uint(target).unwrap() as u32;
            let pos = uint_child(seek, SEEK_POSITION).unwrap() as usize;
            assert_eq!(el(&file, data + pos).0, target);
            seen.push(target);
        }
        assert_eq!(seen, vec![id::INFO, id::TRACKS, id::CUES]);
        // Duration: the last block's time, the recording starting at 0.
        let (_, _, info_body, info_end) = top[2];
        let info = &file[info_body..info_end];
        let d = ebml::children(info)
            .find(|(i, _)| *i == id::DURATION)
            .unwrap()
            .1;
        let d = f64::from_be_bytes(d.try_into().unwrap());
        let last = clusters.last().unwrap().last_block_ms - clusters[0].timestamp_ms;
        assert_eq!(d, last as f64);
        assert_eq!(closing.duration_ms, last);
        assert!(last > 5000, "a few seconds recorded ({last} ms)");
        // One CuePoint per keyframe cluster, each pointing at a Cluster whose
        // (rebased) Timestamp is the CueTime.
        let (_, _, cues_body, cues_end) = *top.last().unwrap();
        let mut points = 0;
        for (i, point) in ebml::children(&file[cues_body..cues_end]) {
            assert_eq!(i, CUE_POINT);
            let time = uint_child(point, CUE_TIME).unwrap();
            let tp = ebml::children(point)
                .find(|(c, _)| *c == CUE_TRACK_POSITIONS)
                .unwrap()
                .1;
            assert_eq!(uint_child(tp, CUE_TRACK), Some(1), "the video track");
            let pos = uint_child(tp, CUE_CLUSTER_POSITION).unwrap() as usize;
            let (c, cb, ce) = el(&file, data + pos);
            assert_eq!(c, id::CLUSTER);
            assert_eq!(uint_child(&file[cb..ce], id::TIMESTAMP), Some(time));
            points += 1;
        }
        assert_eq!(points, clusters.iter().filter(|c| c.keyframe).count());
        assert!(points > 3);
        // The splitter reads the closed file back: same tracks, every
        // cluster, starting at 0, in the original rhythm.
        let mut s = Splitter::new();
        let mut back = s.push(&file).unwrap();
        back.extend(s.finish().unwrap());
        let back: Vec<_> = back
            .into_iter()
            .filter_map(|s| match s {
                Segment::Cluster(c) => Some(c),
                Segment::Init(_) => None,
            })
            .collect();
        assert_eq!(back.len(), clusters.len());
        for (b, c) in back.iter().zip(&clusters) {
            assert_eq!(b.timestamp_ms, c.timestamp_ms - clusters[0].timestamp_ms);
            assert_eq!(b.span_ms(), c.span_ms());
        }
    }

    #[test]
    fn a_recording_cut_off_before_closing_still_parses_as_live_webm() {
        let (_, file, clusters) = record(0, 5);
        // Unknown Segment size, Voids where the SeekHead and Duration go.
        let mut s = Splitter::new();
        let mut back = s.push(&file).unwrap();
        back.extend(s.finish().unwrap());
        assert!(matches!(back[0], Segment::Init(_)));
        assert_eq!(back.len(), clusters.len() + 1);
        // Cut inside a cluster: everything before it still parses.
        let cut = &file[..file.len() - 100];
        let mut s = Splitter::new();
        let n = s.push(cut).unwrap().len();
        assert!(n >= clusters.len(), "{n}");
    }

    #[test]
    fn timestamps_that_run_backwards_continue_the_time_line() {
        let (init, clusters) = bundled();
        let mut r = Recorder::new();
        let mut file = r.init(&init).unwrap();
        // A broadcaster restarted: its clusters begin at 0 again.
        for c in clusters[3..6].iter().chain(&clusters[0..3]) {
            file.extend(r.cluster(&c.bytes, c.keyframe));
        }
        r.finish().unwrap().apply(&mut file);
        let mut s = Splitter::new();
        let mut back = s.push(&file).unwrap();
        back.extend(s.finish().unwrap());
        let ts: Vec<u64> = back
            .iter()
            .filter_map(|s| match s {
                Segment::Cluster(c) => Some(c.timestamp_ms),
                Segment::Init(_) => None,
            })
            .collect();
        assert_eq!(ts.len(), 6);
        assert_eq!(ts[0], 0);
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    }

    #[test]
    fn bad_input_is_refused_or_dropped() {
        let mut r = Recorder::new();
        assert!(r.cluster(b"before init", true).is_empty());
        assert!(r.finish().is_none());
        assert!(matches!(
            r.init(b"\x1f\x43\xb6\x75\x80"),
            Err(MediaError::NotWebm { .. })
        ));
        assert!(r.init(b"").is_err());
        let (init, _) = bundled();
        assert!(r.init(&init[..init.len() - 3]).is_err());
        r.init(&init).unwrap();
        assert!(r.cluster(b"\x1a\x45\xdf\xa3\x80", true).is_empty());
        assert!(r.cluster(b"\x1f\x43\xb6\x75\x88\x00", true).is_empty());
        // No clusters: a closed file without Cues.
        let c = r.finish().unwrap();
        assert!(c.append.is_empty());
        assert_eq!(c.duration_ms, 0);
    }
}

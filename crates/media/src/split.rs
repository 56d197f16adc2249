//! The incremental WebM splitter: bytes in (pieces of any size), init
//! segment and clusters out. Only the elements it must hand out whole (EBML
//! header, Info, Tracks, Clusters) are buffered, each up to [`MAX_ELEMENT`];
//! everything else is skipped as it streams past.

use crate::ebml::{self, id, Read};
use crate::MediaError;

const MS_NS: u64 = 1_000_000;

/// Largest element the splitter buffers (a cluster, the Tracks): bounds the
/// memory malformed or hostile input can claim.
pub const MAX_ELEMENT: u64 = 64 * 1024 * 1024;

/// A whole Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Its Timestamp in ms (converted from the Segment's TimestampScale).
    pub timestamp_ms: u64,
    /// Whether its first video block is a keyframe (always true without video).
    pub keyframe: bool,
    /// Timestamp of its last block (ms): where its media ends, less one frame.
    pub last_block_ms: u64,
    /// The element's bytes (id, size, body).
    pub bytes: Vec<u8>,
}

impl Cluster {
    /// Media time its blocks span (ms): last block start − cluster start.
    /// A cluster's real duration also includes its last frame, which only
    /// the next cluster's timestamp tells.
    pub fn span_ms(&self) -> u64 {
        self.last_block_ms.saturating_sub(self.timestamp_ms)
    }
}

/// What the splitter yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The init segment: EBML header, Segment header (unknown size), Info, Tracks.
    Init(Vec<u8>),
    /// A cluster.
    Cluster(Cluster),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the EBML header (at the start, or a chained stream).
    Header,
    /// Expecting the Segment element's header.
    SegmentHeader,
    /// Inside the Segment, expecting its children.
    Body,
    /// Skipping the rest of an element we drop.
    Skip { remaining: u64 },
    /// Inside an unknown-size Cluster, `scanned` bytes of it read.
    OpenCluster { scanned: usize },
}

/// Splits WebM into an init segment and clusters (see the crate docs).
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Absolute input offset of `buf[0]`.
    offset: u64,
    state: State,
    init: Vec<u8>,
    tracks_seen: bool,
    init_emitted: bool,
    video_track: Option<u64>,
    segment_end: Option<u64>,
    shift_ms: u64,
    /// Nanoseconds per timestamp tick (Info's TimestampScale; 1 ms default).
    scale_ns: u64,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Splitter {
    /// A splitter at the start of a WebM stream.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            offset: 0,
            state: State::Header,
            init: Vec::new(),
            tracks_seen: false,
            init_emitted: false,
            video_track: None,
            segment_end: None,
            shift_ms: 0,
            scale_ns: MS_NS,
        }
    }

    /// Adds `ms` to the Timestamp of every cluster from now on (to loop a
    /// file seamlessly: clusters of the next pass continue the timeline).
    pub fn set_timestamp_shift(&mut self, ms: u64) {
        self.shift_ms = ms;
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Feeds bytes; returns every segment completed by them.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Segment>, MediaError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(segment) = self.step(false)? {
            if let Some(s) = segment {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The input ended: flushes an open unknown-size cluster, and reports
    /// input that stopped inside an element.
    pub fn finish(&mut self) -> Result<Vec<Segment>, MediaError> {
        let mut out = Vec::new();
        while let Some(segment) = self.step(true)? {
            if let Some(s) = segment {
                out.push(s);
            }
        }
        if !self.buf.is_empty() {
            let id = match ebml::read_id(&self.buf) {
                Read::Done(i, _) => i,
                _ => 0,
            };
            return Err(MediaError::Truncated {
                offset: self.offset + self.buf.len() as u64,
                id,
            });
        }
        if matches!(self.state, State::Skip { remaining } if remaining > 0) {
            return Err(MediaError::Truncated {
                offset: self.offset,
                id: 0,
            });
        }
        Ok(out)
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        self.offset += n as u64;
        self.buf.drain(..n).collect()
    }

    fn corrupt(&self, what: &'static str) -> MediaError {
        MediaError::Corrupt {
            offset: self.offset,
            what,
        }
    }

    /// Reads the element header at the front of the buffer.
    fn header(&self) -> Result<Option<(u32, Option<u64>, usize)>, MediaError> {
        let (i, il) = match ebml::read_id(&self.buf) {
            Read::Done(i, l) => (i, l),
            Read::NeedMore => return Ok(None),
            Read::Invalid => return Err(self.corrupt("invalid element id")),
        };
        match ebml::read_size(&self.buf[il..]) {
            Read::Done(size, sl) => Ok(Some((i, size, il + sl))),
            Read::NeedMore => Ok(None),
            Read::Invalid => Err(self.corrupt("invalid element size")),
        }
    }

    /// Total length of an element the splitter must buffer whole, refused
    /// above [`MAX_ELEMENT`] before anything is buffered.
    fn buffered_len(&self, i: u32, size: u64, header_len: usize) -> Result<usize, MediaError> {
        let too_large = MediaError::TooLarge {
            id: i,
            offset: self.offset,
            size,
            max: MAX_ELEMENT,
        };
        if size > MAX_ELEMENT {
            return Err(too_large);
        }
        usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(header_len))
            .ok_or(too_large)
    }

    /// One parsing step. `Ok(None)`: need more input. `Ok(Some(None))`:
    /// progress without output.
    fn step(&mut self, eof: bool) -> Result<Option<Option<Segment>>, MediaError> {
        match self.state {
            State::Skip { remaining } => {
                if remaining == 0 {
                    self.state = State::Body;
                    return Ok(Some(None));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = remaining.min(self.buf.len() as u64) as usize;
                self.consume(n);
                self.state = State::Skip {
                    remaining: remaining - n as u64,
                };
                Ok(Some(None))
            }
            State::OpenCluster { scanned } => self.scan_open_cluster(scanned, eof),
            State::Header => {
                let Some((i, size, hl)) = self.header()? else {
                    return Ok(None);
                };
                if i != id::EBML {
                    return Err(MediaError::NotWebm { found: i });
                }
                let size = size.ok_or_else(|| self.corrupt("EBML header of unknown size"))?;
                let total = self.buffered_len(i, size, hl)?;
                if self.buf.len() < total {
                    return Ok(None);
                }
                self.init = self.consume(total);
                self.tracks_seen = false;
                self.init_emitted = false;
                self.video_track = None;
                self.scale_ns = MS_NS;
                self.state = State::SegmentHeader;
                Ok(Some(None))
            }
            State::SegmentHeader => {
                let Some((i, size, hl)) = self.header()? else {
                    return Ok(None);
                };
                if i != id::SEGMENT {
                    return Err(self.corrupt("expected a Segment after the EBML header"));
                }
                self.consume(hl);
                self.segment_end = size.map(|s| self.offset.saturating_add(s));
                let mut header = vec![0x18, 0x53, 0x80, 0x67];
                // Re-served from any cluster on, the Segment's size is unknown.
                header.extend_from_slice(&ebml::UNKNOWN_SIZE);
                self.init.extend_from_slice(&header);
                self.state = State::Body;
                Ok(Some(None))
            }
            State::Body => {
                if self.segment_end.is_some_and(|end| self.offset >= end) {
                    // The Segment is complete: a chained stream may follow.
                    self.segment_end = None;
                    self.state = State::Header;
                    return Ok(Some(None));
                }
                let Some((i, size, hl)) = self.header()? else {
                    return Ok(None);
                };
                match i {
                    id::EBML => {
                        self.state = State::Header;
                        Ok(Some(None))
                    }
                    id::INFO | id::TRACKS => {
                        let size =
                            size.ok_or_else(|| self.corrupt("Info/Tracks of unknown size"))?;
                        let total = self.buffered_len(i, size, hl)?;
                        if self.buf.len() < total {
                            return Ok(None);
                        }
                        let mut element = self.consume(total);
                        if i == id::TRACKS {
                            self.tracks_seen = true;
                            self.video_track = video_track(&element[hl..]);
                        } else {
                            self.scale_ns = fix_up_info(&mut element[hl..]);
                        }
                        self.init.extend_from_slice(&element);
                        Ok(Some(None))
                    }
                    id::CLUSTER => {
                        if !self.init_emitted {
                            if !self.tracks_seen {
                                return Err(MediaError::NoTracks {
                                    offset: self.offset,
                                });
                            }
                            self.init_emitted = true;
                            return Ok(Some(Some(Segment::Init(self.init.clone()))));
                        }
                        match size {
                            Some(size) => {
                                let total = self.buffered_len(i, size, hl)?;
                                if self.buf.len() < total {
                                    return Ok(None);
                                }
                                let bytes = self.consume(total);
                                Ok(Some(Some(Segment::Cluster(self.cluster(bytes, hl)))))
                            }
                            None => {
                                self.state = State::OpenCluster { scanned: hl };
                                Ok(Some(None))
                            }
                        }
                    }
                    _ => {
                        // SeekHead, Cues, Tags, Chapters, Void and anything
                        // unknown: dropped (a live re-serve must not point
                        // into a file it is not).
                        let size = size.ok_or_else(|| {
                            self.corrupt("unknown-size element that cannot be skipped")
                        })?;
                        self.consume(hl);
                        self.state = State::Skip { remaining: size };
                        Ok(Some(None))
                    }
                }
            }
        }
    }

    /// Advances through an unknown-size cluster's children; it ends at the
    /// next Segment-level element (or the end of the input).
    fn scan_open_cluster(
        &mut self,
        mut scanned: usize,
        eof: bool,
    ) -> Result<Option<Option<Segment>>, MediaError> {
        loop {
            if scanned as u64 > MAX_ELEMENT {
                return Err(MediaError::TooLarge {
                    id: id::CLUSTER,
                    offset: self.offset,
                    size: scanned as u64,
                    max: MAX_ELEMENT,
                });
            }
            let rest = &self.buf[scanned..];
            let ends = match ebml::read_id(rest) {
                Read::Done(i, _) => ebml::ends_open_cluster(i),
                Read::NeedMore if eof && rest.is_empty() => true,
                Read::NeedMore => {
                    self.state = State::OpenCluster { scanned };
                    return Ok(None);
                }
                Read::Invalid => return Err(self.corrupt("invalid element id in a cluster")),
            };
            if ends {
                let bytes = self.consume(scanned);
                let hl = header_len(&bytes);
                self.state = State::Body;
                return Ok(Some(Some(Segment::Cluster(self.cluster(bytes, hl)))));
            }
            let Read::Done(_, il) = ebml::read_id(rest) else {
                return Err(self.corrupt("invalid element id in a cluster"));
            };
            match ebml::read_size(&rest[il..]) {
                Read::Done(Some(size), sl) => {
                    // Bound the cluster by what it claims, before buffering it.
                    let claimed = (scanned + il + sl) as u64 + size;
                    if claimed > MAX_ELEMENT {
                        return Err(MediaError::TooLarge {
                            id: id::CLUSTER,
                            offset: self.offset,
                            size: claimed,
                            max: MAX_ELEMENT,
                        });
                    }
                    let total = il + sl + size as usize;
                    if rest.len() < total {
                        self.state = State::OpenCluster { scanned };
                        return Ok(None);
                    }
                    scanned += total;
                }
                Read::Done(None, _) => {
                    return Err(self.corrupt("unknown-size element in a cluster"))
                }
                Read::NeedMore => {
                    self.state = State::OpenCluster { scanned };
                    return Ok(None);
                }
                Read::Invalid => return Err(self.corrupt("invalid element size in a cluster")),
            }
        }
    }

    /// Reads a complete cluster's timestamp and keyframe flag, applying the
    /// timestamp shift.
    fn cluster(&self, bytes: Vec<u8>, header_len: usize) -> Cluster {
        let body = &bytes[header_len..];
        let mut ticks = 0u64;
        let mut keyframe = None;
        let mut last_offset = 0u64;
        for (child, data) in ebml::children(body) {
            match child {
                id::TIMESTAMP => ticks = ebml::uint(data).unwrap_or(0),
                id::SIMPLE_BLOCK => {
                    last_offset = last_offset.max(block_timecode(data));
                    if keyframe.is_none() {
                        if let Some((track, flags)) = block_track_flags(data) {
                            if self.video_track.is_none_or(|v| v == track) {
                                keyframe = Some(flags & 0x80 != 0);
                            }
                        }
                    }
                }
                id::BLOCK_GROUP => {
                    let mut track = None;
                    let mut referenced = false;
                    for (g, gd) in ebml::children(data) {
                        match g {
                            id::BLOCK => {
                                last_offset = last_offset.max(block_timecode(gd));
                                track = block_track_flags(gd).map(|(t, _)| t);
                            }
                            id::REFERENCE_BLOCK => referenced = true,
                            _ => {}
                        }
                    }
                    if let (None, Some(t)) = (keyframe, track) {
                        if self.video_track.is_none_or(|v| v == t) {
                            keyframe = Some(!referenced);
                        }
                    }
                }
                _ => {}
            }
        }
        // Audio-only streams can start at any cluster.
        let keyframe = keyframe.unwrap_or(self.video_track.is_none());
        let shift_ticks = self.ms_to_ticks(self.shift_ms);
        let ticks = ticks.saturating_add(shift_ticks);
        let bytes = if shift_ticks > 0 {
            shift_cluster(body, ticks)
        } else {
            bytes
        };
        Cluster {
            timestamp_ms: self.ticks_to_ms(ticks),
            keyframe,
            last_block_ms: self.ticks_to_ms(ticks.saturating_add(last_offset)),
            bytes,
        }
    }

    fn ticks_to_ms(&self, ticks: u64) -> u64 {
        let ms = u128::from(ticks) * u128::from(self.scale_ns) / u128::from(MS_NS);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    fn ms_to_ticks(&self, ms: u64) -> u64 {
        let ticks = u128::from(ms) * u128::from(MS_NS) / u128::from(self.scale_ns.max(1));
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

/// Fixes up a buffered Info body for a live stream and returns its
/// TimestampScale (ns per tick). A file's Duration would tell players the
/// stream ends there (wrong for a live or looped stream), so it is voided
/// in place: the Info element keeps its length.
fn fix_up_info(body: &mut [u8]) -> u64 {
    let mut scale = MS_NS;
    let mut durations = Vec::new();
    for (i, start, end) in ebml::child_ranges(body) {
        match i {
            id::DURATION => durations.push((start, end)),
            id::TIMESTAMP_SCALE => {
                let data = &body[start..end];
                // The value is the element's last bytes; its header is id + size.
                if let Some(v) = element_body(data).and_then(ebml::uint) {
                    if v > 0 {
                        scale = v;
                    }
                }
            }
            _ => {}
        }
    }
    for (start, end) in durations {
        ebml::void_in_place(&mut body[start..end]);
    }
    scale
}

/// The body of a whole element.
fn element_body(element: &[u8]) -> Option<&[u8]> {
    element.get(header_len(element)..)
}

fn header_len(element: &[u8]) -> usize {
    let il = match ebml::read_id(element) {
        Read::Done(_, l) => l,
        _ => return 0,
    };
    match ebml::read_size(&element[il..]) {
        Read::Done(_, sl) => il + sl,
        _ => il,
    }
}

/// The number of the first video track in a Tracks body.
pub(crate) fn video_track(tracks: &[u8]) -> Option<u64> {
    ebml::children(tracks)
        .filter(|(i, _)| *i == id::TRACK_ENTRY)
        .find_map(|(_, entry)| {
            let mut number = None;
            let mut kind = None;
            for (i, d) in ebml::children(entry) {
                match i {
                    id::TRACK_NUMBER => number = ebml::uint(d),
                    id::TRACK_TYPE => kind = ebml::uint(d),
                    _ => {}
                }
            }
            (kind == Some(1)).then_some(number).flatten()
        })
}

/// A (Simple)Block's track number and flags byte.
fn block_track_flags(block: &[u8]) -> Option<(u64, u8)> {
    let Read::Done(Some(track), len) = ebml::read_size(block) else {
        return None;
    };
    // track number, 2-byte relative timecode, flags
    let flags = *block.get(len + 2)?;
    Some((track, flags))
}

/// A (Simple)Block's timecode relative to its cluster, in ticks; blocks
/// before the cluster's start (negative) and malformed ones count as 0.
pub(crate) fn block_timecode(block: &[u8]) -> u64 {
    let Read::Done(Some(_), len) = ebml::read_size(block) else {
        return 0;
    };
    match (block.get(len), block.get(len + 1)) {
        (Some(&a), Some(&b)) => u64::try_from(i16::from_be_bytes([a, b])).unwrap_or(0),
        _ => 0,
    }
}

/// Rebuilds a cluster with a new Timestamp (known size).
pub(crate) fn shift_cluster(body: &[u8], timestamp: u64) -> Vec<u8> {
    let mut children = Vec::with_capacity(body.len() + 16);
    children.push(0xE7);
    children.push(0x88);
    children.extend_from_slice(&timestamp.to_be_bytes());
    let mut rest = body;
    while let Read::Done(i, il) = ebml::read_id(rest) {
        let Read::Done(Some(size), sl) = ebml::read_size(&rest[il..]) else {
            break;
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let end = (il + sl).saturating_add(size).min(rest.len());
        if i != id::TIMESTAMP {
            children.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
    }
    let mut out = vec![0x1F, 0x43, 0xB6, 0x75];
    out.extend_from_slice(&ebml::size8(children.len() as u64));
    out.extend_from_slice(&children);
    out
}

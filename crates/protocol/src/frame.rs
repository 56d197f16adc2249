//! Binary frames between peers on a WebRTC data channel.
//!
//! Every frame starts with `[version, type]`. Integers are big-endian.
//!
//! ```text
//! Chunk (type 1), 39 + tag_len + payload_len bytes:
//!   0 version  1 type  2 kind  3 flags
//!   4..12 stream id   12..20 sequence   20..28 media timestamp (ms)
//!   28..36 broadcaster send time (µs since the Unix epoch)
//!   36..38 payload_len (≤ 16,217)   38 tag_len (≤ 128); whole frame ≤ 16 KiB
//!   39.. tag, then payload
//! Heartbeat (type 2), 20 bytes: 2..10 counter, 10..18 sender's clock (µs),
//!   18..20 sender's depth (hops from the broadcaster; 0xFFFF = not fed)
//! GapRequest (type 3), 22 bytes: 2..10 stream id, 10..18 first seq, 18..22 count
//! Subscribe (type 4), 19 bytes: 2..10 stream id, 10..18 from seq, 18 flags
//! Unsubscribe (type 5), 10 bytes: 2..10 stream id
//! ```
//!
//! The decoder borrows from its input, checks every length against both the
//! limits and the bytes actually present, and rejects unknown kinds and flag
//! bits: a frame is either exactly right or a [`FrameError`].

use crate::{StreamId, PROTOCOL_VERSION};

/// Largest frame of any type: 16 KiB, the largest data-channel message every
/// WebRTC stack delivers whole (the `webrtc` crate's receive limit, and the
/// browsers' safe size).
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// Largest integrity tag (an Ed25519 signature is 64 bytes, HMAC-SHA256 32).
pub const MAX_TAG_LEN: usize = 128;
/// Bytes before the tag in a chunk frame.
pub const CHUNK_HEADER_LEN: usize = 39;
/// Largest media payload carried by one chunk frame: what is left of a
/// [`MAX_FRAME_LEN`] frame after the header and the largest tag (16,217 bytes).
pub const MAX_CHUNK_PAYLOAD: usize = MAX_FRAME_LEN - CHUNK_HEADER_LEN - MAX_TAG_LEN;
/// Largest number of chunks one gap request may ask for.
pub const MAX_GAP_COUNT: u32 = 4096;

const TYPE_CHUNK: u8 = 1;
const TYPE_HEARTBEAT: u8 = 2;
const TYPE_GAP_REQUEST: u8 = 3;
const TYPE_SUBSCRIBE: u8 = 4;
const TYPE_UNSUBSCRIBE: u8 = 5;
const HEARTBEAT_LEN: usize = 20;
const GAP_REQUEST_LEN: usize = 22;
const SUBSCRIBE_LEN: usize = 19;
const UNSUBSCRIBE_LEN: usize = 10;

/// Flags of a [`Frame::Subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscribeFlags(u8);

impl SubscribeFlags {
    /// Send the init segment first (a peer that has none yet).
    pub const NEED_INIT: Self = Self(0x01);
    /// Ignore `from`: start at the latest cluster that begins with a video
    /// keyframe (a late joiner).
    pub const FROM_KEYFRAME: Self = Self(0x02);
    const ALL: u8 = 0x03;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }
    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// From a raw byte, if every bit is defined.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }
    /// Whether all bits of `other` are set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Why a frame was rejected. Carries enough context to log and act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header or the declared lengths need.
    #[error("truncated frame: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes the frame claims or needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// More bytes than the declared lengths account for.
    #[error("frame has {extra} trailing bytes after its declared end")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// Larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Frame length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A version this build does not speak.
    #[error("unsupported frame version {0} (this peer speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// Unknown frame type byte.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Unknown chunk kind byte.
    #[error("unknown chunk kind {0}")]
    UnknownKind(u8),
    /// Flag bits that are undefined, or illegal for this kind.
    #[error("invalid chunk flags {flags:#04x} for kind {kind:?}")]
    BadFlags {
        /// The flags byte.
        flags: u8,
        /// The chunk kind.
        kind: ChunkKind,
    },
    /// Undefined bits in a subscribe frame's flags.
    #[error("invalid subscribe flags {0:#04x}")]
    BadSubscribeFlags(u8),
    /// A declared length above its limit.
    #[error("{field} of {len} exceeds the limit of {max}")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Its value.
        len: usize,
        /// Its limit.
        max: usize,
    },
}

/// What a chunk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkKind {
    /// (Part of) the WebM init segment: EBML header, Segment header, Info, Tracks.
    Init = 0,
    /// (Part of) a WebM Cluster.
    Media = 1,
}

/// Flag bits of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkFlags(u8);

impl ChunkFlags {
    /// First chunk of a cluster (or of the init segment).
    pub const CLUSTER_START: Self = Self(0x01);
    /// The cluster this chunk belongs to starts with a video keyframe.
    pub const KEYFRAME: Self = Self(0x02);
    /// Last chunk of a cluster (or of the init segment).
    pub const CLUSTER_END: Self = Self(0x04);
    const ALL: u8 = 0x07;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }
    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// From a raw byte, if every bit is defined.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }
    /// Whether all bits of `other` are set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union of two flag sets.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The fields of a chunk that its integrity tag covers: everything but the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHeader {
    /// Stream the chunk belongs to.
    pub stream: StreamId,
    /// Sequence number, dense and increasing from 0 per stream.
    pub seq: u64,
    /// Init segment or media.
    pub kind: ChunkKind,
    /// Cluster boundary and keyframe flags.
    pub flags: ChunkFlags,
    /// Media timestamp of the cluster this chunk belongs to (ms).
    pub timestamp_ms: u64,
    /// Broadcaster's wall clock when it sent the chunk (µs since the Unix epoch).
    pub send_time_us: u64,
}

/// Length of [`ChunkHeader::tag_preimage`].
pub const TAG_PREIMAGE_LEN: usize = 38;

impl ChunkHeader {
    /// The canonical bytes an integrity tag covers before the payload: the
    /// version, type, every header field and the payload length, exactly as
    /// they appear on the wire (so a tag cannot be moved to another sequence
    /// number, stream, kind or timestamp).
    pub fn tag_preimage(&self, payload_len: usize) -> [u8; TAG_PREIMAGE_LEN] {
        let mut b = [0u8; TAG_PREIMAGE_LEN];
        b[0] = PROTOCOL_VERSION;
        b[1] = TYPE_CHUNK;
        b[2] = self.kind as u8;
        b[3] = self.flags.bits();
        b[4..12].copy_from_slice(&self.stream.0.to_be_bytes());
        b[12..20].copy_from_slice(&self.seq.to_be_bytes());
        b[20..28].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[28..36].copy_from_slice(&self.send_time_us.to_be_bytes());
        // Saturate rather than wrap: an oversized payload is refused at encode.
        let len = u16::try_from(payload_len).unwrap_or(u16::MAX);
        b[36..38].copy_from_slice(&len.to_be_bytes());
        b
    }
}

/// An owned chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Header fields.
    pub header: ChunkHeader,
    /// Integrity tag (HMAC or signature), possibly empty before tagging.
    pub tag: Vec<u8>,
    /// Media bytes.
    pub payload: Vec<u8>,
}

impl Chunk {
    /// Borrowed view.
    pub fn as_ref(&self) -> ChunkRef<'_> {
        ChunkRef {
            header: self.header,
            tag: &self.tag,
            payload: &self.payload,
        }
    }

    /// Encodes into a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.as_ref().encode_into(&mut out)?;
        Ok(out)
    }
}

/// A chunk borrowed from a decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    /// Header fields.
    pub header: ChunkHeader,
    /// Integrity tag.
    pub tag: &'a [u8],
    /// Media bytes.
    pub payload: &'a [u8],
}

impl ChunkRef<'_> {
    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_limit("payload", self.payload.len(), MAX_CHUNK_PAYLOAD)?;
        check_limit("tag", self.tag.len(), MAX_TAG_LEN)?;
        check_flags(self.header.kind, self.header.flags)?;
        out.reserve(CHUNK_HEADER_LEN + self.tag.len() + self.payload.len());
        out.extend_from_slice(&self.header.tag_preimage(self.payload.len()));
        // Lengths checked above: both fit their fields.
        out.push(self.tag.len() as u8);
        out.extend_from_slice(self.tag);
        out.extend_from_slice(self.payload);
        Ok(())
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Chunk {
        Chunk {
            header: self.header,
            tag: self.tag.to_vec(),
            payload: self.payload.to_vec(),
        }
    }
}

/// Any frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A media or init chunk.
    Chunk(Chunk),
    /// Link liveness probe, sent on every link every few tens of ms.
    Heartbeat {
        /// Sender's counter.
        counter: u64,
        /// Sender's clock (µs), for RTT estimates.
        time_us: u64,
        /// Sender's hops from the broadcaster (`u16::MAX`: not fed).
        depth: u16,
    },
    /// "Send me chunks `first..first+count` from your buffer" (gap fill).
    GapRequest {
        /// Stream.
        stream: StreamId,
        /// First missing sequence number.
        first: u64,
        /// How many (≤ [`MAX_GAP_COUNT`]).
        count: u32,
    },
    /// "Feed me: your buffered chunks from `from`, then every new one."
    Subscribe {
        /// Stream.
        stream: StreamId,
        /// First sequence number wanted.
        from: u64,
        /// Init segment first? Start at the latest keyframe instead?
        flags: SubscribeFlags,
    },
    /// "Stop feeding me."
    Unsubscribe {
        /// Stream.
        stream: StreamId,
    },
}

/// Any frame, borrowed from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// A media or init chunk.
    Chunk(ChunkRef<'a>),
    /// See [`Frame::Heartbeat`].
    Heartbeat {
        /// Sender's counter.
        counter: u64,
        /// Sender's clock (µs).
        time_us: u64,
        /// Sender's depth.
        depth: u16,
    },
    /// See [`Frame::GapRequest`].
    GapRequest {
        /// Stream.
        stream: StreamId,
        /// First missing sequence number.
        first: u64,
        /// How many.
        count: u32,
    },
    /// See [`Frame::Subscribe`].
    Subscribe {
        /// Stream.
        stream: StreamId,
        /// First sequence number wanted.
        from: u64,
        /// Flags.
        flags: SubscribeFlags,
    },
    /// See [`Frame::Unsubscribe`].
    Unsubscribe {
        /// Stream.
        stream: StreamId,
    },
}

impl Frame {
    /// Borrowed view.
    pub fn as_ref(&self) -> FrameRef<'_> {
        match self {
            Frame::Chunk(c) => FrameRef::Chunk(c.as_ref()),
            Frame::Heartbeat {
                counter,
                time_us,
                depth,
            } => FrameRef::Heartbeat {
                counter: *counter,
                time_us: *time_us,
                depth: *depth,
            },
            Frame::Subscribe {
                stream,
                from,
                flags,
            } => FrameRef::Subscribe {
                stream: *stream,
                from: *from,
                flags: *flags,
            },
            Frame::Unsubscribe { stream } => FrameRef::Unsubscribe { stream: *stream },
            Frame::GapRequest {
                stream,
                first,
                count,
            } => FrameRef::GapRequest {
                stream: *stream,
                first: *first,
                count: *count,
            },
        }
    }

    /// Encodes into a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.as_ref().encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes an owned frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        FrameRef::decode(bytes).map(|f| f.to_owned())
    }
}

impl<'a> FrameRef<'a> {
    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match *self {
            FrameRef::Chunk(c) => c.encode_into(out),
            FrameRef::Heartbeat {
                counter,
                time_us,
                depth,
            } => {
                out.extend_from_slice(&[PROTOCOL_VERSION, TYPE_HEARTBEAT]);
                out.extend_from_slice(&counter.to_be_bytes());
                out.extend_from_slice(&time_us.to_be_bytes());
                out.extend_from_slice(&depth.to_be_bytes());
                Ok(())
            }
            FrameRef::Subscribe {
                stream,
                from,
                flags,
            } => {
                out.extend_from_slice(&[PROTOCOL_VERSION, TYPE_SUBSCRIBE]);
                out.extend_from_slice(&stream.0.to_be_bytes());
                out.extend_from_slice(&from.to_be_bytes());
                out.push(flags.bits());
                Ok(())
            }
            FrameRef::Unsubscribe { stream } => {
                out.extend_from_slice(&[PROTOCOL_VERSION, TYPE_UNSUBSCRIBE]);
                out.extend_from_slice(&stream.0.to_be_bytes());
                Ok(())
            }
            FrameRef::GapRequest {
                stream,
                first,
                count,
            } => {
                check_limit("gap count", count as usize, MAX_GAP_COUNT as usize)?;
                out.extend_from_slice(&[PROTOCOL_VERSION, TYPE_GAP_REQUEST]);
                out.extend_from_slice(&stream.0.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                Ok(())
            }
        }
    }

    /// Decodes one frame that must span `bytes` exactly.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(FrameError::Oversized {
                len: bytes.len(),
                max: MAX_FRAME_LEN,
            });
        }
        need(bytes, 2)?;
        if bytes[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version(bytes[0]));
        }
        match bytes[1] {
            TYPE_CHUNK => decode_chunk(bytes).map(FrameRef::Chunk),
            TYPE_HEARTBEAT => {
                exact(bytes, HEARTBEAT_LEN)?;
                Ok(FrameRef::Heartbeat {
                    counter: be_u64(bytes, 2),
                    time_us: be_u64(bytes, 10),
                    depth: u16::from_be_bytes([bytes[18], bytes[19]]),
                })
            }
            TYPE_SUBSCRIBE => {
                exact(bytes, SUBSCRIBE_LEN)?;
                let flags = SubscribeFlags::from_bits(bytes[18])
                    .ok_or(FrameError::BadSubscribeFlags(bytes[18]))?;
                Ok(FrameRef::Subscribe {
                    stream: StreamId(be_u64(bytes, 2)),
                    from: be_u64(bytes, 10),
                    flags,
                })
            }
            TYPE_UNSUBSCRIBE => {
                exact(bytes, UNSUBSCRIBE_LEN)?;
                Ok(FrameRef::Unsubscribe {
                    stream: StreamId(be_u64(bytes, 2)),
                })
            }
            TYPE_GAP_REQUEST => {
                exact(bytes, GAP_REQUEST_LEN)?;
                let count = u32::from_be_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]);
                check_limit("gap count", count as usize, MAX_GAP_COUNT as usize)?;
                Ok(FrameRef::GapRequest {
                    stream: StreamId(be_u64(bytes, 2)),
                    first: be_u64(bytes, 10),
                    count,
                })
            }
            other => Err(FrameError::UnknownType(other)),
        }
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Frame {
        match *self {
            FrameRef::Chunk(c) => Frame::Chunk(c.to_owned()),
            FrameRef::Heartbeat {
                counter,
                time_us,
                depth,
            } => Frame::Heartbeat {
                counter,
                time_us,
                depth,
            },
            FrameRef::Subscribe {
                stream,
                from,
                flags,
            } => Frame::Subscribe {
                stream,
                from,
                flags,
            },
            FrameRef::Unsubscribe { stream } => Frame::Unsubscribe { stream },
            FrameRef::GapRequest {
                stream,
                first,
                count,
            } => Frame::GapRequest {
                stream,
                first,
                count,
            },
        }
    }
}

fn decode_chunk(bytes: &[u8]) -> Result<ChunkRef<'_>, FrameError> {
    need(bytes, CHUNK_HEADER_LEN)?;
    let kind = match bytes[2] {
        0 => ChunkKind::Init,
        1 => ChunkKind::Media,
        other => return Err(FrameError::UnknownKind(other)),
    };
    let flags = ChunkFlags::from_bits(bytes[3]).ok_or(FrameError::BadFlags {
        flags: bytes[3],
        kind,
    })?;
    check_flags(kind, flags)?;
    let payload_len = u16::from_be_bytes([bytes[36], bytes[37]]) as usize;
    let tag_len = bytes[38] as usize;
    check_limit("payload", payload_len, MAX_CHUNK_PAYLOAD)?;
    check_limit("tag", tag_len, MAX_TAG_LEN)?;
    exact(bytes, CHUNK_HEADER_LEN + tag_len + payload_len)?;
    let tag_end = CHUNK_HEADER_LEN + tag_len;
    Ok(ChunkRef {
        header: ChunkHeader {
            stream: StreamId(be_u64(bytes, 4)),
            seq: be_u64(bytes, 12),
            kind,
            flags,
            timestamp_ms: be_u64(bytes, 20),
            send_time_us: be_u64(bytes, 28),
        },
        tag: &bytes[CHUNK_HEADER_LEN..tag_end],
        payload: &bytes[tag_end..],
    })
}

fn check_flags(kind: ChunkKind, flags: ChunkFlags) -> Result<(), FrameError> {
    // The init segment is never a keyframe cluster.
    if ChunkFlags::from_bits(flags.bits()).is_none()
        || (kind == ChunkKind::Init && flags.contains(ChunkFlags::KEYFRAME))
    {
        return Err(FrameError::BadFlags {
            flags: flags.bits(),
            kind,
        });
    }
    Ok(())
}

fn check_limit(field: &'static str, len: usize, max: usize) -> Result<(), FrameError> {
    if len > max {
        return Err(FrameError::FieldTooLarge { field, len, max });
    }
    Ok(())
}

fn need(bytes: &[u8], needed: usize) -> Result<(), FrameError> {
    if bytes.len() < needed {
        return Err(FrameError::Truncated {
            needed,
            got: bytes.len(),
        });
    }
    Ok(())
}

fn exact(bytes: &[u8], len: usize) -> Result<(), FrameError> {
    need(bytes, len)?;
    if bytes.len() > len {
        return Err(FrameError::TrailingBytes {
            extra: bytes.len() - len,
        });
    }
    Ok(())
}

/// Reads a big-endian u64 at `at`; callers have checked the length.
fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(payload: usize, tag: usize) -> Chunk {
        Chunk {
            header: ChunkHeader {
                stream: StreamId(0xdead_beef),
                seq: 42,
                kind: ChunkKind::Media,
                flags: ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME),
                timestamp_ms: 1_234,
                send_time_us: 9_999_999,
            },
            tag: vec![7; tag],
            payload: vec![1; payload],
        }
    }

    #[test]
    fn chunk_round_trip_at_limits() {
        for (p, t) in [(0, 0), (1, 32), (MAX_CHUNK_PAYLOAD, MAX_TAG_LEN)] {
            let c = chunk(p, t);
            let bytes = c.encode().unwrap();
            assert_eq!(bytes.len(), CHUNK_HEADER_LEN + p + t);
            assert_eq!(Frame::decode(&bytes).unwrap(), Frame::Chunk(c));
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = chunk(100, 32).encode().unwrap();
        for cut in 0..bytes.len() {
            let err = FrameRef::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = chunk(10, 32).encode().unwrap();
        bytes.push(0);
        assert_eq!(
            FrameRef::decode(&bytes),
            Err(FrameError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn oversized_payload_refused_both_ways() {
        let c = chunk(MAX_CHUNK_PAYLOAD + 1, 0);
        assert!(matches!(
            c.encode(),
            Err(FrameError::FieldTooLarge {
                field: "payload",
                ..
            })
        ));
        // A header that declares too much payload is refused before reading it.
        let mut bytes = chunk(10, 0).encode().unwrap();
        bytes[36..38].copy_from_slice(&(MAX_CHUNK_PAYLOAD as u16 + 1).to_be_bytes());
        assert!(matches!(
            FrameRef::decode(&bytes),
            Err(FrameError::FieldTooLarge { .. })
        ));
        let huge = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            FrameRef::decode(&huge),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn inconsistent_headers_are_rejected() {
        let good = chunk(10, 4).encode().unwrap();
        let mut b = good.clone();
        b[0] = 9;
        assert_eq!(FrameRef::decode(&b), Err(FrameError::Version(9)));
        let mut b = good.clone();
        b[1] = 77;
        assert_eq!(FrameRef::decode(&b), Err(FrameError::UnknownType(77)));
        let mut b = good.clone();
        b[2] = 5;
        assert_eq!(FrameRef::decode(&b), Err(FrameError::UnknownKind(5)));
        let mut b = good.clone();
        b[3] = 0x80;
        assert!(matches!(
            FrameRef::decode(&b),
            Err(FrameError::BadFlags { .. })
        ));
        let mut b = good.clone();
        b[2] = ChunkKind::Init as u8; // init + keyframe is meaningless
        assert!(matches!(
            FrameRef::decode(&b),
            Err(FrameError::BadFlags { .. })
        ));
        let mut b = good;
        b[38] = 200; // tag longer than the limit
        assert!(matches!(
            FrameRef::decode(&b),
            Err(FrameError::FieldTooLarge { field: "tag", .. })
        ));
    }

    #[test]
    fn control_frames_round_trip_and_bound_gap_requests() {
        for f in [
            Frame::Heartbeat {
                counter: 3,
                time_us: 77,
                depth: 4,
            },
            Frame::Subscribe {
                stream: StreamId(9),
                from: 100,
                flags: SubscribeFlags::NEED_INIT.with(SubscribeFlags::FROM_KEYFRAME),
            },
            Frame::Unsubscribe {
                stream: StreamId(9),
            },
            Frame::GapRequest {
                stream: StreamId(1),
                first: 10,
                count: 5,
            },
        ] {
            assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
        }
        let too_many = Frame::GapRequest {
            stream: StreamId(1),
            first: 0,
            count: MAX_GAP_COUNT + 1,
        };
        assert!(too_many.encode().is_err());
        let mut bytes = Frame::GapRequest {
            stream: StreamId(1),
            first: 0,
            count: 1,
        }
        .encode()
        .unwrap();
        bytes[18..22].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(FrameRef::decode(&bytes).is_err());
    }

    #[test]
    fn tag_preimage_matches_wire_header() {
        let c = chunk(33, 5);
        let bytes = c.encode().unwrap();
        assert_eq!(
            &bytes[..TAG_PREIMAGE_LEN],
            &c.header.tag_preimage(c.payload.len())[..]
        );
    }
}

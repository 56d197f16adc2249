//! EBML primitives: element ids and sizes (variable-length integers), a
//! child iterator over buffered master elements, and in-place voiding of
//! children (the init fix-up keeps every byte offset).

/// Ids of the elements the splitter cares about.
pub(crate) mod id {
    pub(crate) const EBML: u32 = 0x1A45_DFA3;
    pub(crate) const SEGMENT: u32 = 0x1853_8067;
    pub(crate) const SEEK_HEAD: u32 = 0x114D_9B74;
    pub(crate) const INFO: u32 = 0x1549_A966;
    pub(crate) const TRACKS: u32 = 0x1654_AE6B;
    pub(crate) const CLUSTER: u32 = 0x1F43_B675;
    pub(crate) const CUES: u32 = 0x1C53_BB6B;
    pub(crate) const TAGS: u32 = 0x1254_C367;
    pub(crate) const CHAPTERS: u32 = 0x1043_A770;
    pub(crate) const ATTACHMENTS: u32 = 0x1941_A469;
    pub(crate) const VOID: u32 = 0xEC;
    pub(crate) const CRC32: u32 = 0xBF;
    pub(crate) const TRACK_ENTRY: u32 = 0xAE;
    pub(crate) const TRACK_NUMBER: u32 = 0xD7;
    pub(crate) const TRACK_TYPE: u32 = 0x83;
    pub(crate) const TIMESTAMP: u32 = 0xE7;
    pub(crate) const SIMPLE_BLOCK: u32 = 0xA3;
    pub(crate) const BLOCK_GROUP: u32 = 0xA0;
    pub(crate) const BLOCK: u32 = 0xA1;
    pub(crate) const REFERENCE_BLOCK: u32 = 0xFB;
    pub(crate) const DURATION: u32 = 0x4489;
    pub(crate) const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
}

/// Ids that may follow a Segment's children at the top level of a Segment.
pub(crate) fn is_segment_child(i: u32) -> bool {
    matches!(
        i,
        id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::CLUSTER
            | id::CUES
            | id::TAGS
            | id::CHAPTERS
            | id::ATTACHMENTS
            | id::VOID
            | id::CRC32
            | id::EBML
            | id::SEGMENT
    )
}

/// Whether `i`, met inside an unknown-size Cluster, ends it: any top-level
/// element. Void and CRC-32 may sit inside any master, so they do not.
pub(crate) fn ends_open_cluster(i: u32) -> bool {
    is_segment_child(i) && i != id::VOID && i != id::CRC32
}

/// Outcome of reading a variable-length field.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read<T> {
    /// The value and the bytes it took.
    Done(T, usize),
    /// More bytes are needed.
    NeedMore,
    /// Not valid EBML.
    Invalid,
}

/// An element id (1–4 bytes, marker bits kept, as ids are written).
pub(crate) fn read_id(buf: &[u8]) -> Read<u32> {
    let Some(&first) = buf.first() else {
        return Read::NeedMore;
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return Read::Invalid;
    }
    if buf.len() < len {
        return Read::NeedMore;
    }
    let v = buf[..len]
        .iter()
        .fold(0u32, |a, b| (a << 8) | u32::from(*b));
    Read::Done(v, len)
}

/// An element size (1–8 bytes); `None` is the reserved "unknown size".
pub(crate) fn read_size(buf: &[u8]) -> Read<Option<u64>> {
    let Some(&first) = buf.first() else {
        return Read::NeedMore;
    };
    if first == 0 {
        return Read::Invalid;
    }
    let len = first.leading_zeros() as usize + 1;
    if buf.len() < len {
        return Read::NeedMore;
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let mut v = u64::from(first & mask);
    let mut all_ones = (first & mask) == mask;
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
        all_ones &= *b == 0xFF;
    }
    Read::Done(if all_ones { None } else { Some(v) }, len)
}

/// Encodes `size` as an 8-byte EBML size.
pub(crate) fn size8(size: u64) -> [u8; 8] {
    let mut b = size.to_be_bytes();
    b[0] = 0x01;
    b
}

/// The 8-byte "unknown size" marker.
pub(crate) const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Reads an unsigned integer element body (big-endian, ≤ 8 bytes).
pub(crate) fn uint(body: &[u8]) -> Option<u64> {
    (body.len() <= 8).then(|| body.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
}

/// Iterates the child elements of a fully buffered master element body:
/// (id, body). Stops at the first malformed child.
pub(crate) fn children(mut body: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        let Read::Done(i, il) = read_id(body) else {
            return None;
        };
        let Read::Done(Some(size), sl) = read_size(&body[il..]) else {
            return None;
        };
        let start = il + sl;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        if end > body.len() {
            return None;
        }
        let child = &body[start..end];
        body = &body[end..];
        Some((i, child))
    })
}

/// Iterates the children of a buffered master body as (id, start, end) byte
/// ranges of whole elements (header included). Stops at the first malformed
/// or unknown-size child.
pub(crate) fn child_ranges(body: &[u8]) -> impl Iterator<Item = (u32, usize, usize)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = body.get(at..)?;
        let Read::Done(i, il) = read_id(rest) else {
            return None;
        };
        let Read::Done(Some(size), sl) = read_size(rest.get(il..)?) else {
            return None;
        };
        let end = at
            .checked_add(il + sl)?
            .checked_add(usize::try_from(size).ok()?)?;
        if end > body.len() {
            return None;
        }
        let start = at;
        at = end;
        Some((i, start, end))
    })
}

/// Overwrites `element` (a whole element, at least 2 bytes) with a Void
/// element of exactly the same length, so no enclosing size changes.
pub(crate) fn void_in_place(element: &mut [u8]) {
    let len = element.len();
    if len < 2 {
        return;
    }
    // 0xEC, then an 8-byte size when it does not fit one byte (sizes up to
    // 126 fit in one byte: 0x80 | n).
    element.fill(0);
    element[0] = 0xEC;
    if len - 2 <= 126 {
        element[1] = 0x80 | (len - 2) as u8;
    } else {
        // len > 128 here, so the 8-byte size fits.
        element[1..9].copy_from_slice(&size8((len - 9) as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vints() {
        assert_eq!(read_id(&[0x1A, 0x45, 0xDF, 0xA3]), Read::Done(id::EBML, 4));
        assert_eq!(read_id(&[0xEC]), Read::Done(id::VOID, 1));
        assert_eq!(read_id(&[0x1A, 0x45]), Read::NeedMore);
        assert_eq!(read_id(&[0x01]), Read::Invalid);
        assert_eq!(read_size(&[0x81]), Read::Done(Some(1), 1));
        assert_eq!(read_size(&[0x40, 0x02]), Read::Done(Some(2), 2));
        assert_eq!(read_size(&[0xFF]), Read::Done(None, 1));
        assert_eq!(read_size(&UNKNOWN_SIZE), Read::Done(None, 8));
        assert_eq!(read_size(&size8(150_000)), Read::Done(Some(150_000), 8));
        assert_eq!(read_size(&[0x00]), Read::Invalid);
        assert_eq!(read_size(&[0x10, 0]), Read::NeedMore);
    }

    #[test]
    fn voids_keep_the_length_and_parse_back() {
        for len in [2usize, 3, 11, 128, 129, 130, 5000] {
            let mut e = vec![0xAB; len];
            void_in_place(&mut e);
            let ranges: Vec<_> = child_ranges(&e).collect();
            assert_eq!(ranges, vec![(id::VOID, 0, len)], "length {len}");
        }
    }
}

//! Init-segment fix-up for re-serving a stream from a mid-stream cluster:
//! the Segment's size becomes unknown, and SeekHead, Cues, Tags, Chapters and
//! Info's Duration are voided in place (same length), so a player neither
//! seeks to offsets of a file it is not reading nor stops at a file's end.

use crate::ebml::{self, id, Read};
use crate::MediaError;

/// Fixes up an init segment (EBML header, Segment header, its children up
/// to the first Cluster) for a live re-serve. Bytes after the last whole
/// child (a Cluster, or a partial element) are refused as [`MediaError`].
/// Idempotent: the splitter's own init segments come back unchanged.
pub fn fix_up_init(init: &[u8]) -> Result<Vec<u8>, MediaError> {
    let (ebml_end, body_start) = segment_start(init)?;
    let mut out = Vec::with_capacity(init.len() + 8);
    out.extend_from_slice(&init[..ebml_end]);
    out.extend_from_slice(&init[ebml_end..ebml_end + 4]);
    out.extend_from_slice(&ebml::UNKNOWN_SIZE);
    let mut at = body_start;
    while at < init.len() {
        let (i, size, hl) = header_at(init, at)?;
        if i == id::CLUSTER || i == id::EBML || i == id::SEGMENT {
            return Err(MediaError::Corrupt {
                offset: at as u64,
                what: "an init segment ends before its first Cluster",
            });
        }
        let end = end_of(init, at, i, size, hl)?;
        let start = out.len();
        out.extend_from_slice(&init[at..end]);
        match i {
            id::SEEK_HEAD | id::CUES | id::TAGS | id::CHAPTERS => {
                ebml::void_in_place(&mut out[start..]);
            }
            id::INFO => {
                let voids: Vec<(usize, usize)> = ebml::child_ranges(&out[start + hl..])
                    .filter(|(c, _, _)| *c == id::DURATION)
                    .map(|(_, s, e)| (start + hl + s, start + hl + e))
                    .collect();
                for (s, e) in voids {
                    ebml::void_in_place(&mut out[s..e]);
                }
            }
            _ => {}
        }
        at = end;
    }
    Ok(out)
}

/// Where an init segment's EBML header ends and its Segment's body starts.
pub(crate) fn segment_start(init: &[u8]) -> Result<(usize, usize), MediaError> {
    let (ebml_id, ebml_size, hl) = header_at(init, 0)?;
    if ebml_id != id::EBML {
        return Err(MediaError::NotWebm { found: ebml_id });
    }
    let ebml_end = end_of(init, 0, ebml_id, ebml_size, hl)?;
    let (seg_id, _, seg_hl) = header_at(init, ebml_end)?;
    if seg_id != id::SEGMENT {
        return Err(MediaError::Corrupt {
            offset: ebml_end as u64,
            what: "expected a Segment after the EBML header",
        });
    }
    Ok((ebml_end, ebml_end + seg_hl))
}

/// Reads the element header at `at`.
pub(crate) fn header_at(buf: &[u8], at: usize) -> Result<(u32, Option<u64>, usize), MediaError> {
    let rest = buf.get(at..).unwrap_or_default();
    let truncated = MediaError::Truncated {
        offset: buf.len() as u64,
        id: 0,
    };
    let corrupt = |what| MediaError::Corrupt {
        offset: at as u64,
        what,
    };
    let (i, il) = match ebml::read_id(rest) {
        Read::Done(i, l) => (i, l),
        Read::NeedMore => return Err(truncated),
        Read::Invalid => return Err(corrupt("invalid element id")),
    };
    match ebml::read_size(&rest[il..]) {
        Read::Done(size, sl) => Ok((i, size, il + sl)),
        Read::NeedMore => Err(MediaError::Truncated {
            offset: buf.len() as u64,
            id: i,
        }),
        Read::Invalid => Err(corrupt("invalid element size")),
    }
}

/// The end of a known-size element at `at` that must lie within `buf`.
pub(crate) fn end_of(
    buf: &[u8],
    at: usize,
    i: u32,
    size: Option<u64>,
    hl: usize,
) -> Result<usize, MediaError> {
    let size = size.ok_or(MediaError::Corrupt {
        offset: at as u64,
        what: "unknown-size element in an init segment",
    })?;
    usize::try_from(size)
        .ok()
        .and_then(|s| (at + hl).checked_add(s))
        .filter(|end| *end <= buf.len())
        .ok_or(MediaError::Truncated {
            offset: buf.len() as u64,
            id: i,
        })
}

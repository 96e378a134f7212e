//! The bytes of the write-ahead log: segment headers, records, the checkpoint marker and
//! the payload of a group. See `docs/STORE.md` ("The write-ahead log on disk").
//!
//! ```text
//! segment:    "EXWAL002" | seq: u64 | 12 zero bytes | crc32(first 28 bytes): u32     (32 bytes)
//! record:     "EXRG" | len: u32 | group: u64 | synced: u64 | crc: u32 | payload
//!             crc = crc32(segment seq, len, group, synced, payload)
//! checkpoint: "EXCKPT02" | segment: u64 | group: u64 | crc32(first 24 bytes): u32
//! payload:    count: u32 | op*
//! op:         key_len: u32 | key | 0 (delete) or 1 | [value_len: u32 | value]
//! ```
//!
//! All integers are little-endian. `group` numbers the groups of the store, one more for
//! every group; `synced` is the highest group the writer knew to be durable when it wrote
//! this one. The CRC covers the segment's sequence number (taken from the file name on
//! reading), so a record left over from a recycled file's earlier use never validates.

use bytes::Bytes;

use super::super::Op;

/// The magic of a segment of this format.
pub(crate) const MAGIC: &[u8; 8] = b"EXWAL002";
/// The magic of a segment of the first format (records without group numbers).
pub(crate) const MAGIC_V1: &[u8; 8] = b"EXWAL001";
/// Bytes of a segment header.
pub(crate) const HEADER: u64 = 32;
/// The first bytes of every record.
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"EXRG";
/// Bytes of a record header.
pub(crate) const RECORD_HEADER: u64 = 28;
/// The most bytes one record's payload may have.
pub(crate) const MAX_PAYLOAD: u64 = u32::MAX as u64;
const MARKER_MAGIC: &[u8; 8] = b"EXCKPT02";
/// Bytes of a checkpoint marker.
pub(crate) const MARKER_LEN: usize = 28;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
}

/// The header of segment `seq`.
pub(crate) fn segment_header(seq: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let sum = crc32fast::hash(&h[..28]);
    h[28..].copy_from_slice(&sum.to_le_bytes());
    h
}

/// What the first bytes of a segment file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    /// A segment of this format named `seq`.
    Current(u64),
    /// A segment of the first format named `seq`.
    V1(u64),
    /// Anything else.
    Invalid,
}

pub(crate) fn read_segment_header(data: &[u8]) -> SegmentHeader {
    let Some(h) = data.get(..HEADER as usize) else { return SegmentHeader::Invalid };
    if &h[..8] == MAGIC && u32_at(h, 28) == Some(crc32fast::hash(&h[..28])) {
        return u64_at(h, 8).map_or(SegmentHeader::Invalid, SegmentHeader::Current);
    }
    if &h[..8] == MAGIC_V1 {
        return u64_at(h, 8).map_or(SegmentHeader::Invalid, SegmentHeader::V1);
    }
    SegmentHeader::Invalid
}

fn record_crc(segment: u64, len: u32, group: u64, synced: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(&group.to_le_bytes());
    h.update(&synced.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// A record of group `group` in segment `segment`, header and payload, ready to write.
/// The payload must be at most [`MAX_PAYLOAD`] bytes (the committer splits groups).
pub(crate) fn record(segment: u64, group: u64, synced: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(&record_crc(segment, len, group, synced, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A record read back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) group: u64,
    pub(crate) synced: u64,
    pub(crate) payload: &'a [u8],
    /// Where the record after it would start.
    pub(crate) end: usize,
}

/// The record at `at` of segment `segment`'s bytes, if one is there whole and its
/// checksum holds.
pub(crate) fn read_record(data: &[u8], at: usize, segment: u64) -> Option<Record<'_>> {
    let h = data.get(at..at + RECORD_HEADER as usize)?;
    if &h[..4] != RECORD_MAGIC {
        return None;
    }
    let len = u32_at(h, 4)?;
    let group = u64_at(h, 8)?;
    let synced = u64_at(h, 16)?;
    let sum = u32_at(h, 24)?;
    let start = at + RECORD_HEADER as usize;
    let payload = data.get(start..start.checked_add(len as usize)?)?;
    (len > 0 && record_crc(segment, len, group, synced, payload) == sum).then_some(Record {
        group,
        synced,
        payload,
        end: start + len as usize,
    })
}

/// Whether the bytes at `at` start like a record of this format (its magic), valid or not.
pub(crate) fn looks_like_record(data: &[u8], at: usize) -> bool {
    data.get(at..at + 4).is_some_and(|m| m == RECORD_MAGIC)
}

/// The group number a record header at `at` claims, whether or not the record is valid:
/// a record torn by a crash still names its group, a stale one from a recycled file an
/// old one.
pub(crate) fn claimed_group(data: &[u8], at: usize) -> Option<u64> {
    if !looks_like_record(data, at) {
        return None;
    }
    u64_at(data, at + 8)
}

/// The records of a segment of the first format, in order, up to the first invalid one.
pub(crate) fn read_v1_records(data: &[u8], segment: u64) -> Vec<Vec<u8>> {
    let mut at = HEADER_V1;
    let mut out = Vec::new();
    while let (Some(len), Some(sum)) = (u32_at(data, at), u32_at(data, at + 4)) {
        let start = at + 8;
        let Some(payload) = data.get(start..start + len as usize) else { break };
        let mut h = crc32fast::Hasher::new();
        h.update(&segment.to_le_bytes());
        h.update(&len.to_le_bytes());
        h.update(payload);
        if len == 0 || h.finalize() != sum {
            break;
        }
        out.push(payload.to_vec());
        at = start + len as usize;
    }
    out
}

/// Bytes of a segment header of the first format.
const HEADER_V1: usize = 16;

/// The checkpoint marker: segments before `segment`, and groups up to `group`, are in the
/// engine, durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) segment: u64,
    /// `None` for a marker of the first format, which did not record it.
    pub(crate) group: Option<u64>,
}

pub(crate) fn encode_marker(segment: u64, group: u64) -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    m[..8].copy_from_slice(MARKER_MAGIC);
    m[8..16].copy_from_slice(&segment.to_le_bytes());
    m[16..24].copy_from_slice(&group.to_le_bytes());
    let sum = crc32fast::hash(&m[..24]);
    m[24..].copy_from_slice(&sum.to_le_bytes());
    m
}

/// Reads a marker; `None` if the bytes are not one.
pub(crate) fn decode_marker(b: &[u8]) -> Option<Marker> {
    match b.len() {
        // The first format: the segment alone.
        8 => Some(Marker { segment: u64_at(b, 0)?, group: None }),
        MARKER_LEN if &b[..8] == MARKER_MAGIC && u32_at(b, 24) == Some(crc32fast::hash(&b[..24])) => {
            Some(Marker { segment: u64_at(b, 8)?, group: Some(u64_at(b, 16)?) })
        }
        _ => None,
    }
}

/// Encodes a group's writes as one record payload.
pub(crate) fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(ops) as usize);
    out.extend_from_slice(&u32::try_from(ops.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (k, v) in ops {
        out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// The bytes [`encode`] makes of `ops`.
pub(crate) fn encoded_len(ops: &[Op]) -> u64 {
    4 + ops.iter().map(|(k, v)| op_len(k, v.as_ref())).sum::<u64>()
}

/// The bytes one write takes in a payload.
pub(crate) fn op_len(key: &[u8], value: Option<&Bytes>) -> u64 {
    5 + key.len() as u64 + value.map_or(0, |v| 4 + v.len() as u64)
}

/// Decodes a record payload; `None` if it is malformed.
pub(crate) fn decode(mut p: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (p.get(..n)?, p.get(n..)?);
        *p = rest;
        Some(head)
    }
    fn u32_of(p: &mut &[u8]) -> Option<usize> {
        take(p, 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).map(|n| n as usize)
    }
    let count = u32_of(&mut p)?;
    let mut ops = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let klen = u32_of(&mut p)?;
        let key = take(&mut p, klen)?.to_vec();
        let value = match take(&mut p, 1)?[0] {
            0 => None,
            1 => {
                let vlen = u32_of(&mut p)?;
                Some(Bytes::copy_from_slice(take(&mut p, vlen)?))
            }
            _ => return None,
        };
        ops.push((key, value));
    }
    p.is_empty().then_some(ops)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn op(k: &str, v: Option<&str>) -> Op {
        (k.as_bytes().to_vec(), v.map(|v| Bytes::copy_from_slice(v.as_bytes())))
    }

    #[test]
    fn payloads_round_trip_and_their_length_is_known() {
        let ops = vec![op("a", Some("1")), op("b", None), op("", Some(""))];
        let p = encode(&ops);
        assert_eq!(p.len() as u64, encoded_len(&ops));
        assert_eq!(decode(&p), Some(ops));
        assert_eq!(decode(&[1, 0, 0, 0, 9]), None);
    }

    #[test]
    fn a_record_validates_only_in_its_own_segment_and_whole() {
        let mut seg = segment_header(7).to_vec();
        let r = record(7, 42, 40, b"payload");
        seg.extend_from_slice(&r);
        let got = read_record(&seg, HEADER as usize, 7).unwrap();
        assert_eq!((got.group, got.synced, got.payload, got.end), (42, 40, &b"payload"[..], seg.len()));
        assert!(read_record(&seg, HEADER as usize, 8).is_none(), "another segment's record");
        for i in HEADER as usize..seg.len() {
            let mut bad = seg.clone();
            bad[i] ^= 0x10;
            assert!(read_record(&bad, HEADER as usize, 7).is_none(), "a flipped bit at {i} went unnoticed");
        }
        assert!(read_record(&seg[..seg.len() - 1], HEADER as usize, 7).is_none(), "a short record");
        assert!(looks_like_record(&seg, HEADER as usize));
    }

    #[test]
    fn headers_and_markers_carry_checksums() {
        let h = segment_header(9);
        assert_eq!(read_segment_header(&h), SegmentHeader::Current(9));
        let mut bad = h;
        bad[10] ^= 1;
        assert_eq!(read_segment_header(&bad), SegmentHeader::Invalid);
        let m = encode_marker(3, 77);
        assert_eq!(decode_marker(&m), Some(Marker { segment: 3, group: Some(77) }));
        let mut bad = m;
        bad[17] ^= 1;
        assert_eq!(decode_marker(&bad), None);
        assert_eq!(decode_marker(&5u64.to_le_bytes()), Some(Marker { segment: 5, group: None }));
    }
}

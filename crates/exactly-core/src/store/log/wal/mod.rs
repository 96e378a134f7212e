//! The write-ahead log: what makes a group commit durable with one write and one
//! `fdatasync`.
//!
//! Each group is appended here (and synced by the sync thread), then applied to the
//! engine in memory by the engine thread; the engine is flushed and fsynced only at a checkpoint (when a
//! segment fills, and at close), after which older segments are recycled. On open, the
//! log is replayed into the engine. Replay is idempotent: every logged operation writes
//! a whole value or deletes one.
//!
//! Segments are files `<seq>.wal` of `segment_size` bytes, zero-filled when first made
//! and then recycled, because rewriting blocks already on disk syncs faster than
//! allocating new ones. The next segment is made on its own thread while the current one
//! fills, so a rotation only swaps files. Layout:
//!
//! ```text
//! segment: "EXWAL001" | seq: u64 LE | record* | zeros or stale records
//! record:  len: u32 LE | crc32(seq LE, len LE, payload): u32 LE | payload
//! payload: count: u32 LE | op*
//! op:      key_len: u32 LE | key | 0 (delete) or 1 | [value_len: u32 LE | value]
//! ```
//!
//! The CRC covers the segment's sequence number, so records left over from a segment's
//! previous use never validate; replay of a segment stops at the first invalid record.
//! A file `checkpoint` holds the sequence number of the first segment not yet
//! checkpointed; replay starts there, so a checkpointed segment waiting for reuse is never
//! replayed over newer state.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub(super) use super::Op;

const MAGIC: &[u8; 8] = b"EXWAL001";
const HEADER: u64 = 16;
const RECORD_HEADER: u64 = 8;

/// A record written to the log, to be synced.
pub(super) struct Appended {
    /// The segment it is in.
    pub(super) file: Arc<File>,
    /// Its path.
    pub(super) path: PathBuf,
    /// The previous segment filled up with this write.
    pub(super) rotated: bool,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    seq: u64,
    offset: u64,
}

pub(super) struct Wal {
    dir: PathBuf,
    segment_size: u64,
    current: Segment,
    /// Full segments whose records are not yet checkpointed (the next checkpoint, which
    /// the engine thread runs after applying them, covers them).
    retired: Vec<PathBuf>,
    /// Checkpointed segments kept for reuse; checkpoints (on their own thread) add to it.
    spare: Arc<Mutex<Vec<PathBuf>>>,
    /// The next segment, being made on its own thread (see [`Wal::prepare_next`]).
    next: Option<std::thread::JoinHandle<io::Result<Segment>>>,
}

/// Segments to recycle once a checkpoint has made their records durable in the engine;
/// made by [`Wal::cover`], finished on any thread.
pub(super) struct Covered {
    dir: PathBuf,
    /// The first segment the checkpoint does not cover.
    marker: u64,
    retired: Vec<PathBuf>,
    spare: Arc<Mutex<Vec<PathBuf>>>,
}

impl Covered {
    /// Everything in the covered segments is in the engine and fsynced: record that
    /// durably, then keep the segments for reuse.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        write_marker(&self.dir, self.marker)?;
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        for path in std::mem::take(&mut self.retired) {
            if spare.len() < 2 {
                spare.push(path);
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Encodes a group's writes as one record payload.
pub(super) fn encode(ops: &[Op]) -> Vec<u8> {
    let size: usize = 4 + ops.iter().map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Bytes::len)).sum::<usize>();
    let mut out = Vec::with_capacity(size);
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

/// Decodes a record payload; `None` if it is malformed.
pub(super) fn decode(mut p: &[u8]) -> Option<Vec<Op>> {
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

fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn read_marker(dir: &Path) -> io::Result<u64> {
    match std::fs::read(dir.join("checkpoint")) {
        Ok(b) => Ok(b.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn write_marker(dir: &Path, seq: u64) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&seq.to_le_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("checkpoint"))?;
    sync_dir(dir)
}

/// Reads the valid records of a segment, in order.
fn read_segment(path: &Path) -> io::Result<(u64, Vec<Vec<u8>>)> {
    let data = std::fs::read(path)?;
    if data.len() < HEADER as usize || &data[..8] != MAGIC {
        return Ok((0, Vec::new()));
    }
    let seq = u64::from_le_bytes(data[8..16].try_into().map_err(|_| io::ErrorKind::InvalidData)?);
    let mut at = HEADER as usize;
    let mut records = Vec::new();
    while let Some(h) = data.get(at..at + RECORD_HEADER as usize) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let start = at + RECORD_HEADER as usize;
        let Some(payload) = data.get(start..start + len) else { break };
        if len == 0 || crc(seq, payload) != sum {
            break;
        }
        records.push(payload.to_vec());
        at = start + len;
    }
    Ok((seq, records))
}

impl Wal {
    /// Opens the log in `dir`, returning it with the payloads to replay, oldest first.
    /// Call [`Wal::reset`] once they are applied and checkpointed.
    pub(super) fn open(dir: &Path, segment_size: u64) -> io::Result<(Self, Vec<Vec<u8>>)> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                found.push((seq, path));
            }
        }
        found.sort();
        let from = read_marker(dir)?;
        let mut replay = Vec::new();
        let mut max_seq = from;
        for (seq, path) in &found {
            max_seq = max_seq.max(*seq);
            if *seq < from {
                continue;
            }
            let (header_seq, records) = read_segment(path)?;
            if header_seq == *seq {
                replay.extend(records);
            }
        }
        let spare: Vec<PathBuf> = found.into_iter().map(|(_, p)| p).collect();
        let current = Self::make_segment(dir, max_seq + 1, segment_size, None)?;
        let mut wal =
            Self { dir: dir.to_owned(), segment_size, current, retired: spare, spare: Arc::default(), next: None };
        wal.prepare_next();
        Ok((wal, replay))
    }

    /// Starts making the segment after the current one on its own thread: a recycled file
    /// renamed, or (with none spare) a new one written with zeros, its header written, the
    /// file and the directory fsynced. The commit thread, which rotates segments, then only
    /// swaps files: writing and syncing a new 16 MiB segment took it 11-29 ms here, during
    /// which no group was written (docs/performance-log.md). Until the swap the file is a
    /// segment with no records, which replay reads as empty.
    fn prepare_next(&mut self) {
        let (dir, seq, size, reuse) = (self.dir.clone(), self.current.seq + 1, self.segment_size, self.reuse());
        let job = move || Self::make_segment(&dir, seq, size, reuse);
        // Without a thread, the rotation makes the segment itself, as it would after a
        // failed preparation.
        self.next = std::thread::Builder::new().name("exactly-log-segment".into()).spawn(job).ok();
    }

    /// The segment after the current one: the prepared one, once ready; made here if it
    /// was not prepared or its preparation failed (a full disk then may have room now).
    fn take_next(&mut self) -> io::Result<Segment> {
        let seq = self.current.seq + 1;
        let prepared = self.next.take().map(|h| h.join());
        match prepared {
            Some(Ok(Ok(segment))) if segment.seq == seq => Ok(segment),
            failed => {
                if let Some(Ok(Err(e))) = &failed {
                    tracing::warn!(error = %e, "preparing the next log segment failed; making it now");
                }
                let reuse = self.reuse();
                Self::make_segment(&self.dir, seq, self.segment_size, reuse)
            }
        }
    }

    /// Makes the prepared segment current and, with `prepare`, starts preparing the one
    /// after it.
    fn rotate(&mut self, prepare: bool) -> io::Result<()> {
        let next = self.take_next()?;
        let full = std::mem::replace(&mut self.current, next);
        self.retired.push(full.path);
        if prepare {
            self.prepare_next();
        }
        Ok(())
    }

    /// Makes segment `seq`: reuses a spare file, or writes a zero-filled one; the file and
    /// the directory are fsynced, so it can be written to at once.
    fn make_segment(dir: &Path, seq: u64, size: u64, reuse: Option<PathBuf>) -> io::Result<Segment> {
        let path = seg_path(dir, seq);
        let file = match reuse {
            Some(old) => {
                std::fs::rename(&old, &path)?;
                OpenOptions::new().read(true).write(true).open(&path)?
            }
            None => {
                let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
                let zeros = vec![0u8; 1 << 20];
                let mut left = size;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
                f
            }
        };
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&seq.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Segment { file: Arc::new(file), path, seq, offset: HEADER })
    }

    /// A spare segment file, if a checkpoint has freed one.
    fn reuse(&self) -> Option<PathBuf> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Appends one record, not yet synced: sync the returned file before telling anyone
    /// it is durable. If the previous segment filled up, checkpoint the engine and
    /// [`finish`](Covered::finish) what [`Wal::cover`] returns.
    pub(super) fn write(&mut self, payload: &[u8]) -> io::Result<Appended> {
        let need = RECORD_HEADER + payload.len() as u64;
        let mut rotated = false;
        if self.current.offset + need > self.segment_size && self.current.offset > HEADER {
            self.rotate(true)?;
            rotated = true;
        }
        let seg = &mut self.current;
        let mut buf = Vec::with_capacity(need as usize);
        buf.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
        buf.extend_from_slice(&crc(seg.seq, payload).to_le_bytes());
        buf.extend_from_slice(payload);
        seg.file.write_all_at(&buf, seg.offset)?;
        seg.offset += need;
        Ok(Appended { file: seg.file.clone(), path: seg.path.clone(), rotated })
    }

    /// Appends and syncs one record (tests).
    #[cfg(test)]
    fn append(&mut self, payload: &[u8]) -> io::Result<(PathBuf, bool)> {
        let a = self.write(payload)?;
        a.file.sync_data()?;
        Ok((a.path, a.rotated))
    }

    /// The full segments, for a checkpoint of everything logged so far (the engine thread
    /// applies it all before it checkpoints):
    /// once the engine is checkpointed, [`Covered::finish`] recycles them.
    pub(super) fn cover(&mut self) -> Covered {
        Covered {
            dir: self.dir.clone(),
            marker: self.current.seq,
            retired: std::mem::take(&mut self.retired),
            spare: self.spare.clone(),
        }
    }

    /// After replay and a checkpoint at open: everything older than the current segment
    /// is in the engine.
    pub(super) fn reset(&mut self) -> io::Result<()> {
        self.cover().finish()
    }

    /// The current segment's file, synced on every append.
    #[cfg(test)]
    pub(super) fn current_path(&self) -> &Path {
        &self.current.path
    }

    /// Whether the current segment holds records not yet checkpointed into sled.
    pub(super) fn dirty(&self) -> bool {
        self.current.offset > HEADER
    }

    /// Starts a new segment so the current one can be checkpointed (a flush, the close).
    /// At close no segment after it is prepared: nothing would be written to it, and the
    /// close would wait for it (16 MiB of zeros and an fsync when no file is spare).
    pub(super) fn rotate_for_checkpoint(&mut self, closing: bool) -> io::Result<()> {
        if !self.dirty() {
            return Ok(());
        }
        self.rotate(!closing)
    }
}

impl Drop for Wal {
    /// Waits for a segment being prepared, so that no thread writes in the directory
    /// after the store is closed (it may be opened again at once).
    fn drop(&mut self) {
        if let Some(h) = self.next.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(k: &str, v: Option<&str>) -> Op {
        (k.as_bytes().to_vec(), v.map(|v| Bytes::copy_from_slice(v.as_bytes())))
    }

    #[test]
    fn payloads_round_trip() {
        let ops = vec![op("a", Some("1")), op("b", None), op("", Some(""))];
        assert_eq!(decode(&encode(&ops)), Some(ops));
        assert_eq!(decode(&[1, 0, 0, 0, 9]), None);
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 4096).unwrap();
        assert!(replay.is_empty());
        let a = encode(&[op("a", Some("1"))]);
        let b = encode(&[op("b", Some("2"))]);
        wal.append(&a).unwrap();
        wal.append(&b).unwrap();
        let path = wal.current_path().to_owned();
        // Tear the second record: corrupt its last byte.
        let seg = std::fs::read(&path).unwrap();
        let end = HEADER as usize + 2 * RECORD_HEADER as usize + a.len() + b.len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[seg[end - 1] ^ 0xff], (end - 1) as u64).unwrap();
        drop(wal);
        let (_wal, replay) = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(replay, vec![a]);
    }

    /// Whether `seq`'s file is a whole segment whose header names it.
    fn ready(dir: &Path, seq: u64, size: u64) -> bool {
        std::fs::read(seg_path(dir, seq))
            .is_ok_and(|b| b.len() as u64 == size && &b[..8] == MAGIC && b[8..16] == seq.to_le_bytes()[..])
    }

    #[test]
    fn the_next_segment_is_made_before_the_current_one_fills() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
        let first = wal.current.seq;
        // Prepared on its own thread: wait for it as a rotation would, then put it back.
        let prepared = wal.next.take().unwrap().join().unwrap().unwrap();
        assert_eq!(prepared.seq, first + 1);
        assert!(ready(dir.path(), first + 1, 4096), "made before any rotation");
        wal.next = Some(std::thread::spawn(move || Ok(prepared)));
        let a = encode(&[op("a", Some(&"x".repeat(3000)))]);
        assert!(!wal.append(&a).unwrap().1);
        let (_, rotated) = wal.append(&a).unwrap();
        assert!(rotated);
        assert_eq!(wal.current.seq, first + 1);
        // The rotation started on the one after.
        let after = wal.next.take().unwrap().join().unwrap().unwrap();
        assert_eq!(after.seq, first + 2);
        assert!(ready(dir.path(), first + 2, 4096));
        wal.next = Some(std::thread::spawn(move || Ok(after)));
        // A prepared segment holds no records: reopening replays both records, nothing else.
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(replay, vec![a.clone(), a]);
        assert_eq!(wal.current.seq, first + 3, "after every file found, the prepared one included");
    }

    #[test]
    fn a_flush_prepares_the_next_segment_and_the_close_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
        let first = wal.current.seq;
        let a = encode(&[op("a", Some("x"))]);
        wal.append(&a).unwrap();
        wal.rotate_for_checkpoint(false).unwrap();
        assert_eq!(wal.current.seq, first + 1);
        wal.next.take().unwrap().join().unwrap().unwrap();
        assert!(ready(dir.path(), first + 2, 4096), "a flush goes on writing: the next one is made");
        wal.next = None;
        wal.append(&a).unwrap();
        wal.rotate_for_checkpoint(true).unwrap();
        assert_eq!(wal.current.seq, first + 2);
        assert!(wal.next.is_none(), "nothing is written after the close");
        assert!(!seg_path(dir.path(), first + 3).exists());
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(replay, vec![a.clone(), a]);
    }

    #[test]
    fn a_failed_preparation_is_made_good_at_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
        let first = wal.current.seq;
        wal.next.take().unwrap().join().unwrap().unwrap();
        wal.next = Some(std::thread::spawn(|| Err(io::Error::other("disk full"))));
        let a = encode(&[op("a", Some(&"x".repeat(3000)))]);
        wal.append(&a).unwrap();
        assert!(wal.append(&a).unwrap().1);
        assert_eq!(wal.current.seq, first + 1);
        assert!(ready(dir.path(), first + 1, 4096));
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(replay, vec![a.clone(), a]);
    }

    #[test]
    fn rotation_recycles_segments_and_stale_records_never_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 256).unwrap();
        let mut rotations = 0;
        for i in 0..40 {
            let (_, rotated) = wal.append(&encode(&[op(&format!("k{i}"), Some("0123456789"))])).unwrap();
            if rotated {
                rotations += 1;
                wal.cover().finish().unwrap();
            }
        }
        assert!(rotations >= 4, "{rotations} rotations");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 5, "segments are recycled, not piled up: {files}");
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 256).unwrap();
        // Only the current segment's records come back, in order: nothing checkpointed,
        // nothing stale from a recycled file.
        let keys: Vec<usize> = replay
            .iter()
            .map(|r| std::str::from_utf8(&decode(r).unwrap()[0].0[1..]).unwrap().parse().unwrap())
            .collect();
        assert!(!keys.is_empty());
        assert_eq!(*keys.last().unwrap(), 39);
        assert!(keys.windows(2).all(|w| w[1] == w[0] + 1), "{keys:?}");
        assert!(keys[0] > 30, "{keys:?}");
    }
}

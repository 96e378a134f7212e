//! Reading and editing a store's write-ahead log by its documented format (docs/STORE.md,
//! "The write-ahead log on disk"), to damage it the way a disk or a power cut does.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

const HEADER: usize = 32;
const RECORD_HEADER: usize = 28;

/// One record of the log.
#[derive(Debug, Clone)]
pub struct Record {
    pub segment: u64,
    pub file: PathBuf,
    pub offset: usize,
    pub len: usize,
    pub group: u64,
    pub synced: u64,
}

/// The records from the checkpoint on, in order.
#[derive(Debug)]
pub struct Log {
    pub records: Vec<Record>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn crc(segment: u64, len: u32, group: u64, synced: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(&group.to_le_bytes());
    h.update(&synced.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let seq = p.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
            Some((seq, p))
        })
        .collect();
    out.sort();
    out
}

impl Log {
    pub fn read(dir: &Path) -> Self {
        let marker = std::fs::read(dir.join("checkpoint")).unwrap();
        assert_eq!(&marker[..8], b"EXCKPT02", "a checkpoint of the documented format");
        let from = u64_at(&marker, 8);
        let mut records = Vec::new();
        for (seq, file) in segments(dir).into_iter().filter(|(s, _)| *s >= from) {
            let data = std::fs::read(&file).unwrap();
            let mut at = HEADER;
            while at + RECORD_HEADER <= data.len() && &data[at..at + 4] == b"EXRG" {
                let len = u32_at(&data, at + 4);
                let (group, synced) = (u64_at(&data, at + 8), u64_at(&data, at + 16));
                let start = at + RECORD_HEADER;
                let Some(payload) = data.get(start..start + len as usize) else { break };
                if crc(seq, len, group, synced, payload) != u32_at(&data, at + 24) {
                    break;
                }
                records.push(Record { segment: seq, file: file.clone(), offset: at, len: len as usize, group, synced });
                at = start + len as usize;
            }
        }
        assert!(records.windows(2).all(|w| w[1].group == w[0].group + 1), "consecutive groups");
        Self { records }
    }

    /// Flips a bit in the payload of a record in the middle of the log, followed by many
    /// written after it was durable. Returns its file and offset.
    pub fn flip_in_the_middle(&self) -> (PathBuf, u64) {
        let r = &self.records[self.records.len() / 2];
        assert!(self.records.iter().any(|l| l.synced >= r.group), "records written after it was durable follow it");
        let mut data = std::fs::read(&r.file).unwrap();
        data[r.offset + RECORD_HEADER + r.len / 2] ^= 0x08;
        std::fs::write(&r.file, data).unwrap();
        (r.file.clone(), r.offset as u64)
    }

    /// A power cut while record `i` was being synced, after record `i + 1` was written
    /// and reached the disk, with a segment rotation between them (the log's unit of
    /// recycling): `i` ends its segment, torn (its last bytes zeros); `i + 1` starts the
    /// next segment and says only the group before `i` was durable (it was written while
    /// `i` was being synced); nothing after it exists. The records must all be in one
    /// segment, as after a crash before the log ever filled one.
    pub fn power_cut_across_a_rotation(&mut self, i: usize) {
        let (s, t) = (self.records[i].clone(), self.records[i + 1].clone());
        assert!(self.records.iter().all(|r| r.segment == s.segment), "one segment");
        let mut data = std::fs::read(&s.file).unwrap();
        let size = data.len();
        let end = s.offset + RECORD_HEADER + s.len;
        let payload = data[t.offset + RECORD_HEADER..t.offset + RECORD_HEADER + t.len].to_vec();
        data[end - s.len.min(64)..].fill(0);
        std::fs::write(&s.file, data).unwrap();

        let next = t.segment + 1;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(b"EXWAL002");
        header[8..16].copy_from_slice(&next.to_le_bytes());
        let sum = crc32fast::hash(&header[..28]);
        header[28..].copy_from_slice(&sum.to_le_bytes());
        let synced = s.group - 1;
        let mut seg = header.to_vec();
        seg.extend_from_slice(b"EXRG");
        seg.extend_from_slice(&(t.len as u32).to_le_bytes());
        seg.extend_from_slice(&t.group.to_le_bytes());
        seg.extend_from_slice(&synced.to_le_bytes());
        seg.extend_from_slice(&crc(next, t.len as u32, t.group, synced, &payload).to_le_bytes());
        seg.extend_from_slice(&payload);
        seg.resize(size, 0);
        let dir = s.file.parent().unwrap().to_owned();
        let file = dir.join(format!("{next:020}.wal"));
        std::fs::write(&file, seg).unwrap();
        for (seq, f) in segments(&dir) {
            if seq > next {
                std::fs::remove_file(f).unwrap();
            }
        }
        self.records.truncate(i + 2);
        self.records[i + 1] = Record { segment: next, file, offset: HEADER, synced, ..t };
    }
}

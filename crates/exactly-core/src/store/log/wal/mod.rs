//! The write-ahead log: what makes a group commit durable with one write and one
//! `fdatasync`.
//!
//! Each group is appended here as one record (and synced by the sync thread), then
//! applied to the engine in memory by the engine thread; the engine is flushed and
//! fsynced only at a checkpoint (when a segment fills, and at close), after which older
//! segments are recycled. On open, [`recover`] reads the log back and the groups after the
//! checkpoint are replayed into the engine. Replay is idempotent: every logged operation
//! writes a whole value or deletes one.
//!
//! Segments are files `<seq>.wal`, zero-filled when first made and then recycled, because
//! rewriting blocks already on disk syncs faster than allocating new ones. The next
//! segment is made on its own thread while the current one fills, so a rotation only swaps
//! files. The bytes are in [`format`]. Every record carries its group's number (one more
//! for each group of the store) and the highest group known durable when it was written,
//! so recovery can tell a tail torn by a crash from damage to records that had been
//! acknowledged. A file `checkpoint` names the first segment and the last group not
//! covered by the engine's last checkpoint.

pub(crate) mod format;
pub(crate) mod recover;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use self::format::HEADER;
pub(super) use self::format::decode;
use self::recover::seg_path;

/// A record written to the log, to be synced.
pub(super) struct Appended {
    /// The segment it is in.
    pub(super) file: Arc<File>,
    /// Its path.
    pub(super) path: PathBuf,
    /// Where in the segment it starts (to invalidate it if its sync fails).
    pub(super) offset: u64,
    /// The previous segment filled up with this write.
    pub(super) rotated: bool,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    seq: u64,
    offset: u64,
    /// The last group written to it.
    last_group: Option<u64>,
}

pub(super) struct Wal {
    dir: PathBuf,
    segment_size: u64,
    current: Segment,
    /// Full segments whose records are not yet checkpointed (the next checkpoint, which
    /// the engine thread runs after applying them, covers them), with their last group.
    retired: Vec<(PathBuf, Option<u64>)>,
    /// The last group the latest checkpoint covers (or will, once finished).
    covered: u64,
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
    /// The last group it covers.
    group: u64,
    retired: Vec<PathBuf>,
    spare: Arc<Mutex<Vec<PathBuf>>>,
}

impl Covered {
    /// Everything in the covered segments is in the engine and fsynced: record that
    /// durably, then keep the segments for reuse.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        write_marker(&self.dir, self.marker, self.group)?;
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

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_marker(dir: &Path, segment: u64, group: u64) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&format::encode_marker(segment, group))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("checkpoint"))?;
    sync_dir(dir)
}

/// Makes a record unreadable (its sync failed, so it was never acknowledged): the next
/// open then ends the log before it. Best effort: a disk that fails writes too may keep
/// it, and then it is replayed whole, with the state it carried.
pub(super) fn invalidate(file: &File, offset: u64) -> io::Result<()> {
    file.write_all_at(&[0u8; format::RECORD_HEADER as usize], offset)
}

impl Wal {
    /// Starts writing the log in `dir` after a [`recover`](recover::recover)y whose
    /// groups are now in the engine, durably: makes the first segment, records that
    /// everything before it (groups up to `last_group`, the one before the first group to
    /// be written) is checkpointed, and keeps the old segments for reuse.
    pub(super) fn start(
        dir: &Path,
        segment_size: u64,
        recovered: &recover::Recovery,
        last_group: u64,
    ) -> io::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let current = Self::make_segment(dir, recovered.next_segment, segment_size, None)?;
        let retired = recovered.files.iter().map(|p| (p.clone(), None)).collect();
        let mut wal = Self {
            dir: dir.to_owned(),
            segment_size,
            current,
            retired,
            covered: last_group.max(recovered.last_group),
            spare: Arc::default(),
            next: None,
        };
        wal.cover().finish()?;
        wal.prepare_next();
        Ok(wal)
    }

    /// Starts making the segment after the current one on its own thread: a recycled file
    /// renamed, or (with none spare) a new one written with zeros, its header written, the
    /// file and the directory fsynced. The commit thread, which rotates segments, then only
    /// swaps files: writing and syncing a whole segment is milliseconds during which no
    /// group could be written (figures in docs/PERFORMANCE.md). Until the swap the file is
    /// a segment with no records, which replay reads as empty.
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
        self.retired.push((full.path, full.last_group));
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
        file.write_all_at(&format::segment_header(seq), 0)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Segment { file: Arc::new(file), path, seq, offset: HEADER, last_group: None })
    }

    /// A spare segment file, if a checkpoint has freed one.
    fn reuse(&self) -> Option<PathBuf> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Appends the record of group `group`, not yet synced (`synced`: the highest group
    /// known durable): sync the returned file before telling anyone it is durable. If the
    /// previous segment filled up, checkpoint the engine and [`finish`](Covered::finish)
    /// what [`Wal::cover`] returns.
    pub(super) fn write(&mut self, group: u64, synced: u64, payload: &[u8]) -> io::Result<Appended> {
        let need = format::RECORD_HEADER + payload.len() as u64;
        let mut rotated = false;
        if self.current.offset + need > self.segment_size && self.current.offset > HEADER {
            self.rotate(true)?;
            rotated = true;
        }
        let seg = &mut self.current;
        let record = format::record(seg.seq, group, synced, payload);
        seg.file.write_all_at(&record, seg.offset)?;
        let offset = seg.offset;
        seg.offset += need;
        seg.last_group = Some(group);
        Ok(Appended { file: seg.file.clone(), path: seg.path.clone(), offset, rotated })
    }

    /// Appends and syncs one record (tests).
    #[cfg(test)]
    fn append(&mut self, group: u64, payload: &[u8]) -> io::Result<(PathBuf, bool)> {
        let a = self.write(group, group.saturating_sub(1), payload)?;
        a.file.sync_data()?;
        Ok((a.path, a.rotated))
    }

    /// The full segments, for a checkpoint of everything logged so far (the engine thread
    /// applies it all before it checkpoints):
    /// once the engine is checkpointed, [`Covered::finish`] recycles them.
    pub(super) fn cover(&mut self) -> Covered {
        let retired = std::mem::take(&mut self.retired);
        if let Some(g) = retired.iter().filter_map(|(_, g)| *g).max() {
            self.covered = self.covered.max(g);
        }
        Covered {
            dir: self.dir.clone(),
            marker: self.current.seq,
            group: self.covered,
            retired: retired.into_iter().map(|(p, _)| p).collect(),
            spare: self.spare.clone(),
        }
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
mod tests;

//! Reading the log back at open: what to replay, what to cut, what to refuse.
//!
//! The rules (docs/STORE.md, "Recovery"):
//! - the log is read from the checkpoint on, group after group, each the next number;
//! - where that reading stops, every later record is looked for. None: the end of the log
//!   (a torn or zero-filled tail is cut). Some, and none of them was written after the
//!   missing group was known to be durable: a power cut tore the groups that were still
//!   being synced; they are cut too (none was acknowledged). Otherwise a record that had
//!   been made durable is missing or damaged: the open is refused, naming the file and
//!   the offset;
//! - a missing segment, a damaged segment header before records, a missing or damaged
//!   checkpoint, or a checkpoint ahead of the log are refused the same way.
//!
//! Nothing here writes: a refused open leaves the directory as it found it. In
//! [`Mode::Repair`] the damage is stepped over instead, keeping every record that
//! validates, and each step is reported as a [`Cut`].

use std::io;
use std::path::{Path, PathBuf};

use super::format::{self, HEADER, Marker, SegmentHeader};

/// How to treat damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse it (an ordinary open).
    Open,
    /// Step over it, keeping every valid record after it (`exactly store repair`).
    Repair,
}

/// Something cut from the log, or (in repair) stepped over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The file.
    pub file: PathBuf,
    /// The byte offset in it.
    pub offset: u64,
    /// What was cut, and why.
    pub what: String,
    /// Whether what was cut may have been acknowledged (only a repair cuts such data).
    pub acknowledged: bool,
}

/// Damage the open refuses.
#[derive(Debug)]
pub(crate) enum Refusal {
    Damaged { file: PathBuf, offset: u64, what: String },
    Io { file: PathBuf, source: io::Error },
}

/// What the log holds beyond the checkpoint.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Payloads to replay, oldest first.
    pub(crate) payloads: Vec<Vec<u8>>,
    /// The last group replayed or, with none, the checkpoint's (0 for a new log).
    pub(crate) last_group: u64,
    /// A number above every segment file found.
    pub(crate) next_segment: u64,
    /// Every segment file found, to recycle once the replay is checkpointed.
    pub(crate) files: Vec<PathBuf>,
    /// What was cut (a torn tail) or, in repair, stepped over.
    pub(crate) cuts: Vec<Cut>,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    data: Vec<u8>,
}

pub(crate) fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn io_refusal(file: &Path) -> impl Fn(io::Error) -> Refusal + '_ {
    move |source| Refusal::Io { file: file.to_owned(), source }
}

/// The segment files in `dir`, by number.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Refusal> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_refusal(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_refusal(dir))?.path();
        let seq = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wal"));
        if let Some(seq) = seq.and_then(|n| n.parse::<u64>().ok()) {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

fn read_marker(dir: &Path) -> Result<Option<(Marker, PathBuf)>, Refusal> {
    let path = dir.join("checkpoint");
    match std::fs::read(&path) {
        Ok(b) => match format::decode_marker(&b) {
            Some(m) => Ok(Some((m, path))),
            None => Err(Refusal::Damaged { file: path, offset: 0, what: "the checkpoint file is damaged".into() }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_refusal(&path)(e)),
    }
}

/// Reads the log in `dir`. `window` is the most groups the writer leaves unsynced at
/// once: more records than that after a torn one cannot all be unacknowledged.
pub(crate) fn recover(dir: &Path, mode: Mode, window: u64) -> Result<Recovery, Refusal> {
    let files = list(dir)?;
    let mut out = Recovery {
        next_segment: files.last().map_or(1, |(s, _)| s + 1),
        files: files.iter().map(|(_, p)| p.clone()).collect(),
        ..Recovery::default()
    };
    let mut r = Reader { mode, cuts: Vec::new() };
    let marker = match read_marker(dir) {
        Ok(m) => m,
        Err(Refusal::Damaged { file, offset, what }) if mode == Mode::Repair => {
            r.cut(file, offset, what, true);
            None
        }
        Err(e) => return Err(e),
    };
    let (marker, start) = match (marker, files.first()) {
        (None, None) => return Ok(out),
        (Some((m, _)), _) if m.group.is_none() => {
            out.payloads = replay_v1(&files, m.segment)?;
            return Ok(out);
        }
        (Some((m, path)), _) => ((m.group.unwrap_or(0), path), m.segment),
        // The first open made a segment and stopped before it wrote the checkpoint:
        // nothing was ever written to the log.
        (None, Some(_)) if no_records(&files)? => return Ok(out),
        (None, Some(_)) => {
            r.damage(dir.join("checkpoint"), 0, "the checkpoint file is missing, and the log is not empty".into())?;
            start_without_marker(&files)?
        }
    };
    let (checkpointed, marker_path) = marker;
    out.last_group = checkpointed;
    r.check_older(&files, start, checkpointed, &marker_path)?;
    let range = r.load_range(dir, &files, start)?;
    r.replay(&range, checkpointed, window, &mut out)?;
    out.cuts = r.cuts;
    Ok(out)
}

/// Whether no segment holds a valid record.
fn no_records(files: &[(u64, PathBuf)]) -> Result<bool, Refusal> {
    for (seq, path) in files {
        let data = std::fs::read(path).map_err(io_refusal(path))?;
        if records(&data, *seq, HEADER as usize).next().is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A log of the first format: its records up to the first invalid one (the rules of that
/// format; the first checkpoint then moves the store to this one).
fn replay_v1(files: &[(u64, PathBuf)], from: u64) -> Result<Vec<Vec<u8>>, Refusal> {
    let mut payloads = Vec::new();
    for (seq, path) in files.iter().filter(|(s, _)| *s >= from) {
        let data = std::fs::read(path).map_err(io_refusal(path))?;
        if format::read_segment_header(&data) == SegmentHeader::V1(*seq) {
            payloads.extend(format::read_v1_records(&data, *seq));
        }
    }
    Ok(payloads)
}

/// Without a checkpoint (repair only): the groups from the start of the newest
/// contiguous run of segments, whose groups the engine may lack (older ones were recycled
/// after a checkpoint, so the engine holds them).
fn start_without_marker(files: &[(u64, PathBuf)]) -> Result<((u64, PathBuf), u64), Refusal> {
    let mut first = files.last().map_or(0, |(s, _)| *s);
    for pair in files.windows(2).rev() {
        if pair[1].0 != pair[0].0 + 1 {
            break;
        }
        first = pair[0].0;
    }
    let (_, path) = files.iter().find(|(s, _)| *s == first).cloned().unwrap_or_default();
    let data = std::fs::read(&path).map_err(io_refusal(&path))?;
    let group = records(&data, first, HEADER as usize).next().map_or(0, |(_, r)| r.group.saturating_sub(1));
    Ok(((group, path), first))
}

struct Reader {
    mode: Mode,
    cuts: Vec<Cut>,
}

/// A valid record found while looking past where the reading stopped.
struct Found {
    segment: usize,
    offset: usize,
    group: u64,
    synced: u64,
}

impl Reader {
    fn cut(&mut self, file: PathBuf, offset: u64, what: String, acknowledged: bool) {
        self.cuts.push(Cut { file, offset, what, acknowledged });
    }

    /// Refuses damage, or in repair notes it and goes on.
    fn damage(&mut self, file: PathBuf, offset: u64, what: String) -> Result<(), Refusal> {
        match self.mode {
            Mode::Open => Err(Refusal::Damaged { file, offset, what }),
            Mode::Repair => {
                self.cut(file, offset, what, true);
                Ok(())
            }
        }
    }

    /// Segments older than the checkpoint hold only groups it covers; a newer group in
    /// one means the checkpoint is ahead of the log. Only the one just before the
    /// checkpoint's segment is read: a checkpoint further ahead names a segment that does
    /// not exist (only the next one is ever made in advance), which `load_range` refuses.
    fn check_older(
        &mut self,
        files: &[(u64, PathBuf)],
        start: u64,
        checkpointed: u64,
        marker: &Path,
    ) -> Result<(), Refusal> {
        for (seq, path) in files.iter().filter(|(s, _)| *s + 1 == start) {
            let data = std::fs::read(path).map_err(io_refusal(path))?;
            let newer = records(&data, *seq, HEADER as usize).find(|(_, r)| r.group > checkpointed);
            if let Some((offset, group)) = newer.map(|(o, r)| (o, r.group)) {
                let what = format!(
                    "the checkpoint ({}) says everything up to group {checkpointed} is in the engine and the log \
                     goes on at segment {start}, but this older segment holds group {group}: the checkpoint is \
                     ahead of the log",
                    marker.display()
                );
                self.damage(path.clone(), offset as u64, what)?;
            }
        }
        Ok(())
    }

    /// Reads the segments from `start` on, checking that none is missing.
    fn load_range(&mut self, dir: &Path, files: &[(u64, PathBuf)], start: u64) -> Result<Vec<Segment>, Refusal> {
        let range: Vec<&(u64, PathBuf)> = files.iter().filter(|(s, _)| *s >= start).collect();
        let last = range.last().map(|(s, _)| *s);
        if range.first().map(|(s, _)| *s) != Some(start) {
            let what = match last {
                Some(last) => format!(
                    "segment {start}, where the checkpoint says the log goes on, is missing (the log has segments up to {last})"
                ),
                None => format!(
                    "the checkpoint says the log goes on at segment {start}, but the log has no segment from there on: the checkpoint is ahead of the log"
                ),
            };
            self.damage(seg_path(dir, start), 0, what)?;
        }
        let mut out = Vec::with_capacity(range.len());
        for (seq, path) in range {
            if let Some(prev) = out.last().map(|s: &Segment| s.seq)
                && *seq != prev + 1
            {
                let what = format!("segment {} is missing between segments {prev} and {seq}", prev + 1);
                self.damage(seg_path(dir, prev + 1), 0, what)?;
            }
            let data = std::fs::read(path).map_err(io_refusal(path))?;
            if format::read_segment_header(&data) != SegmentHeader::Current(*seq)
                && records(&data, *seq, HEADER as usize).next().is_some()
            {
                self.damage(path.clone(), 0, "the segment's header is damaged, and records follow it".into())?;
            }
            out.push(Segment { seq: *seq, path: path.clone(), data });
        }
        Ok(out)
    }

    /// Reads group after group; at the first that is not the next, decides whether the
    /// rest is a torn tail (cut) or damage (refused; stepped over in repair).
    fn replay(&mut self, range: &[Segment], checkpointed: u64, window: u64, out: &mut Recovery) -> Result<(), Refusal> {
        let mut expected = checkpointed + 1;
        // Where the records read so far end: the next record belongs there.
        let mut end = (0usize, HEADER as usize);
        let mut at = end;
        loop {
            let next = range.get(at.0).and_then(|s| format::read_record(&s.data, at.1, s.seq));
            match next {
                Some(rec) if rec.group == expected => {
                    out.payloads.push(rec.payload.to_vec());
                    out.last_group = rec.group;
                    expected += 1;
                    end = (at.0, rec.end);
                    at = end;
                    continue;
                }
                // This segment's records end here: the next group may start the next one.
                None if at.0 + 1 < range.len() => {
                    at = (at.0 + 1, HEADER as usize);
                    continue;
                }
                _ => {}
            }
            let mut later: Vec<Found> = found_after(range, end).collect();
            // Groups only grow along the log: an older one here is not where it belongs.
            if let Some(f) = later.iter().find(|f| f.group < expected) {
                let what = if f.group <= checkpointed {
                    format!(
                        "group {} is in the log after the checkpoint, which says it covers up to group \
                         {checkpointed}: the checkpoint is ahead of the log",
                        f.group
                    )
                } else {
                    format!("group {} appears again after group {}", f.group, expected - 1)
                };
                self.damage(range[f.segment].path.clone(), f.offset as u64, what)?;
                later.retain(|f| f.group >= expected);
            }
            let Some(first) = later.first() else {
                self.torn_tail(range, end, expected);
                return Ok(());
            };
            let acknowledged = later.iter().find(|f| f.synced >= expected);
            let beyond = later.iter().find(|f| f.group >= expected + window);
            let (file, offset) = position(range, end);
            match acknowledged.or(beyond) {
                None => {
                    let groups = later.len();
                    self.cut(
                        file,
                        offset,
                        format!(
                            "a torn write: group {expected} is incomplete, and the {groups} group(s) written after it \
                             while it was being synced are cut with it; none had been acknowledged"
                        ),
                        false,
                    );
                    return Ok(());
                }
                Some(f) => {
                    let (later_file, later_offset) = (range[f.segment].path.display(), f.offset);
                    let what = format!(
                        "group {expected} is missing or damaged here, but {later_file} at byte {later_offset} holds \
                         group {}, written after group {} was durable: acknowledged records would be lost",
                        f.group, f.synced
                    );
                    self.damage(file, offset, what)?;
                    // Repair: go on from the first record found after the damage.
                    expected = first.group;
                    at = (first.segment, first.offset);
                }
            }
        }
    }

    /// Notes a record torn at the end of the log.
    fn torn_tail(&mut self, range: &[Segment], end: (usize, usize), expected: u64) {
        let Some(seg) = range.get(end.0) else { return };
        if format::claimed_group(&seg.data, end.1) == Some(expected) {
            let (file, offset) = position(range, end);
            self.cut(file, offset, format!("a torn record of group {expected}, never acknowledged"), false);
        }
    }
}

fn position(range: &[Segment], at: (usize, usize)) -> (PathBuf, u64) {
    range.get(at.0).map_or_else(Default::default, |s| (s.path.clone(), at.1 as u64))
}

/// The valid records of `data` (segment `seq`) at `from` or after, wherever they start.
fn records(data: &[u8], seq: u64, from: usize) -> impl Iterator<Item = (usize, format::Record<'_>)> + '_ {
    let finder = memchr::memmem::Finder::new(format::RECORD_MAGIC);
    let mut at = from;
    std::iter::from_fn(move || {
        while let Some(found) = data.get(at..).and_then(|rest| finder.find(rest)) {
            let here = at + found;
            at = here + 1;
            if let Some(r) = format::read_record(data, here, seq) {
                at = r.end;
                return Some((here, r));
            }
        }
        None
    })
}

/// Every valid record at `end` or after, in log order.
fn found_after(range: &[Segment], end: (usize, usize)) -> impl Iterator<Item = Found> + '_ {
    range.iter().enumerate().skip(end.0).flat_map(move |(i, s)| {
        let from = if i == end.0 { end.1 } else { HEADER as usize };
        records(&s.data, s.seq, from).map(move |(offset, r)| Found {
            segment: i,
            offset,
            group: r.group,
            synced: r.synced,
        })
    })
}

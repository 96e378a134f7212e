#![allow(clippy::unwrap_used)]

use bytes::Bytes;

use super::format::{self, RECORD_HEADER, encode};
use super::recover::{Mode, Recovery, Refusal, recover};
use super::*;
use crate::store::log::Op;

fn op(k: &str, v: Option<&str>) -> Op {
    (k.as_bytes().to_vec(), v.map(|v| Bytes::copy_from_slice(v.as_bytes())))
}

/// The most groups the writer leaves unsynced (the committer's `MAX_IN_FLIGHT`).
const WINDOW: u64 = 2;

fn recovered(dir: &Path) -> Recovery {
    recover(dir, Mode::Open, WINDOW).unwrap()
}

/// Recovers and starts writing, as an open does.
fn open(dir: &Path, size: u64) -> (Wal, Vec<Vec<u8>>) {
    let r = recovered(dir);
    (Wal::start(dir, size, &r, r.last_group).unwrap(), r.payloads)
}

fn refused(dir: &Path) -> (PathBuf, u64, String) {
    match recover(dir, Mode::Open, WINDOW) {
        Err(Refusal::Damaged { file, offset, what }) => (file, offset, what),
        Err(Refusal::Io { source, .. }) => panic!("an I/O error, not damage: {source}"),
        Ok(r) => panic!("opened, replaying {} groups, cuts {:?}", r.payloads.len(), r.cuts),
    }
}

fn flip(path: &Path, at: u64) {
    let mut data = std::fs::read(path).unwrap();
    data[at as usize] ^= 0x04;
    std::fs::write(path, data).unwrap();
}

fn key_of(payload: &[u8]) -> String {
    String::from_utf8(format::decode(payload).unwrap()[0].0.clone()).unwrap()
}

/// Writes groups `1..=n` of one op each, every one synced before the next (so each
/// record says the one before it is durable). Returns where each record starts.
fn write_synced(wal: &mut Wal, first: u64, n: u64, value: &str) -> Vec<(PathBuf, u64)> {
    (first..first + n)
        .map(|g| {
            let a = wal.write(g, g - 1, &encode(&[op(&format!("k{g}"), Some(value))])).unwrap();
            a.file.sync_data().unwrap();
            (a.path, a.offset)
        })
        .collect()
}

#[test]
fn records_survive_reopen_and_a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, replay) = open(dir.path(), 4096);
    assert!(replay.is_empty());
    let at = write_synced(&mut wal, 1, 2, "v");
    drop(wal);
    // Tear the second record: corrupt its last byte.
    let (path, offset) = &at[1];
    let len = RECORD_HEADER + format::encoded_len(&[op("k2", Some("v"))]);
    flip(path, offset + len - 1);
    let r = recovered(dir.path());
    assert_eq!(r.payloads.iter().map(|p| key_of(p)).collect::<Vec<_>>(), ["k1"]);
    assert_eq!(r.last_group, 1);
    assert_eq!(r.cuts.len(), 1, "the torn record is reported: {:?}", r.cuts);
    assert_eq!((&r.cuts[0].file, r.cuts[0].offset, r.cuts[0].acknowledged), (path, *offset, false));
}

#[test]
fn a_flipped_bit_before_records_that_were_written_after_it_was_durable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 1 << 20);
    let at = write_synced(&mut wal, 1, 50, "v");
    drop(wal);
    let (path, offset) = &at[20];
    flip(path, offset + RECORD_HEADER + 3);
    let (file, where_, what) = refused(dir.path());
    assert_eq!((&file, where_), (path, *offset), "{what}");
    assert!(what.contains("group 21"), "{what}");
    assert!(what.contains("acknowledged records would be lost"), "{what}");

    // A repair keeps every record that validates and reports the one it could not read.
    let r = recover(dir.path(), Mode::Repair, WINDOW).unwrap();
    let keys: Vec<String> = r.payloads.iter().map(|p| key_of(p)).collect();
    assert_eq!(keys.len(), 49);
    assert!(!keys.contains(&"k21".to_owned()) && keys.contains(&"k22".to_owned()), "{keys:?}");
    assert_eq!(r.cuts.len(), 1);
    assert!(r.cuts[0].acknowledged);
}

#[test]
fn a_torn_group_and_the_one_written_while_it_synced_are_both_cut_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 4096);
    write_synced(&mut wal, 1, 3, "v");
    // Group 4 fills the segment; group 5, written before 4 was synced (it says only 3 is
    // durable), starts the next one. The crash tears 4; 5 reached the disk.
    let big = "x".repeat(3000);
    let four = wal.write(4, 3, &encode(&[op("k4", Some(&big))])).unwrap();
    let five = wal.write(5, 3, &encode(&[op("k5", Some(&big))])).unwrap();
    assert!(five.rotated && five.path != four.path, "5 is in the next segment");
    five.file.sync_data().unwrap();
    four.file.sync_data().unwrap();
    drop(wal);
    flip(&four.path, four.offset + RECORD_HEADER + 10);
    let r = recovered(dir.path());
    let keys: Vec<String> = r.payloads.iter().map(|p| key_of(p)).collect();
    assert_eq!(keys, ["k1", "k2", "k3"], "group 5 must not be applied without 4");
    assert_eq!(r.cuts.len(), 1, "{:?}", r.cuts);
    assert!(!r.cuts[0].acknowledged);
    assert!(r.cuts[0].what.contains("torn write"), "{}", r.cuts[0].what);

    // Had 5 been written after 4 was durable, 4 was acknowledged: refused.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 4096);
    write_synced(&mut wal, 1, 3, "v");
    let four = wal.write(4, 3, &encode(&[op("k4", Some(&big))])).unwrap();
    let five = wal.write(5, 4, &encode(&[op("k5", Some(&big))])).unwrap();
    five.file.sync_data().unwrap();
    four.file.sync_data().unwrap();
    drop(wal);
    flip(&four.path, four.offset + RECORD_HEADER + 10);
    let (file, offset, _) = refused(dir.path());
    assert_eq!((file, offset), (four.path, four.offset));
}

#[test]
fn a_damaged_segment_header_before_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 1 << 20);
    let at = write_synced(&mut wal, 1, 5, "v");
    drop(wal);
    flip(&at[0].0, 9);
    let (file, offset, what) = refused(dir.path());
    assert_eq!((&file, offset), (&at[0].0, 0));
    assert!(what.contains("header"), "{what}");
}

#[test]
fn a_missing_segment_and_a_checkpoint_ahead_of_the_log_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 4096);
    let big = "x".repeat(1500);
    let mut paths = Vec::new();
    for g in 1..=8 {
        let a = wal.write(g, g - 1, &encode(&[op(&format!("k{g}"), Some(&big))])).unwrap();
        a.file.sync_data().unwrap();
        if !paths.contains(&a.path) {
            paths.push(a.path);
        }
    }
    drop(wal);
    assert!(paths.len() >= 3, "{paths:?}");
    let saved = std::fs::read(&paths[1]).unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    let (file, _, what) = refused(dir.path());
    assert_eq!(file, paths[1], "{what}");
    assert!(what.contains("missing"), "{what}");
    std::fs::write(&paths[1], saved).unwrap();
    assert_eq!(recovered(dir.path()).payloads.len(), 8);

    // The checkpoint moved past the first segment, whose records the engine never got.
    let marker = recover::list(dir.path()).unwrap().iter().position(|(_, p)| *p == paths[0]).unwrap();
    let first = recover::list(dir.path()).unwrap()[marker].0;
    write_marker(dir.path(), first + 1, 0).unwrap();
    let (file, _, what) = refused(dir.path());
    assert_eq!(file, paths[0], "{what}");
    assert!(what.contains("ahead of the log"), "{what}");
    // A marker that names a segment beyond the log.
    write_marker(dir.path(), first + 40, 0).unwrap();
    assert!(refused(dir.path()).2.contains("ahead of the log"));
    // A marker that claims groups the log still holds.
    write_marker(dir.path(), first, 5).unwrap();
    assert!(refused(dir.path()).2.contains("ahead of the log"));
    // A damaged marker, and a missing one.
    std::fs::write(dir.path().join("checkpoint"), b"garbage").unwrap();
    assert!(refused(dir.path()).2.contains("checkpoint file is damaged"));
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    assert!(refused(dir.path()).2.contains("checkpoint file is missing"));
}

/// Whether `seq`'s file is a whole segment whose header names it.
fn ready(dir: &Path, seq: u64, size: u64) -> bool {
    std::fs::read(seg_path(dir, seq))
        .is_ok_and(|b| b.len() as u64 == size && format::read_segment_header(&b) == format::SegmentHeader::Current(seq))
}

#[test]
fn the_next_segment_is_made_before_the_current_one_fills() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 4096);
    let first = wal.current.seq;
    // Prepared on its own thread: wait for it as a rotation would, then put it back.
    let prepared = wal.next.take().unwrap().join().unwrap().unwrap();
    assert_eq!(prepared.seq, first + 1);
    assert!(ready(dir.path(), first + 1, 4096), "made before any rotation");
    wal.next = Some(std::thread::spawn(move || Ok(prepared)));
    let a = encode(&[op("a", Some(&"x".repeat(3000)))]);
    assert!(!wal.append(1, &a).unwrap().1);
    let (_, rotated) = wal.append(2, &a).unwrap();
    assert!(rotated);
    assert_eq!(wal.current.seq, first + 1);
    // The rotation started on the one after.
    let after = wal.next.take().unwrap().join().unwrap().unwrap();
    assert_eq!(after.seq, first + 2);
    assert!(ready(dir.path(), first + 2, 4096));
    wal.next = Some(std::thread::spawn(move || Ok(after)));
    // A prepared segment holds no records: reopening replays both records, nothing else.
    drop(wal);
    let (wal, replay) = open(dir.path(), 4096);
    assert_eq!(replay, vec![a.clone(), a]);
    assert_eq!(wal.current.seq, first + 3, "after every file found, the prepared one included");
}

#[test]
fn a_flush_prepares_the_next_segment_and_the_close_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 4096);
    let first = wal.current.seq;
    let a = encode(&[op("a", Some("x"))]);
    wal.append(1, &a).unwrap();
    wal.rotate_for_checkpoint(false).unwrap();
    assert_eq!(wal.current.seq, first + 1);
    wal.next.take().unwrap().join().unwrap().unwrap();
    assert!(ready(dir.path(), first + 2, 4096), "a flush goes on writing: the next one is made");
    wal.next = None;
    wal.append(2, &a).unwrap();
    wal.rotate_for_checkpoint(true).unwrap();
    assert_eq!(wal.current.seq, first + 2);
    assert!(wal.next.is_none(), "nothing is written after the close");
    assert!(!seg_path(dir.path(), first + 3).exists());
    drop(wal);
    let (_, replay) = open(dir.path(), 4096);
    assert_eq!(replay, vec![a.clone(), a]);
}

#[test]
fn a_failed_preparation_is_made_good_at_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 4096);
    let first = wal.current.seq;
    wal.next.take().unwrap().join().unwrap().unwrap();
    wal.next = Some(std::thread::spawn(|| Err(io::Error::other("disk full"))));
    let a = encode(&[op("a", Some(&"x".repeat(3000)))]);
    wal.append(1, &a).unwrap();
    assert!(wal.append(2, &a).unwrap().1);
    assert_eq!(wal.current.seq, first + 1);
    assert!(ready(dir.path(), first + 1, 4096));
    drop(wal);
    let (_, replay) = open(dir.path(), 4096);
    assert_eq!(replay, vec![a.clone(), a]);
}

#[test]
fn rotation_recycles_segments_and_stale_records_never_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 256);
    let mut rotations = 0;
    for i in 1..=40 {
        let (_, rotated) = wal.append(i, &encode(&[op(&format!("k{i}"), Some("0123456789"))])).unwrap();
        if rotated {
            rotations += 1;
            wal.cover().finish().unwrap();
        }
    }
    assert!(rotations >= 4, "{rotations} rotations");
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(files <= 5, "segments are recycled, not piled up: {files}");
    drop(wal);
    let r = recovered(dir.path());
    assert!(r.cuts.is_empty(), "stale records are not torn ones: {:?}", r.cuts);
    // Only the current segment's records come back, in order: nothing checkpointed,
    // nothing stale from a recycled file.
    let keys: Vec<u64> = r.payloads.iter().map(|p| key_of(p)[1..].parse().unwrap()).collect();
    assert!(!keys.is_empty());
    assert_eq!(*keys.last().unwrap(), 40);
    assert!(keys.windows(2).all(|w| w[1] == w[0] + 1), "{keys:?}");
    assert!(keys[0] > 30, "{keys:?}");
}

#[test]
fn an_invalidated_record_ends_the_log_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 1 << 20);
    write_synced(&mut wal, 1, 3, "v");
    let four = wal.write(4, 3, &encode(&[op("k4", Some("v"))])).unwrap();
    let five = wal.write(5, 3, &encode(&[op("k5", Some("v"))])).unwrap();
    invalidate(&four.file, four.offset).unwrap();
    invalidate(&five.file, five.offset).unwrap();
    drop(wal);
    let r = recovered(dir.path());
    assert_eq!(r.payloads.len(), 3);
    assert!(r.cuts.is_empty(), "{:?}", r.cuts);
}

#[test]
fn a_log_of_the_first_format_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 3u64;
    let mut data = b"EXWAL001".to_vec();
    data.extend_from_slice(&seg.to_le_bytes());
    for k in ["a", "b"] {
        let payload = encode(&[op(k, Some("1"))]);
        let mut h = crc32fast::Hasher::new();
        h.update(&seg.to_le_bytes());
        h.update(&(payload.len() as u32).to_le_bytes());
        h.update(&payload);
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&h.finalize().to_le_bytes());
        data.extend_from_slice(&payload);
    }
    data.resize(4096, 0);
    std::fs::write(seg_path(dir.path(), seg), data).unwrap();
    std::fs::write(dir.path().join("checkpoint"), seg.to_le_bytes()).unwrap();
    let (wal, replay) = open(dir.path(), 4096);
    assert_eq!(replay.iter().map(|p| key_of(p)).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(wal.current.seq, seg + 1);
    drop(wal);
    assert!(recovered(dir.path()).payloads.is_empty(), "checkpointed in the new format");
}

#[test]
fn a_first_open_cut_off_before_its_checkpoint_file_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    // The first open made its segment (and the next) and died before the checkpoint file.
    let (wal, _) = open(dir.path(), 4096);
    drop(wal);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let r = recovered(dir.path());
    assert!(r.payloads.is_empty() && r.cuts.is_empty());
    let (mut wal, _) = open(dir.path(), 4096);
    wal.append(1, &encode(&[op("a", Some("1"))])).unwrap();
    drop(wal);
    assert_eq!(recovered(dir.path()).payloads.len(), 1);
}

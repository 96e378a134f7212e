//! The on-disk stores under the faults a disk produces, on real files: a flipped bit in
//! the write-ahead log, a power cut that tears a group, an fdatasync that fails (strace
//! fault injection), a store directory deleted under a running consumer or left
//! incomplete. A consumer process (`store_child`) writes acknowledged work and dies
//! without closing the store; the test edits the files as the fault would and reopens.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/wal.rs"]
mod wal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use exactly::store::RecordState;
use exactly::{DedupStore, Error, Processor, StoreKey};
use exactly_tests::{LEDGER, state_i64};

fn child(engine: &str, dir: &Path, segment_size: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_store_child"));
    c.args(["--engine", engine, "--dir", dir.to_str().unwrap(), "--segment-size", &segment_size.to_string()]);
    c
}

/// Credits `keys` keys and dies without closing the store; returns the acknowledged keys.
fn credit_and_crash(engine: &str, dir: &Path, keys: u64, accounts: u64, concurrency: u64, segment: u64) -> Vec<String> {
    let status = child(engine, dir, segment)
        .args(["credit", "--keys", &keys.to_string(), "--accounts", &accounts.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--abort"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborts after its last acknowledgement");
    let acked: Vec<String> =
        std::fs::read_to_string(dir.join("acked.log")).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(acked.len() as u64, keys, "every key was acknowledged before the crash");
    acked
}

fn open(engine: &str, path: &Path) -> exactly::Result<Arc<dyn DedupStore>> {
    exactly_tests::open_store(engine, path)
}

fn is_done(store: &dyn DedupStore, key: &str) -> bool {
    let record = exactly_tests::ready(store.inspect(&StoreKey::new(LEDGER, key))).unwrap();
    matches!(record.map(|r| r.state), Some(RecordState::Done { .. }))
}

/// Every file under `dir` with its length and contents' hash: what an open must not change.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u32)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let data = std::fs::read(&p).unwrap();
                out.insert(p, (data.len() as u64, crc32fast::hash(&data)));
            }
        }
    }
    out
}

fn engines() -> [&'static str; 3] {
    ["sled", "redb", "fjall"]
}

#[test]
fn a_flipped_bit_in_the_log_refuses_the_open_and_a_repair_keeps_the_rest() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let acked = credit_and_crash(engine, dir.path(), 3_000, 10, 16, 16 << 20);
        let path = dir.path().join("store");
        let log = wal::Log::read(&path.join("wal"));
        let (file, offset) = log.flip_in_the_middle();
        let before = snapshot(&path);
        let err = match open(engine, &path) {
            Err(e) => e,
            Ok(_) => panic!("{engine}: a store whose log lost an acknowledged record opened"),
        };
        let text = err.to_string();
        assert!(matches!(err, Error::StoreDamaged { .. }), "{engine}: {text}");
        assert!(text.contains(&file.display().to_string()) && text.contains("repair"), "{engine}: {text}");
        assert_eq!(snapshot(&path), before, "{engine}: a refused open changed files");

        // The CLI refuses it too, then repairs it (finding the engine by itself).
        let p = path.to_str().unwrap();
        let refused = Command::new(common::cli_path()).args(["store", "--path", p, "stats"]).output().unwrap();
        assert!(!refused.status.success(), "{engine}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("is damaged"), "{engine}: {refused:?}");
        let report = common::cli(&["store", "--path", p, "repair"]);
        let cut = format!("cut {} at byte {offset}", file.display());
        assert!(report.contains(&cut) && report.contains("acknowledged work in it is lost"), "{engine}: {report}");
        let store = open(engine, &path).unwrap();
        let lost: Vec<&String> = acked.iter().filter(|k| !is_done(&*store, k)).collect();
        // At most one group (the completions of one fsync) is lost, nothing else; none if
        // the engine's own files had it (a process crash leaves the page cache written).
        assert!(lost.len() <= 64, "{engine}: lost {} keys: {lost:?}", lost.len());
        drop(store);
        let store = open(engine, &path).unwrap();
        assert_eq!(acked.iter().filter(|k| !is_done(&*store, k)).count(), lost.len(), "{engine}: after a reopen");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_that_tears_a_group_drops_the_group_written_while_it_was_synced() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        // One account, one credit a group: every group reads the balance the one before
        // it wrote.
        let keys = 60;
        credit_and_crash(engine, dir.path(), keys, 1, 1, 16 << 20);
        let path = dir.path().join("store");
        let mut log = wal::Log::read(&path.join("wal"));
        assert_eq!(log.records.len() as u64, keys, "{engine}: a group for each credit");
        // Group S ends a segment and S+1 starts the next. The power cut came while S was
        // being synced: S+1 had been written meanwhile (it says only S-1 was durable) and
        // reached the disk, S was torn, and nothing after S+1 was written.
        log.power_cut_across_a_rotation(40);
        let store = open(engine, &path).unwrap();
        let done: Vec<u64> = (0..keys).filter(|i| is_done(&*store, &format!("k{i}"))).collect();
        assert_eq!(done, (0..done.len() as u64).collect::<Vec<_>>(), "{engine}: a prefix of the credits survives");
        assert!(done.len() < keys as usize - 1, "{engine}: the torn group and the next one are gone");
        assert_eq!(state_i64(&*store, "account/0"), done.len() as i64, "{engine}: the balance holds what is done");

        // Every message is delivered again: each credit lands once.
        let effects = Arc::new(std::sync::Mutex::new(tempfile::tempfile().unwrap()));
        let p = Processor::builder(LEDGER, exactly_tests::ledger(effects)).shared_store(store.clone()).build().unwrap();
        for i in 0..keys {
            let c = exactly_tests::Credit { id: format!("k{i}"), account: 0, cents: 1 };
            let m = exactly::Message::builder(serde_json::to_vec(&c).unwrap())
                .header("idempotency-key", c.id.as_str())
                .build();
            assert_eq!(p.process(m).await.unwrap().disposition, exactly::Disposition::Ack);
        }
        assert_eq!(state_i64(&*store, "account/0"), keys as i64, "{engine}: a credit was applied twice or lost");
        for i in 0..keys {
            assert_eq!(state_i64(&*store, &format!("applied/k{i}")), 1, "{engine}: k{i}");
        }
    }
}

#[test]
fn after_a_failed_fdatasync_no_copy_is_acknowledged_and_a_reopen_does_not_know_the_key() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("store/wal/00000000000000000001.wal");
        // The log's first fdatasync (key `warm`) succeeds, every later one fails with EIO.
        let out = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-P", segment.to_str().unwrap()])
            .args(["-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO:when=2+"])
            .arg(env!("CARGO_BIN_EXE_store_child"))
            .args(["--engine", engine, "--dir", dir.path().to_str().unwrap(), "copies"])
            .stderr(Stdio::null())
            .output()
            .expect("strace is installed (Debian's strace)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first(), Some(&"warm Handled"), "{engine}: {stdout}");
        let copies: Vec<&&str> = lines.iter().filter(|l| l.starts_with("copy ") || l.starts_with("again ")).collect();
        assert_eq!(copies.len(), 3, "{engine}: {stdout}");
        for l in copies {
            assert!(
                l.contains("error") && l.contains("fsync failed"),
                "{engine}: acknowledged without a durable record: {l}"
            );
        }
        let store = open(engine, &dir.path().join("store")).unwrap();
        assert!(is_done(&*store, "warm"), "{engine}");
        let record = exactly_tests::ready(store.inspect(&StoreKey::new(LEDGER, "k"))).unwrap();
        assert!(record.is_none(), "{engine}: the failed record came back");
        assert_eq!(state_i64(&*store, "account/1"), 0, "{engine}: its state came back");
    }
}

/// The store directory is fsynced after the files and directories a new store makes in
/// it (`wal/`, redb's `data.redb`, the identity file), so that their names survive a
/// power cut as well as their contents: seen in the system calls of a process opening a
/// new store, under strace.
#[test]
fn a_new_store_fsyncs_its_directory_after_making_entries_in_it() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let status = Command::new("strace")
            .args(["-f", "-qq", "-y", "-o", trace.to_str().unwrap()])
            .args(["-e", "trace=fsync,fdatasync,mkdir,mkdirat,openat,rename,renameat,renameat2"])
            .arg(env!("CARGO_BIN_EXE_store_child"))
            .args(["--engine", engine, "--dir", dir.path().to_str().unwrap(), "credit", "--keys", "0"])
            .stderr(Stdio::null())
            .status()
            .expect("strace is installed (Debian's strace)");
        assert!(status.success(), "{engine}");
        let store = dir.path().join("store").display().to_string();
        let calls: Vec<String> = std::fs::read_to_string(&trace).unwrap().lines().map(str::to_owned).collect();
        // `fsync(7</path/store>) = 0`, or `fsync(7</path/store> <unfinished ...>` when
        // another thread's call is traced meanwhile.
        let store_fsync = format!("<{store}>");
        // The first write into the log: the creation of its first segment.
        let first_segment = calls
            .iter()
            .position(|c| c.contains("openat(") && c.contains("00000000000000000001.wal") && c.contains("O_CREAT"))
            .unwrap_or_else(|| panic!("{engine}: no log segment was made"));
        let synced_after = |what: &str, made: &dyn Fn(&str) -> bool, before: usize| {
            let at = calls.iter().position(|c| made(c)).unwrap_or_else(|| panic!("{engine}: {what} was not made"));
            assert!(
                calls[at..before].iter().any(|c| c.contains("fsync(") && c.contains(&store_fsync)),
                "{engine}: the store directory is not fsynced after {what} is made in it"
            );
        };
        let wal = format!("\"{store}/wal\"");
        synced_after("wal/", &|c: &str| c.contains("mkdir") && c.contains(&wal), first_segment);
        synced_after(
            "the identity file",
            &|c: &str| c.contains("rename") && c.contains("exactly-store\""),
            calls.len(),
        );
        if engine == "redb" {
            let redb = |c: &str| c.contains("openat(") && c.contains("data.redb") && c.contains("O_CREAT");
            synced_after("data.redb", &redb, first_segment);
        }
    }
}

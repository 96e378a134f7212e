//! The write-ahead log in front of an engine that falls behind: reads see what is logged
//! before the engine has it, and a checkpoint (which lets the log forget its segments)
//! covers every group logged before it, even groups the engine thread had gathered and not
//! yet applied when the checkpoint reached it; the engine gets a group only once it is
//! durable in the log (so it may apply it piecemeal); and many small groups go on being
//! committed while the engine is busy.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::snapshots::{Gate, Snapshots};
use super::{Engine, LogBackend, LogOptions};
use crate::store::local::{KvBackend, WriteBatch};
use bytes::Bytes;

fn put(k: &[u8]) -> WriteBatch {
    WriteBatch { ops: vec![(k.to_vec(), Some(Bytes::from_static(b"1")))], ..WriteBatch::default() }
}

fn open(dir: &Path, engine: &Snapshots, segment_size: u64) -> LogBackend<Snapshots> {
    LogBackend::open(engine.clone(), dir, LogOptions { segment_size, ..LogOptions::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_logged_writes_while_the_engine_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Snapshots::default();
    let log = open(dir.path(), &engine, 16 * 1024 * 1024);
    engine.hold(true);
    assert!(log.commit(put(b"a")).await.unwrap(), "durable without the engine");
    let conflicting = WriteBatch { expect: vec![(b"a".to_vec(), None)], ..put(b"a") };
    assert!(!log.commit(conflicting).await.unwrap(), "its expectation sees the logged write");
    assert_eq!(log.get(b"a").unwrap(), Some(Bytes::from_static(b"1")));
    assert_eq!(log.range(b"a", b"b", 10).unwrap().len(), 1);
    assert!(engine.get(b"a").unwrap().is_none(), "the engine has not applied it");
    engine.hold(false);
    log.flush().await.unwrap();
    assert!(engine.get(b"a").unwrap().is_some());
    assert_eq!(log.get(b"a").unwrap(), Some(Bytes::from_static(b"1")));
}

/// The commit thread waits for the engine only when many writes (not groups) wait for it:
/// small groups, one record each as when the commits keep up with the load, must not
/// stop behind an engine that is busy (a checkpoint or a slow apply can hold it for tens
/// of milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_do_not_wait_for_a_busy_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Snapshots::default();
    let log = open(dir.path(), &engine, 16 * 1024 * 1024);
    engine.hold(true);
    // One group each: every commit is awaited before the next is sent.
    let commits = async {
        for i in 0..500u32 {
            assert!(log.commit(put(&i.to_be_bytes())).await.unwrap());
        }
    };
    let in_time = tokio::time::timeout(Duration::from_secs(20), commits).await;
    engine.hold(false);
    assert!(in_time.is_ok(), "500 one-write groups waited for an engine that is held");
    log.flush().await.unwrap();
    assert!(engine.get(&499u32.to_be_bytes()).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_covers_groups_the_engine_thread_had_not_applied_yet() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Snapshots::default();
    // Segments so small that every group fills one and hands a checkpoint on.
    let log = Arc::new(open(dir.path(), &engine, 64));
    engine.hold(true);
    // The engine thread takes group 1 and waits in its apply; groups 2 and 3 and the
    // checkpoints behind them queue up, so it finds them all at once after the gate opens.
    for k in [&b"one"[..], b"two", b"three"] {
        assert!(log.commit(put(k)).await.unwrap());
    }
    let flush = tokio::spawn({
        let log = log.clone();
        async move { log.flush().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!flush.is_finished(), "a flush cannot finish while the engine is stuck");
    engine.hold(false);
    flush.await.unwrap().unwrap();
    let durable = engine.durable.lock().unwrap().clone();
    for k in [&b"one"[..], b"two", b"three"] {
        assert!(durable.contains_key(k), "{:?} was logged before the flush and is not in its checkpoint", k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_gets_a_group_only_once_the_log_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Snapshots::default();
    // The sync thread calls the observer after each fsync of the log and before it passes
    // the group on; a closed gate holds it there.
    let gate = Gate::default();
    gate.close(true);
    // Opens the gate when dropped, so a failed assertion does not leave the sync thread stuck.
    struct Opens(Gate);
    impl Drop for Opens {
        fn drop(&mut self) {
            self.0.close(false);
        }
    }
    let opens = Opens(gate.clone());
    let observer = move |_: &Path| gate.pass();
    let options = LogOptions { observer: Some(Arc::new(observer)), ..LogOptions::default() };
    let log = Arc::new(LogBackend::open(engine.clone(), dir.path(), options).unwrap());
    let commit = tokio::spawn({
        let log = log.clone();
        async move { log.commit(put(b"a")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.get(b"a").unwrap(), Some(Bytes::from_static(b"1")), "reads see the logged write");
    assert!(!commit.is_finished(), "not durable before the fsync is through");
    assert!(engine.get(b"a").unwrap().is_none(), "the engine got a write whose fsync had not finished");
    drop(opens);
    assert!(commit.await.unwrap().unwrap());
    log.flush().await.unwrap();
    assert_eq!(engine.get(b"a").unwrap(), Some(Bytes::from_static(b"1")));
}

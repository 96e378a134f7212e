//! What only the on-disk stores (sled, redb and fjall, one module each from the same tests)
//! do: an fsync before every answer, group commit, log checkpoints and recycling, the
//! filter of done keys, refusal of bad paths and newer formats. The contract all stores
//! keep is in `tests/conformance.rs`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use exactly_core::store::{Claim, ClaimRequest, Committed, Completion, Final, RecordState, StateChanges};
use exactly_core::{
    Context, DedupStore, Error, Fingerprint, Message, OrphanPolicy, Outcome, Processor, StoreKey, handler_fn, reasons,
};

#[derive(Clone, Default)]
struct Fsyncs(Arc<Mutex<Vec<PathBuf>>>);

impl Fsyncs {
    fn observer(&self) -> impl Fn(&Path) + Send + Sync + 'static {
        let me = self.clone();
        move |p: &Path| me.0.lock().unwrap().push(p.to_owned())
    }
    fn log_appends(&self) -> usize {
        self.0.lock().unwrap().iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).count()
    }
    fn under(&self, dir: &Path) -> usize {
        self.0.lock().unwrap().iter().filter(|p| p.starts_with(dir) && p != &dir).count()
    }
}

async fn claim(store: &(impl DedupStore + ?Sized), key: &StoreKey, payload: &[u8]) -> u64 {
    let now = 1_000;
    match store
        .claim(ClaimRequest {
            key,
            fingerprint: Fingerprint::of(payload),
            now,
            lease_until: now + 60_000,
            durable: false,
            redrive: false,
        })
        .await
        .unwrap()
    {
        Claim::Acquired(l) => l.token,
        other => panic!("expected to acquire {key}: {other:?}"),
    }
}

fn done(key: &StoreKey, token: u64, payload: &[u8], output: Option<Bytes>, state: StateChanges) -> Completion {
    Completion {
        key: key.clone(),
        token,
        fingerprint: Fingerprint::of(payload),
        attempts: 1,
        now: 1_000,
        origin: None,
        outcome: Final::Done { output, emitted: vec![] },
        expires_at: 10_000_000,
        state,
    }
}

/// Claims and completes `k<i>` for every i in `keys`, all at once.
async fn complete_keys(store: &(impl DedupStore + ?Sized), keys: std::ops::Range<u32>) {
    futures_util::future::join_all(keys.map(|i| async move {
        let key = StoreKey::new("c", &format!("k{i}"));
        let token = claim(store, &key, b"p").await;
        assert_eq!(
            store.complete(done(&key, token, b"p", None, StateChanges::default())).await.unwrap(),
            Committed::Ok
        );
    }))
    .await;
}

/// Waits until the store has built its filter of done keys `builds` times.
async fn filter_built(store: &(impl DedupStore + ?Sized), builds: u64) {
    for _ in 0..1000 {
        if store.stats().filter_builds >= builds {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the filter was built {} times, not {builds}", store.stats().filter_builds);
}

macro_rules! durable_store_tests {
    ($module:ident, $store:ty) => {
        mod $module {
            use super::*;
            type Store = $store;

            #[tokio::test]
            async fn every_completion_waits_for_an_fsync_of_the_log() {
                let dir = tempfile::tempdir().unwrap();
                let fsyncs = Fsyncs::default();
                let store = Store::builder(dir.path().join("s")).on_fsync(fsyncs.observer()).open().unwrap();
                for i in 0..50 {
                    let key = StoreKey::new("c", &format!("k{i}"));
                    let token = claim(&store, &key, b"p").await;
                    let before = fsyncs.log_appends();
                    assert_eq!(
                        store.complete(done(&key, token, b"p", None, StateChanges::default())).await.unwrap(),
                        Committed::Ok
                    );
                    assert!(fsyncs.log_appends() > before, "completion {i} returned without an fsync of the log");
                }
                assert!(store.stats().fsyncs >= 50);
            }

            #[tokio::test]
            async fn a_log_that_fills_up_checkpoints_the_engine_and_recycles() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                let fsyncs = Fsyncs::default();
                {
                    let store =
                        Store::builder(&path).wal_segment_size(8 * 1024).on_fsync(fsyncs.observer()).open().unwrap();
                    for i in 0..500 {
                        let key = StoreKey::new("c", &format!("k{i}"));
                        let token = claim(&store, &key, b"p").await;
                        store.complete(done(&key, token, b"p", None, StateChanges::default())).await.unwrap();
                    }
                    assert!(fsyncs.under(&path) > fsyncs.log_appends(), "checkpoints fsync the engine's own files too");
                    let segments = std::fs::read_dir(path.join("wal")).unwrap().count();
                    assert!(segments <= 6, "{segments} log files: segments are not recycled");
                }
                let store = Store::open(&path).unwrap();
                for i in 0..500 {
                    assert!(store.inspect(&StoreKey::new("c", &format!("k{i}"))).await.unwrap().is_some(), "k{i} lost");
                }
            }

            /// The filter of done keys, built after a reopen and rebuilt while the store
            /// grows: every done key is still found, new keys are new.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_filter_of_done_keys_never_hides_a_done_key() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                let open = || Store::builder(&path).filter_keys(64).open().unwrap();
                let key = |i: u32| StoreKey::new("c", &format!("k{i}"));
                let store = open();
                complete_keys(&store, 0..300).await;
                drop(store);
                let store = open();
                filter_built(&store, 1).await;
                complete_keys(&store, 300..600).await;
                // The first filter is sized for one key per 256 bytes on disk (2,048 for a
                // new sled store): 5,000 keys fill it and a larger one is built.
                complete_keys(&store, 600..5000).await;
                filter_built(&store, 2).await;
                for i in 0..5000 {
                    assert!(store.inspect(&key(i)).await.unwrap().is_some(), "k{i} lost");
                }
                for i in 5000..5100 {
                    assert!(store.inspect(&key(i)).await.unwrap().is_none(), "k{i} was never written");
                }
                claim(&store, &key(5000), b"p").await;
                drop(store);
                let store = open();
                filter_built(&store, 1).await;
                for i in 0..5000 {
                    assert!(store.inspect(&key(i)).await.unwrap().is_some(), "key {i} lost after the reopen");
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn group_commit_serves_many_completions_with_one_fsync() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                let store = Arc::new(Store::open(&path).unwrap());
                let commits_before = store.stats().commits;
                let n = 512;
                let mut tasks = Vec::new();
                for i in 0..n {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let key = StoreKey::new("c", &format!("k{i}"));
                        let token = claim(&*store, &key, b"p").await;
                        store.complete(done(&key, token, b"p", None, StateChanges::default())).await.unwrap()
                    }));
                }
                for t in tasks {
                    assert_eq!(t.await.unwrap(), Committed::Ok);
                }
                let commits = store.stats().commits - commits_before;
                assert!(commits < n / 2, "{n} concurrent completions took {commits} group commits");
                drop(store);
                // The last clones of the store can still be dropping on tokio's worker
                // threads when the join handles resolve: give the file lock a moment.
                let mut reopened = Store::open(&path);
                for _ in 0..100 {
                    if reopened.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    reopened = Store::open(&path);
                }
                let store = reopened.unwrap();
                for i in 0..n {
                    let view = store
                        .inspect(&StoreKey::new("c", &format!("k{i}")))
                        .await
                        .unwrap()
                        .expect("durable after reopen");
                    assert!(matches!(view.state, RecordState::Done { .. }));
                }
            }

            #[tokio::test]
            async fn a_durable_claim_of_a_crashed_process_is_found_after_reopen() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                let runs = Arc::new(AtomicU64::new(0));
                let make = |runs: Arc<AtomicU64>| {
                    handler_fn(move |_m: Message, _c: Context| {
                        let runs = runs.clone();
                        async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    })
                };
                {
                    // Claim durably, then "crash": the store is closed with the claim on disk and no
                    // done-record.
                    let store = Store::open(&path).unwrap();
                    let key = StoreKey::new("pay", "k");
                    let now = 1_000;
                    let c = store
                        .claim(ClaimRequest {
                            key: &key,
                            fingerprint: Fingerprint::of(b"x"),
                            now,
                            lease_until: now + 60_000,
                            durable: true,
                            redrive: false,
                        })
                        .await
                        .unwrap();
                    assert!(matches!(c, Claim::Acquired(_)));
                }
                let p = Processor::builder("pay", make(runs.clone()))
                    .store(Store::open(&path).unwrap())
                    .orphans(OrphanPolicy::Quarantine)
                    .build()
                    .unwrap();
                let mut out = p.process(Message::builder("x").header("idempotency-key", "k").build()).await.unwrap();
                assert_eq!(out.dead_letter().unwrap().reason, reasons::UNKNOWN_OUTCOME);
                assert_eq!(runs.load(Ordering::SeqCst), 0);
                out.confirm_dead_letter().await.unwrap();
                let again = p.process(Message::builder("x").header("idempotency-key", "k").build()).await.unwrap();
                assert_eq!(again.outcome, Outcome::AlreadyDeadLettered);
            }

            #[tokio::test]
            async fn a_store_of_a_newer_format_is_refused() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                {
                    let store = Store::open(&path).unwrap();
                    store.meta_put("format", Bytes::copy_from_slice(&99u32.to_be_bytes())).await.unwrap();
                }
                let err = Store::open(&path).unwrap_err();
                assert!(
                    matches!(err, Error::StoreFormat { found: 99, supported: exactly_core::store::FORMAT_VERSION, .. }),
                    "{err}"
                );
                assert!(err.to_string().contains("upgrade exactly"), "{err}");
            }

            /// A store an older build wrote (format 1) is upgraded when it opens, so that
            /// build refuses it afterwards instead of misreading the newer records.
            #[tokio::test]
            async fn a_store_of_an_older_format_is_upgraded_in_place() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                {
                    let store = Store::open(&path).unwrap();
                    store.meta_put("format", Bytes::copy_from_slice(&1u32.to_be_bytes())).await.unwrap();
                    store.flush().await.unwrap();
                }
                let store = Store::open(&path).unwrap();
                let format = store.meta_get("format").await.unwrap().unwrap();
                assert_eq!(format.as_ref(), exactly_core::store::FORMAT_VERSION.to_be_bytes());
            }

            #[test]
            fn a_path_that_is_a_file_is_refused() {
                let dir = tempfile::tempdir().unwrap();
                let file = dir.path().join("f");
                std::fs::write(&file, b"x").unwrap();
                let err = Store::open(&file).unwrap_err();
                assert!(err.to_string().contains("it is a file"), "{err}");
            }
        }
    };
}

durable_store_tests!(sled, exactly_core::SledStore);
durable_store_tests!(redb, exactly_core::store::RedbStore);
durable_store_tests!(fjall, exactly_core::store::FjallStore);

#[tokio::test]
async fn large_values_land_in_blob_files_that_are_fsynced_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let fsyncs = Fsyncs::default();
    let store = exactly_core::SledStore::builder(&path).on_fsync(fsyncs.observer()).open().unwrap();
    let big = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
    let key = StoreKey::new("c", "big");
    let token = claim(&store, &key, b"p").await;
    store.complete(done(&key, token, b"p", Some(big.clone()), StateChanges::default())).await.unwrap();
    drop(store); // the checkpoint at close writes sled's blob files
    assert!(fsyncs.under(&path.join("blobs")) > 0, "no blob file was fsynced: {:?}", fsyncs.0.lock().unwrap());
    let store = exactly_core::SledStore::open(&path).unwrap();
    match store.inspect(&key).await.unwrap().unwrap().state {
        RecordState::Done { output, .. } => assert_eq!(output, Some(big)),
        other => panic!("{other:?}"),
    }
}

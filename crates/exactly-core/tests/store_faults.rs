//! The on-disk stores (sled, redb and fjall, one module each from the same tests) under
//! faults of their directory and of their input: a refused open, a second process, a
//! write larger than an engine takes, the directory deleted under a running store, files
//! lost, the wrong engine. (Faults of the log's bytes: `tests/tests/store_faults.rs`.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use exactly_core::store::{ClaimRequest, Completion, Final, StateChanges};
use exactly_core::{
    Context, DedupStore, Disposition, Error, Fingerprint, Message, Processor, StoreKey, handler_fn, reasons,
};

/// Every file under `dir` with its length and contents' hash.
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

fn credit(key: &str) -> Message {
    Message::builder(r#"{"cents":1}"#).header("idempotency-key", key).build()
}

/// A processor whose handler writes one state key of `key_len` bytes.
fn writer(store: Arc<dyn DedupStore>, key_len: usize) -> Processor {
    let handler = handler_fn(move |_m: Message, ctx: Context| async move {
        ctx.state().put("k".repeat(key_len), "v").await?;
        Ok(())
    });
    Processor::builder("c", handler).shared_store(store).no_breaker().build().unwrap()
}

macro_rules! store_fault_tests {
    ($module:ident, $store:ty, $engine_file:expr) => {
        mod $module {
            use super::*;
            type Store = $store;

            #[tokio::test]
            async fn a_refused_open_changes_nothing_on_disk() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                {
                    let store = Store::open(&path).unwrap();
                    store.meta_put("format", Bytes::copy_from_slice(&99u32.to_be_bytes())).await.unwrap();
                }
                let before = snapshot(&path);
                for _ in 0..3 {
                    let err = Store::open(&path).unwrap_err();
                    assert!(matches!(err, Error::StoreFormat { found: 99, .. }), "{err}");
                }
                let after = snapshot(&path);
                let ours = |m: &BTreeMap<PathBuf, (u64, u32)>| -> Vec<PathBuf> {
                    m.keys().filter(|p| p.starts_with(path.join("wal"))).cloned().collect()
                };
                assert_eq!(ours(&after), ours(&before), "a refused open made log segments");
                assert_eq!(after.get(&path.join("wal/checkpoint")), before.get(&path.join("wal/checkpoint")));
            }

            #[test]
            fn a_second_open_waits_a_second_then_is_refused() {
                let dir = tempfile::tempdir().unwrap();
                let _held = Store::open(dir.path()).unwrap();
                let started = Instant::now();
                let err = Store::open(dir.path()).unwrap_err();
                assert!(err.to_string().contains("another process has it open"), "{err}");
                assert!(started.elapsed() >= Duration::from_millis(900), "gave up after {:?}", started.elapsed());
            }

            #[tokio::test]
            async fn an_oversized_state_key_is_dead_lettered_and_the_store_reopens() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                {
                    let store: Arc<dyn DedupStore> = Arc::new(Store::open(&path).unwrap());
                    let p = writer(store.clone(), 70_000);
                    let mut out = p.process(credit("big")).await.unwrap();
                    match &out.disposition {
                        Disposition::DeadLetter(dl) => {
                            assert_eq!(dl.reason, reasons::TOO_LARGE);
                            assert!(dl.last_error.as_deref().unwrap_or("").contains("70000 bytes"), "{dl:?}");
                        }
                        other => panic!("acknowledged or retried a write the store cannot take: {other:?}"),
                    }
                    out.confirm_dead_letter().await.unwrap();
                    // The store goes on working.
                    let ok = writer(store.clone(), 10).process(credit("small")).await.unwrap();
                    assert_eq!(ok.disposition, Disposition::Ack);
                }
                let store = Store::open(&path).unwrap();
                assert!(store.inspect(&StoreKey::new("c", "small")).await.unwrap().is_some());
            }

            #[tokio::test]
            async fn a_write_over_the_engine_limit_is_refused_and_the_store_goes_on() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                {
                    let store = Store::open(&path).unwrap();
                    let key = StoreKey::new("c", "k");
                    let lease = match store
                        .claim(ClaimRequest {
                            key: &key,
                            fingerprint: Fingerprint::of(b"p"),
                            now: 1,
                            lease_until: 60_000,
                            durable: false,
                            redrive: false,
                        })
                        .await
                        .unwrap()
                    {
                        exactly_core::store::Claim::Acquired(l) => l,
                        other => panic!("{other:?}"),
                    };
                    // Past the processor's check: the log itself refuses a 70 KB key.
                    let state = StateChanges {
                        reads: vec![],
                        writes: vec![(StoreKey::state("c", &vec![b'k'; 70_000]), Some(Bytes::from_static(b"v")))],
                    };
                    let completion = Completion {
                        key: key.clone(),
                        token: lease.token,
                        fingerprint: Fingerprint::of(b"p"),
                        attempts: 1,
                        now: 1,
                        origin: None,
                        outcome: Final::Done { output: None, emitted: vec![] },
                        expires_at: 1_000_000,
                        state,
                    };
                    let err = store.complete(completion).await.unwrap_err();
                    assert!(matches!(err, Error::StoreLimit { .. }), "{err}");
                    let ok = writer(Arc::new(store), 10).process(credit("after")).await.unwrap();
                    assert_eq!(ok.disposition, Disposition::Ack);
                }
                let store = Store::open(&path).unwrap();
                assert!(store.inspect(&StoreKey::new("c", "after")).await.unwrap().is_some());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_store_whose_directory_is_deleted_stops_acknowledging() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                let store: Arc<dyn DedupStore> = Arc::new(Store::open(&path).unwrap());
                let p = writer(store.clone(), 10);
                for i in 0..100 {
                    assert_eq!(p.process(credit(&format!("k{i}"))).await.unwrap().disposition, Disposition::Ack);
                }
                std::fs::remove_dir_all(&path).unwrap();
                let deleted = Instant::now();
                let mut acked_after = 0;
                let err = loop {
                    match p.process(credit(&format!("after{acked_after}"))).await {
                        Ok(out) => {
                            assert_eq!(out.disposition, Disposition::Ack);
                            acked_after += 1;
                            assert!(deleted.elapsed() < Duration::from_secs(5), "{acked_after} acknowledged in 5 s");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => break e,
                    }
                };
                assert!(err.to_string().contains("deleted") || err.to_string().contains("is gone"), "{err}");
                assert!(deleted.elapsed() < Duration::from_secs(3), "noticed after {:?}", deleted.elapsed());
                drop(p);
                drop(store);
                // Turned off, a missing store is not silently made anew.
                let err = Store::builder(&path).create_if_missing(false).open().unwrap_err();
                assert!(err.to_string().contains("no store there"), "{err}");
            }

            #[test]
            fn a_store_that_lost_files_is_refused() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                drop(Store::open(&path).unwrap());
                for lost in [$engine_file, "wal/checkpoint"] {
                    let saved = dir.path().join("saved");
                    std::fs::rename(path.join(lost), &saved).unwrap();
                    let err = Store::open(&path).unwrap_err().to_string();
                    assert!(err.contains("lost files") && err.contains(lost), "{lost}: {err}");
                    std::fs::rename(&saved, path.join(lost)).unwrap();
                }
                drop(Store::open(&path).unwrap());
            }

            #[test]
            fn a_store_of_another_engine_is_refused() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("s");
                drop(Store::open(&path).unwrap());
                let other = if $engine_file == "data.redb" { "sled" } else { "redb" };
                let err = match other {
                    "sled" => exactly_core::SledStore::open(&path).map(drop).unwrap_err(),
                    _ => exactly_core::store::RedbStore::open(&path).map(drop).unwrap_err(),
                };
                assert!(err.to_string().contains("store, not a"), "{err}");
            }
        }
    };
}

store_fault_tests!(sled, exactly_core::SledStore, "db");
store_fault_tests!(redb, exactly_core::store::RedbStore, "data.redb");
store_fault_tests!(fjall, exactly_core::store::FjallStore, "fjall");

//! Model checks with [loom]: every interleaving (up to a preemption bound) of
//!
//! - the claim/lease protocol: two deliveries of one key, a lease expiring under its
//!   holder, a release racing a claim, a completion whose write is refused; over a
//!   backend whose durability is answered later by another thread, as the log's is.
//!   A claim of a key another delivery holds waits until that claim ends (up to a
//!   second; loom has no timers, so here until it ends);
//! - the group-commit log: clients staging writes and flushes against the commit, sync
//!   and engine threads (the engine thread applies groups behind the memtable that reads
//!   look through, and checkpoints), with log segments so small that every group fills
//!   one.
//!
//! The lease table's locks and the log's threads and channels are loom's under
//! `--cfg exactly_loom`, so loom switches threads at each of their operations. Run
//! (about a minute, bounded to three preemptions per run):
//!
//! ```text
//! RUSTFLAGS="--cfg exactly_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p exactly-core --no-default-features --release --test loom
//! ```
//!
//! A lost wake-up (a claim or a commit waiting for an answer nobody sends) shows as
//! loom's deadlock report; two holders, a second effect, or an answer before its fsync
//! fails an assertion.
//!
//! [loom]: https://docs.rs/loom

#![cfg(exactly_loom)]
#![allow(clippy::unwrap_used)]

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use exactly_core::store::internals::{
    AppliedWrite, BackendStats, KvBackend, LogBackend, LogOptions, MemoryBackend, Snapshots, WriteBatch,
};
use exactly_core::store::{
    Claim, ClaimRequest, Committed, Completion, Durable, FencingToken, Final, LocalStore, RecordState, StateChanges,
};
use exactly_core::{DedupStore, Fingerprint, Result, StoreKey};
use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;
use tokio::sync::oneshot;

/// Runs once a write is durable (the backend's `OnDurable`).
type OnDurable = Box<dyn FnOnce(bool) + Send>;

/// What the sync thread owes: the write's `on_durable` and its answer.
type Owed = (Option<OnDurable>, oneshot::Sender<Result<()>>);

/// The in-memory backend, except that a write becomes durable only when [`sync`] runs
/// on another thread: the window in which a completed key is "completing".
#[derive(Default)]
struct Deferred {
    inner: MemoryBackend,
    owed: Mutex<(Vec<Owed>, bool)>,
    wake: Condvar,
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred").finish_non_exhaustive()
    }
}

impl Deferred {
    /// The sync thread: answers every write staged, until [`close`] and nothing is owed.
    fn sync(&self) {
        loop {
            let owed = {
                let mut guard = self.owed.lock().unwrap();
                while guard.0.is_empty() && !guard.1 {
                    guard = self.wake.wait(guard).unwrap();
                }
                if guard.0.is_empty() {
                    return;
                }
                std::mem::take(&mut guard.0)
            };
            for (on_durable, durable) in owed {
                if let Some(f) = on_durable {
                    f(true);
                }
                let _ = durable.send(Ok(()));
            }
        }
    }

    fn close(&self) {
        self.owed.lock().unwrap().1 = true;
        self.wake.notify_all();
    }
}

#[async_trait]
impl KvBackend for Deferred {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.get(key)
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.inner.range(from, to, limit)
    }

    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite> {
        let staged = self.inner.stage(batch, None).await?;
        if !staged.applied {
            return Ok(staged);
        }
        let (tx, rx) = oneshot::channel();
        self.owed.lock().unwrap().0.push((on_durable, tx));
        self.wake.notify_all();
        Ok(AppliedWrite { applied: true, durable: Durable::pending(rx) })
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    fn next_token(&self) -> Result<FencingToken> {
        self.inner.next_token()
    }

    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}

type Store = LocalStore<Deferred>;

fn key() -> StoreKey {
    StoreKey::new("ledger", "tx-1")
}

fn claim(store: &Store, now: u64, lease_until: u64) -> Claim {
    let key = key();
    let req = ClaimRequest {
        key: &key,
        fingerprint: Fingerprint::of(b"5"),
        now,
        lease_until,
        durable: false,
        redrive: false,
    };
    block_on(store.claim(req)).unwrap()
}

fn completion(token: FencingToken, state: StateChanges) -> Completion {
    Completion {
        key: key(),
        token,
        fingerprint: Fingerprint::of(b"5"),
        attempts: 1,
        now: 0,
        origin: None,
        outcome: Final::Done { output: None, emitted: vec![] },
        expires_at: 1_000_000,
        state,
    }
}

/// Completes and waits until durable, as the processor does before it acknowledges.
fn complete(store: &Store, token: FencingToken) -> Committed {
    let staged = block_on(store.complete_staged(completion(token, StateChanges::default()))).unwrap();
    block_on(staged.durable.wait()).unwrap();
    staged.committed
}

fn is_done(store: &Store) -> bool {
    matches!(block_on(store.inspect(&key())).unwrap().map(|r| r.state), Some(RecordState::Done { .. }))
}

/// Runs `body` with a store and its sync thread, then stops the sync thread.
fn with_store(body: impl Fn(Arc<Store>) + Sync + Send + 'static) {
    loom::model(move || {
        let store = Arc::new(LocalStore::with_backend(Deferred::default(), 3_600_000));
        let syncer = {
            let store = store.clone();
            thread::spawn(move || store.backend().sync())
        };
        body(store.clone());
        store.backend().close();
        syncer.join().unwrap();
    });
}

/// Two deliveries of one key race: one runs the handler; the other waits for its claim
/// to end and is told it is a duplicate. Never two holders.
#[test]
fn two_deliveries_of_one_key_run_the_handler_once() {
    with_store(|store| {
        let holders = Arc::new(AtomicUsize::new(0));
        let acquired = Arc::new(AtomicUsize::new(0));
        let deliver = |store: Arc<Store>, holders: Arc<AtomicUsize>, acquired: Arc<AtomicUsize>| {
            move || match claim(&store, 0, 100) {
                Claim::Acquired(lease) => {
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders of one key");
                    acquired.fetch_add(1, Ordering::SeqCst);
                    holders.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(complete(&store, lease.token), Committed::Ok);
                }
                Claim::Done { .. } => assert!(is_done(&store), "a duplicate before the record is durable"),
                other => panic!("unexpected answer {other:?}"),
            }
        };
        let a = thread::spawn(deliver(store.clone(), holders.clone(), acquired.clone()));
        deliver(store.clone(), holders, acquired.clone())();
        a.join().unwrap();
        assert_eq!(acquired.load(Ordering::SeqCst), 1, "exactly one delivery runs the handler");
        assert!(is_done(&store));
    });
}

/// A holder whose lease ran out completes while another delivery takes the key over:
/// exactly one of the two completions commits, the other is fenced or never starts.
#[test]
fn an_expired_holder_and_its_successor_commit_once() {
    with_store(|store| {
        let Claim::Acquired(old) = claim(&store, 0, 10) else { panic!("the first claim must acquire") };
        let commits = Arc::new(AtomicUsize::new(0));
        let a = {
            let (store, commits) = (store.clone(), commits.clone());
            thread::spawn(move || {
                if complete(&store, old.token) == Committed::Ok {
                    commits.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        match claim(&store, 20, 100) {
            Claim::Acquired(new) => {
                assert!(new.orphaned, "a takeover is reported as one");
                if complete(&store, new.token) == Committed::Ok {
                    commits.fetch_add(1, Ordering::SeqCst);
                }
            }
            Claim::Done { .. } => {}
            other => panic!("unexpected answer {other:?}"),
        }
        a.join().unwrap();
        assert_eq!(commits.load(Ordering::SeqCst), 1, "one completion commits");
        assert!(is_done(&store));
    });
}

/// A failed delivery releases its claim while another claims: the other waits for the
/// release and takes the key with the failure counted.
#[test]
fn a_release_wakes_a_waiting_claim_with_the_attempt_count() {
    with_store(|store| {
        let Claim::Acquired(first) = claim(&store, 0, 100) else { panic!("the first claim must acquire") };
        let a = {
            let store = store.clone();
            thread::spawn(move || block_on(store.release(&key(), first.token, 1, Some("boom".into()))).unwrap())
        };
        match claim(&store, 0, 100) {
            Claim::Acquired(lease) => {
                assert_eq!(lease.attempts, 1);
                assert_eq!(lease.last_error.as_deref(), Some("boom"));
            }
            other => panic!("unexpected answer {other:?}"),
        }
        a.join().unwrap();
    });
}

/// A completion whose state write is refused (a read changed under it) hands the key
/// back to its holder, which runs again and completes: a claim that waited meanwhile
/// wakes once, at the end, to a duplicate; no lost wake-up, no second holder.
#[test]
fn a_claim_waits_through_a_refused_completion_until_the_holder_is_done() {
    with_store(|store| {
        let Claim::Acquired(lease) = claim(&store, 0, 100) else { panic!("the first claim must acquire") };
        let a = {
            let store = store.clone();
            thread::spawn(move || {
                let state = StateChanges {
                    reads: vec![(StoreKey::state("ledger", b"balance"), Some(Bytes::from_static(b"7")))],
                    writes: vec![(StoreKey::state("ledger", b"balance"), Some(Bytes::from_static(b"12")))],
                };
                let staged = block_on(store.complete_staged(completion(lease.token, state))).unwrap();
                assert_eq!(staged.committed, Committed::Conflict);
                assert_eq!(complete(&store, lease.token), Committed::Ok, "the holder keeps its claim");
            })
        };
        assert!(matches!(claim(&store, 0, 100), Claim::Done { .. }), "the waiting copy is a duplicate");
        a.join().unwrap();
        assert!(is_done(&store));
    });
}

/// The log over [`Snapshots`] in a fresh directory (on tmpfs when there is one), with
/// 64-byte segments: every group fills one and hands a checkpoint to its thread.
fn log(dir: &Path, fsyncs: Arc<std::sync::atomic::AtomicUsize>) -> LogBackend<Snapshots> {
    let observer = move |_: &Path| {
        fsyncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    };
    let options = LogOptions { segment_size: 64, observer: Some(Arc::new(observer)), ..LogOptions::default() };
    LogBackend::open(Snapshots::default(), dir, options).unwrap()
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap()
}

fn model(body: impl Fn() + Sync + Send + 'static) {
    // The log's three threads and two clients: a bound keeps the run to about a minute.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(body);
}

/// A write is "applied" when its expectations held and it is visible; "durable" (and
/// its `on_durable`) only after an fsync of the log. Of two writes that each expect the
/// key absent, exactly one applies. At close the engine is checkpointed with it.
#[test]
fn group_commit_answers_after_the_fsync_and_admits_one_of_two_conflicting_writes() {
    model(|| {
        let dir = scratch();
        let fsyncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log = Arc::new(log(dir.path(), fsyncs.clone()));
        let write = |log: Arc<LogBackend<Snapshots>>, fsyncs: Arc<std::sync::atomic::AtomicUsize>, v: &'static [u8]| {
            move || {
                let key = b"k".to_vec();
                let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let on_durable: OnDurable = {
                    let (seen, fsyncs) = (seen.clone(), fsyncs.clone());
                    Box::new(move |ok| {
                        assert!(ok);
                        assert!(fsyncs.load(std::sync::atomic::Ordering::SeqCst) > 0, "durable before an fsync");
                        seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    })
                };
                let batch = WriteBatch {
                    expect: vec![(key.clone(), None)],
                    ops: vec![(key, Some(Bytes::from_static(v)))],
                    expiring: vec![],
                };
                let staged = block_on(log.stage(batch, Some(on_durable))).unwrap();
                if staged.applied {
                    block_on(staged.durable.wait()).unwrap();
                    assert!(seen.load(std::sync::atomic::Ordering::SeqCst), "answered before on_durable ran");
                }
                staged.applied
            }
        };
        let a = thread::spawn(write(log.clone(), fsyncs.clone(), b"a"));
        let b_applied = write(log.clone(), fsyncs.clone(), b"b")();
        let a_applied = a.join().unwrap();
        assert!(a_applied != b_applied, "exactly one of two conflicting writes applies");
        let winner = Bytes::from_static(if a_applied { b"a" } else { b"b" });
        assert_eq!(log.get(b"k").unwrap(), Some(winner.clone()));
        let engine = log.engine().clone();
        drop(Arc::into_inner(log).expect("the only handle"));
        // Closing checkpoints the engine before the threads end: it covers every write.
        let durable = engine.durable.lock().unwrap().clone();
        assert_eq!(durable.get(&b"k"[..]), Some(&winner), "the close checkpoint misses a write");
    });
}

/// A flush is answered only after a checkpoint that covers a write applied before it was
/// asked, while that write's group fills a segment and hands its own checkpoint on. (One
/// write: with two, and the engine thread's messages per group, the model had not
/// finished after ten minutes.)
#[test]
fn a_flush_is_answered_after_a_checkpoint_covering_what_was_applied_before_it() {
    model(|| {
        let dir = scratch();
        let fsyncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log = Arc::new(log(dir.path(), fsyncs));
        let writer = {
            let log = log.clone();
            thread::spawn(move || {
                let batch =
                    WriteBatch { ops: vec![(b"x".to_vec(), Some(Bytes::from_static(b"1")))], ..WriteBatch::default() };
                assert!(block_on(log.commit(batch)).unwrap());
            })
        };
        // A point where the writer may go first: the flush then has writes to cover.
        thread::yield_now();
        // Applied means visible to reads (the engine itself may lag behind the memtable).
        let applied_before = log.get(b"x").unwrap().is_some();
        block_on(log.flush()).unwrap();
        let durable = log.engine().durable.lock().unwrap().clone();
        if applied_before {
            assert!(durable.contains_key(&b"x"[..]), "x was applied before the flush and is not in its checkpoint");
        }
        writer.join().unwrap();
    });
}

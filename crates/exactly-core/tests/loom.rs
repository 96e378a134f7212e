//! Model checks of the claim/lease protocol with [loom]: every interleaving (up to loom's
//! preemption bound) of two deliveries of one key, a lease expiring under its holder,
//! and a completion whose write is refused, over a backend whose durability is answered
//! later by a third thread, as the group-commit log answers it.
//!
//! The lease table's locks are loom's under `--cfg exactly_loom`, so loom switches
//! threads at every lock of a key's shard. Run (about a minute):
//!
//! ```text
//! RUSTFLAGS="--cfg exactly_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p exactly-core --no-default-features --release --test loom
//! ```
//!
//! A lost wake-up (a claim waiting for a completion nobody announces) shows as loom's
//! deadlock report; two holders at once or a second effect fails an assertion.
//!
//! [loom]: https://docs.rs/loom

#![cfg(exactly_loom)]
#![allow(clippy::unwrap_used)]

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use exactly_core::store::{
    BackendStats, Claim, ClaimRequest, Committed, Completion, Durable, FencingToken, Final, KvBackend, LocalStore,
    MemoryBackend, OnDurable, RecordState, Staged, StateChanges, WriteBatch,
};
use exactly_core::{DedupStore, Fingerprint, Result, StoreKey};
use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;
use tokio::sync::oneshot;

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

    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<Staged> {
        let staged = self.inner.stage(batch, None).await?;
        if !staged.applied {
            return Ok(staged);
        }
        let (tx, rx) = oneshot::channel();
        self.owed.lock().unwrap().0.push((on_durable, tx));
        self.wake.notify_all();
        Ok(Staged { applied: true, durable: Durable::pending(rx) })
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
    matches!(store.inspect(&key()).unwrap().map(|r| r.state), Some(RecordState::Done { .. }))
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

/// Two deliveries of one key race: one runs the handler, the other is told it is busy
/// or, once the first completion is durable, that it is a duplicate. Never two holders.
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
                Claim::Busy { .. } | Claim::Done { .. } => {}
                other => panic!("unexpected answer {other:?}"),
            }
        };
        let a = thread::spawn(deliver(store.clone(), holders.clone(), acquired.clone()));
        deliver(store.clone(), holders, acquired.clone())();
        a.join().unwrap();
        assert_eq!(acquired.load(Ordering::SeqCst), 1, "exactly one delivery runs the handler");
        assert!(is_done(&store));
        // The delivery that was told "busy" comes again: a duplicate.
        assert!(matches!(claim(&store, 0, 100), Claim::Done { .. }));
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

/// A failed delivery releases its claim while another claims: the other either finds it
/// held or takes it over with the failure counted, never with the count lost.
#[test]
fn a_release_and_a_claim_keep_the_attempt_count() {
    with_store(|store| {
        let Claim::Acquired(first) = claim(&store, 0, 100) else { panic!("the first claim must acquire") };
        let a = {
            let store = store.clone();
            thread::spawn(move || block_on(store.release(&key(), first.token, 1, Some("boom".into()))).unwrap())
        };
        match claim(&store, 0, 100) {
            Claim::Busy { .. } => {}
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
/// back to its holder, and a claim that waited for it wakes up and is told "busy":
/// no lost wake-up, no second holder.
#[test]
fn a_refused_completion_wakes_the_claims_that_waited_for_it() {
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
            })
        };
        assert!(matches!(claim(&store, 0, 100), Claim::Busy { .. }), "the holder still holds the key");
        a.join().unwrap();
        assert!(!is_done(&store));
    });
}

//! A measurement prototype: redb and fjall making each group durable with their own
//! commit (redb: one write transaction with `Durability::Immediate`; fjall: one write
//! batch, then `persist(SyncData)` of its journal), without our write-ahead log, to
//! compare with the same engines behind it (issue 27; `bench store --only native`). Not
//! for production: no recovery rules of ours apply to the engines' own journals.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{EngineSettings, OpenEngine};
use crate::store::local::{AppliedWrite, BackendStats, Durable, KvBackend, LocalStore, OnDurable, WriteBatch};
use crate::store::local::{expiry_index_ops, open_meta};
use crate::store::log::{Engine, Op};
use crate::store::{DEFAULT_BUCKET_WIDTH_MS, DedupStore, FencingToken};
use crate::{Error, Result};

/// An engine with a durable commit of its own.
pub(crate) trait Native: OpenEngine {
    /// Applies a group: visible to reads at once (durable too, for redb).
    fn apply_group(&self, ops: &[Op]) -> Result<()>;
    /// Makes every group applied so far durable.
    fn sync(&self) -> Result<()>;
}

#[cfg(feature = "redb")]
impl Native for super::redb::RedbEngine {
    fn apply_group(&self, ops: &[Op]) -> Result<()> {
        self.apply_durably(ops)
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(feature = "fjall")]
impl Native for super::fjall::FjallEngine {
    fn apply_group(&self, ops: &[Op]) -> Result<()> {
        self.apply(ops)
    }
    fn sync(&self) -> Result<()> {
        self.persist_data()
    }
}

enum Request {
    Write { batch: WriteBatch, applied: oneshot::Sender<Result<bool>>, durable: Owed },
    Flush(oneshot::Sender<Result<()>>),
}

type Owed = (oneshot::Sender<Result<()>>, Option<OnDurable>);

/// A [`KvBackend`] over a [`Native`] engine: a commit thread groups writes and applies
/// them, a sync thread makes them durable (two groups in flight at most).
pub(crate) struct NativeBackend<E> {
    engine: Arc<E>,
    epoch: u64,
    tokens: AtomicU64,
    commits: Arc<AtomicU64>,
    requests: Option<Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
}

impl<E> std::fmt::Debug for NativeBackend<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeBackend")
    }
}

impl<E: Native> NativeBackend<E> {
    fn open(engine: E, dir: &Path) -> Result<Self> {
        let (epoch, writes) = open_meta(|k| engine.get(k), dir)?;
        let ops: Vec<Op> = writes.into_iter().map(|(k, v)| (k, Some(v))).collect();
        engine.apply_group(&ops)?;
        engine.sync()?;
        let engine = Arc::new(engine);
        let (tx, rx) = mpsc::channel::<Request>();
        let (sync_tx, sync_rx) = mpsc::channel::<Vec<Owed>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let commits = Arc::new(AtomicU64::new(0));
        let commit = {
            let (engine, commits) = (engine.clone(), commits.clone());
            std::thread::spawn(move || commit_thread(&*engine, rx, sync_tx, done_rx, &commits, epoch))
        };
        let sync = {
            let engine = engine.clone();
            std::thread::spawn(move || sync_thread(&*engine, sync_rx, done_tx))
        };
        Ok(Self { engine, epoch, tokens: AtomicU64::new(0), commits, requests: Some(tx), threads: vec![commit, sync] })
    }
}

fn commit_thread<E: Native>(
    engine: &E,
    rx: Receiver<Request>,
    sync: Sender<Vec<Owed>>,
    done: Receiver<()>,
    commits: &AtomicU64,
    epoch: u64,
) {
    let mut in_flight = 0usize;
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        while in_flight >= 2 && done.recv().is_ok() {
            in_flight -= 1;
        }
        while done.try_recv().is_ok() {
            in_flight = in_flight.saturating_sub(1);
        }
        let mut pending = vec![first];
        while pending.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(_) => break,
            }
        }
        let mut overlay: std::collections::HashMap<Vec<u8>, Option<Bytes>> = Default::default();
        let (mut expiring, mut owed, mut flushes) = (Vec::new(), Vec::new(), Vec::new());
        for r in pending {
            match r {
                Request::Flush(reply) => flushes.push(reply),
                Request::Write { batch, applied, durable } => {
                    let ok = batch.expect.iter().all(|(k, v)| {
                        let now = match overlay.get(k) {
                            Some(v) => v.clone(),
                            None => engine.get(k).ok().flatten(),
                        };
                        now == *v
                    });
                    if !ok {
                        let _ = applied.send(Ok(false));
                        continue;
                    }
                    overlay.extend(batch.ops);
                    expiring.extend(batch.expiring);
                    owed.push((applied, durable));
                }
            }
        }
        let n = commits.fetch_add(1, Ordering::Relaxed) + 1;
        let mut ops: Vec<Op> = overlay.into_iter().collect();
        ops.extend(expiry_index_ops((epoch << 40) | n, &expiring));
        let result = match &failed {
            Some(cause) => Err(cause.clone()),
            None => engine.apply_group(&ops).map_err(|e| e.to_string()),
        };
        if let Err(cause) = &result {
            failed = Some(cause.clone());
        }
        let mut to_sync = Vec::with_capacity(owed.len());
        for (applied, durable) in owed {
            let _ = applied.send(result.clone().map(|()| true).map_err(|cause| Error::StorePoisoned { cause }));
            to_sync.push(durable);
        }
        for f in flushes {
            let _ = f.send(result.clone().map_err(|cause| Error::StorePoisoned { cause }));
        }
        if sync.send(to_sync).is_ok() {
            in_flight += 1;
        }
    }
}

fn sync_thread<E: Native>(engine: &E, rx: Receiver<Vec<Owed>>, done: Sender<()>) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let result = engine.sync().map_err(|e| e.to_string());
        for group in groups {
            for (tx, on_durable) in group {
                if let Some(f) = on_durable {
                    f(result.is_ok());
                }
                let _ = tx.send(result.clone().map_err(|cause| Error::StorePoisoned { cause }));
            }
            let _ = done.send(());
        }
    }
}

#[async_trait]
impl<E: Native> KvBackend for NativeBackend<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.engine.get(key)
    }
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.engine.range(from, to, limit)
    }
    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite> {
        let (applied, applied_rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(Error::StoreClosed)?;
        requests
            .send(Request::Write { batch, applied, durable: (durable, on_durable) })
            .map_err(|_| Error::StoreClosed)?;
        let applied = applied_rx.await.map_err(|_| Error::StoreClosed)??;
        Ok(AppliedWrite { applied, durable: Durable::pending(durable_rx) })
    }
    async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(Error::StoreClosed)?;
        requests.send(Request::Flush(tx)).map_err(|_| Error::StoreClosed)?;
        rx.await.map_err(|_| Error::StoreClosed)?
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn next_token(&self) -> Result<FencingToken> {
        Ok((self.epoch << 40) | (self.tokens.fetch_add(1, Ordering::Relaxed) + 1))
    }
    fn stats(&self) -> BackendStats {
        BackendStats { commits: self.commits.load(Ordering::Relaxed), ..BackendStats::default() }
    }
}

impl<E> Drop for NativeBackend<E> {
    fn drop(&mut self) {
        drop(self.requests.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens the prototype store of engine `E` in `dir` (a directory of its own).
fn open<E: Native>(dir: &Path) -> Result<Arc<dyn DedupStore>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", e))?;
    let engine = E::open_engine(dir, &EngineSettings { cache_size: 256 << 20, observer: None })?;
    Ok(Arc::new(LocalStore::with_backend(NativeBackend::open(engine, dir)?, DEFAULT_BUCKET_WIDTH_MS)))
}

/// The prototype on redb (`bench store --only native`).
#[cfg(feature = "redb")]
pub fn open_native_redb(dir: &Path) -> Result<Arc<dyn DedupStore>> {
    open::<super::redb::RedbEngine>(dir)
}

/// The prototype on fjall (`bench store --only native`).
#[cfg(feature = "fjall")]
pub fn open_native_fjall(dir: &Path) -> Result<Arc<dyn DedupStore>> {
    open::<super::fjall::FjallEngine>(dir)
}

//! Durable storage for embedded engines: a write-ahead log in front of an ordered
//! key-value engine (sled, redb).
//!
//! Neither engine is relied on for per-commit durability: sled 0.34's `flush` syncs with
//! `sync_file_range`, which flushes neither the disk's cache nor file metadata, and writes
//! blob files without syncing them (spacejam/sled#1452); redb's durable commit is one
//! fsync per transaction. Instead:
//!
//! 1. the commit thread takes every completion waiting, checks their expectations,
//!    appends them to the log as one record ([`wal`]) and puts them in the
//!    [`memtable`](memtable::Memtable), where reads see them, then goes on with the
//!    next group;
//! 2. the sync thread `fdatasync`s the log, and only then answers the completions, so
//!    one fsync serves every group written while the previous one was syncing;
//! 3. the engine thread applies the synced groups to the engine in memory and retires
//!    them from the memtable; when a log segment fills (and at close) it checkpoints the
//!    engine: flushes and fsyncs it through its own files, then recycles the older
//!    segments, while the commit thread goes on writing into the next one;
//! 4. opening replays the log into the engine.
//!
//! Nobody sees a completion's writes as done before they are durable: the claim of each
//! key stays "completing" (and its state locks stay held) until its completion is
//! answered.

mod committer;
mod filter;
mod memtable;
mod wal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use self::committer::{Request, Shared};
use self::memtable::Memtable;
use super::FencingToken;
use super::local::{BackendStats, Durable, KvBackend, LocalStore, OnDurable, Staged, WriteBatch, open_meta};
use crate::sync::{mpsc, thread::JoinHandle};
use crate::{Error, Result};

/// One write of a group: a key and its new value, `None` to delete.
pub type Op = (Vec<u8>, Option<Bytes>);

/// Observes fsyncs: called with the path after each one succeeded.
pub trait FsyncObserver: Send + Sync + 'static {
    /// `path` was fsynced.
    fn synced(&self, path: &Path);
}

impl<F: Fn(&Path) + Send + Sync + 'static> FsyncObserver for F {
    fn synced(&self, path: &Path) {
        self(path)
    }
}

/// An ordered key-value engine under the log. Writes come from one thread at a time and
/// need not be durable; [`Engine::checkpoint`] makes them so.
///
/// Writes reach the engine only once they are durable in the log, in log order, and
/// every write sets a whole value or deletes it. So an engine need not apply a group
/// atomically: if the process or the machine stops part way, the next open replays the
/// log from the last checkpoint over whatever part reached the engine's files. (Reads
/// meanwhile see the group whole through the memtable.)
pub trait Engine: Send + Sync + fmt::Debug + 'static {
    /// Reads one value.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Reads up to `limit` entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>>;
    /// Applies writes in order, visible to reads once it returns; neither atomicity nor
    /// durability is required.
    fn apply(&self, ops: &[Op]) -> Result<()>;
    /// Applies several groups in order, as [`Engine::apply`] of each would. An engine
    /// with a per-call cost (a transaction) applies them in one.
    fn apply_groups(&self, groups: &[&[Op]]) -> Result<()> {
        groups.iter().try_for_each(|ops| self.apply(ops))
    }
    /// Makes everything applied so far durable in the engine's own files. Returns the
    /// number of fsyncs made.
    fn checkpoint(&self) -> Result<u64>;
    /// Bytes on disk.
    fn disk_bytes(&self) -> Option<u64>;
}

/// The settings every store on the log shares, as builder methods: for a builder with the
/// fields `bucket_width: Millis` and `log: LogOptions`.
#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
macro_rules! log_store_settings {
    () => {
        /// Width of an expiry bucket (default one hour). A record is purged at most this
        /// long after it expires; the purge removes whole buckets.
        pub fn bucket_width(mut self, width: std::time::Duration) -> Self {
            self.bucket_width = $crate::clock::duration_millis(width).max(1);
            self
        }

        /// The most completions one group commit takes (default 4096).
        pub fn max_batch(mut self, n: usize) -> Self {
            self.log.max_batch = n.max(1);
            self
        }

        /// Size of one write-ahead log segment (default 16 MiB). The engine is
        /// checkpointed each time a segment fills; recovery replays at most about one
        /// segment.
        pub fn wal_segment_size(mut self, bytes: u64) -> Self {
            self.log.segment_size = bytes.max(4096);
            self
        }

        /// The fewest done keys the in-memory filter of new keys is sized for (default
        /// 1,048,576, about 1.3 MB; it grows with the store, at about 2.4 bytes a live key).
        /// A key the filter has never seen is answered as new without reading the engine.
        /// 0 turns the filter off.
        pub fn filter_keys(mut self, keys: u64) -> Self {
            self.log.filter_keys = keys;
            self
        }

        /// Called after every successful fsync (of the log, and of the engine at each
        /// checkpoint) with the synced path; for tests and metrics.
        pub fn on_fsync(mut self, observer: impl $crate::store::log::FsyncObserver) -> Self {
            self.log.observer = Some(std::sync::Arc::new(observer));
            self
        }
    };
}
#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
pub(crate) use log_store_settings;

/// Why an open of the store at `path` failed, and the error behind it.
#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
pub(crate) type OpenFailure = Box<dyn std::error::Error + Send + Sync>;

/// Makes the [`Error::StoreOpen`] of the store at `path`.
#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
pub(crate) fn open_error(path: &Path) -> impl Fn(String, Option<OpenFailure>) -> Error + '_ {
    move |reason, source| Error::StoreOpen { path: path.to_owned(), reason, source }
}

/// Refuses a `path` that is a file, and creates the store directory if it is missing.
#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
pub(crate) fn store_dir(path: &Path) -> Result<()> {
    let fail = open_error(path);
    if path.is_file() {
        return Err(fail("it is a file; give a directory (it is created if missing)".into(), None));
    }
    std::fs::create_dir_all(path).map_err(|e| fail(format!("cannot create it: {e}"), Some(Box::new(e))))
}

/// Settings of the log.
#[derive(Clone)]
pub struct LogOptions {
    /// Size of one log segment.
    pub segment_size: u64,
    /// The most completions one group takes.
    pub max_batch: usize,
    /// Told of every fsync.
    pub observer: Option<Arc<dyn FsyncObserver>>,
    /// The fewest done keys the [filter](filter) in front of the engine is sized for (once
    /// full it is rebuilt for twice the keys still live; about 1.2 bytes a key it is sized
    /// for, at a 1 % false-positive rate). 0: no filter, every read the memtable cannot answer
    /// goes to the engine.
    pub filter_keys: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { segment_size: 16 * 1024 * 1024, max_batch: 4096, observer: None, filter_keys: 1 << 20 }
    }
}

impl fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogOptions")
            .field("segment_size", &self.segment_size)
            .field("max_batch", &self.max_batch)
            .field("filter_keys", &self.filter_keys)
            .finish_non_exhaustive()
    }
}

/// A [`KvBackend`] made of an [`Engine`] and a write-ahead log with group commit.
pub struct LogBackend<E> {
    engine: Arc<E>,
    /// Logged writes the engine may not have yet; reads look here first.
    memtable: Arc<Memtable>,
    path: PathBuf,
    epoch: u64,
    tokens: AtomicU64,
    requests: mpsc::Sender<Request>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The builder of the [filter](filter) of done keys.
    filter: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl<E: fmt::Debug> fmt::Debug for LogBackend<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogBackend")
            .field("engine", &self.engine)
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// Fencing tokens are `epoch << 40 | n`: the epoch grows with every open, so tokens keep
/// growing across restarts without a write per claim.
const TOKEN_BITS: u32 = 40;

impl<E: Engine> LocalStore<LogBackend<E>> {
    /// The directory of the store.
    pub fn path(&self) -> &Path {
        self.backend.path()
    }
}

impl<E: Engine> LogBackend<E> {
    /// Replays the log in `dir/wal` into `engine`, checkpoints it, and starts the commit,
    /// sync and engine threads.
    pub fn open(engine: E, dir: &Path, options: LogOptions) -> Result<Self> {
        let fail = |what: &str, e: std::io::Error| Error::StoreOpen {
            path: dir.to_owned(),
            reason: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        };
        let (mut wal, replay) = wal::Wal::open(&dir.join("wal"), options.segment_size)
            .map_err(|e| fail("cannot open its write-ahead log", e))?;
        let replayed = replay.len();
        for payload in replay {
            let ops = wal::decode(&payload).ok_or_else(|| Error::StoreCorrupt {
                key: "write-ahead log".into(),
                reason: "a record with a valid checksum does not decode".into(),
            })?;
            engine.apply(&ops)?;
        }
        let (epoch, writes) = open_meta(|k| engine.get(k), dir)?;
        let writes: Vec<Op> = writes.into_iter().map(|(k, v)| (k, Some(v))).collect();
        engine.apply(&writes)?;
        engine.checkpoint()?;
        wal.reset().map_err(|e| Error::io("checkpoint", e))?;
        if replayed > 0 {
            tracing::info!(path = %dir.display(), replayed, "replayed the write-ahead log");
        }
        let engine = Arc::new(engine);
        let memtable = Arc::new(Memtable::default());
        let shared = Arc::new(Shared::default());
        let filter_keys = options.filter_keys;
        let (tx, threads) = committer::start(engine.clone(), memtable.clone(), wal, options, shared.clone(), epoch)
            .map_err(|e| fail("cannot start the commit threads", e))?;
        // Not in the loom models: its thread is std's (reads without a filter go to the
        // engine, as with `filter_keys: 0`).
        let filter = match filter_keys {
            0 => None,
            _ if cfg!(exactly_loom) => None,
            keys => filter::start(engine.clone(), memtable.clone(), keys),
        };
        Ok(Self {
            engine,
            memtable,
            path: dir.to_owned(),
            epoch,
            tokens: AtomicU64::new(0),
            requests: tx,
            threads: Mutex::new(threads),
            filter: Mutex::new(filter),
            shared,
        })
    }

    /// The engine. It may lag behind the log by the writes still in the memtable
    /// (at most 131,072 writes); [`KvBackend`] reads through both.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl<E: Engine> KvBackend for LogBackend<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.memtable.get(&*self.engine, key)
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.memtable.range(&*self.engine, from, to, limit)
    }

    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<Staged> {
        let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        let request = Request::Commit { batch, applied: Some(applied_tx), durable: durable_tx, on_durable };
        self.requests.send(request).map_err(|_| Error::StoreClosed)?;
        let applied = applied_rx.await.map_err(|_| Error::StoreClosed)??;
        Ok(Staged { applied, durable: Durable::pending(durable_rx) })
    }

    async fn submit(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<Durable> {
        debug_assert!(batch.expect.is_empty(), "submit takes blind writes only");
        // Nobody waits for it to be applied: a failure to apply poisons the store, which
        // the durable answer then reports.
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        let request = Request::Commit { batch, applied: None, durable: durable_tx, on_durable };
        self.requests.send(request).map_err(|_| Error::StoreClosed)?;
        Ok(Durable::pending(durable_rx))
    }

    async fn flush(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.send(Request::Flush { reply: tx }).map_err(|_| Error::StoreClosed)?;
        rx.await.map_err(|_| Error::StoreClosed)?
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next_token(&self) -> Result<FencingToken> {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= 1 << TOKEN_BITS {
            return Err(Error::StorePoisoned {
                cause: "fencing tokens of this open are used up; reopen the store".into(),
            });
        }
        Ok((self.epoch << TOKEN_BITS) | n)
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            disk_bytes: self.engine.disk_bytes(),
            filter_builds: self.memtable.filter_builds(),
        }
    }
}

impl<E> Drop for LogBackend<E> {
    fn drop(&mut self) {
        self.memtable.stop_filter();
        let _ = self.requests.send(Request::Stop);
        for t in self.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.filter.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

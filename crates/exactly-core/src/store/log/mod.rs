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
#[cfg(any(test, exactly_loom))]
pub(crate) mod snapshots;
#[cfg(test)]
mod tests;
pub(crate) mod wal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use self::committer::{Request, Shared};
use self::memtable::Memtable;
use self::wal::Wal;
pub use self::wal::recover::Cut;
use self::wal::recover::{Mode, Recovery, Refusal};
use super::FencingToken;
use super::local::{
    AppliedWrite, BackendStats, Durable, KvBackend, LocalStore, OnDurable, WriteBatch, check_format, open_meta,
};
use crate::sync::{mpsc, thread::JoinHandle};
use crate::{Error, Result};

/// One write of a group: a key and its new value, `None` to delete.
pub(crate) type Op = (Vec<u8>, Option<Bytes>);

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
    /// The longest key and the largest value it takes.
    fn limits(&self) -> EngineLimits {
        EngineLimits::default()
    }
}

/// The longest key and the largest value an [`Engine`] takes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// The longest key.
    pub max_key: usize,
    /// The largest value.
    pub max_value: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self { max_key: u16::MAX as usize, max_value: u32::MAX as usize }
    }
}

/// The fewest done keys the filter of new keys is sized for, by default.
pub const DEFAULT_FILTER_KEYS: u64 = 1 << 20;

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
        Self { segment_size: 16 * 1024 * 1024, max_batch: 4096, observer: None, filter_keys: DEFAULT_FILTER_KEYS }
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
    cuts: Vec<Cut>,
    /// The store directory's lock, held until everything above is closed.
    #[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
    dir: Option<crate::store::disk::StoreDirLock>,
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

/// The error of an open refused by recovery.
fn refusal(dir: &Path, r: Refusal) -> Error {
    match r {
        Refusal::Damaged { file, offset, what } => Error::StoreDamaged { path: dir.to_owned(), file, offset, what },
        Refusal::Io { file, source } => {
            open_io(dir, &format!("cannot read its write-ahead log ({})", file.display()), source)
        }
    }
}

fn open_io(dir: &Path, what: &str, e: std::io::Error) -> Error {
    Error::StoreOpen { path: dir.to_owned(), reason: format!("{what}: {e}"), source: Some(Box::new(e)) }
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
    /// sync and engine threads. Damage to the log that may have cost acknowledged records
    /// refuses the open ([`Error::StoreDamaged`]) and changes nothing on disk.
    pub fn open(engine: E, dir: &Path, options: LogOptions) -> Result<Self> {
        Self::open_in(engine, dir, options, Mode::Open)
    }

    /// Opens a store whose log is damaged, keeping every record that can be read (see
    /// `exactly store repair`); [`LogBackend::recovery_cuts`] says what was cut.
    pub fn repair(engine: E, dir: &Path, options: LogOptions) -> Result<Self> {
        Self::open_in(engine, dir, options, Mode::Repair)
    }

    fn open_in(engine: E, dir: &Path, options: LogOptions, mode: Mode) -> Result<Self> {
        let recovery = Self::recover(dir, mode)?;
        Self::open_recovered(engine, dir, options, recovery)
    }

    /// Reads the log of the store in `dir` back, writing nothing: an open it refuses
    /// leaves the store as it was.
    pub(crate) fn recover(dir: &Path, mode: Mode) -> Result<Recovery> {
        wal::recover::recover(&dir.join("wal"), mode, committer::MAX_IN_FLIGHT as u64).map_err(|r| refusal(dir, r))
    }

    /// Replays what [`LogBackend::recover`] read into the engine and starts the log.
    pub(crate) fn open_recovered(engine: E, dir: &Path, options: LogOptions, recovery: Recovery) -> Result<Self> {
        let wal_dir = dir.join("wal");
        // Refuse a newer format before writing anything.
        check_format(|k| engine.get(k), dir)?;
        for payload in &recovery.payloads {
            let ops = wal::decode(payload).ok_or_else(|| Error::StoreCorrupt {
                key: "write-ahead log".into(),
                reason: "a record with a valid checksum does not decode".into(),
            })?;
            engine.apply(&ops)?;
        }
        let (epoch, writes) = open_meta(|k| engine.get(k), dir)?;
        let writes: Vec<Op> = writes.into_iter().map(|(k, v)| (k, Some(v))).collect();
        engine.apply(&writes)?;
        engine.checkpoint()?;
        for cut in &recovery.cuts {
            tracing::warn!(file = %cut.file.display(), offset = cut.offset, acknowledged = cut.acknowledged, "cut from the write-ahead log: {}", cut.what);
        }
        let replayed = recovery.payloads.len();
        // Groups are numbered from the epoch up, above every group of earlier opens.
        let last_group = recovery.last_group.max(epoch << TOKEN_BITS);
        let wal = Wal::start(&wal_dir, options.segment_size, &recovery, last_group)
            .map_err(|e| open_io(dir, "cannot start its write-ahead log", e))?;
        if replayed > 0 {
            tracing::info!(path = %dir.display(), replayed, "replayed the write-ahead log");
        }
        let engine = Arc::new(engine);
        let memtable = Arc::new(Memtable::default());
        let shared = Arc::new(Shared::default());
        let filter_keys = options.filter_keys;
        let start = committer::Start { wal, last_group, dir: dir.to_owned() };
        let (tx, threads) = committer::start(engine.clone(), memtable.clone(), start, options, shared.clone())
            .map_err(|e| open_io(dir, "cannot start the commit threads", e))?;
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
            cuts: recovery.cuts,
            #[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
            dir: None,
        })
    }

    /// Keeps the store directory locked as long as the store is open.
    #[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
    pub(crate) fn hold(&mut self, dir: crate::store::disk::StoreDirLock) {
        self.dir = Some(dir);
    }

    /// What the open cut from the log (a torn tail) or, for a repair, stepped over.
    pub fn recovery_cuts(&self) -> &[Cut] {
        &self.cuts
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
        self.shared.check()?;
        self.memtable.get(&*self.engine, key)
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.shared.check()?;
        if from >= to {
            return Ok(Vec::new());
        }
        self.memtable.range(&*self.engine, from, to, limit)
    }

    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite> {
        let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        let request = Request::Commit { batch, applied: Some(applied_tx), durable: durable_tx, on_durable };
        self.requests.send(request).map_err(|_| Error::StoreClosed)?;
        let applied = applied_rx.await.map_err(|_| Error::StoreClosed)??;
        Ok(AppliedWrite { applied, durable: Durable::pending(durable_rx) })
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

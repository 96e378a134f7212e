//! The default on-disk store: sled under the write-ahead log.

mod files;

use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;

use self::files::SledFiles;
use super::{EngineSettings, OpenEngine};
use crate::store::local::LocalStore;
use crate::store::log::{Engine, LogBackend, Op};
use crate::{Error, Result};

/// sled as an [`Engine`]: writes are applied in memory; a checkpoint flushes sled and
/// fsyncs its log file and any new blob files (sled's own flush does neither).
pub struct SledEngine {
    db: sled::Db,
    files: Mutex<SledFiles>,
}

impl fmt::Debug for SledEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledEngine").finish_non_exhaustive()
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.db.get(key).map(|v| v.map(|v| Bytes::copy_from_slice(&v))).map_err(|e| Error::io("read", e))
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.db
            .range(from..to)
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), Bytes::copy_from_slice(&v))).map_err(|e| Error::io("read", e)))
            .collect()
    }

    /// One `insert` or `remove` per write, not a `sled::Batch`: sled's `apply_batch`
    /// takes a process-wide write lock that every `get` then waits for, on the runtime
    /// threads that look up claims (docs/PERFORMANCE.md). The group needs no atomicity in
    /// sled: it is durable in the log before it comes here (see [`Engine`]).
    fn apply(&self, ops: &[Op]) -> Result<()> {
        for (k, v) in ops {
            match v {
                Some(v) => self.db.insert(k.as_slice(), v.as_ref()).map(drop),
                None => self.db.remove(k.as_slice()).map(drop),
            }
            .map_err(|e| Error::io("write", e))?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<u64> {
        self.db.flush().map_err(|e| Error::io("flush", e))?;
        self.files.lock().unwrap_or_else(|p| p.into_inner()).sync().map_err(|e| Error::io("fsync", e))
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }
}

impl OpenEngine for SledEngine {
    const NAME: &'static str = "sled";
    const FILES: &'static [&'static str] = &["db", "conf"];

    fn open_engine(path: &Path, settings: &EngineSettings) -> Result<Self> {
        let fail = |reason: String, e: Option<Box<dyn std::error::Error + Send + Sync>>| Error::StoreOpen {
            path: path.to_owned(),
            reason,
            source: e,
        };
        let config = sled::Config::new().path(path).cache_capacity(settings.cache_size).flush_every_ms(None);
        // sled releases its directory's lock lazily after the last handle in this process
        // is dropped (spacejam/sled#1234): a store closed and reopened at once can find it
        // still held for a moment, after the store's own lock was released.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        }
        .map_err(|e| {
            let text = e.to_string();
            let reason = if is_lock_error(&e) {
                "another process has it open (is a consumer running on this store?)".to_owned()
            } else if text.to_lowercase().contains("permission denied") {
                "permission denied; check the directory's owner and mode".to_owned()
            } else {
                format!("sled could not open it: {text}")
            };
            fail(reason, Some(Box::new(e)))
        })?;
        let files = SledFiles::new(path, settings.observer.clone())
            .map_err(|e| fail(format!("cannot open its files to fsync them: {e}"), Some(Box::new(e))))?;
        files.sync_all().map_err(|e| Error::io("fsync", e))?;
        Ok(SledEngine { db, files: Mutex::new(files) })
    }
}

/// The default store: sled on disk behind a write-ahead log with group commit.
///
/// One process opens a store at a time: a second open waits a second for the directory's
/// lock, then fails with a message saying so.
///
/// ```
/// # fn main() -> Result<(), exactly_core::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = exactly_core::SledStore::open(dir.path().join("dedup"))?;
/// assert!(exactly_core::SledStore::open(dir.path().join("dedup")).is_err());
/// # drop(store); Ok(()) }
/// ```
pub type SledStore = LocalStore<LogBackend<SledEngine>>;

/// Settings of a [`SledStore`].
pub type SledStoreBuilder = super::DiskStoreBuilder<SledEngine>;

/// How long an open waits for sled's lock on the directory to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn is_lock_error(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

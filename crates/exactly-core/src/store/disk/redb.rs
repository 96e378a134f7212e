//! A second on-disk store: redb under the write-ahead log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, TableDefinition};

use super::local::{DEFAULT_BUCKET_WIDTH_MS, LocalStore};
use super::log::{Engine, FsyncObserver, LogBackend, LogOptions, Op};
use crate::clock::Millis;
use crate::{Error, Result};

const TABLE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("exactly");

/// redb as an [`Engine`]: each group is one redb transaction committed without a sync;
/// a checkpoint is a durable (fsynced) commit.
pub struct RedbEngine {
    db: Database,
    file: PathBuf,
    observer: Option<Arc<dyn FsyncObserver>>,
}

impl fmt::Debug for RedbEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbEngine").field("file", &self.file).finish()
    }
}

fn io(operation: &'static str) -> impl Fn(redb::Error) -> Error {
    move |e| Error::io(operation, e)
}

impl Engine for RedbEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let tx = self.db.begin_read().map_err(|e| Error::io("read", redb::Error::from(e)))?;
        let table = tx.open_table(TABLE).map_err(|e| Error::io("read", redb::Error::from(e)))?;
        let value = table.get(key).map_err(|e| Error::io("read", redb::Error::from(e)))?;
        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let tx = self.db.begin_read().map_err(|e| Error::io("read", redb::Error::from(e)))?;
        let table = tx.open_table(TABLE).map_err(|e| Error::io("read", redb::Error::from(e)))?;
        let mut out = Vec::new();
        for item in table.range(from..to).map_err(|e| Error::io("read", redb::Error::from(e)))?.take(limit) {
            let (k, v) = item.map_err(|e| Error::io("read", redb::Error::from(e)))?;
            out.push((k.value().to_vec(), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        self.apply_groups(&[ops])
    }

    /// One write transaction (not durable) for all the groups.
    fn apply_groups(&self, groups: &[&[Op]]) -> Result<()> {
        let write = || -> std::result::Result<(), redb::Error> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::None)?;
            {
                let mut table = tx.open_table(TABLE)?;
                for (k, v) in groups.iter().flat_map(|ops| ops.iter()) {
                    match v {
                        Some(v) => {
                            table.insert(k.as_slice(), v.as_ref())?;
                        }
                        None => {
                            table.remove(k.as_slice())?;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(())
        };
        write().map_err(io("write"))
    }

    fn checkpoint(&self) -> Result<u64> {
        let sync = || -> std::result::Result<(), redb::Error> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.commit()?;
            Ok(())
        };
        sync().map_err(io("checkpoint"))?;
        if let Some(o) = &self.observer {
            o.synced(&self.file);
        }
        Ok(1)
    }

    fn disk_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.file).ok().map(|m| m.len())
    }
}

/// An on-disk store on redb, behind the same write-ahead log as [`SledStore`](super::SledStore).
/// redb writes are several times cheaper in CPU than sled's, which matters on small
/// machines; see docs/PERFORMANCE.md.
///
/// ```
/// # fn main() -> Result<(), exactly_core::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = exactly_core::store::RedbStore::open(dir.path().join("dedup"))?;
/// # drop(store); Ok(()) }
/// ```
pub type RedbStore = LocalStore<LogBackend<RedbEngine>>;

impl LocalStore<LogBackend<RedbEngine>> {
    /// Opens (or creates) a store in the directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open()
    }

    /// Starts configuring a store in the directory `path`.
    pub fn builder(path: impl AsRef<Path>) -> RedbStoreBuilder {
        RedbStoreBuilder {
            path: path.as_ref().to_owned(),
            bucket_width: DEFAULT_BUCKET_WIDTH_MS,
            cache_size: 256 * 1024 * 1024,
            log: LogOptions::default(),
        }
    }
}

/// Settings of a [`RedbStore`].
#[must_use]
#[derive(Debug)]
pub struct RedbStoreBuilder {
    path: PathBuf,
    bucket_width: Millis,
    cache_size: usize,
    log: LogOptions,
}

impl RedbStoreBuilder {
    super::log::log_store_settings!();

    /// redb's cache size in bytes (default 256 MiB).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Opens the store.
    pub fn open(self) -> Result<RedbStore> {
        let path = self.path;
        super::log::store_dir(&path)?;
        let fail = super::log::open_error(&path);
        let file = path.join("data.redb");
        let db = Database::builder().set_cache_size(self.cache_size).create(&file).map_err(|e| {
            let reason = match &e {
                DatabaseError::DatabaseAlreadyOpen => {
                    "another process has it open (is a consumer running on this store?)".to_owned()
                }
                other => format!("redb could not open it: {other}"),
            };
            fail(reason, Some(Box::new(e)))
        })?;
        let create = || -> std::result::Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(TABLE)?;
            tx.commit()?;
            Ok(())
        };
        create().map_err(io("create table"))?;
        let engine = RedbEngine { db, file, observer: self.log.observer.clone() };
        let backend = LogBackend::open(engine, &path, self.log)?;
        Ok(LocalStore::with_backend(backend, self.bucket_width))
    }
}

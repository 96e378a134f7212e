//! A second on-disk store: redb under the write-ahead log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, TableDefinition};

use super::{EngineSettings, OpenEngine};
use crate::store::local::LocalStore;
use crate::store::log::wal::sync_dir;
use crate::store::log::{Engine, FsyncObserver, LogBackend, Op};
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

#[cfg(feature = "bench-native")]
impl RedbEngine {
    /// One write transaction, committed with an fsync (the native prototype).
    pub(crate) fn apply_durably(&self, ops: &[Op]) -> Result<()> {
        let write = || -> std::result::Result<(), redb::Error> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            {
                let mut table = tx.open_table(TABLE)?;
                for (k, v) in ops {
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
}

impl OpenEngine for RedbEngine {
    const NAME: &'static str = "redb";
    const FILES: &'static [&'static str] = &["data.redb"];

    fn open_engine(path: &Path, settings: &EngineSettings) -> Result<Self> {
        let fail = |reason: String, e: redb::DatabaseError| Error::StoreOpen {
            path: path.to_owned(),
            reason,
            source: Some(Box::new(e)),
        };
        let file = path.join("data.redb");
        let existed = file.exists();
        let cache = usize::try_from(settings.cache_size).unwrap_or(usize::MAX);
        let db = Database::builder().set_cache_size(cache).create(&file).map_err(|e| {
            let reason = match &e {
                DatabaseError::DatabaseAlreadyOpen => {
                    "another process has it open (is a consumer running on this store?)".to_owned()
                }
                other => format!("redb could not open it: {other}"),
            };
            fail(reason, e)
        })?;
        if !existed {
            // The new file's name must survive a crash as well as its contents.
            sync_dir(path).map_err(|e| Error::io("fsync", e))?;
        }
        let create = || -> std::result::Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(TABLE)?;
            tx.commit()?;
            Ok(())
        };
        create().map_err(io("create table"))?;
        Ok(RedbEngine { db, file, observer: settings.observer.clone() })
    }
}

/// An on-disk store on redb, behind the same write-ahead log as [`SledStore`](crate::SledStore).
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

/// Settings of a [`RedbStore`].
pub type RedbStoreBuilder = super::DiskStoreBuilder<RedbEngine>;

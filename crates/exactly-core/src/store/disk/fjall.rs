//! A third on-disk store: fjall (an LSM tree) under the write-ahead log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{EngineSettings, OpenEngine};
use crate::store::local::LocalStore;
use crate::store::log::{Engine, EngineLimits, FsyncObserver, LogBackend, Op};
use crate::{Error, Result};

/// The keyspace (fjall's column family) that holds the records.
const KEYSPACE: &str = "exactly";

/// fjall as an [`Engine`]: each call is one fjall write batch, kept in fjall's memtable and
/// its journal without a sync; a checkpoint fsyncs fjall's journal
/// (`persist(SyncAll)`). fjall writes its sorted tables in the background, each fsynced
/// before the journal that held their writes is dropped.
pub struct FjallEngine {
    db: Database,
    records: Keyspace,
    dir: PathBuf,
    observer: Option<Arc<dyn FsyncObserver>>,
}

impl fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallEngine").field("dir", &self.dir).finish()
    }
}

/// An I/O error as itself ("Read-only file system (os error 30)"): fjall's own error shows
/// its Debug form.
fn io(operation: &'static str) -> impl Fn(fjall::Error) -> Error {
    move |e| match e {
        fjall::Error::Io(io) => Error::io(operation, io),
        other => Error::io(operation, other),
    }
}

impl Engine for FjallEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let value = self.records.get(key).map_err(io("read"))?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let mut out = Vec::new();
        for item in self.records.range(from..to).take(limit) {
            let (k, v) = item.into_inner().map_err(io("read"))?;
            out.push((k.to_vec(), Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        self.apply_groups(&[ops])
    }

    /// One write batch (not synced) for all the groups.
    fn apply_groups(&self, groups: &[&[Op]]) -> Result<()> {
        let mut batch = self.db.batch();
        for (k, v) in groups.iter().flat_map(|ops| ops.iter()) {
            match v {
                Some(v) => batch.insert(&self.records, k.as_slice(), v.as_ref()),
                None => batch.remove(&self.records, k.as_slice()),
            }
        }
        batch.commit().map_err(io("write"))
    }

    fn checkpoint(&self) -> Result<u64> {
        self.db.persist(PersistMode::SyncAll).map_err(io("checkpoint"))?;
        if let Some(o) = &self.observer {
            o.synced(&self.dir);
        }
        Ok(1)
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.db.disk_space().ok()
    }

    /// fjall takes keys of up to 65,535 bytes: a longer one panics its engine thread.
    fn limits(&self) -> EngineLimits {
        EngineLimits { max_key: usize::from(u16::MAX), max_value: u32::MAX as usize }
    }
}

/// The records' keyspace is tuned for point reads of duplicates, which are the engine's
/// only hot reads (a new key is answered by the filter in front of it): data blocks are
/// not compressed (a done-record's payload hash does not compress, so lz4 saved no clear
/// space and cost a decompression per block read), each data block carries a hash index,
/// and every level's filter blocks stay in memory (10 bits a key). Together they answer
/// duplicates faster than fjall's defaults (figures in docs/PERFORMANCE.md). fjall stores
/// these options with the keyspace when it creates it; a store created with other options
/// keeps them.
fn keyspace_options() -> KeyspaceCreateOptions {
    use fjall::config::{CompressionPolicy, HashRatioPolicy, PinningPolicy};
    KeyspaceCreateOptions::default()
        .data_block_compression_policy(CompressionPolicy::all(fjall::CompressionType::None))
        .data_block_hash_ratio_policy(HashRatioPolicy::all(0.75))
        .filter_block_pinning_policy(PinningPolicy::all(true))
}

#[cfg(feature = "bench-native")]
impl FjallEngine {
    /// An fdatasync of fjall's journal (the native prototype).
    pub(crate) fn persist_data(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncData).map_err(io("persist"))
    }
}

impl OpenEngine for FjallEngine {
    const NAME: &'static str = "fjall";
    const FILES: &'static [&'static str] = &["fjall"];

    fn open_engine(path: &Path, settings: &EngineSettings) -> Result<Self> {
        let fail = |reason: String, e: fjall::Error| Error::StoreOpen {
            path: path.to_owned(),
            reason,
            source: Some(Box::new(e)),
        };
        let dir = path.join("fjall");
        // fjall syncs its journal only when asked: at a checkpoint. The write-ahead log
        // in front of it makes each group durable.
        let db = Database::builder(&dir).cache_size(settings.cache_size).manual_journal_persist(true).open().map_err(
            |e| {
                let reason = match &e {
                    fjall::Error::Locked => {
                        "another process has it open (is a consumer running on this store?)".to_owned()
                    }
                    fjall::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                        "permission denied; check the directory's owner and mode".to_owned()
                    }
                    fjall::Error::Io(io) => format!("fjall could not open it: {io}"),
                    other => format!("fjall could not open it: {other}"),
                };
                fail(reason, e)
            },
        )?;
        let records = db
            .keyspace(KEYSPACE, keyspace_options)
            .map_err(|e| fail(format!("fjall could not open its keyspace: {e}"), e))?;
        Ok(FjallEngine { db, records, dir, observer: settings.observer.clone() })
    }
}

/// An on-disk store on fjall, behind the same write-ahead log as
/// [`SledStore`](crate::SledStore). An LSM tree takes a write into memory and sorts it to
/// disk later in large runs, so a done-record costs a fraction of the CPU of sled's or
/// redb's B-tree insert; see docs/PERFORMANCE.md.
///
/// ```
/// # fn main() -> Result<(), exactly_core::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = exactly_core::store::FjallStore::open(dir.path().join("dedup"))?;
/// # drop(store); Ok(()) }
/// ```
pub type FjallStore = LocalStore<LogBackend<FjallEngine>>;

/// Settings of a [`FjallStore`].
pub type FjallStoreBuilder = super::DiskStoreBuilder<FjallEngine>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_io_error_at_open_reads_as_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // fjall's directory is taken by a file.
        std::fs::write(dir.path().join("fjall"), b"x").unwrap();
        let err = FjallStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("fjall could not open it: "), "{err}");
        assert!(!err.contains("Os {"), "the I/O error shows in its Debug form: {err}");
    }
}

//! The on-disk stores: an engine (sled, redb or fjall) under the write-ahead log, opened
//! by one builder.
//!
//! Opening a store: lock its directory (a second process waits, then is refused), find
//! what it holds (its identity file names the engine; a store that lost files, or is of
//! another engine, is refused), open the engine, replay the log ([`LogBackend::open`]),
//! and, for a new store, write the identity file last.

mod dir;
#[cfg(feature = "fjall")]
mod fjall;
#[cfg(feature = "bench-native")]
#[doc(hidden)]
pub mod native;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "sled")]
mod sled;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use self::dir::StoreDir as StoreDirLock;
use self::dir::{Found, StoreDir};
#[cfg(feature = "fjall")]
pub use self::fjall::{FjallStore, FjallStoreBuilder};
#[cfg(feature = "redb")]
pub use self::redb::{RedbStore, RedbStoreBuilder};
#[cfg(feature = "sled")]
pub use self::sled::{SledStore, SledStoreBuilder};
use super::local::{DEFAULT_BUCKET_WIDTH_MS, LocalStore};
use super::log::wal::recover::Mode;
use super::log::{Cut, Engine, FsyncObserver, LogBackend, LogOptions};
use crate::Result;
use crate::clock::Millis;

/// What an engine needs to open.
#[derive(Clone, Default)]
pub struct EngineSettings {
    /// Bytes of memory for the engine's cache of its files.
    pub cache_size: u64,
    /// Told of every fsync the engine makes.
    pub observer: Option<Arc<dyn FsyncObserver>>,
}

/// An engine a [`DiskStoreBuilder`] can open.
pub trait OpenEngine: Engine + Sized {
    /// Its name, as configuration and the identity file spell it.
    const NAME: &'static str;
    /// Files or directories (relative to the store directory) every store of this engine
    /// has, and no other engine makes.
    const FILES: &'static [&'static str];
    /// Opens (or creates) the engine's files in the store directory `dir`.
    fn open_engine(dir: &Path, settings: &EngineSettings) -> Result<Self>;
}

/// Every engine built in, to recognise stores made before identity files.
const ENGINES: &[(&str, &[&str])] = &[("sled", &["db", "conf"]), ("redb", &["data.redb"]), ("fjall", &["fjall"])];

/// How long an open waits for another process to let the directory go.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Settings of an on-disk store ([`SledStore`](crate::SledStore),
/// [`RedbStore`](crate::store::RedbStore), [`FjallStore`](crate::store::FjallStore)).
/// Every setting has a default.
#[must_use]
pub struct DiskStoreBuilder<E> {
    path: PathBuf,
    bucket_width: Millis,
    cache_size: u64,
    create_if_missing: bool,
    lock_wait: Duration,
    log: LogOptions,
    engine: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for DiskStoreBuilder<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStoreBuilder")
            .field("path", &self.path)
            .field("bucket_width_ms", &self.bucket_width)
            .field("cache_size", &self.cache_size)
            .field("create_if_missing", &self.create_if_missing)
            .field("log", &self.log)
            .finish()
    }
}

impl<E: OpenEngine> DiskStoreBuilder<E> {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            bucket_width: DEFAULT_BUCKET_WIDTH_MS,
            cache_size: 256 * 1024 * 1024,
            create_if_missing: true,
            lock_wait: LOCK_WAIT,
            log: LogOptions::default(),
            engine: PhantomData,
        }
    }

    /// Width of an expiry bucket (default one hour). A record is purged at most this
    /// long after it expires; the purge removes whole buckets.
    pub fn bucket_width(mut self, width: Duration) -> Self {
        self.bucket_width = crate::clock::duration_millis(width).max(1);
        self
    }

    /// Bytes of memory for the engine's cache of its files (default 256 MiB). Duplicates
    /// are read from the engine: a cache that holds the store answers them without
    /// reading the disk (docs/PERFORMANCE.md).
    pub fn cache_size(mut self, bytes: u64) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Whether an open of a directory that holds no store makes a new, empty one
    /// (default `true`). Turn it off once a store is in service: a store whose
    /// directory was lost is then refused at the next start, instead of starting empty
    /// and handling again every message within the retention.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// The most completions one group commit takes (default 4096).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.log.max_batch = n.max(1);
        self
    }

    /// Size of one write-ahead log segment (default 16 MiB). The engine is checkpointed
    /// each time a segment fills; recovery replays at most about one segment.
    pub fn wal_segment_size(mut self, bytes: u64) -> Self {
        self.log.segment_size = bytes.max(4096);
        self
    }

    /// The fewest done keys the in-memory filter of new keys is sized for (default
    /// 1,048,576; it grows with the store, at a few bytes a live key: docs/PERFORMANCE.md).
    /// A key the filter has never seen is answered as new without reading the engine.
    /// 0 turns the filter off.
    pub fn filter_keys(mut self, keys: u64) -> Self {
        self.log.filter_keys = keys;
        self
    }

    /// Called after every successful fsync (of the log, and of the engine at each
    /// checkpoint) with the synced path; for tests and metrics.
    pub fn on_fsync(mut self, observer: impl FsyncObserver) -> Self {
        self.log.observer = Some(Arc::new(observer));
        self
    }

    /// Opens the store. A store whose log is damaged where acknowledged records were is
    /// refused ([`Error::StoreDamaged`](crate::Error::StoreDamaged)); see
    /// [`repair`](Self::repair).
    pub fn open(self) -> Result<LocalStore<LogBackend<E>>> {
        self.open_in(Mode::Open)
    }

    /// Opens a damaged store, keeping every log record that can be read, and says what
    /// was cut (`exactly store repair`). Records written after a damaged one are kept:
    /// their messages were acknowledged. What the damaged ones held is lost.
    pub fn repair(self) -> Result<(LocalStore<LogBackend<E>>, Vec<Cut>)> {
        let store = self.open_in(Mode::Repair)?;
        let cuts = store.backend().recovery_cuts().to_vec();
        Ok((store, cuts))
    }

    fn open_in(self, mode: Mode) -> Result<LocalStore<LogBackend<E>>> {
        let dir = StoreDir::lock(&self.path, self.create_if_missing, self.lock_wait)?;
        let found = dir.found(ENGINES)?;
        if let Found::Store { engine, .. } = &found {
            if !engine.is_empty() && engine != E::NAME {
                return Err(dir::open_error(
                    dir.path(),
                    format!(
                        "it is a {engine} store, not a {} one; open it with its engine (store.engine = \"{engine}\" \
                         in the app's configuration, --engine {engine} for the CLI)",
                        E::NAME
                    ),
                    None,
                ));
            }
            dir.check_complete(E::NAME, E::FILES)?;
        }
        // The log first: damage is refused before the engine's own recovery writes anything.
        let recovery = LogBackend::<E>::recover(dir.path(), mode)?;
        let settings = EngineSettings { cache_size: self.cache_size, observer: self.log.observer.clone() };
        let engine = E::open_engine(dir.path(), &settings)?;
        let mut backend = LogBackend::open_recovered(engine, dir.path(), self.log, recovery)?;
        if !matches!(found, Found::Store { identified: true, .. }) {
            dir.identify(E::NAME)?;
        }
        tracing::debug!(path = %dir.path().display(), engine = E::NAME, "opened the store");
        backend.hold(dir);
        Ok(LocalStore::with_backend(backend, self.bucket_width))
    }
}

/// The engine of the store in `path` (`sled`, `redb` or `fjall`), as its identity file
/// names it (or, for a store made before identity files, as its files show); `None` when
/// there is no store there. For tools that open a store without being told its engine.
pub fn engine_at(path: &Path) -> Option<String> {
    if let Some(engine) = std::fs::read_to_string(path.join(dir::IDENTITY)).ok().and_then(|t| dir::parse_identity(&t)) {
        return Some(engine);
    }
    ENGINES.iter().find(|(_, files)| files.iter().all(|f| path.join(f).exists())).map(|(name, _)| (*name).to_owned())
}

impl<E: OpenEngine> LocalStore<LogBackend<E>> {
    /// Opens (or creates) a store in the directory `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open()
    }

    /// Starts configuring a store in the directory `path`.
    pub fn builder(path: impl AsRef<Path>) -> DiskStoreBuilder<E> {
        DiskStoreBuilder::new(path.as_ref())
    }
}

//! The commit thread ([`commit`]), the sync thread ([`sync`]) and the engine thread
//! ([`apply`]).
//!
//! The commit thread builds a group from every waiting request, writes it to the log,
//! puts it in the [`Memtable`] (where reads see it) and hands it to the sync thread. The
//! sync thread fsyncs the log, answers the group's requests and passes its writes on to
//! the engine thread: the engine gets only writes that are durable in the log, so it
//! need not apply a group atomically (see [`Engine`]). While one group syncs, the next
//! is being written, and one fsync covers every group written before it started. At most
//! two groups are written and not yet synced: beyond that the commit thread waits, so
//! requests gather into larger groups instead of many small ones. Each group's record
//! carries its number and the highest group the commit thread knew durable when it wrote
//! it, which is what lets recovery tell a torn tail from damage (see [`wal::recover`]).
//!
//! The engine thread applies the groups to the engine, as many as have come at once in
//! one call, and then retires them from the memtable. When a log segment fills (or a
//! flush asks), the commit thread hands a checkpoint to the sync thread behind the groups
//! before it, and the sync thread passes it on to the engine thread once those are
//! synced; the engine thread, having applied them, flushes the engine and recycles the
//! full segments. So neither applying to the engine nor its flush (tens of milliseconds;
//! sled's blocks its own writers, redb's holds its write lock) holds up a commit: they
//! hold up only the engine thread, and the commit thread waits for it only when
//! [`MAX_UNAPPLIED`] writes are waiting for the engine.

mod apply;
mod commit;
mod sync;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use self::apply::Applier;
use self::commit::Committer;
use self::sync::{Syncer, Watch};
use super::memtable::Memtable;
use super::wal::{Covered, Wal};
use super::{Engine, LogOptions, Op};
use crate::store::local::{OnDurable, WriteBatch};
use crate::sync::mpsc::{self, Sender};
use crate::sync::thread::{self, JoinHandle};
use crate::{Error, Result};

pub(super) use self::commit::MAX_IN_FLIGHT;

pub(super) enum Request {
    /// A write: `applied`, if someone waits for it, is answered once it is applied (or
    /// refused), `durable` and `on_durable` once it is on disk.
    Commit {
        batch: WriteBatch,
        applied: Option<oneshot::Sender<Result<bool>>>,
        durable: oneshot::Sender<Result<()>>,
        on_durable: Option<OnDurable>,
    },
    /// Answered once everything before it is durable and the engine is checkpointed.
    Flush {
        reply: oneshot::Sender<Result<()>>,
    },
    Stop,
}

/// The answer to whoever waits for a write or a checkpoint: done, or failed with
/// `failure` (the store is poisoned).
fn answer(failure: Option<&str>) -> Result<()> {
    match failure {
        None => Ok(()),
        Some(cause) => Err(Error::StorePoisoned { cause: cause.to_owned() }),
    }
}

/// Tells whoever waits for a write whether it was applied.
fn answer_applied(applied: Option<oneshot::Sender<Result<bool>>>, result: Result<bool>) {
    if let Some(tx) = applied {
        let _ = tx.send(result);
    }
}

/// What the sync thread owes an applied write once its group is durable.
struct Owed {
    durable: oneshot::Sender<Result<()>>,
    on_durable: Option<OnDurable>,
}

impl Owed {
    fn settle(self, failure: Option<&str>) {
        if let Some(f) = self.on_durable {
            f(failure.is_none());
        }
        let _ = self.durable.send(answer(failure));
    }
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) commits: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    /// Whether `poisoned` is set: read by every read of the store.
    failed: AtomicBool,
    /// Set when a write or fsync failed: the durable state is unknown, nothing more is
    /// acknowledged, and nothing is read (a read could see a write that never became
    /// durable).
    poisoned: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn poisoned(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.poisoned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The error of a store that failed, for reads.
    pub(super) fn check(&self) -> Result<()> {
        match self.poisoned() {
            None => Ok(()),
            Some(cause) => Err(Error::StorePoisoned { cause }),
        }
    }

    fn poison(&self, cause: String) {
        tracing::error!(error = %cause, "store failed; refusing further reads and writes until it is reopened");
        self.poisoned.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(cause);
        self.failed.store(true, Ordering::Release);
    }
}

/// A log segment written to, and its path.
type LogFile = (Arc<File>, PathBuf);

/// A group's number and writes, on their way to the engine thread.
type GroupWrites = (u64, Arc<Vec<Op>>);

/// A group in the log: the segment to fsync, where its record starts, and its number and
/// writes for the engine thread once synced.
struct Logged {
    file: LogFile,
    offset: u64,
    writes: GroupWrites,
}

/// A written group waiting for its fsync.
struct Written {
    /// `None` when the group has no writes (only flushes, or every batch refused).
    logged: Option<Logged>,
    owed: Vec<Owed>,
    started: Instant,
}

/// A checkpoint of the engine, and who waits for it.
struct Checkpoint {
    covered: Covered,
    /// Flush requests, answered once the checkpoint is done.
    flushes: Vec<oneshot::Sender<Result<()>>>,
    /// The commit thread at close.
    done: Option<Sender<Result<()>>>,
}

impl Checkpoint {
    /// Answers everyone waiting: done, or failed with `failure`.
    fn answer(self, failure: Option<&str>) {
        for reply in self.flushes {
            let _ = reply.send(answer(failure));
        }
        if let Some(done) = self.done {
            let _ = done.send(answer(failure));
        }
    }
}

enum ToSync {
    /// Answered, and its writes passed on to the engine thread, once synced.
    Group(Written),
    /// Passed on to the engine thread once everything before it is synced.
    Checkpoint(Checkpoint),
    /// The last request: the sync thread stops the engine thread, then itself.
    Stop,
}

enum ToEngine {
    /// The writes of group `group`, to apply and then retire from the memtable.
    Apply {
        group: u64,
        ops: Arc<Vec<Op>>,
    },
    /// Comes after the groups it covers.
    Checkpoint(Checkpoint),
    Stop,
}

/// Where the threads start: the log, and the number of the group before the first one
/// they write.
pub(super) struct Start {
    pub(super) wal: Wal,
    pub(super) last_group: u64,
    /// The store directory, watched for deletion.
    pub(super) dir: PathBuf,
}

pub(super) fn start<E: Engine>(
    engine: Arc<E>,
    memtable: Arc<Memtable>,
    at: Start,
    options: LogOptions,
    shared: Arc<Shared>,
) -> std::io::Result<(Sender<Request>, Vec<JoinHandle<()>>)> {
    let (req_tx, req_rx) = mpsc::channel();
    let (sync_tx, sync_rx) = mpsc::channel();
    let (synced_tx, synced_rx) = mpsc::channel();
    let (engine_tx, engine_rx) = mpsc::channel();
    let (applied_tx, applied_rx) = mpsc::channel();
    let applier = Applier {
        engine: engine.clone(),
        memtable: memtable.clone(),
        requests: engine_rx,
        applied: applied_tx,
        shared: shared.clone(),
    };
    let engine_thread = thread::Builder::new().name("exactly-log-engine".into()).spawn(move || applier.run())?;
    let syncer = Syncer {
        requests: sync_rx,
        synced: synced_tx,
        engine: engine_tx,
        shared: shared.clone(),
        observer: options.observer.clone(),
        highest: at.last_group,
        watch: Watch::new(&at.dir)?,
    };
    let sync_thread = thread::Builder::new().name("exactly-log-sync".into()).spawn(move || syncer.run())?;
    let committer = Committer {
        engine,
        memtable,
        wal: at.wal,
        requests: req_rx,
        to_sync: sync_tx,
        synced: synced_rx,
        in_flight: 0,
        applied: applied_rx,
        unapplied: 0,
        group: at.last_group,
        durable: at.last_group,
        shared,
        max_batch: options.max_batch,
    };
    let commit_thread = thread::Builder::new().name("exactly-log-commit".into()).spawn(move || committer.run())?;
    Ok((req_tx, vec![commit_thread, sync_thread, engine_thread]))
}

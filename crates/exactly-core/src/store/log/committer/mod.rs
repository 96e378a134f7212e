//! The commit thread, the sync thread and the engine thread.
//!
//! The commit thread builds a group from every waiting request, writes it to the log,
//! puts it in the [`Memtable`] (where reads see it) and hands it to the sync thread. The
//! sync thread fsyncs the log, answers the group's requests and passes its writes on to
//! the engine thread: the engine gets only writes that are durable in the log, so it
//! need not apply a group atomically (see [`Engine`]). While one group syncs, the next
//! is being written, and one fsync covers every group written before it started. At most
//! two groups are written and not yet synced: beyond that the commit thread waits, so
//! requests gather into larger groups instead of many small ones.
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

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::memtable::Memtable;
use super::wal::{self, Covered, Wal};
use super::{Engine, FsyncObserver, LogOptions, Op};
use crate::store::local::{WriteBatch, expiry_index_ops};
use crate::sync::mpsc::{self, Receiver, Sender};
use crate::sync::thread::{self, JoinHandle};
use crate::{Error, Result, metrics};

use crate::store::local::OnDurable;

/// A group's writes by key; foldhash rather than std's SipHash (keys are ours, hashed once
/// a write; SipHash showed in the commit thread's profile).
type Overlay = std::collections::HashMap<Vec<u8>, Option<Bytes>, foldhash::fast::RandomState>;

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
    /// Set when a write or fsync failed: the durable state is unknown, nothing more is
    /// acknowledged.
    poisoned: Mutex<Option<String>>,
}

impl Shared {
    fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn poison(&self, cause: String) {
        tracing::error!(error = %cause, "store write failed; refusing further writes until restart");
        self.poisoned.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(cause);
    }
}

/// A log segment written to, and its path.
type LogFile = (Arc<File>, PathBuf);

/// A group's number and writes, on their way to the engine thread.
type GroupWrites = (u64, Arc<Vec<Op>>);

/// A group in the log: the segment to fsync, and its number and writes for the engine
/// thread once synced.
struct Logged {
    file: LogFile,
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
    /// The writes of group `seq`, to apply and then retire from the memtable.
    Apply {
        seq: u64,
        ops: Arc<Vec<Op>>,
    },
    /// Comes after the groups it covers.
    Checkpoint(Checkpoint),
    Stop,
}

pub(super) fn start<E: Engine>(
    engine: Arc<E>,
    memtable: Arc<Memtable>,
    wal: Wal,
    options: LogOptions,
    shared: Arc<Shared>,
    epoch: u64,
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
    };
    let sync_thread = thread::Builder::new().name("exactly-log-sync".into()).spawn(move || syncer.run())?;
    let committer = Committer {
        engine,
        memtable,
        wal,
        requests: req_rx,
        to_sync: sync_tx,
        synced: synced_rx,
        in_flight: 0,
        applied: applied_rx,
        unapplied: 0,
        seq: 0,
        shared,
        max_batch: options.max_batch,
        epoch,
    };
    let commit_thread = thread::Builder::new().name("exactly-log-commit".into()).spawn(move || committer.run())?;
    Ok((req_tx, vec![commit_thread, sync_thread, engine_thread]))
}

struct Committer<E> {
    /// Read (through the memtable) to check expectations; written by the engine thread.
    engine: Arc<E>,
    memtable: Arc<Memtable>,
    wal: Wal,
    requests: Receiver<Request>,
    to_sync: Sender<ToSync>,
    /// One message per group the sync thread has answered.
    synced: Receiver<()>,
    /// Groups handed to the sync thread and not yet answered.
    in_flight: usize,
    /// The number of writes of each group the engine thread has applied.
    applied: Receiver<usize>,
    /// Writes logged and not yet applied to the engine.
    unapplied: usize,
    /// The number of the last group written.
    seq: u64,
    shared: Arc<Shared>,
    max_batch: usize,
    epoch: u64,
}

/// Groups written but not yet synced before the commit thread waits.
const MAX_IN_FLIGHT: usize = 2;

/// Writes logged but not yet applied to the engine before the commit thread waits: what
/// the memtable holds at most (a done record is one write, and a group adds one expiry
/// entry per bucket; about 40 MB of 300-byte writes). Counted in writes, not groups:
/// when the commit thread keeps up, groups are small (what came during one fsync), and
/// 64 groups left the memtable room for a few milliseconds of writes, so whatever held
/// the engine thread for tens of milliseconds (a checkpoint, a slow apply) stopped every
/// commit behind it.
pub(super) const MAX_UNAPPLIED: usize = 1 << 17;

/// Waits until `pending` is below `limit`, taking off `done(answer)` for each answer (a
/// closed channel means nothing is pending any more).
fn wait_below<T>(pending: &mut usize, answers: &Receiver<T>, limit: usize, done: impl Fn(T) -> usize) {
    while let Ok(a) = answers.try_recv() {
        *pending = pending.saturating_sub(done(a));
    }
    while *pending >= limit.max(1) {
        match answers.recv() {
            Ok(a) => *pending = pending.saturating_sub(done(a)),
            Err(_) => {
                *pending = 0;
                break;
            }
        }
    }
}

impl<E: Engine> Committer<E> {
    /// Waits until fewer than `limit` groups are waiting for their fsync.
    fn wait_in_flight(&mut self, limit: usize) {
        wait_below(&mut self.in_flight, &self.synced, limit, |()| 1);
        wait_below(&mut self.unapplied, &self.applied, MAX_UNAPPLIED, |writes| writes);
    }

    fn run(mut self) {
        let mut pending: Vec<Request> = Vec::with_capacity(self.max_batch);
        loop {
            match self.requests.recv() {
                Ok(Request::Stop) | Err(_) => break,
                Ok(first) => pending.push(first),
            }
            // Let requests gather while the sync thread is busy.
            self.wait_in_flight(MAX_IN_FLIGHT);
            let mut stop = false;
            while pending.len() < self.max_batch {
                match self.requests.try_recv() {
                    Ok(Request::Stop) => {
                        stop = true;
                        break;
                    }
                    Ok(r) => pending.push(r),
                    Err(_) => break,
                }
            }
            self.group(&mut pending);
            if stop {
                break;
            }
        }
        // Requests that arrive after Stop are dropped; their senders see StoreClosed.
        if self.shared.poisoned().is_none() {
            let (done, result) = mpsc::channel();
            self.checkpoint(true, Vec::new(), Some(done));
            if let Ok(Err(e)) = result.recv() {
                tracing::warn!(error = %e, "checkpoint at close failed; the log will be replayed at the next open");
            }
        }
        // The sync thread answers everything before this, then stops the checkpoint
        // thread and itself. (Explicitly, not by dropping channels: loom's channels do
        // not model hang-ups.)
        let _ = self.to_sync.send(ToSync::Stop);
    }

    fn group(&mut self, pending: &mut Vec<Request>) {
        if let Some(cause) = self.shared.poisoned() {
            for r in pending.drain(..) {
                match r {
                    Request::Commit { applied, .. } => {
                        answer_applied(applied, Err(Error::StorePoisoned { cause: cause.clone() }));
                    }
                    Request::Flush { reply } => {
                        let _ = reply.send(Err(Error::StorePoisoned { cause: cause.clone() }));
                    }
                    Request::Stop => {}
                }
            }
            return;
        }
        let started = Instant::now();
        // The group's writes, the last one of each key winning: the group is atomic, so
        // only the final value of a key matters (a partition watermark written by every
        // record of the group is written once).
        let mut overlay = Overlay::with_capacity_and_hasher(pending.len() * 2, Default::default());
        let mut expiring = Vec::new();
        let mut admitted = Vec::with_capacity(pending.len());
        let mut flushes = Vec::new();
        for r in pending.drain(..) {
            match r {
                Request::Commit { batch, applied, durable, on_durable } => match self.admit(&batch, &overlay) {
                    Ok(true) => {
                        for (k, v) in batch.ops {
                            overlay.insert(k, v);
                        }
                        expiring.extend(batch.expiring);
                        admitted.push((applied, Owed { durable, on_durable }));
                    }
                    Ok(false) => answer_applied(applied, Ok(false)),
                    Err(e) => answer_applied(applied, Err(e)),
                },
                Request::Flush { reply } => flushes.push(reply),
                Request::Stop => {}
            }
        }
        let mut ops: Vec<Op> = overlay.into_iter().collect();
        if !expiring.is_empty() {
            let n = self.shared.commits.load(Ordering::Relaxed) + 1;
            ops.extend(expiry_index_ops((self.epoch << 40) | (n & ((1 << 40) - 1)), &expiring));
        }
        match self.write(ops) {
            Ok((logged, rotated)) => {
                let mut owed = Vec::with_capacity(admitted.len());
                for (applied, o) in admitted {
                    answer_applied(applied, Ok(true));
                    owed.push(o);
                }
                let writes = logged.as_ref().map_or(0, |l| l.writes.1.len());
                if self.to_sync.send(ToSync::Group(Written { logged, owed, started })).is_ok() {
                    self.in_flight += 1;
                    self.unapplied += writes;
                }
                if rotated || !flushes.is_empty() {
                    self.checkpoint(!flushes.is_empty(), flushes, None);
                }
            }
            Err(e) => {
                let cause = e.to_string();
                self.shared.poison(cause.clone());
                for (applied, _) in admitted {
                    answer_applied(applied, Err(Error::StorePoisoned { cause: cause.clone() }));
                }
                for reply in flushes {
                    let _ = reply.send(Err(Error::StorePoisoned { cause: cause.clone() }));
                }
            }
        }
    }

    /// Whether every expectation of `b` holds, looking through writes admitted earlier in
    /// this group.
    fn admit(&self, b: &WriteBatch, overlay: &Overlay) -> Result<bool> {
        for (k, expected) in &b.expect {
            let current = match overlay.get(k) {
                Some(v) => v.clone(),
                None => self.memtable.get(&*self.engine, k)?,
            };
            if current != *expected {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Logs a group and puts it in the memtable; returns where it was logged (`None`
    /// without writes) and whether a segment filled up (the engine wants a checkpoint).
    fn write(&mut self, ops: Vec<Op>) -> Result<(Option<Logged>, bool)> {
        if ops.is_empty() {
            return Ok((None, false));
        }
        let written = self.wal.write(&wal::encode(&ops)).map_err(|e| Error::io("log write", e))?;
        self.seq += 1;
        self.memtable.insert(self.seq, &ops);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        let logged = Logged { file: (written.file, written.path), writes: (self.seq, Arc::new(ops)) };
        Ok((Some(logged), written.rotated))
    }

    /// Hands a checkpoint of everything written so far to the sync thread, which passes
    /// it to the engine thread once the groups before it are synced. With `rotate`,
    /// the current segment is closed first, so it is covered too (a flush, the close).
    /// `done` is the close's: answered once the checkpoint is done.
    fn checkpoint(
        &mut self,
        rotate: bool,
        flushes: Vec<oneshot::Sender<Result<()>>>,
        done: Option<Sender<Result<()>>>,
    ) {
        let rotated = if rotate { self.wal.rotate_for_checkpoint(done.is_some()) } else { Ok(()) };
        let covered = self.wal.cover();
        let job = Checkpoint { covered, flushes, done };
        if let Err(e) = rotated {
            let cause = format!("rotate log: {e}");
            self.shared.poison(cause.clone());
            job.answer(Some(&cause));
            return;
        }
        if let Err(std::sync::mpsc::SendError(ToSync::Checkpoint(job))) = self.to_sync.send(ToSync::Checkpoint(job)) {
            job.answer(Some("the sync thread has stopped"));
        }
    }
}

/// Applies groups to the engine and retires them from the memtable; runs checkpoints
/// (flushes the engine and recycles the log segments it then covers), in order.
struct Applier<E> {
    engine: Arc<E>,
    memtable: Arc<Memtable>,
    requests: Receiver<ToEngine>,
    /// The number of writes of each group applied.
    applied: Sender<usize>,
    shared: Arc<Shared>,
}

impl<E: Engine> Applier<E> {
    fn run(self) {
        let mut groups: Vec<GroupWrites> = Vec::new();
        loop {
            // Gather every group waiting into one batch; apply it when none is left.
            let next = if groups.is_empty() { self.requests.recv().ok() } else { self.requests.try_recv().ok() };
            match next {
                Some(ToEngine::Apply { seq, ops }) => groups.push((seq, ops)),
                None if !groups.is_empty() => self.apply(&mut groups),
                Some(ToEngine::Checkpoint(mut job)) => {
                    self.apply(&mut groups);
                    let failure = match self.shared.poisoned() {
                        Some(cause) => Some(cause),
                        None => self.checkpoint(&mut job).err().map(|e| {
                            let cause = format!("checkpoint failed: {e}");
                            self.shared.poison(cause.clone());
                            cause
                        }),
                    };
                    job.answer(failure.as_deref());
                }
                Some(ToEngine::Stop) | None => break,
            }
        }
        self.apply(&mut groups);
    }

    /// Applies `groups` in order in one call, then retires them.
    fn apply(&self, groups: &mut Vec<GroupWrites>) {
        let Some(&(last, _)) = groups.last() else { return };
        if self.shared.poisoned().is_none() {
            let slices: Vec<&[Op]> = groups.iter().map(|(_, ops)| ops.as_slice()).collect();
            let result = self.engine.apply_groups(&slices);
            match result {
                // Only now may reads go to the engine for these keys.
                Ok(()) => groups.iter().for_each(|(_, ops)| self.memtable.retire(last, ops)),
                // The groups are in the log (replayed at the next open) and stay in the
                // memtable, so reads still see them; nothing more is written.
                Err(e) => self.shared.poison(format!("applying to the engine failed: {e}")),
            }
        }
        for (_, ops) in groups.drain(..) {
            let _ = self.applied.send(ops.len());
        }
    }

    fn checkpoint(&self, job: &mut Checkpoint) -> Result<()> {
        let n = self.engine.checkpoint()?;
        self.shared.fsyncs.fetch_add(n, Ordering::Relaxed);
        job.covered.finish().map_err(|e| Error::io("recycle log segments", e))
    }
}

struct Syncer {
    requests: Receiver<ToSync>,
    synced: Sender<()>,
    /// The engine thread: synced groups' writes, then checkpoints.
    engine: Sender<ToEngine>,
    shared: Arc<Shared>,
    observer: Option<Arc<dyn FsyncObserver>>,
}

impl Syncer {
    fn run(self) {
        let mut batch = Vec::new();
        while let Ok(first) = self.requests.recv() {
            batch.push(first);
            while let Ok(more) = self.requests.try_recv() {
                batch.push(more);
            }
            let stop = batch.iter().any(|item| matches!(item, ToSync::Stop));
            self.sync(&mut batch);
            if stop {
                break;
            }
        }
        let _ = self.engine.send(ToEngine::Stop);
    }

    fn sync(&self, batch: &mut Vec<ToSync>) {
        // One fsync per distinct file, in order; a group is durable once its file is.
        let mut files: Vec<LogFile> = Vec::new();
        for item in batch.iter() {
            if let ToSync::Group(Written { logged: Some(Logged { file: (f, p), .. }), .. }) = item {
                if !files.iter().any(|(g, _)| Arc::ptr_eq(f, g)) {
                    files.push((f.clone(), p.clone()));
                }
            }
        }
        let mut failure = self.shared.poisoned();
        if failure.is_none() {
            for (f, path) in &files {
                match f.sync_data() {
                    Ok(()) => {
                        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                        if let Some(o) = &self.observer {
                            o.synced(path);
                        }
                    }
                    Err(e) => {
                        let cause = format!("store fsync failed: {e}");
                        self.shared.poison(cause.clone());
                        failure = Some(cause);
                        break;
                    }
                }
            }
        }
        for item in batch.drain(..) {
            match item {
                ToSync::Group(w) => {
                    let _ = self.synced.send(());
                    metrics::store_flushed(w.started.elapsed(), w.owed.len());
                    for o in w.owed {
                        o.settle(failure.as_deref());
                    }
                    // Even after a failure: the engine thread then applies nothing (the
                    // store is poisoned) but counts the group as done for the commit
                    // thread. (If the engine thread has stopped, the commit thread's wait
                    // for it ends as the channel closes.)
                    if let Some(Logged { writes: (seq, ops), .. }) = w.logged {
                        let _ = self.engine.send(ToEngine::Apply { seq, ops });
                    }
                }
                ToSync::Checkpoint(job) => {
                    if failure.is_some() {
                        job.answer(failure.as_deref());
                    } else if let Err(std::sync::mpsc::SendError(ToEngine::Checkpoint(job))) =
                        self.engine.send(ToEngine::Checkpoint(job))
                    {
                        job.answer(Some("the engine thread has stopped"));
                    }
                }
                ToSync::Stop => {}
            }
        }
    }
}

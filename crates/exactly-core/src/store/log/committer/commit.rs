//! The commit thread: gathers requests into a group, checks their expectations, logs the
//! group as one record, puts it in the memtable and hands it to the sync thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Checkpoint, Logged, Owed, Request, Shared, ToSync, Written, answer_applied};
use crate::store::local::{WriteBatch, expiry_index_ops};
use crate::store::log::memtable::Memtable;
use crate::store::log::wal::{Wal, format};
use crate::store::log::{Engine, Op};
use crate::sync::mpsc::{self, Receiver, Sender};
use crate::{Error, Result};

/// A group's writes by key; foldhash rather than std's SipHash (keys are ours, hashed once
/// a write; SipHash showed in the commit thread's profile).
type Overlay = std::collections::HashMap<Vec<u8>, Option<Bytes>, foldhash::fast::RandomState>;

pub(super) struct Committer<E> {
    /// Read (through the memtable) to check expectations; written by the engine thread.
    pub(super) engine: Arc<E>,
    pub(super) memtable: Arc<Memtable>,
    pub(super) wal: Wal,
    pub(super) requests: Receiver<Request>,
    pub(super) to_sync: Sender<ToSync>,
    /// One answer per group the sync thread has answered: the highest group durable then.
    pub(super) synced: Receiver<u64>,
    /// Groups handed to the sync thread and not yet answered.
    pub(super) in_flight: usize,
    /// The number of writes of each group the engine thread has applied.
    pub(super) applied: Receiver<usize>,
    /// Writes logged and not yet applied to the engine.
    pub(super) unapplied: usize,
    /// The number of the last group written.
    pub(super) group: u64,
    /// The highest group known durable.
    pub(super) durable: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) max_batch: usize,
}

/// Groups written but not yet synced before the commit thread waits. Recovery relies on
/// it: a torn group can be followed by at most this many minus one that are not durable.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Writes logged but not yet applied to the engine before the commit thread waits: what
/// the memtable holds at most (a done record is one write, and a group adds one expiry
/// entry per bucket). Counted in writes, not groups: when the commit thread keeps up,
/// groups are small (what came during one fsync), and a bound in groups left the memtable
/// room for only a few milliseconds of writes, so whatever held the engine thread (a
/// checkpoint, a slow apply) stopped every commit behind it.
pub(crate) const MAX_UNAPPLIED: usize = 1 << 17;

/// A group takes no further batch once its payload has this many bytes (a batch larger
/// than a record can hold is refused).
const GROUP_BYTES: u64 = 64 << 20;

/// Waits until `pending` is below `limit`, taking off `done(answer)` for each answer (a
/// closed channel means nothing is pending any more).
fn wait_below<T>(pending: &mut usize, answers: &Receiver<T>, limit: usize, mut done: impl FnMut(T) -> usize) {
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
        let durable = &mut self.durable;
        wait_below(&mut self.in_flight, &self.synced, limit, |g| {
            *durable = (*durable).max(g);
            1
        });
        wait_below(&mut self.unapplied, &self.applied, MAX_UNAPPLIED, |writes| writes);
    }

    pub(super) fn run(mut self) {
        let mut pending: Vec<Request> = Vec::with_capacity(self.max_batch);
        let mut stop = false;
        while !stop || !pending.is_empty() {
            if pending.is_empty() {
                match self.requests.recv() {
                    Ok(Request::Stop) | Err(_) => break,
                    Ok(first) => pending.push(first),
                }
            }
            // Let requests gather while the sync thread is busy.
            self.wait_in_flight(MAX_IN_FLIGHT);
            while !stop && pending.len() < self.max_batch {
                match self.requests.try_recv() {
                    Ok(Request::Stop) => stop = true,
                    Ok(r) => pending.push(r),
                    Err(_) => break,
                }
            }
            self.group(&mut pending);
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

    /// Refuses every request: the store failed.
    fn refuse(pending: &mut Vec<Request>, cause: &str) {
        let error = || Error::StorePoisoned { cause: cause.to_owned() };
        for r in pending.drain(..) {
            match r {
                Request::Commit { applied, durable, .. } => {
                    answer_applied(applied, Err(error()));
                    let _ = durable.send(Err(error()));
                }
                Request::Flush { reply } => {
                    let _ = reply.send(Err(error()));
                }
                Request::Stop => {}
            }
        }
    }

    /// Makes a group of what `pending` holds, up to [`GROUP_BYTES`]; what does not fit
    /// stays in `pending` for the next group.
    fn group(&mut self, pending: &mut Vec<Request>) {
        if let Some(cause) = self.shared.poisoned() {
            Self::refuse(pending, &cause);
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
        let mut bytes = 0u64;
        let mut taken = 0;
        for r in pending.iter_mut() {
            if let Request::Commit { batch, .. } = r {
                let size = batch_bytes(batch);
                if !admitted.is_empty() && bytes + size > GROUP_BYTES {
                    break;
                }
                bytes += size;
            }
            taken += 1;
        }
        for r in pending.drain(..taken) {
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
                    Err(e) => {
                        let _ = durable.send(Err(Error::StoreLimit { what: e.to_string() }));
                        answer_applied(applied, Err(e));
                    }
                },
                Request::Flush { reply } => flushes.push(reply),
                Request::Stop => {}
            }
        }
        let mut ops: Vec<Op> = overlay.into_iter().collect();
        if !expiring.is_empty() {
            // The group's number is unique to this commit of the store.
            ops.extend(expiry_index_ops(self.group + 1, &expiring));
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
                for (applied, owed) in admitted {
                    answer_applied(applied, Err(Error::StorePoisoned { cause: cause.clone() }));
                    owed.settle(Some(&cause));
                }
                for reply in flushes {
                    let _ = reply.send(Err(Error::StorePoisoned { cause: cause.clone() }));
                }
            }
        }
    }

    /// Whether every expectation of `b` holds, looking through writes admitted earlier in
    /// this group. A write the engine cannot take is an error.
    fn admit(&self, b: &WriteBatch, overlay: &Overlay) -> Result<bool> {
        let limits = self.engine.limits();
        for (k, v) in &b.ops {
            let value = v.as_ref().map_or(0, Bytes::len);
            if k.len() > limits.max_key || value > limits.max_value {
                return Err(Error::StoreLimit {
                    what: format!(
                        "a write of a {}-byte key and a {value}-byte value is over the engine's limits ({} and {} bytes)",
                        k.len(),
                        limits.max_key,
                        limits.max_value
                    ),
                });
            }
        }
        if batch_bytes(b) > format::MAX_PAYLOAD / 2 {
            return Err(Error::StoreLimit { what: format!("a batch of {} bytes is too large to log", batch_bytes(b)) });
        }
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
        let group = self.group + 1;
        let written =
            self.wal.write(group, self.durable, &format::encode(&ops)).map_err(|e| Error::io("log write", e))?;
        self.group = group;
        self.memtable.insert(group, &ops);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        let logged =
            Logged { file: (written.file, written.path), offset: written.offset, writes: (group, Arc::new(ops)) };
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

/// The bytes a batch's writes take in the log.
fn batch_bytes(b: &WriteBatch) -> u64 {
    b.ops.iter().map(|(k, v)| format::op_len(k, v.as_ref())).sum()
}

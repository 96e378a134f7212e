//! The engine thread: applies synced groups to the engine, retires them from the
//! memtable, and runs checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Checkpoint, GroupWrites, Shared, ToEngine};
use crate::store::log::memtable::Memtable;
use crate::store::log::{Engine, Op};
use crate::sync::mpsc::{Receiver, Sender};
use crate::{Error, Result};

/// Applies groups to the engine and retires them from the memtable; runs checkpoints
/// (flushes the engine and recycles the log segments it then covers), in order.
pub(super) struct Applier<E> {
    pub(super) engine: Arc<E>,
    pub(super) memtable: Arc<Memtable>,
    pub(super) requests: Receiver<ToEngine>,
    /// The number of writes of each group applied.
    pub(super) applied: Sender<usize>,
    pub(super) shared: Arc<Shared>,
}

impl<E: Engine> Applier<E> {
    pub(super) fn run(self) {
        let mut groups: Vec<GroupWrites> = Vec::new();
        loop {
            // Gather every group waiting into one batch; apply it when none is left.
            let next = if groups.is_empty() { self.requests.recv().ok() } else { self.requests.try_recv().ok() };
            match next {
                Some(ToEngine::Apply { group, ops }) => groups.push((group, ops)),
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

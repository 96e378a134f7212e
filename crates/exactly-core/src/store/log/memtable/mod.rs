//! Writes that are in the log but not yet in the engine.
//!
//! The commit thread puts each group here as soon as it is written to the log, and reads
//! see it at once; the engine thread applies groups to the engine behind it and then
//! retires them from here. So the commit thread never waits for the engine (sled's apply
//! and, above all, its flush at a checkpoint), and a read never misses a write: an entry
//! leaves the memtable only after the engine holds it (or something newer).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::filter::{Bloom, Filters};
use super::{Engine, Op};
use crate::Result;
// Not loom's lock under `--cfg exactly_loom`: with a preemption point at every read and
// insert, the model checks of the log had not finished after ten minutes. That an entry leaves only after
// the engine holds it is checked by the ordering in the engine thread and by the tests
// below, which read through a memtable whose groups are partly applied.
use std::sync::{Condvar, Mutex, MutexGuard};

/// Each key's newest logged value (`None`: deleted), with the number of the group that
/// wrote it.
type Entries = BTreeMap<Vec<u8>, (u64, Option<Bytes>)>;

/// What the lock guards: the entries, and the [filter](super::filter) of the keys the
/// engine may hold, which must change together.
#[derive(Debug, Default)]
struct Inner {
    entries: Entries,
    filters: Filters,
}

/// The writes the engine may not have yet.
#[derive(Debug, Default)]
pub(super) struct Memtable {
    inner: Mutex<Inner>,
    /// Wakes the filter's builder.
    builder: Condvar,
}

impl Memtable {
    /// Adds the writes of group `seq` (later groups have larger numbers).
    pub(super) fn insert(&self, seq: u64, ops: &[Op]) {
        let mut inner = self.lock();
        let mut overfull = false;
        for (k, v) in ops {
            if v.is_some() {
                overfull |= inner.filters.insert(k);
            } else {
                inner.filters.remove(k);
            }
            inner.entries.insert(k.clone(), (seq, v.clone()));
        }
        drop(inner);
        if overfull {
            self.builder.notify_one();
        }
    }

    /// Removes the entries of `ops` written by group `applied` or earlier: the engine now
    /// holds every group up to `applied`. An entry a later group wrote stays.
    pub(super) fn retire(&self, applied: u64, ops: &[Op]) {
        let entries = &mut self.lock().entries;
        for (k, _) in ops {
            if entries.get(k).is_some_and(|(seq, _)| *seq <= applied) {
                entries.remove(k);
            }
        }
    }

    /// Reads `key`: here if it is here, else from the engine.
    pub(super) fn get(&self, engine: &impl Engine, key: &[u8]) -> Result<Option<Bytes>> {
        {
            let inner = self.lock();
            if let Some((_, v)) = inner.entries.get(key) {
                return Ok(v.clone());
            }
            // Not here: never written, or retired, which happens only after the engine
            // has it; and every key written went through the filter before coming here.
            if inner.filters.excludes(key) {
                return Ok(None);
            }
        }
        engine.get(key)
    }

    /// Up to `limit` live entries with `from <= key < to`, in key order, these entries
    /// taking precedence over the engine's.
    pub(super) fn range(
        &self,
        engine: &impl Engine,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        // Held while the engine is read, so no entry is retired in between: the engine
        // holds nothing newer than an entry here.
        let inner = self.lock();
        let entries = &inner.entries;
        let mine: Vec<(&Vec<u8>, &Option<Bytes>)> =
            entries.range(from.to_vec()..to.to_vec()).map(|(k, (_, v))| (k, v)).collect();
        let deleted = mine.iter().filter(|(_, v)| v.is_none()).count();
        // Each deletion here can hide one of the engine's entries.
        let theirs = engine.range(from, to, limit.saturating_add(deleted))?;
        let mut out = Vec::with_capacity(limit.min(theirs.len() + mine.len()));
        let (mut mine, mut theirs) = (mine.into_iter().peekable(), theirs.into_iter().peekable());
        while out.len() < limit {
            let order = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.as_slice().cmp(b.as_slice()),
            };
            if order == std::cmp::Ordering::Equal {
                // The same key on both sides: this side is newer.
                theirs.next();
            }
            if order != std::cmp::Ordering::Greater {
                if let Some((k, Some(v))) = mine.next() {
                    out.push((k.clone(), v.clone()));
                }
            } else if let Some(kv) = theirs.next() {
                out.push(kv);
            }
        }
        Ok(out)
    }

    /// Entries waiting for the engine.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Registers a filter being built (see [`Filters::begin`]). Returns `false` if the
    /// filters are stopped.
    pub(super) fn begin_filter(&self, bloom: Arc<Bloom>) -> bool {
        let mut inner = self.lock();
        if inner.filters.stopped {
            return false;
        }
        let Inner { entries, filters } = &mut *inner;
        filters.begin(bloom, entries.iter().filter(|(_, (_, v))| v.is_some()).map(|(k, _)| k));
        true
    }

    /// The filter being built is complete and answers from now on.
    pub(super) fn finish_filter(&self) {
        self.lock().filters.finish();
    }

    /// The filter being built is dropped; the current one stays.
    pub(super) fn abandon_filter(&self) {
        self.lock().filters.abandon();
    }

    /// Whether the filters are stopped.
    pub(super) fn filter_stopped(&self) -> bool {
        self.lock().filters.stopped
    }

    /// Waits until the current filter needs rebuilding; returns the keys to size the new
    /// one for, or `None` once stopped.
    pub(super) fn wait_for_rebuild(&self, min_keys: u64) -> Option<u64> {
        let mut inner = self.lock();
        loop {
            if inner.filters.stopped {
                return None;
            }
            if let Some(keys) = inner.filters.wanted(min_keys) {
                return Some(keys);
            }
            inner = self.builder.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stops the filter's builder (at its next page of the engine).
    pub(super) fn stop_filter(&self) {
        self.lock().filters.stopped = true;
        self.builder.notify_all();
    }

    /// Filters built so far (0: none answers reads yet).
    pub(super) fn filter_builds(&self) -> u64 {
        self.lock().filters.builds
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;

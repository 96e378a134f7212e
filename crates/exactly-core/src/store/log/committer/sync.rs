//! The sync thread: fsyncs the log, answers the groups once durable, and passes their
//! writes on to the engine thread. It also notices a store whose files were deleted
//! under it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{LogFile, Logged, Shared, ToEngine, ToSync, Written};
use crate::metrics;
use crate::store::log::FsyncObserver;
use crate::store::log::wal;
use crate::sync::mpsc::{Receiver, Sender};

pub(super) struct Syncer {
    pub(super) requests: Receiver<ToSync>,
    /// The highest durable group, once per group answered.
    pub(super) synced: Sender<u64>,
    /// The engine thread: synced groups' writes, then checkpoints.
    pub(super) engine: Sender<ToEngine>,
    pub(super) shared: Arc<Shared>,
    pub(super) observer: Option<Arc<dyn FsyncObserver>>,
    /// The highest group synced.
    pub(super) highest: u64,
    pub(super) watch: Watch,
}

/// How often the store directory is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The store directory as it was at open: a store whose directory is deleted or replaced
/// under it would go on acknowledging into files nobody can open again.
pub(super) struct Watch {
    dir: PathBuf,
    identity: (u64, u64),
    last: Instant,
}

impl Watch {
    pub(super) fn new(dir: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(dir)?;
        Ok(Self { dir: dir.to_owned(), identity: (m.dev(), m.ino()), last: Instant::now() })
    }

    /// Why the store cannot go on, if its directory is gone or another, or `file` (just
    /// synced) was deleted.
    fn check(&mut self, file: &LogFile) -> Option<String> {
        if file.0.metadata().is_ok_and(|m| m.nlink() == 0) {
            return Some(format!(
                "the store's log file {} was deleted while the store was open; nothing written since can be \
                 recovered from it",
                file.1.display()
            ));
        }
        if self.last.elapsed() < WATCH_EVERY {
            return None;
        }
        self.last = Instant::now();
        match std::fs::metadata(&self.dir) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => None,
            Ok(_) => Some(format!("the store directory {} was replaced while the store was open", self.dir.display())),
            Err(e) => Some(format!("the store directory {} is gone ({e}); was it deleted?", self.dir.display())),
        }
    }
}

impl Syncer {
    pub(super) fn run(mut self) {
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

    /// Fsyncs every file the batch's groups are in; the cause, if one failed.
    fn fsync(&mut self, batch: &[ToSync]) -> Option<String> {
        // One fsync per distinct file, in order; a group is durable once its file is.
        let mut files: Vec<LogFile> = Vec::new();
        for item in batch {
            if let ToSync::Group(Written { logged: Some(Logged { file: (f, p), .. }), .. }) = item
                && !files.iter().any(|(g, _)| Arc::ptr_eq(f, g))
            {
                files.push((f.clone(), p.clone()));
            }
        }
        for file in &files {
            if let Err(e) = file.0.sync_data() {
                return Some(format!("store fsync failed: {e}"));
            }
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            if let Some(o) = &self.observer {
                o.synced(&file.1);
            }
            if let Some(cause) = self.watch.check(file) {
                return Some(cause);
            }
        }
        None
    }

    fn sync(&mut self, batch: &mut Vec<ToSync>) {
        let mut failure = self.shared.poisoned();
        if failure.is_none() {
            failure = self.fsync(batch);
            if let Some(cause) = &failure {
                self.shared.poison(cause.clone());
            }
        }
        for item in batch.drain(..) {
            match item {
                ToSync::Group(w) => {
                    if failure.is_none() {
                        if let Some(l) = &w.logged {
                            self.highest = self.highest.max(l.writes.0);
                        }
                    } else if let Some(l) = &w.logged {
                        // Never acknowledged: the next open must not find it either.
                        if let Err(e) = wal::invalidate(&l.file.0, l.offset) {
                            tracing::error!(error = %e, file = %l.file.1.display(), "cannot invalidate a record whose fsync failed");
                        }
                    }
                    let _ = self.synced.send(self.highest);
                    metrics::store_flushed(w.started.elapsed(), w.owed.len());
                    for o in w.owed {
                        o.settle(failure.as_deref());
                    }
                    // Even after a failure: the engine thread then applies nothing (the
                    // store is poisoned) but counts the group as done for the commit
                    // thread. (If the engine thread has stopped, the commit thread's wait
                    // for it ends as the channel closes.)
                    if let Some(Logged { writes: (group, ops), .. }) = w.logged {
                        let _ = self.engine.send(ToEngine::Apply { group, ops });
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

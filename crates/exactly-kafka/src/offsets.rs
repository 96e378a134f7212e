//! Which offsets of a partition may be committed.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// The offsets of one partition handed to its worker and not yet finished. The offset to
/// commit is the lowest unfinished one, or one past the highest received: everything below
/// it is finished (handled durably, a duplicate, or dead-lettered). Kafka offsets may have
/// gaps (compaction, transaction markers); only received offsets count.
#[derive(Debug, Default)]
pub(crate) struct Tracker(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    unfinished: BTreeSet<i64>,
    next: Option<i64>,
}

impl Tracker {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A record was received (before it is processed).
    pub(crate) fn received(&self, offset: i64) {
        let mut i = self.inner();
        i.unfinished.insert(offset);
        i.next = Some(i.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Everything below `offset` is finished already (the partition starts there).
    pub(crate) fn start_at(&self, offset: i64) {
        let mut i = self.inner();
        i.next = Some(i.next.map_or(offset, |n| n.max(offset)));
    }

    /// A record is finished.
    pub(crate) fn finished(&self, offset: i64) {
        self.inner().unfinished.remove(&offset);
    }

    /// The offset to commit: the next record to consume after the finished prefix.
    pub(crate) fn committable(&self) -> Option<i64> {
        let i = self.inner();
        i.unfinished.first().copied().or(i.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_finished_prefix_is_committable() {
        let t = Tracker::default();
        assert_eq!(t.committable(), None);
        for o in [10, 11, 13, 14] {
            t.received(o); // 12 is a gap (compacted)
        }
        assert_eq!(t.committable(), Some(10));
        t.finished(11);
        assert_eq!(t.committable(), Some(10), "10 is not finished");
        t.finished(10);
        assert_eq!(t.committable(), Some(13), "the gap is skipped");
        t.finished(14);
        t.finished(13);
        assert_eq!(t.committable(), Some(15));
    }
}

//! A Bloom filter of the done-record keys the engine may hold.
//!
//! Most messages are new: their idempotency key was never written, and without the
//! filter every claim would walk the engine's tree to learn that, a walk that gets
//! longer, and colder, as the store grows. With it, a read of a key the filter has never
//! seen is answered from memory, at any store size (figures in docs/PERFORMANCE.md). A key
//! the filter may hold is read from the engine as before, so a false positive (about 1 in
//! 100 at the sized load) costs one engine read, and nothing else.
//!
//! What must never happen is a "no" for a key the engine holds: that would run a
//! handler twice. Every covered key reaches the engine in one of two ways, and each is in
//! the filter before a read could look for it there:
//!
//! - it was in the engine when the store opened (replayed writes included): the build
//!   scans the engine and only then is the filter consulted;
//! - it was written through the log: the commit thread puts it in the memtable and in
//!   the filters under the memtable's lock, and it leaves the memtable (after which reads
//!   go to the engine) only after that.
//!
//! A filter is sized for twice the keys live when it was asked for (at least
//! [`LogOptions::filter_keys`](super::LogOptions::filter_keys); the first one after an
//! open from the engine's size on disk); deleted keys stay in it, and a build that finds
//! more keys than its filter was sized for starts again with one four times larger.
//! Once it has taken more keys than it was sized for, a new one is built the same way
//! while the old one still answers: the new one is registered under the memtable's lock,
//! takes every key written from then on and every key then in the memtable, and scans
//! the engine. A key written before the registration is in the memtable at that moment
//! or, if it had left it, in the engine before the scan began.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use fastbloom::AtomicBloomFilter;
use foldhash::fast::RandomState;

use super::Engine;
use super::memtable::Memtable;
use crate::Result;
use crate::store::layout::RECORD;

/// Keys read from the engine per call of [`Engine::range`] while building.
const PAGE: usize = 1024;

/// Fewer bytes on disk than a done key takes in the engine, for the first guess of how
/// many keys it holds.
const BYTES_PER_KEY: u64 = 256;

/// The false-positive rate a filter is sized for.
const FALSE_POSITIVES: f64 = 0.01;

/// Whether the filter covers `key`: done records only (state, metadata and the expiry
/// index are few, or not read on the claim path).
pub(super) fn covers(key: &[u8]) -> bool {
    key.first() == Some(&RECORD)
}

/// One Bloom filter and how many keys it was sized for and holds.
pub(super) struct Bloom {
    bits: AtomicBloomFilter<RandomState>,
    capacity: u64,
    items: AtomicU64,
    /// Deletes of keys it holds (they stay in the bits).
    removed: AtomicU64,
}

impl Bloom {
    pub(super) fn new(capacity: u64) -> Self {
        let expected = usize::try_from(capacity).unwrap_or(usize::MAX);
        let bits =
            AtomicBloomFilter::with_false_pos(FALSE_POSITIVES).hasher(RandomState::default()).expected_items(expected);
        Self { bits, capacity, items: AtomicU64::new(0), removed: AtomicU64::new(0) }
    }

    pub(super) fn insert(&self, key: &[u8]) {
        if !self.bits.insert(key) {
            self.items.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn may_hold(&self, key: &[u8]) -> bool {
        self.bits.contains(key)
    }

    /// Holds more distinct keys (as far as it can tell) than it was sized for.
    pub(super) fn overfull(&self) -> bool {
        self.items.load(Ordering::Relaxed) > self.capacity
    }

    fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// About how many of its keys are still live.
    fn live(&self) -> u64 {
        self.items().saturating_sub(self.removed.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Bloom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bloom")
            .field("capacity", &self.capacity)
            .field("items", &self.items())
            .field("removed", &self.removed.load(Ordering::Relaxed))
            .finish()
    }
}

/// The filters, kept under the memtable's lock.
#[derive(Debug, Default)]
pub(super) struct Filters {
    /// Holds every covered key the engine may hold; `None` until the first build ends.
    current: Option<Arc<Bloom>>,
    /// Being built: takes every covered key written too.
    building: Option<Arc<Bloom>>,
    /// The builder has been told to stop.
    pub(super) stopped: bool,
    /// Filters built so far.
    pub(super) builds: u64,
}

impl Filters {
    /// Records a covered key written through the log. Returns whether the current filter
    /// is overfull and no new one is being built (the builder should be woken).
    pub(super) fn insert(&mut self, key: &[u8]) -> bool {
        if !covers(key) {
            return false;
        }
        self.blooms().for_each(|bloom| bloom.insert(key));
        self.building.is_none() && self.current.as_ref().is_some_and(|b| b.overfull())
    }

    /// Counts the delete of a covered key, so that the next filter is sized for the keys
    /// still live.
    pub(super) fn remove(&mut self, key: &[u8]) {
        if covers(key) {
            self.blooms().for_each(|bloom| {
                bloom.removed.fetch_add(1, Ordering::Relaxed);
            });
        }
    }

    /// The current filter and the one being built, those that exist: what a write
    /// must reach.
    fn blooms(&self) -> impl Iterator<Item = &Arc<Bloom>> {
        [&self.current, &self.building].into_iter().flatten()
    }

    /// Whether the engine certainly does not hold `key`.
    pub(super) fn excludes(&self, key: &[u8]) -> bool {
        covers(key) && self.current.as_ref().is_some_and(|b| !b.may_hold(key))
    }

    /// Registers a filter being built; it takes `memtable_keys` (every key now waiting
    /// for the engine) and every key written from now on.
    pub(super) fn begin<'a>(&mut self, bloom: Arc<Bloom>, memtable_keys: impl Iterator<Item = &'a Vec<u8>>) {
        for key in memtable_keys.filter(|k| covers(k)) {
            bloom.insert(key);
        }
        self.building = Some(bloom);
    }

    /// The filter being built is complete: it answers from now on.
    pub(super) fn finish(&mut self) {
        if let Some(bloom) = self.building.take() {
            self.current = Some(bloom);
            self.builds += 1;
        }
    }

    /// The build failed or was stopped: the current filter (still complete) stays.
    pub(super) fn abandon(&mut self) {
        self.building = None;
    }

    /// Whether the builder should build again now, and for how many keys: twice those
    /// still live, so a store whose keys expire as fast as new ones come is rebuilt about
    /// once for every live key written, and one that grows once each time it doubles.
    pub(super) fn wanted(&self, min_keys: u64) -> Option<u64> {
        let bloom = self.current.as_ref()?;
        (self.building.is_none() && bloom.overfull()).then(|| (bloom.live() * 2).max(min_keys))
    }
}

/// Starts the builder thread (see [`run`]).
pub(super) fn start<E: Engine>(engine: Arc<E>, memtable: Arc<Memtable>, min_keys: u64) -> Option<JoinHandle<()>> {
    let spawned =
        std::thread::Builder::new().name("exactly-filter".into()).spawn(move || run(&*engine, &memtable, min_keys));
    spawned
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot start the filter of done keys; reads of new keys go to the engine"),
        )
        .ok()
}

/// The builder thread: builds the first filter from the engine, then a new one each time
/// the current one is overfull, until the memtable's filters are stopped.
pub(super) fn run<E: Engine>(engine: &E, memtable: &Memtable, min_keys: u64) {
    // A first guess of the keys the engine holds, so that a large store is not scanned
    // several times at open: a sled store takes about 330 bytes on disk per done key.
    // Capped, since large state values make the guess too high; a scan that finds more
    // keys starts again larger.
    let guess = (engine.disk_bytes().unwrap_or(0) / BYTES_PER_KEY).min(min_keys.saturating_mul(16));
    let mut keys = min_keys.max(guess);
    loop {
        let bloom = Arc::new(Bloom::new(keys));
        if !memtable.begin_filter(bloom.clone()) {
            return;
        }
        match scan(engine, &bloom, || memtable.filter_stopped()) {
            Ok(End::Done) => memtable.finish_filter(),
            Ok(End::Overfull) => {
                // The store holds more keys than guessed: start again, larger, while the
                // current filter (if any) goes on answering.
                memtable.abandon_filter();
                keys = keys.saturating_mul(4);
                continue;
            }
            Ok(End::Stopped) => return memtable.abandon_filter(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the filter of done keys; reads of new keys go to the engine");
                return memtable.abandon_filter();
            }
        }
        match memtable.wait_for_rebuild(min_keys) {
            Some(next) => keys = next,
            None => return,
        }
    }
}

/// How a scan of the engine ended.
enum End {
    /// Every covered key is in the filter.
    Done,
    /// The filter took more keys than it was sized for.
    Overfull,
    /// The filters were stopped.
    Stopped,
}

/// Puts every covered key of the engine in `bloom`.
fn scan<E: Engine>(engine: &E, bloom: &Bloom, stopped: impl Fn() -> bool) -> Result<End> {
    let mut scan = Scan::default();
    loop {
        if stopped() {
            return Ok(End::Stopped);
        }
        if bloom.overfull() {
            return Ok(End::Overfull);
        }
        if !scan.page(engine, bloom, PAGE)? {
            return Ok(End::Done);
        }
    }
}

/// A scan of the engine's covered keys, a page at a time.
pub(super) struct Scan {
    /// The first key of the next page.
    from: Vec<u8>,
}

impl Default for Scan {
    fn default() -> Self {
        Self { from: vec![RECORD] }
    }
}

impl Scan {
    /// Puts the next `size` covered keys of the engine in `bloom`. Returns `false` once
    /// there were none left.
    pub(super) fn page<E: Engine>(&mut self, engine: &E, bloom: &Bloom, size: usize) -> Result<bool> {
        let page = engine.range(&self.from, &[RECORD + 1], size)?;
        for (key, _) in &page {
            bloom.insert(key);
        }
        match page.last() {
            Some((last, _)) if page.len() == size => {
                self.from.clone_from(last);
                self.from.push(0);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_holds_what_it_took_and_excludes_most_of_the_rest() {
        let bloom = Bloom::new(1000);
        let key = |i: u32| [&[RECORD][..], &i.to_be_bytes()].concat();
        (0..1000).for_each(|i| bloom.insert(&key(i)));
        assert!((0..1000).all(|i| bloom.may_hold(&key(i))));
        let false_positives = (1000..11_000).filter(|&i| bloom.may_hold(&key(i))).count();
        assert!(false_positives < 300, "{false_positives} of 10,000 new keys looked held");
        assert!(!bloom.overfull());
        let bytes = bloom.bits.num_bits() / 8;
        assert!(bytes <= 1000 * 13 / 10, "{bytes} bytes for 1000 keys");
        (1000..1100).for_each(|i| bloom.insert(&key(i)));
        assert!(bloom.overfull());
    }
}

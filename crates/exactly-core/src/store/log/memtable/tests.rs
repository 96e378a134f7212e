use super::*;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::store::layout::RECORD;

#[derive(Debug, Default)]
struct Map(StdMutex<BTreeMap<Vec<u8>, Bytes>>, AtomicUsize);

impl Engine for Map {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let m = self.0.lock().unwrap();
        Ok(m.range(from.to_vec()..to.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn apply(&self, ops: &[Op]) -> Result<()> {
        let mut m = self.0.lock().unwrap();
        for (k, v) in ops {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        Ok(())
    }
    fn checkpoint(&self) -> Result<u64> {
        Ok(0)
    }
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

fn put(k: &str, v: &str) -> Op {
    (k.as_bytes().to_vec(), Some(Bytes::copy_from_slice(v.as_bytes())))
}

fn del(k: &str) -> Op {
    (k.as_bytes().to_vec(), None)
}

#[test]
fn reads_see_logged_writes_before_the_engine_does() {
    let (engine, mem) = (Map::default(), Memtable::default());
    engine.apply(&[put("a", "old"), put("b", "1")]).unwrap();
    mem.insert(1, &[put("a", "new"), del("b")]);
    assert_eq!(mem.get(&engine, b"a").unwrap(), Some(Bytes::from_static(b"new")));
    assert_eq!(mem.get(&engine, b"b").unwrap(), None, "a logged delete hides the engine's value");
    assert_eq!(mem.get(&engine, b"c").unwrap(), None);
}

#[test]
fn retiring_keeps_what_a_later_group_wrote() {
    let (engine, mem) = (Map::default(), Memtable::default());
    let first = [put("a", "1"), put("b", "1")];
    mem.insert(1, &first);
    mem.insert(2, &[put("a", "2")]);
    engine.apply(&first).unwrap();
    mem.retire(1, &first);
    assert_eq!(mem.len(), 1, "group 2's write of a stays");
    assert_eq!(mem.get(&engine, b"a").unwrap(), Some(Bytes::from_static(b"2")));
    assert_eq!(mem.get(&engine, b"b").unwrap(), Some(Bytes::from_static(b"1")), "b from the engine");
}

proptest::proptest! {
    /// Any engine contents, any later groups in the memtable, any page size: a range
    /// is the first entries of what the engine would hold with the groups applied.
    #[test]
    fn a_range_is_a_page_of_the_applied_state(
        base in proptest::collection::btree_map(0u8..24, 0u8..4, 0..16),
        groups in proptest::collection::vec(proptest::collection::vec((0u8..24, proptest::option::of(0u8..4)), 0..8), 0..4),
        retired in 0usize..4,
        from in 0u8..24, width in 0u8..24, limit in 0usize..12,
    ) {
        let (engine, mem, model) = (Map::default(), Memtable::default(), Map::default());
        let op = |(k, v): &(u8, Option<u8>)| (vec![*k], v.map(|v| Bytes::from(vec![v])));
        let base: Vec<Op> = base.iter().map(|(k, v)| op(&(*k, Some(*v)))).collect();
        engine.apply(&base).unwrap();
        model.apply(&base).unwrap();
        for (i, g) in groups.iter().enumerate() {
            let ops: Vec<Op> = g.iter().map(op).collect();
            mem.insert(i as u64 + 1, &ops);
            model.apply(&ops).unwrap();
        }
        // The engine thread has applied and retired the first `retired` groups.
        for (i, g) in groups.iter().enumerate().take(retired) {
            let ops: Vec<Op> = g.iter().map(op).collect();
            engine.apply(&ops).unwrap();
            mem.retire(i as u64 + 1, &ops);
        }
        let (from, to) = ([from], [from.saturating_add(width)]);
        let got = mem.range(&engine, &from, &to, limit).unwrap();
        let want = model.range(&from, &to, limit).unwrap();
        proptest::prop_assert_eq!(got, want);
        for k in 0u8..24 {
            proptest::prop_assert_eq!(mem.get(&engine, &[k]).unwrap(), model.get(&[k]).unwrap());
        }
    }
}

#[test]
fn ranges_merge_both_sides_in_order_and_deletes_do_not_shorten_a_page() {
    let (engine, mem) = (Map::default(), Memtable::default());
    engine.apply(&[put("a", "e"), put("b", "e"), put("c", "e"), put("d", "e"), put("f", "e")]).unwrap();
    mem.insert(1, &[del("a"), del("b"), put("c", "m"), put("e", "m"), put("g", "m")]);
    let page = mem.range(&engine, b"a", b"z", 3).unwrap();
    let got: Vec<(&[u8], &[u8])> = page.iter().map(|(k, v)| (k.as_slice(), v.as_ref())).collect();
    assert_eq!(got, vec![(&b"c"[..], &b"m"[..]), (b"d", b"e"), (b"e", b"m")]);
    let all = mem.range(&engine, b"a", b"z", 100).unwrap();
    let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, vec![&b"c"[..], b"d", b"e", b"f", b"g"]);
    assert!(mem.range(&engine, b"d", b"e", 10).unwrap().iter().all(|(k, _)| k == b"d"));
}

/// A done-record key.
fn rkey(i: u64) -> Vec<u8> {
    [&[RECORD][..], &i.to_be_bytes()].concat()
}

fn rput(i: u64) -> Op {
    (rkey(i), Some(Bytes::from_static(b"done")))
}

/// Starts the filter's builder the way the log does.
fn builder(engine: &Arc<Map>, mem: &Arc<Memtable>, min_keys: u64) -> std::thread::JoinHandle<()> {
    let (engine, mem) = (engine.clone(), mem.clone());
    std::thread::spawn(move || super::super::filter::run(&*engine, &mem, min_keys))
}

fn wait_ready(mem: &Memtable) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mem.filter_builds() == 0 {
        assert!(Instant::now() < deadline, "the filter was not built");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// 5,000 keys in the engine and a filter sized for 64 at first: the build starts
/// again larger until the filter holds them all.
#[test]
fn once_the_filter_is_built_new_keys_are_answered_without_the_engine() {
    let (engine, mem) = (Arc::new(Map::default()), Arc::new(Memtable::default()));
    engine.apply(&(0..5000).map(rput).collect::<Vec<_>>()).unwrap();
    mem.insert(1, &[rput(5000), (rkey(5001), None)]);
    let thread = builder(&engine, &mem, 64);
    wait_ready(&mem);
    for i in 0..=5000 {
        assert!(mem.get(&*engine, &rkey(i)).unwrap().is_some(), "key {i} lost");
    }
    engine.apply(&[rput(5000)]).unwrap();
    mem.retire(1, &[rput(5000)]);
    assert!(
        mem.get(&*engine, &rkey(5000)).unwrap().is_some(),
        "a key that was in the memtable during the build, retired since"
    );
    let before = engine.1.load(Ordering::Relaxed);
    for i in 10_000..20_000 {
        assert_eq!(mem.get(&*engine, &rkey(i)).unwrap(), None);
    }
    let reads = engine.1.load(Ordering::Relaxed) - before;
    assert!(reads < 500, "{reads} of 10,000 reads of new keys went to the engine");
    // Keys outside the done records are not filtered.
    let before = engine.1.load(Ordering::Relaxed);
    assert_eq!(mem.get(&*engine, b"m-meta").unwrap(), None);
    assert_eq!(engine.1.load(Ordering::Relaxed), before + 1);
    mem.stop_filter();
    thread.join().unwrap();
}

/// The rebuild's race: groups are written, applied and retired while the filter is
/// rebuilt 200 times; a reader asks for the newest keys and must always find them.
#[test]
fn no_written_key_is_ever_missed_while_the_filter_is_rebuilt() {
    let (engine, mem) = (Arc::new(Map::default()), Arc::new(Memtable::default()));
    engine.apply(&(0..100).map(rput).collect::<Vec<_>>()).unwrap();
    let thread = builder(&engine, &mem, 16);
    // Keys below `deleted` may be gone, keys up to `written` are there.
    let (written, deleted) = (Arc::new(AtomicU64::new(100)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (engine, mem, stop) = (engine.clone(), mem.clone(), stop.clone());
        let (written, deleted) = (written.clone(), deleted.clone());
        std::thread::spawn(move || {
            let mut checked = 0u64;
            while !stop.load(Ordering::Acquire) {
                let n = written.load(Ordering::Acquire);
                // The newest keys, where the race is, and an older live one.
                for i in (n - 8..n).chain([n - 90 + checked % 80]) {
                    // Missing is right only if the writer may have deleted it since.
                    let found = mem.get(&*engine, &rkey(i)).unwrap().is_some();
                    assert!(found || i < deleted.load(Ordering::Acquire), "key {i} of {n} missed");
                    checked += 1;
                }
            }
            checked
        })
    };
    // Groups of 4 new keys that delete the 4 oldest, so about 100 keys live and the
    // filter, sized for twice that, is rebuilt every 25 groups or so. The engine
    // applies and retires each group 8 groups behind.
    let mut waiting = std::collections::VecDeque::new();
    for seq in 1..=200_000u64 {
        if mem.filter_builds() >= 200 {
            break;
        }
        std::thread::yield_now();
        let first = 100 + (seq - 1) * 4;
        let ops: Vec<Op> =
            (first..first + 4).map(rput).chain((first - 100..first - 96).map(|i| (rkey(i), None))).collect();
        deleted.store(first - 96, Ordering::Release);
        mem.insert(seq, &ops);
        written.store(100 + seq * 4, Ordering::Release);
        waiting.push_back((seq, ops));
        if waiting.len() > 8 {
            let (applied, ops) = waiting.pop_front().unwrap();
            engine.apply(&ops).unwrap();
            mem.retire(applied, &ops);
        }
    }
    for (applied, ops) in waiting {
        engine.apply(&ops).unwrap();
        mem.retire(applied, &ops);
    }
    stop.store(true, Ordering::Release);
    let checked = reader.join().unwrap();
    assert!(checked > 1000, "the reader checked only {checked} keys");
    let builds = mem.filter_builds();
    assert!(builds >= 200, "the filter was built only {builds} times");
    mem.stop_filter();
    thread.join().unwrap();
}

/// One step of the writers, the engine thread or the filter's builder.
#[derive(Debug, Clone)]
enum Step {
    /// The commit thread logs a group (puts, or deletes for `None`).
    Write(Vec<(u8, Option<u8>)>),
    /// The engine thread applies and retires the oldest group waiting.
    Apply,
    /// The builder registers a new filter (if none is being built).
    Begin,
    /// The builder reads one key of the engine into the filter being built, and
    /// puts it in place once there are none left.
    Scan,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => proptest::collection::vec((0u8..12, proptest::option::of(0u8..3)), 1..4).prop_map(Step::Write),
        2 => Just(Step::Apply),
        1 => Just(Step::Begin),
        3 => Just(Step::Scan),
    ]
}

proptest::proptest! {
    /// Any interleaving, at the granularity of one key of the builder's scan, of
    /// logged groups, their application to the engine, and filter builds: every read
    /// answers what the writes so far would hold. A filter that missed a key the
    /// engine holds would answer `None` for it.
    #[test]
    fn reads_through_the_filter_see_every_write_whatever_the_interleaving(
        base in proptest::collection::btree_map(0u8..12, 0u8..3, 0..8),
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        use super::super::filter::Scan;
        let (engine, mem, model) = (Map::default(), Memtable::default(), Map::default());
        let op = |(k, v): &(u8, Option<u8>)| (rkey(u64::from(*k)), v.map(|v| Bytes::from(vec![v])));
        let base: Vec<Op> = base.iter().map(|(k, v)| op(&(*k, Some(*v)))).collect();
        engine.apply(&base).unwrap();
        model.apply(&base).unwrap();
        let (mut seq, mut waiting) = (0, std::collections::VecDeque::new());
        let mut build: Option<(Arc<Bloom>, Scan)> = None;
        for step in steps {
            match step {
                Step::Write(writes) => {
                    seq += 1;
                    let ops: Vec<Op> = writes.iter().map(op).collect();
                    mem.insert(seq, &ops);
                    model.apply(&ops).unwrap();
                    waiting.push_back((seq, ops));
                }
                Step::Apply => {
                    if let Some((applied, ops)) = waiting.pop_front() {
                        engine.apply(&ops).unwrap();
                        mem.retire(applied, &ops);
                    }
                }
                Step::Begin => {
                    if build.is_none() {
                        // Sized for far more keys than there are, so that it rarely
                        // takes a key it was not given for one it was.
                        let bloom = Arc::new(Bloom::new(1000));
                        proptest::prop_assert!(mem.begin_filter(bloom.clone()));
                        build = Some((bloom, Scan::default()));
                    }
                }
                Step::Scan => {
                    if let Some((bloom, scan)) = build.as_mut()
                        && !scan.page(&engine, bloom, 1).unwrap()
                    {
                        mem.finish_filter();
                        build = None;
                    }
                }
            }
            for k in 0u8..12 {
                let key = rkey(u64::from(k));
                proptest::prop_assert_eq!(mem.get(&engine, &key).unwrap(), model.get(&key).unwrap(), "key {}", k);
            }
        }
    }
}

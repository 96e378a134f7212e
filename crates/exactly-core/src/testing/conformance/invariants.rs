//! The protocol's invariants under random deliveries, duplicates, handler failures and
//! crashes, as property tests on any store.
//!
//! Invariants checked after every case:
//! - every key whose handler can succeed is credited exactly once in the transactional
//!   state, and every key that ends dead-lettered is credited zero times;
//! - no message is lost: each delivery ends acknowledged or dead-lettered, nothing is
//!   left ready or unacknowledged;
//! - the handler never runs for a key that is already done;
//! - the shared total equals the number of credited keys (no lost update between
//!   concurrent runs).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::Subject;
use crate::store::{DedupStore, RecordState, StoreKey};
use crate::testing::{CrashPlan, DrainOptions, MemoryBroker, Runs, drain};
use crate::{Context, Error, HandlerError, Message, Processor, RetryPolicy, handler_fn};

/// Runs the property test on fresh subjects made by `subject`: 96 cases of up to 12 keys
/// on an in-memory store, 24 of up to 8 keys on others (they reopen after every crash).
///
/// # Panics
/// With the smallest failing case, when an invariant breaks.
pub fn keeps_the_invariants<S: Subject>(subject: impl Fn() -> S) {
    let probe = subject();
    let (cases, keys, extra) = if probe.in_memory() { (96, 12, 30) } else { (24, 8, 16) };
    drop(probe);
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let result = runner.run(&case(keys, extra), |c| run_case(c, &subject()));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Ok,
    Permanent,
    /// Fails transiently on its first n runs.
    FailsFirst(u32),
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => Just(Behaviour::Ok),
        1 => Just(Behaviour::Permanent),
        2 => (1u32..5).prop_map(Behaviour::FailsFirst),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    keys: Vec<Behaviour>,
    deliveries: Vec<usize>,
    seed: u64,
    crash_probability: f64,
    concurrency: usize,
}

fn case(max_keys: usize, max_extra: usize) -> impl Strategy<Value = Case> {
    (proptest::collection::vec(behaviour(), 1..max_keys), any::<u64>(), 0.0f64..0.15, 1usize..6).prop_flat_map(
        move |(keys, seed, crash_probability, concurrency)| {
            let n = keys.len();
            proptest::collection::vec(0..n, 0..max_extra).prop_map(move |extra| {
                // Every key at least once, then duplicates in random places.
                let mut deliveries: Vec<usize> = (0..n).collect();
                for (i, k) in extra.into_iter().enumerate() {
                    let at = (seed as usize).wrapping_add(i * 7) % (deliveries.len() + 1);
                    deliveries.insert(at, k);
                }
                Case { keys: keys.clone(), deliveries, seed, crash_probability, concurrency }
            })
        },
    )
}

async fn credit_of(store: &Arc<dyn DedupStore>, key: &[u8]) -> i64 {
    store
        .state_get(&StoreKey::state("ledger", key))
        .await
        .expect("a state read")
        .map(|raw| serde_json::from_slice(&raw).expect("a JSON credit"))
        .unwrap_or(0)
}

fn run_case(case: Case, subject: &dyn Subject) -> Result<(), TestCaseError> {
    // The in-memory store never waits on another thread, so its cases can run on tokio's
    // paused clock (retry delays take no time). Sled's commits wait on its commit thread;
    // a paused clock would jump ahead meanwhile and fire timeouts, so sled runs on the real
    // clock.
    let paused = subject.in_memory();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .map_err(|e| TestCaseError::fail(format!("a runtime: {e}")))?;
    rt.block_on(async move {
        let broker = MemoryBroker::new();
        for &k in &case.deliveries {
            broker.publish(
                "q",
                Message::builder(format!("payload-{k}")).header("idempotency-key", format!("k{k}")).build(),
            );
        }
        let runs = Runs::default();
        let violations = Arc::new(AtomicU64::new(0));
        let behaviours: Arc<HashMap<String, Behaviour>> =
            Arc::new(case.keys.iter().enumerate().map(|(i, b)| (format!("k{i}"), *b)).collect());
        let plan = Arc::new(CrashPlan::random(case.seed, case.crash_probability));
        let mut crashes = 0;
        loop {
            let store = subject.open().await;
            let (runs2, violations2, behaviours2, store2) =
                (runs.clone(), violations.clone(), behaviours.clone(), store.clone());
            let handler = handler_fn(move |_m: Message, ctx: Context| {
                let (runs, violations, behaviours, store) =
                    (runs2.clone(), violations2.clone(), behaviours2.clone(), store2.clone());
                async move {
                    let key = ctx.message_key().to_owned();
                    let done = store
                        .inspect(&StoreKey::new("ledger", &key))
                        .await
                        .map_err(HandlerError::transient)?
                        .is_some_and(|r| matches!(r.state, RecordState::Done { .. }));
                    if done {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    let n = runs.hit(&key);
                    match behaviours[&key] {
                        Behaviour::Permanent => {
                            return Err(HandlerError::validation("bad message"));
                        }
                        Behaviour::FailsFirst(f) if n <= f => {
                            return Err(HandlerError::transient("flaky"));
                        }
                        _ => {}
                    }
                    let mine: i64 = ctx.state().get_json(&key).await?.unwrap_or(0);
                    ctx.state().put_json(&key, &(mine + 1)).await?;
                    let total: i64 = ctx.state().get_json("total").await?.unwrap_or(0);
                    ctx.state().put_json("total", &(total + 1)).await?;
                    Ok(())
                }
            });
            let processor = Processor::builder("ledger", handler)
                .shared_store(store.clone())
                .retry(
                    RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(100), 3)
                        .expect("the test setup"),
                )
                .no_breaker()
                .faults(plan.clone())
                .build()
                .expect("the test setup");
            let opts = DrainOptions { concurrency: case.concurrency, faults: Some(plan.clone()), max_deliveries: None };
            match drain(&broker, "q", &processor, opts).await {
                Ok(_) => {
                    drop(processor);
                    break;
                }
                Err(Error::InjectedCrash(_)) => {
                    crashes += 1;
                    if crashes >= 20 {
                        plan.disarm();
                    }
                    drop(processor);
                    drop(store);
                    subject.crash().await;
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
            }
        }

        let store = subject.open().await;
        let stats = broker.stats("q");
        prop_assert_eq!((stats.ready, stats.unacked), (0, 0), "messages left behind: {:?}", stats);
        prop_assert_eq!(stats.acked, stats.published, "a message was lost: {:?}", stats);
        prop_assert_eq!(violations.load(Ordering::SeqCst), 0, "the handler ran for a key already done");
        let dead: HashMap<String, usize> = broker.dead_letters("q").iter().fold(HashMap::new(), |mut m, d| {
            *m.entry(d.dead_letter.key.clone().unwrap_or_default()).or_default() += 1;
            m
        });
        let mut credited = 0;
        for (i, b) in case.keys.iter().enumerate() {
            let key = format!("k{i}");
            let credit = credit_of(&store, key.as_bytes()).await;
            let dl = dead.get(&key).copied().unwrap_or(0);
            prop_assert!(credit <= 1, "{} credited {} times", key, credit);
            prop_assert!(credit == 1 || dl > 0, "{} ({:?}) neither credited nor dead-lettered", key, b);
            prop_assert!(!(credit == 1 && dl > 0), "{} both credited and dead-lettered", key);
            match b {
                Behaviour::Ok => prop_assert_eq!(credit, 1, "{} should be credited", key),
                Behaviour::Permanent => prop_assert_eq!(credit, 0),
                Behaviour::FailsFirst(_) => {}
            }
            credited += credit;
        }
        prop_assert_eq!(credit_of(&store, b"total").await, credited, "lost update on the shared total");
        Ok(())
    })
}

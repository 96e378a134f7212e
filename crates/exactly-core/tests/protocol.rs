//! Each branch of the processing protocol, on the in-memory store.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Runs, TokioClock};
use exactly_core::store::RecordState;
use exactly_core::testing::{CrashPlan, DrainOptions, MemoryBroker, drain};
use exactly_core::{
    BreakerConfig, Clock, Context, CrashPoint, DedupStore, Disposition, Error, HandlerError, KeySource, KeyStrategy,
    MemoryStore, Message, MissingKey, OrphanPolicy, OutboundRecord, Outcome, Processor, REDRIVE_HEADER, RetryPolicy,
    StoreKey, handler_fn, reasons,
};

fn msg(key: &str, payload: &str) -> Message {
    Message::builder(payload.to_owned()).header("idempotency-key", key).build()
}

/// A handler that counts runs and credits `balance` in state by the payload's number.
fn crediting(runs: Runs) -> impl exactly_core::Handler<Output = String> {
    handler_fn(move |m: Message, ctx: Context| {
        let runs = runs.clone();
        async move {
            runs.hit(ctx.message_key());
            let n: i64 = m.decode()?;
            let bal: i64 = ctx.state().get_json("balance").await?.unwrap_or(0);
            ctx.state().put_json("balance", &(bal + n)).await?;
            Ok(format!("balance {}", bal + n))
        }
    })
}

async fn balance(store: &Arc<dyn DedupStore>, ns: &str) -> i64 {
    store
        .state_get(&StoreKey::state(ns, b"balance"))
        .await
        .unwrap()
        .map(|raw| serde_json::from_slice(&raw).unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_duplicate_is_acked_from_the_cache_without_running_the_handler() {
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = Processor::builder("ledger", crediting(runs.clone())).shared_store(store.clone()).build().unwrap();

    let first = p.process(msg("tx-1", "5")).await.unwrap();
    assert_eq!((first.disposition.clone(), first.outcome), (Disposition::Ack, Outcome::Handled));
    assert_eq!(first.output.as_deref(), Some(&b"balance 5"[..]));

    let dup = p.process(msg("tx-1", "5")).await.unwrap();
    assert_eq!((dup.disposition.clone(), dup.outcome), (Disposition::Ack, Outcome::Duplicate));
    assert!(dup.outcome.is_cached());
    assert_eq!(dup.output, first.output, "same key, same answer");
    assert_eq!(runs.get("tx-1"), 1);
    assert_eq!(balance(&store, "ledger").await, 5);
}

#[tokio::test]
async fn two_consumers_of_one_message_each_run_once() {
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let (ra, rb) = (Runs::default(), Runs::default());
    let a = Processor::builder("billing", crediting(ra.clone())).shared_store(store.clone()).build().unwrap();
    let b = Processor::builder("emails", crediting(rb.clone())).shared_store(store.clone()).build().unwrap();
    for _ in 0..2 {
        let _ = a.process(msg("k", "1")).await.unwrap();
        let _ = b.process(msg("k", "1")).await.unwrap();
    }
    assert_eq!((ra.get("k"), rb.get("k")), (1, 1));
    assert_eq!((balance(&store, "billing").await, balance(&store, "emails").await), (1, 1));
}

#[tokio::test]
async fn the_same_key_with_another_payload_is_a_key_conflict() {
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = Processor::builder("ledger", crediting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let _ = p.process(msg("tx-1", "5")).await.unwrap();
    let mut conflict = p.process(msg("tx-1", "500")).await.unwrap();
    let dl = conflict.dead_letter().expect("dead-letter");
    assert_eq!(dl.reason, reasons::KEY_CONFLICT);
    assert!(dl.last_error.as_deref().unwrap().contains("fingerprint"));
    conflict.confirm_dead_letter().await.unwrap();
    // The original stays done: a true duplicate is still acked from the cache.
    assert_eq!(p.process(msg("tx-1", "5")).await.unwrap().outcome, Outcome::Duplicate);
    assert_eq!(runs.get("tx-1"), 1);
    assert_eq!(balance(&store, "ledger").await, 5);

    // The conflicting copy delivered again was dead-lettered already: acknowledged, not
    // dead-lettered a second time. A third payload under the key is its own conflict.
    let again = p.process(msg("tx-1", "500")).await.unwrap();
    assert_eq!((again.disposition.clone(), again.outcome), (Disposition::Ack, Outcome::AlreadyDeadLettered));
    let mut third = p.process(msg("tx-1", "7")).await.unwrap();
    assert_eq!(third.dead_letter().map(|d| d.reason.as_str()), Some(reasons::KEY_CONFLICT));
    third.confirm_dead_letter().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_carries_an_id_that_its_copies_share() {
    let p = Processor::builder("ledger", crediting(Runs::default())).store(MemoryStore::new()).build().unwrap();
    let first = p.process(msg("tx-9", "not a number")).await.unwrap();
    let id = first.dead_letter().unwrap().id.clone();
    assert_eq!(id.len(), 32, "{id}");
    // Abandoned (the broker did not take it): the next copy is dead-lettered again, as
    // the same dead letter.
    let mut first = first;
    first.abandon_dead_letter().await.unwrap();
    let second = p.process(msg("tx-9", "not a number")).await.unwrap();
    assert_eq!(second.dead_letter().unwrap().id, id, "a copy of one dead letter has its id");
    let other = p.process(msg("tx-10", "not a number")).await.unwrap();
    assert_ne!(other.dead_letter().unwrap().id, id);
}

#[tokio::test]
async fn a_message_without_a_key_is_dead_lettered_or_run_unprotected() {
    let runs = Runs::default();
    let p = Processor::builder("c", crediting(runs.clone())).store(MemoryStore::new()).build().unwrap();
    let out = p.process(Message::new("1")).await.unwrap();
    assert_eq!(out.dead_letter().unwrap().reason, reasons::MISSING_KEY);
    assert_eq!(runs.total(), 0);

    let bad = Message::builder("1").header("idempotency-key", vec![0xffu8, 0xfe]).build();
    assert_eq!(p.process(bad).await.unwrap().dead_letter().unwrap().reason, reasons::INVALID_KEY);
    let huge = Message::builder("1").header("idempotency-key", "k".repeat(65_536)).build();
    let out = p.process(huge).await.unwrap();
    assert_eq!(out.dead_letter().unwrap().reason, reasons::INVALID_KEY);
    assert!(out.dead_letter().unwrap().last_error.as_deref().unwrap().contains("65536"));

    let unprotected = Processor::builder("u", crediting(runs.clone()))
        .store(MemoryStore::new())
        .keys(KeyStrategy::default().on_missing(MissingKey::ProcessUnprotected))
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(unprotected.process(Message::new("1")).await.unwrap().outcome, Outcome::Handled);
    }
    assert_eq!(runs.get(""), 2, "without a key nothing stops a second run");
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_once_and_remembered_until_redriven() {
    let runs = Runs::default();
    let p = Processor::builder("ledger", crediting(runs.clone())).store(MemoryStore::new()).build().unwrap();
    let poison = msg("tx-9", "not a number");
    let mut out = p.process(poison.clone()).await.unwrap();
    let dl = out.dead_letter().unwrap().clone();
    assert_eq!((dl.reason.as_str(), dl.attempts), (reasons::DECODE, 1));
    assert_eq!(dl.key.as_deref(), Some("tx-9"));
    out.confirm_dead_letter().await.unwrap();

    let again = p.process(poison.clone()).await.unwrap();
    assert_eq!((again.disposition, again.outcome), (Disposition::Ack, Outcome::AlreadyDeadLettered));
    assert_eq!(runs.get("tx-9"), 1, "a redelivered poison message does not run again");

    let mut redriven = poison;
    redriven.headers_mut().insert(REDRIVE_HEADER, "true");
    let out = p.process(redriven).await.unwrap();
    assert_eq!(out.dead_letter().unwrap().reason, reasons::DECODE, "re-driving runs it again");
    assert_eq!(runs.get("tx-9"), 2);
}

#[tokio::test]
async fn transient_failures_retry_with_growing_delays_then_dead_letter() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(ctx.attempt(), n, "the context counts attempts across retries");
            Err::<(), _>(HandlerError::transient(format!("ledger down ({n})")))
        }
    });
    let retry = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10), 4).unwrap();
    let p = Processor::builder("c", h).store(MemoryStore::new()).retry(retry).no_breaker().build().unwrap();
    for attempt in 1..=3u32 {
        let out = p.process(msg("k", "x")).await.unwrap();
        let Disposition::Retry { after } = out.disposition else { panic!("attempt {attempt}: {out:?}") };
        assert!(after <= retry.ceiling(attempt), "{after:?} above the ceiling of attempt {attempt}");
        assert_eq!(out.outcome, Outcome::Retry);
    }
    let mut out = p.process(msg("k", "x")).await.unwrap();
    let dl = out.dead_letter().unwrap();
    assert_eq!((dl.reason.as_str(), dl.attempts), (reasons::RETRIES_EXHAUSTED, 4));
    assert_eq!(dl.first_error.as_deref(), Some("ledger down (1)"));
    assert_eq!(dl.last_error.as_deref(), Some("ledger down (4)"));
    out.confirm_dead_letter().await.unwrap();
    assert_eq!(p.process(msg("k", "x")).await.unwrap().outcome, Outcome::AlreadyDeadLettered);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_times_out_and_a_panic_is_transient() {
    let h = handler_fn(|m: Message, _ctx: Context| async move {
        match m.payload_str() {
            Some("slow") => tokio::time::sleep(Duration::from_secs(3600)).await,
            Some("panic") => panic!("boom"),
            _ => {}
        }
        Ok(())
    });
    let p = Processor::builder("c", h)
        .store(MemoryStore::new())
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::no_retries())
        .no_breaker()
        .build()
        .unwrap();
    let out = p.process(msg("a", "slow")).await.unwrap();
    assert!(out.dead_letter().unwrap().last_error.as_deref().unwrap().contains("timed out after 2s"));
    let out = p.process(msg("b", "panic")).await.unwrap();
    assert!(out.dead_letter().unwrap().last_error.as_deref().unwrap().contains("panicked: boom"));
}

/// A processor whose handler counts runs and takes `run_for`.
fn slow_processor(runs: &Runs, run_for: Duration) -> Processor {
    let r = runs.clone();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let r = r.clone();
        async move {
            r.hit(ctx.message_key());
            tokio::time::sleep(run_for).await;
            Ok(())
        }
    });
    Processor::builder("c", h).store(MemoryStore::new()).clock(TokioClock::shared()).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_copy_of_a_key_being_handled_waits_for_it_and_is_a_duplicate() {
    let runs = Runs::default();
    let p = slow_processor(&runs, Duration::from_millis(500));
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(p.process(msg("k", "x")), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        p.process(msg("k", "x")).await
    });
    assert_eq!(a.unwrap().outcome, Outcome::Handled);
    let b = b.unwrap();
    assert_eq!((b.outcome, b.disposition), (Outcome::Duplicate, Disposition::Ack));
    assert!(started.elapsed() < Duration::from_millis(600), "the copy waited {:?}", started.elapsed());
    assert_eq!(runs.get("k"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_copy_waits_at_most_a_second_for_a_long_handler_then_is_busy() {
    let runs = Runs::default();
    let p = slow_processor(&runs, Duration::from_secs(5));
    let (a, b) = tokio::join!(p.process(msg("k", "x")), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let asked = tokio::time::Instant::now();
        (p.process(msg("k", "x")).await, asked.elapsed())
    });
    assert_eq!(a.unwrap().outcome, Outcome::Handled);
    let (b, waited) = b;
    let b = b.unwrap();
    assert_eq!(b.outcome, Outcome::Busy);
    assert!(matches!(b.disposition, Disposition::Retry { after } if after >= Duration::from_millis(50)));
    assert!((Duration::from_secs(1)..Duration::from_millis(1100)).contains(&waited), "waited {waited:?}");
    assert_eq!(p.process(msg("k", "x")).await.unwrap().outcome, Outcome::Duplicate);
    assert_eq!(runs.get("k"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_a_long_handler_s_lease() {
    let runs = Runs::default();
    let r = runs.clone();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let r = r.clone();
        async move {
            r.hit(ctx.message_key());
            tokio::time::sleep(Duration::from_secs(5)).await; // 10x the lease
            Ok(())
        }
    });
    let p = Processor::builder("c", h)
        .store(MemoryStore::new())
        .clock(TokioClock::shared())
        .lease(Duration::from_millis(500))
        .build()
        .unwrap();
    let (a, b) = tokio::join!(p.process(msg("k", "x")), async {
        tokio::time::sleep(Duration::from_secs(3)).await; // long after the first lease
        p.process(msg("k", "x")).await
    });
    assert_eq!(a.unwrap().outcome, Outcome::Handled);
    assert_eq!(b.unwrap().outcome, Outcome::Busy, "the renewed lease is still held");
    assert_eq!(runs.get("k"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_and_the_old_holder_is_fenced() {
    // The first holder stalls past its lease without renewing (as a stopped process
    // would); a second delivery takes the key over with a larger fencing token.
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let clock = Arc::new(exactly_core::ManualClock::new(1_000_000));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stall_tx, stall_rx) = tokio::sync::oneshot::channel::<()>();
    let stall = Arc::new(tokio::sync::Mutex::new(Some(stall_rx)));
    let (t, s) = (tokens.clone(), stall.clone());
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let (t, s) = (t.clone(), s.clone());
        async move {
            t.lock().unwrap().push(ctx.fencing_token());
            // The first run stalls before touching state (a stopped process holds no
            // locks it has not taken yet).
            let first = s.lock().await.take();
            if let Some(rx) = first {
                let _ = rx.await;
            }
            let bal: i64 = ctx.state().get_json("balance").await?.unwrap_or(0);
            ctx.state().put_json("balance", &(bal + 1)).await?;
            Ok(())
        }
    });
    let p = Processor::builder("c", h)
        .shared_store(store.clone())
        .clock(clock.clone())
        .lease(Duration::from_secs(1))
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let p1 = p.clone();
    let first = tokio::spawn(async move { p1.process(msg("k", "x")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    clock.advance(Duration::from_secs(5)); // the first lease is long gone
    let second = p.process(msg("k", "x")).await.unwrap();
    assert_eq!(second.outcome, Outcome::Handled);
    stall_tx.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.outcome, Outcome::Busy, "the stale holder's commit is refused");
    let t = tokens.lock().unwrap().clone();
    assert!(t[1] > t[0], "fencing tokens grow: {t:?}");
    assert_eq!(balance(&store, "c").await, 1, "state applied once though the handler ran twice");
    assert_eq!(p.process(msg("k", "x")).await.unwrap().outcome, Outcome::Duplicate);
}

#[tokio::test]
async fn a_crash_mid_run_is_run_again_or_quarantined_by_policy() {
    for policy in [OrphanPolicy::RunAgain, OrphanPolicy::Quarantine] {
        let store = Arc::new(MemoryStore::new());
        let runs = Runs::default();
        let plan = Arc::new(CrashPlan::nth(CrashPoint::AfterHandler, 1));
        let p = Processor::builder("c", crediting(runs.clone()))
            .shared_store(store.clone())
            .orphans(policy)
            .faults(plan)
            .build()
            .unwrap();
        let err = p.process(msg("k", "7")).await.unwrap_err();
        assert!(matches!(err, Error::InjectedCrash(CrashPoint::AfterHandler)));
        drop(p);
        store.simulate_crash();
        let p = Processor::builder("c", crediting(runs.clone()))
            .shared_store(store.clone())
            .orphans(policy)
            .build()
            .unwrap();
        let mut out = p.process(msg("k", "7")).await.unwrap();
        match policy {
            OrphanPolicy::RunAgain => {
                assert_eq!(out.outcome, Outcome::Handled);
                assert_eq!(runs.get("k"), 2);
            }
            OrphanPolicy::Quarantine => {
                assert_eq!(out.dead_letter().unwrap().reason, reasons::UNKNOWN_OUTCOME);
                assert_eq!(runs.get("k"), 1, "never run twice");
                out.confirm_dead_letter().await.unwrap();
                assert_eq!(p.process(msg("k", "7")).await.unwrap().outcome, Outcome::AlreadyDeadLettered);
            }
        }
        let shared: Arc<dyn DedupStore> = store;
        let expected = if policy == OrphanPolicy::RunAgain { 7 } else { 0 };
        assert_eq!(balance(&shared, "c").await, expected, "{policy:?}: the crashed run committed nothing");
    }
}

#[tokio::test]
async fn a_failed_run_commits_none_of_its_state() {
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let h = handler_fn(|_m: Message, ctx: Context| async move {
        ctx.state().put_json("balance", &1_000_000).await?;
        Err::<(), _>(HandlerError::validation("refused after writing"))
    });
    let p = Processor::builder("c", h).shared_store(store.clone()).build().unwrap();
    let out = p.process(msg("k", "x")).await.unwrap();
    assert_eq!(out.dead_letter().unwrap().reason, "validation");
    assert_eq!(balance(&store, "c").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_that_touch_the_same_state_are_serialised() {
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let runs = Runs::default();
    let p = Processor::builder("c", crediting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move { p.process(msg(&format!("k{i}"), "1")).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().outcome, Outcome::Handled);
    }
    assert_eq!(balance(&store, "c").await, 200, "no lost update among 200 concurrent credits");
}

#[tokio::test(start_paused = true)]
async fn a_failing_dependency_pauses_instead_of_dead_lettering_everything() {
    let broker = MemoryBroker::new();
    for i in 0..40 {
        broker.publish("q", msg(&format!("k{i}"), "1"));
    }
    let down_until = tokio::time::Instant::now() + Duration::from_secs(20);
    let runs = Runs::default();
    let r = runs.clone();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let r = r.clone();
        async move {
            r.hit(ctx.message_key());
            if tokio::time::Instant::now() < down_until {
                return Err(HandlerError::transient("connection refused"));
            }
            Ok(())
        }
    });
    let p = Processor::builder("c", h)
        .store(MemoryStore::new())
        .retry(RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1), 3).unwrap())
        .breaker(BreakerConfig::new(3, Duration::from_secs(2), Duration::from_secs(8)).unwrap())
        .build()
        .unwrap();
    let report = drain(&broker, "q", &p, DrainOptions { concurrency: 4, ..DrainOptions::default() }).await.unwrap();
    assert!(report.pauses > 0, "{report:?}");
    assert_eq!(report.handled, 40, "{report:?}");
    assert_eq!(broker.stats("q").dead_lettered, 0, "nothing dead-lettered while the breaker was open");
    assert!(runs.total() < 40 * 3, "the breaker stopped the retries: {} runs", runs.total());
}

#[tokio::test(start_paused = true)]
async fn one_poison_message_exhausts_its_retries_without_opening_the_breaker() {
    let broker = MemoryBroker::new();
    broker.publish("q", msg("bad", "1"));
    for i in 0..5 {
        broker.publish("q", msg(&format!("ok{i}"), "1"));
    }
    let h = handler_fn(|_m: Message, ctx: Context| async move {
        if ctx.message_key() == "bad" {
            return Err(HandlerError::transient("always fails"));
        }
        Ok(())
    });
    let p = Processor::builder("c", h)
        .store(MemoryStore::new())
        .retry(RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(100), 10).unwrap())
        .breaker(BreakerConfig::new(3, Duration::from_secs(1), Duration::from_secs(1)).unwrap())
        .build()
        .unwrap();
    let report = drain(&broker, "q", &p, DrainOptions { concurrency: 1, ..DrainOptions::default() }).await.unwrap();
    assert_eq!((report.handled, report.pauses), (5, 0), "{report:?}");
    let dead = broker.dead_letters("q");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].dead_letter.reason.as_str(), dead[0].dead_letter.attempts), (reasons::RETRIES_EXHAUSTED, 10));
}

#[tokio::test]
async fn emitted_records_carry_derived_keys_and_are_sent_again_for_a_duplicate() {
    let h = handler_fn(|m: Message, ctx: Context| async move {
        ctx.emit(OutboundRecord::new("receipts", m.payload().clone()));
        ctx.emit(OutboundRecord::new("audit", "x").header("idempotency-key", "mine"));
        Ok(())
    });
    let p = Processor::builder("c", h).store(MemoryStore::new()).build().unwrap();
    let first = p.process(msg("k", "p")).await.unwrap();
    assert_eq!(first.emitted.len(), 2);
    assert_eq!(first.emitted[0].header_value("idempotency-key"), Some(&Bytes::from("c:k:0")));
    assert_eq!(first.emitted[1].header_value("idempotency-key"), Some(&Bytes::from("mine")));
    let dup = p.process(msg("k", "p")).await.unwrap();
    assert_eq!(dup.outcome, Outcome::Duplicate);
    assert_eq!(dup.emitted, first.emitted);
}

#[tokio::test]
async fn a_crash_after_the_done_record_makes_the_redelivery_a_duplicate() {
    let broker = MemoryBroker::new();
    for i in 0..20 {
        broker.publish("q", msg(&format!("k{i}"), "1"));
    }
    let store = Arc::new(MemoryStore::new());
    let runs = Runs::default();
    for point in
        [CrashPoint::AfterDoneRecord, CrashPoint::AfterAck, CrashPoint::BeforeHandler, CrashPoint::AfterHandler]
    {
        let plan = Arc::new(CrashPlan::nth(point, 3));
        let p = Processor::builder("c", crediting(runs.clone()))
            .shared_store(store.clone())
            .faults(plan.clone())
            .build()
            .unwrap();
        let opts = DrainOptions { concurrency: 1, faults: Some(plan), ..DrainOptions::default() };
        let err = drain(&broker, "q", &p, opts).await.unwrap_err();
        assert!(matches!(err, Error::InjectedCrash(p) if p == point), "{err}");
        store.simulate_crash();
    }
    let p = Processor::builder("c", crediting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let report = drain(&broker, "q", &p, DrainOptions::default()).await.unwrap();
    let shared: Arc<dyn DedupStore> = store;
    assert_eq!(balance(&shared, "c").await, 20, "every credit applied exactly once: {report:?}");
    let stats = broker.stats("q");
    assert_eq!((stats.acked, stats.unacked, stats.ready), (20, 0, 0));
    // AfterHandler crashed once after a run whose effects were not recorded: that one key
    // ran twice (at-least-once for effects outside the store), and no other.
    let twice: Vec<u32> = (0..20).map(|i| runs.get(&format!("k{i}"))).filter(|&n| n > 1).collect();
    assert_eq!(twice, vec![2]);
}

#[tokio::test]
async fn expired_records_are_purged_by_bucket_and_the_key_runs_again() {
    let clock = Arc::new(exactly_core::ManualClock::new(10_000_000));
    let store = Arc::new(MemoryStore::with_bucket_width(60_000));
    let runs = Runs::default();
    let p = Processor::builder("c", crediting(runs.clone()))
        .shared_store(store.clone())
        .clock(clock.clone())
        .retention(Duration::from_secs(600))
        .build()
        .unwrap();
    for i in 0..30 {
        let _ = p.process(msg(&format!("k{i}"), "1")).await.unwrap();
    }
    assert_eq!(store.purge_expired(clock.now(), 100).await.unwrap().records_removed, 0, "nothing expired yet");
    clock.advance(Duration::from_secs(600 + 60));
    let r = store.purge_expired(clock.now(), 10).await.unwrap();
    assert_eq!((r.records_removed, r.more), (10, true), "bounded by the budget");
    let r = store.purge_expired(clock.now(), 100).await.unwrap();
    assert_eq!((r.records_removed, r.more), (20, false));
    assert!(store.inspect(&StoreKey::new("c", "k0")).await.unwrap().is_none());
    assert_eq!(p.process(msg("k0", "1")).await.unwrap().outcome, Outcome::Handled, "expired: runs again");
    assert_eq!(runs.get("k0"), 2);
}

#[tokio::test]
async fn a_record_rewritten_after_expiry_indexing_is_not_purged_early() {
    let clock = Arc::new(exactly_core::ManualClock::new(0));
    let store = Arc::new(MemoryStore::with_bucket_width(1_000));
    let h = handler_fn(|m: Message, _c: Context| async move {
        if m.payload_str() == Some("bad") {
            return Err(HandlerError::validation("bad"));
        }
        Ok(())
    });
    let p = Processor::builder("c", h)
        .shared_store(store.clone())
        .clock(clock.clone())
        .retention(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut out = p.process(msg("k", "bad")).await.unwrap();
    out.confirm_dead_letter().await.unwrap(); // dead-lettered, expires at 10 s
    clock.advance(Duration::from_secs(8));
    let mut redrive = msg("k", "bad");
    redrive.headers_mut().insert(REDRIVE_HEADER, "1");
    let mut out = p.process(redrive).await.unwrap();
    out.confirm_dead_letter().await.unwrap(); // rewritten, now expires at 18 s
    clock.advance(Duration::from_secs(3)); // 11 s: the first index entry is due
    let r = store.purge_expired(clock.now(), 100).await.unwrap();
    assert_eq!((r.index_entries, r.records_removed), (1, 0));
    assert!(matches!(
        store.inspect(&StoreKey::new("c", "k")).await.unwrap().unwrap().state,
        RecordState::DeadLettered { .. }
    ));
}

#[tokio::test]
async fn custom_keys_and_content_hashes_work() {
    let runs = Runs::default();
    let keys = KeyStrategy::from_sources([KeySource::custom(|m| {
        let v: serde_json::Value = serde_json::from_slice(m.payload()).ok()?;
        v.get("order")?.as_str().map(str::to_owned)
    })]);
    let r = runs.clone();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let r = r.clone();
        async move {
            r.hit(ctx.message_key());
            Ok(())
        }
    });
    let p = Processor::builder("c", h).store(MemoryStore::new()).keys(keys).build().unwrap();
    let m = Message::new(r#"{"order":"A-1"}"#);
    assert_eq!(p.process(m.clone()).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(m).await.unwrap().outcome, Outcome::Duplicate);
    assert_eq!(runs.get("A-1"), 1);
}

#[test]
fn invalid_settings_are_refused_with_the_field_name() {
    let h = || handler_fn(|_m: Message, _c: Context| async { Ok(()) });
    let e = Processor::builder(" ", h()).store(MemoryStore::new()).build().unwrap_err();
    assert!(e.to_string().contains("consumer"), "{e}");
    let e = Processor::builder("c", h()).build().unwrap_err();
    assert!(e.to_string().contains("store"), "{e}");
    let e = Processor::builder("c", h()).store(MemoryStore::new()).lease(Duration::from_millis(1)).build().unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");
    let e = Processor::builder("c", h()).store(MemoryStore::new()).timeout(Duration::ZERO).build().unwrap_err();
    assert!(e.to_string().contains("timeout"), "{e}");
}

/// A crediting processor on a store whose writes stay on their way to disk until the
/// test opens the gate.
fn gated() -> (Arc<exactly_core::testing::GatedStore>, Runs, Processor) {
    let store = Arc::new(exactly_core::testing::GatedStore::default());
    let runs = Runs::default();
    let p = Processor::builder("c", crediting(runs.clone())).shared_store(store.clone()).build().unwrap();
    (store, runs, p)
}

#[tokio::test]
async fn a_staged_done_record_is_busy_until_durable_and_releases_its_state_at_once() {
    let (store, runs, p) = gated();

    let first = p.process_staged(msg("a", "5")).await.unwrap();
    assert_eq!(first.processed().disposition, Disposition::Ack);
    assert!(!first.is_durable(), "the done-record is still on its way to disk");

    // The same key meanwhile: not a duplicate yet (it could still be lost). The copy waits
    // for the done-record (here it never comes: the gate is shut), then is busy.
    let again = p.process(msg("a", "5")).await.unwrap();
    assert_eq!(again.outcome, Outcome::Busy);

    // Another key on the same state does not wait for the fsync: it reads the value the
    // first run applied, and its own commit will be durable after it.
    let second = p.process_staged(msg("b", "7")).await.unwrap();
    assert_eq!(second.processed().output.as_deref(), Some(&b"balance 12"[..]));

    assert_eq!(store.open_gate(), 2);
    let first = first.durable().await.unwrap();
    assert_eq!(first.outcome, Outcome::Handled);
    assert_eq!(second.durable().await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(msg("a", "5")).await.unwrap().outcome, Outcome::Duplicate);
    assert_eq!((runs.get("a"), runs.get("b")), (1, 1));
}

#[tokio::test]
async fn poll_ready_is_pending_until_the_done_record_is_durable_then_durable_answers_at_once() {
    use futures_util::FutureExt as _;
    let (store, _runs, p) = gated();
    let mut staged = p.process_staged(msg("a", "5")).await.unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(staged.poll_ready(&mut cx).is_pending(), "the gate is shut");
    assert!(staged.poll_ready(&mut cx).is_pending(), "polled again: still waiting");

    assert_eq!(store.open_gate(), 1);
    tokio::time::timeout(Duration::from_secs(5), std::future::poll_fn(|cx| staged.poll_ready(cx))).await.unwrap();
    assert!(staged.poll_ready(&mut cx).is_ready(), "stays ready");
    let done = staged.durable().now_or_never().expect("durable() does not wait once ready").unwrap();
    assert_eq!(done.outcome, Outcome::Handled);
}

#[tokio::test]
async fn a_failure_seen_by_poll_ready_is_what_wait_returns() {
    use exactly_core::store::Durable;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut failed = Durable::pending(rx);
    assert!(failed.poll_ready(&mut cx).is_pending());
    tx.send(Err(exactly_core::Error::StorePoisoned { cause: "disk full".into() })).unwrap();
    assert!(failed.poll_ready(&mut cx).is_ready());
    assert!(matches!(failed.wait().await, Err(exactly_core::Error::StorePoisoned { cause }) if cause == "disk full"));

    let (tx, rx) = tokio::sync::oneshot::channel::<exactly_core::Result<()>>();
    let mut closed = Durable::pending(rx);
    drop(tx);
    assert!(closed.poll_ready(&mut cx).is_ready());
    assert!(matches!(closed.wait().await, Err(exactly_core::Error::StoreClosed)));
}

#[tokio::test]
async fn a_copy_that_comes_while_the_done_record_is_on_its_way_is_a_duplicate_once_it_is_durable() {
    let (store, runs, p) = gated();

    let first = p.process_staged(msg("a", "5")).await.unwrap();
    assert!(!first.is_durable());
    let copy = tokio::spawn({
        let p = p.clone();
        async move { p.process(msg("a", "5")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!copy.is_finished(), "the copy waits for the first delivery's done-record");
    assert_eq!(store.open_gate(), 1);
    assert_eq!(first.durable().await.unwrap().outcome, Outcome::Handled);
    let copy = tokio::time::timeout(Duration::from_millis(500), copy).await.unwrap().unwrap().unwrap();
    assert_eq!(copy.outcome, Outcome::Duplicate, "answered without a retry");
    assert_eq!(runs.get("a"), 1);
}

#[tokio::test]
async fn emitted_records_go_out_again_only_for_a_redelivery_of_the_same_record() {
    let h = handler_fn(|_m: Message, ctx: Context| async move {
        ctx.emit(OutboundRecord::new("out", "x"));
        Ok(())
    });
    let p = Processor::builder("c", h).store(MemoryStore::new()).build().unwrap();
    let at = |offset: i64| {
        Message::builder("p")
            .header("idempotency-key", "k")
            .coordinates(exactly_core::Coordinates::partitioned("in", 0, offset))
            .build()
    };
    assert_eq!(p.process(at(5)).await.unwrap().emitted.len(), 1);
    let redelivered = p.process(at(5)).await.unwrap();
    assert_eq!((redelivered.outcome, redelivered.emitted.len()), (Outcome::Duplicate, 1), "same record: publish again");
    let other = p.process(at(9)).await.unwrap();
    assert_eq!(
        (other.outcome, other.emitted.len()),
        (Outcome::Duplicate, 0),
        "another record with the key: nothing new"
    );
}

//! The settlement indicators: each settled delivery's age from its publish timestamp, the
//! ones later than the objective, clocks that disagree and messages without a timestamp.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use exactly_core::{
    Context, Coordinates, HandlerError, ManualClock, MemoryStore, Message, Outcome, Processor, handler_fn,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

const NOW: i64 = 1_700_000_000_000;

fn msg(key: &str, published_ms: Option<i64>) -> Message {
    let mut c = Coordinates::new("q");
    if let Some(ts) = published_ms {
        c = c.with_timestamp_ms(ts);
    }
    Message::builder(key.to_owned()).header("idempotency-key", key).coordinates(c).build()
}

/// Every metric's value (taken once: a snapshot drains the histograms).
type Snapshot = Vec<(CompositeKey, DebugValue)>;

fn snapshot(s: &Snapshotter) -> Snapshot {
    s.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect()
}

/// The value of `name` with `labels` (histograms: their samples).
fn value<'a>(snapshot: &'a Snapshot, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, value)| {
        let k = key.key();
        let ours = key.kind() == kind
            && k.name() == name
            && labels.iter().all(|(n, v)| k.labels().any(|l| l.key() == *n && l.value() == *v));
        ours.then_some(value)
    })
}

fn counter(s: &Snapshot, name: &str) -> u64 {
    match value(s, MetricKind::Counter, name, &[("consumer", "pay")]) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    }
}

fn ages(s: &Snapshot, outcome: &str) -> Vec<f64> {
    match value(
        s,
        MetricKind::Histogram,
        "exactly_settlement_age_seconds",
        &[("consumer", "pay"), ("outcome", outcome)],
    ) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        None => vec![],
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn settled_deliveries_are_aged_from_their_publish_timestamp() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = Arc::new(ManualClock::new(NOW as u64));
    let handler = handler_fn(|m: Message, _c: Context| async move {
        match m.payload_str() {
            Some("bad") => Err(HandlerError::validation("refused")),
            _ => Ok(()),
        }
    });
    // The handles are made with the processor, under the recorder.
    let p = metrics::with_local_recorder(&recorder, || {
        Processor::builder("pay", handler)
            .store(MemoryStore::new())
            .clock(clock.clone())
            .settlement_objective(Duration::from_secs(5))
            .build()
            .unwrap()
    });

    assert_eq!(p.process(msg("on-time", Some(NOW - 1_500))).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(msg("late", Some(NOW - 8_000))).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(msg("ahead", Some(NOW + 2_000))).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(msg("untimed", None)).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(msg("late", Some(NOW - 6_000))).await.unwrap().outcome, Outcome::Duplicate);
    let bad = p.process(msg("bad", Some(NOW - 100))).await.unwrap();
    assert_eq!(bad.outcome, Outcome::DeadLettered);

    let taken = snapshot(&snapshotter);
    assert_eq!(ages(&taken, "handled"), vec![1.5, 8.0, 0.0], "a clock ahead counts as age 0");
    assert_eq!(ages(&taken, "duplicate"), vec![6.0]);
    assert_eq!(ages(&taken, "dead_lettered"), vec![0.1]);
    assert_eq!(counter(&taken, "exactly_settlement_late_total"), 2, "8 s and 6 s are over 5 s");
    assert_eq!(counter(&taken, "exactly_settlement_clock_skew_total"), 1);
    assert_eq!(counter(&taken, "exactly_settlement_untimed_total"), 1);
    let by_store = value(&taken, MetricKind::Counter, "exactly_duplicates_total", &[("answered_by", "store")]);
    assert!(matches!(by_store, Some(DebugValue::Counter(1))), "the duplicate, answered from the store: {by_store:?}");
}

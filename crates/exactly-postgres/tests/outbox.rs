//! The outbox on the real PostgreSQL: emitted records commit with their done-record, a
//! duplicate adds none, one relay publishes them at a time, and a relay cut off between
//! the publish and the mark publishes them again, with the same keys.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{drop_schema, fresh_schema, url};
use exactly_core::publish::{Publish, PublishError};
use exactly_core::{
    Context, HandlerError, IDEMPOTENCY_KEY_HEADER, Message, OutboundRecord, Outcome, Processor, async_trait, handler_fn,
};
use exactly_postgres::{PgStore, RelayPass};
use tokio::sync::Notify;

/// Keeps what it is asked to publish; may cut the relay's session after a publish, or
/// hold the publish until told to go on.
#[derive(Debug, Default, Clone)]
struct Recorder {
    published: Arc<Mutex<Vec<OutboundRecord>>>,
    cut_after: Arc<Mutex<Option<String>>>,
    hold: Option<(Arc<Notify>, Arc<Notify>)>,
}

#[async_trait]
impl Publish for Recorder {
    async fn publish(&self, records: &[OutboundRecord]) -> Result<(), PublishError> {
        if let Some((entered, go)) = &self.hold {
            entered.notify_one();
            go.notified().await;
        }
        self.published.lock().unwrap().extend_from_slice(records);
        let cut = self.cut_after.lock().unwrap().take();
        if let Some(schema) = cut {
            // The relay's session ends after the broker took the records, before the mark
            // (waiting until it has: the signal alone may arrive after the mark).
            let client = common::connect().await;
            let ended: i64 = client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
                     WHERE state = 'idle in transaction' AND query LIKE '%' || $1 || '%outbox%'",
                    &[&schema],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(ended, 1, "the relay's session was found and ended");
        }
        Ok(())
    }
}

fn emitting() -> impl exactly_core::Handler {
    handler_fn(|msg: Message, ctx: Context| async move {
        let n = msg.payload_str().unwrap_or("?").to_owned();
        ctx.emit(OutboundRecord::new("settled", format!("settled {n}")));
        ctx.emit(OutboundRecord::new("audit", format!("audit {n}")));
        if n == "fail" {
            return Err(HandlerError::validation("refused after emitting"));
        }
        Ok::<_, HandlerError>(())
    })
}

async fn outbox_rows(schema: &str) -> i64 {
    let client = common::connect().await;
    client.query_one(&format!("SELECT count(*) FROM \"{schema}\".outbox"), &[]).await.unwrap().get(0)
}

fn msg(key: &str, payload: &str) -> Message {
    Message::builder(payload.to_owned()).header("idempotency-key", key).build()
}

async fn store(schema: &str) -> PgStore {
    PgStore::builder(url()).schema(schema).outbox(true).open().await.unwrap()
}

#[tokio::test]
async fn emitted_records_commit_with_their_done_record_and_a_duplicate_adds_none() {
    let schema = fresh_schema("outbox");
    let store = store(&schema).await;
    let recorder = Recorder::default();
    let relay = store.relay(recorder.clone());
    let p = Processor::builder("pay", emitting()).store(store).build().unwrap();
    let first = p.process(msg("k1", "1")).await.unwrap();
    assert_eq!(first.outcome, Outcome::Handled);
    assert!(first.emitted.is_empty(), "the relay publishes them, not the adapter");
    let failed = p.process(msg("k2", "fail")).await.unwrap();
    assert!(failed.dead_letter().is_some());
    let again = p.process(msg("k1", "1")).await.unwrap();
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert!(again.emitted.is_empty(), "a duplicate publishes nothing");
    assert_eq!(outbox_rows(&schema).await, 2, "the first run's two records, none of the failed run's");

    assert_eq!(relay.relay_once().await.unwrap(), RelayPass::Published(2));
    assert_eq!(relay.relay_once().await.unwrap(), RelayPass::Published(0));
    let published = recorder.published.lock().unwrap().clone();
    let payloads: Vec<&[u8]> = published.iter().map(|r| r.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"settled 1"[..], b"audit 1"], "in the order they were emitted");
    let keys: Vec<_> = published.iter().map(|r| r.header_value(IDEMPOTENCY_KEY_HEADER).cloned()).collect();
    assert_eq!(keys, [Some("pay:k1:0".into()), Some("pay:k1:1".into())]);
    assert_eq!(outbox_rows(&schema).await, 0, "marked sent once the broker confirmed");
    drop((p, relay));
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_between_publish_and_mark_publishes_again_with_the_same_keys() {
    let schema = fresh_schema("outbox_cut");
    let store = store(&schema).await;
    let recorder = Recorder::default();
    *recorder.cut_after.lock().unwrap() = Some(schema.clone());
    let relay = store.relay(recorder.clone());
    let p = Processor::builder("pay", emitting()).store(store).build().unwrap();
    assert_eq!(p.process(msg("k1", "1")).await.unwrap().outcome, Outcome::Handled);
    let err = relay.relay_once().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(outbox_rows(&schema).await, 2, "not marked: the session ended first");
    assert_eq!(relay.relay_once().await.unwrap(), RelayPass::Published(2));
    let published = recorder.published.lock().unwrap().clone();
    assert_eq!(published.len(), 4, "each record went out twice");
    assert_eq!(published[..2], published[2..], "the copies are identical, keys included");
    assert_eq!(outbox_rows(&schema).await, 0);
    drop((p, relay));
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_publishes_at_a_time_across_instances() {
    let schema = fresh_schema("outbox_one");
    let (a, b) = (store(&schema).await, store(&schema).await);
    let (entered, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let holding = Recorder { hold: Some((entered.clone(), go.clone())), ..Recorder::default() };
    let relay_a = Arc::new(a.relay(holding.clone()));
    let relay_b = b.relay(Recorder::default());
    let p = Processor::builder("pay", emitting()).store(a).build().unwrap();
    assert_eq!(p.process(msg("k1", "1")).await.unwrap().outcome, Outcome::Handled);
    let running = tokio::spawn({
        let relay_a = relay_a.clone();
        async move { relay_a.relay_once().await }
    });
    entered.notified().await;
    assert_eq!(relay_b.relay_once().await.unwrap(), RelayPass::Standby, "the other instance's relay waits");
    go.notify_one();
    assert_eq!(running.await.unwrap().unwrap(), RelayPass::Published(2));
    assert_eq!(relay_b.relay_once().await.unwrap(), RelayPass::Published(0));
    assert_eq!(holding.published.lock().unwrap().len(), 2);
    drop((p, relay_a, relay_b, b));
    drop_schema(&schema);
}

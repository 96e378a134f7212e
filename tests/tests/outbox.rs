//! The outbox end to end, on the real PostgreSQL and RabbitMQ: a payments handler emits a
//! `payment-settled` record per payment into the PostgreSQL outbox, 10% of the payments
//! delivered twice; the relay publishes them with publisher confirms, its session ended
//! once between a publish and the mark (so that batch goes out twice); a downstream
//! `exactly` consumer sees each settlement's effect exactly once, and the raw copies on
//! the broker are counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{AMQP_URL, until};
use exactly::amqp::AmqpPublisher;
use exactly::postgres::PgStore;
use exactly::publish::{Publish, PublishError};
use exactly::{
    Context, HandlerError, MemoryStore, Message, OutboundRecord, Outcome, Processor, async_trait, handler_fn,
};

const PAYMENTS: u64 = 200;

/// The relay's publisher, whose first publish ends the relay's database session after the
/// broker confirmed it, before the records are marked sent.
#[derive(Debug)]
struct CutOnce {
    inner: AmqpPublisher,
    schema: Mutex<Option<String>>,
    /// Records the broker confirmed, copies included.
    published: Arc<AtomicU64>,
}

#[async_trait]
impl Publish for CutOnce {
    async fn publish(&self, records: &[OutboundRecord]) -> Result<(), PublishError> {
        self.inner.publish(records).await?;
        self.published.fetch_add(records.len() as u64, Ordering::SeqCst);
        let cut = self.schema.lock().unwrap().take();
        if let Some(schema) = cut {
            let client = connect().await;
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

async fn connect() -> tokio_postgres::Client {
    let url = std::env::var("EXACTLY_POSTGRES_URL").expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_relayed_through_a_cut_take_effect_once_downstream() {
    let queue = format!("exactly-outbox-{}", std::process::id());
    let schema = format!("outbox_e2e_{}", std::process::id());

    // Downstream: an `exactly` consumer of the settlements (it declares the queue).
    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = effects.clone();
    let downstream = Processor::builder(
        "ledger",
        handler_fn(move |msg: Message, _c: Context| {
            let seen = seen.clone();
            async move {
                let text = msg.payload_str().unwrap_or("?").to_owned();
                *seen.lock().unwrap().entry(text).or_default() += 1;
                Ok::<_, HandlerError>(())
            }
        }),
    )
    .store(MemoryStore::new())
    .build()
    .unwrap();
    let consumer = exactly::amqp::Consumer::builder(AMQP_URL, &queue).build(downstream).unwrap();
    let (stats, stop) = (consumer.stats(), consumer.shutdown_handle());
    let running = tokio::spawn(consumer.run());
    until("the downstream consumer consumes", Duration::from_secs(30), async || {
        stats.consuming.load(Ordering::Relaxed)
    })
    .await;

    // Upstream: payments on the PostgreSQL store with its outbox.
    let url = std::env::var("EXACTLY_POSTGRES_URL").unwrap();
    let store = PgStore::builder(url).schema(&schema).outbox(true).open().await.unwrap();
    let target = queue.clone();
    let payments = Processor::builder(
        "payments",
        handler_fn(move |msg: Message, ctx: Context| {
            let target = target.clone();
            async move {
                let id = msg.payload_str().unwrap_or("?").to_owned();
                ctx.emit(OutboundRecord::new("", format!("payment-settled {id}")).key(target));
                Ok::<_, HandlerError>(())
            }
        }),
    );
    let published = Arc::new(AtomicU64::new(0));
    let cut = CutOnce {
        inner: AmqpPublisher::new(AMQP_URL),
        schema: Mutex::new(Some(schema.clone())),
        published: published.clone(),
    };
    let relay = store.relay(cut);
    let payments = payments.store(store).build().unwrap();
    let mut duplicates = 0;
    for i in 0..PAYMENTS {
        let m = Message::builder(format!("pay-{i}")).header("idempotency-key", format!("pay-{i}")).build();
        let first = payments.process(m.clone()).await.unwrap();
        assert!(first.emitted.is_empty(), "nothing for the adapter to publish: the relay does");
        if i % 10 == 0 {
            assert_eq!(payments.process(m).await.unwrap().outcome, Outcome::Duplicate);
            duplicates += 1;
        }
    }

    let (halt, halted) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(async move { relay.run(async move { drop(halted.await) }).await });
    until("every settlement took effect downstream", Duration::from_secs(60), async || {
        effects.lock().unwrap().len() as u64 == PAYMENTS
    })
    .await;
    // The relay goes on after the cut until every record is marked sent.
    let db = connect().await;
    let count = format!("SELECT count(*) FROM \"{schema}\".outbox");
    until("the outbox is empty", Duration::from_secs(30), async || {
        db.query_one(&count, &[]).await.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    // The copies of the cut batch arrive too: wait until the consumer settled them all.
    let _ = halt.send(());
    relaying.await.unwrap().unwrap();
    let copies = published.load(Ordering::SeqCst);
    until("every copy was settled downstream", Duration::from_secs(30), async || {
        stats.acked.load(Ordering::Relaxed) >= copies
    })
    .await;
    stop.shutdown();
    running.await.unwrap().unwrap();

    let effects = effects.lock().unwrap().clone();
    assert!(effects.values().all(|n| *n == 1), "each settlement took effect once downstream: {effects:?}");
    assert!(copies > PAYMENTS, "the cut batch went out twice: {copies} copies");
    println!(
        "{PAYMENTS} payments ({duplicates} delivered twice): {copies} raw copies of settlements on RabbitMQ, {} effects",
        effects.len()
    );
    let client = connect().await;
    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
    let conn = exactly::amqp::lapin::Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    exactly::amqp::Topology::declare().delete(&conn.create_channel().await.unwrap(), &queue).await.unwrap();
}

/// The app with `store.outbox = true`: a payments subscription on RabbitMQ emits into the
/// outbox, and the app's own relay publishes to the same broker; every settlement arrives,
/// and the outbox is empty when the app has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_runs_the_relay_of_its_outbox() {
    use exactly::amqp::lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    use exactly::amqp::lapin::types::{AMQPValue, FieldTable};
    use exactly::amqp::lapin::{BasicProperties, Connection};

    const N: u32 = 50;
    let pid = std::process::id();
    let (source, target, schema) =
        (format!("exactly-outbox-app-{pid}"), format!("exactly-outbox-settled-{pid}"), format!("outbox_app_{pid}"));
    let conn = Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let declare = |q: String, passive: bool| {
        let ch = ch.clone();
        async move {
            let opts = QueueDeclareOptions { passive, ..QueueDeclareOptions::default() };
            ch.queue_declare(q.as_str().into(), opts, FieldTable::default()).await.unwrap().message_count()
        }
    };
    declare(target.clone(), false).await;

    let url = std::env::var("EXACTLY_POSTGRES_URL").unwrap();
    let config = exactly::app::Config::from_toml(&format!(
        "[store]\nengine = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\noutbox = true\n\
         [http]\ndisabled = true\n[amqp.payments]\nurl = \"{AMQP_URL}\"\nqueue = \"{source}\"\n"
    ))
    .unwrap();
    let to = target.clone();
    let app = exactly::app::App::new(config).handler(
        "payments",
        handler_fn(move |msg: Message, ctx: Context| {
            let to = to.clone();
            async move {
                ctx.emit(OutboundRecord::new("", format!("settled {}", msg.payload_str().unwrap_or("?"))).key(to));
                Ok::<_, HandlerError>(())
            }
        }),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until(stop.clone()));
    until("the app declared its queue", Duration::from_secs(30), async || {
        let opts = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let probe = conn.create_channel().await.unwrap();
        probe.queue_declare(source.as_str().into(), opts, FieldTable::default()).await.is_ok()
    })
    .await;
    for i in 0..N {
        let mut headers = FieldTable::default();
        headers.insert("idempotency-key".into(), AMQPValue::LongString(format!("pay-{i}").into()));
        let props = BasicProperties::default().with_headers(headers);
        let payload = format!("pay-{i}");
        let publish = ch.basic_publish(
            "".into(),
            source.as_str().into(),
            BasicPublishOptions::default(),
            payload.as_bytes(),
            props,
        );
        publish.await.unwrap().await.unwrap();
    }
    until("every settlement was published", Duration::from_secs(60), async || declare(target.clone(), true).await >= N)
        .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(declare(target.clone(), true).await, N, "one settlement per payment");
    let db = connect().await;
    let left: i64 = db.query_one(&format!("SELECT count(*) FROM \"{schema}\".outbox"), &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "the outbox is empty");
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
    exactly::amqp::Topology::declare().delete(&ch, &source).await.unwrap();
    ch.queue_delete(target.as_str().into(), Default::default()).await.unwrap();
}

/// The relay to Kafka (librdkafka's mock cluster): the settlements of 100 payments (10
/// delivered twice) arrive once each, with their keys and derived idempotency keys, and a
/// downstream `exactly` processor counts one effect per settlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_relayed_to_kafka_arrive_once_each() {
    use exactly::kafka::KafkaPublisher;
    use exactly::kafka::rdkafka::consumer::{Consumer as _, StreamConsumer};
    use exactly::kafka::rdkafka::{ClientConfig, Message as _};
    use exactly::kafka::testing::MockKafka;

    const N: u64 = 100;
    let kafka = MockKafka::new(1).unwrap();
    let topic = format!("settled-{}", std::process::id());
    kafka.create_topic(&topic, 1).unwrap();
    let schema = format!("outbox_kafka_{}", std::process::id());
    let url = std::env::var("EXACTLY_POSTGRES_URL").unwrap();
    let store = PgStore::builder(url).schema(&schema).outbox(true).open().await.unwrap();
    let relay = store.relay(KafkaPublisher::new(kafka.bootstrap_servers()).unwrap());
    let to = topic.clone();
    let payments = Processor::builder(
        "payments",
        handler_fn(move |msg: Message, ctx: Context| {
            let to = to.clone();
            async move {
                let id = msg.payload_str().unwrap_or("?").to_owned();
                ctx.emit(OutboundRecord::new(to, format!("payment-settled {id}")).key(id));
                Ok::<_, HandlerError>(())
            }
        }),
    )
    .store(store)
    .build()
    .unwrap();
    for i in 0..N {
        let m = Message::builder(format!("pay-{i}")).header("idempotency-key", format!("pay-{i}")).build();
        assert_eq!(payments.process(m.clone()).await.unwrap().outcome, Outcome::Handled);
        if i % 10 == 0 {
            assert_eq!(payments.process(m).await.unwrap().outcome, Outcome::Duplicate);
        }
    }
    while relay.relay_once().await.unwrap() != exactly::postgres::RelayPass::Published(0) {}

    let downstream = Processor::builder("ledger", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&topic]).unwrap();
    let mut handled = 0;
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("in time").unwrap();
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(key, Some(format!("pay-{i}")), "in order, with its key");
        let mut msg = Message::builder(m.payload().unwrap_or_default().to_vec());
        for h in exactly::kafka::rdkafka::message::Headers::iter(m.headers().expect("headers")) {
            msg = msg.header(h.key, String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
        }
        let out = downstream.process(msg.build()).await.unwrap();
        handled += u64::from(out.outcome == Outcome::Handled);
    }
    assert_eq!(handled, N, "one effect per settlement downstream");
    let db = connect().await;
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
}

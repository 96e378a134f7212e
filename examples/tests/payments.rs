//! examples/payments.rs as docker-compose.yml runs it: three instances on one PostgreSQL
//! database, on RabbitMQ and on Kafka (librdkafka's mock cluster, in this process). While
//! payments flow (every tenth delivered twice), one instance is SIGKILLed and restarted;
//! then all three are SIGKILLed at once between the relay's publish of a batch and its
//! mark (frozen first, then killed once a settlement of the batch is seen downstream while
//! its outbox row is still there), and restarted. Every account's balance ends exact, the
//! overdrawn payment is dead-lettered with its reason, and a downstream `exactly` consumer
//! of the settlements acts on each once; the raw copies it received are printed (more
//! than the settlements: the killed batch went out again).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HoldingProxy, example};
use exactly::publish::Publish;
use exactly::{Context, Handler, HandlerError, MemoryStore, Message, OutboundRecord, Processor, handler_fn};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// What the example opens each account with, in cents.
const OPENING_CENTS: i64 = 1_000_000;
const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Payment `i`: fixed-width ids, so that one never contains another.
fn payment(i: usize) -> (String, &'static str, i64) {
    (format!("pay-{i:05}"), ACCOUNTS[i % 4], 100 + (i % 50) as i64)
}

/// The records of payments `range` (every tenth twice), made by `record(id, account, body)`.
fn records(
    range: std::ops::Range<usize>,
    record: &dyn Fn(&str, &str, Vec<u8>) -> OutboundRecord,
) -> Vec<OutboundRecord> {
    let mut out = Vec::new();
    for i in range {
        let (id, account, cents) = payment(i);
        let body = serde_json::to_vec(&serde_json::json!({"id": id, "account": account, "cents": cents})).unwrap();
        let r = record(&id, account, body).header("idempotency-key", id.clone());
        if i % 10 == 0 {
            out.push(r.clone());
        }
        out.push(r);
    }
    out
}

fn overdraft(record: &dyn Fn(&str, &str, Vec<u8>) -> OutboundRecord) -> OutboundRecord {
    let body = serde_json::json!({"id": "pay-overdraft", "account": "alice", "cents": OPENING_CENTS * 10});
    record("pay-overdraft", "alice", serde_json::to_vec(&body).unwrap()).header("idempotency-key", "pay-overdraft")
}

/// A database of this test's own, dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    async fn new(name: String) -> Self {
        let admin = connect(&server_url()).await;
        // One statement each: a multi-statement string runs as one transaction block.
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = server_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        Database { name, url }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (url, name) = (server_url(), self.name.clone());
        let drop_it =
            async move { connect(&url).await.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await };
        let _ = std::thread::spawn(move || tokio::runtime::Runtime::new().unwrap().block_on(drop_it)).join();
    }
}

fn server_url() -> String {
    std::env::var("EXACTLY_POSTGRES_URL").expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The three instances of the example.
struct Instances {
    config: &'static str,
    env: Vec<(String, String)>,
    children: Mutex<Vec<Child>>,
}

impl Instances {
    fn start(config: &'static str, env: Vec<(String, String)>) -> Self {
        let me = Instances { config, env, children: Mutex::new(Vec::new()) };
        let children: Vec<Child> = (0..3).map(|_| me.spawn()).collect();
        *me.children.lock().unwrap() = children;
        me
    }

    fn spawn(&self) -> Child {
        let mut c = example("payments");
        c.env("EXACTLY_CONFIG", self.config).env("EXACTLY_HTTP__DISABLED", "true").envs(self.env.clone());
        c.stdout(Stdio::null()).spawn().unwrap()
    }

    /// SIGKILLs instance `i` (every one: `None`) and starts it again when `restart`.
    fn kill(&self, which: Option<usize>, restart: bool) {
        let mut children = self.children.lock().unwrap();
        for (i, child) in children.iter_mut().enumerate().filter(|(i, _)| which.is_none_or(|w| w == *i)) {
            let _ = child.kill();
            let status = child.wait().unwrap();
            assert!(!status.success(), "instance {i} was running until killed: {status}");
        }
        drop(children);
        if restart {
            self.restart(which);
        }
    }

    fn signal(&self, signal: Signal) {
        for child in self.children.lock().unwrap().iter() {
            let _ = nix::sys::signal::kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), signal);
        }
    }

    fn restart(&self, which: Option<usize>) {
        let mut children = self.children.lock().unwrap();
        for (_, child) in children.iter_mut().enumerate().filter(|(i, _)| which.is_none_or(|w| w == *i)) {
            *child = self.spawn();
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for child in self.children.get_mut().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills every instance between the relay's publish and its mark. The test holds the
/// outbox in SHARE mode: the relay can still read its rows and publish them, but not
/// delete them (nor can handlers add rows); once a settlement reaches the downstream
/// consumer while its row is still there, that batch was published and not marked, and
/// every instance is killed. Deterministic: it does not wait for a lucky moment, only for
/// the relay's next pass. False if that did not happen within `limit`.
async fn kill_between_publish_and_mark(
    instances: &Instances,
    db: &tokio_postgres::Client,
    schema: &str,
    effects: &Mutex<HashMap<String, u32>>,
    limit: Duration,
) -> bool {
    let hold = format!("BEGIN; LOCK TABLE {schema}.outbox IN SHARE MODE");
    let unmarked = format!("SELECT source FROM {schema}.outbox");
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        db.batch_execute(&hold).await.unwrap();
        let sources: Vec<Vec<u8>> = db.query(&unmarked, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        // Rows neither come nor go while the lock is held: with none, let the handlers add some.
        let mut published = false;
        while !sources.is_empty() && !published && tokio::time::Instant::now() < deadline {
            let seen: Vec<String> = effects.lock().unwrap().keys().cloned().collect();
            let holds = |source: &[u8], id: &str| source.windows(id.len()).any(|w| w == id.as_bytes());
            published = sources.iter().any(|s| seen.iter().any(|id| holds(s, id)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if published {
            instances.kill(None, false);
        }
        db.batch_execute("ROLLBACK").await.unwrap();
        if published {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// How the test tells that a settled payment's delivery is not acknowledged yet.
enum Acks<'a> {
    /// Records below the group's committed offsets (Kafka).
    Committed(&'a dyn Fn() -> u64),
    /// The instances reach the broker through this proxy (RabbitMQ): while it holds what
    /// they send, a payment settled after the hold began has its acknowledgement held.
    Proxied(&'a HoldingProxy),
}

/// Kills every instance while a payment's done-record is committed and its delivery not
/// yet acknowledged. False if that did not happen within `limit`.
async fn kill_between_commit_and_ack(
    instances: &Instances,
    db: &tokio_postgres::Client,
    schema: &str,
    acks: Acks<'_>,
    limit: Duration,
) -> bool {
    let settled = format!("SELECT count(*) FROM {schema}.records WHERE namespace = 'payments' AND state IN (2, 3)");
    let settled = async || u64::try_from(db.query_one(&settled, &[]).await.unwrap().get::<_, i64>(0)).unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let before = match acks {
        Acks::Proxied(proxy) => {
            proxy.hold();
            Some(settled().await)
        }
        Acks::Committed(_) => None,
    };
    while tokio::time::Instant::now() < deadline {
        // Frozen (SIGSTOP), more payments settled in the store than acknowledged means one
        // settled payment is not; otherwise thawed, and again.
        instances.signal(Signal::SIGSTOP);
        let caught = match (&acks, before) {
            (Acks::Committed(acked), _) => settled().await > acked(),
            (Acks::Proxied(_), Some(before)) => settled().await > before,
            (Acks::Proxied(_), None) => false,
        };
        if caught {
            instances.kill(None, false);
            if let Acks::Proxied(proxy) = acks {
                proxy.cut(); // the acknowledgements they held never arrive
            }
            return true;
        }
        instances.signal(Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The downstream consumer's handler: one effect per settlement, counted by payment id.
fn downstream(effects: Arc<Mutex<HashMap<String, u32>>>) -> impl Handler {
    handler_fn(move |msg: Message, _ctx: Context| {
        let effects = effects.clone();
        async move {
            let settled: serde_json::Value = msg.decode()?;
            let id = settled["id"].as_str().ok_or_else(|| HandlerError::validation("no id"))?.to_owned();
            *effects.lock().unwrap().entry(id).or_default() += 1;
            Ok(())
        }
    })
}

/// Waits until `done`, failing the test after `limit`.
async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The run both brokers share: payments in three phases with the kills between, until
/// every settlement arrived downstream and the outbox is empty.
#[allow(clippy::too_many_arguments)]
async fn run(
    n: usize,
    publisher: &dyn Publish,
    record: &dyn Fn(&str, &str, Vec<u8>) -> OutboundRecord,
    instances: &Instances,
    schema: &str,
    acks: Acks<'_>,
    effects: &Mutex<HashMap<String, u32>>,
    db: &tokio_postgres::Client,
) {
    let arrived = |k: usize| async move || effects.lock().unwrap().len() >= k;
    let limit = Duration::from_secs(120);
    // The instances have opened the store (its tables exist) before its rows are counted.
    let opened = format!("SELECT to_regclass('{schema}.records') IS NOT NULL");
    until("the instances created the store", limit, async || {
        db.query_one(&opened, &[]).await.unwrap().get::<_, bool>(0)
    })
    .await;
    publisher.publish(&records(0..n / 3, record)).await.unwrap();
    let killed = kill_between_commit_and_ack(instances, db, schema, acks, limit).await;
    assert!(killed, "all instances were killed between a commit and its acknowledgement");
    instances.restart(None);
    until("a sixth of the settlements arrived", limit, arrived(n / 6)).await;
    instances.kill(Some(0), true);

    publisher.publish(&records(n / 3..2 * n / 3, record)).await.unwrap();
    let killed = kill_between_publish_and_mark(instances, db, schema, effects, limit).await;
    assert!(killed, "all instances were killed between a publish of the relay and its mark");
    instances.restart(None);

    let mut rest = records(2 * n / 3..n, record);
    rest.push(overdraft(record));
    publisher.publish(&rest).await.unwrap();
    until("every settlement arrived", limit, arrived(n)).await;
    let outbox = format!("SELECT count(*) FROM {schema}.outbox");
    until("the outbox emptied", limit, async || db.query_one(&outbox, &[]).await.unwrap().get::<_, i64>(0) == 0).await;
}

/// Every account holds its opening balance less its payments (each once), the overdraft
/// none and is dead-lettered with its reason; each settlement took effect once downstream.
async fn check(n: usize, database: &Database, schema: &str, effects: &HashMap<String, u32>) {
    use exactly::store::{DedupStore, RecordState};
    let store = exactly::postgres::PgStore::builder(database.url.clone()).schema(schema).open().await.unwrap();
    let overdraft = store.inspect(&exactly::StoreKey::new("payments", "pay-overdraft")).await.unwrap();
    let reason = overdraft.map(|r| r.state);
    assert!(
        matches!(&reason, Some(RecordState::DeadLettered { reason }) if reason == "insufficient-funds"),
        "the overdraft was dead-lettered: {reason:?}"
    );
    let db = connect(&database.url).await;
    let mut expected: HashMap<String, i64> = ACCOUNTS.iter().map(|a| (a.to_string(), OPENING_CENTS)).collect();
    for i in 0..n {
        let (_, account, cents) = payment(i);
        *expected.get_mut(account).unwrap() -= cents;
    }
    let rows = db.query("SELECT id, balance_cents FROM accounts", &[]).await.unwrap();
    let balances: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(balances, expected, "every payment debited once");
    assert_eq!(effects.len(), n, "a settlement per payment, the overdraft none");
    assert!(effects.values().all(|c| *c == 1), "each settlement took effect once downstream: {effects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_rabbitmq_killed_debit_once_and_settle_once() {
    use exactly::amqp::lapin::options::QueueDeclareOptions;
    use exactly::amqp::lapin::types::FieldTable;
    const N: usize = 600;
    let pid = std::process::id();
    let (queue, settled) = (format!("payments-{pid}"), format!("payment-settled-{pid}"));
    let database = Database::new(format!("payments_amqp_{pid}")).await;
    let proxy = HoldingProxy::start("127.0.0.1:5672").await;
    let instances = Instances::start(
        "payments.toml",
        vec![
            ("EXACTLY_STORE__URL".into(), database.url.clone()),
            ("EXACTLY_AMQP__PAYMENTS__URL".into(), format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port)),
            ("EXACTLY_AMQP__PAYMENTS__QUEUE".into(), queue.clone()),
            ("PAYMENTS_SETTLED".into(), settled.clone()),
        ],
    );
    let conn = exactly::amqp::lapin::Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let depth = async |q: &str| {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let probe = conn.create_channel().await.unwrap();
        probe.queue_declare(q.into(), passive, FieldTable::default()).await.map(|q| q.message_count()).ok()
    };
    until("the instances declared their queues", Duration::from_secs(60), async || {
        depth(&queue).await.is_some() && depth(&settled).await.is_some()
    })
    .await;

    let db = connect(&database.url).await;
    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let processor =
        Processor::builder("ledger", downstream(effects.clone())).store(MemoryStore::new()).build().unwrap();
    let consumer = exactly::amqp::Consumer::builder(AMQP_URL, &settled).build(processor).unwrap();
    let (stats, stop) = (consumer.stats(), consumer.shutdown_handle());
    let consuming = tokio::spawn(consumer.run());

    let publisher = exactly::amqp::AmqpPublisher::new(AMQP_URL);
    let to_queue = |_id: &str, _account: &str, body: Vec<u8>| OutboundRecord::new("", body).key(queue.clone());
    run(N, &publisher, &to_queue, &instances, "exactly_payments", Acks::Proxied(&proxy), &effects, &db).await;
    // Stopped gracefully, the consumer has settled every copy it was given.
    stop.shutdown();
    consuming.await.unwrap().unwrap();
    let copies = stats.acked.load(Ordering::SeqCst);
    assert_eq!(depth(&settled).await, Some(0), "no settlement left unread");
    assert_eq!(depth(&format!("{queue}.dlq")).await, Some(1), "the overdraft was dead-lettered");
    let effects = effects.lock().unwrap().clone();
    check(N, &database, "exactly_payments", &effects).await;
    assert!(copies > N as u64, "the unmarked settlements went out again: {copies} copies");
    println!("RabbitMQ, 3 instances: {copies} raw copies of {N} settlements, each settled once downstream");
    drop(instances);
    let topology = exactly::amqp::Topology::declare();
    topology.delete(&ch, &queue).await.unwrap();
    topology.delete(&ch, &settled).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_kafka_killed_debit_once_and_settle_once() {
    use exactly::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use exactly::kafka::rdkafka::{ClientConfig, TopicPartitionList};
    use exactly::kafka::testing::MockKafka;
    const N: usize = 300;
    let pid = std::process::id();
    let kafka = MockKafka::new(1).unwrap();
    let (topic, settled) = ("payments", "payment-settled");
    kafka.create_topic(topic, 3).unwrap();
    kafka.create_topic(&format!("{topic}.dlq"), 1).unwrap();
    kafka.create_topic(settled, 1).unwrap();
    let database = Database::new(format!("payments_kafka_{pid}")).await;
    let instances = Instances::start(
        "payments-kafka.toml",
        vec![
            ("EXACTLY_STORE__URL".into(), database.url.clone()),
            ("EXACTLY_KAFKA__PAYMENTS__BROKERS".into(), kafka.bootstrap_servers().to_owned()),
        ],
    );

    let db = connect(&database.url).await;
    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let processor =
        Processor::builder("ledger", downstream(effects.clone())).store(MemoryStore::new()).build().unwrap();
    let consumer = exactly::kafka::Consumer::builder(kafka.bootstrap_servers(), "ledger")
        .topic(settled)
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .build(processor)
        .unwrap();
    let (stats, stop) = (consumer.stats(), consumer.shutdown_handle());
    let consuming = tokio::spawn(consumer.run());

    let publisher = exactly::kafka::KafkaPublisher::new(kafka.bootstrap_servers()).unwrap();
    let to_topic = |_id: &str, account: &str, body: Vec<u8>| OutboundRecord::new(topic, body).key(account.to_owned());
    // What the instances' group committed: records below the committed offsets.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "payments")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition(topic, p);
    }
    let committed = || {
        let offsets = group.committed_offsets(partitions.clone(), Duration::from_secs(10)).unwrap();
        offsets.elements().iter().filter_map(|e| e.offset().to_raw()).map(|o| o.max(0).unsigned_abs()).sum()
    };
    let schema = "exactly_payments_kafka";
    run(N, &publisher, &to_topic, &instances, schema, Acks::Committed(&committed), &effects, &db).await;
    stop.shutdown();
    consuming.await.unwrap().unwrap();
    let copies = stats.records.load(Ordering::SeqCst);
    let effects = effects.lock().unwrap().clone();
    check(N, &database, "exactly_payments_kafka", &effects).await;
    assert!(copies > N as u64, "the unmarked settlements went out again: {copies} copies");
    println!("Kafka, 3 instances: {copies} raw copies of {N} settlements, each settled once downstream");
}

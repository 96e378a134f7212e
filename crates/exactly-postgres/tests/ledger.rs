//! A ledger credited through `ctx.postgres()` by three instances sharing one PostgreSQL
//! store, 10% of the credits delivered twice, every instance crashing at random points of
//! the protocol (before and after the handler, after the commit, after the ack) and
//! restarting: every balance ends exact, and every credit has its done-record.
//!
//! `EXACTLY_LEDGER_CREDITS` sets the number of credits (default 3,000).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{drop_schema, url, wait_until_gone};
use exactly_core::testing::{CrashPlan, DrainOptions, MemoryBroker, drain};
use exactly_core::{Context, Error, FaultInjector, HandlerError, Message, Processor, handler_fn};
use exactly_postgres::{PgStore, PostgresContext};

const ACCOUNTS: u64 = 40;
const INSTANCES: u64 = 3;

/// A deterministic generator (SplitMix64), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_crashing_instances_credit_every_account_exactly() {
    let credits: u64 = std::env::var("EXACTLY_LEDGER_CREDITS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000);
    let ddl = "CREATE TABLE {s}.accounts (id text PRIMARY KEY, balance int8 NOT NULL)";
    let schema = common::fresh_schema_with("ledger", ddl).await;
    let client = common::connect().await;
    let broker = MemoryBroker::new();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut rng = Rng(7);
    for i in 0..credits {
        let account = format!("acct-{:02}", rng.next() % ACCOUNTS);
        let amount = i64::try_from(rng.next() % 100 + 1).unwrap();
        *expected.entry(account.clone()).or_default() += amount;
        let msg = Message::builder(amount.to_string())
            .header("idempotency-key", format!("credit-{i}"))
            .header("account", account)
            .build();
        broker.publish("credits", msg.clone());
        if rng.next().is_multiple_of(10) {
            broker.publish("credits", msg);
        }
    }

    let mut instances = tokio::task::JoinSet::new();
    for n in 0..INSTANCES {
        let (broker, schema) = (broker.clone(), schema.clone());
        instances.spawn(async move { run_instance(n, &broker, &schema).await });
    }
    let mut crashes = 0;
    while let Some(r) = instances.join_next().await {
        crashes += r.unwrap();
    }
    // A last pass, for what an instance that crashed last put back after the others ended.
    let (store, p) = open(&schema, Arc::new(CrashPlan::never())).await;
    drain(&broker, "credits", &p, DrainOptions::default()).await.unwrap();

    let rows = client.query(&format!("SELECT id, balance FROM \"{schema}\".accounts ORDER BY id"), &[]).await.unwrap();
    let balances: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(crashes > 0, "the instances crashed");
    assert_eq!(balances, expected, "every account credited exactly once per credit, after {crashes} crashes");
    let done: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".records WHERE state = 2"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, i64::try_from(credits).unwrap(), "one done-record per credit");
    assert!(broker.dead_letters("credits").is_empty(), "nothing dead-lettered");
    println!("{credits} credits, 3 instances, {crashes} crashes: every balance exact");
    drop((p, store));
    drop_schema(&schema);
}

/// One instance: drains the queue, crashing at random points; each crash ends its store's
/// session (as a killed process's does) and starts it again. Returns its crashes.
async fn run_instance(n: u64, broker: &MemoryBroker, schema: &str) -> u64 {
    let mut crashes = 0;
    loop {
        let plan = Arc::new(CrashPlan::random(n * 1_000 + crashes, 0.003));
        let (store, p) = open(schema, plan.clone()).await;
        let faults: Arc<dyn FaultInjector> = plan;
        let opts = DrainOptions { concurrency: 8, faults: Some(faults), max_deliveries: None };
        match drain(broker, "credits", &p, opts).await {
            Ok(_) => return crashes,
            Err(Error::InjectedCrash(_)) => {
                crashes += 1;
                let instance = store.instance();
                drop((p, store));
                wait_until_gone(schema, instance).await;
            }
            Err(e) => panic!("instance {n}: {e}"),
        }
    }
}

async fn open(schema: &str, plan: Arc<CrashPlan>) -> (Arc<PgStore>, Processor) {
    let store = Arc::new(PgStore::builder(url()).schema(schema).open().await.unwrap());
    let table = format!("\"{schema}\".accounts");
    let h = handler_fn(move |msg: Message, ctx: Context| {
        let sql = format!(
            "INSERT INTO {table} (id, balance) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET balance = {table}.balance + EXCLUDED.balance"
        );
        async move {
            let amount: i64 = msg.decode()?;
            let account = msg.headers().get_str("account").unwrap_or("none").to_owned();
            ctx.postgres().await?.execute(&sql, &[&account, &amount]).await?;
            Ok::<_, HandlerError>(())
        }
    });
    let p = Processor::builder("ledger", h).shared_store(store.clone()).faults(plan).build().unwrap();
    (store, p)
}

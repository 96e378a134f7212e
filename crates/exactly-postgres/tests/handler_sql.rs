//! The handler's own SQL through `ctx.postgres()`: it commits with the done-record, in the
//! same transaction, or not at all, on the real PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{acquire_at, drop_schema, now_ms, url};
use exactly_core::store::{DedupStore, RecordState};
use exactly_core::{
    Context, Coordinates, Disposition, Handler, HandlerError, MemoryStore, Message, Outcome, Processor, StoreKey,
    handler_fn, reasons,
};
use exactly_postgres::{NO_POSTGRES_STORE, PgStore, PostgresContext};
use tokio::sync::Notify;

/// A schema with the store's tables and a `ledger` table of the user's, dropped at the end.
struct Db {
    schema: String,
}

impl Db {
    async fn new(what: &str) -> Self {
        let ddl = "CREATE TABLE {s}.ledger (account text PRIMARY KEY, balance int8 NOT NULL)";
        Db { schema: common::fresh_schema_with(what, ddl).await }
    }

    async fn store(&self) -> Arc<PgStore> {
        Arc::new(PgStore::builder(url()).schema(&self.schema).open().await.unwrap())
    }

    fn table(&self) -> String {
        format!("\"{}\".ledger", self.schema)
    }

    /// Every account's balance, in account order.
    async fn balances(&self) -> Vec<(String, i64)> {
        let client = common::connect().await;
        let rows = client.query(&format!("SELECT account, balance FROM {} ORDER BY account", self.table()), &[]).await;
        rows.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop_schema(&self.schema);
    }
}

/// Credits the payload's amount to the account in the `account` header, in the ledger
/// table, through the handler's transaction.
fn crediting(table: String) -> impl Handler {
    handler_fn(move |msg: Message, ctx: Context| {
        let sql = format!(
            "INSERT INTO {table} (account, balance) VALUES ($1, $2)
             ON CONFLICT (account) DO UPDATE SET balance = {table}.balance + EXCLUDED.balance"
        );
        async move {
            let amount: i64 = msg.decode()?;
            let account = msg.headers().get_str("account").unwrap_or("none").to_owned();
            let db = ctx.postgres().await?;
            db.execute(&sql, &[&account, &amount]).await?;
            Ok::<_, HandlerError>(())
        }
    })
}

fn credit(key: &str, account: &str, amount: i64) -> Message {
    Message::builder(amount.to_string()).header("idempotency-key", key).header("account", account).build()
}

fn processor(store: Arc<PgStore>, handler: impl Handler) -> Processor {
    Processor::builder("pay", handler).shared_store(store).build().unwrap()
}

#[tokio::test]
async fn the_handlers_sql_commits_with_its_done_record_and_a_duplicate_runs_none() {
    let db = Db::new("sql_commit").await;
    let store = db.store().await;
    let p = processor(store.clone(), crediting(db.table()));
    assert_eq!(p.process(credit("k1", "ada", 5)).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(credit("k2", "ada", 7)).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(p.process(credit("k1", "ada", 5)).await.unwrap().outcome, Outcome::Duplicate);
    // Another instance sees the same: the record and the rows are one commit.
    let other = processor(db.store().await, crediting(db.table()));
    assert_eq!(other.process(credit("k2", "ada", 7)).await.unwrap().outcome, Outcome::Duplicate);
    assert_eq!(db.balances().await, vec![("ada".to_owned(), 12)]);
    let record = store.inspect(&StoreKey::new("pay", "k1")).await.unwrap().unwrap();
    assert!(matches!(record.state, RecordState::Done { .. }), "{record:?}");
}

#[tokio::test]
async fn a_failed_handler_leaves_no_rows() {
    let db = Db::new("sql_failed").await;
    let table = db.table();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let sql = format!("INSERT INTO {table} VALUES ('ada', 100)");
        async move {
            ctx.postgres().await?.execute(&sql, &[]).await?;
            ctx.state().put_json("seen", &true).await?;
            Err::<(), _>(HandlerError::validation("refused after writing"))
        }
    });
    let p = processor(db.store().await, h);
    let out = p.process(credit("k1", "ada", 0)).await.unwrap();
    assert_eq!(out.dead_letter().unwrap().reason, "validation");
    assert_eq!(db.balances().await, vec![], "the row went with the failed run");
    assert_eq!(p.store().state_get(&StoreKey::state("pay", b"seen")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_handler_cannot_commit_its_sql() {
    let db = Db::new("sql_fenced").await;
    let (wrote, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let table = db.table();
    let (w, g) = (wrote.clone(), go.clone());
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let sql = format!("INSERT INTO {table} VALUES ('ada', 100)");
        let (w, g) = (w.clone(), g.clone());
        async move {
            ctx.postgres().await?.execute(&sql, &[]).await?;
            w.notify_one();
            g.notified().await;
            Ok::<_, HandlerError>(())
        }
    });
    let p = processor(db.store().await, h);
    let run = tokio::spawn(async move { p.process(credit("k1", "ada", 100)).await });
    wrote.notified().await;
    // Another instance takes the key over, as it would once the lease ran out.
    let other = db.store().await;
    let ten_minutes_on = now_ms() + 600_000;
    acquire_at(&other, &StoreKey::new("pay", "k1"), ten_minutes_on).await;
    go.notify_one();
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.outcome, Outcome::Busy, "the fenced run is not acknowledged");
    assert_eq!(db.balances().await, vec![], "its rows were rolled back with it");
}

#[tokio::test]
async fn sql_that_ends_the_transaction_or_an_ignored_failure_is_dead_lettered() {
    let db = Db::new("sql_ended").await;
    let table = db.table();
    let h = handler_fn(move |msg: Message, ctx: Context| {
        let sql = format!("INSERT INTO {table} VALUES ('ada', 1)");
        async move {
            let db = ctx.postgres().await?;
            db.execute(&sql, &[]).await?;
            match msg.payload_str() {
                Some("commit") => db.batch_execute("COMMIT").await?,
                // A statement that fails, its error ignored.
                _ => drop(db.execute("SELECT 1/0", &[]).await),
            }
            Ok::<_, HandlerError>(())
        }
    });
    let p = processor(db.store().await, h);
    let ignored = p.process(Message::builder("ignore").header("idempotency-key", "k1").build()).await.unwrap();
    let dl = ignored.dead_letter().unwrap();
    assert_eq!(dl.reason, reasons::TRANSACTION_FAILED);
    assert!(dl.last_error.as_deref().unwrap().contains("a statement of the handler failed"), "{dl:?}");
    assert_eq!(db.balances().await, vec![], "nothing of the aborted transaction");
    let ended = p.process(Message::builder("commit").header("idempotency-key", "k2").build()).await.unwrap();
    let dl = ended.dead_letter().unwrap();
    assert_eq!(dl.reason, reasons::TRANSACTION_FAILED);
    assert!(dl.last_error.as_deref().unwrap().contains("COMMIT or ROLLBACK in its SQL"), "{dl:?}");
    let record = p.store().inspect(&StoreKey::new("pay", "k2")).await.unwrap();
    let done = record.as_ref().is_some_and(|r| matches!(r.state, RecordState::Done { .. }));
    assert!(!done, "no done-record was written outside the transaction: {record:?}");
}

#[tokio::test]
async fn a_handler_asking_for_postgres_on_another_store_is_told_so() {
    let h = handler_fn(|_m: Message, ctx: Context| async move {
        ctx.postgres().await?;
        Ok::<_, HandlerError>(())
    });
    let p = Processor::builder("pay", h).store(MemoryStore::new()).build().unwrap();
    let out = p.process(credit("k1", "ada", 1)).await.unwrap();
    let dl = out.dead_letter().unwrap();
    assert_eq!(dl.reason, NO_POSTGRES_STORE);
    assert!(dl.last_error.as_deref().unwrap().contains("needs the PostgreSQL store"), "{dl:?}");
}

#[tokio::test]
async fn a_position_committed_by_another_instance_rolls_back_the_later_run() {
    let db = Db::new("sql_position").await;
    let at = |offset| {
        Message::builder("3")
            .header("account", "ada")
            .coordinates(Coordinates::partitioned("orders", 0, offset))
            .build()
    };
    let a = processor(db.store().await, crediting(db.table()));
    let b = processor(db.store().await, crediting(db.table()));
    let first = a.process_positioned(at(5), "wm").await.unwrap().durable().await.unwrap();
    assert_eq!(first.outcome, Outcome::Handled);
    // The partition moved while offset 5's commit was in flight: the new owner runs it again.
    let again = b.process_positioned(at(5), "wm").await.unwrap().durable().await.unwrap();
    assert_eq!((again.disposition, again.outcome), (Disposition::Ack, Outcome::Duplicate));
    let next = b.process_positioned(at(6), "wm").await.unwrap().durable().await.unwrap();
    assert_eq!(next.outcome, Outcome::Handled);
    assert_eq!(db.balances().await, vec![("ada".to_owned(), 6)], "offset 5 credited once, offset 6 once");
    let wm = a.store().meta_get("wm").await.unwrap().unwrap();
    assert_eq!(wm.as_ref(), 7i64.to_be_bytes());
}

/// This process's CPU time so far, in clock ticks (utime + stime of /proc/self/stat).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A handler whose transaction's connection was killed under it fails; the transaction
/// left behind cannot be rolled back on that connection, which is then closed, once. (It
/// used to try again on every drop: a loop of tasks spinning on a dead connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_connection_died_leaves_nothing_spinning() {
    let db = Db::new("sql_died").await;
    let h = handler_fn(|_m: Message, ctx: Context| async move {
        let tx = ctx.postgres().await?;
        let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        let killer = common::connect().await;
        killer.execute("SELECT pg_terminate_backend($1, 10000)", &[&pid]).await?;
        tx.execute("SELECT 1", &[]).await?;
        Ok::<_, HandlerError>(())
    });
    let p = processor(db.store().await, h);
    let out = p.process(credit("k1", "ada", 1)).await.unwrap();
    assert_eq!(out.outcome, Outcome::Retry, "a lost connection is retried");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = cpu_ticks();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let used = cpu_ticks() - before;
    assert!(used < 20, "{used} ticks of CPU in a second of idling: something spins");
}

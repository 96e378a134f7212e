//! A schema of its own for each test, in the database scripts/services.sh names.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exactly_core::async_trait;
use exactly_core::store::DedupStore;
use exactly_core::testing::conformance::Subject;
use exactly_postgres::PgStore;
use tokio_postgres::NoTls;

/// The database the tests use.
pub fn url() -> String {
    std::env::var("EXACTLY_POSTGRES_URL")
        .expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh (it starts PostgreSQL and names the database)")
}

/// A schema name no other test (or process) uses.
pub fn fresh_schema(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t_{what}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A plain connection, for the tests' own SQL.
pub async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Drops a schema and everything in it (from any context: on a thread of its own).
pub fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            if let Ok((client, connection)) = tokio_postgres::connect(&url(), NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
            }
        });
    })
    .join();
}

/// Waits until no session holds instance `instance`'s lock in `schema`: the server has
/// seen the process's connections end, as it does after a crash.
pub async fn wait_until_gone(schema: &str, instance: i32) {
    let client = connect().await;
    let class = exactly_postgres::lock_class(schema);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2
                     AND classid = $1::int4::oid AND objid = $2::int4::oid)",
                &[&class, &instance],
            )
            .await
            .expect("read pg_locks")
            .get(0);
        if !held {
            return;
        }
        assert!(Instant::now() < deadline, "instance {instance}'s session did not end within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The conformance suite's subject: a store in a schema of its own, dropped afterwards.
#[derive(Debug)]
pub struct PgSubject {
    schema: String,
    last: Mutex<Option<i32>>,
}

impl PgSubject {
    pub fn new() -> Self {
        Self { schema: fresh_schema("conf"), last: Mutex::new(None) }
    }
}

#[async_trait]
impl Subject for PgSubject {
    async fn open(&self) -> Arc<dyn DedupStore> {
        let store = PgStore::builder(url()).schema(&self.schema).pool_size(4).open().await.expect("the store opens");
        *self.last.lock().expect("the subject's lock") = Some(store.instance());
        Arc::new(store)
    }

    async fn crash(&self) {
        let last = *self.last.lock().expect("the subject's lock");
        if let Some(instance) = last {
            wait_until_gone(&self.schema, instance).await;
        }
    }
}

impl Drop for PgSubject {
    fn drop(&mut self) {
        drop_schema(&self.schema);
    }
}

//! `--engine postgres`: one PostgreSQL store shared by every consumer process, in a schema
//! of the run's own, and the database's faults (`--db-faults`).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exactly::postgres::PgStore;
use tokio_postgres::NoTls;

/// The run's schema in the database `$EXACTLY_POSTGRES_URL` names.
pub(crate) struct Database {
    /// The URL the consumers use: the test database, with an application name of the
    /// run's own, so faults end only this run's sessions.
    url: String,
    schema: String,
    app: String,
}

impl Database {
    /// The run's schema, with the ledger's own tables in it.
    pub(crate) async fn new(name: &str) -> anyhow::Result<Self> {
        let base = std::env::var("EXACTLY_POSTGRES_URL")
            .context("--engine postgres needs $EXACTLY_POSTGRES_URL (eval \"$(scripts/services.sh up)\")")?;
        let schema = name.replace('-', "_");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}application_name={schema}");
        let db = Self { url, schema: schema.clone(), app: schema };
        db.client().await?.batch_execute(&exactly_tests::ledger_tables(&db.schema)).await?;
        Ok(db)
    }

    /// How many of the ledger's keys are done in the store: a key whose effect is in the
    /// log may still be uncommitted (its handler ran, its commit failed and it waits for a
    /// retry, unacknowledged, which a queue's ready count does not show).
    pub(crate) async fn done_keys(&self) -> anyhow::Result<usize> {
        let sql = format!("SELECT count(*) FROM \"{}\".records WHERE namespace = 'ledger' AND state = 2", self.schema);
        let n: i64 = self.client().await?.query_one(&sql, &[]).await?.get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The ledger's own tables: each key's credits, and the sum of the balances.
    pub(crate) async fn ledger_tables(&self) -> anyhow::Result<(HashMap<String, i64>, i64)> {
        let client = self.client().await?;
        let s = &self.schema;
        let rows = client.query(&format!("SELECT id, n FROM \"{s}\".applied"), &[]).await?;
        let applied = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let sum = format!("SELECT coalesce(sum(balance), 0)::int8 FROM \"{s}\".accounts");
        Ok((applied, client.query_one(&sum, &[]).await?.get(0)))
    }

    /// The `[store]` lines of a consumer's configuration.
    pub(crate) fn store_toml(&self) -> String {
        format!("engine = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\npool_size = 4\n", self.url, self.schema)
    }

    /// The store the consumers share, for the verdict.
    pub(crate) async fn open(&self) -> anyhow::Result<PgStore> {
        Ok(PgStore::builder(self.url.clone()).schema(&self.schema).pool_size(2).open().await?)
    }

    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Ends every session of the consumers (as a failover or an administrator does);
    /// how many there were.
    pub(crate) async fn terminate_sessions(&self) -> anyhow::Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&self.app],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Restarts the PostgreSQL server (`pg_ctlcluster 15 main restart`) and waits until it
    /// takes connections again; how long it was away.
    pub(crate) async fn restart_server(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let out = Command::new("pg_ctlcluster").args(["15", "main", "restart", "-m", "fast"]).output()?;
        if !out.status.success() {
            bail!("pg_ctlcluster 15 main restart failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        while self.client().await.is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("PostgreSQL did not take connections within 60 s of its restart");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(started.elapsed())
    }

    /// Drops the run's schema (after a passing run).
    pub(crate) async fn cleanup(&self) {
        if let Ok(client) = self.client().await {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema)).await;
        }
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }
}

//! The dedup a team writes without a framework, in front of a bare consumer loop: the
//! baselines of the Kafka and RabbitMQ benches.

use std::path::Path;

/// A hand-rolled dedup.
pub(crate) enum Dedup {
    /// None at all (the bare consumer).
    None,
    /// sled: get, insert and flush per message before it is acknowledged.
    Sled(sled::Db),
    /// Redis: `SET key 1 NX EX <a week>` per message (the connection, a key prefix).
    Redis(redis::aio::MultiplexedConnection, String),
    /// PostgreSQL: `INSERT ... ON CONFLICT DO NOTHING` committed per message (the
    /// connection, the table).
    Postgres(tokio_postgres::Client, String),
}

impl Dedup {
    /// A sled database in `path`.
    pub(crate) fn sled(path: &Path) -> anyhow::Result<Self> {
        Ok(Dedup::Sled(sled::open(path)?))
    }

    /// Redis at `url`, keys prefixed by this run's `run` name.
    pub(crate) async fn redis(url: &str, run: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Dedup::Redis(client.get_multiplexed_async_connection().await?, format!("bench:{run}:")))
    }

    /// PostgreSQL at `url`, in a table named after this run's `run` name.
    pub(crate) async fn postgres(url: &str, run: &str) -> anyhow::Result<Self> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let table = format!("bench_naive_{}", run.replace('-', "_"));
        client.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY)")).await?;
        Ok(Dedup::Postgres(client, table))
    }

    /// Records `key`; whether it was new (the handler would run).
    pub(crate) async fn first_time(&mut self, key: &str) -> anyhow::Result<bool> {
        Ok(match self {
            Dedup::None => true,
            Dedup::Sled(db) => {
                if db.get(key)?.is_some() {
                    return Ok(false);
                }
                db.insert(key.as_bytes(), b"done".as_slice())?;
                db.flush_async().await?;
                true
            }
            Dedup::Redis(conn, prefix) => {
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("{prefix}{key}"))
                    .arg("1")
                    .arg("NX")
                    .arg("EX")
                    .arg(7 * 24 * 3600)
                    .query_async(conn)
                    .await?;
                set.is_some()
            }
            Dedup::Postgres(client, table) => {
                let sql = format!("INSERT INTO {table} VALUES ($1) ON CONFLICT DO NOTHING");
                client.execute(&sql, &[&key]).await? == 1
            }
        })
    }
}

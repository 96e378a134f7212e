//! Which instances are alive: each open store holds a session-level advisory lock on its
//! instance id for as long as it runs, on a connection of its own. A claim whose holder's
//! lock is gone (the process died, its session ended) is taken over at once, as a lease
//! that ran out would be, instead of waiting out the lease.

use std::time::Duration;

use exactly_core::Error;
use tokio_postgres::{Client, Config, NoTls};

/// The session that marks this instance alive; ends (and with it the lock) when dropped.
#[derive(Debug)]
pub(crate) struct Liveness {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // Dropping the client ends its connection; the server then drops the lock.
        self.task.abort();
    }
}

/// Takes a new instance id and locks it for the life of the returned session.
pub(crate) async fn start(config: Config, quoted: &str, class: i32, store: &str) -> Result<(i32, Liveness), Error> {
    let (client, connection) = connect(&config).await.map_err(|e| crate::error::open(store, "connect", e))?;
    let id: i32 = client
        .query_one(&format!("SELECT nextval('{quoted}.instances')::int4"), &[])
        .await
        .map_err(|e| crate::error::open(store, "take an instance id", e))?
        .get(0);
    lock(&client, class, id).await.map_err(|e| crate::error::open(store, "lock the instance id", e))?;
    let task = tokio::spawn(hold(config, client, connection, class, id));
    Ok((id, Liveness { task }))
}

async fn connect(config: &Config) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "the instance's session ended");
        }
    });
    Ok((client, connection))
}

async fn lock(client: &Client, class: i32, id: i32) -> Result<(), tokio_postgres::Error> {
    client.execute("SELECT pg_advisory_lock($1, $2)", &[&class, &id]).await.map(drop)
}

/// Keeps the session; when it is lost, connects again and takes the same lock back
/// (meanwhile other instances may take this one's claims over, as after a crash: its
/// completions of those keys are then fenced).
async fn hold(config: Config, mut client: Client, mut connection: tokio::task::JoinHandle<()>, class: i32, id: i32) {
    loop {
        let _ = (&mut connection).await;
        drop(client);
        tracing::warn!(instance = id, "lost the session that marks this instance alive; connecting again");
        let mut delay = Duration::from_millis(100);
        (client, connection) = loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            match connect(&config).await {
                Ok((c, conn)) if lock(&c, class, id).await.is_ok() => break (c, conn),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %crate::error::one_line(&e), "reconnecting the instance's session"),
            }
        };
        tracing::info!(instance = id, "the instance's session is back");
    }
}

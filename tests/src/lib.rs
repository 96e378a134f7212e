//! Shared pieces of the end-to-end tests: the ledger handler whose effects the tests
//! count, and helpers to read its results back.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use exactly::{Context, DedupStore, Handler, HandlerError, Message, StoreKey, handler_fn};
use serde::{Deserialize, Serialize};

/// The ledger's key namespace.
pub const LEDGER: &str = "ledger";

/// Accounts messages are spread over.
pub const ACCOUNTS: u64 = 10;

/// One credit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credit {
    /// The message key.
    pub id: String,
    /// Account number.
    pub account: u64,
    /// Amount.
    pub cents: i64,
}

/// The payload of message `i` whose key is `key`: poison keys get a payload that does
/// not decode.
pub fn payload(key: u64, poison: bool) -> Vec<u8> {
    if poison {
        return format!("not json {key}").into_bytes();
    }
    serde_json::to_vec(&Credit { id: format!("k{key}"), account: key % ACCOUNTS, cents: 1 }).unwrap_or_default()
}

/// A ledger handler: credits the account and marks the key applied in transactional
/// state (exactly once), and appends the key to an external effects log (at least once).
pub fn ledger(effects: Arc<Mutex<std::fs::File>>) -> impl Handler<Output = ()> {
    ledger_with_dependency(effects, None)
}

/// The ledger handler with a dependency that is down while the file `outage` exists:
/// every message then fails with a transient error, as a handler whose database or API is
/// unreachable does.
pub fn ledger_with_dependency(
    effects: Arc<Mutex<std::fs::File>>,
    outage: Option<std::path::PathBuf>,
) -> impl Handler<Output = ()> {
    ledger_in(effects, outage, None)
}

/// The tables [`ledger_in`] writes in `schema`: each key's credits, each account's balance.
pub fn ledger_tables(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".applied (id text PRIMARY KEY, n int8 NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{schema}\".accounts (id int8 PRIMARY KEY, balance int8 NOT NULL)"
    )
}

/// The ledger handler; with `sql` (a schema holding [`ledger_tables`], on the PostgreSQL
/// store) it also credits the key and the account in the user's own tables, through
/// `ctx.postgres()`, in the done-record's transaction.
pub fn ledger_in(
    effects: Arc<Mutex<std::fs::File>>,
    outage: Option<std::path::PathBuf>,
    sql: Option<String>,
) -> impl Handler<Output = ()> {
    let statements: Option<Arc<[String; 2]>> = sql.map(|s| {
        Arc::new([
            format!(
                "INSERT INTO \"{s}\".applied (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = \"{s}\".applied.n + 1"
            ),
            format!(
                "INSERT INTO \"{s}\".accounts (id, balance) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET balance = \"{s}\".accounts.balance + EXCLUDED.balance"
            ),
        ])
    });
    handler_fn(move |msg: Message, ctx: Context| {
        let (effects, outage, statements) = (effects.clone(), outage.clone(), statements.clone());
        async move {
            if outage.is_some_and(|o| o.exists()) {
                return Err(HandlerError::transient("the ledger database is unreachable"));
            }
            let c: Credit = msg.decode()?;
            let applied_key = format!("applied/{}", c.id);
            let applied: i64 = ctx.state().get_json(&applied_key).await?.unwrap_or(0);
            ctx.state().put_json(&applied_key, &(applied + 1)).await?;
            let acct = format!("account/{}", c.account);
            let bal: i64 = ctx.state().get_json(&acct).await?.unwrap_or(0);
            ctx.state().put_json(&acct, &(bal + c.cents)).await?;
            if let Some([applied, account]) = statements.as_deref() {
                use exactly::postgres::PostgresContext;
                let db = ctx.postgres().await?;
                db.execute(applied, &[&c.id]).await?;
                db.execute(account, &[&i64::try_from(c.account).unwrap_or(i64::MAX), &c.cents]).await?;
            }
            let mut f = effects.lock().map_err(|_| HandlerError::transient("effects log lock poisoned"))?;
            // One write call per line: a process killed mid-line must not leave a torn
            // line that the next process's line would be glued to.
            f.write_all(format!("{}\n", c.id).as_bytes())?;
            Ok(())
        }
    })
}

/// Opens an on-disk store by engine name (`sled`, `redb` or `fjall`).
pub fn open_store(engine: &str, path: &Path) -> exactly::Result<Arc<dyn DedupStore>> {
    Ok(match engine {
        "redb" => Arc::new(exactly::store::RedbStore::open(path)?),
        "fjall" => Arc::new(exactly::store::FjallStore::open(path)?),
        _ => Arc::new(exactly::SledStore::open(path)?),
    })
}

/// Reads a JSON integer from the ledger's state.
pub async fn state_of(store: &dyn DedupStore, key: &str) -> i64 {
    store
        .state_get(&StoreKey::state(LEDGER, key.as_bytes()))
        .await
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or(0)
}

/// [`state_of`] outside async code, on a local store (whose reads answer at once).
pub fn state_i64(store: &dyn DedupStore, key: &str) -> i64 {
    ready(state_of(store, key))
}

/// The output of a future that is ready at once (a local store's read).
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    use futures_util::FutureExt;
    f.now_or_never().expect("a local store answers at once")
}

/// Counts the lines of a file by content.
pub fn count_lines(path: &Path) -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for l in text.lines().filter(|l| !l.is_empty()) {
            *m.entry(l.to_owned()).or_default() += 1;
        }
    }
    m
}

/// `GET path` on 127.0.0.1:`port` (the app's HTTP endpoint): status and body, `None` if
/// nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

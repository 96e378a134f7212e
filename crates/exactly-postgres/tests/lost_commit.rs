//! A `COMMIT` whose answer never comes back, for real: the store talks to PostgreSQL
//! through a TCP proxy that cuts the connection at the `COMMIT` of a completion, either
//! after the server answered it (the transaction committed; the answer is lost) or before
//! the server saw it (the transaction rolls back). The store must read the transaction's
//! fate and decide by it: committed is done (running it again would find its own claim
//! gone and call it fenced), rolled back is run again.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{acquire_at, done_at, drop_schema, fresh_schema, now_ms, url};
use exactly_core::StoreKey;
use exactly_core::store::{Committed, DedupStore, RecordState, StateChanges};
use exactly_postgres::PgStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A simple-query `COMMIT` as the frontend sends it: `Q`, length 11, the text, NUL.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Forward the `COMMIT`, wait for the server's answer, drop it and the connection.
    AfterTheAnswer,
    /// Drop the connection instead of forwarding the `COMMIT`.
    BeforeTheServer,
}

/// A proxy to the test database that cuts the next connection to send a `COMMIT`.
struct Proxy {
    url: String,
    armed: Arc<Mutex<Option<Cut>>>,
    cuts: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start() -> Self {
        let target = url();
        let host = target.split('@').nth(1).and_then(|h| h.split('/').next()).unwrap().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxied = target.replacen(&host, &listener.local_addr().unwrap().to_string(), 1);
        let (armed, cuts) = (Arc::new(Mutex::new(None)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&host).await.unwrap();
                tokio::spawn(pipe(client, server, a.clone(), c.clone()));
            }
        });
        Proxy { url: proxied, armed, cuts }
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }
}

async fn pipe(mut client: TcpStream, mut server: TcpStream, armed: Arc<Mutex<Option<Cut>>>, cuts: Arc<AtomicUsize>) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut cb, mut sb) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    // The last bytes sent, so a `COMMIT` split across two reads is still seen.
    let mut window: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            n = cr.read(&mut cb) => {
                let Ok(n @ 1..) = n else { return };
                window.extend_from_slice(&cb[..n]);
                let hit = window.windows(COMMIT.len()).any(|w| w == COMMIT);
                window.drain(..window.len().saturating_sub(COMMIT.len()));
                let cut = if hit { armed.lock().unwrap().take() } else { None };
                if let Some(cut) = cut {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    if let Cut::AfterTheAnswer = cut {
                        sw.write_all(&cb[..n]).await.unwrap();
                        // Its answer read here and dropped: the server has committed.
                        let _ = sr.read(&mut sb).await;
                    }
                    return;
                }
                if sw.write_all(&cb[..n]).await.is_err() {
                    return;
                }
            }
            n = sr.read(&mut sb) => {
                let Ok(n @ 1..) = n else { return };
                if cw.write_all(&sb[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Claims `key` and completes it with `state` while the proxy cuts that `COMMIT`.
/// Returns the store, its schema, the answer and how many connections the proxy cut.
async fn complete_through_a_cut(cut: Cut, state: StateChanges) -> (PgStore, String, Committed, usize) {
    let proxy = Proxy::start().await;
    let schema = fresh_schema("lost");
    let store = PgStore::builder(&proxy.url).schema(&schema).pool_size(2).open().await.unwrap();
    let key = StoreKey::new("c", "k");
    let now = now_ms();
    let token = acquire_at(&store, &key, now).await;
    proxy.arm(cut);
    let committed = store.complete(done_at(&key, token, now, state)).await.unwrap();
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    drop(proxy);
    (store, schema, committed, cuts)
}

fn a_write() -> StateChanges {
    StateChanges { reads: vec![], writes: vec![(StoreKey::state("c", b"total"), Some(Bytes::from_static(b"7")))] }
}

async fn check_done(store: PgStore, schema: &str, state: bool) {
    let r = store.inspect(&StoreKey::new("c", "k")).await.unwrap().expect("a record");
    assert!(matches!(r.state, RecordState::Done { .. }), "{r:?}");
    if state {
        let total = store.state_get(&StoreKey::state("c", b"total")).await.unwrap();
        assert_eq!(total.as_deref(), Some(&b"7"[..]));
    }
    drop(store);
    drop_schema(schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_read_back_as_committed() {
    for state in [false, true] {
        let changes = if state { a_write() } else { StateChanges::default() };
        let (store, schema, committed, cuts) = complete_through_a_cut(Cut::AfterTheAnswer, changes).await;
        assert_eq!(cuts, 1, "the proxy cut the commit (state: {state})");
        assert_eq!(committed, Committed::Ok, "a committed completion is done, not fenced (state: {state})");
        check_done(store, &schema, state).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_server_never_saw_is_run_again() {
    for state in [false, true] {
        let changes = if state { a_write() } else { StateChanges::default() };
        let (store, schema, committed, cuts) = complete_through_a_cut(Cut::BeforeTheServer, changes).await;
        assert_eq!(cuts, 1, "the proxy cut the commit (state: {state})");
        assert_eq!(committed, Committed::Ok, "the rolled-back group ran again (state: {state})");
        check_done(store, &schema, state).await;
    }
}

/// A handler's own transaction (`ctx.postgres()`) whose `COMMIT` is cut: its row and its
/// done-record are one commit, so the credit is applied once whichever way the cut went,
/// and the message is answered by the transaction's fate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_transaction_whose_commit_is_cut_credits_once() {
    use exactly_core::{Context, HandlerError, Message, Outcome, Processor, handler_fn};
    use exactly_postgres::PostgresContext;

    for cut in [Cut::AfterTheAnswer, Cut::BeforeTheServer] {
        let proxy = Proxy::start().await;
        let schema = fresh_schema("lost_tx");
        let store = PgStore::builder(&proxy.url).schema(&schema).open().await.unwrap();
        let client = common::connect().await;
        let table = format!("\"{schema}\".ledger");
        client.batch_execute(&format!("CREATE TABLE {table} (account text PRIMARY KEY, balance int8)")).await.unwrap();
        let sql = format!(
            "INSERT INTO {table} VALUES ('ada', 7) ON CONFLICT (account) DO UPDATE SET balance = {table}.balance + 7"
        );
        let h = handler_fn(move |_m: Message, ctx: Context| {
            let sql = sql.clone();
            async move {
                ctx.postgres().await?.execute(&sql, &[]).await?;
                Ok::<_, HandlerError>(())
            }
        });
        let p = Processor::builder("c", h).store(store).build().unwrap();
        let msg = Message::builder("7").header("idempotency-key", "k").build();
        proxy.arm(cut);
        let first = p.process(msg.clone()).await.unwrap();
        assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "{cut:?}: the proxy cut the commit");
        match cut {
            Cut::AfterTheAnswer => assert_eq!(first.outcome, Outcome::Handled, "read back as committed"),
            Cut::BeforeTheServer => assert_eq!(first.outcome, Outcome::Retry, "rolled back: run again later"),
        }
        let again = p.process(msg).await.unwrap().outcome;
        let expected = if matches!(cut, Cut::AfterTheAnswer) { Outcome::Duplicate } else { Outcome::Handled };
        assert_eq!(again, expected, "{cut:?}");
        let balance: i64 = client.query_one(&format!("SELECT balance FROM {table}"), &[]).await.unwrap().get(0);
        assert_eq!(balance, 7, "{cut:?}: credited once");
        drop((p, proxy));
        drop_schema(&schema);
    }
}

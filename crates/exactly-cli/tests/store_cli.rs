//! `exactly store ...` on a real sled store that a processor wrote (and a fjall store it
//! moves to).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use exactly_core::{
    Context, DedupStore, Disposition, HandlerError, Message, Processor, SledStore, StoreKey, handler_fn,
};

fn exactly(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exactly"))
        .arg("store")
        .arg("--path")
        .arg(store)
        .args(args)
        .env_remove("EXACTLY_STORE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A store where consumer `payments` handled order-0..order-4 (each adding its number to
/// the state value `total`) and dead-lettered `poison`, with a Kafka watermark beside.
async fn write_store(dir: &Path) {
    let handler = handler_fn(|msg: Message, ctx: Context| async move {
        if msg.payload().as_ref() == b"poison" {
            return Err(HandlerError::permanent("bad-order", "not an order"));
        }
        let n: u64 = msg.payload().as_ref()[6..].iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
        let total: u64 = ctx.state().get_json("total").await?.unwrap_or(0);
        ctx.state().put_json("total", &(total + n)).await?;
        ctx.state().put("last-order", msg.message_id().unwrap_or_default().to_owned()).await?;
        Ok(format!("receipt for {}", msg.message_id().unwrap_or_default()))
    });
    let p = Processor::builder("payments", handler).store(SledStore::open(dir).unwrap()).build().unwrap();
    for i in 0..5 {
        let m = Message::builder(format!("order {i}")).message_id(format!("order-{i}")).build();
        let done = p.process(m).await.unwrap();
        assert!(matches!(done.disposition, Disposition::Ack), "{:?}", done.disposition);
    }
    let mut poisoned = p.process(Message::builder("poison").message_id("poison").build()).await.unwrap();
    poisoned.confirm_dead_letter().await.unwrap();
    p.flush().await.unwrap();
    drop(p);
    let store = SledStore::open(dir).unwrap();
    store.meta_put("kafka/g/orders/0", Bytes::copy_from_slice(&7i64.to_be_bytes())).await.unwrap();
    store.flush().await.unwrap();
}

/// `write_store` in `dir/store`, exported to `dir/export.jsonl`: both paths.
async fn exported(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = dir.join("store");
    write_store(&store).await;
    let export = dir.join("export.jsonl");
    let out = exactly(&store, &["export", "--out", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    (store, export)
}

#[tokio::test]
async fn stats_get_list_forget_export_and_import() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    write_store(&store).await;

    let out = exactly(&store, &["stats"]);
    assert!(out.status.success(), "{}", text(&out));
    let stats = text(&out);
    let row = stats.lines().find(|l| l.starts_with("payments")).unwrap();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["payments", "5", "1", "0"], "{stats}");

    let out = exactly(&store, &["get", "payments", "order-3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("state        done"), "{}", text(&out));
    assert!(text(&out).contains("output       receipt for order-3"), "{}", text(&out));
    // The state names the message wrote, and what they hold now (order-4 wrote them last).
    assert!(text(&out).contains("wrote        total (now 10), last-order (now order-4)"), "{}", text(&out));
    let out = exactly(&store, &["get", "payments", "order-3", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["wrote"], serde_json::json!(["total", "last-order"]));

    let out = exactly(&store, &["get", "payments", "poison", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"]["DeadLettered"]["reason"], "bad-order");
    assert!(text(&exactly(&store, &["get", "payments", "poison"])).contains("wrote        nothing"));

    let out = exactly(&store, &["get", "payments", "order-99"]);
    assert_eq!(out.status.code(), Some(3), "a missing key exits 3: {}", text(&out));

    let out = exactly(&store, &["list", "--consumer", "payments", "--prefix", "order-", "--limit", "3"]);
    let listed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.to_owned()).collect();
    assert_eq!(listed.len(), 3);
    assert!(listed[0].starts_with("payments:order-0\tdone"), "{listed:?}");
    let out = exactly(&store, &["list", "--state", "dead-lettered"]);
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("payments:poison\tdead-lettered (bad-order)"));

    let export = tmp.path().join("export.jsonl");
    let out = exactly(&store, &["export", "--out", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // Six records, two state values, one watermark.
    assert_eq!(std::fs::read_to_string(&export).unwrap().lines().count(), 9);

    let out = exactly(&store, &["forget", "payments", "order-3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(exactly(&store, &["get", "payments", "order-3"]).status.code(), Some(3));
    assert_eq!(exactly(&store, &["forget", "payments", "order-3"]).status.code(), Some(3));

    let moved = tmp.path().join("moved");
    let out = exactly(&moved, &["import", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("imported 6 records, 2 state values, 1 meta values"), "{}", text(&out));
    let out = exactly(&moved, &["get", "payments", "order-3"]);
    assert!(text(&out).contains("output       receipt for order-3"), "{}", text(&out));
    assert!(text(&out).contains("wrote        total (now 10), last-order (now order-4)"), "{}", text(&out));
}

#[tokio::test]
async fn an_export_moves_to_another_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, export) = exported(tmp.path()).await;

    let moved = tmp.path().join("fjall");
    let out = exactly(&moved, &["--engine", "fjall", "import", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("imported 6 records"), "{}", text(&out));
    let out = exactly(&moved, &["--engine", "fjall", "get", "payments", "order-3"]);
    assert!(text(&out).contains("output       receipt for order-3"), "{}", text(&out));
    let out = exactly(&moved, &["--engine", "fjall", "stats"]);
    let stats = text(&out);
    let row = stats.lines().find(|l| l.starts_with("payments")).unwrap();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["payments", "5", "1", "0"], "{stats}");
}

#[tokio::test]
async fn only_a_forgotten_key_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    write_store(&store).await;
    assert!(exactly(&store, &["forget", "payments", "order-1"]).status.success());
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = runs.clone();
    let handler = handler_fn(move |_m: Message, _ctx: Context| {
        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok(()) }
    });
    let p = Processor::builder("payments", handler).store(SledStore::open(&store).unwrap()).build().unwrap();
    for i in [0, 1, 2] {
        let m = Message::builder(format!("order {i}")).message_id(format!("order-{i}")).build();
        assert!(matches!(p.process(m).await.unwrap().disposition, Disposition::Ack));
    }
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1, "only the forgotten key runs again");
}

#[tokio::test]
async fn a_store_a_consumer_holds_or_a_missing_one_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    write_store(&store).await;
    let held = SledStore::open(&store).unwrap();
    let out = exactly(&store, &["stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot open the store at"), "{}", text(&out));
    assert!(text(&out).contains("another process has it open"), "{}", text(&out));
    assert_eq!(text(&out).matches("cannot open the store").count(), 1, "said once: {}", text(&out));
    assert_eq!(text(&out).lines().count(), 1, "one line: {}", text(&out));
    drop(held);

    // A cause the store's message already quotes is not repeated after it.
    let odd = tmp.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("wal"), b"a file where the log's directory goes").unwrap();
    let out = exactly(&odd, &["--engine", "redb", "stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).matches("Not a directory").count(), 1, "said once: {}", text(&out));

    let out = exactly(&tmp.path().join("nowhere"), &["stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no store at"), "{}", text(&out));

    let out =
        Command::new(env!("CARGO_BIN_EXE_exactly")).args(["store", "--path", "x", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
}

/// Export and import carry what handlers wrote through `ctx.state()` and the Kafka
/// watermarks, not only the done-records.
#[tokio::test]
async fn an_export_carries_state_and_watermarks() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, export) = exported(tmp.path()).await;

    for engine in ["sled", "redb", "fjall"] {
        let moved = tmp.path().join(engine);
        let out = exactly(&moved, &["--engine", engine, "import", export.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let opened: Box<dyn DedupStore> = match engine {
            "sled" => Box::new(SledStore::open(&moved).unwrap()),
            "redb" => Box::new(exactly_core::store::RedbStore::open(&moved).unwrap()),
            _ => Box::new(exactly_core::store::FjallStore::open(&moved).unwrap()),
        };
        let total = opened.state_get(&StoreKey::state("payments", b"total")).await.unwrap();
        assert_eq!(total.as_deref(), Some(&b"10"[..]), "{engine}: the state value moved");
        let last = opened.state_get(&StoreKey::state("payments", b"last-order")).await.unwrap();
        assert_eq!(last.as_deref(), Some(&b"order-4"[..]), "{engine}");
        let wm = opened.meta_get("kafka/g/orders/0").await.unwrap();
        assert_eq!(wm.as_deref(), Some(&7i64.to_be_bytes()[..]), "{engine}: the watermark moved");
    }

    let out = exactly(&store, &["state", "get", "payments", "total"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "10\n");
    let out = exactly(&store, &["state", "get", "payments", "nothing"]);
    assert_eq!(out.status.code(), Some(3), "a missing value exits 3: {}", text(&out));
    let out = exactly(&store, &["state", "list", "--consumer", "payments"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "payments\tlast-order\torder-4\npayments\ttotal\t10\n");
    let out = exactly(&store, &["state", "list", "--consumer", "payments", "--prefix", "to", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!({"kind": "state", "namespace": "payments", "key": "total", "value": "10"}));
    let out = exactly(&store, &["state", "list", "--consumer", "emails"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
}

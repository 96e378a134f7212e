//! Bad input on the default on-disk store: each message is handled once or dead-lettered
//! with its reason, nothing panics. (Keys that are missing, too long, not UTF-8 or of the
//! wrong header type, and key conflicts, are covered in protocol.rs and key/mod.rs.)
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use exactly_core::{Context, Disposition, Message, Outcome, Processor, SledStore, handler_fn, reasons};

fn counting_json(runs: Arc<AtomicU32>) -> impl exactly_core::Handler<Output = ()> {
    handler_fn(move |m: Message, _ctx: Context| {
        let runs = runs.clone();
        async move {
            let _v: serde_json::Value = m.decode()?;
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
}

#[tokio::test]
async fn an_empty_payload_is_dead_lettered_as_decode() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let p = Processor::builder("c", counting_json(runs.clone()))
        .store(SledStore::open(dir.path()).unwrap())
        .build()
        .unwrap();
    let mut out = p.process(Message::builder(Vec::new()).message_id("empty").build()).await.unwrap();
    let dl = out.dead_letter().unwrap();
    assert_eq!(dl.reason, reasons::DECODE);
    assert!(dl.last_error.as_deref().unwrap().contains("EOF"), "{:?}", dl.last_error);
    out.confirm_dead_letter().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // Its redelivery is acknowledged as already dead-lettered, not run or dead-lettered twice.
    let again = p.process(Message::builder(Vec::new()).message_id("empty").build()).await.unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyDeadLettered);
    assert!(matches!(again.disposition, Disposition::Ack));
}

#[tokio::test]
async fn a_ten_megabyte_payload_is_handled_once() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let p = Processor::builder("c", counting_json(runs.clone()))
        .store(SledStore::open(dir.path()).unwrap())
        .build()
        .unwrap();
    let mut big = b"\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    big.push(b'"');
    for _ in 0..2 {
        let out = p.process(Message::builder(big.clone()).message_id("big").build()).await.unwrap();
        assert!(matches!(out.disposition, Disposition::Ack), "{:?}", out.disposition);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the duplicate is recognised by key and fingerprint");
    p.flush().await.unwrap();
    let rec = p.store().inspect(&exactly_core::StoreKey::new("c", "big")).await.unwrap().unwrap();
    assert_eq!(rec.attempts, 1);
}

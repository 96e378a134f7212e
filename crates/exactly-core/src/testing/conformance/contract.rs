//! The store contract, check by check. Each check opens its [`Subject`], runs the
//! operations of [`DedupStore`] and panics with what broke.

use std::sync::Arc;

use bytes::Bytes;

use super::Subject;
use crate::clock::Millis;
use crate::store::{
    Claim, ClaimRequest, Committed, Completion, DedupStore, Final, Lease, RecordState, RecordView, StateChanges,
    StoreKey,
};
use crate::{Context, Disposition, Fingerprint, Message, Processor, handler_fn, reasons};

/// The time the checks run at (ms since the epoch).
const NOW: Millis = 1_700_000_000_000;
const LEASE: Millis = 60_000;

fn req<'a>(key: &'a StoreKey, payload: &[u8], now: Millis) -> ClaimRequest<'a> {
    let fingerprint = Fingerprint::of(payload);
    ClaimRequest { key, fingerprint, now, lease_until: now + LEASE, durable: false, redrive: false }
}

async fn acquire(store: &dyn DedupStore, r: ClaimRequest<'_>) -> Lease {
    match store.claim(r).await.expect("claim") {
        Claim::Acquired(lease) => lease,
        other => panic!("expected to acquire {}, got {other:?}", r.key),
    }
}

fn done(key: &StoreKey, lease: &Lease, payload: &[u8], output: Option<&'static str>) -> Completion {
    Completion {
        key: key.clone(),
        token: lease.token,
        fingerprint: Fingerprint::of(payload),
        attempts: lease.attempts + 1,
        now: NOW,
        origin: None,
        outcome: Final::Done { output: output.map(|o| Bytes::from_static(o.as_bytes())), emitted: vec![] },
        expires_at: NOW + 7 * 24 * 3_600_000,
        state: StateChanges::default(),
    }
}

fn writes(pairs: &[(&[u8], &'static [u8])]) -> Vec<(Vec<u8>, Option<Bytes>)> {
    pairs.iter().map(|(k, v)| (StoreKey::state("c", k), Some(Bytes::from_static(v)))).collect()
}

/// A key is held by one claim at a time; once done, a copy is a duplicate with the cached
/// output, and another payload under the key a conflict.
pub async fn claims_exclude_and_duplicates_are_answered(s: &dyn Subject) {
    let store = s.open().await;
    let key = StoreKey::new("c", "k");
    let lease = acquire(&*store, req(&key, b"p", NOW)).await;
    match store.claim(req(&key, b"p", NOW)).await.expect("claim") {
        Claim::Busy { lease_until } => assert!(lease_until >= NOW + LEASE, "busy until {lease_until}"),
        other => panic!("a held key was claimed again: {other:?}"),
    }
    let c = store.complete(done(&key, &lease, b"p", Some("out"))).await.expect("complete");
    assert_eq!(c, Committed::Ok);
    match store.claim(req(&key, b"p", NOW)).await.expect("claim") {
        Claim::Done { output, .. } => assert_eq!(output.as_deref(), Some(&b"out"[..])),
        other => panic!("a done key was not a duplicate: {other:?}"),
    }
    match store.claim(req(&key, b"another payload", NOW)).await.expect("claim") {
        Claim::Conflict { stored } => assert_eq!(stored, Fingerprint::of(b"p")),
        other => panic!("another payload under a done key was not a conflict: {other:?}"),
    }
    let view = store.inspect(&key).await.expect("inspect").expect("the record");
    assert!(matches!(view.state, RecordState::Done { .. }), "{view:?}");
}

/// A claim whose lease ran out is taken over with a larger token; the old holder's
/// completion is fenced and writes nothing.
pub async fn an_expired_lease_is_taken_over_and_the_old_holder_fenced(s: &dyn Subject) {
    let store = s.open().await;
    let key = StoreKey::new("c", "k");
    let old = acquire(&*store, ClaimRequest { lease_until: NOW + 10, ..req(&key, b"p", NOW) }).await;
    let new = acquire(&*store, req(&key, b"p", NOW + 20)).await;
    assert!(new.token > old.token, "tokens {} then {}", old.token, new.token);
    assert!(new.orphaned, "a takeover says the previous holder may have had effects");
    let mut stale = done(&key, &old, b"p", Some("old"));
    stale.state.writes = writes(&[(b"who", b"old")]);
    assert_eq!(store.complete(stale).await.expect("complete"), Committed::Fenced);
    assert_eq!(store.state_get(&StoreKey::state("c", b"who")).await.expect("state"), None, "fenced state written");
    assert_eq!(store.complete(done(&key, &new, b"p", Some("new"))).await.expect("complete"), Committed::Ok);
    match store.claim(req(&key, b"p", NOW + 30)).await.expect("claim") {
        Claim::Done { output, .. } => assert_eq!(output.as_deref(), Some(&b"new"[..])),
        other => panic!("{other:?}"),
    }
}

/// Fencing tokens grow with every claim, across a reopen of the store.
pub async fn fencing_tokens_grow_across_reopens(s: &dyn Subject) {
    let mut last = 0;
    for round in 0..2 {
        let store = s.open().await;
        for i in 0..3 {
            let key = StoreKey::new("c", &format!("k{round}-{i}"));
            let lease = acquire(&*store, req(&key, b"p", NOW)).await;
            assert!(lease.token > last, "token {} after {last}", lease.token);
            last = lease.token;
            store.release(&key, lease.token, 1, None).await.expect("release");
        }
        store.flush().await.expect("flush");
    }
}

/// A released claim leaves its attempts and errors to the next claim of the key.
pub async fn a_release_keeps_attempts_and_errors(s: &dyn Subject) {
    let store = s.open().await;
    let key = StoreKey::new("c", "k");
    let first = acquire(&*store, req(&key, b"p", NOW)).await;
    store.release(&key, first.token, 1, Some("timeout".into())).await.expect("release");
    let second = acquire(&*store, req(&key, b"p", NOW)).await;
    assert_eq!(second.attempts, 1);
    assert_eq!(second.first_error.as_deref(), Some("timeout"));
    store.release(&key, second.token, 2, Some("refused".into())).await.expect("release");
    let third = acquire(&*store, req(&key, b"p", NOW)).await;
    assert_eq!(
        (third.attempts, third.first_error.as_deref(), third.last_error.as_deref()),
        (2, Some("timeout"), Some("refused"))
    );
    // A release by a holder that lost the key changes nothing.
    store.release(&key, first.token, 9, None).await.expect("release");
    assert!(store.renew(&key, third.token, NOW + LEASE).await.expect("renew"), "the holder lost its lease");
}

/// State writes commit with the record, or not at all when a value read has changed.
pub async fn state_commits_with_the_record_all_or_nothing(s: &dyn Subject) {
    let store = s.open().await;
    let balance = StoreKey::state("c", b"balance");
    let (a, b) = (StoreKey::new("c", "a"), StoreKey::new("c", "b"));
    let la = acquire(&*store, req(&a, b"p", NOW)).await;
    let lb = acquire(&*store, req(&b, b"p", NOW)).await;
    let mut ca = done(&a, &la, b"p", None);
    ca.state = StateChanges { reads: vec![(balance.clone(), None)], writes: writes(&[(b"balance", b"1")]) };
    assert_eq!(store.complete(ca).await.expect("complete"), Committed::Ok);
    // b read the balance before a wrote it: its commit is refused, nothing of it written.
    let mut cb = done(&b, &lb, b"p", None);
    cb.state =
        StateChanges { reads: vec![(balance.clone(), None)], writes: writes(&[(b"balance", b"1"), (b"b", b"x")]) };
    assert_eq!(store.complete(cb).await.expect("complete"), Committed::Conflict);
    assert_eq!(store.state_get(&balance).await.expect("state").as_deref(), Some(&b"1"[..]));
    assert_eq!(store.state_get(&StoreKey::state("c", b"b")).await.expect("state"), None);
    // (A store that keeps claims as rows shows b's claim, still held: no done-record.)
    let left = store.inspect(&b).await.expect("inspect");
    assert!(
        left.as_ref().is_none_or(|r| matches!(r.state, RecordState::InFlight { .. })),
        "a refused completion left a record: {left:?}"
    );
    // Read again, it commits.
    let mut cb = done(&b, &lb, b"p", None);
    cb.state = StateChanges {
        reads: vec![(balance.clone(), Some(Bytes::from_static(b"1")))],
        writes: writes(&[(b"balance", b"2")]),
    };
    assert_eq!(store.complete(cb).await.expect("complete"), Committed::Ok);
    assert_eq!(store.state_get(&balance).await.expect("state").as_deref(), Some(&b"2"[..]));
    // Each done-record names what its message wrote, not what a refused run tried.
    let names = |r: Option<RecordView>| r.expect("a record").wrote.into_iter().map(|b| b.0).collect::<Vec<_>>();
    assert_eq!(names(store.inspect(&b).await.expect("inspect")), [Bytes::from_static(b"balance")]);
    assert_eq!(names(store.inspect(&a).await.expect("inspect")), [Bytes::from_static(b"balance")]);
}

/// A dead-lettered key is answered as such until a re-driven copy claims it again.
pub async fn dead_letter_marks_hold_until_redriven(s: &dyn Subject) {
    let store = s.open().await;
    let key = StoreKey::new("c", "k");
    let lease = acquire(&*store, req(&key, b"p", NOW)).await;
    let mut c = done(&key, &lease, b"p", None);
    c.outcome = Final::DeadLettered { reason: "decode".into() };
    assert_eq!(store.complete(c).await.expect("complete"), Committed::Ok);
    match store.claim(req(&key, b"p", NOW)).await.expect("claim") {
        Claim::DeadLettered { reason } => assert_eq!(reason, "decode"),
        other => panic!("{other:?}"),
    }
    acquire(&*store, ClaimRequest { redrive: true, ..req(&key, b"p", NOW) }).await;
}

/// A claim written durably before its handler ran is found after a crash, orphaned.
pub async fn a_durable_claim_is_an_orphan_after_a_crash(s: &dyn Subject) {
    let key = StoreKey::new("c", "k");
    {
        let store = s.open().await;
        acquire(&*store, ClaimRequest { durable: true, ..req(&key, b"p", NOW) }).await;
    }
    s.crash().await;
    let store = s.open().await;
    let lease = acquire(&*store, req(&key, b"p", NOW)).await;
    assert!(lease.orphaned, "the crashed holder's claim was not noticed");
}

/// Done-records, state and meta values are durable: a reopened store has them.
pub async fn records_state_and_meta_survive_a_reopen(s: &dyn Subject) {
    let key = StoreKey::new("c", "k");
    {
        let store = s.open().await;
        let lease = acquire(&*store, req(&key, b"p", NOW)).await;
        let mut c = done(&key, &lease, b"p", Some("out"));
        c.state.writes = writes(&[(b"balance", b"42")]);
        assert_eq!(store.complete(c).await.expect("complete"), Committed::Ok);
        store.meta_put("watermark", Bytes::from_static(b"7")).await.expect("meta");
    }
    s.crash().await;
    let store = s.open().await;
    match store.claim(req(&key, b"p", NOW)).await.expect("claim") {
        Claim::Done { output, .. } => assert_eq!(output.as_deref(), Some(&b"out"[..])),
        other => panic!("a done key was lost: {other:?}"),
    }
    let balance = store.state_get(&StoreKey::state("c", b"balance")).await.expect("state");
    assert_eq!(balance.as_deref(), Some(&b"42"[..]));
    assert_eq!(store.meta_get("watermark").await.expect("meta").as_deref(), Some(&b"7"[..]));
}

/// Renewing extends a held lease; a holder that lost the key is told so.
pub async fn renew_extends_only_a_held_lease(s: &dyn Subject) {
    let store = s.open().await;
    let key = StoreKey::new("c", "k");
    let old = acquire(&*store, ClaimRequest { lease_until: NOW + 10, ..req(&key, b"p", NOW) }).await;
    assert!(store.renew(&key, old.token, NOW + 100).await.expect("renew"));
    // Renewed past NOW + 50: not taken over then.
    assert!(matches!(store.claim(req(&key, b"p", NOW + 50)).await.expect("claim"), Claim::Busy { .. }));
    let new = acquire(&*store, req(&key, b"p", NOW + 200)).await;
    assert!(!store.renew(&key, old.token, NOW + 300).await.expect("renew"), "a fenced holder renewed");
    assert!(store.renew(&key, new.token, NOW + 300).await.expect("renew"));
}

/// A purge removes the records whose retention has passed and keeps the others.
pub async fn expired_records_are_purged_and_the_rest_kept(s: &dyn Subject) {
    let store = s.open().await;
    for i in 0..20 {
        let key = StoreKey::new("c", &format!("k{i}"));
        let lease = acquire(&*store, req(&key, b"p", NOW)).await;
        let mut c = done(&key, &lease, b"p", None);
        c.expires_at = if i < 12 { NOW + 1_000 } else { NOW + 400 * 24 * 3_600_000 };
        assert_eq!(store.complete(c).await.expect("complete"), Committed::Ok);
    }
    let mut removed = 0;
    loop {
        let r = store.purge_expired(NOW + 100 * 24 * 3_600_000, 5).await.expect("purge");
        removed += r.records_removed;
        if !r.more {
            break;
        }
    }
    assert_eq!(removed, 12);
    assert!(store.inspect(&StoreKey::new("c", "k0")).await.expect("inspect").is_none());
    assert!(store.inspect(&StoreKey::new("c", "k19")).await.expect("inspect").is_some());
    // A purged key runs again.
    acquire(&*store, req(&StoreKey::new("c", "k0"), b"p", NOW)).await;
}

/// Records are listed in key order by prefix and page; a forgotten key runs again; an
/// imported record answers like the original.
pub async fn list_forget_and_import(s: &dyn Subject) {
    let store = s.open().await;
    for ns in ["a", "b"] {
        for i in 0..5 {
            let key = StoreKey::new(ns, &format!("k{i}"));
            let lease = acquire(&*store, req(&key, b"p", NOW)).await;
            assert_eq!(store.complete(done(&key, &lease, b"p", None)).await.expect("complete"), Committed::Ok);
        }
    }
    let all = store.list(None, None, 100).await.expect("list");
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "not in key order");
    let b = store.list(Some(&StoreKey::new("b", "")), None, 3).await.expect("list");
    assert_eq!(b.iter().map(|r| r.key.key().to_owned()).collect::<Vec<_>>(), ["k0", "k1", "k2"]);
    let rest = store.list(Some(&StoreKey::new("b", "")), Some(&b[2].key), 100).await.expect("list");
    assert_eq!(rest.len(), 2);
    let forgotten = StoreKey::new("a", "k1");
    let record = store.inspect(&forgotten).await.expect("inspect").expect("a record");
    assert!(store.forget(&forgotten).await.expect("forget"));
    assert!(!store.forget(&forgotten).await.expect("forget"), "forgotten twice");
    acquire(&*store, req(&forgotten, b"p", NOW)).await;
    let moved = StoreKey::new("c", "k");
    store.import(crate::store::RecordView { key: moved.clone(), ..record }).await.expect("import");
    assert!(matches!(store.claim(req(&moved, b"p", NOW)).await.expect("claim"), Claim::Done { .. }));
}

/// Batched claims and completions answer each in the order asked.
pub async fn batched_claims_and_completions_answer_in_order(s: &dyn Subject) {
    let store = s.open().await;
    let keys: Vec<StoreKey> = (0..8).map(|i| StoreKey::new("c", &format!("k{i}"))).collect();
    let reqs: Vec<ClaimRequest<'_>> = keys.iter().map(|k| req(k, b"p", NOW)).collect();
    let claims = store.claim_many(&reqs).await.expect("claim many");
    let leases: Vec<Lease> = claims
        .into_iter()
        .map(|c| match c {
            Claim::Acquired(l) => l,
            other => panic!("{other:?}"),
        })
        .collect();
    let completions = keys.iter().zip(&leases).map(|(k, l)| done(k, l, b"p", Some("ok"))).collect();
    for staged in store.complete_many(completions).await.expect("complete many") {
        assert_eq!(staged.committed, Committed::Ok);
        staged.durable.wait().await.expect("durable");
    }
    let again = store.claim_many(&reqs).await.expect("claim many");
    assert!(again.iter().all(|c| matches!(c, Claim::Done { .. })), "{again:?}");
}

/// A handler's state key or output over the store's limits is its permanent error,
/// dead-lettered with reason `too-large`; the store goes on.
pub async fn writes_over_the_limits_are_dead_lettered_as_too_large(s: &dyn Subject) {
    let store: Arc<dyn DedupStore> = s.open().await;
    let limits = store.limits();
    let long = limits.max_state_key + 1;
    let handler = handler_fn(move |m: Message, ctx: Context| async move {
        match m.payload_str() {
            Some("key") => ctx.state().put("k".repeat(long), "v").await?,
            _ => ctx.state().put("small", "v").await?,
        }
        Ok(())
    });
    let p = Processor::builder("c", handler).shared_store(store.clone()).no_breaker().build().expect("processor");
    let mut out = p.process(Message::builder("key").header("idempotency-key", "big").build()).await.expect("process");
    match &out.disposition {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, reasons::TOO_LARGE),
        other => panic!("a state key over the limit was not dead-lettered: {other:?}"),
    }
    out.confirm_dead_letter().await.expect("confirm");
    let ok = p.process(Message::builder("ok").header("idempotency-key", "small").build()).await.expect("process");
    assert_eq!(ok.disposition, Disposition::Ack);
}

/// `export` writes everything the store holds (records, state values of every consumer,
/// meta values) and `import` writes it back: a store filled from another's export exports
/// the same lines, both ways.
pub async fn an_export_round_trips(s: &dyn Subject) {
    use crate::store::export::{export, import};
    let store = s.open().await;
    for (ns, i) in [("a", 0), ("a", 1), ("b", 0)] {
        let key = StoreKey::new(ns, &format!("k{i}"));
        let lease = acquire(&*store, req(&key, b"p", NOW)).await;
        let mut c = done(&key, &lease, b"p", Some("out"));
        c.origin = Some(format!("t/0/{i}"));
        c.state.writes = vec![
            (StoreKey::state(ns, format!("text{i}").as_bytes()), Some(Bytes::from("{\"n\":1}"))),
            (StoreKey::state(ns, &[0xff, i]), Some(Bytes::from_static(&[0, 0xfe]))),
        ];
        assert_eq!(store.complete(c).await.expect("complete"), Committed::Ok);
    }
    let poison = StoreKey::new("b", "poison");
    let lease = acquire(&*store, req(&poison, b"x", NOW)).await;
    let mut c = done(&poison, &lease, b"x", None);
    c.outcome = Final::DeadLettered { reason: "bad".into() };
    assert_eq!(store.complete(c).await.expect("complete"), Committed::Ok);
    store.meta_put("kafka/g/t/0", Bytes::from_static(&[0, 0, 0, 9])).await.expect("meta");
    store.flush().await.expect("flush");

    let mut first = Vec::new();
    let counts = export(&*store, &mut first).await.expect("export");
    assert_eq!((counts.records, counts.state, counts.meta), (4, 6, 1), "{}", String::from_utf8_lossy(&first));
    let copy = crate::MemoryStore::new();
    import(&copy, &first[..]).await.expect("import into memory");
    let mut second = Vec::new();
    export(&copy, &mut second).await.expect("export");
    assert_eq!(String::from_utf8_lossy(&second), String::from_utf8_lossy(&first), "lost or changed in the copy");

    // And into this store: another store's export, read back as it was written.
    let other = crate::MemoryStore::new();
    let moved = StoreKey::new("m", "k");
    let lease = acquire(&other, req(&moved, b"p", NOW)).await;
    let mut c = done(&moved, &lease, b"p", Some("moved"));
    c.state.writes = vec![(StoreKey::state("m", b"total"), Some(Bytes::from_static(b"5")))];
    assert_eq!(other.complete(c).await.expect("complete"), Committed::Ok);
    other.meta_put("kafka/g/t/1", Bytes::from_static(b"3")).await.expect("meta");
    let mut theirs = Vec::new();
    export(&other, &mut theirs).await.expect("export");
    import(&*store, &theirs[..]).await.expect("import");
    let mut after = Vec::new();
    export(&*store, &mut after).await.expect("export");
    let after = String::from_utf8_lossy(&after);
    for line in String::from_utf8_lossy(&theirs).lines().chain(String::from_utf8_lossy(&first).lines()) {
        assert!(after.lines().any(|l| l == line), "{line} is missing after the import:\n{after}");
    }
    assert!(matches!(store.claim(req(&moved, b"p", NOW)).await.expect("claim"), Claim::Done { .. }));
}

//! The database misbehaving under a running store, for real: a row held by a stuck
//! transaction (the statement timeout), the store's sessions terminated as a failover or
//! an administrator does. Each is `StoreUnavailable` while it lasts, and the store goes on
//! by itself afterwards. (Server restarts mid-run: tests/tests/chaos.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{acquire_at, connect, done_at, drop_schema, fresh_schema, request_at, url};
use exactly_core::StoreKey;
use exactly_core::store::{Claim, ClaimRequest, Committed, Completion, DedupStore, StateChanges};
use exactly_postgres::PgStore;

const NOW: u64 = 1_000_000;

fn request(key: &StoreKey) -> ClaimRequest<'_> {
    request_at(key, NOW)
}

fn completion(key: &StoreKey, token: u64, state: StateChanges) -> Completion {
    done_at(key, token, NOW, state)
}

async fn acquire(store: &PgStore, key: &StoreKey) -> u64 {
    acquire_at(store, key, NOW).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_by_a_stuck_transaction_times_out_and_the_completion_goes_through_after() {
    let schema = fresh_schema("stuck");
    let store = PgStore::builder(url())
        .schema(&schema)
        .pool_size(2)
        .statement_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let plain = StoreKey::new("c", "plain");
    let with_state = StoreKey::new("c", "state");
    let (t1, t2) = (acquire(&store, &plain).await, acquire(&store, &with_state).await);

    // Another session locks both rows and sits on them.
    let stuck = connect().await;
    stuck.batch_execute("BEGIN").await.unwrap();
    stuck.execute(&format!("SELECT 1 FROM \"{schema}\".records FOR UPDATE"), &[]).await.unwrap();

    let state =
        StateChanges { reads: vec![], writes: vec![(StoreKey::state("c", b"balance"), Some(Bytes::from("1")))] };
    let started = Instant::now();
    for (key, token, state) in [(&plain, t1, StateChanges::default()), (&with_state, t2, state.clone())] {
        let err = store.complete(completion(key, token, state)).await.unwrap_err();
        assert!(err.is_transient(), "{key}: {err:?}");
        assert!(err.to_string().contains("statement timeout"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(20), "the timeouts ended the waits");

    stuck.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(store.complete(completion(&plain, t1, StateChanges::default())).await.unwrap(), Committed::Ok);
    assert_eq!(store.complete(completion(&with_state, t2, state)).await.unwrap(), Committed::Ok);
    assert_eq!(store.state_get(&StoreKey::state("c", b"balance")).await.unwrap().as_deref(), Some(&b"1"[..]));
    drop(store);
    drop_schema(&schema);
}

/// Every connection busy (here the one connection, waiting on a row another session
/// holds): other calls fail as unavailable after the pool's wait, naming the cause, and
/// go through once a connection is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_a_passing_outage_with_its_cause_named() {
    let schema = fresh_schema("full");
    let store = Arc::new(
        PgStore::builder(url())
            .schema(&schema)
            .pool_size(1)
            .connect_timeout(Duration::from_secs(2))
            .statement_timeout(Duration::ZERO)
            .open()
            .await
            .unwrap(),
    );
    let held = StoreKey::new("c", "held");
    let token = acquire(&store, &held).await;
    let stuck = connect().await;
    stuck.batch_execute("BEGIN").await.unwrap();
    stuck.execute(&format!("SELECT 1 FROM \"{schema}\".records FOR UPDATE"), &[]).await.unwrap();
    // The completion takes the only connection and waits on the row.
    let waiting = {
        let store = store.clone();
        let held = held.clone();
        tokio::spawn(async move { store.complete(completion(&held, token, StateChanges::default())).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    let err = loop {
        // Until the completion has the connection, a claim may still get it first.
        tries += 1;
        let other = StoreKey::new("c", &format!("other-{tries}"));
        match store.claim(request(&other)).await {
            Err(e) => break e,
            Ok(Claim::Acquired(_)) => {}
            Ok(answer) => panic!("{answer:?}"),
        }
        assert!(Instant::now() < deadline, "the pool never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("every connection of the pool is busy"), "{err}");
    assert!(!waiting.is_finished(), "the completion still waits on the row");

    stuck.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), Committed::Ok);
    let other = StoreKey::new("c", "after");
    assert!(matches!(store.claim(request(&other)).await.unwrap(), Claim::Acquired(_)));
    drop(store);
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_are_a_passing_outage_and_the_instance_takes_its_lock_back() {
    let schema = fresh_schema("killed");
    // An application name of the test's own, so only this store's sessions are ended.
    let app = format!("exactly_faults_{}", std::process::id());
    let sep = if url().contains('?') { '&' } else { '?' };
    let store = PgStore::builder(format!("{}{sep}application_name={app}", url()))
        .schema(&schema)
        .pool_size(2)
        .open()
        .await
        .unwrap();
    let first = StoreKey::new("c", "before");
    let token = acquire(&store, &first).await;
    assert_eq!(store.complete(completion(&first, token, StateChanges::default())).await.unwrap(), Committed::Ok);

    let admin = connect().await;
    let ended: i64 = admin
        .query_one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 2, "the pool's and the liveness session were ended: {ended}");

    // Calls fail as unavailable (never anything else) until the pool has new connections.
    let after = StoreKey::new("c", "after");
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match store.claim(request(&after)).await {
            Ok(Claim::Acquired(lease)) => break lease.token,
            Ok(other) => panic!("expected to acquire, got {other:?}"),
            Err(e) => assert!(e.is_transient(), "{e:?}"),
        }
        assert!(Instant::now() < deadline, "the store did not come back within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(store.complete(completion(&after, token, StateChanges::default())).await.unwrap(), Committed::Ok);
    assert!(matches!(store.claim(request(&first)).await.unwrap(), Claim::Done { .. }), "the earlier record is there");

    // The instance marks itself alive again: its lock is back.
    let class = exactly_postgres::lock_class(&schema);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                     AND classid = $1::int4::oid AND objid = $2::int4::oid)",
                &[&class, &store.instance()],
            )
            .await
            .unwrap()
            .get(0);
        if held {
            break;
        }
        assert!(Instant::now() < deadline, "the instance's lock was not taken back within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(store);
    drop_schema(&schema);
}

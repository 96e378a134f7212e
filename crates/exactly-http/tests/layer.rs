//! The layer against a real server on 127.0.0.1 and a real HTTP client: every answer the
//! draft and Stripe's behaviour give.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{keyed, serve, until};
use exactly_core::ManualClock;
use exactly_core::MemoryStore;
use exactly_http::{IdempotencyLayer, Orphans, WhenInFlight};
use reqwest::StatusCode;

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::new(MemoryStore::new())
}

async fn problem(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_repeat_gets_the_stored_response_and_the_handler_runs_once() {
    let server = serve(layer()).await;
    let client = reqwest::Client::new();
    let first = keyed(&client, &server.url("/payments"), "k-1", "10 EUR").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    assert_eq!(first.text().await.unwrap(), "payment 1: 10 EUR");
    for _ in 0..3 {
        let again = keyed(&client, &server.url("/payments"), "k-1", "10 EUR").send().await.unwrap();
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["location"], location);
        assert_eq!(again.text().await.unwrap(), "payment 1: 10 EUR");
    }
    let other = keyed(&client, &server.url("/payments"), "k-2", "10 EUR").send().await.unwrap();
    assert_eq!(other.text().await.unwrap(), "payment 2: 10 EUR");
    assert_eq!(server.effects.payments(), 2);
}

#[tokio::test]
async fn a_missing_or_malformed_key_is_refused_with_a_problem_naming_the_header() {
    let server = serve(layer()).await;
    let client = reqwest::Client::new();
    let missing = client.post(server.url("/payments")).body("x").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let body = problem(missing).await;
    assert_eq!(body["status"], 400);
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
    assert!(body["type"].as_str().unwrap().ends_with("#missing-key"), "{body}");

    let long = format!("\"{}\"", "k".repeat(256));
    let bad: [&[u8]; 5] = [b"unquoted", b"\"\"", b"\"two\", \"keys\"", long.as_bytes(), b"\"caf\xe9\""];
    for value in bad {
        let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
        let refused = client.post(server.url("/payments")).header("idempotency-key", value).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body = problem(refused).await;
        assert!(body["type"].as_str().unwrap().ends_with("#malformed-key"), "{body}");
    }
    assert_eq!(server.effects.payments(), 0, "nothing ran");

    // Methods the layer does not cover pass through without a key.
    let listed = client.get(server.url("/payments")).send().await.unwrap();
    assert_eq!(listed.text().await.unwrap(), "listing");
}

#[tokio::test]
async fn the_same_key_with_another_request_is_422() {
    let server = serve(layer()).await;
    let client = reqwest::Client::new();
    let first = keyed(&client, &server.url("/payments"), "k", "10 EUR").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let other_body = keyed(&client, &server.url("/payments"), "k", "99 EUR").send().await.unwrap();
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem(other_body).await["type"].as_str().unwrap().ends_with("#mismatch"));
    let other_path = keyed(&client, &server.url("/refused"), "k", "10 EUR").send().await.unwrap();
    assert_eq!(other_path.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let other_type = keyed(&client, &server.url("/payments"), "k", "10 EUR")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(other_type.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.effects.payments(), 1);
}

/// Waits until the slow handler has been entered `n` times.
async fn entered(server: &common::Server, n: usize) {
    until("the slow handler ran", || server.effects.slow_entered.load(Ordering::SeqCst) >= n).await;
}

#[tokio::test]
async fn a_repeat_while_the_first_runs_is_409_and_then_gets_its_response() {
    let server = serve(layer()).await;
    let client = reqwest::Client::new();
    let first = tokio::spawn(keyed(&client, &server.url("/slow"), "k", "").send());
    entered(&server, 1).await;
    let during = keyed(&client, &server.url("/slow"), "k", "").send().await.unwrap();
    assert_eq!(during.status(), StatusCode::CONFLICT);
    assert_eq!(during.headers()["retry-after"], "1");
    assert!(problem(during).await["type"].as_str().unwrap().ends_with("#in-flight"));
    server.effects.gate.add_permits(100);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.text().await.unwrap(), "slow payment 1");
    let after = keyed(&client, &server.url("/slow"), "k", "").send().await.unwrap();
    assert_eq!(after.headers()["idempotent-replayed"], "true");
    assert_eq!(after.text().await.unwrap(), "slow payment 1");
}

#[tokio::test]
async fn a_hundred_identical_requests_at_once_run_once() {
    let server = serve(layer().when_in_flight(WhenInFlight::Wait(Duration::from_secs(30)))).await;
    let client = reqwest::Client::new();
    let requests: Vec<_> =
        (0..100).map(|_| tokio::spawn(keyed(&client, &server.url("/slow"), "same", "").send())).collect();
    entered(&server, 1).await;
    server.effects.gate.add_permits(100);
    let mut replayed = 0;
    for request in requests {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        replayed += usize::from(response.headers().contains_key("idempotent-replayed"));
        assert_eq!(response.text().await.unwrap(), "slow payment 1");
    }
    assert_eq!(server.effects.payments(), 1, "one execution");
    assert_eq!(server.effects.slow_entered.load(Ordering::SeqCst), 1);
    assert_eq!(replayed, 99);
}

#[tokio::test]
async fn a_4xx_is_stored_and_a_5xx_lets_the_retry_run_again() {
    let server = serve(layer()).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let refused = keyed(&client, &server.url("/refused"), "r", "").send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.text().await.unwrap(), "insufficient funds");
    }
    assert_eq!(server.effects.payments(), 1, "the 400 was replayed");

    let down = keyed(&client, &server.url("/flaky"), "f", "").send().await.unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry = keyed(&client, &server.url("/flaky"), "f", "").send().await.unwrap();
    assert_eq!((retry.status(), retry.text().await.unwrap()), (StatusCode::CREATED, "attempt 2".into()));
    let again = keyed(&client, &server.url("/flaky"), "f", "").send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(server.effects.flaky.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stored_server_errors_are_replayed_when_asked() {
    let server = serve(layer().store_server_errors(true)).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let down = keyed(&client, &server.url("/flaky"), "f", "").send().await.unwrap();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(server.effects.flaky.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panic_releases_the_key() {
    let server = serve(layer()).await;
    let client = reqwest::Client::new();
    let broken = keyed(&client, &server.url("/panics"), "p", "").send().await;
    assert!(broken.is_err(), "the connection of a panicking handler closes: {broken:?}");
    let retry = keyed(&client, &server.url("/panics"), "p", "").send().await.unwrap();
    assert_eq!((retry.status(), retry.text().await.unwrap()), (StatusCode::OK, "recovered".into()));
    assert_eq!(server.effects.panics.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn one_client_never_gets_another_clients_response() {
    let principal = |req: &http::request::Parts| req.headers.get("x-api-key")?.to_str().ok().map(str::to_owned);
    let store: Arc<dyn exactly_core::DedupStore> = Arc::new(MemoryStore::new());
    let server = serve(IdempotencyLayer::shared(store.clone()).principal(principal)).await;
    let client = reqwest::Client::new();
    let send = |api_key: &'static str, body: &'static str| {
        keyed(&client, &server.url("/payments"), "shared-key", body).header("x-api-key", api_key).send()
    };
    let alice = send("alice-secret", "alice pays").await.unwrap();
    assert_eq!(alice.text().await.unwrap(), "payment 1: alice pays");
    // Bob uses the same key, even with the same body: his request is his own.
    let bob = send("bob-secret", "alice pays").await.unwrap();
    assert!(bob.headers().get("idempotent-replayed").is_none());
    assert_eq!(bob.text().await.unwrap(), "payment 2: alice pays");
    let alice_again = send("alice-secret", "alice pays").await.unwrap();
    assert_eq!(alice_again.text().await.unwrap(), "payment 1: alice pays");
    let bob_again = send("bob-secret", "alice pays").await.unwrap();
    assert_eq!(bob_again.text().await.unwrap(), "payment 2: alice pays");

    let anonymous = keyed(&client, &server.url("/payments"), "shared-key", "x").send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.effects.payments(), 2);

    // The principals are credentials: the store (which operators list) has their hashes only.
    let keys: Vec<String> = store.list(None, None, 10).await.unwrap().iter().map(|r| r.key.key().to_owned()).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.ends_with("/shared-key") && !k.contains("secret")), "{keys:?}");
}

#[tokio::test]
async fn an_oversized_body_is_413_and_runs_nothing() {
    let server = serve(layer().max_request_body(1024)).await;
    let client = reqwest::Client::new();
    let big = keyed(&client, &server.url("/payments"), "big", &"x".repeat(4096)).send().await.unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.effects.payments(), 0);
}

#[tokio::test]
async fn a_response_outlives_the_server_on_the_disk_store() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let open = || exactly_core::SledStore::open(dir.path().join("http")).unwrap();
    let store: Arc<dyn exactly_core::DedupStore> = Arc::new(open());
    let server = serve(IdempotencyLayer::shared(store.clone())).await;
    let first = keyed(&client, &server.url("/payments"), "durable", "5 EUR").send().await.unwrap();
    assert_eq!(first.text().await.unwrap(), "payment 1: 5 EUR");
    server.stop().await;
    // The store closes when its last holder (the layer's sweeper task among them) is gone.
    let closed = Arc::downgrade(&store);
    drop(store);
    until("the store closed", || closed.strong_count() == 0).await;
    // A new server (its handler's count starts again) answers from the reopened store.
    let server = serve(IdempotencyLayer::new(open())).await;
    let again = keyed(&client, &server.url("/payments"), "durable", "5 EUR").send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), "payment 1: 5 EUR");
    assert_eq!(server.effects.payments(), 0);
}

/// A first request still running when its lease runs out (as after a crash or a pause):
/// the repeat after the lease gets what the orphan policy says; the first, fenced, still
/// answers its own client but stores nothing.
async fn cut_off(orphans: Orphans) -> (common::Server, reqwest::Response, reqwest::Response) {
    let clock = ManualClock::new(1_000_000);
    let server = serve(layer().clock(Arc::new(clock.clone())).on_orphan(orphans)).await;
    let client = reqwest::Client::new();
    let first = tokio::spawn(keyed(&client, &server.url("/slow"), "k", "").send());
    entered(&server, 1).await;
    clock.advance(exactly_http::DEFAULT_LEASE + Duration::from_secs(1));
    let repeat = keyed(&client, &server.url("/slow"), "k", "");
    let repeat = if orphans == Orphans::Rerun {
        let repeat = tokio::spawn(repeat.send());
        entered(&server, 2).await;
        server.effects.gate.add_permits(100);
        repeat.await.unwrap().unwrap()
    } else {
        let repeat = repeat.send().await.unwrap();
        server.effects.gate.add_permits(100);
        repeat
    };
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED, "the first client gets its own response");
    (server, first, repeat)
}

#[tokio::test]
async fn a_request_cut_off_runs_again_by_default() {
    let (server, first, repeat) = cut_off(Orphans::Rerun).await;
    assert_eq!(repeat.status(), StatusCode::CREATED);
    let (first, repeat) = (first.text().await.unwrap(), repeat.text().await.unwrap());
    assert_ne!(first, repeat, "both ran");
    assert_eq!(server.effects.payments(), 2);
    // The run that held the key when it finished is the one stored.
    let client = reqwest::Client::new();
    let again = keyed(&client, &server.url("/slow"), "k", "").send().await.unwrap();
    assert_eq!(again.text().await.unwrap(), repeat);
}

#[tokio::test]
async fn a_request_cut_off_is_not_run_again_when_refused() {
    let (server, _first, repeat) = cut_off(Orphans::Refuse).await;
    assert_eq!(repeat.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(problem(repeat).await["type"].as_str().unwrap().ends_with("#unknown-outcome"));
    let client = reqwest::Client::new();
    let again = keyed(&client, &server.url("/slow"), "k", "").send().await.unwrap();
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR, "until an operator resolves it");
    assert_eq!(server.effects.slow_entered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_the_header_a_request_passes_through_when_the_key_is_optional() {
    let server = serve(layer().required(false)).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let plain = client.post(server.url("/payments")).body("x").send().await.unwrap();
        assert_eq!(plain.status(), StatusCode::CREATED);
    }
    assert_eq!(server.effects.payments(), 2, "no key, no deduplication");
}

#[tokio::test]
async fn unquoted_keys_are_taken_when_the_layer_accepts_them() {
    let server = serve(layer().unquoted_keys(true)).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let request = client.post(server.url("/payments")).header("idempotency-key", "8e03978e-40d5-43e8").body("x");
        assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED);
    }
    assert_eq!(server.effects.payments(), 1, "the Stripe-style key deduplicates as the quoted one would");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_releases_its_key() {
    let server = serve(layer()).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let gave_up = keyed(&impatient, &server.url("/slow"), "k", "").send().await;
    assert!(gave_up.is_err(), "the client timed out");
    // hyper drops the request's future once it sees the connection closed, and the layer
    // releases the key: the retry runs the request (until then it gets 409).
    let client = reqwest::Client::new();
    // Well before the key's 30 s lease would have freed it.
    let released_by = tokio::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let retry = tokio::spawn(keyed(&client, &server.url("/slow"), "k", "").send());
        until("the retry ran or was refused", || {
            retry.is_finished() || server.effects.slow_entered.load(Ordering::SeqCst) == 2
        })
        .await;
        if server.effects.slow_entered.load(Ordering::SeqCst) == 2 {
            break retry;
        }
        assert_eq!(retry.await.unwrap().unwrap().status(), StatusCode::CONFLICT);
        assert!(tokio::time::Instant::now() < released_by, "the key was not released: it waits out its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.effects.gate.add_permits(100);
    assert_eq!(retry.await.unwrap().unwrap().status(), StatusCode::CREATED);
    assert_eq!(server.effects.payments(), 1, "the abandoned run was dropped where it waited; the retry's ran");
    assert_eq!(server.effects.slow_entered.load(Ordering::SeqCst), 2);
}

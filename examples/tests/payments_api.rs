//! The payments API example as real server processes, SIGKILLed in the middle of a payment:
//! after a restart (the embedded store) or on another server sharing the PostgreSQL store,
//! the client's retry runs the payment again or is refused, as the orphan policy says, and
//! repeats after that are answered from the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::example;
use reqwest::StatusCode;

/// A `payments_api serve` process, SIGKILLed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut command = example("payments_api");
        // The embedded store unless the test names the shared one.
        command.arg("serve").env("LISTEN", "127.0.0.1:0").env_remove("EXACTLY_POSTGRES_URL").stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("the server said {line:?}"));
        Self { child, url: format!("http://{addr}/payments") }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pay(client: &reqwest::Client, server: &Server) -> reqwest::RequestBuilder {
    client
        .post(&server.url)
        .header("idempotency-key", "\"pay-1\"")
        .header("x-api-key", "shop-1")
        .json(&serde_json::json!({"account": "acct-1", "cents": 500}))
}

fn charges(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.starts_with("pay-1 ")).count()
}

/// Sends the payment to `server`, frozen after its charge, and SIGKILLs the server once
/// the bank has charged it: the client's request fails.
async fn killed_mid_payment(client: &reqwest::Client, server: Server, bank: &Path) {
    let request = tokio::spawn(pay(client, &server).send());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while charges(bank) == 0 {
        if request.is_finished() {
            let answer = request.await.unwrap().unwrap();
            panic!("the server answered before the kill: {} {}", answer.status(), answer.text().await.unwrap());
        }
        assert!(tokio::time::Instant::now() < deadline, "the server never charged the payment");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    assert!(request.await.unwrap().is_err(), "the killed server answered");
}

fn local(dir: &Path, settle_ms: &str, orphans: &str) -> Server {
    let data = dir.to_str().unwrap();
    Server::start(&[("DATA_DIR", data), ("SETTLE_MS", settle_ms), ("ORPHANS", orphans)])
}

#[tokio::test]
async fn a_payment_cut_off_by_a_kill_runs_again_after_the_restart_then_replays() {
    let dir = tempfile::tempdir().unwrap();
    let bank: PathBuf = dir.path().join("charges.log");
    let client = reqwest::Client::new();
    killed_mid_payment(&client, local(dir.path(), "600000", "rerun"), &bank).await;
    assert_eq!(charges(&bank), 1);

    let server = local(dir.path(), "0", "rerun");
    let retry = pay(&client, &server).send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED, "the default policy runs it again");
    assert_eq!(charges(&bank), 2, "the cut-off payment was charged again: the at-least-once window of a crash");
    let again = pay(&client, &server).send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(charges(&bank), 2);
}

#[tokio::test]
async fn a_payment_cut_off_by_a_kill_is_refused_after_the_restart_when_orphans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bank: PathBuf = dir.path().join("charges.log");
    let client = reqwest::Client::new();
    killed_mid_payment(&client, local(dir.path(), "600000", "refuse"), &bank).await;

    let server = local(dir.path(), "0", "refuse");
    for _ in 0..2 {
        let retry = pay(&client, &server).send().await.unwrap();
        assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let problem: serde_json::Value = retry.json().await.unwrap();
        assert!(problem["type"].as_str().unwrap().ends_with("#unknown-outcome"), "{problem}");
    }
    assert_eq!(charges(&bank), 1, "never charged again");
}

#[tokio::test]
async fn a_server_killed_mid_payment_hands_its_key_to_another_sharing_the_store() {
    let url = std::env::var("EXACTLY_POSTGRES_URL").expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh");
    let schema = format!("t_payments_api_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("charges.log");
    let server = |settle_ms: &str| {
        let env = [
            ("EXACTLY_POSTGRES_URL", url.as_str()),
            ("SCHEMA", schema.as_str()),
            ("CHARGES", bank.to_str().unwrap()),
            ("DATA_DIR", dir.path().to_str().unwrap()),
            ("LEASE_MS", "2000"),
            ("SETTLE_MS", settle_ms),
        ];
        Server::start(&env)
    };
    let client = reqwest::Client::new();
    let (a, b) = (server("600000"), server("0"));
    killed_mid_payment(&client, a, &bank).await;

    // B takes the key over once it sees A's session gone (the store's liveness check), at
    // the latest when A's lease ends; until then it answers 409.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ran = loop {
        let retry = pay(&client, &b).send().await.unwrap();
        if retry.status() != StatusCode::CONFLICT {
            break retry;
        }
        assert!(tokio::time::Instant::now() < deadline, "the key was never taken over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ran.status(), StatusCode::CREATED);
    assert!(ran.headers().get("idempotent-replayed").is_none());
    assert_eq!(charges(&bank), 2, "the default policy ran the cut-off payment again");
    let again = pay(&client, &b).send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
}

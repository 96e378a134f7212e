//! Two consumer processes (`app_child`, the ledger handler) on one RabbitMQ queue, sharing
//! one PostgreSQL store: the file `exactly produce` sends (with duplicates) credits every
//! key once between them, sending it again runs nothing on either, and `exactly store
//! --url` reads the shared store. Against the real RabbitMQ and PostgreSQL
//! (scripts/services.sh); the faults (kills, server restarts) are in tests/tests/chaos.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AMQP_URL, App, cli, free_port, outcomes, ready, until};
use exactly::amqp::lapin::{Connection, ConnectionProperties};
use exactly_tests::{ACCOUNTS, Credit, count_lines, state_of};

const KEYS: u64 = 300;

fn database() -> String {
    std::env::var("EXACTLY_POSTGRES_URL")
        .expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh (it starts PostgreSQL and names the database)")
}

/// Handled and duplicate outcomes summed over the instances' `/metrics`.
async fn settled(ports: &[u16]) -> (u64, u64) {
    let mut sum = (0, 0);
    for p in ports {
        let seen = outcomes(*p).await;
        sum.0 += seen.get("handled").copied().unwrap_or(0);
        sum.1 += seen.get("duplicate").copied().unwrap_or(0);
    }
    sum
}

fn effects(dir: &Path) -> u64 {
    (0..2).map(|i| count_lines(&dir.join(format!("effects-{i}.log"))).values().sum::<u64>()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_queue_credit_each_key_once_through_the_shared_store() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = format!("exactly-pg-e2e-{}", std::process::id());
    let schema = format!("e2e_{}", std::process::id());
    let url = database();
    let mut apps = Vec::new();
    let mut ports = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let config = tmp.path().join(format!("app-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "shutdown_timeout = \"10s\"\n[store]\nengine = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n[amqp.ledger]\nurl = \"{AMQP_URL}\"\nqueue = \"{queue}\"\n"
            ),
        )
        .unwrap();
        apps.push(App::spawn(&config, &tmp.path().join(format!("effects-{i}.log"))));
        ports.push(port);
    }
    for p in &ports {
        ready(*p, Duration::from_secs(60)).await;
    }

    let file = tmp.path().join("credits.jsonl");
    let text: String = (0..KEYS)
        .map(|k| {
            let credit = Credit { id: format!("k{k}"), account: k % ACCOUNTS, cents: 1 };
            format!("{}\n", serde_json::json!({"payload": credit, "idempotency_key": format!("k{k}")}))
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let produce = |seed: &str| {
        let out = cli(&[
            "produce",
            "--file",
            file.to_str().unwrap(),
            "--duplicates",
            "0.2",
            "--seed",
            seed,
            "amqp",
            "--url",
            AMQP_URL,
            "--routing-key",
            &queue,
        ]);
        out.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("{out}"))
    };

    let first = produce("7");
    until("the first round settled", Duration::from_secs(120), async || {
        let (h, d) = settled(&ports).await;
        h + d >= first
    })
    .await;
    let (handled, duplicates) = settled(&ports).await;
    assert_eq!((handled, duplicates), (KEYS, first - KEYS), "each key handled once between the two instances");
    let ran = effects(tmp.path());
    assert!(ran >= KEYS, "every key's effect happened: {ran}");
    let (a, b) = (count_lines(&tmp.path().join("effects-0.log")), count_lines(&tmp.path().join("effects-1.log")));
    assert!(!a.is_empty() && !b.is_empty(), "both instances took messages: {} and {}", a.len(), b.len());

    // The same file again, with another draw of duplicates: nothing runs anywhere.
    let second = produce("8");
    until("the second round settled", Duration::from_secs(120), async || {
        let (h, d) = settled(&ports).await;
        h + d >= first + second
    })
    .await;
    assert_eq!(settled(&ports).await, (KEYS, first - KEYS + second), "the second round is all duplicates");
    assert_eq!(effects(tmp.path()), ran, "no handler ran in the second round");
    for app in apps {
        app.stop(Duration::from_secs(20));
    }

    // The shared store, as the CLI and the store itself read it.
    let stats = cli(&["store", "--url", &url, "--schema", &schema, "stats"]);
    let row: Vec<u64> = stats
        .lines()
        .find(|l| l.starts_with("ledger "))
        .unwrap_or_else(|| panic!("no ledger row: {stats}"))
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(row, [KEYS, 0, 0], "every key done once: {stats}");
    let get = cli(&["store", "--url", &url, "--schema", &schema, "get", "ledger", "k42"]);
    assert!(get.contains("done"), "{get}");
    // A mistyped schema is an error, not a new empty store.
    let typo = std::process::Command::new(common::cli_path())
        .args(["store", "--url", &url, "--schema", &format!("{schema}_typo"), "stats"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(!typo.status.success() && said.contains("no store in schema"), "{said}");
    let store = exactly::postgres::PgStore::builder(url.clone()).schema(&schema).pool_size(1).open().await.unwrap();
    for k in 0..KEYS {
        assert_eq!(state_of(&store, &format!("applied/k{k}")).await, 1, "k{k} credited once");
    }
    let mut balance = 0;
    for a in 0..ACCOUNTS {
        balance += state_of(&store, &format!("account/{a}")).await;
    }
    assert_eq!(balance, KEYS as i64, "the balances add up to one credit per key");
    drop(store);

    let client = {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    exactly::amqp::Topology::declare().delete(&channel, &queue).await.unwrap();
}

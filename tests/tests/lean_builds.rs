//! A consumer binary pays only for the adapters it names: the `app` feature with `amqp`
//! builds no librdkafka (C compiled from source), with `kafka` no lapin.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The crates `exactly` depends on, built with `features` and nothing else.
fn dependencies(features: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["tree", "--locked", "--offline", "-p", "exactly", "--no-default-features", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}", "--features", features])
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn has(tree: &str, name: &str) -> bool {
    tree.lines().any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn the_app_with_one_adapter_builds_without_the_other() {
    let amqp = dependencies("sled,app,amqp");
    assert!(has(&amqp, "lapin") && has(&amqp, "exactly-app"), "{amqp}");
    assert!(!has(&amqp, "rdkafka") && !has(&amqp, "rdkafka-sys"), "librdkafka in an app+amqp build");
    let kafka = dependencies("sled,app,kafka");
    assert!(has(&kafka, "rdkafka") && has(&kafka, "exactly-app"), "{kafka}");
    assert!(!has(&kafka, "lapin"), "lapin in an app+kafka build");
    let neither = dependencies("sled,app");
    assert!(!has(&neither, "lapin") && !has(&neither, "rdkafka") && !has(&neither, "tokio-postgres"), "{neither}");
}

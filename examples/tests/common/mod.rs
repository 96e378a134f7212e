//! What the example tests share: the example binaries cargo built beside them.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

/// The example `name`, run from the examples' directory with quiet logs.
pub(crate) fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin: PathBuf = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} is missing: cargo test builds the examples beside the tests", bin.display());
    let mut c = Command::new(bin);
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .env_remove("KAFKA_BROKERS")
        .env_remove("KAFKA_TOPIC")
        .env_remove("KAFKA_GROUP");
    c
}

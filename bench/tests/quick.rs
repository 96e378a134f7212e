//! The bench binary's quick modes still run and print their tables (the figures
//! themselves are only meaningful in release builds on a quiet machine; see
//! docs/PERFORMANCE.md).
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bench")).args(args).arg("--dir").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bench {args:?}: {}\n{text}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    text
}

/// One row's records/s cell (the first after the name), parsed.
fn rate_of(table: &str, row: &str) -> f64 {
    rate_in(table, row, 2)
}

/// The rate in column `col` (1 is the row's name) of the row starting with `row`.
fn rate_in(table: &str, row: &str, col: usize) -> f64 {
    let line =
        table.lines().find(|l| l.starts_with(&format!("| {row}"))).unwrap_or_else(|| panic!("no row {row}:\n{table}"));
    let cell = line.split('|').nth(col).unwrap().trim();
    let number = cell.split_whitespace().next().unwrap();
    let (value, unit) = number.trim_end_matches("/s").split_at(number.trim_end_matches("/s").len() - 1);
    let scale = match unit {
        "k" => 1e3,
        "M" => 1e6,
        _ => return number.trim_end_matches("/s").parse().unwrap(),
    };
    value.parse::<f64>().unwrap() * scale
}

/// The p50 (µs) in the latency column (the last) of the row starting with `row`.
fn latency_p50(table: &str, row: &str) -> f64 {
    let line =
        table.lines().find(|l| l.starts_with(&format!("| {row}"))).unwrap_or_else(|| panic!("no row {row}:\n{table}"));
    let cell = line.trim_end_matches('|').rsplit('|').next().unwrap().trim();
    cell.split(" / ").next().unwrap().parse().unwrap_or_else(|_| panic!("no latency in {line}"))
}

/// The PostgreSQL variants (with EXACTLY_POSTGRES_URL, as scripts/test.sh sets it); they
/// take turns with the server restarts of the chaos runs (.config/nextest.toml).
#[test]
fn kafka_on_postgres_against_the_per_record_insert() {
    if std::env::var_os("EXACTLY_POSTGRES_URL").is_none() {
        eprintln!("EXACTLY_POSTGRES_URL is not set: skipped (scripts/test.sh sets it)");
        return;
    }
    let args = ["kafka", "--quick", "--brokers", "mock", "--headers", "--records", "2000", "--ordering", "key"];
    let out = bench(&[&args[..], &["--only", "bare,postgres,naive-postgres"]].concat());
    assert!(out.contains("ordering: key"), "{out}");
    assert!(rate_of(&out, "exactly-kafka, PostgreSQL store") > 0.0, "{out}");
    assert!(rate_of(&out, "hand-rolled: bare loop + PostgreSQL") > 0.0, "{out}");
}

#[test]
fn kafka_on_the_mock_cluster_against_the_bare_client() {
    let only = if cfg!(feature = "mq-bridge") { "bare,sled,mq-bridge" } else { "bare,sled" };
    let args = ["kafka", "--quick", "--brokers", "mock", "--headers", "--records", "3000", "--only", only];
    let out = bench(&args);
    assert!(rate_of(&out, "bare rdkafka") > 0.0);
    assert!(rate_of(&out, "exactly-kafka, sled store") > 0.0);
    // Latency percentiles, from exactly's processing histogram for its consumers.
    for row in ["bare rdkafka", "exactly-kafka, sled store"] {
        let p50 = latency_p50(&out, row);
        assert!(p50 > 0.0, "{row}: {out}");
    }
    if cfg!(feature = "mq-bridge") {
        assert!(rate_of(&out, "mq-bridge") > 0.0, "{out}");
    }
}

#[test]
fn store_overhead_and_load_quick() {
    let out = bench(&["store", "--quick", "--only", "overhead", "--only", "load"]);
    assert!(out.contains("| `Processor::process`, memory store |"), "{out}");
    for store in ["memory", "sled (durable)", "redb (durable)", "fjall (durable)"] {
        assert!(rate_in(&out, store, 3) > 0.0, "achieved: {out}");
    }
}

#[test]
fn store_lookups_quick_on_fjall() {
    let out = bench(&["store", "--quick", "--only", "lookup", "--lookup-engine", "fjall"]);
    assert!(out.contains("fjall cache"), "{out}");
    for keys in ["10000", "50000"] {
        // Filled at, an insert's p50, duplicates answered by eight tasks, resident memory.
        assert!(rate_in(&out, keys, 2) > 0.0, "filled at: {out}");
        assert!(rate_in(&out, keys, 3) > 0.0, "insert p50: {out}");
        assert!(rate_in(&out, keys, 8) > 0.0, "8 tasks: {out}");
        assert!(rate_in(&out, keys, 10) > 0.0, "resident: {out}");
    }
}

#[test]
fn store_sweeper_quick_purges_every_expired_key() {
    // The bench itself fails unless every expired key is purged.
    let out = bench(&["store", "--quick", "--only", "sweeper"]);
    for keys in ["10000", "50000"] {
        assert!(rate_in(&out, keys, 3) > 0.0, "keys/s: {out}");
        // Messages offered at the default 5k/s before and during the purge: their p50.
        assert!(rate_in(&out, keys, 5) > 0.0, "before the purge: {out}");
        assert!(rate_in(&out, keys, 6) > 0.0, "during the purge: {out}");
    }
}

#[test]
fn amqp_prefetch_sweep_with_the_hand_rolled_dedup() {
    let args = ["amqp", "--quick", "--messages", "1000", "--reps", "1", "--sweep-prefetch", "1,16"];
    let out = bench(&[&args[..], &["--variants", "sled,naive-sled"]].concat());
    for prefetch in ["1 |", "16 |"] {
        for col in 2..=4 {
            assert!(rate_in(&out, prefetch, col) > 0.0, "column {col} at prefetch {prefetch}: {out}");
        }
    }
}

#[test]
fn http_with_and_without_the_idempotency_layer() {
    let out = bench(&["http", "--quick", "--connections", "1,16"]);
    for row in ["bare axum", "layer, fresh keys", "layer, replayed keys"] {
        assert!(rate_of(&out, row) > 0.0, "{row}: {out}");
        assert!(latency_p50(&out, row) > 0.0, "{row}: {out}");
    }
    assert!(out.contains("p99 added by the layer at half load:"), "{out}");
}

//! The end-to-end promise under real crashes: a consumer process on an on-disk store
//! (sled, redb, fjall) is killed with SIGKILL at random moments, mid-batch, and restarted;
//! afterwards every key is credited exactly once, every poison message is dead-lettered,
//! nothing is lost.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use exactly_tests::{ACCOUNTS, count_lines, state_i64};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};

// Long enough (about 1.4 s uninterrupted in a debug build) that the kills, 30-300 ms
// after each start, land mid-run: with 6,000 messages a run sometimes finished after
// two kills once the consumer got faster.
const MESSAGES: u64 = 12_000;
const UNIQUE: u64 = 8_000;
const POISON_EVERY: u64 = 7;
const CONCURRENCY: u64 = 16;

#[test]
fn sled_sigkill_mid_batch_loses_and_doubles_nothing() {
    sigkill_mid_batch("sled");
}

#[test]
fn redb_sigkill_mid_batch_loses_and_doubles_nothing() {
    sigkill_mid_batch("redb");
}

#[test]
fn fjall_sigkill_mid_batch_loses_and_doubles_nothing() {
    sigkill_mid_batch("fjall");
}

fn sigkill_mid_batch(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("EXACTLY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set EXACTLY_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let child = || {
        Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(["--messages", &MESSAGES.to_string(), "--unique", &UNIQUE.to_string()])
            .args(["--poison-every", &POISON_EVERY.to_string(), "--concurrency", &CONCURRENCY.to_string()])
            .args(["--engine", engine])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut kills = 0;
    let mut offsets = Vec::new();
    for _ in 0..12 {
        let mut c = child();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..300)));
        if c.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        kill(Pid::from_raw(i32::try_from(c.id()).unwrap()), Signal::SIGKILL).unwrap();
        c.wait().unwrap();
        kills += 1;
        offsets.push(std::fs::read_to_string(dir.path().join("offset")).unwrap_or_default());
    }
    let status = child().wait().unwrap();
    assert!(status.success(), "the last run must finish: {status}");
    eprintln!("{engine}: {kills} kills; committed offsets seen after them: {offsets:?}");
    assert!(kills >= 3, "too few kills landed mid-run to test anything");

    let store = exactly_tests::open_store(engine, &dir.path().join("store")).unwrap();
    let store = &*store;
    let poison = |k: u64| k % POISON_EVERY == 3;
    let good: Vec<u64> = (0..UNIQUE).filter(|&k| !poison(k)).collect();

    // Transactional effects: exactly once.
    for &k in &good {
        assert_eq!(state_i64(store, &format!("applied/k{k}")), 1, "key k{k} applied wrong number of times");
    }
    let total: i64 = (0..ACCOUNTS).map(|a| state_i64(store, &format!("account/{a}"))).sum();
    assert_eq!(total, i64::try_from(good.len()).unwrap(), "account balances do not add up");

    // Poison messages: each in the dead-letter file with its reason, never credited.
    let dlq = count_lines(&dir.path().join("dlq.log"));
    for k in (0..UNIQUE).filter(|&k| poison(k)) {
        assert!(dlq.contains_key(&format!("k{k}\tdecode")), "poison key k{k} not dead-lettered");
        assert_eq!(state_i64(store, &format!("applied/k{k}")), 0);
    }

    // External effects: at least once; repeats only where a kill fell between the effect
    // and the done-record, at most the in-flight messages per kill.
    let effects = count_lines(&dir.path().join("effects.log"));
    for &k in &good {
        assert!(effects.contains_key(&format!("k{k}")), "effect of k{k} missing");
    }
    let doubled = effects.values().filter(|&&n| n > 1).count() as u64;
    eprintln!("external effects repeated for {doubled} keys after {kills} kills");
    assert!(doubled <= kills * CONCURRENCY, "{doubled} repeated effects for {kills} kills");
}

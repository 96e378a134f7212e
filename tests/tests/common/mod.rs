//! Running the app binary (`app_child`) and the `exactly` CLI from the end-to-end tests,
//! and reading its HTTP endpoint.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// RabbitMQ as scripts/services.sh starts it.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub use exactly_tests::http_get as get;

/// `exactly_messages_total{consumer="ledger", outcome=...}` by outcome, from `/metrics`.
pub async fn outcomes(port: u16) -> HashMap<String, u64> {
    let Some((200, body)) = get(port, "/metrics").await else { return HashMap::new() };
    body.lines()
        .filter(|l| l.starts_with("exactly_messages_total{") && l.contains("consumer=\"ledger\""))
        .filter_map(|l| {
            let outcome = l.split("outcome=\"").nth(1)?.split('"').next()?.to_owned();
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some((outcome, value))
        })
        .collect()
}

/// Waits until `done`, failing the test after `limit`.
pub async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` answers 200, failing the test after `limit`.
pub async fn ready(port: u16, limit: Duration) {
    until("/readyz", limit, async || matches!(get(port, "/readyz").await, Some((200, _)))).await;
}

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The app process; killed if the test fails before it exits.
pub struct App(pub Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl App {
    /// `app_child` (the ledger handler under the name `ledger`) with this configuration,
    /// appending each key it handles to `effects`.
    pub fn spawn(config: &Path, effects: &Path) -> App {
        App(Command::new(env!("CARGO_BIN_EXE_app_child"))
            .env("EXACTLY_CONFIG", config)
            .env("EFFECTS", effects)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        kill(Pid::from_raw(i32::try_from(self.0.id()).unwrap()), Signal::SIGTERM).unwrap();
    }

    /// Waits for the exit, failing the test after `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.0.kill();
                panic!("the app did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then an exit 0 within `limit`.
    pub fn stop(mut self, limit: Duration) {
        self.terminate();
        let status = self.exit_within(limit);
        assert!(status.success(), "the app exits 0 after SIGTERM: {status}");
    }
}

/// The `exactly` CLI binary. It is a binary of another package (exactly-cli), which
/// `cargo nextest run --workspace` (scripts/test.sh) builds into the same directory.
pub fn cli_path() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_app_child")).with_file_name("exactly");
    assert!(bin.exists(), "{} is missing: build it first (cargo build -p exactly-cli)", bin.display());
    bin
}

/// Runs `exactly args...`, failing the test on a non-zero exit; returns stdout.
pub fn cli(args: &[&str]) -> String {
    let out: Output = Command::new(cli_path())
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("AMQP_URL")
        .env_remove("EXACTLY_STORE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "exactly {args:?}: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

//! The app runner as a consumer binary, for tests/tests/app.rs: the ledger handler under
//! the name `ledger`, configured by `$EXACTLY_CONFIG`, appending each key it handles to
//! the effects log `$EFFECTS`. With `$OUTAGE` set, its dependency is down while that file
//! exists (see [`exactly_tests::ledger_with_dependency`]). With `$LEDGER_SQL` set (a schema
//! holding [`exactly_tests::ledger_tables`]), it credits those tables too, through
//! `ctx.postgres()`.

use std::sync::{Arc, Mutex};

use exactly::app::App;
use exactly_tests::{LEDGER, ledger_in};

/// The README's form: `Result<(), exactly::app::Error>`, whose `Debug` is what a failed
/// start prints (tests/tests/app_start.rs checks that text).
#[tokio::main]
async fn main() -> Result<(), exactly::app::Error> {
    let path = std::env::var("EFFECTS").map_err(|_| exactly::app::Error::Config("EFFECTS is not set".into()))?;
    let effects = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| exactly::app::Error::Config(format!("cannot open {path}: {e}")))?;
    let outage = std::env::var_os("OUTAGE").map(std::path::PathBuf::from);
    let sql = std::env::var("LEDGER_SQL").ok();
    App::from_env()?.handler(LEDGER, ledger_in(Arc::new(Mutex::new(effects)), outage, sql)).run().await
}

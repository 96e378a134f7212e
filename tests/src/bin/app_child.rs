//! The app runner as a consumer binary, for tests/tests/app.rs: the ledger handler under
//! the name `ledger`, configured by `$EXACTLY_CONFIG`, appending each key it handles to
//! the effects log `$EFFECTS`. With `$OUTAGE` set, its dependency is down while that file
//! exists (see [`exactly_tests::ledger_with_dependency`]).

use std::sync::{Arc, Mutex};

use exactly::app::App;
use exactly_tests::{LEDGER, ledger_with_dependency};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::var("EFFECTS").map_err(|_| anyhow::anyhow!("EFFECTS is not set"))?;
    let effects = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let outage = std::env::var_os("OUTAGE").map(std::path::PathBuf::from);
    App::from_env()?.handler(LEDGER, ledger_with_dependency(Arc::new(Mutex::new(effects)), outage)).run().await?;
    Ok(())
}

//! The app runner as a consumer binary, for tests/tests/app.rs: the ledger handler under
//! the name `ledger`, configured by `$EXACTLY_CONFIG`, appending each key it handles to
//! the effects log `$EFFECTS`.

use std::sync::{Arc, Mutex};

use exactly::app::App;
use exactly_tests::{LEDGER, ledger};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::var("EFFECTS").map_err(|_| anyhow::anyhow!("EFFECTS is not set"))?;
    let effects = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    App::from_env()?.handler(LEDGER, ledger(Arc::new(Mutex::new(effects)))).run().await?;
    Ok(())
}

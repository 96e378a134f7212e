//! One consumer process of the harness: start, signal, watch, stop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::disk;

/// One consumer process and its directory.
pub(crate) struct Consumer {
    pub(crate) dir: PathBuf,
    /// While this file exists the handler's dependency is down.
    pub(crate) outage: PathBuf,
    /// The store's filesystem, with --disk-faults.
    pub(crate) disk: Option<disk::Tmpfs>,
    pub(crate) port: u16,
    pub(crate) child: Option<Child>,
    pub(crate) config: PathBuf,
    /// Size of the effects log when the process was last started.
    pub(crate) progress_at_start: u64,
    /// The schema of the ledger's own tables, written through `ctx.postgres()` (with
    /// `--engine postgres`).
    pub(crate) ledger_sql: Option<String>,
}

impl Consumer {
    pub(crate) fn start(&mut self, app: &Path) -> anyhow::Result<()> {
        let mut command = Command::new(app);
        if let Some(schema) = &self.ledger_sql {
            command.env("LEDGER_SQL", schema);
        }
        let child = command
            .env("EXACTLY_CONFIG", &self.config)
            .env("EFFECTS", self.dir.join("effects.log"))
            .env("OUTAGE", &self.outage)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("starting app_child")?;
        self.child = Some(child);
        self.progress_at_start = self.progress();
        Ok(())
    }

    /// Size of its effects log: it grows while the consumer handles messages.
    pub(crate) fn progress(&self) -> u64 {
        std::fs::metadata(self.dir.join("effects.log")).map_or(0, |m| m.len())
    }

    /// Waits (up to `limit`) until it has handled a message since it was last started:
    /// a kill then lands while it is working, not while it is still joining the group
    /// or connecting. Whether it did.
    pub(crate) async fn working(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.progress() <= self.progress_at_start {
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub(crate) fn pid(&self) -> Option<Pid> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()).map(Pid::from_raw)
    }

    pub(crate) fn signal(&self, s: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, s);
        }
    }

    /// The store directory.
    pub(crate) fn store(&self) -> PathBuf {
        self.disk.as_ref().map_or_else(|| self.dir.join("store"), |d| d.path().join("store"))
    }

    /// Whether the process has exited (it stays reaped; see [`Consumer::revive`]).
    pub(crate) fn exited(&mut self) -> anyhow::Result<bool> {
        Ok(match &mut self.child {
            Some(c) => c.try_wait()?.is_some(),
            None => true,
        })
    }

    /// Restarts it if it exited on its own (a store or broker error it gave up on).
    pub(crate) fn revive(&mut self, app: &Path) -> anyhow::Result<bool> {
        if let Some(c) = &mut self.child
            && let Some(status) = c.try_wait()?
        {
            eprintln!("chaos: consumer {} exited on its own ({status}); restarting it", self.port);
            self.start(app)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// SIGTERM and a clean exit within 60 s.
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        self.signal(Signal::SIGCONT);
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    eprintln!("chaos: consumer {} exited with {status} after SIGTERM", self.port);
                }
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                bail!("consumer {} did not stop within 60 s of SIGTERM", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

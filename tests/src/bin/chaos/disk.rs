//! A consumer's store on its own small tmpfs, so the harness can fill it up or make it
//! read-only under the running consumer (Linux, as root: `mount -t tmpfs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// A mounted tmpfs, unmounted on drop.
pub(crate) struct Tmpfs {
    path: PathBuf,
    size_mb: u64,
}

fn mount(args: &[&str], path: &Path) -> anyhow::Result<()> {
    let out = Command::new("mount").args(args).arg(path).output().context("running mount")?;
    if !out.status.success() {
        bail!(
            "mount {args:?} {} failed (the disk faults need root and tmpfs): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size_mb: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        mount(&["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"], path)?;
        Ok(Self { path: path.to_owned(), size_mb })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn used_kb(&self) -> anyhow::Result<u64> {
        let out = Command::new("df").args(["-k", "--output=used"]).arg(&self.path).output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("reading df's output")
    }

    /// Leaves 64 KiB free: the store's next writes fail with ENOSPC. The consumer writes
    /// on between `df` and the remount (a log segment being prepared grows by megabytes),
    /// and tmpfs refuses a size below what is used ("bad option"), so it reads and tries
    /// again a few times.
    pub(crate) fn fill(&self) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            let size = self.used_kb()? + 64;
            match mount(&["-o", &format!("remount,size={size}k")], &self.path) {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 20 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }

    /// Makes it read-only: the store's next writes fail with EROFS.
    pub(crate) fn read_only(&self) -> anyhow::Result<()> {
        mount(&["-o", "remount,ro"], &self.path)
    }

    /// Writable again, at its full size.
    pub(crate) fn restore(&self) -> anyhow::Result<()> {
        mount(&["-o", &format!("remount,rw,size={}m", self.size_mb)], &self.path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

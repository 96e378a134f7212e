//! The store directory: who owns it (a lock), what it is (an identity file), and whether
//! it still holds everything a store it made must hold.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::store::log::wal::sync_dir;
use crate::{Error, Result};

/// The file that says a directory is an `exactly` store, and of which engine.
pub(crate) const IDENTITY: &str = "exactly-store";
/// The file a process holds locked while the store is open.
const LOCK: &str = "LOCK";
/// The log's checkpoint: present in every store once its first open finished.
const CHECKPOINT: &str = "wal/checkpoint";

/// The open error of the store at `path`.
pub(crate) fn open_error(path: &Path, reason: impl Into<String>, source: Option<std::io::Error>) -> Error {
    Error::StoreOpen {
        path: path.to_owned(),
        reason: reason.into(),
        source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    }
}

/// What a directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing of a store: a new one may be made here.
    Nothing,
    /// A store of `engine`, with its identity file (`None`: made before identity files,
    /// recognised by its engine's files).
    Store { engine: String, identified: bool },
}

/// The directory of a store, locked for this process while it lives.
#[derive(Debug)]
pub(crate) struct StoreDir {
    path: PathBuf,
    /// Held locked; unlocked when dropped.
    _lock: File,
}

impl StoreDir {
    /// Locks the directory at `path`, making it if it is missing and `create` allows,
    /// waiting up to `wait` for another process to let it go.
    pub(crate) fn lock(path: &Path, create: bool, wait: Duration) -> Result<Self> {
        if path.is_file() {
            return Err(open_error(path, "it is a file; give a directory (it is created if missing)", None));
        }
        if !path.exists() {
            if !create {
                return Err(open_error(
                    path,
                    "there is no store there, and creating one is turned off (create_if_missing); if the store \
                     was lost, restore it from a backup, or allow creating an empty one (every message within \
                     the retention is then handled again)",
                    None,
                ));
            }
            std::fs::create_dir_all(path).map_err(|e| open_error(path, format!("cannot create it: {e}"), Some(e)))?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| open_error(path, format!("cannot sync its parent: {e}"), Some(e)))?;
            }
        }
        let lock_path = path.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| open_error(path, describe_io("cannot open its lock file", &e), Some(e)))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(open_error(
                        path,
                        format!(
                            "another process has it open (is a consumer running on this store?); waited {} ms",
                            wait.as_millis()
                        ),
                        None,
                    ));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(open_error(path, describe_io("cannot lock it", &e), Some(e)));
                }
            }
        }
        Ok(Self { path: path.to_owned(), _lock: file })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// What the directory holds. `engines` are every engine's name and the files only
    /// it makes, to recognise stores made before identity files.
    pub(crate) fn found(&self, engines: &[(&str, &[&str])]) -> Result<Found> {
        let identity = self.path.join(IDENTITY);
        match std::fs::read_to_string(&identity) {
            Ok(text) => {
                let engine = parse_identity(&text).ok_or_else(|| {
                    open_error(&self.path, format!("its identity file {} is damaged", identity.display()), None)
                })?;
                return Ok(Found::Store { engine, identified: true });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_error(&self.path, describe_io("cannot read its identity file", &e), Some(e))),
        }
        // No identity: a store made before them has its log's checkpoint; anything else
        // never finished its first open, so nothing in it was ever acknowledged.
        if !self.path.join(CHECKPOINT).exists() {
            return Ok(Found::Nothing);
        }
        let engine = engines
            .iter()
            .find(|(_, files)| files.iter().all(|f| self.path.join(f).exists()))
            .map(|(name, _)| (*name).to_owned())
            .unwrap_or_default();
        Ok(Found::Store { engine, identified: false })
    }

    /// Refuses a store that lost files it must have: `files` (the engine's) and the log.
    pub(crate) fn check_complete(&self, engine: &str, files: &[&str]) -> Result<()> {
        let missing: Vec<&str> =
            files.iter().copied().chain([CHECKPOINT]).filter(|f| !self.path.join(f).exists()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(open_error(
            &self.path,
            format!(
                "it is a {engine} store that lost files: {} missing (deleted, or restored only in part?); restore \
                 the whole directory from a backup, or move it away to start an empty store (every message \
                 within the retention is then handled again)",
                missing.join(", ")
            ),
            None,
        ))
    }

    /// Writes the identity file (once a new store's first open has finished).
    pub(crate) fn identify(&self, engine: &str) -> Result<()> {
        let fail =
            |e: std::io::Error| open_error(&self.path, describe_io("cannot write its identity file", &e), Some(e));
        let tmp = self.path.join(format!("{IDENTITY}.tmp"));
        let mut f = File::create(&tmp).map_err(fail)?;
        f.write_all(identity_text(engine).as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, self.path.join(IDENTITY)).map_err(fail)?;
        sync_dir(&self.path).map_err(fail)
    }
}

fn identity_text(engine: &str) -> String {
    format!("{{\"store\":\"exactly\",\"engine\":\"{engine}\"}}\n")
}

pub(crate) fn parse_identity(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v.get("store")?.as_str()? == "exactly").then(|| v.get("engine")?.as_str().map(str::to_owned))?
}

/// An I/O error with what it means for an operator where it is not plain.
fn describe_io(what: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            format!("{what}: permission denied; check the directory's owner and mode")
        }
        std::io::ErrorKind::ReadOnlyFilesystem => format!("{what}: the file system is read-only"),
        _ => format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn identity_round_trips() {
        assert_eq!(parse_identity(&identity_text("redb")).as_deref(), Some("redb"));
        assert_eq!(parse_identity("{\"store\":\"other\",\"engine\":\"redb\"}"), None);
        assert_eq!(parse_identity("garbage"), None);
    }

    #[test]
    fn a_second_lock_waits_then_is_refused_and_a_released_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreDir::lock(dir.path(), true, Duration::ZERO).unwrap();
        let started = Instant::now();
        let err = StoreDir::lock(dir.path(), true, Duration::from_millis(200)).unwrap_err().to_string();
        assert!(err.contains("another process has it open"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(first);
        StoreDir::lock(dir.path(), true, Duration::ZERO).unwrap();
    }

    #[test]
    fn a_missing_directory_is_made_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let err = StoreDir::lock(&dir.path().join("s"), false, Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains("no store there"), "{err}");
        assert!(!dir.path().join("s").exists());
        let d = StoreDir::lock(&dir.path().join("s"), true, Duration::ZERO).unwrap();
        assert_eq!(d.found(&[]).unwrap(), Found::Nothing);
    }
}

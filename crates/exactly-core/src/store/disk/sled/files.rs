//! Real fsyncs of sled's own files, at a checkpoint.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::store::log::FsyncObserver;

/// Syncs sled's log file, new blob files and the directories that name them.
pub(super) struct SledFiles {
    dir: PathBuf,
    log_path: PathBuf,
    log: File,
    blob_dir: PathBuf,
    blob_dir_mtime: Option<SystemTime>,
    synced_blobs: HashSet<std::ffi::OsString>,
    observer: Option<Arc<dyn FsyncObserver>>,
}

impl SledFiles {
    pub(super) fn new(dir: &Path, observer: Option<Arc<dyn FsyncObserver>>) -> io::Result<Self> {
        let log_path = dir.join("db");
        Ok(Self {
            dir: dir.to_owned(),
            log: File::open(&log_path)?,
            log_path,
            blob_dir: dir.join("blobs"),
            blob_dir_mtime: None,
            synced_blobs: HashSet::new(),
            observer,
        })
    }

    fn observed(&self, path: &Path) {
        if let Some(o) = &self.observer {
            o.synced(path);
        }
    }

    /// Syncs the log, then any blob written since the last call. Returns the number of
    /// fsyncs made.
    pub(super) fn sync(&mut self) -> io::Result<u64> {
        self.log.sync_data()?;
        self.observed(&self.log_path);
        Ok(1 + self.sync_new_blobs()?)
    }

    /// Syncs everything, including the directories (at open).
    pub(super) fn sync_all(&self) -> io::Result<()> {
        self.log.sync_all()?;
        self.observed(&self.log_path);
        for d in [&self.dir, &self.blob_dir] {
            if d.is_dir() {
                File::open(d)?.sync_all()?;
                self.observed(d);
            }
        }
        Ok(())
    }

    fn sync_new_blobs(&mut self) -> io::Result<u64> {
        // The directory's mtime changes when sled adds or removes a blob; only then list it.
        let mtime = match std::fs::metadata(&self.blob_dir) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if mtime.is_some() && mtime == self.blob_dir_mtime {
            return Ok(0);
        }
        let mut present = HashSet::new();
        let mut synced = 0;
        for entry in std::fs::read_dir(&self.blob_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => {
                        f.sync_all()?;
                        self.observed(&entry.path());
                        synced += 1;
                    }
                    // sled removed it between the listing and the open.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name);
        }
        File::open(&self.blob_dir)?.sync_all()?;
        self.observed(&self.blob_dir);
        self.synced_blobs = present;
        // Timestamps are coarse (a few ms on ext4): a blob added in the same tick as this
        // listing would leave the mtime unchanged. Trust the mtime only once it is old.
        let settled = mtime
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(1));
        self.blob_dir_mtime = if settled { mtime } else { None };
        Ok(synced + 1)
    }
}

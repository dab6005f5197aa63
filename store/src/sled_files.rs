//! The files of a sled directory, kept open so that a write can be made to survive a power loss.
//!
//! sled 0.34's `flush()` ends in `sync_file_range` (spacejam/sled#1452): the log's pages are written back,
//! but neither the file's size nor the drive's cache is flushed, the files of large values (`blobs/`) are
//! never synced, and no directory is synced after a file is created in it. sled exposes no file handles,
//! but `fdatasync` on any open descriptor of a file syncs that file, so this keeps descriptors of sled's
//! files and syncs them after sled's `flush()`, before a write is acknowledged:
//!
//! - `db`, the log every record goes to (`fdatasync`, which includes its size);
//! - every file in `blobs/` that is new (or grew) since the last sync, then `blobs/` itself;
//! - the directory, when files appeared in it (snapshots `snap.*`; sled syncs their contents itself).
//!
//! Verified against sled 0.34.7's layout: `conf`, `db`, `blobs/<lsn>`, `snap.<lsn>`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// A failed sync, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot sync {path}: {source}")]
pub struct SyncError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl SyncError {
    fn new(path: &Path, source: io::Error) -> SyncError {
        SyncError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Open descriptors of one sled directory's files. `sync` may be called from any thread; concurrent
/// calls are serialised (each sees every file created before it started).
pub struct SledFiles {
    dir: PathBuf,
    dir_fd: File,
    log: File,
    blobs_dir: PathBuf,
    blobs_fd: File,
    /// What was synced: file name -> length at that sync, per directory.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    top: HashMap<OsString, u64>,
    blobs: HashMap<OsString, u64>,
}

impl std::fmt::Debug for SledFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledFiles")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SledFiles {
    /// Opens the files of the sled database in `dir` (after sled has opened it) and syncs everything
    /// there once, including `dir`'s entry in its parent and the parent's in its own, up to the root
    /// (`create_dir_all` may have just made them): sled created or recovered these files without syncing
    /// their directories. Ancestors this process may not read are skipped: it did not create them.
    pub fn open(dir: &Path) -> Result<SledFiles, SyncError> {
        let open = |path: &Path| File::open(path).map_err(|e| SyncError::new(path, e));
        let log_path = dir.join("db");
        let blobs_dir = dir.join("blobs");
        let files = SledFiles {
            dir_fd: open(dir)?,
            log: open(&log_path)?,
            blobs_fd: open(&blobs_dir)?,
            dir: dir.to_path_buf(),
            blobs_dir,
            seen: Mutex::new(Seen::default()),
        };
        files.sync()?;
        let absolute = std::path::absolute(dir).map_err(|e| SyncError::new(dir, e))?;
        for ancestor in absolute.ancestors().skip(1) {
            match File::open(ancestor) {
                Ok(f) => f.sync_all().map_err(|e| SyncError::new(ancestor, e))?,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(SyncError::new(ancestor, e)),
            }
        }
        Ok(files)
    }

    /// The sled directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes everything sled has written so far durable; call it after `sled::Db::flush()`.
    pub fn sync(&self) -> Result<(), SyncError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        self.log
            .sync_data()
            .map_err(|e| SyncError::new(&self.dir.join("db"), e))?;
        if sync_new_files(&self.blobs_dir, &mut seen.blobs)? {
            self.blobs_fd
                .sync_all()
                .map_err(|e| SyncError::new(&self.blobs_dir, e))?;
        }
        if sync_new_files(&self.dir, &mut seen.top)? {
            self.dir_fd
                .sync_all()
                .map_err(|e| SyncError::new(&self.dir, e))?;
        }
        Ok(())
    }
}

/// Syncs the regular files of `dir` that are new or changed in length since they were last seen (the
/// log, already synced, is only recorded); forgets files that are gone. Returns whether any file is new,
/// so that the directory must be synced too.
fn sync_new_files(dir: &Path, seen: &mut HashMap<OsString, u64>) -> Result<bool, SyncError> {
    let mut present = HashMap::with_capacity(seen.len());
    let mut created = false;
    for entry in std::fs::read_dir(dir).map_err(|e| SyncError::new(dir, e))? {
        let entry = entry.map_err(|e| SyncError::new(dir, e))?;
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed meanwhile (sled's blob and snapshot clean-up): nothing to sync.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SyncError::new(&path, e)),
        };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name();
        let len = meta.len();
        match seen.get(&name) {
            Some(&synced) if synced == len => {}
            known => {
                created |= known.is_none();
                if name != "db" {
                    match File::open(&path) {
                        Ok(f) => f.sync_data().map_err(|e| SyncError::new(&path, e))?,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(SyncError::new(&path, e)),
                    }
                }
            }
        }
        present.insert(name, len);
    }
    *seen = present;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_notices_new_and_grown_files_and_forgets_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = HashMap::new();
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        assert!(sync_new_files(dir.path(), &mut seen).unwrap());
        assert!(!sync_new_files(dir.path(), &mut seen).unwrap());
        std::fs::write(dir.path().join("a"), b"12").unwrap();
        // Grown: synced again, but the directory already names it.
        assert!(!sync_new_files(dir.path(), &mut seen).unwrap());
        assert_eq!(seen.get(&OsString::from("a")), Some(&2));
        std::fs::remove_file(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(!sync_new_files(dir.path(), &mut seen).unwrap());
        assert!(seen.is_empty());
    }

    #[test]
    fn opens_a_sled_directory_and_syncs_large_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let db = sled::Config::new().path(&path).open().unwrap();
        let files = SledFiles::open(&path).unwrap();
        // A value this large goes to a file of its own under blobs/.
        db.insert(b"big", vec![7u8; 1 << 20]).unwrap();
        db.flush().unwrap();
        files.sync().unwrap();
        let blobs = files.seen.lock().unwrap().blobs.len();
        assert!(blobs >= 1, "no blob file seen in {}", path.display());
        assert_eq!(files.dir(), path);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = SledFiles::open(&missing).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}

//! Why and how a long-running command (`fm serve`, `fm operator`) stops: on Ctrl-C or SIGTERM, or after a
//! store failed to write, and always within a bounded time.
//!
//! A failed write (a full disk, an I/O error) leaves sled unable to write again in this process (its next
//! flush waits for the failed write forever), so the stores refuse writes from then on and `/readyz`
//! answers 503 naming the store. While the data dir still cannot be written, the process stays up to serve
//! reads and say why it is not ready; as soon as a probe write succeeds, it stops with
//! [`EXIT_STORAGE`] so that its supervisor (Kubernetes, systemd) restarts it with the stores reopened.
//!
//! Graceful shutdown waits for work that may be stuck behind the failed store, so a watchdog thread ends
//! the process anyway once [`SHUTDOWN_GRACE`] has passed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::serve::wait_for_signal;

/// Exit code after a store failed to write (disk full, I/O error): restart the process once the disk can
/// be written again.
pub const EXIT_STORAGE: i32 = 74;

/// Longest a graceful shutdown may take before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How often a failed store is looked for, and the disk probed once one is found.
const POLL: Duration = Duration::from_millis(500);

/// Bytes the probe writes: enough that a nearly full disk does not pass for a writable one.
const PROBE_BYTES: usize = 1024 * 1024;

/// Tells why a store cannot write any more, if it cannot.
pub type FailureCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Why the process stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// A store failed to write (the message says which and why) and the data dir is writable again.
    Storage(String),
}

impl StopReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Signal => 0,
            StopReason::Storage(_) => EXIT_STORAGE,
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, or once a store has failed and a probe write to `data_dir` succeeds.
pub async fn wait_for_stop(
    stores: Vec<FailureCheck>,
    data_dir: PathBuf,
) -> anyhow::Result<StopReason> {
    tokio::select! {
        signal = wait_for_signal() => signal.map(|()| StopReason::Signal),
        failure = wait_for_storage_failure(&stores, &data_dir) => Ok(StopReason::Storage(failure)),
    }
}

async fn wait_for_storage_failure(stores: &[FailureCheck], data_dir: &Path) -> String {
    let failure = loop {
        if let Some(failure) = stores.iter().find_map(|check| check()) {
            break failure;
        }
        tokio::time::sleep(POLL).await;
    };
    eprintln!(
        "{failure}; not ready until {} can be written again, then exiting (code {EXIT_STORAGE}) so that a \
         restart reopens the stores",
        data_dir.display()
    );
    loop {
        let dir = data_dir.to_path_buf();
        match tokio::task::spawn_blocking(move || probe(&dir)).await {
            Ok(Ok(())) => return failure,
            Ok(Err(e)) => tracing::debug!(error = %e, "data dir still cannot be written"),
            Err(e) => tracing::warn!(error = %e, "disk probe did not finish"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes, syncs and removes a file in `dir`: whether the disk takes writes again.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(".fm-write-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// Ends the process with `code` if it is still running `grace` from now (a shutdown stuck behind a
/// failed store, a hung connection): stopping must never depend on every part letting go.
pub fn exit_after(grace: Duration, code: i32) {
    let spawned = std::thread::Builder::new()
        .name("flowmason-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(grace);
            eprintln!("shutdown did not finish within {grace:?}; exiting anyway");
            std::process::exit(if code == 0 { 1 } else { code });
        });
    if let Err(e) = spawned {
        eprintln!("cannot start the shutdown watchdog ({e}); exiting now");
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_writes_and_removes_its_file_and_names_a_missing_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        probe(dir.path()).expect("probe");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        assert!(probe(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn a_failed_store_stops_once_the_disk_takes_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores: Vec<FailureCheck> = vec![
            Box::new(|| None),
            Box::new(|| Some("API store cannot write: disk full".to_string())),
        ];
        let reason = wait_for_stop(stores, dir.path().to_path_buf())
            .await
            .expect("stop");
        assert_eq!(
            reason,
            StopReason::Storage("API store cannot write: disk full".into())
        );
        assert_eq!(reason.exit_code(), EXIT_STORAGE);
        assert_eq!(StopReason::Signal.exit_code(), 0);
    }
}

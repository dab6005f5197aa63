//! The one thread that writes buffered appends out and makes them durable.
//!
//! sled 0.34's `flush_async` deadlocks under concurrent use (spacejam/sled#1308), so durability is never
//! awaited inside sled: waiters queue a oneshot sender, and this thread answers every waiter queued while it
//! was busy with ONE write cycle (the write-behind buffer into sled), ONE blocking `flush()` and ONE sync of
//! sled's files (see [`SledFiles`]; group commit: an `always` append costs one fsync per group, not one
//! each). Under the `batch` policy it also
//! writes and flushes `flush_interval` after the first unflushed append; under `never` it only writes.
//! The thread ends when the store's last handle drops: the channel closes, the thread flushes what is left
//! and exits, and the store's drop joins it so that the database files are closed when drop returns.
//!
//! The first failure to write or sync is kept: sled cannot be trusted to recover from a failed write (after
//! a full disk its flush waits for the failed write forever), and after a failed fsync the kernel may have
//! dropped the dirty pages. From then on every wait for durability fails at once with that error, and
//! [`Flusher::failure`] reports it so that the process can say it is not ready and be restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::Durability;
use crate::error::StoreError;
use crate::sled_files::{SledFiles, SyncError};

/// Why a flush failed; cloned to every waiter of the group.
#[derive(Debug, Clone)]
pub(crate) enum FlushFailure {
    Sled(sled::Error),
    Sync(Arc<SyncError>),
}

impl From<FlushFailure> for StoreError {
    fn from(failure: FlushFailure) -> StoreError {
        match failure {
            FlushFailure::Sled(e) => StoreError::Sled(e),
            FlushFailure::Sync(e) => StoreError::Sync(e),
        }
    }
}

impl std::fmt::Display for FlushFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushFailure::Sled(e) => write!(f, "sled: {e}"),
            FlushFailure::Sync(e) => e.fmt(f),
        }
    }
}

type FlushResult = Result<(), FlushFailure>;
type Reply = oneshot::Sender<FlushResult>;

/// Writes the buffered appends into sled (one write cycle).
pub(crate) type WriteOut = Box<dyn Fn() -> Result<(), sled::Error> + Send>;

enum Msg {
    /// Flush, then answer.
    Flush(Reply),
    /// There are unflushed appends (sent by the append that made the store dirty, batch policy only).
    Dirty,
}

pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    /// Whether something was appended since the flusher last started a flush.
    dirty: Arc<AtomicBool>,
    durability: Durability,
    /// The first failed write cycle, flush or sync; set once, never cleared.
    failure: Arc<OnceLock<FlushFailure>>,
}

impl Flusher {
    pub(crate) fn start(
        disk: Disk,
        durability: Durability,
        interval: Duration,
        write_out: WriteOut,
    ) -> Result<Flusher, StoreError> {
        let (tx, rx) = mpsc::channel();
        let dirty = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(OnceLock::new());
        let thread = {
            let (dirty, failure) = (dirty.clone(), failure.clone());
            std::thread::Builder::new()
                .name("flowmason-store-flusher".into())
                .spawn(move || run(disk, rx, dirty, &failure, durability, interval, write_out))
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?
        };
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            dirty,
            durability,
            failure,
        })
    }

    /// The first write, flush or sync that failed, if any: the store can no longer make anything durable.
    pub(crate) fn failure(&self) -> Option<FlushFailure> {
        self.failure.get().cloned()
    }

    /// Records that an append happened; under the batch and never policies the first append after a cycle
    /// starts the cycle timer (under always, every append waits and so asks for a cycle itself). One atomic swap on the hot path, a message only on the clean -> dirty edge.
    #[inline]
    pub(crate) fn note_append(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel)
            && self.durability != Durability::Always
            && let Some(tx) = &self.tx
        {
            // A send error means the thread is gone; the next waiter will see `Closed`.
            let _ = tx.send(Msg::Dirty);
        }
    }

    #[cfg(test)]
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Queues a flush request; the receiver resolves after a flush that started after this call. Fails at
    /// once when an earlier flush failed.
    pub(crate) fn request(&self) -> Result<oneshot::Receiver<FlushResult>, StoreError> {
        if let Some(failure) = self.failure() {
            return Err(failure.into());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Msg::Flush(reply))
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("event store flusher thread panicked");
        }
    }
}

/// What a flush makes durable: sled's buffers, then its files.
#[derive(Clone)]
pub(crate) struct Disk {
    pub(crate) db: sled::Db,
    pub(crate) files: Option<Arc<SledFiles>>,
}

impl Disk {
    /// sled's `flush()`, then an fdatasync of what it wrote (see [`SledFiles`]).
    pub(crate) fn flush(&self) -> FlushResult {
        self.db.flush().map_err(FlushFailure::Sled)?;
        if let Some(files) = &self.files {
            files.sync().map_err(|e| FlushFailure::Sync(Arc::new(e)))?;
        }
        Ok(())
    }
}

fn run(
    disk: Disk,
    rx: mpsc::Receiver<Msg>,
    dirty: Arc<AtomicBool>,
    failure: &OnceLock<FlushFailure>,
    durability: Durability,
    interval: Duration,
    write_out: WriteOut,
) {
    let mut deadline: Option<Instant> = None;
    loop {
        let first = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let mut waiters = Vec::new();
        match first {
            Ok(Msg::Flush(reply)) => waiters.push(reply),
            Ok(Msg::Dirty) => {
                deadline.get_or_insert_with(|| Instant::now() + interval);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Everyone who queued while we were waiting or flushing shares this flush.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Flush(reply) = msg {
                waiters.push(reply);
            }
        }
        deadline = None;
        // Cleared before the flush: an append racing with it either is covered by the flush or sets the flag
        // (and, under batch, re-arms the timer) again.
        dirty.store(false, Ordering::SeqCst);
        let result = match failure.get() {
            Some(earlier) => Err(earlier.clone()),
            None => write_out().map_err(FlushFailure::Sled).and_then(|()| {
                if durability != Durability::Never || !waiters.is_empty() {
                    disk.flush()
                } else {
                    Ok(())
                }
            }),
        };
        if let Err(e) = &result
            && failure.set(e.clone()).is_ok()
        {
            tracing::error!(error = %e, "event store flush failed; the event log accepts no more writes");
        }
        for reply in waiters {
            // A waiter that gave up (dropped its receiver) is fine.
            let _ = reply.send(result.clone());
        }
    }
    if dirty.load(Ordering::SeqCst) && failure.get().is_none() {
        let closed = write_out().map_err(FlushFailure::Sled).and_then(|()| {
            if durability != Durability::Never {
                disk.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = closed {
            tracing::error!(error = %e, "event store write on close failed");
        }
    }
}

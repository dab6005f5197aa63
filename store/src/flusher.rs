//! The one thread that writes buffered appends out and makes them durable.
//!
//! sled 0.34's `flush_async` deadlocks under concurrent use (spacejam/sled#1308), so durability is never
//! awaited inside sled: waiters queue a oneshot sender, and this thread answers every waiter queued while it
//! was busy with ONE write cycle (the write-behind buffer into sled) and ONE blocking `flush()` (group
//! commit: an `always` append costs one fsync per group, not one each). Under the `batch` policy it also
//! writes and flushes `flush_interval` after the first unflushed append; under `never` it only writes.
//! The thread ends when the store's last handle drops: the channel closes, the thread flushes what is left
//! and exits, and the store's drop joins it so that the database files are closed when drop returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::Durability;
use crate::error::StoreError;

type Reply = oneshot::Sender<Result<(), sled::Error>>;

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
}

impl Flusher {
    pub(crate) fn start(
        db: sled::Db,
        durability: Durability,
        interval: Duration,
        write_out: WriteOut,
    ) -> Result<Flusher, StoreError> {
        let (tx, rx) = mpsc::channel();
        let dirty = Arc::new(AtomicBool::new(false));
        let thread_dirty = dirty.clone();
        let thread = std::thread::Builder::new()
            .name("flowmason-store-flusher".into())
            .spawn(move || run(db, rx, thread_dirty, durability, interval, write_out))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            dirty,
            durability,
        })
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

    /// Queues a flush request; the receiver resolves after a flush that started after this call.
    pub(crate) fn request(&self) -> Result<oneshot::Receiver<Result<(), sled::Error>>, StoreError> {
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

fn run(
    db: sled::Db,
    rx: mpsc::Receiver<Msg>,
    dirty: Arc<AtomicBool>,
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
        let result = write_out().and_then(|()| {
            if durability != Durability::Never || !waiters.is_empty() {
                db.flush().map(drop)
            } else {
                Ok(())
            }
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "event store flush failed");
        }
        for reply in waiters {
            // A waiter that gave up (dropped its receiver) is fine.
            let _ = reply.send(result.clone());
        }
    }
    if dirty.load(Ordering::SeqCst) {
        let closed = write_out().and_then(|()| {
            if durability != Durability::Never {
                db.flush().map(drop)
            } else {
                Ok(())
            }
        });
        if let Err(e) = closed {
            tracing::error!(error = %e, "event store write on close failed");
        }
    }
}

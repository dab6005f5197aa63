//! Everything that can go wrong in the store. Messages name the run (and the event sequence where there is
//! one) so that an operator can find the record in question.

use std::sync::Arc;

use crate::event::RunId;
use crate::fold::FoldError;
use crate::lifecycle::LifecycleError;
use crate::sled_files::SyncError;

/// An error of the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled itself failed (I/O, or a bug it reports).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// sled's files could not be synced to disk (fdatasync/fsync failed), naming the file.
    #[error(transparent)]
    Sync(Arc<SyncError>),
    /// An event record could not be decoded (bad key, bad JSON, unknown event type).
    #[error("run {run}: event {seq} is corrupt: {reason}")]
    Corrupt {
        run: RunId,
        seq: u64,
        reason: String,
    },
    /// A run summary record could not be decoded, or contradicts the events.
    #[error("run {run}: summary is corrupt: {reason}")]
    CorruptSummary { run: RunId, reason: String },
    /// A record was written by a newer (or unknown) format version.
    #[error("run {run}: event {seq} has unsupported format version {version}")]
    UnsupportedVersion { run: RunId, seq: u64, version: u8 },
    /// The stored events do not make a valid stream.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// The run has not ended, so it cannot be deleted.
    #[error("run {run} has not ended; refusing to delete a run in flight")]
    RunInFlight { run: RunId },
    /// An append or an import breaks the run's lifecycle (see [`crate::lifecycle`]).
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A query's continue token was not issued by this store.
    #[error("bad continue token: {0}")]
    BadContinueToken(String),
    /// An event could not be serialized (cannot happen with JSON payloads; reported rather than panicking).
    #[error("run {run}: cannot encode event {seq}: {reason}")]
    Encode {
        run: RunId,
        seq: u64,
        reason: String,
    },
    /// The record of the engine sessions cannot be decoded.
    #[error("engine session record is corrupt: {reason}")]
    CorruptSession { reason: String },
    /// The flusher thread is gone (the store is shutting down), so durability cannot be awaited.
    #[error("event store is closed")]
    Closed,
}

impl StoreError {
    /// Whether an append was refused because the run had already ended (another path ended it first).
    pub fn is_run_ended(&self) -> bool {
        matches!(
            self,
            StoreError::Lifecycle(LifecycleError::RunEnded { .. })
                | StoreError::Fold(FoldError::Lifecycle(LifecycleError::RunEnded { .. }))
        )
    }
}

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
    /// Events were stored out of order: event `got` came where the run's next event is `expected`.
    #[error("run {run}: event {got} is out of order (the run's next event is {expected})")]
    OutOfOrder { run: RunId, expected: u64, got: u64 },
    /// JetStream refused an append because another writer appended to the run after this process last
    /// saw it (`Nats-Expected-Last-Subject-Sequence`): this process no longer owns the run and must stop
    /// it at once, acting on nothing it had not appended.
    #[error(
        "run {run}: another writer appended to the run since this engine last did; this engine no longer owns the run"
    )]
    LostOwnership { run: RunId },
    /// A message of the JetStream stream holds events of `run` that cannot be read (corrupt, or written
    /// in a record format this version does not know): the run is named, never silently left out.
    #[error(
        "run {run}: message {stream_seq} of JetStream stream {stream} cannot be read: {reason}"
    )]
    UnreadableMessage {
        run: RunId,
        stream: String,
        stream_seq: u64,
        reason: String,
    },
    /// The NATS JetStream server failed or could not be reached; `what` says what was being done.
    #[error("JetStream: {what}: {reason}")]
    JetStream { what: String, reason: String },
    /// The stream exists with settings the event log cannot use; it is never changed silently.
    #[error(
        "JetStream stream {}: {} is {}, the event log needs {} (change the stream or choose another with --event-stream)",
        .0.stream, .0.field, .0.found, .0.expected
    )]
    StreamMismatch(Box<StreamMismatch>),
    /// The log records another value of a setting that every process sharing it must agree on (see
    /// [`EventStore::claim_setting`](crate::EventStore::claim_setting)); `stream` names the log.
    #[error("{stream} records {name}={recorded}; this process has {name}={wanted}")]
    SettingMismatch {
        stream: String,
        name: String,
        recorded: String,
        wanted: String,
    },
    /// A setting's name cannot be recorded: it must be a non-empty run of letters, digits, `-` and `_`.
    #[error("setting name {name:?} is invalid: use letters, digits, '-' and '_' only")]
    InvalidSettingName { name: String },
}

impl StoreError {
    pub(crate) fn jetstream(what: impl Into<String>, reason: impl std::fmt::Display) -> StoreError {
        StoreError::JetStream {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// How a present JetStream stream differs from what the event log needs.
#[derive(Debug)]
pub struct StreamMismatch {
    pub stream: String,
    /// The setting that differs: subjects, retention, storage, replicas or limits.
    pub field: &'static str,
    pub expected: String,
    pub found: String,
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

//! The FlowMason event log: append-only per-run event streams in sled, the fold that turns them into run
//! state, and the indexes behind history queries. Knows nothing of actors or Kubernetes.
//!
//! - [`event`]: what can happen to a run; [`fold`]: run state as a pure fold over those events;
//!   [`lifecycle`]: the rule every run's stream follows, and the run-level fields it folds.
//! - [`EventStore`]: appends (with the stream rules and per-policy durability), reads, history queries,
//!   deletion. Layout of the records: see the `keys` module.
//! - Two backends behind [`EventStore`]: a local sled log, or a replicated NATS JetStream stream with a
//!   local sled index (see [`EventStore::open_jetstream`]).
//! - Several engines may share one JetStream log: [`EventStore::claim_setting`] records what they must
//!   agree on, [`EventStore::catch_up`] and [`EventStore::relinquish`] hand a run from one to another.
//! - [`sled_files`]: syncing a sled directory's files so that a flush survives a power loss.

mod buffer;
mod codec;
mod config;
mod error;
pub mod event;
mod flusher;
pub mod fold;
mod jetstream;
mod keys;
pub mod lifecycle;
mod query;
mod session;
mod settings;
pub mod sled_files;
mod store;
mod summary;

pub use config::{Durability, StoreConfig};
pub use error::{StoreError, StreamMismatch};
pub use event::*;
pub use fold::*;
pub use jetstream::{DEFAULT_STREAM, JetStreamConfig, NatsAuth};
pub use lifecycle::LifecycleError;
pub use query::{DEFAULT_QUERY_LIMIT, RunPage, RunQuery};
pub use session::EngineSession;
pub use store::{Appended, EventStore, WriteCycle, WriteObserver};
pub use summary::RunSummary;

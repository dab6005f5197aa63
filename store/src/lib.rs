//! The FlowMason event log: append-only per-run event streams in sled, the fold that turns them into run
//! state, and the indexes behind history queries. Knows nothing of actors or Kubernetes.

pub mod event;
pub mod fold;

pub use event::*;
pub use fold::*;

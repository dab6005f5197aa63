//! The Kubernetes operator: controllers that turn `Pipeline` and `PipelineRun` objects into engine runs
//! and project the runs' event folds back into their status, against any API server a kube `Client`
//! points at (the embedded one of `fm serve`, or a real cluster for `fm operator`).
//!
//! - [`planning`]: pure decisions (effective spec, references, env, inputs, run ids), unit-tested;
//! - [`status`]: the status projection from `RunState`;
//! - [`pipelines`]: the Pipeline controller and its `PipelineActor`s;
//! - [`runs`]: the PipelineRun controller, the run starter and the coalescing status writer;
//! - [`backlog`]: each controller's queue depth;
//! - [`cluster`]: the cached view of the ConfigMaps and Secrets that runs read;
//! - [`leader`]: Lease-based leader election;
//! - [`shards`]: which shards of the runs this replica owns (several active replicas);
//! - [`Operator`]: wires them onto one engine.

mod backlog;
pub mod capacity;
mod cluster;
pub mod error;
pub mod events;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod leader;
pub mod pipelines;
pub mod planning;
pub mod runs;
pub mod shards;
pub mod status;

mod wiring;

pub use error::{Error, Result};
pub use wiring::{Operator, OperatorConfig};

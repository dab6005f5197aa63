//! The PipelineRun controller. Each PipelineRun becomes one engine run (a `RunActor`), started with the
//! plan of its Pipeline's generation current at that moment and recorded in `RunAccepted`, under an id
//! derived from the PipelineRun's uid (see [`planning::run_id_for`]) so that no restart or second replica
//! can start it twice. A status writer per active run follows the state the engine folds and publishes
//! (see [`Engine::watch`]) and patches `status` through the status subresource, coalesced to one write per
//! interval plus the final one. Deleting a run in flight cancels it and waits for its end before the
//! finalizer lets it go.
//!
//! - [`controller`]: the watch, the reconcile (finalizer, apply, cleanup) and the sweep of orphaned runs;
//! - [`start`]: starting, resuming and rejecting a run;
//! - [`ownership`]: the Pipeline's ownerReference and label on its runs;
//! - [`status_writer`]: the coalescing status writer of a run in flight;
//! - [`handover`]: what a change of the shards held means for the runs (several replicas).
//!
//! With several replicas sharing the runs (see [`Ownership`]), a replica acts only on the runs of the
//! shards it holds: it leaves the others alone entirely, takes over a shard's runs when it gains the
//! shard and drops them at once when it loses it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef as KubeRef;
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use flowmason_actors::Engine;
use flowmason_store::RunId;

use super::backlog::Backlog;
use super::capacity::Ledger;
use super::cluster::ClusterCache;
use super::error::{Error, Result};
use super::pipelines::PipelineRegistry;
use super::planning;
use super::shards::Ownership;
use super::status::Limits;
use super::wiring::OperatorConfig;
use crate::metrics::Metrics;
use crate::model::PipelineRun;

mod controller;
mod handover;
mod ownership;
mod start;
mod status_writer;

pub use controller::run_controller;
pub(crate) use status_writer::write_outcome;
pub use status_writer::write_status;

/// The reason of a run that waits for the operator's capacity (`spec.resources`).
pub const WAITING_FOR_RESOURCES: &str = "WaitingForResources";

/// How often a run waiting for capacity looks again if no run ending wakes it first.
const CAPACITY_RECHECK: Duration = Duration::from_secs(5);

/// Field manager of the operator's writes.
pub const MANAGER: &str = "flowmason-operator";

/// A run whose status writer is going in this process.
struct Active {
    /// Flips to true when the final status has been written.
    done: watch::Receiver<bool>,
    /// Stops the status writer at once, writing nothing more (the run was relinquished).
    stop: CancellationToken,
}

/// What the PipelineRun controller works with.
pub struct RunContext {
    pub client: Client,
    pub engine: Engine,
    pub(crate) cluster: ClusterCache,
    pub(crate) pipelines: PipelineRegistry,
    /// Least time between two status writes of one run.
    pub write_interval: Duration,
    pub limits: Limits,
    /// Where status writes and failed reconciles are counted; `None` counts nothing.
    pub metrics: Option<Arc<Metrics>>,
    /// PipelineRuns changed and not yet reconciled (the controller's queue depth).
    pub(crate) backlog: Backlog,
    /// The operator's capacity and what the runs in flight reserve of it.
    pub(crate) ledger: Ledger,
    /// Runs waiting for capacity, woken (reconciled at once) when a run gives its share back.
    waiting: Mutex<HashSet<KubeRef<PipelineRun>>>,
    wake: mpsc::UnboundedSender<KubeRef<PipelineRun>>,
    /// The receiving end of `wake`, taken by the controller.
    woken: Mutex<Option<mpsc::UnboundedReceiver<KubeRef<PipelineRun>>>>,
    active: Mutex<HashMap<RunId, Active>>,
    /// The shards of the runs this replica acts on.
    pub ownership: Ownership,
    /// The shards taken after a crash whose runs are still being resumed.
    failovers: Mutex<handover::Failovers>,
}

impl RunContext {
    /// The context of the operator configured by `config` (its status interval, metrics and capacity),
    /// acting on the runs of the shards of `ownership`.
    pub(crate) fn new(
        client: Client,
        engine: Engine,
        cluster: ClusterCache,
        pipelines: PipelineRegistry,
        config: &OperatorConfig,
        ownership: Ownership,
    ) -> RunContext {
        let (wake, woken) = mpsc::unbounded_channel();
        let metrics = config.metrics.clone();
        RunContext {
            client,
            engine,
            cluster,
            pipelines,
            write_interval: config.write_interval,
            limits: Limits::default(),
            backlog: Backlog::new("pipelinerun", metrics.clone()),
            ledger: Ledger::new(config.capacity),
            waiting: Mutex::new(HashSet::new()),
            wake,
            woken: Mutex::new(Some(woken)),
            metrics,
            active: Mutex::new(HashMap::new()),
            ownership,
            failovers: Mutex::new(handover::Failovers::default()),
        }
    }

    /// Gives `run`'s capacity share back and wakes the runs waiting for capacity.
    fn release(&self, run: RunId) {
        self.ledger.release(run);
        let waiting = std::mem::take(
            &mut *self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for waiter in waiting {
            let _ = self.wake.send(waiter);
        }
    }

    /// Drops `run` at once, its shard lost: the engine stops its actor appending nothing, its status
    /// writer stops without a final write (the new owner writes the status from here on), and its share
    /// of the capacity goes back.
    fn relinquish(&self, run: RunId) {
        let active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&run);
        if let Some(active) = active {
            active.stop.cancel();
        }
        if self.engine.relinquish(run) {
            tracing::info!(%run, "relinquished a run whose shard this replica lost");
        }
        self.release(run);
    }

    /// Counts `run` as taken up after its shard was gained: the failover time is observed when it was
    /// the last unfinished run of a shard taken after a crash.
    fn taken_up(&self, run: RunId) {
        let shard = self.ownership.shard_of_run(run);
        let failover = self
            .failovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .resumed(shard, run, k8s_openapi::jiff::Timestamp::now());
        if let (Some(elapsed), Some(metrics)) = (failover, &self.metrics) {
            tracing::info!(
                shard,
                seconds = elapsed.as_secs_f64(),
                "every run of a shard taken after a crash has resumed"
            );
            metrics.shard_failover(elapsed.as_secs_f64());
        }
    }

    fn is_active(&self, run: RunId) -> bool {
        self.active
            .lock()
            .map(|a| a.contains_key(&run))
            .unwrap_or(false)
    }
}

fn object_name(run: &PipelineRun) -> String {
    format!(
        "PipelineRun {}/{}",
        run.namespace().unwrap_or_default(),
        run.name_any()
    )
}

/// The engine run id of a PipelineRun (see [`planning::run_id_for`]).
pub fn run_id_of(run: &PipelineRun) -> Result<RunId> {
    let uid = run.metadata.uid.as_deref().ok_or(Error::MissingField {
        object: object_name(run),
        field: "metadata.uid",
    })?;
    let created_ms = run
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| u64::try_from(t.0.as_millisecond()).unwrap_or(0))
        .unwrap_or(0);
    Ok(planning::run_id_for(uid, created_ms))
}

//! The operator: one engine, the ConfigMap/Secret cache, the Pipeline and PipelineRun controllers, and
//! who may act: everything (a single replica), the leader (election in front of them), or the shards this
//! replica holds (an [`Ownership`] fed by `fm operator`'s shard lease manager). Used by `fm serve`
//! (against the embedded API server) and `fm operator` (against a cluster).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;

use flowmason_actors::{Engine, EngineConfig, EventObserver, Observation, Registry};
use flowmason_store::EventStore;

use super::backlog::Backlog;
use super::cluster::ClusterCache;
use super::error::Result;
use super::leader::{self, LeaseConfig};
use super::pipelines::{self, PipelineContext, PipelineRegistry};
use super::runs::{self, RunContext};
use super::shards::Ownership;

/// Settings of an operator.
#[derive(Clone)]
pub struct OperatorConfig {
    /// Least time between two status writes of one run (the first and the final write are immediate).
    pub write_interval: Duration,
    /// Hold this Lease before running anything; `None` runs at once (a single replica).
    pub lease: Option<LeaseConfig>,
    /// Arbiters (threads) hosting run actors.
    pub workers: usize,
    /// Where the engine's events are counted (`/metrics`); `None` counts nothing.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The triggers this operator owns: the Pipeline controller arms them on every Pipeline it
    /// observes and disarms them when the Pipeline is deleted, so that triggers and the Ready verdict
    /// come from the same watch (and stop with the controllers). `None` leaves the triggers to
    /// [`crate::triggers::Triggers::watch`] (e.g. `fm operator` replicas that must all answer
    /// webhooks while only the leader runs controllers).
    pub triggers: Option<Arc<crate::triggers::Triggers>>,
    /// Sees every engine event next to the metrics (e.g. [`crate::triggers::lifecycle::publisher`]).
    pub observer: Option<EventObserver>,
    /// What the runs in flight may reserve with their Pipeline's `spec.resources` (default: unlimited).
    pub capacity: super::capacity::Capacity,
    /// The shards of the runs and Pipelines this replica acts on, when several replicas share them;
    /// `None`: every one (a single active replica).
    pub ownership: Option<Ownership>,
}

impl std::fmt::Debug for OperatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorConfig")
            .field("write_interval", &self.write_interval)
            .field("lease", &self.lease)
            .field("workers", &self.workers)
            .field("metrics", &self.metrics.is_some())
            .field("triggers", &self.triggers.is_some())
            .field("observer", &self.observer.is_some())
            .field("capacity", &self.capacity)
            .field("ownership", &self.ownership)
            .finish()
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            write_interval: Duration::from_millis(250),
            lease: None,
            workers: 2,
            metrics: None,
            triggers: None,
            observer: None,
            capacity: super::capacity::Capacity::default(),
            ownership: None,
        }
    }
}

/// This replica's name in `status.replica`: its Lease identity, else the host name and process id.
fn identity(config: &OperatorConfig) -> String {
    match &config.lease {
        Some(lease) => lease.identity.clone(),
        None => {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fm".into());
            format!("{host}-{}", std::process::id())
        }
    }
}

/// One observer that shows each event to `a`, then to `b`.
fn both(a: Option<EventObserver>, b: Option<EventObserver>) -> Option<EventObserver> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Arc::new(move |o: &Observation<'_>| {
            a(o);
            b(o);
        })),
        (a, b) => a.or(b),
    }
}

/// Controllers plus engine.
pub struct Operator {
    client: Client,
    engine: Engine,
    registry: PipelineRegistry,
    config: OperatorConfig,
    cluster: ClusterCache,
    /// Stops the ConfigMap/Secret reflectors when the operator stops.
    cache_stop: CancellationToken,
    ownership: Ownership,
}

impl Operator {
    /// Creates the engine, the ConfigMap/Secret cache and the actor registry. Must be called on a thread
    /// of an actix `System` (inside its tokio runtime).
    pub fn new(
        client: Client,
        store: EventStore,
        components: Registry,
        config: OperatorConfig,
    ) -> Operator {
        let cache_stop = CancellationToken::new();
        let cluster = ClusterCache::start(client.clone(), cache_stop.clone());
        let engine = Engine::new(
            store,
            components,
            EngineConfig {
                workers: config.workers,
                // `env` valueFrom and provider keys are recorded in the plan as references only and read
                // from the cluster each time a run starts or resumes (values never enter the event log).
                env: crate::env::resolver(Arc::new(cluster.clone())),
                observer: both(
                    config.metrics.as_ref().map(|m| m.engine_observer()),
                    config.observer.clone(),
                ),
                durability_observer: None,
            },
        );
        let ownership = config
            .ownership
            .clone()
            .unwrap_or_else(|| Ownership::everything(identity(&config)));
        if ownership.is_sharded() {
            // A replica sharing the log appends only while its shard's Lease is surely still its own.
            let guard = ownership.clone();
            let guard: flowmason_actors::AppendGuard =
                Arc::new(move |run| guard.may_act_on_run(run));
            // A new engine has no guard yet: this cannot be refused.
            let _ = engine.guard_appends(guard);
        }
        Operator {
            registry: PipelineRegistry::new(
                client.clone(),
                config.metrics.clone(),
                ownership.clone(),
            ),
            ownership,
            client,
            engine,
            config,
            cluster,
            cache_stop,
        }
    }

    /// The engine (for `fm serve`'s history endpoints and tests).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs until `stop` is cancelled or leadership is lost. With a lease configured, waits to be
    /// leader first; runs in the event log that are not finished are resumed as their PipelineRuns are
    /// reconciled (the first list of the run controller covers all of them).
    pub async fn run(self, stop: CancellationToken) -> Result<()> {
        let leadership = match &self.config.lease {
            Some(lease) => match leader::acquire(self.client.clone(), lease, &stop).await? {
                Some(l) => Some(l),
                None => {
                    self.cache_stop.cancel();
                    return Ok(());
                }
            },
            None => None,
        };
        let halt = stop.child_token();
        let metrics = self.config.metrics.clone();
        let sharded = self
            .config
            .ownership
            .as_ref()
            .is_some_and(Ownership::is_sharded);
        // Leader from here on: the Lease is held, or there is no election (a single replica). Sharded,
        // the shard lease manager reports it (1 while holding a shard).
        if let Some(m) = &metrics
            && !sharded
        {
            m.set_leader(true);
            m.set_shard_count(1);
            m.set_shards_owned(1);
        }
        if let Some(l) = &leadership {
            let lost = l.lost.clone();
            let halt = halt.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                lost.cancelled().await;
                tracing::error!("lost the operator lease; stopping the controllers");
                if let Some(m) = &metrics {
                    m.set_leader(false);
                }
                halt.cancel();
            });
        }
        let cluster = self.cluster.clone();
        let known: Arc<dyn Fn(&str) -> bool + Send + Sync> = {
            let engine = self.engine.clone();
            Arc::new(move |c| engine.registry().contains(c))
        };
        let pipeline_ctx = Arc::new(PipelineContext {
            client: self.client.clone(),
            cluster: cluster.clone(),
            registry: self.registry.clone(),
            known,
            metrics: self.config.metrics.clone(),
            backlog: Backlog::new("pipeline", self.config.metrics.clone()),
            triggers: self.config.triggers.clone(),
            ownership: self.ownership.clone(),
        });
        let run_ctx = Arc::new(RunContext::new(
            self.client.clone(),
            self.engine.clone(),
            cluster,
            self.registry.clone(),
            &self.config,
            self.ownership.clone(),
        ));
        let (h1, h2) = (halt.clone(), halt.clone());
        let pipelines = tokio::spawn(pipelines::run_controller(pipeline_ctx, async move {
            h1.cancelled().await
        }));
        let runs = tokio::spawn(runs::run_controller(run_ctx, async move {
            h2.cancelled().await
        }));
        halt.cancelled().await;
        // kube-runtime's graceful shutdown can hang when the API server is gone: bounded.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = pipelines.await;
            let _ = runs.await;
        })
        .await;
        self.cache_stop.cancel();
        // Owned triggers stop with the controllers that armed them (e.g. on a lost lease).
        if let Some(triggers) = &self.config.triggers {
            triggers.clear();
        }
        // A graceful stop: the runs left in flight resume normally, not as after a crash.
        if let Err(error) = self.engine.shutdown() {
            tracing::error!(%error, "cannot record the engine's shutdown in the event log and flush it");
        }
        if let Some(l) = leadership {
            l.release().await;
        }
        if let Some(m) = &metrics {
            m.set_leader(false);
        }
        Ok(())
    }
}

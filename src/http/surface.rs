//! The HTTP endpoints `fm serve`, `fm operator` and `fm history serve` share: the history API over the
//! event log, the Pipelines and run actions the web UI needs, `/metrics` (engine, event log, triggers),
//! `/healthz`, `/readyz` and the web UI under `/ui/`. One place builds them, so every command exposes the
//! same thing; they differ only in where reruns go and whether a cluster is there ([`Reruns`]).

use std::sync::{Arc, OnceLock};

use axum::Router;
use flowmason_actors::Engine;
use flowmason_store::{EventStore, RunState};
use tokio_util::sync::CancellationToken;

use crate::history::rerun::{RerunError, RerunOptions, Rerunner};
use crate::metrics::{Metrics, MetricsError};

/// Where `POST /api/v1/runs/{runId}/rerun` starts its runs, and where Pipelines come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reruns {
    /// As PipelineRuns created through the Kubernetes API, which the operator starts (`fm serve`, `fm
    /// operator`); the client comes with [`Surface::client_ready`]. Pipelines are read, runs started and
    /// cancelled through it too.
    Api,
    /// On this process's engine, given with [`Surface::engine_started`] (`fm history serve`). Pipelines
    /// are derived from the history; no runs are started or cancelled otherwise.
    Engine,
}

/// The routers and the metrics they expose.
pub struct Surface {
    pub metrics: Arc<Metrics>,
    /// The history API, Pipelines and run actions: run data, always behind the token.
    pub history: Router,
    /// `/metrics`: behind the token unless `--metrics-public` opens it (pipeline names and error
    /// counts are run data too, so it is closed by default).
    pub scrape: Router,
    /// The web UI's static assets (`/ui/`), which hold no run data: served without the token.
    pub ui: Router,
    /// `/healthz` and `/readyz` (the event log must answer); `fm serve`'s API server has its own.
    pub health: Router,
    engine: Arc<OnceLock<Engine>>,
    /// The client reruns create their PipelineRuns with (set by [`Surface::client_ready`]).
    client: Arc<OnceLock<kube::Client>>,
}

impl Surface {
    /// Builds the routes over `events` and connects the event log's write cycles to the metrics.
    pub fn new(
        events: &EventStore,
        reruns: Reruns,
        stop: CancellationToken,
    ) -> Result<Surface, MetricsError> {
        let metrics = Arc::new(Metrics::new()?);
        events.observe_writes(metrics.store_observer());
        // The engine is created later (it needs a Kubernetes client): the scrape reads it once there.
        let engine: Arc<OnceLock<Engine>> = Arc::new(OnceLock::new());
        let state = super::metrics::MetricsState::new(metrics.clone())
            .with_store(events.clone())
            .with_engine_slot(engine.clone());
        let client: Arc<OnceLock<kube::Client>> = Arc::new(OnceLock::new());
        let (rerun, pipelines) = match reruns {
            Reruns::Api => (
                super::api_rerun::api_rerunner(client.clone()),
                super::pipelines::Pipelines::Cluster(client.clone()),
            ),
            Reruns::Engine => (
                engine_slot_rerunner(engine.clone()),
                super::pipelines::Pipelines::History,
            ),
        };
        let history = super::history::router(super::history::HistoryState {
            store: events.clone(),
            rerun: Some(rerun),
            stop,
        });
        let health = crate::health::router(crate::health::HealthState::new().store(events.clone()));
        let pipelines = super::pipelines::router(super::pipelines::PipelinesState {
            store: events.clone(),
            pipelines,
        });
        Ok(Surface {
            metrics,
            history: history.merge(pipelines),
            scrape: super::metrics::router(state),
            ui: super::ui::router(),
            health,
            engine,
            client,
        })
    }

    /// The routes that need the token, and those served without it: the history API always needs it,
    /// `/metrics` unless `metrics_public`; the UI's static assets never do. Health is not in either (see
    /// [`Surface::health`]).
    pub fn split(&self, metrics_public: bool) -> (Router, Router) {
        if metrics_public {
            (
                self.history.clone(),
                self.scrape.clone().merge(self.ui.clone()),
            )
        } else {
            (
                self.history.clone().merge(self.scrape.clone()),
                self.ui.clone(),
            )
        }
    }

    /// Everything on one port of its own (`fm operator --http-bind`, `fm history serve`): the history
    /// API and `/metrics` behind `guard`, the UI's assets, `/healthz` and `/readyz` open for probes.
    pub fn app(&self, guard: &super::auth::Guard, metrics_public: bool) -> Router {
        let (protected, public) = self.split(metrics_public);
        guard
            .protect(protected)
            .merge(public)
            .merge(self.health.clone())
    }

    /// Tells the metrics which engine runs the runs (for the runs-in-flight gauge).
    pub fn engine_started(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// Gives `POST /api/v1/runs/{runId}/rerun` the client it creates PipelineRuns with.
    pub fn client_ready(&self, client: kube::Client) {
        let _ = self.client.set(client);
    }
}

/// Reruns on the engine in `slot`, once it is there.
fn engine_slot_rerunner(slot: Arc<OnceLock<Engine>>) -> Rerunner {
    Arc::new(
        move |old: RunState, options: RerunOptions| match slot.get() {
            Some(engine) => crate::history::rerun::engine_rerunner(engine.clone())(old, options),
            None => Box::pin(async move {
                Err(RerunError::Start {
                    run: old.run_id,
                    message: "the engine is not up yet".into(),
                })
            }),
        },
    )
}

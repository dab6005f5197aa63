//! The HTTP endpoints `fm serve` and `fm operator` share: the history API over the event log, `/metrics`
//! (engine, event log, triggers), `/healthz` and `/readyz`. One place builds them, so both commands
//! expose the same thing.

use std::sync::{Arc, OnceLock};

use axum::Router;
use flowmason_actors::Engine;
use flowmason_store::EventStore;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, MetricsError};

/// The routers and the metrics they expose.
pub struct Surface {
    pub metrics: Arc<Metrics>,
    /// History and metrics routes.
    pub router: Router,
    /// `/healthz` and `/readyz` (the event log must answer); `fm serve`'s API server has its own.
    pub health: Router,
    engine: Arc<OnceLock<Engine>>,
    /// The client reruns create their PipelineRuns with (set by [`Surface::client_ready`]).
    client: Arc<OnceLock<kube::Client>>,
}

impl Surface {
    /// Builds the routes over `events` and connects the event log's write cycles to the metrics.
    pub fn new(events: &EventStore, stop: CancellationToken) -> Result<Surface, MetricsError> {
        let metrics = Arc::new(Metrics::new()?);
        events.observe_writes(metrics.store_observer());
        // The engine is created later (it needs a Kubernetes client): the scrape reads it once there.
        let engine: Arc<OnceLock<Engine>> = Arc::new(OnceLock::new());
        let state = super::metrics::MetricsState::new(metrics.clone())
            .with_store(events.clone())
            .with_engine_slot(engine.clone());
        let client: Arc<OnceLock<kube::Client>> = Arc::new(OnceLock::new());
        let history = super::history::router(super::history::HistoryState {
            store: events.clone(),
            // Reruns are PipelineRuns created through the API (the operator starts them).
            rerun: Some(crate::history::rerun::api_rerunner(client.clone())),
            stop,
        });
        let health = super::health::router(super::health::HealthState::new().store(events.clone()));
        let router = history.merge(super::metrics::router(state));
        Ok(Surface {
            metrics,
            router,
            health,
            engine,
            client,
        })
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

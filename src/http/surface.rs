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
}

impl Surface {
    /// Builds the routes over `events` and connects the event log's write cycles to the metrics.
    pub fn new(events: &EventStore, stop: CancellationToken) -> Result<Surface, MetricsError> {
        let metrics = Arc::new(Metrics::new()?);
        events.observe_writes(metrics.store_observer());
        // The engine is created later (it needs a Kubernetes client): the scrape reads it once there.
        let engine: Arc<OnceLock<Engine>> = Arc::new(OnceLock::new());
        let mut state = super::metrics::MetricsState::new(metrics.clone());
        let scraped = engine.clone();
        state.refresh.push(Arc::new(move |m: &Metrics| {
            if let Some(engine) = scraped.get() {
                m.set_runs_in_flight(engine.running());
            }
        }));
        let log = events.clone();
        state.refresh.push(Arc::new(move |m: &Metrics| {
            if let Ok(bytes) = log.size_on_disk() {
                m.set_event_log_size(bytes);
            }
        }));
        let history = super::history::router(super::history::HistoryState {
            store: events.clone(),
            rerun: None,
            stop,
        });
        let health = super::health::router(super::health::HealthState::new().store(events.clone()));
        let router = history.merge(super::metrics::router(state));
        Ok(Surface {
            metrics,
            router,
            health,
            engine,
        })
    }

    /// Tells the metrics which engine runs the runs (for the runs-in-flight gauge).
    pub fn engine_started(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }
}

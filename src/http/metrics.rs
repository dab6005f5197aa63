//! `GET /metrics`: the Prometheus text exposition of [`crate::metrics::Metrics`]. Gauges that are read
//! rather than counted (runs in flight, event log size) are refreshed by the scrape itself.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;

/// Sets read-at-scrape gauges just before the families are gathered.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What `/metrics` serves.
#[derive(Clone)]
pub struct MetricsState {
    pub metrics: Arc<Metrics>,
    pub refresh: Vec<Refresh>,
}

impl MetricsState {
    pub fn new(metrics: Arc<Metrics>) -> MetricsState {
        MetricsState {
            metrics,
            refresh: Vec::new(),
        }
    }

    /// Refreshes the runs-in-flight gauge from `engine` and the log size from its store at each scrape.
    pub fn with_engine(self, engine: flowmason_actors::Engine) -> MetricsState {
        let store = engine.store().clone();
        let slot = Arc::new(OnceLock::new());
        let _ = slot.set(engine);
        self.with_store(store).with_engine_slot(slot)
    }

    /// Refreshes the event log's size from `store` at each scrape.
    pub fn with_store(mut self, store: flowmason_store::EventStore) -> MetricsState {
        self.refresh.push(Arc::new(move |m: &Metrics| {
            if let Ok(bytes) = store.size_on_disk() {
                m.set_event_log_size(bytes);
            }
        }));
        self
    }

    /// Refreshes the runs-in-flight gauge from the engine in `slot` once there is one (for routes built
    /// before the engine, which `fm serve` and `fm operator` create after their Kubernetes client).
    pub fn with_engine_slot(
        mut self,
        slot: Arc<OnceLock<flowmason_actors::Engine>>,
    ) -> MetricsState {
        self.refresh.push(Arc::new(move |m: &Metrics| {
            if let Some(engine) = slot.get() {
                m.set_runs_in_flight(engine.running());
            }
        }));
        self
    }
}

pub fn router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

async fn scrape(State(state): State<MetricsState>) -> Response {
    for refresh in &state.refresh {
        refresh(&state.metrics);
    }
    match state.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

//! `GET /healthz` (the process answers) and `GET /readyz` (every readiness check passes). The checks
//! are pluggable: `fm history serve` checks its event log; `fm serve` and `fm operator` add the API
//! server and the leader state.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::json;

/// One readiness check: `Ok` when ready, else why not.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The named readiness checks of `/readyz`.
#[derive(Clone, Default)]
pub struct HealthState {
    checks: Vec<(String, Check)>,
}

impl std::fmt::Debug for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Longest a check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl HealthState {
    pub fn new() -> HealthState {
        HealthState::default()
    }

    /// Adds a named check.
    pub fn check(mut self, name: impl Into<String>, check: Check) -> HealthState {
        self.checks.push((name.into(), check));
        self
    }

    /// The event log can write (no write, flush or sync of it has failed: see
    /// `EventStore::write_failure`) and answers reads (it is open and its files are readable).
    pub fn store(self, store: flowmason_store::EventStore) -> HealthState {
        self.check(
            "eventLog",
            Arc::new(move || {
                let store = store.clone();
                Box::pin(async move {
                    // A failed store is not read: sled may be stuck behind the failed write.
                    if let Some(failure) = store.write_failure() {
                        return Err(format!("event log cannot write: {failure}"));
                    }
                    tokio::task::spawn_blocking(move || store.unfinished_runs().map(drop))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("event log: {e}"))
                })
            }),
        )
    }

    /// Runs every check; the names of the failed ones with their reasons.
    pub async fn failures(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for (name, check) in &self.checks {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => failed.push((name.clone(), reason)),
                Err(_) => failed.push((name.clone(), format!("no answer in {CHECK_TIMEOUT:?}"))),
            }
        }
        failed
    }
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn ready(State(state): State<HealthState>) -> Response {
    respond(&state).await
}

/// The `/readyz` answer: 200 when every check passes, else 503 naming each failed check and why.
pub async fn respond(state: &HealthState) -> Response {
    let failed = state.failures().await;
    if failed.is_empty() {
        return (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response();
    }
    let checks: serde_json::Map<String, serde_json::Value> = failed
        .into_iter()
        .map(|(name, reason)| (name, json!(reason)))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "not ready", "failed": checks })),
    )
        .into_response()
}

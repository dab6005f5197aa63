//! FlowMason's own HTTP endpoints, each a standalone axum [`Router`] so that `fm serve`, `fm operator`
//! and `fm history serve` mount the same code:
//!
//! - [`history`]: `/api/v1/runs...` and `/api/v1/pipelines/{ns}/{name}/stats`, over the event log;
//! - [`pipelines`]: `/api/v1/pipelines...` and `/api/v1/runs/{runId}/cancel`, what the web UI needs
//!   beyond the history (through the Kubernetes client where there is one);
//! - [`ui`]: the web UI under `/ui/`, its assets compiled into the binary;
//! - [`metrics`]: `/metrics`, the Prometheus text exposition;
//! - [`health`]: `/healthz` and `/readyz`, with pluggable readiness checks;
//! - [`surface`]: all of the above as `fm serve` and `fm operator` mount them;
//! - [`api_rerun`]: the rerun of `fm serve` and `fm operator`, a PipelineRun created through the API;
//! - [`auth`]: the bearer token in front of run data on the ports outside `fm serve`.

pub mod api_rerun;
pub mod auth;
pub mod history;
pub mod metrics;
pub mod pipelines;
pub mod surface;
pub mod ui;

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A router serving on a bound listener until `stop` is cancelled.
pub struct Served {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `router` on `listener` (HTTP/1.1) until `stop` is cancelled; in-flight streams end with it.
pub fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<Served> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(Served { addr, task })
}

//! `fm serve`: the embedded default. One process: the Kubernetes-compatible API (see
//! `crate::apiserver`), the triggers (cron, NATS with `--nats`, webhooks under `/webhooks/`), and the
//! Pipeline and PipelineRun controllers with the engine (see `crate::operator`), the event log in
//! DATA_DIR/events, and the history API and web UI (`/ui/`; run data behind the bearer token). The controllers talk to the API over HTTP like any client, so they behave exactly as
//! `fm operator` does against a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{ApiConfig, ServeConfig, Server};
use crate::components::builtin_registry;
use crate::operator::{Operator, OperatorConfig};

use super::stopping::{self, FailureCheck};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory holding the API store (DATA_DIR/api), the event log (DATA_DIR/events) and the
    /// kubeconfig (default: $FM_DATA_DIR, else ~/.local/share/flowmason).
    #[arg(long, env = "FM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve on; port 0 picks a free port. Any non-loopback address requires the bearer
    /// token written into the kubeconfig.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub bind: SocketAddr,
    /// Serve HTTPS with a self-signed certificate kept in DATA_DIR/api (its CA goes into the kubeconfig).
    #[arg(long)]
    pub tls: bool,
    /// Require the bearer token on a loopback address too (kubectl sends it only over HTTPS: use it
    /// with --tls).
    #[arg(long)]
    pub require_token: bool,
    /// Serve `/metrics` without the token (for a Prometheus that cannot send one); everything else
    /// that shows run data still needs it whenever the token is required.
    #[arg(long)]
    pub metrics_public: bool,
    /// Largest request body accepted (bytes); larger ones are answered 413.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How many recent changes a watch can resume from (older resourceVersions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    pub watch_history: u64,
    /// Longest a watch stays open, in seconds (clients re-watch transparently).
    #[arg(long, default_value_t = 1800)]
    pub max_watch_seconds: u64,
    #[command(flatten)]
    pub triggers: super::TriggerArgs,
    #[command(flatten)]
    pub capacity: super::CapacityArgs,
    /// When appended run events reach the disk: always, batch (group commit; terminal events always
    /// durable) or never.
    #[arg(long, default_value = "batch")]
    pub durability: flowmason_store::Durability,
    #[command(flatten)]
    pub event_log: super::EventLogArgs,
    /// Least time between two status writes of one run, in milliseconds (phase changes and the final
    /// status are written at once).
    #[arg(long, default_value_t = 250)]
    pub status_interval_ms: u64,
    /// Serve the API (and triggers) only, without controllers and engine (e.g. for `fm operator`
    /// replicas against it).
    #[arg(long)]
    pub no_controllers: bool,
}

/// Waits for Ctrl-C or SIGTERM (how Kubernetes and test harnesses stop a process).
pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    Ok(())
}

/// Why a token-protected server over plain HTTP is refused: client-go (kubectl) never sends a bearer
/// token over `http://`, so every kubectl command would get 401, and the token would cross the network
/// in clear. `None` when the combination is usable.
fn plaintext_token_refusal(bind: SocketAddr, tls: bool, require_token: bool) -> Option<String> {
    if tls {
        return None;
    }
    let why = if require_token {
        "--require-token".to_string()
    } else if !bind.ip().is_loopback() {
        format!("--bind {bind} (not a loopback address, so the token is required)")
    } else {
        return None;
    };
    Some(format!(
        "{why} needs --tls: kubectl never sends a bearer token over plain HTTP (it would get 401 for \
         every request) and the token would cross the network in clear; add --tls (the kubeconfig \
         then carries the CA), or bind 127.0.0.1 without --require-token"
    ))
}

pub fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    if let Some(refusal) = plaintext_token_refusal(args.bind, args.tls, args.require_token) {
        anyhow::bail!(refusal);
    }
    // The data dir holds Secrets (the API store) and the token: nothing in it is for other users.
    crate::apiserver::private::private_umask();
    let store_args = super::StoreArgs {
        data_dir: args.data_dir.clone(),
        durability: args.durability,
        event_log: args
            .event_log
            .with_nats_fallback(args.triggers.nats.as_deref()),
    };
    let data_dir = store_args.data_dir()?;
    let webhooks = args.triggers.webhook_mount();
    // The event log, shared by the engine and the history API (`/api/v1/runs/...`, served next to the
    // Kubernetes API; reruns are PipelineRun objects the operator starts).
    let events = store_args.open()?;
    let watched_events = events.clone();
    let stop = CancellationToken::new();
    // History API, /metrics, /healthz and /readyz, served next to the Kubernetes API.
    let surface = crate::http::surface::Surface::new(
        &events,
        crate::http::surface::Reruns::Api,
        stop.clone(),
    )
    .context("cannot set up /metrics")?;
    let (protected, public) = surface.split(args.metrics_public);
    let public = if args.triggers.no_triggers {
        public
    } else {
        webhooks.router().merge(public)
    };
    let config = ServeConfig {
        routes: Some(protected),
        public_routes: Some(public),
        bind: args.bind,
        tls: args.tls,
        require_token: args.require_token,
        watch_history: args.watch_history,
        api: ApiConfig {
            max_body_bytes: args.max_body_bytes,
            max_watch: Duration::from_secs(args.max_watch_seconds.max(1)),
            ..ApiConfig::default()
        },
        readiness: crate::health::HealthState::new().store(events.clone()),
        ..ServeConfig::new(data_dir.clone())
    };
    let mut operator_config = OperatorConfig {
        write_interval: Duration::from_millis(args.status_interval_ms),
        capacity: args.capacity.capacity()?,
        metrics: Some(surface.metrics.clone()),
        ..OperatorConfig::default()
    };
    crate::runtime::block_on(|| async move {
        let server = Server::start(config)
            .await
            .context("cannot start the API server")?;
        let client = kube::Client::try_from(
            server
                .client_config()
                .await
                .context("cannot read the kubeconfig just written")?,
        )
        .context("cannot build a client of the embedded API server")?;
        surface.client_ready(client.clone());
        // With the controllers running, the Pipeline controller owns the triggers (armed on every
        // observed Pipeline, disarmed on delete); without them, a watch of their own drives them.
        let triggers = if args.triggers.no_triggers {
            None
        } else {
            let triggers = args.triggers.start(client.clone(), webhooks).await?;
            triggers.metrics().forward_to(surface.metrics.clone());
            operator_config.observer = triggers
                .nats_client()
                .map(crate::triggers::lifecycle::publisher);
            if args.no_controllers {
                Some(tokio::spawn(triggers.watch(stop.clone())))
            } else {
                operator_config.triggers = Some(triggers);
                None
            }
        };
        let operator = if args.no_controllers {
            None
        } else {
            let operator = Operator::new(client, events, builtin_registry(), operator_config);
            surface.engine_started(operator.engine().clone());
            let stop = stop.clone();
            Some(actix::spawn(async move { operator.run(stop).await }))
        };
        super::announce(&[
            format!("FlowMason API server listening on {}", server.url()),
            // Like Jupyter's login link: the page keeps the token for the session and drops it from
            // the URL.
            format!("web UI: {}/ui/?token={}", server.url(), server.token()),
            // Last: scripts (and the tests) read up to this line and may stop reading there.
            format!("export KUBECONFIG={}", server.kubeconfig_path().display()),
        ]);
        let api_store = server.store().clone();
        let stores: Vec<FailureCheck> = vec![
            Box::new(move || {
                api_store
                    .write_failure()
                    .map(|e| format!("API store cannot write: {e}"))
            }),
            Box::new(move || {
                watched_events
                    .write_failure()
                    .map(|e| format!("event log cannot write: {e}"))
            }),
        ];
        let reason = stopping::wait_for_stop(stores, data_dir).await?;
        let code = reason.exit_code();
        stopping::exit_after(stopping::SHUTDOWN_GRACE, code);
        eprintln!("shutting down");
        stop.cancel();
        if let Some(operator) = operator {
            match tokio::time::timeout(Duration::from_secs(10), operator).await {
                Ok(Ok(Err(e))) => eprintln!("operator: {e}"),
                Ok(_) => {}
                Err(_) => eprintln!("operator: did not stop within 10s"),
            }
        }
        if let Some(t) = triggers {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        server.shutdown().await;
        Ok(code)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_token_over_plain_http_is_refused_with_the_fix() {
        let loopback: SocketAddr = "127.0.0.1:6443".parse().expect("address");
        let any: SocketAddr = "0.0.0.0:6443".parse().expect("address");
        assert_eq!(plaintext_token_refusal(loopback, false, false), None);
        assert_eq!(plaintext_token_refusal(loopback, true, true), None);
        assert_eq!(plaintext_token_refusal(any, true, false), None);
        for (bind, require) in [(loopback, true), (any, false)] {
            let refusal = plaintext_token_refusal(bind, false, require).expect("refused");
            assert!(refusal.contains("add --tls"), "{refusal}");
        }
    }
}

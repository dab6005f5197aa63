//! `fm operator`: the controllers and the engine against a cluster (kubeconfig or in-cluster config), with
//! several replicas either sharing the runs by shards (`--event-log jetstream`: every replica active on the
//! shards it holds) or electing one leader (`--event-log sled`), so that no run is run by two; the triggers
//! (cron, NATS, webhooks on `--webhook-bind`), and the history API, the web UI (`/ui/`, reading Pipelines
//! through this process's own client), `/metrics` and health on `--http-bind`. See docs/operator.md,
//! "Replicas".

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::stopping::{self, FailureCheck, StopReason};
use super::{EventLogKind, StoreArgs};
use crate::components::builtin_registry;
use crate::operator::leader::LeaseConfig;
use crate::operator::shards::{Ownership, ShardLeaseConfig, ShardLeases};
use crate::operator::{Operator, OperatorConfig};

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Namespace of the leader-election Lease, or of the shard and replica Leases (default:
    /// $POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "flowmason-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal (a crashed leader is replaced after this).
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u32,
    /// Run without leader election or shards (only when exactly one replica runs).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Shards the runs are split over when the replicas share them (`--event-log jetstream` with leader
    /// election). Recorded in the event log: every replica must use the same count.
    #[arg(long, env = "FM_SHARDS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
    /// Least time between two status writes of one run, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub status_interval_ms: u64,
    /// Address of the history API, the web UI (/ui/), /metrics, /healthz and /readyz (the Service's
    /// `metrics` port).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub http_bind: std::net::SocketAddr,
    #[command(flatten)]
    pub http_auth: super::HttpAuthArgs,
    /// Address of the trigger webhooks (the Service's `webhooks` port).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub webhook_bind: std::net::SocketAddr,
    #[command(flatten)]
    pub triggers: super::TriggerArgs,
    #[command(flatten)]
    pub capacity: super::CapacityArgs,
}

/// A kube client from a kubeconfig path and context, or the default chain (`$KUBECONFIG`,
/// `~/.kube/config`, in-cluster).
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("kubeconfig {}: cannot use it", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("cannot use the default kubeconfig")?,
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

pub fn operator(args: OperatorArgs) -> anyhow::Result<i32> {
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fm".into());
        format!("{host}-{}", std::process::id())
    });
    // Sharded: every replica active on its shards, no leader (docs/operator.md, "Replicas").
    let sharded =
        !args.no_leader_election && args.store.event_log.event_log == EventLogKind::Jetstream;
    let lease = (!args.no_leader_election && !sharded).then(|| LeaseConfig {
        duration_secs: args.lease_seconds.max(1),
        name: args.lease_name.clone(),
        ..LeaseConfig::new(args.lease_namespace.clone(), identity.clone())
    });
    let guard = args.http_auth.guard("--http-bind", args.http_bind)?;
    let events = super::StoreArgs {
        event_log: args
            .store
            .event_log
            .with_nats_fallback(args.triggers.nats.as_deref()),
        ..args.store.clone()
    }
    .open()?;
    let shards = if sharded {
        // Replicas with different counts would map runs to different shards: refused, naming both.
        events
            .claim_setting("shards", &args.shards.to_string())
            .with_context(|| format!("--shards {}", args.shards))?;
        let (ownership, sender) = Ownership::manual(identity.clone(), args.shards);
        let config = ShardLeaseConfig {
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            duration_secs: args.lease_seconds.max(1),
            count: args.shards,
            session: None,
        };
        Some((ownership, sender, config))
    } else {
        None
    };
    let data_dir = args.store.data_dir()?;
    let stop = CancellationToken::new();
    let surface = crate::http::surface::Surface::new(
        &events,
        crate::http::surface::Reruns::Api,
        stop.clone(),
    )
    .context("cannot set up /metrics")?;
    let mut config = OperatorConfig {
        write_interval: Duration::from_millis(args.status_interval_ms),
        capacity: args.capacity.capacity()?,
        lease,
        metrics: Some(surface.metrics.clone()),
        ownership: shards.as_ref().map(|(ownership, _, _)| ownership.clone()),
        ..OperatorConfig::default()
    };
    crate::runtime::block_on(|| async move {
        let client = client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        surface.client_ready(client.clone());
        let http = tokio::net::TcpListener::bind(args.http_bind)
            .await
            .with_context(|| format!("--http-bind {}: cannot listen", args.http_bind))?;
        let served = crate::http::serve(
            http,
            surface.app(&guard, args.http_auth.metrics_public),
            stop.clone(),
        )
        .with_context(|| format!("--http-bind {}: cannot serve", args.http_bind))?;
        eprintln!(
            "history API, web UI (/ui/), /metrics, /healthz and /readyz on http://{}",
            served.addr
        );
        let triggers = if args.triggers.no_triggers {
            None
        } else {
            let webhooks = args.triggers.webhook_mount();
            let listener = tokio::net::TcpListener::bind(args.webhook_bind)
                .await
                .with_context(|| format!("--webhook-bind {}: cannot listen", args.webhook_bind))?;
            let served = crate::http::serve(listener, webhooks.router(), stop.clone())
                .with_context(|| format!("--webhook-bind {}: cannot serve", args.webhook_bind))?;
            eprintln!("webhooks on http://{}", served.addr);
            let triggers = args.triggers.start(client.clone(), webhooks).await?;
            triggers.metrics().forward_to(surface.metrics.clone());
            config.observer = triggers
                .nats_client()
                .map(crate::triggers::lifecycle::publisher);
            if config.lease.is_some() {
                // Every replica answers webhooks and shares the NATS consumers, not only the leader
                // running the controllers: the triggers keep a watch of their own. (Sharded, every
                // replica runs the controllers, and the Pipeline controller arms the triggers.)
                Some(tokio::spawn(triggers.watch(stop.clone())))
            } else {
                config.triggers = Some(triggers);
                None
            }
        };
        let operator = Operator::new(client.clone(), events, builtin_registry(), config);
        surface.engine_started(operator.engine().clone());
        // Started once the engine's session is known: every Lease held carries it.
        let shard_leases = shards.map(|(_, sender, config)| {
            let config = ShardLeaseConfig {
                session: operator.engine().session_id(),
                ..config
            };
            ShardLeases::start(client, config, sender, Some(surface.metrics.clone()))
        });
        let signal_stop = stop.clone();
        let watched_events = operator.engine().store().clone();
        let stopped = actix::spawn(async move {
            let stores: Vec<FailureCheck> = vec![Box::new(move || {
                watched_events
                    .write_failure()
                    .map(|e| format!("event log cannot write: {e}"))
            })];
            let reason = tokio::select! {
                reason = stopping::wait_for_stop(stores, data_dir) => reason,
                // The operator stopped on its own: nothing to wait for.
                () = signal_stop.cancelled() => return 0,
            };
            let code = reason.as_ref().map_or(0, StopReason::exit_code);
            stopping::exit_after(stopping::SHUTDOWN_GRACE, code);
            signal_stop.cancel();
            code
        });
        eprintln!("FlowMason operator started");
        let ran = operator.run(stop.clone()).await;
        // After the engine's graceful shutdown: the shards are released for the others to take at once.
        if let Some(leases) = shard_leases {
            leases.stop().await;
        }
        ran?;
        stop.cancel();
        if let Some(t) = triggers {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        eprintln!("FlowMason operator stopped");
        Ok(stopped.await.unwrap_or(0))
    })?
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::Cli;

    #[test]
    fn a_shard_count_of_zero_is_refused_naming_the_flag() {
        let error = Cli::try_parse_from(["fm", "operator", "--shards", "0"])
            .expect_err("zero shards is refused");
        assert!(error.to_string().contains("--shards"), "{error}");
        assert!(Cli::try_parse_from(["fm", "operator", "--shards", "8"]).is_ok());
    }
}

//! `fm operator`: the controllers and the engine against a cluster (kubeconfig or in-cluster config), with
//! Lease leader election so that several replicas never run the same runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::StoreArgs;
use super::serve::wait_for_signal;
use crate::components::builtin_registry;
use crate::operator::leader::LeaseConfig;
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
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else `default`).
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
    /// Run without leader election (only when exactly one replica runs).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Least time between two status writes of one run, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub status_interval_ms: u64,
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
    let lease = (!args.no_leader_election).then(|| LeaseConfig {
        duration_secs: args.lease_seconds.max(1),
        name: args.lease_name.clone(),
        ..LeaseConfig::new(args.lease_namespace.clone(), identity)
    });
    let config = OperatorConfig {
        write_interval: Duration::from_millis(args.status_interval_ms),
        lease,
        ..OperatorConfig::default()
    };
    let events = args.store.open()?;
    crate::runtime::block_on(|| async move {
        let client = client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        let operator = Operator::new(client, events, builtin_registry(), config);
        let stop = CancellationToken::new();
        let signal_stop = stop.clone();
        actix::spawn(async move {
            if wait_for_signal().await.is_ok() {
                signal_stop.cancel();
            }
        });
        eprintln!("FlowMason operator started");
        operator.run(stop).await?;
        eprintln!("FlowMason operator stopped");
        Ok(0)
    })?
}

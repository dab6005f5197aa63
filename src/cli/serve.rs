//! `fm serve`: the embedded default. Today it serves the Kubernetes-compatible API (see
//! `crate::apiserver`); the controllers and the engine join it in the same process through
//! [`crate::apiserver::Server`], which runs on the caller's runtime.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::apiserver::{ApiConfig, ServeConfig, Server};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory holding the API store (DATA_DIR/api) and the kubeconfig (default: $FM_DATA_DIR, else
    /// ~/.local/share/flowmason).
    #[arg(long, env = "FM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve on; port 0 picks a free port. Any non-loopback address requires the bearer
    /// token written into the kubeconfig.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub bind: SocketAddr,
    /// Serve HTTPS with a self-signed certificate kept in DATA_DIR/api (its CA goes into the kubeconfig).
    #[arg(long)]
    pub tls: bool,
    /// Require the bearer token on a loopback address too.
    #[arg(long)]
    pub require_token: bool,
    /// Largest request body accepted (bytes); larger ones are answered 413.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How many recent changes a watch can resume from (older resourceVersions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    pub watch_history: u64,
    /// Longest a watch stays open, in seconds (clients re-watch transparently).
    #[arg(long, default_value_t = 1800)]
    pub max_watch_seconds: u64,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let data_dir = super::StoreArgs {
        data_dir: args.data_dir.clone(),
        durability: flowmason_store::Durability::Batch,
    }
    .data_dir()?;
    let config = ServeConfig {
        bind: args.bind,
        tls: args.tls,
        require_token: args.require_token,
        watch_history: args.watch_history,
        api: ApiConfig {
            max_body_bytes: args.max_body_bytes,
            max_watch: Duration::from_secs(args.max_watch_seconds.max(1)),
            ..ApiConfig::default()
        },
        ..ServeConfig::new(data_dir)
    };
    crate::runtime::block_on(|| async move {
        let server = Server::start(config)
            .await
            .context("cannot start the API server")?;
        println!("FlowMason API server listening on {}", server.url());
        println!("export KUBECONFIG={}", server.kubeconfig_path().display());
        std::io::stdout().flush().ok();
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        eprintln!("shutting down");
        server.shutdown().await;
        Ok(0)
    })?
}

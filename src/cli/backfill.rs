//! `fm backfill NAME --from T --to T`: creates the scheduled runs of a window (e.g. one the engine was
//! down for), named as the schedule names them, so instants that already ran are skipped; refuses
//! windows of more than `--max-runs` runs.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Args;

use crate::triggers::cron::{self, parse_instant};

#[derive(Args, Debug)]
pub struct BackfillArgs {
    /// The Pipeline.
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Window start (inclusive), RFC 3339 or YYYY-MM-DDTHH:MM (UTC).
    #[arg(long, value_parser = parse_instant)]
    pub from: DateTime<Utc>,
    /// Window end (inclusive).
    #[arg(long, value_parser = parse_instant)]
    pub to: DateTime<Utc>,
    /// Most runs one backfill may create.
    #[arg(long, default_value_t = 100)]
    pub max_runs: usize,
}

pub fn backfill(args: BackfillArgs) -> anyhow::Result<i32> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::runtime::block_on(|| async move {
        let client = kube::Client::try_default()
            .await
            .context("cannot build a Kubernetes client (KUBECONFIG or in-cluster)")?;
        let report = cron::backfill(
            &client,
            &args.namespace,
            &args.name,
            args.from,
            args.to,
            args.max_runs,
        )
        .await?;
        for run in &report.created {
            println!("created {run}");
        }
        for run in &report.deduplicated {
            println!("exists  {run}");
        }
        println!(
            "{} created, {} already existed",
            report.created.len(),
            report.deduplicated.len()
        );
        Ok(0)
    })?
}

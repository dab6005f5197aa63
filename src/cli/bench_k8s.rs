//! `fm bench k8s`: the operator path end to end, in one process: the embedded API server, the
//! controllers and the engine of `fm serve`, driven over HTTP by a kube client. Measures PipelineRun
//! created -> status Running latency (p50/p99), and how long a burst of queued runs takes to all end
//! Succeeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{ServeConfig, Server};
use crate::components::builtin_registry;
use crate::model::{Pipeline, PipelineRun, RunPhase};
use crate::operator::{Operator, OperatorConfig};

#[derive(Args, Debug)]
pub struct K8sBench {
    /// Runs created one at a time for the created -> Running latency.
    #[arg(long, default_value_t = 200)]
    pub latency_runs: usize,
    /// Runs created at once for the throughput figure.
    #[arg(long, default_value_t = 1000)]
    pub queued_runs: usize,
    /// Concurrent create requests while queueing.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// When each run was first seen past Pending, and first seen Succeeded.
type Sightings = HashMap<String, (Option<Instant>, Option<Instant>)>;

/// The `p`-th percentile (0..=100) of sorted durations (see [`super::bench::percentile`]).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    super::bench::percentile(sorted, p / 100.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn k8s(args: K8sBench) -> anyhow::Result<i32> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = dir.path().to_path_buf();
    crate::runtime::block_on(|| async move {
        let server = Server::start(ServeConfig::new(&data_dir))
            .await
            .context("cannot start the API server")?;
        let events = crate::cli::StoreArgs {
            data_dir: Some(data_dir.clone()),
            durability: flowmason_store::Durability::Batch,
            event_log: crate::cli::EventLogArgs::default(),
        }
        .open()?;
        let client = kube::Client::try_from(server.client_config().await?)?;
        let operator = Operator::new(
            client.clone(),
            events,
            builtin_registry(),
            OperatorConfig::default(),
        );
        let stop = CancellationToken::new();
        let running = actix::spawn({
            let stop = stop.clone();
            async move { operator.run(stop).await }
        });
        let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
        let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
        for (name, stages) in [
            // Long enough to be seen Running.
            (
                "bench-latency",
                json!([{"id": "wait", "componentType": "delay", "config": {"ms": 20}}]),
            ),
            ("bench-queue", json!([{"id": "a", "componentType": "noop"}])),
        ] {
            let p: Pipeline = serde_json::from_value(json!({
                "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
                "metadata": {"name": name}, "spec": {"stages": stages}
            }))?;
            pipelines.create(&PostParams::default(), &p).await?;
        }
        // One watch sees every status change; the first sighting of a phase per run is recorded.
        let seen: Arc<Mutex<Sightings>> = Arc::default();
        let watch = tokio::spawn({
            let seen = seen.clone();
            let runs = runs.clone();
            async move {
                let stream = watcher(runs, watcher::Config::default()).applied_objects();
                futures::pin_mut!(stream);
                while let Ok(Some(run)) = stream.try_next().await {
                    let now = Instant::now();
                    let phase = run.status.as_ref().and_then(|s| s.phase);
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = seen.entry(run.name_any()).or_default();
                    if matches!(phase, Some(p) if p != RunPhase::Pending) && entry.0.is_none() {
                        entry.0 = Some(now);
                    }
                    if phase == Some(RunPhase::Succeeded) && entry.1.is_none() {
                        entry.1 = Some(now);
                    }
                }
            }
        });
        let run_of = |name: String, pipeline: &str| -> anyhow::Result<PipelineRun> {
            Ok(serde_json::from_value(json!({
                "apiVersion": "flowmason.io/v1", "kind": "PipelineRun",
                "metadata": {"name": name}, "spec": {"pipelineRef": pipeline}
            }))?)
        };
        let wait_for = |names: Vec<String>, succeeded: bool| {
            let seen = seen.clone();
            async move {
                loop {
                    let done = {
                        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        names.iter().all(|n| {
                            seen.get(n).is_some_and(|e| {
                                if succeeded {
                                    e.1.is_some()
                                } else {
                                    e.0.is_some()
                                }
                            })
                        })
                    };
                    if done {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        // 1. Latency, one run at a time.
        let mut latencies = Vec::with_capacity(args.latency_runs);
        eprintln!("latency: {} runs, one at a time", args.latency_runs);
        for i in 0..args.latency_runs {
            let name = format!("lat-{i}");
            let run = run_of(name.clone(), "bench-latency")?;
            let created = Instant::now();
            runs.create(&PostParams::default(), &run).await?;
            tokio::time::timeout(Duration::from_secs(60), wait_for(vec![name.clone()], false))
                .await
                .with_context(|| format!("{name} never showed Running"))?;
            let at = seen
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .get(&name)
                .and_then(|e| e.0);
            latencies.push(at.map_or(Duration::ZERO, |t| t - created));
        }
        latencies.sort();
        // 2. A burst of queued runs until all succeeded.
        eprintln!("throughput: {} runs queued at once", args.queued_runs);
        let names: Vec<String> = (0..args.queued_runs).map(|i| format!("q-{i}")).collect();
        let start = Instant::now();
        futures::stream::iter(names.clone())
            .map(|name| {
                let runs = runs.clone();
                let run = run_of(name, "bench-queue");
                async move {
                    runs.create(&PostParams::default(), &run?)
                        .await
                        .map_err(anyhow::Error::from)
                }
            })
            .buffer_unordered(args.concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        let queued = start.elapsed();
        tokio::time::timeout(Duration::from_secs(600), wait_for(names, true))
            .await
            .context("the queued runs did not all succeed within 10 minutes")?;
        let total = start.elapsed();
        let failed = runs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Failed))
            .count();
        watch.abort();
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
        server.shutdown().await;
        let figures = json!({
            "latency_runs": args.latency_runs,
            "created_to_running_ms": {"p50": ms(percentile(&latencies, 50.0)), "p99": ms(percentile(&latencies, 99.0)),
                                       "max": ms(latencies.last().copied().unwrap_or_default())},
            "queued_runs": args.queued_runs,
            "queue_created_ms": ms(queued),
            "all_succeeded_ms": ms(total),
            "runs_per_second": args.queued_runs as f64 / total.as_secs_f64(),
            "failed": failed,
        });
        if args.json {
            println!("{figures}");
        } else {
            println!(
                "PipelineRun created -> Running: p50 {:.1} ms, p99 {:.1} ms (max {:.1} ms) over {} runs",
                figures["created_to_running_ms"]["p50"]
                    .as_f64()
                    .unwrap_or(0.0),
                figures["created_to_running_ms"]["p99"]
                    .as_f64()
                    .unwrap_or(0.0),
                figures["created_to_running_ms"]["max"]
                    .as_f64()
                    .unwrap_or(0.0),
                args.latency_runs
            );
            println!(
                "{} queued PipelineRuns -> all Succeeded: {:.0} ms ({:.0} runs/s; created in {:.0} ms), {} failed",
                args.queued_runs,
                ms(total),
                args.queued_runs as f64 / total.as_secs_f64(),
                ms(queued),
                failed
            );
        }
        Ok(0)
    })?
}

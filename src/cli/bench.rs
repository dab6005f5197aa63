//! `fm bench`: end-to-end load harnesses. `fm bench engine` pushes many runs of a synthetic pipeline shape
//! through the real engine and event log and reports throughput, per-stage overhead, run latency and memory.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use flowmason_actors::{Engine, EngineConfig, RunRequest};
use flowmason_store::{Durability, EventStore, RunPhase, StoreConfig};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::bench::Shape;
use crate::components::builtin_registry;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Runs of a synthetic pipeline through the engine with every event persisted.
    Engine(EngineBench),
    /// The operator path in one process (API server, controllers, engine): PipelineRun created ->
    /// Running latency and a burst of queued runs -> all Succeeded.
    K8s(super::bench_k8s::K8sBench),
}

#[derive(Args, Debug)]
pub struct EngineBench {
    /// Number of runs.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Pipeline shape: chain:N (a line of N stages), fanout:N (one source, N parallel stages, one join),
    /// diamond (a -> b, c -> d).
    #[arg(long, default_value = "chain:50")]
    pub shape: Shape,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Event log durability: always, batch or never.
    #[arg(long, default_value = "batch")]
    pub durability: Durability,
    /// Per-run stage parallelism cap.
    #[arg(long, default_value_t = 100)]
    pub parallelism: usize,
    /// Each stage sleeps this long (the `delay` component) instead of doing nothing (`noop`).
    #[arg(long, default_value_t = 0)]
    pub stage_ms: u64,
    /// Arbiter threads hosting run actors (0: the main one).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Keep the event log here instead of a temporary directory that is removed afterwards.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON line per run as soon as its end is reported (after its terminal event is durable).
    #[arg(long)]
    pub print_runs: bool,
    /// Print the figures as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    match args.target {
        BenchTarget::Engine(args) => engine(args),
        BenchTarget::K8s(args) => super::bench_k8s::k8s(args),
    }
}

fn engine(args: EngineBench) -> anyhow::Result<i32> {
    if args.runs == 0 || args.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    let temp;
    let dir = match &args.data_dir {
        Some(dir) => dir.join("events"),
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().join("events")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = EventStore::open(
        &dir,
        StoreConfig {
            durability: args.durability,
            ..StoreConfig::default()
        },
    )
    .with_context(|| format!("cannot open the event log in {}", dir.display()))?;
    let plan = args.shape.plan(args.parallelism, args.stage_ms);
    let stages_per_run = plan.stages.len();
    let baseline_rss = rss_kib("VmRSS");

    let (elapsed, mut latencies, failed) = crate::runtime::block_on({
        let store = store.clone();
        let workers = args.workers;
        let print_runs = args.print_runs;
        let (runs, concurrency) = (args.runs, args.concurrency);
        move || async move {
            let engine = Engine::new(
                store,
                builtin_registry(),
                EngineConfig {
                    workers,
                    ..EngineConfig::default()
                },
            );
            let started = Instant::now();
            let results: Vec<anyhow::Result<(Duration, RunPhase)>> = futures::stream::iter(0..runs)
                .map(|i| {
                    let engine = engine.clone();
                    let plan = plan.clone();
                    async move {
                        let t0 = Instant::now();
                        let request = RunRequest::new("bench", plan, json!({ "i": i }));
                        let state = engine.start(request).await?.finished().await?;
                        if print_runs {
                            // A reader that went away (a closed pipe) is no reason to stop the benchmark.
                            let line =
                                json!({ "runId": state.run_id.to_string(), "phase": state.phase });
                            let _ = writeln!(std::io::stdout().lock(), "{line}");
                        }
                        Ok((t0.elapsed(), state.phase))
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            let elapsed = started.elapsed();
            let mut latencies = Vec::with_capacity(runs);
            let mut failed = 0;
            for result in results {
                let (latency, phase) = result?;
                if phase != RunPhase::Succeeded {
                    failed += 1;
                }
                latencies.push(latency);
            }
            anyhow::Ok((elapsed, latencies, failed))
        }
    })??;
    store.flush().context("cannot flush the event log")?;

    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let stages = (args.runs * stages_per_run) as f64;
    let secs = elapsed.as_secs_f64();
    let peak_rss = rss_kib("VmHWM");
    let figures = json!({
        "shape": format!("{:?}", args.shape),
        "runs": args.runs,
        "stagesPerRun": stages_per_run,
        "concurrency": args.concurrency,
        "durability": args.durability.to_string(),
        "failedRuns": failed,
        "seconds": secs,
        "runsPerSecond": args.runs as f64 / secs,
        "stagesPerSecond": stages / secs,
        "stageTransitionsPerSecond": stages * 2.0 / secs,
        "microsPerStage": secs * 1e6 / stages,
        "latencyP50Ms": pct(0.50).as_secs_f64() * 1e3,
        "latencyP99Ms": pct(0.99).as_secs_f64() * 1e3,
        "peakRssKiB": peak_rss,
        "rssPerInFlightRunKiB": match (peak_rss, baseline_rss) {
            (Some(peak), Some(base)) => json!((peak.saturating_sub(base)) as f64 / args.concurrency.min(args.runs) as f64),
            _ => Value::Null,
        },
    });
    if args.json {
        println!("{figures}");
    } else {
        eprintln!(
            "{} runs of {:?} ({} stages each), concurrency {}, durability {}:\n  \
             {:.0} runs/s, {:.0} stages/s, {:.0} stage transitions/s, {:.2} us per stage\n  \
             run latency p50 {:.2} ms, p99 {:.2} ms; peak RSS {} KiB; failed runs {}",
            args.runs,
            args.shape,
            stages_per_run,
            args.concurrency,
            args.durability,
            args.runs as f64 / secs,
            stages / secs,
            stages * 2.0 / secs,
            secs * 1e6 / stages,
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            peak_rss
                .map(|k| k.to_string())
                .unwrap_or_else(|| "?".into()),
            failed,
        );
    }
    Ok(if failed == 0 {
        0
    } else {
        super::EXIT_RUN_FAILED
    })
}

/// A memory figure of this process from /proc (Linux), in KiB.
fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

//! `fm bench`: end-to-end load harnesses. `fm bench engine` pushes many runs of a synthetic pipeline shape
//! through the real engine and event log and reports throughput, per-stage overhead, run latency and memory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use flowmason_actors::{Engine, EngineConfig, RunRequest};
use std::collections::BTreeMap;

use flowmason_store::{
    Durability, Event, EventKind, EventStore, RunError, RunId, RunPhase, RunQuery, StoreConfig,
    Trigger,
};
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
    /// NATS publish -> PipelineRun Running latency through the pubsub trigger, against an in-process
    /// API server with the operator (controllers and engine) as `fm serve` runs them.
    Nats(NatsBench),
    /// Fills an event log with many finished runs and measures history queries on it.
    History(HistoryBench),
    /// Kills a process with many runs in flight (SIGKILL), restarts on its event log and measures how
    /// long resuming them takes; checks that none is lost or ends twice.
    Resume(super::bench_resume::ResumeBench),
}

#[derive(Args, Debug)]
pub struct NatsBench {
    /// NATS server with JetStream; default: start `nats-server -js` on a free loopback port.
    #[arg(long)]
    pub nats: Option<String>,
    /// Messages, published one at a time (each waits for its run to show Running).
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
}

#[derive(Args, Debug)]
pub struct HistoryBench {
    /// Runs to fill the log with (spread over 30 days, 4 namespaces x 50 pipelines).
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: usize,
    /// Times each query is repeated.
    #[arg(long, default_value_t = 200)]
    pub repeat: usize,
    /// Page size of the listings.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Keep the event log here instead of a temporary directory that is removed afterwards.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the figures as JSON instead of text.
    #[arg(long)]
    pub json: bool,
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
    #[command(flatten)]
    pub event_log: super::EventLogArgs,
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
    /// Print JSON lines per run: `{"runId","event":"started"}` once it is accepted and running, and
    /// `{"runId","event":"ended","phase"}` as soon as its end is reported (after its terminal event is
    /// durable). `fm bench resume` and the crash tests kill the process on these.
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
        BenchTarget::Nats(args) => nats(args),
        BenchTarget::History(args) => history(args),
        BenchTarget::Resume(args) => super::bench_resume::resume(args),
    }
}

/// The events of one synthetic finished run: accepted, started, then an end by `i`.
fn synthetic_run(i: usize, accepted_at: i64) -> (RunId, Vec<Event>) {
    let namespace = format!("ns-{}", i % 4);
    let pipeline = format!("pipeline-{}", (i / 4) % 50);
    let mut labels = BTreeMap::new();
    labels.insert("team".to_string(), ["a", "b", "c"][i % 3].to_string());
    let kind = |k: EventKind, seq: u64, at: i64| Event { seq, at, kind: k };
    // Phase and trigger vary independently of namespace and pipeline: every pipeline has 10% failed,
    // 5% cancelled and 85% succeeded runs, and every trigger.
    let end = match (i / 200) % 20 {
        0 | 1 => EventKind::RunFailed {
            error: RunError {
                message: "stage \"fetch\" failed: 503".into(),
                stage: Some("fetch".into()),
                details: Value::Null,
            },
        },
        2 => EventKind::RunCancelled {
            reason: String::new(),
        },
        _ => EventKind::RunSucceeded { output: json!({}) },
    };
    let run = RunId::from_u64_pair(accepted_at as u64, i as u64);
    let events = vec![
        kind(
            EventKind::RunAccepted {
                pipeline,
                namespace,
                generation: 1,
                trigger: Trigger::ALL[(i / 7) % 4],
                run_name: None,
                labels,
                plan: json!({}),
                inputs: json!({ "i": i }),
            },
            0,
            accepted_at,
        ),
        kind(EventKind::RunStarted, 1, accepted_at + 10),
        kind(end, 2, accepted_at + 1_000 + (i % 1000) as i64 * 1_000),
    ];
    (run, events)
}

/// Where a bench keeps its data: `given` (`--data-dir`), else a temporary directory that is removed
/// when the returned guard drops.
pub(super) fn data_dir(
    given: Option<&Path>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(dir) => Ok((dir.to_path_buf(), None)),
        None => {
            let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// Opens (creating) the event log under `data_dir/events`.
pub(super) fn open_events(data_dir: &Path, durability: Durability) -> anyhow::Result<EventStore> {
    let dir = data_dir.join("events");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    EventStore::open(
        &dir,
        StoreConfig {
            durability,
            ..StoreConfig::default()
        },
    )
    .with_context(|| format!("cannot open the event log in {}", dir.display()))
}

/// Microsecond latencies of `repeat` calls of `f`, sorted; with the result of the last call.
fn time_query<T>(
    repeat: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<f64>, T)> {
    let mut times = Vec::with_capacity(repeat);
    let mut last = f()?; // warm-up
    for _ in 0..repeat {
        let t0 = Instant::now();
        last = f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, last))
}

fn history(args: HistoryBench) -> anyhow::Result<i32> {
    if args.runs == 0 || args.repeat == 0 {
        bail!("--runs and --repeat must be at least 1");
    }
    let (data_dir, _temp) = data_dir(args.data_dir.as_deref())?;
    let store = open_events(&data_dir, Durability::Never)?;

    // Accepted times spread evenly over the last 30 days, oldest first.
    let now = crate::history::now_micros();
    let span: i64 = 30 * 86_400_000_000;
    let step = (span / args.runs as i64).max(1);
    let start = now - step * args.runs as i64;
    let fill_started = Instant::now();
    const BATCH: usize = 10_000;
    for first in (0..args.runs).step_by(BATCH) {
        let batch: Vec<(RunId, Vec<Event>)> = (first..(first + BATCH).min(args.runs))
            .map(|i| synthetic_run(i, start + i as i64 * step))
            .collect();
        store.import_runs(&batch).context("cannot import runs")?;
        if !args.json && first % 100_000 == 0 {
            eprint!("\rfilled {first} runs");
        }
    }
    store.flush().context("cannot flush the event log")?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    if !args.json {
        eprintln!("\rfilled {} runs in {fill_secs:.1} s", args.runs);
    }

    let limit = args.limit;
    let page = |q: RunQuery| {
        let store = store.clone();
        move || Ok(store.query(&RunQuery { limit, ..q.clone() })?)
    };
    let ns_pipeline_failed = RunQuery {
        namespace: Some("ns-1".into()),
        pipeline: Some("pipeline-7".into()),
        phases: vec![RunPhase::Failed],
        ..RunQuery::default()
    };
    let mut results = Vec::new();
    let mut record = |name: &str, times: Vec<f64>, rows: usize| {
        let pct = |q: f64| percentile(&times, q);
        results.push(json!({ "query": name, "rows": rows, "p50Us": pct(0.5), "p99Us": pct(0.99) }));
    };
    let (t, p) = time_query(args.repeat, page(ns_pipeline_failed.clone()))?;
    record(
        "namespace+pipeline+phase=Failed, first page",
        t,
        p.runs.len(),
    );
    let second = RunQuery {
        continue_token: p.continue_token.clone(),
        ..ns_pipeline_failed.clone()
    };
    let (t, p) = time_query(args.repeat, page(second))?;
    record(
        "namespace+pipeline+phase=Failed, next page",
        t,
        p.runs.len(),
    );
    let (t, p) = time_query(
        args.repeat,
        page(RunQuery {
            phases: vec![RunPhase::Failed, RunPhase::Cancelled],
            since: Some(now - 86_400_000_000),
            ..RunQuery::default()
        }),
    )?;
    record("phase=Failed,Cancelled since 24h", t, p.runs.len());
    let (t, p) = time_query(
        args.repeat,
        page(RunQuery {
            namespace: Some("ns-2".into()),
            trigger: Some(Trigger::Cron),
            ..RunQuery::default()
        }),
    )?;
    record("namespace+trigger=cron", t, p.runs.len());
    let (t, p) = time_query(args.repeat, page(RunQuery::default()))?;
    record("all runs, first page", t, p.runs.len());
    let (t, s) = time_query(args.repeat, || {
        Ok(crate::history::stats::pipeline_stats(
            &store,
            "ns-1",
            "pipeline-7",
            now - 86_400_000_000,
            now,
        )?)
    })?;
    record("pipeline stats over 24h", t, s.total as usize);

    let figures = json!({
        "runs": args.runs,
        "fillSeconds": fill_secs,
        "fillRunsPerSecond": args.runs as f64 / fill_secs,
        "limit": args.limit,
        "repeat": args.repeat,
        "queries": results,
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "{} runs filled in {fill_secs:.1} s ({:.0} runs/s); page size {}, {} repetitions:",
            args.runs,
            args.runs as f64 / fill_secs,
            args.limit,
            args.repeat
        );
        for r in &results {
            println!(
                "  {:<45} rows {:>5}  p50 {:>9.1} us  p99 {:>9.1} us",
                r["query"].as_str().unwrap_or_default(),
                r["rows"],
                r["p50Us"].as_f64().unwrap_or_default(),
                r["p99Us"].as_f64().unwrap_or_default()
            );
        }
    }
    Ok(0)
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank; the default (zero) of none.
pub(super) fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    match sorted.len() {
        0 => T::default(),
        n => sorted[(((n as f64 - 1.0) * q).round() as usize).min(n - 1)],
    }
}

fn engine(args: EngineBench) -> anyhow::Result<i32> {
    if args.runs == 0 || args.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    let (data_dir, _temp) = data_dir(args.data_dir.as_deref())?;
    let store = args
        .event_log
        .open(&data_dir.join("events"), args.durability)?;
    let plan = args.shape.plan(args.parallelism, args.stage_ms);
    let stages_per_run = plan.stages.len();
    let baseline_rss = rss_kib("VmRSS");
    // Every wait for durability (append until the log acknowledged it), in microseconds.
    let waits: Arc<Mutex<Vec<u64>>> = Arc::default();

    let (elapsed, mut latencies, failed) = crate::runtime::block_on({
        let store = store.clone();
        let waits = waits.clone();
        let workers = args.workers;
        let print_runs = args.print_runs;
        let (runs, concurrency) = (args.runs, args.concurrency);
        move || async move {
            let engine = Engine::new(
                store,
                builtin_registry(),
                EngineConfig {
                    workers,
                    durability_observer: Some(Arc::new(move |waited: Duration| {
                        if let Ok(mut waits) = waits.lock() {
                            waits.push(waited.as_micros() as u64);
                        }
                    })),
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
                        // A reader that went away (a closed pipe) is no reason to stop the benchmark.
                        let print = |line: Value| {
                            if print_runs {
                                let _ = writeln!(std::io::stdout().lock(), "{line}");
                            }
                        };
                        let handle = engine.start(request).await?;
                        print(json!({ "runId": handle.run_id.to_string(), "event": "started" }));
                        let state = handle.finished().await?;
                        print(json!({
                            "runId": state.run_id.to_string(),
                            "event": "ended",
                            "phase": state.phase,
                        }));
                        Ok((t0.elapsed(), state.phase))
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            let elapsed = started.elapsed();
            engine
                .shutdown()
                .context("cannot record the engine's shutdown in the event log and flush it")?;
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

    latencies.sort_unstable();
    let pct = |q: f64| percentile(&latencies, q);
    let mut waits = std::mem::take(&mut *waits.lock().unwrap_or_else(|p| p.into_inner()));
    waits.sort_unstable();
    let wait_ms = |q: f64| percentile(&waits, q) as f64 / 1e3;
    let stages = (args.runs * stages_per_run) as f64;
    let secs = elapsed.as_secs_f64();
    let peak_rss = rss_kib("VmHWM");
    let figures = json!({
        "shape": format!("{:?}", args.shape),
        "runs": args.runs,
        "stagesPerRun": stages_per_run,
        "concurrency": args.concurrency,
        "durability": args.durability.to_string(),
        "eventLog": store.backend(),
        "failedRuns": failed,
        "seconds": secs,
        "runsPerSecond": args.runs as f64 / secs,
        "stagesPerSecond": stages / secs,
        "stageTransitionsPerSecond": stages * 2.0 / secs,
        "microsPerStage": secs * 1e6 / stages,
        "latencyP50Ms": pct(0.50).as_secs_f64() * 1e3,
        "latencyP99Ms": pct(0.99).as_secs_f64() * 1e3,
        "durableWaits": waits.len(),
        "appendToDurableP50Ms": wait_ms(0.50),
        "appendToDurableP99Ms": wait_ms(0.99),
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
             run latency p50 {:.2} ms, p99 {:.2} ms; peak RSS {} KiB; failed runs {}\n  \
             append until durable ({} waits) p50 {:.2} ms, p99 {:.2} ms",
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
            waits.len(),
            wait_ms(0.50),
            wait_ms(0.99),
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

/// Kills the `nats-server` child the bench started.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats(args: NatsBench) -> anyhow::Result<i32> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Api;
    use kube::api::{PostParams, WatchEvent, WatchParams};

    use crate::model::{Pipeline, PipelineRun};
    use crate::triggers::nats::{NatsConnection, NatsOptions};
    use crate::triggers::{TriggerConfig, Triggers};

    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut _child = None;
    let url = match &args.nats {
        Some(u) => u.clone(),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("cannot find a free port")?
                .port();
            let store = dir.path().join("nats");
            let child = std::process::Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&store)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("cannot start nats-server (install it, or pass --nats URL)")?;
            _child = Some(Child(child));
            format!("nats://127.0.0.1:{port}")
        }
    };
    crate::runtime::block_on(|| async move {
        let server = crate::apiserver::Server::start(crate::apiserver::ServeConfig::new(
            dir.path().join("api"),
        ))
        .await
        .context("cannot start the API server")?;
        let client = kube::Client::try_from(server.client_config().await?)?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in [
            crate::model::crd_yaml::pipeline_crd(),
            crate::model::crd_yaml::pipelinerun_crd(),
        ] {
            crds.create(&PostParams::default(), &serde_json::from_value(crd)?)
                .await?;
        }
        // The controllers and the engine, as `fm serve` runs them (this closure runs on the actix
        // system thread `Operator::new` needs).
        let events = crate::cli::StoreArgs {
            data_dir: Some(dir.path().to_path_buf()),
            durability: flowmason_store::Durability::Batch,
            event_log: crate::cli::EventLogArgs::default(),
        }
        .open()?;
        let operator = crate::operator::Operator::new(
            client.clone(),
            events,
            builtin_registry(),
            crate::operator::OperatorConfig::default(),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let operator = actix::spawn({
            let stop = stop.clone();
            async move { operator.run(stop).await }
        });
        // A stage long enough for the Running status to be written before the run ends.
        let pipeline: Pipeline = serde_json::from_value(json!({
            "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {"stages": [{"id": "wait", "componentType": "delay", "config": {"ms": 20}}],
                     "triggers": {"pubsub": {"topic": "bench.in", "subscription": "bench"}}},
        }))?;
        let pipeline = Api::<Pipeline>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &pipeline)
            .await?;
        let mut options = NatsOptions::new(url.clone());
        options.batch = 1;
        let conn = NatsConnection::connect(options).await?;
        for _ in 0..200 {
            if conn.client.connection_state() == async_nats::connection::State::Connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let publisher = conn.client.clone();
        let triggers = Triggers::new(
            client.clone(),
            TriggerConfig {
                nats: Some(conn),
                ..TriggerConfig::default()
            },
        );
        triggers.apply(&pipeline);
        let js = async_nats::jetstream::new(publisher.clone());
        // The consumer exists once the stream holds it.
        for _ in 0..200 {
            if let Ok(s) = js.get_stream(crate::triggers::nats::DEFAULT_STREAM).await
                && s.get_consumer::<async_nats::jetstream::consumer::pull::Config>("bench")
                    .await
                    .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
        let list = runs.list(&Default::default()).await?;
        let version = list.metadata.resource_version.unwrap_or_default();
        let mut watch = runs
            .watch(&WatchParams::default().timeout(290), &version)
            .await?
            .boxed();
        let mut latencies = Vec::with_capacity(args.messages);
        // Runs already measured (their later status changes are ignored).
        let mut seen = std::collections::HashSet::new();
        for i in 0..args.messages {
            let start = Instant::now();
            js.publish("bench.in", format!("{{\"i\": {i}}}").into())
                .await
                .context("publish")?;
            // The run this message created is the first one seen Added; its end point is the first
            // status past Pending (Running is written as soon as the engine starts it).
            let mut this_run: Option<String> = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let event = tokio::time::timeout_at(deadline, watch.next())
                    .await
                    .with_context(|| format!("message {i}: no run showed Running within 60 s"))?;
                let run = match event {
                    Some(Ok(WatchEvent::Added(run) | WatchEvent::Modified(run))) => run,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("watching runs: {e}"),
                    None => bail!("the watch on runs ended"),
                };
                let name = run.metadata.name.clone().unwrap_or_default();
                if this_run.is_none() && !seen.contains(&name) {
                    this_run = Some(name.clone());
                }
                if this_run.as_deref() != Some(name.as_str()) {
                    continue;
                }
                let phase = run.status.as_ref().and_then(|s| s.phase);
                if matches!(phase, Some(p) if p != crate::model::RunPhase::Pending) {
                    seen.insert(name);
                    break;
                }
            }
            latencies.push(start.elapsed());
        }
        triggers.clear();
        // Let the runs end before the API server goes, so no status write is left failing.
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let all_ended = runs.list(&Default::default()).await.is_ok_and(|list| {
                    list.items.iter().all(|r| {
                        r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                            !matches!(
                                p,
                                crate::model::RunPhase::Pending | crate::model::RunPhase::Running
                            )
                        })
                    })
                });
                if all_ended {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if drained.is_err() {
            eprintln!("warning: some runs had not ended 60 s after the last message");
        }
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
        server.shutdown().await;
        latencies.sort();
        let pct =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "nats publish -> PipelineRun Running: {} messages, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.9).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3,
        );
        std::io::stdout().flush().ok();
        Ok(0)
    })?
}

//! Event append throughput of the sled event store under each durability policy.
//!
//! Every benchmark appends single stage events (a `StageStarted`/`StageSucceeded` pair per stage) to many
//! runs, the way the engine does, into a tempdir-backed store, and each iteration ends with everything
//! written to sled and flushed, so that the figure covers the whole way to disk, not just the write-behind
//! buffer. The target (BENCHMARKS.md): >= 500k events/s under `batch`; under `always`, one fsync per group of
//! concurrent appenders (group commit).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flowmason_store::{Durability, EventKind, EventStore, RunId, StoreConfig};
use serde_json::json;

/// Runs receiving events in one iteration under `always`; each gets one stage started and succeeded.
const RUNS: usize = 500;

/// The shapes of one iteration of the unwaited benchmarks: (runs, stages per run). Each makes 5,000 events
/// and then one flush, as one 5 ms batch window at 1M events/s does. 64 runs x 40 stages is how the
/// engine appends (64 runs in flight, each several stages into the window: events of one run share a
/// segment); 2,500 runs x 1 stage is the worst case for the write-behind buffer (one sled key per 2 events).
const SHAPES: [(usize, usize); 2] = [(64, 40), (2_500, 1)];
/// Concurrent appenders under `always`, each waiting on its receipt.
const APPENDERS: usize = 32;

fn open(durability: Durability, runs: usize) -> (tempfile::TempDir, EventStore, Vec<RunId>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(
        dir.path(),
        StoreConfig {
            durability,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let runs = (0..runs)
        .map(|_| {
            let run = RunId::now_v7();
            let accepted = EventKind::RunAccepted {
                pipeline: "bench".into(),
                namespace: "default".into(),
                generation: 1,
                trigger: Default::default(),
                run_name: None,
                labels: Default::default(),
                plan: json!({"stages": ["s"]}),
                inputs: json!({}),
            };
            let _ = store
                .append(run, vec![accepted, EventKind::RunStarted])
                .expect("accept");
            run
        })
        .collect();
    (dir, store, runs)
}

fn stage_pair(store: &EventStore, run: RunId, stage: &str) {
    let started = EventKind::StageStarted {
        stage: stage.to_string(),
        attempt: 1,
        input: serde_json::Value::Null,
    };
    black_box(
        store
            .append(run, vec![started])
            .expect("append")
            .must_wait(),
    );
    let succeeded = EventKind::StageSucceeded {
        stage: stage.to_string(),
        attempt: 1,
        output: json!({"n": 1}),
        skip: vec![],
        reused_from: None,
    };
    black_box(
        store
            .append(run, vec![succeeded])
            .expect("append")
            .must_wait(),
    );
}

fn unwaited(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (run_count, stages) in SHAPES {
        group.throughput(Throughput::Elements((2 * run_count * stages) as u64));
        for durability in [Durability::Batch, Durability::Never] {
            let (_dir, store, runs) = open(durability, run_count);
            let mut stage = 0u64;
            let name = format!("{durability}/{run_count}_runs_x_{stages}_stages");
            group.bench_function(name, |b| {
                b.iter(|| {
                    for _ in 0..stages {
                        stage += 1;
                        let name = format!("s{stage}");
                        for run in &runs {
                            stage_pair(&store, *run, &name);
                        }
                    }
                    store.flush().expect("flush");
                })
            });
        }
    }
    group.finish();
}

fn always(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("event_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    // Each appender appends and waits on `durable()` for every event of its runs.
    let per_appender = RUNS / APPENDERS;
    group.throughput(Throughput::Elements((2 * per_appender * APPENDERS) as u64));
    let (_dir, store, runs) = open(Durability::Always, RUNS);
    let mut stage = 0u64;
    group.bench_function(
        format!("always/{APPENDERS}_concurrent_durable_appenders"),
        |b| {
            b.iter_batched(
                || {
                    stage += 1;
                    format!("s{stage}")
                },
                |name| {
                    rt.block_on(async {
                        let tasks: Vec<_> = runs
                            .chunks(per_appender)
                            .take(APPENDERS)
                            .map(|chunk| {
                                let store = store.clone();
                                let chunk = chunk.to_vec();
                                let name = name.clone();
                                tokio::spawn(async move {
                                    for run in chunk {
                                        let started = EventKind::StageStarted {
                                            stage: name.clone(),
                                            attempt: 1,
                                            input: serde_json::Value::Null,
                                        };
                                        store
                                            .append_durable(run, vec![started])
                                            .await
                                            .expect("append");
                                        let succeeded = EventKind::StageSucceeded {
                                            stage: name.clone(),
                                            attempt: 1,
                                            output: json!({"n": 1}),
                                            skip: vec![],
                                            reused_from: None,
                                        };
                                        store
                                            .append_durable(run, vec![succeeded])
                                            .await
                                            .expect("append");
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("appender");
                        }
                    })
                },
                BatchSize::PerIteration,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, unwaited, always);
criterion_main!(benches);

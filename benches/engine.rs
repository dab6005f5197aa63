//! Engine overhead per stage: no-op stages through real run and stage actors, every event appended to a
//! sled log with `batch` durability. One run at a time (the per-stage cost of a run's critical path) and
//! 64 runs in flight (throughput).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowmason::bench::Shape;
use flowmason::components::builtin_registry;
use flowmason_actors::{Engine, EngineConfig, RunRequest};
use flowmason_store::{Durability, EventStore, StoreConfig};
use futures::StreamExt;
use serde_json::json;

/// The allocator of the `fm` binary, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn engine(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(
        dir.path().join("events"),
        StoreConfig {
            durability: Durability::Batch,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let system = actix::System::new();
    let engine = system.block_on(async {
        Engine::new(store.clone(), builtin_registry(), EngineConfig::default())
    });
    let mut group = c.benchmark_group("engine");
    group.measurement_time(Duration::from_secs(5));
    for (name, shape) in [
        ("chain_50", Shape::Chain(50)),
        ("fanout_100", Shape::Fanout(100)),
        ("diamond", Shape::Diamond),
    ] {
        let plan = shape.plan(100, 0);
        let stages = plan.stages.len() as u64;
        group.throughput(Throughput::Elements(stages));
        group.bench_function(format!("{name}/one_run"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let request = RunRequest::new("bench", plan.clone(), json!({}));
                        engine
                            .start(request)
                            .await
                            .expect("start")
                            .finished()
                            .await
                            .expect("end");
                    }
                    start.elapsed()
                })
            })
        });
        group.throughput(Throughput::Elements(stages * 64));
        group.bench_function(format!("{name}/64_in_flight"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        futures::stream::iter(0..64)
                            .for_each_concurrent(64, |_| {
                                let request = RunRequest::new("bench", plan.clone(), json!({}));
                                let engine = engine.clone();
                                async move {
                                    engine
                                        .start(request)
                                        .await
                                        .expect("start")
                                        .finished()
                                        .await
                                        .expect("end");
                                }
                            })
                            .await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);

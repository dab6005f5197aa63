//! Sharded run ownership across `fm operator` replicas (issue 12), with real processes: `fm serve
//! --no-controllers` as the API server, a 3-node NATS cluster holding the JetStream event log (3
//! replicas), and `fm operator --event-log jetstream` replicas started, killed, paused, restarted and
//! scaled. What each run did is read back from the stream (tests/cluster/audit.rs): one terminal event,
//! every stage succeeded once, and no replica appending to a run it did not take up.
//!
//! Each test has its own NATS cluster and API server (the replicas of one test would otherwise run the
//! runs of another). The cron test takes three minutes of wall time and is named to start first, so
//! that it runs next to the others.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowmason::model::{Pipeline, PipelineRun};
use flowmason::operator::shards::shard_of_run;
use flowmason_store::RunId;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::json;

#[path = "cluster/audit.rs"]
mod audit;
#[path = "support/nats.rs"]
mod nats;
#[path = "support/replicas.rs"]
mod replicas;
#[path = "support/serve.rs"]
mod serve;
#[path = "support/wait.rs"]
mod wait;

use audit::LogAudit;
use replicas::{Cluster, ReplicaConfig, holdings_by_replica, metric, now_micros, shard_leases};
use wait::eventually;

const NAMESPACE: &str = "default";
const ALL: [&str; 3] = ["a", "b", "c"];

/// A Pipeline of two `delay` stages of `ms` each, one after the other.
async fn create_pipeline(client: &Client, name: &str, ms: u64, schedule: Option<&str>) {
    let mut spec = json!({"stages": [
        {"id": "first", "componentType": "delay", "config": {"ms": ms}},
        {"id": "second", "componentType": "delay", "dependsOn": ["first"], "config": {"ms": ms}},
    ]});
    if let Some(schedule) = schedule {
        spec["schedule"] = json!(schedule);
    }
    let pipeline: Pipeline = serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }))
    .expect("pipeline");
    Api::<Pipeline>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &pipeline)
        .await
        .expect("create pipeline");
}

/// Creates PipelineRuns `<pipeline>-<prefix>-<i>` of `pipeline` for `i` in `range`; returns their names.
async fn create_runs(
    client: &Client,
    pipeline: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let api: Api<PipelineRun> = Api::namespaced(client.clone(), NAMESPACE);
    let mut names = Vec::new();
    for i in range {
        let name = format!("{pipeline}-{prefix}-{i}");
        let run: PipelineRun = serde_json::from_value(json!({
            "apiVersion": "flowmason.io/v1", "kind": "PipelineRun",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"pipelineRef": pipeline, "inputs": {"i": i}},
        }))
        .expect("run");
        api.create(&PostParams::default(), &run)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        names.push(name);
    }
    names
}

/// What a test reads of a PipelineRun, `status.replica` included.
#[derive(Debug, Clone)]
struct RunView {
    name: String,
    phase: Option<String>,
    run_id: Option<RunId>,
    replica: Option<String>,
    annotations: BTreeMap<String, String>,
}

impl RunView {
    fn ended(&self) -> bool {
        matches!(
            self.phase.as_deref(),
            Some("Succeeded" | "Failed" | "Cancelled" | "TimedOut")
        )
    }
}

/// The PipelineRuns of the namespace matching `labels` (all when empty), by name.
async fn list_runs(client: &Client, labels: &str) -> BTreeMap<String, RunView> {
    let resource = ApiResource::erase::<PipelineRun>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let mut params = ListParams::default();
    if !labels.is_empty() {
        params = params.labels(labels);
    }
    let list = api.list(&params).await.expect("list PipelineRuns");
    list.items
        .into_iter()
        .map(|run| {
            let status = &run.data["status"];
            let text = |field: &str| status[field].as_str().map(String::from);
            let view = RunView {
                name: run.metadata.name.clone().unwrap_or_default(),
                phase: text("phase"),
                run_id: text("runId").and_then(|id| id.parse().ok()),
                replica: text("replica"),
                annotations: run.metadata.annotations.clone().unwrap_or_default(),
            };
            (view.name.clone(), view)
        })
        .collect()
}

/// Polls `check` every `every` until it yields; panics naming `what` after `patience` (a bound that
/// turns a hang into a failure, never a timing assertion).
async fn wait_for<T, F, Fut>(what: &str, patience: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < patience,
            "gave up waiting for {what} after {patience:?}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until every run of `names` has ended; returns them (every run of the namespace, by name).
async fn all_ended(client: &Client, names: &[String]) -> BTreeMap<String, RunView> {
    wait_for(
        &format!("{} runs to end", names.len()),
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let runs = list_runs(client, "").await;
            names
                .iter()
                .all(|n| runs.get(n).is_some_and(RunView::ended))
                .then_some(runs)
        },
    )
    .await
}

/// Checks that every run of `names` Succeeded and its log is exactly-once; returns the audit.
async fn assert_each_succeeded_once(
    cluster: &Cluster,
    runs: &BTreeMap<String, RunView>,
    names: &[String],
) -> LogAudit {
    let mut ids = Vec::new();
    for name in names {
        let run = &runs[name];
        assert_eq!(run.phase.as_deref(), Some("Succeeded"), "{run:?}");
        ids.push(run.run_id.unwrap_or_else(|| panic!("{name} has no runId")));
    }
    let distinct: BTreeSet<RunId> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "one engine run per PipelineRun");
    let audit = LogAudit::read(&cluster.nats_urls(), &cluster.stream, &ids).await;
    let problems = audit.exactly_once_problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    audit
}

/// How many of `names` each replica runs (`status.replica`), runs without one under "".
fn per_replica(runs: &BTreeMap<String, RunView>, names: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for name in names {
        let replica = runs[name].replica.clone().unwrap_or_default();
        *out.entry(replica).or_insert(0) += 1;
    }
    out
}

async fn three_replicas(config: ReplicaConfig) -> Cluster {
    let mut cluster = Cluster::start(config).await;
    for id in ALL {
        cluster.add_replica(id);
    }
    cluster.converged(&ALL).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_pipeline_with_three_replicas_fires_once_per_minute() {
    let cluster = three_replicas(ReplicaConfig::default()).await;
    create_pipeline(&cluster.client, "ticking", 10, Some("* * * * *")).await;
    // Three scheduled instants: up to four minutes from now.
    let runs = wait_for(
        "three cron runs that ended",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || async {
            let runs = list_runs(&cluster.client, "flowmason.io/pipeline=ticking").await;
            (runs.len() >= 3 && runs.values().all(RunView::ended)).then_some(runs)
        },
    )
    .await;
    let mut fired = 0.0;
    let mut deduplicated = 0.0;
    for replica in cluster.replicas.values() {
        let text = replica.metrics().await;
        fired += metric(
            &text,
            "flowmason_trigger_events_total{kind=\"cron\",outcome=\"fired\"}",
        );
        deduplicated += metric(
            &text,
            "flowmason_trigger_events_total{kind=\"cron\",outcome=\"deduplicated\"}",
        );
    }
    // Read after the metrics: a fourth instant may have fired meanwhile, never a second firing of one.
    let now = list_runs(&cluster.client, "flowmason.io/pipeline=ticking").await;
    let instants: BTreeSet<&String> = now
        .values()
        .filter_map(|r| r.annotations.get("flowmason.io/scheduled-time"))
        .collect();
    eprintln!(
        "cron: {} runs for {} instants; fired {fired}, deduplicated {deduplicated} over 3 replicas",
        now.len(),
        instants.len()
    );
    assert_eq!(instants.len(), now.len(), "one run per instant: {now:?}");
    assert!(
        fired >= 3.0 && fired <= now.len() as f64,
        "each instant fired once by one replica: fired {fired} for {} runs",
        now.len()
    );
    assert_eq!(
        deduplicated, 0.0,
        "only the owner of the Pipeline's shard arms its schedule"
    );
    let names: Vec<String> = runs.keys().cloned().collect();
    assert_each_succeeded_once(&cluster, &runs, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_runs_are_spread_over_three_replicas_and_each_succeeds_once() {
    let cluster = three_replicas(ReplicaConfig::default()).await;
    create_pipeline(&cluster.client, "spread", 100, None).await;
    let names = create_runs(&cluster.client, "spread", "r", 0..300).await;
    let runs = all_ended(&cluster.client, &names).await;
    let spread = per_replica(&runs, &names);
    eprintln!("300 runs by status.replica: {spread:?}");
    for id in ALL {
        assert!(
            spread.get(id).is_some_and(|n| *n > 0),
            "replica {id} ran none of the runs: {spread:?}"
        );
    }
    assert_eq!(
        spread.keys().map(String::as_str).collect::<Vec<_>>(),
        ALL,
        "every run names the replica that ran it: {spread:?}"
    );
    assert_each_succeeded_once(&cluster, &runs, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_with_runs_in_flight_moves_its_runs_and_each_succeeds_once() {
    let config = ReplicaConfig::default();
    let lease = Duration::from_secs(u64::from(config.lease_seconds));
    let mut cluster = three_replicas(config).await;
    create_pipeline(&cluster.client, "inflight", 1_500, None).await;
    let names = create_runs(&cluster.client, "inflight", "r", 0..45).await;
    // Kill b while several of its runs are running.
    let running_on_b = wait_for(
        "runs running on b",
        wait::PATIENCE,
        Duration::from_millis(100),
        || async {
            let runs = list_runs(&cluster.client, "").await;
            let on_b: Vec<RunView> = runs
                .into_values()
                .filter(|r| {
                    r.replica.as_deref() == Some("b") && r.phase.as_deref() == Some("Running")
                })
                .collect();
            (on_b.len() >= 3).then_some(on_b)
        },
    )
    .await;
    let killed_at = now_micros();
    cluster.replica("b").kill();
    let runs = all_ended(&cluster.client, &names).await;
    let audit = assert_each_succeeded_once(&cluster, &runs, &names).await;
    // Each of b's runs that had not ended when it died was resumed by a and c.
    let resumes = audit.resumes_after(killed_at);
    let resumed: BTreeSet<RunId> = resumes.iter().map(|(run, _)| *run).collect();
    for run in &running_on_b {
        let id = run.run_id.expect("runId");
        let ended_before = audit.events[&id]
            .iter()
            .any(|e| e.kind.is_terminal() && e.at < killed_at);
        assert!(
            ended_before || resumed.contains(&id),
            "{} was running on b and was not resumed after the kill",
            run.name
        );
        if !ended_before {
            let now = runs[&run.name].replica.as_deref();
            assert!(
                matches!(now, Some("a" | "c")),
                "{} ran on {now:?}",
                run.name
            );
        }
    }
    let last = resumes
        .iter()
        .map(|(_, at)| *at)
        .max()
        .expect("some of b's runs were resumed after the kill");
    let failover = Duration::from_micros(u64::try_from(last - killed_at).expect("after the kill"));
    let mut histogram = Vec::new();
    for id in ["a", "c"] {
        let text = cluster.replicas[id].metrics().await;
        histogram.push((
            id,
            metric(&text, "flowmason_shard_failover_seconds_sum"),
            metric(&text, "flowmason_shard_failover_seconds_count"),
        ));
    }
    eprintln!(
        "kill -9 -> last of its {} runs resumed: {failover:?} (lease {lease:?}); flowmason_shard_failover_seconds (replica, sum, count): {histogram:?}",
        resumed.len()
    );
    assert!(
        failover <= lease + Duration::from_secs(5),
        "the issue's bound: kill -> last resume {failover:?} > lease {lease:?} + 5 s"
    );
    cluster.converged(&["a", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_until_the_leases_expire_then_sigcont_appends_nothing_and_rejoins_with_its_share() {
    let mut cluster = three_replicas(ReplicaConfig::default()).await;
    // Short runs first: one of b's tells its writer id on the stream.
    create_pipeline(&cluster.client, "warm", 10, None).await;
    let warm = create_runs(&cluster.client, "warm", "r", 0..15).await;
    let runs = all_ended(&cluster.client, &warm).await;
    let audit = assert_each_succeeded_once(&cluster, &runs, &warm).await;
    let on_b = warm
        .iter()
        .find(|n| runs[*n].replica.as_deref() == Some("b"))
        .expect("b ran one of 15 runs");
    let b_writer = audit
        .last_writer(runs[on_b].run_id.expect("runId"))
        .to_string();
    let before = cluster.shard_metrics().await["b"].1;

    create_pipeline(&cluster.client, "stalled", 1_500, None).await;
    let names = create_runs(&cluster.client, "stalled", "r", 0..45).await;
    wait_for(
        "runs running on b",
        wait::PATIENCE,
        Duration::from_millis(100),
        || async {
            let runs = list_runs(&cluster.client, "").await;
            runs.values()
                .any(|r| r.replica.as_deref() == Some("b") && r.phase.as_deref() == Some("Running"))
                .then_some(())
        },
    )
    .await;
    cluster.replica("b").pause();
    let paused_at = now_micros();
    // b's claim on a shard ends when its last renewal expires; from then on another replica may act for
    // it. On a shard it did not hold, it may not act at all.
    let leases = shard_leases(&cluster.client).await;
    let shards = cluster.config.shards;
    let lost_at = move |run: RunId| {
        leases
            .get(&shard_of_run(run, shards))
            .filter(|h| h.holder.as_deref() == Some("b"))
            .and_then(|h| h.valid_until)
            .unwrap_or(paused_at)
    };
    eventually("a and c hold every shard while b is stopped", || async {
        let leases = shard_leases(&cluster.client).await;
        let (held, unowned) = holdings_by_replica(&leases, shards, now_micros());
        (unowned.is_empty() && !held.contains_key("b")).then_some(())
    })
    .await;
    cluster.replica("b").resume();
    let continued_at = now_micros();
    let runs = all_ended(&cluster.client, &names).await;
    let held = cluster.converged(&ALL).await;
    let metrics = cluster.shard_metrics().await;
    eprintln!("after SIGCONT: shards held {held:?}; (owned gauge, takeovers) {metrics:?}");
    assert_eq!(
        metrics["b"].0,
        f64::from(held["b"]),
        "b's own count of its shards is what the Leases say"
    );
    assert!(
        metrics["b"].1 > before,
        "b took shards again after it rejoined: takeovers {} -> {}",
        before,
        metrics["b"].1
    );
    let all: Vec<String> = warm.iter().chain(&names).cloned().collect();
    let audit = assert_each_succeeded_once(&cluster, &runs, &all).await;
    let late = audit.appends_after_losing(&b_writer, lost_at);
    assert!(
        late.is_empty(),
        "b (SIGSTOP at {paused_at} us, SIGCONT at {continued_at} us) appended after losing its shards:\n{}",
        late.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_replicas_loses_nothing_and_runs_nothing_twice() {
    let mut cluster = three_replicas(ReplicaConfig::default()).await;
    create_pipeline(&cluster.client, "rolling", 800, None).await;
    let mut names = Vec::new();
    for (i, id) in ALL.iter().enumerate() {
        names.extend(create_runs(&cluster.client, "rolling", id, i * 20..(i + 1) * 20).await);
        wait_for(
            &format!("runs running on {id}"),
            wait::PATIENCE,
            Duration::from_millis(100),
            || async {
                let runs = list_runs(&cluster.client, "").await;
                runs.values()
                    .any(|r| {
                        r.replica.as_deref() == Some(id) && r.phase.as_deref() == Some("Running")
                    })
                    .then_some(())
            },
        )
        .await;
        let replica = cluster.replica(id);
        replica.terminate();
        replica.restart();
        cluster.converged(&ALL).await;
    }
    let runs = all_ended(&cluster.client, &names).await;
    eprintln!(
        "rolling restart: runs by replica {:?}",
        per_replica(&runs, &names)
    );
    assert_each_succeeded_once(&cluster, &runs, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_1_to_3_to_1_keeps_every_shard_owned_and_runs_continue() {
    let config = ReplicaConfig::default();
    let lease_micros = i64::from(config.lease_seconds) * 1_000_000;
    let shards = config.shards;
    let mut cluster = Cluster::start(config).await;
    cluster.add_replica("a");
    cluster.converged(&["a"]).await;
    create_pipeline(&cluster.client, "scaled", 500, None).await;

    // Every 200 ms: how long has each shard been without a valid holder?
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (client, done) = (cluster.client.clone(), done.clone());
        async move {
            let mut unowned_since: BTreeMap<u32, i64> = BTreeMap::new();
            let mut longest: BTreeMap<u32, i64> = BTreeMap::new();
            while !done.load(Ordering::Relaxed) {
                let leases = shard_leases(&client).await;
                let now = now_micros();
                for shard in 0..shards {
                    if leases
                        .get(&shard)
                        .and_then(|h| h.valid_holder(now))
                        .is_some()
                    {
                        unowned_since.remove(&shard);
                    } else {
                        let since = *unowned_since.entry(shard).or_insert(now);
                        let gap = longest.entry(shard).or_insert(0);
                        *gap = (*gap).max(now - since);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            longest
        }
    });
    // Runs keep coming while the replicas change: one every 200 ms.
    let producer = tokio::spawn({
        let (client, done) = (cluster.client.clone(), done.clone());
        async move {
            let mut names = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                names.extend(create_runs(&client, "scaled", "r", i..i + 1).await);
                i += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            names
        }
    });
    cluster.add_replica("b");
    cluster.add_replica("c");
    let up = cluster.converged(&ALL).await;
    cluster.remove_replica("b");
    cluster.remove_replica("c");
    let down = cluster.converged(&["a"]).await;
    done.store(true, Ordering::Relaxed);
    let longest = watcher.await.expect("lease watcher");
    let names = producer.await.expect("run producer");
    let runs = all_ended(&cluster.client, &names).await;
    let worst = longest.iter().max_by_key(|(_, gap)| **gap);
    eprintln!(
        "scale 1 -> 3 ({up:?}) -> 1 ({down:?}): {} runs by replica {:?}; longest time a shard had no valid holder: {worst:?} us (lease {lease_micros} us)",
        names.len(),
        per_replica(&runs, &names)
    );
    for (shard, gap) in &longest {
        assert!(
            *gap <= lease_micros,
            "shard {shard} had no valid holder for {gap} us, longer than one lease ({lease_micros} us)"
        );
    }
    assert_each_succeeded_once(&cluster, &runs, &names).await;
}

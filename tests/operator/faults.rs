//! The fault suite (issue 14): `fm serve` killed with SIGKILL at random points of its runs, and restarted
//! while a client watches. Each test checks that nothing acknowledged is lost, nothing runs twice, and the
//! process serves afterwards. The full-disk faults are in `tests/cli/durability.rs`.
//!
//! Run only this suite with `cargo test --test operator faults::`. The kill points come from a seeded RNG;
//! the seed is printed, and `FM_FAULTS_SEED=<seed>` replays a failing sequence.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kube::runtime::reflector;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

// The binary loads support/ports.rs once, through support/nats.rs.
use super::nats::ports::free_port;

/// SIGKILL rounds: enough kills to land in every phase of a run (accepted, stage started, stage
/// succeeded, run ending, resume after the previous kill), few enough for CI's 2 cores.
const ROUNDS: usize = 10;

/// The seed of this test's RNG: `FM_FAULTS_SEED` when set, otherwise the clock. Printed either way.
fn seed() -> u64 {
    let seed = match std::env::var("FM_FAULTS_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|e| panic!("FM_FAULTS_SEED={text:?} is not a u64: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    eprintln!("fault suite seed: FM_FAULTS_SEED={seed}");
    seed
}

/// The events of run `run_id` from the history API of a serving `fm serve`.
async fn events_of(http: &reqwest::Client, server: &str, run_id: &str) -> Vec<Value> {
    let events: Value = http
        .get(format!("{server}/api/v1/runs/{run_id}/events"))
        .send()
        .await
        .expect("history API answers")
        .json()
        .await
        .expect("events JSON");
    events.as_array().cloned().unwrap_or_default()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == json!(kind)).count()
}

/// The run ids `fm history` lists for `pipeline`, read from the data dir of a stopped `fm serve`.
fn history_run_ids(data: &Path, pipeline: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args(["history", "--pipeline", pipeline, "--limit", "100000"])
        .args(["-o", "json", "--data-dir"])
        .arg(data)
        .output()
        .expect("fm history");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Value = serde_json::from_slice(&out.stdout).expect("history json");
    history
        .as_array()
        .or_else(|| history["runs"].as_array())
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["runId"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_acknowledged_run_and_runs_none_twice() {
    let mut rng = StdRng::seed_from_u64(seed());
    let data = tempfile::tempdir().expect("tempdir");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut attempted = 0usize;
    for round in 0..ROUNDS {
        let fm = Fm::serve(data.path(), &[]);
        let runs: Api<PipelineRun> = Api::namespaced(fm.client().await, "default");
        if round == 0 {
            let pipelines: Api<Pipeline> = Api::namespaced(fm.client().await, "default");
            create_pipeline(&pipelines, "faults", delay_stages(40)).await;
        }
        // Runs are created (and executed by the engine) until the kill; a create whose answer did not
        // arrive before the kill is not acknowledged, but may exist.
        let kill_after = Duration::from_millis(rng.random_range(50..900));
        let kill = tokio::time::sleep(kill_after);
        tokio::pin!(kill);
        loop {
            let name = format!("r{round}-{attempted}");
            let pause = Duration::from_millis(rng.random_range(0..40));
            attempted += 1;
            let create = async {
                tokio::time::sleep(pause).await;
                runs.create(
                    &PostParams::default(),
                    &run_of(&name, "faults", json!({"x": attempted})),
                )
                .await
            };
            tokio::select! {
                _ = &mut kill => break,
                created = create => match created {
                    Ok(_) => acknowledged.push(name),
                    Err(e) => panic!("{name}: create refused while serving: {e}"),
                },
            }
        }
        eprintln!(
            "round {round}: SIGKILL after {kill_after:?}, {} runs acknowledged so far",
            acknowledged.len()
        );
        fm.kill();
    }

    let fm = Fm::serve(data.path(), &[]);
    let runs: Api<PipelineRun> = Api::namespaced(fm.client().await, "default");
    let existing: Vec<String> = runs
        .list(&Default::default())
        .await
        .expect("list runs after the last restart")
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    for name in &acknowledged {
        assert!(
            existing.contains(name),
            "acknowledged PipelineRun {name} is lost"
        );
    }
    // Every PipelineRun that exists, acknowledged or not, ends once, with one run id of its own: Succeeded,
    // or Failed as quarantined when kills cut it off in two consecutive processes (the poison-run rule of
    // the engine, which cannot tell a SIGKILL from a crash the run caused).
    let server = fm.url();
    let http = reqwest::Client::new();
    let mut run_ids = BTreeMap::new();
    let mut quarantined = 0;
    for name in &existing {
        let status = final_status(&runs, name).await;
        let run_id = status.run_id.clone().expect("runId");
        let events = events_of(&http, &server, &run_id).await;
        assert_eq!(count(&events, "RunAccepted"), 1, "{name}: {events:?}");
        let (ended_as, stages_succeeded) = match status.phase {
            Some(RunPhase::Succeeded) => ("RunSucceeded", 1..=1),
            Some(RunPhase::Failed)
                if status.conditions.first().and_then(|c| c.reason.as_deref())
                    == Some("Quarantined") =>
            {
                let after_crash = events
                    .iter()
                    .filter(|e| e["type"] == json!("RunResumed") && e["after_crash"] == json!(true))
                    .count();
                assert!(
                    after_crash >= 1,
                    "{name}: quarantined without a crash: {events:?}"
                );
                quarantined += 1;
                ("RunFailed", 0..=1)
            }
            _ => panic!("{name}: {status:?}"),
        };
        let ends = ["RunSucceeded", "RunFailed", "RunCancelled", "RunTimedOut"];
        for kind in ends {
            let expected = usize::from(kind == ended_as);
            assert_eq!(count(&events, kind), expected, "{name}: {kind}: {events:?}");
        }
        for stage in ["wait", "shape"] {
            let succeeded = events
                .iter()
                .filter(|e| e["type"] == json!("StageSucceeded") && e["stage"] == json!(stage))
                .count();
            assert!(
                stages_succeeded.contains(&succeeded),
                "{name}: stage {stage} succeeded {succeeded} times: {events:?}"
            );
        }
        // A stage started again only after a kill interrupted it: one restart per extra start at most.
        let resumed = count(&events, "RunResumed");
        let started = count(&events, "StageStarted");
        assert!(started <= 2 + resumed, "{name}: {events:?}");
        assert!(
            run_ids.insert(run_id.clone(), name.clone()).is_none(),
            "{name} shares run {run_id} with {}",
            run_ids[&run_id]
        );
    }
    // The process serves: kubectl lists the runs, and the server says it is ready.
    let (listed, text) = fm.kubectl(&["get", "pipelineruns", "-o", "name"], None);
    assert!(listed, "{text}");
    assert_eq!(text.lines().count(), existing.len(), "{text}");
    let ready = http
        .get(format!("{server}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    fm.stop();

    // The event log holds one run per PipelineRun: none was accepted twice.
    let mut logged = history_run_ids(data.path(), "faults");
    logged.sort();
    assert_eq!(
        logged,
        run_ids.keys().cloned().collect::<Vec<_>>(),
        "runs in the event log vs. PipelineRuns"
    );
    eprintln!(
        "{ROUNDS} SIGKILLs: {} runs acknowledged, {} exist, each ended once ({quarantined} quarantined)",
        acknowledged.len(),
        existing.len()
    );
}

fn serve_on(data: &Path, port: u16) -> Fm {
    let bind = format!("127.0.0.1:{port}");
    let dir = data.to_str().expect("path");
    Fm::start(&["serve", "--bind", &bind, "--data-dir", dir])
}

/// A PipelineRun as the watch delivered it: its name and phase.
type Seen = (String, Option<RunPhase>);

/// name → resourceVersion of every PipelineRun in `runs`.
fn versions<'a>(runs: impl IntoIterator<Item = &'a PipelineRun>) -> BTreeMap<String, String> {
    runs.into_iter()
        .filter_map(|r| {
            Some((
                r.metadata.name.clone()?,
                r.metadata.resource_version.clone()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_open_across_a_sigkill_and_restart_sees_every_later_change() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let fm = serve_on(data.path(), port);
    // One client for the whole test: it connects to the same address before and after the restart.
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "watched", delay_stages(50)).await;

    let (cache, writer) = reflector::store::<PipelineRun>();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let stream = reflector(writer, watcher(runs.clone(), watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                // Errors while the server is down are expected: the backoff retries.
                if let Ok(run) = item {
                    let phase = run.status.as_ref().and_then(|s| s.phase);
                    let name = run.metadata.name.clone().unwrap_or_default();
                    seen.lock().expect("seen").push((name, phase));
                }
            }
        })
    };
    let saw = |name: &'static str, phase: RunPhase| {
        let seen = seen.clone();
        async move {
            eventually(&format!("the watch sees {name} {phase:?}"), || async {
                let seen = seen.lock().expect("seen");
                seen.iter()
                    .any(|(n, p)| n == name && *p == Some(phase))
                    .then_some(())
            })
            .await
        }
    };

    create_run(&runs, "before", "watched", json!({"x": 1})).await;
    saw("before", RunPhase::Succeeded).await;
    // Acknowledged just before the kill: it must neither be lost nor be missing from the watch.
    create_run(&runs, "in-flight", "watched", json!({"x": 2})).await;
    fm.kill();

    let fm = serve_on(data.path(), port);
    create_run(&runs, "after", "watched", json!({"x": 3})).await;
    saw("in-flight", RunPhase::Succeeded).await;
    saw("after", RunPhase::Succeeded).await;
    runs.delete("before", &DeleteParams::default())
        .await
        .expect("delete");
    // The watch's cache converges to the server's state, deletion included: every change after the
    // restart reached it.
    let listed = eventually("the run deleted after the restart is gone", || async {
        let list = runs.list(&Default::default()).await.ok()?;
        (!list
            .items
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some("before")))
        .then_some(list)
    })
    .await;
    let expected = versions(&listed.items);
    assert_eq!(
        expected.keys().cloned().collect::<Vec<_>>(),
        ["after", "in-flight"]
    );
    eventually("the watch's cache equals the server's list", || async {
        let cached = cache.state();
        (versions(cached.iter().map(|r| r.as_ref())) == expected).then_some(())
    })
    .await;
    watch.abort();
    let (listed, text) = fm.kubectl(&["get", "pipelineruns", "-o", "name"], None);
    assert!(listed, "{text}");
    fm.stop();
}

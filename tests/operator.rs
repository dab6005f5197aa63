//! The operator end to end: `fm serve` (API server + controllers + engine) started as a child process on
//! 127.0.0.1:0, driven with a kube-rs client and with `kubectl`, as users drive it.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowmason::apiserver::{ServeConfig, Server};
use flowmason::components::builtin_registry;
use flowmason::model::{Pipeline, PipelineRun, RunPhase};
use flowmason::operator::{Operator, OperatorConfig};
use flowmason_store::{EventStore, StoreConfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "support/crds.rs"]
mod crds;
#[path = "operator/faults.rs"]
mod faults;
#[path = "support/nats.rs"]
mod nats;
#[path = "support/serve.rs"]
mod serve;
#[path = "operator/shards.rs"]
mod shards;
#[path = "operator/shards_owning.rs"]
mod shards_owning;
#[path = "support/stages.rs"]
mod stages;
#[path = "operator/ui.rs"]
mod ui;

use crds::install_crds;
use serve::Fm;
use stages::wait::{PATIENCE, eventually};
use stages::{
    create_pipeline, create_run, delay_stages, final_status, pipeline, run_of, terminal, wait_phase,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_runs_through_pending_running_succeeded_with_stages_in_status() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let doc = serde_json::to_string(&pipeline("hello", delay_stages(400))).expect("json");
    let (ok, out) = fm.kubectl(&["apply", "-f", "-"], Some(&doc));
    assert!(ok, "{out}");
    // Watch the run from before it exists, collecting every phase it shows.
    let watch = tokio::spawn({
        let runs = runs.clone();
        async move {
            let mut phases: Vec<RunPhase> = Vec::new();
            let stream = watcher(
                runs,
                watcher::Config::default().fields("metadata.name=hello-1"),
            )
            .applied_objects()
            .boxed();
            let mut stream = stream;
            while let Ok(Some(run)) = stream.try_next().await {
                if let Some(p) = run.status.and_then(|s| s.phase)
                    && phases.last() != Some(&p)
                {
                    phases.push(p);
                    if terminal().contains(&p) {
                        break;
                    }
                }
            }
            phases
        }
    });
    let run = serde_json::to_string(&run_of("hello-1", "hello", json!({"x": 42}))).expect("json");
    let (ok, out) = fm.kubectl(&["apply", "-f", "-"], Some(&run));
    assert!(ok, "{out}");
    let phases = tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("run ends")
        .expect("watch");
    assert_eq!(
        phases,
        [RunPhase::Pending, RunPhase::Running, RunPhase::Succeeded]
    );
    let done = runs.get("hello-1").await.expect("get");
    let status = done.status.expect("status");
    assert_eq!(
        status.output.as_ref().map(|o| o["result"].clone()),
        Some(json!({"x": 42}))
    );
    let ids: Vec<&str> = status.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["wait", "shape"]);
    assert!(
        status
            .stages
            .iter()
            .all(|s| s.attempts == 1 && s.completion_time.is_some())
    );
    assert!(
        status.run_id.is_some() && status.completion_time.is_some() && status.duration.is_some()
    );
    assert_eq!(status.pipeline_generation, Some(1));
    // Owned by its Pipeline, finalizer in place; the Pipeline records the run.
    let owners = done.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.first().map(|o| o.name.as_str()), Some("hello"));
    assert!(
        done.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "flowmason.io/run")
    );
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let p = eventually("pipeline lastRunStatus", || async {
        let p = pipelines.get("hello").await.ok()?;
        (p.status.as_ref()?.last_run_status.as_deref() == Some("Succeeded")).then_some(p)
    })
    .await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.last_run_id.clone()),
        status.run_id
    );
    // kubectl shows it too.
    let (ok, out) = fm.kubectl(&["get", "pipelineruns"], None);
    assert!(
        ok && out.contains("hello-1") && out.contains("Succeeded"),
        "{out}"
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn fm_serve_exposes_metrics_health_and_the_history_of_its_runs() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "metered", delay_stages(10)).await;
    create_run(&runs, "metered-1", "metered", json!({"x": 1})).await;
    let done = wait_phase(&runs, "metered-1", &terminal()).await;
    assert_eq!(done.status.and_then(|s| s.phase), Some(RunPhase::Succeeded));

    let server = fm.url();
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{server}{path}"));
        async move { http.get(url).send().await.expect("request") }
    };
    let metrics = eventually("the run counted in /metrics", || async {
        let text = get("/metrics").await.text().await.ok()?;
        (text.lines().any(|l| {
            l.starts_with("flowmason_pipeline_runs_total{")
                && l.contains("pipeline=\"metered\"")
                && l.contains("phase=\"Succeeded\"")
                && l.ends_with(" 1")
        }) && text
            .lines()
            .any(|l| l.starts_with("flowmason_status_writes_total{outcome=\"ok\"}")))
        .then_some(text)
    })
    .await;
    // `fm serve` runs without leader election: it leads from the start.
    assert!(
        metrics.lines().any(|l| l == "flowmason_leader 1"),
        "flowmason_leader 1 missing from:\n{metrics}"
    );
    for family in [
        "flowmason_stage_duration_seconds_bucket",
        "flowmason_pipeline_run_duration_seconds_count",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    assert_eq!(get("/healthz").await.status().as_u16(), 200);
    assert_eq!(get("/readyz").await.status().as_u16(), 200);
    let page: Value = get("/api/v1/runs?pipeline=metered")
        .await
        .json()
        .await
        .expect("history JSON");
    let listed = page["runs"].as_array().expect("runs");
    assert_eq!(listed.len(), 1, "{page}");
    assert_eq!(listed[0]["phase"], json!("Succeeded"));

    // fm history show --follow prints a running run's events until it ends; stages in plan order.
    create_pipeline(&pipelines, "followed", delay_stages(1_500)).await;
    create_run(&runs, "followed-1", "followed", json!({"x": 1})).await;
    let running = wait_phase(&runs, "followed-1", &[RunPhase::Running]).await;
    let run_id = running.status.and_then(|s| s.run_id).expect("run id");
    let out = tokio::task::spawn_blocking({
        let (server, run_id) = (fm.url(), run_id.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_fm"))
                .args(["history", "show", &run_id, "--server", &server, "--follow"])
                .env("FM_LOG", "error")
                .output()
                .expect("fm history show --follow")
        }
    })
    .await
    .expect("join");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.trim_end().ends_with("run succeeded"), "{shown}");
    let out = tokio::task::spawn_blocking({
        let (server, run_id) = (fm.url(), run_id.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_fm"))
                .args(["history", "show", &run_id, "--server", &server])
                .env("FM_LOG", "error")
                .output()
                .expect("fm history show")
        }
    })
    .await
    .expect("join");
    let shown = String::from_utf8_lossy(&out.stdout);
    let position = |stage: &str| {
        shown
            .lines()
            .position(|l| l.starts_with(&format!("{stage} ")))
            .unwrap_or_else(|| panic!("no row of {stage} in:\n{shown}"))
    };
    assert!(position("wait") < position("shape"), "plan order:\n{shown}");
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_reports_its_error_and_invalid_pipeline_is_not_ready() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let failing = pipeline(
        "failing",
        json!([{"id": "bad", "componentType": "json_transform",
                "config": {"data": {"a": 1}, "expression": "{{input.missing.path}}"}}]),
    );
    pipelines
        .create(&PostParams::default(), &failing)
        .await
        .expect("create");
    create_run(&runs, "failing-1", "failing", json!({})).await;
    let run = wait_phase(&runs, "failing-1", &terminal()).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(RunPhase::Failed));
    let error = status.error.expect("error");
    assert_eq!(error.stage.as_deref(), Some("bad"));
    assert!(error.message.contains("missing"), "{}", error.message);

    // The API server refuses an invalid Pipeline outright; one whose `source` ConfigMap holds an invalid
    // definition is accepted and reported Ready=False with the problem named.
    let invalid = pipeline(
        "invalid",
        json!([{"id": "a", "componentType": "no_such_component"}]),
    );
    assert!(
        pipelines
            .create(&PostParams::default(), &invalid)
            .await
            .is_err()
    );
    let definition = json!({"stages": [
        {"id": "a", "componentType": "no_such_component"},
        {"id": "b", "componentType": "noop", "dependsOn": ["nowhere"]}]});
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-def"},
        "data": {"pipeline.yaml": definition.to_string()}
    }))
    .expect("cm");
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .expect("cm");
    let invalid: Pipeline = serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
        "metadata": {"name": "invalid", "namespace": "default"},
        "spec": {"source": {"name": "bad-def", "key": "pipeline.yaml"}}
    }))
    .expect("pipeline");
    pipelines
        .create(&PostParams::default(), &invalid)
        .await
        .expect("create");
    let p = eventually("invalid pipeline status", || async {
        let p = pipelines.get("invalid").await.ok()?;
        p.status.as_ref()?.phase.map(|_| p.clone())
    })
    .await;
    let status = p.status.expect("status");
    assert_eq!(status.phase, Some(flowmason::model::PipelinePhase::Failed));
    let ready = &status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "False")
    );
    let message = ready.message.clone().unwrap_or_default();
    assert!(
        message.contains("stages[0].componentType: unknown component \"no_such_component\""),
        "{message}"
    );
    assert!(message.contains("nowhere"), "{message}");
    // A run of it fails before starting, naming the problem.
    create_run(&runs, "invalid-1", "invalid", json!({})).await;
    let run = wait_phase(&runs, "invalid-1", &terminal()).await;
    assert_eq!(
        run.status.as_ref().and_then(|s| s.phase),
        Some(RunPhase::Failed)
    );
    // And a run of a Pipeline that does not exist names it.
    create_run(&runs, "orphan-1", "absent", json!({})).await;
    let run = wait_phase(&runs, "orphan-1", &terminal()).await;
    let message = run
        .status
        .and_then(|s| s.error)
        .map(|e| e.message)
        .unwrap_or_default();
    assert_eq!(
        message,
        "spec.pipelineRef: Pipeline default/absent not found"
    );
    // Both are failed runs on record: in the metrics, the history API and the Pipeline's last run.
    let server = fm.url();
    let http = reqwest::Client::new();
    eventually(
        "runs that failed before starting counted in /metrics",
        || async {
            let text = http
                .get(format!("{server}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let counted = |pipeline: &str| {
                text.lines().any(|l| {
                    l.starts_with("flowmason_pipeline_runs_total{")
                        && l.contains(&format!("pipeline=\"{pipeline}\""))
                        && l.contains("phase=\"Failed\"")
                        && l.ends_with(" 1")
                })
            };
            (counted("absent") && counted("invalid")).then_some(())
        },
    )
    .await;
    let page: Value = http
        .get(format!("{server}/api/v1/runs?pipeline=absent"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("history JSON");
    let listed = page["runs"].as_array().expect("runs");
    assert_eq!(listed.len(), 1, "{page}");
    assert_eq!(listed[0]["phase"], json!("Failed"), "{page}");
    let orphan = runs.get("orphan-1").await.expect("orphan-1");
    let status = orphan.status.expect("status");
    assert_eq!(status.run_id, listed[0]["runId"].as_str().map(String::from));
    assert_eq!(
        status.conditions[0].reason.as_deref(),
        Some("PipelineNotFound")
    );
    let invalid_run = runs.get("invalid-1").await.expect("invalid-1");
    let run_id = invalid_run.status.and_then(|s| s.run_id).expect("run id");
    let last = eventually("the invalid Pipeline's last run", || async {
        let status = pipelines.get("invalid").await.ok()?.status?;
        (status.last_run_id.as_deref() == Some(run_id.as_str())).then_some(status)
    })
    .await;
    assert_eq!(last.last_run_status.as_deref(), Some("Failed"));
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_spec_by_annotation_and_by_delete() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "slow", delay_stages(60_000)).await;
    for name in ["by-spec", "by-annotation", "by-delete"] {
        create_run(&runs, name, "slow", json!({"x": 1})).await;
        wait_phase(&runs, name, &[RunPhase::Running]).await;
    }
    runs.patch(
        "by-spec",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"status": "Cancelled"}})),
    )
    .await
    .expect("cancel");
    runs.patch(
        "by-annotation",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"flowmason.io/cancel": "true"}}})),
    )
    .await
    .expect("cancel");
    for name in ["by-spec", "by-annotation"] {
        let run = wait_phase(&runs, name, &terminal()).await;
        let status = run.status.expect("status");
        assert_eq!(status.phase, Some(RunPhase::Cancelled), "{name}");
        assert!(
            status
                .stages
                .iter()
                .all(|s| s.phase != flowmason::model::StagePhase::Running)
        );
    }
    // Deleting a running run cancels it, then lets it go; its end is in the event log.
    let run_id = runs
        .get("by-delete")
        .await
        .expect("get")
        .status
        .and_then(|s| s.run_id)
        .expect("runId");
    runs.delete("by-delete", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("deleted run gone", || async {
        runs.get_opt("by-delete")
            .await
            .ok()
            .and_then(|r| r.is_none().then_some(()))
    })
    .await;
    fm.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args([
            "history",
            "show",
            &run_id,
            "--data-dir",
            data.path().to_str().expect("path"),
        ])
        .output()
        .expect("fm history");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Cancelled"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_pipeline_never_changes_a_run_in_flight() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "edited", delay_stages(1_500)).await;
    create_run(&runs, "before", "edited", json!({"x": "old"})).await;
    wait_phase(&runs, "before", &[RunPhase::Running]).await;
    // Generation 2: a different plan (one stage, another output).
    pipelines
        .patch(
            "edited",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"stages": [
                {"id": "only", "componentType": "json_transform",
                 "config": {"data": {"v": "new"}, "expression": "v"}}]}})),
        )
        .await
        .expect("edit");
    create_run(&runs, "after", "edited", json!({})).await;
    let before = final_status(&runs, "before").await;
    let after = final_status(&runs, "after").await;
    assert_eq!(before.phase, Some(RunPhase::Succeeded));
    assert_eq!(before.pipeline_generation, Some(1));
    assert_eq!(
        before
            .stages
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["wait", "shape"]
    );
    assert_eq!(after.pipeline_generation, Some(2));
    assert_eq!(
        after
            .stages
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["only"]
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_deleted_and_created_again_is_reconciled_with_a_fresh_status() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "again", delay_stages(1)).await;
    create_run(&runs, "again-1", "again", json!({"x": 1})).await;
    let status = final_status(&runs, "again-1").await;
    let run_id = status.run_id.expect("run id");
    eventually("the first Pipeline's last run", || async {
        let status = pipelines.get("again").await.ok()?.status?;
        (status.last_run_id.as_deref() == Some(run_id.as_str())).then_some(())
    })
    .await;
    pipelines
        .delete("again", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the Pipeline gone", || async {
        pipelines
            .get_opt("again")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    create_pipeline(&pipelines, "again", delay_stages(1)).await;
    let status = eventually("the new Pipeline's status", || async {
        pipelines.get("again").await.ok()?.status
    })
    .await;
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(status.conditions[0].status, "True", "{status:?}");
    assert_eq!(status.last_run_id, None, "{status:?}");
    assert_eq!(status.last_run_status, None, "{status:?}");
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_secrets_reach_stages_redacted_and_configmap_source_defines_the_pipeline() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut p: Pipeline = serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
        "metadata": {"name": "secretive", "namespace": "default"},
        "spec": {
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}],
            "stages": [{"id": "use", "componentType": "json_transform",
                        "config": {"data": {"t": "{{env.TOKEN}}"}, "jq": "{length: (.t | length), t: .t}"}}]
        }
    }))
    .expect("pipeline");
    pipelines
        .create(&PostParams::default(), &p)
        .await
        .expect("create");
    // The Secret is missing: Ready=False naming it, and a run fails naming it.
    let missing = eventually("pipeline not ready", || async {
        let p = pipelines.get("secretive").await.ok()?;
        let c = p.status?.conditions.into_iter().next()?;
        (c.status == "False").then_some(c)
    })
    .await;
    assert!(
        missing
            .message
            .as_deref()
            .unwrap_or("")
            .contains("Secret default/creds not found"),
        "{missing:?}"
    );
    create_run(&runs, "too-early", "secretive", json!({})).await;
    let early = final_status(&runs, "too-early").await;
    assert!(
        early
            .error
            .map(|e| e.message)
            .unwrap_or_default()
            .contains("Secret default/creds")
    );
    // Creating it makes the Pipeline ready (the Secret is watched) and runs see the value.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"token": "hunter2-xyz"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    eventually("pipeline ready", || async {
        let p = pipelines.get("secretive").await.ok()?;
        (p.status?.conditions.first()?.status == "True").then_some(())
    })
    .await;
    create_run(&runs, "with-secret", "secretive", json!({})).await;
    let run = wait_phase(&runs, "with-secret", &terminal()).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    let text = serde_json::to_string(&status).expect("json");
    assert!(
        !text.contains("hunter2-xyz"),
        "secret leaked into status: {text}"
    );
    // The stage saw the 11-character value; the status shows it masked.
    assert_eq!(
        status
            .output
            .as_ref()
            .map(|o| o["result"]["length"].clone()),
        Some(json!(11))
    );
    assert_eq!(
        status.output.as_ref().map(|o| o["result"]["t"].clone()),
        Some(json!("***"))
    );

    // A Pipeline defined by a ConfigMap, in FlowMason's pipeline.json format.
    let definition = json!({"name": "from-cm", "stages": [
        {"id": "hi", "component_type": "json_transform", "config": {"data": {"g": "hello"}, "expression": "g"}}]});
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "def"},
        "data": {"pipeline.json": definition.to_string()}
    }))
    .expect("cm");
    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .expect("cm");
    p = serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
        "metadata": {"name": "from-cm", "namespace": "default"},
        "spec": {"source": {"name": "def"}}
    }))
    .expect("pipeline");
    pipelines
        .create(&PostParams::default(), &p)
        .await
        .expect("create");
    create_run(&runs, "cm-1", "from-cm", json!({})).await;
    let status = final_status(&runs, "cm-1").await;
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    assert_eq!(
        status.output.map(|o| o["result"].clone()),
        Some(json!({"g": "hello"}))
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_makes_a_bounded_number_of_status_writes() {
    let data = tempfile::tempdir().expect("tempdir");
    // A long interval: only the first and the final status write happen, however long the run takes.
    let fm = Fm::serve(data.path(), &["--status-interval-ms", "600000"]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let stages: Vec<Value> = (0..1000)
        .map(|i| {
            if i == 0 {
                json!({"id": "s0", "componentType": "noop"})
            } else {
                json!({"id": format!("s{i}"), "componentType": "noop", "dependsOn": [format!("s{}", i - 1)]})
            }
        })
        .collect();
    create_pipeline(&pipelines, "long", Value::Array(stages)).await;
    let watch = tokio::spawn({
        let runs = runs.clone();
        async move {
            let mut versions = HashSet::new();
            let mut stream = watcher(
                runs,
                watcher::Config::default().fields("metadata.name=long-1"),
            )
            .applied_objects()
            .boxed();
            while let Ok(Some(run)) = stream.try_next().await {
                versions.insert(run.metadata.resource_version.clone());
                if terminal().contains(
                    &run.status
                        .and_then(|s| s.phase)
                        .unwrap_or(RunPhase::Pending),
                ) {
                    break;
                }
            }
            versions.len()
        }
    });
    create_run(&runs, "long-1", "long", json!({})).await;
    let versions = tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("ends")
        .expect("watch");
    let run = runs.get("long-1").await.expect("get");
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(RunPhase::Succeeded));
    assert_eq!(status.metrics.map(|m| m.completed_stages), Some(1000));
    // create, finalizer, owner, first status, final status (and at most a few more): not 1,000.
    assert!(
        versions <= 8,
        "{versions} versions of the object for a 1,000-stage run"
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_50_runs_ends_each_exactly_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "fifty", delay_stages(1_000)).await;
    for i in 0..50 {
        create_run(&runs, &format!("r-{i}"), "fifty", json!({"x": i})).await;
    }
    // Some have started; none can have finished (each waits a second).
    eventually("a run started", || async {
        let list = runs.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|r| r.status.as_ref().and_then(|s| s.run_id.as_ref()).is_some())
            .then_some(())
    })
    .await;
    fm.kill();
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let mut ids = BTreeMap::new();
    for i in 0..50 {
        let run = wait_phase(&runs, &format!("r-{i}"), &terminal()).await;
        let status = run.status.expect("status");
        assert_eq!(status.phase, Some(RunPhase::Succeeded), "r-{i}: {status:?}");
        assert_eq!(
            status.output.map(|o| o["result"].clone()),
            Some(json!({"x": i}))
        );
        ids.insert(i, status.run_id.expect("runId"));
    }
    fm.stop();
    // The event log holds exactly 50 runs, one per PipelineRun, each ended once.
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args([
            "history",
            "--pipeline",
            "fifty",
            "--limit",
            "1000",
            "-o",
            "json",
            "--data-dir",
            data.path().to_str().expect("path"),
        ])
        .output()
        .expect("fm history");
    let history: Value = serde_json::from_slice(&out.stdout).expect("history json");
    let listed = history
        .as_array()
        .or_else(|| history["runs"].as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 50, "{history}");
    let listed_ids: HashSet<String> = listed
        .iter()
        .filter_map(|r| r["runId"].as_str().map(String::from))
        .collect();
    assert_eq!(listed_ids, ids.values().cloned().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_whose_events_are_lost_fails_with_a_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "lossy", delay_stages(60_000)).await;
    create_run(&runs, "lost", "lossy", json!({"x": 1})).await;
    wait_phase(&runs, "lost", &[RunPhase::Running]).await;
    fm.kill();
    std::fs::remove_dir_all(data.path().join("events")).expect("lose the event log");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let run = wait_phase(&runs, "lost", &terminal()).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(RunPhase::Failed));
    assert_eq!(status.conditions[0].reason.as_deref(), Some("EventsLost"));
    assert!(
        status
            .error
            .map(|e| e.message)
            .unwrap_or_default()
            .contains("event log has no record")
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_whose_pipelinerun_was_force_deleted_while_down_ends_cancelled_on_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "orphans", delay_stages(60_000)).await;
    for name in ["orphan", "kept"] {
        create_run(&runs, name, "orphans", json!({"x": 1})).await;
    }
    let orphan = wait_phase(&runs, "orphan", &[RunPhase::Running]).await;
    let run_id = orphan.status.and_then(|s| s.run_id).expect("runId");
    wait_phase(&runs, "kept", &[RunPhase::Running]).await;
    fm.kill();

    // With only the API up, the run's finalizer is removed by hand and the object deleted.
    let fm = Fm::serve(data.path(), &["--no-controllers", "--no-triggers"]);
    let runs: Api<PipelineRun> = Api::namespaced(fm.client().await, "default");
    runs.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    runs.delete("orphan", &DeleteParams::default())
        .await
        .expect("delete");
    fm.stop();

    let fm = Fm::serve(data.path(), &[]);
    let server = fm.url();
    let http = reqwest::Client::new();
    let detail = eventually("the orphaned run ended in the history", || async {
        let detail: Value = http
            .get(format!("{server}/api/v1/runs/{run_id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (detail["phase"] == json!("Cancelled")).then_some(detail)
    })
    .await;
    assert!(
        detail["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("PipelineRun was deleted")),
        "{detail}"
    );
    // The run whose PipelineRun still exists was resumed, not ended.
    let runs: Api<PipelineRun> = Api::namespaced(fm.client().await, "default");
    let kept = wait_phase(&runs, "kept", &[RunPhase::Running]).await;
    let kept_id = kept.status.and_then(|s| s.run_id).expect("runId");
    let kept: Value = http
        .get(format!("{server}/api/v1/runs/{kept_id}"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(kept["phase"], json!("Running"), "{kept}");
    fm.stop();
}

fn pipeline_with_resources(name: &str, resources: Value, stages: Value) -> Pipeline {
    serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"stages": stages, "resources": resources}
    }))
    .expect("pipeline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_reserve_their_resource_requests_from_the_operators_capacity() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(
        data.path(),
        &["--capacity-cpu", "1", "--capacity-memory", "1Gi"],
    );
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let requests = json!({"requests": {"cpu": "600m", "memory": "256Mi"}, "limits": {"cpu": "1"}});
    // `hold` runs until it is cancelled, so that the second run is seen waiting however slow the
    // machine; `next` is short.
    for (name, stages) in [("hold", delay_stages(600_000)), ("next", delay_stages(10))] {
        let p = pipeline_with_resources(name, requests.clone(), stages);
        pipelines
            .create(&PostParams::default(), &p)
            .await
            .expect("create");
    }
    create_run(&runs, "hold-1", "hold", json!({"x": 1})).await;
    wait_phase(&runs, "hold-1", &[RunPhase::Running]).await;
    // Two runs of 600m do not fit in one CPU: the second waits, saying why.
    create_run(&runs, "next-1", "next", json!({"x": 2})).await;
    let waiting = eventually("next-1 waiting for resources", || async {
        let run = runs.get("next-1").await.ok()?;
        let status = run.status?;
        let condition = status.conditions.first()?.clone();
        (status.phase == Some(RunPhase::Pending)
            && condition.reason.as_deref() == Some("WaitingForResources"))
        .then_some(condition)
    })
    .await;
    let message = waiting.message.unwrap_or_default();
    assert!(
        message.contains("needs cpu 600m, memory 256Mi"),
        "{message}"
    );
    // Ending the first run gives its share back: the second starts.
    runs.patch(
        "hold-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"status": "Cancelled"}})),
    )
    .await
    .expect("cancel");
    let first = final_status(&runs, "hold-1").await;
    let second = final_status(&runs, "next-1").await;
    assert_eq!(first.phase, Some(RunPhase::Cancelled));
    assert_eq!(second.phase, Some(RunPhase::Succeeded), "{second:?}");
    assert!(
        second.start_time.expect("started").0 >= first.completion_time.expect("ended").0,
        "the second run started only after the first gave its share back"
    );

    // More than the whole capacity can never run; a malformed quantity makes the Pipeline invalid.
    let huge = pipeline_with_resources("huge", json!({"requests": {"cpu": "2"}}), delay_stages(1));
    pipelines
        .create(&PostParams::default(), &huge)
        .await
        .expect("create");
    create_run(&runs, "huge-1", "huge", json!({"x": 1})).await;
    let status = final_status(&runs, "huge-1").await;
    assert_eq!(status.phase, Some(RunPhase::Failed));
    assert_eq!(
        status.conditions[0].reason.as_deref(),
        Some("Unschedulable")
    );
    let bad = pipeline_with_resources(
        "bad",
        json!({"requests": {"memory": "lots"}}),
        delay_stages(1),
    );
    // `fm serve` validates as `fm validate` does: refused with 422 naming the field (a cluster that
    // accepts it gets `Ready=False` with the same message from the operator's check).
    let refused = pipelines
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("a malformed quantity is refused");
    let message = refused.to_string();
    assert!(
        message.contains("spec.resources.requests.memory")
            && message.contains("\"lots\" is not a quantity"),
        "{message}"
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn fm_operator_serves_metrics_health_history_and_the_web_ui_on_its_http_port() {
    let api = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(api.path(), &["--no-controllers", "--no-triggers"]);
    let client = fm.client().await;
    let engine_dir = tempfile::tempdir().expect("tempdir");
    let mut operator = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args([
            "operator",
            "--kubeconfig",
            fm.kubeconfig.to_str().expect("path"),
            "--data-dir",
            engine_dir.path().to_str().expect("path"),
            "--no-leader-election",
            "--http-bind",
            "127.0.0.1:0",
            "--webhook-bind",
            "127.0.0.1:0",
        ])
        .env("FM_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fm operator");
    let base = serve::operator_http_address(&mut operator);

    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "counted", delay_stages(10)).await;
    create_run(&runs, "counted-1", "counted", json!({"x": 1})).await;
    let done = wait_phase(&runs, "counted-1", &terminal()).await;
    assert_eq!(done.status.and_then(|s| s.phase), Some(RunPhase::Succeeded));
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("flowmason_pipeline_runs_total{")
                && l.contains("pipeline=\"counted\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    for path in ["/healthz", "/readyz"] {
        let status = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("probe")
            .status();
        assert_eq!(status.as_u16(), 200, "{path}");
    }
    let page: Value = http
        .get(format!("{base}/api/v1/runs?pipeline=counted"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("JSON");
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(1), "{page}");

    // The web UI and what it reads: Pipelines through the operator's own client; runs started and
    // cancelled as PipelineRuns.
    let ui = http.get(format!("{base}/ui/")).send().await.expect("ui");
    assert_eq!(ui.status().as_u16(), 200);
    assert_eq!(ui.headers()["content-type"], "text/html; charset=utf-8");
    let listed: Value = http
        .get(format!("{base}/api/v1/pipelines?namespace=default"))
        .send()
        .await
        .expect("pipelines")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["source"], json!("cluster"), "{listed}");
    assert_eq!(listed["items"][0]["metadata"]["name"], json!("counted"));
    let one: Value = http
        .get(format!("{base}/api/v1/pipelines/default/counted"))
        .send()
        .await
        .expect("pipeline")
        .json()
        .await
        .expect("JSON");
    assert!(
        one["yaml"].as_str().is_some_and(|y| y.contains("id: wait")),
        "{one}"
    );
    let started = http
        .post(format!("{base}/api/v1/pipelines/default/counted/runs"))
        .json(&json!({"inputs": {"x": 2}}))
        .send()
        .await
        .expect("start a run");
    assert_eq!(started.status().as_u16(), 201);
    let started: Value = started.json().await.expect("JSON");
    let name = started["runName"].as_str().expect("runName").to_string();
    let second = wait_phase(&runs, &name, &terminal()).await;
    assert_eq!(
        second.spec.inputs.and_then(|i| i.get("x").cloned()),
        Some(json!(2))
    );
    assert_eq!(
        second.status.and_then(|s| s.run_id),
        started["runId"].as_str().map(String::from)
    );
    let run_id = started["runId"].as_str().expect("runId");
    let late = http
        .post(format!("{base}/api/v1/runs/{run_id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(
        late.status().as_u16(),
        409,
        "a finished run cannot be cancelled"
    );
    let missing = http
        .get(format!("{base}/api/v1/pipelines/default/nothing"))
        .send()
        .await
        .expect("pipeline");
    assert_eq!(missing.status().as_u16(), 404);
    let unknown = http
        .post(format!("{base}/api/v1/pipelines/default/nothing/runs"))
        .json(&json!({}))
        .send()
        .await
        .expect("start a run of a missing pipeline");
    assert_eq!(
        unknown.status().as_u16(),
        404,
        "a run of a Pipeline that does not exist is the caller's 404, not a bad gateway"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let _ = operator.wait();
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_only_the_leader_runs() {
    let data = tempfile::tempdir().expect("tempdir");
    let api = Fm::serve(data.path(), &["--no-controllers"]);
    let kubeconfig = api.kubeconfig.to_str().expect("path").to_string();
    let dirs = [data.path().join("op-a"), data.path().join("op-b")];
    let operator = |dir: &Path, id: &str| {
        Command::new(env!("CARGO_BIN_EXE_fm"))
            .args([
                "operator",
                "--kubeconfig",
                &kubeconfig,
                "--data-dir",
                dir.to_str().expect("path"),
                "--identity",
                id,
                "--lease-seconds",
                "2",
                "--http-bind",
                "127.0.0.1:0",
                "--webhook-bind",
                "127.0.0.1:0",
            ])
            .env("FM_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fm operator")
    };
    let mut a = operator(&dirs[0], "a");
    let client = api.client().await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    eventually("a leads", || async {
        let l = leases.get_opt("flowmason-operator").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("a")).then_some(())
    })
    .await;
    let mut b = operator(&dirs[1], "b");
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "led", delay_stages(10)).await;
    for i in 0..5 {
        create_run(&runs, &format!("led-{i}"), "led", json!({"x": i})).await;
    }
    for i in 0..5 {
        wait_phase(&runs, &format!("led-{i}"), &terminal()).await;
    }
    // The leader goes away; the other takes the lease over and runs what comes next.
    let _ = a.kill();
    let _ = a.wait();
    eventually("b leads", || async {
        let l = leases.get_opt("flowmason-operator").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("b")).then_some(())
    })
    .await;
    create_run(&runs, "led-after", "led", json!({"x": 9})).await;
    wait_phase(&runs, "led-after", &[RunPhase::Succeeded]).await;
    let _ = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status();
    let _ = b.wait();
    api.stop();
    let count = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_fm"))
            .args([
                "history",
                "--limit",
                "1000",
                "-o",
                "json",
                "--data-dir",
                dir.to_str().expect("path"),
            ])
            .output()
            .expect("fm history");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array()
            .or_else(|| v["runs"].as_array())
            .map_or(0, Vec::len)
    };
    assert_eq!((count(&dirs[0]), count(&dirs[1])), (5, 1));
}

fn fm_k8s(fm: &Fm, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .arg("k8s")
        .args(args)
        .arg("--kubeconfig")
        .arg(&fm.kubeconfig)
        .env("FM_LOG", "error")
        .output()
        .expect("fm k8s");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Calls per path, served on 127.0.0.1:0; `/second` answers 400 to its first call only.
async fn side_effect_server() -> (
    String,
    std::sync::Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
) {
    use std::sync::{Arc, Mutex};
    let hits: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let counted = hits.clone();
    let router = axum::Router::new().route(
        "/{path}",
        axum::routing::any(
            move |axum::extract::Path(path): axum::extract::Path<String>| {
                let hits = counted.clone();
                async move {
                    let mut hits = hits.lock().expect("lock");
                    let n = hits.entry(path.clone()).or_default();
                    *n += 1;
                    if path == "second" && *n == 1 {
                        (axum::http::StatusCode::BAD_REQUEST, "first call fails")
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_from_failed_through_fm_k8s_and_the_api_skips_the_stages_that_succeeded() {
    let (base, hits) = side_effect_server().await;
    let calls = |path: &str| hits.lock().expect("lock").get(path).copied().unwrap_or(0);
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(
        &pipelines,
        "flaky",
        json!([
            {"id": "first", "componentType": "http_request",
             "config": {"url": format!("{base}/first")}},
            {"id": "second", "componentType": "http_request", "dependsOn": ["first"],
             "config": {"url": format!("{base}/second")}}
        ]),
    )
    .await;
    create_run(&runs, "flaky-1", "flaky", json!({"x": 1})).await;
    let failed = wait_phase(&runs, "flaky-1", &terminal()).await;
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.phase),
        Some(RunPhase::Failed)
    );
    assert_eq!((calls("first"), calls("second")), (1, 1));

    let (code, out, err) = fm_k8s(&fm, &["rerun", "flaky-1", "--from-failed"]);
    assert_eq!(code, 0, "{out}{err}");
    let name = out
        .trim()
        .strip_prefix("pipelinerun.flowmason.io/")
        .and_then(|s| s.strip_suffix(" created"))
        .expect("fm k8s rerun prints the new PipelineRun")
        .to_string();
    assert!(name.starts_with("flaky-rerun-"), "{name}");
    let rerun = wait_phase(&runs, &name, &terminal()).await;
    let status = rerun.status.clone().expect("status");
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    assert_eq!(
        rerun
            .spec
            .rerun_of
            .as_ref()
            .map(|r| (r.run_id.clone(), r.from_failed)),
        Some((
            failed
                .status
                .as_ref()
                .and_then(|s| s.run_id.clone())
                .expect("runId"),
            true
        ))
    );
    // `first` was taken over from the old run, not called again.
    assert_eq!((calls("first"), calls("second")), (1, 2));

    // The history API of fm serve reruns too (a plain rerun runs every stage).
    let server = fm.url();
    let run_id = status.run_id.expect("runId");
    let response = reqwest::Client::new()
        .post(format!("{server}/api/v1/runs/{run_id}/rerun"))
        .send()
        .await
        .expect("rerun request");
    assert_eq!(response.status().as_u16(), 201);
    let started: Value = response.json().await.expect("json");
    assert_eq!(started["rerunOf"], json!(run_id));
    let api_name = started["runName"].as_str().expect("runName").to_string();
    let again = wait_phase(&runs, &api_name, &terminal()).await;
    assert_eq!(
        again.status.as_ref().and_then(|s| s.phase),
        Some(RunPhase::Succeeded)
    );
    assert_eq!(
        again.status.as_ref().and_then(|s| s.run_id.clone()),
        started["runId"].as_str().map(String::from)
    );
    assert_eq!((calls("first"), calls("second")), (2, 3));
    // A succeeded run has no failed stage to rerun from.
    let refused = reqwest::Client::new()
        .post(format!(
            "{server}/api/v1/runs/{run_id}/rerun?fromFailed=true"
        ))
        .send()
        .await
        .expect("rerun request");
    assert_eq!(refused.status().as_u16(), 409);
    // A rerun from failed of a run the event log does not have fails before start, naming the field.
    let mut orphan = run_of("flaky-orphan", "flaky", json!({}));
    orphan.spec.rerun_of = Some(flowmason::model::RerunOf {
        run_id: "0190a0a0-0000-7000-8000-000000000000".into(),
        from_failed: true,
    });
    runs.create(&PostParams::default(), &orphan)
        .await
        .expect("create orphan rerun");
    let orphan = wait_phase(&runs, "flaky-orphan", &terminal()).await;
    let status = orphan.status.expect("status");
    assert_eq!(status.phase, Some(RunPhase::Failed));
    let message = status.error.map(|e| e.message).unwrap_or_default();
    assert!(
        message.contains("spec.rerunOf.runId")
            && message.contains("0190a0a0-0000-7000-8000-000000000000"),
        "{message}"
    );
    // `fm k8s rerun` takes a run id shortened while it stays unambiguous, as `fm history show` does.
    let short = &run_id[..run_id.len() - 4];
    let (code, out, err) = fm_k8s(&fm, &["rerun", short]);
    assert_eq!(code, 0, "{out}{err}");
    let name = out
        .trim()
        .strip_prefix("pipelinerun.flowmason.io/")
        .and_then(|s| s.strip_suffix(" created"))
        .expect("fm k8s rerun prints the new PipelineRun")
        .to_string();
    let by_prefix = wait_phase(&runs, &name, &terminal()).await;
    assert_eq!(
        by_prefix.spec.rerun_of.as_ref().map(|r| r.run_id.as_str()),
        Some(run_id.as_str())
    );
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm_k8s_verbs_deploy_list_status_run_wait_logs_follow_cancel_delete() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    // A FlowMason pipeline.json, converted on deploy.
    let file = data.path().join("pipeline.json");
    std::fs::write(
        &file,
        json!({"name": "greeter", "version": "1.0.0", "sample_input": {"who": "Sample"}, "stages": [
            {"id": "say", "component_type": "logger", "config": {"message": "hello {{input.who}}"}},
            {"id": "pause", "component_type": "delay", "depends_on": ["say"], "config": {"ms": 300}},
            {"id": "out", "component_type": "json_transform", "depends_on": ["pause"],
             "config": {"data": {"greeting": "hi {{input.who}}"}}}
        ]})
        .to_string(),
    )
    .expect("write");
    let (code, out, err) = fm_k8s(&fm, &["deploy", file.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("pipeline.flowmason.io/greeter deployed"),
        "{out}"
    );
    let (code, out, _) = fm_k8s(&fm, &["list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("greeter")), "{out}");
    let (code, out, err) = fm_k8s(&fm, &["run", "greeter", "--input", "who=Ada", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let output: Value = serde_json::from_str(&out).expect("output json");
    assert_eq!(output["result"]["greeting"], json!("hi Ada"));
    assert!(err.contains("Succeeded"), "progress view: {err}");
    // Its logs: the logger's line and the run's end.
    let client = fm.client().await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let run_name = runs.list(&Default::default()).await.expect("list").items[0]
        .metadata
        .name
        .clone()
        .expect("name");
    let (code, out, _) = fm_k8s(&fm, &["logs", &run_name]);
    assert_eq!(code, 0);
    assert!(out.contains("[say]") && out.contains("hello Ada"), "{out}");
    assert!(out.contains("RunSucceeded"), "{out}");
    // Each stage's start and end, with duration and attempts, also for stages that logged nothing.
    assert!(out.contains("[pause] started (delay)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("[pause] succeeded in ") && l.ends_with("(1 attempt)")),
        "{out}"
    );
    // logs -f follows a running run until it ends.
    let (code, out, _) = fm_k8s(&fm, &["run", "greeter", "--input", "who=Bob"]);
    assert_eq!(code, 0);
    let second = out
        .trim()
        .trim_start_matches("pipelinerun.flowmason.io/")
        .trim_end_matches(" created")
        .to_string();
    let (code, out, _) = fm_k8s(&fm, &["logs", &second, "-f"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("hello Bob") && out.contains("RunSucceeded"),
        "{out}"
    );
    let (code, out, _) = fm_k8s(&fm, &["status", "greeter"]);
    assert_eq!(code, 0);
    assert!(out.contains("Ready=True") && out.contains(&second), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("RUN") && l.contains("REASON") && l.contains("STAGES")),
        "{out}"
    );
    let (code, out, _) = fm_k8s(&fm, &["status", "greeter", "-o", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["pipeline"]["metadata"]["name"], json!("greeter"));
    // Without inputs a run takes the pipeline's sample input, as `fm run` does.
    let (code, out, err) = fm_k8s(&fm, &["run", "greeter", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let output: Value = serde_json::from_str(&out).expect("output json");
    assert_eq!(output["result"]["greeting"], json!("hi Sample"));
    // A run named as the seed names it, printed as `kubectl -o name` does; none of a Pipeline that
    // does not exist.
    let (code, out, err) = fm_k8s(
        &fm,
        &["run", "greeter", "--name", "greeter-run-001", "-o", "name"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "pipelinerun.flowmason.io/greeter-run-001\n");
    let (code, out, err) = fm_k8s(&fm, &["run", "absent"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("Pipeline default/absent not found"), "{err}");
    assert!(
        runs.get_opt("absent").await.expect("get").is_none()
            && runs
                .list(&Default::default())
                .await
                .expect("list")
                .items
                .iter()
                .all(|r| r.spec.pipeline_ref != "absent"),
        "no PipelineRun of a missing Pipeline"
    );
    // cancel
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "sleepy", delay_stages(60_000)).await;
    // Ctrl-C while waiting leaves the run going and says how to cancel it.
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args([
            "k8s", "run", "sleepy", "--name", "sleepy-0", "--input", "x=1", "--wait",
        ])
        .arg("--kubeconfig")
        .arg(&fm.kubeconfig)
        .env("FM_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fm k8s run --wait");
    wait_phase(&runs, "sleepy-0", &[RunPhase::Running]).await;
    let interrupted = Command::new("kill")
        .args(["-INT", &waiting.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let status = waiting.wait().expect("wait");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut waiting.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("goes on") && err.contains("fm k8s cancel sleepy-0"),
        "{err}"
    );
    let still = runs.get("sleepy-0").await.expect("get");
    assert_eq!(still.status.and_then(|s| s.phase), Some(RunPhase::Running));
    let (code, _, _) = fm_k8s(&fm, &["cancel", "sleepy-0"]);
    assert_eq!(code, 0);
    create_run(&runs, "sleepy-1", "sleepy", json!({"x": 1})).await;
    wait_phase(&runs, "sleepy-1", &[RunPhase::Running]).await;
    let (code, _, _) = fm_k8s(&fm, &["cancel", "sleepy-1"]);
    assert_eq!(code, 0);
    let run = wait_phase(&runs, "sleepy-1", &terminal()).await;
    assert_eq!(run.status.and_then(|s| s.phase), Some(RunPhase::Cancelled));
    // delete: the Pipeline and (owned) its runs.
    let (code, out, _) = fm_k8s(&fm, &["delete", "greeter"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = fm_k8s(&fm, &["list", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["kind"], json!("List"), "{v}");
    let (code, out, err) = fm_k8s(&fm, &["list", "-n", "nowhere"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(err.trim(), "No resources found in nowhere namespace.");
    assert!(
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|p| p["metadata"]["name"] != json!("greeter"))),
        "{v}"
    );
    // Bad input is reported, naming the object.
    let (code, _, err) = fm_k8s(&fm, &["status", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("Pipeline default/nope not found"), "{err}");
    // An invalid spec is refused before it is sent, as `fm validate` reports it (the seed's
    // `json_transform` without `data`).
    let bad = data.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: flowmason.io/v1\nkind: Pipeline\nmetadata: {name: bad}\nspec:\n  stages:\n    - {id: a, componentType: json_transform}\n",
    )
    .expect("write");
    let (code, out, err) = fm_k8s(&fm, &["deploy", bad.to_str().expect("path")]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("stages[0].config: json_transform: `data` is required"),
        "{err}"
    );
    let (code, _, err) = fm_k8s(&fm, &["status", "bad"]);
    assert!(
        code != 0 && err.contains("Pipeline default/bad not found"),
        "{err}"
    );
    // A 422 is printed as kubectl prints it: each problem once, no Rust debug dump.
    std::fs::write(
        &bad,
        "apiVersion: flowmason.io/v1\nkind: Pipeline\nmetadata: {name: Bad_Name}\nspec:\n  stages:\n    - {id: a, componentType: noop}\n",
    )
    .expect("write");
    let (code, _, err) = fm_k8s(&fm, &["deploy", bad.to_str().expect("path")]);
    assert_ne!(code, 0);
    assert_eq!(err.matches("\n* ").count(), 1, "{err}");
    assert!(err.contains("is invalid:\n* metadata.name: "), "{err}");
    assert!(
        !err.contains("Status {") && !err.contains("ErrorResponse"),
        "{err}"
    );
    // A typo in a field name is refused before anything is sent, naming the field and the fix.
    let typo = data.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: flowmason.io/v1\nkind: Pipeline\nmetadata: {name: typo}\nspec:\n  stages:\n    - {id: a, componentType: noop}\n    - {id: b, componentType: noop, dependOn: [a]}\n",
    )
    .expect("write");
    let (code, _, err) = fm_k8s(&fm, &["deploy", typo.to_str().expect("path")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("spec.stages[1].dependOn: unknown field; did you mean \"dependsOn\"?"),
        "{err}"
    );
    let (code, _, err) = fm_k8s(&fm, &["status", "typo"]);
    assert_ne!(code, 0, "not deployed: {err}");
    fm.stop();
}

/// The virtualenv `scripts/test.sh` creates with `flowmason` and `kubernetes` from PyPI.
fn python_env() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    python.exists().then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_python_client_drives_fm_serve() {
    let Some(python) = python_env() else {
        // scripts/test.sh always creates it; a bare `cargo test` without network cannot.
        eprintln!(
            "target/pyenv is missing: run scripts/test.sh to install flowmason and kubernetes from PyPI"
        );
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/compat.py");
    let out = tokio::task::spawn_blocking({
        let kubeconfig = fm.kubeconfig.clone();
        move || {
            Command::new(python)
                .arg(script)
                .arg(kubeconfig)
                .output()
                .expect("python runs")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(seen["pipeline"], json!("py-pipeline"));
    assert_eq!(seen["phase"], json!("Succeeded"));
    assert_eq!(seen["output"]["result"]["greeting"], json!("hello Python"));
    // The names the client reads for the stage counts.
    assert_eq!(seen["stages"], json!([2, 2]));
    assert_eq!(seen["llm_secret_ref"], json!(true));
    assert_eq!(seen["get_run"], json!("Succeeded"));
    assert_eq!(seen["list_runs_of_pipeline"], json!(["py-run-1"]));
    assert_eq!(seen["list_runs"], json!(["py-run-1"]));
    assert_eq!(seen["cancelled"], json!("Cancelled"));
    assert_eq!(seen["pipelines_after_delete"], json!(["py-slow"]));
    // What the Python client sent was stored as it meant it: snake_case normalised, boolean
    // parallelism, timeout as a duration string.
    let client = fm.client().await;
    let slow = Api::<Pipeline>::namespaced(client, "default")
        .get("py-slow")
        .await
        .expect("get");
    assert_eq!(
        slow.spec.parallelism,
        Some(flowmason::model::ParallelismSpec::Enabled(false))
    );
    fm.stop();
}

fn manifests(dir: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read manifest");
            serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        })
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == json!(kind))
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_are_consistent_least_privilege_and_apply_to_fm_serve() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let docs = manifests("deploy/operator");
    let sa: Vec<ServiceAccount> = of_kind(&docs, "ServiceAccount");
    let sa_name = sa[0].metadata.name.clone().expect("sa name");
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    for rule in roles[0].rules.iter().flatten() {
        assert!(
            !rule.verbs.iter().any(|v| v == "*" || v == "delete"),
            "{rule:?}"
        );
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "*"),
            "{rule:?}"
        );
        if rule.resources.iter().flatten().any(|r| r == "secrets") {
            assert_eq!(rule.verbs, ["get", "list", "watch"]);
        }
    }
    let leases: Vec<Role> = of_kind(&docs, "Role");
    assert!(
        leases[0]
            .rules
            .iter()
            .flatten()
            .all(|r| r.api_groups == Some(vec!["coordination.k8s.io".into()]))
    );
    let bindings: Vec<ClusterRoleBinding> = of_kind(&docs, "ClusterRoleBinding");
    let role_bindings: Vec<RoleBinding> = of_kind(&docs, "RoleBinding");
    assert!(
        bindings[0]
            .subjects
            .iter()
            .flatten()
            .any(|s| s.name == sa_name)
    );
    assert!(
        role_bindings[0]
            .subjects
            .iter()
            .flatten()
            .any(|s| s.name == sa_name)
    );
    let sets: Vec<StatefulSet> = of_kind(&docs, "StatefulSet");
    let spec = sets[0].spec.clone();
    let pod = spec.template.spec.clone().expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some(sa_name.as_str()));
    let claims = spec.volume_claim_templates.clone().unwrap_or_default();
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let container = &pod.containers[0];
    assert!(container.args.iter().flatten().any(|a| a == "operator"));
    assert!(
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "data" && m.mount_path == "/data")
    );
    let ports: HashSet<String> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    let services: Vec<Service> = of_kind(&docs, "Service");
    let svc = services[0].spec.clone().expect("svc");
    assert!(
        services
            .iter()
            .any(|s| s.metadata.name == spec.service_name),
        "no Service named as the StatefulSet's serviceName"
    );
    for port in svc.ports.iter().flatten() {
        let target = match &port.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s.clone(),
            other => panic!("target port by name expected, got {other:?}"),
        };
        assert!(ports.contains(&target), "{target} is not a container port");
    }
    let pod_labels = spec
        .template
        .metadata
        .clone()
        .and_then(|m| m.labels)
        .unwrap_or_default();
    for (k, v) in svc.selector.clone().unwrap_or_default() {
        assert_eq!(pod_labels.get(&k), Some(&v));
    }
    assert!(docs.iter().any(|d| d["kind"] == json!("ServiceMonitor")));
    // The Helm chart carries the same CRDs and a template per manifest.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in ["pipeline.yaml", "pipelinerun.yaml"] {
        assert_eq!(
            std::fs::read_to_string(root.join("deploy/crds").join(crd)).expect("crd"),
            std::fs::read_to_string(root.join("deploy/helm/flowmason-operator/crds").join(crd))
                .expect("chart crd"),
            "{crd} differs in the chart"
        );
    }
    for template in [
        "rbac.yaml",
        "statefulset.yaml",
        "service.yaml",
        "servicemonitor.yaml",
    ] {
        let text = std::fs::read_to_string(
            root.join("deploy/helm/flowmason-operator/templates")
                .join(template),
        )
        .expect("template");
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        let static_text =
            std::fs::read_to_string(root.join("deploy/operator").join(template)).expect("static");
        let static_kinds: Vec<&str> = static_text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(kinds, static_kinds, "{template}");
    }
    // kubectl applies what fm serve serves: the namespace and the CRDs (server-side dry run, then real).
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let crds = root.join("deploy/crds");
    let ns = root.join("deploy/operator/namespace.yaml");
    let (ok, out) = fm.kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-f",
            crds.to_str().expect("path"),
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = fm.kubectl(
        &[
            "apply",
            "-f",
            crds.to_str().expect("path"),
            "-f",
            ns.to_str().expect("path"),
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = fm.kubectl(&["get", "namespace", "flowmason-system"], None);
    assert!(ok && out.contains("flowmason-system"), "{out}");
    fm.stop();
}

/// `doc` as the Kubernetes type `T`, which must hold all of it: serializing it again gives `doc` back,
/// so a misspelt or misplaced field (one the API server would reject or drop) fails here.
fn strictly<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]));
    let again = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &again, doc,
        "{} {} has fields its type does not know",
        doc["kind"], doc["metadata"]["name"]
    );
    typed
}

/// The replicated install (`deploy/operator-replicated.yaml`: three sharded replicas on JetStream) is
/// checked as the single-replica manifests are: every object well-formed for its type, RBAC least
/// privilege (cluster-wide exactly what one replica needs; the Lease verbs only on Leases in its
/// namespace), selectors and names that meet, and what `fm serve` serves of it (the namespace and the
/// CRDs) applied with kubectl. `fm serve` serves no apps, RBAC or policy API, so those objects are
/// checked through their types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_deploy_manifests_are_consistent_least_privilege_and_apply_to_fm_serve() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = root.join("deploy/operator-replicated.yaml");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(
        &std::fs::read_to_string(&bundle).expect("read the replicated bundle"),
    )
    .expect("the replicated bundle parses")
    .into_iter()
    .filter(|d| !d.is_null())
    .collect();
    let one = |kind: &str| -> &Value {
        let mut found = docs.iter().filter(|d| d["kind"] == json!(kind));
        let doc = found.next().unwrap_or_else(|| panic!("no {kind}"));
        assert!(found.next().is_none(), "more than one {kind}");
        doc
    };
    let namespace: Namespace = strictly(one("Namespace"));
    let ns = namespace.metadata.name.expect("namespace name");
    let sa: ServiceAccount = strictly(one("ServiceAccount"));
    let sa_name = sa.metadata.name.expect("sa name");
    // Cluster-wide: the same rules as the single-replica operator, nothing more.
    let cluster_role: ClusterRole = strictly(one("ClusterRole"));
    let single: Vec<ClusterRole> = of_kind(&manifests("deploy/operator"), "ClusterRole");
    assert_eq!(cluster_role.rules, single[0].rules);
    for rule in cluster_role.rules.iter().flatten() {
        assert!(
            !rule.verbs.iter().any(|v| v == "*" || v == "delete"),
            "{rule:?}"
        );
    }
    // In its namespace: Leases only, and no verb beyond what the shard and member Leases need.
    let role: Role = strictly(one("Role"));
    assert_eq!(role.metadata.namespace.as_deref(), Some(ns.as_str()));
    let rules = role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0].api_groups,
        Some(vec!["coordination.k8s.io".into()])
    );
    assert_eq!(rules[0].resources, Some(vec!["leases".into()]));
    assert_eq!(
        rules[0].verbs,
        [
            "get", "list", "watch", "create", "update", "patch", "delete"
        ]
    );
    let binding: ClusterRoleBinding = strictly(one("ClusterRoleBinding"));
    assert_eq!(
        binding.role_ref.name,
        cluster_role.metadata.name.expect("name")
    );
    let role_binding: RoleBinding = strictly(one("RoleBinding"));
    assert_eq!(
        role_binding.role_ref.name,
        role.metadata.name.expect("name")
    );
    for subjects in [&binding.subjects, &role_binding.subjects] {
        assert!(
            subjects
                .iter()
                .flatten()
                .any(|s| s.name == sa_name && s.namespace.as_deref() == Some(ns.as_str()))
        );
    }
    let set: StatefulSet = strictly(one("StatefulSet"));
    let spec = set.spec;
    let pod = spec.template.spec.clone().expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some(sa_name.as_str()));
    let pod_labels = spec
        .template
        .metadata
        .clone()
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selects = |labels: &Option<BTreeMap<String, String>>| {
        let labels = labels.clone().unwrap_or_default();
        !labels.is_empty() && labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects(&spec.selector.match_labels));
    let budget: PodDisruptionBudget = strictly(one("PodDisruptionBudget"));
    assert_eq!(budget.metadata.namespace.as_deref(), Some(ns.as_str()));
    let budget_selector = budget.spec.and_then(|s| s.selector).expect("selector");
    assert!(selects(&budget_selector.match_labels));
    let spread = pod
        .affinity
        .and_then(|a| a.pod_anti_affinity)
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
        .unwrap_or_default();
    assert!(spread.iter().any(|t| {
        selects(
            &t.pod_affinity_term
                .label_selector
                .clone()
                .and_then(|s| s.match_labels),
        )
    }));
    let services: Vec<Service> = docs
        .iter()
        .filter(|d| d["kind"] == json!("Service"))
        .map(strictly::<Service>)
        .collect();
    assert!(
        services
            .iter()
            .any(|s| s.metadata.name == spec.service_name),
        "no Service named as the StatefulSet's serviceName"
    );
    let ports: HashSet<String> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    for service in &services {
        let svc = service.spec.clone().expect("svc");
        assert!(selects(&svc.selector));
        for port in svc.ports.iter().flatten() {
            match &port.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    assert!(ports.contains(s), "{s} is not a container port")
                }
                other => panic!("target port by name expected, got {other:?}"),
            }
        }
    }
    // Every volume mounted is declared, and no claim is: the log is in NATS.
    let volumes: HashSet<String> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    for mount in pod.containers[0].volume_mounts.iter().flatten() {
        assert!(
            volumes.contains(&mount.name),
            "{} is not a volume",
            mount.name
        );
    }
    assert!(spec.volume_claim_templates.is_none());
    // kubectl applies what fm serve serves of it: the namespace and the CRDs (server-side dry run,
    // then real).
    let served: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == json!("Namespace") || d["kind"] == json!("CustomResourceDefinition")
        })
        .collect();
    assert_eq!(served.len(), 3, "the namespace and two CRDs");
    let served = json!({"apiVersion": "v1", "kind": "List", "items": served}).to_string();
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let (ok, out) = fm.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&served));
    assert!(ok, "{out}");
    let (ok, out) = fm.kubectl(&["apply", "-f", "-"], Some(&served));
    assert!(ok, "{out}");
    let (ok, out) = fm.kubectl(&["get", "namespace", &ns], None);
    assert!(ok && out.contains(&ns), "{out}");
    let (ok, out) = fm.kubectl(&["get", "crd", "pipelineruns.flowmason.io"], None);
    assert!(ok, "{out}");
    fm.stop();
}

/// With the controllers running, the Pipeline controller owns the triggers: editing a Pipeline's
/// webhook path through the API re-arms it (the old path answers 404, the new one 202 and creates a
/// run), and deleting the Pipeline disarms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_pipelines_webhook_through_the_api_re_arms_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let mut hooked = pipeline("hooked", json!([{"id": "a", "componentType": "noop"}]));
    hooked.spec.triggers = Some(
        serde_json::from_value(
            json!({"webhook": {"enabled": true, "path": "/webhooks/old", "auth": "none"}}),
        )
        .expect("triggers"),
    );
    pipelines
        .create(&PostParams::default(), &hooked)
        .await
        .expect("create pipeline");
    let server = fm.url();
    let http = reqwest::Client::new();
    let post = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{server}{path}"));
        async move {
            http.post(url)
                .body(r#"{"x": 1}"#)
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    eventually("/webhooks/old armed", || async {
        (post("/webhooks/old").await == 202).then_some(())
    })
    .await;

    pipelines
        .patch(
            "hooked",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"triggers": {"webhook": {"path": "/webhooks/new"}}}})),
        )
        .await
        .expect("patch the webhook path");
    eventually("/webhooks/new armed", || async {
        (post("/webhooks/new").await == 202).then_some(())
    })
    .await;
    assert_eq!(post("/webhooks/old").await, 404, "the old path is disarmed");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let fired = runs
        .list(&kube::api::ListParams::default().labels("flowmason.io/trigger=webhook"))
        .await
        .expect("list runs")
        .items
        .len();
    assert!(fired >= 2, "one run per accepted webhook call, got {fired}");

    pipelines
        .delete("hooked", &DeleteParams::default())
        .await
        .expect("delete pipeline");
    eventually("/webhooks/new disarmed", || async {
        (post("/webhooks/new").await == 404).then_some(())
    })
    .await;
    fm.stop();
}

/// Holds the operator's metadata patches of PipelineRuns (the finalizer it adds first) until opened,
/// so that reconciles stay in progress for as long as a test needs; counts the requests it holds.
#[derive(Clone)]
struct PatchGate {
    open: tokio::sync::watch::Sender<bool>,
    held: Arc<AtomicUsize>,
}

impl PatchGate {
    fn closed() -> PatchGate {
        PatchGate {
            open: tokio::sync::watch::channel(false).0,
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A client that sends everything through `inner`, PipelineRun metadata patches once the gate opens.
    fn client(&self, inner: Client) -> Client {
        let gate = self.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let (gate, inner) = (gate.clone(), inner.clone());
            async move {
                let path = request.uri().path();
                if request.method() == http::Method::PATCH
                    && path.contains("/pipelineruns/")
                    && !path.ends_with("/status")
                {
                    gate.held.fetch_add(1, Ordering::SeqCst);
                    let mut open = gate.open.subscribe();
                    let _ = open.wait_for(|open| *open).await;
                }
                inner.send(request).await
            }
        });
        Client::new(service, "default")
    }
}

fn queue_depth(metrics: &flowmason::metrics::Metrics, controller: &str) -> Option<i64> {
    let prefix = format!("flowmason_controller_queue_depth{{controller=\"{controller}\"}} ");
    metrics
        .render()
        .expect("render metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().expect("gauge")))
}

/// The operator in process, its client behind a [`PatchGate`]: three runs' reconciles are held in
/// progress, a change to each is then seen by the controller and must wait, and the gauge shows exactly
/// those three until the gate opens and the queue drains.
#[test]
fn queue_depth_counts_runs_whose_changes_wait_for_a_reconcile() {
    flowmason::runtime::block_on(|| async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::start(ServeConfig::new(dir.path().join("api")))
            .await
            .expect("server starts");
        let direct =
            Client::try_from(server.client_config().await.expect("kubeconfig")).expect("client");
        install_crds(&direct).await;
        let gate = PatchGate::closed();
        let metrics = Arc::new(flowmason::metrics::Metrics::new().expect("metrics"));
        let events =
            EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("events");
        let operator = Operator::new(
            gate.client(direct.clone()),
            events,
            builtin_registry(),
            OperatorConfig {
                metrics: Some(metrics.clone()),
                ..OperatorConfig::default()
            },
        );
        let stop = CancellationToken::new();
        let running = actix::spawn(operator.run(stop.clone()));

        let pipelines: Api<Pipeline> = Api::namespaced(direct.clone(), "default");
        let runs: Api<PipelineRun> = Api::namespaced(direct.clone(), "default");
        create_pipeline(&pipelines, "queued", delay_stages(1)).await;
        for i in 0..3 {
            create_run(&runs, &format!("q-{i}"), "queued", json!({"x": i})).await;
        }
        eventually("three reconciles held at their finalizer patch", || async {
            (gate.held.load(Ordering::SeqCst) == 3).then_some(())
        })
        .await;
        assert_eq!(queue_depth(&metrics, "pipelinerun"), Some(0));
        for i in 0..3 {
            runs.patch(
                &format!("q-{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .expect("label run");
        }
        eventually("the three changes queued", || async {
            (queue_depth(&metrics, "pipelinerun") == Some(3)).then_some(())
        })
        .await;
        gate.open.send_replace(true);
        for i in 0..3 {
            let done = wait_phase(&runs, &format!("q-{i}"), &terminal()).await;
            let status = done.status.expect("status");
            assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
        }
        // The final status writes are changes too: the queue drains once they are reconciled.
        eventually("both queues drained", || async {
            (queue_depth(&metrics, "pipelinerun") == Some(0)
                && queue_depth(&metrics, "pipeline") == Some(0))
            .then_some(())
        })
        .await;
        stop.cancel();
        let _ = running.await;
        server.shutdown().await;
    })
    .expect("runtime");
}

// ---------------------------------------------------------------------------------------------------
// Who may read run data

/// Every route of the history and metrics surface, with the status a request carrying the right token
/// gets (the run id is unknown: 404 proves the request passed the token check and reached the route).
fn run_data_routes() -> Vec<(&'static str, String)> {
    let run = "7d1c54b3-8a5e-4a8e-9f4e-1b2c3d4e5f60";
    vec![
        ("GET", "/api/v1/runs".into()),
        ("GET", format!("/api/v1/runs/{run}")),
        ("GET", format!("/api/v1/runs/{run}/events")),
        ("POST", format!("/api/v1/runs/{run}/rerun")),
        ("GET", "/api/v1/pipelines/default/hello/stats".into()),
        ("GET", "/api/v1/pipelines".into()),
        ("GET", "/api/v1/pipelines/default/hello".into()),
        ("POST", "/api/v1/pipelines/default/hello/runs".into()),
        ("POST", format!("/api/v1/runs/{run}/cancel")),
        ("GET", "/metrics".into()),
    ]
}

/// Asks every route of `routes` without a token, with a wrong one and with `token`: the first two are
/// always 401, the last never; `/healthz` and `/readyz` answer 200 without a token.
async fn assert_run_data_needs_the_token(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    routes: &[(&str, String)],
) {
    let ask = |method: &str, path: &str, token: Option<&str>| {
        let url = format!("{base}{path}");
        let mut request = match method {
            "POST" => http.post(url).json(&json!({})),
            _ => http.get(url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("answered").status().as_u16() }
    };
    for (method, path) in routes {
        assert_eq!(
            ask(method, path, None).await,
            401,
            "{method} {path} without a token"
        );
        assert_eq!(
            ask(method, path, Some("not-the-token")).await,
            401,
            "{method} {path} with a wrong token"
        );
        let with = ask(method, path, Some(token)).await;
        // 501: `fm history serve` has no cluster to start or cancel runs in; the route was reached.
        assert!(
            with != 401 && (with < 500 || with == 501),
            "{method} {path} with the token: {with}"
        );
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            ask("GET", probe, None).await,
            200,
            "{probe} without a token"
        );
    }
}

/// A reqwest client trusting the CA of `fm`'s kubeconfig, and the token `fm serve` keeps in `data`.
fn tls_client_of(fm: &Fm, data: &Path) -> (reqwest::Client, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&fm.kubeconfig).expect("kubeconfig");
    let cluster = kubeconfig.clusters[0].cluster.clone().expect("cluster");
    let ca = cluster
        .certificate_authority_data
        .expect("the kubeconfig carries the CA");
    let pem =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca).expect("base64");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        .build()
        .expect("client");
    let token = std::fs::read_to_string(data.join("api/token")).expect("token");
    (http, token.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm_serve_with_a_required_token_refuses_run_data_without_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &["--tls", "--require-token", "--no-triggers"]);
    let (http, token) = tls_client_of(&fm, data.path());
    assert_run_data_needs_the_token(&http, &fm.url(), &token, &run_data_routes()).await;
    fm.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_public_opens_only_metrics() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(
        data.path(),
        &[
            "--tls",
            "--require-token",
            "--metrics-public",
            "--no-triggers",
        ],
    );
    let (http, token) = tls_client_of(&fm, data.path());
    let base = fm.url();
    let mut routes = run_data_routes();
    routes.retain(|(_, path)| path != "/metrics");
    assert_run_data_needs_the_token(&http, &base, &token, &routes).await;
    let scrape = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(scrape.status().as_u16(), 200);
    fm.stop();
}

#[test]
fn fm_serve_refuses_a_required_token_over_plain_http() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--require-token",
            "--data-dir",
        ])
        .arg(data.path())
        .env("FM_LOG", "error")
        .output()
        .expect("fm serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--require-token needs --tls"), "{stderr}");
}

/// Starts `fm <args>` and returns it with the address it prints after `prefix` on `stderr` or stdout.
fn start_printing_address(args: &[&str], prefix: &str, on_stderr: bool) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args(args)
        .env("FM_LOG", "error")
        .env_remove("FM_HTTP_TOKEN_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fm starts");
    let stream: Box<dyn std::io::Read + Send> = if on_stderr {
        Box::new(child.stderr.take().expect("stderr"))
    } else {
        Box::new(child.stdout.take().expect("stdout"))
    };
    // Read on a thread of its own, so that a process that never prints the line fails the test
    // instead of hanging it.
    let (found, address) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines().map_while(Result::ok);
        let printed = lines.by_ref().find_map(|l| {
            l.split_once(wanted.as_str())
                .map(|(_, rest)| rest.to_string())
        });
        let _ = found.send(printed);
        lines.for_each(drop);
    });
    match address.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(address)) => (child, address),
        outcome => {
            let _ = child.kill();
            panic!("fm did not print a line with {prefix:?}: {outcome:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm_operator_http_port_needs_the_token_from_its_file() {
    let api = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(api.path(), &["--no-controllers", "--no-triggers"]);
    let engine_dir = tempfile::tempdir().expect("tempdir");
    let token_file = engine_dir.path().join("http-token");
    std::fs::write(&token_file, "operator-http-token\n").expect("token file");
    let (mut operator, base) = start_printing_address(
        &[
            "operator",
            "--kubeconfig",
            fm.kubeconfig.to_str().expect("path"),
            "--data-dir",
            engine_dir.path().to_str().expect("path"),
            "--no-leader-election",
            "--no-triggers",
            "--http-bind",
            "127.0.0.1:0",
            "--http-token-file",
            token_file.to_str().expect("path"),
        ],
        "/healthz and /readyz on ",
        true,
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    assert_run_data_needs_the_token(&http, &base, "operator-http-token", &run_data_routes()).await;
    let _ = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let _ = operator.wait();
    fm.stop();
}

#[test]
fn fm_operator_refuses_a_public_http_port_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args(["operator", "--http-bind", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("FM_LOG", "error")
        .env_remove("FM_HTTP_TOKEN_FILE")
        .output()
        .expect("fm operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--http-token-file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm_history_serve_needs_the_token_from_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("http-token");
    std::fs::write(&token_file, "history-http-token").expect("token file");
    let (mut server, base) = start_printing_address(
        &[
            "history",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().expect("path"),
            "--http-token-file",
            token_file.to_str().expect("path"),
        ],
        "FlowMason history API listening on ",
        false,
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    assert_run_data_needs_the_token(&http, &base, "history-http-token", &run_data_routes()).await;
    // `fm history --server` sends the token from the same file.
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args(["history", "--server", &base, "--http-token-file"])
        .arg(&token_file)
        .output()
        .expect("fm history --server");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args(["history", "--server", &base])
        .env_remove("FM_HTTP_TOKEN_FILE")
        .output()
        .expect("fm history --server");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_through_graceful_restarts_of_fm_serve_is_resumed_every_time_never_quarantined() {
    let data = tempfile::tempdir().expect("tempdir");
    let first = Fm::serve(data.path(), &[]);
    let client = first.client().await;
    let mut fm = Some(first);
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let mut runs: Api<PipelineRun> = Api::namespaced(client, "default");
    create_pipeline(&pipelines, "slow", delay_stages(600_000)).await;
    create_run(&runs, "r", "slow", json!({"x": 1})).await;
    let mut run_id = String::new();
    // Attempt n of the stage runs in the n-th process; each process is stopped with SIGTERM.
    const PROCESSES: u32 = 4;
    for attempt in 1..=PROCESSES {
        run_id = eventually(&format!("attempt {attempt} running"), || async {
            let status = runs.get_opt("r").await.ok().flatten()?.status?;
            let wait = status.stages.iter().find(|s| s.id == "wait")?;
            (wait.attempts == attempt && status.phase == Some(RunPhase::Running))
                .then_some(status.run_id?)
        })
        .await;
        if let Some(running) = fm.take() {
            running.stop();
        }
        if attempt < PROCESSES {
            let next = Fm::serve(data.path(), &[]);
            runs = Api::namespaced(next.client().await, "default");
            fm = Some(next);
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .args(["history", "show", &run_id, "-o", "json", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("fm history show");
    let shown: Value = serde_json::from_slice(&out.stdout).expect("history json");
    assert_eq!(shown["run"]["phase"], json!("Running"), "{shown}");
    let resumes: Vec<&Value> = shown["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == json!("RunResumed"))
        .collect();
    assert_eq!(resumes.len(), 3, "one per restart: {resumes:?}");
    assert!(
        resumes.iter().all(|e| e["after_crash"] == json!(false)),
        "every restart was graceful: {resumes:?}"
    );
}

/// A FlowMason project deployed with `fm k8s deploy` carries its `flowmason.json` providers into the
/// Pipeline; on `fm serve` it runs with the key from a Secret through `spec.env`, as the seed injects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_pipeline_deployed_with_fm_k8s_runs_with_its_key_from_a_secret_in_env() {
    use std::sync::Mutex;
    const KEY: &str = "sk-ant-project-4242";
    // The Anthropic Messages API, recording the key of each call.
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = keys.clone();
    let router = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    let key = headers
                        .get("x-api-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    seen.lock().expect("lock").push(key.to_string());
                    axum::Json(json!({"id": "m", "type": "message", "role": "assistant",
                        "model": body["model"], "content": [{"type": "text", "text": "From the project."}],
                        "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 2}}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let data = tempfile::tempdir().expect("tempdir");
    let project = data.path().join("project");
    std::fs::create_dir_all(project.join("pipelines")).expect("mkdir");
    std::fs::write(
        project.join("flowmason.json"),
        r#"{"name": "demo", "providers": {"default": "anthropic", "anthropic": {"model": "claude-project"}}}"#,
    )
    .expect("write manifest");
    let file = project.join("pipelines/main.pipeline.json");
    std::fs::write(
        &file,
        r#"{"name": "project-main", "category": "demo", "tags": ["a", "b"], "stages": [
            {"id": "write", "component": "generator", "config": {"prompt": "Write."}, "position": {"x": 1, "y": 2}}
        ], "output_stage_id": "write"}"#,
    )
    .expect("write pipeline");

    let fm = Fm::serve(data.path(), &[]);
    let (code, out, err) = fm_k8s(&fm, &["deploy", file.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    let client = fm.client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let deployed = pipelines.get("project-main").await.expect("deployed");
    let providers = deployed.spec.providers.clone().expect("providers carried");
    assert_eq!(providers.default.as_deref(), Some("anthropic"));
    let anthropic = providers.anthropic.expect("anthropic");
    assert_eq!(anthropic.model.as_deref(), Some("claude-project"));
    assert_eq!(anthropic.secret_ref, None, "no key travels with the deploy");
    assert_eq!(
        deployed
            .metadata
            .annotations
            .unwrap_or_default()
            .get("flowmason.io/tags")
            .map(String::as_str),
        Some("a,b")
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-secrets"},
        "stringData": {"anthropic-key": KEY}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    pipelines
        .patch(
            "project-main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"env": [
                {"name": "ANTHROPIC_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "llm-secrets", "key": "anthropic-key"}}},
                {"name": "ANTHROPIC_BASE_URL", "value": url}
            ]}})),
        )
        .await
        .expect("patch env");
    let (code, out, err) = fm_k8s(&fm, &["run", "project-main", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let output: Value = serde_json::from_str(&out).expect("output json");
    assert_eq!(output["content"], json!("From the project."));
    assert_eq!(*keys.lock().expect("lock"), vec![KEY.to_string()]);
    assert!(!out.contains(KEY) && !err.contains(KEY));
}

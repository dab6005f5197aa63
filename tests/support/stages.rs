//! PipelineRuns and the Pipelines they run as the tests against a server build, create and wait for
//! (`#[path = "support/stages.rs"] mod stages;`).

#![allow(dead_code)]

use flowmason::model::{Pipeline, PipelineRun, PipelineRunStatus, RunPhase};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

/// Waiting for a run's phase is waiting for something to become true: the binaries that include this
/// file reach [`wait::eventually`] here rather than loading `wait.rs` a second time.
#[path = "wait.rs"]
pub mod wait;

use wait::eventually;

/// A Pipeline `name` in namespace `default` of `stages`.
pub fn pipeline(name: &str, stages: Value) -> Pipeline {
    serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"stages": stages}
    }))
    .expect("pipeline")
}

/// A PipelineRun `name` in namespace `default` of `pipeline`, with `inputs`.
pub fn run_of(name: &str, pipeline: &str, inputs: Value) -> PipelineRun {
    serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"pipelineRef": pipeline, "inputs": inputs}
    }))
    .expect("run")
}

/// Creates [`pipeline`]`(name, stages)`.
pub async fn create_pipeline(pipelines: &Api<Pipeline>, name: &str, stages: Value) {
    pipelines
        .create(&PostParams::default(), &pipeline(name, stages))
        .await
        .expect("create pipeline");
}

/// Creates [`run_of`]`(name, pipeline, inputs)`.
pub async fn create_run(runs: &Api<PipelineRun>, name: &str, pipeline: &str, inputs: Value) {
    runs.create(&PostParams::default(), &run_of(name, pipeline, inputs))
        .await
        .expect("create run");
}

/// A `delay` of `ms` milliseconds, then a `json_transform` that returns input `x`.
pub fn delay_stages(ms: u64) -> Value {
    json!([
        {"id": "wait", "componentType": "delay", "config": {"ms": ms}},
        {"id": "shape", "componentType": "json_transform", "dependsOn": ["wait"],
         "config": {"data": {"x": "{{input.x}}"}, "expression": "x"}}
    ])
}

/// Run `name` once it is in one of `phases`.
pub async fn wait_phase(api: &Api<PipelineRun>, name: &str, phases: &[RunPhase]) -> PipelineRun {
    eventually(&format!("{name} in {phases:?}"), || async {
        let run = api.get_opt(name).await.ok().flatten()?;
        let phase = run.status.as_ref()?.phase?;
        phases.contains(&phase).then_some(run)
    })
    .await
}

/// The status of run `name` once it has ended.
pub async fn final_status(api: &Api<PipelineRun>, name: &str) -> PipelineRunStatus {
    wait_phase(api, name, &terminal())
        .await
        .status
        .expect("status")
}

/// The phases a run ends in.
pub fn terminal() -> [RunPhase; 4] {
    [
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
        RunPhase::TimedOut,
    ]
}

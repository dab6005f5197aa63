//! Builders of test objects: Pipelines, PipelineRuns and folded run states, so that planning and
//! projection tests read as the scenario they check.

use serde_json::{Value, json};

use flowmason_store::{
    ErrorClass, Event, EventKind, RunError, RunState, SkipReason, StageError, Trigger,
};
use kube::api::ObjectMeta;

use crate::model::{Pipeline, PipelineRun, PipelineRunSpec, PipelineSpec, StageSpec};

/// A Pipeline in `default` with one `noop` stage per id, each depending on the one before.
pub fn pipeline(name: &str, stages: &[&str]) -> Pipeline {
    let stages = stages
        .iter()
        .enumerate()
        .map(|(i, id)| StageSpec {
            id: (*id).into(),
            component_type: "noop".into(),
            depends_on: if i == 0 {
                vec![]
            } else {
                vec![stages[i - 1].to_string()]
            },
            ..StageSpec::default()
        })
        .collect();
    Pipeline {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: PipelineSpec {
            stages,
            ..PipelineSpec::default()
        },
        status: None,
    }
}

/// A PipelineRun in `default` of `pipeline`.
pub fn pipeline_run(name: &str, pipeline: &str) -> PipelineRun {
    PipelineRun {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: PipelineRunSpec {
            pipeline_ref: pipeline.into(),
            ..PipelineRunSpec::default()
        },
        status: None,
    }
}

/// One step of a run in [`run_state`].
pub enum Step {
    Ok(String, Value),
    Fail(String, String),
}

/// A stage that succeeded with `output`.
pub fn ok(stage: &str, output: Value) -> Step {
    Step::Ok(stage.into(), output)
}

/// A stage that failed for good with `message`.
pub fn fail(stage: &str, message: &str) -> Step {
    Step::Fail(stage.into(), message.into())
}

/// The fold of a run of a chain of `stages` after `steps`: Pending with no steps; Succeeded when every
/// stage succeeded (output: the last stage's); Failed at the first failure, the rest skipped.
pub fn run_state(stages: &[&str], steps: &[Step]) -> RunState {
    let run_id = uuid::Uuid::now_v7();
    let plan = json!({"stages": stages.iter().map(|s| json!({"id": s, "component": "noop"})).collect::<Vec<_>>()});
    let mut kinds = vec![EventKind::RunAccepted {
        pipeline: "p".into(),
        namespace: "default".into(),
        generation: 1,
        trigger: Trigger::Manual,
        run_name: Some("r".into()),
        labels: Default::default(),
        plan,
        inputs: json!({}),
    }];
    if !steps.is_empty() {
        kinds.push(EventKind::RunStarted);
    }
    let mut last = Value::Null;
    let mut failed = None;
    for step in steps {
        match step {
            Step::Ok(stage, output) => {
                kinds.push(EventKind::StageStarted {
                    stage: stage.clone(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                });
                kinds.push(EventKind::StageSucceeded {
                    stage: stage.clone(),
                    attempt: 1,
                    output: output.clone(),
                    skip: vec![],
                    reused_from: None,
                });
                last = output.clone();
            }
            Step::Fail(stage, message) => {
                kinds.push(EventKind::StageStarted {
                    stage: stage.clone(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                });
                kinds.push(EventKind::StageFailed {
                    stage: stage.clone(),
                    attempt: 1,
                    error: StageError {
                        message: message.clone(),
                        class: ErrorClass::Config,
                        retryable: false,
                        details: Value::Null,
                    },
                });
                failed = Some((stage.clone(), message.clone()));
                break;
            }
        }
    }
    if let Some((stage, message)) = failed {
        let done: Vec<&str> = steps
            .iter()
            .map(|s| match s {
                Step::Ok(id, _) | Step::Fail(id, _) => id.as_str(),
            })
            .collect();
        for s in stages.iter().filter(|s| !done.contains(s)) {
            kinds.push(EventKind::StageSkipped {
                stage: (*s).into(),
                reason: SkipReason::UpstreamFailed,
            });
        }
        kinds.push(EventKind::RunFailed {
            error: RunError {
                message: format!("stage {stage} failed: {message}"),
                stage: Some(stage),
                details: Value::Null,
            },
        });
    } else if !steps.is_empty() && steps.len() == stages.len() {
        kinds.push(EventKind::RunSucceeded { output: last });
    }
    let events: Vec<Event> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Event {
            seq: i as u64,
            at: 1_700_000_000_000_000 + i as i64 * 1_000,
            kind,
        })
        .collect();
    match RunState::fold(run_id, &events) {
        Ok(Some(state)) => state,
        other => panic!("fixture events do not fold: {other:?}"),
    }
}

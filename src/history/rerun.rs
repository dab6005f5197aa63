//! Reruns: a new run with the plan and inputs an old run recorded; from its failed stage on, stages
//! that succeeded are taken over from the old run's events (`RunRequest::reuse`) and only the failed
//! stage and its dependants run again.
//!
//! On the engine path (`fm history rerun`, `fm history serve`) the new run is started on an engine; on
//! `fm serve` the rerun is a PipelineRun created through the API (the operator then starts it; see
//! `crate::http::api_rerun`).

use std::collections::BTreeMap;
use std::sync::Arc;

use flowmason_actors::{Engine, PlanSpec, Reuse, RunRequest};
use flowmason_store::{RunId, RunPhase, RunState, Trigger};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::model::vocabulary::RERUN_OF_LABEL;

/// Why a run cannot be rerun.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error("run {run} is {phase}: only a finished run can be rerun")]
    InFlight { run: RunId, phase: RunPhase },
    #[error("run {run} succeeded: fromFailed needs a run that did not succeed")]
    NothingFailed { run: RunId },
    #[error("run {run}: the recorded plan cannot be read: {reason}")]
    BadPlan { run: RunId, reason: String },
    #[error("run {run}: {message}")]
    Start { run: RunId, message: String },
}

/// What `POST /api/v1/runs/{runId}/rerun` takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RerunOptions {
    /// Take the stages that succeeded from the old run; run the failed stage and its dependants.
    #[serde(default)]
    pub from_failed: bool,
}

/// What a rerun started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RerunStarted {
    pub run_id: RunId,
    pub rerun_of: RunId,
    /// Stages taken over from the old run (empty unless `fromFailed`).
    pub reused_stages: Vec<String>,
    /// The PipelineRun created for it, when the rerun went through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
}

/// Starts a rerun of a finished run: the engine path or the API path.
pub type Rerunner = Arc<
    dyn Fn(RunState, RerunOptions) -> BoxFuture<'static, Result<RerunStarted, RerunError>>
        + Send
        + Sync,
>;

/// What a rerun of `old` takes over from it: the succeeded stages with `fromFailed`, else nothing.
/// Errors when `old` is still in flight, or succeeded and `fromFailed` asks for its failed stage. Pure;
/// the engine path, the API path and the PipelineRun controller (`spec.rerunOf`) share it, so all three
/// refuse the same reruns.
pub fn reuse(old: &RunState, options: RerunOptions) -> Result<Option<Reuse>, RerunError> {
    let run = old.run_id;
    if !old.phase.is_terminal() {
        return Err(RerunError::InFlight {
            run,
            phase: old.phase,
        });
    }
    if !options.from_failed {
        return Ok(None);
    }
    if old.phase == RunPhase::Succeeded {
        return Err(RerunError::NothingFailed { run });
    }
    Ok(Some(Reuse::succeeded_stages(old)))
}

/// The request that reruns `old` (a finished run); pure.
pub fn request(old: &RunState, options: RerunOptions) -> Result<RunRequest, RerunError> {
    let run = old.run_id;
    let reuse = reuse(old, options)?;
    let plan: PlanSpec =
        serde_json::from_value(old.plan.clone()).map_err(|e| RerunError::BadPlan {
            run,
            reason: e.to_string(),
        })?;
    let mut labels: BTreeMap<String, String> = old.labels.clone();
    labels.insert(RERUN_OF_LABEL.into(), run.to_string());
    let mut request = RunRequest::new(old.pipeline.clone(), plan, old.inputs.clone());
    request.namespace = old.namespace.clone();
    request.generation = old.generation;
    request.trigger = Trigger::Manual;
    request.labels = labels;
    request.reuse = reuse;
    Ok(request)
}

/// Reruns on `engine`: starts the new run and answers at once (the run goes on in the engine).
pub fn engine_rerunner(engine: Engine) -> Rerunner {
    Arc::new(move |old: RunState, options: RerunOptions| {
        let engine = engine.clone();
        Box::pin(async move {
            let request = request(&old, options)?;
            let reused_stages = request
                .reuse
                .as_ref()
                .map(|r| r.stages.keys().cloned().collect())
                .unwrap_or_default();
            let handle = engine.start(request).await.map_err(|e| RerunError::Start {
                run: old.run_id,
                message: e.to_string(),
            })?;
            Ok(RerunStarted {
                run_id: handle.run_id,
                rerun_of: old.run_id,
                reused_stages,
                run_name: None,
            })
        })
    })
}

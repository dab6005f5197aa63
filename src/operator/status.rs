//! Status projection: `PipelineRun.status` and the run-related part of `Pipeline.status` as pure
//! functions of the run's event fold (`RunState`), so that the status written to the API server, the
//! engine's resume and `fm history` can never disagree. Bounded in size: a status object must stay far
//! below etcd's 1.5 MiB object limit whatever a run outputs, so the run output and each stage's output
//! preview are cut (and `outputTruncated` says so); the full output stays in the event log.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use flowmason_store::{RunPhase as StorePhase, RunState, StagePhase as StoreStagePhase};

use crate::model::duration::format_millis;
use crate::model::vocabulary::CONDITION_SUCCEEDED;
use crate::model::{
    Condition, PipelineRunStatus, RunErrorStatus, RunMetrics, RunPhase, StagePhase, StageStatus,
};

/// Size bounds of a projected status.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest run output kept in `status.output`, in bytes of JSON.
    pub output_bytes: usize,
    /// Largest `outputPreview` of one stage, in bytes.
    pub preview_bytes: usize,
    /// Stages listed in `status.stages`; a larger run lists the first ones in plan order (the metrics
    /// still count all of them).
    pub max_stages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            output_bytes: 16 * 1024,
            preview_bytes: 256,
            max_stages: 2_000,
        }
    }
}

/// Converts Unix microseconds into a Kubernetes `Time`.
pub fn time_from_micros(micros: i64) -> Option<Time> {
    Timestamp::from_microsecond(micros).ok().map(Time)
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The model's phase for the store's.
pub fn run_phase(phase: StorePhase) -> RunPhase {
    match phase {
        StorePhase::Pending => RunPhase::Pending,
        StorePhase::Running => RunPhase::Running,
        StorePhase::Succeeded => RunPhase::Succeeded,
        StorePhase::Failed => RunPhase::Failed,
        StorePhase::Cancelled => RunPhase::Cancelled,
        StorePhase::TimedOut => RunPhase::TimedOut,
    }
}

/// A stage's phase as the status shows it. The original FlowMason client reads stage phases into an
/// enum of Pending/Running/Succeeded/Failed/Skipped and rejects anything else, so a stage waiting for its
/// next attempt shows `Running` (its `attempts` tell the retry) and a cancelled stage `Failed` (its
/// `error` says it was cancelled); the event log keeps the finer phases.
fn stage_phase(phase: StoreStagePhase) -> StagePhase {
    match phase {
        StoreStagePhase::Pending => StagePhase::Pending,
        StoreStagePhase::Running | StoreStagePhase::Retrying => StagePhase::Running,
        StoreStagePhase::Succeeded => StagePhase::Succeeded,
        StoreStagePhase::Failed | StoreStagePhase::Cancelled => StagePhase::Failed,
        StoreStagePhase::Skipped => StagePhase::Skipped,
    }
}

/// The run output as the status carries it: always an object, since the original client reads
/// `status.output` as one. A non-object output is under `value`; one over the bound is replaced by
/// `{"truncated": true, "preview": <its start as JSON text>, "bytes": <full size>}`.
fn bounded_output(value: &Value, max: usize) -> (Value, bool) {
    let text = value.to_string();
    if text.len() > max {
        let (preview, _) = cut(&text, max);
        return (
            serde_json::json!({"truncated": true, "preview": preview, "bytes": text.len()}),
            true,
        );
    }
    match value {
        Value::Object(_) => (value.clone(), false),
        other => (serde_json::json!({ "value": other }), false),
    }
}

fn duration_between(from: i64, to: i64) -> String {
    format_millis(u64::try_from((to - from) / 1000).unwrap_or(0))
}

/// Cuts text to at most `max` bytes on a character boundary; true when it was cut.
fn cut(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_string(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (format!("{}…", &text[..end]), true)
}

/// A cost in USD as a decimal string: to the millionth of a dollar, without trailing zeros.
fn format_cost(usd: f64) -> String {
    let text = format!("{usd:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `(id, component, name)` of each stage of the recorded plan, in plan order.
fn plan_stages(plan: &Value) -> Vec<(String, Option<String>)> {
    plan.get("stages")
        .and_then(Value::as_array)
        .map(|stages| {
            stages
                .iter()
                .filter_map(|s| {
                    let id = s.get("id")?.as_str()?.to_string();
                    let component = s.get("component").and_then(Value::as_str).map(String::from);
                    Some((id, component))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `Succeeded` condition of a run in `phase`; its reason is the phase, or the run error's own reason
/// (`Quarantined`) when it has one.
pub fn outcome_condition(
    phase: RunPhase,
    message: Option<String>,
    reason: Option<&str>,
) -> Condition {
    let status = match phase {
        RunPhase::Pending | RunPhase::Running => "Unknown",
        RunPhase::Succeeded => "True",
        RunPhase::Failed | RunPhase::Cancelled | RunPhase::TimedOut => "False",
    };
    Condition {
        type_: CONDITION_SUCCEEDED.into(),
        status: status.into(),
        reason: Some(reason.map_or_else(|| format!("{phase:?}"), str::to_string)),
        message,
        last_transition_time: Some(now()),
        observed_generation: None,
    }
}

/// `PipelineRun.status` projected from a run's fold. The engine has masked the run's secret values in
/// every event before folding it, so the status shows none.
pub fn project_run(state: &RunState, limits: Limits) -> PipelineRunStatus {
    let phase = run_phase(state.phase);
    let planned = plan_stages(&state.plan);
    let mut metrics = RunMetrics {
        total_stages: u32::try_from(planned.len()).unwrap_or(u32::MAX),
        ..RunMetrics::default()
    };
    let mut stages = Vec::with_capacity(planned.len().min(limits.max_stages));
    for (id, component) in &planned {
        let stage = state.stages.get(id);
        let phase = stage.map_or(StoreStagePhase::Pending, |s| s.phase);
        match phase {
            StoreStagePhase::Succeeded => metrics.completed_stages += 1,
            StoreStagePhase::Failed => metrics.failed_stages += 1,
            StoreStagePhase::Skipped => metrics.skipped_stages += 1,
            StoreStagePhase::Running | StoreStagePhase::Retrying => metrics.running_stages += 1,
            StoreStagePhase::Pending | StoreStagePhase::Cancelled => {}
        }
        if let Some(s) = stage {
            metrics.retries += s.attempts.saturating_sub(1);
        }
        if stages.len() >= limits.max_stages {
            continue;
        }
        stages.push(StageStatus {
            id: id.clone(),
            name: None,
            component_type: component.clone(),
            phase: stage_phase(phase),
            attempts: stage.map_or(0, |s| s.attempts),
            start_time: stage.and_then(|s| s.started_at).and_then(time_from_micros),
            completion_time: stage.and_then(|s| s.finished_at).and_then(time_from_micros),
            duration: stage.and_then(|s| Some(duration_between(s.started_at?, s.finished_at?))),
            error: stage
                .and_then(|s| s.error.as_ref())
                .map(|e| e.message.clone()),
            output_preview: stage
                .and_then(|s| s.output.as_ref())
                .map(|o| cut(&o.to_string(), limits.preview_bytes).0),
        });
    }
    metrics.stages_completed = metrics.completed_stages;
    metrics.stages_total = metrics.total_stages;
    if state.total_tokens > 0 {
        metrics.total_tokens = Some(state.total_tokens);
    }
    if state.total_cost_usd > 0.0 {
        metrics.total_cost = Some(format_cost(state.total_cost_usd));
    }
    let (output, output_truncated) = match &state.output {
        None => (None, None),
        Some(value) => {
            let (output, truncated) = bounded_output(value, limits.output_bytes);
            (Some(output), Some(truncated))
        }
    };
    let started = state.started_at.unwrap_or(state.accepted_at);
    PipelineRunStatus {
        phase: Some(phase),
        conditions: vec![outcome_condition(
            phase,
            state.error.as_ref().map(|e| e.message.clone()),
            state.error.as_ref().and_then(|e| e.reason()),
        )],
        run_id: Some(state.run_id.to_string()),
        start_time: time_from_micros(started),
        completion_time: state.finished_at.and_then(time_from_micros),
        duration: state.finished_at.map(|end| duration_between(started, end)),
        stages,
        output,
        output_truncated,
        error: state.error.as_ref().map(|e| RunErrorStatus {
            message: e.message.clone(),
            stage: e.stage.clone(),
            // Text, as the original client reads `error.details`.
            details: match &e.details {
                Value::Null => None,
                _ if rejection_reason(state).is_some() => None,
                Value::String(_) => Some(e.details.clone()),
                other => Some(Value::String(other.to_string())),
            },
        }),
        metrics: Some(metrics),
        pipeline_generation: Some(state.generation),
        observed_generation: None,
        // Set by the status writer, which knows the replica.
        replica: None,
    }
}

/// Why a run was refused before it started (`PipelineNotFound`, `InvalidSpec`, ...): the engine records
/// it as the `reason` of the run error's details (see `Engine::reject`); `None` for any other run.
pub fn rejection_reason(state: &RunState) -> Option<&str> {
    let error = state.error.as_ref()?;
    if error.stage.is_some() || state.started_at.is_some() {
        return None;
    }
    error.details.as_object()?.get("reason")?.as_str()
}

/// A run that could not start (a missing reference, an invalid spec, a lost event log): `Failed` with
/// `reason` and the message naming the object or field.
pub fn failed_before_start(
    run_id: Option<String>,
    reason: &str,
    message: String,
) -> PipelineRunStatus {
    let t = now();
    PipelineRunStatus {
        phase: Some(RunPhase::Failed),
        conditions: vec![Condition {
            type_: CONDITION_SUCCEEDED.into(),
            status: "False".into(),
            reason: Some(reason.into()),
            message: Some(message.clone()),
            last_transition_time: Some(t.clone()),
            observed_generation: None,
        }],
        run_id,
        start_time: Some(t.clone()),
        completion_time: Some(t),
        duration: Some("0s".into()),
        error: Some(RunErrorStatus {
            message,
            stage: None,
            details: None,
        }),
        ..PipelineRunStatus::default()
    }
}

/// A run cancelled before the engine ever started it.
/// The status of a run that waits before it can start (e.g. for the operator's capacity).
pub fn waiting(reason: &str, message: String) -> PipelineRunStatus {
    PipelineRunStatus {
        phase: Some(RunPhase::Pending),
        conditions: vec![Condition {
            type_: CONDITION_SUCCEEDED.into(),
            status: "Unknown".into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now()),
            observed_generation: None,
        }],
        ..PipelineRunStatus::default()
    }
}

pub fn cancelled_before_start(run_id: Option<String>) -> PipelineRunStatus {
    let t = now();
    PipelineRunStatus {
        phase: Some(RunPhase::Cancelled),
        conditions: vec![outcome_condition(
            RunPhase::Cancelled,
            Some("cancelled before it started".into()),
            None,
        )],
        run_id,
        start_time: Some(t.clone()),
        completion_time: Some(t),
        duration: Some("0s".into()),
        error: Some(RunErrorStatus {
            message: "cancelled before it started".into(),
            stage: None,
            details: None,
        }),
        ..PipelineRunStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures;
    use serde_json::json;

    #[test]
    fn pending_stages_are_listed_in_plan_order() {
        let state = fixtures::run_state(&["a", "b", "c"], &[]);
        let status = project_run(&state, Limits::default());
        assert_eq!(status.phase, Some(RunPhase::Pending));
        let ids: Vec<&str> = status.stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(status.stages.iter().all(|s| s.phase == StagePhase::Pending));
        assert_eq!(status.metrics.as_ref().map(|m| m.total_stages), Some(3));
        assert_eq!(status.conditions[0].status, "Unknown");
    }

    #[test]
    fn succeeded_run_has_times_outputs_and_metrics() {
        let state = fixtures::run_state(
            &["a", "b"],
            &[
                fixtures::ok("a", json!({"x": 1})),
                fixtures::ok("b", json!("done")),
            ],
        );
        let status = project_run(&state, Limits::default());
        assert_eq!(status.phase, Some(RunPhase::Succeeded));
        assert!(status.completion_time.is_some() && status.duration.is_some());
        assert_eq!(status.output, Some(json!({"value": "done"})));
        assert_eq!(status.output_truncated, Some(false));
        assert_eq!(
            status.stages[0].output_preview.as_deref(),
            Some(r#"{"x":1}"#)
        );
        assert_eq!(status.stages[0].attempts, 1);
        let m = status.metrics.expect("metrics");
        assert_eq!((m.completed_stages, m.failed_stages), (2, 0));
        // The original client's names for the same counts.
        assert_eq!((m.stages_completed, m.stages_total), (2, 2));
        assert_eq!((m.total_tokens, m.total_cost), (None, None));
        assert_eq!(status.conditions[0].status, "True");
    }

    #[test]
    fn llm_usage_of_the_stages_is_summed_into_the_metrics() {
        let state = fixtures::run_state(
            &["a", "b"],
            &[
                fixtures::ok(
                    "a",
                    json!({"usage": {"total_tokens": 18, "cost_usd": 0.000138}}),
                ),
                fixtures::ok(
                    "b",
                    json!({"usage": {"total_tokens": 8, "cost_usd": 0.00002}}),
                ),
            ],
        );
        let m = project_run(&state, Limits::default())
            .metrics
            .expect("metrics");
        assert_eq!(m.total_tokens, Some(26));
        assert_eq!(m.total_cost.as_deref(), Some("0.000158"));
    }

    #[test]
    fn failed_run_names_the_stage() {
        let state = fixtures::run_state(&["a", "b"], &[fixtures::fail("a", "boom")]);
        let status = project_run(&state, Limits::default());
        assert_eq!(status.phase, Some(RunPhase::Failed));
        let error = status.error.expect("error");
        assert_eq!(error.stage.as_deref(), Some("a"));
        assert!(error.message.contains("boom"), "{}", error.message);
        assert_eq!(status.stages[0].error.as_deref(), Some("boom"));
        assert_eq!(status.stages[1].phase, StagePhase::Skipped);
    }

    #[test]
    fn large_output_is_truncated_and_says_so() {
        let big = "x".repeat(100_000);
        let state = fixtures::run_state(&["a"], &[fixtures::ok("a", json!(big))]);
        let limits = Limits::default();
        let status = project_run(&state, limits);
        assert_eq!(status.output_truncated, Some(true));
        let output = status.output.expect("output");
        assert_eq!(output["truncated"], json!(true));
        assert_eq!(output["bytes"], json!(100_002));
        let text = output["preview"].as_str().expect("preview");
        assert!(text.len() <= limits.output_bytes + 4);
        assert!(
            status.stages[0]
                .output_preview
                .as_ref()
                .is_some_and(|p| p.len() <= limits.preview_bytes + 4)
        );
    }

    #[test]
    fn stage_list_is_bounded_but_metrics_count_all() {
        let ids: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let state = fixtures::run_state(&refs, &[]);
        let status = project_run(
            &state,
            Limits {
                max_stages: 10,
                ..Limits::default()
            },
        );
        assert_eq!(status.stages.len(), 10);
        assert_eq!(status.metrics.map(|m| m.total_stages), Some(50));
    }

    #[test]
    fn a_quarantined_run_has_the_reason_quarantined() {
        let condition = outcome_condition(
            RunPhase::Failed,
            Some("quarantined: in flight at 2 consecutive crashes".into()),
            Some(flowmason_store::QUARANTINED),
        );
        assert_eq!(condition.reason.as_deref(), Some("Quarantined"));
        assert_eq!(condition.status, "False");
        let plain = outcome_condition(RunPhase::Failed, None, None);
        assert_eq!(plain.reason.as_deref(), Some("Failed"));
    }
}

//! The state of a run as a pure fold over its events.
//!
//! One fold serves the engine's resume, the status projection and history answers, so that they can never
//! disagree about what happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, EventKind, RunError, RunId, RunPhase, SkipReason, StageError, Trigger};
use crate::lifecycle::{self, LifecycleError, RunChange};

/// The phase of one stage within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum StagePhase {
    #[default]
    Pending,
    Running,
    /// Failed an attempt and waits for the next one.
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StagePhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StagePhase::Succeeded
                | StagePhase::Failed
                | StagePhase::Skipped
                | StagePhase::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StagePhase::Pending => "Pending",
            StagePhase::Running => "Running",
            StagePhase::Retrying => "Retrying",
            StagePhase::Succeeded => "Succeeded",
            StagePhase::Failed => "Failed",
            StagePhase::Skipped => "Skipped",
            StagePhase::Cancelled => "Cancelled",
        }
    }
}

/// One attempt of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptState {
    pub attempt: u32,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StageError>,
}

/// What the events say about one stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageState {
    pub phase: StagePhase,
    /// Attempts started so far (the last attempt's number).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_history: Vec<AttemptState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The input of the last attempt, as its `StageStarted` recorded it (rendered, secrets masked);
    /// `None` before the stage started, when the input was null, and in logs that did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Downstream stages this stage's branch decision left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StageError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<SkipReason>,
    /// When the next attempt is due (Unix microseconds), while `Retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// Number of `StageLog` events.
    #[serde(default)]
    pub logs: u32,
    /// The run this stage's output was taken from, when it did not run here (a rerun from the failed
    /// stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<RunId>,
}

/// The last time an engine took a run up again after a restart (its last `RunResumed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeState {
    /// When (Unix microseconds).
    pub at: i64,
    /// The engine session that resumed it.
    pub session: u64,
    /// Whether the run was in flight at a crash of the engine before that session.
    pub after_crash: bool,
}

/// The events of a run did not make a valid stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("run {run}: event {seq} is out of order (expected sequence {expected})")]
    OutOfOrder { run: RunId, seq: u64, expected: u64 },
    /// The stream breaks the run's lifecycle (see [`crate::lifecycle`]).
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

/// The state of a run after some prefix of its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub run_id: RunId,
    pub pipeline: String,
    pub namespace: String,
    pub generation: i64,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub plan: Value,
    pub inputs: Value,
    pub phase: RunPhase,
    pub accepted_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Stages that have at least one event, by id.
    pub stages: BTreeMap<String, StageState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why the run did not succeed (failed, cancelled or timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Sequence number of the last event folded in.
    pub last_seq: u64,
    /// The last resume after a restart, if the run was ever resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resume: Option<ResumeState>,
    /// LLM tokens used by the run: the sum of `usage.total_tokens` over the outputs of succeeded stages
    /// (the convention every LLM component follows), feeding `status.metrics.totalTokens`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total_tokens: u64,
    /// Estimated LLM cost in USD: the sum of `usage.cost_usd` over the same outputs.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub total_cost_usd: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// `(usage.total_tokens, usage.cost_usd)` of a stage output, zero where absent.
fn usage_of(output: &Value) -> (u64, f64) {
    let Some(usage) = output.get("usage") else {
        return (0, 0.0);
    };
    (
        usage
            .get("total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        usage
            .get("cost_usd")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c > 0.0)
            .unwrap_or(0.0),
    )
}

impl RunState {
    /// Folds a whole stream. The stream must start with `RunAccepted` at sequence 0.
    pub fn fold<'a>(
        run_id: RunId,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Option<RunState>, FoldError> {
        let mut state: Option<RunState> = None;
        for event in events {
            RunState::apply_to(&mut state, run_id, event)?;
        }
        Ok(state)
    }

    /// Folds one event into an optional state; the first event must be `RunAccepted`.
    pub fn apply_to(
        state: &mut Option<RunState>,
        run_id: RunId,
        event: &Event,
    ) -> Result<(), FoldError> {
        match state {
            Some(s) => s.apply(event),
            None => {
                lifecycle::check(run_id, None, event.seq, &event.kind)?;
                if event.seq != 0 {
                    return Err(FoldError::OutOfOrder {
                        run: run_id,
                        seq: event.seq,
                        expected: 0,
                    });
                }
                *state = Some(RunState::accepted(run_id, event));
                Ok(())
            }
        }
    }

    fn accepted(run_id: RunId, event: &Event) -> RunState {
        let EventKind::RunAccepted {
            pipeline,
            namespace,
            generation,
            trigger,
            run_name,
            labels,
            plan,
            inputs,
        } = &event.kind
        else {
            unreachable!("accepted() is called with RunAccepted only")
        };
        RunState {
            run_id,
            pipeline: pipeline.clone(),
            namespace: namespace.clone(),
            generation: *generation,
            trigger: *trigger,
            run_name: run_name.clone(),
            labels: labels.clone(),
            plan: plan.clone(),
            inputs: inputs.clone(),
            phase: RunPhase::Pending,
            accepted_at: event.at,
            started_at: None,
            finished_at: None,
            stages: BTreeMap::new(),
            output: None,
            error: None,
            last_seq: event.seq,
            last_resume: None,
            total_tokens: 0,
            total_cost_usd: 0.0,
        }
    }

    /// Folds the next event in.
    pub fn apply(&mut self, event: &Event) -> Result<(), FoldError> {
        let expected = self.last_seq + 1;
        if event.seq != expected {
            return Err(FoldError::OutOfOrder {
                run: self.run_id,
                seq: event.seq,
                expected,
            });
        }
        lifecycle::check(self.run_id, Some(self.phase), event.seq, &event.kind)?;
        let at = event.at;
        if let Some(change) = RunChange::of(&event.kind) {
            if let EventKind::RunSucceeded { output } = &event.kind {
                self.output = Some(output.clone());
            }
            let error = change.apply(
                at,
                &mut self.phase,
                &mut self.started_at,
                &mut self.finished_at,
            );
            if error.is_some() {
                self.error = error;
            }
            if self.phase.is_terminal() {
                self.cancel_unfinished_stages(at);
            }
            self.last_seq = event.seq;
            return Ok(());
        }
        match &event.kind {
            // Made the run (`apply_to`) or changed its own fields (above).
            EventKind::RunAccepted { .. }
            | EventKind::RunStarted
            | EventKind::RunSucceeded { .. }
            | EventKind::RunFailed { .. }
            | EventKind::RunCancelled { .. }
            | EventKind::RunTimedOut { .. } => {}
            EventKind::RunResumed {
                session,
                after_crash,
            } => {
                self.last_resume = Some(ResumeState {
                    at,
                    session: *session,
                    after_crash: *after_crash,
                });
            }
            EventKind::StageStarted {
                stage,
                attempt,
                input,
            } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Running;
                s.attempts = *attempt;
                s.input = (!input.is_null()).then(|| input.clone());
                s.started_at.get_or_insert(at);
                s.retry_at = None;
                s.attempt_history.push(AttemptState {
                    attempt: *attempt,
                    started_at: at,
                    finished_at: None,
                    error: None,
                });
            }
            EventKind::StageSucceeded {
                stage,
                attempt,
                output,
                skip,
                reused_from,
            } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Succeeded;
                s.reused_from = *reused_from;
                s.finished_at = Some(at);
                s.output = Some(output.clone());
                s.skip = skip.clone();
                s.error = None;
                finish_attempt(s, *attempt, at, None);
                let (tokens, cost) = usage_of(output);
                self.total_tokens = self.total_tokens.saturating_add(tokens);
                self.total_cost_usd += cost;
            }
            EventKind::StageFailed {
                stage,
                attempt,
                error,
            } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Failed;
                s.finished_at = Some(at);
                s.error = Some(error.clone());
                finish_attempt(s, *attempt, at, Some(error.clone()));
            }
            EventKind::StageRetryScheduled { stage, at: due, .. } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Retrying;
                s.finished_at = None;
                s.retry_at = Some(*due);
            }
            EventKind::StageSkipped { stage, reason } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Skipped;
                s.skip_reason = Some(*reason);
                s.finished_at = Some(at);
            }
            EventKind::StageLog { stage, .. } => {
                self.stages.entry(stage.clone()).or_default().logs += 1;
            }
        }
        self.last_seq = event.seq;
        Ok(())
    }

    /// The run ended: stages still running or waiting for a retry are cancelled with it.
    fn cancel_unfinished_stages(&mut self, at: i64) {
        for s in self.stages.values_mut() {
            if matches!(s.phase, StagePhase::Running | StagePhase::Retrying) {
                s.phase = StagePhase::Cancelled;
                s.finished_at = Some(at);
                s.retry_at = None;
                if let Some(last) = s.attempt_history.last_mut() {
                    last.finished_at.get_or_insert(at);
                }
            }
        }
    }

    /// The stage's state, or the default (pending) state when it has no events yet.
    pub fn stage(&self, id: &str) -> StageState {
        self.stages.get(id).cloned().unwrap_or_default()
    }

    /// Wall-clock duration of the run in microseconds, once it has ended.
    pub fn duration_micros(&self) -> Option<i64> {
        Some(self.finished_at? - self.started_at.unwrap_or(self.accepted_at))
    }
}

fn finish_attempt(s: &mut StageState, attempt: u32, at: i64, error: Option<StageError>) {
    if let Some(a) = s
        .attempt_history
        .iter_mut()
        .rev()
        .find(|a| a.attempt == attempt)
    {
        a.finished_at = Some(at);
        a.error = error;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ErrorClass;

    fn run() -> RunId {
        RunId::from_u128(42)
    }

    fn stream(kinds: Vec<EventKind>) -> Vec<Event> {
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: i as u64,
                at: 100 + i as i64,
                kind,
            })
            .collect()
    }

    fn accepted() -> EventKind {
        EventKind::RunAccepted {
            pipeline: "p".into(),
            namespace: "ns".into(),
            generation: 2,
            trigger: Trigger::Webhook,
            run_name: None,
            labels: BTreeMap::new(),
            plan: json!({}),
            inputs: json!({"a": 1}),
        }
    }

    fn failed(stage: &str, attempt: u32) -> EventKind {
        EventKind::StageFailed {
            stage: stage.into(),
            attempt,
            error: StageError {
                message: "503".into(),
                class: ErrorClass::Transient,
                retryable: true,
                details: Value::Null,
            },
        }
    }

    #[test]
    fn retry_counts_attempts() {
        let events = stream(vec![
            accepted(),
            EventKind::RunStarted,
            EventKind::StageStarted {
                stage: "a".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
            failed("a", 1),
            EventKind::StageRetryScheduled {
                stage: "a".into(),
                attempt: 2,
                at: 5_000,
            },
            EventKind::StageStarted {
                stage: "a".into(),
                attempt: 2,
                input: serde_json::Value::Null,
            },
            EventKind::StageSucceeded {
                stage: "a".into(),
                attempt: 2,
                output: json!(7),
                skip: vec![],
                reused_from: None,
            },
            EventKind::RunSucceeded { output: json!(7) },
        ]);
        let partial = RunState::fold(run(), &events[..5]).unwrap().unwrap();
        assert_eq!(partial.stage("a").phase, StagePhase::Retrying);
        assert_eq!(partial.stage("a").retry_at, Some(5_000));
        let state = RunState::fold(run(), &events).unwrap().unwrap();
        let a = state.stage("a");
        assert_eq!(a.phase, StagePhase::Succeeded);
        assert_eq!(a.attempts, 2);
        assert_eq!(a.attempt_history.len(), 2);
        assert!(a.attempt_history[0].error.is_some());
        assert_eq!(a.attempt_history[1].finished_at, Some(106));
        assert_eq!((a.error, a.retry_at, a.started_at), (None, None, Some(102)));
        assert_eq!(state.phase, RunPhase::Succeeded);
        assert_eq!(state.output, Some(json!(7)));
        assert_eq!((state.last_seq, state.duration_micros()), (7, Some(6)));
        assert_eq!(state.stage("never").phase, StagePhase::Pending);
    }

    #[test]
    fn cancel_marks_running_stages_cancelled() {
        let events = stream(vec![
            accepted(),
            EventKind::RunStarted,
            EventKind::StageStarted {
                stage: "a".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
            EventKind::StageStarted {
                stage: "b".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
            EventKind::StageSucceeded {
                stage: "b".into(),
                attempt: 1,
                output: json!(null),
                skip: vec![],
                reused_from: None,
            },
            EventKind::StageStarted {
                stage: "c".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
            failed("c", 1),
            EventKind::StageRetryScheduled {
                stage: "c".into(),
                attempt: 2,
                at: 9,
            },
            EventKind::StageSkipped {
                stage: "d".into(),
                reason: SkipReason::RunEnded,
            },
            EventKind::RunCancelled {
                reason: String::new(),
            },
        ]);
        let state = RunState::fold(run(), &events).unwrap().unwrap();
        assert_eq!(state.phase, RunPhase::Cancelled);
        assert_eq!(
            state.error.as_ref().map(|e| e.message.as_str()),
            Some("run cancelled")
        );
        let a = state.stage("a");
        assert_eq!((a.phase, a.finished_at), (StagePhase::Cancelled, Some(109)));
        assert_eq!(a.attempt_history[0].finished_at, Some(109));
        assert_eq!(state.stage("b").phase, StagePhase::Succeeded);
        assert_eq!(
            (state.stage("c").phase, state.stage("c").retry_at),
            (StagePhase::Cancelled, None)
        );
        assert_eq!(state.stage("d").phase, StagePhase::Skipped);
    }

    #[test]
    fn malformed_streams_are_errors() {
        let mut events = stream(vec![
            accepted(),
            EventKind::RunStarted,
            EventKind::RunStarted,
        ]);
        events[2].seq = 5;
        assert_eq!(
            RunState::fold(run(), &events).unwrap_err(),
            FoldError::OutOfOrder {
                run: run(),
                seq: 5,
                expected: 2
            }
        );
        let events = stream(vec![EventKind::RunStarted]);
        assert_eq!(
            RunState::fold(run(), &events).unwrap_err(),
            FoldError::Lifecycle(LifecycleError::NotAccepted {
                run: run(),
                seq: 0,
                event: "RunStarted"
            })
        );
        let events = stream(vec![accepted(), accepted()]);
        assert_eq!(
            RunState::fold(run(), &events).unwrap_err(),
            FoldError::Lifecycle(LifecycleError::AlreadyAccepted { run: run(), seq: 1 })
        );
        let events = stream(vec![
            accepted(),
            EventKind::RunSucceeded { output: json!(1) },
            EventKind::RunStarted,
        ]);
        let err = RunState::fold(run(), &events).unwrap_err();
        assert_eq!(
            err,
            FoldError::Lifecycle(LifecycleError::RunEnded {
                run: run(),
                seq: 2,
                event: "RunStarted"
            })
        );
        assert!(err.to_string().contains("event 2"), "{err}");
        let mut late = stream(vec![accepted()]);
        late[0].seq = 1;
        assert_eq!(
            RunState::fold(run(), &late).unwrap_err(),
            FoldError::OutOfOrder {
                run: run(),
                seq: 1,
                expected: 0
            }
        );
        assert_eq!(RunState::fold(run(), &[]).unwrap(), None);
    }

    #[test]
    fn the_last_resume_is_kept_and_does_not_change_the_phase() {
        let resumed = |session, after_crash| EventKind::RunResumed {
            session,
            after_crash,
        };
        let events = stream(vec![
            accepted(),
            EventKind::RunStarted,
            resumed(4, true),
            resumed(5, false),
        ]);
        let state = RunState::fold(run(), &events[..3]).unwrap().unwrap();
        assert_eq!(state.phase, RunPhase::Running);
        assert_eq!(
            state.last_resume,
            Some(ResumeState {
                at: 102,
                session: 4,
                after_crash: true
            })
        );
        let state = RunState::fold(run(), &events).unwrap().unwrap();
        assert_eq!(
            state.last_resume.map(|r| (r.session, r.after_crash)),
            Some((5, false))
        );
        let round: RunState =
            serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(round, state);
    }

    #[test]
    fn usage_of_succeeded_stages_is_summed() {
        let ok = |stage: &str, output: Value| EventKind::StageSucceeded {
            stage: stage.into(),
            attempt: 1,
            output,
            skip: Vec::new(),
            reused_from: None,
        };
        let events = stream(vec![
            accepted(),
            EventKind::RunStarted,
            ok(
                "a",
                json!({"usage": {"total_tokens": 30, "cost_usd": 0.25}}),
            ),
            ok("b", json!({"usage": {"total_tokens": 12}})),
            ok("c", json!({"content": "no usage"})),
            ok(
                "d",
                json!({"usage": {"total_tokens": "many", "cost_usd": -1.0}}),
            ),
        ]);
        let state = RunState::fold(run(), &events).unwrap().unwrap();
        assert_eq!(state.total_tokens, 42);
        assert!((state.total_cost_usd - 0.25).abs() < 1e-12);
        let round: RunState =
            serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(round, state);
    }
}

//! The state of a run as a pure fold over its events.
//!
//! One fold serves the engine's resume, the status projection and history answers, so that they can never
//! disagree about what happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, EventKind, RunError, RunId, RunPhase, SkipReason, StageError, Trigger};

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
}

/// The events of a run did not make a valid stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("run {run}: event {seq} ({event}) comes before RunAccepted")]
    NotAccepted {
        run: RunId,
        seq: u64,
        event: &'static str,
    },
    #[error("run {run}: event {seq} is out of order (expected sequence {expected})")]
    OutOfOrder { run: RunId, seq: u64, expected: u64 },
    #[error("run {run}: event {seq} ({event}) follows the terminal event of the run")]
    AfterTerminal {
        run: RunId,
        seq: u64,
        event: &'static str,
    },
    #[error("run {run}: event {seq} is a second RunAccepted")]
    DuplicateAccepted { run: RunId, seq: u64 },
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
            None => match &event.kind {
                EventKind::RunAccepted { .. } if event.seq == 0 => {
                    *state = Some(RunState::accepted(run_id, event));
                    Ok(())
                }
                EventKind::RunAccepted { .. } => Err(FoldError::OutOfOrder {
                    run: run_id,
                    seq: event.seq,
                    expected: 0,
                }),
                other => Err(FoldError::NotAccepted {
                    run: run_id,
                    seq: event.seq,
                    event: other.name(),
                }),
            },
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
        if self.phase.is_terminal() {
            return Err(FoldError::AfterTerminal {
                run: self.run_id,
                seq: event.seq,
                event: event.kind.name(),
            });
        }
        let at = event.at;
        match &event.kind {
            EventKind::RunAccepted { .. } => {
                return Err(FoldError::DuplicateAccepted {
                    run: self.run_id,
                    seq: event.seq,
                });
            }
            EventKind::RunStarted => {
                self.phase = RunPhase::Running;
                self.started_at = Some(at);
            }
            EventKind::StageStarted { stage, attempt } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Running;
                s.attempts = *attempt;
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
            } => {
                let s = self.stages.entry(stage.clone()).or_default();
                s.phase = StagePhase::Succeeded;
                s.finished_at = Some(at);
                s.output = Some(output.clone());
                s.skip = skip.clone();
                s.error = None;
                finish_attempt(s, *attempt, at, None);
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
            EventKind::RunSucceeded { output } => {
                self.output = Some(output.clone());
                self.finish(RunPhase::Succeeded, at);
            }
            EventKind::RunFailed { error } => {
                self.error = Some(error.clone());
                self.finish(RunPhase::Failed, at);
            }
            EventKind::RunCancelled { reason } => {
                let message = if reason.is_empty() {
                    "run cancelled".to_string()
                } else {
                    reason.clone()
                };
                self.error = Some(RunError {
                    message,
                    stage: None,
                    details: Value::Null,
                });
                self.finish(RunPhase::Cancelled, at);
            }
            EventKind::RunTimedOut { message } => {
                let message = if message.is_empty() {
                    "run timed out".to_string()
                } else {
                    message.clone()
                };
                self.error = Some(RunError {
                    message,
                    stage: None,
                    details: Value::Null,
                });
                self.finish(RunPhase::TimedOut, at);
            }
        }
        self.last_seq = event.seq;
        Ok(())
    }

    /// Ends the run; stages still running or waiting for a retry are cancelled with it.
    fn finish(&mut self, phase: RunPhase, at: i64) {
        self.phase = phase;
        self.finished_at = Some(at);
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

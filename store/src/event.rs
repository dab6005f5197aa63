//! The events of a run: the only record of what happened to it.
//!
//! Everything else (the engine's view of a run on resume, `PipelineRun.status`, history answers) is a fold
//! over these events (see [`crate::fold`]). Payloads that belong to other layers (the execution plan, stage
//! outputs) are plain JSON here: the store keeps them and never interprets them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Identifies one run; a UUIDv7, so run ids sort by creation time.
pub type RunId = Uuid;

/// One appended event: its position in the run's stream, when it was appended, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the run's stream, starting at 0, without gaps.
    pub seq: u64,
    /// Unix time of the append, in microseconds.
    pub at: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What caused a run to start; kept in the summary index so history can filter on it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    #[default]
    Manual,
    Cron,
    Webhook,
    Pubsub,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [
        Trigger::Manual,
        Trigger::Cron,
        Trigger::Webhook,
        Trigger::Pubsub,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Cron => "cron",
            Trigger::Webhook => "webhook",
            Trigger::Pubsub => "pubsub",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown trigger {s:?} (expected manual, cron, webhook or pubsub)")
            })
    }
}

/// The phase of a run, as FlowMason's models name them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub enum RunPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunPhase {
    pub const ALL: [RunPhase; 6] = [
        RunPhase::Pending,
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
        RunPhase::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled | RunPhase::TimedOut
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Pending => "Pending",
            RunPhase::Running => "Running",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Cancelled => "Cancelled",
            RunPhase::TimedOut => "TimedOut",
        }
    }
}

impl fmt::Display for RunPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunPhase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown phase {s:?} (expected Pending, Running, Succeeded, Failed, Cancelled or TimedOut)")
            })
    }
}

/// How an error is classed; the class decides whether a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorClass {
    /// The stage's configuration is wrong (bad field, bad type); retrying cannot help.
    Config,
    /// A template did not resolve; retrying cannot help.
    Template,
    /// The attempt ran past its timeout.
    Timeout,
    /// A transient failure (connection refused, 5xx, 408, 429); worth retrying.
    Transient,
    /// The remote side refused the request (4xx other than 408/429); retrying cannot help.
    Client,
    /// The component failed in a way it does not classify further.
    Internal,
    /// The attempt was cancelled (run cancelled or timed out).
    Cancelled,
}

impl ErrorClass {
    /// Whether an error of this class is retried when the policy does not say otherwise.
    pub fn retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorClass::Timeout | ErrorClass::Transient | ErrorClass::Internal
        )
    }
}

/// Why a stage attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageError {
    pub message: String,
    pub class: ErrorClass,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    pub message: String,
    /// The stage whose failure ended the run, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// `RunError::details.reason` of a run the engine quarantined instead of resuming it.
pub const QUARANTINED: &str = "Quarantined";

impl RunError {
    /// Why the run ended, when it was not a stage failure: [`QUARANTINED`], or `None`.
    pub fn reason(&self) -> Option<&str> {
        self.details.get("reason").and_then(Value::as_str)
    }
}

/// Why a stage did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SkipReason {
    /// A branching stage (router, conditional) chose another branch.
    BranchNotTaken,
    /// A stage it depends on failed for good.
    UpstreamFailed,
    /// The run ended (failed, cancelled, timed out) before the stage could start.
    RunEnded,
}

/// Everything that can happen to a run. Serialized with an explicit `type` tag so that records stay
/// readable across releases; new variants may be added, existing ones keep their names and fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    /// The run was accepted: what to run and with what. Always the first event of a run.
    RunAccepted {
        pipeline: String,
        namespace: String,
        /// `metadata.generation` of the Pipeline this run uses.
        #[serde(default)]
        generation: i64,
        #[serde(default)]
        trigger: Trigger,
        /// Name of the PipelineRun object, when the run has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_name: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        /// The execution plan, as the engine serialized it.
        plan: Value,
        inputs: Value,
    },
    /// The first stage started: the run is running.
    RunStarted,
    /// An engine took the unfinished run up again after a restart, before acting on it. Recorded durably,
    /// so that a run the engine keeps crashing on can be recognised (see `RunState::last_resume`).
    RunResumed {
        /// The engine session that resumed it (see `EventStore::begin_engine_session`).
        session: u64,
        /// Whether the engine before that session stopped without shutting down (a crash, SIGKILL, an
        /// abort): the run was in flight at that crash.
        after_crash: bool,
    },
    StageStarted {
        stage: String,
        attempt: u32,
        /// The input the attempt was given: the stage's config with its templates rendered and its input
        /// mapping applied, secrets masked. Bounded as a rendered input is (`--max-output-bytes`). Absent
        /// (null) in logs written before it was recorded, and for a stage whose input is null.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        input: Value,
    },
    StageSucceeded {
        stage: String,
        attempt: u32,
        output: Value,
        /// Stages the branching decision of this stage left out (router, conditional).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skip: Vec<String>,
        /// Set when the stage did not run in this run: its output was taken from the run named here (a
        /// rerun from the failed stage), whose events hold the attempts that produced it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reused_from: Option<RunId>,
    },
    StageFailed {
        stage: String,
        attempt: u32,
        error: StageError,
    },
    /// A failed attempt will be followed by attempt `attempt` at Unix time `at` (microseconds).
    StageRetryScheduled {
        stage: String,
        attempt: u32,
        /// Serialized as `retry_at`: inside an [`Event`] (which flattens its kind) a field named `at` would
        /// collide with [`Event::at`] and the JSON would not read back.
        #[serde(rename = "retry_at", alias = "at")]
        at: i64,
    },
    StageSkipped {
        stage: String,
        reason: SkipReason,
    },
    /// A line a stage logged (the `logger` component, or a component's own diagnostics).
    StageLog {
        stage: String,
        attempt: u32,
        level: String,
        message: String,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        data: Value,
    },
    RunSucceeded {
        output: Value,
    },
    RunFailed {
        error: RunError,
    },
    RunCancelled {
        #[serde(default)]
        reason: String,
    },
    RunTimedOut {
        #[serde(default)]
        message: String,
    },
}

impl EventKind {
    /// The phase a run is in right after this event, when the event changes it.
    pub fn run_phase(&self) -> Option<RunPhase> {
        match self {
            EventKind::RunAccepted { .. } => Some(RunPhase::Pending),
            EventKind::RunStarted => Some(RunPhase::Running),
            EventKind::RunSucceeded { .. } => Some(RunPhase::Succeeded),
            EventKind::RunFailed { .. } => Some(RunPhase::Failed),
            EventKind::RunCancelled { .. } => Some(RunPhase::Cancelled),
            EventKind::RunTimedOut { .. } => Some(RunPhase::TimedOut),
            _ => None,
        }
    }

    /// Whether this event ends the run. A terminal event is durable before it is reported.
    pub fn is_terminal(&self) -> bool {
        self.run_phase().is_some_and(RunPhase::is_terminal)
    }

    /// The name of the variant, as written in the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunAccepted { .. } => "RunAccepted",
            EventKind::RunStarted => "RunStarted",
            EventKind::RunResumed { .. } => "RunResumed",
            EventKind::StageStarted { .. } => "StageStarted",
            EventKind::StageSucceeded { .. } => "StageSucceeded",
            EventKind::StageFailed { .. } => "StageFailed",
            EventKind::StageRetryScheduled { .. } => "StageRetryScheduled",
            EventKind::StageSkipped { .. } => "StageSkipped",
            EventKind::StageLog { .. } => "StageLog",
            EventKind::RunSucceeded { .. } => "RunSucceeded",
            EventKind::RunFailed { .. } => "RunFailed",
            EventKind::RunCancelled { .. } => "RunCancelled",
            EventKind::RunTimedOut { .. } => "RunTimedOut",
        }
    }

    /// The stage this event is about, if any.
    pub fn stage(&self) -> Option<&str> {
        match self {
            EventKind::StageStarted { stage, .. }
            | EventKind::StageSucceeded { stage, .. }
            | EventKind::StageFailed { stage, .. }
            | EventKind::StageRetryScheduled { stage, .. }
            | EventKind::StageSkipped { stage, .. }
            | EventKind::StageLog { stage, .. } => Some(stage),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_event_round_trips_as_json() {
        let kinds = vec![
            EventKind::RunStarted,
            EventKind::StageStarted {
                stage: "a".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
            EventKind::StageRetryScheduled {
                stage: "a".into(),
                attempt: 2,
                at: 99,
            },
            EventKind::RunCancelled {
                reason: String::new(),
            },
            EventKind::RunResumed {
                session: 3,
                after_crash: true,
            },
        ];
        for kind in kinds {
            let event = Event {
                seq: 4,
                at: 1234,
                kind,
            };
            let text = serde_json::to_string(&event).unwrap();
            let back: Event = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, event, "{text}");
        }
    }

    #[test]
    fn phases_and_names() {
        let accepted = EventKind::RunAccepted {
            pipeline: "p".into(),
            namespace: "ns".into(),
            generation: 1,
            trigger: Trigger::Cron,
            run_name: None,
            labels: BTreeMap::new(),
            plan: json!({}),
            inputs: json!({}),
        };
        assert_eq!(accepted.run_phase(), Some(RunPhase::Pending));
        assert!(!accepted.is_terminal());
        assert!(
            EventKind::RunTimedOut {
                message: String::new()
            }
            .is_terminal()
        );
        assert_eq!(
            EventKind::StageSkipped {
                stage: "x".into(),
                reason: SkipReason::RunEnded
            }
            .stage(),
            Some("x")
        );
        assert_eq!("pubsub".parse::<Trigger>(), Ok(Trigger::Pubsub));
        assert_eq!("timedout".parse::<RunPhase>(), Ok(RunPhase::TimedOut));
        assert!("nope".parse::<RunPhase>().unwrap_err().contains("nope"));
    }
}

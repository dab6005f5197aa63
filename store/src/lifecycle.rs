//! A run's lifecycle: the one rule for the shape of its stream (`RunAccepted` first, never twice, nothing
//! after the end) and the one fold of its run-level fields (phase, start, end, error).
//!
//! The store checks the rule before it appends ([`crate::EventStore::append`]) and the fold checks it as it
//! reads ([`crate::RunState::apply`]); the run's state and its summary (history listings) both take their
//! run-level fields from [`RunChange`], so that they cannot disagree.

use serde_json::Value;

use crate::event::{EventKind, RunError, RunId, RunPhase};

/// An event breaks the lifecycle of its run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// An event other than `RunAccepted` for a run that does not exist (yet).
    #[error("run {run}: event {seq} ({event}) comes before RunAccepted")]
    NotAccepted {
        run: RunId,
        seq: u64,
        event: &'static str,
    },
    /// `RunAccepted` for a run that already exists.
    #[error("run {run}: event {seq} is a second RunAccepted (the run was already accepted)")]
    AlreadyAccepted { run: RunId, seq: u64 },
    /// An event after the run's terminal event (which makes a second terminal event impossible).
    #[error("run {run}: event {seq} ({event}) follows the terminal event of the run")]
    RunEnded {
        run: RunId,
        seq: u64,
        event: &'static str,
    },
}

/// Checks that `kind` may be event `seq` of `run`, whose phase so far is `phase` (`None`: the run has no
/// events yet).
pub fn check(
    run: RunId,
    phase: Option<RunPhase>,
    seq: u64,
    kind: &EventKind,
) -> Result<(), LifecycleError> {
    let accepted = matches!(kind, EventKind::RunAccepted { .. });
    match phase {
        Some(phase) if phase.is_terminal() => Err(LifecycleError::RunEnded {
            run,
            seq,
            event: kind.name(),
        }),
        Some(_) if accepted => Err(LifecycleError::AlreadyAccepted { run, seq }),
        None if !accepted => Err(LifecycleError::NotAccepted {
            run,
            seq,
            event: kind.name(),
        }),
        _ => Ok(()),
    }
}

/// What a run-level event (other than `RunAccepted`) does to the run's own fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunChange {
    pub phase: RunPhase,
    /// Why the run did not succeed, for a run-level end other than success.
    pub error: Option<RunError>,
}

impl RunChange {
    /// The change `kind` makes; `None` for events that leave the run's phase alone and for `RunAccepted`
    /// (which makes the run rather than changing it).
    pub(crate) fn of(kind: &EventKind) -> Option<RunChange> {
        let error = |message: &str, default: &str| RunError {
            message: if message.is_empty() {
                default.to_string()
            } else {
                message.to_string()
            },
            stage: None,
            details: Value::Null,
        };
        let (phase, error) = match kind {
            EventKind::RunStarted => (RunPhase::Running, None),
            EventKind::RunSucceeded { .. } => (RunPhase::Succeeded, None),
            EventKind::RunFailed { error } => (RunPhase::Failed, Some(error.clone())),
            EventKind::RunCancelled { reason } => {
                (RunPhase::Cancelled, Some(error(reason, "run cancelled")))
            }
            EventKind::RunTimedOut { message } => {
                (RunPhase::TimedOut, Some(error(message, "run timed out")))
            }
            _ => return None,
        };
        Some(RunChange { phase, error })
    }

    /// Folds the change into a run's phase and times (`at`: when the event happened); returns the error
    /// for the caller to keep in its own form.
    pub(crate) fn apply(
        self,
        at: i64,
        phase: &mut RunPhase,
        started_at: &mut Option<i64>,
        finished_at: &mut Option<i64>,
    ) -> Option<RunError> {
        if self.phase == RunPhase::Running {
            started_at.get_or_insert(at);
        }
        if self.phase.is_terminal() {
            *finished_at = Some(at);
        }
        *phase = self.phase;
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::from_u128(7)
    }

    fn accepted() -> EventKind {
        EventKind::RunAccepted {
            pipeline: "p".into(),
            namespace: "ns".into(),
            generation: 1,
            trigger: Default::default(),
            run_name: None,
            labels: Default::default(),
            plan: Value::Null,
            inputs: Value::Null,
        }
    }

    #[test]
    fn run_accepted_comes_first_once_and_nothing_follows_the_end() {
        assert_eq!(check(run(), None, 0, &accepted()), Ok(()));
        assert_eq!(
            check(run(), None, 0, &EventKind::RunStarted),
            Err(LifecycleError::NotAccepted {
                run: run(),
                seq: 0,
                event: "RunStarted"
            })
        );
        assert_eq!(
            check(run(), Some(RunPhase::Running), 3, &accepted()),
            Err(LifecycleError::AlreadyAccepted { run: run(), seq: 3 })
        );
        assert_eq!(
            check(run(), Some(RunPhase::Running), 3, &EventKind::RunStarted),
            Ok(())
        );
        let after = check(run(), Some(RunPhase::Failed), 4, &accepted()).unwrap_err();
        assert_eq!(
            after,
            LifecycleError::RunEnded {
                run: run(),
                seq: 4,
                event: "RunAccepted"
            }
        );
        assert!(
            after.to_string().contains("event 4 (RunAccepted)"),
            "{after}"
        );
    }

    #[test]
    fn an_end_without_a_reason_gets_the_default_one() {
        let cancelled = RunChange::of(&EventKind::RunCancelled {
            reason: String::new(),
        })
        .expect("a run-level event");
        assert_eq!(cancelled.phase, RunPhase::Cancelled);
        assert_eq!(
            cancelled.error.map(|e| e.message).as_deref(),
            Some("run cancelled")
        );
        let timed_out = RunChange::of(&EventKind::RunTimedOut {
            message: "over 5s".into(),
        })
        .expect("a run-level event");
        assert_eq!(
            timed_out.error.map(|e| e.message).as_deref(),
            Some("over 5s")
        );
        assert_eq!(RunChange::of(&accepted()), None);
        assert_eq!(
            RunChange::of(&EventKind::RunResumed {
                session: 1,
                after_crash: false
            }),
            None
        );
    }

    #[test]
    fn the_start_is_kept_and_the_end_stamped() {
        let (mut phase, mut started, mut finished) = (RunPhase::Pending, None, None);
        let started_change = RunChange::of(&EventKind::RunStarted).expect("change");
        assert_eq!(
            started_change.apply(10, &mut phase, &mut started, &mut finished),
            None
        );
        let again = RunChange::of(&EventKind::RunStarted).expect("change");
        again.apply(11, &mut phase, &mut started, &mut finished);
        let ok = RunChange::of(&EventKind::RunSucceeded {
            output: Value::Null,
        })
        .expect("change");
        ok.apply(20, &mut phase, &mut started, &mut finished);
        assert_eq!(
            (phase, started, finished),
            (RunPhase::Succeeded, Some(10), Some(20))
        );
    }
}

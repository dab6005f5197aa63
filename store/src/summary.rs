//! The per-run summary record behind history listings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, RunId, RunPhase, Trigger};
use crate::lifecycle::RunChange;

/// What history listings show of a run, kept next to its events.
///
/// Written with `RunAccepted` and rewritten only when the run's phase changes (so stage events stay one
/// insert each); for everything else fold the events ([`crate::EventStore::fold`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub run_id: RunId,
    pub pipeline: String,
    pub namespace: String,
    pub run_name: Option<String>,
    pub trigger: Trigger,
    pub generation: i64,
    pub labels: BTreeMap<String, String>,
    pub phase: RunPhase,
    /// Unix microseconds of `RunAccepted`.
    pub accepted_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Why the run failed, was cancelled or timed out.
    pub error: Option<String>,
    /// Sequence number of the last event that changed the phase; the terminal event's once the run ended.
    /// Not the last event of a running run (the summary is not rewritten on stage events).
    pub last_seq: u64,
}

impl RunSummary {
    /// The summary of a run that was just accepted, or `None` when `kind` is not `RunAccepted`.
    pub(crate) fn accepted(
        run_id: RunId,
        kind: &EventKind,
        at: i64,
        seq: u64,
    ) -> Option<RunSummary> {
        let EventKind::RunAccepted {
            pipeline,
            namespace,
            generation,
            trigger,
            run_name,
            labels,
            ..
        } = kind
        else {
            return None;
        };
        Some(RunSummary {
            run_id,
            pipeline: pipeline.clone(),
            namespace: namespace.clone(),
            run_name: run_name.clone(),
            trigger: *trigger,
            generation: *generation,
            labels: labels.clone(),
            phase: RunPhase::Pending,
            accepted_at: at,
            started_at: None,
            finished_at: None,
            error: None,
            last_seq: seq,
        })
    }

    /// Applies a phase-changing event (other than `RunAccepted`); returns whether anything changed.
    pub(crate) fn apply_phase_change(&mut self, kind: &EventKind, at: i64, seq: u64) -> bool {
        let Some(change) = RunChange::of(kind) else {
            return false;
        };
        if let Some(error) = change.apply(
            at,
            &mut self.phase,
            &mut self.started_at,
            &mut self.finished_at,
        ) {
            self.error = Some(error.message);
        }
        self.last_seq = seq;
        true
    }
}

//! History retention: which runs a policy deletes ([`Planner`], pure) and the background task that
//! deletes them ([`sweep`], [`spawn`]). Runs are deleted whole (events, summary and index entries in
//! one batch, `EventStore::delete_run`), and a run in flight is never deleted: the planner skips it, and
//! the store refuses it anyway.

use std::collections::HashMap;
use std::time::Duration;

use flowmason_store::{EventStore, RunId, RunQuery, RunSummary, StoreError};
use tokio_util::sync::CancellationToken;

/// How much history to keep. Both limits apply (a run goes when either says so); neither set keeps
/// everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete finished runs that ended longer ago than this.
    pub ttl: Option<Duration>,
    /// Keep at most this many finished runs per pipeline (namespace and name), the newest.
    pub keep_per_pipeline: Option<usize>,
}

impl RetentionPolicy {
    pub fn is_unlimited(&self) -> bool {
        self.ttl.is_none() && self.keep_per_pipeline.is_none()
    }
}

/// Decides run by run, newest first (the order of the history indexes), whether a run goes. Memory
/// grows with the number of pipelines, not with the history.
pub struct Planner {
    policy: RetentionPolicy,
    /// Runs that ended before this (Unix micros) are past the TTL.
    cutoff: Option<i64>,
    /// Finished runs kept so far per (namespace, pipeline).
    kept: HashMap<(String, String), usize>,
}

impl Planner {
    pub fn new(policy: RetentionPolicy, now_micros: i64) -> Planner {
        Planner {
            policy,
            cutoff: policy
                .ttl
                .map(|ttl| now_micros.saturating_sub(ttl.as_micros().min(i64::MAX as u128) as i64)),
            kept: HashMap::new(),
        }
    }

    /// Whether `run` is to be deleted. Must be called newest first (by `accepted_at`).
    pub fn delete(&mut self, run: &RunSummary) -> bool {
        if !run.phase.is_terminal() {
            return false;
        }
        let ended = run.finished_at.unwrap_or(run.accepted_at);
        if self.cutoff.is_some_and(|cutoff| ended < cutoff) {
            return true;
        }
        if let Some(keep) = self.policy.keep_per_pipeline {
            let kept = self
                .kept
                .entry((run.namespace.clone(), run.pipeline.clone()))
                .or_default();
            if *kept >= keep {
                return true;
            }
            *kept += 1;
        }
        false
    }
}

/// The runs `policy` deletes among `runs` (any order) at `now_micros`; pure.
pub fn plan(policy: RetentionPolicy, now_micros: i64, runs: &[RunSummary]) -> Vec<RunId> {
    let mut sorted: Vec<&RunSummary> = runs.iter().collect();
    sorted.sort_by(|a, b| {
        b.accepted_at
            .cmp(&a.accepted_at)
            .then_with(|| a.run_id.cmp(&b.run_id))
    });
    let mut planner = Planner::new(policy, now_micros);
    sorted
        .into_iter()
        .filter(|r| planner.delete(r))
        .map(|r| r.run_id)
        .collect()
}

/// One pass over the whole history, newest first a page at a time: deletes what the policy says.
/// Returns the number of runs deleted.
pub fn sweep(
    store: &EventStore,
    policy: RetentionPolicy,
    now_micros: i64,
) -> Result<usize, StoreError> {
    if policy.is_unlimited() {
        return Ok(0);
    }
    let mut planner = Planner::new(policy, now_micros);
    let mut query = RunQuery {
        limit: 1000,
        ..RunQuery::default()
    };
    let mut deleted = 0;
    loop {
        let page = store.query(&query)?;
        for run in &page.runs {
            if planner.delete(run) {
                match store.delete_run(run.run_id) {
                    Ok(true) => deleted += 1,
                    Ok(false) | Err(StoreError::RunInFlight { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Keyset pagination: deleting runs of this page does not move the next one.
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => break,
        }
    }
    Ok(deleted)
}

/// Sweeps every `every` (the first time at once) until `stop` is cancelled. Errors are logged and the
/// next sweep tries again.
pub fn spawn(
    store: EventStore,
    policy: RetentionPolicy,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if policy.is_unlimited() {
            return;
        }
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let store = store.clone();
            let result =
                tokio::task::spawn_blocking(move || sweep(&store, policy, super::now_micros()))
                    .await;
            match result {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(deleted = n, "history retention deleted runs"),
                Ok(Err(e)) => tracing::error!(error = %e, "history retention sweep failed"),
                Err(e) => tracing::error!(error = %e, "history retention sweep panicked"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmason_store::{RunPhase, Trigger};

    const MIN: i64 = 60_000_000;

    fn run(pipeline: &str, phase: RunPhase, accepted_min: i64) -> RunSummary {
        let at = accepted_min * MIN;
        RunSummary {
            run_id: RunId::from_u128(accepted_min as u128 * 1000 + pipeline.len() as u128),
            pipeline: pipeline.into(),
            namespace: "ns".into(),
            run_name: None,
            trigger: Trigger::Manual,
            generation: 1,
            labels: Default::default(),
            phase,
            accepted_at: at,
            started_at: Some(at),
            finished_at: phase.is_terminal().then_some(at + MIN / 2),
            error: None,
            last_seq: 0,
        }
    }

    #[test]
    fn ttl_deletes_runs_that_ended_before_the_cutoff_and_nothing_in_flight() {
        let runs = vec![
            run("a", RunPhase::Succeeded, 1),
            run("a", RunPhase::Running, 2),
            run("a", RunPhase::Pending, 3),
            run("a", RunPhase::Failed, 10),
            run("a", RunPhase::Succeeded, 100),
        ];
        let policy = RetentionPolicy {
            ttl: Some(Duration::from_secs(60 * 50)),
            keep_per_pipeline: None,
        };
        // now = minute 60: cutoff minute 10 (runs that ended before it go).
        let doomed = plan(policy, 60 * MIN, &runs);
        assert_eq!(doomed, vec![runs[0].run_id]);
        let later = plan(policy, 61 * MIN, &runs);
        assert_eq!(later, vec![runs[3].run_id, runs[0].run_id]);
    }

    #[test]
    fn keep_per_pipeline_keeps_the_newest_finished_runs_of_each_pipeline() {
        let runs = vec![
            run("a", RunPhase::Succeeded, 1),
            run("a", RunPhase::Failed, 2),
            run("a", RunPhase::Running, 3),
            run("a", RunPhase::Succeeded, 4),
            run("bb", RunPhase::Succeeded, 5),
            run("bb", RunPhase::Cancelled, 6),
            run("a", RunPhase::Pending, 7),
        ];
        let policy = RetentionPolicy {
            ttl: None,
            keep_per_pipeline: Some(2),
        };
        let mut doomed = plan(policy, 100 * MIN, &runs);
        doomed.sort();
        assert_eq!(doomed, vec![runs[0].run_id]);
        let keep_one = RetentionPolicy {
            keep_per_pipeline: Some(1),
            ..policy
        };
        let mut doomed = plan(keep_one, 100 * MIN, &runs);
        doomed.sort();
        let mut expected = vec![runs[0].run_id, runs[1].run_id, runs[4].run_id];
        expected.sort();
        assert_eq!(doomed, expected);
        assert!(plan(RetentionPolicy::default(), 100 * MIN, &runs).is_empty());
    }

    #[test]
    fn both_limits_apply() {
        let runs = vec![
            run("a", RunPhase::Succeeded, 1),
            run("a", RunPhase::Succeeded, 50),
            run("a", RunPhase::Succeeded, 51),
            run("a", RunPhase::Succeeded, 52),
        ];
        let policy = RetentionPolicy {
            ttl: Some(Duration::from_secs(60 * 30)),
            keep_per_pipeline: Some(2),
        };
        let mut doomed = plan(policy, 60 * MIN, &runs);
        doomed.sort();
        assert_eq!(doomed, vec![runs[0].run_id, runs[1].run_id]);
    }
}

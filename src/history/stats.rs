//! Per-pipeline statistics over a window: counts per phase, success rate, duration percentiles.
//!
//! Read from the pipeline's own index bounded by the window (`RunQuery` with namespace, pipeline and
//! `since`/`until`), so the cost grows with the runs in the window, not with the history.

use std::collections::BTreeMap;

use flowmason_store::{EventStore, RunPhase, RunQuery, RunSummary, StoreError};
use serde::Serialize;

/// What `GET /api/v1/pipelines/{ns}/{name}/stats` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStats {
    pub namespace: String,
    pub pipeline: String,
    /// The window: runs accepted at or after `since` and before `until` (Unix microseconds).
    pub since: i64,
    pub until: i64,
    /// Runs accepted in the window.
    pub total: u64,
    /// Runs per phase (every phase listed, zeros included).
    pub counts: BTreeMap<RunPhase, u64>,
    /// Succeeded / finished runs; `None` when none finished.
    pub success_rate: Option<f64>,
    /// Duration percentiles (nearest rank) over the finished runs, in seconds.
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

/// Folds summaries (any order) into stats; pure.
pub fn compute(
    namespace: &str,
    pipeline: &str,
    since: i64,
    until: i64,
    runs: &[RunSummary],
) -> PipelineStats {
    let mut counts: BTreeMap<RunPhase, u64> = RunPhase::ALL.iter().map(|p| (*p, 0)).collect();
    let mut durations = Vec::new();
    for run in runs {
        *counts.entry(run.phase).or_default() += 1;
        if let Some(end) = run.finished_at {
            durations.push((end - run.started_at.unwrap_or(run.accepted_at)).max(0));
        }
    }
    durations.sort_unstable();
    let finished = durations.len() as u64;
    let succeeded = counts.get(&RunPhase::Succeeded).copied().unwrap_or(0);
    PipelineStats {
        namespace: namespace.into(),
        pipeline: pipeline.into(),
        since,
        until,
        total: runs.len() as u64,
        counts,
        success_rate: (finished > 0).then(|| succeeded as f64 / finished as f64),
        p50_seconds: percentile(&durations, 50),
        p95_seconds: percentile(&durations, 95),
    }
}

/// Nearest-rank percentile of sorted microseconds, in seconds.
fn percentile(sorted: &[i64], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1] as f64 / 1e6)
}

/// The stats of one pipeline over `[since, until)`, read page by page from its index.
pub fn pipeline_stats(
    store: &EventStore,
    namespace: &str,
    pipeline: &str,
    since: i64,
    until: i64,
) -> Result<PipelineStats, StoreError> {
    let mut runs = Vec::new();
    let mut query = RunQuery {
        namespace: Some(namespace.into()),
        pipeline: Some(pipeline.into()),
        since: Some(since),
        until: Some(until),
        limit: 1000,
        ..RunQuery::default()
    };
    loop {
        let page = store.query(&query)?;
        runs.extend(page.runs);
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => break,
        }
    }
    Ok(compute(namespace, pipeline, since, until, &runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmason_store::{RunId, Trigger};

    fn run(phase: RunPhase, started: i64, seconds: Option<i64>) -> RunSummary {
        RunSummary {
            run_id: RunId::now_v7(),
            pipeline: "p".into(),
            namespace: "ns".into(),
            run_name: None,
            trigger: Trigger::Manual,
            generation: 1,
            labels: Default::default(),
            phase,
            accepted_at: started - 10,
            started_at: Some(started),
            finished_at: seconds.map(|s| started + s * 1_000_000),
            error: None,
            last_seq: 0,
        }
    }

    #[test]
    fn counts_rate_and_percentiles() {
        let mut runs: Vec<RunSummary> = (1..=18)
            .map(|s| run(RunPhase::Succeeded, 1_000, Some(s)))
            .collect();
        runs.push(run(RunPhase::Failed, 1_000, Some(19)));
        runs.push(run(RunPhase::Failed, 1_000, Some(20)));
        runs.push(run(RunPhase::Running, 1_000, None));
        let s = compute("ns", "p", 0, 5, &runs);
        assert_eq!(s.total, 21);
        assert_eq!(s.counts[&RunPhase::Succeeded], 18);
        assert_eq!(s.counts[&RunPhase::Failed], 2);
        assert_eq!(s.counts[&RunPhase::Running], 1);
        assert_eq!(s.counts[&RunPhase::TimedOut], 0);
        assert_eq!(s.success_rate, Some(0.9));
        assert_eq!(s.p50_seconds, Some(10.0));
        assert_eq!(s.p95_seconds, Some(19.0));
        let empty = compute("ns", "p", 0, 5, &[]);
        assert_eq!((empty.success_rate, empty.p50_seconds), (None, None));
    }
}

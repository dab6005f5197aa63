//! The cron trigger (`spec.schedule`, parsed as a `model::schedule::CronSchedule`): pure planning of what
//! is due ([`plan`], [`plan_prune`], [`CronSchedule::between`]) and the per-Pipeline loop
//! ([`CronTrigger`]) that applies a plan through the API.
//!
//! Exactly-once per scheduled instant comes from the run name ([`scheduled_run_name`]: the pipeline and
//! the instant in unix minutes): two replicas, a restart or a backfill of the same instant all create the
//! same name and all but the first get `AlreadyExists`. After downtime only the latest missed instant is
//! considered (never a burst), and only when it is within `startingDeadlineSeconds`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use flowmason_store::Trigger;

use super::{NewRun, Outcome, TriggerContext, TriggerError, create_run};
use crate::model::schedule::CronSchedule;
use crate::model::vocabulary::{
    CANCEL_ANNOTATION, LAST_SCHEDULE_ANNOTATION, PIPELINE_LABEL, SCHEDULED_TIME_ANNOTATION,
    TRIGGER_LABEL,
};
use crate::model::{ConcurrencyPolicy, Pipeline, PipelineRun, RunPhase};

/// How far back a missed run is still looked for when the Pipeline gives no starting deadline and
/// nothing was ever handled: the schedule's latest instant before now, whatever its age, counts once.
const SEARCH_LIMIT: usize = 100_000;

/// The deterministic name of the run for one scheduled instant: `<pipeline>-<unix minutes>`.
pub fn scheduled_run_name(pipeline: &str, at: DateTime<Utc>) -> String {
    super::run_name(pipeline, &(at.timestamp().div_euclid(60)).to_string())
}

/// A run of this pipeline's schedule that has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    pub name: String,
}

/// Everything [`plan`] decides on.
#[derive(Debug, Clone)]
pub struct CronInput<'a> {
    pub now: DateTime<Utc>,
    /// The latest instant already handled (fired or skipped); `None` when nothing ever was.
    pub last_handled: Option<DateTime<Utc>>,
    /// When the Pipeline was created: instants before it are never due.
    pub created: DateTime<Utc>,
    pub starting_deadline: Option<Duration>,
    pub policy: ConcurrencyPolicy,
    pub suspended: bool,
    /// Unfinished runs created by this schedule.
    pub active: &'a [ActiveRun],
}

/// Why a due instant did not start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Later than `startingDeadlineSeconds` after its time.
    DeadlineExceeded,
    /// `Forbid` and a previous run is still going.
    Forbidden,
}

/// What the cron trigger does now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CronPlan {
    /// The instant to start a run for.
    pub fire: Option<DateTime<Utc>>,
    /// The due instant that was not started, and why.
    pub skipped: Option<(DateTime<Utc>, Skip)>,
    /// Earlier due instants passed over without a run (downtime): at most one run ever catches up.
    pub missed: usize,
    /// Runs to cancel first (`Replace`).
    pub cancel: Vec<String>,
    /// The new latest handled instant, when it moved.
    pub handled: Option<DateTime<Utc>>,
    /// The next instant to wake up for (`status.nextScheduledRun`); `None` while suspended.
    pub next: Option<DateTime<Utc>>,
}

/// Decides what is due: the latest scheduled instant in `(last handled or creation, now]`, if any, fires
/// once (subject to the deadline and the concurrency policy); instants before it are counted as missed.
pub fn plan(schedule: &CronSchedule, input: &CronInput<'_>) -> CronPlan {
    if input.suspended {
        return CronPlan::default();
    }
    let mut out = CronPlan {
        next: schedule.next_after(input.now),
        ..CronPlan::default()
    };
    let base = input
        .last_handled
        .unwrap_or(input.created)
        .max(input.created);
    let Some(due) = schedule
        .latest_at_or_before(input.now)
        .filter(|due| *due > base)
    else {
        return out;
    };
    out.handled = Some(due);
    out.missed = match schedule.between(base, due, SEARCH_LIMIT) {
        Ok(all) => all.len().saturating_sub(1),
        Err(n) => n,
    };
    let late = (input.now - due).to_std().unwrap_or_default();
    if input
        .starting_deadline
        .is_some_and(|deadline| late > deadline)
    {
        out.skipped = Some((due, Skip::DeadlineExceeded));
        return out;
    }
    match input.policy {
        ConcurrencyPolicy::Forbid if !input.active.is_empty() => {
            out.skipped = Some((due, Skip::Forbidden));
        }
        ConcurrencyPolicy::Replace => {
            out.cancel = input.active.iter().map(|r| r.name.clone()).collect();
            out.fire = Some(due);
        }
        _ => out.fire = Some(due),
    }
    out
}

/// A finished run, for history pruning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRun {
    pub name: String,
    pub succeeded: bool,
    /// Completion (or, lacking it, creation) time: newer runs are kept.
    pub finished: DateTime<Utc>,
}

/// The finished runs to delete so that at most `successful` succeeded and `failed` unsuccessful ones
/// (Failed, TimedOut, Cancelled) remain, newest kept; `None` keeps them all. Their history stays in the
/// event log.
pub fn plan_prune(
    runs: &[FinishedRun],
    successful: Option<i32>,
    failed: Option<i32>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (want_success, limit) in [(true, successful), (false, failed)] {
        let Some(limit) = limit else { continue };
        let mut group: Vec<&FinishedRun> = runs
            .iter()
            .filter(|r| r.succeeded == want_success)
            .collect();
        group.sort_by(|a, b| b.finished.cmp(&a.finished).then(b.name.cmp(&a.name)));
        out.extend(
            group
                .into_iter()
                .skip(limit.max(0) as usize)
                .map(|r| r.name.clone()),
        );
    }
    out
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Result of one evaluation of a schedule.
#[derive(Debug, Clone, Default)]
pub struct TickReport {
    pub plan: CronPlan,
    /// The run created (or found) for `plan.fire`.
    pub run: Option<String>,
    pub outcome: Option<Outcome>,
    pub pruned: Vec<String>,
}

/// The cron trigger of one Pipeline.
#[derive(Clone)]
pub struct CronTrigger {
    ctx: TriggerContext,
    namespace: String,
    name: String,
}

impl CronTrigger {
    pub fn new(ctx: TriggerContext, namespace: &str, name: &str) -> Self {
        CronTrigger {
            ctx,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn what(&self) -> String {
        format!("Pipeline {}/{}", self.namespace, self.name)
    }

    /// One evaluation at the clock's now: fire what is due, cancel what `Replace` replaces, remember the
    /// handled instant, prune history, publish the next scheduled time.
    pub async fn tick(&self) -> Result<TickReport, TriggerError> {
        let pipelines: Api<Pipeline> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let runs: Api<PipelineRun> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let pipeline = pipelines
            .get(&self.name)
            .await
            .map_err(|e| TriggerError::kube(format!("reading {}", self.what()), e))?;
        let Some(expr) = pipeline.spec.schedule.clone() else {
            return Ok(TickReport::default());
        };
        let schedule = CronSchedule::parse(&expr, pipeline.spec.time_zone.as_deref())?;
        let selector = format!(
            "{PIPELINE_LABEL}={},{TRIGGER_LABEL}={}",
            self.name,
            Trigger::Cron
        );
        let existing = runs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| TriggerError::kube(format!("listing cron runs of {}", self.what()), e))?;
        let mut last_handled = pipeline
            .annotations()
            .get(LAST_SCHEDULE_ANNOTATION)
            .and_then(|s| parse_time(s));
        let mut active = Vec::new();
        let mut finished = Vec::new();
        for run in &existing.items {
            if let Some(at) = run
                .annotations()
                .get(SCHEDULED_TIME_ANNOTATION)
                .and_then(|s| parse_time(s))
            {
                last_handled = last_handled.max(Some(at));
            }
            let phase = run.status.as_ref().and_then(|s| s.phase);
            let created = run
                .metadata
                .creation_timestamp
                .as_ref()
                .map(super::from_time)
                .unwrap_or_default();
            match phase {
                None | Some(RunPhase::Pending) | Some(RunPhase::Running) => {
                    if !cancel_requested(run) {
                        active.push(ActiveRun {
                            name: run.name_any(),
                        });
                    }
                }
                Some(p) => finished.push(FinishedRun {
                    name: run.name_any(),
                    succeeded: p == RunPhase::Succeeded,
                    finished: run
                        .status
                        .as_ref()
                        .and_then(|s| s.completion_time.as_ref())
                        .map(super::from_time)
                        .unwrap_or(created),
                }),
            }
        }
        let spec = &pipeline.spec;
        let created = pipeline
            .metadata
            .creation_timestamp
            .as_ref()
            .map(super::from_time)
            .unwrap_or_else(|| self.ctx.clock.now());
        let plan = plan(
            &schedule,
            &CronInput {
                now: self.ctx.clock.now(),
                last_handled,
                created,
                starting_deadline: spec
                    .starting_deadline_seconds
                    .map(|s| Duration::from_secs(s.max(0) as u64)),
                policy: spec.concurrency_policy.unwrap_or_default(),
                suspended: spec.suspend.unwrap_or(false),
                active: &active,
            },
        );
        let mut report = TickReport {
            plan: plan.clone(),
            ..TickReport::default()
        };
        for name in &plan.cancel {
            let patch = json!({
                "metadata": {"annotations": {CANCEL_ANNOTATION: "true"}},
                "spec": {"status": "Cancelled"},
            });
            match runs
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(TriggerError::kube(
                        format!("cancelling PipelineRun {}/{name} (Replace)", self.namespace),
                        e,
                    ));
                }
            }
        }
        if let Some(at) = plan.fire {
            let name = scheduled_run_name(&self.name, at);
            let created = create_run(
                &self.ctx.client,
                &pipeline,
                NewRun {
                    name: name.clone(),
                    kind: Trigger::Cron,
                    inputs: None,
                    annotations: BTreeMap::from([(
                        SCHEDULED_TIME_ANNOTATION.to_string(),
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    )]),
                },
            )
            .await?;
            self.ctx.metrics.record(Trigger::Cron, created.outcome());
            report.run = Some(name);
            report.outcome = Some(created.outcome());
        } else if plan.skipped.is_some() {
            self.ctx.metrics.record(Trigger::Cron, Outcome::Rejected);
            report.outcome = Some(Outcome::Rejected);
        }
        if let Some(handled) = plan.handled {
            let patch = json!({"metadata": {"annotations": {
                LAST_SCHEDULE_ANNOTATION: handled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            }}});
            pipelines
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| {
                    TriggerError::kube(format!("recording the last schedule of {}", self.what()), e)
                })?;
        }
        for name in plan_prune(
            &finished,
            spec.successful_runs_history_limit,
            spec.failed_runs_history_limit,
        ) {
            match runs.delete(&name, &DeleteParams::default()).await {
                Ok(_) => report.pruned.push(name),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(TriggerError::kube(
                        format!("pruning PipelineRun {}/{name}", self.namespace),
                        e,
                    ));
                }
            }
        }
        let shown = pipeline
            .status
            .as_ref()
            .and_then(|s| s.next_scheduled_run.as_ref())
            .map(super::from_time);
        if shown != plan.next {
            self.ctx
                .status
                .next_scheduled_run(&self.namespace, &self.name, plan.next)
                .await?;
        }
        Ok(report)
    }

    /// Evaluates at every scheduled instant until `stop`. A failed evaluation is retried with backoff;
    /// the deterministic run names make the retry harmless.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let wake = match self.tick().await {
                Ok(report) => {
                    backoff = Duration::from_millis(500);
                    report.plan.next
                }
                Err(e) => {
                    tracing::warn!("cron trigger of {}: {e}", self.what());
                    let at = self.ctx.clock.now()
                        + chrono::Duration::from_std(backoff).unwrap_or_default();
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    Some(at)
                }
            };
            let sleep = async {
                match wake {
                    Some(at) => self.ctx.clock.sleep_until(at).await,
                    // Suspended or a schedule without future instants: woken by a re-arm.
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep => {}
            }
        }
    }
}

fn cancel_requested(run: &PipelineRun) -> bool {
    run.spec.status == Some(crate::model::RequestedState::Cancelled)
        || run
            .annotations()
            .get(CANCEL_ANNOTATION)
            .is_some_and(|v| v == "true")
}

/// Outcome of [`backfill`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub created: Vec<String>,
    pub deduplicated: Vec<String>,
}

/// Creates the runs of every scheduled instant in `[from, to]` (names as the schedule would have made
/// them, so instants that already ran are deduplicated), refusing windows of more than `max` runs.
pub async fn backfill(
    client: &Client,
    namespace: &str,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max: usize,
) -> Result<BackfillReport, TriggerError> {
    if from > to {
        return Err(TriggerError::BackfillWindow { from, to });
    }
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), namespace);
    let pipeline = pipelines
        .get(name)
        .await
        .map_err(|e| TriggerError::kube(format!("reading Pipeline {namespace}/{name}"), e))?;
    let expr = pipeline
        .spec
        .schedule
        .clone()
        .ok_or_else(|| TriggerError::NoSchedule {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    let schedule = CronSchedule::parse(&expr, pipeline.spec.time_zone.as_deref())?;
    let instants = schedule
        .between(from - chrono::Duration::seconds(1), to, max)
        .map_err(|count| TriggerError::BackfillTooLarge {
            pipeline: format!("{namespace}/{name}"),
            from,
            to,
            count,
            max,
        })?;
    let mut report = BackfillReport::default();
    for at in instants {
        let run = scheduled_run_name(name, at);
        let created = create_run(
            client,
            &pipeline,
            NewRun {
                name: run.clone(),
                kind: Trigger::Cron,
                inputs: None,
                annotations: BTreeMap::from([(
                    SCHEDULED_TIME_ANNOTATION.to_string(),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )]),
            },
        )
        .await?;
        match created {
            super::Created::New => report.created.push(run),
            super::Created::AlreadyExisted => report.deduplicated.push(run),
        }
    }
    Ok(report)
}

/// An instant written as RFC 3339 or as `YYYY-MM-DDTHH:MM` (UTC), for CLI arguments.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .map(|n| Utc.from_utc_datetime(&n))
        .map_err(|_| format!("{s:?} is not an RFC 3339 time (e.g. 2025-03-01T00:00:00Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).expect("time")
    }

    fn input<'a>(now: &str, last: Option<&str>, active: &'a [ActiveRun]) -> CronInput<'a> {
        CronInput {
            now: t(now),
            last_handled: last.map(t),
            created: t("2025-01-01T00:00:00Z"),
            starting_deadline: None,
            policy: ConcurrencyPolicy::Allow,
            suspended: false,
            active,
        }
    }

    #[test]
    fn nothing_due_before_the_first_instant() {
        let s = CronSchedule::parse("0 * * * *", None).expect("parse");
        let p = plan(&s, &input("2025-01-01T00:30:00Z", None, &[]));
        assert_eq!(p.fire, None);
        assert_eq!(p.next, Some(t("2025-01-01T01:00:00Z")));
    }

    #[test]
    fn due_instant_fires_once_and_is_then_handled() {
        let s = CronSchedule::parse("0 * * * *", None).expect("parse");
        let p = plan(&s, &input("2025-01-01T01:00:10Z", None, &[]));
        assert_eq!(p.fire, Some(t("2025-01-01T01:00:00Z")));
        assert_eq!(p.handled, p.fire);
        let again = plan(
            &s,
            &input("2025-01-01T01:00:20Z", Some("2025-01-01T01:00:00Z"), &[]),
        );
        assert_eq!(again.fire, None);
    }

    #[test]
    fn downtime_catches_up_once_with_the_latest_instant() {
        let s = CronSchedule::parse("*/5 * * * *", None).expect("parse");
        let p = plan(
            &s,
            &input("2025-01-01T03:02:00Z", Some("2025-01-01T01:00:00Z"), &[]),
        );
        assert_eq!(p.fire, Some(t("2025-01-01T03:00:00Z")));
        assert_eq!(p.missed, 23);
    }

    #[test]
    fn starting_deadline_skips_a_stale_instant() {
        let s = CronSchedule::parse("0 * * * *", None).expect("parse");
        let mut i = input("2025-01-01T01:10:00Z", Some("2025-01-01T00:00:00Z"), &[]);
        i.starting_deadline = Some(Duration::from_secs(300));
        let p = plan(&s, &i);
        assert_eq!(p.fire, None);
        assert_eq!(
            p.skipped,
            Some((t("2025-01-01T01:00:00Z"), Skip::DeadlineExceeded))
        );
        assert_eq!(p.handled, Some(t("2025-01-01T01:00:00Z")));
        i.starting_deadline = Some(Duration::from_secs(900));
        assert_eq!(plan(&s, &i).fire, Some(t("2025-01-01T01:00:00Z")));
    }

    #[test]
    fn concurrency_policies() {
        let s = CronSchedule::parse("0 * * * *", None).expect("parse");
        let active = [ActiveRun { name: "p-1".into() }];
        let mut i = input("2025-01-01T01:00:00Z", None, &active);
        assert_eq!(plan(&s, &i).fire, Some(t("2025-01-01T01:00:00Z")));
        i.policy = ConcurrencyPolicy::Forbid;
        let p = plan(&s, &i);
        assert_eq!(p.fire, None);
        assert_eq!(p.skipped.map(|s| s.1), Some(Skip::Forbidden));
        i.policy = ConcurrencyPolicy::Replace;
        let p = plan(&s, &i);
        assert_eq!(p.fire, Some(t("2025-01-01T01:00:00Z")));
        assert_eq!(p.cancel, vec!["p-1".to_string()]);
    }

    #[test]
    fn suspended_schedules_nothing() {
        let s = CronSchedule::parse("* * * * *", None).expect("parse");
        let mut i = input("2025-01-01T01:00:00Z", None, &[]);
        i.suspended = true;
        assert_eq!(plan(&s, &i), CronPlan::default());
    }

    #[test]
    fn names_derive_from_the_instant() {
        assert_eq!(
            scheduled_run_name("nightly", t("1970-01-01T01:00:00Z")),
            "nightly-60"
        );
    }

    #[test]
    fn prune_keeps_the_newest_of_each_kind() {
        let run = |name: &str, ok: bool, at: &str| FinishedRun {
            name: name.into(),
            succeeded: ok,
            finished: t(at),
        };
        let runs = [
            run("s1", true, "2025-01-01T01:00:00Z"),
            run("s2", true, "2025-01-01T02:00:00Z"),
            run("s3", true, "2025-01-01T03:00:00Z"),
            run("f1", false, "2025-01-01T01:30:00Z"),
            run("f2", false, "2025-01-01T02:30:00Z"),
        ];
        let mut gone = plan_prune(&runs, Some(2), Some(0));
        gone.sort();
        assert_eq!(gone, vec!["f1", "f2", "s1"]);
        assert!(plan_prune(&runs, None, None).is_empty());
    }

    #[test]
    fn cli_instants() {
        assert_eq!(
            parse_instant("2025-01-01T10:00").expect("short"),
            t("2025-01-01T10:00:00Z")
        );
        assert!(parse_instant("yesterday").is_err());
    }
}

//! Run history over the event log (never the Kubernetes API, so history outlives pruned PipelineRuns):
//! the answers behind `GET /api/v1/...` and `fm history`, retention, and reruns.
//!
//! - [`stats`]: per-pipeline counts, success rate and duration percentiles over a window;
//! - [`retention`]: which runs a policy deletes (pure) and the background task that deletes them;
//! - [`rerun`]: a new run with the inputs of an old one, optionally from its failed stage on.

pub mod rerun;
pub mod retention;
pub mod stats;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use flowmason_store::{RunState, StagePhase};
use serde::Serialize;
use serde_json::Value;

/// Why a history request cannot be answered as given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    #[error(
        "{field} {value:?}: expected an RFC 3339 time (2026-11-28T10:00:00Z), an age (90s, 2h, 7d) or Unix microseconds"
    )]
    Time { field: String, value: String },
    #[error("{field} {value:?}: expected a duration (90s, 2h, 7d)")]
    Duration { field: String, value: String },
    #[error(
        "labelSelector {value:?}: expected key=value pairs separated by commas (only equality is supported)"
    )]
    LabelSelector { value: String },
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

/// A duration as `90s`, `500ms`, `2h`, `7d`; in milliseconds.
pub fn parse_duration_ms(field: &str, text: &str) -> Result<u64, ParamError> {
    let bad = || ParamError::Duration {
        field: field.into(),
        value: text.into(),
    };
    if let Some(days) = text.strip_suffix('d') {
        return days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400_000))
            .ok_or_else(bad);
    }
    crate::model::duration::parse_millis(text).map_err(|_| bad())
}

/// An instant as RFC 3339, an age counted back from `now` (`90s`, `2h`, `7d`) or Unix microseconds; in
/// Unix microseconds.
pub fn parse_time(field: &str, text: &str, now_micros: i64) -> Result<i64, ParamError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    parse_duration_ms(field, text)
        .map(|ms| now_micros - (ms as i64).saturating_mul(1000))
        .map_err(|_| ParamError::Time {
            field: field.into(),
            value: text.into(),
        })
}

/// An equality label selector: `team=a,tier=1` (also `team==a`).
pub fn parse_label_selector(text: &str) -> Result<BTreeMap<String, String>, ParamError> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(k, _)| !k.trim().is_empty() && !k.ends_with('!'))
            .ok_or_else(|| ParamError::LabelSelector { value: text.into() })?;
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(labels)
}

pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

pub fn format_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| micros.to_string())
}

/// One stage of a run as the history API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageView {
    pub id: String,
    #[serde(flatten)]
    pub state: flowmason_store::StageState,
    /// From the first attempt's start to the end, once the stage has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// A run as `GET /api/v1/runs/{runId}` shows it: the fold of its events, with durations.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunHeader,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    pub stages: Vec<StageView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<flowmason_store::RunError>,
    pub inputs: Value,
    pub plan: Value,
    /// LLM tokens the run's stages report (`usage.total_tokens`), when any did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    /// Estimated LLM cost in USD the run's stages report (`usage.cost_usd`), when any did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
}

/// The summary fields of a [`RunDetail`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunHeader {
    pub run_id: flowmason_store::RunId,
    pub namespace: String,
    pub pipeline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
    pub generation: i64,
    pub trigger: flowmason_store::Trigger,
    pub labels: BTreeMap<String, String>,
    pub phase: flowmason_store::RunPhase,
    pub accepted_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    pub last_seq: u64,
}

impl RunDetail {
    /// The detail of a folded run; stages in plan order when the plan lists them, else by id.
    pub fn from_state(state: RunState) -> RunDetail {
        let order: Vec<String> = state
            .plan
            .get("stages")
            .and_then(Value::as_array)
            .map(|stages| {
                stages
                    .iter()
                    .filter_map(|s| s.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut stages: Vec<StageView> = Vec::with_capacity(state.stages.len().max(order.len()));
        let mut remaining = state.stages.clone();
        for id in order
            .iter()
            .chain(state.stages.keys().filter(|k| !order.contains(k)))
        {
            let s = remaining.remove(id).unwrap_or_default();
            let duration_seconds = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) if s.phase.is_terminal() => Some((b - a).max(0) as f64 / 1e6),
                _ => None,
            };
            let skipped_never_seen =
                s.phase == StagePhase::Pending && !state.stages.contains_key(id);
            if skipped_never_seen && state.phase.is_terminal() {
                continue;
            }
            stages.push(StageView {
                id: id.clone(),
                state: s,
                duration_seconds,
            });
        }
        RunDetail {
            duration_seconds: state.duration_micros().map(|d| d.max(0) as f64 / 1e6),
            summary: RunHeader {
                run_id: state.run_id,
                namespace: state.namespace,
                pipeline: state.pipeline,
                run_name: state.run_name,
                generation: state.generation,
                trigger: state.trigger,
                labels: state.labels,
                phase: state.phase,
                accepted_at: state.accepted_at,
                started_at: state.started_at,
                finished_at: state.finished_at,
                last_seq: state.last_seq,
            },
            stages,
            output: state.output,
            error: state.error,
            inputs: state.inputs,
            plan: state.plan,
            total_tokens: (state.total_tokens > 0).then_some(state.total_tokens),
            total_cost_usd: (state.total_cost_usd > 0.0).then_some(state.total_cost_usd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_carries_the_llm_usage_totals() {
        use flowmason_store::{Event, EventKind, Trigger};
        let run = flowmason_store::RunId::now_v7();
        let kinds = [
            EventKind::RunAccepted {
                pipeline: "p".into(),
                namespace: "default".into(),
                generation: 1,
                trigger: Trigger::Manual,
                run_name: None,
                labels: BTreeMap::new(),
                plan: serde_json::json!({"stages": [{"id": "a"}]}),
                inputs: serde_json::json!({}),
            },
            EventKind::RunStarted,
            EventKind::StageSucceeded {
                stage: "a".into(),
                attempt: 1,
                output: serde_json::json!({"usage": {"total_tokens": 18, "cost_usd": 0.5}}),
                skip: Vec::new(),
                reused_from: None,
            },
        ];
        let events: Vec<Event> = kinds
            .into_iter()
            .enumerate()
            .map(|(seq, kind)| Event {
                seq: seq as u64,
                at: 1,
                kind,
            })
            .collect();
        let state = RunState::fold(run, &events).expect("fold").expect("state");
        let detail = serde_json::to_value(RunDetail::from_state(state)).expect("json");
        assert_eq!(detail["totalTokens"], serde_json::json!(18));
        assert_eq!(detail["totalCostUsd"], serde_json::json!(0.5));
    }

    #[test]
    fn times_parse_as_rfc3339_age_or_micros() {
        let now = 10_000_000_000_000;
        assert_eq!(
            parse_time("since", "2026-01-01T00:00:00Z", now),
            Ok(1_767_225_600_000_000)
        );
        assert_eq!(parse_time("since", "1h", now), Ok(now - 3_600_000_000));
        assert_eq!(parse_time("since", "2d", now), Ok(now - 172_800_000_000));
        assert_eq!(parse_time("since", "42", now), Ok(42));
        let err = parse_time("since", "yesterday", now).unwrap_err();
        assert!(err.to_string().starts_with("since \"yesterday\""), "{err}");
    }

    #[test]
    fn label_selectors_are_equality_pairs() {
        let l = parse_label_selector("team=a, tier==1").expect("valid");
        assert_eq!(l.get("team").map(String::as_str), Some("a"));
        assert_eq!(l.get("tier").map(String::as_str), Some("1"));
        assert!(parse_label_selector("").expect("empty").is_empty());
        for bad in ["team", "team!=a", "=a"] {
            let err = parse_label_selector(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}

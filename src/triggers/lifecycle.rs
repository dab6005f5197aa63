//! Run lifecycle events on NATS: every change of a run's phase is published on
//! `flowmason.runs.<namespace>.<pipeline>.<phase>` (phases as in `status.phase`: `Pending`, `Running`,
//! `Succeeded`, `Failed`, `Cancelled`, `TimedOut`), so that other systems can follow runs, e.g.
//! `flowmason.runs.*.*.Failed`. The body is JSON: `runId`, `namespace`, `pipeline`, `runName`, `phase`,
//! `trigger`, `at` (RFC 3339), and for a run that did not succeed `error`.
//!
//! Published on core NATS, best-effort: the event log stays the record; a subscriber that needs every
//! event reads the history API. A name token holding a `.` (allowed in Pipeline names) would split the
//! subject, so dots become `_` in the subject (the body has the names as they are).

use serde_json::{Value, json};
use tokio::sync::mpsc;

use flowmason_actors::{EventObserver, Observation};
use flowmason_store::{EventKind, RunPhase};

/// The subject prefix of lifecycle events.
pub const SUBJECT_PREFIX: &str = "flowmason.runs";

/// The subject of a phase change.
pub fn subject(namespace: &str, pipeline: &str, phase: RunPhase) -> String {
    let token = |s: &str| s.replace(['.', ' ', '*', '>'], "_");
    format!(
        "{SUBJECT_PREFIX}.{}.{}.{phase}",
        token(namespace),
        token(pipeline)
    )
}

/// The subject and body of the lifecycle event an engine event makes, if it changes the run's phase.
pub fn message(observation: &Observation<'_>) -> Option<(String, Value)> {
    let phase = observation.event.kind.run_phase()?;
    let state = observation.before;
    let error = match &observation.event.kind {
        EventKind::RunFailed { error } => Some(error.message.clone()),
        EventKind::RunCancelled { reason } | EventKind::RunTimedOut { message: reason } => {
            Some(reason.clone())
        }
        _ => None,
    };
    let at = chrono::DateTime::from_timestamp_micros(observation.event.at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let mut body = json!({
        "runId": state.run_id.to_string(),
        "namespace": state.namespace,
        "pipeline": state.pipeline,
        "runName": state.run_name,
        "phase": phase,
        "trigger": state.trigger,
        "at": at,
    });
    if let Some(error) = error {
        body["error"] = json!(error);
    }
    Some((subject(&state.namespace, &state.pipeline, phase), body))
}

/// An engine observer that publishes every phase change through `client`. The observer only queues (it
/// runs on the engine's actor threads); a task spawned here on the current tokio runtime publishes, and
/// ends when the engine (and with it the observer) is dropped.
pub fn publisher(client: async_nats::Client) -> EventObserver {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Value)>();
    tokio::spawn(async move {
        while let Some((subject, body)) = rx.recv().await {
            let payload = body.to_string().into_bytes();
            if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                tracing::debug!(%subject, error = %e, "cannot publish a run lifecycle event");
            }
        }
    });
    std::sync::Arc::new(move |observation: &Observation<'_>| {
        if let Some(message) = message(observation) {
            let _ = tx.send(message);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmason_store::{Event, RunError, RunState, Trigger};

    fn state() -> RunState {
        let accepted = Event {
            seq: 0,
            at: 1_000_000,
            kind: EventKind::RunAccepted {
                pipeline: "etl.daily".into(),
                namespace: "team-a".into(),
                generation: 1,
                trigger: Trigger::Cron,
                run_name: Some("etl-1".into()),
                labels: Default::default(),
                plan: json!({}),
                inputs: json!({}),
            },
        };
        RunState::fold(flowmason_store::RunId::from_u128(7), &[accepted])
            .expect("fold")
            .expect("state")
    }

    fn observe(kind: EventKind, state: &RunState) -> Option<(String, Value)> {
        let event = Event {
            seq: 1,
            at: 2_500_000,
            kind,
        };
        message(&Observation {
            event: &event,
            before: state,
            component: None,
        })
    }

    #[test]
    fn phase_changes_are_published_under_namespace_pipeline_and_phase() {
        let state = state();
        let (subject, body) = observe(EventKind::RunStarted, &state).expect("a phase change");
        assert_eq!(subject, "flowmason.runs.team-a.etl_daily.Running");
        assert_eq!(body["pipeline"], json!("etl.daily"));
        assert_eq!(body["namespace"], json!("team-a"));
        assert_eq!(body["runName"], json!("etl-1"));
        assert_eq!(body["phase"], json!("Running"));
        assert_eq!(body["trigger"], json!("cron"));
        assert_eq!(body["at"], json!("1970-01-01T00:00:02.500000Z"));
        assert!(body.get("error").is_none());
    }

    #[test]
    fn endings_carry_their_error_and_stage_events_publish_nothing() {
        let state = state();
        let failed = EventKind::RunFailed {
            error: RunError {
                message: "stage \"load\" failed".into(),
                stage: Some("load".into()),
                details: Value::Null,
            },
        };
        let (subject, body) = observe(failed, &state).expect("an ending");
        assert_eq!(subject, "flowmason.runs.team-a.etl_daily.Failed");
        assert_eq!(body["error"], json!("stage \"load\" failed"));
        let started = EventKind::StageStarted {
            stage: "load".into(),
            attempt: 1,
            input: serde_json::Value::Null,
        };
        assert_eq!(observe(started, &state), None);
    }
}

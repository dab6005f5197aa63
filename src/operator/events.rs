//! A run's log and notable events, recorded as Kubernetes Events on its PipelineRun so that `kubectl
//! describe`, `kubectl get events` and `fm k8s logs` show them from any API server: stage log lines,
//! stage failures, retries, and the run's start and end. Stage starts and successes are left out (the
//! status has them), and a run records at most [`MAX_EVENTS_PER_RUN`], so a 1,000-stage run does not
//! make thousands of writes; the complete stream stays in the event log (`fm history show`). A run's
//! [`RunEventRecorder`] queues them as they come and writes them alongside its status writes.

use k8s_openapi::api::core::v1::{Event as KubeEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use flowmason_store::{Event, EventKind};

use crate::model::vocabulary::RUN_LABEL;

/// Most Kubernetes Events recorded per run; the last one says that more are in the event log.
pub const MAX_EVENTS_PER_RUN: usize = 500;

/// The Kubernetes Event for a run event worth showing, `None` for the others.
pub fn kube_event(involved: &ObjectReference, event: &Event) -> Option<KubeEvent> {
    let (type_, reason, message) = match &event.kind {
        EventKind::RunStarted => ("Normal", "RunStarted", "the run started".to_string()),
        EventKind::StageLog {
            stage,
            level,
            message,
            ..
        } => (
            if level.eq_ignore_ascii_case("error")
                || level.eq_ignore_ascii_case("warn")
                || level.eq_ignore_ascii_case("warning")
            {
                "Warning"
            } else {
                "Normal"
            },
            "StageLog",
            format!("[{stage}] {level}: {message}"),
        ),
        EventKind::StageFailed {
            stage,
            attempt,
            error,
        } => (
            "Warning",
            "StageFailed",
            format!("[{stage}] attempt {attempt} failed: {}", error.message),
        ),
        EventKind::StageRetryScheduled { stage, attempt, .. } => (
            "Normal",
            "StageRetry",
            format!("[{stage}] attempt {attempt} scheduled"),
        ),
        EventKind::RunSucceeded { .. } => ("Normal", "RunSucceeded", "the run succeeded".into()),
        EventKind::RunFailed { error } => ("Warning", "RunFailed", error.message.clone()),
        EventKind::RunCancelled { reason } => (
            "Warning",
            "RunCancelled",
            if reason.is_empty() {
                "cancelled".into()
            } else {
                reason.clone()
            },
        ),
        EventKind::RunTimedOut { message } => ("Warning", "RunTimedOut", message.clone()),
        _ => return None,
    };
    Some(record(
        involved, event.seq, event.at, type_, reason, message,
    ))
}

/// The Event saying that the rest is only in the event log.
pub fn truncated(involved: &ObjectReference, seq: u64, at: i64) -> KubeEvent {
    record(
        involved,
        seq,
        at,
        "Normal",
        "EventsTruncated",
        format!(
            "more than {MAX_EVENTS_PER_RUN} events; the rest are in the event log (fm history show)"
        ),
    )
}

fn record(
    involved: &ObjectReference,
    seq: u64,
    at: i64,
    type_: &str,
    reason: &str,
    message: String,
) -> KubeEvent {
    let run = involved.name.clone().unwrap_or_default();
    let time = k8s_openapi::jiff::Timestamp::from_microsecond(at).ok();
    KubeEvent {
        metadata: ObjectMeta {
            // Deterministic: a re-sent event is a conflict, not a duplicate.
            name: Some(format!("{run}.{seq}")),
            namespace: involved.namespace.clone(),
            labels: Some([(RUN_LABEL.to_string(), run)].into()),
            ..ObjectMeta::default()
        },
        involved_object: involved.clone(),
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        message: Some(message),
        event_time: time.map(MicroTime),
        first_timestamp: time.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        last_timestamp: time.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        count: Some(1),
        reporting_component: Some("flowmason-operator".into()),
        reporting_instance: Some("flowmason-operator".into()),
        action: Some(reason.into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("flowmason-operator".into()),
            host: None,
        }),
        ..KubeEvent::default()
    }
}

/// Queues a run's notable events and writes them as Kubernetes Events alongside status writes.
pub struct RunEventRecorder {
    api: Api<KubeEvent>,
    involved: ObjectReference,
    pending: Vec<KubeEvent>,
    recorded: usize,
}

impl RunEventRecorder {
    pub fn new(client: Client, involved: ObjectReference) -> RunEventRecorder {
        let namespace = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        RunEventRecorder {
            api: Api::namespaced(client, &namespace),
            involved,
            pending: Vec::new(),
            recorded: 0,
        }
    }

    /// Queues `event` when it is worth a Kubernetes Event (at most [`MAX_EVENTS_PER_RUN`]).
    pub fn add(&mut self, event: &Event) {
        let queued = self.recorded + self.pending.len();
        if queued > MAX_EVENTS_PER_RUN {
            return;
        }
        if let Some(k) = kube_event(&self.involved, event) {
            if queued == MAX_EVENTS_PER_RUN {
                self.pending
                    .push(truncated(&self.involved, event.seq, event.at));
            } else {
                self.pending.push(k);
            }
        }
    }

    /// Writes the queued Events.
    pub async fn flush(&mut self) {
        for event in self.pending.drain(..) {
            match self.api.create(&PostParams::default(), &event).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::debug!(error = %e, "recording a Kubernetes Event"),
            }
            self.recorded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn involved() -> ObjectReference {
        ObjectReference {
            name: Some("r1".into()),
            namespace: Some("default".into()),
            kind: Some("PipelineRun".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn logs_and_failures_become_events_and_starts_do_not() {
        let log = Event {
            seq: 4,
            at: 1_700_000_000_000_000,
            kind: EventKind::StageLog {
                stage: "a".into(),
                attempt: 1,
                level: "info".into(),
                message: "hello".into(),
                data: Value::Null,
            },
        };
        let e = kube_event(&involved(), &log).expect("event");
        assert_eq!(e.metadata.name.as_deref(), Some("r1.4"));
        assert_eq!(e.message.as_deref(), Some("[a] info: hello"));
        assert_eq!(e.reason.as_deref(), Some("StageLog"));
        assert_eq!(crate::client::event_seq(&e), 4);
        let start = Event {
            seq: 2,
            at: 0,
            kind: EventKind::StageStarted {
                stage: "a".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
        };
        assert!(kube_event(&involved(), &start).is_none());
    }
}

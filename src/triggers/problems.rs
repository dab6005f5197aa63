//! Problems that kept a Pipeline's trigger from arming (no NATS connection for `triggers.pubsub`, a
//! webhook path another Pipeline serves, ...), shown where `kubectl describe` looks: a Warning Event on
//! the Pipeline for each, and, for a pub/sub trigger that cannot connect, a `TriggerConnected=False`
//! condition with the reason. A log line alone leaves the Pipeline looking `Ready`.

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::{TriggerContext, to_time};
use crate::model::vocabulary::CONDITION_TRIGGER_CONNECTED;
use crate::model::{Condition, Pipeline};

/// The reason of a Warning Event for a trigger that could not be armed.
pub const REASON_NOT_ARMED: &str = "TriggerNotArmed";

/// The reason of `TriggerConnected=False` when the engine has no NATS connection (`--nats`).
pub const REASON_NO_NATS: &str = "NoNatsConnection";

/// What could not be armed, for [`report`].
#[derive(Debug, Clone, Default)]
pub struct ArmingProblems {
    /// Each problem, naming the field.
    pub messages: Vec<String>,
    /// Set when `triggers.pubsub` cannot connect at all: the condition's message.
    pub pubsub_unconnected: Option<String>,
}

/// Records the problems on the Pipeline (see the module docs). Failures to record are logged only:
/// the problems themselves were logged by the caller already.
pub async fn report(ctx: &TriggerContext, pipeline: &Pipeline, problems: ArmingProblems) {
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let name = pipeline.name_any();
    if let Some(message) = &problems.pubsub_unconnected {
        let condition = Condition {
            type_: CONDITION_TRIGGER_CONNECTED.into(),
            status: "False".into(),
            reason: Some(REASON_NO_NATS.into()),
            message: Some(message.clone()),
            last_transition_time: Some(to_time(Utc::now())),
            observed_generation: pipeline.metadata.generation,
        };
        if let Err(e) = ctx.status.condition(&namespace, &name, condition).await {
            tracing::debug!("reporting the pub/sub trigger state of {namespace}/{name}: {e}");
        }
    }
    let api: Api<KubeEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    for message in problems.messages {
        let event = warning(pipeline, &namespace, message);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!("recording a trigger Warning Event on {namespace}/{name}: {e}");
        }
    }
}

fn warning(pipeline: &Pipeline, namespace: &str, message: String) -> KubeEvent {
    let now = k8s_openapi::jiff::Timestamp::now();
    KubeEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", pipeline.name_any())),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(Pipeline::api_version(&()).into_owned()),
            kind: Some(Pipeline::kind(&()).into_owned()),
            name: Some(pipeline.name_any()),
            namespace: Some(namespace.to_string()),
            uid: pipeline.metadata.uid.clone(),
            ..ObjectReference::default()
        },
        type_: Some("Warning".into()),
        reason: Some(REASON_NOT_ARMED.into()),
        message: Some(message),
        event_time: Some(MicroTime(now)),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("flowmason-operator".into()),
        reporting_instance: Some("flowmason-operator".into()),
        action: Some(REASON_NOT_ARMED.into()),
        source: Some(EventSource {
            component: Some("flowmason-operator".into()),
            host: None,
        }),
        ..KubeEvent::default()
    }
}

//! The `flowmason.io/*` keys FlowMason writes on Kubernetes objects, and the condition types of its
//! statuses: one name for each, here, so that the client, the operator, the triggers and the HTTP
//! surface agree on them without importing each other.

/// Label of a PipelineRun naming its Pipeline: set by the operator with the ownerReference, by the
/// client and by the triggers, so that one list call finds a Pipeline's runs.
pub const PIPELINE_LABEL: &str = "flowmason.io/pipeline";

/// Label on every Kubernetes Event the operator records for a run: the PipelineRun's name.
pub const RUN_LABEL: &str = "flowmason.io/run";

/// Label naming what created a run: `cron`, `webhook` or `pubsub` (the operator maps it onto the
/// engine run's trigger; a run without it is `manual`).
pub const TRIGGER_LABEL: &str = "flowmason.io/trigger";

/// Label a rerun carries: the run it reruns.
pub const RERUN_OF_LABEL: &str = "flowmason.io/rerun-of";

/// Annotation asking the operator to cancel a run (honoured next to `spec.status: Cancelled`); the
/// Python client sets it.
pub const CANCEL_ANNOTATION: &str = "flowmason.io/cancel";

/// Annotation on a cron run: the scheduled instant (RFC 3339, UTC) it stands for.
pub const SCHEDULED_TIME_ANNOTATION: &str = "flowmason.io/scheduled-time";

/// Annotation on a Pipeline: the latest scheduled instant the cron trigger handled (fired or skipped),
/// so a restart neither repeats nor bursts.
pub const LAST_SCHEDULE_ANNOTATION: &str = "flowmason.io/last-schedule-time";

/// Annotation on a pubsub run: the NATS subject of the message that started it.
pub const NATS_SUBJECT_ANNOTATION: &str = "flowmason.io/nats-subject";

/// Annotation on a webhook run: the caller's idempotency key.
pub const IDEMPOTENCY_KEY_ANNOTATION: &str = "flowmason.io/idempotency-key";

/// Label on every Lease of the sharded operator: `shard` (`flowmason-shard-<i>`) or `replica` (a
/// replica's membership, `flowmason-replica-<identity>`), so that one list call finds them all.
pub const LEASE_LABEL: &str = "flowmason.io/lease";

/// Annotation on a Lease the sharded operator holds: the holder's engine session id, so that the replica
/// taking an expired shard over knows which session crashed with its runs in flight.
pub const ENGINE_SESSION_ANNOTATION: &str = "flowmason.io/engine-session";

/// The finalizer that lets a deleted PipelineRun be cancelled and recorded before it goes.
pub const RUN_FINALIZER: &str = "flowmason.io/run";

/// The condition type of a run's outcome, as Tekton and Argo name it: `Unknown` while it runs.
pub const CONDITION_SUCCEEDED: &str = "Succeeded";

/// The condition type of a Pipeline's validity.
pub const CONDITION_READY: &str = "Ready";

/// The Pipeline condition reporting whether its NATS trigger is connected.
pub const CONDITION_TRIGGER_CONNECTED: &str = "TriggerConnected";

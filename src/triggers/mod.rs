//! Triggers: runs that start from a cron schedule, a NATS message or a webhook call instead of a user's
//! PipelineRun.
//!
//! Every trigger only needs a kube [`Client`]: it creates a PipelineRun through the API (so every run is
//! visible and recorded the same way, and the operator runs it) under a name derived from what fired it
//! (the scheduled instant, the NATS message id or stream sequence, the webhook's `Idempotency-Key`), so a
//! retried, redelivered or doubly-scheduled trigger finds the run already there (`AlreadyExists`) and
//! never makes a second one. Created runs carry the label [`TRIGGER_LABEL`] (`cron`, `webhook`,
//! `pubsub`), which the operator copies into the engine's `RunRequest.trigger`.
//!
//! - [`cron`]: schedule planning (pure functions) and the per-Pipeline cron loop, backfill;
//! - [`nats`]: JetStream durable consumers (core-NATS queue groups as fallback), dead letters;
//! - [`webhook`]: the axum router serving `spec.triggers.webhook.path`;
//! - [`manager`]: [`Triggers`], which arms, re-arms and disarms the triggers of each Pipeline.

pub mod cron;
pub mod lifecycle;
pub mod manager;
pub mod nats;
pub mod problems;
pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use flowmason_store::Trigger;

use crate::model::vocabulary::{CONDITION_TRIGGER_CONNECTED, PIPELINE_LABEL, TRIGGER_LABEL};
use crate::model::{Condition, Pipeline, PipelineRun, PipelineRunSpec};

pub use manager::{TriggerConfig, Triggers};

/// Longest object name the API accepts (DNS subdomain).
const MAX_NAME: usize = 253;

/// A chrono instant as the API's time type.
pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The API's time type as a chrono instant.
pub fn from_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// What the triggers start runs as: the event log's [`Trigger`]s other than `manual`, in the order the
/// metrics list them.
pub const TRIGGER_KINDS: [Trigger; 3] = [Trigger::Cron, Trigger::Webhook, Trigger::Pubsub];

/// Failures of trigger work. Each names the object or value involved.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error(transparent)]
    Schedule(#[from] crate::model::schedule::ScheduleError),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "backfill of {pipeline} from {from} to {to} would create {count} runs, more than --max-runs {max}"
    )]
    BackfillTooLarge {
        pipeline: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        count: usize,
        max: usize,
    },
    #[error("backfill window: --from {from} is after --to {to}")]
    BackfillWindow {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error("pipeline {namespace}/{name} has no spec.schedule to backfill")]
    NoSchedule { namespace: String, name: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("NATS credentials Secret {secret}: {reason}")]
    NatsCredentials { secret: String, reason: String },
}

impl TriggerError {
    fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        TriggerError::Kube {
            what: what.into(),
            source,
        }
    }
}

/// Time as the triggers see it. Injectable so tests move time instead of waiting for real minutes.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once [`Clock::now`] has reached `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // Re-checked after waking: the wall clock may have been adjusted meanwhile.
            loop {
                let left = at - Utc::now();
                match left.to_std() {
                    Ok(d) if !d.is_zero() => tokio::time::sleep(d).await,
                    _ => return,
                }
            }
        })
    }
}

/// A clock that only moves when told to ([`ManualClock::set`]); sleepers wake when it passes their time.
#[derive(Debug)]
pub struct ManualClock {
    now: tokio::sync::watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: tokio::sync::watch::Sender::new(start),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.now.send_modify(|t| *t += by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, so `wait_for` only ends when the time comes.
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}

/// What became of one trigger event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new PipelineRun was created.
    Fired,
    /// The run already existed (retry, redelivery, another replica): nothing new was created.
    Deduplicated,
    /// The event was refused (bad payload, bad credentials, suspended pipeline, missed deadline).
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Fired, Outcome::Deduplicated, Outcome::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Fired => "fired",
            Outcome::Deduplicated => "deduplicated",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Trigger event counters per kind and outcome: `flowmason_trigger_events_total{kind,outcome}`.
#[derive(Debug, Default)]
pub struct TriggerMetrics {
    counts: [[AtomicU64; 3]; 3],
    /// The process's Prometheus registry, once `fm serve`/`fm operator` connect one: every outcome is
    /// counted there as well, so that `/metrics` shows it.
    forward: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl TriggerMetrics {
    /// The counter of `kind` and `outcome`; `None` for `manual`, which no trigger starts.
    fn counter(&self, kind: Trigger, outcome: Outcome) -> Option<&AtomicU64> {
        let k = TRIGGER_KINDS.iter().position(|t| *t == kind)?;
        let o = match outcome {
            Outcome::Fired => 0,
            Outcome::Deduplicated => 1,
            Outcome::Rejected => 2,
        };
        Some(&self.counts[k][o])
    }

    pub fn record(&self, kind: Trigger, outcome: Outcome) {
        let Some(counter) = self.counter(kind, outcome) else {
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = self.forward.get() {
            metrics.trigger_event(kind.as_str(), outcome.as_str());
        }
    }

    /// Counts every later outcome in `metrics` too (the first call wins).
    pub fn forward_to(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.forward.set(metrics);
    }

    pub fn get(&self, kind: Trigger, outcome: Outcome) -> u64 {
        self.counter(kind, outcome)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP flowmason_trigger_events_total Trigger events by kind and outcome.\n\
             # TYPE flowmason_trigger_events_total counter\n",
        );
        for kind in TRIGGER_KINDS {
            for outcome in Outcome::ALL {
                out.push_str(&format!(
                    "flowmason_trigger_events_total{{kind=\"{kind}\",outcome=\"{}\"}} {}\n",
                    outcome.as_str(),
                    self.get(kind, outcome)
                ));
            }
        }
        out
    }
}

/// A run name `<pipeline>-<suffix>`, the pipeline part shortened when the whole would exceed the API's
/// limit (the suffix carries the identity, so it is never cut).
pub fn run_name(pipeline: &str, suffix: &str) -> String {
    let room = MAX_NAME.saturating_sub(suffix.len() + 1);
    let prefix: String = pipeline.chars().take(room).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{suffix}")
}

/// A short, name-safe digest of an arbitrary key (idempotency keys, NATS message ids).
pub fn key_digest(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..10])
}

/// Whether creating a run made a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    AlreadyExisted,
}

impl Created {
    pub fn outcome(self) -> Outcome {
        match self {
            Created::New => Outcome::Fired,
            Created::AlreadyExisted => Outcome::Deduplicated,
        }
    }
}

/// What a trigger wants created.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub name: String,
    pub kind: Trigger,
    pub inputs: Option<Map<String, Value>>,
    pub annotations: BTreeMap<String, String>,
}

/// Creates the PipelineRun for a trigger event: owned by its Pipeline, labelled with the trigger kind and
/// the pipeline; an existing run of that name means the event was already handled.
pub async fn create_run(
    client: &Client,
    pipeline: &Pipeline,
    run: NewRun,
) -> Result<Created, TriggerError> {
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let pipeline_name = pipeline.name_any();
    let labels = BTreeMap::from([
        (TRIGGER_LABEL.to_string(), run.kind.as_str().to_string()),
        (PIPELINE_LABEL.to_string(), pipeline_name.clone()),
    ]);
    let owner = pipeline.controller_owner_ref(&()).map(|mut o| {
        // The operator (not the garbage collector) decides about runs; the Pipeline only owns them.
        o.controller = Some(false);
        o
    });
    let object = PipelineRun {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            annotations: (!run.annotations.is_empty()).then_some(run.annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: PipelineRunSpec {
            pipeline_ref: pipeline_name.clone(),
            inputs: run.inputs,
            ..PipelineRunSpec::default()
        },
        status: None,
    };
    let api: Api<PipelineRun> = Api::namespaced(client.clone(), &namespace);
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(Created::New),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::AlreadyExisted),
        Err(e) => Err(TriggerError::kube(
            format!("creating PipelineRun {namespace}/{}", run.name),
            e,
        )),
    }
}

/// Where triggers report what they observe on the Pipeline's status: `nextScheduledRun` and the
/// [`CONDITION_TRIGGER_CONNECTED`] condition. The default ([`ApiStatus`]) patches the status through the
/// API; an owner that must be the only writer of the status (the operator's `PipelineActor`) supplies
/// its own sink and merges these into the status it writes.
pub trait StatusSink: Send + Sync + 'static {
    fn next_scheduled_run<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        at: Option<DateTime<Utc>>,
    ) -> Pin<Box<dyn Future<Output = Result<(), TriggerError>> + Send + 'a>>;

    fn condition<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        condition: Condition,
    ) -> Pin<Box<dyn Future<Output = Result<(), TriggerError>> + Send + 'a>>;
}

/// Patches the Pipeline's status subresource directly.
#[derive(Clone)]
pub struct ApiStatus {
    pub client: Client,
}

impl StatusSink for ApiStatus {
    fn next_scheduled_run<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        at: Option<DateTime<Utc>>,
    ) -> Pin<Box<dyn Future<Output = Result<(), TriggerError>> + Send + 'a>> {
        Box::pin(async move {
            let api: Api<Pipeline> = Api::namespaced(self.client.clone(), namespace);
            let patch = json!({"status": {"nextScheduledRun": at.map(to_time)}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| {
                    TriggerError::kube(
                        format!("patching status.nextScheduledRun of Pipeline {namespace}/{name}"),
                        e,
                    )
                })?;
            Ok(())
        })
    }

    fn condition<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        condition: Condition,
    ) -> Pin<Box<dyn Future<Output = Result<(), TriggerError>> + Send + 'a>> {
        Box::pin(async move {
            let api: Api<Pipeline> = Api::namespaced(self.client.clone(), namespace);
            let what = || format!("patching status.conditions of Pipeline {namespace}/{name}");
            // Conditions are a list: read, replace ours, write back guarded by the resourceVersion.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let current = api
                    .get(name)
                    .await
                    .map_err(|e| TriggerError::kube(what(), e))?;
                let mut conditions = current
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                let mut condition = condition.clone();
                match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
                    Some(existing) => {
                        if existing.status == condition.status
                            && existing.reason == condition.reason
                            && existing.message == condition.message
                        {
                            return Ok(());
                        }
                        if existing.status == condition.status {
                            condition.last_transition_time = existing.last_transition_time.clone();
                        }
                        *existing = condition;
                    }
                    None => conditions.push(condition),
                }
                let patch = json!({
                    "metadata": {"resourceVersion": current.resource_version()},
                    "status": {"conditions": conditions},
                });
                match api
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
                    Err(e) => return Err(TriggerError::kube(what(), e)),
                }
            }
        })
    }
}

/// The `TriggerConnected` condition for a connection state.
pub fn connected_condition(connected: bool, message: &str) -> Condition {
    Condition {
        type_: CONDITION_TRIGGER_CONNECTED.into(),
        status: if connected { "True" } else { "False" }.into(),
        reason: Some(
            if connected {
                "Connected"
            } else {
                "Disconnected"
            }
            .into(),
        ),
        message: Some(message.into()),
        last_transition_time: Some(to_time(Utc::now())),
        observed_generation: None,
    }
}

/// Shared by every trigger of one engine.
#[derive(Clone)]
pub struct TriggerContext {
    pub client: Client,
    pub clock: Arc<dyn Clock>,
    pub status: Arc<dyn StatusSink>,
    pub metrics: Arc<TriggerMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_keep_the_suffix_and_fit_the_limit() {
        assert_eq!(run_name("nightly", "29000000"), "nightly-29000000");
        let long = "p".repeat(300);
        let name = run_name(&long, "cron-1");
        assert_eq!(name.len(), MAX_NAME);
        assert!(name.ends_with("-cron-1"));
    }

    #[test]
    fn key_digests_are_stable_and_name_safe() {
        assert_eq!(key_digest("order-42"), key_digest("order-42"));
        assert_ne!(key_digest("order-42"), key_digest("order-43"));
        assert!(key_digest("Ä/ü").chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn metrics_render_every_kind_and_outcome() {
        let m = TriggerMetrics::default();
        m.record(Trigger::Webhook, Outcome::Rejected);
        m.record(Trigger::Webhook, Outcome::Rejected);
        let text = m.render();
        assert!(
            text.contains(
                "flowmason_trigger_events_total{kind=\"webhook\",outcome=\"rejected\"} 2"
            )
        );
        assert!(text.contains("flowmason_trigger_events_total{kind=\"cron\",outcome=\"fired\"} 0"));
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_moved_past_their_time() {
        let start = Utc::now();
        let clock = Arc::new(ManualClock::new(start));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move {
            c.sleep_until(start + chrono::Duration::minutes(5)).await;
            c.now()
        });
        clock.advance(chrono::Duration::minutes(2));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(chrono::Duration::minutes(3));
        let woke_at = sleeper.await.expect("sleeper");
        assert_eq!(woke_at, start + chrono::Duration::minutes(5));
    }
}

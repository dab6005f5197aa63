//! [`Triggers`]: arms each Pipeline's triggers (cron loop, NATS consumer, webhook route) and re-arms or
//! disarms them when the Pipeline changes or goes. The operator's `PipelineActor` calls
//! [`Triggers::apply`] and [`Triggers::remove`]; without the operator, [`Triggers::watch`] drives the same
//! calls from a watch on Pipelines.
//!
//! With several replicas sharing the runs, webhooks are answered by every replica and the NATS consumers
//! are shared (one durable consumer per Pipeline, so each message makes one run), but each Pipeline's
//! schedule is armed only where [`Triggers::arm_schedules_where`] says (the operator says: on the owner of
//! the Pipeline's shard), so that a cron Pipeline fires once per instant however many replicas run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::cron::CronTrigger;
use super::nats::{NatsConnection, NatsTrigger};
use super::problems::{ArmingProblems, report};
use super::webhook::{self, WebhookMount, WebhookRoutes, WebhookTarget};
use super::{ApiStatus, Clock, StatusSink, SystemClock, TriggerContext, TriggerMetrics};
use crate::model::Pipeline;
use crate::model::schedule::CronSchedule;
use crate::model::webhook_path;

/// Whether this replica arms the schedule of Pipeline `(namespace, name)`.
pub type ScheduleHere = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What the triggers of an engine share.
#[derive(Clone)]
pub struct TriggerConfig {
    pub clock: Arc<dyn Clock>,
    /// Where `nextScheduledRun` and `TriggerConnected` go (default: status patches through the API).
    pub status: Option<Arc<dyn StatusSink>>,
    /// NATS, when the engine was given `--nats`.
    pub nats: Option<NatsConnection>,
    pub metrics: Arc<TriggerMetrics>,
    pub webhook_max_body: usize,
    /// How far a signed webhook request's timestamp may be from now.
    pub webhook_replay_window: std::time::Duration,
    /// A webhook router state made earlier (and already mounted); default: a new one.
    pub webhooks: Option<WebhookMount>,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            clock: Arc::new(SystemClock),
            status: None,
            nats: None,
            metrics: Arc::new(TriggerMetrics::default()),
            webhook_max_body: webhook::DEFAULT_MAX_BODY,
            webhook_replay_window: webhook::DEFAULT_REPLAY_WINDOW,
            webhooks: None,
        }
    }
}

struct Armed {
    fingerprint: String,
    stop: CancellationToken,
    webhook_path: Option<String>,
    /// Whether the Pipeline has a valid schedule.
    scheduled: bool,
    /// Stops the cron loop, while this replica runs it (it owns the Pipeline's shard).
    cron: Option<CancellationToken>,
}

/// The triggers of every Pipeline this engine serves.
pub struct Triggers {
    ctx: TriggerContext,
    nats: Option<NatsConnection>,
    webhooks: WebhookMount,
    routes: Arc<WebhookRoutes>,
    armed: Mutex<HashMap<(String, String), Armed>>,
    /// Whose schedules this replica arms (`None`: every one).
    schedules: Mutex<Option<ScheduleHere>>,
}

/// The parts of a Pipeline its triggers depend on: a change re-arms them.
fn fingerprint(p: &Pipeline) -> String {
    let s = &p.spec;
    serde_json::json!([
        s.schedule,
        s.time_zone,
        s.suspend,
        s.triggers,
        p.metadata.uid,
    ])
    .to_string()
}

impl Triggers {
    pub fn new(client: Client, config: TriggerConfig) -> Self {
        let status = config.status.unwrap_or_else(|| {
            Arc::new(ApiStatus {
                client: client.clone(),
            })
        });
        let ctx = TriggerContext {
            client,
            clock: config.clock,
            status,
            metrics: config.metrics,
        };
        let webhooks = config.webhooks.unwrap_or_else(|| {
            WebhookMount::new(config.webhook_max_body, config.webhook_replay_window)
        });
        webhooks.bind(ctx.clone());
        Triggers {
            ctx,
            nats: config.nats,
            routes: webhooks.routes().clone(),
            webhooks,
            armed: Mutex::new(HashMap::new()),
            schedules: Mutex::new(None),
        }
    }

    pub fn metrics(&self) -> &Arc<TriggerMetrics> {
        &self.ctx.metrics
    }

    /// The NATS client, when the triggers were given `--nats` (also carries run lifecycle events).
    pub fn nats_client(&self) -> Option<async_nats::Client> {
        self.nats.as_ref().map(|n| n.client.clone())
    }

    pub fn context(&self) -> &TriggerContext {
        &self.ctx
    }

    /// The webhook router to mount in the HTTP server.
    pub fn webhook_router(&self) -> axum::Router {
        self.webhooks.router()
    }

    /// Arms the Pipeline's triggers, or re-arms them if their spec changed; unchanged ones keep running.
    /// Returns the problems that kept a trigger from arming (bad schedule, taken path, no NATS), each
    /// naming the field; they are also recorded on the Pipeline (see [`super::problems`]).
    pub fn apply(&self, pipeline: &Pipeline) -> Vec<String> {
        let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
        let name = pipeline.name_any();
        let key = (namespace.clone(), name.clone());
        let print = fingerprint(pipeline);
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same) = armed.get_mut(&key).filter(|a| a.fingerprint == print) {
            self.arm_schedule(&namespace, &name, same);
            return Vec::new();
        }
        if let Some(old) = armed.remove(&key) {
            self.disarm(&namespace, &name, old);
        }
        let mut problems = Vec::new();
        let mut pubsub_unconnected = None;
        let stop = CancellationToken::new();
        let spec = &pipeline.spec;
        let suspended = spec.suspend.unwrap_or(false);
        let mut scheduled = false;
        if let Some(expr) = &spec.schedule {
            match CronSchedule::parse(expr, spec.time_zone.as_deref()) {
                Ok(_) => scheduled = true,
                Err(e) => problems.push(e.to_string()),
            }
        }
        let triggers = spec.triggers.clone().unwrap_or_default();
        if let Some(pubsub) = triggers.pubsub.filter(|_| !suspended) {
            match &self.nats {
                Some(conn) => {
                    let t = NatsTrigger::new(
                        self.ctx.clone(),
                        conn.clone(),
                        &namespace,
                        &name,
                        &pubsub.topic,
                        pubsub.subscription.as_deref(),
                    );
                    tokio::spawn(t.run(stop.clone()));
                }
                None => {
                    let message = format!(
                        "spec.triggers.pubsub.topic {:?}: this engine has no NATS connection (--nats)",
                        pubsub.topic
                    );
                    pubsub_unconnected = Some(message.clone());
                    problems.push(message);
                }
            }
        }
        let mut webhook_path = None;
        if let Some(hook) = triggers.webhook.filter(|w| w.enabled.unwrap_or(true)) {
            let path = webhook_path::served_path(&namespace, &name, hook.path.as_deref());
            let open = hook.auth == Some(crate::model::WebhookAuth::None);
            let arming = match (&hook.secret_ref, open) {
                (None, false) => Err(format!(
                    "spec.triggers.webhook.secretRef: required, else anyone who reaches {path} starts \
                     runs; name a Secret key, or set spec.triggers.webhook.auth: none to accept \
                     unauthenticated requests"
                )),
                (Some(_), true) => Err(
                    "spec.triggers.webhook: auth: none contradicts secretRef; drop one of them"
                        .into(),
                ),
                _ => self
                    .routes
                    .insert(
                        &path,
                        WebhookTarget {
                            namespace: namespace.clone(),
                            pipeline: name.clone(),
                            secret: hook.secret_ref.clone(),
                        },
                    )
                    .map_err(|e| e.to_string()),
            };
            match arming {
                Ok(()) => webhook_path = Some(path),
                Err(e) => problems.push(e),
            }
        }
        for p in &problems {
            tracing::warn!("triggers of Pipeline {namespace}/{name}: {p}");
        }
        if !problems.is_empty() {
            let ctx = self.ctx.clone();
            let pipeline = pipeline.clone();
            let arming = ArmingProblems {
                messages: problems.clone(),
                pubsub_unconnected,
            };
            tokio::spawn(async move { report(&ctx, &pipeline, arming).await });
        }
        let mut entry = Armed {
            fingerprint: print,
            stop,
            webhook_path,
            scheduled,
            cron: None,
        };
        self.arm_schedule(&namespace, &name, &mut entry);
        armed.insert(key, entry);
        problems
    }

    /// Starts the Pipeline's cron loop when it has a schedule and this replica owns its shard, stops it
    /// when it does not (any more).
    fn arm_schedule(&self, namespace: &str, name: &str, armed: &mut Armed) {
        let here = armed.scheduled
            && self
                .schedules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(|here| here(namespace, name));
        match (armed.cron.take(), here) {
            (None, true) => {
                let stop = armed.stop.child_token();
                let cron = CronTrigger::new(self.ctx.clone(), namespace, name);
                tokio::spawn(cron.run(stop.clone()));
                armed.cron = Some(stop);
            }
            (Some(stop), false) => stop.cancel(),
            (running, _) => armed.cron = running,
        }
    }

    /// Arms each Pipeline's schedule only where `here` holds, from now on: with several replicas, on
    /// exactly one of them. [`Triggers::arm_schedules`] follows a change of `here`'s answers.
    pub fn arm_schedules_where(&self, here: ScheduleHere) {
        *self.schedules.lock().unwrap_or_else(|p| p.into_inner()) = Some(here);
        self.arm_schedules();
    }

    /// Starts and stops the cron loops where the answers of the schedule rule changed (e.g. shards
    /// changed hands). A run both the old and the new replica create around a handover is one run: its
    /// name is the scheduled instant's.
    pub fn arm_schedules(&self) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        for ((namespace, name), entry) in armed.iter_mut() {
            self.arm_schedule(namespace, name, entry);
        }
    }

    /// Whether this replica runs the cron loop of Pipeline `namespace/name` now.
    pub fn schedule_armed(&self, namespace: &str, name: &str) -> bool {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|a| a.cron.is_some())
    }

    fn disarm(&self, namespace: &str, name: &str, armed: Armed) {
        armed.stop.cancel();
        if let Some(path) = armed.webhook_path {
            self.routes.remove(&path, namespace, name);
        }
    }

    /// Disarms a deleted Pipeline's triggers.
    pub fn remove(&self, namespace: &str, name: &str) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = armed.remove(&(namespace.to_string(), name.to_string())) {
            self.disarm(namespace, name, old);
        }
    }

    /// Disarms everything.
    pub fn clear(&self) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        for ((ns, name), a) in armed.drain() {
            self.disarm(&ns, &name, a);
        }
    }

    /// Keeps the triggers in step with the Pipelines of every namespace until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let api: Api<Pipeline> = Api::all(self.ctx.client.clone());
        let mut events = watcher(api, watcher::Config::default()).boxed();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                e = events.next() => e,
            };
            match event {
                None => break,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                    if p.metadata.deletion_timestamp.is_some() {
                        self.remove(&p.namespace().unwrap_or_default(), &p.name_any());
                    } else {
                        self.apply(&p);
                    }
                }
                Some(Ok(watcher::Event::Delete(p))) => {
                    self.remove(&p.namespace().unwrap_or_default(), &p.name_any());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!("pipeline watch: {e}"),
            }
        }
        self.clear();
    }
}

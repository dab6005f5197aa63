//! The Pipeline controller and its `PipelineActor`s. The controller resolves each Pipeline (its own spec
//! or its `source` ConfigMap), validates it and checks every Secret and ConfigMap it references; one
//! `PipelineActor` per Pipeline owns the outcome (the validated plan's generation, the Ready condition)
//! and the run history (`lastRunId`, `lastRunTime`, `lastRunStatus`), and is the only writer of that
//! Pipeline's status, so that observations and run ends never race each other. ConfigMap and Secret
//! changes re-reconcile the Pipelines that reference them. When the operator owns the triggers, the
//! controller also arms each observed Pipeline's triggers and disarms them when it is deleted.
//!
//! With several replicas, every replica observes every Pipeline, but only the owner of a Pipeline's
//! shard writes its status (the others keep their view seeded from the object the owner writes), and
//! the Pipelines of a shard changing hands are reconciled again at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller, Error as ControllerError};
use kube::runtime::reflector::{self, ObjectRef as KubeRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use flowmason_store::{RunId, RunState};

use super::backlog::Backlog;
use super::cluster::ClusterCache;
use super::error::{Error, Result};
use super::planning::{self, ObjectRef, Problem, RefKind};
use super::shards::{Owned, Ownership, shard_of_pipeline};
use super::status;
use crate::metrics::Metrics;
use crate::model::vocabulary::CONDITION_READY;
use crate::model::{Condition, Pipeline, PipelinePhase, PipelineRun, PipelineStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The Pipeline status as a pure function of what the actor knows.
pub fn pipeline_status(
    generation: Option<i64>,
    verdict: &Result<(), Problem>,
    suspended: bool,
    running: usize,
    last: &PipelineStatus,
) -> PipelineStatus {
    let (phase, condition_status, reason, message) = match verdict {
        Err(p) => (
            PipelinePhase::Failed,
            "False",
            p.reason.to_string(),
            p.message.clone(),
        ),
        Ok(()) if suspended => (
            PipelinePhase::Suspended,
            "True",
            "Suspended".into(),
            "valid; scheduled and triggered runs are suspended".into(),
        ),
        Ok(()) if running > 0 => (
            PipelinePhase::Running,
            "True",
            "Valid".into(),
            format!("valid; {running} run(s) in progress"),
        ),
        Ok(()) => (
            PipelinePhase::Ready,
            "True",
            "Valid".into(),
            "the pipeline is valid and every reference resolves".into(),
        ),
    };
    let transition = last
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY && c.status == condition_status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(status::now);
    // `Ready` is this actor's; other conditions (the triggers' `TriggerConnected`) are kept as observed.
    let mut conditions = vec![Condition {
        type_: CONDITION_READY.into(),
        status: condition_status.into(),
        reason: Some(reason),
        message: Some(message),
        last_transition_time: Some(transition),
        observed_generation: generation,
    }];
    conditions.extend(
        last.conditions
            .iter()
            .filter(|c| c.type_ != CONDITION_READY)
            .cloned(),
    );
    PipelineStatus {
        phase: Some(phase),
        conditions,
        last_run_id: last.last_run_id.clone(),
        last_run_time: last.last_run_time.clone(),
        last_run_status: last.last_run_status.clone(),
        next_scheduled_run: last.next_scheduled_run.clone(),
        observed_generation: generation,
    }
}

/// One Pipeline's state keeper and status writer.
pub struct PipelineActor {
    client: Client,
    namespace: String,
    name: String,
    /// `metadata.uid` of the object last observed: a Pipeline deleted and created again under the same
    /// name is a new object and starts with a fresh status.
    uid: Option<String>,
    generation: Option<i64>,
    verdict: Result<(), Problem>,
    suspended: bool,
    running: BTreeSet<RunId>,
    status: PipelineStatus,
    /// Whether the controller has observed the Pipeline (before that, run ends only update history).
    observed: bool,
    /// The uid of the Pipeline whose run the `lastRun*` fields describe, when known.
    last_run_of: Option<String>,
    /// Where status writes are counted; `None` counts nothing.
    metrics: Option<Arc<Metrics>>,
    /// Whose shards this replica holds: only the owner of the Pipeline's shard writes its status.
    ownership: Ownership,
    /// Whether this replica owned the Pipeline's shard at the last observation.
    owner: bool,
}

impl Actor for PipelineActor {
    type Context = Context<Self>;
}

impl PipelineActor {
    /// Recomputes the status and writes it when it changed; writes are serialised by `ctx.wait`.
    fn publish(&mut self, ctx: &mut Context<Self>, force: bool) {
        if !self.observed || !self.ownership.owns_pipeline(&self.namespace, &self.name) {
            return;
        }
        let next = pipeline_status(
            self.generation,
            &self.verdict,
            self.suspended,
            self.running.len(),
            &self.status,
        );
        if next == self.status && !force {
            return;
        }
        self.status = next.clone();
        let api: Api<Pipeline> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = self.name.clone();
        let metrics = self.metrics.clone();
        ctx.wait(
            async move {
                let result = api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": next})),
                    )
                    .await;
                if let Some(metrics) = &metrics {
                    metrics.status_write(super::runs::write_outcome(&result));
                }
                if let Err(e) = result {
                    tracing::debug!(pipeline = %name, error = %e, "Pipeline status write");
                }
            }
            .into_actor(self),
        );
    }
}

/// The controller's verdict on the Pipeline's current generation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed {
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub verdict: Result<(), Problem>,
    pub suspended: bool,
    /// The status the object has now (after a restart, history comes from here).
    pub current: Option<PipelineStatus>,
}

impl Handler<Observed> for PipelineActor {
    type Result = ();
    fn handle(&mut self, msg: Observed, ctx: &mut Context<Self>) {
        let another_object = |uid: &Option<String>| uid.is_some() && *uid != msg.uid;
        if (self.observed && msg.uid != self.uid) || another_object(&self.last_run_of) {
            // Another object under the same name: nothing of the deleted one carries over.
            self.observed = false;
            self.status = PipelineStatus::default();
            self.running.clear();
            self.last_run_of = None;
        }
        // A replica that does not own the Pipeline's shard, or has just gained it, takes the status
        // from the object (the owner writes it) rather than keeping its own view.
        let owner = self.ownership.owns_pipeline(&self.namespace, &self.name);
        if !owner || !self.owner {
            self.observed = false;
        }
        self.owner = owner;
        self.uid = msg.uid.clone();
        if !self.observed
            && let Some(current) = msg.current.clone()
        {
            // The later of the last run seen here and the one the object shows.
            let last = if current.last_run_time > self.status.last_run_time {
                &current
            } else {
                &self.status
            };
            self.status = PipelineStatus {
                last_run_id: last.last_run_id.clone(),
                last_run_time: last.last_run_time.clone(),
                last_run_status: last.last_run_status.clone(),
                ..current
            };
        }
        if let Some(current) = &msg.current {
            // The triggers write these directly on the object; a status write here must carry them on.
            self.status.next_scheduled_run = current.next_scheduled_run.clone();
            self.status
                .conditions
                .retain(|c| c.type_ == CONDITION_READY);
            self.status.conditions.extend(
                current
                    .conditions
                    .iter()
                    .filter(|c| c.type_ != CONDITION_READY)
                    .cloned(),
            );
        }
        self.observed = true;
        self.generation = msg.generation;
        self.verdict = msg.verdict;
        self.suspended = msg.suspended;
        self.publish(ctx, false);
    }
}

/// A run of this Pipeline started or ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunChanged {
    pub run_id: RunId,
    /// The uid of the Pipeline the run belongs to, when known.
    pub pipeline_uid: Option<String>,
    /// The run's phase (`Running` on start).
    pub phase: String,
    pub ended: bool,
}

impl Handler<RunChanged> for PipelineActor {
    type Result = ();
    fn handle(&mut self, msg: RunChanged, ctx: &mut Context<Self>) {
        self.record_run(msg, ctx);
    }
}

/// Another replica's run of this Pipeline, as its PipelineRun's status shows it now: with several
/// replicas, how the owner of the Pipeline learns of the runs it does not run itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunSeen {
    pub run: RunChanged,
    /// When the run ended, for an ended run.
    pub completed: Option<Time>,
}

impl Handler<RunSeen> for PipelineActor {
    type Result = ();
    fn handle(&mut self, msg: RunSeen, ctx: &mut Context<Self>) {
        if is_news(&msg, &self.running, &self.status) {
            self.record_run(msg.run, ctx);
        }
    }
}

/// Whether another replica's run, as seen now, changes the run history: every status write of the run
/// shows up, but only its start and its end are news, and an end not seen starting only when it is
/// later than the last run recorded (the runs listed at start are old news).
fn is_news(seen: &RunSeen, running: &BTreeSet<RunId>, last: &PipelineStatus) -> bool {
    let id = seen.run.run_id;
    if !seen.run.ended {
        return !running.contains(&id);
    }
    running.contains(&id)
        || (last.last_run_id.as_deref() != Some(id.to_string().as_str())
            && seen.completed > last.last_run_time)
}

impl PipelineActor {
    /// Records a run's start or end in the run history and writes the status.
    fn record_run(&mut self, msg: RunChanged, ctx: &mut Context<Self>) {
        if msg.pipeline_uid.is_some() && self.uid.is_some() && msg.pipeline_uid != self.uid {
            // A run of a deleted Pipeline of the same name.
            return;
        }
        self.last_run_of = msg.pipeline_uid.clone().or(self.last_run_of.take());
        if msg.ended {
            self.running.remove(&msg.run_id);
        } else {
            self.running.insert(msg.run_id);
        }
        self.status.last_run_id = Some(msg.run_id.to_string());
        self.status.last_run_time = Some(status::now());
        self.status.last_run_status = Some(msg.phase);
        // History changed even when the phase did not.
        self.publish(ctx, true);
    }
}

/// Pipeline actors by (namespace, name).
type ActorMap = HashMap<(String, String), Addr<PipelineActor>>;

/// The `PipelineActor`s by namespace and name, created on first use on the operator's arbiter.
#[derive(Clone)]
pub struct PipelineRegistry {
    client: Client,
    arbiter: ArbiterHandle,
    actors: Arc<Mutex<ActorMap>>,
    metrics: Option<Arc<Metrics>>,
    ownership: Ownership,
}

impl PipelineRegistry {
    /// Must be created on a thread of the actix system (the actors live on its arbiter).
    pub fn new(
        client: Client,
        metrics: Option<Arc<Metrics>>,
        ownership: Ownership,
    ) -> PipelineRegistry {
        PipelineRegistry {
            client,
            metrics,
            ownership,
            arbiter: Arbiter::current(),
            actors: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn actor(&self, namespace: &str, name: &str) -> Addr<PipelineActor> {
        let mut actors = self
            .actors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        actors
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| {
                let client = self.client.clone();
                let metrics = self.metrics.clone();
                let ownership = self.ownership.clone();
                let (namespace, name) = (namespace.to_string(), name.to_string());
                PipelineActor::start_in_arbiter(&self.arbiter, move |_| PipelineActor {
                    client,
                    namespace,
                    name,
                    uid: None,
                    generation: None,
                    verdict: Ok(()),
                    suspended: false,
                    running: BTreeSet::new(),
                    status: PipelineStatus::default(),
                    observed: false,
                    last_run_of: None,
                    metrics,
                    ownership,
                    owner: false,
                })
            })
            .clone()
    }

    /// Tells a Pipeline's actor that one of its runs started.
    pub fn run_started(&self, pipeline: &Pipeline, run_id: RunId) {
        let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
        self.actor(&namespace, &pipeline.name_any())
            .do_send(RunChanged {
                run_id,
                pipeline_uid: pipeline.metadata.uid.clone(),
                phase: "Running".into(),
                ended: false,
            });
    }

    /// Tells a Pipeline's actor that one of its runs ended.
    pub fn run_ended(&self, state: &RunState, pipeline_uid: Option<String>) {
        self.actor(&state.namespace, &state.pipeline)
            .do_send(RunChanged {
                run_id: state.run_id,
                pipeline_uid,
                phase: state.phase.as_str().to_string(),
                ended: true,
            });
    }

    /// Tells the actor of a run's Pipeline, when this replica owns the Pipeline's shard, how another
    /// replica's run of it stands (see [`RunSeen`]).
    pub fn run_seen(&self, run: &PipelineRun, run_id: RunId, pipeline_uid: Option<String>) {
        let namespace = run.namespace().unwrap_or_else(|| "default".into());
        let pipeline = &run.spec.pipeline_ref;
        let Some(status) = run.status.as_ref() else {
            return;
        };
        let (Some(phase), Some(_)) = (status.phase, status.run_id.as_ref()) else {
            return;
        };
        if !self.ownership.owns_pipeline(&namespace, pipeline) {
            return;
        }
        self.actor(&namespace, pipeline).do_send(RunSeen {
            run: RunChanged {
                run_id,
                pipeline_uid,
                phase: format!("{phase:?}"),
                ended: phase.is_terminal(),
            },
            completed: status.completion_time.clone(),
        });
    }

    /// Forgets a deleted Pipeline's actor.
    fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut actors) = self.actors.lock() {
            actors.remove(&(namespace.to_string(), name.to_string()));
        }
    }
}

/// What the Pipeline controller works with.
pub struct PipelineContext {
    pub client: Client,
    pub(crate) cluster: ClusterCache,
    pub(crate) registry: PipelineRegistry,
    pub known: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Where failed reconciles are counted; `None` counts nothing.
    pub metrics: Option<Arc<Metrics>>,
    /// Pipelines changed (or whose ConfigMaps and Secrets changed) and not yet reconciled.
    pub(crate) backlog: Backlog,
    /// Armed on every observed Pipeline, disarmed on delete (see `OperatorConfig::triggers`).
    pub triggers: Option<Arc<crate::triggers::Triggers>>,
    /// The shards this replica holds: the Pipelines of a shard changing hands are reconciled again.
    pub ownership: Ownership,
}

impl PipelineContext {
    /// Counts the Pipelines a ConfigMap or Secret change hands to the controller.
    fn request(&self, pipelines: &[KubeRef<Pipeline>]) {
        for p in pipelines {
            self.backlog.requested(p.namespace.as_deref(), &p.name);
        }
    }
}

/// The verdict on a Pipeline: resolved, valid, and every reference present.
pub async fn check_pipeline(
    pipeline: &Pipeline,
    cluster: &ClusterCache,
    known: &(dyn Fn(&str) -> bool + Send + Sync),
) -> Result<Result<(), Problem>> {
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let refs = planning::references(pipeline, None, None);
    let objects = cluster.fetch(&refs).await?;
    let spec = match planning::resolve_spec(pipeline, &objects) {
        Ok(spec) => spec,
        Err(p) => return Ok(Err(p)),
    };
    let more = planning::references(pipeline, Some(&spec), None);
    let objects = if more == refs {
        objects
    } else {
        cluster.fetch(&more).await?
    };
    if let Err(p) = planning::plan_pipeline(&spec, known) {
        return Ok(Err(p));
    }
    Ok(planning::resolve_env(&namespace, &spec, &[], &objects).map(|_| ()))
}

async fn reconcile(pipeline: Arc<Pipeline>, ctx: Arc<PipelineContext>) -> Result<Action> {
    ctx.backlog
        .started(pipeline.namespace().as_deref(), &pipeline.name_any());
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let name = pipeline.name_any();
    if pipeline.metadata.deletion_timestamp.is_some() {
        if let Some(triggers) = &ctx.triggers {
            triggers.remove(&namespace, &name);
        }
        ctx.registry.forget(&namespace, &name);
        return Ok(Action::await_change());
    }
    if let Some(triggers) = &ctx.triggers {
        // Unchanged trigger specs keep running (apply compares a fingerprint); problems are logged
        // and recorded on the Pipeline (Warning Events, `TriggerConnected`) by the triggers themselves.
        triggers.apply(&pipeline);
    }
    let verdict = check_pipeline(&pipeline, &ctx.cluster, ctx.known.as_ref()).await?;
    ctx.registry
        .actor(&namespace, &name)
        .send(Observed {
            uid: pipeline.metadata.uid.clone(),
            generation: pipeline.metadata.generation,
            verdict,
            suspended: pipeline.spec.suspend == Some(true),
            current: pipeline.status.clone(),
        })
        .await
        .map_err(|e| Error::Finalizer {
            object: format!("Pipeline {namespace}/{name}"),
            message: format!("the pipeline actor is gone: {e}"),
        })?;
    Ok(Action::await_change())
}

fn error_policy(_p: Arc<Pipeline>, error: &Error, ctx: Arc<PipelineContext>) -> Action {
    tracing::warn!(%error, "Pipeline reconcile failed");
    if let Some(metrics) = &ctx.metrics {
        metrics.reconcile_error("pipeline");
    }
    Action::requeue(Duration::from_secs(1))
}

/// The Pipelines of `store` that read the object `(kind, namespace, name)`.
fn readers(
    store: &Store<Pipeline>,
    kind: RefKind,
    namespace: Option<String>,
    name: String,
) -> Vec<KubeRef<Pipeline>> {
    let target = ObjectRef {
        kind,
        namespace: namespace.unwrap_or_else(|| "default".into()),
        name,
    };
    store
        .state()
        .iter()
        .filter(|p| planning::references(p, None, None).contains(&target))
        .map(|p| KubeRef::from_obj(p.as_ref()))
        .collect()
}

/// The Pipelines of `store` whose shard changed hands, each time the shards held change (nothing when
/// this replica owns everything): the new owner writes their status from here on, the old one stops.
fn handed_over(
    ownership: &Ownership,
    store: Store<Pipeline>,
) -> futures::stream::BoxStream<'static, KubeRef<Pipeline>> {
    let Some(mut changes) = ownership.subscribe() else {
        return futures::stream::pending().boxed();
    };
    let count = ownership.count();
    let held = changes.borrow_and_update().clone();
    futures::stream::unfold((changes, held), move |(mut changes, held)| {
        let store = store.clone();
        async move {
            changes.changed().await.ok()?;
            let now = changes.borrow_and_update().clone();
            let moved = moved_shards(&held, &now);
            let refs: Vec<KubeRef<Pipeline>> = store
                .state()
                .iter()
                .filter(|p| {
                    let namespace = p.namespace().unwrap_or_else(|| "default".into());
                    moved.contains(&shard_of_pipeline(&namespace, &p.name_any(), count))
                })
                .map(|p| KubeRef::from_obj(p.as_ref()))
                .collect();
            Some((futures::stream::iter(refs), (changes, now)))
        }
    })
    .flatten()
    .boxed()
}

/// Arms each Pipeline's schedule on the owner of the Pipeline's shard only, following the shards as
/// they change hands, until `stop` (webhooks and the shared NATS consumers stay armed on every replica).
pub async fn share_schedules(
    triggers: Arc<crate::triggers::Triggers>,
    ownership: Ownership,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(mut changes) = ownership.subscribe() else {
        return;
    };
    let owner = ownership.clone();
    triggers.arm_schedules_where(Arc::new(move |namespace, name| {
        owner.owns_pipeline(namespace, name)
    }));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        changes.borrow_and_update();
        triggers.arm_schedules();
    }
}

/// The shards gained or lost (or taken again) between holding `before` and holding `after`.
fn moved_shards(before: &Owned, after: &Owned) -> BTreeSet<u32> {
    before
        .shards
        .keys()
        .chain(after.shards.keys())
        .filter(|s| before.shards.get(s) != after.shards.get(s))
        .copied()
        .collect()
}

/// Runs the Pipeline controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<PipelineContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    // The controller's own watch, tapped for deletes: a deleted Pipeline (no finalizer) is never
    // reconciled, yet its triggers must be disarmed and its actor (with its run history) forgotten.
    let (reader, writer) = reflector::store();
    let triggers = ctx.triggers.clone();
    let schedules = tokio_util::sync::CancellationToken::new();
    if let Some(triggers) = &triggers {
        tokio::spawn(share_schedules(
            triggers.clone(),
            ctx.ownership.clone(),
            schedules.clone(),
        ));
    }
    let registry = ctx.registry.clone();
    let pipelines = watcher(
        Api::<Pipeline>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(p)) = event {
            let namespace = p.namespace().unwrap_or_else(|| "default".into());
            if let Some(triggers) = &triggers {
                triggers.remove(&namespace, &p.name_any());
            }
            registry.forget(&namespace, &p.name_any());
        }
    })
    .applied_objects();
    let requests = ctx.clone();
    let pipelines = pipelines.inspect_ok(move |p| {
        requests
            .backlog
            .requested(p.namespace().as_deref(), &p.name_any())
    });
    let controller = Controller::for_stream(pipelines, reader);
    let store = controller.store();
    let handed_over = handed_over(&ctx.ownership, store.clone());
    let (for_configmaps, for_secrets) = (ctx.clone(), ctx.clone());
    let configmaps_store = store.clone();
    controller
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
            move |cm| {
                let refs = readers(
                    &configmaps_store,
                    RefKind::ConfigMap,
                    cm.namespace(),
                    cm.name_any(),
                );
                for_configmaps.request(&refs);
                refs
            },
        )
        .watches(
            Api::<Secret>::all(client),
            watcher::Config::default(),
            move |s| {
                let refs = readers(&store, RefKind::Secret, s.namespace(), s.name_any());
                for_secrets.request(&refs);
                refs
            },
        )
        .reconcile_on(handed_over)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = &result {
                if let ControllerError::ObjectNotFound(object) = e {
                    ctx.backlog
                        .dropped(object.namespace.as_deref(), &object.name);
                }
                tracing::debug!(error = %e, "Pipeline reconcile");
            }
            std::future::ready(())
        })
        .await;
    schedules.cancel();
    ctx.backlog.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_that_changed_hands_are_those_gained_lost_or_taken_again() {
        use crate::operator::shards::Takeover;
        let crashed = Takeover {
            after_crash: true,
            ..Takeover::default()
        };
        let before = Owned {
            shards: [
                (0, Takeover::default()),
                (1, Takeover::default()),
                (2, Takeover::default()),
            ]
            .into(),
        };
        let after = Owned {
            shards: [
                (1, Takeover::default()),
                (2, crashed),
                (3, Takeover::default()),
            ]
            .into(),
        };
        assert_eq!(moved_shards(&before, &after), BTreeSet::from([0, 2, 3]));
        assert!(moved_shards(&after, &after).is_empty());
    }

    #[test]
    fn another_replicas_run_is_news_at_its_start_and_its_end_only() {
        let id = RunId::from_u128(9);
        let at = |s| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default(),
            ))
        };
        let seen = |ended, completed| RunSeen {
            run: RunChanged {
                run_id: id,
                pipeline_uid: None,
                phase: if ended { "Succeeded" } else { "Running" }.into(),
                ended,
            },
            completed,
        };
        let last = PipelineStatus {
            last_run_id: Some("other".into()),
            last_run_time: at(100),
            ..PipelineStatus::default()
        };
        let none = BTreeSet::new();
        let running = BTreeSet::from([id]);
        assert!(is_news(&seen(false, None), &none, &last), "a start");
        assert!(
            !is_news(&seen(false, None), &running, &last),
            "a progress write"
        );
        assert!(
            is_news(&seen(true, at(150)), &running, &last),
            "the end of a run seen starting"
        );
        assert!(
            is_news(&seen(true, at(150)), &none, &last),
            "an end later than the last run"
        );
        assert!(
            !is_news(&seen(true, at(50)), &none, &last),
            "an old run listed at start"
        );
        let recorded = PipelineStatus {
            last_run_id: Some(id.to_string()),
            last_run_time: at(10),
            ..PipelineStatus::default()
        };
        assert!(
            !is_news(&seen(true, at(150)), &none, &recorded),
            "an end recorded already"
        );
    }

    #[test]
    fn invalid_pipeline_is_failed_with_ready_false() {
        let verdict = Err(Problem {
            reason: "InvalidSpec",
            message: "stages[0].id: required".into(),
        });
        let s = pipeline_status(Some(3), &verdict, false, 0, &PipelineStatus::default());
        assert_eq!(s.phase, Some(PipelinePhase::Failed));
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[0].reason.as_deref(), Some("InvalidSpec"));
        assert_eq!(
            s.conditions[0].message.as_deref(),
            Some("stages[0].id: required")
        );
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn valid_pipeline_is_ready_or_running_and_keeps_history() {
        let last = PipelineStatus {
            last_run_id: Some("r1".into()),
            ..PipelineStatus::default()
        };
        let s = pipeline_status(Some(1), &Ok(()), false, 0, &last);
        assert_eq!(s.phase, Some(PipelinePhase::Ready));
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.last_run_id.as_deref(), Some("r1"));
        let s = pipeline_status(Some(1), &Ok(()), false, 2, &last);
        assert_eq!(s.phase, Some(PipelinePhase::Running));
        let s = pipeline_status(Some(1), &Ok(()), true, 0, &last);
        assert_eq!(s.phase, Some(PipelinePhase::Suspended));
    }

    #[test]
    fn trigger_conditions_and_next_scheduled_run_are_carried_over() {
        let trigger = Condition {
            type_: "TriggerConnected".into(),
            status: "True".into(),
            reason: Some("Connected".into()),
            message: None,
            last_transition_time: None,
            observed_generation: None,
        };
        let last = PipelineStatus {
            conditions: vec![trigger.clone()],
            next_scheduled_run: Some(status::now()),
            ..PipelineStatus::default()
        };
        let s = pipeline_status(Some(2), &Ok(()), false, 0, &last);
        assert_eq!(s.conditions.len(), 2);
        assert_eq!(s.conditions[0].type_, CONDITION_READY);
        assert_eq!(s.conditions[1], trigger);
        assert_eq!(s.next_scheduled_run, last.next_scheduled_run);
    }
}

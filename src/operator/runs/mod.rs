//! The PipelineRun controller. Each PipelineRun becomes one engine run (a `RunActor`), started with the
//! plan of its Pipeline's generation current at that moment and recorded in `RunAccepted`, under an id
//! derived from the PipelineRun's uid (see [`planning::run_id_for`]) so that no restart or second replica
//! can start it twice. A status writer per active run folds the run's events and patches
//! `status` through the status subresource, coalesced to one write per interval plus the final one.
//! Deleting a run in flight cancels it and waits for its end before the finalizer lets it go.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as KubeEvent, ObjectReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller, Error as ControllerError};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef as KubeRef;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use flowmason_actors::{Engine, Rejection, Reuse, RunRequest};
use flowmason_store::{Event, RunId, RunState, Trigger};

use super::backlog::Backlog;
use super::capacity::{self, Admission, Demand, Ledger};
use super::cluster::ClusterCache;
use super::error::{Error, Result};
use super::events;
use super::pipelines::PipelineRegistry;
use super::planning::{self, Problem};
use super::status::{self, Limits};
use crate::history::rerun::RerunOptions;
use crate::metrics::Metrics;
use crate::model::{Pipeline, PipelineRun, PipelineRunStatus};

/// The reason of a run that waits for the operator's capacity (`spec.resources`).
pub const WAITING_FOR_RESOURCES: &str = "WaitingForResources";

/// How often a run waiting for capacity looks again if no run ending wakes it first.
const CAPACITY_RECHECK: Duration = Duration::from_secs(5);

/// The finalizer that lets a deleted run be cancelled and recorded before it goes.
pub const FINALIZER: &str = "flowmason.io/run";

/// Field manager of the operator's writes.
pub const MANAGER: &str = "flowmason-operator";

/// A run whose status writer is going in this process.
struct Active {
    /// Flips to true when the final status has been written.
    done: watch::Receiver<bool>,
}

/// What the PipelineRun controller works with.
pub struct RunContext {
    pub client: Client,
    pub engine: Engine,
    pub(crate) cluster: ClusterCache,
    pub(crate) pipelines: PipelineRegistry,
    /// Least time between two status writes of one run.
    pub write_interval: Duration,
    pub limits: Limits,
    /// Where status writes and failed reconciles are counted; `None` counts nothing.
    pub metrics: Option<Arc<Metrics>>,
    /// PipelineRuns changed and not yet reconciled (the controller's queue depth).
    pub(crate) backlog: Backlog,
    /// The operator's capacity and what the runs in flight reserve of it.
    pub(crate) ledger: Ledger,
    /// Runs waiting for capacity, woken (reconciled at once) when a run gives its share back.
    waiting: Mutex<HashSet<KubeRef<PipelineRun>>>,
    wake: mpsc::UnboundedSender<KubeRef<PipelineRun>>,
    /// The receiving end of `wake`, taken by the controller.
    woken: Mutex<Option<mpsc::UnboundedReceiver<KubeRef<PipelineRun>>>>,
    active: Mutex<HashMap<RunId, Active>>,
}

impl RunContext {
    pub(crate) fn new(
        client: Client,
        engine: Engine,
        cluster: ClusterCache,
        pipelines: PipelineRegistry,
        write_interval: Duration,
        metrics: Option<Arc<Metrics>>,
        capacity: capacity::Capacity,
    ) -> RunContext {
        let (wake, woken) = mpsc::unbounded_channel();
        RunContext {
            client,
            engine,
            cluster,
            pipelines,
            write_interval,
            limits: Limits::default(),
            backlog: Backlog::new("pipelinerun", metrics.clone()),
            ledger: Ledger::new(capacity),
            waiting: Mutex::new(HashSet::new()),
            wake,
            woken: Mutex::new(Some(woken)),
            metrics,
            active: Mutex::new(HashMap::new()),
        }
    }

    /// Gives `run`'s capacity share back and wakes the runs waiting for capacity.
    fn release(&self, run: RunId) {
        self.ledger.release(run);
        let waiting = std::mem::take(
            &mut *self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for waiter in waiting {
            let _ = self.wake.send(waiter);
        }
    }

    fn is_active(&self, run: RunId) -> bool {
        self.active
            .lock()
            .map(|a| a.contains_key(&run))
            .unwrap_or(false)
    }
}

fn object_name(run: &PipelineRun) -> String {
    format!(
        "PipelineRun {}/{}",
        run.namespace().unwrap_or_default(),
        run.name_any()
    )
}

/// The engine run id of a PipelineRun (see [`planning::run_id_for`]).
pub fn run_id_of(run: &PipelineRun) -> Result<RunId> {
    let uid = run.metadata.uid.as_deref().ok_or(Error::MissingField {
        object: object_name(run),
        field: "metadata.uid",
    })?;
    let created_ms = run
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| u64::try_from(t.0.as_millisecond()).unwrap_or(0))
        .unwrap_or(0);
    Ok(planning::run_id_for(uid, created_ms))
}

/// Patches a PipelineRun's status through the status subresource, counting the outcome in
/// `flowmason_status_writes_total` (ok, conflict, error) so that a stream of failing writes shows on a
/// dashboard rather than only in debug logs.
pub async fn write_status(
    ctx: &RunContext,
    namespace: &str,
    name: &str,
    status: &PipelineRunStatus,
) -> Result<()> {
    let api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), namespace);
    let result = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await;
    if let Some(metrics) = &ctx.metrics {
        metrics.status_write(write_outcome(&result));
    }
    result
        .map_err(|e| Error::kube(format!("write status of PipelineRun {namespace}/{name}"), e))?;
    Ok(())
}

/// The `outcome` label of a status write.
pub(crate) fn write_outcome<T>(result: &std::result::Result<T, kube::Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(kube::Error::Api(e)) if e.code == 409 => "conflict",
        Err(_) => "error",
    }
}

/// Runs the PipelineRun controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<RunContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<PipelineRun> = Api::all(ctx.client.clone());
    let (reader, writer) = reflector::store();
    // The first complete listing, signalled from the stream itself: the reflector's own readiness
    // (`Store::wait_until_ready`) wakes only the last of its waiters, and the controller waits on it too.
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let mut listed_tx = Some(listed_tx);
    let sweep = tokio::spawn(end_orphaned_runs(ctx.clone(), reader.clone(), listed));
    let requests = ctx.clone();
    let runs = watcher(api, watcher::Config::default())
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone))
                && let Some(tx) = listed_tx.take()
            {
                let _ = tx.send(());
            }
        })
        .applied_objects()
        .inspect_ok(move |run| {
            requests
                .backlog
                .requested(run.namespace().as_deref(), &run.name_any())
        });
    let results = ctx.clone();
    let woken = ctx
        .woken
        .lock()
        .ok()
        .and_then(|mut w| w.take())
        .map(|rx| {
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
                .boxed()
        })
        .unwrap_or_else(|| futures::stream::pending().boxed());
    Controller::for_stream(runs, reader)
        .reconcile_on(woken)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = &result {
                if let ControllerError::ObjectNotFound(object) = e {
                    results
                        .backlog
                        .dropped(object.namespace.as_deref(), &object.name);
                }
                tracing::debug!(error = %e, "PipelineRun reconcile");
            }
            std::future::ready(())
        })
        .await;
    sweep.abort();
    ctx.backlog.clear();
}

/// Ends, once, the unfinished runs of the event log whose PipelineRun no longer exists (see
/// [`planning::orphaned_runs`]): they were never resumed, since only a PipelineRun's reconcile resumes
/// its run. The log is read before the PipelineRuns are (`listed`: the cache holds the first complete
/// listing), so a run started meanwhile always has its PipelineRun in the cache.
async fn end_orphaned_runs(
    ctx: Arc<RunContext>,
    runs: reflector::Store<PipelineRun>,
    listed: tokio::sync::oneshot::Receiver<()>,
) {
    let store = ctx.engine.store().clone();
    let unfinished = tokio::task::spawn_blocking(move || {
        store
            .unfinished_runs()?
            .into_iter()
            .filter_map(|run| store.summary(run).transpose())
            .collect::<std::result::Result<Vec<_>, _>>()
    })
    .await;
    let unfinished = match unfinished {
        Ok(Ok(unfinished)) => unfinished,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot list the unfinished runs of the event log");
            return;
        }
        Err(_) => return,
    };
    if unfinished.is_empty() || listed.await.is_err() {
        return;
    }
    let existing = runs
        .state()
        .iter()
        .filter_map(|run| run_id_of(run).ok())
        .collect();
    for run in planning::orphaned_runs(&unfinished, &existing) {
        let reason = "its PipelineRun was deleted while no operator was running";
        match ctx.engine.cancel_unfinished(run, reason).await {
            Ok(true) => tracing::warn!(%run, "ended a run whose PipelineRun is gone"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(%run, error = %e, "cannot end a run whose PipelineRun is gone")
            }
        }
    }
}

fn error_policy(_run: Arc<PipelineRun>, error: &Error, ctx: Arc<RunContext>) -> Action {
    tracing::warn!(%error, "PipelineRun reconcile failed");
    if let Some(metrics) = &ctx.metrics {
        metrics.reconcile_error("pipelinerun");
    }
    Action::requeue(Duration::from_millis(500))
}

async fn reconcile(run: Arc<PipelineRun>, ctx: Arc<RunContext>) -> Result<Action> {
    ctx.backlog
        .started(run.namespace().as_deref(), &run.name_any());
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = object_name(&run);
    // kube's helper adds the first finalizer with a JSON patch whose `test` of the absent
    // `/metadata/finalizers` not every API server accepts (the embedded one answers 422); a merge patch
    // guarded by resourceVersion does the same everywhere.
    if run.metadata.deletion_timestamp.is_none() && !run.finalizers().iter().any(|f| f == FINALIZER)
    {
        let mut finalizers = run.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let mut metadata = serde_json::Map::new();
        metadata.insert("finalizers".into(), json!(finalizers));
        metadata.insert("resourceVersion".into(), json!(run.resource_version()));
        // The Pipeline's ownership goes in the same write (one flushed API write less per run); the
        // start sets it if the Pipeline is not there yet.
        let pipelines: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Ok(Some(pipeline)) = pipelines.get_opt(&run.spec.pipeline_ref).await {
            metadata.extend(ownership(&run, &pipeline).unwrap_or_default());
        }
        api.patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": metadata })),
        )
        .await
        .map_err(|e| Error::kube(format!("add the finalizer of {object}"), e))?;
        // The change wakes this reconciler again with the finalizer in place.
        return Ok(Action::await_change());
    }
    finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(run, ctx.clone()).await,
            Finalizer::Cleanup(run) => cleanup(run, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer {
        object,
        message: e.to_string(),
    })
}

async fn apply(run: Arc<PipelineRun>, ctx: Arc<RunContext>) -> Result<Action> {
    let run_id = run_id_of(&run)?;
    let cancel = planning::cancel_requested(&run);
    if ctx.is_active(run_id) {
        if cancel {
            ctx.engine.cancel(run_id, "cancelled through the API");
        }
        return Ok(Action::await_change());
    }
    let current = run.status.as_ref();
    if status::is_terminal(current.and_then(|s| s.phase)) {
        return Ok(Action::await_change());
    }
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let name = run.name_any();
    let object = object_name(&run);
    let store = ctx.engine.store();
    let folded = store.fold(run_id).map_err(|source| Error::Store {
        object: object.clone(),
        source,
    })?;
    match folded {
        Some(state) if state.phase.is_terminal() => {
            let status = status::project_run(&state, &[], ctx.limits);
            write_status(&ctx, &namespace, &name, &status).await?;
            if status::rejection_reason(&state) != Some("PipelineNotFound") {
                ctx.pipelines.run_ended(&state, pipeline_uid_of(&run));
            }
            Ok(Action::await_change())
        }
        Some(_) => resume(run, run_id, ctx).await,
        None if current.and_then(|s| s.run_id.as_deref()) == Some(run_id.to_string().as_str()) => {
            let status = status::failed_before_start(
                Some(run_id.to_string()),
                "EventsLost",
                format!(
                    "run {run_id} was started but the event log has no record of it (was the data dir lost?); it cannot be resumed"
                ),
            );
            write_status(&ctx, &namespace, &name, &status).await?;
            Ok(Action::await_change())
        }
        None if cancel => {
            let status = status::cancelled_before_start(None);
            write_status(&ctx, &namespace, &name, &status).await?;
            Ok(Action::await_change())
        }
        None => start(run, run_id, ctx).await,
    }
}

/// Everything a new run needs, or the problem that keeps it from starting.
struct Prepared {
    request: RunRequest,
    secrets: Vec<String>,
    pipeline: Pipeline,
    /// What the run reserves of the operator's capacity while in flight (`spec.resources`).
    demand: Demand,
}

async fn prepare(
    run: &PipelineRun,
    run_id: RunId,
    ctx: &RunContext,
) -> Result<Result<Prepared, Problem>> {
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    if let Some(problem) = crate::model::validate_run(&run.spec).first() {
        return Ok(Err(Problem {
            reason: "InvalidSpec",
            message: format!("spec.{problem}"),
        }));
    }
    let pipelines: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(pipeline) = pipelines
        .get_opt(&run.spec.pipeline_ref)
        .await
        .map_err(|e| {
            Error::kube(
                format!("read Pipeline {namespace}/{}", run.spec.pipeline_ref),
                e,
            )
        })?
    else {
        return Ok(Err(Problem {
            reason: "PipelineNotFound",
            message: format!(
                "spec.pipelineRef: Pipeline {namespace}/{} not found",
                run.spec.pipeline_ref
            ),
        }));
    };
    let reuse = match rerun_reuse(run, ctx) {
        Ok(reuse) => reuse,
        Err(problem) => return Ok(Err(problem)),
    };
    let refs = planning::references(&pipeline, None, Some(run));
    let mut objects = ctx.cluster.fetch(&refs).await?;
    let spec = match planning::resolve_spec(&pipeline, &objects) {
        Ok(spec) => spec,
        Err(p) => return Ok(Err(p)),
    };
    // A source definition may reference more objects than the Pipeline object itself showed.
    let more = planning::references(&pipeline, Some(&spec), Some(run));
    if more != refs {
        objects = ctx.cluster.fetch(&more).await?;
    }
    let registry = ctx.engine.registry();
    let prepared = planning::plan_pipeline(&spec, &|c| registry.contains(c))
        .and_then(|plan| planning::plan_run(plan, run))
        .and_then(|plan| {
            let env = planning::resolve_env(&namespace, &spec, &run.spec.env, &objects)?;
            let inputs = planning::resolve_inputs(&namespace, &spec, run, &objects)?;
            let mut request = RunRequest::new(pipeline.name_any(), plan, inputs);
            request.run_id = Some(run_id);
            request.namespace = namespace.clone();
            request.generation = pipeline.metadata.generation.unwrap_or(0);
            request.trigger = trigger_of(run);
            request.run_name = Some(run.name_any());
            request.labels = run.labels().clone();
            request.reuse = reuse;
            // The engine reads `envFrom` itself (at start and on resume); the values resolved here only
            // checked that every reference exists, and the secret ones are masked by the engine too.
            request.secrets = env.secrets.clone();
            Ok(Prepared {
                request,
                secrets: env.secrets,
                pipeline: pipeline.clone(),
                // Checked by `plan_pipeline` above.
                demand: capacity::demand(spec.resources.as_ref()).unwrap_or_default(),
            })
        });
    Ok(prepared)
}

/// The uid of the Pipeline that owns a run (its ownerReference), so that the end of a run of a deleted
/// Pipeline never lands in the status of a new one of the same name.
fn pipeline_uid_of(run: &PipelineRun) -> Option<String> {
    run.owner_references()
        .iter()
        .find(|o| o.kind == "Pipeline")
        .map(|o| o.uid.clone())
}

/// What started a run, from the label the triggers set; a run without it was started by hand.
fn trigger_of(run: &PipelineRun) -> Trigger {
    run.labels()
        .get("flowmason.io/trigger")
        .and_then(|t| t.parse().ok())
        .unwrap_or(Trigger::Manual)
}

/// Ends a run that cannot start: recorded in the event log as a run that failed (so `fm history`,
/// `/api/v1/runs`, the run metrics and the Pipeline's last run see it, as an alert on failed runs must),
/// then projected into its status, whose condition keeps `problem.reason`.
async fn reject(
    run: &PipelineRun,
    run_id: RunId,
    ctx: &RunContext,
    problem: Problem,
) -> Result<Action> {
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let pipelines: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let pipeline = match problem.reason {
        "PipelineNotFound" => None,
        _ => pipelines
            .get_opt(&run.spec.pipeline_ref)
            .await
            .ok()
            .flatten(),
    };
    let rejection = Rejection {
        run_id,
        pipeline: run.spec.pipeline_ref.clone(),
        namespace: namespace.clone(),
        generation: pipeline
            .as_ref()
            .and_then(|p| p.metadata.generation)
            .unwrap_or(0),
        trigger: trigger_of(run),
        run_name: Some(run.name_any()),
        labels: run.labels().clone(),
        inputs: run.spec.inputs.clone().map_or(Value::Null, Value::Object),
        reason: problem.reason.to_string(),
        message: problem.message,
    };
    let state = ctx
        .engine
        .reject(rejection)
        .await
        .map_err(|source| Error::Engine {
            object: object_name(run),
            source,
        })?;
    let status = status::project_run(&state, &[], ctx.limits);
    write_status(ctx, &namespace, &run.name_any(), &status).await?;
    // A Pipeline that does not exist has no status to keep the run in.
    if let Some(pipeline) = &pipeline {
        ctx.pipelines
            .run_ended(&state, pipeline.metadata.uid.clone());
    }
    Ok(Action::await_change())
}

/// What a rerun (`spec.rerunOf`) takes over from the old run: with `fromFailed`, its succeeded stages,
/// read from the event log (the old run's fold). The checks are the history API's
/// ([`crate::history::rerun::reuse`]), so a rerun refused there is refused here too.
fn rerun_reuse(run: &PipelineRun, ctx: &RunContext) -> Result<Option<Reuse>, Problem> {
    let Some(rerun) = &run.spec.rerun_of else {
        return Ok(None);
    };
    let invalid = |message: String| Problem {
        reason: "InvalidRerun",
        message: format!("spec.rerunOf.runId: {message}"),
    };
    let old_id: RunId = rerun
        .run_id
        .parse()
        .map_err(|_| invalid(format!("{:?} is not a run id", rerun.run_id)))?;
    if !rerun.from_failed {
        // A plain rerun is a new run with the same spec: nothing of the old run is needed.
        return Ok(None);
    }
    let old = match ctx.engine.store().fold(old_id) {
        Ok(Some(old)) => old,
        Ok(None) => {
            return Err(Problem {
                reason: "RerunOfNotFound",
                message: format!("spec.rerunOf.runId: run {old_id} is not in the event log"),
            });
        }
        Err(e) => return Err(invalid(format!("run {old_id} cannot be read: {e}"))),
    };
    let options = RerunOptions {
        from_failed: rerun.from_failed,
    };
    crate::history::rerun::reuse(&old, options).map_err(|e| invalid(e.to_string()))
}

/// Gives a PipelineRun an ownerReference to its Pipeline (deleting the Pipeline deletes its runs) and
/// the label `flowmason.io/pipeline` (the Python client's `list_runs(pipeline_ref=...)` selects on it).
async fn own(run: &PipelineRun, pipeline: &Pipeline, ctx: &RunContext) -> Result<()> {
    let Some(metadata) = ownership(run, pipeline) else {
        return Ok(());
    };
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    Api::<PipelineRun>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": metadata })),
        )
        .await
        .map_err(|e| Error::kube(format!("set the owner of {}", object_name(run)), e))?;
    Ok(())
}

/// The metadata (merge patch) that makes `pipeline` own `run`: an ownerReference and the label
/// `flowmason.io/pipeline`; `None` when the run already has both.
fn ownership(run: &PipelineRun, pipeline: &Pipeline) -> Option<serde_json::Map<String, Value>> {
    let owner = pipeline.controller_owner_ref(&())?;
    let owned = run.owner_references().iter().any(|o| o.uid == owner.uid);
    let labelled = run.labels().get(crate::client::PIPELINE_LABEL) == Some(&pipeline.name_any());
    if owned && labelled {
        return None;
    }
    let mut refs = run.owner_references().to_vec();
    if !owned {
        refs.push(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                controller: Some(false),
                ..owner
            },
        );
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert("ownerReferences".into(), json!(refs));
    metadata.insert(
        "labels".into(),
        json!({ crate::client::PIPELINE_LABEL: pipeline.name_any() }),
    );
    Some(metadata)
}

async fn start(run: Arc<PipelineRun>, run_id: RunId, ctx: Arc<RunContext>) -> Result<Action> {
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let name = run.name_any();
    let prepared = match prepare(&run, run_id, &ctx).await? {
        Ok(p) => p,
        Err(problem) => return reject(&run, run_id, &ctx, problem).await,
    };
    own(&run, &prepared.pipeline, &ctx).await?;
    // Recorded as waiting before asking, so that a share given back meanwhile wakes it.
    let waiter = KubeRef::from_obj(run.as_ref());
    if let Ok(mut waiting) = ctx.waiting.lock() {
        waiting.insert(waiter.clone());
    }
    let admission = ctx.ledger.admit(run_id, prepared.demand);
    if !matches!(admission, Admission::Wait(_))
        && let Ok(mut waiting) = ctx.waiting.lock()
    {
        waiting.remove(&waiter);
    }
    match admission {
        Admission::Admitted => {}
        Admission::Wait(message) => {
            let current = run.status.as_ref().and_then(|s| s.conditions.first());
            if current.and_then(|c| c.message.as_deref()) != Some(message.as_str()) {
                let status = status::waiting(WAITING_FOR_RESOURCES, message);
                write_status(&ctx, &namespace, &name, &status).await?;
            }
            return Ok(Action::requeue(CAPACITY_RECHECK));
        }
        Admission::Never(message) => {
            let problem = Problem {
                reason: "Unschedulable",
                message,
            };
            return reject(&run, run_id, &ctx, problem).await;
        }
    }
    let mut handle = match ctx.engine.start_observed(prepared.request).await {
        Ok(handle) => handle,
        Err(source) => {
            ctx.release(run_id);
            return Err(Error::Engine {
                object: object_name(&run),
                source,
            });
        }
    };
    ctx.pipelines.run_started(&prepared.pipeline, run_id);
    let events = handle.take_events();
    let involved = run.object_ref(&());
    spawn_writer(
        &ctx,
        run_id,
        involved,
        prepared.pipeline.metadata.uid.clone(),
        namespace,
        name,
        prepared.secrets,
        None,
        events,
        handle,
    );
    Ok(Action::await_change())
}

async fn resume(run: Arc<PipelineRun>, run_id: RunId, ctx: Arc<RunContext>) -> Result<Action> {
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let name = run.name_any();
    // The engine resolves the environment again itself; the secret values are needed here only to
    // redact the status.
    let secrets = match prepare(&run, run_id, &ctx).await? {
        Ok(p) => {
            // Already in flight: it holds its share of the capacity, fitting or not.
            ctx.ledger.hold(run_id, p.demand);
            p.secrets
        }
        Err(_) => Vec::new(),
    };
    let handle = match ctx.engine.resume(run_id, true).await {
        Ok(Some(handle)) => Some(handle),
        other => {
            // Not running after all: its share goes back.
            ctx.release(run_id);
            other.map_err(|source| Error::Engine {
                object: object_name(&run),
                source,
            })?
        }
    };
    let Some(mut handle) = handle else {
        // Ended while we looked (or was ended as unusable): project what the log says.
        if let Ok(Some(state)) = ctx.engine.store().fold(run_id) {
            write_status(
                &ctx,
                &namespace,
                &name,
                &status::project_run(&state, &secrets, ctx.limits),
            )
            .await?;
        }
        return Ok(Action::await_change());
    };
    let initial = ctx.engine.store().fold(run_id).ok().flatten();
    let events = handle.take_events();
    let involved = run.object_ref(&());
    spawn_writer(
        &ctx,
        run_id,
        involved,
        pipeline_uid_of(&run),
        namespace,
        name,
        secrets,
        initial,
        events,
        handle,
    );
    if planning::cancel_requested(&run) {
        ctx.engine.cancel(run_id, "cancelled through the API");
    }
    Ok(Action::await_change())
}

/// Whether the folded state has ended the run.
fn ended(state: Option<&RunState>) -> bool {
    state.is_some_and(|s| s.phase.is_terminal())
}

/// Starts the task that folds a run's events and writes its status: the first state at once, then at
/// most one write per `write_interval`, and always the final state (retried until it is written).
#[allow(clippy::too_many_arguments)]
fn spawn_writer(
    ctx: &Arc<RunContext>,
    run_id: RunId,
    involved: ObjectReference,
    pipeline_uid: Option<String>,
    namespace: String,
    name: String,
    secrets: Vec<String>,
    initial: Option<RunState>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    handle: flowmason_actors::RunHandle,
) {
    let (done_tx, done_rx) = watch::channel(false);
    if let Ok(mut active) = ctx.active.lock() {
        active.insert(run_id, Active { done: done_rx });
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut state = initial;
        let mut dirty = false;
        let mut last_write: Option<Instant> = None;
        let mut written_phase = None;
        let finished = handle.finished();
        tokio::pin!(finished);
        let mut events = events;
        let mut recorder = Recorder::new(ctx.client.clone(), involved);
        // The status names the run id, and a status naming a run the log does not have means the log was
        // lost (`EventsLost`); so `RunAccepted` must be on disk before the first write, whatever the
        // durability policy (group commit: concurrent starts share the fsync).
        if let Err(e) = ctx.engine.store().sync().await {
            tracing::warn!(%run_id, error = %e, "event log sync");
        }
        loop {
            let due = last_write.map(|t| t + ctx.write_interval);
            tokio::select! {
                biased;
                event = async { match events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    match event {
                        Some(event) => {
                            if let Err(e) = RunState::apply_to(&mut state, run_id, &event) {
                                tracing::warn!(%run_id, error = %e, "status fold");
                            }
                            recorder.add(&event);
                            // The stream shows events before they are durable: an end is written only
                            // once the run has finished (after its terminal event's sync), from the log,
                            // so that a crash cannot leave a status ending a run the log has unfinished.
                            if ended(state.as_ref()) {
                                dirty = false;
                                continue;
                            }
                            dirty = true;
                            // Phase changes (Pending, Running) are written at once; everything else waits
                            // for the interval.
                            let phase = state.as_ref().map(|s| s.phase);
                            if last_write.is_none() || phase != written_phase {
                                written_phase = phase;
                                if let Some(s) = &state {
                                    let status = status::project_run(s, &secrets, ctx.limits);
                                    if let Err(e) = write_status(&ctx, &namespace, &name, &status).await {
                                        tracing::debug!(error = %e, "status write");
                                    }
                                }
                                recorder.flush().await;
                                last_write = Some(Instant::now());
                                dirty = false;
                            }
                        }
                        None => events = None,
                    }
                }
                _ = async { match due { Some(t) if dirty => tokio::time::sleep_until(t).await, _ => std::future::pending().await } } => {
                    if let Some(s) = &state {
                        let status = status::project_run(s, &secrets, ctx.limits);
                        if let Err(e) = write_status(&ctx, &namespace, &name, &status).await {
                            tracing::debug!(error = %e, "status write");
                        }
                    }
                    recorder.flush().await;
                    last_write = Some(Instant::now());
                    dirty = false;
                }
                outcome = &mut finished => {
                    if let Err(e) = &outcome {
                        tracing::warn!(%run_id, error = %e, "run ended abnormally");
                    }
                    break;
                }
            }
        }
        // Events still queued in the channel (the run ended before the loop read them).
        if let Some(rx) = events.as_mut() {
            while let Ok(event) = rx.try_recv() {
                recorder.add(&event);
            }
        }
        recorder.flush().await;
        // The run is over: its share of the capacity goes back, and the runs waiting for it look again.
        ctx.release(run_id);
        // The log is the authority on the end state, whatever the stream delivered.
        let final_state = match ctx.engine.store().fold(run_id) {
            Ok(Some(s)) => Some(s),
            _ => state,
        };
        if let Some(s) = &final_state {
            let status = status::project_run(s, &secrets, ctx.limits);
            let mut delay = Duration::from_millis(50);
            for _ in 0..20 {
                match write_status(&ctx, &namespace, &name, &status).await {
                    Ok(()) => break,
                    Err(Error::Kube {
                        source: kube::Error::Api(e),
                        ..
                    }) if e.code == 404 => break,
                    Err(e) => {
                        tracing::warn!(%run_id, error = %e, "final status write; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            ctx.pipelines.run_ended(s, pipeline_uid);
        }
        if let Ok(mut active) = ctx.active.lock() {
            active.remove(&run_id);
        }
        let _ = done_tx.send(true);
    });
}

/// Queues a run's notable events and writes them as Kubernetes Events alongside status writes.
struct Recorder {
    api: Api<KubeEvent>,
    involved: ObjectReference,
    pending: Vec<KubeEvent>,
    recorded: usize,
}

impl Recorder {
    fn new(client: Client, involved: ObjectReference) -> Recorder {
        let namespace = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        Recorder {
            api: Api::namespaced(client, &namespace),
            involved,
            pending: Vec::new(),
            recorded: 0,
        }
    }

    fn add(&mut self, event: &Event) {
        let queued = self.recorded + self.pending.len();
        if queued > events::MAX_EVENTS_PER_RUN {
            return;
        }
        if let Some(k) = events::kube_event(&self.involved, event) {
            if queued == events::MAX_EVENTS_PER_RUN {
                self.pending
                    .push(events::truncated(&self.involved, event.seq, event.at));
            } else {
                self.pending.push(k);
            }
        }
    }

    async fn flush(&mut self) {
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

async fn cleanup(run: Arc<PipelineRun>, ctx: Arc<RunContext>) -> Result<Action> {
    let run_id = run_id_of(&run)?;
    let done = ctx
        .active
        .lock()
        .ok()
        .and_then(|a| a.get(&run_id).map(|a| a.done.clone()));
    if let Some(mut done) = done {
        ctx.engine.cancel(run_id, "PipelineRun deleted");
        // Bounded: a run whose stages ignore cancellation must not keep its object forever.
        let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures;

    #[test]
    fn ownership_adds_the_pipeline_reference_and_label_once() {
        let pipeline = fixtures::pipeline("etl", &["a"]);
        let mut run = fixtures::pipeline_run("etl-1", "etl");
        let metadata = ownership(&run, &pipeline).expect("not owned yet");
        assert_eq!(metadata["labels"], json!({"flowmason.io/pipeline": "etl"}));
        assert_eq!(metadata["ownerReferences"][0]["uid"], json!("uid-etl"));
        assert_eq!(metadata["ownerReferences"][0]["kind"], json!("Pipeline"));
        assert_eq!(metadata["ownerReferences"][0]["controller"], json!(false));
        let patched: kube::api::ObjectMeta =
            serde_json::from_value(Value::Object(metadata)).expect("metadata");
        run.metadata.owner_references = patched.owner_references;
        run.metadata.labels = patched.labels;
        assert_eq!(ownership(&run, &pipeline), None, "nothing left to write");
    }
}

//! Starting a PipelineRun's engine run (prepared from its Pipeline, admitted by the capacity ledger),
//! resuming one the log has unfinished, and rejecting one that cannot start.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef as KubeRef;
use serde_json::Value;

use flowmason_actors::{Rejection, Reuse, RunRequest, TakeUp};
use flowmason_store::{RunId, Trigger};

use super::ownership::own;
use super::status_writer::spawn_writer;
use super::{CAPACITY_RECHECK, RunContext, WAITING_FOR_RESOURCES, object_name, write_status};
use crate::history::rerun::RerunOptions;
use crate::model::resources::{self, Demand};
use crate::model::vocabulary::TRIGGER_LABEL;
use crate::model::{Pipeline, PipelineRun, PipelineSpec};
use crate::operator::capacity::Admission;
use crate::operator::error::{Error, Result};
use crate::operator::planning::{self, ClusterObjects, Problem};
use crate::operator::status;

/// Everything a new run needs, or the problem that keeps it from starting.
struct Prepared {
    request: RunRequest,
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
    let pipeline = match pipeline_of(run, ctx).await? {
        Ok(pipeline) => pipeline,
        Err(problem) => return Ok(Err(problem)),
    };
    let reuse = match rerun_reuse(run, ctx) {
        Ok(reuse) => reuse,
        Err(problem) => return Ok(Err(problem)),
    };
    let (spec, objects) = match spec_of(&pipeline, run, ctx).await? {
        Ok(resolved) => resolved,
        Err(problem) => return Ok(Err(problem)),
    };
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
            // The engine reads `envFrom` itself (at start and on resume) and masks the secret values in
            // everything the run records; the values resolved here only checked that every reference
            // exists.
            request.secrets = env.secrets;
            Ok(Prepared {
                request,
                pipeline: pipeline.clone(),
                // Checked by `plan_pipeline` above.
                demand: resources::demand(spec.resources.as_ref()).unwrap_or_default(),
            })
        });
    Ok(prepared)
}

/// The Pipeline a run names, or `PipelineNotFound`.
async fn pipeline_of(run: &PipelineRun, ctx: &RunContext) -> Result<Result<Pipeline, Problem>> {
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let pipelines: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let pipeline = pipelines
        .get_opt(&run.spec.pipeline_ref)
        .await
        .map_err(|e| {
            Error::kube(
                format!("read Pipeline {namespace}/{}", run.spec.pipeline_ref),
                e,
            )
        })?;
    Ok(pipeline.ok_or_else(|| Problem {
        reason: "PipelineNotFound",
        message: format!(
            "spec.pipelineRef: Pipeline {namespace}/{} not found",
            run.spec.pipeline_ref
        ),
    }))
}

/// A Pipeline's effective spec (from its source definition, if it has one) and the cluster objects the
/// run reads.
async fn spec_of(
    pipeline: &Pipeline,
    run: &PipelineRun,
    ctx: &RunContext,
) -> Result<Result<(PipelineSpec, ClusterObjects), Problem>> {
    let refs = planning::references(pipeline, None, Some(run));
    let mut objects = ctx.cluster.fetch(&refs).await?;
    let spec = match planning::resolve_spec(pipeline, &objects) {
        Ok(spec) => spec,
        Err(p) => return Ok(Err(p)),
    };
    // A source definition may reference more objects than the Pipeline object itself showed.
    let more = planning::references(pipeline, Some(&spec), Some(run));
    if more != refs {
        objects = ctx.cluster.fetch(&more).await?;
    }
    Ok(Ok((spec, objects)))
}

/// What a run in flight holds of the operator's capacity (`spec.resources` of its Pipeline as it is
/// now); `None` when the Pipeline or its spec cannot be read, and then it holds nothing.
async fn demand_of(run: &PipelineRun, ctx: &RunContext) -> Result<Option<Demand>> {
    let Ok(pipeline) = pipeline_of(run, ctx).await? else {
        return Ok(None);
    };
    let Ok((spec, _)) = spec_of(&pipeline, run, ctx).await? else {
        return Ok(None);
    };
    Ok(resources::demand(spec.resources.as_ref()).ok())
}

/// The uid of the Pipeline that owns a run (its ownerReference), so that the end of a run of a deleted
/// Pipeline never lands in the status of a new one of the same name.
pub(super) fn pipeline_uid_of(run: &PipelineRun) -> Option<String> {
    run.owner_references()
        .iter()
        .find(|o| o.kind == "Pipeline")
        .map(|o| o.uid.clone())
}

/// What started a run, from the label the triggers set; a run without it was started by hand.
fn trigger_of(run: &PipelineRun) -> Trigger {
    run.labels()
        .get(TRIGGER_LABEL)
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
        .map_err(|source| Error::engine(object_name(run), source))?;
    let status = status::project_run(&state, ctx.limits);
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
    let old = match ctx.engine.fold(old_id) {
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

pub(super) async fn start(
    run: Arc<PipelineRun>,
    run_id: RunId,
    ctx: Arc<RunContext>,
) -> Result<Action> {
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
    let handle = match ctx.engine.start_observed(prepared.request).await {
        Ok(handle) => handle,
        Err(source) => {
            ctx.release(run_id);
            return Err(Error::engine(object_name(&run), source));
        }
    };
    ctx.pipelines.run_started(&prepared.pipeline, run_id);
    spawn_writer(
        &ctx,
        &run,
        run_id,
        prepared.pipeline.metadata.uid.clone(),
        handle,
    );
    Ok(Action::await_change())
}

/// How this replica took up `run`: from how it took the run's shard (after a crash of its previous
/// holder, whose engine session then crashed, or handed over).
fn take_up(ctx: &RunContext, run: RunId) -> TakeUp {
    let takeover = ctx
        .ownership
        .owned()
        .shards
        .remove(&ctx.ownership.shard_of_run(run))
        .unwrap_or_default();
    TakeUp {
        after_crash: takeover.after_crash,
        crashed_session: takeover.crashed_session,
    }
}

/// Resumes a run the log has unfinished: this replica's own after a restart, or one of a shard it took
/// over from another replica.
pub(super) async fn resume(
    run: Arc<PipelineRun>,
    run_id: RunId,
    ctx: Arc<RunContext>,
) -> Result<Action> {
    // Already in flight: it holds its share of the capacity, fitting or not. The engine resolves the
    // run's environment again itself and masks its secrets.
    if let Some(demand) = demand_of(&run, &ctx).await? {
        ctx.ledger.hold(run_id, demand);
    }
    let taken = if ctx.ownership.is_sharded() {
        ctx.engine.take_over(run_id, take_up(&ctx, run_id)).await
    } else {
        ctx.engine.resume(run_id, true).await
    };
    ctx.taken_up(run_id);
    let handle = match taken {
        Ok(Some(handle)) => Some(handle),
        other => {
            // Not running after all: its share goes back.
            ctx.release(run_id);
            other.map_err(|source| Error::engine(object_name(&run), source))?
        }
    };
    let Some(handle) = handle else {
        // Ended while we looked (or was ended as unusable): project what the log says.
        if let Ok(Some(state)) = ctx.engine.fold(run_id) {
            let namespace = run.namespace().unwrap_or_else(|| "default".into());
            let status = status::project_run(&state, ctx.limits);
            write_status(&ctx, &namespace, &run.name_any(), &status).await?;
        }
        return Ok(Action::await_change());
    };
    spawn_writer(&ctx, &run, run_id, pipeline_uid_of(&run), handle);
    if planning::cancel_requested(&run) {
        ctx.engine.cancel(run_id, "cancelled through the API");
    }
    Ok(Action::await_change())
}

//! The PipelineRun controller itself: watches the runs, adds the finalizer, and hands each change to
//! [`apply`] (start, resume or project a run) or, for a deleted run, to [`cleanup`]; once after the first
//! listing it ends the runs whose PipelineRun is gone. Only the runs of the shards this replica holds are
//! acted on; [`follow_shards`] drops the runs of a shard lost and takes over those of a shard gained.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller, Error as ControllerError};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef as KubeRef;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::handover::Handover;
use super::ownership::ownership;
use super::start::{pipeline_uid_of, resume, start};
use super::{RunContext, object_name, run_id_of, write_status};
use crate::model::vocabulary::RUN_FINALIZER;
use crate::model::{Pipeline, PipelineRun, RunPhase};
use crate::operator::error::{Error, Result};
use crate::operator::planning;
use crate::operator::status;

/// Runs the PipelineRun controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<RunContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<PipelineRun> = Api::all(ctx.client.clone());
    let (reader, writer) = reflector::store();
    // The first complete listing, signalled from the stream itself: the reflector's own readiness
    // (`Store::wait_until_ready`) wakes only the last of its waiters, and the controller waits on it too.
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    let sweep = tokio::spawn(end_orphaned_runs(
        ctx.clone(),
        reader.clone(),
        listed.clone(),
    ));
    let shards = tokio::spawn(follow_shards(ctx.clone(), reader.clone(), listed));
    let requests = ctx.clone();
    let runs = watcher(api, watcher::Config::default())
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                listed_tx.send_replace(true);
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
    shards.abort();
    ctx.backlog.clear();
}

/// Ends, once, the unfinished runs of the event log whose PipelineRun no longer exists (see
/// [`planning::orphaned_runs`]): they were never resumed, since only a PipelineRun's reconcile resumes
/// its run. The log is read before the PipelineRuns are (`listed`: the cache holds the first complete
/// listing), so a run started meanwhile always has its PipelineRun in the cache.
async fn end_orphaned_runs(
    ctx: Arc<RunContext>,
    runs: reflector::Store<PipelineRun>,
    mut listed: tokio::sync::watch::Receiver<bool>,
) {
    let unfinished = unfinished_runs(&ctx).await;
    if unfinished.is_empty() || listed.wait_for(|l| *l).await.is_err() {
        return;
    }
    end_orphans(&ctx, &runs, unfinished, |run| ctx.ownership.owns_run(run)).await;
}

/// The unfinished runs of the event log (none when it cannot be read, which is logged).
async fn unfinished_runs(ctx: &RunContext) -> Vec<flowmason_store::RunSummary> {
    let engine = ctx.engine.clone();
    match tokio::task::spawn_blocking(move || engine.unfinished_runs()).await {
        Ok(Ok(unfinished)) => unfinished,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot list the unfinished runs of the event log");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Ends the runs of `unfinished` for which `mine` holds and whose PipelineRun is not in `runs`.
async fn end_orphans(
    ctx: &RunContext,
    runs: &reflector::Store<PipelineRun>,
    mut unfinished: Vec<flowmason_store::RunSummary>,
    mine: impl Fn(flowmason_store::RunId) -> bool,
) {
    unfinished.retain(|summary| mine(summary.run_id));
    let existing = runs
        .state()
        .iter()
        .filter_map(|run| run_id_of(run).ok())
        .collect();
    for run in planning::orphaned_runs(&unfinished, &existing) {
        if ctx.ownership.is_sharded() {
            // Another replica may have ended it meanwhile: the index is brought up to date first.
            match ctx.engine.fold_latest(run).await {
                Ok(Some(state)) if !state.phase.is_terminal() => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(%run, error = %e, "cannot read a run whose PipelineRun is gone");
                    continue;
                }
            }
        }
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

/// Follows the shards this replica holds (nothing to follow when it owns everything): drops at once the
/// runs of a shard lost, and hands every PipelineRun of a shard gained to the reconciler (through
/// `wake`) to be taken over, ending the runs of that shard whose PipelineRun is gone.
async fn follow_shards(
    ctx: Arc<RunContext>,
    runs: reflector::Store<PipelineRun>,
    listed: tokio::sync::watch::Receiver<bool>,
) {
    let Some(mut changes) = ctx.ownership.subscribe() else {
        return;
    };
    let mut held = crate::operator::shards::Owned::default();
    loop {
        let now = changes.borrow_and_update().clone();
        let handover = Handover::between(&held, &now);
        held = now;
        if !handover.is_empty() {
            hand_over(&ctx, &runs, &handover, *listed.borrow());
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Acts on a change of the shards held: relinquishes the runs of the shards lost, then wakes the
/// PipelineRuns of the shards gained and ends their orphaned runs (once the PipelineRuns are listed;
/// before that the first sweep does).
fn hand_over(
    ctx: &Arc<RunContext>,
    runs: &reflector::Store<PipelineRun>,
    handover: &Handover,
    listed: bool,
) {
    let count = ctx.ownership.count();
    let active: Vec<_> = ctx
        .active
        .lock()
        .map(|a| a.keys().copied().collect())
        .unwrap_or_default();
    for run in active {
        if handover.relinquishes(run, count) {
            ctx.relinquish(run);
        }
    }
    if let Ok(mut failovers) = ctx.failovers.lock() {
        for shard in &handover.lost {
            failovers.lost(*shard);
        }
    }
    if handover.gained.is_empty() {
        return;
    }
    tracing::info!(
        gained = ?handover.gained.keys().collect::<Vec<_>>(),
        lost = ?handover.lost,
        "shards changed hands; taking over the runs of the shards gained"
    );
    let gained: Vec<(flowmason_store::RunId, Arc<PipelineRun>)> = runs
        .state()
        .into_iter()
        .filter_map(|run| Some((run_id_of(&run).ok()?, run)))
        .filter(|(id, _)| handover.takes_over(*id, count))
        .collect();
    if let Ok(mut failovers) = ctx.failovers.lock() {
        for (shard, takeover) in &handover.gained {
            let resuming: HashSet<_> = gained
                .iter()
                .filter(|(id, run)| ctx.ownership.shard_of_run(*id) == *shard && in_flight(run))
                .map(|(id, _)| *id)
                .collect();
            failovers.taken(*shard, takeover, resuming);
        }
    }
    for (_, run) in &gained {
        let _ = ctx.wake.send(KubeRef::from_obj(run.as_ref()));
    }
    if listed {
        let ctx = ctx.clone();
        let runs = runs.clone();
        let shards: BTreeSet<u32> = handover.gained.keys().copied().collect();
        tokio::spawn(async move {
            let unfinished = unfinished_runs(&ctx).await;
            let count = ctx.ownership.count();
            end_orphans(&ctx, &runs, unfinished, |run| {
                shards.contains(&crate::operator::shards::shard_of_run(run, count))
                    && ctx.ownership.owns_run(run)
            })
            .await;
        });
    }
}

/// Whether a PipelineRun's status shows a run in flight (started, not ended): one a takeover resumes.
fn in_flight(run: &PipelineRun) -> bool {
    run.status
        .as_ref()
        .is_some_and(|s| s.run_id.is_some() && !s.phase.is_some_and(RunPhase::is_terminal))
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
    // Another replica's run: no finalizer, no status, no Event from here; only the run history of its
    // Pipeline, when this replica owns that.
    let run_id = run_id_of(&run)?;
    if !ctx.ownership.owns_run(run_id) {
        ctx.pipelines.run_seen(&run, run_id, pipeline_uid_of(&run));
        return Ok(Action::await_change());
    }
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = object_name(&run);
    // kube's helper adds the first finalizer with a JSON patch whose `test` of the absent
    // `/metadata/finalizers` not every API server accepts (the embedded one answers 422); a merge patch
    // guarded by resourceVersion does the same everywhere.
    if run.metadata.deletion_timestamp.is_none()
        && !run.finalizers().iter().any(|f| f == RUN_FINALIZER)
    {
        let mut finalizers = run.finalizers().to_vec();
        finalizers.push(RUN_FINALIZER.to_string());
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
    finalizer(&api, RUN_FINALIZER, run, |event| async {
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
    if current
        .and_then(|s| s.phase)
        .is_some_and(RunPhase::is_terminal)
    {
        return Ok(Action::await_change());
    }
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    let name = run.name_any();
    let object = object_name(&run);
    // With several replicas the run may have been appended to by another one since this replica's
    // index last saw it: the index is brought up to date first, so that a run that exists is never
    // started again.
    let folded = if ctx.ownership.is_sharded() {
        ctx.engine.fold_latest(run_id).await
    } else {
        ctx.engine.fold(run_id)
    }
    .map_err(|source| Error::engine(object.clone(), source))?;
    match folded {
        Some(state) if state.phase.is_terminal() => {
            let status = status::project_run(&state, ctx.limits);
            write_status(&ctx, &namespace, &name, &status).await?;
            ctx.taken_up(run_id);
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

//! The status writer of a run in flight: follows the state the engine publishes for the run and patches
//! the PipelineRun's status, coalesced, with the run's notable events recorded as Kubernetes Events.
//! It stops at once, writing nothing more, when the run is relinquished (its shard went to another
//! replica, which writes the status and records the Events from then on).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use flowmason_actors::{EngineError, RunHandle, StateReceiver};
use flowmason_store::{RunId, RunState};

use super::{Active, RunContext};
use crate::model::{PipelineRun, PipelineRunStatus};
use crate::operator::error::{Error, Result};
use crate::operator::events::RunEventRecorder;
use crate::operator::status;

/// Patches a PipelineRun's status through the status subresource, naming this replica in
/// `status.replica`, and counts the outcome in `flowmason_status_writes_total` (ok, conflict, error) so
/// that a stream of failing writes shows on a dashboard rather than only in debug logs.
pub async fn write_status(
    ctx: &RunContext,
    namespace: &str,
    name: &str,
    status: &PipelineRunStatus,
) -> Result<()> {
    let api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), namespace);
    let mut body = json!({ "status": status });
    body["status"]["replica"] = json!(ctx.ownership.identity());
    let result = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(body))
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

/// Starts the task that writes a run's status from the state the engine publishes for it: the first
/// state at once, then at most one write per `write_interval` (phase changes at once), and always the
/// final state (retried until it is written). The run's notable events go to its [`RunEventRecorder`] on the way.
/// A run whose shard was lost meanwhile is relinquished at once.
pub(super) fn spawn_writer(
    ctx: &Arc<RunContext>,
    run: &PipelineRun,
    run_id: RunId,
    pipeline_uid: Option<String>,
    mut handle: RunHandle,
) {
    let (done_tx, done_rx) = watch::channel(false);
    let stop = CancellationToken::new();
    if let Ok(mut active) = ctx.active.lock() {
        active.insert(
            run_id,
            Active {
                done: done_rx,
                stop: stop.clone(),
            },
        );
    }
    // Registered first, looked at second: a shard lost before the registration is seen here, one lost
    // after it finds the run registered (see `controller::follow_shards`).
    if !ctx.ownership.owns_run(run_id) {
        ctx.relinquish(run_id);
    }
    let writer = StatusWriter {
        ctx: ctx.clone(),
        run_id,
        namespace: run.namespace().unwrap_or_else(|| "default".into()),
        name: run.name_any(),
        stop: stop.clone(),
    };
    let mut recorder = RunEventRecorder::new(ctx.client.clone(), run.object_ref(&()));
    let mut events = handle.take_events();
    let initial = handle.initial.take();
    let mut states = handle.take_states();
    tokio::spawn(async move {
        let ctx = &writer.ctx;
        let mut dirty = false;
        let mut last_write: Option<Instant> = None;
        let mut written_phase = None;
        let finished = handle.finished();
        tokio::pin!(finished);
        // The status names the run id, and a status naming a run the log does not have means the log was
        // lost (`EventsLost`); so `RunAccepted` must be on disk before the first write, whatever the
        // durability policy (group commit: concurrent starts share the fsync).
        if let Err(e) = ctx.engine.sync().await {
            tracing::warn!(%run_id, error = %e, "event log sync");
        }
        // The state the run started (or resumed) with is written at once, then whatever it has become
        // since: the watch shows only the latest state.
        if let Some(state) = initial.filter(|s| !s.phase.is_terminal()) {
            writer.write_state(&state).await;
            writer.record(&mut recorder).await;
            written_phase = Some(state.phase);
            last_write = Some(Instant::now());
        }
        if let Some(states) = &mut states {
            states.mark_changed();
        }
        let mut open = states.is_some();
        let outcome = loop {
            let due = last_write.map(|t| t + ctx.write_interval);
            tokio::select! {
                biased;
                () = stop.cancelled() => break Err(EngineError::Relinquished { run: run_id }),
                event = async { match events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    match event {
                        Some(event) => recorder.add(&event),
                        None => events = None,
                    }
                }
                changed = async { match states.as_mut() { Some(rx) if open => rx.changed().await, _ => std::future::pending().await } } => {
                    let Some(rx) = states.as_mut().filter(|_| changed.is_ok()) else {
                        // The run's actor stopped: its end comes through `finished`.
                        open = false;
                        continue;
                    };
                    let phase = rx.borrow_and_update().phase;
                    // The state is published before it is durable: an end is written only once the run
                    // has finished (after its terminal event's sync), so that a crash cannot leave a status
                    // ending a run the log has unfinished.
                    if phase.is_terminal() {
                        dirty = false;
                        continue;
                    }
                    dirty = true;
                    // Phase changes (Pending, Running) are written at once; everything else waits for the
                    // interval.
                    if last_write.is_none() || Some(phase) != written_phase {
                        written_phase = Some(phase);
                        writer.write(rx).await;
                        writer.record(&mut recorder).await;
                        last_write = Some(Instant::now());
                        dirty = false;
                    }
                }
                _ = async { match due { Some(t) if dirty => tokio::time::sleep_until(t).await, _ => std::future::pending().await } } => {
                    if let Some(rx) = &states {
                        writer.write(rx).await;
                    }
                    writer.record(&mut recorder).await;
                    last_write = Some(Instant::now());
                    dirty = false;
                }
                outcome = &mut finished => break outcome,
            }
        };
        if stop.is_cancelled() || matches!(outcome, Err(EngineError::Relinquished { .. })) {
            // Another replica owns the run now: nothing more is written or recorded from here, and
            // `relinquish` has given its capacity back and forgotten it.
            let _ = done_tx.send(true);
            return;
        }
        // Events still queued in the channel (the run ended before the loop read them).
        if let Some(rx) = events.as_mut() {
            while let Ok(event) = rx.try_recv() {
                recorder.add(&event);
            }
        }
        writer.record(&mut recorder).await;
        // The run is over: its share of the capacity goes back, and the runs waiting for it look again.
        ctx.release(run_id);
        // The finished run's state is the fold of all its events, durable; a run the engine lost ends
        // with the last state it published.
        let final_state = match outcome {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "run ended abnormally");
                states.map(|rx| rx.borrow().clone())
            }
        };
        if let Some(state) = &final_state {
            writer.write_final(state).await;
            ctx.pipelines.run_ended(state, pipeline_uid);
        }
        if let Ok(mut active) = ctx.active.lock() {
            active.remove(&run_id);
        }
        let _ = done_tx.send(true);
    });
}

/// Where one run's status goes.
struct StatusWriter {
    ctx: Arc<RunContext>,
    run_id: RunId,
    namespace: String,
    name: String,
    /// Cancelled when the run is relinquished: nothing is written or recorded after that.
    stop: CancellationToken,
}

impl StatusWriter {
    /// Writes the state last published; a failed write waits for the next one.
    async fn write(&self, states: &StateReceiver) {
        let status = status::project_run(&states.borrow(), self.ctx.limits);
        self.write_status(&status).await;
    }

    /// Writes `state`; a failed write waits for the next one.
    async fn write_state(&self, state: &RunState) {
        self.write_status(&status::project_run(state, self.ctx.limits))
            .await;
    }

    async fn write_status(&self, status: &PipelineRunStatus) {
        if self.stop.is_cancelled() {
            return;
        }
        if let Err(e) = write_status(&self.ctx, &self.namespace, &self.name, status).await {
            tracing::debug!(error = %e, "status write");
        }
    }

    /// Records the run's queued notable events as Kubernetes Events, unless the run was relinquished.
    async fn record(&self, recorder: &mut RunEventRecorder) {
        if !self.stop.is_cancelled() {
            recorder.flush().await;
        }
    }

    /// Writes the run's final state, retried with backoff until it is written or its object is gone.
    async fn write_final(&self, state: &RunState) {
        let status = status::project_run(state, self.ctx.limits);
        let mut delay = Duration::from_millis(50);
        for _ in 0..20 {
            match write_status(&self.ctx, &self.namespace, &self.name, &status).await {
                Ok(()) => break,
                Err(Error::Kube {
                    source: kube::Error::Api(e),
                    ..
                }) if e.code == 404 => break,
                Err(e) => {
                    tracing::warn!(run_id = %self.run_id, error = %e, "final status write; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

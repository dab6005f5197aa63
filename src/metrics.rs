//! Prometheus metrics of the engine, the event log and the operator, in one registry served at
//! `/metrics` (see `crate::http::metrics`).
//!
//! The engine knows nothing of Prometheus: [`Metrics::engine_observer`] is the `EngineConfig::observer`
//! that turns recorded events into run and stage metrics, and [`Metrics::store_observer`] the event log's
//! write-cycle observer. The operator updates its own families (status writes, queue depth, reconcile
//! errors, leader state) through the typed methods. Labels are bounded: namespaces, pipelines, stage ids,
//! component types, phases and error classes, never run ids.

use std::sync::Arc;

use flowmason_actors::{EventObserver, Observation};
use flowmason_store::{EventKind, StagePhase, WriteCycle, WriteObserver};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a metric family could not be registered (a programming error: names are fixed).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric registration: {0}")]
    Register(#[from] prometheus::Error),
    #[error("metrics text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// Run and pipeline durations span milliseconds to hours.
const RUN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Stages are often much shorter than runs.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// A failover (a dead replica's last renewal to its shard's runs resumed elsewhere) takes a lease
/// duration and some seconds.
const FAILOVER_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
];
/// A write cycle of the log takes microseconds to tens of milliseconds.
const WRITE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every metric family FlowMason exports. Cheap to share (`Arc`); all methods take `&self`.
pub struct Metrics {
    registry: Registry,
    runs_total: IntCounterVec,
    run_duration: HistogramVec,
    run_errors: IntCounterVec,
    stage_duration: HistogramVec,
    runs_in_flight: IntGauge,
    stages_running: IntGauge,
    stage_retries: IntCounterVec,
    trigger_events: IntCounterVec,
    log_write_seconds: Histogram,
    log_events: IntCounter,
    log_bytes: IntCounter,
    log_size: IntGauge,
    status_writes: IntCounterVec,
    queue_depth: IntGaugeVec,
    reconcile_errors: IntCounterVec,
    leader: IntGauge,
    shard_count: IntGauge,
    shards_owned: IntGauge,
    shard_takeovers: IntCounterVec,
    shard_failover: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn micros_to_seconds(micros: i64) -> f64 {
    micros.max(0) as f64 / 1e6
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Result<Metrics, MetricsError> {
        let r = Registry::new();
        let log_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "flowmason_event_log_write_seconds",
                "Duration of one write cycle of the event log: buffered appends moved into the log in one atomic batch (before any fsync)",
            )
            .buckets(WRITE_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(log_write_seconds.clone()))?;
        let log_events = IntCounter::new(
            "flowmason_event_log_appended_events_total",
            "Events written to the event log",
        )?;
        r.register(Box::new(log_events.clone()))?;
        let log_bytes = IntCounter::new(
            "flowmason_event_log_appended_bytes_total",
            "Encoded bytes of the events written to the event log",
        )?;
        r.register(Box::new(log_bytes.clone()))?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "flowmason_controller_queue_depth",
                "Objects waiting to be reconciled, by controller",
            ),
            &["controller"],
        )?;
        r.register(Box::new(queue_depth.clone()))?;
        let shard_failover = Histogram::with_opts(
            HistogramOpts::new(
                "flowmason_shard_failover_seconds",
                "From the last renewal of a replica that died to the last unfinished run of its shard resumed by this replica",
            )
            .buckets(FAILOVER_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(shard_failover.clone()))?;
        Ok(Metrics {
            runs_total: counter(
                &r,
                "flowmason_pipeline_runs_total",
                "Pipeline runs that ended, by final phase",
                &["namespace", "pipeline", "phase"],
            )?,
            run_duration: histogram(
                &r,
                "flowmason_pipeline_run_duration_seconds",
                "Wall-clock duration of pipeline runs from start to end, by final phase",
                &["namespace", "pipeline", "phase"],
                RUN_BUCKETS,
            )?,
            run_errors: counter(
                &r,
                "flowmason_pipeline_run_errors_total",
                "Stage failures that ended a run, by stage and error class (reason)",
                &["namespace", "pipeline", "stage", "reason"],
            )?,
            stage_duration: histogram(
                &r,
                "flowmason_stage_duration_seconds",
                "Duration of stage attempts, by component type and outcome",
                &["namespace", "pipeline", "component_type", "phase"],
                STAGE_BUCKETS,
            )?,
            runs_in_flight: gauge(
                &r,
                "flowmason_runs_in_flight",
                "Runs executing in this process",
            )?,
            stages_running: gauge(
                &r,
                "flowmason_stages_running",
                "Stage attempts executing in this process",
            )?,
            stage_retries: counter(
                &r,
                "flowmason_stage_retries_total",
                "Stage attempts scheduled again after a failure",
                &["namespace", "pipeline", "stage"],
            )?,
            trigger_events: counter(
                &r,
                "flowmason_trigger_events_total",
                "Trigger events (cron ticks, webhook calls, pub/sub messages) by kind and outcome",
                &["kind", "outcome"],
            )?,
            log_write_seconds,
            log_events,
            log_bytes,
            log_size: gauge(
                &r,
                "flowmason_event_log_size_bytes",
                "Size of the event log on disk",
            )?,
            status_writes: counter(
                &r,
                "flowmason_status_writes_total",
                "PipelineRun status writes, by outcome (ok, conflict, error)",
                &["outcome"],
            )?,
            queue_depth,
            reconcile_errors: counter(
                &r,
                "flowmason_reconcile_errors_total",
                "Reconciliations that failed, by controller",
                &["controller"],
            )?,
            leader: gauge(
                &r,
                "flowmason_leader",
                "1 while this process holds the operator lease (or runs without one); sharded: while it holds at least one shard",
            )?,
            shard_count: gauge(
                &r,
                "flowmason_shards",
                "Shards the runs are split over (the configured count; 1 when not sharded)",
            )?,
            shards_owned: gauge(
                &r,
                "flowmason_shards_owned",
                "Shards this replica holds now",
            )?,
            shard_takeovers: counter(
                &r,
                "flowmason_shard_takeovers_total",
                "Shards this replica took, by whether their previous holder had died (after_crash=true) or released them",
                &["after_crash"],
            )?,
            shard_failover,
            registry: r,
        })
    }

    /// The registry, to add families of other parts of the process.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every family.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8(buf)?)
    }

    /// Folds one recorded event into the run and stage families.
    pub fn observe_event(&self, o: &Observation<'_>) {
        let state = o.before;
        let (ns, pipeline) = (state.namespace.as_str(), state.pipeline.as_str());
        let component = o.component.unwrap_or("unknown");
        let attempt_seconds = |stage: &str, attempt: u32| {
            state
                .stages
                .get(stage)
                .and_then(|s| {
                    s.attempt_history
                        .iter()
                        .rev()
                        .find(|a| a.attempt == attempt)
                })
                .map(|a| micros_to_seconds(o.event.at - a.started_at))
        };
        match &o.event.kind {
            EventKind::StageStarted { .. } => self.stages_running.inc(),
            EventKind::StageSucceeded {
                stage,
                attempt,
                reused_from: None,
                ..
            } => {
                self.stage_ended();
                if let Some(seconds) = attempt_seconds(stage, *attempt) {
                    self.stage_duration
                        .with_label_values(&[ns, pipeline, component, "Succeeded"])
                        .observe(seconds);
                }
            }
            // Taken over from another run: nothing ran here.
            EventKind::StageSucceeded { .. } => {}
            EventKind::StageFailed { stage, attempt, .. } => {
                self.stage_ended();
                if let Some(seconds) = attempt_seconds(stage, *attempt) {
                    self.stage_duration
                        .with_label_values(&[ns, pipeline, component, "Failed"])
                        .observe(seconds);
                }
            }
            EventKind::StageRetryScheduled { stage, .. } => {
                self.stage_retries
                    .with_label_values(&[ns, pipeline, stage])
                    .inc();
            }
            kind if kind.is_terminal() => {
                let Some(phase) = kind.run_phase() else {
                    return;
                };
                // Attempts still running are stopped with the run.
                for s in state.stages.values() {
                    if s.phase == StagePhase::Running {
                        self.stage_ended();
                    }
                }
                let phase = phase.as_str();
                self.runs_total
                    .with_label_values(&[ns, pipeline, phase])
                    .inc();
                let started = state.started_at.unwrap_or(state.accepted_at);
                self.run_duration
                    .with_label_values(&[ns, pipeline, phase])
                    .observe(micros_to_seconds(o.event.at - started));
                if let EventKind::RunFailed { error } = kind {
                    let stage = error.stage.as_deref().unwrap_or("");
                    let reason = state
                        .stages
                        .get(stage)
                        .and_then(|s| s.error.as_ref())
                        .map(|e| class_name(e.class))
                        .unwrap_or("run");
                    self.run_errors
                        .with_label_values(&[ns, pipeline, stage, reason])
                        .inc();
                }
            }
            _ => {}
        }
    }

    /// A stage attempt ended. Never below zero: attempts interrupted by a restart end in this process
    /// without having started in it.
    fn stage_ended(&self) {
        if self.stages_running.get() > 0 {
            self.stages_running.dec();
        }
    }

    /// The `EngineConfig::observer` feeding these metrics.
    pub fn engine_observer(self: &Arc<Self>) -> EventObserver {
        let me = self.clone();
        Arc::new(move |o: &Observation<'_>| me.observe_event(o))
    }

    /// The event log's write-cycle observer feeding these metrics.
    pub fn store_observer(self: &Arc<Self>) -> WriteObserver {
        let me = self.clone();
        Arc::new(move |c: &WriteCycle| {
            me.log_write_seconds.observe(c.duration.as_secs_f64());
            me.log_events.inc_by(c.events as u64);
            me.log_bytes.inc_by(c.bytes as u64);
        })
    }

    /// Set at scrape time from the engine (`Engine::running`).
    pub fn set_runs_in_flight(&self, runs: usize) {
        self.runs_in_flight.set(runs as i64);
    }

    /// Set at scrape time from the store (`EventStore::size_on_disk`).
    pub fn set_event_log_size(&self, bytes: u64) {
        self.log_size.set(bytes as i64);
    }

    /// A trigger event and what came of it (`kind`: cron, webhook, pubsub; `outcome`: e.g. started,
    /// deduplicated, rejected, error).
    pub fn trigger_event(&self, kind: &str, outcome: &str) {
        self.trigger_events
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// A PipelineRun status write and its outcome (ok, conflict, error).
    pub fn status_write(&self, outcome: &str) {
        self.status_writes.with_label_values(&[outcome]).inc();
    }

    /// Objects waiting in a controller's queue.
    pub fn set_queue_depth(&self, controller: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[controller])
            .set(depth as i64);
    }

    /// A reconciliation of `controller` failed.
    pub fn reconcile_error(&self, controller: &str) {
        self.reconcile_errors.with_label_values(&[controller]).inc();
    }

    /// Whether this process leads (holds the lease, or runs without one).
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The configured shard count.
    pub fn set_shard_count(&self, count: u32) {
        self.shard_count.set(i64::from(count));
    }

    /// How many shards this replica holds now.
    pub fn set_shards_owned(&self, owned: usize) {
        self.shards_owned.set(owned as i64);
    }

    /// This replica took a shard: after its holder died (`after_crash`) or after it was released.
    pub fn shard_taken(&self, after_crash: bool) {
        self.shard_takeovers
            .with_label_values(&[if after_crash { "true" } else { "false" }])
            .inc();
    }

    /// The last unfinished run of a shard taken after a crash has resumed, `seconds` after the dead
    /// holder's last renewal.
    pub fn shard_failover(&self, seconds: f64) {
        self.shard_failover.observe(seconds.max(0.0));
    }
}

/// The error class as a label value.
fn class_name(class: flowmason_store::ErrorClass) -> &'static str {
    use flowmason_store::ErrorClass::*;
    match class {
        Config => "config",
        Template => "template",
        Timeout => "timeout",
        Transient => "transient",
        Client => "client",
        Internal => "internal",
        Cancelled => "cancelled",
    }
}

/// Every metric family name this process exports (the dashboard test checks against it).
pub const FAMILY_NAMES: &[&str] = &[
    "flowmason_pipeline_runs_total",
    "flowmason_pipeline_run_duration_seconds",
    "flowmason_pipeline_run_errors_total",
    "flowmason_stage_duration_seconds",
    "flowmason_runs_in_flight",
    "flowmason_stages_running",
    "flowmason_stage_retries_total",
    "flowmason_trigger_events_total",
    "flowmason_event_log_write_seconds",
    "flowmason_event_log_appended_events_total",
    "flowmason_event_log_appended_bytes_total",
    "flowmason_event_log_size_bytes",
    "flowmason_status_writes_total",
    "flowmason_controller_queue_depth",
    "flowmason_reconcile_errors_total",
    "flowmason_leader",
    "flowmason_shards",
    "flowmason_shards_owned",
    "flowmason_shard_takeovers_total",
    "flowmason_shard_failover_seconds",
];

//! The engine through its public interface: real actors, a real sled event log in a temp dir, test
//! components that count, fail, sleep and watch for their own cancellation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flowmason_actors::{
    Component, ComponentError, ComponentOutput, Engine, EngineConfig, EngineError, EnvResolver,
    Registry, ResolvedEnv, RetryPolicy, Reuse, ReusedStage, RunRequest, StageContext,
};
use flowmason_store::{
    Durability, ErrorClass, Event, EventKind, EventStore, RunPhase, RunState, SkipReason,
    StagePhase, StoreConfig,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------
// Fixtures

/// Echoes its input as its output.
struct Echo;
impl Component for Echo {
    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move { Ok(input.into()) })
    }
}

/// Sleeps `ms` (from its input), then echoes; notes when it was dropped before finishing (cancelled).
#[derive(Clone, Default)]
struct Sleep {
    cancelled: Arc<AtomicU32>,
}
impl Component for Sleep {
    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let cancelled = self.cancelled.clone();
        Box::pin(async move {
            let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
            let guard = CancelGuard {
                armed: true,
                counter: cancelled,
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = ctx.cancel.cancelled() => {}
            }
            let mut guard = guard;
            guard.armed = ctx.cancel.is_cancelled();
            drop(guard);
            Ok(json!({ "slept": ms, "stage": ctx.stage_id }).into())
        })
    }
}

/// Counts itself as cancelled when dropped while still armed.
struct CancelGuard {
    armed: bool,
    counter: Arc<AtomicU32>,
}
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Fails with the class in its input (`fail_class`) until it has been called `fail_times` times.
#[derive(Clone, Default)]
struct Flaky {
    calls: Arc<AtomicU32>,
}
impl Component for Flaky {
    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let fail_times = input
                .get("fail_times")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX) as u32;
            let class = match input.get("fail_class").and_then(Value::as_str) {
                Some("config") => ErrorClass::Config,
                _ => ErrorClass::Transient,
            };
            if call <= fail_times {
                Err(ComponentError::new(class, format!("failure {call}")))
            } else {
                Ok(json!({ "calls": call }).into())
            }
        })
    }
}

/// Chooses a branch: succeeds and excludes the stages listed in its input's `skip`.
struct Branch;
impl Component for Branch {
    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let skip = input
            .get("skip")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move {
            Ok(ComponentOutput {
                output: json!({ "branch": "chosen" }),
                skip,
            })
        })
    }
}

/// Logs one line, then echoes.
struct Chatty;
impl Component for Chatty {
    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        ctx.log(
            "info",
            "hello from the stage",
            json!({ "key": ctx.idempotency_key() }),
        );
        Box::pin(async move { Ok(input.into()) })
    }
}

/// Logs its whole input, then fails with it in the message: a component that leaks what it was given.
struct Leaky;
impl Component for Leaky {
    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        ctx.log("info", format!("my input is {input}"), input.clone());
        Box::pin(async move {
            Err(ComponentError::config(format!("cannot use {input}")).with_details(input))
        })
    }
}

/// Fails its first call as rate limited, asking for `retry_after_ms` (from its input), then succeeds.
/// Notes when (Unix microseconds) each call happened.
#[derive(Clone, Default)]
struct Throttled {
    calls: Arc<std::sync::Mutex<Vec<i64>>>,
}
impl Component for Throttled {
    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let calls = self.calls.clone();
        Box::pin(async move {
            let n = {
                let mut calls = calls.lock().expect("calls");
                calls.push(now_micros());
                calls.len()
            };
            let wait = input
                .get("retry_after_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if n == 1 {
                Err(ComponentError::transient("429 Too Many Requests")
                    .with_retry_after(Duration::from_millis(wait)))
            } else {
                Ok(json!({ "calls": n }).into())
            }
        })
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: EventStore,
    engine: Engine,
    sleep: Sleep,
    flaky: Flaky,
}

fn fixture() -> Fixture {
    fixture_with(Durability::Batch)
}

fn fixture_with(durability: Durability) -> Fixture {
    fixture_full(durability, EngineConfig::default())
}

/// A fixture whose engine resolves run environments with `env`.
fn fixture_env(env: EnvResolver) -> Fixture {
    fixture_full(
        Durability::Batch,
        EngineConfig {
            env,
            ..EngineConfig::default()
        },
    )
}

fn fixture_full(durability: Durability, config: EngineConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(
        dir.path().join("events"),
        StoreConfig {
            durability,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let sleep = Sleep::default();
    let flaky = Flaky::default();
    let engine = Engine::new(store.clone(), registry(&sleep, &flaky), config);
    Fixture {
        _dir: dir,
        store,
        engine,
        sleep,
        flaky,
    }
}

fn registry(sleep: &Sleep, flaky: &Flaky) -> Registry {
    let mut registry = Registry::new();
    registry
        .register("echo", Echo)
        .register("sleep", sleep.clone())
        .register("flaky", flaky.clone())
        .register("branch", Branch)
        .register("chatty", Chatty)
        .register("leaky", Leaky);
    registry
}

/// The `RunAccepted` of a run of `plan` (a recorded plan, readable or not) in `default`, no inputs.
fn accepted(plan: Value, generation: i64, run_name: Option<&str>) -> EventKind {
    EventKind::RunAccepted {
        pipeline: "test".into(),
        namespace: "default".into(),
        generation,
        trigger: Default::default(),
        run_name: run_name.map(String::from),
        labels: BTreeMap::new(),
        plan,
        inputs: json!({}),
    }
}

fn count(events: &[Event], name: &str) -> usize {
    events.iter().filter(|e| e.kind.name() == name).count()
}

fn stage_events<'a>(
    events: &'a [Event],
    name: &'a str,
    stage: &'a str,
) -> impl Iterator<Item = &'a Event> + 'a {
    events
        .iter()
        .filter(move |e| e.kind.name() == name && e.kind.stage() == Some(stage))
}

/// The most stages running at once, from the log alone.
fn max_running(events: &[Event]) -> usize {
    let (mut running, mut max) = (0usize, 0usize);
    for e in events {
        match e.kind {
            EventKind::StageStarted { .. } => {
                running += 1;
                max = max.max(running);
            }
            EventKind::StageSucceeded { .. } | EventKind::StageFailed { .. } => running -= 1,
            _ => {}
        }
    }
    max
}

// ---------------------------------------------------------------------------------------------------------
// DAG order, templates, output

#[actix_rt::test]
async fn stages_run_in_dependency_order_and_the_sink_output_is_the_run_output() {
    let f = fixture();
    let spec = plan(vec![
        with_config(
            stage("d", "echo", &["b", "c"]),
            json!({ "b": "{{upstream.b.n}}", "c": "{{upstream.c.text}}" }),
        ),
        with_config(
            stage("b", "echo", &["a"]),
            json!({ "n": "{{upstream.a.n}}" }),
        ),
        with_config(
            stage("c", "echo", &["a"]),
            json!({ "text": "n is {{upstream.a.n}}" }),
        ),
        with_config(stage("a", "echo", &[]), json!({ "n": "{{input.n}}" })),
    ]);
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({ "n": 41 })).await;
    assert_eq!(state.phase, RunPhase::Succeeded);
    assert_eq!(state.output, Some(json!({ "b": 41, "c": "n is 41" })));
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e.kind.name() == "StageStarted")
        .filter_map(|e| e.kind.stage())
        .collect();
    assert_eq!(
        started,
        ["a", "b", "c", "d"],
        "declaration order among ready stages, dependencies first"
    );
    assert_eq!(events.first().map(|e| e.kind.name()), Some("RunAccepted"));
    assert_eq!(events.last().map(|e| e.kind.name()), Some("RunSucceeded"));
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "sequence numbers have no gaps"
    );
}

#[actix_rt::test]
async fn run_output_is_keyed_by_sink_when_there_are_several_or_taken_from_the_output_stage() {
    let f = fixture();
    let mut spec = plan(vec![
        with_config(stage("a", "echo", &[]), json!({ "v": 1 })),
        with_config(stage("b", "echo", &["a"]), json!({ "v": 2 })),
        with_config(stage("c", "echo", &["a"]), json!({ "v": 3 })),
    ]);
    let (state, _) = run_to_end(&f.engine, &f.store, spec.clone(), json!({})).await;
    assert_eq!(
        state.output,
        Some(json!({ "b": { "v": 2 }, "c": { "v": 3 } }))
    );
    spec.output_stage = Some("a".into());
    let (state, _) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.output, Some(json!({ "v": 1 })));
}

#[actix_rt::test]
async fn a_template_that_does_not_resolve_fails_the_stage_without_retry() {
    let f = fixture();
    let mut spec = plan(vec![with_config(
        stage("a", "echo", &[]),
        json!({ "x": "{{input.missing}}" }),
    )]);
    spec.retry.limit = 3;
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.stages["a"].error.clone().expect("stage error");
    assert_eq!(error.class, ErrorClass::Template);
    assert!(error.message.contains("input.missing"), "{}", error.message);
    assert_eq!(count(&events, "StageRetryScheduled"), 0);
}

// ---------------------------------------------------------------------------------------------------------
// Parallelism

#[actix_rt::test]
async fn parallelism_cap_is_never_exceeded() {
    let f = fixture();
    let mut stages = vec![stage("source", "echo", &[])];
    for i in 0..12 {
        stages.push(with_config(
            stage(&format!("f{i}"), "sleep", &["source"]),
            json!({ "ms": 15 }),
        ));
    }
    let mut spec = plan(stages);
    spec.parallelism = 3;
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded);
    assert_eq!(
        max_running(&events),
        3,
        "the cap is reached and never passed"
    );

    // The same check on event timestamps: at no instant do more than 3 attempts overlap.
    let mut spans: Vec<(i64, i64)> = Vec::new();
    for (id, s) in &state.stages {
        if id.starts_with('f') {
            spans.push((s.started_at.expect("start"), s.finished_at.expect("end")));
        }
    }
    for &(start, _) in &spans {
        let overlapping = spans
            .iter()
            .filter(|(a, b)| *a <= start && start < *b)
            .count();
        assert!(overlapping <= 3, "{overlapping} stages running at {start}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Retries

#[actix_rt::test]
async fn retries_are_counted_and_backoff_grows() {
    let f = fixture();
    let mut s = with_config(stage("a", "flaky", &[]), json!({ "fail_times": 3 }));
    s.retry = Some(RetryPolicy {
        limit: 3,
        initial_ms: 20,
        factor: 2.0,
        max_ms: 1_000,
        jitter: 0.0,
        retry_on: vec![],
    });
    let (state, events) = run_to_end(&f.engine, &f.store, plan(vec![s]), json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded);
    assert_eq!(state.stages["a"].attempts, 4);
    assert_eq!(f.flaky.calls.load(Ordering::SeqCst), 4);
    assert_eq!(count(&events, "StageFailed"), 3);
    // Each retry is scheduled `initial * factor^(n-1)` after the failure it follows.
    let mut delays = Vec::new();
    for pair in events.windows(2) {
        if let (EventKind::StageFailed { .. }, EventKind::StageRetryScheduled { at, .. }) =
            (&pair[0].kind, &pair[1].kind)
        {
            delays.push((at - pair[1].at + 500) / 1_000);
        }
    }
    assert_eq!(delays, [20, 40, 80], "backoff in ms");
    // And no attempt starts before its retry is due.
    let due: Vec<i64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::StageRetryScheduled { at, .. } => Some(at),
            _ => None,
        })
        .collect();
    let restarts: Vec<i64> = stage_events(&events, "StageStarted", "a")
        .skip(1)
        .map(|e| e.at)
        .collect();
    assert_eq!(due.len(), restarts.len());
    assert!(
        due.iter()
            .zip(&restarts)
            .all(|(due, started)| started >= due)
    );
}

#[actix_rt::test]
async fn a_stage_that_keeps_failing_fails_the_run_after_its_retries() {
    let f = fixture();
    let mut spec = plan(vec![with_config(stage("a", "flaky", &[]), json!({}))]);
    spec.retry = RetryPolicy {
        limit: 2,
        initial_ms: 1,
        factor: 1.0,
        max_ms: 1,
        jitter: 0.0,
        retry_on: vec![],
    };
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(state.stages["a"].attempts, 3);
    assert_eq!(count(&events, "StageRetryScheduled"), 2);
    let error = state.error.expect("run error");
    assert_eq!(error.stage.as_deref(), Some("a"));
    assert!(error.message.contains("failure 3"), "{}", error.message);
}

#[actix_rt::test]
async fn errors_that_cannot_be_helped_by_a_retry_are_not_retried() {
    let f = fixture();
    let mut spec = plan(vec![with_config(
        stage("a", "flaky", &[]),
        json!({ "fail_class": "config" }),
    )]);
    spec.retry.limit = 5;
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(state.stages["a"].attempts, 1);
    assert_eq!(count(&events, "StageRetryScheduled"), 0);
}

// ---------------------------------------------------------------------------------------------------------
// Timeouts and cancellation

#[actix_rt::test]
async fn a_stage_timeout_cancels_the_attempt() {
    let f = fixture();
    let mut s = with_config(stage("slow", "sleep", &[]), json!({ "ms": 30_000 }));
    s.timeout_ms = Some(50);
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        plan(vec![s, stage("after", "echo", &["slow"])]),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.stages["slow"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Timeout);
    assert_eq!(error.message, "attempt timed out after 50ms");
    assert_eq!(state.stages["after"].phase, StagePhase::Skipped);
    assert_eq!(
        state.stages["after"].skip_reason,
        Some(SkipReason::UpstreamFailed)
    );
    assert_eq!(
        f.sleep.cancelled.load(Ordering::SeqCst),
        1,
        "the component's work was cancelled"
    );
}

#[actix_rt::test]
async fn a_run_timeout_ends_the_run_timed_out_and_cancels_running_stages() {
    let f = fixture();
    let mut spec = plan(vec![
        with_config(stage("slow", "sleep", &[]), json!({ "ms": 30_000 })),
        stage("after", "echo", &["slow"]),
    ]);
    spec.timeout_ms = Some(100);
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::TimedOut);
    assert_eq!(
        state.error.expect("error").message,
        "run exceeded its timeout of 100ms"
    );
    assert_eq!(state.stages["slow"].phase, StagePhase::Cancelled);
    assert_eq!(
        state.stages["after"].skip_reason,
        Some(SkipReason::RunEnded)
    );
    assert_eq!(count(&events, "RunTimedOut"), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        f.sleep.cancelled.load(Ordering::SeqCst),
        1,
        "the running stage was cancelled"
    );
}

#[actix_rt::test]
async fn cancelling_a_run_stops_it_and_skips_what_did_not_run() {
    let f = fixture();
    let spec = plan(vec![
        with_config(stage("slow", "sleep", &[]), json!({ "ms": 30_000 })),
        stage("after", "echo", &["slow"]),
    ]);
    let mut handle = f
        .engine
        .start_observed(RunRequest::new("test", spec, json!({})))
        .await
        .expect("start");
    let mut events = handle.take_events().expect("observed");
    while let Some(event) = events.recv().await {
        if matches!(event.kind, EventKind::StageStarted { .. }) {
            break;
        }
    }
    assert!(f.engine.cancel(handle.run_id, "changed my mind"));
    let state = handle.finished().await.expect("end");
    assert_eq!(state.phase, RunPhase::Cancelled);
    assert_eq!(state.error.expect("reason").message, "changed my mind");
    assert_eq!(state.stages["slow"].phase, StagePhase::Cancelled);
    assert_eq!(state.stages["after"].phase, StagePhase::Skipped);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.sleep.cancelled.load(Ordering::SeqCst), 1);
    assert!(
        !f.engine.cancel(state.run_id, "again"),
        "an ended run is no longer running"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Failure and branches

#[actix_rt::test]
async fn a_failed_stage_skips_its_dependants_and_fails_the_run() {
    let f = fixture();
    let mut spec = plan(vec![
        stage("a", "echo", &[]),
        with_config(
            stage("b", "flaky", &["a"]),
            json!({ "fail_class": "config" }),
        ),
        stage("c", "echo", &["b"]),
        stage("d", "echo", &["c"]),
    ]);
    spec.parallelism = 1;
    let (state, _) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(state.stages["a"].phase, StagePhase::Succeeded);
    assert_eq!(state.stages["b"].phase, StagePhase::Failed);
    for id in ["c", "d"] {
        assert_eq!(state.stages[id].phase, StagePhase::Skipped, "{id}");
        assert_eq!(
            state.stages[id].skip_reason,
            Some(SkipReason::UpstreamFailed),
            "{id}"
        );
    }
    let error = state.error.expect("error");
    assert_eq!(error.stage.as_deref(), Some("b"));
    assert_eq!(error.message, "stage \"b\" failed: failure 1");
}

#[actix_rt::test]
async fn no_new_stage_starts_once_a_stage_failed_for_good() {
    let f = fixture();
    let mut spec = plan(vec![
        with_config(
            stage("bad", "flaky", &[]),
            json!({ "fail_class": "config" }),
        ),
        stage("independent", "echo", &[]),
    ]);
    spec.parallelism = 1;
    let (state, _) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(state.stages["independent"].phase, StagePhase::Skipped);
    assert_eq!(
        state.stages["independent"].skip_reason,
        Some(SkipReason::RunEnded)
    );
}

#[actix_rt::test]
async fn an_untaken_branch_is_skipped_and_the_join_still_runs() {
    let f = fixture();
    let spec = plan(vec![
        with_config(stage("route", "branch", &[]), json!({ "skip": ["no"] })),
        with_config(stage("yes", "echo", &["route"]), json!({ "took": "yes" })),
        with_config(stage("no", "echo", &["route"]), json!({ "took": "no" })),
        stage("no_more", "echo", &["no"]),
        with_config(
            stage("join", "echo", &["yes", "no_more"]),
            json!({ "from": "{{upstream.yes.took}}" }),
        ),
    ]);
    let (state, _) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded);
    assert_eq!(
        state.stages["no"].skip_reason,
        Some(SkipReason::BranchNotTaken)
    );
    assert_eq!(
        state.stages["no_more"].skip_reason,
        Some(SkipReason::BranchNotTaken)
    );
    assert_eq!(state.stages["join"].phase, StagePhase::Succeeded);
    assert_eq!(state.output, Some(json!({ "from": "yes" })));
}

#[actix_rt::test]
async fn component_log_lines_become_stage_log_events() {
    let f = fixture();
    let (state, events) = run_to_end(
        &f.engine,
        &f.store,
        plan(vec![stage("talk", "chatty", &[])]),
        json!({}),
    )
    .await;
    let log = events
        .iter()
        .find(|e| e.kind.name() == "StageLog")
        .expect("a StageLog event");
    let EventKind::StageLog {
        stage,
        message,
        data,
        ..
    } = &log.kind
    else {
        unreachable!()
    };
    assert_eq!(stage, "talk");
    assert_eq!(message, "hello from the stage");
    assert_eq!(data["key"], json!(format!("{}/talk/1", state.run_id)));
    assert_eq!(state.stages["talk"].logs, 1);
}

// ---------------------------------------------------------------------------------------------------------
// Acceptance

#[actix_rt::test]
async fn a_plan_with_an_unknown_component_or_a_cycle_is_refused_before_anything_is_recorded() {
    let f = fixture();
    let err = f
        .engine
        .start(RunRequest::new(
            "test",
            plan(vec![stage("a", "nope", &[])]),
            json!({}),
        ))
        .await;
    assert!(
        matches!(err, Err(EngineError::UnknownComponent { ref component, .. }) if component == "nope")
    );
    let err = f
        .engine
        .start(RunRequest::new(
            "test",
            plan(vec![stage("a", "echo", &["b"]), stage("b", "echo", &["a"])]),
            json!({}),
        ))
        .await;
    let message = err.err().expect("refused").to_string();
    assert_eq!(
        message,
        "invalid plan: stages: dependency cycle a -> b -> a"
    );
    assert!(f.store.unfinished_runs().expect("query").is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// The log: reopen, fold, resume

#[actix_rt::test]
async fn the_fold_of_a_reopened_log_equals_the_state_the_engine_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events");
    let state = {
        let store = EventStore::open(&path, StoreConfig::default()).expect("open");
        let engine = Engine::new(
            store.clone(),
            registry(&Sleep::default(), &Flaky::default()),
            EngineConfig::default(),
        );
        let spec = plan(vec![stage("a", "echo", &[]), stage("b", "chatty", &["a"])]);
        let state = engine
            .start(RunRequest::new("test", spec, json!({"x": 1})))
            .await
            .expect("start")
            .finished()
            .await;
        state.expect("end")
    };
    let reopened = EventStore::open(&path, StoreConfig::default()).expect("reopen");
    assert_eq!(
        reopened.fold(state.run_id).expect("fold"),
        Some(state.clone())
    );
    let summary = reopened
        .summary(state.run_id)
        .expect("summary")
        .expect("present");
    assert_eq!(summary.phase, RunPhase::Succeeded);
}

#[actix_rt::test]
async fn resume_reruns_an_interrupted_stage_as_a_new_attempt_and_keeps_finished_ones() {
    let f = fixture_with(Durability::Always);
    let spec = plan(vec![
        with_config(stage("a", "echo", &[]), json!({ "v": 1 })),
        with_config(
            stage("b", "echo", &["a"]),
            json!({ "v": "{{upstream.a.v}}" }),
        ),
    ]);
    // The log of a run cut off while `b` was running: `a` succeeded, `b` attempt 1 started.
    let run = uuid::Uuid::now_v7();
    f.store
        .append_durable(
            run,
            vec![
                accepted(serde_json::to_value(&spec).expect("plan"), 3, None),
                EventKind::RunStarted,
                EventKind::StageStarted {
                    stage: "a".into(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                },
                EventKind::StageSucceeded {
                    stage: "a".into(),
                    attempt: 1,
                    output: json!({ "v": 1 }),
                    skip: vec![],
                    reused_from: None,
                },
                EventKind::StageStarted {
                    stage: "b".into(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                },
            ],
        )
        .await
        .expect("append");
    let handles = f.engine.resume_all().await.expect("resume");
    assert_eq!(handles.len(), 1);
    let state = handles
        .into_iter()
        .next()
        .expect("one")
        .finished()
        .await
        .expect("end");
    assert_eq!(state.phase, RunPhase::Succeeded);
    assert_eq!(state.generation, 3);
    assert_eq!(
        state.stages["a"].attempts, 1,
        "a finished stage is not run again"
    );
    assert_eq!(
        state.stages["b"].attempts, 2,
        "the interrupted stage runs as a new attempt"
    );
    assert_eq!(state.output, Some(json!({ "v": 1 })));
    let events = f.store.events(run).expect("events");
    let interrupted = stage_events(&events, "StageFailed", "b")
        .next()
        .expect("interruption recorded");
    let EventKind::StageFailed { error, .. } = &interrupted.kind else {
        unreachable!()
    };
    assert_eq!(
        error.message,
        "attempt 1 was interrupted by an engine restart"
    );
    assert!(
        f.engine
            .resume_all()
            .await
            .expect("resume again")
            .is_empty(),
        "nothing left to resume"
    );
}

#[actix_rt::test]
async fn cancel_unfinished_ends_an_orphaned_run_without_running_it_and_leaves_others_alone() {
    let f = fixture_with(Durability::Always);
    let spec = plan(vec![stage("a", "echo", &[])]);
    let run = uuid::Uuid::now_v7();
    f.store
        .append_durable(
            run,
            vec![
                accepted(serde_json::to_value(&spec).expect("plan"), 1, Some("gone")),
                EventKind::RunStarted,
                EventKind::StageStarted {
                    stage: "a".into(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                },
            ],
        )
        .await
        .expect("append");
    let reason = "its PipelineRun was deleted";
    assert!(
        f.engine
            .cancel_unfinished(run, reason)
            .await
            .expect("cancel")
    );
    let state = f.store.fold(run).expect("fold").expect("state");
    assert_eq!(state.phase, RunPhase::Cancelled);
    assert_eq!(state.error.map(|e| e.message), Some(reason.to_string()));
    assert_eq!(state.stages["a"].attempts, 1, "the stage was not run again");
    assert!(
        !f.engine
            .cancel_unfinished(run, reason)
            .await
            .expect("again"),
        "an ended run stays as it ended"
    );
    assert!(
        !f.engine
            .cancel_unfinished(uuid::Uuid::now_v7(), reason)
            .await
            .expect("unknown"),
        "a run not in the log is not invented"
    );
    // A run this engine is running is cancelled through `cancel`, not behind its actor's back.
    let running = f
        .engine
        .start(RunRequest::new(
            "test",
            plan(vec![with_config(
                stage("wait", "sleep", &[]),
                json!({ "ms": 60_000 }),
            )]),
            json!({}),
        ))
        .await
        .expect("start");
    assert!(
        !f.engine
            .cancel_unfinished(running.run_id, reason)
            .await
            .expect("active")
    );
    assert!(f.engine.cancel(running.run_id, "done"));
    assert_eq!(
        running.finished().await.expect("end").phase,
        RunPhase::Cancelled
    );
}

#[actix_rt::test]
async fn a_run_whose_output_breaks_the_output_schema_fails_naming_each_problem() {
    let f = fixture();
    let spec = |v: Value| {
        let mut spec = plan(vec![with_config(
            stage("a", "echo", &[]),
            json!({ "v": v }),
        )]);
        spec.output_schema = Some(json!({
            "type": "object", "required": ["v"], "properties": {"v": {"type": "integer"}}
        }));
        spec
    };
    let (state, events) = run_to_end(&f.engine, &f.store, spec(json!(3)), json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    assert_eq!(state.output, Some(json!({ "v": 3 })));
    assert_eq!(count(&events, "RunSucceeded"), 1);

    let (state, events) = run_to_end(&f.engine, &f.store, spec(json!("three")), json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.error.expect("error");
    assert!(
        error
            .message
            .starts_with("the run's output does not match outputSchema: output.v: \"three\" is not of type \"integer\""),
        "{}",
        error.message
    );
    assert_eq!(error.stage, None, "no stage failed");
    assert_eq!(state.stages["a"].phase, StagePhase::Succeeded);
    assert_eq!(count(&events, "RunFailed"), 1);
}

#[actix_rt::test]
async fn resume_fails_a_run_whose_plan_cannot_be_read() {
    let f = fixture();
    let run = uuid::Uuid::now_v7();
    f.store
        .append_durable(
            run,
            vec![accepted(json!({ "stages": "not a list" }), 0, None)],
        )
        .await
        .expect("append");
    assert!(f.engine.resume_all().await.expect("resume").is_empty());
    let state = f.store.fold(run).expect("fold").expect("state");
    assert_eq!(state.phase, RunPhase::Failed);
    assert!(
        state
            .error
            .expect("error")
            .message
            .starts_with("the run's plan cannot be read")
    );
}

/// The observer (metrics, NATS lifecycle) sees a run that resume ends `Failed` because its record cannot
/// be used, as it sees every other run's end.
#[actix_rt::test]
async fn the_observer_sees_the_failure_of_a_run_whose_plan_cannot_be_resumed() {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let f = fixture_full(
        Durability::Batch,
        EngineConfig {
            observer: Some(Arc::new(move |o: &flowmason_actors::Observation<'_>| {
                if let Ok(mut seen) = sink.lock() {
                    seen.push(format!("{} {:?}", o.event.kind.name(), o.before.phase));
                }
            })),
            ..EngineConfig::default()
        },
    );
    let run = uuid::Uuid::now_v7();
    f.store
        .append_durable(
            run,
            vec![accepted(json!({ "stages": "not a list" }), 0, None)],
        )
        .await
        .expect("append");
    assert!(f.engine.resume_all().await.expect("resume").is_empty());
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("RunFailed Pending"),
        "{seen:?}"
    );
}

#[actix_rt::test]
async fn every_run_gets_exactly_one_terminal_event_under_concurrency() {
    let f = fixture_with(Durability::Always);
    let spec = plan(vec![
        stage("a", "echo", &[]),
        stage("b", "echo", &["a"]),
        stage("c", "echo", &["a"]),
    ]);
    let handles: Vec<_> = futures::future::join_all((0..50).map(|i| {
        f.engine
            .start(RunRequest::new("test", spec.clone(), json!({ "i": i })))
    }))
    .await
    .into_iter()
    .map(|h| h.expect("start"))
    .collect();
    let mut ended = std::collections::HashSet::new();
    for handle in handles {
        let state = handle.finished().await.expect("end");
        assert_eq!(state.phase, RunPhase::Succeeded);
        ended.insert(state.run_id);
        let events = f.store.events(state.run_id).expect("events");
        assert_eq!(events.iter().filter(|e| e.kind.is_terminal()).count(), 1);
    }
    assert_eq!(ended.len(), 50);
    assert!(f.store.unfinished_runs().expect("query").is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Environment, redaction, retry-after

const SECRET: &str = "sk-live-0123456789";

/// A resolver that gives `API_KEY` (secret) and `MODE` (not secret), counting its calls.
fn secret_env(calls: Arc<AtomicU32>) -> EnvResolver {
    Arc::new(move |_state| {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Ok(ResolvedEnv {
                vars: BTreeMap::from([
                    ("API_KEY".to_string(), SECRET.to_string()),
                    ("MODE".to_string(), "fast".to_string()),
                ]),
                secrets: vec![SECRET.to_string()],
            })
        })
    })
}

#[actix_rt::test]
async fn an_environment_that_cannot_be_resolved_fails_the_run_before_any_stage_starts() {
    let message =
        r#"env[0].valueFrom.secretKeyRef: secret "llm-secrets" has no key "anthropic-key""#;
    let f = fixture_env(Arc::new(move |_| {
        Box::pin(async move { Err(message.to_string()) })
    }));
    let mut handle = f
        .engine
        .start_observed(RunRequest::new(
            "test",
            plan(vec![stage("a", "echo", &[])]),
            json!({}),
        ))
        .await
        .expect("start");
    let mut observed = handle.take_events().expect("observed");
    let state = handle.finished().await.expect("end");
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(
        state.error.expect("error").message,
        format!("environment: {message}")
    );
    let events = f.store.events(state.run_id).expect("events");
    let names: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["RunAccepted", "RunFailed"]);
    let mut seen = Vec::new();
    while let Ok(event) = observed.try_recv() {
        seen.push(event.kind.name());
    }
    assert_eq!(seen, names);
}

#[actix_rt::test]
async fn secret_values_are_masked_in_every_recorded_event() {
    let f = fixture_env(secret_env(Arc::new(AtomicU32::new(0))));
    let config = json!({ "key": "{{env.API_KEY}}", "header": "Bearer {{env.API_KEY}}", "mode": "{{env.MODE}}" });
    let mut request = RunRequest::new(
        "test",
        plan(vec![
            with_config(stage("echo", "echo", &[]), config.clone()),
            with_config(stage("leak", "leaky", &["echo"]), config),
        ]),
        json!({}),
    );
    request.secrets.push("another-secret".into());
    let state = f
        .engine
        .start(request)
        .await
        .expect("start")
        .finished()
        .await
        .expect("end");
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(
        state.stages["echo"].output,
        Some(json!({ "key": "***", "header": "Bearer ***", "mode": "fast" }))
    );
    let events = f.store.events(state.run_id).expect("events");
    assert_eq!(count(&events, "StageLog"), 1);
    let log = serde_json::to_string(&events).expect("serialize");
    assert!(!log.contains(SECRET), "a secret value is in the log: {log}");
    assert!(log.contains("Bearer ***"));
    let status = serde_json::to_string(&state).expect("serialize");
    assert!(!status.contains(SECRET));
}

#[actix_rt::test]
async fn each_attempt_records_its_rendered_input_with_secrets_masked() {
    let f = fixture_env(secret_env(Arc::new(AtomicU32::new(0))));
    let mut b = with_config(
        stage("b", "echo", &["a"]),
        json!({ "greeting": "hi {{input.name}}", "key": "{{env.API_KEY}}" }),
    );
    b.input_mapping
        .insert("upstream".into(), json!("{{upstream.a.v}}"));
    let spec = plan(vec![
        with_config(stage("a", "echo", &[]), json!({ "v": 7 })),
        b,
        stage("c", "echo", &["b"]),
    ]);
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({ "name": "Ada" })).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let inputs: Vec<(&str, &Value)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StageStarted { stage, input, .. } => Some((stage.as_str(), input)),
            _ => None,
        })
        .collect();
    let rendered = json!({ "greeting": "hi Ada", "key": "***", "upstream": 7 });
    assert_eq!(
        inputs,
        [
            ("a", &json!({ "v": 7 })),
            ("b", &rendered),
            ("c", &Value::Null)
        ]
    );
    assert_eq!(state.stages["b"].input, Some(rendered));
    assert_eq!(state.stages["c"].input, None, "a null input is not kept");
}

#[actix_rt::test]
async fn resume_resolves_the_environment_again_and_masks_it() {
    let calls = Arc::new(AtomicU32::new(0));
    let f = fixture_env(secret_env(calls.clone()));
    let run = uuid::Uuid::now_v7();
    let spec = plan(vec![with_config(
        stage("a", "echo", &[]),
        json!({ "key": "{{env.API_KEY}}" }),
    )]);
    f.store
        .append_durable(
            run,
            vec![accepted(
                serde_json::to_value(&spec).expect("plan"),
                0,
                None,
            )],
        )
        .await
        .expect("append");
    let handles = f.engine.resume_all().await.expect("resume");
    assert_eq!(handles.len(), 1);
    let state = handles
        .into_iter()
        .next()
        .expect("handle")
        .finished()
        .await
        .expect("end");
    assert_eq!(state.phase, RunPhase::Succeeded);
    assert_eq!(state.output, Some(json!({ "key": "***" })));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn a_component_retry_after_is_a_floor_under_the_retry_backoff() {
    let f = fixture();
    let throttled = Throttled::default();
    let mut registry = Registry::new();
    registry.register("throttled", throttled.clone());
    let engine = Engine::new(f.store.clone(), registry, EngineConfig::default());
    let mut spec = plan(vec![with_config(
        stage("a", "throttled", &[]),
        json!({ "retry_after_ms": 300 }),
    )]);
    spec.retry = RetryPolicy {
        limit: 2,
        initial_ms: 1,
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    let state = engine
        .start(RunRequest::new("test", spec, json!({})))
        .await
        .expect("start")
        .finished()
        .await
        .expect("end");
    assert_eq!(state.phase, RunPhase::Succeeded);
    let events = f.store.events(state.run_id).expect("events");
    let retry_at = events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::StageRetryScheduled { at, .. } => Some(at),
            _ => None,
        })
        .expect("a retry was scheduled");
    let calls = throttled.calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 2);
    assert!(
        retry_at - calls[0] >= 300_000,
        "retry due {}us after the throttled call, asked for 300ms",
        retry_at - calls[0]
    );
    assert!(calls[1] - calls[0] >= 300_000);
}

// ---------------------------------------------------------------------------------------------------------
// Reuse (rerun from the failed stage)

#[actix_rt::test]
async fn reused_stages_are_recorded_as_succeeded_and_never_executed() {
    let f = fixture();
    let old = uuid::Uuid::now_v7();
    let spec = plan(vec![
        with_config(stage("a", "flaky", &[]), json!({ "fail_times": 0 })),
        with_config(
            stage("route", "branch", &["a"]),
            json!({ "skip": ["never"] }),
        ),
        with_config(
            stage("never", "flaky", &["route"]),
            json!({ "fail_times": 0 }),
        ),
        with_config(
            stage("c", "echo", &["route"]),
            json!({ "from_a": "{{upstream.a.v}}" }),
        ),
    ]);
    let mut request = RunRequest::new("test", spec.clone(), json!({}));
    let stages = [
        ("a", json!({ "v": 7 }), vec![]),
        ("route", json!({}), vec!["never".to_string()]),
    ]
    .into_iter()
    .map(|(id, output, skip)| (id.to_string(), ReusedStage { output, skip }))
    .collect();
    request.reuse = Some(Reuse { from: old, stages });
    let state = f
        .engine
        .start(request)
        .await
        .expect("start")
        .finished()
        .await
        .expect("end");
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    assert_eq!(f.flaky.calls.load(Ordering::SeqCst), 0, "reused stages ran");
    let events = f.store.events(state.run_id).expect("events");
    for id in ["a", "route"] {
        let reused: Vec<_> = stage_events(&events, "StageSucceeded", id).collect();
        assert!(
            matches!(&reused[..], [e] if matches!(&e.kind, EventKind::StageSucceeded { reused_from: Some(r), attempt: 0, .. } if *r == old)),
            "{id}: {reused:?}"
        );
        assert_eq!(stage_events(&events, "StageStarted", id).count(), 0);
        assert_eq!(state.stage(id).reused_from, Some(old));
    }
    assert_eq!(state.stage("never").phase, StagePhase::Skipped);
    assert_eq!(state.stage("c").phase, StagePhase::Succeeded);
    assert_eq!(state.output, Some(json!({ "c": { "from_a": 7 } })));
    // Reused stages are in the log before anything runs: RunAccepted, RunStarted, then the reused ones.
    assert_eq!(events[1].kind, EventKind::RunStarted);
    assert_eq!(events[2].kind.stage(), Some("a"));

    // A stage that is not in the plan is refused before anything is recorded.
    let mut bad = RunRequest::new("test", spec, json!({}));
    bad.reuse = Some(Reuse {
        from: old,
        stages: [(
            "ghost".to_string(),
            ReusedStage {
                output: json!(1),
                skip: vec![],
            },
        )]
        .into_iter()
        .collect(),
    });
    let err = f.engine.start(bad).await.err().expect("refused");
    assert!(err.to_string().contains("\"ghost\""), "{err}");
}

#[actix_rt::test]
async fn context_fields_resolve_in_both_spellings() {
    let f = fixture();
    let spec = plan(vec![with_config(
        stage("who", "echo", &[]),
        json!({
            "camel": "{{context.runId}}/{{context.stageId}}/{{context.attempt}}",
            "snake": "{{context.run_id}}/{{context.stage_id}}/{{context.attempt}}",
            "pipeline": "{{context.pipeline}}",
        }),
    )]);
    let (state, _) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    let expected = format!("{}/who/1", state.run_id);
    assert_eq!(
        state.output,
        Some(json!({ "camel": expected, "snake": expected, "pipeline": "test" }))
    );
}

// ---------------------------------------------------------------------------------------------------------
// Crashes: engines in child processes (this test binary run again) that abort or stop gracefully.

/// Set in a child process of the crash tests: what the child does (see [`engine_child`]).
const CHILD_ROLE: &str = "FM_TEST_ENGINE_CHILD";
/// The child's data dir.
const CHILD_DIR: &str = "FM_TEST_ENGINE_DIR";

/// Aborts the process, as a stack overflow or an out-of-memory kill would end it.
struct Abort;
impl Component for Abort {
    fn execute(
        &self,
        _input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        std::process::abort()
    }
}

/// Waits until the file named by its input's `path` exists, then succeeds.
struct Gate;
impl Component for Gate {
    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let path = input
                .get("path")
                .and_then(Value::as_str)
                .map(std::path::PathBuf::from)
                .ok_or_else(|| ComponentError::config("path: required"))?;
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(json!({ "opened": true }).into())
        })
    }
}

/// What a child engine does, by role: `poison` starts a run whose stage aborts the process; `gated`
/// starts a run that waits for the gate file and then stops gracefully; `resume` resumes every unfinished
/// run and stops gracefully once they have ended; `resume-and-stop` resumes them and stops gracefully at
/// once; `gated-then-resume` starts a gated run, then resumes the others (the poison run aborts).
async fn engine_child(role: &str, dir: &std::path::Path) {
    // Every event durable before it is acted on: the log shows exactly what ran before the abort.
    let config = StoreConfig {
        durability: Durability::Always,
        ..StoreConfig::default()
    };
    let store = EventStore::open(dir.join("events"), config).expect("open");
    let mut registry = Registry::new();
    registry.register("abort", Abort).register("gate", Gate);
    let engine = Engine::new(store.clone(), registry, EngineConfig::default());
    let gated = || {
        let gate = dir.join("gate").display().to_string();
        RunRequest::new(
            "gated",
            plan(vec![with_config(
                stage("wait", "gate", &[]),
                json!({ "path": gate }),
            )]),
            json!({}),
        )
    };
    match role {
        "poison" => {
            let spec = plan(vec![stage("boom", "abort", &[])]);
            let handle = engine
                .start(RunRequest::new("poison", spec, json!({})))
                .await
                .expect("start");
            let _ = handle.finished().await;
            panic!("the poison run ended instead of aborting the process");
        }
        "gated" => {
            engine.start(gated()).await.expect("start");
        }
        "gated-then-resume" => {
            engine.start(gated()).await.expect("start");
            for handle in engine.resume_all().await.expect("resume") {
                let _ = handle.finished().await;
            }
        }
        "resume" => {
            for handle in engine.resume_all().await.expect("resume") {
                handle.finished().await.expect("end");
            }
        }
        "resume-and-stop" => {
            engine.resume_all().await.expect("resume");
        }
        other => panic!("unknown child role {other:?}"),
    }
    engine.shutdown().expect("shutdown");
    store.flush().expect("flush");
    // Leaves at once, with runs still in flight: a graceful stop, as `fm serve` on SIGTERM.
    std::process::exit(0);
}

/// Runs this test binary's test `test` as a child engine with `role`; returns whether it exited normally
/// (false: it aborted).
fn run_child(test: &str, role: &str, dir: &std::path::Path) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().expect("test binary");
    let status = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_DIR, dir)
        .status()
        .expect("run child");
    // SIGABRT
    match status.signal() {
        Some(6) => false,
        _ => {
            assert!(status.success(), "child {role} failed: {status}");
            true
        }
    }
}

fn runs_by_pipeline(store: &EventStore) -> BTreeMap<String, (RunState, Vec<Event>)> {
    let page = store
        .query(&flowmason_store::RunQuery::default())
        .expect("query");
    page.runs
        .iter()
        .map(|summary| {
            let state = store.fold(summary.run_id).expect("fold").expect("present");
            let events = store.events(summary.run_id).expect("events");
            (state.pipeline.clone(), (state, events))
        })
        .collect()
}

fn resumes(events: &[Event]) -> Vec<(u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RunResumed {
                session,
                after_crash,
            } => Some((session, after_crash)),
            _ => None,
        })
        .collect()
}

#[actix_rt::test]
async fn a_run_in_flight_at_two_consecutive_crashes_is_quarantined_and_the_others_resume() {
    const TEST: &str =
        "a_run_in_flight_at_two_consecutive_crashes_is_quarantined_and_the_others_resume";
    if let (Ok(role), Some(dir)) = (std::env::var(CHILD_ROLE), std::env::var_os(CHILD_DIR)) {
        return engine_child(&role, std::path::Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        !run_child(TEST, "poison", dir.path()),
        "the poison stage aborts the first engine"
    );
    assert!(
        !run_child(TEST, "gated-then-resume", dir.path()),
        "resumed once, the poison run aborts the second engine (with the gated run in flight)"
    );
    std::fs::write(dir.path().join("gate"), b"open").expect("open the gate");
    assert!(
        run_child(TEST, "resume", dir.path()),
        "the third engine does not resume the poison run, and finishes the other one"
    );

    let store = EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("open");
    let runs = runs_by_pipeline(&store);
    let (poison, events) = &runs["poison"];
    assert_eq!(poison.phase, RunPhase::Failed);
    let error = poison.error.as_ref().expect("error");
    assert_eq!(error.reason(), Some(flowmason_store::QUARANTINED));
    assert!(
        error
            .message
            .starts_with("quarantined: in flight at 2 consecutive crashes of the engine"),
        "{}",
        error.message
    );
    assert_eq!(
        resumes(events),
        [(2, true)],
        "resumed once, by the engine after the first crash"
    );
    assert_eq!(
        stage_events(events, "StageStarted", "boom").count(),
        2,
        "the aborting stage never ran a third time"
    );
    let (gated, events) = &runs["gated"];
    assert_eq!(gated.phase, RunPhase::Succeeded, "{:?}", gated.error);
    assert_eq!(resumes(events), [(3, true)]);
}

#[actix_rt::test]
async fn a_run_in_flight_at_graceful_restarts_is_resumed_every_time() {
    const TEST: &str = "a_run_in_flight_at_graceful_restarts_is_resumed_every_time";
    if let (Ok(role), Some(dir)) = (std::env::var(CHILD_ROLE), std::env::var_os(CHILD_DIR)) {
        return engine_child(&role, std::path::Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(run_child(TEST, "gated", dir.path()));
    for _ in 0..3 {
        assert!(run_child(TEST, "resume-and-stop", dir.path()));
    }
    std::fs::write(dir.path().join("gate"), b"open").expect("open the gate");
    assert!(run_child(TEST, "resume", dir.path()));

    let store = EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("open");
    let runs = runs_by_pipeline(&store);
    let (gated, events) = &runs["gated"];
    assert_eq!(gated.phase, RunPhase::Succeeded, "{:?}", gated.error);
    assert_eq!(
        resumes(events),
        [(2, false), (3, false), (4, false), (5, false)],
        "every restart was graceful"
    );
}

#[path = "engine/event_log.rs"]
mod event_log;
#[path = "support/plans.rs"]
mod plans;

use plans::{plan, run_to_end, stage, with_config};

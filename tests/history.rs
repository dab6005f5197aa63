//! History, retention, reruns, metrics and health through their HTTP routers, served on 127.0.0.1:0
//! in the test, over a real sled event log and real engine.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use flowmason::health::HealthState;
use flowmason::history::retention::{self, RetentionPolicy};
use flowmason::history::{rerun, stats};
use flowmason::http::history::HistoryState;
use flowmason::http::metrics::MetricsState;
use flowmason::metrics::Metrics;
use flowmason_actors::{
    Component, ComponentError, ComponentOutput, Engine, EngineConfig, PlanSpec, Registry,
    RunRequest, StageContext, StagePlan,
};
use flowmason_store::{
    Durability, Event, EventKind, EventStore, RunError, RunId, RunPhase, StoreConfig, Trigger,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "support/plans.rs"]
mod plans;

use plans::{configured, plan};

// ---------------------------------------------------------------------------------------------------------
// Fixtures

/// A local HTTP server standing in for a stage's side effect: counts calls per stage id, and answers
/// 500 for the stages in `failing`.
#[derive(Clone, Default)]
struct SideEffects {
    hits: Arc<Mutex<HashMap<String, u32>>>,
    failing: Arc<Mutex<HashSet<String>>>,
}

impl SideEffects {
    fn hits(&self, stage: &str) -> u32 {
        self.hits
            .lock()
            .expect("lock")
            .get(stage)
            .copied()
            .unwrap_or(0)
    }
    fn set_failing(&self, stage: &str, failing: bool) {
        let mut set = self.failing.lock().expect("lock");
        if failing {
            set.insert(stage.into());
        } else {
            set.remove(stage);
        }
    }
}

async fn side_effect(State(s): State<SideEffects>, Path(stage): Path<String>) -> StatusCode {
    *s.hits
        .lock()
        .expect("lock")
        .entry(stage.clone())
        .or_default() += 1;
    if s.failing.lock().expect("lock").contains(&stage) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// Serves a router on 127.0.0.1:0; returns its base URL.
async fn serve(router: axum::Router, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let served = flowmason::http::serve(listener, router, stop.clone()).expect("serve");
    format!("http://{}", served.addr)
}

/// Calls `{url}/{stage id}`; fails (not retried) when the answer is not 2xx.
struct Hit {
    http: reqwest::Client,
}
impl Component for Hit {
    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let http = self.http.clone();
        let stage = ctx.stage_id.clone();
        Box::pin(async move {
            let base = input.get("url").and_then(Value::as_str).unwrap_or_default();
            let response = http
                .post(format!("{base}/{stage}"))
                .send()
                .await
                .map_err(|e| ComponentError::client(e.to_string()))?;
            if !response.status().is_success() {
                return Err(ComponentError::client(format!(
                    "{stage}: {}",
                    response.status()
                )));
            }
            Ok(json!({ "stage": stage }).into())
        })
    }
}

fn stage(id: &str, deps: &[&str], url: &str) -> StagePlan {
    configured(id, "hit", deps, json!({ "url": url }))
}

/// a -> b -> c -> d, and a -> e.
fn diamond_plan(url: &str) -> PlanSpec {
    PlanSpec {
        parallelism: 4,
        ..plan(vec![
            stage("a", &[], url),
            stage("b", &["a"], url),
            stage("c", &["b"], url),
            stage("d", &["c"], url),
            stage("e", &["a"], url),
        ])
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: EventStore,
    engine: Engine,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// The history, metrics and health routes together.
    api: String,
    effects: SideEffects,
    /// The side-effect server.
    effects_url: String,
    http: reqwest::Client,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(
        dir.path().join("events"),
        StoreConfig {
            durability: Durability::Batch,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    assert!(store.observe_writes(metrics.store_observer()));
    flowmason::llm::http::install_crypto_provider();
    let http = reqwest::Client::new();
    let mut registry = Registry::new();
    registry.register("hit", Hit { http: http.clone() });
    let engine = Engine::new(
        store.clone(),
        registry,
        EngineConfig {
            observer: Some(metrics.engine_observer()),
            ..EngineConfig::default()
        },
    );
    let stop = CancellationToken::new();
    let effects = SideEffects::default();
    let effects_url = serve(
        axum::Router::new()
            .route("/{stage}", axum::routing::post(side_effect))
            .with_state(effects.clone()),
        &stop,
    )
    .await;
    let router = flowmason::http::history::router(HistoryState {
        store: store.clone(),
        rerun: Some(rerun::engine_rerunner(engine.clone())),
        stop: stop.clone(),
    })
    .merge(flowmason::http::metrics::router(
        MetricsState::new(metrics.clone()).with_engine(engine.clone()),
    ))
    .merge(flowmason::health::router(
        HealthState::new().store(store.clone()),
    ));
    let api = serve(router, &stop).await;
    Fixture {
        _dir: dir,
        store,
        engine,
        metrics,
        stop,
        api,
        effects,
        effects_url,
        http,
    }
}

impl Fixture {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .expect("request");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let body = response.json().await.expect("json body");
        (status, body)
    }

    async fn run(&self, pipeline: &str) -> RunId {
        let request = RunRequest::new(pipeline, diamond_plan(&self.effects_url), json!({"x": 1}));
        let state = self
            .engine
            .start(request)
            .await
            .expect("start")
            .finished()
            .await
            .expect("end");
        state.run_id
    }

    /// Follows a run's events as NDJSON until the stream ends (after the terminal event).
    async fn follow_to_end(&self, run: &str) -> Vec<Event> {
        let mut response = self
            .http
            .get(format!("{}/api/v1/runs/{run}/events?follow=true", self.api))
            .send()
            .await
            .expect("follow");
        let mut text = Vec::new();
        while let Some(chunk) = response.chunk().await.expect("chunk") {
            text.extend_from_slice(&chunk);
        }
        String::from_utf8(text)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("event line"))
            .collect()
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["runId"].as_str().expect("runId").to_string())
        .collect()
}

/// A finished (or, with `end: None`, running) run with given times, written through `import_runs`.
fn synthetic(
    namespace: &str,
    pipeline: &str,
    trigger: Trigger,
    labels: &[(&str, &str)],
    accepted_at: i64,
    end: Option<EventKind>,
) -> (RunId, Vec<Event>) {
    let mut events = vec![
        Event {
            seq: 0,
            at: accepted_at,
            kind: EventKind::RunAccepted {
                pipeline: pipeline.into(),
                namespace: namespace.into(),
                generation: 1,
                trigger,
                run_name: None,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                plan: json!({}),
                inputs: json!({}),
            },
        },
        Event {
            seq: 1,
            at: accepted_at + 1,
            kind: EventKind::RunStarted,
        },
    ];
    if let Some(kind) = end {
        events.push(Event {
            seq: 2,
            at: accepted_at + 1_000_000,
            kind,
        });
    }
    (RunId::now_v7(), events)
}

fn succeeded() -> Option<EventKind> {
    Some(EventKind::RunSucceeded { output: json!(1) })
}

fn failed() -> Option<EventKind> {
    Some(EventKind::RunFailed {
        error: RunError {
            message: "boom".into(),
            stage: None,
            details: Value::Null,
        },
    })
}

const HOUR: i64 = 3_600_000_000;

fn now() -> i64 {
    flowmason::history::now_micros()
}

// ---------------------------------------------------------------------------------------------------------
// Listing

#[actix_rt::test]
async fn runs_filter_newest_first_and_page_without_missing_or_repeating_while_runs_arrive() {
    let f = fixture().await;
    let base = now() - 100 * HOUR;
    let runs = vec![
        synthetic(
            "ci",
            "build",
            Trigger::Manual,
            &[("team", "a")],
            base,
            succeeded(),
        ),
        synthetic(
            "ci",
            "build",
            Trigger::Cron,
            &[("team", "b")],
            base + HOUR,
            failed(),
        ),
        synthetic(
            "ci",
            "deploy",
            Trigger::Webhook,
            &[("team", "a")],
            base + 2 * HOUR,
            succeeded(),
        ),
        synthetic("prod", "build", Trigger::Cron, &[], base + 3 * HOUR, None),
        synthetic(
            "ci",
            "build",
            Trigger::Cron,
            &[("team", "a"), ("tier", "1")],
            base + 4 * HOUR,
            failed(),
        ),
    ];
    f.store.import_runs(&runs).expect("import");
    let id = |i: usize| runs[i].0.to_string();

    let (status, page) = f.get("/api/v1/runs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), [id(4), id(3), id(2), id(1), id(0)]);
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("namespace=ci&pipeline=build", vec![id(4), id(1), id(0)]),
        ("pipeline=build", vec![id(4), id(3), id(1), id(0)]),
        ("phase=Failed", vec![id(4), id(1)]),
        ("phase=Failed&phase=Running", vec![id(4), id(3), id(1)]),
        ("phase=Succeeded,Running", vec![id(3), id(2), id(0)]),
        ("trigger=cron", vec![id(4), id(3), id(1)]),
        ("labelSelector=team%3Da", vec![id(4), id(2), id(0)]),
        ("labelSelector=team%3Da,tier%3D1", vec![id(4)]),
        ("namespace=ci&phase=Failed&trigger=cron", vec![id(4), id(1)]),
    ];
    for (query, expected) in cases {
        let (status, page) = f.get(&format!("/api/v1/runs?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        assert_eq!(ids(&page), expected, "{query}");
    }
    // since is inclusive and until exclusive, on acceptance; RFC 3339 or Unix micros.
    let (_, page) = f
        .get(&format!(
            "/api/v1/runs?since={}&until={}",
            base + HOUR,
            base + 4 * HOUR
        ))
        .await;
    assert_eq!(ids(&page), [id(3), id(2), id(1)]);
    let since = chrono::DateTime::from_timestamp_micros(base + 3 * HOUR)
        .expect("time")
        .to_rfc3339();
    let (_, page) = f
        .get(&format!("/api/v1/runs?since={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(ids(&page), [id(4), id(3)]);

    // Bad parameters name the field and the value.
    for (query, needle) in [
        ("phase=Done", "phase \"Done\""),
        ("since=yesterday", "since \"yesterday\""),
        ("limit=many", "limit \"many\""),
        ("labelSelector=team", "labelSelector \"team\""),
        ("continue=nope", "nope"),
    ] {
        let (status, body) = f.get(&format!("/api/v1/runs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let message = body["error"].as_str().expect("error");
        assert!(message.contains(needle), "{query}: {message}");
    }

    // Pagination while new runs keep arriving: every run that existed is listed once, in order.
    let mut more = Vec::new();
    for i in 0..20 {
        more.push(synthetic(
            "ci",
            "build",
            Trigger::Manual,
            &[],
            base + (10 + i) * HOUR,
            succeeded(),
        ));
    }
    f.store.import_runs(&more).expect("import");
    for filter in [
        "",
        "&namespace=ci&pipeline=build",
        "&phase=Succeeded&phase=Failed",
    ] {
        let (_, all) = f.get(&format!("/api/v1/runs?limit=1000{filter}")).await;
        let expected = ids(&all);
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut arrivals = 0;
        loop {
            let cont = token
                .as_ref()
                .map(|t| format!("&continue={t}"))
                .unwrap_or_default();
            let (status, page) = f.get(&format!("/api/v1/runs?limit=3{filter}{cont}")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            assert!(page["runs"].as_array().expect("runs").len() <= 3);
            seen.extend(ids(&page));
            // A newer run arrives between pages.
            arrivals += 1;
            f.store
                .import_runs(&[synthetic(
                    "ci",
                    "build",
                    Trigger::Manual,
                    &[],
                    now() + arrivals,
                    succeeded(),
                )])
                .expect("import");
            match page["continueToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{filter}: a run was repeated");
        assert_eq!(seen, expected, "{filter}: a run was missed or reordered");
    }
}

// ---------------------------------------------------------------------------------------------------------
// One run, its events, stats

#[actix_rt::test]
async fn a_run_shows_stages_attempts_durations_errors_and_pipeline_stats_count_it() {
    let f = fixture().await;
    f.effects.set_failing("c", true);
    let failed_run = f.run("shop").await;
    f.effects.set_failing("c", false);
    let ok_run = f.run("shop").await;

    let (status, detail) = f.get(&format!("/api/v1/runs/{failed_run}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["phase"], "Failed");
    assert_eq!(detail["pipeline"], "shop");
    assert!(detail["durationSeconds"].as_f64().is_some(), "{detail}");
    let stages = detail["stages"].as_array().expect("stages");
    let order: Vec<&str> = stages
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(order, ["a", "b", "c", "d", "e"]);
    let c = &stages[2];
    assert_eq!(c["phase"], "Failed");
    assert_eq!(c["attempts"], 1);
    assert_eq!(c["attemptHistory"].as_array().expect("attempts").len(), 1);
    assert!(
        c["error"]["message"]
            .as_str()
            .expect("message")
            .contains("500"),
        "{c}"
    );
    assert!(c["durationSeconds"].as_f64().is_some());
    assert_eq!(stages[3]["phase"], "Skipped");
    assert_eq!(stages[0]["output"], json!({ "stage": "a" }));
    assert!(
        detail["error"]["message"]
            .as_str()
            .expect("run error")
            .contains("\"c\"")
    );

    let (status, detail) = f.get(&format!("/api/v1/runs/{ok_run}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["phase"], "Succeeded");
    assert_eq!(
        detail["output"],
        json!({ "d": { "stage": "d" }, "e": { "stage": "e" } })
    );

    let (status, events) = f.get(&format!("/api/v1/runs/{ok_run}/events")).await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<Event> = serde_json::from_value(events).expect("events");
    assert_eq!(events[0].kind.name(), "RunAccepted");
    assert_eq!(events.last().map(|e| e.kind.name()), Some("RunSucceeded"));
    let (_, from) = f.get(&format!("/api/v1/runs/{ok_run}/events?from=3")).await;
    assert_eq!(from[0]["seq"], 3);

    let (status, _) = f.get(&format!("/api/v1/runs/{}", RunId::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = f.get("/api/v1/runs/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("not-a-uuid")
    );

    let (status, s) = f
        .get("/api/v1/pipelines/default/shop/stats?window=1h")
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["total"], 2);
    assert_eq!(s["counts"]["Succeeded"], 1);
    assert_eq!(s["counts"]["Failed"], 1);
    assert_eq!(s["successRate"], 0.5);
    assert!(s["p50Seconds"].as_f64().is_some() && s["p95Seconds"].as_f64().is_some());
    let (_, other) = f.get("/api/v1/pipelines/default/nothing/stats").await;
    assert_eq!(other["total"], 0);
    let (status, body) = f
        .get("/api/v1/pipelines/default/shop/stats?window=forever")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("window \"forever\"")
    );
}

#[actix_rt::test]
async fn stats_read_only_the_window_of_the_pipeline() {
    let f = fixture().await;
    let t = now() - 50 * HOUR;
    let mut runs = Vec::new();
    for i in 0..10 {
        let end = if i % 5 == 0 { failed() } else { succeeded() };
        runs.push(synthetic(
            "ns",
            "p",
            Trigger::Manual,
            &[],
            t + i * HOUR,
            end,
        ));
    }
    runs.push(synthetic(
        "ns",
        "q",
        Trigger::Manual,
        &[],
        t + HOUR / 2,
        failed(),
    ));
    f.store.import_runs(&runs).expect("import");
    // [t + 2h, t + 7h): runs 2..=6, of which 5 failed.
    let s = stats::pipeline_stats(&f.store, "ns", "p", t + 2 * HOUR, t + 7 * HOUR).expect("stats");
    assert_eq!(s.total, 5);
    assert_eq!(s.counts[&RunPhase::Failed], 1);
    assert_eq!(s.success_rate, Some(0.8));
    assert!(
        s.p50_seconds.is_some_and(|p| (p - 0.999_999).abs() < 1e-9),
        "{s:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Follow

#[actix_rt::test]
async fn follow_streams_events_appended_after_it_connected_until_the_run_ends() {
    let f = fixture().await;
    let run = RunId::now_v7();
    let accepted = synthetic("ns", "p", Trigger::Manual, &[], now(), None).1[0]
        .kind
        .clone();
    let _ = f.store.append(run, vec![accepted]).expect("append");
    for sse in [false, true] {
        let run = if sse {
            let run = RunId::now_v7();
            let accepted = synthetic("ns", "p", Trigger::Manual, &[], now(), None).1[0]
                .kind
                .clone();
            let _ = f.store.append(run, vec![accepted]).expect("append");
            run
        } else {
            run
        };
        let mut request = f
            .http
            .get(format!("{}/api/v1/runs/{run}/events?follow=true", f.api));
        if sse {
            request = request.header("accept", "text/event-stream");
        }
        let mut response = request.send().await.expect("follow");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            content_type,
            if sse {
                "text/event-stream"
            } else {
                "application/x-ndjson"
            }
        );
        // The first frame is the event that existed when the stream connected.
        let mut text = String::new();
        while !text.contains('\n') {
            let chunk = response
                .chunk()
                .await
                .expect("chunk")
                .expect("a first frame");
            text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
        assert!(text.contains("RunAccepted"), "{text}");
        // Events appended after that arrive on the open stream, and the stream ends after the last one.
        let _ = f
            .store
            .append(
                run,
                vec![
                    EventKind::RunStarted,
                    EventKind::StageStarted {
                        stage: "a".into(),
                        attempt: 1,
                        input: serde_json::Value::Null,
                    },
                ],
            )
            .expect("append");
        let _ = f
            .store
            .append(run, vec![EventKind::RunSucceeded { output: json!(1) }])
            .expect("append");
        while let Some(chunk) = response.chunk().await.expect("chunk") {
            text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
        let names: Vec<String> = if sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("event: "))
                .map(str::to_string)
                .collect()
        } else {
            text.lines()
                .map(|l| {
                    let e: Event = serde_json::from_str(l).expect("event line");
                    e.kind.name().to_string()
                })
                .collect()
        };
        assert_eq!(
            names,
            ["RunAccepted", "RunStarted", "StageStarted", "RunSucceeded"],
            "{text}"
        );
    }
    // A finished run's follow returns what there is and ends.
    let events = f.follow_to_end(&run.to_string()).await;
    assert_eq!(events.len(), 4);
}

#[actix_rt::test]
async fn follow_from_past_the_last_event_streams_only_later_events() {
    let f = fixture().await;
    let run = RunId::now_v7();
    let accepted = synthetic("ns", "p", Trigger::Manual, &[], now(), None).1[0]
        .kind
        .clone();
    let _ = f
        .store
        .append(run, vec![accepted, EventKind::RunStarted])
        .expect("append");
    // A client that has read seq 0 and 1 (the web UI, after its first read) follows from 2.
    let mut response = f
        .http
        .get(format!(
            "{}/api/v1/runs/{run}/events?follow=true&from=2",
            f.api
        ))
        .send()
        .await
        .expect("follow");
    let _ = f
        .store
        .append(
            run,
            vec![EventKind::StageStarted {
                stage: "a".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            }],
        )
        .expect("append");
    let _ = f
        .store
        .append(run, vec![EventKind::RunSucceeded { output: json!(1) }])
        .expect("append");
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).expect("event line").seq)
        .collect();
    assert_eq!(seqs, [2, 3], "{text}");
}

// ---------------------------------------------------------------------------------------------------------
// Retention

#[actix_rt::test]
async fn retention_deletes_exactly_what_the_policy_says_and_nothing_in_flight() {
    let f = fixture().await;
    let t = now();
    // Pipeline p: 4 finished runs 10 days old, 2 finished 1 hour old, 1 in flight 10 days old.
    // Pipeline q: 3 finished runs 1 hour old.
    let mut runs = Vec::new();
    for i in 0..4 {
        runs.push(synthetic(
            "ns",
            "p",
            Trigger::Manual,
            &[],
            t - 240 * HOUR + i,
            succeeded(),
        ));
    }
    let in_flight = synthetic("ns", "p", Trigger::Manual, &[], t - 240 * HOUR + 10, None);
    runs.push(in_flight.clone());
    for i in 0..2 {
        runs.push(synthetic(
            "ns",
            "p",
            Trigger::Manual,
            &[],
            t - HOUR + i,
            failed(),
        ));
    }
    for i in 0..3 {
        runs.push(synthetic(
            "ns",
            "q",
            Trigger::Manual,
            &[],
            t - HOUR + i,
            succeeded(),
        ));
    }
    f.store.import_runs(&runs).expect("import");
    let all: Vec<_> = runs.iter().map(|(id, _)| *id).collect();
    let summaries: Vec<_> = all
        .iter()
        .map(|id| f.store.summary(*id).expect("read").expect("summary"))
        .collect();

    let policy = RetentionPolicy {
        ttl: Some(std::time::Duration::from_secs(7 * 24 * 3600)),
        keep_per_pipeline: Some(2),
    };
    let mut planned = retention::plan(policy, t, &summaries);
    planned.sort();
    // The TTL takes p's 4 old finished runs; keeping 2 per pipeline takes q's oldest.
    let mut expected = vec![all[0], all[1], all[2], all[3], all[7]];
    expected.sort();
    assert_eq!(planned, expected);

    let deleted = retention::sweep(&f.store, policy, t).expect("sweep");
    assert_eq!(deleted, 5);
    for id in &all {
        let gone = expected.contains(id);
        assert_eq!(f.store.summary(*id).expect("read").is_none(), gone, "{id}");
        assert_eq!(f.store.events(*id).expect("read").is_empty(), gone, "{id}");
    }
    // Index entries went with them: listings no longer show the deleted runs.
    let (_, page) = f.get("/api/v1/runs?limit=100").await;
    let listed: HashSet<String> = ids(&page).into_iter().collect();
    let remaining: HashSet<String> = all
        .iter()
        .filter(|id| !expected.contains(id))
        .map(|id| id.to_string())
        .collect();
    assert_eq!(listed, remaining);
    let (_, page) = f
        .get("/api/v1/runs?phase=Succeeded&namespace=ns&pipeline=p")
        .await;
    assert!(ids(&page).is_empty(), "{page}");
    assert!(f.store.summary(in_flight.0).expect("read").is_some());
    // A second sweep has nothing left to do.
    assert_eq!(retention::sweep(&f.store, policy, t).expect("sweep"), 0);

    // The background task applies the same sweep; stopping it ends it.
    let stop = CancellationToken::new();
    let task = retention::spawn(
        f.store.clone(),
        policy,
        std::time::Duration::from_secs(3600),
        stop.clone(),
    );
    stop.cancel();
    task.await.expect("task ends");
}

// ---------------------------------------------------------------------------------------------------------
// Rerun

#[actix_rt::test]
async fn rerun_and_rerun_from_failed_run_only_the_failed_stage_and_its_dependants() {
    let f = fixture().await;
    f.effects.set_failing("c", true);
    let old = f.run("shop").await;
    let hits = |f: &Fixture| {
        ["a", "b", "c", "d", "e"]
            .map(|s| f.effects.hits(s))
            .to_vec()
    };
    assert_eq!(hits(&f), [1, 1, 1, 0, 1]);

    // Rerunning a run in flight or one that succeeded from its failure is refused.
    f.effects.set_failing("c", false);
    let post = |path: String, body: Value| {
        let http = f.http.clone();
        let url = format!("{}{path}", f.api);
        async move {
            let r = http.post(url).json(&body).send().await.expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let (status, started) = post(
        format!("/api/v1/runs/{old}/rerun"),
        json!({ "fromFailed": true }),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["rerunOf"], old.to_string());
    assert_eq!(started["reusedStages"], json!(["a", "b", "e"]));
    let new = started["runId"].as_str().expect("runId").to_string();
    let events = f.follow_to_end(&new).await;
    assert_eq!(events.last().map(|e| e.kind.name()), Some("RunSucceeded"));
    // Succeeded stages were not executed again: only c and d made calls.
    assert_eq!(hits(&f), [1, 1, 2, 1, 1]);
    let (_, detail) = f.get(&format!("/api/v1/runs/{new}")).await;
    assert_eq!(detail["phase"], "Succeeded");
    assert_eq!(
        detail["labels"][flowmason::model::vocabulary::RERUN_OF_LABEL],
        old.to_string()
    );
    assert_eq!(detail["inputs"], json!({ "x": 1 }));
    for s in detail["stages"].as_array().expect("stages") {
        let reused = ["a", "b", "e"].contains(&s["id"].as_str().expect("id"));
        assert_eq!(s.get("reusedFrom").is_some(), reused, "{s}");
    }

    // A plain rerun runs everything again.
    let (status, started) = post(format!("/api/v1/runs/{new}/rerun"), Value::Null).await;
    assert_eq!(status, 201, "{started}");
    let again = started["runId"].as_str().expect("runId").to_string();
    f.follow_to_end(&again).await;
    assert_eq!(hits(&f), [2, 2, 3, 2, 2]);

    let (status, body) = f
        .http
        .post(format!("{}/api/v1/runs/{new}/rerun?fromFailed=true", f.api))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .expect("post");
    assert_eq!(status, 409);
    let body: Value = body.json().await.expect("json");
    assert!(body["error"].as_str().expect("error").contains("succeeded"));
    let (status, _) = post(
        format!("/api/v1/runs/{}/rerun", RunId::now_v7()),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------------------------------------
// Metrics and health

/// The value of the sample `name{labels}` in a text exposition (labels in the exposition's order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(f: &Fixture) -> String {
    let response = f
        .http
        .get(format!("{}/metrics", f.api))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.expect("text")
}

#[actix_rt::test]
async fn metrics_count_runs_histogram_buckets_and_errors_and_pass_promtool() {
    let f = fixture().await;
    for _ in 0..3 {
        f.run("shop").await;
    }
    f.effects.set_failing("c", true);
    f.run("shop").await;
    f.metrics.trigger_event("cron", "started");
    f.metrics.status_write("ok");
    f.metrics.set_queue_depth("pipelinerun", 2);
    f.metrics.reconcile_error("pipelinerun");
    f.metrics.set_leader(true);
    f.store.sync().await.expect("sync");
    let text = scrape(&f).await;

    let runs = |phase: &str| {
        sample(
            &text,
            &format!(
                "flowmason_pipeline_runs_total{{namespace=\"default\",phase=\"{phase}\",pipeline=\"shop\"}}"
            ),
        )
    };
    assert_eq!(runs("Succeeded"), Some(3.0), "{text}");
    assert_eq!(runs("Failed"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "flowmason_pipeline_run_duration_seconds_bucket{namespace=\"default\",phase=\"Succeeded\",pipeline=\"shop\",le=\"+Inf\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "flowmason_pipeline_run_duration_seconds_count{namespace=\"default\",phase=\"Failed\",pipeline=\"shop\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "flowmason_pipeline_run_errors_total{namespace=\"default\",pipeline=\"shop\",reason=\"client\",stage=\"c\"}"
        ),
        Some(1.0)
    );
    // 3 x 5 stages succeeded, plus a, b, e of the failed run; c failed once.
    assert_eq!(
        sample(
            &text,
            "flowmason_stage_duration_seconds_count{component_type=\"hit\",namespace=\"default\",phase=\"Succeeded\",pipeline=\"shop\"}"
        ),
        Some(18.0)
    );
    assert_eq!(
        sample(
            &text,
            "flowmason_stage_duration_seconds_count{component_type=\"hit\",namespace=\"default\",phase=\"Failed\",pipeline=\"shop\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "flowmason_stages_running"), Some(0.0));
    assert_eq!(sample(&text, "flowmason_runs_in_flight"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "flowmason_trigger_events_total{kind=\"cron\",outcome=\"started\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "flowmason_leader"), Some(1.0));
    let appended = sample(&text, "flowmason_event_log_appended_events_total").expect("appended");
    assert!(appended >= 4.0 * 12.0, "{appended}");
    assert!(sample(&text, "flowmason_event_log_write_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(
        !text.contains("run_id") && !text.contains("runId"),
        "run ids never label metrics"
    );

    // promtool (Debian package prometheus; scripts/test.sh installs it) accepts the exposition.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool must be installed (scripts/test.sh installs the Debian package prometheus)",
        );
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The Grafana dashboard queries only metric names that the exposition has.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/flowmason.json"
        ))
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = var["query"].as_str().filter(|q| q.contains("flowmason_")) {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 6);
    let exposed: HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("flowmason_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(
                exposed.contains(name),
                "dashboard metric {name} is not exposed ({expr})"
            );
        }
    }
}

#[actix_rt::test]
async fn health_endpoints_report_liveness_and_pluggable_readiness() {
    let f = fixture().await;
    let (status, _) = {
        let r = f
            .http
            .get(format!("{}/healthz", f.api))
            .send()
            .await
            .expect("healthz");
        (r.status().as_u16(), r.text().await.expect("text"))
    };
    assert_eq!(status, 200);
    let (status, body) = f.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");

    // A check that fails (say, the leader state is not known yet) makes the server not ready, named.
    let health = HealthState::new().store(f.store.clone()).check(
        "leader",
        Arc::new(|| Box::pin(async { Err("leader state not known yet".to_string()) })),
    );
    let url = serve(flowmason::health::router(health), &f.stop).await;
    let r = f
        .http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status().as_u16(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["failed"]["leader"], "leader state not known yet");
    assert!(body["failed"].get("eventLog").is_none(), "{body}");
    let r = f
        .http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
}

#[actix_rt::test]
async fn without_a_cluster_the_ui_derives_pipelines_from_the_history_and_refuses_run_and_cancel() {
    use flowmason::http::pipelines::{Pipelines, PipelinesState};
    let f = fixture().await;
    let run = f.run("shop").await;
    let base = serve(
        flowmason::http::pipelines::router(PipelinesState {
            store: f.store.clone(),
            pipelines: Pipelines::History,
        })
        .merge(flowmason::http::ui::router()),
        &f.stop,
    )
    .await;
    let get = |path: &str| f.http.get(format!("{base}{path}")).send();

    let listed: Value = get("/api/v1/pipelines")
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["source"], json!("history"), "{listed}");
    let items = listed["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["metadata"]["name"], json!("shop"));
    let stages: Vec<&str> = items[0]["spec"]["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(stages, ["a", "b", "c", "d", "e"]);
    let other: Value = get("/api/v1/pipelines?namespace=elsewhere")
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(other["items"], json!([]));
    let one = get("/api/v1/pipelines/default/shop").await.expect("get");
    assert_eq!(one.status(), 200);
    let missing = get("/api/v1/pipelines/default/none").await.expect("get");
    assert_eq!(missing.status(), 404);

    for path in [
        "/api/v1/pipelines/default/shop/runs".to_string(),
        format!("/api/v1/runs/{run}/cancel"),
    ] {
        let refused = f
            .http
            .post(format!("{base}{path}"))
            .send()
            .await
            .expect("post");
        assert_eq!(refused.status(), 501, "{path}");
        let body: Value = refused.json().await.expect("JSON");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("Kubernetes API")),
            "{body}"
        );
    }

    let page = get("/ui/").await.expect("ui");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let script = get("/ui/app.js").await.expect("script");
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(get("/ui/missing.js").await.expect("404").status(), 404);
    let root = f.http.get(format!("{base}/")).send().await.expect("root");
    assert!(root.url().path().starts_with("/ui/"), "{}", root.url());
}

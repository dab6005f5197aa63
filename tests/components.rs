//! The built-in components through the engine and the `fm` binary: branching, foreach, trycatch,
//! subpipeline, and http_request against a loopback HTTP server started by the test (nothing leaves
//! 127.0.0.1).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use flowmason::components::{PipelineResolver, builtin_registry, registry_with_resolver};
use flowmason_actors::{
    Component, ComponentError, ComponentOutput, Engine, EngineConfig, PlanSpec, Registry,
    RetryPolicy, RunRequest, StageContext, StagePlan,
};
use flowmason_store::{
    ErrorClass, Event, EventKind, EventStore, RunPhase, RunState, SkipReason, StagePhase,
    StoreConfig,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------------------
// Fixtures

struct Fixture {
    _dir: tempfile::TempDir,
    store: EventStore,
    engine: Engine,
}

fn fixture(registry: Registry) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("store");
    let engine = Engine::new(store.clone(), registry, EngineConfig::default());
    Fixture {
        _dir: dir,
        store,
        engine,
    }
}

fn phase(state: &RunState, id: &str) -> StagePhase {
    state.stages.get(id).map(|s| s.phase).expect("stage state")
}

fn skip_reason(state: &RunState, id: &str) -> Option<SkipReason> {
    state.stages.get(id).and_then(|s| s.skip_reason)
}

fn started(events: &[Event], id: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::StageStarted { stage, .. } if stage == id))
        .count()
}

fn output(state: &RunState, id: &str) -> Value {
    state
        .stages
        .get(id)
        .and_then(|s| s.output.clone())
        .unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------------------
// Branching

#[actix_rt::test]
async fn router_and_conditional_skip_the_branches_not_taken_and_the_run_succeeds() {
    let f = fixture(builtin_registry());
    let spec = plan(vec![
        configured(
            "check",
            "conditional",
            &[],
            json!({"condition": "{{input.score}}", "condition_expression": "value > 0.8",
                   "true_branch_stages": ["approve"], "false_branch_stages": ["reject"]}),
        ),
        configured("approve", "noop", &["check"], Value::Null),
        configured("reject", "noop", &["check"], Value::Null),
        configured("after_reject", "noop", &["reject"], Value::Null),
        configured(
            "route",
            "router",
            &["check"],
            json!({"value": "{{input.kind}}", "routes": {"a": ["on_a"], "b": ["on_b"]}}),
        ),
        configured("on_a", "noop", &["route"], Value::Null),
        configured("on_b", "noop", &["route"], Value::Null),
    ]);
    let (state, events) = run_to_end(
        &f.engine,
        &f.store,
        spec,
        json!({"score": 0.3, "kind": "b"}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    assert_eq!(phase(&state, "reject"), StagePhase::Succeeded);
    assert_eq!(phase(&state, "after_reject"), StagePhase::Succeeded);
    assert_eq!(phase(&state, "on_b"), StagePhase::Succeeded);
    for skipped in ["approve", "on_a"] {
        assert_eq!(phase(&state, skipped), StagePhase::Skipped, "{skipped}");
        assert_eq!(
            skip_reason(&state, skipped),
            Some(SkipReason::BranchNotTaken)
        );
        assert_eq!(started(&events, skipped), 0);
    }
}

// ---------------------------------------------------------------------------------------------------------
// foreach

fn foreach_plan(parallel: bool) -> PlanSpec {
    plan(vec![
        configured(
            "loop",
            "foreach",
            &[],
            json!({"items": "{{input.items}}", "loop_stages": ["double", "shape"],
                   "item_variable": "n", "parallel": parallel, "max_parallel": 3}),
        ),
        configured(
            "double",
            "json_transform",
            &["loop"],
            json!({"data": {"n": "{{upstream.loop.n}}", "i": "{{upstream.loop.current_index}}"},
                   "jq": "{twice: (.n * 2), i}"}),
        ),
        configured(
            "shape",
            "variable_set",
            &["double"],
            json!({"name": "r", "value": "{{upstream.double.result}}"}),
        ),
        configured(
            "after",
            "json_transform",
            &["loop"],
            json!({"data": "{{upstream.loop.results}}", "jq": "map(.value.twice)"}),
        ),
    ])
}

#[actix_rt::test]
async fn foreach_runs_its_loop_stages_once_per_item_in_order_and_never_as_dag_stages() {
    let f = fixture(builtin_registry());
    for parallel in [false, true] {
        let items: Vec<i64> = (1..=7).collect();
        let (state, events) = run_to_end(
            &f.engine,
            &f.store,
            foreach_plan(parallel),
            json!({ "items": items }),
        )
        .await;
        assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
        let out = output(&state, "loop");
        assert_eq!(out["total_items"], json!(7));
        assert_eq!(out["results"][2]["value"], json!({"twice": 6, "i": 2}));
        assert_eq!(
            output(&state, "after")["result"],
            json!([2, 4, 6, 8, 10, 12, 14]),
            "parallel={parallel}"
        );
        for inner in ["double", "shape"] {
            assert_eq!(started(&events, inner), 0, "{inner} ran as a DAG stage");
            assert_eq!(skip_reason(&state, inner), Some(SkipReason::BranchNotTaken));
        }
    }
}

/// Fails every odd call with a transient error, succeeds every even one; records each call's
/// idempotency key.
#[derive(Clone, Default)]
struct EveryOtherCall {
    keys: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Component for EveryOtherCall {
    fn execute(
        &self,
        _input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let mut keys = self.keys.lock().expect("keys");
        keys.push(ctx.idempotency_key());
        let call = keys.len();
        Box::pin(async move {
            if call % 2 == 1 {
                Err(ComponentError::new(
                    ErrorClass::Transient,
                    format!("call {call} failed"),
                ))
            } else {
                Ok(json!({ "call": call }).into())
            }
        })
    }
}

#[actix_rt::test]
async fn a_nested_stage_is_retried_by_its_own_policy_with_a_new_key_per_attempt() {
    let flaky = EveryOtherCall::default();
    let mut registry = builtin_registry();
    registry.register("every_other_call", flaky.clone());
    let f = fixture(registry);
    let spec = |limit: u32| {
        let mut call = configured("call", "every_other_call", &["loop"], json!({}));
        call.retry = Some(RetryPolicy {
            limit,
            initial_ms: 1,
            jitter: 0.0,
            ..RetryPolicy::default()
        });
        plan(vec![
            configured(
                "loop",
                "foreach",
                &[],
                json!({"items": [1, 2, 3], "loop_stages": ["call"]}),
            ),
            call,
        ])
    };
    let (state, events) = run_to_end(&f.engine, &f.store, spec(1), json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let results = output(&state, "loop")["results"].clone();
    assert_eq!(
        results,
        json!([{"call": 2}, {"call": 4}, {"call": 6}]),
        "each item's stage failed once and succeeded on its retry"
    );
    assert_eq!(
        state.stages["loop"].attempts, 1,
        "the loop itself was not repeated"
    );
    let keys = flaky.keys.lock().expect("keys").clone();
    assert_eq!(keys.len(), 6);
    assert_eq!(
        keys.iter().collect::<std::collections::HashSet<_>>().len(),
        6,
        "every attempt has its own idempotency key: {keys:?}"
    );
    let retries_logged = events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::StageLog { message, .. } if message.contains("retrying"))
        })
        .count();
    assert_eq!(retries_logged, 3);

    // Without retries the first failure ends the loop.
    let (state, _) = run_to_end(&f.engine, &f.store, spec(0), json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert!(
        state
            .error
            .expect("error")
            .message
            .contains("stage \"call\" failed"),
    );
}

#[actix_rt::test]
async fn foreach_break_on_error_fails_and_otherwise_collects_errors() {
    let f = fixture(builtin_registry());
    let spec = |break_on_error: bool| {
        plan(vec![
            configured(
                "loop",
                "foreach",
                &[],
                json!({"items": [{"a": 1}, "text", {"a": 3}], "loop_stages": ["pick"],
                       "break_on_error": break_on_error}),
            ),
            configured(
                "pick",
                "json_transform",
                &["loop"],
                json!({"data": "{{upstream.loop.item}}", "jq": ".a"}),
            ),
        ])
    };
    let (state, _) = run_to_end(&f.engine, &f.store, spec(true), json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    let message = state.error.expect("error").message;
    assert!(
        message.contains("foreach: iteration 1: stage \"pick\" failed"),
        "{message}"
    );
    let (state, _) = run_to_end(&f.engine, &f.store, spec(false), json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded);
    let out = output(&state, "loop");
    assert_eq!(out["results"][0]["result"], json!(1));
    assert_eq!(out["results"][1], Value::Null);
    assert_eq!(out["errors"][0]["index"], json!(1));
}

#[actix_rt::test]
async fn cancelling_the_run_stops_a_running_foreach() {
    let f = fixture(builtin_registry());
    let spec = plan(vec![
        configured(
            "loop",
            "foreach",
            &[],
            json!({"items": [1, 2, 3], "loop_stages": ["wait"]}),
        ),
        configured("wait", "delay", &["loop"], json!({"seconds": 600})),
    ]);
    let handle = f
        .engine
        .start(RunRequest::new("test", spec, json!({})))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.engine.cancel(handle.run_id, "test");
    let state = tokio::time::timeout(Duration::from_secs(10), handle.finished())
        .await
        .expect("the loop ignored cancellation")
        .expect("end");
    assert_eq!(state.phase, RunPhase::Cancelled);
}

#[tokio::test]
async fn foreach_stops_when_its_token_is_cancelled() {
    // Directly on the component, with a nested delay: the token stops the running iteration.
    let registry = Arc::new(builtin_registry());
    let spec = plan(vec![
        configured("loop", "foreach", &[], Value::Null),
        configured("wait", "delay", &["loop"], json!({"seconds": 600})),
    ]);
    let view = flowmason_actors::RunView {
        plan: Arc::new(flowmason_actors::Plan::build(spec).expect("plan")),
        registry: registry.clone(),
        inputs: Arc::new(json!({})),
        env: Arc::new(BTreeMap::new()),
        outputs: Arc::new(BTreeMap::new()),
        call_stack: vec!["test".into()],
    };
    let ctx = context("loop").with_run(Arc::new(view));
    let token = ctx.cancel.clone();
    let component = registry.get("foreach").expect("foreach");
    let task =
        tokio::spawn(component.execute(json!({"items": [1, 2], "loop_stages": ["wait"]}), ctx));
    tokio::time::sleep(Duration::from_millis(50)).await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("foreach ignored cancellation")
        .expect("task");
    assert_eq!(result.expect_err("cancelled").class, ErrorClass::Cancelled);
}

// ---------------------------------------------------------------------------------------------------------
// trycatch

fn trycatch_plan(scope: &str, fail: bool) -> PlanSpec {
    let risky = if fail {
        json!({"data": 1, "jq": "error(\"boom\")"})
    } else {
        json!({"data": 1, "jq": ". + 1"})
    };
    plan(vec![
        configured(
            "guard",
            "trycatch",
            &[],
            json!({"try_stages": ["risky"], "catch_stages": ["handle"], "finally_stages": ["cleanup"],
                   "error_scope": scope}),
        ),
        configured("risky", "json_transform", &["guard"], risky),
        configured(
            "handle",
            "variable_set",
            &["guard"],
            json!({"name": "e", "value": "{{upstream.guard.error_type}}: {{upstream.guard.error}}"}),
        ),
        configured("cleanup", "noop", &["guard"], Value::Null),
    ])
}

#[actix_rt::test]
async fn trycatch_runs_catch_and_finally_on_failure() {
    let f = fixture(builtin_registry());
    let (state, events) = run_to_end(
        &f.engine,
        &f.store,
        trycatch_plan("continue", true),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = output(&state, "guard");
    assert_eq!(out["status"], json!("caught"));
    assert_eq!(out["recovered"], json!(true));
    assert!(
        out["catch_result"]["value"]
            .as_str()
            .expect("text")
            .starts_with("config: "),
        "{out}"
    );
    for inner in ["risky", "handle", "cleanup"] {
        assert_eq!(started(&events, inner), 0);
    }
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        trycatch_plan("continue", false),
        json!({}),
    )
    .await;
    let out = output(&state, "guard");
    assert_eq!(out["status"], json!("success"));
    assert_eq!(out["try_result"]["result"], json!(2));
    assert_eq!(out["catch_result"], Value::Null);
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        trycatch_plan("propagate", true),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    let message = state.error.expect("error").message;
    assert!(
        message.contains("trycatch: try block: stage \"risky\" failed"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// subpipeline

struct Pipelines(HashMap<String, PlanSpec>);

impl PipelineResolver for Pipelines {
    fn resolve(&self, _namespace: &str, name: &str) -> Result<PlanSpec, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no pipeline named {name:?}"))
    }
}

fn calls(target: &str) -> PlanSpec {
    plan(vec![configured(
        "call",
        "subpipeline",
        &[],
        json!({"pipeline_id": target, "input_data": {"x": "{{input.x}}"}}),
    )])
}

#[actix_rt::test]
async fn subpipeline_runs_a_pipeline_by_name_and_refuses_cycles() {
    let double = plan(vec![configured(
        "twice",
        "json_transform",
        &[],
        json!({"data": "{{input.x}}", "jq": ". * 2"}),
    )]);
    let pipelines = Pipelines(HashMap::from([
        ("double".to_string(), double),
        ("loop_a".to_string(), calls("loop_b")),
        ("loop_b".to_string(), calls("loop_a")),
    ]));
    let f = fixture(registry_with_resolver(Arc::new(pipelines)));
    let (state, _) = run_to_end(&f.engine, &f.store, calls("double"), json!({"x": 21})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = state.output.expect("output");
    assert_eq!(out["status"], json!("completed"));
    assert_eq!(out["result"]["result"], json!(42));

    let mut request = RunRequest::new("loop_a", calls("loop_b"), json!({"x": 1}));
    request.namespace = "default".into();
    let state = f
        .engine
        .start(request)
        .await
        .expect("start")
        .finished()
        .await
        .expect("end");
    assert_eq!(state.phase, RunPhase::Failed);
    let message = state.error.expect("error").message;
    assert!(
        message.contains("pipeline cycle loop_a -> loop_b -> loop_a"),
        "{message}"
    );

    let (state, _) = run_to_end(&f.engine, &f.store, calls("missing"), json!({"x": 1})).await;
    let message = state.error.expect("error").message;
    assert!(
        message.contains("no pipeline named \"missing\""),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// http_request against a loopback server

async fn items(Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> axum::Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    let all = [json!({"id": 1}), json!({"id": 2}), json!({"id": 3})];
    axum::Json(json!({"items": all.iter().take(limit).collect::<Vec<_>>(), "key": key}))
}

async fn status(UrlPath(code): UrlPath<u16>) -> (StatusCode, String) {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        format!("status {code}"),
    )
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "late"
}

/// Serves on 127.0.0.1 (a free port) until the test ends; returns the base URL.
async fn server() -> String {
    let app = Router::new()
        .route("/items", get(items))
        .route("/status/{code}", get(status))
        .route("/slow", get(slow));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn context(stage: &str) -> StageContext {
    StageContext::new(
        uuid::Uuid::nil(),
        "p".into(),
        "ns".into(),
        stage.into(),
        1,
        CancellationToken::new(),
        Arc::new(|_| {}),
    )
}

async fn http(input: Value) -> Result<Value, flowmason_actors::ComponentError> {
    let component = builtin_registry()
        .get("http_request")
        .expect("http_request");
    component
        .execute(input, context("fetch"))
        .await
        .map(|o| o.output)
}

#[tokio::test]
async fn http_request_fetches_json_with_params_and_the_idempotency_key() {
    let base = server().await;
    let out = http(json!({"url": format!("{base}/items"), "params": {"limit": 2}}))
        .await
        .expect("ok");
    assert_eq!(out["status_code"], json!(200));
    assert_eq!(out["success"], json!(true));
    assert_eq!(out["body"]["items"], json!([{"id": 1}, {"id": 2}]));
    assert_eq!(
        out["body"]["key"],
        json!(format!("{}/fetch/1", uuid::Uuid::nil()))
    );
    assert_eq!(out["url"], json!(format!("{base}/items?limit=2")));
    assert!(
        out["headers"]["content-type"]
            .as_str()
            .expect("ct")
            .contains("json")
    );
    let out = http(json!({"url": format!("{base}/status/201")}))
        .await
        .expect("ok");
    assert_eq!(out["body"], json!("status 201"), "text body stays text");
}

#[tokio::test]
async fn http_request_classes_errors_by_status() {
    let base = server().await;
    for (code, class) in [
        (404, ErrorClass::Client),
        (400, ErrorClass::Client),
        (408, ErrorClass::Transient),
        (429, ErrorClass::Transient),
        (503, ErrorClass::Transient),
    ] {
        let err = http(json!({"url": format!("{base}/status/{code}")}))
            .await
            .expect_err("error");
        assert_eq!(err.class, class, "{code}");
        assert_eq!(err.details["status_code"], json!(code));
    }
    let out = http(json!({"url": format!("{base}/status/404"), "raise_for_status": false}))
        .await
        .expect("FlowMason's behaviour");
    assert_eq!(out["success"], json!(false));
    assert_eq!(out["status_code"], json!(404));
}

#[tokio::test]
async fn http_request_connect_errors_and_timeouts_are_transient() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let err = http(json!({"url": format!("http://{closed}/")}))
        .await
        .expect_err("refused");
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    let base = server().await;
    let err = http(json!({"url": format!("{base}/slow"), "timeout": 1}))
        .await
        .expect_err("timeout");
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(
        err.message.contains("timed out after 1s"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn http_request_config_errors() {
    for (input, want) in [
        (json!({}), "`url` is required"),
        (json!({"url": "not a url"}), "is not a valid URL"),
        (json!({"url": "ftp://127.0.0.1/x"}), "must be http or https"),
        (
            json!({"url": "http://127.0.0.1/", "method": "FETCH"}),
            "`method` must be one of",
        ),
        (
            json!({"url": "http://127.0.0.1/", "headers": {"a": 1}}),
            "`headers.a` must be a string",
        ),
        (
            json!({"url": "http://127.0.0.1/", "timeout": 0}),
            "`timeout` must be",
        ),
        (
            json!({"url": "http://127.0.0.1/", "params": [1]}),
            "`params` must be an object",
        ),
        (
            json!({"url": "http://127.0.0.1/", "verify_ssl": "no"}),
            "`verify_ssl` must be a boolean",
        ),
    ] {
        let err = http(input.clone()).await.expect_err("config error");
        assert_eq!(err.class, ErrorClass::Config, "{input}");
        assert!(err.message.contains(want), "{input}: {}", err.message);
    }
}

#[tokio::test]
async fn http_request_stops_when_cancelled() {
    let base = server().await;
    let component = builtin_registry()
        .get("http_request")
        .expect("http_request");
    let ctx = context("fetch");
    let token = ctx.cancel.clone();
    let task = tokio::spawn(component.execute(json!({"url": format!("{base}/slow")}), ctx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("request ignored cancellation")
        .expect("task");
    assert_eq!(result.expect_err("cancelled").class, ErrorClass::Cancelled);
}

// ---------------------------------------------------------------------------------------------------------
// The examples through `fm run`

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn fm_run(file: &Path, inputs: &[String]) -> Value {
    let data = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_fm"));
    command
        .env_remove("FM_DATA_DIR")
        .env("FM_LOG", "error")
        .arg("run")
        .arg(file)
        .args(["-o", "json", "--data-dir"])
        .arg(data.path());
    for input in inputs {
        command.args(["--input", input]);
    }
    let out = command.output().expect("fm runs");
    assert!(
        out.status.success(),
        "fm run {}: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn example_branching_runs() {
    let out = fm_run(&example("branching.yaml"), &[]);
    assert_eq!(
        out["result"],
        json!({"branch": "true", "route": "urgent", "skipped": ["ignore", "queue"]})
    );
    let out = fm_run(
        &example("branching.yaml"),
        &["score=0.1".into(), "kind=other".into()],
    );
    assert_eq!(out["result"]["branch"], json!("false"));
    assert_eq!(out["result"]["route"], json!("default"));
}

#[test]
fn example_foreach_runs() {
    let out = fm_run(&example("foreach.yaml"), &[]);
    assert_eq!(
        out["result"],
        json!([{"name": "Ada", "buyer": true}, {"name": "Grace", "buyer": false}, {"name": "Linus", "buyer": true}])
    );
}

#[test]
fn example_validate_runs() {
    let out = fm_run(&example("validate.yaml"), &[]);
    assert_eq!(
        out["result"],
        json!({"valid": false, "errors": 1, "kept": [1]})
    );
}

#[test]
fn example_trycatch_with_a_subpipeline_runs() {
    let out = fm_run(&example("trycatch.yaml"), &[]);
    assert_eq!(out["result"]["status"], json!("caught"));
    assert!(
        out["result"]["catch"]
            .as_str()
            .expect("text")
            .contains("id must be a string")
    );
    let out = fm_run(&example("trycatch.yaml"), &["id=\"seven\"".into()]);
    assert_eq!(out["result"]["status"], json!("success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_http_runs_against_a_local_server() {
    let base = server().await;
    let file = example("http.yaml");
    let input = format!("url={base}/items");
    let out = tokio::task::spawn_blocking(move || fm_run(&file, &[input]))
        .await
        .expect("fm");
    assert_eq!(out["result"], json!({"count": 2, "first": {"id": 1}}));
}

// ---------------------------------------------------------------------------------------------------------
// Runaway expressions: stopped by timeout and cancellation, in worker processes that are killed

/// Held by the runaway tests, so that each finds its own busy worker, not the other's.
static ONE_RUNAWAY_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Expression workers, children of this test process, that are computing (state `R`) right now.
fn busy_workers() -> Vec<u32> {
    let me = std::process::id();
    let mut busy = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return busy;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        // `pid (comm) state ppid ...`: the fields after the last `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let is_worker = String::from_utf8_lossy(&cmdline).contains("__eval-worker");
        if is_worker
            && fields.first() == Some(&"R")
            && fields.get(1) == Some(&me.to_string().as_str())
        {
            busy.push(pid);
        }
    }
    busy
}

/// Waits (up to a generous deadline) for a worker to be busy with the runaway filter; its pid.
async fn runaway_worker() -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = busy_workers().first() {
            return *pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker ever ran the filter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to a generous deadline) for process `pid` to be gone (killed and reaped).
async fn gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {pid} still exists after its stage ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn runaway_plan(timeout_ms: Option<u64>) -> PlanSpec {
    let mut spin = configured(
        "spin",
        "json_transform",
        &[],
        json!({"data": 1, "jq": "last(range(1e15))"}),
    );
    spin.timeout_ms = timeout_ms;
    plan(vec![spin])
}

#[actix_rt::test]
async fn a_runaway_jq_stage_times_out_while_other_runs_complete_and_its_worker_is_killed() {
    let _serial = ONE_RUNAWAY_AT_A_TIME.lock().await;
    let f = fixture(builtin_registry());
    let handle = f
        .engine
        .start(RunRequest::new("spin", runaway_plan(Some(2000)), json!({})))
        .await
        .expect("start");
    let pid = runaway_worker().await;
    // The engine keeps serving: another run, with jq and a Python condition, completes meanwhile.
    let quick = plan(vec![
        configured(
            "shape",
            "json_transform",
            &[],
            json!({"data": {"n": [1, 2, 3]}, "jq": ".n | add"}),
        ),
        configured(
            "check",
            "filter",
            &["shape"],
            json!({"data": "{{upstream.shape.result}}", "condition": "data == 6"}),
        ),
    ]);
    let (state, _) = run_to_end(&f.engine, &f.store, quick, json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    assert_eq!(output(&state, "check")["passed"], json!(true));
    let state = tokio::time::timeout(Duration::from_secs(60), handle.finished())
        .await
        .expect("the runaway stage ignored its timeout")
        .expect("end");
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.stages["spin"].error.clone().expect("stage error");
    assert_eq!(error.class, ErrorClass::Timeout, "{}", error.message);
    gone(pid).await;
}

#[actix_rt::test]
async fn cancelling_a_run_kills_its_runaway_jq_worker() {
    let _serial = ONE_RUNAWAY_AT_A_TIME.lock().await;
    let f = fixture(builtin_registry());
    let handle = f
        .engine
        .start(RunRequest::new("spin", runaway_plan(None), json!({})))
        .await
        .expect("start");
    let pid = runaway_worker().await;
    f.engine.cancel(handle.run_id, "test");
    let state = tokio::time::timeout(Duration::from_secs(60), handle.finished())
        .await
        .expect("the runaway stage ignored cancellation")
        .expect("end");
    assert_eq!(state.phase, RunPhase::Cancelled);
    gone(pid).await;
}

#[path = "components/connectors.rs"]
mod connectors;

// ---------------------------------------------------------------------------------------------------------
// Control flow and data components of issue 17, compared with the original package where it runs offline.

#[path = "components/flow.rs"]
mod flow;
#[path = "support/plans.rs"]
mod plans;

use plans::{configured, plan, run_to_end};

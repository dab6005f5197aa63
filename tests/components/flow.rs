//! Control flow and data components (issue 17): through the engine, and their outputs compared with what
//! the original FlowMason package's operators produce for the same input (run through
//! `target/pyenv/bin/python tests/python/original_operator.py`).

use std::process::{Command, Stdio};

use super::*;

/// What the original operator `module.class` gives for `input`: `{"output": ...}` or `{"error": TYPE,
/// "message": ...}`; `None` when target/pyenv is missing (scripts/test.sh creates it).
fn original(module: &str, class: &str, input: &Value) -> Option<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyenv/bin/python");
    if !python.exists() {
        eprintln!("target/pyenv is missing: run scripts/test.sh to install flowmason from PyPI");
        return None;
    }
    let mut child = Command::new(python)
        .arg(root.join("tests/python/original_operator.py"))
        .args([module, class])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, input.to_string().as_bytes()).expect("write input");
    drop(stdin);
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "original operator {module}.{class} crashed"
    );
    Some(serde_json::from_slice(&out.stdout).expect("one JSON object"))
}

/// Our component's output for `input` run as a single stage.
async fn ours(component: &str, input: Value) -> Result<Value, ComponentError> {
    let registry = builtin_registry();
    let c = registry.get(component).expect("registered");
    c.execute(input, context("s")).await.map(|o| o.output)
}

const LOOP: (&str, &str) = ("flowmason_lab.operators.core.loop", "LoopOperator");

#[actix_rt::test]
async fn loop_batches_as_the_original_does() {
    for input in [
        json!({"items": [1, 2, 3, 4, 5], "batch_size": 2}),
        json!({"items": [1, 2, 3, 4, 5], "batch_size": 2, "max_iterations": 2}),
        json!({"items": ["a", "b", "c", "d"], "batch_size": 3, "start_index": 1}),
        json!({"items": [1, 2], "start_index": 5, "include_metadata": true}),
        json!({"items": [], "batch_size": 4, "include_metadata": false}),
        json!({"items": [{"doc": 1}, {"doc": 2}, {"doc": 3}], "batch_size": 1000}),
    ] {
        let Some(expected) = original(LOOP.0, LOOP.1, &input) else {
            return;
        };
        let got = ours("loop", input.clone()).await.expect("runs");
        assert_eq!(got, expected["output"], "input {input}");
    }
    for bad in [
        json!({"items": [1], "batch_size": 0}),
        json!({"items": [1], "max_iterations": 0}),
        json!({"items": 3}),
    ] {
        let Some(expected) = original(LOOP.0, LOOP.1, &bad) else {
            return;
        };
        assert_eq!(expected["error"], json!("ValidationError"), "{bad}");
        let err = ours("loop", bad.clone()).await.expect_err("refused");
        assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
    }
}

#[actix_rt::test]
async fn untriggered_signals_and_returns_give_the_originals_outputs() {
    let cases = [
        (
            "break_loop",
            (
                "flowmason_lab.operators.control_flow.break_loop",
                "BreakLoop",
            ),
            json!({"condition": false, "result": 3, "message": "m"}),
        ),
        (
            "continue_loop",
            (
                "flowmason_lab.operators.control_flow.continue_loop",
                "ContinueLoop",
            ),
            json!({"condition": false, "message": "m"}),
        ),
        (
            "return",
            (
                "flowmason_lab.operators.control_flow.return_early",
                "ReturnComponent",
            ),
            json!({"condition": false, "return_value": {"a": 1}}),
        ),
        (
            "return",
            (
                "flowmason_lab.operators.control_flow.return_early",
                "ReturnComponent",
            ),
            json!({"return_value": {"a": 1}, "message": "done", "status": "failed"}),
        ),
    ];
    for (component, (module, class), input) in cases {
        let Some(mut expected) = original(module, class, &input) else {
            return;
        };
        // The executor's directive is FlowMason's internal plumbing; ours uses the stage's `skip`.
        if let Some(out) = expected["output"].as_object_mut() {
            out.remove("directive");
        }
        let got = ours(component, input.clone()).await.expect("runs");
        assert_eq!(got, expected["output"], "{component} {input}");
    }
}

fn signals_plan(parallel: bool) -> PlanSpec {
    plan(vec![
        configured(
            "loop",
            "foreach",
            &[],
            json!({"items": "{{input.items}}", "loop_stages": ["check", "skip_odd", "stop", "shape"],
                   "item_variable": "n", "parallel": parallel, "max_parallel": 3}),
        ),
        configured(
            "check",
            "json_transform",
            &["loop"],
            json!({"data": {"n": "{{upstream.loop.n}}"},
                   "jq": "{odd: (.n % 2 == 1), big: (.n >= 4)}"}),
        ),
        configured(
            "skip_odd",
            "continue_loop",
            &["check"],
            json!({"condition": "{{upstream.check.result.odd}}"}),
        ),
        configured(
            "stop",
            "break_loop",
            &["skip_odd"],
            json!({"condition": "{{upstream.check.result.big}}", "result": "{{upstream.loop.n}}",
                   "message": "big enough"}),
        ),
        configured(
            "shape",
            "json_transform",
            &["stop"],
            json!({"data": {"n": "{{upstream.loop.n}}"}, "jq": ".n * 10"}),
        ),
        configured("after", "noop", &["loop"], Value::Null),
    ])
}

#[actix_rt::test]
async fn break_loop_ends_a_foreach_and_continue_loop_leaves_iterations_out() {
    let f = fixture(builtin_registry());
    for parallel in [false, true] {
        let (state, events) = run_to_end(
            &f.engine,
            &f.store,
            signals_plan(parallel),
            json!({"items": [1, 2, 3, 4, 5, 6]}),
        )
        .await;
        assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
        let out = output(&state, "loop");
        let results: Vec<&Value> = out["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| &r["result"])
            .collect();
        assert_eq!(results, [&json!(20)], "parallel={parallel}");
        assert_eq!(out["continued_items"], json!([0, 2]), "parallel={parallel}");
        assert_eq!(out["broken"], json!(true));
        assert_eq!(out["break_result"], json!(4));
        assert_eq!(out["break_message"], json!("big enough"));
        assert_eq!(phase(&state, "after"), StagePhase::Succeeded);
        for inner in ["check", "skip_odd", "stop", "shape"] {
            assert_eq!(started(&events, inner), 0, "{inner} ran as a DAG stage");
        }
    }
}

fn guard_plan() -> PlanSpec {
    let mut spec = plan(vec![
        configured("check", "noop", &[], Value::Null),
        configured(
            "guard",
            "return",
            &["check"],
            json!({"condition": "{{input.stop}}", "return_value": {"found": false},
                   "message": "nothing to do"}),
        ),
        configured("work", "noop", &["guard"], Value::Null),
        configured("report", "noop", &["work"], Value::Null),
    ]);
    spec.output_stage = Some("guard".into());
    spec
}

#[actix_rt::test]
async fn return_skips_the_rest_of_the_pipeline_and_the_run_succeeds() {
    let f = fixture(builtin_registry());
    let (state, events) =
        run_to_end(&f.engine, &f.store, guard_plan(), json!({"stop": true})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = state.output.clone().expect("run output");
    assert_eq!(out["return_value"], json!({"found": false}));
    assert_eq!(out["remaining_stages"], json!(["work", "report"]));
    for skipped in ["work", "report"] {
        assert_eq!(
            skip_reason(&state, skipped),
            Some(SkipReason::BranchNotTaken)
        );
        assert_eq!(started(&events, skipped), 0);
    }
    let (state, _) = run_to_end(&f.engine, &f.store, guard_plan(), json!({"stop": false})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    assert_eq!(phase(&state, "report"), StagePhase::Succeeded);
}

// ---------------------------------------------------------------------------------------------------------
// retry, timeout, parallel: tasks are stages of the pipeline run inside the stage

#[actix_rt::test]
async fn retry_reruns_its_task_with_a_new_key_per_attempt_until_it_succeeds() {
    let flaky = EveryOtherCall::default();
    let mut registry = builtin_registry();
    registry.register("every_other_call", flaky.clone());
    let f = fixture(registry);
    let spec = |config: Value| {
        plan(vec![
            configured("again", "retry", &[], config),
            configured("call", "every_other_call", &["again"], json!({})),
            configured("after", "noop", &["again"], Value::Null),
        ])
    };
    let (state, events) = run_to_end(
        &f.engine,
        &f.store,
        spec(json!({"task": "call", "max_retries": 2, "initial_delay": 0})),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = output(&state, "again");
    assert_eq!(out["success"], json!(true));
    assert_eq!(out["result"], json!({"call": 2}));
    assert_eq!(out["attempts"], json!(2));
    assert_eq!(out["exhausted"], json!(false));
    let errors = out["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .as_str()
            .is_some_and(|e| e.starts_with("Attempt 1/3: transient:")),
        "{errors:?}"
    );
    assert_eq!(started(&events, "call"), 0, "the task ran as a DAG stage");
    assert_eq!(phase(&state, "after"), StagePhase::Succeeded);
    let keys = flaky.keys.lock().expect("keys").clone();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].contains("/again[attempt1]/call/"), "{keys:?}");
    assert!(keys[1].contains("/again[attempt2]/call/"), "{keys:?}");

    // Out of retries, or an error outside `retry_on`: not a failure of the stage, as in FlowMason.
    for (config, exhausted) in [
        (json!({"task": "call", "max_retries": 0}), true),
        (
            json!({"task": "call", "retry_on": ["ValueError"], "initial_delay": 0}),
            false,
        ),
    ] {
        let mut registry = builtin_registry();
        registry.register("every_other_call", EveryOtherCall::default());
        let f = fixture(registry);
        let (state, _) = run_to_end(&f.engine, &f.store, spec(config), json!({})).await;
        assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
        let out = output(&state, "again");
        assert_eq!(out["attempts"], json!(1));
        assert_eq!(
            (out["success"].clone(), out["exhausted"].clone()),
            (json!(false), json!(exhausted))
        );
    }
}

/// Stages a task can name: slow (10 minutes), quick, fallback, first -> second, broken (fails).
fn task_stage(id: &str, owner: &str) -> StagePlan {
    match id {
        "slow" => configured(id, "delay", &[owner], json!({"seconds": 600})),
        "quick" => configured(
            id,
            "json_transform",
            &[owner],
            json!({"data": {"ok": 1}, "jq": ".ok"}),
        ),
        "fallback" => configured(id, "json_transform", &[owner], json!({"data": "cached"})),
        "first" => configured(
            id,
            "json_transform",
            &[owner],
            json!({"data": 2, "jq": ". * 10"}),
        ),
        "second" => configured(
            id,
            "json_transform",
            &["first"],
            json!({"data": "{{upstream.first.result}}", "jq": ". + 1"}),
        ),
        _ => configured(
            id,
            "json_transform",
            &[owner],
            json!({"data": 1, "jq": "error(\"boom\")"}),
        ),
    }
}

/// `owner` of type `component` with `config`, plus the task stages it names (and no others, which would
/// run as ordinary stages).
fn owner_plan(owner: &str, component: &str, config: Value, stages: &[&str]) -> PlanSpec {
    let mut all = vec![configured(owner, component, &[], config)];
    all.extend(stages.iter().map(|id| task_stage(id, owner)));
    plan(all)
}

fn timeout_plan(config: Value, stages: &[&str]) -> PlanSpec {
    owner_plan("limit", "timeout", config, stages)
}

fn parallel_plan(config: Value, stages: &[&str]) -> PlanSpec {
    owner_plan("fan", "parallel", config, stages)
}

#[actix_rt::test]
async fn timeout_cancels_a_slow_task_and_runs_its_fallback() {
    let f = fixture(builtin_registry());
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        timeout_plan(
            json!({"task": "slow", "timeout": 0.2, "fallback_task": "fallback"}),
            &["slow", "fallback"],
        ),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = output(&state, "limit");
    assert_eq!(out["timed_out"], json!(true));
    assert_eq!(out["success"], json!(false));
    assert_eq!(out["result"]["result"], json!("cached"));
    assert_eq!(out["timeout_value"], json!(0.2));
    for inner in ["slow", "fallback"] {
        assert_eq!(
            skip_reason(&state, inner),
            Some(SkipReason::BranchNotTaken),
            "{inner}"
        );
    }

    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        timeout_plan(json!({"task": "quick", "timeout": 60}), &["quick"]),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = output(&state, "limit");
    assert_eq!(
        (out["success"].clone(), out["result"]["result"].clone()),
        (json!(true), json!(1))
    );
}

#[actix_rt::test]
async fn a_timeout_without_fallback_fails_with_class_timeout_and_is_retried_by_the_stage_policy() {
    let f = fixture(builtin_registry());
    let mut spec = timeout_plan(json!({"task": "slow", "timeout": 0.1}), &["slow"]);
    spec.stages[0].retry = Some(RetryPolicy {
        limit: 1,
        initial_ms: 1,
        jitter: 0.0,
        ..RetryPolicy::default()
    });
    let (state, _) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    let stage = &state.stages["limit"];
    assert_eq!(stage.attempts, 2, "the timeout class is retried");
    let error = stage.error.clone().expect("stage error");
    assert_eq!(error.class, ErrorClass::Timeout);
    assert!(
        error.message.contains("exceeded timeout of 0.1s"),
        "{}",
        error.message
    );
}

#[actix_rt::test]
async fn cancelling_the_run_stops_a_timeout_and_a_parallel_stage_at_once() {
    let f = fixture(builtin_registry());
    for spec in [
        timeout_plan(json!({"task": "slow", "timeout": 600}), &["slow"]),
        parallel_plan(json!({"tasks": ["slow", "quick"]}), &["slow", "quick"]),
    ] {
        let handle = f
            .engine
            .start(RunRequest::new("test", spec, json!({})))
            .await
            .expect("start");
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.engine.cancel(handle.run_id, "test");
        let state = tokio::time::timeout(Duration::from_secs(20), handle.finished())
            .await
            .expect("the stage ignored cancellation")
            .expect("end");
        assert_eq!(state.phase, RunPhase::Cancelled);
    }
}

#[actix_rt::test]
async fn parallel_runs_its_tasks_together_and_keeps_their_order() {
    let f = fixture(builtin_registry());
    let (state, events) = run_to_end(&f.engine, &f.store, parallel_plan(
            json!({"tasks": [["first", "second"], "quick", "broken"], "on_error": "collect_errors"}),
            &["first", "second", "quick", "broken"],
        ),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let out = output(&state, "fan");
    assert_eq!(out["results"][0]["result"], json!(21));
    assert_eq!(out["results"][1]["result"], json!(1));
    assert_eq!(out["results"][2]["stage"], json!("broken"));
    assert_eq!(
        (out["success_count"].clone(), out["error_count"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(out["errors"][0]["task_index"], json!(2));
    for inner in ["first", "second", "quick", "broken"] {
        assert_eq!(started(&events, inner), 0, "{inner} ran as a DAG stage");
    }

    // fail_fast: the failure fails the stage at once; the slow task is cancelled, not waited for.
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        parallel_plan(json!({"tasks": ["slow", "broken"]}), &["slow", "broken"]),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.stages["fan"].error.clone().expect("stage error");
    assert!(
        error.message.contains("parallel: task 1"),
        "{}",
        error.message
    );

    // wait_for_all false: the first task to finish is the result.
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        parallel_plan(
            json!({"tasks": ["slow", "quick"], "wait_for_all": false}),
            &["slow", "quick"],
        ),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    let results = output(&state, "fan")["results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(1), "{results}");
    assert_eq!(results[0]["result"], json!(1));

    // A time limit for all tasks fails the stage with class timeout.
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        parallel_plan(
            json!({"tasks": ["slow", "quick"], "timeout": 0.2}),
            &["slow", "quick"],
        ),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.stages["fan"].error.clone().expect("stage error");
    assert_eq!(error.class, ErrorClass::Timeout, "{}", error.message);
}

// ---------------------------------------------------------------------------------------------------------
// output_router, error_router: against a loopback webhook, side by side with the original

type Received = Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// A webhook server on 127.0.0.1: `/hook` answers 200, `/down` 500; every body is recorded with its
/// path.
async fn webhooks() -> (String, Received) {
    use axum::routing::post;
    let received: Received = Arc::default();
    let record = |path: &'static str, status: StatusCode| {
        let received = received.clone();
        move |axum::Json(body): axum::Json<Value>| {
            let received = received.clone();
            async move {
                received
                    .lock()
                    .expect("received")
                    .push((path.to_string(), body));
                (status, "noted")
            }
        }
    };
    let app = Router::new()
        .route("/hook", post(record("hook", StatusCode::OK)))
        .route(
            "/down",
            post(record("down", StatusCode::INTERNAL_SERVER_ERROR))
                .put(record("down", StatusCode::INTERNAL_SERVER_ERROR)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}"), received)
}

fn without(mut value: Value, pointer_parent: &str, key: &str) -> Value {
    if let Some(Value::Array(items)) = value.pointer_mut(pointer_parent) {
        for item in items {
            if let Some(map) = item.as_object_mut() {
                map.remove(key);
            }
        }
    }
    value
}

async fn original_async(module: &'static str, class: &'static str, input: Value) -> Option<Value> {
    tokio::task::spawn_blocking(move || original(module, class, &input))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_error_routers_deliver_as_the_original_does() {
    let (base, received) = webhooks().await;
    let destinations = json!([
        {"id": "a", "name": "Hook", "type": "webhook", "config": {"url": format!("{base}/hook")}},
        {"id": "b", "name": "Down", "type": "webhook", "on_error": true,
         "config": {"url": format!("{base}/down"), "method": "PUT", "headers": {"x-team": "ops"}}},
        {"id": "c", "name": "Off", "type": "webhook", "enabled": false,
         "config": {"url": format!("{base}/hook")}},
        {"id": "d", "name": "Errors only", "type": "webhook", "on_success": false, "on_error": true,
         "config": {"url": format!("{base}/hook")}},
    ]);
    let module = "flowmason_lab.operators.core.output_router";
    let input = json!({"data": {"total": 3}, "destinations": destinations, "metadata": {"k": "v"},
                       "parallel": false});
    let Some(expected) = original_async(module, "OutputRouterOperator", input.clone()).await else {
        return;
    };
    let theirs: Vec<(String, Value)> = received.lock().expect("received").drain(..).collect();
    let got = ours("output_router", input).await.expect("routes");
    let mine: Vec<(String, Value)> = received.lock().expect("received").drain(..).collect();
    assert_eq!(
        without(got, "/results", "duration_ms"),
        without(expected["output"].clone(), "/results", "duration_ms")
    );
    let strip = |bodies: Vec<(String, Value)>| -> Vec<(String, Value)> {
        bodies
            .into_iter()
            .map(|(path, mut body)| {
                assert!(body["timestamp"].is_string(), "{body}");
                if let Some(b) = body.as_object_mut() {
                    b.remove("timestamp");
                }
                (path, body)
            })
            .collect()
    };
    assert_eq!(strip(mine), strip(theirs), "the payloads sent");

    let input = json!({"error_type": "TIMEOUT", "error_message": "too slow", "stage_id": "fetch",
                       "pipeline_id": "p", "run_id": "r1", "destinations": destinations,
                       "severity": "critical"});
    let Some(expected) = original_async(module, "ErrorRouterOperator", input.clone()).await else {
        return;
    };
    let theirs: Vec<(String, Value)> = received.lock().expect("received").drain(..).collect();
    let got = ours("error_router", input).await.expect("routes");
    let mine: Vec<(String, Value)> = received.lock().expect("received").drain(..).collect();
    let sort = |mut v: Value| {
        if let Some(items) = v.pointer_mut("/results").and_then(Value::as_array_mut) {
            items.sort_by_key(|r| r["destination_id"].to_string());
        }
        without(v, "/results", "duration_ms")
    };
    assert_eq!(sort(got), sort(expected["output"].clone()));
    let strip_all = |bodies: Vec<(String, Value)>| -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = bodies
            .into_iter()
            .map(|(path, mut body)| {
                if let Some(b) = body.as_object_mut() {
                    b.remove("timestamp");
                }
                if let Some(d) = body["data"].as_object_mut() {
                    d.remove("timestamp");
                }
                (path, body)
            })
            .collect();
        out.sort_by_key(|(p, b)| format!("{p}{b}"));
        out
    };
    assert_eq!(
        strip_all(mine),
        strip_all(theirs),
        "the error payloads sent"
    );

    // fail_on_error: a 500 fails the stage with a retryable class.
    let input = json!({"data": 1, "destinations": destinations, "fail_on_error": true});
    let err = ours("output_router", input).await.expect_err("fails");
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(
        err.message
            .contains("delivery failed for destinations: Down"),
        "{}",
        err.message
    );
}

// ---------------------------------------------------------------------------------------------------------
// aggregate, join: compared with the original's pandas results (pandas is installed by scripts/test.sh)

/// `value` with every number as an f64 rounded to 9 places (pandas turns integer columns with gaps into
/// floats) and the run-time measurement left out.
fn comparable(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            json!((x * 1e9).round() / 1e9)
        }
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "execution_time_ms")
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

async fn same_as_original(
    component: &str,
    module: &'static str,
    class: &'static str,
    input: Value,
) {
    let Some(expected) = original_async(module, class, input.clone()).await else {
        return;
    };
    let got = ours(component, input.clone()).await.expect("runs");
    assert_eq!(
        comparable(&got),
        comparable(&expected["output"]),
        "{component} {input}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_computes_what_the_originals_pandas_does() {
    let data = json!([
        {"region": "b", "amount": 10, "id": 1, "name": "x"},
        {"region": "a", "amount": 20, "id": 2, "name": "y"},
        {"region": "b", "amount": 30, "id": 3},
        {"region": null, "amount": 5, "id": 4, "name": "x"},
        {"region": "a", "id": 5, "name": "z"},
    ]);
    let every = json!([
        {"func": "sum", "field": "amount", "alias": "total"},
        {"func": "avg", "field": "amount"},
        {"func": "count", "field": "amount", "alias": "n"},
        {"func": "min", "field": "amount"},
        {"func": "max", "field": "name"},
        {"func": "std", "field": "amount"},
        {"func": "var", "field": "amount"},
        {"func": "distinct", "field": "name"},
        {"func": "median", "field": "amount"},
        {"func": "percentile", "field": "amount", "percentile": 90, "alias": "p90"},
        {"func": "first", "field": "name"},
        {"func": "last", "field": "amount"},
    ]);
    let module = "flowmason_lab.transformers.aggregate";
    for input in [
        json!({"data": data, "aggregations": every}),
        json!({"data": data, "aggregations": every, "group_by": ["region"]}),
        json!({"data": data, "aggregations": every, "group_by": ["region", "name"],
               "having": "total > 5 and n >= 1"}),
        json!({"data": data, "aggregations": [{"func": "sum", "field": "missing"}]}),
    ] {
        same_as_original("aggregate", module, "AggregateTransformer", input).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_merges_as_the_originals_pandas_does() {
    let left = json!([{"id": 1, "name": "A", "v": 1}, {"id": 2, "name": "B", "v": 2},
                      {"id": 3, "name": "C"}, {"id": 1, "name": "A2", "v": 5}]);
    let right = json!([{"id": 3, "score": 9, "v": 3}, {"id": 1, "score": 5, "v": 4},
                       {"id": 4, "score": 7}]);
    let other = json!([{"key": 2, "score": 1}, {"key": 1, "score": 2}]);
    let module = "flowmason_lab.transformers.join";
    for input in [
        json!({"left_data": left, "right_data": right, "left_on": "id", "right_on": "id"}),
        json!({"left_data": left, "right_data": right, "left_on": "id", "right_on": "id",
               "join_type": "left", "suffixes": ["_l", "_r"]}),
        json!({"left_data": left, "right_data": right, "left_on": ["id"], "right_on": ["id"],
               "join_type": "right"}),
        json!({"left_data": left, "right_data": right, "left_on": "id", "right_on": "id",
               "join_type": "full_outer"}),
        json!({"left_data": left, "right_data": other, "left_on": "id", "right_on": "key"}),
        // The original requires the keys even for a cross join (and ignores them).
        json!({"left_data": left, "right_data": other, "left_on": "id", "right_on": "key",
               "join_type": "cross"}),
        json!({"left_data": left, "right_data": other, "left_on": "nope", "right_on": "key"}),
    ] {
        same_as_original("join", module, "JoinTransformer", input).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pandas_operations_give_what_the_original_gives() {
    let data = json!([
        {"id": 1, "name": "alice", "age": 30, "status": "active"},
        {"id": 2, "name": "bob", "age": 25, "status": "idle"},
        {"id": 3, "name": "carol", "status": "active"},
        {"id": 4, "name": "dan", "age": 41, "status": "active"},
    ]);
    let right = json!([{"id": 1, "team": "x"}, {"id": 4, "team": "y"}, {"id": 9, "team": "z"}]);
    let module = "flowmason_lab.transformers.pandas_ops";
    for extra in [
        json!({"operation": "filter", "expression": "age > 26 and status == 'active'"}),
        json!({"operation": "sort", "sort_by_columns": ["age"], "ascending": false}),
        json!({"operation": "sort", "sort_by_columns": ["status", "id"], "ascending": [true, false]}),
        json!({"operation": "drop", "drop_columns": ["status"]}),
        json!({"operation": "drop", "drop_columns": ["nope"]}),
        json!({"operation": "rename", "rename_columns": {"name": "who"}}),
        json!({"operation": "fillna", "fill_value": 0}),
        json!({"operation": "groupby", "group_by_columns": ["status"],
               "aggregations": {"age": "mean", "id": "count", "name": "first"}}),
        json!({"operation": "merge", "right_data": right, "merge_on": "id", "merge_how": "left"}),
        json!({"operation": "apply", "column": "name", "function": "str.upper"}),
        json!({"operation": "apply", "column": "age", "function": "lambda x: x * 2"}),
    ] {
        let mut input = extra.clone();
        input["data"] = data.clone();
        same_as_original("pandas", module, "PandasTransformer", input).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_what_the_originals_duckdb_answers() {
    let data = json!([
        {"id": 1, "name": "alice", "age": 30, "dept": "eng"},
        {"id": 2, "name": "bob", "age": 25, "dept": "ops"},
        {"id": 3, "name": "carol", "age": 35, "dept": "eng"},
    ]);
    let orders = json!([{"user_id": 1, "amount": 100}, {"user_id": 3, "amount": 50},
                        {"user_id": 1, "amount": 20}]);
    let module = "flowmason_lab.transformers.sql";
    for sql in [
        "SELECT name, age FROM data WHERE age > 26 ORDER BY age DESC",
        "SELECT dept, COUNT(*) AS n, MAX(age) AS oldest FROM data GROUP BY dept ORDER BY dept",
        "SELECT d.name, SUM(o.amount) AS total FROM data d JOIN orders o ON d.id = o.user_id \
         GROUP BY d.name ORDER BY total DESC",
    ] {
        let input = json!({"data": data, "sql": sql, "additional_tables": {"orders": orders}});
        same_as_original("sql", module, "SQLTransformer", input).await;
    }
}

//! LLM components and secrets end to end: a local fake server (127.0.0.1 only) speaks the Anthropic
//! Messages and OpenAI Chat Completions protocols, records every request and answers with canned
//! responses; pipelines run on the real engine and through the `fm` binary. Nothing leaves loopback.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use flowmason::components::builtin_registry;
use flowmason::env::{Chain, EnvFile, SecretsFile};
use flowmason::model::{load_pipeline_str, to_plan};
use flowmason_actors::{Engine, EngineConfig, RunRequest};
use flowmason_store::{
    ErrorClass, Event, EventKind, EventStore, RunPhase, RunQuery, RunState, StoreConfig,
};
use serde_json::{Value, json};

#[path = "support/plans.rs"]
mod plans;

use plans::run_to_end;

const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";
const OPENAI_KEY: &str = "sk-openai-test-9876543210";

// ---------------------------------------------------------------------------------------------------------
// The fake provider server

/// A request the fake server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
    /// Unix microseconds.
    at: i64,
}

/// An answer to give instead of the default one.
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

#[derive(Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    script: Mutex<VecDeque<Canned>>,
    /// Text of the default answers (a template `{key}` is replaced by the request's API key, to play a
    /// provider that echoes what it was sent).
    anthropic_text: Mutex<String>,
    openai_text: Mutex<String>,
}

struct Fake {
    addr: SocketAddr,
    state: Arc<FakeState>,
}

impl Fake {
    async fn start() -> Fake {
        let state = Arc::new(FakeState::default());
        *state.anthropic_text.lock().expect("lock") = "Drafted text.".into();
        *state.openai_text.lock().expect("lock") = "- point one\n- point two".into();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn push(&self, canned: Canned) {
        self.state.script.lock().expect("lock").push_back(canned);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    fn set_texts(&self, anthropic: &str, openai: &str) {
        *self.state.anthropic_text.lock().expect("lock") = anthropic.into();
        *self.state.openai_text.lock().expect("lock") = openai.into();
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn answer(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    let at = now_micros();
    let path = request.uri().path().to_string();
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    state.seen.lock().expect("lock").push(Seen {
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        at,
    });
    let canned = state.script.lock().expect("lock").pop_front();
    let canned = canned.unwrap_or_else(|| {
        let model = body["model"].as_str().unwrap_or("?").to_string();
        let key = headers
            .get("x-api-key")
            .cloned()
            .or_else(|| {
                headers
                    .get("authorization")
                    .map(|a| a.trim_start_matches("Bearer ").to_string())
            })
            .unwrap_or_default();
        if path == "/v1/messages" {
            let text = state
                .anthropic_text
                .lock()
                .expect("lock")
                .replace("{key}", &key);
            Canned {
                status: 200,
                headers: Vec::new(),
                body: json!({"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "usage": {"input_tokens": 11, "output_tokens": 7}}),
            }
        } else if path == "/v1/chat/completions" {
            let text = state
                .openai_text
                .lock()
                .expect("lock")
                .replace("{key}", &key);
            Canned {
                status: 200,
                headers: Vec::new(),
                body: json!({"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}),
            }
        } else if path == "/v1/embeddings" {
            Canned {
                status: 200,
                headers: Vec::new(),
                body: json!({"object": "list", "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [3.0, 4.0]}],
                    "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
            }
        } else {
            Canned {
                status: 404,
                headers: Vec::new(),
                body: json!({"error": {"message": format!("no route {path}")}}),
            }
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::from_u16(canned.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (name, value) in canned.headers {
        response = response.header(name, value);
    }
    response
        .body(Body::from(canned.body.to_string()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------
// Running pipelines on the engine

fn secrets_yaml() -> String {
    format!(
        "secrets:\n  llm-secrets:\n    anthropic-key: {ANTHROPIC_KEY}\n    openai-key: {OPENAI_KEY}\n"
    )
}

fn pipeline(fake: &Fake, stages: &str, retries: &str) -> String {
    format!(
        "stages:\n{stages}\n{retries}\nproviders:\n  default: anthropic\n  anthropic:\n    model: claude-test\n    secretRef: {{name: llm-secrets, key: anthropic-key}}\n    baseUrl: {url}\n  openai:\n    model: gpt-test\n    secretRef: {{name: llm-secrets, key: openai-key}}\n    baseUrl: {url}/v1\n",
        url = fake.url()
    )
}

struct Ran {
    state: RunState,
    events: Vec<Event>,
    _dir: tempfile::TempDir,
}

async fn run_pipeline(yaml: &str, secrets: &str, inputs: Value) -> Ran {
    let loaded = load_pipeline_str(yaml, "test.yaml").expect("pipeline loads");
    let registry = builtin_registry();
    let problems = flowmason::model::validate(&loaded.spec, &|n| registry.contains(n));
    assert!(problems.is_empty(), "{problems:?}");
    let plan = to_plan(&loaded.spec).expect("plan");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("store");
    let source = Chain::new().with(SecretsFile::parse("secrets", secrets).expect("secrets"));
    let config = EngineConfig {
        env: flowmason::env::resolver(Arc::new(source)),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store.clone(), registry, config);
    let (state, events) = run_to_end(&engine, &store, plan, inputs).await;
    Ran {
        state,
        events,
        _dir: dir,
    }
}

fn assert_no_secret(text: &str, what: &str) {
    for key in [ANTHROPIC_KEY, OPENAI_KEY] {
        assert!(!text.contains(key), "{what} holds a secret value: {text}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Protocols, outputs, token accounting

#[actix_rt::test]
async fn generator_on_anthropic_and_summarizer_on_openai_send_the_documented_requests() {
    let fake = Fake::start().await;
    // The Anthropic fake echoes the key it was sent: the engine must mask it.
    fake.set_texts("Key {key} drafted.", "- point one\n- point two");
    let yaml = pipeline(
        &fake,
        r#"  - id: draft
    componentType: generator
    config:
      prompt: "Write about {{input.topic}}"
      system_prompt: Be brief.
      temperature: 0.2
      max_tokens: 50
      stop_sequences: [END]
  - id: sum
    componentType: summarizer
    dependsOn: [draft]
    config:
      provider: openai
      text: "{{upstream.draft.content}}"
      style: bullet
      max_tokens: 60"#,
        "",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({"topic": "otters"})).await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    let a = &seen[0];
    assert_eq!(a.path, "/v1/messages");
    assert_eq!(a.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(a.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        a.body,
        json!({"model": "claude-test", "max_tokens": 50, "temperature": 0.2, "system": "Be brief.",
               "messages": [{"role": "user", "content": "Write about otters"}],
               "stop_sequences": ["END"], "stream": false})
    );
    let o = &seen[1];
    assert_eq!(o.path, "/v1/chat/completions");
    assert_eq!(o.headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert_eq!(o.body["model"], json!("gpt-test"));
    assert_eq!(o.body["max_tokens"], json!(60));
    assert_eq!(o.body["temperature"], json!(0.3));
    assert_eq!(o.body["stream"], json!(false));
    assert_eq!(
        o.body["messages"],
        json!([{"role": "system", "content": "You are an expert summarizer. Create clear, accurate summaries."},
               {"role": "user", "content": "Summarize the following text as bullet points:\n\nKey *** drafted."}])
    );

    let draft = ran.state.stages["draft"]
        .output
        .clone()
        .expect("draft output");
    assert_eq!(draft["content"], json!("Key *** drafted."));
    assert_eq!(draft["tokens_used"], json!(18));
    assert_eq!(draft["finish_reason"], json!("stop"));
    assert_eq!(draft["model"], json!("claude-test"));
    assert_eq!(
        draft["usage"],
        json!({"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
               "cost_usd": 0.000138, "model": "claude-test", "provider": "anthropic"})
    );
    let sum = ran.state.output.clone().expect("output");
    assert_eq!(sum["summary"], json!("- point one\n- point two"));
    assert_eq!(sum["style"], json!("bullet"));
    assert_eq!(sum["input"], json!("Key *** drafted."));
    assert_eq!(sum["word_count"], json!(6));
    assert_eq!(sum["usage"]["total_tokens"], json!(8));

    assert_eq!(ran.state.total_tokens, 26);
    assert!(ran.state.total_cost_usd > 0.000138);
    let log = serde_json::to_string(&ran.events).expect("serialize");
    assert_no_secret(&log, "the event log");
    assert!(log.contains("used 18 tokens"), "usage is logged: {log}");
}

#[actix_rt::test]
async fn critic_reads_json_feedback_and_chat_sends_the_trimmed_history() {
    let fake = Fake::start().await;
    fake.set_texts(
        "unused",
        r#"{"overall_rating": "good", "score": 0.8, "feedback": "Clear.", "strengths": ["short"], "improvements": [], "criterion_scores": {"clarity": 0.9}, "passes_threshold": true}"#,
    );
    let yaml = pipeline(
        &fake,
        r#"  - id: review
    componentType: critic
    config:
      provider: openai
      content: A text.
      criteria: [clarity]
      strict_mode: true
  - id: talk
    componentType: chat
    config:
      provider: openai
      model: gpt-other
      message: And now?
      max_history: 1
      system_prompt: Be kind.
      persona: A teacher
      history:
        - {role: user, content: old question}
        - {role: assistant, content: old answer}
        - {role: user, content: recent question}
        - {role: assistant, content: recent answer}"#,
        "",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );
    let review = ran.state.stages["review"].output.clone().expect("review");
    assert_eq!(review["overall_rating"], json!("good"));
    assert_eq!(review["score"], json!(0.8));
    assert_eq!(review["criterion_scores"], json!({"clarity": 0.9}));
    assert_eq!(review["usage"]["total_tokens"], json!(8));

    let seen = fake.seen();
    let critic = seen
        .iter()
        .find(|s| {
            s.body["messages"][1]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("Evaluate"))
        })
        .expect("critic request");
    assert_eq!(critic.body["temperature"], json!(0.3));
    assert_eq!(critic.body["max_tokens"], json!(2048));
    assert!(
        critic.body["messages"][0]["content"]
            .as_str()
            .is_some_and(|s| s.contains("Apply strict evaluation standards."))
    );
    let chat = seen
        .iter()
        .find(|s| s.body["model"] == json!("gpt-other"))
        .expect("chat request");
    assert_eq!(
        chat.body["messages"],
        json!([{"role": "system", "content": "Be kind.\n\nPersona: A teacher"},
               {"role": "user", "content": "recent question"},
               {"role": "assistant", "content": "recent answer"},
               {"role": "user", "content": "And now?"}])
    );
    assert_eq!(chat.body["temperature"], json!(0.7));
    let talk = ran.state.stages["talk"].output.clone().expect("talk");
    assert_eq!(talk["turn_count"], json!(2));
    assert_eq!(talk["history"][0]["content"], json!("recent question"));
    assert_eq!(talk["history"][3]["role"], json!("assistant"));
    assert_eq!(talk["response"], review_text_of(&fake));
    assert_eq!(ran.state.total_tokens, 16);
}

fn review_text_of(fake: &Fake) -> Value {
    json!(
        fake.state
            .openai_text
            .lock()
            .expect("lock")
            .trim()
            .to_string()
    )
}

// ---------------------------------------------------------------------------------------------------------
// Errors and retries

#[actix_rt::test]
async fn a_rate_limited_call_is_retried_no_sooner_than_its_retry_after() {
    let fake = Fake::start().await;
    fake.push(Canned {
        status: 429,
        headers: vec![("retry-after", "1".into())],
        body: json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}}),
    });
    let yaml = pipeline(
        &fake,
        "  - id: draft\n    componentType: generator\n    config: {prompt: hi}",
        "retries: {limit: 2, backoff: {duration: 10ms}}",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    let failed = ran
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StageFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .expect("the 429 failed the first attempt");
    assert_eq!(failed.class, ErrorClass::Transient);
    assert!(failed.retryable);
    assert!(
        failed.message.contains("429 Too Many Requests"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("(retry after 1s)"),
        "{}",
        failed.message
    );
    let retry_at = ran
        .events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::StageRetryScheduled { at, .. } => Some(at),
            _ => None,
        })
        .expect("a retry was scheduled");
    assert!(
        retry_at - seen[0].at >= 1_000_000,
        "retry due {}us after the 429, which asked for 1s",
        retry_at - seen[0].at
    );
    assert!(seen[1].at - seen[0].at >= 1_000_000);
    assert_eq!(ran.state.stages["draft"].attempts, 2);
    assert_eq!(ran.state.total_tokens, 18);
}

#[actix_rt::test]
async fn a_server_error_is_retried_and_an_unauthorized_call_is_not() {
    let fake = Fake::start().await;
    fake.push(Canned {
        status: 503,
        headers: Vec::new(),
        body: json!({"error": {"message": "overloaded"}}),
    });
    fake.push(Canned {
        status: 401,
        headers: Vec::new(),
        // A provider that quotes the key back in its error.
        body: json!({"error": {"message": format!("invalid x-api-key {ANTHROPIC_KEY}")}}),
    });
    let yaml = pipeline(
        &fake,
        "  - id: draft\n    componentType: generator\n    config: {prompt: hi}",
        "retries: {limit: 3, backoff: {duration: 10ms}}",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(ran.state.phase, RunPhase::Failed);
    assert_eq!(fake.seen().len(), 2, "503 retried once, 401 not retried");
    let error = ran.state.stages["draft"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Client);
    assert!(!error.retryable);
    assert!(
        error
            .message
            .contains("401 Unauthorized: invalid x-api-key ***"),
        "{}",
        error.message
    );
    let log = serde_json::to_string(&ran.events).expect("serialize");
    assert_no_secret(&log, "the event log");
}

#[actix_rt::test]
async fn a_provider_without_secret_ref_takes_the_key_the_seed_puts_in_env() {
    let fake = Fake::start().await;
    fake.set_texts("Key {key} drafted.", "");
    let yaml = format!(
        "stages:\n  - id: draft\n    componentType: generator\n    config: {{prompt: hi}}\nenv:\n  - name: ANTHROPIC_API_KEY\n    valueFrom:\n      secretKeyRef: {{name: llm-secrets, key: anthropic-key}}\nproviders:\n  anthropic:\n    model: claude-test\n    baseUrl: {url}\n",
        url = fake.url()
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-api-key"], ANTHROPIC_KEY);
    let log = serde_json::to_string(&ran.events).expect("serialize");
    assert_no_secret(&log, "the event log");
}

#[actix_rt::test]
async fn a_missing_provider_key_fails_the_run_before_any_stage_starts() {
    let fake = Fake::start().await;
    let yaml = pipeline(
        &fake,
        "  - id: draft\n    componentType: generator\n    config: {prompt: hi}",
        "",
    );
    let secrets = format!("secrets:\n  llm-secrets:\n    openai-key: {OPENAI_KEY}\n");
    let ran = run_pipeline(&yaml, &secrets, json!({})).await;
    assert_eq!(ran.state.phase, RunPhase::Failed);
    assert_eq!(
        ran.state.error.expect("error").message,
        r#"environment: providers.anthropic.secretRef: secret "llm-secrets" has no key "anthropic-key""#
    );
    assert!(
        ran.events
            .iter()
            .all(|e| !matches!(e.kind, EventKind::StageStarted { .. }))
    );
    assert!(fake.seen().is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Through the `fm` binary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_example_runs_through_fm_and_no_secret_reaches_the_log_or_the_terminal() {
    let fake = Fake::start().await;
    fake.set_texts("Draft quoting {key}.", "- summary point");
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("llm.env");
    // One key from an env file bound to the Secret's name, the other from the process environment.
    std::fs::write(
        &env_file,
        format!("# test keys\nanthropic-key={ANTHROPIC_KEY}\n"),
    )
    .expect("write");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/llm.yaml");
    let data = dir.path().join("data");
    let url = fake.url();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fm"))
        .env_remove("FM_DATA_DIR")
        .env("FM_LOG", "debug")
        .env("FM_SECRET_LLM_SECRETS_OPENAI_KEY", OPENAI_KEY)
        .arg("run")
        .arg(&example)
        .arg("--env-file")
        .arg(format!("llm-secrets={}", env_file.display()))
        .args(["--input", "topic=otters"])
        .args(["--input", &format!("anthropic_url={url}")])
        .args(["--input", &format!("openai_url={url}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["-o", "json"])
        .output()
        .await
        .expect("fm runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let result: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(result["review"]["feedback"], json!("Draft quoting ***."));
    assert_eq!(result["discuss"]["response"], json!("Draft quoting ***."));
    assert_eq!(result["discuss"]["turn_count"], json!(2));
    assert_no_secret(&stdout, "stdout");
    assert_no_secret(&stderr, "stderr");

    let seen = fake.seen();
    assert_eq!(seen.len(), 4, "one call per stage");
    assert!(
        seen.iter()
            .any(|s| s.headers.get("x-api-key").map(String::as_str) == Some(ANTHROPIC_KEY))
    );
    assert!(
        seen.iter()
            .any(|s| s.headers.get("authorization") == Some(&format!("Bearer {OPENAI_KEY}")))
    );
    let summary = seen
        .iter()
        .find(|s| s.path == "/v1/chat/completions")
        .expect("openai call");
    assert_eq!(summary.body["model"], json!("gpt-4o-mini"));

    let store = EventStore::open(data.join("events"), StoreConfig::default()).expect("open log");
    let runs = store
        .query(&RunQuery {
            limit: 100,
            ..RunQuery::default()
        })
        .expect("query")
        .runs;
    assert_eq!(runs.len(), 1);
    let mut all = Vec::new();
    for run in &runs {
        all.extend(store.events(run.run_id).expect("events"));
    }
    let state = store.fold(runs[0].run_id).expect("fold").expect("state");
    assert_eq!(state.total_tokens, 18 + 18 + 8 + 18);
    let log = serde_json::to_string(&all).expect("serialize");
    assert_no_secret(&log, "the event log");
    drop(store);
    // And not in the files either, whatever sled keeps besides the events.
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for key in [ANTHROPIC_KEY, OPENAI_KEY] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{} holds a secret value",
                entry.display()
            );
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test]
async fn env_files_and_the_chain_resolve_in_order() {
    let named = EnvFile::parse(
        "a",
        Some("llm-secrets".into()),
        "anthropic-key=from-env-file",
    )
    .expect("env file");
    let file = SecretsFile::parse("b", &secrets_yaml()).expect("secrets");
    let chain = Chain::new().with(named).with(file);
    use flowmason::env::SecretSource;
    assert_eq!(
        chain
            .secret("default", "llm-secrets", "anthropic-key")
            .await
            .expect("lookup")
            .as_deref(),
        Some("from-env-file")
    );
    assert_eq!(
        chain
            .secret("default", "llm-secrets", "openai-key")
            .await
            .expect("lookup")
            .as_deref(),
        Some(OPENAI_KEY)
    );
    assert_eq!(
        chain.secret("default", "nope", "k").await.expect("lookup"),
        None
    );
}

// ---------------------------------------------------------------------------------------------------------
// The LLM nodes of issue 17, against what FlowMason's own nodes do with the same input and answer

/// What FlowMason's node (run by tests/python/nodes.py from the installed package, without a network)
/// asked its LLM and answered, per case.
fn original_nodes(cases: &Value) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "target/pyenv is missing: run scripts/test.sh to install flowmason from PyPI"
    );
    let mut child = std::process::Command::new(python)
        .arg(root.join("tests/python/nodes.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(cases.to_string().as_bytes())
            .expect("write cases");
    }
    let out = child.wait_with_output().expect("python ends");
    assert!(out.status.success(), "nodes.py failed");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("nodes.py prints JSON")
}

/// One single-stage pipeline of `node` on the OpenAI fake, answering `answer`.
async fn run_node(fake: &Fake, node: &str, input: &Value, answer: &str) -> (Ran, Seen) {
    fake.set_texts("unused", answer);
    let mut config = input.clone();
    config["provider"] = json!("openai");
    let yaml = pipeline(
        fake,
        &format!("  - id: node\n    componentType: {node}\n    config: {config}"),
        "",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    let seen = fake.seen().last().cloned().expect("a request");
    (ran, seen)
}

#[actix_rt::test]
async fn the_new_llm_nodes_ask_and_answer_as_flowmasons_own_nodes_do() {
    let json_improved = r#"{"improved_content": "Better.", "changes_made": ["shorter"], "preserved_aspects": ["tone"], "improvement_summary": "cut"}"#;
    let cases = json!([
        {"node": "improver", "answer": json_improved, "input": {"content": "Draft text", "feedback": "Too long",
            "improvements": ["cut words"], "preserve_aspects": ["tone"], "improvement_focus": "brevity"}},
        {"node": "improver", "answer": "Just better text.", "input": {"content": "Draft", "feedback": "Meh",
            "preserve_aspects": ["voice"]}},
        {"node": "selector", "answer": r#"{"selected_index": 1, "explanation": "B is clearer", "rankings": [{"index": 1, "score": 0.9}], "confidence": 0.8}"#,
            "input": {"candidates": ["A text", "B text", "C text"], "criteria": ["clarity"], "context": "for kids",
                      "selection_mode": "top_n", "top_n": 2}},
        {"node": "selector", "answer": "I like the second.", "input": {"candidates": ["A", "B"], "selection_mode": "rank_all"}},
        {"node": "rewriter", "answer": "  Dear Sir.  ", "input": {"text": "hey you", "style": "formal", "tone": "friendly",
            "target_audience": "executives"}},
        {"node": "rewriter", "answer": "Short.", "input": {"text": "long text", "preserve_key_points": false}},
        {"node": "translator", "answer": "Hello", "input": {"text": "Hola", "source_language": "Spanish",
            "target_language": "English", "context": "a greeting"}},
        {"node": "translator", "answer": "Bonjour", "input": {"text": "Hello", "target_language": "French",
            "preserve_formatting": false}},
        {"node": "analyzer", "answer": "Sure: {\"sentiment\": \"positive\", \"confidence\": 0.9} ok", "input": {"text": "I love it"}},
        {"node": "analyzer", "answer": "Two topics.", "input": {"text": "Cats and dogs", "analysis_type": "custom",
            "prompt": "List the topics."}},
        {"node": "analyzer", "answer": "{\"entities\": []}", "input": {"text": "Ada in London", "analysis_type": "entities"}},
        {"node": "combiner", "answer": r#"{"synthesized": "All in one.", "key_themes": ["x"], "strategy_applied": "compare"}"#,
            "input": {"inputs": ["first", "second"], "synthesis_strategy": "compare", "context": "ctx",
                      "output_format": "bullet_points", "max_length": 50, "preserve_sources": true}},
        {"node": "combiner", "answer": "Merged text.", "input": {"inputs": ["a", "b", "c"]}}
    ]);
    let originals = original_nodes(&cases);
    let fake = Fake::start().await;
    let mut compared = 0;
    for (case, original) in cases.as_array().expect("cases").iter().zip(&originals) {
        let node = case["node"].as_str().expect("node");
        let answer = case["answer"].as_str().expect("answer");
        for ours in [node, "synthesizer"] {
            // synthesizer is combiner under its former name.
            if ours == "synthesizer" && node != "combiner" {
                continue;
            }
            let (ran, seen) = run_node(&fake, ours, &case["input"], answer).await;
            assert_eq!(
                ran.state.phase,
                RunPhase::Succeeded,
                "{ours}: {:?}",
                ran.state.error
            );
            let call = &original["calls"][0];
            assert_eq!(
                seen.body["messages"],
                json!([{"role": "system", "content": call["system_prompt"]},
                       {"role": "user", "content": call["prompt"]}]),
                "{ours}: the request differs from FlowMason's for {case}"
            );
            assert_eq!(seen.body["temperature"], call["temperature"], "{ours}");
            assert_eq!(seen.body["max_tokens"], call["max_tokens"], "{ours}");
            let mut output = ran.state.output.clone().expect("output");
            let usage = output
                .as_object_mut()
                .and_then(|o| o.remove("usage"))
                .expect("usage");
            assert_eq!(usage["total_tokens"], json!(8), "{ours}");
            assert_eq!(
                output, original["output"],
                "{ours}: the output differs from FlowMason's for {case}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 15);
}

#[actix_rt::test]
async fn the_synthesizer_heads_labelled_sources_and_adds_its_instructions() {
    let fake = Fake::start().await;
    let input = json!({"sources": [{"label": "Deal", "content": "big"}, {"label": "Intel", "content": "rivals"}],
                       "instructions": "Write a strategy."});
    let (ran, seen) = run_node(&fake, "synthesizer", &input, "Strategy.").await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );
    assert_eq!(
        seen.body["messages"][1]["content"],
        json!(
            "Synthesize the following 2 inputs:\n\n[Deal]:\nbig\n\n[Intel]:\nrivals\n\n\n\nInstructions:\nWrite a strategy.\n\nApply the 'integrate' strategy to combine these inputs into a unified output."
        )
    );
    let output = ran.state.output.expect("output");
    assert_eq!(output["synthesized"], json!("Strategy."));
    assert_eq!(output["sources_used"], json!(2));
}

#[actix_rt::test]
async fn the_embedder_calls_the_embeddings_api_and_normalizes() {
    let fake = Fake::start().await;
    let yaml = pipeline(
        &fake,
        "  - id: embed\n    componentType: embedder\n    config: {text: \" otters \", dimensions: 2}",
        "",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/embeddings");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {OPENAI_KEY}")
    );
    assert_eq!(
        seen[0].body,
        json!({"model": "text-embedding-3-small", "input": "otters", "encoding_format": "float", "dimensions": 2})
    );
    let output = ran.state.output.expect("output");
    assert_eq!(output["embedding"], json!([0.6, 0.8]));
    assert_eq!(output["text"], json!("otters"));
    assert_eq!(output["dimensions"], json!(2));
    assert_eq!(output["usage"]["input_tokens"], json!(4));
    assert_eq!(ran.state.total_tokens, 4);
}

#[actix_rt::test]
async fn the_new_nodes_report_config_errors_before_any_call() {
    let fake = Fake::start().await;
    let cases = [
        (
            "selector",
            json!({"candidates": ["{{input.a}}"]}),
            "selector: `candidates` must hold at least 2 candidates, got 1",
        ),
        (
            "translator",
            json!({"text": "{{input.t}}", "target_language": "{{input.blank}}"}),
            "translator: `target_language` must not be empty",
        ),
        (
            "embedder",
            json!({"text": "t", "provider": "{{input.p}}"}),
            "embedder: provider \"anthropic\" has no embeddings API",
        ),
        (
            "synthesizer",
            json!({"sources": "{{input.s}}"}),
            "synthesizer: `sources` must be a list of sources, got a string",
        ),
    ];
    for (node, config, message) in cases {
        let yaml = pipeline(
            &fake,
            &format!("  - id: node\n    componentType: {node}\n    config: {config}"),
            "",
        );
        let ran = run_pipeline(
            &yaml,
            &secrets_yaml(),
            json!({"a": "x", "p": "anthropic", "s": "text", "t": "x", "blank": " "}),
        )
        .await;
        assert_eq!(ran.state.phase, RunPhase::Failed, "{node}");
        let error = ran.state.stages["node"].error.clone().expect("error");
        assert!(error.message.contains(message), "{node}: {}", error.message);
        assert!(!error.retryable, "{node}");
    }
    assert!(fake.seen().is_empty(), "no provider was called");
}

#[actix_rt::test]
async fn a_new_node_is_retried_after_a_server_error() {
    let fake = Fake::start().await;
    fake.push(Canned {
        status: 503,
        headers: Vec::new(),
        body: json!({"error": {"message": "overloaded"}}),
    });
    let yaml = pipeline(
        &fake,
        "  - id: node\n    componentType: rewriter\n    config: {text: hi}",
        "retries: {limit: 2, backoff: {duration: 10ms}}",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(
        ran.state.phase,
        RunPhase::Succeeded,
        "{:?}",
        ran.state.error
    );
    assert_eq!(fake.seen().len(), 2);
    assert_eq!(ran.state.stages["node"].attempts, 2);
    assert_eq!(
        ran.state.output.expect("output")["rewritten"],
        json!("Drafted text.")
    );
}

/// A provider that accepts connections and never answers.
async fn silent_provider() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

fn silent_pipeline(url: &str, node: &str, config: &str, timeout: &str) -> String {
    format!(
        "stages:\n  - id: node\n    componentType: {node}\n    config: {config}\n{timeout}\nproviders:\n  openai:\n    baseUrl: {url}\n    secretRef: {{name: llm-secrets, key: openai-key}}\n"
    )
}

#[actix_rt::test]
async fn a_new_node_waiting_on_a_silent_provider_times_out() {
    let (_listener, url) = silent_provider().await;
    let yaml = silent_pipeline(
        &url,
        "translator",
        "{text: hi, target_language: French}",
        "    timeout: 300ms",
    );
    let ran = run_pipeline(&yaml, &secrets_yaml(), json!({})).await;
    assert_eq!(ran.state.phase, RunPhase::Failed);
    let error = ran.state.stages["node"].error.clone().expect("error");
    assert!(error.message.contains("timed out"), "{}", error.message);
}

#[actix_rt::test]
async fn a_new_node_waiting_on_a_silent_provider_is_cancelled() {
    let (_listener, url) = silent_provider().await;
    let yaml = silent_pipeline(&url, "embedder", "{text: hi}", "");
    let loaded = load_pipeline_str(&yaml, "test.yaml").expect("pipeline loads");
    let plan = to_plan(&loaded.spec).expect("plan");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("store");
    let source =
        Chain::new().with(SecretsFile::parse("secrets", &secrets_yaml()).expect("secrets"));
    let config = EngineConfig {
        env: flowmason::env::resolver(Arc::new(source)),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store.clone(), builtin_registry(), config);
    let handle = engine
        .start(RunRequest::new("llm", plan, json!({})))
        .await
        .expect("start");
    let run_id = handle.run_id;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let started = store
            .events(run_id)
            .expect("events")
            .iter()
            .any(|e| matches!(e.kind, EventKind::StageStarted { .. }));
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stage never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(engine.cancel(run_id, "test"));
    let state = handle.finished().await.expect("end");
    assert_eq!(state.phase, RunPhase::Cancelled);
}

// ---------------------------------------------------------------------------------------------------------
// FlowMason projects

/// A FlowMason project as `flowmason init` lays it out: `flowmason.json` naming the providers and a
/// pipeline under `pipelines/` with FlowMason's hyphenated component names.
fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("flowmason.json"),
        r#"{"name": "demo", "version": "1.0.0", "main": "pipelines/main.pipeline.json",
            "providers": {"default": "anthropic", "anthropic": {"model": "claude-project"}}}"#,
    )
    .expect("write manifest");
    std::fs::create_dir_all(dir.path().join("pipelines")).expect("mkdir");
    std::fs::write(
        dir.path().join("pipelines/main.pipeline.json"),
        r#"{"name": "demo-main", "version": "1.0.0",
            "input_schema": {"type": "object", "properties": {"topic": {"type": "string", "default": "otters"}}},
            "stages": [
              {"id": "prep", "component": "json-transform", "config": {"data": {"t": "{{input.topic}}"}, "jmespath_expression": "t"}},
              {"id": "write", "component": "generator", "depends_on": ["prep"], "config": {"prompt": "Write about {{upstream.prep.result}}"}},
              {"id": "polish", "component": "improver", "depends_on": ["write"],
               "config": {"content": "{{upstream.write.content}}", "feedback": "Shorter."}}
            ],
            "output_stage_id": "polish"}"#,
    )
    .expect("write pipeline");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_pipeline_runs_with_the_providers_of_flowmason_json_and_the_key_from_the_environment()
 {
    let fake = Fake::start().await;
    fake.set_texts("Otters are great.", "unused");
    let project = project_dir();
    let file = project.path().join("pipelines/main.pipeline.json");
    let data = project.path().join("data");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fm"))
        .env_remove("FM_DATA_DIR")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("ANTHROPIC_BASE_URL", fake.url())
        .arg("run")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(["-o", "json"])
        .output()
        .await
        .expect("fm runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let result: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(result["improved_content"], json!("Otters are great."));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, "/v1/messages");
        assert_eq!(s.headers["x-api-key"], ANTHROPIC_KEY);
        assert_eq!(s.body["model"], json!("claude-project"));
    }
    // The input schema's default filled the missing input.
    assert_eq!(
        seen[0].body["messages"][0]["content"],
        json!("Write about otters")
    );
    assert_no_secret(&stdout, "stdout");
    assert_no_secret(&stderr, "stderr");
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(ANTHROPIC_KEY.len())
                .any(|w| w == ANTHROPIC_KEY.as_bytes()),
            "{} holds the key",
            entry.display()
        );
    }
}

#[tokio::test]
async fn validate_names_where_a_provider_can_be_set() {
    let project = project_dir();
    let file = project.path().join("pipelines/main.pipeline.json");
    let validate = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fm"))
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("OPENAI_BASE_URL")
            .arg("validate")
            .arg(file)
            .output()
            .expect("fm runs")
    };
    let out = validate(&file);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_file(project.path().join("flowmason.json")).expect("rm");
    let out = validate(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stdout.contains("generator calls an LLM and no provider is set: set providers.anthropic or providers.openai in the pipeline or in its project's flowmason.json, or ANTHROPIC_API_KEY / OPENAI_API_KEY in env (for fm run, in its environment)"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// The corpus: FlowMason's 24 studio templates

/// What a template does here: runs to `Succeeded` against the local servers with its example input
/// (plus its schema's defaults), or fails validation with a problem containing the text given, which
/// names the template's own defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Invalid(&'static str),
}

/// Every template and its expected outcome, with the template's own defect that validation names.
/// `document-batch-processor` also uses `loop` (the control-flow components are another branch); its
/// row names a defect of its own, so it stays Invalid once `loop` exists.
const TEMPLATES: &[(&str, Outcome)] = &[
    (
        "agentic-support-workflow",
        Outcome::Invalid(
            "stages[10].config.prompt: template reads \"improved\" of stage \"polish-response\", whose improver output has no such field",
        ),
    ),
    ("ai-research-assistant", Outcome::Succeeded),
    (
        "blog-post-writer",
        Outcome::Invalid(
            "sampleInput: the example input lacks \"audience\", which stages[0].config.prompt reads",
        ),
    ),
    (
        "content-factory",
        Outcome::Invalid("template reads \"reasoning\" of stage \"best-selector\""),
    ),
    ("content-review-loop", Outcome::Succeeded),
    (
        "customer-email-responder",
        Outcome::Invalid(
            "sampleInput: the example input does not satisfy inputSchema: \"customer_message\" is a required property",
        ),
    ),
    (
        "data-extractor",
        Outcome::Invalid("\"fields_to_extract\" is a required property"),
    ),
    (
        "devops-cicd-deployment",
        Outcome::Invalid(
            "stages[0].config.data.timestamp: template {{now()}} is a function call, not a template",
        ),
    ),
    (
        "devops-health-monitor",
        Outcome::Invalid(
            "stages[0].config.data.services_count: template {{len(input.services)}} is a function call",
        ),
    ),
    (
        "devops-incident-response",
        Outcome::Invalid(
            "template references stage \"parse-alert\", which is not upstream of \"execute-restart\"",
        ),
    ),
    (
        "devops-multi-service-orchestration",
        Outcome::Invalid("stages[1].config.data.timestamp: template {{now()}} is a function call"),
    ),
    (
        "document-batch-processor",
        Outcome::Invalid(
            "stages[1].config.variables.processing_start: template {{now()}} is a function call",
        ),
    ),
    ("document-qa", Outcome::Succeeded),
    (
        "enterprise-data-pipeline",
        Outcome::Invalid(
            "template {{len(data.invoices) if data.invoices else 0}} is a function call",
        ),
    ),
    ("hello-world", Outcome::Succeeded),
    (
        "iterative-refinement",
        Outcome::Invalid(
            "stages[3].config.content: template reads \"content\" of stage \"improve1\", whose improver output has no such field",
        ),
    ),
    (
        "lead-qualification",
        Outcome::Invalid("\"company_name\" is a required property"),
    ),
    (
        "multi-agent-debate",
        Outcome::Invalid("json_transform: `data` is required"),
    ),
    (
        "multi-draft-selector",
        Outcome::Invalid(
            "sampleInput: the example input does not satisfy inputSchema: \"prompt\" is a required property",
        ),
    ),
    (
        "opportunity-analyzer",
        Outcome::Invalid("\"deal_notes\" is a required property"),
    ),
    ("persona-chat", Outcome::Succeeded),
    (
        "research-synthesizer",
        Outcome::Invalid("\"research_question\" is a required property"),
    ),
    (
        "sales-call-summarizer",
        Outcome::Invalid("\"notes\" is a required property"),
    ),
    (
        "validated-output",
        Outcome::Invalid("template reads \"content\" of stage \"improve\""),
    ),
];

/// The directory of the studio's templates in the installed package.
fn templates_dir() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("target/pyenv/bin/python"))
        .args([
            "-c",
            "import flowmason_studio_backend, os; print(os.path.dirname(flowmason_studio_backend.__file__))",
        ])
        .output()
        .expect("target/pyenv is missing: run scripts/test.sh to install flowmason from PyPI");
    assert!(
        out.status.success(),
        "flowmason is not installed in target/pyenv"
    );
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("data/templates")
}

/// A local HTTP service for `http-request` stages: every request succeeds with a small JSON body.
async fn endpoints() -> String {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"status": "ok", "healthy": true, "data": [], "items": []}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The outcome of one template: its validation problems, else the phase of its run with the example
/// input, every LLM stage on the Anthropic fake and every `{{env.X}}` set (URLs to `endpoints`).
async fn template_outcome(path: &Path, fake: &Fake, endpoints: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).expect("read template");
    let mut loaded =
        load_pipeline_str(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    loaded.spec.providers = Some(
        serde_json::from_value(json!({"anthropic": {
            "model": "claude-test", "baseUrl": fake.url(),
            "secretRef": {"name": "llm-secrets", "key": "anthropic-key"}}}))
        .expect("providers"),
    );
    let mut names: Vec<String> = text
        .split("{{env.")
        .skip(1)
        .filter_map(|rest| rest.split("}}").next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    loaded.spec.env = names
        .iter()
        .map(|name| {
            let value = if name.ends_with("_API") || name.ends_with("_URL") {
                endpoints.to_string()
            } else {
                "test-value".to_string()
            };
            serde_json::from_value(json!({"name": name, "value": value})).expect("env var")
        })
        .collect();
    let registry = builtin_registry();
    let problems = flowmason::model::validate(&loaded.spec, &|n| registry.contains(n));
    if !problems.is_empty() {
        return Err(problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let mut inputs = loaded.sample_input.clone().unwrap_or_else(|| json!({}));
    if let Some(schema) = &loaded.spec.input_schema {
        flowmason::model::input_schema::apply_defaults(schema, &mut inputs);
    }
    let plan = to_plan(&loaded.spec).expect("plan");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("store");
    let source =
        Chain::new().with(SecretsFile::parse("secrets", &secrets_yaml()).expect("secrets"));
    let config = EngineConfig {
        env: flowmason::env::resolver(Arc::new(source)),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, registry, config);
    let state = engine
        .start(RunRequest::new("corpus", plan, inputs))
        .await
        .expect("start")
        .finished()
        .await
        .expect("end");
    match state.phase {
        RunPhase::Succeeded => Ok("Succeeded".into()),
        other => Err(format!("run {other:?}: {:?}", state.error)),
    }
}

#[actix_rt::test]
async fn flowmasons_templates_run_or_fail_validation_naming_their_own_defect() {
    let fake = Fake::start().await;
    fake.set_texts(
        r#"{"overall_rating": "good", "score": 0.8, "feedback": "Fine.", "passes_threshold": true}"#,
        "unused",
    );
    let endpoints = endpoints().await;
    let dir = templates_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("templates")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 24, "FlowMason 1.0.24 ships 24 templates");
    let mut succeeded = 0;
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    for file in &files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let outcome = template_outcome(file, &fake, &endpoints).await;
        let expected = TEMPLATES.iter().find(|(t, _)| *t == name).map(|(_, o)| *o);
        let matches = match (&outcome, expected) {
            (Ok(_), Some(Outcome::Succeeded)) => true,
            (Err(problems), Some(Outcome::Invalid(text))) => {
                !problems.starts_with("run ") && problems.contains(text)
            }
            _ => false,
        };
        if outcome.is_ok() {
            succeeded += 1;
        }
        report.push(format!(
            "{name}: {}",
            match &outcome {
                Ok(_) => "Succeeded".to_string(),
                Err(p) => format!("Invalid: {}", p.replace('\n', " | ")),
            }
        ));
        if !matches {
            wrong.push(format!("{name}: expected {expected:?}, got {outcome:?}"));
        }
    }
    println!("{}", report.join("\n"));
    println!(
        "corpus: {succeeded} of {} templates run to Succeeded, {} fail validation naming their defect",
        files.len(),
        files.len() - succeeded
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(succeeded >= 2, "the original runs 2 of 24");
}

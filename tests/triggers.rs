//! Triggers against the embedded API server and a real `nats-server` (JetStream on, loopback, a free
//! port, killed on drop): cron with an injected clock, webhooks over real HTTP, NATS delivery,
//! redelivery, dead letters, shared durable consumers and server restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowmason::apiserver::{ServeConfig, Server};
use flowmason::model::vocabulary::{
    CANCEL_ANNOTATION, PIPELINE_LABEL, SCHEDULED_TIME_ANNOTATION, TRIGGER_LABEL,
};
use flowmason::model::{Pipeline, PipelineRun};
use flowmason::triggers::cron::{CronTrigger, backfill, scheduled_run_name};
use flowmason::triggers::nats::{NatsConnection, NatsOptions, NatsTrigger};
use flowmason::triggers::{ManualClock, Outcome, TriggerConfig, TriggerError, Triggers, from_time};
use flowmason_store::Trigger;
use futures::StreamExt as _;
use hmac::{KeyInit as _, Mac as _};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Api_ {
    server: Server,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn api() -> Api_ {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServeConfig::new(dir.path()))
        .await
        .expect("server starts");
    let client =
        Client::try_from(server.client_config().await.expect("kubeconfig")).expect("client");
    install_crds(&client).await;
    Api_ {
        server,
        client,
        _dir: dir,
    }
}

async fn create_pipeline(client: &Client, name: &str, extra: Value) -> Pipeline {
    let mut spec = json!({"stages": [{"id": "a", "componentType": "noop"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let p: Pipeline = serde_json::from_value(json!({
        "apiVersion": "flowmason.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("pipeline");
    Api::<Pipeline>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &p)
        .await
        .expect("pipeline create")
}

/// A Secret `name` in `default` whose key `token` holds `s3cret`, for webhook `secretRef`s.
async fn create_token_secret(client: &Client, name: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "stringData": {"token": "s3cret"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret create");
}

async fn runs_of(client: &Client, pipeline: &str) -> Vec<PipelineRun> {
    let mut runs = Api::<PipelineRun>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("{PIPELINE_LABEL}={pipeline}")))
        .await
        .expect("list runs")
        .items;
    runs.sort_by_key(|r| r.name_any());
    runs
}

fn created_at(p: &Pipeline) -> DateTime<Utc> {
    from_time(p.metadata.creation_timestamp.as_ref().expect("created"))
}

fn minute_after(t: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
    let base = DateTime::from_timestamp(t.timestamp().div_euclid(60) * 60, 0).expect("minute");
    base + chrono::Duration::minutes(minutes)
}

fn triggers(client: &Client, clock: Arc<ManualClock>) -> Triggers {
    Triggers::new(
        client.clone(),
        TriggerConfig {
            clock,
            ..TriggerConfig::default()
        },
    )
}

#[tokio::test]
async fn cron_fires_on_schedule_with_injected_time() {
    let h = api().await;
    let p = create_pipeline(&h.client, "tick", json!({"schedule": "*/5 * * * *"})).await;
    let created = created_at(&p);
    let clock = Arc::new(ManualClock::new(created));
    let t = triggers(&h.client, clock.clone());
    let cron = CronTrigger::new(t.context().clone(), "default", "tick");

    let report = cron.tick().await.expect("tick");
    assert_eq!(report.run, None);
    let first = report.plan.next.expect("next instant");
    assert_eq!(first.timestamp() % 300, 0);
    let shown = Api::<Pipeline>::namespaced(h.client.clone(), "default")
        .get("tick")
        .await
        .expect("get")
        .status
        .and_then(|s| s.next_scheduled_run)
        .map(|t| from_time(&t));
    assert_eq!(shown, Some(first));

    // The loop, driven by the injected clock: moving past the instant fires exactly that instant.
    let armed = t.apply(&p);
    assert!(armed.is_empty(), "{armed:?}");
    clock.set(first + chrono::Duration::seconds(1));
    let runs = eventually("the scheduled run", || async {
        let runs = runs_of(&h.client, "tick").await;
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.name_any(), scheduled_run_name("tick", first));
    assert_eq!(
        run.labels().get(TRIGGER_LABEL).map(String::as_str),
        Some("cron")
    );
    assert_eq!(run.spec.pipeline_ref, "tick");
    assert_eq!(
        run.annotations()
            .get(SCHEDULED_TIME_ANNOTATION)
            .map(String::as_str),
        Some(
            first
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .as_str()
        )
    );
    assert_eq!(
        run.owner_references().first().map(|o| o.name.as_str()),
        Some("tick")
    );
    // A second replica (or a restart) evaluating the same instant finds nothing new to do.
    let again = cron.tick().await.expect("tick");
    assert_eq!(again.run, None);
    assert_eq!(runs_of(&h.client, "tick").await.len(), 1);
    t.clear();
    h.server.shutdown().await;
}

async fn set_phase(client: &Client, run: &str, phase: &str) {
    Api::<PipelineRun>::namespaced(client.clone(), "default")
        .patch_status(
            run,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase, "completionTime": Utc::now()}})),
        )
        .await
        .expect("patch status");
}

#[tokio::test]
async fn cron_honours_each_concurrency_policy() {
    let h = api().await;
    for (name, policy) in [
        ("allow", "Allow"),
        ("forbid", "Forbid"),
        ("replace", "Replace"),
    ] {
        let p = create_pipeline(
            &h.client,
            name,
            json!({"schedule": "* * * * *", "concurrencyPolicy": policy}),
        )
        .await;
        let clock = Arc::new(ManualClock::new(created_at(&p)));
        let t = triggers(&h.client, clock.clone());
        let cron = CronTrigger::new(t.context().clone(), "default", name);
        let t1 = minute_after(created_at(&p), 1);
        clock.set(t1);
        let first = cron.tick().await.expect("tick").run.expect("first run");
        // The first run is still going (no phase yet) when the next minute comes.
        let t2 = minute_after(created_at(&p), 2);
        clock.set(t2);
        let second = cron.tick().await.expect("tick");
        let runs = runs_of(&h.client, name).await;
        match policy {
            "Allow" => {
                assert_eq!(second.outcome, Some(Outcome::Fired));
                assert_eq!(runs.len(), 2);
            }
            "Forbid" => {
                assert_eq!(second.run, None);
                assert_eq!(second.outcome, Some(Outcome::Rejected));
                assert_eq!(runs.len(), 1);
                // Once the first one ends, the next instant runs again.
                set_phase(&h.client, &first, "Succeeded").await;
                clock.set(minute_after(created_at(&p), 3));
                assert_eq!(
                    cron.tick().await.expect("tick").outcome,
                    Some(Outcome::Fired)
                );
            }
            _ => {
                assert_eq!(second.outcome, Some(Outcome::Fired));
                assert_eq!(second.plan.cancel, vec![first.clone()]);
                let old = runs.iter().find(|r| r.name_any() == first).expect("first");
                assert_eq!(
                    old.spec.status,
                    Some(flowmason::model::RequestedState::Cancelled)
                );
                assert_eq!(
                    old.annotations().get(CANCEL_ANNOTATION).map(String::as_str),
                    Some("true")
                );
                assert_eq!(runs.len(), 2);
            }
        }
    }
    h.server.shutdown().await;
}

#[tokio::test]
async fn cron_catches_up_once_after_an_outage_and_prunes_history() {
    let h = api().await;
    let p = create_pipeline(
        &h.client,
        "nightly",
        json!({
            "schedule": "* * * * *",
            "startingDeadlineSeconds": 300,
            "successfulRunsHistoryLimit": 1,
            "failedRunsHistoryLimit": 1,
        }),
    )
    .await;
    let clock = Arc::new(ManualClock::new(created_at(&p)));
    let t = triggers(&h.client, clock.clone());
    let cron = CronTrigger::new(t.context().clone(), "default", "nightly");
    let start = minute_after(created_at(&p), 1);
    clock.set(start);
    let r1 = cron.tick().await.expect("tick").run.expect("run 1");

    // Two hours of downtime: one run for the latest missed minute, not 120.
    clock.set(start + chrono::Duration::hours(2) + chrono::Duration::seconds(30));
    let report = cron.tick().await.expect("tick");
    assert_eq!(report.plan.missed, 119);
    let r2 = report.run.expect("catch-up run");
    assert_eq!(
        r2,
        scheduled_run_name("nightly", start + chrono::Duration::hours(2))
    );
    assert_eq!(runs_of(&h.client, "nightly").await.len(), 2);

    // Past the starting deadline, a missed instant is skipped, not run.
    clock.set(start + chrono::Duration::hours(3) + chrono::Duration::minutes(10));
    let _ = cron.tick().await.expect("tick"); // the 3h+10m instant is on time: fires
    clock.set(
        start
            + chrono::Duration::hours(4)
            + chrono::Duration::minutes(6)
            + chrono::Duration::seconds(1),
    );
    let late = cron.tick().await.expect("tick");
    assert_eq!(
        late.outcome,
        Some(Outcome::Fired),
        "the 4h+6m instant is 1s late"
    );
    let runs = runs_of(&h.client, "nightly").await;
    assert_eq!(runs.len(), 4);

    // History: keep 1 succeeded and 1 failed.
    let names: Vec<String> = runs
        .iter()
        .filter(|r| r.name_any() != r1 && r.name_any() != r2)
        .map(|r| r.name_any())
        .collect();
    set_phase(&h.client, &r1, "Succeeded").await;
    set_phase(&h.client, &r2, "Succeeded").await;
    set_phase(&h.client, &names[0], "Failed").await;
    set_phase(&h.client, &names[1], "Failed").await;
    clock.set(start + chrono::Duration::hours(4) + chrono::Duration::minutes(7));
    let report = cron.tick().await.expect("tick");
    let mut pruned = report.pruned.clone();
    pruned.sort();
    let mut expected = vec![r1.clone(), names[0].clone()];
    expected.sort();
    assert_eq!(pruned, expected);
    let left: Vec<String> = runs_of(&h.client, "nightly")
        .await
        .iter()
        .map(|r| r.name_any())
        .collect();
    assert!(left.contains(&r2) && left.contains(&names[1]), "{left:?}");
    assert!(!left.contains(&r1) && !left.contains(&names[0]), "{left:?}");
    h.server.shutdown().await;
}

#[tokio::test]
async fn backfill_is_bounded_and_deduplicated() {
    let h = api().await;
    let p = create_pipeline(&h.client, "bf", json!({"schedule": "0 * * * *"})).await;
    let from = minute_after(created_at(&p), -24 * 60);
    let from = DateTime::from_timestamp(from.timestamp().div_euclid(3600) * 3600, 0).expect("hour");
    let to = from + chrono::Duration::hours(5);
    let err = backfill(
        &h.client,
        "default",
        "bf",
        from,
        to + chrono::Duration::hours(100),
        24,
    )
    .await
    .expect_err("too large");
    assert!(
        matches!(err, TriggerError::BackfillTooLarge { max: 24, .. }),
        "{err}"
    );
    let first = backfill(&h.client, "default", "bf", from, to, 24)
        .await
        .expect("backfill");
    assert_eq!(first.created.len(), 6);
    let second = backfill(
        &h.client,
        "default",
        "bf",
        from,
        to + chrono::Duration::hours(1),
        24,
    )
    .await
    .expect("backfill");
    assert_eq!(second.created.len(), 1);
    assert_eq!(second.deduplicated.len(), 6);
    assert_eq!(runs_of(&h.client, "bf").await.len(), 7);
    h.server.shutdown().await;
}

/// `fm k8s backfill` is the command line over [`backfill`]: it talks to the server of `--kubeconfig`,
/// prints what it created and what already existed, and turns a window that is too large into an
/// error naming `--max-runs` (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm_k8s_backfill_creates_the_missed_runs() {
    let h = api().await;
    let p = create_pipeline(&h.client, "bfcli", json!({"schedule": "0 * * * *"})).await;
    let from = minute_after(created_at(&p), -24 * 60);
    let from = DateTime::from_timestamp(from.timestamp().div_euclid(3600) * 3600, 0).expect("hour");
    let to = from + chrono::Duration::hours(2);
    let kubeconfig = h.server.kubeconfig_path().to_path_buf();
    let fm = move |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_fm"))
                    .arg("k8s")
                    .arg("backfill")
                    .args(&args)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["-n", "default"])
                    .env("FM_LOG", "error")
                    .output()
                    .expect("fm k8s backfill runs")
            })
            .await
            .expect("join")
        }
    };
    let window = |to: DateTime<Utc>, max: &str| {
        vec![
            "bfcli".to_string(),
            "--from".into(),
            from.to_rfc3339(),
            "--to".into(),
            to.to_rfc3339(),
            "--max-runs".into(),
            max.into(),
        ]
    };
    let out = fm(window(to, "24")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 created, 0 already existed"), "{stdout}");
    assert_eq!(runs_of(&h.client, "bfcli").await.len(), 3);

    let out = fm(window(to + chrono::Duration::hours(1), "24")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 created, 3 already existed"), "{stdout}");

    let out = fm(window(to + chrono::Duration::hours(100), "5")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-runs 5"), "{stderr}");
    assert_eq!(runs_of(&h.client, "bfcli").await.len(), 4);
    h.server.shutdown().await;
}

/// Serves `router` on a free loopback port.
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// The signature headers of `body` signed at `timestamp` (Unix seconds): `"{timestamp}.{body}"`.
fn signed_at(
    request: reqwest::RequestBuilder,
    secret: &[u8],
    timestamp: i64,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    request
        .header("x-flowmason-signature", signature)
        .header("x-flowmason-timestamp", timestamp.to_string())
}

/// `body` signed now.
fn signed(request: reqwest::RequestBuilder, secret: &[u8], body: &[u8]) -> reqwest::RequestBuilder {
    signed_at(request, secret, chrono::Utc::now().timestamp(), body)
}

#[path = "triggers/corpus.rs"]
mod corpus;
#[path = "support/crds.rs"]
mod crds;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/wait.rs"]
mod wait;
use crds::install_crds;
use ports::free_port;
use wait::eventually;

#[tokio::test]
async fn webhook_accepts_signed_json_and_rejects_the_rest() {
    let h = api().await;
    create_token_secret(&h.client, "hook-secret").await;
    let p = create_pipeline(
        &h.client,
        "hook",
        json!({"triggers": {"webhook": {"enabled": true, "path": "/webhooks/hook",
            "secretRef": {"name": "hook-secret", "key": "token"}}}}),
    )
    .await;
    let t = Triggers::new(
        h.client.clone(),
        TriggerConfig {
            webhook_max_body: 1024,
            ..TriggerConfig::default()
        },
    );
    assert!(t.apply(&p).is_empty());
    let addr = serve(t.webhook_router()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/hook");
    let body = br#"{"order": 42, "items": ["a"]}"#.to_vec();

    // Happy path: HMAC signature; the body becomes the inputs.
    let resp = signed(http.post(&url), b"s3cret", &body)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 202);
    let answer: Value = resp.json().await.expect("json");
    let run_name = answer["run"].as_str().expect("run name").to_string();
    let run = Api::<PipelineRun>::namespaced(h.client.clone(), "default")
        .get(&run_name)
        .await
        .expect("run exists");
    assert_eq!(
        Value::Object(run.spec.inputs.clone().expect("inputs")),
        json!({"order": 42, "items": ["a"]})
    );
    assert_eq!(
        run.labels().get(TRIGGER_LABEL).map(String::as_str),
        Some("webhook")
    );

    // Bearer token works too.
    let resp = http
        .post(&url)
        .bearer_auth("s3cret")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 202);

    // Bad signature, wrong token, none at all.
    let resp = signed(http.post(&url), b"wrong", &body)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 403);
    let resp = http
        .post(&url)
        .bearer_auth("nope")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 403);
    let resp = http.post(&url).body("{}").send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 401);

    // Oversized body, non-JSON body, unknown path.
    let big = vec![b' '; 4096];
    let resp = signed(http.post(&url), b"s3cret", &big)
        .body(big)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    let resp = http
        .post(&url)
        .bearer_auth("s3cret")
        .body("[1, 2]")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 422);
    let reason: Value = resp.json().await.expect("json");
    assert!(
        reason["error"]
            .as_str()
            .expect("error")
            .contains("JSON object"),
        "{reason}"
    );
    let resp = http
        .post(format!("http://{addr}/webhooks/nobody"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 404);

    // Idempotency-Key: the retry answers with the same run.
    let mut names = Vec::new();
    for _ in 0..2 {
        let resp = http
            .post(&url)
            .bearer_auth("s3cret")
            .header("Idempotency-Key", "order-42")
            .body(r#"{"order": 42}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status().as_u16(), 202);
        let answer: Value = resp.json().await.expect("json");
        names.push((answer["run"].clone(), answer["deduplicated"].clone()));
    }
    assert_eq!(names[0].0, names[1].0);
    assert_eq!(names[0].1, json!(false));
    assert_eq!(names[1].1, json!(true));
    assert_eq!(runs_of(&h.client, "hook").await.len(), 3);
    let m = t.metrics();
    assert_eq!(m.get(Trigger::Webhook, Outcome::Fired), 3);
    assert_eq!(m.get(Trigger::Webhook, Outcome::Deduplicated), 1);
    assert_eq!(m.get(Trigger::Webhook, Outcome::Rejected), 6);

    // Disarmed with the pipeline: the path is gone.
    t.remove("default", "hook");
    let resp = http
        .post(&url)
        .bearer_auth("s3cret")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 404);
    h.server.shutdown().await;
}

#[tokio::test]
async fn webhook_without_a_secret_is_armed_only_with_auth_none() {
    let h = api().await;
    let t = Triggers::new(h.client.clone(), TriggerConfig::default());
    let open_by_mistake = create_pipeline(
        &h.client,
        "anyone",
        json!({"triggers": {"webhook": {"enabled": true, "path": "/webhooks/anyone"}}}),
    )
    .await;
    let problems = t.apply(&open_by_mistake);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("secretRef: required") && p.contains("auth: none")),
        "{problems:?}"
    );
    let opted_out = create_pipeline(
        &h.client,
        "public",
        json!({"triggers": {"webhook": {"enabled": true, "path": "/webhooks/public", "auth": "none"}}}),
    )
    .await;
    assert!(t.apply(&opted_out).is_empty());
    let addr = serve(t.webhook_router()).await;
    let http = reqwest::Client::new();
    let post = |path: &str| http.post(format!("http://{addr}{path}")).body("{}").send();
    assert_eq!(
        post("/webhooks/anyone")
            .await
            .expect("post")
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        post("/webhooks/public")
            .await
            .expect("post")
            .status()
            .as_u16(),
        202
    );
    assert_eq!(runs_of(&h.client, "anyone").await.len(), 0);
    assert_eq!(runs_of(&h.client, "public").await.len(), 1);
    h.server.shutdown().await;
}

#[tokio::test]
async fn signed_webhook_needs_a_fresh_timestamp_and_a_replay_starts_no_second_run() {
    let h = api().await;
    create_token_secret(&h.client, "stamp-secret").await;
    let p = create_pipeline(
        &h.client,
        "stamped",
        json!({"triggers": {"webhook": {"path": "/webhooks/stamped",
            "secretRef": {"name": "stamp-secret", "key": "token"}}}}),
    )
    .await;
    let t = Triggers::new(h.client.clone(), TriggerConfig::default());
    assert!(t.apply(&p).is_empty());
    let addr = serve(t.webhook_router()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/stamped");
    let body = br#"{"order": 7}"#.to_vec();
    let now = Utc::now().timestamp();

    // Signed ten minutes ago: outside the default 5-minute window.
    let resp = signed_at(http.post(&url), b"s3cret", now - 600, &body)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 403);
    let reason: Value = resp.json().await.expect("json");
    assert!(
        reason["error"]
            .as_str()
            .expect("error")
            .contains("x-flowmason-timestamp"),
        "{reason}"
    );
    // The old format (a signature of the body alone, no timestamp) is refused, saying why.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").expect("key");
    mac.update(&body);
    let resp = http
        .post(&url)
        .header(
            "x-flowmason-signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 401);
    // A fresh signature starts a run; the same request replayed within the window answers with it.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = signed_at(http.post(&url), b"s3cret", now, &body)
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status().as_u16(), 202);
        let answer: Value = resp.json().await.expect("json");
        answers.push((answer["run"].clone(), answer["deduplicated"].clone()));
    }
    assert_eq!(answers[0].0, answers[1].0);
    assert_eq!(answers[1].1, json!(true));
    assert_eq!(runs_of(&h.client, "stamped").await.len(), 1);
    h.server.shutdown().await;
}

/// A `nats-server` child on a loopback port, JetStream storing under a temp dir; killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    jetstream: bool,
    dir: tempfile::TempDir,
}

impl NatsServer {
    async fn start(jetstream: bool) -> Self {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            jetstream,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            cmd.args(["-js", "-sd", self.dir.path().to_str().expect("path")]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually("nats-server to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn nats_triggers(client: &Client, url: &str) -> Triggers {
    let mut options = NatsOptions::new(url);
    options.ack_wait = Duration::from_secs(1);
    options.batch = 1;
    let conn = NatsConnection::connect(options).await.expect("connect");
    Triggers::new(
        client.clone(),
        TriggerConfig {
            nats: Some(conn),
            ..TriggerConfig::default()
        },
    )
}

async fn publish(client: &async_nats::Client, subject: &str, id: Option<&str>, body: &str) {
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    js.publish_with_headers(subject.to_string(), headers, body.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

/// Waits until the trigger's durable consumer exists (messages published before it are not for it).
async fn consumer_ready(client: &async_nats::Client, name: &str) {
    let js = async_nats::jetstream::new(client.clone());
    eventually("the durable consumer", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("FLOWMASON_TRIGGERS").await.ok()?;
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
}

async fn wait_runs(client: &Client, pipeline: &str, n: usize) -> Vec<PipelineRun> {
    eventually(&format!("{n} runs of {pipeline}"), || async {
        let runs = runs_of(client, pipeline).await;
        (runs.len() >= n).then_some(runs)
    })
    .await
}

#[tokio::test]
async fn nats_message_becomes_a_run_once_and_bad_payloads_are_dead_lettered() {
    let h = api().await;
    let nats = NatsServer::start(true).await;
    let p = create_pipeline(
        &h.client,
        "orders",
        json!({"triggers": {"pubsub": {"topic": "orders.*", "subscription": "orders-engine"}}}),
    )
    .await;
    let t = nats_triggers(&h.client, &nats.url()).await;
    assert!(t.apply(&p).is_empty());
    let publisher = async_nats::connect(nats.url()).await.expect("publisher");
    consumer_ready(&publisher, "orders-engine").await;
    let mut dead = publisher
        .subscribe("flowmason.deadletter.default.orders")
        .await
        .expect("dead-letter subscription");
    publisher.flush().await.expect("flush");

    publish(
        &publisher,
        "orders.new",
        Some("order-1"),
        r#"{"id": 1, "sku": "x"}"#,
    )
    .await;
    let runs = wait_runs(&h.client, "orders", 1).await;
    assert_eq!(
        Value::Object(runs[0].spec.inputs.clone().expect("inputs")),
        json!({"id": 1, "sku": "x"})
    );
    assert_eq!(
        runs[0].labels().get(TRIGGER_LABEL).map(String::as_str),
        Some("pubsub")
    );

    // A bad payload goes to the dead-letter subject with the reason, and makes no run.
    publish(&publisher, "orders.new", None, "not json at all").await;
    let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("a dead letter arrives")
        .expect("subscription open");
    assert_eq!(&letter.payload[..], b"not json at all");
    let reason = letter
        .headers
        .as_ref()
        .and_then(|h| h.get("FlowMason-Reason"))
        .map(|v| v.as_str().to_string())
        .expect("reason header");
    assert!(reason.contains("not JSON"), "{reason}");

    // The same Nats-Msg-Id again (outside any server-side duplicate window, the engine's own
    // naming dedups): published over core NATS so the stream takes it as a new message.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "order-1");
    publisher
        .publish_with_headers("orders.new", headers, r#"{"id": 1, "sku": "x"}"#.into())
        .await
        .expect("publish");
    publish(&publisher, "orders.new", Some("order-2"), r#"{"id": 2}"#).await;
    wait_runs(&h.client, "orders", 2).await;
    eventually("all messages handled", || async {
        let m = t.metrics();
        (m.get(Trigger::Pubsub, Outcome::Fired) == 2
            && m.get(Trigger::Pubsub, Outcome::Rejected) == 1)
            .then_some(())
    })
    .await;
    assert_eq!(runs_of(&h.client, "orders").await.len(), 2);
    t.clear();
    h.server.shutdown().await;
}

#[tokio::test]
async fn nats_redelivery_after_a_crash_before_ack_makes_no_second_run() {
    let h = api().await;
    let nats = NatsServer::start(true).await;
    let p = create_pipeline(
        &h.client,
        "crashy",
        json!({"triggers": {"pubsub": {"topic": "crashy.in", "subscription": "crashy"}}}),
    )
    .await;
    // First engine: armed once so the stream and the durable consumer exist, then stopped.
    let first = nats_triggers(&h.client, &nats.url()).await;
    first.apply(&p);
    let publisher = async_nats::connect(nats.url()).await.expect("publisher");
    consumer_ready(&publisher, "crashy").await;
    first.clear();

    // "Engine crashes after creating the run, before the ack": take the message from the durable
    // consumer, handle it with the engine's own code, and drop it unacknowledged.
    publish(&publisher, "crashy.in", None, r#"{"n": 1}"#).await;
    let js = async_nats::jetstream::new(publisher.clone());
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("FLOWMASON_TRIGGERS")
        .await
        .expect("stream")
        .get_consumer("crashy")
        .await
        .expect("consumer");
    // The stopped engine's last pull request may still take the message once; unacknowledged, it
    // comes back after ack_wait, so pull until it is ours.
    let mut message = None;
    for _ in 0..30 {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("pull");
        if let Some(Ok(m)) = batch.next().await {
            message = Some(m);
            break;
        }
    }
    let message = message.expect("the published message is delivered");
    let conn = NatsConnection::connect({
        let mut o = NatsOptions::new(nats.url());
        o.ack_wait = Duration::from_secs(1);
        o
    })
    .await
    .expect("connect");
    let crashing = NatsTrigger::new(
        first.context().clone(),
        conn,
        "default",
        "crashy",
        "crashy.in",
        Some("crashy"),
    );
    let seq = message.info().expect("info").stream_sequence;
    let (outcome, name) = crashing
        .process(
            &message.subject,
            message.headers.as_ref(),
            &message.payload,
            Some(seq),
        )
        .await
        .expect("process");
    assert_eq!(outcome, Outcome::Fired);
    drop(message);

    // The restarted engine gets the redelivery and finds the run already there.
    let second = nats_triggers(&h.client, &nats.url()).await;
    second.apply(&p);
    eventually("the redelivery to be deduplicated", || async {
        (second.metrics().get(Trigger::Pubsub, Outcome::Deduplicated) == 1).then_some(())
    })
    .await;
    let runs = runs_of(&h.client, "crashy").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(Some(runs[0].name_any()), name);
    second.clear();
    h.server.shutdown().await;
}

#[tokio::test]
async fn two_engines_share_one_durable_consumer_without_duplicates() {
    let h = api().await;
    let nats = NatsServer::start(true).await;
    let p = create_pipeline(
        &h.client,
        "shared",
        json!({"triggers": {"pubsub": {"topic": "shared.>", "subscription": "shared-group"}}}),
    )
    .await;
    let a = nats_triggers(&h.client, &nats.url()).await;
    let b = nats_triggers(&h.client, &nats.url()).await;
    a.apply(&p);
    b.apply(&p);
    let publisher = async_nats::connect(nats.url()).await.expect("publisher");
    consumer_ready(&publisher, "shared-group").await;
    let n = 40;
    for i in 0..n {
        publish(
            &publisher,
            &format!("shared.{}", i % 3),
            None,
            &format!(r#"{{"i": {i}}}"#),
        )
        .await;
    }
    let runs = wait_runs(&h.client, "shared", n).await;
    eventually("every message acknowledged", || async {
        let fired = a.metrics().get(Trigger::Pubsub, Outcome::Fired)
            + b.metrics().get(Trigger::Pubsub, Outcome::Fired);
        (fired as usize == n).then_some(())
    })
    .await;
    assert_eq!(runs_of(&h.client, "shared").await.len(), n);
    let mut inputs: Vec<i64> = runs
        .iter()
        .map(|r| {
            r.spec.inputs.as_ref().expect("inputs")["i"]
                .as_i64()
                .expect("i")
        })
        .collect();
    inputs.sort();
    assert_eq!(inputs, (0..n as i64).collect::<Vec<_>>());
    a.clear();
    b.clear();
    h.server.shutdown().await;
}

/// Issue 15: a pub/sub trigger on an engine without `--nats` is not silently left out: the Pipeline gets
/// `TriggerConnected=False` with the reason, and a Warning Event naming the field.
#[tokio::test]
async fn a_pubsub_trigger_without_nats_is_reported_on_the_pipeline() {
    let h = api().await;
    let p = create_pipeline(
        &h.client,
        "unconnected",
        json!({"triggers": {"pubsub": {"topic": "orders.in"}}}),
    )
    .await;
    let t = Triggers::new(h.client.clone(), TriggerConfig::default());
    t.apply(&p);
    let condition = eventually("TriggerConnected=False", || async {
        let p = Api::<Pipeline>::namespaced(h.client.clone(), "default")
            .get("unconnected")
            .await
            .ok()?;
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "TriggerConnected" && c.status == "False")
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("NoNatsConnection"));
    assert!(
        condition
            .message
            .as_deref()
            .is_some_and(|m| m.contains("spec.triggers.pubsub.topic") && m.contains("--nats")),
        "{condition:?}"
    );
    let event = eventually("a Warning Event", || async {
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(h.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("unconnected")
                    && e.reason.as_deref() == Some("TriggerNotArmed")
            })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("orders.in")),
        "{event:?}"
    );
    t.clear();
    h.server.shutdown().await;
}

async fn connected_condition(client: &Client, pipeline: &str) -> Option<String> {
    let p = Api::<Pipeline>::namespaced(client.clone(), "default")
        .get(pipeline)
        .await
        .ok()?;
    p.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "TriggerConnected")
        .map(|c| c.status)
}

#[tokio::test]
async fn nats_trigger_recovers_after_the_server_restarts() {
    let h = api().await;
    let mut nats = NatsServer::start(true).await;
    let p = create_pipeline(
        &h.client,
        "resilient",
        json!({"triggers": {"pubsub": {"topic": "resilient.in"}}}),
    )
    .await;
    let t = nats_triggers(&h.client, &nats.url()).await;
    t.apply(&p);
    let publisher = async_nats::connect(nats.url()).await.expect("publisher");
    consumer_ready(&publisher, "default-resilient").await;
    eventually("TriggerConnected=True", || async {
        (connected_condition(&h.client, "resilient").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    publish(
        &publisher,
        "resilient.in",
        Some("before"),
        r#"{"when": "before"}"#,
    )
    .await;
    wait_runs(&h.client, "resilient", 1).await;

    nats.kill();
    eventually("TriggerConnected=False", || async {
        (connected_condition(&h.client, "resilient").await.as_deref() == Some("False"))
            .then_some(())
    })
    .await;
    nats.spawn().await;
    eventually("TriggerConnected=True again", || async {
        (connected_condition(&h.client, "resilient").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    let publisher = async_nats::connect(nats.url()).await.expect("publisher");
    publish(
        &publisher,
        "resilient.in",
        Some("after"),
        r#"{"when": "after"}"#,
    )
    .await;
    let runs = wait_runs(&h.client, "resilient", 2).await;
    let whens: BTreeMap<String, Value> = runs
        .iter()
        .map(|r| {
            (
                r.name_any(),
                r.spec.inputs.as_ref().expect("inputs")["when"].clone(),
            )
        })
        .collect();
    assert!(whens.values().any(|w| w == "after"), "{whens:?}");
    t.clear();
    h.server.shutdown().await;
}

#[tokio::test]
async fn core_nats_queue_group_when_jetstream_is_off() {
    let h = api().await;
    let nats = NatsServer::start(false).await;
    let p = create_pipeline(
        &h.client,
        "plain",
        json!({"triggers": {"pubsub": {"topic": "plain.in", "subscription": "plain-q"}}}),
    )
    .await;
    let t = nats_triggers(&h.client, &nats.url()).await;
    t.apply(&p);
    let publisher = async_nats::connect(nats.url()).await.expect("publisher");
    // Core NATS keeps nothing for absent subscribers: publish until the queue group has taken one.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "plain-1");
    eventually("a run from core NATS", || {
        let publisher = publisher.clone();
        let headers = headers.clone();
        let client = h.client.clone();
        async move {
            publisher
                .publish_with_headers("plain.in", headers, r#"{"k": "v"}"#.into())
                .await
                .ok()?;
            publisher.flush().await.ok()?;
            let runs = runs_of(&client, "plain").await;
            (!runs.is_empty()).then_some(())
        }
    })
    .await;
    // Every copy carried the same message id: one run.
    let runs = runs_of(&h.client, "plain").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        Value::Object(runs[0].spec.inputs.clone().expect("inputs")),
        json!({"k": "v"})
    );
    t.clear();
    h.server.shutdown().await;
}

/// The operator in process with lifecycle events on: a run's phase changes reach a NATS subscriber on
/// `flowmason.runs.<namespace>.<pipeline>.<phase>`, in order, with the run's names in the body.
#[test]
fn run_phase_changes_are_published_on_nats() {
    flowmason::runtime::block_on(|| async {
        let h = api().await;
        let nats = NatsServer::start(false).await;
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut events = client
            .subscribe("flowmason.runs.default.announced.*")
            .await
            .expect("subscribe");
        client.flush().await.expect("subscription registered");
        let events_dir = tempfile::tempdir().expect("tempdir");
        let store = flowmason_store::EventStore::open(events_dir.path(), Default::default())
            .expect("event log");
        let operator = flowmason::operator::Operator::new(
            h.client.clone(),
            store,
            flowmason::components::builtin_registry(),
            flowmason::operator::OperatorConfig {
                observer: Some(flowmason::triggers::lifecycle::publisher(client.clone())),
                ..Default::default()
            },
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let running = actix::spawn(operator.run(stop.clone()));
        create_pipeline(&h.client, "announced", json!({})).await;
        let run: PipelineRun = serde_json::from_value(json!({
            "apiVersion": "flowmason.io/v1", "kind": "PipelineRun",
            "metadata": {"name": "announced-1", "namespace": "default"},
            "spec": {"pipelineRef": "announced"}
        }))
        .expect("run");
        Api::<PipelineRun>::namespaced(h.client.clone(), "default")
            .create(&PostParams::default(), &run)
            .await
            .expect("create run");
        let mut phases = Vec::new();
        while phases.last().map(String::as_str) != Some("Succeeded") {
            let message = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .expect("a lifecycle event within a minute")
                .expect("subscription open");
            let body: Value = serde_json::from_slice(&message.payload).expect("JSON body");
            assert_eq!(body["runName"], json!("announced-1"), "{body}");
            assert_eq!(body["pipeline"], json!("announced"), "{body}");
            assert_eq!(
                message.subject.as_str(),
                format!(
                    "flowmason.runs.default.announced.{}",
                    body["phase"].as_str().unwrap_or("?")
                )
            );
            phases.push(body["phase"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(phases, ["Pending", "Running", "Succeeded"]);
        stop.cancel();
        let _ = running.await;
        h.server.shutdown().await;
    })
    .expect("runtime");
}

//! The bad-input corpus of webhook requests (`tests/corpus/webhooks/`, described in
//! `tests/corpus/README.md`): every case of `cases.json` is posted over real HTTP to the webhook router of
//! a Pipeline whose secret is `s3cret` (`/webhooks/corpus`, bodies up to 1024 bytes), next to one with no
//! secret and no `auth: none` (`/webhooks/open`), and must get its status and say its substring.

use std::collections::BTreeMap;

use flowmason::triggers::{TriggerConfig, Triggers};
use serde::Deserialize;
use serde_json::json;

#[path = "../support/corpus.rs"]
mod support;

use super::{api, create_pipeline, create_token_secret, serve, signed_at};
use support::{Repeat, cases, expand};

/// One case of `cases.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    #[serde(default = "post")]
    method: String,
    #[serde(default = "corpus_path")]
    path: String,
    /// Sent as they are.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// `Authorization: Bearer <this>`.
    bearer: Option<String>,
    /// Signs the body with this secret and timestamp.
    sign: Option<Signature>,
    /// The body as text, or generated; empty when neither.
    body: Option<String>,
    body_repeat: Option<Repeat>,
    #[serde(default)]
    expand: BTreeMap<String, Repeat>,
    status: u16,
    /// A substring of the answer's body.
    says: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Signature {
    secret: String,
    /// How long before now the request was signed (negative: in the future).
    #[serde(default)]
    age_seconds: i64,
}

fn post() -> String {
    "POST".into()
}

fn corpus_path() -> String {
    "/webhooks/corpus".into()
}

#[tokio::test]
async fn every_bad_webhook_request_gets_its_stated_status() {
    let h = api().await;
    create_token_secret(&h.client, "corpus-secret").await;
    let guarded = create_pipeline(
        &h.client,
        "corpus",
        json!({"triggers": {"webhook": {"path": "/webhooks/corpus",
            "secretRef": {"name": "corpus-secret", "key": "token"}}}}),
    )
    .await;
    let open = create_pipeline(
        &h.client,
        "open",
        json!({"triggers": {"webhook": {"path": "/webhooks/open"}}}),
    )
    .await;
    let t = Triggers::new(
        h.client.clone(),
        TriggerConfig {
            webhook_max_body: 1024,
            ..TriggerConfig::default()
        },
    );
    assert!(t.apply(&guarded).is_empty());
    assert!(
        !t.apply(&open).is_empty(),
        "a webhook without a secret is refused"
    );
    let addr = serve(t.webhook_router()).await;
    let http = reqwest::Client::new();

    let mut failures = Vec::new();
    for case in cases::<Case>(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/webhooks"),
    ) {
        let body = match (&case.body, &case.body_repeat) {
            (Some(text), None) => text.clone(),
            (None, Some(repeat)) => repeat.generate(),
            (None, None) => String::new(),
            _ => panic!("{}: set at most one of body, bodyRepeat", case.name),
        };
        let body = expand(&body, &case.expand, &case.name).into_bytes();
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut request = http.request(method, format!("http://{addr}{}", case.path));
        if let Some(sign) = &case.sign {
            let at = chrono::Utc::now().timestamp() - sign.age_seconds;
            request = signed_at(request, sign.secret.as_bytes(), at, &body);
        }
        if let Some(token) = &case.bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in &case.headers {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.expect("answered");
        let status = response.status().as_u16();
        let answer = response.text().await.unwrap_or_default();
        if status != case.status {
            failures.push(format!(
                "{}: {status}, expected {}: {answer}",
                case.name, case.status
            ));
        } else if let Some(needle) = &case.says
            && !answer.contains(needle.as_str())
        {
            failures.push(format!("{}: does not say {needle:?}: {answer}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    h.server.shutdown().await;
}

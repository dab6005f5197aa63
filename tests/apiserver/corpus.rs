//! The bad-input corpus of API requests (`tests/corpus/api/`, described in `tests/corpus/README.md`):
//! every case of `cases.json` is sent to a real `fm serve` API server on loopback and must get its status
//! and reason, and name its field; after each one the server must still answer.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[path = "../support/corpus.rs"]
mod support;

use super::{Harness, repo};
use support::{Repeat, cases, expand};

/// One case of `cases.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    method: String,
    path: String,
    #[serde(default = "json_content")]
    content_type: String,
    /// The body as JSON, or as text, or generated; none for no body.
    body: Option<Value>,
    body_text: Option<String>,
    body_repeat: Option<Repeat>,
    /// Markers in `body` (as JSON text) replaced by generated text.
    #[serde(default)]
    expand: BTreeMap<String, Repeat>,
    status: u16,
    reason: String,
    /// A substring of the answer (a field a cause names, a word of the message).
    says: Option<String>,
}

fn json_content() -> String {
    "application/json".into()
}

impl Case {
    fn body(&self) -> Vec<u8> {
        let text = match (&self.body, &self.body_text, &self.body_repeat) {
            (Some(json), None, None) => json.to_string(),
            (None, Some(text), None) => text.clone(),
            (None, None, Some(repeat)) => repeat.generate(),
            (None, None, None) => String::new(),
            _ => panic!(
                "{}: set at most one of body, bodyText, bodyRepeat",
                self.name
            ),
        };
        expand(&text, &self.expand, &self.name).into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_api_request_gets_its_stated_status_and_the_server_keeps_serving() {
    let h = Harness::start().await;
    let mut failures = Vec::new();
    for case in cases::<Case>(&repo("tests/corpus/api")) {
        let (code, answer) = h
            .raw(&case.method, &case.path, &case.content_type, case.body())
            .await;
        let label = format!("{} ({} {})", case.name, case.method, case.path);
        if (code, answer["reason"].as_str()) != (case.status, Some(case.reason.as_str())) {
            failures.push(format!(
                "{label}: {code}, expected {} {}: {answer}",
                case.status, case.reason
            ));
        } else if answer["kind"] != "Status" || answer["code"] != case.status {
            failures.push(format!("{label}: not a Status with its code: {answer}"));
        } else if let Some(needle) = &case.says
            && !answer.to_string().contains(needle.as_str())
        {
            failures.push(format!("{label}: does not say {needle:?}: {answer}"));
        }
        let (code, _) = h.raw("GET", "/version", "application/json", vec![]).await;
        assert_eq!(code, 200, "still serving after {label}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    h.server.shutdown().await;
}

//! The webhook trigger (`spec.triggers.webhook`): an axum router that `fm serve` mounts next to the API.
//! A POST to a Pipeline's `path` creates a run whose inputs are the JSON body.
//!
//! Callers authenticate with the Pipeline's `secretRef` (required unless the Pipeline says `auth: none`):
//! a bearer token equal to the secret, or `X-FlowMason-Signature: sha256=<hex HMAC-SHA256 keyed by the
//! secret of "{timestamp}.{body}">` with the Unix time in seconds in `X-FlowMason-Timestamp` (as Stripe
//! and Slack sign), refused outside the replay window (default 5 minutes either way). A signed request
//! without an `Idempotency-Key` is named after its signature, so replaying it within the window answers
//! with the same run instead of starting another.
//!
//! Answers: `202 {"run": name, ...}`; `401` without credentials (or without the timestamp) and `403`
//! with wrong ones or a timestamp outside the window (all compared in constant time); `404` for a path
//! no Pipeline serves; `409` while the Pipeline is suspended; `413` over the body limit; `422` for a
//! body that is not a JSON object. An `Idempotency-Key` header names the run, so a retry answers with
//! the same run instead of starting another.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{KeyInit as _, Mac as _};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use flowmason_store::Trigger;

use super::{NewRun, Outcome, TriggerContext, create_run, key_digest};
use crate::model::vocabulary::IDEMPOTENCY_KEY_ANNOTATION;
use crate::model::webhook_path::{PREFIX, is_below_prefix};
use crate::model::{Pipeline, SecretKeyRef};

/// Header carrying the HMAC-SHA256 of `"{timestamp}.{body}"`: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-flowmason-signature";
/// Header carrying the Unix time (seconds) the signature was made at, part of the signed material.
pub const TIMESTAMP_HEADER: &str = "x-flowmason-timestamp";
/// Default largest distance between a signature's timestamp and now.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Header whose value names the run, making retries idempotent.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Default largest body accepted.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Where a served path leads.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTarget {
    pub namespace: String,
    pub pipeline: String,
    /// `None` only for a Pipeline that opted out with `auth: none` (the triggers do not arm a
    /// webhook that has neither).
    pub secret: Option<SecretKeyRef>,
}

/// The served paths, kept by whoever arms the triggers ([`super::Triggers`]).
#[derive(Debug, Default)]
pub struct WebhookRoutes {
    routes: RwLock<HashMap<String, WebhookTarget>>,
}

/// Why a path cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("spec.triggers.webhook.path {0:?} must start with {PREFIX:?}")]
    Prefix(String),
    #[error("spec.triggers.webhook.path {path:?} is already served for Pipeline {owner}")]
    Taken { path: String, owner: String },
}

impl WebhookRoutes {
    pub fn insert(&self, path: &str, target: WebhookTarget) -> Result<(), RouteError> {
        if !is_below_prefix(path) {
            return Err(RouteError::Prefix(path.into()));
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = routes.get(path)
            && (existing.namespace != target.namespace || existing.pipeline != target.pipeline)
        {
            return Err(RouteError::Taken {
                path: path.into(),
                owner: format!("{}/{}", existing.namespace, existing.pipeline),
            });
        }
        routes.insert(path.to_string(), target);
        Ok(())
    }

    /// Removes `path` if it leads to that pipeline.
    pub fn remove(&self, path: &str, namespace: &str, pipeline: &str) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes
            .get(path)
            .is_some_and(|t| t.namespace == namespace && t.pipeline == pipeline)
        {
            routes.remove(path);
        }
    }

    pub fn get(&self, path: &str) -> Option<WebhookTarget> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(path.trim_end_matches('/')).cloned()
    }
}

/// The webhook router's state, created before the triggers so that a server can mount the router
/// before the kube client the triggers need exists (`fm serve` learns its own address only once bound);
/// requests before [`WebhookMount::bind`] get 503.
#[derive(Clone)]
pub struct WebhookMount {
    routes: Arc<WebhookRoutes>,
    ctx: Arc<OnceLock<TriggerContext>>,
    max_body: usize,
    replay_window: Duration,
}

impl WebhookMount {
    /// Bodies up to `max_body` bytes; signatures whose timestamp is within `replay_window` of now.
    pub fn new(max_body: usize, replay_window: Duration) -> Self {
        WebhookMount {
            routes: Arc::new(WebhookRoutes::default()),
            ctx: Arc::new(OnceLock::new()),
            max_body,
            replay_window,
        }
    }

    pub fn routes(&self) -> &Arc<WebhookRoutes> {
        &self.routes
    }

    /// Gives the handlers their context (the first call wins).
    pub fn bind(&self, ctx: TriggerContext) {
        let _ = self.ctx.set(ctx);
    }

    /// The router serving every webhook path under [`PREFIX`], with `max_body` bytes at most per
    /// request.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhooks/{*rest}", post(handle))
            .layer(DefaultBodyLimit::max(self.max_body))
            .with_state(Arc::new(self.clone()))
    }
}

type WebhookState = WebhookMount;

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn reject(state: &WebhookState, status: StatusCode, reason: impl Into<String>) -> Response {
    if let Some(ctx) = state.ctx.get() {
        ctx.metrics.record(Trigger::Webhook, Outcome::Rejected);
    }
    answer(status, json!({"error": reason.into()}))
}

/// The freshness rule of signed requests: the time now, and how far from it a timestamp may be.
#[derive(Debug, Clone, Copy)]
pub struct ReplayWindow {
    pub now_secs: i64,
    pub window: Duration,
}

/// Checks the request's credentials against the secret: `Ok` or the answer to give.
pub fn authorize(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    replay: ReplayWindow,
) -> Result<(), (StatusCode, String)> {
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or((
                StatusCode::UNAUTHORIZED,
                "Authorization: expected \"Bearer <token>\"".to_string(),
            ))?;
        return if bool::from(token.trim().as_bytes().ct_eq(secret)) {
            Ok(())
        } else {
            Err((
                StatusCode::FORBIDDEN,
                "Authorization: wrong bearer token".into(),
            ))
        };
    }
    if let Some(signature) = headers.get(SIGNATURE_HEADER) {
        let hex_sig = signature
            .to_str()
            .ok()
            .and_then(|v| v.trim().strip_prefix("sha256="))
            .ok_or((
                StatusCode::UNAUTHORIZED,
                format!("{SIGNATURE_HEADER}: expected \"sha256=<hex>\""),
            ))?;
        let timestamp = fresh_timestamp(headers, replay)?;
        let sig = hex::decode(hex_sig).map_err(|_| {
            (
                StatusCode::FORBIDDEN,
                format!("{SIGNATURE_HEADER}: {hex_sig:?} is not hex"),
            )
        })?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the webhook secret cannot key an HMAC".to_string(),
            )
        })?;
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        return mac.verify_slice(&sig).map_err(|_| {
            (
                StatusCode::FORBIDDEN,
                format!(
                    "{SIGNATURE_HEADER}: signature does not match \"{{{TIMESTAMP_HEADER}}}.{{body}}\""
                ),
            )
        });
    }
    Err((
        StatusCode::UNAUTHORIZED,
        format!(
            "credentials required: Authorization: Bearer <token>, or {SIGNATURE_HEADER}: sha256=<hex> \
             with {TIMESTAMP_HEADER}"
        ),
    ))
}

/// The timestamp header as sent (it is signed as written), once it is a Unix time within the window.
fn fresh_timestamp(
    headers: &HeaderMap,
    replay: ReplayWindow,
) -> Result<&str, (StatusCode, String)> {
    let text = headers
        .get(TIMESTAMP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or((
            StatusCode::UNAUTHORIZED,
            format!(
                "{TIMESTAMP_HEADER}: required with {SIGNATURE_HEADER} (the Unix time in seconds, \
                 signed as \"{{timestamp}}.{{body}}\")"
            ),
        ))?;
    let secs: i64 = text.parse().map_err(|_| {
        (
            StatusCode::UNAUTHORIZED,
            format!("{TIMESTAMP_HEADER}: {text:?} is not a Unix time in seconds"),
        )
    })?;
    let window = i64::try_from(replay.window.as_secs()).unwrap_or(i64::MAX);
    if secs.abs_diff(replay.now_secs) > window.unsigned_abs() {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "{TIMESTAMP_HEADER}: {secs} is {}s away from the server's time {}; signatures are \
                 accepted for {window}s (a replay, or a clock to fix)",
                secs.abs_diff(replay.now_secs),
                replay.now_secs
            ),
        ));
    }
    Ok(text)
}

/// The run inputs a body stands for: a JSON object (an empty body is `{}`).
pub fn body_inputs(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "body: expected a JSON object (the run inputs), got {}",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
        Err(e) => Err(format!("body: not JSON: {e}")),
    }
}

async fn handle(
    State(state): State<Arc<WebhookState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Over the size limit (413) or a broken body: counted like every other refusal.
        Err(rejection) => return reject(&state, rejection.status(), rejection.body_text()),
    };
    let Some(target) = state.routes.get(uri.path()) else {
        return reject(
            &state,
            StatusCode::NOT_FOUND,
            format!("no pipeline serves the webhook path {:?}", uri.path()),
        );
    };
    let Some(ctx) = state.ctx.get() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the triggers are starting; retry shortly"}),
        );
    };
    let client = &ctx.client;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &target.namespace);
    let pipeline = match pipelines.get(&target.pipeline).await {
        Ok(p) => p,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return reject(
                &state,
                StatusCode::NOT_FOUND,
                format!(
                    "pipeline {}/{} no longer exists",
                    target.namespace, target.pipeline
                ),
            );
        }
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("reading Pipeline {}/{}: {e}", target.namespace, target.pipeline)}),
            );
        }
    };
    if let Some(secret_ref) = &target.secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
        let value = match secrets.get(&secret_ref.name).await {
            Ok(s) => s
                .data
                .and_then(|d| d.get(&secret_ref.key).map(|b| b.0.clone()))
                .or_else(|| {
                    s.string_data
                        .and_then(|d| d.get(&secret_ref.key).map(|v| v.as_bytes().to_vec()))
                }),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => {
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": format!("reading Secret {}/{}: {e}", target.namespace, secret_ref.name)}),
                );
            }
        };
        let Some(secret) = value else {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!(
                    "spec.triggers.webhook.secretRef: Secret {}/{} has no key {:?}",
                    target.namespace, secret_ref.name, secret_ref.key
                )}),
            );
        };
        let replay = ReplayWindow {
            now_secs: ctx.clock.now().timestamp(),
            window: state.replay_window,
        };
        if let Err((status, reason)) = authorize(&secret, &headers, &body, replay) {
            return reject(&state, status, reason);
        }
    }
    if pipeline.spec.suspend.unwrap_or(false) {
        return reject(
            &state,
            StatusCode::CONFLICT,
            format!(
                "pipeline {}/{} is suspended (spec.suspend: true)",
                target.namespace, target.pipeline
            ),
        );
    }
    let inputs = match body_inputs(&body) {
        Ok(i) => i,
        Err(reason) => return reject(&state, StatusCode::UNPROCESSABLE_ENTITY, reason),
    };
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    // A signed request replayed within the window names the same run (a bearer token signs nothing).
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|_| {
            target.secret.is_some() && !headers.contains_key(axum::http::header::AUTHORIZATION)
        });
    let suffix = match (key, signature) {
        (Some(k), _) => format!("wh-{}", key_digest(k)),
        (None, Some(sig)) => format!("wh-{}", key_digest(sig)),
        (None, None) => format!("wh-{}", &uuid::Uuid::now_v7().simple().to_string()[..20]),
    };
    let name = super::run_name(&target.pipeline, &suffix);
    let mut annotations = BTreeMap::new();
    if let Some(k) = key {
        annotations.insert(
            IDEMPOTENCY_KEY_ANNOTATION.to_string(),
            k.chars().take(256).collect(),
        );
    }
    match create_run(
        client,
        &pipeline,
        NewRun {
            name: name.clone(),
            kind: Trigger::Webhook,
            inputs: Some(inputs),
            annotations,
        },
    )
    .await
    {
        Ok(created) => {
            ctx.metrics.record(Trigger::Webhook, created.outcome());
            answer(
                StatusCode::ACCEPTED,
                json!({
                    "run": name,
                    "namespace": target.namespace,
                    "pipeline": target.pipeline,
                    "deduplicated": created == super::Created::AlreadyExisted,
                }),
            )
        }
        Err(e) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn check(secret: &[u8], h: &HeaderMap, body: &[u8]) -> Result<(), StatusCode> {
        let replay = ReplayWindow {
            now_secs: NOW,
            window: DEFAULT_REPLAY_WINDOW,
        };
        authorize(secret, h, body, replay).map_err(|e| e.0)
    }

    fn signed(secret: &[u8], timestamp: i64, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let sig = sign(secret, timestamp, body);
        h.insert(SIGNATURE_HEADER, sig.parse().expect("hdr"));
        h.insert(
            TIMESTAMP_HEADER,
            timestamp.to_string().parse().expect("hdr"),
        );
        h
    }

    #[test]
    fn bearer_and_signature_checks() {
        let secret = b"s3cret";
        let body = br#"{"a":1}"#;
        let mut h = HeaderMap::new();
        assert_eq!(check(secret, &h, body), Err(StatusCode::UNAUTHORIZED));
        h.insert("authorization", "Bearer s3cret".parse().expect("hdr"));
        assert!(check(secret, &h, body).is_ok());
        h.insert("authorization", "Bearer nope".parse().expect("hdr"));
        assert_eq!(check(secret, &h, body), Err(StatusCode::FORBIDDEN));
        let mut h = signed(secret, NOW, body);
        assert!(check(secret, &h, body).is_ok());
        assert_eq!(check(secret, &h, b"{\"a\":2}"), Err(StatusCode::FORBIDDEN));
        h.insert(SIGNATURE_HEADER, "md5=abc".parse().expect("hdr"));
        assert_eq!(check(secret, &h, body), Err(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn signatures_carry_a_timestamp_within_the_replay_window() {
        let secret = b"s3cret";
        let body = br#"{"a":1}"#;
        // Within the window either way.
        for at in [NOW - 299, NOW + 299] {
            assert!(
                check(secret, &signed(secret, at, body), body).is_ok(),
                "{at}"
            );
        }
        // Old (a replay) or far ahead.
        for at in [NOW - 301, NOW + 301] {
            assert_eq!(
                check(secret, &signed(secret, at, body), body),
                Err(StatusCode::FORBIDDEN),
                "{at}"
            );
        }
        // The timestamp is signed: moving it forward breaks the signature.
        let mut h = signed(secret, NOW - 1000, body);
        h.insert(TIMESTAMP_HEADER, NOW.to_string().parse().expect("hdr"));
        assert_eq!(check(secret, &h, body), Err(StatusCode::FORBIDDEN));
        // A signature of the body alone (the old format) has no timestamp: refused, saying why.
        let mut h = signed(secret, NOW, body);
        h.remove(TIMESTAMP_HEADER);
        let replay = ReplayWindow {
            now_secs: NOW,
            window: DEFAULT_REPLAY_WINDOW,
        };
        let (status, reason) = authorize(secret, &h, body, replay).expect_err("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(reason.contains(TIMESTAMP_HEADER), "{reason}");
    }

    #[test]
    fn bodies_become_inputs_or_a_reason() {
        assert_eq!(body_inputs(b"").expect("empty"), Map::new());
        assert_eq!(body_inputs(br#"{"x":[1]}"#).expect("obj")["x"], json!([1]));
        assert!(body_inputs(b"[1]").expect_err("array").contains("an array"));
        assert!(body_inputs(b"{nope").expect_err("bad").contains("not JSON"));
    }

    #[test]
    fn routes_need_the_prefix_and_one_owner() {
        let routes = WebhookRoutes::default();
        let target = |p: &str| WebhookTarget {
            namespace: "default".into(),
            pipeline: p.into(),
            secret: None,
        };
        assert!(matches!(
            routes.insert("/hooks/x", target("a")),
            Err(RouteError::Prefix(_))
        ));
        routes.insert("/webhooks/x", target("a")).expect("insert");
        assert!(matches!(
            routes.insert("/webhooks/x", target("b")),
            Err(RouteError::Taken { .. })
        ));
        assert_eq!(routes.get("/webhooks/x/"), Some(target("a")));
        routes.remove("/webhooks/x", "default", "b");
        assert!(routes.get("/webhooks/x").is_some());
        routes.remove("/webhooks/x", "default", "a");
        assert!(routes.get("/webhooks/x").is_none());
    }
}

//! `http_request`: one HTTP request, as FlowMason's `http_request` operator.
//!
//! Input: `url` (required, http or https), `method` (`GET` default, `POST`, `PUT`, `DELETE`, `PATCH`,
//! `HEAD`, `OPTIONS`), `headers` (object of strings), `params` (query parameters; non-string values as
//! Python's `str()`), `body` (JSON, sent when not `null`/empty), `timeout` (seconds, 1..=300, default 30),
//! `follow_redirects` (default true), `verify_ssl` (default true), and our `raise_for_status` (default true).
//! The attempt's idempotency key is sent as `Idempotency-Key` unless `headers` sets one.
//!
//! Output: `{status_code, headers, body, elapsed_ms, success, url}`: header names in lower case (repeated
//! headers joined with `, `), `body` parsed as JSON when the content type says JSON (`application/json`,
//! `+json`), else text; `success` is true for 2xx; `url` is the final URL after redirects.
//!
//! Status handling: FlowMason returns every response as output with `success: false` for errors. Here
//! the engine's retry policy needs the class, so by default 408, 429 and 5xx fail the attempt with class
//! `transient` (retried) and other 4xx with class `client` (not retried); the error's details hold the
//! output above. `raise_for_status: false` restores FlowMason's behaviour: every status is an output.
//! Other errors: connection failures and timeouts are `transient`; a bad field or URL is `config`;
//! cancellation of the attempt aborts the request (`cancelled`).
//!
//! One connection pool per component instance (per TLS/redirect setting), shared by all runs.

use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::{Client, Method, header};
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::{config_object, input_object, is_templated, opt_bool, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "http_request";

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// See the module docs.
#[derive(Clone, Default)]
pub struct HttpRequest {
    /// Clients by `verify_ssl` and `follow_redirects` (index `verify * 2 + follow`), built on first use.
    clients: Arc<[OnceLock<Client>; 4]>,
}

impl HttpRequest {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn client(&self, verify: bool, follow: bool) -> Result<Client, ComponentError> {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            // Fails only when a provider is already installed (by `main`, kube), which is what we want.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let slot = &self.clients[usize::from(verify) * 2 + usize::from(follow)];
        if let Some(client) = slot.get() {
            return Ok(client.clone());
        }
        let redirect = if follow {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = Client::builder()
            .redirect(redirect)
            .danger_accept_invalid_certs(!verify)
            .build()
            .map_err(|e| {
                ComponentError::internal(format!("{NAME}: cannot build an HTTP client: {e}"))
            })?;
        Ok(slot.get_or_init(|| client).clone())
    }
}

struct Request {
    url: reqwest::Url,
    method: Method,
    headers: header::HeaderMap,
    params: Vec<(String, String)>,
    body: Option<Value>,
    timeout: Duration,
    follow: bool,
    verify: bool,
    raise: bool,
}

fn parse(map: &Map<String, Value>) -> Result<Request, ComponentError> {
    let url_text = opt_str(NAME, map, "url")?
        .ok_or_else(|| ComponentError::config(format!("{NAME}: `url` is required")))?;
    let url = reqwest::Url::parse(url_text).map_err(|e| {
        ComponentError::config(format!(
            "{NAME}: `url` {url_text:?} is not a valid URL: {e}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ComponentError::config(format!(
            "{NAME}: `url` {url_text:?} must be http or https"
        )));
    }
    let method_text = opt_str(NAME, map, "method")?
        .unwrap_or("GET")
        .to_uppercase();
    if !METHODS.contains(&method_text.as_str()) {
        return Err(ComponentError::config(format!(
            "{NAME}: `method` must be one of {}, got {method_text:?}",
            METHODS.join(", ")
        )));
    }
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|e| ComponentError::config(format!("{NAME}: `method` {method_text:?}: {e}")))?;
    let mut headers = header::HeaderMap::new();
    match map.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let Value::String(v) = v else {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `headers.{k}` must be a string, got {}",
                        type_name(v)
                    )));
                };
                let name = header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| {
                    ComponentError::config(format!(
                        "{NAME}: `headers`: {k:?} is not a header name: {e}"
                    ))
                })?;
                let value = header::HeaderValue::from_str(v).map_err(|e| {
                    ComponentError::config(format!(
                        "{NAME}: `headers.{k}` is not a valid header value: {e}"
                    ))
                })?;
                headers.append(name, value);
            }
        }
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `headers` must be an object of strings, got {}",
                type_name(other)
            )));
        }
    }
    let params = match map.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(p)) => p
            .iter()
            .map(|(k, v)| (k.clone(), super::router::py_str(v)))
            .collect(),
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `params` must be an object, got {}",
                type_name(other)
            )));
        }
    };
    let timeout = match map.get("timeout") {
        None | Some(Value::Null) => 30.0,
        Some(v) => match v.as_f64() {
            Some(t) if (1.0..=300.0).contains(&t) => t,
            _ => {
                return Err(ComponentError::config(format!(
                    "{NAME}: `timeout` must be a number of seconds from 1 to 300, got {v}"
                )));
            }
        },
    };
    let body = match map.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) if o.is_empty() => None,
        Some(v) => Some(v.clone()),
    };
    Ok(Request {
        url,
        method,
        headers,
        params,
        body,
        timeout: Duration::from_secs_f64(timeout),
        follow: opt_bool(NAME, map, "follow_redirects", true)?,
        verify: opt_bool(NAME, map, "verify_ssl", true)?,
        raise: opt_bool(NAME, map, "raise_for_status", true)?,
    })
}

impl Component for HttpRequest {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        if map.values().any(is_templated) || !map.contains_key("url") {
            return Ok(());
        }
        parse(map).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let this = self.clone();
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let req = parse(&map)?;
            let client = this.client(req.verify, req.follow)?;
            let mut headers = req.headers;
            if !headers.contains_key("idempotency-key")
                && let Ok(key) = header::HeaderValue::from_str(&ctx.idempotency_key())
            {
                headers.insert("idempotency-key", key);
            }
            let mut url = req.url.clone();
            if !req.params.is_empty() {
                url.query_pairs_mut().extend_pairs(&req.params);
            }
            let mut builder = client
                .request(req.method, url.clone())
                .headers(headers)
                .timeout(req.timeout);
            if let Some(body) = &req.body {
                builder = builder.json(body);
            }
            let started = Instant::now();
            let target = url.to_string();
            let exchange = async {
                let response = builder
                    .send()
                    .await
                    .map_err(|e| request_error(&target, &e, req.timeout))?;
                let status = response.status();
                let final_url = response.url().to_string();
                let mut out_headers = Map::new();
                for (name, value) in response.headers() {
                    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    match out_headers.get_mut(name.as_str()) {
                        Some(Value::String(existing)) => {
                            existing.push_str(", ");
                            existing.push_str(&text);
                        }
                        _ => {
                            out_headers.insert(name.as_str().to_string(), Value::String(text));
                        }
                    }
                }
                let is_json = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| {
                        let ct = ct.to_ascii_lowercase();
                        ct.contains("application/json") || ct.contains("+json")
                    });
                let text = response
                    .text()
                    .await
                    .map_err(|e| request_error(&target, &e, req.timeout))?;
                let body = if is_json {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                } else {
                    Value::String(text)
                };
                Ok::<_, ComponentError>((status, final_url, out_headers, body))
            };
            let (status, final_url, out_headers, body) = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => {
                    return Err(ComponentError::new(ErrorClass::Cancelled, format!("{NAME}: {target}: cancelled")));
                }
                result = exchange => result?,
            };
            let code = status.as_u16();
            let output = serde_json::json!({
                "status_code": code,
                "headers": out_headers,
                "body": body,
                "elapsed_ms": started.elapsed().as_millis() as u64,
                "success": status.is_success(),
                "url": final_url,
            });
            if req.raise && (status.is_client_error() || status.is_server_error()) {
                let retryable = code == 408 || code == 429 || status.is_server_error();
                let class = if retryable {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Client
                };
                return Err(ComponentError::new(
                    class,
                    format!("{NAME}: {target} answered {status}"),
                )
                .with_details(output));
            }
            Ok(ComponentOutput::from(output))
        })
    }
}

fn request_error(url: &str, e: &reqwest::Error, timeout: Duration) -> ComponentError {
    if e.is_timeout() {
        ComponentError::transient(format!(
            "{NAME}: request to {url} timed out after {}s",
            timeout.as_secs_f64()
        ))
    } else if e.is_builder() {
        ComponentError::config(format!("{NAME}: cannot build the request to {url}: {e}"))
    } else {
        // Connection refused, reset, DNS, TLS: all worth another attempt.
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        ComponentError::transient(format!("{NAME}: cannot reach {url}: {chain}"))
    }
}

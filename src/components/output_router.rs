//! `output_router` and `error_router`: deliver data (or an error report) to webhooks, as FlowMason's
//! operators of the same names.
//!
//! `output_router` input: `data`, `destinations` (required: `[{id, type, name, enabled, config,
//! on_success, on_error}]`), `is_error` (default false), `error_message`, `metadata`, `parallel`
//! (default true), `fail_on_error` (default false). A destination is skipped when disabled, or when
//! `is_error` and not `on_error` (default false), or when not `is_error` and not `on_success` (default
//! true). Each delivery POSTs (or PUTs, `config.method`) the JSON payload `{data, is_error,
//! error_message, metadata, timestamp}` to `config.url` with `config.headers`, within
//! `config.timeout_ms` (default 30000), trying `config.retry_count` times (default 3, waiting 1 s, 2 s,
//! ... between) on connection errors, with the attempt's idempotency key plus the destination id as
//! `Idempotency-Key`.
//!
//! Only `webhook` destinations are delivered: FlowMason 1.0.24 only logs `email`, `database` and
//! `message_queue` deliveries and reports them successful, so those types (and FlowMason's Jinja2
//! `payload_template`) are refused at validation, naming the destination, instead of pretending.
//!
//! Output: `{total_destinations, successful_deliveries, failed_deliveries, skipped_deliveries, results,
//! all_succeeded}`, `results` being `[{destination_id, destination_name, destination_type, success,
//! status_code, response, error, duration_ms}]` (`response`: the first 500 characters of the body; a
//! delivery succeeds on a 2xx answer). Errors: with `fail_on_error`, failed deliveries fail the stage
//! (class `transient` when one failed on the connection or with 408, 429 or 5xx, else `client`); `config`
//! for bad fields; `cancelled` aborts the deliveries.
//!
//! `error_router` input: `error_type`, `error_message` (both required), `stage_id`, `pipeline_id`,
//! `run_id` (default: this run's pipeline and id), `destinations`, `severity` (`critical`, `error`, the
//! default, `warning`, `info`), `include_stack_trace` (accepted; there is no stack trace to include). It
//! routes `{error_type, error_message, stage_id, pipeline_id, run_id, severity, timestamp}` as an error
//! (`is_error: true`, so only destinations with `on_error: true` get it) to all destinations at once.
//! Output: `{notifications_sent, failed_notifications, results}`; failed notifications never fail it.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::http_request::HttpRequest;
use super::{input_object, opt_bool, opt_str, static_config, type_name};

/// The type name of the output router.
pub const OUTPUT: &str = "output_router";
/// The type name of the error router.
pub const ERROR: &str = "error_router";

const TYPES: [&str; 4] = ["webhook", "email", "database", "message_queue"];
const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// See the module docs.
#[derive(Clone, Default)]
pub struct OutputRouter {
    http: HttpRequest,
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct ErrorRouter {
    http: HttpRequest,
}

impl OutputRouter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ErrorRouter {
    pub fn new() -> Self {
        Self::default()
    }
}

/// A webhook destination, checked.
#[derive(Debug, Clone)]
struct Destination {
    id: String,
    name: String,
    enabled: bool,
    on_success: bool,
    on_error: bool,
    url: reqwest::Url,
    method: Method,
    headers: Vec<(String, String)>,
    timeout: Duration,
    retry_count: u64,
}

fn field_str<'a>(
    component: &str,
    at: &str,
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str, ComponentError> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ComponentError::config(format!(
            "{component}: `{at}.{field}` is required"
        ))),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{at}.{field}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

fn destination(component: &str, at: &str, value: &Value) -> Result<Destination, ComponentError> {
    let Value::Object(d) = value else {
        return Err(ComponentError::config(format!(
            "{component}: `{at}` must be an object, got {}",
            type_name(value)
        )));
    };
    let id = field_str(component, at, d, "id")?;
    let name = field_str(component, at, d, "name")?;
    let kind = field_str(component, at, d, "type")?;
    if !TYPES.contains(&kind) {
        return Err(ComponentError::config(format!(
            "{component}: `{at}.type` must be one of {}, got {kind:?}",
            TYPES.join(", ")
        )));
    }
    if kind != "webhook" {
        return Err(ComponentError::config(format!(
            "{component}: `{at}.type` {kind:?} (destination {id:?}) is not delivered by this engine: \
             only webhook destinations are (FlowMason 1.0.24 only logs {kind} deliveries and reports \
             them successful); send it through a webhook or a connector stage"
        )));
    }
    if d.get("payload_template").is_some_and(|t| !t.is_null()) {
        return Err(ComponentError::config(format!(
            "{component}: `{at}.payload_template` (a Jinja2 template) is not supported; shape the \
             payload with a json_transform stage before this one"
        )));
    }
    let config = match d.get("config") {
        Some(Value::Object(c)) => c,
        None | Some(Value::Null) => {
            return Err(ComponentError::config(format!(
                "{component}: `{at}.config` is required"
            )));
        }
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{component}: `{at}.config` must be an object, got {}",
                type_name(other)
            )));
        }
    };
    let cat = format!("{at}.config");
    let url_text = field_str(component, &cat, config, "url")?;
    let url = reqwest::Url::parse(url_text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            ComponentError::config(format!(
                "{component}: `{cat}.url` must be an http or https URL, got {url_text:?}"
            ))
        })?;
    let method = match opt_str(component, config, "method")?
        .unwrap_or("POST")
        .to_uppercase()
        .as_str()
    {
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        other => {
            return Err(ComponentError::config(format!(
                "{component}: `{cat}.method` must be POST or PUT, got {other:?}"
            )));
        }
    };
    let headers = match config.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k.clone(), v.clone())),
                other => Err(ComponentError::config(format!(
                    "{component}: `{cat}.headers.{k}` must be a string, got {}",
                    type_name(other)
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{component}: `{cat}.headers` must be an object, got {}",
                type_name(other)
            )));
        }
    };
    let uint = |field: &str, default: u64, max: u64| match config.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            ComponentError::config(format!(
                "{component}: `{cat}.{field}` must be an integer from 1 to {max}, got {v}"
            ))
        }),
    };
    Ok(Destination {
        id: id.to_string(),
        name: name.to_string(),
        enabled: opt_bool(component, d, "enabled", true)?,
        on_success: opt_bool(component, d, "on_success", true)?,
        on_error: opt_bool(component, d, "on_error", false)?,
        url,
        method,
        headers,
        timeout: Duration::from_millis(uint("timeout_ms", 30_000, 300_000)?),
        retry_count: uint("retry_count", 3, 10)?,
    })
}

/// The `destinations` field; `None` when absent (required at run time), or templated.
fn destinations(
    component: &str,
    map: &Map<String, Value>,
) -> Result<Option<Vec<Destination>>, ComponentError> {
    match map.get("destinations") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, d)| destination(component, &format!("destinations[{i}]"), d))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `destinations` must be a list, got {}",
            type_name(other)
        ))),
    }
}

fn required_destinations(
    component: &str,
    map: &Map<String, Value>,
) -> Result<Vec<Destination>, ComponentError> {
    destinations(component, map)?
        .ok_or_else(|| ComponentError::config(format!("{component}: `destinations` is required")))
}

/// What delivering to one destination gave; `retryable` when it failed on the connection or with a
/// status worth retrying.
struct Delivery {
    result: Value,
    success: bool,
    retryable: bool,
}

async fn deliver(client: &Client, d: &Destination, payload: &Value, key: &str) -> Delivery {
    let started = Instant::now();
    let mut last_error = String::new();
    for attempt in 0..d.retry_count {
        let mut request = client
            .request(d.method.clone(), d.url.clone())
            .timeout(d.timeout)
            .header("Idempotency-Key", format!("{key}/{}", d.id))
            .json(payload);
        for (k, v) in &d.headers {
            request = request.header(k, v);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let response: String = text.chars().take(500).collect();
                let success = status.is_success();
                return Delivery {
                    result: json!({
                        "destination_id": d.id, "destination_name": d.name,
                        "destination_type": "webhook", "success": success,
                        "status_code": status.as_u16(),
                        "response": if response.is_empty() { Value::Null } else { Value::from(response) },
                        "error": null, "duration_ms": started.elapsed().as_millis() as u64,
                    }),
                    success,
                    retryable: status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT,
                };
            }
            Err(e) => {
                last_error = e.to_string();
                if attempt + 1 < d.retry_count {
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(6))).await;
                }
            }
        }
    }
    Delivery {
        result: json!({
            "destination_id": d.id, "destination_name": d.name, "destination_type": "webhook",
            "success": false, "status_code": null, "response": null, "error": last_error,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
        success: false,
        retryable: true,
    }
}

/// The router's work, shared by both components.
struct Routing<'a> {
    component: &'a str,
    destinations: Vec<Destination>,
    payload: Value,
    is_error: bool,
    parallel: bool,
    fail_on_error: bool,
}

async fn route(
    http: &HttpRequest,
    r: Routing<'_>,
    ctx: &StageContext,
) -> Result<Value, ComponentError> {
    let total = r.destinations.len();
    let active: Vec<&Destination> = r
        .destinations
        .iter()
        .filter(|d| d.enabled && if r.is_error { d.on_error } else { d.on_success })
        .collect();
    let skipped = total - active.len();
    let client = http.client(true, true)?;
    let key = ctx.idempotency_key();
    let work = async {
        if r.parallel {
            futures::future::join_all(active.iter().map(|d| deliver(&client, d, &r.payload, &key)))
                .await
        } else {
            let mut done = Vec::with_capacity(active.len());
            for d in &active {
                done.push(deliver(&client, d, &r.payload, &key).await);
            }
            done
        }
    };
    let deliveries = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => {
            return Err(ComponentError::new(
                ErrorClass::Cancelled,
                format!("{}: cancelled", r.component),
            ));
        }
        done = work => done,
    };
    let failed: Vec<&Delivery> = deliveries.iter().filter(|d| !d.success).collect();
    if r.fail_on_error && !failed.is_empty() {
        let names: Vec<&str> = failed
            .iter()
            .filter_map(|d| d.result["destination_name"].as_str())
            .collect();
        let class = if failed.iter().any(|d| d.retryable) {
            ErrorClass::Transient
        } else {
            ErrorClass::Client
        };
        return Err(ComponentError::new(
            class,
            format!(
                "{}: delivery failed for destinations: {}",
                r.component,
                names.join(", ")
            ),
        )
        .with_details(json!({
            "results": deliveries.iter().map(|d| d.result.clone()).collect::<Vec<_>>()
        })));
    }
    let failed = failed.len();
    Ok(json!({
        "total_destinations": total,
        "successful_deliveries": deliveries.len() - failed,
        "failed_deliveries": failed,
        "skipped_deliveries": skipped,
        "results": deliveries.into_iter().map(|d| d.result).collect::<Vec<_>>(),
        "all_succeeded": failed == 0,
    }))
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

fn output_settings(map: &Map<String, Value>) -> Result<(bool, bool, bool), ComponentError> {
    opt_str(OUTPUT, map, "error_message")?;
    if let Some(m) = map
        .get("metadata")
        .filter(|m| !m.is_null() && !m.is_object())
    {
        return Err(ComponentError::config(format!(
            "{OUTPUT}: `metadata` must be an object, got {}",
            type_name(m)
        )));
    }
    Ok((
        opt_bool(OUTPUT, map, "is_error", false)?,
        opt_bool(OUTPUT, map, "parallel", true)?,
        opt_bool(OUTPUT, map, "fail_on_error", false)?,
    ))
}

impl Component for OutputRouter {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(OUTPUT, config)? else {
            return Ok(());
        };
        destinations(OUTPUT, &statics)?;
        output_settings(&statics).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let http = self.http.clone();
        Box::pin(async move {
            let mut map = input_object(OUTPUT, input)?;
            let destinations = required_destinations(OUTPUT, &map)?;
            let (is_error, parallel, fail_on_error) = output_settings(&map)?;
            let metadata = match map.remove("metadata") {
                Some(Value::Object(m)) => Value::Object(m),
                _ => json!({}),
            };
            let payload = json!({
                "data": map.remove("data").unwrap_or(Value::Null),
                "is_error": is_error,
                "error_message": map.remove("error_message").unwrap_or(Value::Null),
                "metadata": metadata,
                "timestamp": now(),
            });
            let routing = Routing {
                component: OUTPUT,
                destinations,
                payload,
                is_error,
                parallel,
                fail_on_error,
            };
            route(&http, routing, &ctx).await.map(ComponentOutput::from)
        })
    }
}

fn error_settings(map: &Map<String, Value>) -> Result<String, ComponentError> {
    for field in [
        "error_type",
        "error_message",
        "stage_id",
        "pipeline_id",
        "run_id",
    ] {
        opt_str(ERROR, map, field)?;
    }
    opt_bool(ERROR, map, "include_stack_trace", false)?;
    let severity = opt_str(ERROR, map, "severity")?.unwrap_or("error");
    if !SEVERITIES.contains(&severity) {
        return Err(ComponentError::config(format!(
            "{ERROR}: `severity` must be one of {}, got {severity:?}",
            SEVERITIES.join(", ")
        )));
    }
    Ok(severity.to_string())
}

impl Component for ErrorRouter {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(ERROR, config)? else {
            return Ok(());
        };
        destinations(ERROR, &statics)?;
        error_settings(&statics).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let http = self.http.clone();
        Box::pin(async move {
            let map = input_object(ERROR, input)?;
            let destinations = required_destinations(ERROR, &map)?;
            let severity = error_settings(&map)?;
            let text = |field: &str, default: Option<String>| -> Result<Value, ComponentError> {
                match (map.get(field).and_then(Value::as_str), default) {
                    (Some(s), _) => Ok(Value::from(s)),
                    (None, Some(d)) => Ok(Value::from(d)),
                    (None, None) => Err(ComponentError::config(format!(
                        "{ERROR}: `{field}` is required"
                    ))),
                }
            };
            let payload_data = json!({
                "error_type": text("error_type", None)?,
                "error_message": text("error_message", None)?,
                "stage_id": map.get("stage_id").cloned().unwrap_or(Value::Null),
                "pipeline_id": text("pipeline_id", Some(ctx.pipeline.clone()))?,
                "run_id": text("run_id", Some(ctx.run_id.to_string()))?,
                "severity": severity,
                "timestamp": now(),
            });
            let payload = json!({
                "error_message": payload_data["error_message"],
                "data": payload_data,
                "is_error": true,
                "metadata": {"severity": severity},
                "timestamp": now(),
            });
            let routing = Routing {
                component: ERROR,
                destinations,
                payload,
                is_error: true,
                parallel: true,
                fail_on_error: false,
            };
            let routed = route(&http, routing, &ctx).await?;
            Ok(json!({
                "notifications_sent": routed["successful_deliveries"],
                "failed_notifications": routed["failed_deliveries"],
                "results": routed["results"],
            })
            .into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(extra: Value) -> Value {
        let mut d = json!({"id": "w", "name": "Hook", "type": "webhook",
                           "config": {"url": "http://127.0.0.1:9/hook"}});
        if let (Value::Object(d), Value::Object(extra)) = (&mut d, extra) {
            d.extend(extra);
        }
        d
    }

    #[test]
    fn bad_destinations_are_config_errors_naming_the_field() {
        for (destination, field) in [
            (
                webhook(json!({"type": "email"})),
                "`destinations[0].type` \"email\"",
            ),
            (
                webhook(json!({"type": "fax"})),
                "`destinations[0].type` must be one of",
            ),
            (
                webhook(json!({"config": {"url": "ftp://x"}})),
                "`destinations[0].config.url`",
            ),
            (
                webhook(json!({"config": null})),
                "`destinations[0].config` is required",
            ),
            (
                webhook(json!({"payload_template": "<data/>"})),
                "payload_template",
            ),
            (
                webhook(json!({"config": {"url": "http://x", "method": "GET"}})),
                "`destinations[0].config.method`",
            ),
            (
                webhook(json!({"name": null})),
                "`destinations[0].name` is required",
            ),
        ] {
            let config = json!({"destinations": [destination]});
            let err = OutputRouter::new().validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{field}: {}", err.message);
            let err = ErrorRouter::new().validate(&config).expect_err("refused");
            assert!(err.message.starts_with("error_router: "), "{}", err.message);
        }
        let err = ErrorRouter::new()
            .validate(&json!({"severity": "fatal"}))
            .expect_err("refused");
        assert!(err.message.contains("`severity`"), "{}", err.message);
        assert!(
            OutputRouter::new()
                .validate(&json!({"destinations": [webhook(json!({}))], "data": "{{input}}"}))
                .is_ok()
        );
    }
}

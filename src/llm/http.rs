//! The HTTP side of provider calls: one shared client (rustls with the ring provider, see
//! docs/architecture.md), a JSON POST, and the mapping of answers to error classes: connection problems, timeouts,
//! 408, 429 and 5xx are transient (retried), with the provider's `retry-after` passed to the engine as the
//! least delay before the next attempt; other 4xx are refused requests (not retried).

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use flowmason_actors::ComponentError;

/// The longest `retry-after` honoured; a provider asking for more is asked again after this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long one provider call may take before it fails as transient (the stage `timeout` may cut it
/// shorter). FlowMason's providers use 120 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Installs rustls' ring crypto provider for the process, once. kube also uses ring; with reqwest's
/// `rustls-no-provider` nothing else is compiled in, so building a client without this would panic.
pub fn install_crypto_provider() {
    // An error means some provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process-wide client (connection pools are per client).
pub fn client() -> Result<&'static reqwest::Client, ComponentError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            install_crypto_provider();
            reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ComponentError::internal(format!("cannot build the HTTP client: {e}")))
}

/// A header whose value is a secret: marked sensitive so that reqwest never prints it.
pub fn secret_header(
    name: &'static str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), ComponentError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        ComponentError::config(format!(
            "the API key for header {name} holds characters a header cannot carry"
        ))
    })?;
    value.set_sensitive(true);
    Ok((HeaderName::from_static(name), value))
}

/// POSTs `body` as JSON to `url` and returns the JSON answer of a 2xx response. `provider` names the
/// provider in messages and error details.
pub async fn post_json(
    provider: &str,
    url: &str,
    headers: HeaderMap,
    body: &Value,
) -> Result<Value, ComponentError> {
    let client = client()?;
    let response = client
        .post(url)
        .headers(headers)
        .json(body)
        .send()
        .await
        .map_err(|e| transport_error(provider, url, &e))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let text = response
        .text()
        .await
        .map_err(|e| transport_error(provider, url, &e))?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| {
            ComponentError::internal(format!(
                "{provider}: POST {url}: the answer is not JSON: {e}"
            ))
            .with_details(json!({"provider": provider, "status_code": status.as_u16()}))
        });
    }
    Err(status_error(
        provider,
        url,
        status.as_u16(),
        &text,
        retry_after,
    ))
}

fn transport_error(provider: &str, url: &str, error: &reqwest::Error) -> ComponentError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    ComponentError::transient(format!("{provider}: POST {url}: {what}: {error}"))
        .with_details(json!({"provider": provider}))
}

/// The error for a non-2xx answer: its class, the provider's own message, and the retry-after floor.
pub fn status_error(
    provider: &str,
    url: &str,
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
) -> ComponentError {
    let detail = provider_message(body);
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut message = format!("{provider}: POST {url}: {status} {reason}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    let transient = matches!(status, 408 | 429) || status >= 500;
    if transient && let Some(wait) = retry_after {
        message.push_str(&format!(" (retry after {}s)", wait.as_secs_f64()));
    }
    if matches!(status, 401 | 403) {
        message.push_str(" (check the API key in the provider's secretRef)");
    }
    let details = json!({"provider": provider, "status_code": status});
    let error = if transient {
        ComponentError::transient(message)
    } else {
        ComponentError::client(message)
    }
    .with_details(details);
    match retry_after {
        Some(wait) if transient => error.with_retry_after(wait),
        _ => error,
    }
}

/// The provider's explanation in an error body: `error.message` (both APIs), else the start of the text.
fn provider_message(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(body)
        && let Some(message) = value
            .pointer("/error/message")
            .or_else(|| value.get("message"))
            .and_then(Value::as_str)
    {
        return message.to_string();
    }
    let trimmed = body.trim();
    match trimmed.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &trimmed[..cut]),
        None => trimmed.to_string(),
    }
}

/// The wait a response asks for: `retry-after-ms` (OpenAI), else `retry-after` in seconds or as an HTTP
/// date; capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let wait = if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        seconds(ms / 1000.0)
    } else {
        let value = header("retry-after")?;
        match value.parse::<f64>() {
            Ok(secs) => seconds(secs),
            Err(_) => {
                let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
                let secs = (date.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .num_milliseconds() as f64
                    / 1000.0;
                seconds(secs.max(0.0))
            }
        }
    }?;
    Some(wait.min(MAX_RETRY_AFTER))
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmason_store::ErrorClass;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after", "1.5"),
                ("retry-after-ms", "250")
            ])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "999999")])),
            Some(MAX_RETRY_AFTER)
        );
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(
            retry_after(&headers(&[("retry-after", past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn statuses_map_to_classes() {
        let e = status_error(
            "anthropic",
            "http://h/v1/messages",
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(
            e.message,
            "anthropic: POST http://h/v1/messages: 429 Too Many Requests: slow down (retry after 3s)"
        );
        assert_eq!(
            e.details,
            json!({"provider": "anthropic", "status_code": 429})
        );
        for status in [408, 500, 503, 529] {
            assert_eq!(
                status_error("p", "u", status, "", None).class,
                ErrorClass::Transient
            );
        }
        let e = status_error("openai", "u", 401, "bad key", Some(Duration::from_secs(1)));
        assert_eq!(e.class, ErrorClass::Client);
        assert_eq!(e.retry_after, None);
        assert_eq!(
            e.message,
            "openai: POST u: 401 Unauthorized: bad key (check the API key in the provider's secretRef)"
        );
        assert_eq!(
            status_error("p", "u", 400, "", None).class,
            ErrorClass::Client
        );
    }
}

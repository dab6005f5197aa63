//! The history API over the event log:
//!
//! - `GET /api/v1/runs`: `namespace`, `pipeline`, `phase` (repeatable or comma-separated), `since`,
//!   `until` (RFC 3339, age such as `2h`, or Unix micros), `trigger`, `labelSelector` (`k=v,k2=v2`),
//!   `limit`, `continue`; newest first, keyset pagination (`continueToken` in the answer);
//! - `GET /api/v1/runs/{runId}`: the fold of the run's events with stage attempts and durations;
//! - `GET /api/v1/runs/{runId}/events`: the raw events (a JSON array); `?follow=true` streams them as
//!   NDJSON (or server-sent events with `Accept: text/event-stream` or `format=sse`) and keeps streaming
//!   new ones as they are appended, until the run's terminal event; `from=N` starts at sequence N;
//! - `POST /api/v1/runs/{runId}/rerun` (`{"fromFailed": true}` or `?fromFailed=true`);
//! - `GET /api/v1/pipelines/{ns}/{name}/stats`: `window` (default 24h) or `since`/`until`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowmason_store::{Event, EventStore, RunId, RunPhase, RunQuery, StoreError, Trigger};
use futures::stream::{self, Stream};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::history::rerun::{RerunError, RerunOptions, Rerunner};
use crate::history::{self, ParamError, RunDetail, stats};

/// What the history endpoints need.
#[derive(Clone)]
pub struct HistoryState {
    pub store: EventStore,
    /// Starts reruns; `None` answers reruns with 501 (a read-only history server).
    pub rerun: Option<Rerunner>,
    /// Ends follow streams (on shutdown).
    pub stop: CancellationToken,
}

impl HistoryState {
    pub fn new(store: EventStore) -> HistoryState {
        HistoryState {
            store,
            rerun: None,
            stop: CancellationToken::new(),
        }
    }
}

/// The history routes, to mount next to others.
pub fn router(state: HistoryState) -> Router {
    Router::new()
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/runs/{run_id}/events", get(get_events))
        .route("/api/v1/runs/{run_id}/rerun", post(rerun))
        .route("/api/v1/pipelines/{namespace}/{name}/stats", get(get_stats))
        .with_state(state)
}

/// An error answer: `{"error": message}` with a status.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadContinueToken(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<RerunError> for ApiError {
    fn from(e: RerunError) -> Self {
        let status = match &e {
            RerunError::NotFound(_) => StatusCode::NOT_FOUND,
            RerunError::InFlight { .. } | RerunError::NothingFailed { .. } => StatusCode::CONFLICT,
            RerunError::BadPlan { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RerunError::Start { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// Decodes `a=b&c=d` (percent-encoding and `+`), keeping repeated keys.
pub fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn parse<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, ParamError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ParamError::Invalid {
        field: field.into(),
        value: value.into(),
        reason: e.to_string(),
    })
}

fn parse_bool(field: &str, value: &str) -> Result<bool, ParamError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ParamError::Invalid {
            field: field.into(),
            value: value.into(),
            reason: "expected true or false".into(),
        }),
    }
}

/// The store query of `GET /api/v1/runs` parameters.
pub fn run_query(params: &[(String, String)], now_micros: i64) -> Result<RunQuery, ParamError> {
    let mut q = RunQuery::default();
    for (key, value) in params {
        match key.as_str() {
            "namespace" => q.namespace = Some(value.clone()),
            "pipeline" => q.pipeline = Some(value.clone()),
            "phase" => {
                for phase in value.split(',').filter(|p| !p.is_empty()) {
                    q.phases.push(parse::<RunPhase>("phase", phase)?);
                }
            }
            "trigger" => q.trigger = Some(parse::<Trigger>("trigger", value)?),
            "since" => q.since = Some(history::parse_time("since", value, now_micros)?),
            "until" => q.until = Some(history::parse_time("until", value, now_micros)?),
            "labelSelector" => q.labels = history::parse_label_selector(value)?,
            "limit" => {
                q.limit = parse::<usize>("limit", value)?;
                if q.limit > 10_000 {
                    return Err(ParamError::Invalid {
                        field: "limit".into(),
                        value: value.clone(),
                        reason: "at most 10000".into(),
                    });
                }
            }
            "continue" => q.continue_token = Some(value.clone()).filter(|t| !t.is_empty()),
            _ => {}
        }
    }
    Ok(q)
}

fn run_id(text: &str) -> Result<RunId, ApiError> {
    text.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("runId {text:?} is not a UUID"),
        )
    })
}

/// Runs a blocking store read off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn list_runs(
    State(state): State<HistoryState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = run_query(&parse_query(raw.as_deref()), history::now_micros())?;
    let page = blocking(move || Ok(state.store.query(&query)?)).await?;
    Ok(Json(page).into_response())
}

async fn get_run(
    State(state): State<HistoryState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run = run_id(&id)?;
    let folded = blocking(move || Ok(state.store.fold(run)?)).await?;
    match folded {
        Some(s) => Ok(Json(RunDetail::from_state(s)).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("run {run} not found"),
        )),
    }
}

/// How followed events are framed.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Ndjson,
    Sse,
}

fn frame(event: &Event, framing: Framing) -> Bytes {
    let json = serde_json::to_string(event).unwrap_or_else(|e| {
        json!({ "error": format!("event {} cannot be encoded: {e}", event.seq) }).to_string()
    });
    Bytes::from(match framing {
        Framing::Ndjson => format!("{json}\n"),
        Framing::Sse => format!(
            "id: {}\nevent: {}\ndata: {json}\n\n",
            event.seq,
            event.kind.name()
        ),
    })
}

async fn get_events(
    State(state): State<HistoryState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let run = run_id(&id)?;
    let params = parse_query(raw.as_deref());
    let mut follow = false;
    let mut from = 0u64;
    let mut sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let mut ndjson = false;
    for (key, value) in &params {
        match key.as_str() {
            "follow" => follow = parse_bool("follow", value)?,
            "from" => from = parse::<u64>("from", value)?,
            "format" => match value.as_str() {
                "sse" => sse = true,
                "ndjson" => ndjson = true,
                "json" => {}
                other => {
                    return Err(ParamError::Invalid {
                        field: "format".into(),
                        value: other.into(),
                        reason: "expected json, ndjson or sse".into(),
                    }
                    .into());
                }
            },
            _ => {}
        }
    }
    // Subscribe before the first read: an append between the read and the wait still wakes the stream.
    let notify = state.store.subscribe_appends();
    let store = state.store.clone();
    let (summary, events) =
        blocking(move || Ok((store.summary(run)?, store.events_from(run, from)?))).await?;
    let Some(summary) = summary else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("run {run} not found"),
        ));
    };
    if !follow && !sse && !ndjson {
        return Ok(Json(events).into_response());
    }
    let framing = if sse { Framing::Sse } else { Framing::Ndjson };
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let done = !follow || summary.phase.is_terminal();
    let body = Body::from_stream(follow_stream(
        state, run, from, events, done, notify, framing,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

struct Follow {
    state: HistoryState,
    run: RunId,
    batch: std::vec::IntoIter<Event>,
    next_seq: u64,
    done: bool,
    notify: tokio::sync::watch::Receiver<u64>,
    framing: Framing,
}

/// The events read so far (from sequence `from` on), then new ones as write cycles make them readable,
/// until the terminal event (or the run's deletion, or shutdown).
fn follow_stream(
    state: HistoryState,
    run: RunId,
    from: u64,
    first: Vec<Event>,
    done: bool,
    notify: tokio::sync::watch::Receiver<u64>,
    framing: Framing,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    // Nothing read yet: go on from where the client asked to start, not from the first event.
    let next_seq = first.last().map_or(from, |e| e.seq + 1);
    let follow = Follow {
        state,
        run,
        batch: first.into_iter(),
        next_seq,
        done,
        notify,
        framing,
    };
    stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(event) = f.batch.next() {
                if event.kind.is_terminal() {
                    f.done = true;
                }
                f.next_seq = event.seq + 1;
                let bytes = frame(&event, f.framing);
                return Some((Ok(bytes), f));
            }
            if f.done {
                return None;
            }
            tokio::select! {
                _ = f.state.stop.cancelled() => return None,
                changed = f.notify.changed() => if changed.is_err() { return None },
                // A safety net only: every write cycle notifies.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let store = f.state.store.clone();
            let (run, from) = (f.run, f.next_seq);
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, StoreError>((store.events_from(run, from)?, store.summary(run)?))
            })
            .await;
            match read {
                Ok(Ok((events, summary))) => {
                    if summary.is_none() {
                        f.done = true; // deleted while followed
                    }
                    f.batch = events.into_iter();
                }
                Ok(Err(e)) => {
                    tracing::error!(run = %f.run, error = %e, "following events failed");
                    return None;
                }
                Err(e) => {
                    tracing::error!(run = %f.run, error = %e, "following events failed");
                    return None;
                }
            }
        }
    })
}

async fn rerun(
    State(state): State<HistoryState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let run = run_id(&id)?;
    let mut options: RerunOptions = if body.iter().all(u8::is_ascii_whitespace) {
        RerunOptions::default()
    } else {
        serde_json::from_slice::<Option<RerunOptions>>(&body)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("request body: expected {{\"fromFailed\": bool}}: {e}"),
                )
            })?
    };
    for (key, value) in parse_query(raw.as_deref()) {
        if key == "fromFailed" {
            options.from_failed = parse_bool("fromFailed", &value)?;
        }
    }
    let Some(rerunner) = state.rerun.clone() else {
        return Err(ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "this server only reads history; rerun through fm serve or fm history serve".into(),
        ));
    };
    let store = state.store.clone();
    let old = blocking(move || Ok(store.fold(run)?))
        .await?
        .ok_or(RerunError::NotFound(run))?;
    let started = rerunner(old, options).await?;
    Ok((StatusCode::CREATED, Json(started)).into_response())
}

async fn get_stats(
    State(state): State<HistoryState>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let now = history::now_micros();
    let mut since = None;
    let mut until = now;
    let mut window_ms = 86_400_000u64;
    for (key, value) in parse_query(raw.as_deref()) {
        match key.as_str() {
            "window" => window_ms = history::parse_duration_ms("window", &value)?,
            "since" => since = Some(history::parse_time("since", &value, now)?),
            "until" => until = history::parse_time("until", &value, now)?,
            _ => {}
        }
    }
    let since = since.unwrap_or(until - (window_ms as i64).saturating_mul(1000));
    let result = blocking(move || {
        Ok(stats::pipeline_stats(
            &state.store,
            &namespace,
            &name,
            since,
            until,
        )?)
    })
    .await?;
    Ok(Json(result).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_with_repeated_keys() {
        let q = parse_query(Some(
            "phase=Failed&phase=Running%2CPending&labelSelector=team%3Da+b&x",
        ));
        assert_eq!(q[0], ("phase".into(), "Failed".into()));
        assert_eq!(q[1], ("phase".into(), "Running,Pending".into()));
        assert_eq!(q[2], ("labelSelector".into(), "team=a b".into()));
        assert_eq!(q[3], ("x".into(), String::new()));
        assert_eq!(
            parse_query(Some("a=%zz%4")),
            vec![("a".into(), "%zz%4".into())]
        );
        let rq = run_query(&q[..3], 0).expect("valid");
        assert_eq!(
            rq.phases,
            vec![RunPhase::Failed, RunPhase::Running, RunPhase::Pending]
        );
        let err = run_query(&[("phase".into(), "Done".into())], 0).unwrap_err();
        assert!(err.to_string().starts_with("phase \"Done\""), "{err}");
        let err = run_query(&[("limit".into(), "ten".into())], 0).unwrap_err();
        assert!(err.to_string().starts_with("limit \"ten\""), "{err}");
    }
}

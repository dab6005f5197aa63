//! Watch streams: newline-delimited JSON `{"type", "object"}` events, as the real API server sends them.
//!
//! - From a `resourceVersion`: the changes after it are replayed from the persisted history, then live
//!   changes follow (no gap: the live subscription is taken before the history is read, and events are
//!   de-duplicated by resourceVersion). A version older than the history gets one `ERROR` event carrying
//!   a 410 `Expired` Status, which makes kube-runtime and kubectl re-list.
//! - Without one (`""`/`"0"`): synthetic `ADDED` events for the current objects first.
//! - Label-selector watches see an object that stops matching as `DELETED` and one that starts matching
//!   as `ADDED`.
//! - `BOOKMARK`s (when allowed) every bookmark interval and when the watch times out, so that a client
//!   resumes from the newest version; `timeoutSeconds` (capped by the server's maximum) ends the stream.
//! - A client that falls too far behind the live fan-out is disconnected; it re-watches from its last
//!   version and catches up from the history.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt as _;
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::ApiState;
use super::error::ApiError;
use super::registry::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, ChangeType, scan_prefix};
use super::table::{self, IncludeObject};

/// A parsed watch request.
pub struct WatchRequest {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None`: start with the current objects.
    pub resource_version: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub bookmarks: bool,
    /// With no resourceVersion: end the initial events with a bookmark annotated
    /// `k8s.io/initial-events-end` (streaming lists).
    pub send_initial_events: bool,
    /// Table output (kubectl get -w).
    pub table: Option<IncludeObject>,
}

/// Starts the stream; the work runs on a tracked task that ends with the client, the timeout, a
/// forced watch drop or server shutdown.
pub fn start(state: Arc<ApiState>, request: WatchRequest) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let tasks = state.tasks.clone();
    tasks.spawn(run(state, request, tx));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(rx),
    )
        .into_response()
}

struct Sender {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    rt: Arc<ResourceType>,
    table: Option<IncludeObject>,
    columns_sent: bool,
}

impl Sender {
    /// Sends one event; false when the client is gone.
    async fn send(&mut self, kind: &str, object: &Value) -> bool {
        let object = match (self.table, kind) {
            (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
                let meta = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                let t = table::table(
                    &self.rt,
                    std::slice::from_ref(object),
                    meta,
                    include,
                    !self.columns_sent,
                );
                self.columns_sent = true;
                t
            }
            _ => object.clone(),
        };
        let mut line = match serde_json::to_vec(&json!({"type": kind, "object": object})) {
            Ok(line) => line,
            Err(_) => return true,
        };
        line.push(b'\n');
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn bookmark(&mut self, rv: u64, initial_end: bool) -> bool {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta});
        self.send("BOOKMARK", &object).await
    }
}

/// The event (type) a change means for this watch, if any.
fn event_for(request: &WatchRequest, store_key: &str, change: &Change) -> Option<&'static str> {
    if change.resource != store_key {
        return None;
    }
    if let Some(ns) = &request.namespace
        && change.namespace != *ns
    {
        return None;
    }
    if !request.fields.matches(&change.object) {
        return None;
    }
    let now = request.labels.matches(&change.object);
    match change.change {
        ChangeType::Added => now.then_some("ADDED"),
        ChangeType::Deleted => now.then_some("DELETED"),
        ChangeType::Modified => {
            let before = request
                .labels
                .matches_labels(change.old_labels.as_ref().unwrap_or(&Value::Null));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

async fn run(
    state: Arc<ApiState>,
    request: WatchRequest,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let mut live = state.store.subscribe();
    let mut epoch = state.watch_epoch.subscribe();
    epoch.mark_unchanged();
    let store_key = request.rt.store_key();
    let mut out = Sender {
        tx,
        rt: request.rt.clone(),
        table: request.table,
        columns_sent: false,
    };
    let limit = state.config.max_watch;
    let timeout = request
        .timeout_seconds
        .map(Duration::from_secs)
        .map_or(limit, |t| t.min(limit));
    let deadline = tokio::time::Instant::now() + timeout;

    let mut last_rv = match request.resource_version {
        None => {
            let st = state.clone();
            let prefix = scan_prefix(&store_key, request.namespace.as_deref());
            let labels = request.labels.clone();
            let fields = request.fields.clone();
            let page = tokio::task::spawn_blocking(move || {
                st.store.list(&prefix, None, 0, &|o| {
                    labels.matches(o) && fields.matches(o)
                })
            })
            .await;
            let page = match page {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    let _ = out.send("ERROR", &ApiError::from(e).status()).await;
                    return;
                }
                Err(e) => {
                    let _ = out
                        .send(
                            "ERROR",
                            &ApiError::Internal(format!("watch failed: {e}")).status(),
                        )
                        .await;
                    return;
                }
            };
            for object in &page.items {
                if !out.send("ADDED", object).await {
                    return;
                }
            }
            if request.send_initial_events
                && request.bookmarks
                && !out.bookmark(page.rv, true).await
            {
                return;
            }
            page.rv
        }
        Some(from) => {
            let st = state.clone();
            let history = tokio::task::spawn_blocking(move || st.store.history_after(from)).await;
            match history {
                Ok(Ok(Some(changes))) => {
                    let mut last = from;
                    for change in &changes {
                        if let Some(kind) = event_for(&request, &store_key, change)
                            && !out.send(kind, &change.object).await
                        {
                            return;
                        }
                        last = change.rv;
                    }
                    last
                }
                Ok(Ok(None)) => {
                    let gone = ApiError::Gone(format!(
                        "too old resource version: {from} ({})",
                        state.store.current_rv()
                    ));
                    let _ = out.send("ERROR", &gone.status()).await;
                    return;
                }
                Ok(Err(e)) => {
                    let _ = out.send("ERROR", &ApiError::from(e).status()).await;
                    return;
                }
                Err(e) => {
                    let _ = out
                        .send(
                            "ERROR",
                            &ApiError::Internal(format!("watch failed: {e}")).status(),
                        )
                        .await;
                    return;
                }
            }
        }
    };

    let mut ticker = tokio::time::interval(state.config.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = epoch.changed() => return,
            _ = tokio::time::sleep_until(deadline) => {
                if request.bookmarks {
                    let _ = out.bookmark(last_rv, false).await;
                }
                return;
            }
            _ = ticker.tick(), if request.bookmarks => {
                if !out.bookmark(last_rv, false).await {
                    return;
                }
            }
            received = live.recv() => match received {
                Ok(change) => {
                    if change.rv <= last_rv {
                        continue;
                    }
                    last_rv = change.rv;
                    if let Some(kind) = event_for(&request, &store_key, &change)
                        && !out.send(kind, &change.object).await
                    {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
            },
        }
    }
}

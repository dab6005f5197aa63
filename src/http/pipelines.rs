//! The endpoints the web UI needs next to the history API, so that it talks to one surface on every
//! command:
//!
//! - `GET /api/v1/pipelines` (`namespace` filters): the Pipelines, read through the Kubernetes client
//!   (`fm serve`, `fm operator`), or derived from the run history (`fm history serve`: each pipeline with
//!   the plan of its newest run);
//! - `GET /api/v1/pipelines/{ns}/{name}`: one Pipeline and its YAML;
//! - `POST /api/v1/pipelines/{ns}/{name}/runs` (`{"inputs": {...}}`, none: the `sampleInput`): creates a
//!   PipelineRun, answers its `runId` and `runName`;
//! - `POST /api/v1/runs/{runId}/cancel`: asks the operator to cancel the run's PipelineRun.
//!
//! Without a cluster, starting and cancelling runs is answered 501.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowmason_store::{EventStore, RunId, RunQuery};
use kube::api::{Api, ListParams};
use serde_json::{Map, Value, json};

use super::history::{ApiError, parse_query};
use crate::client::{ClientError, FlowMasonClient};
use crate::model::Pipeline;

/// Where Pipelines come from.
#[derive(Clone)]
pub enum Pipelines {
    /// The Kubernetes API, through the client set once it is ready.
    Cluster(Arc<OnceLock<kube::Client>>),
    /// The run history only: no Pipeline objects, no runs started or cancelled here.
    History,
}

/// What the endpoints need.
#[derive(Clone)]
pub struct PipelinesState {
    pub store: EventStore,
    pub pipelines: Pipelines,
}

/// The routes, to mount next to the history API (behind the same authentication).
pub fn router(state: PipelinesState) -> Router {
    Router::new()
        .route("/api/v1/pipelines", get(list_pipelines))
        .route("/api/v1/pipelines/{namespace}/{name}", get(get_pipeline))
        .route("/api/v1/pipelines/{namespace}/{name}/runs", post(start_run))
        .route("/api/v1/runs/{run_id}/cancel", post(cancel_run))
        .with_state(state)
}

/// The annotation `kubectl apply` keeps the whole object in: left out of the YAML shown.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Runs listed to derive pipelines from the history (newest first; older pipelines beyond it are left
/// out).
const HISTORY_SCAN: usize = 10_000;

fn no_cluster(what: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{what} needs a Kubernetes API: this server only reads the run history (use fm serve or fm operator)"
        ),
    )
}

impl PipelinesState {
    fn client(&self, what: &str) -> Result<Option<kube::Client>, ApiError> {
        match &self.pipelines {
            Pipelines::History => Ok(None),
            Pipelines::Cluster(slot) => slot.get().cloned().map(Some).ok_or_else(|| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{what}: the Kubernetes client is not ready yet"),
                )
            }),
        }
    }
}

/// What the operator's client answered, as the HTTP status a caller can act on: a missing Pipeline is the
/// caller's 404, a request the API server refused keeps its status, and only a failure to reach it is 502.
fn client_error(e: ClientError) -> ApiError {
    let status = match &e {
        ClientError::NotFound { .. } => StatusCode::NOT_FOUND,
        ClientError::Ambiguous { .. } => StatusCode::CONFLICT,
        ClientError::Api { error, .. } => kube_status(error),
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError(status, e.to_string())
}

/// A refusal of the API server keeps its status; failing to reach it is a bad gateway.
fn kube_status(e: &kube::Error) -> StatusCode {
    match e {
        kube::Error::Api(s) => StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn kube_error(action: String) -> impl FnOnce(kube::Error) -> ApiError {
    move |e| ApiError(kube_status(&e), format!("{action}: {e}"))
}

async fn list_pipelines(
    State(state): State<PipelinesState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let namespace = parse_query(raw.as_deref())
        .into_iter()
        .find(|(k, _)| k == "namespace")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty());
    let Some(client) = state.client("list Pipelines")? else {
        let store = state.store.clone();
        let items = tokio::task::spawn_blocking(move || history_pipelines(&store, namespace))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        return Ok(Json(json!({ "source": "history", "items": items })).into_response());
    };
    let api: Api<Pipeline> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(kube_error(format!(
            "list Pipelines in namespace {}",
            namespace.as_deref().unwrap_or("(all)")
        )))?;
    Ok(Json(json!({ "source": "cluster", "items": list.items })).into_response())
}

/// One Pipeline-shaped object per (namespace, pipeline) of the history, with the plan of its newest run
/// as its stages.
fn history_pipelines(
    store: &EventStore,
    namespace: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    let page = store
        .query(&RunQuery {
            namespace,
            limit: HISTORY_SCAN,
            ..RunQuery::default()
        })
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut newest: BTreeMap<(String, String), RunId> = BTreeMap::new();
    for run in &page.runs {
        newest
            .entry((run.namespace.clone(), run.pipeline.clone()))
            .or_insert(run.run_id);
    }
    let mut items = Vec::with_capacity(newest.len());
    for ((namespace, name), run) in newest {
        let stages = store
            .fold(run)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .and_then(|s| s.plan.get("stages").cloned())
            .unwrap_or(Value::Array(Vec::new()));
        items.push(json!({
            "apiVersion": "flowmason.io/v1",
            "kind": "Pipeline",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"stages": stages},
        }));
    }
    Ok(items)
}

async fn get_pipeline(
    State(state): State<PipelinesState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(client) = state.client("read a Pipeline")? else {
        let store = state.store.clone();
        let ns = namespace.clone();
        let items = tokio::task::spawn_blocking(move || history_pipelines(&store, Some(ns)))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        let found = items
            .into_iter()
            .find(|p| p["metadata"]["name"] == json!(name))
            .ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    format!("pipeline {namespace}/{name} has no runs in the history"),
                )
            })?;
        let yaml = serde_saphyr::to_string(&found).unwrap_or_default();
        return Ok(
            Json(json!({ "source": "history", "pipeline": found, "yaml": yaml })).into_response(),
        );
    };
    let pipeline = Api::<Pipeline>::namespaced(client, &namespace)
        .get_opt(&name)
        .await
        .map_err(kube_error(format!("read Pipeline {namespace}/{name}")))?
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("Pipeline {namespace}/{name} not found"),
            )
        })?;
    let mut shown = pipeline.clone();
    shown.metadata.managed_fields = None;
    if let Some(annotations) = shown.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let yaml = serde_saphyr::to_string(&shown).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Pipeline {namespace}/{name} cannot be shown as YAML: {e}"),
        )
    })?;
    Ok(Json(json!({ "source": "cluster", "pipeline": pipeline, "yaml": yaml })).into_response())
}

async fn start_run(
    State(state): State<PipelinesState>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let inputs: Option<Map<String, Value>> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let request: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("request body: expected {{\"inputs\": {{...}}}}: {e}"),
            )
        })?;
        match request.get("inputs") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map.clone()),
            Some(other) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("inputs: expected a JSON object, got {other}"),
                ));
            }
        }
    };
    let Some(client) = state.client("start a run")? else {
        return Err(no_cluster("starting a run"));
    };
    let flowmason = FlowMasonClient::new(client, namespace.clone());
    // Kubernetes would accept a PipelineRun of any name and the run would fail later; the caller asked
    // for this Pipeline, so its absence is their 404 now.
    if flowmason
        .get_pipeline(&name)
        .await
        .map_err(client_error)?
        .is_none()
    {
        return Err(client_error(ClientError::NotFound {
            kind: "Pipeline",
            namespace,
            name,
        }));
    }
    let created = flowmason
        .create_run(&name, None, inputs)
        .await
        .map_err(client_error)?;
    let run_id = crate::operator::runs::run_id_of(&created)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "runId": run_id,
            "runName": kube::ResourceExt::name_any(&created),
            "namespace": namespace,
            "pipeline": name,
        })),
    )
        .into_response())
}

async fn cancel_run(
    State(state): State<PipelinesState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run: RunId = id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("runId {id:?} is not a UUID"),
        )
    })?;
    let Some(client) = state.client("cancel a run")? else {
        return Err(no_cluster("cancelling a run"));
    };
    let store = state.store.clone();
    let summary = tokio::task::spawn_blocking(move || store.summary(run))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("run {run} not found")))?;
    if summary.phase.is_terminal() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("run {run} already ended {}", summary.phase),
        ));
    }
    let Some(run_name) = summary.run_name else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("run {run} has no PipelineRun to cancel (it was not started through the API)"),
        ));
    };
    FlowMasonClient::new(client, summary.namespace.clone())
        .cancel_run(&run_name)
        .await
        .map_err(client_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "runId": run, "runName": run_name, "namespace": summary.namespace })),
    )
        .into_response())
}

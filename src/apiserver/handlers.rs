//! Routing and the resource verbs: create (with `generateName`), get, list (selectors, `limit`/
//! `continue`), update (optimistic concurrency), patch, delete, deletecollection, the `status`
//! subresource, and Table output. Store work runs on blocking threads (a write flushes sled before it
//! is answered); handlers do nothing else, so a write is answered as soon as it is durable.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use serde_json::{Value, json};

use super::ApiState;
use super::delete::{self, DeleteOptions, Deleted};
use super::discovery;
use super::error::ApiError;
use super::field_validation::{self, FieldValidation, with_warnings};
use super::objects::{deletion_complete, prepare_create, prepare_update};
use super::patch::{self, PatchKind};
use super::registry::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ChangeType, Mutation, ObjectKey, Outcome, scan_prefix};
use super::table::{self, IncludeObject};
use super::watch::{self, WatchRequest};

const CRDS: &str = "apiextensions.k8s.io/v1/customresourcedefinitions";

/// The whole API as an axum router (authentication is layered on by the server).
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::group_list))
        .route("/apis/{group}", get(discovery::group))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(discovery::openapi_v3))
        .route("/openapi/v3/{*path}", get(discovery::openapi_v3_group))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(state): State<Arc<ApiState>>| async move {
                crate::health::respond(&state.readiness).await
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/api/v1", any(api))
        .route("/api/v1/{*rest}", any(api))
        .route("/apis/{group}/{version}", any(api))
        .route("/apis/{group}/{version}/{*rest}", any(api))
        .fallback(|| async { not_served() })
        .with_state(state)
}

fn not_served() -> ApiError {
    ApiError::NotFound {
        message: "the server could not find the requested resource".into(),
        kind: String::new(),
        group: String::new(),
        name: String::new(),
    }
}

/// What a request addresses.
struct Target {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// Splits `/api/v1/...` or `/apis/<g>/<v>/...` into group, version and the remaining segments.
fn split_path(path: &str) -> Option<(String, String, Vec<String>)> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 2 => {
            Some((String::new(), segs[1].clone(), segs[2..].to_vec()))
        }
        Some("apis") if segs.len() >= 3 => {
            Some((segs[1].clone(), segs[2].clone(), segs[3..].to_vec()))
        }
        _ => None,
    }
}

fn resolve(
    state: &ApiState,
    group: &str,
    version: &str,
    segs: &[String],
) -> Result<Target, ApiError> {
    let lookup = |plural: &str| {
        state
            .registry
            .lookup(group, version, plural)
            .ok_or_else(not_served)
    };
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let target =
        |rt: Arc<ResourceType>, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
            rt,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        };
    let core_ns_sub = |sub: &str| group.is_empty() && matches!(sub, "status" | "finalize");
    let t = match s.as_slice() {
        [r] => target(lookup(r)?, None, None, None),
        [r, n] => target(lookup(r)?, None, Some(n), None),
        ["namespaces", ns, sub] if core_ns_sub(sub) => {
            target(lookup("namespaces")?, None, Some(ns), Some(sub))
        }
        ["namespaces", ns, r] => target(lookup(r)?, Some(ns), None, None),
        [r, n, sub] => target(lookup(r)?, None, Some(n), Some(sub)),
        ["namespaces", ns, r, n] => target(lookup(r)?, Some(ns), Some(n), None),
        ["namespaces", ns, r, n, sub] => target(lookup(r)?, Some(ns), Some(n), Some(sub)),
        _ => return Err(not_served()),
    };
    // A namespaced kind's items live under a namespace; a cluster-scoped kind has none.
    if t.rt.namespaced && t.namespace.is_none() && t.name.is_some() {
        return Err(not_served());
    }
    if !t.rt.namespaced && t.namespace.is_some() {
        return Err(not_served());
    }
    if let Some(sub) = &t.subresource
        && !(sub == "status" && t.rt.status_subresource)
    {
        return Err(not_served());
    }
    Ok(t)
}

/// Entry point of every `/api/v1/...` and `/apis/<g>/<v>/...` request.
async fn api(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    match handle(state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: Arc<ApiState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let (group, version, segs) = split_path(parts.uri.path()).ok_or_else(not_served)?;
    if segs.is_empty() {
        return match parts.method {
            Method::GET => state
                .registry
                .resource_list(&group, &version)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(not_served),
            _ => Err(method_not_allowed(&parts.method)),
        };
    }
    let target = resolve(&state, &group, &version, &segs)?;
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
    let accept = header_str(&parts.headers, header::ACCEPT);
    let wants_table = table::wants_table(&accept);
    let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
    let body = read_body(&state, &parts.headers, body).await?;
    let dry_run = query.get("dryRun").is_some_and(|v| !v.is_empty());
    let field_validation =
        FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
    let Target {
        rt,
        namespace,
        name,
        subresource,
    } = target;
    let status = subresource.is_some();
    match (name, parts.method.clone()) {
        (None, Method::GET) => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let resource_version = match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => None,
                    Some(v) => Some(v.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "resourceVersion: invalid value {v:?}: must be a number"
                        ))
                    })?),
                };
                let timeout = match query.get("timeoutSeconds") {
                    Some(t) => Some(t.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!("timeoutSeconds: invalid value {t:?}"))
                    })?),
                    None => None,
                };
                return Ok(watch::start(
                    state,
                    WatchRequest {
                        rt,
                        namespace,
                        labels,
                        fields,
                        resource_version,
                        timeout_seconds: timeout,
                        bookmarks: query
                            .get("allowWatchBookmarks")
                            .is_some_and(|b| b == "true"),
                        send_initial_events: query
                            .get("sendInitialEvents")
                            .is_some_and(|b| b == "true"),
                        table: wants_table.then_some(include),
                    },
                ));
            }
            list(
                state,
                rt,
                namespace,
                labels,
                fields,
                &query,
                wants_table.then_some(include),
            )
            .await
        }
        (None, Method::POST) => {
            let Some(ns) = namespace.or_else(|| (!rt.namespaced).then(String::new)) else {
                return Err(method_not_allowed(&Method::POST));
            };
            let mut object = read_object(&parts.headers, &body)?;
            let warnings = field_validation::check(&rt, &mut object, field_validation)?;
            let response = create(state, rt, ns, object, dry_run).await?;
            Ok(with_warnings(response, &warnings))
        }
        (None, Method::DELETE) => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
            let opts =
                DeleteOptions::parse(&body, query.get("propagationPolicy").map(String::as_str))?;
            delete_collection(state, rt, namespace, labels, fields, opts).await
        }
        (Some(name), method) => {
            let key = ObjectKey::new(&rt.store_key(), namespace.as_deref().unwrap_or(""), &name);
            match method {
                Method::GET => {
                    let st = state.clone();
                    let k = key.clone();
                    let object = blocking(move || Ok(st.store.get(&k)?))
                        .await?
                        .ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, &name))?;
                    if wants_table {
                        let meta =
                            json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                        return Ok(json_response(
                            StatusCode::OK,
                            &table::table(&rt, &[object], meta, include, true),
                        ));
                    }
                    Ok(json_response(StatusCode::OK, &object))
                }
                Method::PUT => {
                    let mut new = read_object(&parts.headers, &body)?;
                    let warnings = if status {
                        Vec::new()
                    } else {
                        field_validation::check(&rt, &mut new, field_validation)?
                    };
                    let response = write(state, rt, key, status, dry_run, move |rt, old| {
                        prepare_update(rt, old, new, status)
                    })
                    .await?;
                    Ok(with_warnings(response, &warnings))
                }
                Method::PATCH => {
                    let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
                    let kind = PatchKind::from_content_type(&content_type, rt.custom)?;
                    let warnings = Arc::new(std::sync::Mutex::new(Vec::new()));
                    let found = warnings.clone();
                    let response = write(state, rt, key, status, dry_run, move |rt, old| {
                        let mut doc = old.clone();
                        patch::apply(kind, &mut doc, &body).map_err(|e| with_kind(e, rt, old))?;
                        if !status {
                            let w = field_validation::check(rt, &mut doc, field_validation)?;
                            if let Ok(mut found) = found.lock() {
                                *found = w;
                            }
                        }
                        prepare_update(rt, old, doc, status)
                    })
                    .await?;
                    let warnings = warnings.lock().map(|w| w.clone()).unwrap_or_default();
                    Ok(with_warnings(response, &warnings))
                }
                Method::DELETE if !status => {
                    let opts = DeleteOptions::parse(
                        &body,
                        query.get("propagationPolicy").map(String::as_str),
                    )?;
                    delete_one(state, rt, key, opts, dry_run).await
                }
                other => Err(method_not_allowed(&other)),
            }
        }
        (_, other) => Err(method_not_allowed(&other)),
    }
}

/// Names the object in a JSON patch failure answered as Invalid.
fn with_kind(e: ApiError, rt: &ResourceType, old: &Value) -> ApiError {
    match e {
        ApiError::Invalid {
            message, causes, ..
        } => ApiError::Invalid {
            message,
            kind: rt.kind.clone(),
            group: rt.group.clone(),
            name: old["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            causes,
        },
        other => other,
    }
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "the server does not allow this method on the requested resource ({method})"
    ))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The object a create or update body holds: JSON (kube-rs, kubectl for custom resources), or
/// protobuf for the core kinds kubectl sends that way (see [`super::protobuf`]); anything else is 415.
fn read_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = header_str(headers, header::CONTENT_TYPE);
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    match mime {
        "" | "application/json" | "*/*" => parse_json(body),
        super::protobuf::CONTENT_TYPE => super::protobuf::decode(body),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, {} (got {mime:?})",
            super::protobuf::CONTENT_TYPE
        ))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Reads the body up to the configured limit (413 beyond it).
async fn read_body(state: &ApiState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::RequestEntityTooLarge(format!(
            "the request body is larger than the limit of {limit} bytes"
        ))
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// Runs store work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("request worker failed: {e}")))?
}

pub fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// Creates the namespace-less or namespaced object.
async fn create(
    state: Arc<ApiState>,
    rt: Arc<ResourceType>,
    ns: String,
    body: Value,
    dry_run: bool,
) -> Result<Response, ApiError> {
    let object = prepare_create(&rt, &ns, body)?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let st = state.clone();
    let outcome = blocking(move || {
        if rt.namespaced {
            let ns_key = ObjectKey::new("/v1/namespaces", "", &ns);
            match st.store.get(&ns_key)? {
                None => return Err(ApiError::not_found("namespaces", "", &ns)),
                Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                    return Err(ApiError::Invalid {
                        message: format!("namespace {ns} is being terminated"),
                        kind: rt.kind.clone(),
                        group: rt.group.clone(),
                        name: name.clone(),
                        causes: Vec::new(),
                    });
                }
                Some(_) => {}
            }
        }
        let key = ObjectKey::new(&rt.store_key(), &ns, &name);
        if dry_run {
            return match st.store.get(&key)? {
                Some(_) => Err(ApiError::already_exists(&rt.plural, &rt.group, &name)),
                None => Ok(Outcome {
                    object: Some(object),
                    previous: None,
                    change: None,
                }),
            };
        }
        let outcome = st.store.mutate(&key, |cur| match cur {
            Some(_) => Err(ApiError::already_exists(&rt.plural, &rt.group, &name)),
            None => Ok(Mutation::Put(object)),
        })?;
        if key.resource == CRDS
            && let Some(crd) = &outcome.object
        {
            st.registry.register_crd(crd);
        }
        Ok(outcome)
    })
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        outcome.object.as_ref().unwrap_or(&Value::Null),
    ))
}

/// Update or patch: `decide` maps the current object to the new one (`None`: unchanged).
async fn write(
    state: Arc<ApiState>,
    rt: Arc<ResourceType>,
    key: ObjectKey,
    _status: bool,
    dry_run: bool,
    decide: impl FnOnce(&ResourceType, &Value) -> Result<Option<Value>, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let object = blocking(move || {
        let mut preview = None;
        let outcome = st.store.mutate(&key, |cur| {
            let Some(old) = cur else {
                return Err(ApiError::not_found(&rt.plural, &rt.group, &key.name));
            };
            match decide(&rt, &old)? {
                None => Ok(Mutation::Keep),
                Some(_) if dry_run => Ok(Mutation::Keep),
                Some(new) if deletion_complete(&new) => Ok(Mutation::Delete),
                Some(new) => {
                    preview = Some(new.clone());
                    Ok(Mutation::Put(new))
                }
            }
        })?;
        let object = if dry_run {
            preview.or(outcome.object.clone())
        } else {
            outcome.object.clone()
        };
        if outcome.change == Some(ChangeType::Deleted)
            && let Some(gone) = &outcome.object
        {
            delete::after_removed(&st, gone)?;
            if key.resource == CRDS {
                st.registry.unregister_crd(&key.name);
            }
        } else if key.resource == CRDS
            && let Some(crd) = &outcome.object
        {
            st.registry.register_crd(crd);
        }
        Ok(object)
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        object.as_ref().unwrap_or(&Value::Null),
    ))
}

async fn delete_one(
    state: Arc<ApiState>,
    rt: Arc<ResourceType>,
    key: ObjectKey,
    opts: DeleteOptions,
    dry_run: bool,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let rt2 = rt.clone();
    let result = blocking(move || {
        if dry_run {
            return st
                .store
                .get(&key)?
                .map(Deleted::Pending)
                .ok_or_else(|| ApiError::not_found(&rt2.plural, &rt2.group, &key.name));
        }
        let result = delete::delete_object(&st, &rt2, &key, &opts)?;
        if key.resource == CRDS && matches!(result, Deleted::Gone(_)) {
            st.registry.unregister_crd(&key.name);
        }
        Ok(result)
    })
    .await?;
    Ok(match result {
        Deleted::Gone(object) if rt.custom => json_response(StatusCode::OK, &success(&rt, &object)),
        Deleted::Gone(object) | Deleted::Pending(object) => json_response(StatusCode::OK, &object),
    })
}

/// The Status a deleted custom resource is answered with.
fn success(rt: &ResourceType, object: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": object["metadata"]["name"],
            "group": rt.group,
            "kind": rt.plural,
            "uid": object["metadata"]["uid"],
        }
    })
}

async fn delete_collection(
    state: Arc<ApiState>,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    opts: DeleteOptions,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let rt2 = rt.clone();
    let deleted = blocking(move || {
        let prefix = scan_prefix(&rt2.store_key(), namespace.as_deref());
        let page = st.store.list(&prefix, None, 0, &|o| {
            labels.matches(o) && fields.matches(o)
        })?;
        let mut deleted = Vec::new();
        for obj in page.items {
            let key = ObjectKey::new(
                &rt2.store_key(),
                obj["metadata"]["namespace"].as_str().unwrap_or_default(),
                obj["metadata"]["name"].as_str().unwrap_or_default(),
            );
            match delete::delete_object(&st, &rt2, &key, &opts) {
                Ok(Deleted::Gone(o)) | Ok(Deleted::Pending(o)) => deleted.push(o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((deleted, st.store.current_rv()))
    })
    .await?;
    let (items, rv) = deleted;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

/// The `continue` token: the encoded store key of the last item returned.
fn encode_continue(key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_continue(token: &str, prefix: &[u8]) -> Result<Vec<u8>, ApiError> {
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| ApiError::BadRequest(format!("continue: invalid token {token:?}")))?;
    if !key.starts_with(prefix) {
        return Err(ApiError::BadRequest(format!(
            "continue: token {token:?} does not belong to this list"
        )));
    }
    Ok(key)
}

async fn list(
    state: Arc<ApiState>,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let limit = match query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("limit: invalid value {l:?}")))?,
        None => 0,
    };
    let prefix = scan_prefix(&rt.store_key(), namespace.as_deref());
    let after = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(decode_continue(token, &prefix)?),
        None => None,
    };
    let st = state.clone();
    let page = blocking(move || {
        Ok(st.store.list(&prefix, after.as_deref(), limit, &|o| {
            labels.matches(o) && fields.matches(o)
        })?)
    })
    .await?;
    let mut metadata = json!({ "resourceVersion": page.rv.to_string() });
    if let Some(last) = &page.last_key {
        metadata["continue"] = json!(encode_continue(last));
    }
    if let Some(include) = table {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&rt, &page.items, metadata, include, true),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": page.items,
        }),
    ))
}

//! Discovery: `/version`, `/api`, `/apis`, `/apis/<group>` and OpenAPI.
//!
//! Aggregated discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
//! is declined the way the API server allows: the plain `APIGroupList`/`APIVersions` is answered with a
//! plain `application/json` Content-Type, which tells kubectl (client-go) to use the legacy per-group
//! documents instead.
//!
//! OpenAPI: kubectl validates on the client only when the server does not support server-side field
//! validation, which it decides from the OpenAPI v3 document of the group version (a PATCH operation
//! tagged with the kind's `x-kubernetes-group-version-kind` that takes a `fieldValidation` query
//! parameter). `/openapi/v3/<gv>` serves exactly that for every resource, so kubectl leaves validation
//! to us (our kinds are checked on write, see [`super::field_validation`]). The `flowmason.io/v1`
//! document also carries the `Pipeline` and `PipelineRun` schemas in `components.schemas` (the CRDs'
//! `openAPIV3Schema`, snake_case aliases included), which is what `kubectl explain` reads to describe
//! the fields. `/openapi/v2` is served without schemas,
//! for older kubectl (Debian's 1.20), which validates against it and skips kinds it has no schema for.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::ApiState;
use super::error::ApiError;
use super::handlers::json_response;
use crate::model::unknown_fields;

/// The Kubernetes version we speak (k8s-openapi's newest).
pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "34",
            "gitVersion": format!("v1.34.0+flowmason-{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

pub async fn api_versions(State(state): State<Arc<ApiState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.address}],
        }),
    )
}

pub async fn group_list(State(state): State<Arc<ApiState>>) -> Response {
    json_response(StatusCode::OK, &state.registry.group_list())
}

pub async fn group(State(state): State<Arc<ApiState>>, Path(group): Path<String>) -> Response {
    match state.registry.group(&group) {
        Some(g) => json_response(StatusCode::OK, &g),
        None => not_found(),
    }
}

fn not_found() -> Response {
    axum::response::IntoResponse::into_response(ApiError::NotFound {
        message: "the server could not find the requested resource".into(),
        kind: String::new(),
        group: String::new(),
        name: String::new(),
    })
}

/// `/openapi/v2`: a schema-less document. Older kubectl (Debian's 1.20) validates on the client
/// against it, and a kind without a schema there is not checked on the client (we check on write).
/// kubectl asks for protobuf: the document is then the protobuf encoding of `{swagger: "2.0"}`
/// (gnostic `Document`, field 1).
pub async fn openapi_v2(headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("protobuf") {
        let body: Vec<u8> = vec![0x0a, 0x03, b'2', b'.', b'0'];
        return axum::response::IntoResponse::into_response((
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            body,
        ));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "swagger": "2.0",
            "info": {"title": "FlowMason embedded API", "version": "v1.34.0"},
            "paths": {},
            "definitions": {},
        }),
    )
}

/// `/openapi/v3`: one entry per served group version.
pub async fn openapi_v3(State(state): State<Arc<ApiState>>) -> Response {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".to_string())];
    for (group, versions) in state.registry.groups() {
        for v in versions {
            gvs.push((group.clone(), v));
        }
    }
    for (group, version) in gvs {
        let path = gv_path(&group, &version);
        let hash = hash_of(&gv_document(&state, &group, &version).to_string());
        paths.insert(
            path.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}") }),
        );
    }
    json_response(StatusCode::OK, &json!({ "paths": paths }))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a: a stable content hash for the document URLs (clients cache by it).
fn hash_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The OpenAPI v3 document of one group version: paths and operations, no schemas.
fn gv_document(state: &ApiState, group: &str, version: &str) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let prefix = format!("/{}", gv_path(group, version));
    for rt in state.registry.all_types() {
        if rt.group != group || rt.version != version {
            continue;
        }
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", rt.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let base = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{prefix}/{}", rt.plural)
        };
        paths.insert(base.clone(), json!({ "post": op("post") }));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({ "put": op("put"), "patch": op("patch") }),
        );
        if rt.status_subresource {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({ "put": op("put"), "patch": op("patch") }),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "FlowMason embedded API", "version": "v1.34.0"},
        "paths": paths,
        "components": {"schemas": kind_schemas(group, version)},
    })
}

/// `components.schemas` of a group version: our kinds' CRD schemas, named as kube-apiserver names
/// custom resources' (`io.flowmason.v1.Pipeline`), tagged with their group, version and kind.
fn kind_schemas(group: &str, version: &str) -> serde_json::Value {
    let mut schemas = serde_json::Map::new();
    if group != "flowmason.io" || version != "v1" {
        return serde_json::Value::Object(schemas);
    }
    for (kind, schema) in [
        ("Pipeline", unknown_fields::pipeline_schema()),
        ("PipelineRun", unknown_fields::pipelinerun_schema()),
    ] {
        let mut schema = schema.clone();
        if let Some(props) = schema
            .get_mut("properties")
            .and_then(serde_json::Value::as_object_mut)
        {
            props.insert("apiVersion".into(), json!({
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation of an object: flowmason.io/v1.",
            }));
            props.insert(
                "kind".into(),
                json!({"type": "string", "description": format!("Kind is the REST resource this object represents: {kind}.")}),
            );
            props.insert("metadata".into(), json!({
                "type": "object",
                "description": "Standard object's metadata (name, namespace, labels, annotations, ...).",
            }));
        }
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": group, "version": version, "kind": kind}]);
        schemas.insert(format!("io.flowmason.{version}.{kind}"), schema);
    }
    serde_json::Value::Object(schemas)
}

/// `/openapi/v3/<api/v1 | apis/group/version>`.
pub async fn openapi_v3_group(
    State(state): State<Arc<ApiState>>,
    Path(path): Path<String>,
) -> Response {
    let parts: Vec<&str> = path.split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return not_found(),
    };
    if group.is_empty() && version != "v1"
        || !group.is_empty()
            && !state
                .registry
                .groups()
                .get(&group)
                .is_some_and(|vs| vs.contains(&version))
    {
        return not_found();
    }
    json_response(StatusCode::OK, &gv_document(&state, &group, &version))
}

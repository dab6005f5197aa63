//! Object semantics shared by create, update and patch: what the server owns in `metadata` (uid,
//! creationTimestamp, generation, resourceVersion, deletionTimestamp), the `status` subresource split,
//! the generation rule (bumped when anything but metadata — and status, for kinds with a status
//! subresource — changes), name rules, `generateName`, Secret `stringData`, and typed validation of our
//! own kinds with the same checks as `fm validate`.

use std::sync::LazyLock;

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Map, Value, json};

use super::error::{ApiError, Cause};
use super::metadata;
use super::registry::{ResourceType, validate_crd};
use crate::model::{self, Pipeline, PipelineRun};

/// Metadata fields only the server sets; whatever a client sends there is replaced.
const SERVER_OWNED: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "managedFields",
    "selfLink",
];

static COMPONENTS: LazyLock<flowmason_actors::component::Registry> =
    LazyLock::new(crate::components::builtin_registry);

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(&rt.kind, &rt.group, name, causes)
}

fn cause(field: &str, message: impl Into<String>) -> Cause {
    Cause {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks the body is an object of this resource's apiVersion/kind (filling them in when absent) and
/// returns its metadata map.
fn check_type<'a>(
    rt: &ResourceType,
    body: &'a mut Value,
) -> Result<&'a mut Map<String, Value>, ApiError> {
    let found = match body {
        Value::Object(_) => "",
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "the request body must be a JSON object ({} {}), got {found}",
            rt.api_version(),
            rt.kind,
        )));
    };
    let expected = rt.api_version();
    match map.get("apiVersion") {
        None | Some(Value::Null) => {
            map.insert("apiVersion".into(), json!(expected));
        }
        Some(Value::String(v)) if *v == expected => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({}) does not match the expected API version ({expected})",
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string)
            )));
        }
    }
    match map.get("kind") {
        None | Some(Value::Null) => {
            map.insert("kind".into(), json!(rt.kind));
        }
        Some(Value::String(k)) if *k == rt.kind => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({}) does not match the expected kind ({}) of {}",
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
                rt.kind,
                rt.plural
            )));
        }
    }
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".to_string()))
}

/// The namespace of a body must be empty or the URL's.
fn check_namespace(
    rt: &ResourceType,
    meta: &mut Map<String, Value>,
    url_ns: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(())
        }
        Some(ns) if ns == url_ns => Ok(()),
        Some(ns) => Err(ApiError::BadRequest(format!(
            "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({url_ns})"
        ))),
    }
}

/// DNS-1123 subdomain (most kinds) or label (namespaces) rules.
fn name_problem(rt: &ResourceType, name: &str) -> Option<String> {
    let label = rt.plural == "namespaces";
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label));
    let ends_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > max || !ok_chars || !ends_ok {
        Some(format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters{}, and must start and end with an alphanumeric character (at most {max} characters)",
            if label { "label" } else { "subdomain" },
            if label { " or '-'" } else { ", '-' or '.'" }
        ))
    } else {
        None
    }
}

/// Five characters of the alphabet the real API server uses for `generateName` suffixes.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Turns a create request body into the object to store (not yet carrying a resourceVersion).
pub fn prepare_create(rt: &ResourceType, url_ns: &str, mut body: Value) -> Result<Value, ApiError> {
    let meta = check_type(rt, &mut body)?;
    check_namespace(rt, meta, url_ns)?;
    for field in SERVER_OWNED {
        meta.remove(*field);
    }
    let name = match meta.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let mut prefix = prefix.to_string();
                prefix.truncate(58);
                let name = format!("{prefix}{}", random_suffix());
                meta.insert("name".into(), json!(name));
                name
            }
            _ => {
                return Err(invalid(
                    rt,
                    "",
                    vec![cause(
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ));
            }
        },
    };
    if let Some(problem) = name_problem(rt, &name) {
        return Err(invalid(rt, &name, vec![cause("metadata.name", problem)]));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    if rt.status_subresource
        && let Some(map) = body.as_object_mut()
    {
        map.remove("status");
    }
    normalise_kind(rt, &mut body);
    validate(rt, &name, &body)?;
    Ok(body)
}

/// Decides the stored object of an update (PUT, or a patch already applied to `old`): `None` when
/// nothing would change. `status` is true for the `/status` subresource.
pub fn prepare_update(
    rt: &ResourceType,
    old: &Value,
    mut body: Value,
    status: bool,
) -> Result<Option<Value>, ApiError> {
    let name = old["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let url_ns = old["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let meta = check_type(rt, &mut body)?;
    check_namespace(rt, meta, &url_ns)?;
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("name".into(), json!(name));
        }
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    let old_rv = old["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str)
        && !rv.is_empty()
        && rv != old_rv
    {
        return Err(ApiError::conflict(
            &rt.plural,
            &rt.group,
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = meta.get("uid").and_then(Value::as_str)
        && !uid.is_empty()
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return Err(ApiError::conflict(
            &rt.plural,
            &rt.group,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    let mut new = if status {
        // The status subresource changes status only.
        let mut new = old.clone();
        match body.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        new
    } else {
        let meta = body["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("metadata must be an object".to_string()))?;
        for field in SERVER_OWNED {
            match old["metadata"].get(*field) {
                Some(v) => {
                    meta.insert(field.to_string(), v.clone());
                }
                None => {
                    meta.remove(*field);
                }
            }
        }
        meta.remove("managedFields");
        if rt.status_subresource
            && let Some(map) = body.as_object_mut()
        {
            match old.get("status") {
                Some(s) => {
                    map.insert("status".into(), s.clone());
                }
                None => {
                    map.remove("status");
                }
            }
        }
        body
    };
    normalise_kind(rt, &mut new);
    if without_meta(rt, &new) != without_meta(rt, old) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        new["metadata"]["generation"] = json!(generation);
    }
    if new == *old {
        return Ok(None);
    }
    if !status {
        validate(rt, &name, &new)?;
    }
    Ok(Some(new))
}

/// The part of an object whose change bumps `metadata.generation`.
fn without_meta(rt: &ResourceType, object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        if rt.status_subresource {
            map.remove("status");
        }
    }
    copy
}

/// Whether an object marked for deletion has no finalizers left (so it can go).
pub fn deletion_complete(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
        && object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
}

/// Server-side defaults of particular kinds.
fn normalise_kind(rt: &ResourceType, object: &mut Value) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => {
            if let Some(string_data) = object
                .as_object_mut()
                .and_then(|m| m.remove("stringData"))
                .and_then(|v| v.as_object().cloned())
            {
                let data = object["data"].as_object().cloned().unwrap_or_default();
                let mut data = data;
                for (k, v) in string_data {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(text)),
                    );
                }
                object["data"] = Value::Object(data);
            }
            if object["type"].is_null() {
                object["type"] = json!("Opaque");
            }
        }
        ("", "namespaces") if object["status"]["phase"].is_null() => {
            object["status"] = json!({"phase": "Active"});
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let names = object["spec"]["names"].clone();
            let now = now_rfc3339();
            let condition = |type_: &str, reason: &str, message: &str| json!({"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now});
            if object["status"]["acceptedNames"] != names {
                object["status"] = json!({
                    "acceptedNames": names,
                    "conditions": [
                        condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                        condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                    ],
                    "storedVersions": object["spec"]["versions"].as_array().map(|vs| {
                        vs.iter().filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()
                    }).unwrap_or_default(),
                });
            }
        }
        _ => {}
    }
}

/// Typed validation: labels and annotations of every object as kube-apiserver checks them; our kinds
/// with `fm validate`'s checks; CRDs so that they can be served; Secret data must be base64;
/// ConfigMap data must be strings.
fn validate(rt: &ResourceType, name: &str, object: &Value) -> Result<(), ApiError> {
    let mut causes = metadata::metadata_causes(object)?;
    causes.extend(match (rt.group.as_str(), rt.kind.as_str()) {
        ("flowmason.io", "Pipeline") => {
            match serde_path_to_error::deserialize::<_, Pipeline>(object) {
                Ok(p) => model::validate(&p.spec, &|c| COMPONENTS.contains(c))
                    .into_iter()
                    .map(|e| cause(&format!("spec.{}", e.field), e.message))
                    .collect(),
                Err(e) => vec![type_cause(&e)],
            }
        }
        ("flowmason.io", "PipelineRun") => {
            match serde_path_to_error::deserialize::<_, PipelineRun>(object) {
                Ok(r) => model::validate_run(&r.spec)
                    .into_iter()
                    .map(|e| cause(&format!("spec.{}", e.field), e.message))
                    .collect(),
                Err(e) => vec![type_cause(&e)],
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => validate_crd(object),
        ("", "ConfigMap") => metadata::configmap_causes(object)?,
        ("", "Secret") => object["data"]
            .as_object()
            .map(|data| {
                data.iter()
                    .filter(|(_, v)| {
                        v.as_str().is_none_or(|s| {
                            base64::engine::general_purpose::STANDARD.decode(s).is_err()
                        })
                    })
                    .map(|(k, _)| {
                        cause(
                            &format!("data[{k}]"),
                            "Invalid value: must be base64 encoded",
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain(metadata::secret_key_causes(object))
            .collect(),
        _ => Vec::new(),
    });
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(rt, name, causes))
    }
}

fn type_cause(e: &serde_path_to_error::Error<serde_json::Error>) -> Cause {
    let path = e.path().to_string();
    cause(
        if path == "." { "<root>" } else { path.as_str() },
        format!("Invalid value: {}", e.inner()),
    )
}

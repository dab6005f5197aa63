//! Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902, via the `json-patch` crate), and
//! strategic merge patch, which we treat as a merge patch whose lists replace the old ones. kubectl sends
//! strategic merge patches for built-in kinds (ConfigMap, Secret, ...); the directives it may add
//! (`$patch: replace|delete`, `$retainKeys`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`)
//! are honoured or dropped so that they never end up stored. Server-side apply is answered 415, so
//! kubectl falls back to client-side apply.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch format named by a request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
}

impl PatchKind {
    /// Reads the Content-Type (parameters ignored); `custom` resources do not take strategic merge.
    pub fn from_content_type(content_type: &str, custom: bool) -> Result<Self, ApiError> {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" if !custom => Ok(PatchKind::Strategic),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json{} (got {other:?})",
                if custom {
                    ""
                } else {
                    ", application/strategic-merge-patch+json"
                }
            ))),
        }
    }
}

/// Applies `patch` (raw body) to `doc`.
pub fn apply(kind: PatchKind, doc: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge | PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| ApiError::BadRequest(format!("patch body is not valid JSON: {e}")))?;
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            if kind == PatchKind::Merge {
                json_patch::merge(doc, &patch);
            } else {
                strategic_merge(doc, &patch);
            }
            Ok(())
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| {
                ApiError::BadRequest(format!("patch body is not a JSON patch (RFC 6902): {e}"))
            })?;
            json_patch::patch(doc, &ops).map_err(|e| ApiError::Invalid {
                message: format!("the JSON patch could not be applied: {e}"),
                kind: String::new(),
                group: String::new(),
                name: String::new(),
                causes: Vec::new(),
            })
        }
    }
}

/// Merge-patch semantics plus the strategic-merge directives (lists always replace).
fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("delete") => {
            *doc = Value::Null;
            return;
        }
        Some("replace") => {
            let mut clean = patch_map.clone();
            clean.remove("$patch");
            *doc = Value::Object(strip_directives(clean));
            return;
        }
        _ => {}
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(target) = doc.as_object_mut() else {
        return;
    };
    if let Some(keep) = patch_map.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()) || patch_map.contains_key(k));
    }
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(existing), Some(remove)) = (
                target.get_mut(list).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                existing.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
        } else if value.is_object() {
            let entry = target.entry(key.clone()).or_insert(Value::Null);
            strategic_merge(entry, value);
            if entry.is_null() {
                target.remove(key);
            }
        } else {
            target.insert(key.clone(), strip_value(value.clone()));
        }
    }
}

fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip_value(v)))
        .collect()
}

fn strip_value(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_value).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_replaces_lists_and_drops_directives() {
        let mut doc = json!({"data": {"a": "1", "b": "2"}, "metadata": {"finalizers": ["x", "y"]}});
        let patch = json!({
            "data": {"a": null, "c": "3"},
            "metadata": {"$setElementOrder/finalizers": ["y"], "finalizers": ["y"]}
        });
        apply(PatchKind::Strategic, &mut doc, patch.to_string().as_bytes()).expect("applies");
        assert_eq!(
            doc,
            json!({"data": {"b": "2", "c": "3"}, "metadata": {"finalizers": ["y"]}})
        );
    }

    #[test]
    fn json_patch_and_media_types() {
        let mut doc = json!({"spec": {"n": 1}});
        let ops = json!([{"op": "replace", "path": "/spec/n", "value": 2}]);
        apply(PatchKind::Json, &mut doc, ops.to_string().as_bytes()).expect("applies");
        assert_eq!(doc["spec"]["n"], 2);
        assert!(PatchKind::from_content_type("application/apply-patch+yaml", false).is_err());
        assert!(
            PatchKind::from_content_type("application/strategic-merge-patch+json", true).is_err()
        );
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8", true)
                .expect("merge"),
            PatchKind::Merge
        );
    }
}

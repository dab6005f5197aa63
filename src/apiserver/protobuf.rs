//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), which
//! kubectl sends for built-in kinds: `kubectl create configmap|secret|namespace` post protobuf and
//! nothing else. The envelope is the magic `k8s\0` and a `runtime.Unknown` whose `raw` bytes are the
//! object; the core/v1 kinds this server stores are decoded into the same JSON a JSON client sends,
//! and every later step (validation, storage, answers) stays JSON. Other kinds are answered 415 with
//! the kind named, so that the client can retry in JSON.
//!
//! The message definitions follow `k8s.io/api/core/v1/generated.proto` and
//! `k8s.io/apimachinery/pkg/runtime/generated.proto` (field numbers are the wire format); fields a
//! client cannot set on create (uid, resourceVersion's meaning aside, timestamps, managedFields,
//! status) are not read.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// The media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct OwnerReference {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    uid: Option<String>,
    #[prost(string, optional, tag = "5")]
    api_version: Option<String>,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    block_owner_deletion: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<NamespaceSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct NamespaceSpec {
    #[prost(string, repeated, tag = "1")]
    finalizers: Vec<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(format!(
        "the protobuf request body cannot be read: {message}"
    ))
}

/// The JSON object a protobuf request body encodes.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the magic \"k8s\\0\"".into()))?;
    let unknown = Unknown::decode(envelope).map_err(|e| bad(format!("envelope: {e}")))?;
    if let Some(encoding) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "protobuf bodies with contentEncoding {encoding:?} are not supported; send JSON"
        )));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let raw = raw.as_slice();
    let decoded = |what: &str, e: prost::DecodeError| bad(format!("{what}: {e}"));
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => {
            let cm = ConfigMap::decode(raw).map_err(|e| decoded("ConfigMap", e))?;
            let mut object = with_meta(cm.metadata);
            if !cm.data.is_empty() {
                object.insert("data".into(), json!(cm.data));
            }
            if !cm.binary_data.is_empty() {
                object.insert("binaryData".into(), base64_map(&cm.binary_data));
            }
            if let Some(immutable) = cm.immutable {
                object.insert("immutable".into(), json!(immutable));
            }
            object
        }
        ("v1", "Secret") => {
            let secret = Secret::decode(raw).map_err(|e| decoded("Secret", e))?;
            let mut object = with_meta(secret.metadata);
            if !secret.data.is_empty() {
                object.insert("data".into(), base64_map(&secret.data));
            }
            if !secret.string_data.is_empty() {
                object.insert("stringData".into(), json!(secret.string_data));
            }
            if let Some(type_) = secret.type_.filter(|t| !t.is_empty()) {
                object.insert("type".into(), json!(type_));
            }
            if let Some(immutable) = secret.immutable {
                object.insert("immutable".into(), json!(immutable));
            }
            object
        }
        ("v1", "Namespace") => {
            let ns = Namespace::decode(raw).map_err(|e| decoded("Namespace", e))?;
            let mut object = with_meta(ns.metadata);
            let finalizers = ns.spec.map(|s| s.finalizers).unwrap_or_default();
            if !finalizers.is_empty() {
                object.insert("spec".into(), json!({ "finalizers": finalizers }));
            }
            object
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "protobuf bodies are read for v1 ConfigMap, Secret and Namespace only, not {api_version:?} {kind:?}; send JSON"
            )));
        }
    };
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

fn base64_map(map: &BTreeMap<String, Vec<u8>>) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), json!(engine.encode(v))))
            .collect(),
    )
}

/// An object holding the metadata a client may set, empty fields left out as JSON clients leave them.
fn with_meta(meta: Option<ObjectMeta>) -> Map<String, Value> {
    let meta = meta.unwrap_or_default();
    let mut out = Map::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(key.into(), json!(value));
        }
    };
    put("name", meta.name);
    put("generateName", meta.generate_name);
    put("namespace", meta.namespace);
    put("resourceVersion", meta.resource_version);
    if !meta.labels.is_empty() {
        out.insert("labels".into(), json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        out.insert("annotations".into(), json!(meta.annotations));
    }
    if !meta.owner_references.is_empty() {
        let refs: Vec<Value> = meta
            .owner_references
            .into_iter()
            .map(|r| {
                let mut owner = json!({
                    "apiVersion": r.api_version.unwrap_or_default(),
                    "kind": r.kind.unwrap_or_default(),
                    "name": r.name.unwrap_or_default(),
                    "uid": r.uid.unwrap_or_default(),
                });
                for (key, flag) in [
                    ("controller", r.controller),
                    ("blockOwnerDeletion", r.block_owner_deletion),
                ] {
                    if let Some(flag) = flag {
                        owner[key] = json!(flag);
                    }
                }
                owner
            })
            .collect();
        out.insert("ownerReferences".into(), Value::Array(refs));
    }
    if !meta.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(meta.finalizers));
    }
    let mut object = Map::new();
    object.insert("metadata".into(), Value::Object(out));
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies kubectl 1.32 sent for `kubectl create configmap cm1 --from-literal=a=b
    /// --from-literal=c=d`, `kubectl create secret generic s1 --from-literal=api-key=sekret` and
    /// `kubectl create namespace team`.
    const CONFIGMAP: &str = "6b3873000a0f0a0276311209436f6e6669674d617012250a130a03636d3112001a0022002a0032003800420012060a016112016212060a01631201641a002200";
    const SECRET: &str = "6b3873000a0c0a027631120653656372657412290a120a02733112001a0022002a0032003800420012110a076170692d6b6579120673656b7265741a001a002200";
    const NAMESPACE: &str = "6b3873000a0f0a02763112094e616d657370616365121c0a140a047465616d12001a0022002a0032003800420012001a020a001a002200";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn kubectl_create_configmap_decodes_to_its_json() {
        assert_eq!(
            decode(&bytes(CONFIGMAP)).expect("decoded"),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm1"},
                "data": {"a": "b", "c": "d"},
            })
        );
    }

    #[test]
    fn kubectl_create_secret_decodes_with_base64_data() {
        assert_eq!(
            decode(&bytes(SECRET)).expect("decoded"),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s1"},
                "data": {"api-key": "c2VrcmV0"},
            })
        );
    }

    #[test]
    fn kubectl_create_namespace_decodes_to_its_json() {
        assert_eq!(
            decode(&bytes(NAMESPACE)).expect("decoded"),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
        );
    }

    #[test]
    fn metadata_labels_owner_references_and_binary_data_survive() {
        let cm = ConfigMap {
            metadata: Some(ObjectMeta {
                generate_name: Some("cm-".into()),
                namespace: Some("team".into()),
                labels: BTreeMap::from([("app".into(), "fm".into())]),
                owner_references: vec![OwnerReference {
                    kind: Some("Pipeline".into()),
                    name: Some("p".into()),
                    uid: Some("u-1".into()),
                    api_version: Some("flowmason.io/v1".into()),
                    controller: Some(true),
                    block_owner_deletion: None,
                }],
                ..ObjectMeta::default()
            }),
            binary_data: BTreeMap::from([("blob".into(), vec![0, 1, 2])]),
            ..ConfigMap::default()
        };
        let envelope = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
            }),
            raw: Some(cm.encode_to_vec()),
            content_encoding: None,
        };
        let body = [MAGIC, &envelope.encode_to_vec()].concat();
        let object = decode(&body).expect("decoded");
        assert_eq!(object["metadata"]["generateName"], json!("cm-"));
        assert_eq!(object["metadata"]["namespace"], json!("team"));
        assert_eq!(object["metadata"]["labels"], json!({"app": "fm"}));
        assert_eq!(
            object["metadata"]["ownerReferences"][0],
            json!({"apiVersion": "flowmason.io/v1", "kind": "Pipeline", "name": "p", "uid": "u-1",
                   "controller": true})
        );
        assert_eq!(object["binaryData"], json!({"blob": "AAEC"}));
    }

    #[test]
    fn other_kinds_and_broken_bodies_are_refused_with_the_reason() {
        let deployment = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
            }),
            raw: Some(Vec::new()),
            content_encoding: None,
        };
        let body = [MAGIC, &deployment.encode_to_vec()].concat();
        match decode(&body) {
            Err(ApiError::UnsupportedMediaType(m)) => assert!(m.contains("Deployment"), "{m}"),
            other => panic!("expected 415, got {other:?}"),
        }
        match decode(b"{\"kind\": \"ConfigMap\"}") {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("magic"), "{m}"),
            other => panic!("expected 400, got {other:?}"),
        }
        let mut truncated = bytes(CONFIGMAP);
        truncated.truncate(30);
        assert!(matches!(decode(&truncated), Err(ApiError::BadRequest(_))));
    }
}

//! Unknown fields: names in a document that the `Pipeline`/`PipelineRun` schema does not declare.
//!
//! serde ignores such fields, so a typo (`dependOn`, `confg`, `shedule`) would silently lose its
//! meaning. The generated CRD schema (with the snake_case aliases declared, see [`super::crd_yaml`]) is
//! the one source of truth for the allowed names at each position; this module walks a document against
//! it, reports every undeclared name with its path (as kube-apiserver names it:
//! `spec.stages[0].dependOn`) and the closest allowed name, and can prune them as kube-apiserver prunes
//! unknown fields of custom resources.

use std::fmt;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::crd::FIELD_ALIASES;
use super::crd_yaml::{pipeline_crd, pipelinerun_crd};

/// One undeclared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Where it is, e.g. `spec.stages[0].dependOn` (or `stages[0].dependOn` in a bare spec).
    pub path: String,
    /// The closest allowed name at that position, when one is close enough to be a likely typo.
    pub suggestion: Option<String>,
}

impl UnknownField {
    /// The problem without the path, for reports that put the path first (`fm validate`):
    /// `unknown field; did you mean "dependsOn"?`.
    pub fn message(&self) -> String {
        match &self.suggestion {
            Some(s) => format!("unknown field; did you mean {s:?}?"),
            None => "unknown field".to_string(),
        }
    }
}

/// As kube-apiserver words it in warnings and strict decoding errors: `unknown field "spec.x"`.
impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown field {:?}", self.path)?;
        if let Some(s) = &self.suggestion {
            write!(f, ", did you mean {s:?}?")?;
        }
        Ok(())
    }
}

static PIPELINE_SCHEMA: LazyLock<Value> = LazyLock::new(|| root_schema(pipeline_crd()));
static PIPELINERUN_SCHEMA: LazyLock<Value> = LazyLock::new(|| root_schema(pipelinerun_crd()));

/// The `openAPIV3Schema` of the CRD's first (only) version.
fn root_schema(crd: Value) -> Value {
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .unwrap_or(Value::Null)
}

/// The `openAPIV3Schema` of `Pipeline`, as published in OpenAPI for `kubectl explain`.
pub fn pipeline_schema() -> &'static Value {
    &PIPELINE_SCHEMA
}

/// The `openAPIV3Schema` of `PipelineRun`.
pub fn pipelinerun_schema() -> &'static Value {
    &PIPELINERUN_SCHEMA
}

/// Fields every object has that the CRD schema leaves implicit; `metadata` is not ours to check.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// Unknown fields of a `Pipeline` resource (paths start with `spec.`).
pub fn pipeline_unknown_fields(doc: &Value) -> Vec<UnknownField> {
    let mut doc = doc.clone();
    prune_resource(&PIPELINE_SCHEMA, &mut doc)
}

/// Unknown fields of a bare `PipelineSpec` (paths relative to the spec: `stages[0].dependOn`).
pub fn pipeline_spec_unknown_fields(doc: &Value) -> Vec<UnknownField> {
    let mut doc = doc.clone();
    let mut found = Vec::new();
    if let Some(spec) = PIPELINE_SCHEMA.pointer("/properties/spec") {
        prune(spec, &mut doc, "", &mut found);
    }
    found
}

/// Removes the unknown fields of a `Pipeline` resource and returns them.
pub fn prune_pipeline(doc: &mut Value) -> Vec<UnknownField> {
    prune_resource(&PIPELINE_SCHEMA, doc)
}

/// Removes the unknown fields of a `PipelineRun` resource and returns them.
pub fn prune_pipelinerun(doc: &mut Value) -> Vec<UnknownField> {
    prune_resource(&PIPELINERUN_SCHEMA, doc)
}

fn prune_resource(schema: &Value, doc: &mut Value) -> Vec<UnknownField> {
    let mut found = Vec::new();
    let Some(map) = doc.as_object_mut() else {
        return found;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let allowed: Vec<&str> = OBJECT_FIELDS
        .iter()
        .copied()
        .chain(props.into_iter().flat_map(|p| p.keys().map(String::as_str)))
        .collect();
    prune_map(map, "", &allowed, &mut found, |key, value, path, found| {
        if let Some(s) = props.and_then(|p| p.get(key)) {
            prune(s, value, path, found);
        }
    });
    found
}

/// Walks `value` against `schema`, removing undeclared fields into `found`; `path` names `value`.
fn prune(schema: &Value, value: &mut Value, path: &str, found: &mut Vec<UnknownField>) {
    match value {
        Value::Object(map) => {
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            match (props, additional) {
                (Some(props), _) if !preserve => {
                    let allowed: Vec<&str> = props.keys().map(String::as_str).collect();
                    prune_map(map, path, &allowed, found, |key, value, path, found| {
                        if let Some(s) = props.get(key) {
                            prune(s, value, path, found);
                        }
                    });
                }
                (props, additional) => {
                    for (key, value) in map.iter_mut() {
                        let child = props
                            .and_then(|p| p.get(key))
                            .or(additional.filter(|a| a.is_object()));
                        if let Some(child) = child {
                            prune(child, value, &join(path, key), found);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// Removes the keys of `map` not in `allowed` (recording each) and descends into the others.
fn prune_map(
    map: &mut Map<String, Value>,
    path: &str,
    allowed: &[&str],
    found: &mut Vec<UnknownField>,
    mut descend: impl FnMut(&str, &mut Value, &str, &mut Vec<UnknownField>),
) {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        map.remove(&key);
        found.push(UnknownField {
            path: join(path, &key),
            suggestion: closest(&key, allowed).map(str::to_string),
        });
    }
    for (key, value) in map.iter_mut() {
        descend(key, value, &join(path, key), found);
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The allowed name nearest to `name` by edit distance (ignoring case), when at most about a third
/// of it differs; on a tie the canonical camelCase name wins over an alias.
fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    allowed
        .iter()
        .map(|candidate| {
            let distance = strsim::damerau_levenshtein(&lower, &candidate.to_lowercase());
            let alias = FIELD_ALIASES.iter().any(|(_, a)| a == candidate);
            (distance, alias, *candidate)
        })
        .filter(|(distance, _, _)| *distance <= limit)
        .min()
        .map(|(_, _, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(found: &[UnknownField]) -> Vec<String> {
        found.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn typos_in_stages_and_spec_are_named_with_a_suggestion() {
        let doc = json!({
            "apiVersion": "flowmason.io/v1", "kind": "Pipeline", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {
                "shedule": "0 * * * *",
                "stages": [
                    {"id": "a", "componentType": "noop", "confg": {"x": 1}},
                    {"id": "b", "componentType": "noop", "dependOn": ["a"], "zzzzzzzz": 1},
                ],
            },
        });
        assert_eq!(
            paths(&pipeline_unknown_fields(&doc)),
            vec![
                r#"unknown field "spec.shedule", did you mean "schedule"?"#,
                r#"unknown field "spec.stages[0].confg", did you mean "config"?"#,
                r#"unknown field "spec.stages[1].dependOn", did you mean "dependsOn"?"#,
                r#"unknown field "spec.stages[1].zzzzzzzz""#,
            ]
        );
    }

    #[test]
    fn snake_case_aliases_and_free_form_values_are_known() {
        let doc = json!({
            "stages": [{"id": "a", "component_type": "noop", "depends_on": [],
                        "config": {"anything": {"goes": 1}}, "input_mapping": {"x": "y"}}],
            "sample_input": {"free": "form"},
            "output_stage_id": "a",
        });
        assert_eq!(pipeline_spec_unknown_fields(&doc), Vec::new());
    }

    #[test]
    fn case_only_differences_suggest_the_camel_case_name() {
        let doc = json!({"stages": [{"id": "a", "componenttype": "noop"}]});
        assert_eq!(
            paths(&pipeline_spec_unknown_fields(&doc)),
            vec![r#"unknown field "stages[0].componenttype", did you mean "componentType"?"#]
        );
    }

    #[test]
    fn the_examples_and_what_we_serialize_have_no_unknown_fields() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("examples") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let loaded = crate::model::load_pipeline_file(&path).expect("example loads");
            assert_eq!(loaded.unknown_fields, Vec::new(), "{}", path.display());
            let written =
                serde_json::to_value(crate::model::Pipeline::new(&loaded.name, loaded.spec))
                    .expect("serializes");
            assert_eq!(
                pipeline_unknown_fields(&written),
                Vec::new(),
                "{}",
                path.display()
            );
            checked += 1;
        }
        assert!(checked > 0, "no examples in {}", dir.display());
    }

    #[test]
    fn pruning_removes_exactly_the_unknown_fields() {
        let mut doc = json!({"apiVersion": "flowmason.io/v1", "kind": "PipelineRun", "metadata": {"name": "r"},
                             "spec": {"pipelineRef": "p", "inptus": {}}, "extra": 1});
        let found = prune_pipelinerun(&mut doc);
        assert_eq!(
            paths(&found),
            vec![
                r#"unknown field "extra""#,
                r#"unknown field "spec.inptus", did you mean "inputs"?"#
            ]
        );
        assert_eq!(
            doc,
            json!({"apiVersion": "flowmason.io/v1", "kind": "PipelineRun", "metadata": {"name": "r"},
                   "spec": {"pipelineRef": "p"}})
        );
    }
}

//! The CustomResourceDefinitions as YAML, generated from the Rust types and checked in under
//! `deploy/crds/` (a test fails when they drift; `FM_UPDATE_CRDS=1 cargo test --test crds` rewrites them).
//!
//! The generated schema gets one post-processing step: every snake_case alias of [`FIELD_ALIASES`] is
//! declared as a property next to its camelCase name, with the same schema. A real API server prunes
//! undeclared fields before we see them, which would silently drop `depends_on` and friends.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use super::crd::{FIELD_ALIASES, Pipeline, PipelineRun};

/// Header of the generated files.
const HEADER: &str = "# Generated from src/model/crd.rs; do not edit.\n# Regenerate with: FM_UPDATE_CRDS=1 cargo test --test crds\n";

/// The `Pipeline` CRD (with alias properties) as a JSON value, e.g. for the embedded API server.
pub fn pipeline_crd() -> Value {
    with_aliases(&Pipeline::crd())
}

/// The `PipelineRun` CRD (with alias properties) as a JSON value.
pub fn pipelinerun_crd() -> Value {
    with_aliases(&PipelineRun::crd())
}

/// `deploy/crds/pipeline.yaml`.
pub fn pipeline_crd_yaml() -> String {
    to_yaml(&pipeline_crd())
}

/// `deploy/crds/pipelinerun.yaml`.
pub fn pipelinerun_crd_yaml() -> String {
    to_yaml(&pipelinerun_crd())
}

fn to_yaml(crd: &Value) -> String {
    // Serializing a JSON value cannot fail: it has string keys and no non-finite floats.
    let body =
        serde_saphyr::to_string(crd).unwrap_or_else(|e| format!("# serialization failed: {e}\n"));
    format!("{HEADER}{body}")
}

/// The CRD as JSON with alias properties added under every version's `spec` schema.
fn with_aliases(crd: &CustomResourceDefinition) -> Value {
    let mut value = serde_json::to_value(crd).unwrap_or(Value::Null);
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(spec) = version.pointer_mut("/schema/openAPIV3Schema/properties/spec") {
                add_alias_properties(spec);
            }
        }
    }
    value
}

/// Recursively declares each alias next to its camelCase property.
fn add_alias_properties(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
        for prop in props.values_mut() {
            add_alias_properties(prop);
        }
        for (camel, alias) in FIELD_ALIASES {
            if let Some(s) = props.get(*camel).cloned()
                && !props.contains_key(*alias)
            {
                props.insert((*alias).to_string(), s);
            }
        }
    }
    if let Some(items) = obj.get_mut("items") {
        add_alias_properties(items);
    }
    if let Some(additional) = obj.get_mut("additionalProperties") {
        add_alias_properties(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_declared_in_the_schema() {
        let crd = pipeline_crd();
        let spec = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
            .expect("spec properties");
        for key in [
            "outputStageId",
            "output_stage_id",
            "sampleInput",
            "sample_input",
            "timeZone",
            "time_zone",
        ] {
            assert!(spec.get(key).is_some(), "missing {key}");
        }
        let stage = spec
            .pointer("/stages/items/properties")
            .expect("stage properties");
        for key in [
            "componentType",
            "component_type",
            "component",
            "dependsOn",
            "depends_on",
            "input_mapping",
        ] {
            assert!(stage.get(key).is_some(), "missing {key}");
        }
        let run = pipelinerun_crd();
        let run_spec = run
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
            .expect("run spec");
        assert!(run_spec.get("pipeline_ref").is_some());
        assert!(
            run.pointer("/spec/versions/0/subresources/status")
                .is_some()
        );
    }

    #[test]
    fn yaml_has_header_and_kind() {
        let yaml = pipeline_crd_yaml();
        assert!(yaml.starts_with(HEADER));
        assert!(yaml.contains("kind: CustomResourceDefinition"));
        assert!(yaml.contains("pipelines.flowmason.io"));
    }
}

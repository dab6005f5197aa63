//! The CRD YAML under `deploy/crds/` is generated from the Rust types (`flowmason::model::crd`) and
//! checked in. These tests fail when the files drift from the types, and check that every schema is
//! structural, as a real API server requires.
//!
//! Regenerate with: `FM_UPDATE_CRDS=1 cargo test --test crds`

use std::path::PathBuf;

use flowmason::model::crd_yaml::{
    pipeline_crd, pipeline_crd_yaml, pipelinerun_crd, pipelinerun_crd_yaml,
};
use serde_json::Value;

fn crd_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("crds")
        .join(file)
}

/// Compares a checked-in file with the generated text, or rewrites it when `FM_UPDATE_CRDS` is set.
fn check_or_update(file: &str, generated: &str) {
    let path = crd_path(file);
    if std::env::var_os("FM_UPDATE_CRDS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(&path, generated)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let line = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || current.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is out of date with the Rust types in src/model/crd.rs (first difference at line {line}).\n\
             Regenerate it with: FM_UPDATE_CRDS=1 cargo test --test crds",
            path.display()
        );
    }
}

#[test]
fn pipeline_crd_yaml_is_up_to_date() {
    check_or_update("pipeline.yaml", &pipeline_crd_yaml());
}

#[test]
fn pipelinerun_crd_yaml_is_up_to_date() {
    check_or_update("pipelinerun.yaml", &pipelinerun_crd_yaml());
}

/// Collects schema locations that break the structural-schema rules we can check locally: a
/// non-empty `type` on every node unless it is int-or-string or preserves unknown fields, and no
/// `anyOf`/`oneOf`/`allOf`/`$ref` (which our types must never produce).
fn structural_problems(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        out.push(format!("{at}: schema is not an object"));
        return;
    };
    let typed = obj
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed && !int_or_string && !preserve {
        out.push(format!(
            "{at}: no type (and neither int-or-string nor preserve-unknown-fields)"
        ));
    }
    for key in ["anyOf", "oneOf", "allOf", "$ref", "not"] {
        if obj.contains_key(key) {
            out.push(format!("{at}: uses {key}"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            structural_problems(prop, &format!("{at}.{name}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{at}[]"), out);
    }
    if let Some(additional) = obj.get("additionalProperties")
        && additional.is_object()
    {
        structural_problems(additional, &format!("{at}{{}}"), out);
    }
}

#[test]
fn schemas_are_structural() {
    for crd in [pipeline_crd(), pipelinerun_crd()] {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        assert!(!versions.is_empty(), "{name}: no versions");
        let mut problems = Vec::new();
        for version in &versions {
            let schema = version
                .pointer("/schema/openAPIV3Schema")
                .unwrap_or(&Value::Null);
            structural_problems(schema, &name, &mut problems);
            assert!(
                version.pointer("/subresources/status").is_some(),
                "{name}: no status subresource"
            );
        }
        assert!(
            problems.is_empty(),
            "non-structural schema nodes:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn printer_columns_are_declared() {
    let columns = |crd: &Value| -> Vec<String> {
        crd.pointer("/spec/versions/0/additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pipeline = columns(&pipeline_crd());
    assert!(
        pipeline.contains(&"Phase".to_string()) && pipeline.contains(&"Age".to_string()),
        "{pipeline:?}"
    );
    let run = columns(&pipelinerun_crd());
    for c in ["Pipeline", "Phase", "Duration"] {
        assert!(run.contains(&c.to_string()), "{run:?}");
    }
}

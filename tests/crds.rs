//! The CRD YAML under `deploy/crds/` (and its copy in the Helm chart) is generated from the Rust types
//! (`flowmason::model::crd`) and
//! checked in, and so is the one-file install bundle `deploy/operator.yaml` (the namespace, the CRDs and
//! the operator's manifests, for `kubectl apply -f .../operator.yaml`). These tests fail when the files
//! drift from their sources, check that every schema is structural, as a real API server requires, and
//! that the deploy files have what a cluster needs (probes, a headless governing Service, ...).
//!
//! Regenerate with: `FM_UPDATE_CRDS=1 cargo test --test crds`

use std::path::PathBuf;

use flowmason::model::crd_yaml::{
    pipeline_crd, pipeline_crd_yaml, pipelinerun_crd, pipelinerun_crd_yaml,
};
use serde_json::Value;

fn deploy_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// Compares a checked-in file under `deploy/` with the generated text, or rewrites it when
/// `FM_UPDATE_CRDS` is set.
fn check_or_update(file: &str, generated: &str) {
    let path = deploy_path(file);
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
            "{} is out of date with its sources (first difference at line {line}).\n\
             Regenerate it with: FM_UPDATE_CRDS=1 cargo test --test crds",
            path.display()
        );
    }
}

#[test]
fn pipeline_crd_yaml_is_up_to_date() {
    check_or_update("crds/pipeline.yaml", &pipeline_crd_yaml());
    check_or_update(
        "helm/flowmason-operator/crds/pipeline.yaml",
        &pipeline_crd_yaml(),
    );
}

#[test]
fn pipelinerun_crd_yaml_is_up_to_date() {
    check_or_update("crds/pipelinerun.yaml", &pipelinerun_crd_yaml());
    check_or_update(
        "helm/flowmason-operator/crds/pipelinerun.yaml",
        &pipelinerun_crd_yaml(),
    );
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
    for c in ["Pipeline", "Phase", "Reason", "Stages", "Duration"] {
        assert!(run.contains(&c.to_string()), "{run:?}");
    }
}

/// The sources of `deploy/operator.yaml`, in the order `kubectl apply` must create them. The
/// ServiceMonitor stays out: it needs the Prometheus Operator's CRDs, which a cluster may not have.
const BUNDLE_SOURCES: &[&str] = &[
    "operator/namespace.yaml",
    "crds/pipeline.yaml",
    "crds/pipelinerun.yaml",
    "operator/rbac.yaml",
    "operator/service.yaml",
    "operator/statefulset.yaml",
];

/// The install bundle: every source as a YAML document of its own, under a header naming them.
fn bundle() -> String {
    let mut text = String::from(
        "# FlowMason operator: namespace, CRDs, RBAC, Services and the StatefulSet in one file, for\n\
         #   kubectl apply -f deploy/operator.yaml\n\
         # Generated from deploy/operator/*.yaml and deploy/crds/*.yaml (ServiceMonitor aside) by\n\
         # tests/crds.rs; do not edit: change the sources and run FM_UPDATE_CRDS=1 cargo test --test crds\n",
    );
    for source in BUNDLE_SOURCES {
        // The CRDs from the types themselves, so that regenerating everything at once (the tests run in
        // parallel) never reads a CRD file being rewritten.
        let content = match *source {
            "crds/pipeline.yaml" => pipeline_crd_yaml(),
            "crds/pipelinerun.yaml" => pipelinerun_crd_yaml(),
            _ => std::fs::read_to_string(deploy_path(source))
                .unwrap_or_else(|e| panic!("reading deploy/{source}: {e}")),
        };
        text.push_str(&format!("---\n# Source: deploy/{source}\n"));
        text.push_str(content.trim_start_matches("---\n"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

#[test]
fn operator_bundle_is_up_to_date() {
    check_or_update("operator.yaml", &bundle());
}

fn bundle_documents() -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_path("operator.yaml")).expect("deploy/operator.yaml");
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .expect("deploy/operator.yaml parses")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn the_bundle_installs_everything_the_operator_needs_in_order() {
    let kinds: Vec<String> = bundle_documents()
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("Namespace"),
        "{kinds:?}"
    );
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "StatefulSet",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k == "ServiceMonitor"), "{kinds:?}");
}

#[test]
fn the_statefulset_has_probes_a_headless_service_and_a_cpu_limit_for_its_capacity() {
    let docs = bundle_documents();
    let set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("StatefulSet");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports: Vec<&str> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = container[probe]["httpGet"]["port"].as_str().unwrap_or("?");
        assert!(
            ports.contains(&port),
            "{probe} port {port} is not one of {ports:?}"
        );
    }
    let service_name = set["spec"]["serviceName"].as_str().expect("serviceName");
    let governing = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == service_name)
        .unwrap_or_else(|| panic!("no Service {service_name}"));
    assert_eq!(governing["spec"]["clusterIP"], "None", "{governing}");
    // Every capacity read from a limit reads one that is set.
    for var in container["env"].as_array().into_iter().flatten() {
        if let Some(resource) = var["valueFrom"]["resourceFieldRef"]["resource"].as_str()
            && let Some(limit) = resource.strip_prefix("limits.")
        {
            assert!(
                !container["resources"]["limits"][limit].is_null(),
                "{} reads {resource}, which is not set",
                var["name"]
            );
        }
    }
}

#[test]
fn the_helm_chart_names_cluster_objects_per_release_and_has_probes() {
    let chart = deploy_path("helm/flowmason-operator");
    let rbac = std::fs::read_to_string(chart.join("templates/rbac.yaml")).expect("rbac.yaml");
    let helpers = std::fs::read_to_string(chart.join("templates/_helpers.tpl")).expect("helpers");
    let docs: Vec<&str> = rbac.split("\n---\n").collect();
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        let doc = docs
            .iter()
            .find(|d| d.contains(&format!("\nkind: {kind}\n")))
            .unwrap_or_else(|| panic!("no {kind}"));
        assert!(
            doc.contains("name: {{ include \"flowmason-operator.clusterName\" . }}"),
            "{kind} is not named per release:\n{doc}"
        );
    }
    assert!(
        helpers.contains("{{ .Release.Namespace }}-{{ .Release.Name }}-flowmason-operator"),
        "{helpers}"
    );
    let statefulset =
        std::fs::read_to_string(chart.join("templates/statefulset.yaml")).expect("statefulset");
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "serviceName: flowmason-operator-headless",
    ] {
        assert!(
            statefulset.contains(needle),
            "chart StatefulSet lacks {needle}"
        );
    }
}

#[test]
fn the_docker_build_context_leaves_the_build_output_out() {
    let ignore =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/"] {
        assert!(
            patterns.contains(&needed),
            "{needed} missing from .dockerignore: {patterns:?}"
        );
    }
}

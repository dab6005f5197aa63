//! Loading a pipeline from a file or string (`fm run pipeline.yaml`, `fm k8s deploy pipeline.json`).
//!
//! Three documents are accepted, in YAML or JSON (told apart by content, not by extension): a `Pipeline`
//! resource (`apiVersion`/`kind`/`metadata`/`spec`), a bare `PipelineSpec` (named after the file), and
//! the original FlowMason `pipeline.json`. Errors name the file, and for a bad document the line and
//! column and the field path, so that a user can find the problem.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::crd::{Pipeline, PipelineSpec};
use super::flowmason_json::{FlowMasonPipeline, looks_like_flowmason};
use super::unknown_fields::{UnknownField, pipeline_spec_unknown_fields, pipeline_unknown_fields};

/// Which kind of document a pipeline was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A `flowmason.io/v1` `Pipeline` resource.
    Resource,
    /// A bare `PipelineSpec`.
    Spec,
    /// The original FlowMason `pipeline.json`.
    FlowMason,
}

/// A pipeline read from a document, in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedPipeline {
    /// `metadata.name`, the FlowMason `name`, or the file stem.
    pub name: String,
    /// `metadata.namespace` of a resource.
    pub namespace: Option<String>,
    pub spec: PipelineSpec,
    /// Example inputs (`sampleInput`), for runs started without inputs.
    pub sample_input: Option<Value>,
    pub format: SourceFormat,
    /// Fields the schema does not declare (ignored when loading): typos such as `dependOn`. Always
    /// empty for a FlowMason `pipeline.json`, which has no CRD schema.
    pub unknown_fields: Vec<UnknownField>,
    /// Annotations for the deployed Pipeline: a resource's own, or a FlowMason file's catalogue fields
    /// (`category`, `tags`, `difficulty`).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Why a pipeline document could not be loaded. Every variant names the file (`origin`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{origin}: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML/JSON.
    #[error("{origin}{}: {message}", position(*line, *column))]
    Syntax {
        origin: String,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// A field has the wrong type or shape.
    #[error("{origin}{}: {}{message}", position(*line, *column), field_prefix(path))]
    Field {
        origin: String,
        path: String,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// The document is valid but not a pipeline (another kind, a list, ...).
    #[error("{origin}: {message}")]
    NotAPipeline { origin: String, message: String },
}

fn position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn field_prefix(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// Reads and loads a pipeline file.
pub fn load_pipeline_file(path: &Path) -> Result<LoadedPipeline, LoadError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        origin: origin.clone(),
        source,
    })?;
    load_pipeline_str(&text, &origin)
}

/// Loads a pipeline from text; `origin` (a path or a label such as `configmap/ns/name`) names it in
/// errors, and its file stem is the name of a bare spec.
pub fn load_pipeline_str(text: &str, origin: &str) -> Result<LoadedPipeline, LoadError> {
    let json = is_json(text);
    let doc: Value = parse(text, origin, json).map_err(into_syntax)?;
    let Some(map) = doc.as_object() else {
        return Err(LoadError::NotAPipeline {
            origin: origin.to_string(),
            message: format!(
                "expected a Pipeline, a pipeline spec or a FlowMason pipeline.json object, got {}",
                kind_of(&doc)
            ),
        });
    };
    if map.contains_key("apiVersion") || map.contains_key("kind") {
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if kind != "Pipeline" || api_version != "flowmason.io/v1" {
            return Err(LoadError::NotAPipeline {
                origin: origin.to_string(),
                message: format!(
                    "expected apiVersion flowmason.io/v1, kind Pipeline; got apiVersion {api_version:?}, kind {kind:?}"
                ),
            });
        }
        let pipeline: Pipeline = parse(text, origin, json)?;
        let name = pipeline
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| stem(origin));
        return Ok(LoadedPipeline {
            name,
            namespace: pipeline.metadata.namespace.clone(),
            sample_input: pipeline.spec.sample_input.clone(),
            annotations: pipeline.metadata.annotations.clone().unwrap_or_default(),
            spec: pipeline.spec,
            format: SourceFormat::Resource,
            unknown_fields: pipeline_unknown_fields(&doc),
        });
    }
    if looks_like_flowmason(map) {
        if let Some(field) = spec_only_fields(map).first() {
            return Err(LoadError::NotAPipeline {
                origin: origin.to_string(),
                message: format!(
                    "{field}: a field of a pipeline spec, not of a FlowMason pipeline.json (this file is read as \
                     one because it has a top-level `name`); it would be ignored: drop `name` to write a bare \
                     spec (named after the file), or write a Pipeline resource with the name in metadata"
                ),
            });
        }
        let original: FlowMasonPipeline = parse(text, origin, json)?;
        let spec = original.to_spec();
        let name = if original.name.trim().is_empty() {
            stem(origin)
        } else {
            original.name.clone()
        };
        return Ok(LoadedPipeline {
            name,
            namespace: None,
            sample_input: spec.sample_input.clone(),
            spec,
            format: SourceFormat::FlowMason,
            unknown_fields: Vec::new(),
            annotations: original.annotations(),
        });
    }
    let spec: PipelineSpec = parse(text, origin, json)?;
    Ok(LoadedPipeline {
        name: stem(origin),
        namespace: None,
        sample_input: spec.sample_input.clone(),
        spec,
        format: SourceFormat::Spec,
        unknown_fields: pipeline_spec_unknown_fields(&doc),
        annotations: Default::default(),
    })
}

/// Top-level fields of `doc` that a pipeline spec declares and a FlowMason pipeline.json does not
/// (`env`, `schedule`, `parallelism`, ...): in a document read as pipeline.json they would be lost
/// without a word.
fn spec_only_fields(doc: &serde_json::Map<String, Value>) -> Vec<String> {
    let Some(spec) = super::unknown_fields::pipeline_schema()
        .pointer("/properties/spec/properties")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    doc.keys()
        .filter(|k| {
            spec.contains_key(k.as_str()) && !FlowMasonPipeline::FIELDS.contains(&k.as_str())
        })
        .cloned()
        .collect()
}

/// Any error while reading a document as a plain value is a syntax error, whatever path it was at.
fn into_syntax(err: LoadError) -> LoadError {
    match err {
        LoadError::Field {
            origin,
            line,
            column,
            message,
            ..
        } => LoadError::Syntax {
            origin,
            line,
            column,
            message,
        },
        other => other,
    }
}

/// JSON when the first non-blank character opens an object or array; YAML otherwise.
fn is_json(text: &str) -> bool {
    matches!(
        text.trim_start_matches('\u{feff}')
            .trim_start()
            .chars()
            .next(),
        Some('{' | '[')
    )
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "an empty document",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The file name without directories and extensions (`pipelines/main.pipeline.json` -> `main`).
fn stem(origin: &str) -> String {
    let file = Path::new(origin)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(origin);
    let base = file.split('.').next().unwrap_or(file);
    if base.is_empty() {
        "pipeline".to_string()
    } else {
        base.to_string()
    }
}

/// Deserializes the whole text as `T`, tracking the field path of a failure.
fn parse<T: DeserializeOwned>(text: &str, origin: &str, json: bool) -> Result<T, LoadError> {
    if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = (Some(inner.line() as u64), Some(inner.column() as u64));
            let message = strip_position(&inner.to_string());
            if inner.is_syntax() || inner.is_eof() {
                LoadError::Syntax {
                    origin: origin.to_string(),
                    line,
                    column,
                    message,
                }
            } else {
                LoadError::Field {
                    origin: origin.to_string(),
                    path,
                    line,
                    column,
                    message,
                }
            }
        })?;
        de.end().map_err(|e| LoadError::Syntax {
            origin: origin.to_string(),
            line: Some(e.line() as u64),
            column: Some(e.column() as u64),
            message: strip_position(&e.to_string()),
        })?;
        Ok(value)
    } else {
        let mut path = None;
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = Some(e.path().to_string());
                e.into_inner()
            })
        })
        .map_err(|e| {
            let location = e.location();
            let (line, column) = (location.map(|l| l.line()), location.map(|l| l.column()));
            let message = yaml_message(&e);
            match path.filter(|p| p != ".") {
                Some(path) => LoadError::Field {
                    origin: origin.to_string(),
                    path,
                    line,
                    column,
                    message,
                },
                None => LoadError::Syntax {
                    origin: origin.to_string(),
                    line,
                    column,
                    message,
                },
            }
        })
    }
}

/// serde_json appends " at line L column C", which our own prefix already says.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The first line of a serde-saphyr message (later lines are a source snippet), without the
/// `error: line L column C: ` prefix that our own prefix already says.
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, message)) => message,
        None => first,
    };
    strip_position(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::DurationSpec;
    use crate::model::policy::{ParallelismSpec, RetrySpec};
    use flowmason_actors::plan::DEFAULT_PARALLELISM;
    use serde_json::json;

    const RESOURCE_YAML: &str = r#"
apiVersion: flowmason.io/v1
kind: Pipeline
metadata:
  name: data-processor
  namespace: production
spec:
  stages:
    - id: fetch
      componentType: http_request
      config:
        url: https://api.example.com/data
    - id: process
      component_type: json_transform
      depends_on: [fetch]
  schedule: "0 * * * *"
  timeout: 90s
  retries: 3
  parallelism: true
  resources:
    requests:
      memory: "256Mi"
      cpu: "100m"
"#;

    #[test]
    fn loads_resource_yaml_with_both_spellings() {
        let loaded = load_pipeline_str(RESOURCE_YAML, "pipeline.yaml").expect("resource");
        assert_eq!(loaded.format, SourceFormat::Resource);
        assert_eq!(loaded.name, "data-processor");
        assert_eq!(loaded.namespace.as_deref(), Some("production"));
        let spec = &loaded.spec;
        assert_eq!(spec.stages[1].component_type, "json_transform");
        assert_eq!(spec.stages[1].depends_on, vec!["fetch".to_string()]);
        assert_eq!(spec.timeout, Some(DurationSpec::Text("90s".into())));
        assert_eq!(spec.retries, Some(RetrySpec::Count(3)));
        assert_eq!(spec.parallelism, Some(ParallelismSpec::Enabled(true)));
        let plan = crate::model::to_plan(spec).expect("plan");
        assert_eq!(plan.parallelism, DEFAULT_PARALLELISM);
        assert_eq!(plan.timeout_ms, Some(90_000));
    }

    #[test]
    fn loads_bare_spec_named_after_file() {
        let text = "stages:\n  - id: a\n    componentType: noop\ntimeout: 300\nparallelism: 2\n";
        let loaded = load_pipeline_str(text, "dir/my-flow.yaml").expect("spec");
        assert_eq!(loaded.format, SourceFormat::Spec);
        assert_eq!(loaded.name, "my-flow");
        assert_eq!(loaded.spec.timeout, Some(DurationSpec::Seconds(300)));
        assert_eq!(loaded.spec.parallelism, Some(ParallelismSpec::Count(2)));
    }

    #[test]
    fn loads_bare_spec_json_with_retry_object() {
        let text = r#"{"stages": [{"id": "a", "componentType": "noop"}],
                       "retries": {"limit": 2, "backoff": {"duration": "1s"}}, "sampleInput": {"q": 1}}"#;
        let loaded = load_pipeline_str(text, "spec.txt").expect("spec");
        assert_eq!(loaded.format, SourceFormat::Spec);
        assert_eq!(loaded.sample_input, Some(json!({"q": 1})));
        let policy = loaded
            .spec
            .retries
            .as_ref()
            .expect("retries")
            .to_policy()
            .expect("policy");
        assert_eq!((policy.limit, policy.initial_ms), (2, 1_000));
    }

    #[test]
    fn loads_flowmason_pipeline_json() {
        let text = r#"{
  "$schema": "https://flowmason.dev/schemas/pipeline.schema.json",
  "name": "data-etl-pipeline",
  "version": "1.0.0",
  "description": "Extract, transform, and load data",
  "input_schema": {"type": "object", "properties": {"source_url": {"type": "string"}}, "required": ["source_url"]},
  "stages": [
    {"id": "fetch", "component": "http_request", "config": {"url": "{{input.source_url}}", "method": "GET"}, "timeout_ms": 10000},
    {"id": "transform", "component_type": "json_transform", "depends_on": ["fetch"],
     "retry_config": {"max_retries": 1, "initial_delay_ms": 200, "max_delay_ms": 1000, "backoff_multiplier": 1.5},
     "config": {"data": "{{upstream.fetch.body}}"}}
  ],
  "output_stage_id": "transform",
  "sample_input": {"source_url": "https://api.example.com/data"}
}"#;
        let loaded = load_pipeline_str(text, "pipelines/main.pipeline.json").expect("flowmason");
        assert_eq!(loaded.format, SourceFormat::FlowMason);
        assert_eq!(loaded.name, "data-etl-pipeline");
        assert_eq!(
            loaded.sample_input,
            Some(json!({"source_url": "https://api.example.com/data"}))
        );
        let plan = crate::model::to_plan(&loaded.spec).expect("plan");
        assert_eq!(plan.stages[0].component, "http_request");
        assert_eq!(plan.stages[0].timeout_ms, Some(10_000));
        let retry = plan.stages[1].retry.as_ref().expect("retry");
        assert_eq!(
            (retry.limit, retry.initial_ms, retry.max_ms, retry.factor),
            (1, 200, 1_000, 1.5)
        );
        assert_eq!(plan.output_stage.as_deref(), Some("transform"));
        assert!(loaded.spec.input_schema.is_some());
    }

    #[test]
    fn yaml_field_error_names_file_line_and_path() {
        let text = "stages:\n  - id: a\n    componentType: noop\n    dependsOn: 5\n";
        let err = load_pipeline_str(text, "bad.yaml").expect_err("bad field");
        match &err {
            LoadError::Field {
                origin, path, line, ..
            } => {
                assert_eq!(origin, "bad.yaml");
                assert_eq!(path, "stages[0].dependsOn");
                assert_eq!(*line, Some(4));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().starts_with("bad.yaml:4:"), "{err}");
        assert!(err.to_string().contains(": stages[0].dependsOn: "), "{err}");
    }

    #[test]
    fn json_field_error_names_file_line_and_path() {
        let text =
            "{\n  \"stages\": [{\"id\": \"a\", \"componentType\": \"noop\", \"timeout\": true}]\n}";
        let err = load_pipeline_str(text, "bad.json").expect_err("bad field");
        match &err {
            LoadError::Field { path, line, .. } => {
                assert_eq!(path, "stages[0].timeout");
                assert_eq!(*line, Some(2));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().starts_with("bad.json:2:"), "{err}");
        assert!(err.to_string().contains("stages[0].timeout: "), "{err}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = load_pipeline_str("{\"stages\": [}", "x.json").expect_err("syntax");
        assert!(
            matches!(err, LoadError::Syntax { line: Some(1), .. }),
            "{err:?}"
        );
        let err = load_pipeline_str("stages:\n  - id: [a\n", "x.yaml").expect_err("syntax");
        assert!(
            matches!(err, LoadError::Syntax { line: Some(_), .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "x.yaml:2:9: unclosed bracket '['");
    }

    #[test]
    fn other_kinds_are_refused() {
        let text = "apiVersion: flowmason.io/v1\nkind: PipelineRun\nmetadata: {name: r}\nspec: {pipelineRef: p}\n";
        let err = load_pipeline_str(text, "run.yaml").expect_err("not a pipeline");
        assert_eq!(
            err.to_string(),
            "run.yaml: expected apiVersion flowmason.io/v1, kind Pipeline; got apiVersion \"flowmason.io/v1\", kind \"PipelineRun\""
        );
        let err = load_pipeline_str("- a\n- b\n", "list.yaml").expect_err("not a pipeline");
        assert_eq!(
            err.to_string(),
            "list.yaml: expected a Pipeline, a pipeline spec or a FlowMason pipeline.json object, got a list"
        );
    }

    #[test]
    fn spec_fields_in_a_document_read_as_flowmason_json_are_refused_not_dropped() {
        let text = "name: pg\nenv:\n  - {name: PGPASSWORD, valueFrom: {secretKeyRef: {name: s, key: k}}}\nstages:\n  - {id: a, componentType: noop}\n";
        let err = load_pipeline_str(text, "pg.yaml").unwrap_err().to_string();
        assert!(
            err.contains("env: a field of a pipeline spec, not of a FlowMason pipeline.json"),
            "{err}"
        );
        // FlowMason's own fields (and a pipeline.json without spec fields) still load.
        let text = r#"{"name": "p", "description": "d", "stages": [{"id": "a", "component_type": "noop"}]}"#;
        assert_eq!(
            load_pipeline_str(text, "p.json")
                .expect("pipeline.json")
                .name,
            "p"
        );
    }

    #[test]
    fn unknown_fields_are_reported_for_resources_and_bare_specs() {
        let loaded = load_pipeline_str(RESOURCE_YAML, "pipeline.yaml").expect("resource");
        assert_eq!(loaded.unknown_fields, Vec::new());
        let text = "apiVersion: flowmason.io/v1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n  stages:\n    - {id: a, componentType: noop, dependOn: [b]}\n";
        let loaded = load_pipeline_str(text, "p.yaml").expect("resource");
        let found: Vec<String> = loaded
            .unknown_fields
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![r#"unknown field "spec.stages[0].dependOn", did you mean "dependsOn"?"#]
        );
        let loaded = load_pipeline_str("shedule: x\nstages: []\n", "s.yaml").expect("spec");
        assert_eq!(loaded.unknown_fields[0].path, "shedule");
    }

    #[test]
    fn missing_file_names_it() {
        let err = load_pipeline_file(Path::new("/nonexistent/p.yaml")).expect_err("missing");
        assert!(
            err.to_string().starts_with("/nonexistent/p.yaml: "),
            "{err}"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::model::validate::validate;

        /// Arbitrary JSON values, with the keys a pipeline document uses more often than chance would.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::String),
                proptest::sample::select(
                    &["1s", "-1s", "99999999999h", "", "noop", "a", "{{input.x}}"][..]
                )
                .prop_map(Value::from),
            ];
            let keys = proptest::sample::select(
                &[
                    "apiVersion",
                    "kind",
                    "metadata",
                    "name",
                    "spec",
                    "stages",
                    "id",
                    "componentType",
                    "config",
                    "dependsOn",
                    "timeout",
                    "retry",
                    "sampleInput",
                    "inputSchema",
                    "x",
                    "",
                ][..],
            )
            .prop_map(String::from);
            leaf.prop_recursive(6, 64, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map(keys.clone(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn load_and_validate(text: &str) {
            if let Ok(loaded) = load_pipeline_str(text, "prop.yaml") {
                let _ = validate(&loaded.spec, &|component| component == "noop");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_strings_load_or_fail_naming_the_origin(text in any::<String>()) {
                if let Err(err) = load_pipeline_str(&text, "prop.yaml") {
                    prop_assert!(err.to_string().starts_with("prop.yaml"), "{}", err);
                }
                load_and_validate(&text);
            }

            #[test]
            fn arbitrary_bytes_in_a_file_load_or_fail_naming_the_file(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("p.yaml");
                std::fs::write(&path, &bytes).unwrap();
                if let Err(err) = load_pipeline_file(&path) {
                    prop_assert!(err.to_string().contains("p.yaml"), "{}", err);
                }
            }

            #[test]
            fn arbitrary_json_values_load_and_validate_without_panicking(value in json_value()) {
                load_and_validate(&value.to_string());
                let resource = json!({
                    "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
                    "metadata": {"name": "p"}, "spec": {"stages": [value]},
                });
                load_and_validate(&resource.to_string());
            }

            #[test]
            fn arbitrary_stage_graphs_validate_without_panicking(
                edges in proptest::collection::vec(
                    (0..8usize, proptest::collection::vec(0..10usize, 0..4)),
                    0..12,
                ),
            ) {
                // Duplicate ids, cycles, self-loops and unknown dependencies, in any combination.
                let stages: Vec<Value> = edges
                    .iter()
                    .map(|(id, deps)| json!({
                        "id": format!("s{id}"),
                        "componentType": "noop",
                        "dependsOn": deps.iter().map(|d| format!("s{d}")).collect::<Vec<_>>(),
                    }))
                    .collect();
                let resource = json!({
                    "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
                    "metadata": {"name": "p"}, "spec": {"stages": stages},
                });
                load_and_validate(&resource.to_string());
            }
        }
    }
}

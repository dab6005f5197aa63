//! The original FlowMason `pipeline.json` format (`flowmason_core.project.loader.PipelineFile`), so
//! that existing FlowMason pipelines run unchanged: read it and convert it into the canonical
//! `PipelineSpec`.
//!
//! Fields of the original that have no meaning for this engine (canvas `position`, `extends`,
//! `compositions`, ...) are accepted and ignored. A stage's `llm_settings` (provider, model,
//! temperature, max tokens, stop sequences) become its config fields of those names where the config
//! sets none, and `error_handling` with `on_error: retry` its retry policy (`max_retries` attempts
//! `retry_delay` ms apart); the studio's `category`, `tags` and `difficulty` are kept as annotations.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::crd::{PipelineSpec, StageSpec};
use super::duration::DurationSpec;
use super::policy::{BackoffSpec, RetryPolicySpec, RetrySpec};

/// A FlowMason `pipeline.json` document.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowMasonPipeline {
    /// Display name; becomes the Pipeline's name.
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub stages: Vec<FlowMasonStage>,
    #[serde(default, alias = "outputStageId")]
    pub output_stage_id: Option<String>,
    #[serde(default, alias = "inputSchema")]
    pub input_schema: Option<Map<String, Value>>,
    #[serde(default, alias = "outputSchema")]
    pub output_schema: Option<Map<String, Value>>,
    /// Example inputs; the studio's templates call them `example_input`.
    #[serde(default, alias = "sampleInput", alias = "example_input")]
    pub sample_input: Option<Value>,
    /// The studio's catalogue fields, kept as annotations.
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub difficulty: Option<String>,
}

impl FlowMasonPipeline {
    /// Every top-level name this format reads (with its aliases).
    pub const FIELDS: &'static [&'static str] = &[
        "name",
        "version",
        "description",
        "stages",
        "output_stage_id",
        "outputStageId",
        "input_schema",
        "inputSchema",
        "output_schema",
        "outputSchema",
        "sample_input",
        "sampleInput",
        "example_input",
        "category",
        "tags",
        "difficulty",
    ];
}

/// The annotation keys of the studio's catalogue fields.
pub const CATEGORY_ANNOTATION: &str = "flowmason.io/category";
pub const TAGS_ANNOTATION: &str = "flowmason.io/tags";
pub const DIFFICULTY_ANNOTATION: &str = "flowmason.io/difficulty";

/// A stage's `llm_settings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
}

/// A stage's `error_handling`: what the studio writes for a stage to try again.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorHandling {
    pub on_error: OnError,
    #[serde(default = "default_max_retries")]
    pub max_retries: i64,
    /// Milliseconds between attempts.
    #[serde(default = "default_initial_delay_ms")]
    pub retry_delay: u64,
}

/// `error_handling.on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Try the stage again, `max_retries` times.
    Retry,
    /// Fail the stage (the default of every stage).
    Fail,
}

/// One stage of a FlowMason `pipeline.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowMasonStage {
    pub id: String,
    /// The component type; the original also spells it `component` or `type`.
    #[serde(default, alias = "componentType")]
    pub component_type: Option<String>,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, alias = "dependsOn")]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub config: Option<Map<String, Value>>,
    #[serde(default, alias = "inputMapping")]
    pub input_mapping: Option<Map<String, Value>>,
    /// Attempt time limit in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry_config: Option<FlowMasonRetryConfig>,
    #[serde(default)]
    pub llm_settings: Option<LlmSettings>,
    #[serde(default)]
    pub error_handling: Option<ErrorHandling>,
}

impl FlowMasonStage {
    /// The config with `llm_settings` added where it sets nothing (`top_p` has no counterpart in our
    /// LLM components and is not passed on).
    fn config_with_llm_settings(&self) -> Option<Map<String, Value>> {
        let Some(settings) = &self.llm_settings else {
            return self.config.clone();
        };
        let mut config = self.config.clone().unwrap_or_default();
        let mut set = |field: &str, value: Option<Value>| {
            if let Some(value) = value {
                config.entry(field.to_string()).or_insert(value);
            }
        };
        set("provider", settings.provider.clone().map(Value::from));
        set("model", settings.model.clone().map(Value::from));
        set("temperature", settings.temperature.map(Value::from));
        set("max_tokens", settings.max_tokens.map(Value::from));
        set(
            "stop_sequences",
            settings.stop_sequences.clone().map(Value::from),
        );
        Some(config)
    }

    /// `retry_config`, else an `error_handling` that retries.
    fn retries(&self) -> Option<RetrySpec> {
        if let Some(config) = &self.retry_config {
            return Some(config.to_retry_spec());
        }
        let handling = self.error_handling.as_ref()?;
        (handling.on_error == OnError::Retry).then(|| {
            RetrySpec::Policy(RetryPolicySpec {
                limit: Some(handling.max_retries),
                backoff: Some(BackoffSpec {
                    duration: Some(DurationSpec::Text(format!("{}ms", handling.retry_delay))),
                    factor: Some(1.0),
                    max_duration: None,
                    jitter: None,
                }),
                retry_on: Vec::new(),
            })
        })
    }
}

/// The original `RetryConfig`; its defaults are the original's (3 retries, 1 s doubling to 30 s).
#[derive(Debug, Clone, Deserialize)]
pub struct FlowMasonRetryConfig {
    #[serde(default = "default_max_retries")]
    pub max_retries: i64,
    #[serde(default = "default_initial_delay_ms")]
    pub initial_delay_ms: u64,
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    #[serde(default = "default_backoff_multiplier")]
    pub backoff_multiplier: f64,
}

fn default_max_retries() -> i64 {
    3
}
fn default_initial_delay_ms() -> u64 {
    1_000
}
fn default_max_delay_ms() -> u64 {
    30_000
}
fn default_backoff_multiplier() -> f64 {
    2.0
}

impl FlowMasonRetryConfig {
    /// The equivalent `retries` policy.
    pub fn to_retry_spec(&self) -> RetrySpec {
        RetrySpec::Policy(RetryPolicySpec {
            limit: Some(self.max_retries),
            backoff: Some(BackoffSpec {
                duration: Some(DurationSpec::Text(format!("{}ms", self.initial_delay_ms))),
                factor: Some(self.backoff_multiplier),
                max_duration: Some(DurationSpec::Text(format!("{}ms", self.max_delay_ms))),
                jitter: None,
            }),
            retry_on: Vec::new(),
        })
    }
}

impl FlowMasonPipeline {
    /// The studio's catalogue fields as annotations (`flowmason.io/category`, `flowmason.io/tags`
    /// comma-separated, `flowmason.io/difficulty`).
    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(category) = self.category.clone().filter(|c| !c.is_empty()) {
            annotations.insert(CATEGORY_ANNOTATION.to_string(), category);
        }
        if !self.tags.is_empty() {
            annotations.insert(TAGS_ANNOTATION.to_string(), self.tags.join(","));
        }
        if let Some(difficulty) = self.difficulty.clone().filter(|d| !d.is_empty()) {
            annotations.insert(DIFFICULTY_ANNOTATION.to_string(), difficulty);
        }
        annotations
    }

    /// The canonical spec: `component_type`/`component`/`type` become `componentType`, `timeout_ms`
    /// a millisecond duration, `retry_config` a retry policy.
    pub fn to_spec(&self) -> PipelineSpec {
        let stages = self
            .stages
            .iter()
            .map(|s| StageSpec {
                id: s.id.clone(),
                component_type: s
                    .component_type
                    .clone()
                    .or_else(|| s.component.clone())
                    .or_else(|| s.type_.clone())
                    .unwrap_or_default(),
                name: s.name.clone(),
                depends_on: s.depends_on.clone(),
                config: s.config_with_llm_settings(),
                input_mapping: s
                    .input_mapping
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                timeout: s.timeout_ms.map(|ms| DurationSpec::Text(format!("{ms}ms"))),
                retries: s.retries(),
            })
            .collect();
        PipelineSpec {
            stages,
            output_stage_id: self.output_stage_id.clone(),
            input_schema: self.input_schema.clone(),
            output_schema: self.output_schema.clone(),
            sample_input: self.sample_input.clone(),
            description: self.description.clone().filter(|d| !d.is_empty()),
            version: self.version.clone(),
            ..PipelineSpec::default()
        }
    }
}

/// Whether a parsed document looks like a FlowMason `pipeline.json` rather than a bare spec: it has a
/// top-level `name` or `$schema`, or a stage uses a field only the original has.
pub fn looks_like_flowmason(doc: &Map<String, Value>) -> bool {
    if doc.contains_key("name") || doc.contains_key("$schema") {
        return true;
    }
    let only_original = [
        "component",
        "type",
        "timeout_ms",
        "retry_config",
        "llm_settings",
        "position",
    ];
    doc.get("stages")
        .and_then(Value::as_array)
        .is_some_and(|stages| {
            stages
                .iter()
                .filter_map(Value::as_object)
                .any(|s| only_original.iter().any(|k| s.contains_key(*k)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_stages_and_retry_config() {
        let doc: FlowMasonPipeline = serde_json::from_value(json!({
            "name": "etl", "version": "1.0.0", "description": "",
            "stages": [
                {"id": "fetch", "component": "http_request", "config": {"url": "{{input.url}}"}, "timeout_ms": 5000,
                 "retry_config": {"max_retries": 2, "initial_delay_ms": 500}, "position": {"x": 1, "y": 2}},
                {"id": "t", "component_type": "json_transform", "depends_on": ["fetch"], "input_mapping": {"data": "{{upstream.fetch.body}}"}},
                {"id": "v", "type": "schema_validate", "depends_on": ["t"]}
            ],
            "output_stage_id": "v", "sample_input": {"url": "https://x"}
        }))
        .expect("flowmason json");
        let spec = doc.to_spec();
        assert_eq!(spec.stages[0].component_type, "http_request");
        assert_eq!(spec.stages[1].component_type, "json_transform");
        assert_eq!(spec.stages[2].component_type, "schema_validate");
        assert_eq!(
            spec.stages[0].timeout,
            Some(DurationSpec::Text("5000ms".into()))
        );
        let policy = spec.stages[0]
            .retries
            .as_ref()
            .expect("retries")
            .to_policy()
            .expect("policy");
        assert_eq!(
            (
                policy.limit,
                policy.initial_ms,
                policy.max_ms,
                policy.factor
            ),
            (2, 500, 30_000, 2.0)
        );
        assert_eq!(spec.stages[1].depends_on, vec!["fetch".to_string()]);
        assert_eq!(
            spec.stages[1].input_mapping["data"],
            json!("{{upstream.fetch.body}}")
        );
        assert_eq!(spec.output_stage_id.as_deref(), Some("v"));
        assert_eq!(spec.sample_input, Some(json!({"url": "https://x"})));
        assert_eq!(spec.description, None);
        assert_eq!(spec.version.as_deref(), Some("1.0.0"));
    }

    #[test]
    fn studio_fields_become_config_retries_and_annotations() {
        let doc: FlowMasonPipeline = serde_json::from_value(json!({
            "name": "t", "category": "content", "tags": ["a", "b"], "difficulty": "beginner",
            "example_input": {"topic": "x"},
            "stages": [
                {"id": "g", "component_type": "generator", "config": {"prompt": "p", "temperature": 0.1},
                 "llm_settings": {"temperature": 0.9, "model": "m", "max_tokens": 10}, "position": {"x": 1, "y": 2}},
                {"id": "h", "component_type": "http-request", "config": {"url": "http://x"},
                 "error_handling": {"on_error": "retry", "max_retries": 4, "retry_delay": 250}}
            ]
        }))
        .expect("flowmason json");
        let spec = doc.to_spec();
        let config = spec.stages[0].config.clone().expect("config");
        assert_eq!(
            Value::Object(config),
            json!({"prompt": "p", "temperature": 0.1, "model": "m", "max_tokens": 10})
        );
        let policy = spec.stages[1]
            .retries
            .as_ref()
            .expect("retries")
            .to_policy()
            .expect("policy");
        assert_eq!(
            (policy.limit, policy.initial_ms, policy.factor),
            (4, 250, 1.0)
        );
        assert_eq!(spec.sample_input, Some(json!({"topic": "x"})));
        assert_eq!(
            doc.annotations().get(TAGS_ANNOTATION).map(String::as_str),
            Some("a,b")
        );
        let bad = serde_json::from_value::<FlowMasonPipeline>(json!({"name": "t", "stages": [
            {"id": "h", "component": "noop", "error_handling": {"on_error": "ignore"}}]}));
        assert!(
            bad.expect_err("unknown on_error")
                .to_string()
                .contains("unknown variant `ignore`, expected `retry` or `fail`")
        );
    }

    #[test]
    fn detection() {
        let fm = json!({"name": "x", "stages": []});
        let spec = json!({"stages": [{"id": "a", "componentType": "noop"}]});
        let fm_stage = json!({"stages": [{"id": "a", "component": "noop"}]});
        assert!(looks_like_flowmason(fm.as_object().expect("object")));
        assert!(!looks_like_flowmason(spec.as_object().expect("object")));
        assert!(looks_like_flowmason(fm_stage.as_object().expect("object")));
    }
}

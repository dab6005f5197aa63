//! The original FlowMason `pipeline.json` format (`flowmason_core.project.loader.PipelineFile`), so
//! that existing FlowMason pipelines run unchanged: read it and convert it into the canonical
//! `PipelineSpec`.
//!
//! Fields of the original that have no meaning for this engine (canvas `position`, `extends`,
//! `compositions`, `tags`, ...) are accepted and ignored.

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
    #[serde(default, alias = "sampleInput")]
    pub sample_input: Option<Value>,
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
                config: s.config.clone(),
                input_mapping: s
                    .input_mapping
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                timeout: s.timeout_ms.map(|ms| DurationSpec::Text(format!("{ms}ms"))),
                retries: s
                    .retry_config
                    .as_ref()
                    .map(FlowMasonRetryConfig::to_retry_spec),
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
    fn detection() {
        let fm = json!({"name": "x", "stages": []});
        let spec = json!({"stages": [{"id": "a", "componentType": "noop"}]});
        let fm_stage = json!({"stages": [{"id": "a", "component": "noop"}]});
        assert!(looks_like_flowmason(fm.as_object().expect("object")));
        assert!(!looks_like_flowmason(spec.as_object().expect("object")));
        assert!(looks_like_flowmason(fm_stage.as_object().expect("object")));
    }
}

//! The `flowmason.io/v1` custom resources, `Pipeline` and `PipelineRun`, with every field of the seed
//! (`kubernetes-deployment.md`), docs/architecture.md and the original FlowMason models.
//!
//! Input accepts both camelCase (the seed's spelling) and the snake_case spelling the original FlowMason
//! sends; output is always camelCase. Every snake_case alias is listed once in [`FIELD_ALIASES`], which
//! also drives the CRD schema post-processing (so a real API server does not prune the snake_case
//! spelling before we see it) and a test that checks serde accepts each listed alias.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::duration::DurationSpec;
use super::policy::{ParallelismSpec, RetrySpec};

/// Every accepted alternative spelling: `(camelCase property, alias)`. Each alias is also a serde
/// `alias` on the field of that name; `crd_yaml` adds it as a property next to the camelCase one.
pub const FIELD_ALIASES: &[(&str, &str)] = &[
    ("componentType", "component_type"),
    ("componentType", "component"),
    ("dependsOn", "depends_on"),
    ("inputMapping", "input_mapping"),
    ("timeZone", "time_zone"),
    ("concurrencyPolicy", "concurrency_policy"),
    ("startingDeadlineSeconds", "starting_deadline_seconds"),
    (
        "successfulRunsHistoryLimit",
        "successful_runs_history_limit",
    ),
    ("failedRunsHistoryLimit", "failed_runs_history_limit"),
    ("secretRef", "secret_ref"),
    ("valueFrom", "value_from"),
    ("secretKeyRef", "secret_key_ref"),
    ("configMapKeyRef", "config_map_key_ref"),
    ("baseUrl", "base_url"),
    ("outputStageId", "output_stage_id"),
    ("inputSchema", "input_schema"),
    ("outputSchema", "output_schema"),
    ("sampleInput", "sample_input"),
    ("pipelineRef", "pipeline_ref"),
    ("inputsFrom", "inputs_from"),
    ("serviceAccountName", "service_account_name"),
    ("nodeSelector", "node_selector"),
    ("retryOn", "retry_on"),
    ("maxDuration", "max_duration"),
];

/// Schema of a free-form JSON object (stage `config`, JSON schemas, run `inputs`): its content is ours
/// to check, so the API server must keep it as is.
fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// Schema of a value of any JSON type (`sampleInput`, `output`, error `details`).
fn free_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Schema of a map from names to values of any JSON type (`inputMapping`: templates or literals).
fn free_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// A pipeline: a DAG of stages, plus how and when it runs.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flowmason.io",
    version = "v1",
    kind = "Pipeline",
    namespaced,
    status = "PipelineStatus",
    shortname = "fmp",
    category = "flowmason",
    doc = "A FlowMason pipeline: a DAG of stages, each running one component.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule","priority":1}"#,
    printcolumn = r#"{"name":"Last Run","type":"string","jsonPath":".status.lastRunStatus","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// The stages, each running one component; `dependsOn` makes them a DAG.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    /// A ConfigMap holding the pipeline definition (FlowMason `pipeline.json` or a spec), used when
    /// `stages` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ConfigMapSource>,
    /// Five-field cron expression; runs are created on this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone of `schedule` (default UTC).
    #[serde(default, alias = "time_zone", skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a scheduled run does when the previous one is still running (default Allow).
    #[serde(
        default,
        alias = "concurrency_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// A scheduled run missed by more than this many seconds (e.g. during downtime) is skipped.
    #[serde(
        default,
        alias = "starting_deadline_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub starting_deadline_seconds: Option<i64>,
    /// Stops scheduled and triggered runs (manual PipelineRuns still run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Succeeded PipelineRuns kept per pipeline.
    #[serde(
        default,
        alias = "successful_runs_history_limit",
        skip_serializing_if = "Option::is_none"
    )]
    pub successful_runs_history_limit: Option<i32>,
    /// Failed PipelineRuns kept per pipeline.
    #[serde(
        default,
        alias = "failed_runs_history_limit",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_runs_history_limit: Option<i32>,
    /// Event triggers: webhook and NATS pub/sub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<TriggersSpec>,
    /// Resource requests and limits for pipeline execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Environment variables available to stages as `{{env.NAME}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVarSpec>,
    /// LLM provider configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<ProvidersSpec>,
    /// Time limit of a whole run: seconds or a duration string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Retries of each stage (stages may override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    /// Most stages running at once in one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<ParallelismSpec>,
    /// The stage whose output is the run's output (default: the sink stages').
    #[serde(
        default,
        alias = "output_stage_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_stage_id: Option<String>,
    /// JSON Schema of the run inputs.
    #[serde(
        default,
        alias = "input_schema",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "free_object")]
    pub input_schema: Option<Map<String, Value>>,
    /// JSON Schema of the run output.
    #[serde(
        default,
        alias = "output_schema",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "free_object")]
    pub output_schema: Option<Map<String, Value>>,
    /// Example inputs, used by `fm run` when none are given.
    #[serde(
        default,
        alias = "sample_input",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "free_value")]
    pub sample_input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The pipeline's own version (FlowMason `version`), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One stage of a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// Unique within the pipeline; other stages refer to it in `dependsOn` and `{{upstream.<id>}}`.
    pub id: String,
    /// The registered component that runs this stage (`http_request`, `json_transform`, ...).
    #[serde(default, alias = "component_type", alias = "component")]
    pub component_type: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stages that must succeed before this one starts.
    #[serde(default, alias = "depends_on", skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The component's input fields; string values may hold templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub config: Option<Map<String, Value>>,
    /// Input fields added to or overriding `config`, each a template or a literal.
    #[serde(
        default,
        alias = "input_mapping",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    #[schemars(schema_with = "free_map")]
    pub input_mapping: BTreeMap<String, Value>,
    /// Time limit of one attempt of this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Overrides the pipeline's `retries` for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
}

/// A ConfigMap key holding the pipeline definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// ConfigMap name.
    pub name: String,
    /// Key in the ConfigMap (default `pipeline.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Namespace of the ConfigMap (default: the Pipeline's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What happens when a scheduled run is due while an earlier one is still running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start it anyway.
    #[default]
    Allow,
    /// Skip it.
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
}

/// Event triggers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggersSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubSubTrigger>,
}

/// An HTTP endpoint whose POST body (JSON) becomes the inputs of a new run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTrigger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// URL path served by the webhook server, e.g. `/webhooks/data-processor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Secret key holding the shared secret callers authenticate with: `Authorization: Bearer
    /// <secret>`, or an HMAC-SHA256 signature of `"{timestamp}.{body}"` in `X-FlowMason-Signature`
    /// with the Unix time in `X-FlowMason-Timestamp`. Required unless `auth` is `none`.
    #[serde(default, alias = "secret_ref", skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// `secret` (the default): requests must authenticate with `secretRef`. `none`: anyone who can
    /// reach the path may start runs (an explicit opt-out, e.g. behind a gateway that authenticates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<WebhookAuth>,
}

/// How a webhook's callers authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookAuth {
    /// With the Secret of `secretRef`.
    #[default]
    Secret,
    /// Not at all.
    None,
}

/// A NATS subject whose messages (JSON) become the inputs of new runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PubSubTrigger {
    /// NATS subject.
    pub topic: String,
    /// Durable JetStream consumer (queue group on core NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
}

/// A key of a Secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// An environment variable: a literal `value` or one read `valueFrom` a Secret or ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, alias = "value_from", skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value is read from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(
        default,
        alias = "secret_key_ref",
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(
        default,
        alias = "config_map_key_ref",
        skip_serializing_if = "Option::is_none"
    )]
    pub config_map_key_ref: Option<KeySelector>,
}

/// A key of a Secret or ConfigMap; `optional` makes a missing one yield no variable instead of an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// LLM providers for generator-style components.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvidersSpec {
    /// The provider used when a stage names none (`anthropic` or `openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(
        default,
        deserialize_with = "anthropic_provider",
        skip_serializing_if = "Option::is_none"
    )]
    pub anthropic: Option<ProviderSpec>,
    #[serde(
        default,
        deserialize_with = "openai_provider",
        skip_serializing_if = "Option::is_none"
    )]
    pub openai: Option<ProviderSpec>,
}

/// A provider whose `secretRef` was written as a Secret's name alone (the original FlowMason client's
/// form) gets the key `<provider>-key` of that Secret (`anthropic-key`, `openai-key`, as in FlowMason's
/// `llm-secrets`).
fn provider_named<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    provider: &str,
) -> Result<Option<ProviderSpec>, D::Error> {
    let mut spec = Option::<ProviderSpec>::deserialize(deserializer)?;
    if let Some(secret) = spec.as_mut().and_then(|p| p.secret_ref.as_mut())
        && secret.key.is_empty()
    {
        secret.key = format!("{provider}-key");
    }
    Ok(spec)
}

fn anthropic_provider<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ProviderSpec>, D::Error> {
    provider_named(deserializer, "anthropic")
}

fn openai_provider<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ProviderSpec>, D::Error> {
    provider_named(deserializer, "openai")
}

/// A provider's `secretRef`: `{name, key}`, or the name of a Secret alone (the key is then filled in by
/// [`ProvidersSpec`], which knows the provider).
fn provider_secret_ref<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretKeyRef>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Name(String),
        Key(SecretKeyRef),
    }
    Ok(
        Option::<Form>::deserialize(deserializer)?.map(|form| match form {
            Form::Name(name) => SecretKeyRef {
                name,
                key: String::new(),
            },
            Form::Key(key) => key,
        }),
    )
}

/// Schema of a provider's `secretRef`: an object `{name, key}` or a string (a Secret's name). A
/// structural schema cannot say "string or object", so the API server keeps the value as written and
/// the types check it.
fn provider_secret_ref_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Secret key holding the API key: {name, key}, or the name of a Secret whose key `<provider>-key` (anthropic-key, openai-key) holds it.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// One LLM provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Default model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Secret key holding the API key: `{name, key}`, or a Secret's name (its key `<provider>-key`).
    #[serde(
        default,
        alias = "secret_ref",
        deserialize_with = "provider_secret_ref",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "provider_secret_ref_schema")]
    pub secret_ref: Option<SecretKeyRef>,
    /// API base URL (proxies, compatible servers).
    #[serde(default, alias = "base_url", skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// Phase of a Pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PipelinePhase {
    Pending,
    Ready,
    Running,
    Failed,
    Suspended,
}

/// A status condition (`Ready`, ...), as Kubernetes conventions describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Observed state of a Pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PipelinePhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// Phase of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_run: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One execution of a pipeline.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "flowmason.io",
    version = "v1",
    kind = "PipelineRun",
    namespaced,
    status = "PipelineRunStatus",
    shortname = "fmr",
    category = "flowmason",
    doc = "One execution of a FlowMason pipeline.",
    printcolumn = r#"{"name":"Pipeline","type":"string","jsonPath":".spec.pipelineRef"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[0].reason"}"#,
    printcolumn = r#"{"name":"Stages","type":"integer","description":"stages completed","jsonPath":".status.metrics.stagesCompleted"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunSpec {
    /// Name of the Pipeline (same namespace) to run. Required; checked by validation so that a
    /// missing one is reported by name, whichever spelling was meant.
    #[serde(default, alias = "pipeline_ref")]
    pub pipeline_ref: String,
    /// Run inputs, `{{input.*}}` in templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub inputs: Option<Map<String, Value>>,
    /// Inputs read from elsewhere: input name -> reference (`configmap/<name>/<key>` or
    /// `secret/<name>/<key>`), as the original model's `inputsFrom`.
    #[serde(
        default,
        alias = "inputs_from",
        skip_serializing_if = "Option::is_none"
    )]
    pub inputs_from: Option<BTreeMap<String, String>>,
    /// Overrides the pipeline's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Overrides the pipeline's and the stages' `retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    /// Added to (or replacing by name) the pipeline's `env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVarSpec>,
    /// Overrides the pipeline's `parallelism`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<ParallelismSpec>,
    /// Requested state: set to `Cancelled` to cancel the run (running stages are cancelled,
    /// the run ends `Cancelled`). Setting it on a finished run has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RequestedState>,
    #[serde(
        default,
        alias = "service_account_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account_name: Option<String>,
    #[serde(
        default,
        alias = "node_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Makes this run a rerun of an earlier one (what `POST /api/v1/runs/{runId}/rerun` and
    /// `fm k8s rerun` create). With `fromFailed`, the stages that succeeded in the old run are taken
    /// over from its events instead of running again; the old run must be in this operator's event log.
    #[serde(default, alias = "rerun_of", skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RerunOf>,
}

/// `spec.rerunOf` of a PipelineRun: which run it reruns and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RerunOf {
    /// Engine run id of the old run (its `status.runId`).
    #[serde(default, alias = "run_id")]
    pub run_id: String,
    /// Reuse the old run's succeeded stages; run only the failed stage and its dependants.
    #[serde(default, alias = "from_failed")]
    pub from_failed: bool,
}

/// A state a user can request for a run through `spec.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestedState {
    /// Cancel the run.
    Cancelled,
}

/// Phase of a PipelineRun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunPhase {
    /// Whether the run has ended (nothing will change its status any more).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled | RunPhase::TimedOut
        )
    }
}

/// Phase of one stage of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StagePhase {
    Pending,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

/// Observed state of a PipelineRun, projected from the run's events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The run's id in the event log (`fm history`, `/api/v1/runs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Wall time, e.g. `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// The run's output, bounded in size; the full output lives in the event log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_value")]
    pub output: Option<Value>,
    /// Whether `output` was cut to stay within the status size bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunErrorStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RunMetrics>,
    /// `metadata.generation` of the Pipeline the run's plan was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The operator replica that runs the run (its identity: the pod name in a cluster), so that with
    /// several replicas sharing the runs one can tell whose logs to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// State of one stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_type: Option<String>,
    pub phase: StagePhase,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the stage's output as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_preview: Option<String>,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunErrorStatus {
    pub message: String,
    /// The stage whose failure ended the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_value")]
    pub details: Option<Value>,
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunMetrics {
    #[serde(default)]
    pub total_stages: u32,
    #[serde(default)]
    pub completed_stages: u32,
    #[serde(default)]
    pub failed_stages: u32,
    #[serde(default)]
    pub skipped_stages: u32,
    #[serde(default)]
    pub running_stages: u32,
    /// Retry attempts started, over all stages.
    #[serde(default)]
    pub retries: u32,
    /// LLM tokens used, when components report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    /// LLM cost in USD as a decimal string, when components report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost: Option<String>,
    /// `completedStages` under the name the original FlowMason client reads.
    #[serde(default)]
    pub stages_completed: u32,
    /// `totalStages` under the name the original FlowMason client reads.
    #[serde(default)]
    pub stages_total: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_provider_secret_ref_may_name_the_secret_alone() {
        let providers: ProvidersSpec = serde_json::from_value(json!({
            "anthropic": {"secretRef": "llm-secrets"},
            "openai": {"secretRef": {"name": "keys", "key": "oa"}}
        }))
        .expect("providers");
        let key = |p: &Option<ProviderSpec>| {
            p.as_ref()
                .and_then(|p| p.secret_ref.clone())
                .map(|s| (s.name, s.key))
        };
        assert_eq!(
            key(&providers.anthropic),
            Some(("llm-secrets".to_string(), "anthropic-key".to_string()))
        );
        assert_eq!(
            key(&providers.openai),
            Some(("keys".to_string(), "oa".to_string()))
        );
    }

    /// Renames every key listed in `FIELD_ALIASES` to its alias, recursively.
    fn to_aliases(value: &Value, pick: usize) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let aliases: Vec<&str> = FIELD_ALIASES
                            .iter()
                            .filter(|(camel, _)| camel == k)
                            .map(|(_, a)| *a)
                            .collect();
                        let key = if aliases.is_empty() {
                            k.clone()
                        } else {
                            aliases[pick % aliases.len()].to_string()
                        };
                        (key, to_aliases(v, pick))
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| to_aliases(v, pick)).collect())
            }
            other => other.clone(),
        }
    }

    fn full_pipeline_spec() -> Value {
        json!({
            "stages": [
                {"id": "fetch", "componentType": "http_request", "name": "Fetch", "config": {"url": "https://x"},
                 "timeout": "30s", "retries": {"limit": 2, "retryOn": ["transient"], "backoff": {"maxDuration": "5s"}}},
                {"id": "process", "componentType": "json_transform", "dependsOn": ["fetch"],
                 "inputMapping": {"data": "{{upstream.fetch.body}}"}}
            ],
            "source": {"name": "cm", "key": "pipeline.json"},
            "schedule": "0 * * * *", "timeZone": "Europe/Berlin", "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 60, "suspend": false, "successfulRunsHistoryLimit": 3, "failedRunsHistoryLimit": 1,
            "triggers": {"webhook": {"enabled": true, "path": "/webhooks/x", "secretRef": {"name": "s", "key": "k"}},
                         "pubsub": {"topic": "t", "subscription": "sub"}},
            "resources": {"requests": {"memory": "256Mi", "cpu": "100m"}},
            "env": [{"name": "A", "value": "1"},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": true}}},
                    {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
            "providers": {"default": "anthropic", "anthropic": {"model": "claude", "secretRef": {"name": "s", "key": "k"}, "baseUrl": "http://x"}},
            "timeout": 300, "retries": 2, "parallelism": 4, "outputStageId": "process",
            "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"}, "sampleInput": {"a": 1},
            "description": "d", "version": "1.0.0"
        })
    }

    #[test]
    fn every_alias_is_accepted_and_output_is_camel_case() {
        let camel = full_pipeline_spec();
        let spec: PipelineSpec = serde_json::from_value(camel.clone()).expect("camelCase");
        assert_eq!(serde_json::to_value(&spec).expect("ser"), camel);
        for pick in 0..2 {
            let snake = to_aliases(&camel, pick);
            assert_ne!(snake, camel);
            let aliased: PipelineSpec = serde_json::from_value(snake).expect("snake_case");
            assert_eq!(aliased, spec);
        }
    }

    #[test]
    fn run_spec_aliases_and_cancellation() {
        let camel = json!({
            "pipelineRef": "p", "inputs": {"date": "2025-12-14"}, "inputsFrom": {"x": "configmap/c/k"},
            "timeout": "1h", "retries": 1, "env": [{"name": "A", "value": "1"}], "parallelism": true,
            "status": "Cancelled", "serviceAccountName": "sa", "nodeSelector": {"k": "v"},
            "tolerations": [{"key": "k", "operator": "Exists"}]
        });
        let run: PipelineRunSpec = serde_json::from_value(camel.clone()).expect("camel");
        assert_eq!(run.status, Some(RequestedState::Cancelled));
        assert_eq!(serde_json::to_value(&run).expect("ser"), camel);
        let aliased: PipelineRunSpec =
            serde_json::from_value(to_aliases(&camel, 0)).expect("snake");
        assert_eq!(aliased, run);
    }

    #[test]
    fn status_round_trips() {
        let status = json!({
            "phase": "Failed", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
            "runId": "r", "startTime": "2025-01-01T00:00:00Z", "duration": "1m30s",
            "stages": [{"id": "a", "phase": "Failed", "attempts": 2, "error": "boom", "outputPreview": "{}"}],
            "output": {"x": 1}, "outputTruncated": false, "error": {"message": "m", "stage": "a"},
            "metrics": {"totalStages": 1, "completedStages": 0, "failedStages": 1, "skippedStages": 0, "runningStages": 0, "retries": 1, "stagesCompleted": 0, "stagesTotal": 1},
            "pipelineGeneration": 3
        });
        let parsed: PipelineRunStatus = serde_json::from_value(status.clone()).expect("status");
        assert_eq!(serde_json::to_value(&parsed).expect("ser"), status);
    }
}

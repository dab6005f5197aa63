//! The resource model: the `Pipeline` and `PipelineRun` custom resources, loading pipeline files in
//! every accepted format, validation with one clear message per problem, conversion into the engine's
//! `PlanSpec`, and the generated CRD YAML.

pub mod crd;
pub mod crd_yaml;
pub mod directory;
pub mod duration;
pub mod flowmason_json;
pub mod input_schema;
pub mod load;
pub mod policy;
pub mod project;
pub mod providers;
pub mod resources;
pub mod schedule;
pub mod unknown_fields;
pub mod upstream;
pub mod validate;
pub mod vocabulary;
pub mod webhook_path;

pub use crd::{
    ConcurrencyPolicy, Condition, ConfigMapSource, EnvVarSource, EnvVarSpec, KeySelector, Pipeline,
    PipelinePhase, PipelineRun, PipelineRunSpec, PipelineRunStatus, PipelineSpec, PipelineStatus,
    ProviderSpec, ProvidersSpec, PubSubTrigger, RequestedState, RerunOf, RunErrorStatus,
    RunMetrics, RunPhase, SecretKeyRef, StagePhase, StageSpec, StageStatus, TriggersSpec,
    WebhookAuth, WebhookTrigger,
};
pub use crd_yaml::{pipeline_crd_yaml, pipelinerun_crd_yaml};
pub use duration::{DurationError, DurationSpec};
pub use load::{LoadError, LoadedPipeline, SourceFormat, load_pipeline_file, load_pipeline_str};
pub use policy::{BackoffSpec, ParallelismSpec, RetryPolicySpec, RetrySpec};
pub use validate::{
    ValidationError, apply_run_overrides, to_plan, validate, validate_run, warnings,
};

//! Validation of `Pipeline` and `PipelineRun` specs, and their conversion into the engine's `PlanSpec`.
//!
//! Validation happens before anything runs and reports every problem at once, each as one message that
//! names the field path and the offending value (`stages[2].id: duplicate stage id "fetch"`), so that an
//! invalid Pipeline gets `Ready=False` with a reason a user can act on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use serde_json::Value;

use flowmason_actors::canonical_name;

use crate::components::output_fields;
use flowmason_actors::component::Registry;
use flowmason_actors::plan::{
    DEFAULT_PARALLELISM, EnvRef, EnvRefKind, Plan, PlanError, PlanSpec, RetryPolicy, StagePlan,
};
use flowmason_actors::template::unrendered_input;

use crate::llm::providers::{LLM_COMPONENTS, PROVIDERS_FIELD, keys_from_env};

use super::providers::plan_providers;

use super::crd::{EnvVarSpec, PipelineRunSpec, PipelineSpec, StageSpec};
use super::duration::DurationSpec;
use super::policy::{ParallelismSpec, RetrySpec};
use super::schedule::{CronSchedule, ScheduleError};
use super::upstream::Upstream;
use super::webhook_path::{self, PREFIX as WEBHOOK_PREFIX};

/// One problem with a spec: the field path (`stages[1].dependsOn`) and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The engine's structural errors already read "field: message"; split them so callers get one shape.
impl From<PlanError> for ValidationError {
    fn from(err: PlanError) -> Self {
        let text = err.to_string();
        match text.split_once(": ") {
            Some((field, message)) => ValidationError::new(field, message),
            None => ValidationError::new("", text),
        }
    }
}

/// Formats a list of problems one per line, for CLI output and condition messages.
pub struct ValidationReport<'a>(pub &'a [ValidationError]);

impl fmt::Display for ValidationReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Component names of the original FlowMason, offered as suggestions when a `componentType` is unknown
/// (only those the registry knows are listed).
const SUGGESTED_COMPONENTS: &[&str] = &[
    "http_request",
    "json_transform",
    "generator",
    "filter",
    "logger",
    "schema_validate",
    "router",
    "conditional",
    "foreach",
    "aggregate",
    "variable_set",
    "noop",
    "echo",
    "delay",
];

/// Every problem of a Pipeline spec. `known_components` answers whether a component type is
/// registered; a spec that only passes this check can be turned into a plan with [`to_plan`].
pub fn validate(
    spec: &PipelineSpec,
    known_components: &dyn Fn(&str) -> bool,
) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        check_component(i, stage, known_components, &mut errors);
        check_nesting(i, stage, &mut errors);
        check_config(i, stage, &mut errors);
    }
    if let Err(more) = to_plan(spec) {
        errors.extend(more);
    }
    check_owned_stages(spec, &mut errors);
    check_triggers(spec, &mut errors);
    if let Err(problem) = super::resources::demand(spec.resources.as_ref()) {
        errors.push(spec_field_error(&problem));
    }
    for (field, schema) in [
        ("inputSchema", &spec.input_schema),
        ("outputSchema", &spec.output_schema),
    ] {
        if let Some(problem) = schema
            .as_ref()
            .and_then(super::input_schema::schema_problem)
        {
            errors.push(ValidationError::new(field, problem));
        }
    }
    check_sample_input(spec, &mut errors);
    errors
}

/// The example inputs (`sampleInput`, FlowMason's `example_input`) must satisfy the `inputSchema`, with
/// its defaults applied as a run would: a run started without inputs uses them.
fn check_sample_input(spec: &PipelineSpec, errors: &mut Vec<ValidationError>) {
    let (Some(schema), Some(sample)) = (&spec.input_schema, &spec.sample_input) else {
        return;
    };
    if super::input_schema::schema_problem(schema).is_some() {
        return;
    }
    let mut sample = sample.clone();
    super::input_schema::apply_defaults(schema, &mut sample);
    for (field, key) in input_reads(spec) {
        if sample.get(&key).is_none() {
            errors.push(ValidationError::new(
                "sampleInput",
                format!(
                    "the example input lacks {key:?}, which {field} reads (and inputSchema gives it no default)"
                ),
            ));
        }
    }
    for problem in super::input_schema::check(schema, &sample) {
        let problem = problem.strip_prefix("inputs").unwrap_or(&problem);
        errors.push(ValidationError::new(
            format!("sampleInput{}", problem.split(':').next().unwrap_or("")),
            format!(
                "the example input does not satisfy inputSchema:{}",
                problem.split_once(':').map_or("", |(_, m)| m)
            ),
        ));
    }
}

/// The schedule and the webhook path, checked as the trigger manager would use them, so that a Pipeline
/// whose trigger could never fire is invalid instead of `Ready` with a warning in the server's log.
fn check_triggers(spec: &PipelineSpec, errors: &mut Vec<ValidationError>) {
    if let Some(expr) = &spec.schedule
        && let Err(e) = CronSchedule::parse(expr, spec.time_zone.as_deref())
    {
        errors.push(match e {
            ScheduleError::TimeZone(zone) => ValidationError::new(
                "timeZone",
                format!("{zone:?} is not an IANA time zone name (e.g. Europe/Berlin)"),
            ),
            ScheduleError::Expression { expr, reason } => ValidationError::new(
                "schedule",
                format!(
                    "{expr:?} is not a cron expression ({reason}); expected 5 fields \
                     (minute hour day-of-month month day-of-week) such as \"0 * * * *\", or @hourly, @daily"
                ),
            ),
        });
    }
    let path = spec
        .triggers
        .as_ref()
        .and_then(|t| t.webhook.as_ref())
        .and_then(|w| w.path.as_deref())
        .map(str::trim)
        .filter(|p| !p.is_empty());
    if let Some(path) = path
        && !webhook_path::is_below_prefix(&webhook_path::served_path("", "", Some(path)))
    {
        errors.push(ValidationError::new(
            "triggers.webhook.path",
            format!("{path:?} must start with {WEBHOOK_PREFIX:?} and name a path below it"),
        ));
    }
}

/// A problem that reads `spec.<field>: message`, as one naming the field the way the others do.
fn spec_field_error(problem: &str) -> ValidationError {
    match problem.split_once(": ") {
        Some((field, message)) => {
            ValidationError::new(field.strip_prefix("spec.").unwrap_or(field), message)
        }
        None => ValidationError::new("", problem),
    }
}

/// Stage ids YAML 1.1 reads as booleans: kubectl and other YAML 1.1 tools turn an unquoted `on` into
/// `true`, so the Pipeline they apply names a different stage than the file does.
const YAML11_BOOLEANS: &[&str] = &["y", "yes", "n", "no", "on", "off", "true", "false"];

/// What is allowed but probably not meant: stage ids that a YAML 1.1 tool changes. These never make a
/// spec invalid; `fm validate` and `fm k8s deploy` print them.
pub fn warnings(spec: &PipelineSpec) -> Vec<ValidationError> {
    spec.stages
        .iter()
        .enumerate()
        .filter(|(_, stage)| {
            YAML11_BOOLEANS
                .iter()
                .any(|b| stage.id.eq_ignore_ascii_case(b))
        })
        .map(|(i, stage)| {
            ValidationError::new(
                format!("stages[{i}].id"),
                format!(
                    "{:?} is a boolean in YAML 1.1 (kubectl applies an unquoted {} as true or false); \
                     quote it or choose another id",
                    stage.id, stage.id
                ),
            )
        })
        .collect()
}

/// Config fields that name stages a control-flow stage chooses among or runs itself (FlowMason's
/// directives), by component type.
const STAGE_LIST_FIELDS: &[(&str, &[&str])] = &[
    ("foreach", &["loop_stages"]),
    (
        "trycatch",
        &["try_stages", "catch_stages", "finally_stages"],
    ),
    (
        "conditional",
        &["true_branch_stages", "false_branch_stages"],
    ),
    ("router", &["default_route"]),
];

/// Stages named by a branching or nesting stage must exist and be downstream of it: a loop stage that
/// is not would also run as an ordinary stage, a branch stage that is not could run before the choice.
/// Only literal lists are checked (a templated list is known at run time).
fn check_owned_stages(spec: &PipelineSpec, errors: &mut Vec<ValidationError>) {
    let ids: BTreeSet<&str> = spec.stages.iter().map(|s| s.id.as_str()).collect();
    let mut checks = UpstreamChecks::default();
    for (i, stage) in spec.stages.iter().enumerate() {
        let Some((_, fields)) = STAGE_LIST_FIELDS
            .iter()
            .find(|(c, _)| *c == canonical_name(&stage.component_type))
        else {
            continue;
        };
        for field in *fields {
            let value = stage
                .input_mapping
                .get(*field)
                .or_else(|| stage.config.as_ref().and_then(|c| c.get(*field)));
            let Some(Value::Array(items)) = value else {
                continue;
            };
            for named in items.iter().filter_map(Value::as_str) {
                let at = format!("stages[{i}].config.{field}");
                if !ids.contains(named) {
                    checks.fail(ValidationError::new(
                        at,
                        format!("stage {:?} names unknown stage {named:?}", stage.id),
                    ));
                } else {
                    checks.unless_upstream(
                        (stage.id.as_str(), named),
                        ValidationError::new(
                            at,
                            format!(
                                "stage {named:?} must depend on {:?} (dependsOn, directly or through other stages), \
                                 or it would not wait for {:?}",
                                stage.id, stage.component_type
                            ),
                        ),
                    );
                }
            }
        }
    }
    checks.resolve(&spec.stages, errors);
}

/// Problems found in stage order, some of which hold only if one stage is not upstream of another: the
/// questions are answered together at the end (see [`Upstream`]), and the problems reported in order.
#[derive(Default)]
struct UpstreamChecks<'a> {
    /// A problem, and the question `(ancestor, stage)` whose "no" makes it one (none: it is one).
    found: Vec<(ValidationError, Option<usize>)>,
    questions: Vec<(&'a str, &'a str)>,
}

impl<'a> UpstreamChecks<'a> {
    fn fail(&mut self, error: ValidationError) {
        self.found.push((error, None));
    }

    fn unless_upstream(&mut self, question: (&'a str, &'a str), error: ValidationError) {
        self.found.push((error, Some(self.questions.len())));
        self.questions.push(question);
    }

    /// A question about a stage id used twice has no answer (which of the stages?): the duplicate is
    /// reported on its own, and the problem that hangs on the question is left out rather than guessed.
    fn resolve(self, stages: &[StageSpec], errors: &mut Vec<ValidationError>) {
        let mut answers = if self.questions.is_empty() {
            Vec::new()
        } else {
            Upstream::new(stages).answer(&self.questions)
        };
        let mut seen = BTreeSet::new();
        let duplicated: BTreeSet<&str> = stages
            .iter()
            .map(|s| s.id.as_str())
            .filter(|id| !seen.insert(*id))
            .collect();
        if !duplicated.is_empty() {
            for (answer, (ancestor, stage)) in answers.iter_mut().zip(&self.questions) {
                *answer |= duplicated.contains(ancestor) || duplicated.contains(stage);
            }
        }
        errors.extend(
            self.found
                .into_iter()
                .filter(|(_, q)| q.is_none_or(|q| !answers[q]))
                .map(|(e, _)| e),
        );
    }
}

/// Expressions in the stage's config that nest too deeply for their parsers (see
/// `components::nesting`).
fn check_nesting(i: usize, stage: &StageSpec, errors: &mut Vec<ValidationError>) {
    let Some(config) = &stage.config else {
        return;
    };
    for (field, message) in
        crate::components::nesting::problems(&canonical_name(&stage.component_type), config)
    {
        errors.push(ValidationError::new(
            format!("stages[{i}].config.{field}"),
            format!("{message} (stage {:?})", stage.id),
        ));
    }
}

/// The built-in components, for their static config checks (`Component::validate`).
static BUILTIN: LazyLock<Registry> = LazyLock::new(crate::components::builtin_registry);

/// The stage's literal config (and inputMapping) as its component checks it before any run: a bad
/// literal value (a jq filter that does not compile, `level: loud`, `url: ftp://x`) or a missing required
/// field fails here rather than in a run. Templated fields are checked when a run renders them.
fn check_config(i: usize, stage: &StageSpec, errors: &mut Vec<ValidationError>) {
    let Some(component) = BUILTIN.get(&stage.component_type) else {
        return;
    };
    let config = stage
        .config
        .clone()
        .map(Value::Object)
        .unwrap_or(Value::Null);
    let input = unrendered_input(&config, &stage.input_mapping);
    if let Err(e) = component.validate(&input) {
        errors.push(ValidationError::new(
            format!("stages[{i}].config"),
            format!("{} (stage {:?})", e.message, stage.id),
        ));
    }
}

fn check_component(
    i: usize,
    stage: &StageSpec,
    known: &dyn Fn(&str) -> bool,
    errors: &mut Vec<ValidationError>,
) {
    let field = format!("stages[{i}].componentType");
    let name = stage.component_type.as_str();
    if name.is_empty() {
        errors.push(ValidationError::new(
            field,
            format!("required (stage {:?})", stage.id),
        ));
        return;
    }
    if known(name) || known(&canonical_name(name)) {
        return;
    }
    let normalised = name.trim().to_ascii_lowercase().replace('-', "_");
    let mut message = format!("unknown component {name:?}");
    if normalised != name && known(&normalised) {
        message.push_str(&format!(" (did you mean {normalised:?}?)"));
    } else {
        let listed: Vec<&str> = SUGGESTED_COMPONENTS
            .iter()
            .copied()
            .filter(|c| known(c))
            .take(6)
            .collect();
        if !listed.is_empty() {
            message.push_str(&format!(
                " (known components include {})",
                listed.join(", ")
            ));
        }
    }
    errors.push(ValidationError::new(field, message));
}

/// The engine's plan for a spec: durations in milliseconds, retries as policies (a stage's own
/// override the pipeline's), parallelism (default [`DEFAULT_PARALLELISM`]) and the output stage.
/// Fails with every problem except unknown component types, which need a registry (see [`validate`]).
pub fn to_plan(spec: &PipelineSpec) -> Result<PlanSpec, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let timeout_ms = duration_ms("timeout", spec.timeout.as_ref(), &mut errors);
    let retry = retry_policy("retries", spec.retries.as_ref(), &mut errors).unwrap_or_default();
    let parallelism =
        parallelism("parallelism", spec.parallelism, &mut errors).unwrap_or(DEFAULT_PARALLELISM);
    check_optional_fields(spec, &mut errors);

    let mut stages = Vec::with_capacity(spec.stages.len());
    for (i, stage) in spec.stages.iter().enumerate() {
        if stage.id.is_empty() {
            errors.push(ValidationError::new(format!("stages[{i}].id"), "required"));
        } else if !valid_id(&stage.id) {
            errors.push(ValidationError::new(
                format!("stages[{i}].id"),
                format!(
                    "invalid stage id {:?} (letters, digits, '_' and '-' only)",
                    stage.id
                ),
            ));
        }
        let timeout_ms = duration_ms(
            &format!("stages[{i}].timeout"),
            stage.timeout.as_ref(),
            &mut errors,
        );
        let retry = retry_policy(
            &format!("stages[{i}].retries"),
            stage.retries.as_ref(),
            &mut errors,
        );
        stages.push(StagePlan {
            id: stage.id.clone(),
            // The hyphenated spelling FlowMason writes (`http-request`) plans as the registered name.
            component: canonical_name(&stage.component_type),
            depends_on: stage.depends_on.clone(),
            config: stage
                .config
                .clone()
                .map(Value::Object)
                .unwrap_or(Value::Null),
            input_mapping: stage.input_mapping.clone(),
            timeout_ms,
            retry,
        });
    }
    check_templates(spec, &mut errors);

    // Literal values only: secret-sourced entries are resolved when a run starts and never enter the plan,
    // which the event log records; the plan keeps their references.
    let env = spec
        .env
        .iter()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let mut env_from: Vec<EnvRef> = spec
        .env
        .iter()
        .enumerate()
        .filter_map(|(i, e)| env_ref(i, e))
        .collect();
    // LLM stages get the providers as an input field; the API keys travel as env references.
    if let Some(providers) = &spec.providers {
        let (key_refs, field) = plan_providers(providers);
        env_from.extend(key_refs);
        for stage in stages
            .iter_mut()
            .filter(|s| LLM_COMPONENTS.contains(&s.component.as_str()))
        {
            stage
                .input_mapping
                .entry(PROVIDERS_FIELD.to_string())
                .or_insert_with(|| field.clone());
        }
    }
    let mut plan = PlanSpec {
        stages,
        parallelism,
        timeout_ms,
        retry,
        output_stage: spec.output_stage_id.clone(),
        env,
        env_from,
        output_schema: spec.output_schema.clone().map(serde_json::Value::Object),
    };
    keys_from_env(&mut plan);
    if let Err(plan_errors) = Plan::build(plan.clone()) {
        let from_source = spec.source.is_some();
        errors.extend(
            plan_errors
                .into_iter()
                // Stages may come from `source` (a ConfigMap) instead; that is resolved before planning.
                .filter(|e| !(from_source && matches!(e, PlanError::Empty)))
                .map(ValidationError::from),
        );
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// Every problem of a PipelineRun spec (on its own; the Pipeline it names is checked separately).
pub fn validate_run(run: &PipelineRunSpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if run.pipeline_ref.trim().is_empty() {
        errors.push(ValidationError::new(
            "pipelineRef",
            "required: the name of the Pipeline to run",
        ));
    }
    duration_ms("timeout", run.timeout.as_ref(), &mut errors);
    retry_policy("retries", run.retries.as_ref(), &mut errors);
    parallelism("parallelism", run.parallelism, &mut errors);
    check_env(&run.env, &mut errors);
    if let Some(rerun) = &run.rerun_of
        && rerun.run_id.parse::<flowmason_store::RunId>().is_err()
    {
        errors.push(ValidationError::new(
            "rerunOf.runId",
            format!("{:?} is not a run id", rerun.run_id),
        ));
    }
    errors
}

/// Applies a run's overrides to its pipeline's plan: the run's `timeout` replaces the pipeline's, its
/// `retries` replaces the pipeline's and every stage's own, its `parallelism` replaces the pipeline's,
/// and its `env` entries replace the pipeline's of the same name.
/// Nothing is changed when any override is invalid; the problems are returned instead.
pub fn apply_run_overrides(
    plan: &mut PlanSpec,
    run: &PipelineRunSpec,
) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    let timeout_ms = duration_ms("timeout", run.timeout.as_ref(), &mut errors);
    let retry = retry_policy("retries", run.retries.as_ref(), &mut errors);
    let parallelism = parallelism("parallelism", run.parallelism, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    if timeout_ms.is_some() {
        plan.timeout_ms = timeout_ms;
    }
    if let Some(retry) = retry {
        plan.retry = retry;
        for stage in &mut plan.stages {
            stage.retry = None;
        }
    }
    if let Some(p) = parallelism {
        plan.parallelism = p;
    }
    // Literal values go into the plan; secret- and ConfigMap-sourced entries as references, resolved when
    // the run starts. Either way the run's entry replaces the pipeline's of the same name.
    for (i, var) in run.env.iter().enumerate() {
        plan.env.remove(&var.name);
        plan.env_from.retain(|r| r.name != var.name);
        if let Some(value) = &var.value {
            plan.env.insert(var.name.clone(), value.clone());
        } else if let Some(r) = env_ref(i, var) {
            plan.env_from.push(r);
        }
    }
    keys_from_env(plan);
    Ok(())
}

/// The reference of an `env[i]` entry read `valueFrom` a Secret or ConfigMap key.
fn env_ref(i: usize, var: &EnvVarSpec) -> Option<EnvRef> {
    if var.value.is_some() {
        return None;
    }
    let from = var.value_from.as_ref()?;
    let (kind, selector, field) = match (&from.secret_key_ref, &from.config_map_key_ref) {
        (Some(s), _) => (EnvRefKind::Secret, s, "secretKeyRef"),
        (None, Some(c)) => (EnvRefKind::ConfigMap, c, "configMapKeyRef"),
        (None, None) => return None,
    };
    Some(EnvRef {
        name: var.name.clone(),
        kind,
        source: selector.name.clone(),
        key: selector.key.clone(),
        optional: selector.optional.unwrap_or(false),
        field: format!("env[{i}].valueFrom.{field}"),
    })
}

fn valid_id(id: &str) -> bool {
    id.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn duration_ms(
    field: &str,
    value: Option<&DurationSpec>,
    errors: &mut Vec<ValidationError>,
) -> Option<u64> {
    match value?.millis() {
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(ValidationError::new(field, e.to_string()));
            None
        }
    }
}

fn retry_policy(
    field: &str,
    value: Option<&RetrySpec>,
    errors: &mut Vec<ValidationError>,
) -> Option<RetryPolicy> {
    match value?.to_policy() {
        Ok(p) => Some(p),
        Err(problems) => {
            errors.extend(
                problems
                    .into_iter()
                    .map(|p| ValidationError::new(format!("{field}{}", p.field), p.message)),
            );
            None
        }
    }
}

fn parallelism(
    field: &str,
    value: Option<ParallelismSpec>,
    errors: &mut Vec<ValidationError>,
) -> Option<usize> {
    match value?.to_limit() {
        Ok(n) => Some(n),
        Err(message) => {
            errors.push(ValidationError::new(field, message));
            None
        }
    }
}

/// Checks of fields that do not shape the plan: schedule knobs, env, providers, triggers.
fn check_optional_fields(spec: &PipelineSpec, errors: &mut Vec<ValidationError>) {
    let non_negative = [
        ("startingDeadlineSeconds", spec.starting_deadline_seconds),
        (
            "successfulRunsHistoryLimit",
            spec.successful_runs_history_limit.map(i64::from),
        ),
        (
            "failedRunsHistoryLimit",
            spec.failed_runs_history_limit.map(i64::from),
        ),
    ];
    for (field, value) in non_negative {
        if let Some(v) = value
            && v < 0
        {
            errors.push(ValidationError::new(
                field,
                format!("must not be negative, got {v}"),
            ));
        }
    }
    if let Some(source) = &spec.source
        && source.name.trim().is_empty()
    {
        errors.push(ValidationError::new(
            "source.name",
            "required: the ConfigMap holding the pipeline",
        ));
    }
    check_env(&spec.env, errors);
    if let Some(providers) = &spec.providers
        && let Some(default) = &providers.default
        && !matches!(default.as_str(), "anthropic" | "openai")
    {
        errors.push(ValidationError::new(
            "providers.default",
            format!("unknown provider {default:?} (anthropic or openai)"),
        ));
    }
    if let Some(providers) = &spec.providers {
        for (name, provider) in [
            ("anthropic", &providers.anthropic),
            ("openai", &providers.openai),
        ] {
            if let Some(secret) = provider.as_ref().and_then(|p| p.secret_ref.as_ref())
                && (secret.name.trim().is_empty() || secret.key.trim().is_empty())
            {
                errors.push(ValidationError::new(
                    format!("providers.{name}.secretRef"),
                    "needs both name and key",
                ));
            }
        }
    }
    let has_provider = spec
        .providers
        .as_ref()
        .is_some_and(|p| p.anthropic.is_some() || p.openai.is_some())
        // The FlowMason documentation's way: the key in `env` under its conventional name.
        || spec.env.iter().any(|e| {
            crate::llm::providers::ProviderKind::ALL
                .iter()
                .any(|k| e.name == k.conventional_key_var() || e.name == k.base_url_var())
        });
    for (i, stage) in spec.stages.iter().enumerate() {
        let configured_by_hand = stage
            .config
            .as_ref()
            .is_some_and(|c| c.contains_key(PROVIDERS_FIELD))
            || stage.input_mapping.contains_key(PROVIDERS_FIELD);
        if LLM_COMPONENTS.contains(&canonical_name(&stage.component_type).as_str())
            && !has_provider
            && !configured_by_hand
        {
            errors.push(ValidationError::new(
                format!("stages[{i}].componentType"),
                format!(
                    "{} calls an LLM and no provider is set: set providers.anthropic or providers.openai in the pipeline or in its project's flowmason.json, or ANTHROPIC_API_KEY / OPENAI_API_KEY in env (for fm run, in its environment)",
                    stage.component_type
                ),
            ));
        }
    }
    if let Some(pubsub) = spec.triggers.as_ref().and_then(|t| t.pubsub.as_ref())
        && pubsub.topic.trim().is_empty()
    {
        errors.push(ValidationError::new(
            "triggers.pubsub.topic",
            "required: the NATS subject to listen on",
        ));
    }
}

fn check_env(env: &[EnvVarSpec], errors: &mut Vec<ValidationError>) {
    let mut seen = BTreeSet::new();
    for (i, var) in env.iter().enumerate() {
        if var.name.trim().is_empty() {
            errors.push(ValidationError::new(format!("env[{i}].name"), "required"));
        } else if !seen.insert(var.name.as_str()) {
            errors.push(ValidationError::new(
                format!("env[{i}].name"),
                format!("duplicate variable {:?}", var.name),
            ));
        }
        match (&var.value, &var.value_from) {
            (Some(_), Some(_)) => errors.push(ValidationError::new(
                format!("env[{i}]"),
                format!(
                    "variable {:?} has both value and valueFrom; set one",
                    var.name
                ),
            )),
            (None, Some(from)) => match (&from.secret_key_ref, &from.config_map_key_ref) {
                (None, None) => errors.push(ValidationError::new(
                    format!("env[{i}].valueFrom"),
                    "needs secretKeyRef or configMapKeyRef".to_string(),
                )),
                (Some(_), Some(_)) => errors.push(ValidationError::new(
                    format!("env[{i}].valueFrom"),
                    "set only one of secretKeyRef and configMapKeyRef".to_string(),
                )),
                _ => {}
            },
            _ => {}
        }
    }
}

/// Templates in `config` and `inputMapping` must be well formed and may only read stages that exist
/// and are upstream of the stage (otherwise their output cannot be there when the stage starts).
fn check_templates(spec: &PipelineSpec, errors: &mut Vec<ValidationError>) {
    use flowmason_actors::template::{Root, references_at};

    let ids: BTreeSet<&str> = spec.stages.iter().map(|s| s.id.as_str()).collect();
    let components: BTreeMap<&str, String> = spec
        .stages
        .iter()
        .map(|s| (s.id.as_str(), canonical_name(&s.component_type)))
        .collect();
    let mut checks = UpstreamChecks::default();
    for (i, stage) in spec.stages.iter().enumerate() {
        let mut values: Vec<(String, Value)> = Vec::new();
        if let Some(config) = &stage.config {
            values.push((format!("stages[{i}].config"), Value::Object(config.clone())));
        }
        if !stage.input_mapping.is_empty() {
            let mapping: serde_json::Map<String, Value> = stage
                .input_mapping
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            values.push((format!("stages[{i}].inputMapping"), Value::Object(mapping)));
        }
        for (field, value) in values {
            let refs = match references_at(&value, &field) {
                Ok(refs) => refs,
                Err(e) => {
                    let message = expression_problem(e.template())
                        .unwrap_or_else(|| strip_field(&e.to_string(), e.field()));
                    checks.fail(ValidationError::new(e.field(), message));
                    continue;
                }
            };
            let mut reported: BTreeMap<(String, String), ()> = BTreeMap::new();
            for r in refs {
                let Root::Upstream(target) = &r.root else {
                    continue;
                };
                if reported
                    .insert((r.field.clone(), target.clone()), ())
                    .is_some()
                {
                    continue;
                }
                if let (Some(read), Some(fields)) = (
                    r.path.first(),
                    components
                        .get(target.as_str())
                        .and_then(|c| output_fields(c)),
                ) && !fields.contains(&read.as_str())
                {
                    checks.fail(ValidationError::new(
                        r.field.clone(),
                        format!(
                            "template reads {read:?} of stage {target:?}, whose {} output has no such field (its fields: {})",
                            components[target.as_str()],
                            fields.join(", ")
                        ),
                    ));
                }
                match ids.get(target.as_str()) {
                    None => checks.fail(ValidationError::new(
                        r.field.clone(),
                        format!("template references unknown stage {target:?}"),
                    )),
                    Some(&target_id) => checks.unless_upstream(
                        (target_id, stage.id.as_str()),
                        ValidationError::new(
                            r.field.clone(),
                            format!(
                                "template references stage {target:?}, which is not upstream of {:?} (add it to dependsOn)",
                                stage.id
                            ),
                        ),
                    ),
                }
            }
        }
    }
    checks.resolve(&spec.stages, errors);
}

/// The top-level inputs the stages' templates read (`{{input.topic}}`), each with the first field that
/// reads it.
fn input_reads(spec: &PipelineSpec) -> Vec<(String, String)> {
    use flowmason_actors::template::{Root, references_at};
    let mut reads: BTreeMap<String, String> = BTreeMap::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let Some(config) = &stage.config else {
            continue;
        };
        let field = format!("stages[{i}].config");
        let Ok(refs) = references_at(&Value::Object(config.clone()), &field) else {
            continue;
        };
        for r in refs {
            if let (Root::Input, Some(key)) = (&r.root, r.path.first()) {
                reads.entry(key.clone()).or_insert(r.field.clone());
            }
        }
    }
    reads.into_iter().map(|(key, field)| (field, key)).collect()
}

/// What is wrong with a template that holds an expression (a call such as `len(input.x)` or `now()`,
/// an operator, a conditional) rather than a path: FlowMason's templates hold such expressions, which its
/// engine cannot evaluate either. `None` for a template that is a malformed path.
fn expression_problem(template: &str) -> Option<String> {
    let inner = template
        .trim()
        .strip_prefix("{{")
        .and_then(|t| t.strip_suffix("}}"))
        .unwrap_or(template)
        .trim();
    let call = inner.find('(').filter(|&i| {
        inner[..i]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    let what = if call.is_some() {
        "a function call"
    } else if inner.contains(' ') {
        "an expression"
    } else {
        return None;
    };
    Some(format!(
        "template {template} is {what}, not a template: templates are paths only ({{{{input.<field>}}}}, \
         {{{{upstream.<stage>.<field>}}}}, {{{{env.<NAME>}}}}, {{{{context.<field>}}}}, with .field and [index] steps); \
         compute values in a json_transform stage (jq or JMESPath) or an expression-taking component"
    ))
}

/// A template error's message without its leading "field: ", which `ValidationError` carries separately.
fn strip_field(text: &str, field: &str) -> String {
    text.strip_prefix(field)
        .and_then(|t| t.strip_prefix(": "))
        .unwrap_or(text)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::{
        EnvVarSource, KeySelector, ProvidersSpec, TriggersSpec, WebhookTrigger,
    };
    use crate::model::policy::RetryPolicySpec;
    use flowmason_store::ErrorClass;
    use serde_json::json;

    fn known(name: &str) -> bool {
        matches!(
            name,
            "http_request" | "json_transform" | "generator" | "noop"
        )
    }

    fn stage(id: &str, component: &str, deps: &[&str]) -> StageSpec {
        StageSpec {
            id: id.into(),
            component_type: component.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..StageSpec::default()
        }
    }

    fn spec(stages: Vec<StageSpec>) -> PipelineSpec {
        PipelineSpec {
            stages,
            ..PipelineSpec::default()
        }
    }

    fn messages(errors: &[ValidationError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_llm_stage_may_take_its_key_from_the_conventional_env_var() {
        let mut s = spec(vec![stage("draft", "generator", &[])]);
        let problems = messages(&validate(&s, &known));
        assert!(
            problems.iter().any(|p| p.contains("calls an LLM")),
            "{problems:?}"
        );
        s.env = vec![EnvVarSpec {
            name: "ANTHROPIC_API_KEY".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(KeySelector {
                    name: "llm-secrets".into(),
                    key: "anthropic-key".into(),
                    optional: None,
                }),
                config_map_key_ref: None,
            }),
        }];
        assert_eq!(messages(&validate(&s, &known)), Vec::<String>::new());
        let plan = to_plan(&s).expect("plan");
        assert_eq!(
            plan.stages[0].input_mapping[PROVIDERS_FIELD],
            json!({"anthropic": {"apiKey": "{{env.ANTHROPIC_API_KEY}}"}})
        );
    }

    #[test]
    fn a_broken_output_schema_is_a_problem_of_the_pipeline_and_a_valid_one_is_planned() {
        let spec: PipelineSpec = serde_json::from_value(serde_json::json!({
            "stages": [{"id": "a", "componentType": "noop"}],
            "outputSchema": {"type": 5}
        }))
        .expect("spec");
        let problems = validate(&spec, &|_| true);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "outputSchema");
        let spec: PipelineSpec = serde_json::from_value(serde_json::json!({
            "stages": [{"id": "a", "componentType": "noop"}],
            "outputSchema": {"type": "object"}
        }))
        .expect("spec");
        let plan = to_plan(&spec).expect("plan");
        assert_eq!(
            plan.output_schema,
            Some(serde_json::json!({"type": "object"}))
        );
    }

    #[test]
    fn flowmason_defects_are_named_expressions_missing_output_fields_and_example_inputs() {
        let mut write = stage("write", "generator", &[]);
        write.config = serde_json::json!({"prompt": "{{len(input.items)}} at {{input.when}}"})
            .as_object()
            .cloned();
        let mut polish = stage("polish", "improver", &["write"]);
        polish.config = serde_json::json!({"content": "{{upstream.write.text}}", "feedback": "f"})
            .as_object()
            .cloned();
        let mut s = spec(vec![write, polish]);
        s.input_schema = serde_json::json!({"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array"}, "when": {"type": "string"}}})
        .as_object()
        .cloned();
        s.sample_input = Some(serde_json::json!({"topic": "x"}));
        let problems = messages(&validate(&s, &known));
        for expected in [
            "stages[0].config.prompt: template {{len(input.items)}} is a function call, not a template",
            "stages[1].config.content: template reads \"text\" of stage \"write\", whose generator output has no such field (its fields: content, tokens_used, finish_reason, model, usage)",
            "sampleInput: the example input does not satisfy inputSchema: \"items\" is a required property",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected} not in {problems:?}"
            );
        }
        let mut write = stage("write", "generator", &[]);
        write.config = serde_json::json!({"prompt": "at {{input.when}}"})
            .as_object()
            .cloned();
        let mut s2 = spec(vec![write]);
        s2.input_schema = s.input_schema.clone();
        s2.sample_input = Some(serde_json::json!({"items": []}));
        assert!(
            messages(&validate(&s2, &known)).iter().any(|p| p
                == "sampleInput: the example input lacks \"when\", which stages[0].config.prompt reads (and inputSchema gives it no default)"),
        );
    }

    #[test]
    fn a_broken_input_schema_is_a_problem_of_the_pipeline() {
        let mut spec: PipelineSpec = serde_json::from_value(serde_json::json!({
            "stages": [{"id": "a", "componentType": "noop"}],
            "inputSchema": {"type": "no-such-type"}
        }))
        .expect("spec");
        let problems = validate(&spec, &|_| true);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "inputSchema");
        spec.input_schema = serde_json::json!({"type": "object"}).as_object().cloned();
        assert!(validate(&spec, &|_| true).is_empty());
    }

    #[test]
    fn valid_spec_has_no_errors() {
        let mut process = stage("process", "json_transform", &["fetch"]);
        process
            .input_mapping
            .insert("data".into(), json!("{{upstream.fetch.body}}"));
        let s = spec(vec![stage("fetch", "http_request", &[]), process]);
        assert_eq!(validate(&s, &known), vec![]);
    }

    #[test]
    fn a_duplicate_stage_id_is_reported_once_without_guessing_which_stage_a_template_means() {
        let mut second = stage("x", "noop", &["y"]);
        second.config = json!({"v": "{{upstream.y.z}}"}).as_object().cloned();
        let s = spec(vec![
            stage("y", "noop", &[]),
            stage("x", "noop", &[]),
            second,
        ]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec!["stages[2].id: duplicate stage id \"x\""]
        );
    }

    #[test]
    fn stage_ids_yaml_1_1_reads_as_booleans_are_warned_about() {
        let s = spec(vec![
            stage("On", "noop", &[]),
            stage("y", "noop", &[]),
            stage("only", "noop", &[]),
        ]);
        let fields: Vec<String> = warnings(&s).into_iter().map(|w| w.field).collect();
        assert_eq!(fields, ["stages[0].id", "stages[1].id"]);
        assert!(validate(&s, &known).is_empty());
    }

    #[test]
    fn duplicate_ids() {
        let s = spec(vec![
            stage("fetch", "noop", &[]),
            stage("b", "noop", &[]),
            stage("fetch", "noop", &[]),
        ]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec!["stages[2].id: duplicate stage id \"fetch\""]
        );
    }

    #[test]
    fn unknown_dependency() {
        let s = spec(vec![stage("a", "noop", &["x"])]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec!["stages[0].dependsOn: stage \"a\" depends on unknown stage \"x\""]
        );
    }

    #[test]
    fn cycle_names_its_stages() {
        let s = spec(vec![stage("a", "noop", &["b"]), stage("b", "noop", &["a"])]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec!["stages: dependency cycle a -> b -> a"]
        );
    }

    #[test]
    fn unknown_component_lists_known_ones_or_suggests() {
        // FlowMason's hyphenated spelling is the registered component, whose config is checked.
        let mut d = stage("d", "json-transform", &[]);
        d.config = serde_json::json!({"data": {"x": 1}}).as_object().cloned();
        let s = spec(vec![
            stage("a", "htp", &[]),
            stage("b", "HTTP-Request", &[]),
            stage("c", "", &[]),
            d,
        ]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "stages[0].componentType: unknown component \"htp\" (known components include http_request, json_transform, generator, noop)",
                "stages[1].componentType: unknown component \"HTTP-Request\" (did you mean \"http_request\"?)",
                "stages[2].componentType: required (stage \"c\")",
            ]
        );
    }

    #[test]
    fn bad_stage_ids() {
        let s = spec(vec![stage("", "noop", &[]), stage("a.b", "noop", &[])]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "stages[0].id: required",
                "stages[1].id: invalid stage id \"a.b\" (letters, digits, '_' and '-' only)"
            ]
        );
    }

    #[test]
    fn bad_durations() {
        let mut s = spec(vec![stage("a", "noop", &[])]);
        s.timeout = Some(DurationSpec::Text("5 minutes".into()));
        s.stages[0].timeout = Some(DurationSpec::Seconds(-3));
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "timeout: invalid duration \"5 minutes\": expected a number followed by a unit (ms, s, m, h, d), e.g. \"90s\" or \"1h30m\"",
                "stages[0].timeout: invalid duration -3: must not be negative",
            ]
        );
    }

    #[test]
    fn parallelism_below_one() {
        let mut s = spec(vec![stage("a", "noop", &[])]);
        s.parallelism = Some(ParallelismSpec::Count(0));
        assert_eq!(
            messages(&validate(&s, &known)),
            vec!["parallelism: must be at least 1, got 0"]
        );
    }

    #[test]
    fn negative_retries() {
        let mut s = spec(vec![stage("a", "noop", &[])]);
        s.retries = Some(RetrySpec::Count(-1));
        s.stages[0].retries = Some(RetrySpec::Policy(RetryPolicySpec {
            limit: Some(-2),
            ..Default::default()
        }));
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "retries: must not be negative, got -1",
                "stages[0].retries.limit: must not be negative, got -2"
            ]
        );
    }

    #[test]
    fn unknown_output_stage_and_empty_pipeline() {
        let mut s = spec(vec![]);
        s.output_stage_id = Some("out".into());
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "stages: a pipeline needs at least one stage",
                "outputStageId: unknown stage \"out\""
            ]
        );
    }

    #[test]
    fn optional_field_checks() {
        let mut s = spec(vec![stage("a", "noop", &[])]);
        s.starting_deadline_seconds = Some(-1);
        s.env = vec![
            EnvVarSpec {
                name: "A".into(),
                value: Some("1".into()),
                value_from: Some(EnvVarSource::default()),
            },
            EnvVarSpec {
                name: "A".into(),
                value: None,
                value_from: Some(EnvVarSource::default()),
            },
            EnvVarSpec {
                name: "".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(KeySelector {
                        name: "s".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    config_map_key_ref: Some(KeySelector {
                        name: "c".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                }),
            },
        ];
        s.providers = Some(ProvidersSpec {
            default: Some("gemini".into()),
            ..Default::default()
        });
        s.triggers = Some(TriggersSpec {
            webhook: Some(WebhookTrigger {
                path: Some("hooks".into()),
                ..Default::default()
            }),
            pubsub: None,
        });
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "startingDeadlineSeconds: must not be negative, got -1",
                "env[0]: variable \"A\" has both value and valueFrom; set one",
                "env[1].name: duplicate variable \"A\"",
                "env[1].valueFrom: needs secretKeyRef or configMapKeyRef",
                "env[2].name: required",
                "env[2].valueFrom: set only one of secretKeyRef and configMapKeyRef",
                "providers.default: unknown provider \"gemini\" (anthropic or openai)",
                "triggers.webhook.path: \"hooks\" must start with \"/webhooks/\" and name a path below it",
            ]
        );
    }

    #[test]
    fn a_schedule_or_time_zone_the_cron_trigger_cannot_use_is_refused() {
        let mut s = spec(vec![stage("a", "noop", &[])]);
        for (schedule, zone, want) in [
            (
                "61 * * * *",
                None,
                "schedule: \"61 * * * *\" is not a cron expression",
            ),
            (
                "* * * *",
                None,
                "schedule: \"* * * *\" is not a cron expression",
            ),
            (
                "@daily",
                Some("Mars/Olympus_Mons"),
                "timeZone: \"Mars/Olympus_Mons\" is not",
            ),
        ] {
            s.schedule = Some(schedule.into());
            s.time_zone = zone.map(String::from);
            let found = messages(&validate(&s, &known));
            assert!(
                found.len() == 1 && found[0].starts_with(want),
                "{schedule}: {found:?}"
            );
        }
        s.schedule = Some("*/5 * * * *".into());
        s.time_zone = Some("Europe/Berlin".into());
        assert!(validate(&s, &known).is_empty());
    }

    #[test]
    fn templates_must_reference_upstream_stages() {
        let mut a = stage("a", "noop", &[]);
        a.config = Some(
            json!({"x": "{{upstream.b.out}}"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let mut b = stage("b", "noop", &["a"]);
        b.input_mapping.insert(
            "y".into(),
            json!("{{upstream.a.out}} and {{upstream.ghost.v}}"),
        );
        let s = spec(vec![a, b]);
        assert_eq!(
            messages(&validate(&s, &known)),
            vec![
                "stages[0].config.x: template references stage \"b\", which is not upstream of \"a\" (add it to dependsOn)",
                "stages[1].inputMapping.y: template references unknown stage \"ghost\"",
            ]
        );
    }

    #[test]
    fn stages_named_by_control_flow_must_be_downstream() {
        let mut each = stage("each", "foreach", &[]);
        each.config = Some(
            serde_json::json!({"items": [], "loop_stages": ["body", "stray", "ghost"]})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let errors = validate(
            &spec(vec![
                each,
                stage("body", "noop", &["each"]),
                stage("stray", "noop", &[]),
            ]),
            &known,
        );
        let owned: Vec<String> = messages(&errors)
            .into_iter()
            .filter(|m| m.contains("loop_stages"))
            .collect();
        assert_eq!(
            owned,
            [
                "stages[0].config.loop_stages: stage \"stray\" must depend on \"each\" (dependsOn, directly or through other stages), or it would not wait for \"foreach\"",
                "stages[0].config.loop_stages: stage \"each\" names unknown stage \"ghost\"",
            ]
        );
    }

    #[test]
    fn malformed_template_is_reported() {
        let mut a = stage("a", "noop", &[]);
        a.config = Some(
            json!({"x": "{{input.a"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let errors = validate(&spec(vec![a]), &known);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "stages[0].config.x");
    }

    #[test]
    fn run_spec_needs_pipeline_ref() {
        let run = PipelineRunSpec {
            timeout: Some(DurationSpec::Text("x".into())),
            ..Default::default()
        };
        assert_eq!(
            messages(&validate_run(&run)),
            vec![
                "pipelineRef: required: the name of the Pipeline to run",
                "timeout: invalid duration \"x\": expected a number followed by a unit (ms, s, m, h, d), e.g. \"90s\" or \"1h30m\"",
            ]
        );
    }

    #[test]
    fn rerun_of_needs_a_run_id() {
        let mut run = PipelineRunSpec {
            pipeline_ref: "p".into(),
            rerun_of: Some(crate::model::RerunOf {
                run_id: "nope".into(),
                from_failed: true,
            }),
            ..Default::default()
        };
        assert_eq!(
            messages(&validate_run(&run)),
            vec!["rerunOf.runId: \"nope\" is not a run id"]
        );
        if let Some(r) = run.rerun_of.as_mut() {
            r.run_id = uuid::Uuid::now_v7().to_string();
        }
        assert!(validate_run(&run).is_empty());
    }

    #[test]
    fn to_plan_converts_everything() {
        let mut fetch = stage("fetch", "http_request", &[]);
        fetch.config = Some(
            json!({"url": "https://x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        fetch.timeout = Some(DurationSpec::Text("30s".into()));
        fetch.retries = Some(RetrySpec::Count(5));
        let mut process = stage("process", "json_transform", &["fetch"]);
        process
            .input_mapping
            .insert("data".into(), json!("{{upstream.fetch.body}}"));
        let mut s = spec(vec![fetch, process]);
        s.timeout = Some(DurationSpec::Seconds(300));
        s.retries = Some(RetrySpec::Policy(RetryPolicySpec {
            limit: Some(2),
            backoff: None,
            retry_on: vec!["transient".into()],
        }));
        s.output_stage_id = Some("process".into());
        let plan = to_plan(&s).expect("plan");
        assert_eq!(plan.parallelism, DEFAULT_PARALLELISM);
        assert_eq!(plan.timeout_ms, Some(300_000));
        assert_eq!(plan.retry.limit, 2);
        assert_eq!(plan.retry.retry_on, vec![ErrorClass::Transient]);
        assert_eq!(plan.output_stage.as_deref(), Some("process"));
        assert_eq!(plan.stages[0].component, "http_request");
        assert_eq!(plan.stages[0].config, json!({"url": "https://x"}));
        assert_eq!(plan.stages[0].timeout_ms, Some(30_000));
        assert_eq!(plan.stages[0].retry.as_ref().map(|r| r.limit), Some(5));
        assert_eq!(plan.stages[1].depends_on, vec!["fetch".to_string()]);
        assert_eq!(plan.stages[1].config, Value::Null);
        assert_eq!(
            plan.stages[1].input_mapping["data"],
            json!("{{upstream.fetch.body}}")
        );
        assert!(Plan::build(plan).is_ok());
    }

    #[test]
    fn run_overrides_replace_pipeline_values() {
        let mut s = spec(vec![stage("a", "noop", &[])]);
        s.stages[0].retries = Some(RetrySpec::Count(1));
        s.parallelism = Some(ParallelismSpec::Count(3));
        s.env = vec![
            EnvVarSpec {
                name: "A".into(),
                value: Some("pipeline".into()),
                value_from: None,
            },
            EnvVarSpec {
                name: "B".into(),
                value: Some("kept".into()),
                value_from: None,
            },
        ];
        let mut plan = to_plan(&s).expect("plan");
        assert_eq!(plan.env.get("A").map(String::as_str), Some("pipeline"));
        let run = PipelineRunSpec {
            pipeline_ref: "p".into(),
            env: vec![EnvVarSpec {
                name: "A".into(),
                value: Some("run".into()),
                value_from: None,
            }],
            timeout: Some(DurationSpec::Text("1m".into())),
            retries: Some(RetrySpec::Count(4)),
            parallelism: Some(ParallelismSpec::Enabled(false)),
            ..Default::default()
        };
        apply_run_overrides(&mut plan, &run).expect("valid overrides");
        assert_eq!(plan.timeout_ms, Some(60_000));
        assert_eq!(plan.retry.limit, 4);
        assert_eq!(plan.stages[0].retry, None);
        assert_eq!(plan.parallelism, 1);
        assert_eq!(plan.env.get("A").map(String::as_str), Some("run"));
        assert_eq!(plan.env.get("B").map(String::as_str), Some("kept"));

        let before = plan.clone();
        let bad = PipelineRunSpec {
            parallelism: Some(ParallelismSpec::Count(0)),
            ..run
        };
        assert_eq!(
            apply_run_overrides(&mut plan, &bad).map_err(|e| messages(&e)),
            Err(vec!["parallelism: must be at least 1, got 0".to_string()])
        );
        assert_eq!(plan, before);
    }
}

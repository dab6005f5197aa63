//! Pure planning functions of the controllers: what a Pipeline resolves to, which cluster objects it and
//! a run need, what a run's plan, environment and inputs are, and the run's engine id. No API calls here:
//! the controllers fetch the objects these functions name ([`references`]) and pass them in as a
//! [`ClusterObjects`] snapshot, so every decision is unit-tested without an API server.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use flowmason_actors::PlanSpec;
use flowmason_store::{RunId, RunSummary};

use crate::model::validate::ValidationReport;
use crate::model::vocabulary::CANCEL_ANNOTATION;
use crate::model::{
    EnvVarSpec, Pipeline, PipelineRun, PipelineSpec, ValidationError, apply_run_overrides,
    load_pipeline_str, to_plan, validate,
};

/// The key of a `spec.source` ConfigMap read when `source.key` is not given.
pub const DEFAULT_SOURCE_KEY: &str = "pipeline.json";

/// Kind of a referenced cluster object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

/// A ConfigMap or Secret a Pipeline or a run reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: RefKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RefKind::ConfigMap => "ConfigMap",
            RefKind::Secret => "Secret",
        };
        write!(f, "{kind} {}/{}", self.namespace, self.name)
    }
}

/// The data of the referenced objects that exist (Secret values decoded to text); an absent entry is a
/// missing object.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub objects: BTreeMap<ObjectRef, BTreeMap<String, String>>,
}

impl ClusterObjects {
    fn key(&self, r: &ObjectRef, key: &str) -> Result<&str, Problem> {
        let data = self
            .objects
            .get(r)
            .ok_or_else(|| Problem::missing(r, None))?;
        data.get(key)
            .map(String::as_str)
            .ok_or_else(|| Problem::missing(r, Some(key)))
    }
}

/// Why a Pipeline is not ready or a run cannot start: a reason (CamelCase, for conditions) and a
/// message naming the field or object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn missing(r: &ObjectRef, key: Option<&str>) -> Problem {
        Problem {
            reason: "MissingReference",
            message: match key {
                None => format!("{r} not found"),
                Some(key) => format!("{r} has no key {key:?}"),
            },
        }
    }

    fn invalid(origin: &str, errors: &[ValidationError]) -> Problem {
        Problem {
            reason: "InvalidSpec",
            message: format!("{origin}{}", ValidationReport(errors)).replace('\n', "; "),
        }
    }
}

fn namespace_of(pipeline: &Pipeline) -> String {
    pipeline
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// The `spec.source` ConfigMap of a Pipeline and the key holding the definition.
pub fn source_ref(pipeline: &Pipeline) -> Option<(ObjectRef, String)> {
    let source = pipeline.spec.source.as_ref()?;
    Some((
        ObjectRef {
            kind: RefKind::ConfigMap,
            namespace: source
                .namespace
                .clone()
                .unwrap_or_else(|| namespace_of(pipeline)),
            name: source.name.clone(),
        },
        source
            .key
            .clone()
            .unwrap_or_else(|| DEFAULT_SOURCE_KEY.to_string()),
    ))
}

fn env_refs(namespace: &str, env: &[EnvVarSpec], out: &mut BTreeSet<ObjectRef>) {
    for var in env {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(s) = &from.secret_key_ref {
            out.insert(ObjectRef {
                kind: RefKind::Secret,
                namespace: namespace.into(),
                name: s.name.clone(),
            });
        }
        if let Some(c) = &from.config_map_key_ref {
            out.insert(ObjectRef {
                kind: RefKind::ConfigMap,
                namespace: namespace.into(),
                name: c.name.clone(),
            });
        }
    }
}

/// Every ConfigMap and Secret a Pipeline reads (with its resolved spec, when `source` supplied it) and
/// a run of it reads: `source`, env `valueFrom`, provider `secretRef`, run `inputsFrom`.
pub fn references(
    pipeline: &Pipeline,
    spec: Option<&PipelineSpec>,
    run: Option<&PipelineRun>,
) -> BTreeSet<ObjectRef> {
    let namespace = namespace_of(pipeline);
    let mut out = BTreeSet::new();
    if let Some((r, _)) = source_ref(pipeline) {
        out.insert(r);
    }
    let spec = spec.unwrap_or(&pipeline.spec);
    env_refs(&namespace, &spec.env, &mut out);
    if let Some(providers) = &spec.providers {
        for p in [&providers.anthropic, &providers.openai]
            .into_iter()
            .flatten()
        {
            if let Some(s) = &p.secret_ref {
                out.insert(ObjectRef {
                    kind: RefKind::Secret,
                    namespace: namespace.clone(),
                    name: s.name.clone(),
                });
            }
        }
    }
    if let Some(run) = run {
        env_refs(&namespace, &run.spec.env, &mut out);
        for reference in run.spec.inputs_from.iter().flat_map(|m| m.values()) {
            if let Ok((kind, name, _)) = parse_input_ref(reference) {
                out.insert(ObjectRef {
                    kind,
                    namespace: namespace.clone(),
                    name: name.into(),
                });
            }
        }
    }
    out
}

/// The Pipeline's effective spec: its own, or the definition in its `source` ConfigMap (any format `fm
/// run` reads). Fields set on the Pipeline itself (`env`, `providers`, `timeout`, `retries`,
/// `parallelism`, `schedule`) override the loaded ones, so a shared definition can be tuned per cluster.
pub fn resolve_spec(
    pipeline: &Pipeline,
    objects: &ClusterObjects,
) -> Result<PipelineSpec, Problem> {
    let Some((r, key)) = source_ref(pipeline) else {
        return Ok(pipeline.spec.clone());
    };
    if !pipeline.spec.stages.is_empty() {
        return Ok(pipeline.spec.clone());
    }
    let text = objects.key(&r, &key)?;
    let loaded = load_pipeline_str(text, &format!("{r} key {key}")).map_err(|e| Problem {
        reason: "InvalidSource",
        message: e.to_string(),
    })?;
    let own = &pipeline.spec;
    let mut spec = loaded.spec;
    spec.source = None;
    if !own.env.is_empty() {
        spec.env = own.env.clone();
    }
    if own.providers.is_some() {
        spec.providers = own.providers.clone();
    }
    if own.timeout.is_some() {
        spec.timeout = own.timeout.clone();
    }
    if own.retries.is_some() {
        spec.retries = own.retries.clone();
    }
    if own.parallelism.is_some() {
        spec.parallelism = own.parallelism;
    }
    if own.schedule.is_some() {
        spec.schedule = own.schedule.clone();
    }
    if spec.sample_input.is_none() {
        spec.sample_input = loaded.sample_input;
    }
    Ok(spec)
}

/// Validates a resolved spec and builds its plan.
pub fn plan_pipeline(
    spec: &PipelineSpec,
    known_components: &dyn Fn(&str) -> bool,
) -> Result<PlanSpec, Problem> {
    let problems = validate(spec, known_components);
    if !problems.is_empty() {
        return Err(Problem::invalid("", &problems));
    }
    crate::model::resources::demand(spec.resources.as_ref()).map_err(|message| Problem {
        reason: "InvalidSpec",
        message,
    })?;
    to_plan(spec).map_err(|e| Problem::invalid("", &e))
}

/// A run's environment as resolved before its start, to check that every reference exists: values by name,
/// and the values that came from Secrets (for the engine to mask). The engine resolves it again itself
/// (`flowmason_actors::ResolvedEnv`) at start and on resume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckedEnv {
    pub values: BTreeMap<String, String>,
    pub secrets: Vec<String>,
}

fn resolve_vars(
    namespace: &str,
    field: &str,
    env: &[EnvVarSpec],
    objects: &ClusterObjects,
    out: &mut CheckedEnv,
) -> Result<(), Problem> {
    for (i, var) in env.iter().enumerate() {
        if let Some(value) = &var.value {
            out.values.insert(var.name.clone(), value.clone());
            continue;
        }
        let Some(from) = &var.value_from else {
            continue;
        };
        let (kind, sel) = match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(s), _) => (RefKind::Secret, s),
            (None, Some(c)) => (RefKind::ConfigMap, c),
            (None, None) => continue,
        };
        let r = ObjectRef {
            kind,
            namespace: namespace.into(),
            name: sel.name.clone(),
        };
        match objects.key(&r, &sel.key) {
            Ok(value) => {
                out.values.insert(var.name.clone(), value.to_string());
                if kind == RefKind::Secret {
                    out.secrets.push(value.to_string());
                }
            }
            Err(_) if sel.optional == Some(true) => {
                out.values.remove(&var.name);
            }
            Err(problem) => {
                return Err(Problem {
                    reason: problem.reason,
                    message: format!("{field}[{i}] ({}): {}", var.name, problem.message),
                });
            }
        }
    }
    Ok(())
}

/// The environment of a run: the Pipeline's `env`, then the run's (replacing by name), with `valueFrom`
/// read from `objects`, plus each provider's API key (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`) from its
/// `secretRef`. A missing object or key fails with the object named, unless the selector is `optional`.
pub fn resolve_env(
    namespace: &str,
    spec: &PipelineSpec,
    run_env: &[EnvVarSpec],
    objects: &ClusterObjects,
) -> Result<CheckedEnv, Problem> {
    let mut out = CheckedEnv::default();
    if let Some(providers) = &spec.providers {
        for (name, var, p) in [
            ("anthropic", "ANTHROPIC_API_KEY", &providers.anthropic),
            ("openai", "OPENAI_API_KEY", &providers.openai),
        ] {
            let Some(secret) = p.as_ref().and_then(|p| p.secret_ref.as_ref()) else {
                continue;
            };
            let r = ObjectRef {
                kind: RefKind::Secret,
                namespace: namespace.into(),
                name: secret.name.clone(),
            };
            let value = objects.key(&r, &secret.key).map_err(|p| Problem {
                reason: p.reason,
                message: format!("providers.{name}.secretRef: {}", p.message),
            })?;
            out.values.insert(var.into(), value.to_string());
            out.secrets.push(value.to_string());
        }
    }
    resolve_vars(namespace, "env", &spec.env, objects, &mut out)?;
    resolve_vars(namespace, "spec.env", run_env, objects, &mut out)?;
    Ok(out)
}

/// Splits an `inputsFrom` reference `configmap/<name>/<key>` or `secret/<name>/<key>`.
pub fn parse_input_ref(reference: &str) -> Result<(RefKind, &str, &str), String> {
    let mut parts = reference.splitn(3, '/');
    let kind = match parts.next().map(str::to_ascii_lowercase).as_deref() {
        Some("configmap") => RefKind::ConfigMap,
        Some("secret") => RefKind::Secret,
        _ => {
            return Err(format!(
                "{reference:?}: expected configmap/<name>/<key> or secret/<name>/<key>"
            ));
        }
    };
    match (parts.next(), parts.next()) {
        (Some(name), Some(key)) if !name.is_empty() && !key.is_empty() => Ok((kind, name, key)),
        _ => Err(format!(
            "{reference:?}: expected configmap/<name>/<key> or secret/<name>/<key>"
        )),
    }
}

/// The inputs of a run: `spec.inputs`, then each `inputsFrom` entry (its value parsed as JSON when it
/// is JSON), else the Pipeline's `sampleInput`, else `{}`.
pub fn resolve_inputs(
    namespace: &str,
    spec: &PipelineSpec,
    run: &PipelineRun,
    objects: &ClusterObjects,
) -> Result<Value, Problem> {
    let from = run.spec.inputs_from.clone().unwrap_or_default();
    if run.spec.inputs.is_none() && from.is_empty() {
        let sample = spec
            .sample_input
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()));
        return check_inputs(spec, sample);
    }
    let mut inputs = run.spec.inputs.clone().unwrap_or_default();
    for (name, reference) in &from {
        let (kind, object, key) = parse_input_ref(reference).map_err(|m| Problem {
            reason: "InvalidSpec",
            message: format!("spec.inputsFrom.{name}: {m}"),
        })?;
        let r = ObjectRef {
            kind,
            namespace: namespace.into(),
            name: object.into(),
        };
        let text = objects.key(&r, key).map_err(|p| Problem {
            reason: p.reason,
            message: format!("spec.inputsFrom.{name}: {}", p.message),
        })?;
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()));
        inputs.insert(name.clone(), value);
    }
    let inputs = Value::Object(inputs);
    check_inputs(spec, inputs)
}

/// The inputs with the `inputSchema`'s defaults for those missing, if they match it (no schema: any
/// inputs).
fn check_inputs(spec: &PipelineSpec, mut inputs: Value) -> Result<Value, Problem> {
    let Some(schema) = &spec.input_schema else {
        return Ok(inputs);
    };
    crate::model::input_schema::apply_defaults(schema, &mut inputs);
    let problems = crate::model::input_schema::check(schema, &inputs);
    if problems.is_empty() {
        Ok(inputs)
    } else {
        Err(Problem {
            reason: "InvalidInputs",
            message: problems.join("; "),
        })
    }
}

/// The run's plan: the Pipeline's plan with the run's overrides applied.
pub fn plan_run(mut plan: PlanSpec, run: &PipelineRun) -> Result<PlanSpec, Problem> {
    apply_run_overrides(&mut plan, &run.spec).map_err(|e| Problem::invalid("spec.", &e))?;
    Ok(plan)
}

/// The engine run id of a PipelineRun, derived from its `uid` and `creationTimestamp` alone, so that a
/// restarted operator (or a second replica) computes the same id and finds the run in the event log
/// instead of starting it again. It is a UUIDv7 (time-ordered like every engine run id) whose
/// timestamp is the creation time and whose remaining bits come from the uid.
pub fn run_id_for(uid: &str, created_ms: u64) -> RunId {
    // FNV-1a over the uid, twice with different seeds, gives the 80 bits a v7 id leaves free.
    let hash = |seed: u64| {
        uid.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let a = hash(0xcbf2_9ce4_8422_2325).to_be_bytes();
    let b = hash(0x8422_2325_cbf2_9ce4).to_be_bytes();
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&a);
    bytes[8..].copy_from_slice(&b[..2]);
    uuid::Builder::from_unix_timestamp_millis(created_ms, &bytes).into_uuid()
}

/// The runs of the event log that no PipelineRun owns any more, so that nothing would ever end them:
/// unfinished, started for a PipelineRun (they carry its name; runs started by `fm run` on the same data
/// dir carry none and are left alone), and not the run of any PipelineRun that exists (`existing`: the
/// ids [`run_id_for`] derives for them). Happens when a PipelineRun's finalizer is removed by hand while
/// no operator runs.
pub fn orphaned_runs(unfinished: &[RunSummary], existing: &HashSet<RunId>) -> Vec<RunId> {
    unfinished
        .iter()
        .filter(|s| !s.phase.is_terminal() && s.run_name.is_some())
        .map(|s| s.run_id)
        .filter(|id| !existing.contains(id))
        .collect()
}

/// Whether a run was asked to stop: `spec.status: Cancelled`, or the annotation
/// `flowmason.io/cancel: "true"` that the original Python client sets.
pub fn cancel_requested(run: &PipelineRun) -> bool {
    run.spec.status == Some(crate::model::RequestedState::Cancelled)
        || run
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CANCEL_ANNOTATION))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ConfigMapSource, EnvVarSource, KeySelector, ProviderSpec, ProvidersSpec, SecretKeyRef,
    };
    use crate::operator::fixtures;
    use serde_json::json;

    fn summary(id: u128, run_name: Option<&str>, phase: flowmason_store::RunPhase) -> RunSummary {
        RunSummary {
            run_id: RunId::from_u128(id),
            pipeline: "p".into(),
            namespace: "default".into(),
            run_name: run_name.map(String::from),
            trigger: flowmason_store::Trigger::Manual,
            generation: 1,
            labels: Default::default(),
            phase,
            accepted_at: 0,
            started_at: None,
            finished_at: None,
            error: None,
            last_seq: 0,
        }
    }

    #[test]
    fn orphaned_runs_are_unfinished_pipelinerun_runs_whose_pipelinerun_is_gone() {
        use flowmason_store::RunPhase::{Running, Succeeded};
        let unfinished = [
            summary(1, Some("kept"), Running),
            summary(2, Some("deleted"), Running),
            summary(3, None, Running),
            summary(4, Some("ended-meanwhile"), Succeeded),
        ];
        let existing = HashSet::from([RunId::from_u128(1)]);
        assert_eq!(
            orphaned_runs(&unfinished, &existing),
            vec![RunId::from_u128(2)],
            "the run of an existing PipelineRun, a run without one (fm run) and an ended run stay"
        );
    }

    fn secret_var(name: &str, secret: &str, key: &str) -> EnvVarSpec {
        EnvVarSpec {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(KeySelector {
                    name: secret.into(),
                    key: key.into(),
                    optional: None,
                }),
                config_map_key_ref: None,
            }),
        }
    }

    type Entry<'a> = (RefKind, &'a str, &'a [(&'a str, &'a str)]);

    fn objects(entries: &[Entry]) -> ClusterObjects {
        ClusterObjects {
            objects: entries
                .iter()
                .map(|(kind, name, data)| {
                    (
                        ObjectRef {
                            kind: *kind,
                            namespace: "default".into(),
                            name: (*name).into(),
                        },
                        data.iter()
                            .map(|(k, v)| ((*k).into(), (*v).into()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn run_id_is_deterministic_and_time_ordered() {
        let a = run_id_for("6f1c0b5e-1111-4c1a-9f00-000000000001", 1_700_000_000_000);
        assert_eq!(
            a,
            run_id_for("6f1c0b5e-1111-4c1a-9f00-000000000001", 1_700_000_000_000)
        );
        assert_ne!(
            a,
            run_id_for("6f1c0b5e-1111-4c1a-9f00-000000000002", 1_700_000_000_000)
        );
        assert_eq!(a.get_version_num(), 7);
        assert!(run_id_for("x", 1_700_000_000_000) < run_id_for("x", 1_700_000_001_000));
    }

    #[test]
    fn env_reads_secrets_and_configmaps_and_remembers_secret_values() {
        let mut spec = fixtures::pipeline("p", &["a"]).spec;
        spec.env = vec![
            secret_var("TOKEN", "creds", "token"),
            EnvVarSpec {
                name: "PLAIN".into(),
                value: Some("v".into()),
                value_from: None,
            },
        ];
        let objs = objects(&[(RefKind::Secret, "creds", &[("token", "hunter2")])]);
        let env = resolve_env("default", &spec, &[], &objs).expect("env");
        assert_eq!(env.values.get("TOKEN").map(String::as_str), Some("hunter2"));
        assert_eq!(env.values.get("PLAIN").map(String::as_str), Some("v"));
        assert_eq!(env.secrets, ["hunter2"]);
    }

    #[test]
    fn missing_secret_or_key_is_named() {
        let mut spec = fixtures::pipeline("p", &["a"]).spec;
        spec.env = vec![secret_var("TOKEN", "creds", "token")];
        let err =
            resolve_env("default", &spec, &[], &ClusterObjects::default()).expect_err("missing");
        assert_eq!(err.reason, "MissingReference");
        assert_eq!(
            err.message,
            "env[0] (TOKEN): Secret default/creds not found"
        );
        let objs = objects(&[(RefKind::Secret, "creds", &[("other", "x")])]);
        let err = resolve_env("default", &spec, &[], &objs).expect_err("missing key");
        assert_eq!(
            err.message,
            "env[0] (TOKEN): Secret default/creds has no key \"token\""
        );
    }

    #[test]
    fn provider_secret_ref_becomes_api_key() {
        let mut spec = fixtures::pipeline("p", &["a"]).spec;
        spec.providers = Some(ProvidersSpec {
            default: None,
            anthropic: Some(ProviderSpec {
                model: None,
                secret_ref: Some(SecretKeyRef {
                    name: "llm".into(),
                    key: "k".into(),
                }),
                base_url: None,
            }),
            openai: None,
        });
        let err =
            resolve_env("default", &spec, &[], &ClusterObjects::default()).expect_err("missing");
        assert_eq!(
            err.message,
            "providers.anthropic.secretRef: Secret default/llm not found"
        );
        let objs = objects(&[(RefKind::Secret, "llm", &[("k", "sk-1")])]);
        let env = resolve_env("default", &spec, &[], &objs).expect("env");
        assert_eq!(
            env.values.get("ANTHROPIC_API_KEY").map(String::as_str),
            Some("sk-1")
        );
    }

    #[test]
    fn source_configmap_supplies_the_stages() {
        let mut pipeline = fixtures::pipeline("p", &[]);
        pipeline.spec.source = Some(ConfigMapSource {
            name: "def".into(),
            key: None,
            namespace: None,
        });
        let refs = references(&pipeline, None, None);
        assert!(refs.contains(&ObjectRef {
            kind: RefKind::ConfigMap,
            namespace: "default".into(),
            name: "def".into()
        }));
        let err = resolve_spec(&pipeline, &ClusterObjects::default()).expect_err("missing");
        assert_eq!(err.message, "ConfigMap default/def not found");
        let def = r#"{"name": "x", "stages": [{"id": "a", "component_type": "noop"}]}"#;
        let objs = objects(&[(RefKind::ConfigMap, "def", &[("pipeline.json", def)])]);
        let spec = resolve_spec(&pipeline, &objs).expect("spec");
        assert_eq!(spec.stages.len(), 1);
        assert_eq!(spec.stages[0].component_type, "noop");
    }

    #[test]
    fn invalid_pipeline_problem_names_the_field() {
        let mut spec = fixtures::pipeline("p", &["a", "a"]).spec;
        spec.stages[1].component_type = "nope".into();
        let err = plan_pipeline(&spec, &|c| c == "noop").expect_err("invalid");
        assert_eq!(err.reason, "InvalidSpec");
        assert!(
            err.message
                .contains("stages[1].componentType: unknown component \"nope\""),
            "{}",
            err.message
        );
        assert!(err.message.contains("duplicate"), "{}", err.message);
    }

    #[test]
    fn inputs_from_reads_objects_and_sample_input_is_the_default() {
        let pipeline = fixtures::pipeline("p", &["a"]);
        let mut spec = pipeline.spec.clone();
        spec.sample_input = Some(json!({"s": 1}));
        let mut run = fixtures::pipeline_run("r", "p");
        assert_eq!(
            resolve_inputs("default", &spec, &run, &ClusterObjects::default()).expect("inputs"),
            json!({"s": 1})
        );
        run.spec.inputs_from = Some([("n".to_string(), "configmap/cfg/n".to_string())].into());
        run.spec.inputs = Some(json!({"a": "b"}).as_object().cloned().unwrap_or_default());
        let objs = objects(&[(RefKind::ConfigMap, "cfg", &[("n", "42")])]);
        assert_eq!(
            resolve_inputs("default", &spec, &run, &objs).expect("inputs"),
            json!({"a": "b", "n": 42})
        );
        run.spec.inputs_from = Some([("n".to_string(), "bogus".to_string())].into());
        let err = resolve_inputs("default", &spec, &run, &objs).expect_err("bad ref");
        assert!(
            err.message.starts_with("spec.inputsFrom.n:"),
            "{}",
            err.message
        );
    }

    #[test]
    fn inputs_are_checked_against_the_input_schema_sample_input_too() {
        let mut spec = fixtures::pipeline("p", &["a"]).spec;
        spec.input_schema = json!({"type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string"}}})
        .as_object()
        .cloned();
        let mut run = fixtures::pipeline_run("r", "p");
        run.spec.inputs = json!({"name": 3}).as_object().cloned();
        let err = resolve_inputs("default", &spec, &run, &ClusterObjects::default())
            .expect_err("name is not a string");
        assert_eq!(err.reason, "InvalidInputs");
        assert!(
            err.message.starts_with("inputs.name: 3 is not of type"),
            "{}",
            err.message
        );
        run.spec.inputs = json!({"name": "Ada"}).as_object().cloned();
        assert!(resolve_inputs("default", &spec, &run, &ClusterObjects::default()).is_ok());
        run.spec.inputs = None;
        spec.sample_input = Some(json!({}));
        let err = resolve_inputs("default", &spec, &run, &ClusterObjects::default())
            .expect_err("the sample lacks name");
        assert!(
            err.message.contains("\"name\" is a required property"),
            "{}",
            err.message
        );
    }

    #[test]
    fn cancel_by_spec_or_annotation() {
        let mut run = fixtures::pipeline_run("r", "p");
        assert!(!cancel_requested(&run));
        run.spec.status = Some(crate::model::RequestedState::Cancelled);
        assert!(cancel_requested(&run));
        let mut run = fixtures::pipeline_run("r", "p");
        run.metadata.annotations =
            Some([(CANCEL_ANNOTATION.to_string(), "true".to_string())].into());
        assert!(cancel_requested(&run));
    }

    #[test]
    fn run_overrides_apply() {
        let spec = fixtures::pipeline("p", &["a"]).spec;
        let plan = plan_pipeline(&spec, &|c| c == "noop").expect("plan");
        let mut run = fixtures::pipeline_run("r", "p");
        run.spec.parallelism = Some(crate::model::ParallelismSpec::Enabled(false));
        assert_eq!(plan_run(plan, &run).expect("plan").parallelism, 1);
    }
}

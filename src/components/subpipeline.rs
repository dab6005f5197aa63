//! `subpipeline`: runs another pipeline, by reference, as one stage, as FlowMason's `subpipeline`.
//!
//! Input: `pipeline_id` (the pipeline's name: `metadata.name` or FlowMason `name`), `namespace`
//! (optional, default the run's), `input_data` (the subpipeline's run inputs, an object), `timeout_ms`
//! (default 60000), `on_error` (`propagate`, the default: fail this stage; `ignore`: succeed with
//! `result: null`; `default`: succeed with `result: default_result`), `default_result`. FlowMason's
//! `pipeline_version`, `inherit_context`, `isolated` and `wait_for_completion` are accepted and change
//! nothing (pipelines are resolved by name; the subpipeline always sees only `input_data` and the run's
//! environment); `async_execution: true` is refused (it would outlive this stage's attempt).
//!
//! The referenced pipeline is found by a [`PipelineResolver`] given to the component when the registry is
//! built (for `fm run`, `model::directory::DirectoryResolver`: the pipeline files next to the running
//! one). Its stages run in-process, inside this stage, in dependency order (`flowmason_actors::nested::run_plan`); its
//! output is its run output (`outputStageId`, the single sink, or an object of sinks). A pipeline that
//! (directly or not) calls itself is refused with the cycle named; nesting is limited to
//! [`MAX_DEPTH`] levels.
//!
//! Output: `{pipeline_id, run_id, status: "completed"|"failed"|"timeout", result, execution_time_ms,
//! error}`. Errors (with `on_error: propagate`): the subpipeline's failure (its class), `timeout`; and
//! always, class `config`: an unknown pipeline, a cycle, an invalid referenced pipeline, bad fields.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{
    Component, ComponentError, ComponentOutput, Plan, PlanSpec, RunView, StageContext, nested,
};
use flowmason_store::ErrorClass;

use super::{input_object, opt_bool, opt_str, static_config, type_name};

/// The component type name.
pub const NAME: &str = "subpipeline";

/// Most subpipelines running inside one another.
pub const MAX_DEPTH: usize = 16;

/// Finds a pipeline's plan by reference.
pub trait PipelineResolver: Send + Sync + 'static {
    /// The plan of pipeline `name` in `namespace`, or why there is none.
    fn resolve(&self, namespace: &str, name: &str) -> Result<PlanSpec, String>;
}

/// A resolver that knows no pipelines (the default of `builtin_registry`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPipelines;

impl PipelineResolver for NoPipelines {
    fn resolve(&self, _namespace: &str, name: &str) -> Result<PlanSpec, String> {
        Err(format!(
            "no pipeline {name:?}: no pipeline source is configured"
        ))
    }
}

/// See the module docs.
pub struct SubPipeline {
    resolver: Arc<dyn PipelineResolver>,
}

impl SubPipeline {
    pub fn new(resolver: Arc<dyn PipelineResolver>) -> Self {
        SubPipeline { resolver }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum OnError {
    Propagate,
    Ignore,
    Default,
}

fn on_error(map: &Map<String, Value>) -> Result<OnError, ComponentError> {
    match opt_str(NAME, map, "on_error")? {
        None | Some("propagate") => Ok(OnError::Propagate),
        Some("ignore") => Ok(OnError::Ignore),
        Some("default") => Ok(OnError::Default),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `on_error` must be \"propagate\", \"ignore\" or \"default\", got {other:?}"
        ))),
    }
}

fn check(map: &Map<String, Value>) -> Result<(), ComponentError> {
    on_error(map)?;
    if opt_bool(NAME, map, "async_execution", false)? {
        return Err(ComponentError::config(format!(
            "{NAME}: `async_execution: true` is not supported: a subpipeline runs inside its stage"
        )));
    }
    if let Some(v) = map.get("timeout_ms")
        && !v.is_null()
        && v.as_u64().is_none_or(|t| t == 0)
    {
        return Err(ComponentError::config(format!(
            "{NAME}: `timeout_ms` must be a positive integer, got {v}"
        )));
    }
    Ok(())
}

impl Component for SubPipeline {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        check(&statics)
    }

    fn runs_stages(&self) -> bool {
        true
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            check(&map)?;
            let name = opt_str(NAME, &map, "pipeline_id")?
                .ok_or_else(|| {
                    ComponentError::config(format!("{NAME}: `pipeline_id` is required"))
                })?
                .to_string();
            let namespace = opt_str(NAME, &map, "namespace")?
                .unwrap_or(&ctx.namespace)
                .to_string();
            let inputs = match map.remove("input_data") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(Value::Object(o)) => Value::Object(o),
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `input_data` must be an object, got {}",
                        type_name(&other)
                    )));
                }
            };
            let limit = Duration::from_millis(
                map.get("timeout_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(60_000),
            );
            let policy = on_error(&map)?;
            let view = ctx.run_view().cloned().ok_or_else(|| {
                ComponentError::internal(format!(
                    "{NAME}: the engine gave this stage no view of its run"
                ))
            })?;
            if view.call_stack.iter().any(|p| p == &name) {
                let mut cycle = view.call_stack.clone();
                cycle.push(name.clone());
                return Err(ComponentError::config(format!(
                    "{NAME}: pipeline cycle {}",
                    cycle.join(" -> ")
                )));
            }
            if view.call_stack.len() > MAX_DEPTH {
                return Err(ComponentError::config(format!(
                    "{NAME}: subpipelines nested deeper than {MAX_DEPTH} levels ({})",
                    view.call_stack.join(" -> ")
                )));
            }
            let spec = resolver.resolve(&namespace, &name).map_err(|e| {
                ComponentError::config(format!("{NAME}: `pipeline_id` {name:?}: {e}"))
            })?;
            let plan = Plan::build(spec).map_err(|problems| {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                ComponentError::config(format!(
                    "{NAME}: pipeline {name:?} is invalid: {}",
                    text.join("; ")
                ))
            })?;
            for index in 0..plan.len() {
                let stage = plan.stage(index);
                if !view.registry.contains(&stage.component) {
                    return Err(ComponentError::config(format!(
                        "{NAME}: pipeline {name:?}: stage {:?} has unknown componentType {:?}",
                        stage.id, stage.component
                    )));
                }
            }
            let mut env = plan.spec().env.clone();
            env.extend(view.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mut call_stack = view.call_stack.clone();
            call_stack.push(name.clone());
            let child = RunView {
                plan: Arc::new(plan),
                registry: view.registry.clone(),
                inputs: Arc::new(inputs),
                env: Arc::new(env),
                outputs: Arc::new(Default::default()),
                call_stack,
            };
            let started = Instant::now();
            let outcome = tokio::time::timeout(limit, nested::run_plan(&ctx, &child, &name)).await;
            let elapsed = started.elapsed().as_millis() as u64;
            let (status, result, error) = match outcome {
                Ok(Ok((output, _))) => ("completed", output, None),
                Ok(Err(e)) if e.error.class == ErrorClass::Cancelled => {
                    return Err(ComponentError::new(
                        ErrorClass::Cancelled,
                        format!("{NAME}: cancelled"),
                    ));
                }
                Ok(Err(e)) => {
                    let error = e.into_component_error(&format!("{NAME}: pipeline {name:?}"));
                    ("failed", Value::Null, Some(error))
                }
                Err(_) => (
                    "timeout",
                    Value::Null,
                    Some(ComponentError::new(
                        ErrorClass::Timeout,
                        format!(
                            "{NAME}: pipeline {name:?} timed out after {}ms",
                            limit.as_millis()
                        ),
                    )),
                ),
            };
            let (result, error) = match (error, policy) {
                (None, _) => (result, Value::Null),
                (Some(e), OnError::Propagate) => return Err(e),
                (Some(e), OnError::Ignore) => (Value::Null, Value::String(e.message)),
                (Some(e), OnError::Default) => (
                    map.remove("default_result").unwrap_or(Value::Null),
                    Value::String(e.message),
                ),
            };
            Ok(ComponentOutput::from(serde_json::json!({
                "pipeline_id": name,
                "run_id": ctx.idempotency_key(),
                "status": status,
                "result": result,
                "execution_time_ms": elapsed,
                "error": error,
            })))
        })
    }
}

//! Running stages of a plan inside another stage: the loop body of a `foreach`, the blocks of a `trycatch`,
//! the whole plan of a `subpipeline`.
//!
//! FlowMason's executor runs such stages inline, inside the stage that owns them, and keeps them out of the
//! ordinary DAG walk. We do the same: the owning component runs them here, one after another in the plan's
//! topological order, and names them in its `ComponentOutput::skip`, so that the run actor ends them
//! `Skipped` (`BranchNotTaken`) instead of running them a second time. They get no `StageStarted` events of
//! their own (they are part of the owning stage's attempt, whose events frame them); what they log is
//! recorded as `StageLog` lines of the owning stage, with the inner stage in `data.nestedStage`.
//!
//! A nested stage's templates see the run's inputs and environment, the outputs of the run's stages that
//! had succeeded when the owning attempt started, an `overlay` given by the owner (FlowMason's loop
//! variables, e.g. `{{upstream.<foreach>.current_item}}`), and the outputs of the nested stages that ran
//! before it in the same pass. A nested stage's `timeout` applies to each of its attempts and its retry
//! policy (the stage's `retries`, else the pipeline's) as for a DAG stage: a failed attempt is retried
//! in place, after the backoff, as a pass of its own (`<label>.retry<n>`, so its idempotency key differs);
//! the pass stops only when the stage has failed for good. The owning stage's retries then repeat the
//! whole pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use flowmason_store::ErrorClass;

use crate::attempt;
use crate::component::{ComponentError, ComponentOutput, RunView, StageContext};
use crate::plan::Plan;
use crate::template::{self, Scope};

/// What a pass over nested stages produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NestedOutcome {
    /// The output of every nested stage that ran, by stage id.
    pub outputs: BTreeMap<String, Value>,
    /// The output of the last stage that ran: FlowMason's result of a loop iteration.
    pub last: Option<Value>,
    /// Nested stages that did not run because a branching stage among them did not take their branch.
    pub skipped: Vec<String>,
}

/// A nested stage failed; the pass stopped there.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stage {stage:?}: {error}")]
pub struct NestedError {
    pub stage: String,
    pub error: ComponentError,
    /// The outputs of the stages that succeeded before the failure.
    pub outputs: BTreeMap<String, Value>,
}

impl NestedError {
    /// The error as the owning stage reports it: same class, message prefixed with `what` and the stage.
    pub fn into_component_error(self, what: &str) -> ComponentError {
        let details = serde_json::json!({
            "stage": self.stage,
            "error": self.error.message,
            "class": self.error.class,
            "details": self.error.details,
        });
        ComponentError::new(
            self.error.class,
            format!(
                "{what}: stage {:?} failed: {}",
                self.stage, self.error.message
            ),
        )
        .with_details(details)
    }
}

/// Runs `stages` (ids of `view.plan`) inside the stage of `ctx`, in the plan's topological order. `label`
/// tells passes apart in idempotency keys (`0`, `1`, ... for loop iterations; `try`, `catch`, `finally`).
/// `overlay` holds outputs that shadow the run's (`{{upstream.<id>}}`) for this pass only.
///
/// Stops at the first failure; cancelling `ctx.cancel` stops the running stage (class `Cancelled`).
pub async fn run_stages(
    ctx: &StageContext,
    view: &RunView,
    stages: &[String],
    label: &str,
    overlay: BTreeMap<String, Value>,
) -> Result<NestedOutcome, NestedError> {
    let wanted: BTreeSet<&str> = stages.iter().map(String::as_str).collect();
    let mut order = Vec::with_capacity(stages.len());
    for id in stages {
        if view.plan.index_of(id).is_none() {
            return Err(NestedError {
                stage: id.clone(),
                error: ComponentError::config(format!(
                    "{}: unknown stage {id:?} (not a stage of the pipeline)",
                    ctx.stage_id
                )),
                outputs: BTreeMap::new(),
            });
        }
    }
    for &index in view.plan.order() {
        if wanted.contains(view.plan.stage(index).id.as_str()) {
            order.push(index);
        }
    }
    run_indexes(ctx, view, &order, label, overlay).await
}

/// Runs every stage of `view.plan` in topological order, as a subpipeline does; the plan's run output
/// rule (`outputStage`, else the single sink, else an object of sinks) gives the returned value.
pub async fn run_plan(
    ctx: &StageContext,
    view: &RunView,
    label: &str,
) -> Result<(Value, NestedOutcome), NestedError> {
    let order = view.plan.order().to_vec();
    let outcome = run_indexes(ctx, view, &order, label, BTreeMap::new()).await?;
    let output = plan_output(&view.plan, &outcome.outputs);
    Ok((output, outcome))
}

/// The output of a finished plan, as the run actor computes a run's output.
pub fn plan_output(plan: &Plan, outputs: &BTreeMap<String, Value>) -> Value {
    if let Some(id) = &plan.spec().output_stage {
        return outputs.get(id).cloned().unwrap_or(Value::Null);
    }
    let sinks = plan.sinks();
    if let [only] = sinks.as_slice() {
        return outputs
            .get(&plan.stage(*only).id)
            .cloned()
            .unwrap_or(Value::Null);
    }
    let mut map = Map::new();
    for index in sinks {
        let id = &plan.stage(index).id;
        if let Some(output) = outputs.get(id) {
            map.insert(id.clone(), output.clone());
        }
    }
    Value::Object(map)
}

async fn run_indexes(
    ctx: &StageContext,
    view: &RunView,
    order: &[usize],
    label: &str,
    overlay: BTreeMap<String, Value>,
) -> Result<NestedOutcome, NestedError> {
    let mut outcome = NestedOutcome::default();
    // What `{{upstream...}}` sees: overlay and this pass's outputs shadow the run's snapshot.
    let mut local = overlay;
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    let in_pass: BTreeSet<usize> = order.iter().copied().collect();
    for &index in order {
        let stage = view.plan.stage(index);
        // A stage a branching stage of this pass excluded, or whose in-pass dependencies all were.
        let in_pass_deps: Vec<usize> = view
            .plan
            .dependencies(index)
            .iter()
            .copied()
            .filter(|d| in_pass.contains(d))
            .collect();
        let branch_skipped = skipped.contains(&stage.id)
            || (!in_pass_deps.is_empty()
                && in_pass_deps
                    .iter()
                    .all(|&d| skipped.contains(&view.plan.stage(d).id)));
        if branch_skipped {
            skipped.insert(stage.id.clone());
            outcome.skipped.push(stage.id.clone());
            continue;
        }
        let fail = |error: ComponentError, outputs: &BTreeMap<String, Value>| NestedError {
            stage: stage.id.clone(),
            error,
            outputs: outputs.clone(),
        };
        let Some(component) = view.registry.get(&stage.component) else {
            return Err(fail(
                ComponentError::config(format!(
                    "unknown component {:?} (componentType of stage {:?})",
                    stage.component, stage.id
                )),
                &outcome.outputs,
            ));
        };
        let inner_view = component.runs_stages().then(|| {
            let mut outputs = (*view.outputs).clone();
            outputs.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
            Arc::new(RunView {
                plan: view.plan.clone(),
                registry: view.registry.clone(),
                inputs: view.inputs.clone(),
                env: view.env.clone(),
                outputs: Arc::new(outputs),
                call_stack: view.call_stack.clone(),
            })
        });
        let timeout = stage.timeout_ms.map(Duration::from_millis);
        let policy = view.plan.retry_policy(index);
        let mut attempt = 1;
        let (inner, result) = loop {
            // A retry is a pass of its own, so that its idempotency key differs from the first try's.
            let pass = match attempt {
                1 => label.to_string(),
                n => format!("{label}.retry{n}"),
            };
            let inner = ctx.nested(&stage.id, &pass, inner_view.clone());
            let input = {
                let context = template::context_value(&inner);
                let lookup = |id: &str| local.get(id).or_else(|| view.outputs.get(id));
                let scope = Scope::new(&view.inputs, &lookup, &view.env, &context);
                template::build_input(&stage.config, &stage.input_mapping, &scope)
                    .map_err(|e| fail(ComponentError::from(e), &outcome.outputs))?
            };
            let result = run_one(&inner, component.execute(input, inner.clone()), timeout).await;
            let retry = result.as_ref().err().and_then(|error| {
                policy
                    .retry_delay(
                        attempt,
                        error.class,
                        error.class.retryable_by_default(),
                        error.retry_after,
                        rand::random::<f64>(),
                    )
                    .map(|delay| (error, delay))
            });
            let Some((error, delay)) = retry else {
                break (inner, result);
            };
            inner.log(
                "warn",
                format!(
                    "nested stage {:?} attempt {attempt} failed: {}; retrying in {delay:?}",
                    stage.id, error.message
                ),
                serde_json::json!({ "class": error.class, "pass": label, "attempt": attempt }),
            );
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => {
                    let cancelled = ComponentError::new(
                        ErrorClass::Cancelled,
                        format!("stage {:?}: cancelled", stage.id),
                    );
                    break (inner, Err(cancelled));
                }
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        };
        match result {
            Ok(ComponentOutput { output, skip }) => {
                skipped.extend(skip);
                local.insert(stage.id.clone(), output.clone());
                outcome.outputs.insert(stage.id.clone(), output.clone());
                outcome.last = Some(output);
            }
            Err(error) => {
                inner.log(
                    "error",
                    format!("nested stage {:?} failed: {}", stage.id, error.message),
                    serde_json::json!({ "class": error.class, "pass": label }),
                );
                return Err(fail(error, &outcome.outputs));
            }
        }
    }
    Ok(outcome)
}

/// One nested attempt under the same guard as a DAG stage's (`crate::attempt`), stopped when the owning
/// attempt is cancelled.
async fn run_one(
    ctx: &StageContext,
    work: futures::future::BoxFuture<'static, Result<ComponentOutput, ComponentError>>,
    timeout: Option<Duration>,
) -> Result<ComponentOutput, ComponentError> {
    attempt::guard(
        attempt::execute(ctx.stage_id.clone(), work),
        timeout,
        &ctx.cancel,
    )
    .await
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::component::{Component, Registry};
    use crate::plan::PlanSpec;

    struct Panics;
    impl Component for Panics {
        fn execute(
            &self,
            _input: Value,
            _ctx: StageContext,
        ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
            Box::pin(async { panic!("the nested component broke") })
        }
    }

    struct Sleeps;
    impl Component for Sleeps {
        fn execute(
            &self,
            _input: Value,
            _ctx: StageContext,
        ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
            Box::pin(std::future::pending())
        }
    }

    fn view() -> RunView {
        let spec: PlanSpec = serde_json::from_value(json!({"stages": [
            {"id": "owner", "component": "sleeps"},
            {"id": "boom", "component": "panics", "dependsOn": ["owner"], "retry": {"limit": 0}},
            {"id": "slow", "component": "sleeps", "dependsOn": ["owner"], "timeoutMs": 20,
             "retry": {"limit": 0}}
        ]}))
        .expect("plan");
        let mut registry = Registry::new();
        registry
            .register("panics", Panics)
            .register("sleeps", Sleeps);
        RunView {
            plan: Arc::new(Plan::build(spec).expect("plan")),
            registry: Arc::new(registry),
            inputs: Arc::new(json!({})),
            env: Arc::new(BTreeMap::new()),
            outputs: Arc::new(BTreeMap::new()),
            call_stack: vec!["test".into()],
        }
    }

    fn context() -> StageContext {
        StageContext::new(
            uuid::Uuid::from_u128(1),
            "test".into(),
            "default".into(),
            "owner".into(),
            1,
            CancellationToken::new(),
            Arc::new(|_| {}),
        )
    }

    /// Nested stages go through the same attempt guard as DAG stages: the panic's text is kept, the
    /// time limit reads as it does for a DAG stage.
    #[tokio::test]
    async fn a_nested_stage_reports_its_panic_text_and_its_timeout_as_a_dag_stage_does() {
        let (ctx, view) = (context(), view());
        let error = run_stages(&ctx, &view, &["boom".to_string()], "0", BTreeMap::new())
            .await
            .expect_err("panicked");
        assert_eq!(
            (error.stage.as_str(), error.error.message.as_str()),
            ("boom", "component panicked: the nested component broke")
        );
        let error = run_stages(&ctx, &view, &["slow".to_string()], "0", BTreeMap::new())
            .await
            .expect_err("timed out");
        assert_eq!(error.error.class, ErrorClass::Timeout);
        assert_eq!(error.error.message, "attempt timed out after 20ms");
    }
}

//! `return`: ends the pipeline early with a value, as FlowMason's `return` (guard clauses).
//!
//! Input: `condition` (default true; Python truthiness), `condition_expression` (optional FlowMason
//! Python expression, rendered first, that overrides `condition`; as in FlowMason an expression that
//! fails on its data counts as false, but one that is not a valid expression is refused when the pipeline
//! is validated), `return_value`, `message`, `status` (`completed`, the default, `cancelled` or `failed`:
//! informational, as in FlowMason, where the executor does not read it).
//!
//! When triggered, every stage of the pipeline that is not upstream of this one is returned as its
//! `skip`, so the engine ends those not yet started `Skipped` (`BranchNotTaken`) and the run succeeds;
//! stages already running in parallel branches finish. Inside a `foreach` body the skip reaches only the
//! stages of that iteration (the loop goes on). The run's output follows the usual rule: set the
//! pipeline's `outputStage` to this stage to return `return_value` as the run's output.
//!
//! Output: `{should_return, return_value, message, status, remaining_stages}` (FlowMason's, without its
//! executor `directive`); `remaining_stages` names the stages skipped. When not triggered:
//! `{should_return: false, return_value: null, message: null, status: "running", remaining_stages: []}`.
//! Errors: `config` for a bad expression, `status` or `message`.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, Plan, StageContext};

use super::expr::{Expr, ExprError, truthy};
use super::{input_object, opt_str, static_config};

/// The component type name.
pub const NAME: &str = "return";

const STATUSES: [&str; 3] = ["completed", "cancelled", "failed"];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Return;

struct Settings {
    expression: Option<Expr>,
    status: String,
}

fn settings(map: &Map<String, Value>) -> Result<Settings, ComponentError> {
    let expression =
        match opt_str(NAME, map, "condition_expression")? {
            Some(src) if !src.trim().is_empty() => Some(Expr::parse(src, &[]).map_err(|e| {
                ComponentError::config(format!("{NAME}: `condition_expression`: {e}"))
            })?),
            _ => None,
        };
    let status = opt_str(NAME, map, "status")?.unwrap_or("completed");
    if !STATUSES.contains(&status) {
        return Err(ComponentError::config(format!(
            "{NAME}: `status` must be one of {}, got {status:?}",
            STATUSES.join(", ")
        )));
    }
    opt_str(NAME, map, "message")?;
    Ok(Settings {
        expression,
        status: status.to_string(),
    })
}

/// Every stage that is neither `stage` nor upstream of it: what a triggered return skips.
fn not_upstream(plan: &Plan, stage: &str) -> Vec<String> {
    let Some(start) = plan.index_of(stage) else {
        return Vec::new();
    };
    let mut upstream = BTreeSet::from([start]);
    let mut todo = vec![start];
    while let Some(index) = todo.pop() {
        for &d in plan.dependencies(index) {
            if upstream.insert(d) {
                todo.push(d);
            }
        }
    }
    plan.order()
        .iter()
        .filter(|i| !upstream.contains(i))
        .map(|&i| plan.stage(i).id.clone())
        .collect()
}

impl Component for Return {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        settings(&statics).map(|_| ())
    }

    fn runs_stages(&self) -> bool {
        // Not to run them: to name the stages it ends in its `skip`.
        true
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let s = settings(&map)?;
            let triggered = match &s.expression {
                Some(expr) => match expr.eval_bool(&[], &ctx.cancel) {
                    Ok(b) => b,
                    Err(ExprError::Eval(_)) => false,
                    Err(other) => {
                        return Err(ComponentError::config(format!(
                            "{NAME}: `condition_expression`: {other}"
                        )));
                    }
                },
                None => map.get("condition").is_none_or(truthy),
            };
            if !triggered {
                return Ok(json!({
                    "should_return": false, "return_value": null, "message": null,
                    "status": "running", "remaining_stages": [],
                })
                .into());
            }
            let skip = ctx
                .run_view()
                .map(|view| not_upstream(&view.plan, &ctx.stage_id))
                .unwrap_or_default();
            let message = map.remove("message").unwrap_or(Value::Null);
            ctx.log(
                "info",
                "early return",
                json!({"message": message, "skipped": skip}),
            );
            Ok(ComponentOutput {
                output: json!({
                    "should_return": true,
                    "return_value": map.remove("return_value").unwrap_or(Value::Null),
                    "message": message,
                    "status": s.status,
                    "remaining_stages": skip,
                }),
                skip,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_actors::PlanSpec;

    #[test]
    fn a_return_skips_all_but_its_upstream() {
        let spec: PlanSpec = serde_json::from_value(json!({"stages": [
            {"id": "check", "component": "noop"},
            {"id": "side", "component": "noop"},
            {"id": "guard", "component": "return", "dependsOn": ["check"]},
            {"id": "work", "component": "noop", "dependsOn": ["guard"]},
        ]}))
        .expect("a plan spec");
        let plan = Plan::build(spec).expect("valid plan");
        let mut skipped = not_upstream(&plan, "guard");
        skipped.sort();
        assert_eq!(skipped, ["side", "work"]);
    }

    #[tokio::test]
    async fn conditions_and_expressions_decide() {
        let run = |input: Value| async move {
            Return
                .execute(input, context().0)
                .await
                .expect("runs")
                .output
        };
        let out = run(json!({"return_value": {"a": 1}, "message": "m"})).await;
        assert_eq!(out["should_return"], json!(true));
        assert_eq!(out["return_value"], json!({"a": 1}));
        assert_eq!(out["status"], json!("completed"));
        let out = run(json!({"condition": false, "return_value": 1})).await;
        assert_eq!(out["should_return"], json!(false));
        assert_eq!(out["status"], json!("running"));
        let out =
            run(json!({"condition": false, "condition_expression": "len([1, 2]) == 2"})).await;
        assert_eq!(out["should_return"], json!(true));
        let out = run(json!({"condition_expression": "1 / 0 == 1"})).await;
        assert_eq!(
            out["should_return"],
            json!(false),
            "a failing expression is false"
        );
    }

    #[test]
    fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"status": "done"}), "`status`"),
            (
                json!({"condition_expression": "a +"}),
                "`condition_expression`",
            ),
            (json!({"message": 4}), "`message`"),
        ] {
            let err = Return.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{}", err.message);
        }
    }
}

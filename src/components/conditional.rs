//! `conditional`: if/else between branches of the pipeline, as FlowMason's `conditional`.
//!
//! Input: `condition` (any value; its Python truthiness decides), `condition_expression` (optional
//! FlowMason Python expression over `value`, the condition), `true_branch_stages`,
//! `false_branch_stages` (stage ids), `pass_data` (handed on as `data`).
//! Output: `{branch_taken: "true"|"false", condition_value, condition_result, data, skipped_stages}`. The
//! stages of the branch not taken are returned as the stage's `skip`: the engine ends them (and stages
//! that depend only on skipped stages) `Skipped` with reason `BranchNotTaken`; the run still succeeds.
//! As in FlowMason, an expression that fails on the data counts as false. Errors (class `config`): an
//! expression that cannot be used (not Python, an unknown name or function), branch lists that are not
//! lists of stage ids, a stage in both branches.

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::expr::{Expr, ExprError, truthy};
use super::{input_object, opt_str, opt_str_list, static_config};

/// The component type name.
pub const NAME: &str = "conditional";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditional;

struct Branches {
    expression: Option<Expr>,
    when_true: Vec<String>,
    when_false: Vec<String>,
}

fn parse(map: &Map<String, Value>) -> Result<Branches, ComponentError> {
    let expression = match opt_str(NAME, map, "condition_expression")? {
        Some(src) if !src.trim().is_empty() => {
            Some(Expr::parse(src, &["value"]).map_err(|e| {
                ComponentError::config(format!("{NAME}: `condition_expression`: {e}"))
            })?)
        }
        _ => None,
    };
    let when_true = opt_str_list(NAME, map, "true_branch_stages")?;
    let when_false = opt_str_list(NAME, map, "false_branch_stages")?;
    if let Some(both) = when_true.iter().find(|s| when_false.contains(s)) {
        return Err(ComponentError::config(format!(
            "{NAME}: stage {both:?} is in both `true_branch_stages` and `false_branch_stages`"
        )));
    }
    Ok(Branches {
        expression,
        when_true,
        when_false,
    })
}

impl Component for Conditional {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        parse(&statics).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let branches = parse(&map)?;
            let condition = map.remove("condition").unwrap_or(Value::Null);
            let result = match &branches.expression {
                Some(expr) => match expr.eval_bool(&[("value", condition.clone())], &ctx.cancel) {
                    Ok(b) => b,
                    Err(ExprError::Eval(_)) => false,
                    Err(other) => return Err(ComponentError::config(format!("{NAME}: {other}"))),
                },
                None => truthy(&condition),
            };
            let (taken, skip) = if result {
                ("true", branches.when_false)
            } else {
                ("false", branches.when_true)
            };
            let output = serde_json::json!({
                "branch_taken": taken,
                "condition_value": condition,
                "condition_result": result,
                "data": map.remove("pass_data").unwrap_or(Value::Null),
                "skipped_stages": skip,
            });
            Ok(ComponentOutput { output, skip })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_store::ErrorClass;
    use serde_json::json;

    async fn run(input: Value) -> Result<ComponentOutput, ComponentError> {
        let (ctx, _) = context();
        Conditional.execute(input, ctx).await
    }

    #[tokio::test]
    async fn skips_the_branch_not_taken() {
        let out = run(json!({"condition": 0.9, "condition_expression": "value > 0.8",
                             "true_branch_stages": ["a"], "false_branch_stages": ["b", "c"], "pass_data": {"x": 1}}))
            .await
            .unwrap();
        assert_eq!(out.skip, ["b", "c"]);
        assert_eq!(out.output["branch_taken"], json!("true"));
        assert_eq!(out.output["data"], json!({"x": 1}));
        let out = run(
            json!({"condition": [], "true_branch_stages": ["a"], "false_branch_stages": ["b"]}),
        )
        .await
        .unwrap();
        assert_eq!(out.skip, ["a"]);
        assert_eq!(out.output["condition_result"], json!(false));
    }

    #[tokio::test]
    async fn failing_expression_is_false() {
        let out = run(
            json!({"condition": {}, "condition_expression": "value['missing'] == 1",
                             "true_branch_stages": ["a"]}),
        )
        .await
        .unwrap();
        assert_eq!(out.output["branch_taken"], json!("false"));
    }

    #[tokio::test]
    async fn config_errors() {
        for (input, want) in [
            (
                json!({"condition": 1, "condition_expression": "import os"}),
                "not valid Python",
            ),
            (
                json!({"condition": 1, "condition_expression": "x > 1"}),
                "name \"x\"",
            ),
            (
                json!({"condition": 1, "true_branch_stages": "a"}),
                "must be a list of stage ids",
            ),
            (
                json!({"condition": 1, "true_branch_stages": ["a"], "false_branch_stages": ["a"]}),
                "in both",
            ),
        ] {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
    }
}

//! `break_loop` and `continue_loop`: leave a `foreach` loop, or the current iteration, early.
//!
//! FlowMason's operators raise an exception when their `condition` is true and expect "the containing
//! loop" to catch it; its executor never does (a break fails the iteration like any error). Here the
//! signal is not an error. A triggered stage succeeds with `broken: true` (`continued: true`) and returns
//! every stage downstream of it in the plan as its `skip`, so the rest of the iteration (or, outside a
//! loop, the rest of that DAG branch) ends `Skipped` (`BranchNotTaken`). The `foreach` whose loop stages
//! hold the stage then sees it in the iteration's outputs ([`signal`]): after a break it starts no
//! further iteration; a continued iteration is left out of its `results`.
//!
//! `break_loop` input: `condition` (required; Python truthiness), `result` (handed to the foreach as
//! `break_result`), `message`. Output `{broken, result, message}` (`result` and `message` null when not
//! triggered, as in FlowMason). `continue_loop` input: `condition` (required), `message`; output
//! `{continued, message}`. Errors: `config` when `condition` is missing.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, Plan, StageContext};

use super::expr::truthy;
use super::{input_object, opt_str, static_config};

/// The type name of the break component.
pub const BREAK: &str = "break_loop";
/// The type name of the continue component.
pub const CONTINUE: &str = "continue_loop";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BreakLoop;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContinueLoop;

/// What a pass over loop stages signalled to its loop.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Signal {
    Break { result: Value, message: Value },
    Continue,
}

/// The signal among the outputs of one iteration's stages: a triggered `break_loop` wins over a
/// triggered `continue_loop`.
pub(crate) fn signal(plan: &Plan, outputs: &BTreeMap<String, Value>) -> Option<Signal> {
    let mut found = None;
    for (id, output) in outputs {
        let Some(index) = plan.index_of(id) else {
            continue;
        };
        let component = plan.stage(index).component.replace('-', "_");
        if component == BREAK && output["broken"] == Value::Bool(true) {
            return Some(Signal::Break {
                result: output["result"].clone(),
                message: output["message"].clone(),
            });
        }
        if component == CONTINUE && output["continued"] == Value::Bool(true) {
            found = Some(Signal::Continue);
        }
    }
    found
}

/// Every stage that depends on `stage`, directly or not: what a triggered signal skips.
pub(crate) fn downstream(plan: &Plan, stage: &str) -> Vec<String> {
    let Some(start) = plan.index_of(stage) else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(index) = todo.pop() {
        for &d in plan.dependants(index) {
            if seen.insert(d) {
                todo.push(d);
            }
        }
    }
    seen.into_iter().map(|i| plan.stage(i).id.clone()).collect()
}

fn validate_condition(component: &str, config: &Value) -> Result<(), ComponentError> {
    if let Some(statics) = static_config(component, config)? {
        opt_str(component, &statics, "message")?;
    }
    Ok(())
}

/// The input's `condition` (required) and `message`.
fn condition(component: &str, map: &Map<String, Value>) -> Result<(bool, Value), ComponentError> {
    let condition = match map.get("condition") {
        None => {
            return Err(ComponentError::config(format!(
                "{component}: `condition` is required"
            )));
        }
        Some(v) => truthy(v),
    };
    opt_str(component, map, "message")?;
    Ok((
        condition,
        map.get("message").cloned().unwrap_or(Value::Null),
    ))
}

/// The stages a triggered signal skips, from the run's plan.
fn skipped_by(ctx: &StageContext) -> Vec<String> {
    ctx.run_view()
        .map(|view| downstream(&view.plan, &ctx.stage_id))
        .unwrap_or_default()
}

impl Component for BreakLoop {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        validate_condition(BREAK, config)
    }

    fn runs_stages(&self) -> bool {
        // Not to run them: to name the stages after it in its `skip`.
        true
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(BREAK, input)?;
            let (triggered, message) = condition(BREAK, &map)?;
            if !triggered {
                return Ok(json!({"broken": false, "result": null, "message": null}).into());
            }
            ctx.log("info", "loop break signalled", json!({"message": message}));
            let result = map.remove("result").unwrap_or(Value::Null);
            Ok(ComponentOutput {
                output: json!({"broken": true, "result": result, "message": message}),
                skip: skipped_by(&ctx),
            })
        })
    }
}

impl Component for ContinueLoop {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        validate_condition(CONTINUE, config)
    }

    fn runs_stages(&self) -> bool {
        true
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let map = input_object(CONTINUE, input)?;
            let (triggered, message) = condition(CONTINUE, &map)?;
            if !triggered {
                return Ok(json!({"continued": false, "message": null}).into());
            }
            ctx.log(
                "info",
                "loop continue signalled",
                json!({"message": message}),
            );
            Ok(ComponentOutput {
                output: json!({"continued": true, "message": message}),
                skip: skipped_by(&ctx),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_actors::PlanSpec;

    fn plan() -> Plan {
        let spec: PlanSpec = serde_json::from_value(json!({"stages": [
            {"id": "check", "component": "break-loop"},
            {"id": "next", "component": "noop", "dependsOn": ["check"]},
            {"id": "last", "component": "noop", "dependsOn": ["next"]},
            {"id": "other", "component": "continue_loop"},
        ]}))
        .expect("a plan spec");
        Plan::build(spec).expect("valid plan")
    }

    #[test]
    fn a_break_wins_and_hyphenated_names_count() {
        let plan = plan();
        let outputs = BTreeMap::from([
            (
                "check".to_string(),
                json!({"broken": true, "result": 7, "message": null}),
            ),
            (
                "other".to_string(),
                json!({"continued": true, "message": null}),
            ),
        ]);
        assert_eq!(
            signal(&plan, &outputs),
            Some(Signal::Break {
                result: json!(7),
                message: Value::Null
            })
        );
        let outputs = BTreeMap::from([("other".to_string(), json!({"continued": true}))]);
        assert_eq!(signal(&plan, &outputs), Some(Signal::Continue));
        let outputs = BTreeMap::from([("next".to_string(), json!({"broken": true}))]);
        assert_eq!(
            signal(&plan, &outputs),
            None,
            "only break_loop stages signal"
        );
        assert_eq!(downstream(&plan, "check"), ["next", "last"]);
    }

    #[tokio::test]
    async fn untriggered_signals_give_flowmasons_outputs() {
        let out = BreakLoop
            .execute(json!({"condition": false, "result": 3}), context().0)
            .await
            .expect("runs");
        assert_eq!(
            out.output,
            json!({"broken": false, "result": null, "message": null})
        );
        assert!(out.skip.is_empty());
        let out = ContinueLoop
            .execute(json!({"condition": 0, "message": "m"}), context().0)
            .await
            .expect("runs");
        assert_eq!(out.output, json!({"continued": false, "message": null}));
    }

    #[tokio::test]
    async fn a_missing_condition_or_bad_message_is_a_config_error() {
        let err = BreakLoop
            .execute(json!({}), context().0)
            .await
            .expect_err("refused");
        assert!(
            err.message.contains("`condition` is required"),
            "{}",
            err.message
        );
        let err = ContinueLoop
            .validate(&json!({"condition": true, "message": 3}))
            .expect_err("refused");
        assert!(
            err.message.contains("continue_loop: `message`"),
            "{}",
            err.message
        );
        assert!(
            BreakLoop
                .validate(&json!({"condition": "{{input.done}}"}))
                .is_ok()
        );
    }
}

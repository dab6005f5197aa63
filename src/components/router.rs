//! `router`: multi-way branching (switch/case), as FlowMason's `router`.
//!
//! Input: `value`, `routes` (`{route value: [stage ids]}`), `default_route` (stage ids run when no route
//! matches), `value_expression` (optional FlowMason Python expression over `value`, applied first; if it
//! fails on the data the original value is used, as in FlowMason), `case_insensitive`, `pass_data`.
//! A route matches when its key equals the value, else Python's `str()` of the value (`True`, `None`,
//! `3`). Output: `{route_taken, original_value, matched_value, stages_to_execute, stages_to_skip, data}`
//! (`route_taken` is `"default"` when none matched). Every stage named by another route or the default is
//! returned as the stage's `skip` and ends `Skipped` (`BranchNotTaken`). Errors (class `config`):
//! `routes` missing or not an object of stage-id lists, a bad `value_expression`.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::expr::{Expr, ExprError};
use super::{
    config_object, input_object, is_templated, opt_bool, opt_str, opt_str_list, type_name,
};

/// The component type name.
pub const NAME: &str = "router";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Router;

fn routes(map: &Map<String, Value>) -> Result<Vec<(String, Vec<String>)>, ComponentError> {
    match map.get("routes") {
        Some(Value::Object(routes)) => routes
            .iter()
            .map(|(k, v)| {
                let mut one = Map::new();
                one.insert(k.clone(), v.clone());
                Ok((
                    k.clone(),
                    opt_str_list(NAME, &one, k).map_err(|_| {
                        ComponentError::config(format!(
                            "{NAME}: `routes.{k}` must be a list of stage ids, got {}",
                            type_name(v)
                        ))
                    })?,
                ))
            })
            .collect(),
        None | Some(Value::Null) => Err(ComponentError::config(format!(
            "{NAME}: `routes` is required"
        ))),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `routes` must be an object of stage-id lists, got {}",
            type_name(other)
        ))),
    }
}

fn expression(map: &Map<String, Value>) -> Result<Option<Expr>, ComponentError> {
    match opt_str(NAME, map, "value_expression")? {
        Some(src) if !src.trim().is_empty() => Expr::parse(src, &["value"])
            .map(Some)
            .map_err(|e| ComponentError::config(format!("{NAME}: `value_expression`: {e}"))),
        _ => Ok(None),
    }
}

/// Python's `str()` of a value, for the string fallback of route matching.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Component for Router {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        if map.get("routes").is_some_and(|r| !is_templated(r)) {
            routes(map)?;
        }
        if map
            .get("value_expression")
            .is_some_and(|r| !is_templated(r))
        {
            expression(map)?;
        }
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let routes = routes(&map)?;
            let default = opt_str_list(NAME, &map, "default_route")?;
            let insensitive = opt_bool(NAME, &map, "case_insensitive", false)?;
            let original = map.remove("value").unwrap_or(Value::Null);
            let mut matched = match expression(&map)? {
                Some(expr) => match expr.eval(&[("value", original.clone())], &ctx.cancel) {
                    Ok(v) => v,
                    Err(ExprError::Eval(_)) => original.clone(),
                    Err(other) => return Err(ComponentError::config(format!("{NAME}: {other}"))),
                },
                None => original.clone(),
            };
            if insensitive && let Value::String(s) = &matched {
                matched = Value::String(s.to_lowercase());
            }
            let key = |k: &str| {
                if insensitive {
                    k.to_lowercase()
                } else {
                    k.to_string()
                }
            };
            let wanted = [matched.as_str().map(str::to_string), Some(py_str(&matched))];
            let hit = wanted
                .iter()
                .flatten()
                .find_map(|w| routes.iter().find(|(k, _)| key(k) == *w));
            let (taken, execute) = match hit {
                Some((name, stages)) => (name.clone(), stages.clone()),
                None => ("default".to_string(), default.clone()),
            };
            let all: BTreeSet<&String> =
                routes.iter().flat_map(|(_, s)| s).chain(&default).collect();
            let skip: Vec<String> = all
                .into_iter()
                .filter(|s| !execute.contains(s))
                .cloned()
                .collect();
            let output = serde_json::json!({
                "route_taken": taken,
                "original_value": original,
                "matched_value": matched,
                "stages_to_execute": execute,
                "stages_to_skip": skip,
                "data": map.remove("pass_data").unwrap_or(Value::Null),
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
        Router.execute(input, ctx).await
    }

    fn routes() -> Value {
        json!({"urgent": ["page", "notify"], "normal": ["queue"], "3": ["three"]})
    }

    #[tokio::test]
    async fn routes_by_value_and_skips_the_others() {
        let out = run(
            json!({"value": "URGENT", "routes": routes(), "case_insensitive": true,
                             "default_route": ["fallback"]}),
        )
        .await
        .unwrap();
        assert_eq!(out.output["route_taken"], json!("urgent"));
        assert_eq!(out.skip, ["fallback", "queue", "three"]);
        let out = run(json!({"value": 3, "routes": routes()})).await.unwrap();
        assert_eq!(out.output["route_taken"], json!("3"), "str() fallback");
        let out = run(json!({"value": {"kind": "normal"}, "value_expression": "value['kind']", "routes": routes()}))
            .await
            .unwrap();
        assert_eq!(out.output["stages_to_execute"], json!(["queue"]));
    }

    #[tokio::test]
    async fn no_match_takes_the_default() {
        let out = run(json!({"value": "other", "routes": routes(), "default_route": ["fallback"]}))
            .await
            .unwrap();
        assert_eq!(out.output["route_taken"], json!("default"));
        assert_eq!(out.skip, ["notify", "page", "queue", "three"]);
    }

    #[tokio::test]
    async fn config_errors() {
        for (input, want) in [
            (json!({"value": 1}), "`routes` is required"),
            (json!({"value": 1, "routes": ["a"]}), "must be an object"),
            (
                json!({"value": 1, "routes": {"a": "x"}}),
                "`routes.a` must be a list",
            ),
            (
                json!({"value": 1, "routes": {}, "value_expression": "open(value)"}),
                "function \"open\"",
            ),
        ] {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
    }
}

//! `switch_router`: the first matching case picks a route, as FlowMason's `switch_router`.
//!
//! Input: `data`, `value_path` (dot path into `data`; missing gives `null`), `cases` (list of
//! `{condition, route}`), `default_route`, `comparison_mode` (`equals` | `contains` | `regex` |
//! `greater_than` | `less_than`). A `route` names the stage to run, or (our extension) a list of stages.
//! Output: `{matched_route, matched_case, value, data}`. Every stage named by another case or by the
//! default is returned as the stage's `skip` and ends `Skipped` (`BranchNotTaken`). Errors (class
//! `config`): `cases` missing or not a list of objects, a route that is not a stage id (or list of them),
//! an unknown `comparison_mode`, an invalid regex.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{config_object, input_object, is_templated, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "switch_router";

const MODES: &[&str] = &["equals", "contains", "regex", "greater_than", "less_than"];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwitchRouter;

fn route_stages(field: &str, route: &Value) -> Result<Vec<String>, ComponentError> {
    match route {
        Value::Null => Ok(vec![]),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(ComponentError::config(format!(
                    "{NAME}: `{field}` must be a stage id or a list of them, got an element that is {}",
                    type_name(other)
                ))),
            })
            .collect(),
        other => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a stage id or a list of them, got {}",
            type_name(other)
        ))),
    }
}

fn cases(map: &Map<String, Value>) -> Result<Vec<(Value, Value, Vec<String>)>, ComponentError> {
    let list = match map.get("cases") {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `cases` is required"
            )));
        }
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `cases` must be a list of {{condition, route}} objects, got {}",
                type_name(other)
            )));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, case)| {
            let Value::Object(c) = case else {
                return Err(ComponentError::config(format!(
                    "{NAME}: `cases[{i}]` must be an object with `condition` and `route`, got {}",
                    type_name(case)
                )));
            };
            let route = c.get("route").cloned().unwrap_or(Value::Null);
            let stages = route_stages(&format!("cases[{i}].route"), &route)?;
            Ok((
                case.clone(),
                c.get("condition").cloned().unwrap_or(Value::Null),
                stages,
            ))
        })
        .collect()
}

fn mode(map: &Map<String, Value>) -> Result<&str, ComponentError> {
    let m = opt_str(NAME, map, "comparison_mode")?.unwrap_or("equals");
    if MODES.contains(&m) {
        Ok(m)
    } else {
        Err(ComponentError::config(format!(
            "{NAME}: `comparison_mode` must be one of {}, got {m:?}",
            MODES.join(", ")
        )))
    }
}

fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn matches(value: &Value, condition: &Value, mode: &str) -> Result<bool, ComponentError> {
    Ok(match mode {
        "equals" => {
            value == condition
                || (as_float(value).is_some()
                    && value.is_number()
                    && condition.is_number()
                    && as_float(value) == as_float(condition))
        }
        "contains" => match (value, condition) {
            (Value::String(v), Value::String(c)) => v.contains(c.as_str()),
            (Value::Array(items), c) => items.contains(c),
            _ => false,
        },
        "regex" => match (value, condition) {
            (Value::String(v), Value::String(c)) => regex::Regex::new(c)
                .map_err(|e| {
                    ComponentError::config(format!(
                        "{NAME}: case condition {c:?} is not a valid regex: {e}"
                    ))
                })?
                .is_match(v),
            _ => false,
        },
        "greater_than" => {
            matches!((as_float(value), as_float(condition)), (Some(a), Some(b)) if a > b)
        }
        _ => matches!((as_float(value), as_float(condition)), (Some(a), Some(b)) if a < b),
    })
}

fn extract(data: &Value, path: Option<&str>) -> Value {
    let Some(path) = path else {
        return data.clone();
    };
    let mut current = data;
    for part in path.split('.') {
        match current.as_object().and_then(|o| o.get(part)) {
            Some(v) => current = v,
            None => return Value::Null,
        }
    }
    current.clone()
}

impl Component for SwitchRouter {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        if map.get("cases").is_some_and(|c| !is_templated(c)) {
            cases(map)?;
        }
        if map.get("comparison_mode").is_some_and(|c| !is_templated(c)) {
            mode(map)?;
        }
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let cases = cases(&map)?;
            let mode = mode(&map)?.to_string();
            let default_raw = map.get("default_route").cloned().unwrap_or(Value::Null);
            let default = route_stages("default_route", &default_raw)?;
            let data = map.remove("data").unwrap_or(Value::Null);
            let value = extract(&data, opt_str(NAME, &map, "value_path")?);
            let mut chosen = None;
            for (i, (case, condition, stages)) in cases.iter().enumerate() {
                if matches(&value, condition, &mode)? {
                    chosen = Some((i, case.clone(), stages.clone()));
                    break;
                }
            }
            let (matched_route, matched_case, execute) = match chosen {
                Some((i, case, stages)) => (
                    cases[i].0.get("route").cloned().unwrap_or(Value::Null),
                    case,
                    stages,
                ),
                None => (default_raw.clone(), Value::Null, default.clone()),
            };
            let all: BTreeSet<&String> = cases
                .iter()
                .flat_map(|(_, _, s)| s)
                .chain(&default)
                .collect();
            let skip: Vec<String> = all
                .into_iter()
                .filter(|s| !execute.contains(s))
                .cloned()
                .collect();
            let output = serde_json::json!({
                "matched_route": matched_route,
                "matched_case": matched_case,
                "value": value,
                "data": data,
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
        SwitchRouter.execute(input, ctx).await
    }

    #[tokio::test]
    async fn first_matching_case_wins() {
        let cases = json!([{"condition": "admin", "route": "admin_handler"},
                           {"condition": "user", "route": ["user_a", "user_b"]}]);
        let out = run(
            json!({"data": {"user": {"role": "user"}}, "value_path": "user.role",
                             "cases": cases, "default_route": "guest"}),
        )
        .await
        .unwrap();
        assert_eq!(out.output["matched_route"], json!(["user_a", "user_b"]));
        assert_eq!(out.output["value"], json!("user"));
        assert_eq!(out.skip, ["admin_handler", "guest"]);
        let out = run(json!({"data": "nobody", "cases": cases, "default_route": "guest"}))
            .await
            .unwrap();
        assert_eq!(out.output["matched_route"], json!("guest"));
        assert_eq!(out.output["matched_case"], Value::Null);
    }

    #[tokio::test]
    async fn comparison_modes() {
        for (mode, value, condition) in [
            ("contains", json!("hello world"), json!("world")),
            ("regex", json!("order-123"), json!("^order-\\d+$")),
            ("greater_than", json!(10), json!("5")),
            ("less_than", json!(1.5), json!(2)),
        ] {
            let out = run(json!({"data": value, "comparison_mode": mode,
                                 "cases": [{"condition": condition, "route": "hit"}], "default_route": "miss"}))
                .await
                .unwrap();
            assert_eq!(out.output["matched_route"], json!("hit"), "{mode}");
            assert_eq!(out.skip, ["miss"], "{mode}");
        }
    }

    #[tokio::test]
    async fn config_errors() {
        for (input, want) in [
            (json!({"data": 1}), "`cases` is required"),
            (json!({"data": 1, "cases": {}}), "must be a list"),
            (
                json!({"data": 1, "cases": [1]}),
                "`cases[0]` must be an object",
            ),
            (
                json!({"data": 1, "cases": [{"condition": 1, "route": 5}]}),
                "`cases[0].route` must be",
            ),
            (
                json!({"data": 1, "cases": [], "comparison_mode": "like"}),
                "`comparison_mode` must be one of",
            ),
            (
                json!({"data": "x", "cases": [{"condition": "(", "route": "a"}], "comparison_mode": "regex"}),
                "not a valid regex",
            ),
        ] {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
    }
}

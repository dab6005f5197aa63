//! `filter`: passes or blocks data on a condition, or filters a list, as FlowMason's `filter` operator.
//!
//! Input: `data`, `condition` (a FlowMason Python expression over `data` in `pass_fail` mode, over `item`
//! in `filter_array` mode, see `expr`), `jq_condition` (our extension: a jq filter over the same value,
//! true unless it yields `false` or `null`), `field_conditions` (`{field: expected}`, all must be equal),
//! `filter_mode` (`pass_fail` | `filter_array`), `invert`, `pass_if_missing`.
//! Output: `{passed, data, filtered_count, reason}`. As in FlowMason, an expression that fails on the data
//! (a missing key, a type error) does not fail the stage: the data does not pass (or passes with
//! `pass_if_missing`), and `reason` says why. A condition that cannot be used at all (not Python, an
//! unknown name, function or construct) is a `config` error.

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::expr::{Expr, ExprError};
use super::json_transform::Jq;
use super::{config_object, input_object, is_templated, opt_bool, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "filter";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    PassFail,
    FilterArray,
}

enum Condition {
    Python(Expr),
    Jq(Jq),
    Fields(Map<String, Value>),
    None,
}

struct Settings {
    condition: Condition,
    invert: bool,
    pass_if_missing: bool,
}

impl Component for Filter {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        let statics: Map<String, Value> = map
            .iter()
            .filter(|(k, v)| *k != "data" && !is_templated(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(mode) = mode_of(&statics)? {
            settings(&statics, mode)?;
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
            let data = map
                .remove("data")
                .ok_or_else(|| ComponentError::config(format!("{NAME}: `data` is required")))?;
            let mode = mode_of(&map)?.unwrap_or(Mode::PassFail);
            let out = match (&data, mode) {
                (Value::Array(items), Mode::FilterArray) => {
                    let s = settings(&map, Mode::FilterArray)?;
                    let jq = jq_results(&s, items.clone(), &ctx).await?;
                    filter_array(&s, items, jq, &ctx.cancel)?
                }
                _ => {
                    let s = settings(&map, Mode::PassFail)?;
                    let jq = jq_results(&s, vec![data.clone()], &ctx).await?;
                    pass_fail(&s, data, jq, &ctx.cancel)?
                }
            };
            Ok(ComponentOutput::from(out))
        })
    }
}

fn mode_of(map: &Map<String, Value>) -> Result<Option<Mode>, ComponentError> {
    match opt_str(NAME, map, "filter_mode")? {
        None | Some("pass_fail") => Ok(Some(Mode::PassFail)),
        Some("filter_array") => Ok(Some(Mode::FilterArray)),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `filter_mode` must be \"pass_fail\" or \"filter_array\", got {other:?}"
        ))),
    }
}

fn settings(map: &Map<String, Value>, mode: Mode) -> Result<Settings, ComponentError> {
    let variable = match mode {
        Mode::PassFail => "data",
        Mode::FilterArray => "item",
    };
    let condition = opt_str(NAME, map, "condition")?.filter(|c| !c.trim().is_empty());
    let jq = opt_str(NAME, map, "jq_condition")?.filter(|c| !c.trim().is_empty());
    let condition = match (condition, jq) {
        (Some(_), Some(_)) => {
            return Err(ComponentError::config(format!(
                "{NAME}: give either `condition` or `jq_condition`, not both"
            )));
        }
        (Some(source), None) => {
            Condition::Python(Expr::parse(source, &[variable]).map_err(|e| {
                let hint = if mode == Mode::FilterArray && source.contains("data") {
                    " (in filter_array mode use `item` for each element)"
                } else {
                    ""
                };
                ComponentError::config(format!("{NAME}: `condition`: {e}{hint}"))
            })?)
        }
        (None, Some(code)) => Condition::Jq(Jq::compile(NAME, code)?),
        (None, None) => match map.get("field_conditions") {
            None | Some(Value::Null) => Condition::None,
            Some(Value::Object(fields)) if !fields.is_empty() => Condition::Fields(fields.clone()),
            Some(Value::Object(_)) => Condition::None,
            Some(other) => {
                return Err(ComponentError::config(format!(
                    "{NAME}: `field_conditions` must be an object, got {}",
                    type_name(other)
                )));
            }
        },
    };
    Ok(Settings {
        condition,
        invert: opt_bool(NAME, map, "invert", false)?,
        pass_if_missing: opt_bool(NAME, map, "pass_if_missing", false)?,
    })
}

/// A `jq_condition`'s result for each of `inputs`, from one worker job; `None` for other conditions.
async fn jq_results(
    s: &Settings,
    inputs: Vec<Value>,
    ctx: &StageContext,
) -> Result<Option<Vec<Result<Value, String>>>, ComponentError> {
    match &s.condition {
        Condition::Jq(jq) => Ok(Some(jq.run_each(NAME, inputs, &ctx.cancel).await?)),
        _ => Ok(None),
    }
}

/// Whether `value` passes, and why (FlowMason's reasons). `jq` is the `jq_condition`'s result on it.
fn evaluate(
    s: &Settings,
    variable: &str,
    value: &Value,
    jq: Option<Result<Value, String>>,
    cancel: &CancellationToken,
) -> Result<(bool, String), ComponentError> {
    let on_error = |e: String| {
        if s.pass_if_missing {
            (true, format!("Expression error (pass_if_missing): {e}"))
        } else {
            (false, format!("Expression error: {e}"))
        }
    };
    Ok(match &s.condition {
        Condition::Python(expr) => match expr.eval(&[(variable, value.clone())], cancel) {
            Ok(result) => {
                let passed = super::expr::truthy(&result);
                (
                    passed,
                    format!("Expression '{}' = {}", expr.source(), py_repr(&result)),
                )
            }
            Err(ExprError::Eval(e)) => on_error(e),
            Err(other) => return Err(ComponentError::config(format!("{NAME}: {other}"))),
        },
        Condition::Jq(_) => match jq {
            Some(Ok(result)) => {
                let passed = !matches!(result, Value::Null | Value::Bool(false));
                (passed, format!("jq condition = {result}"))
            }
            Some(Err(message)) => on_error(message),
            None => {
                return Err(ComponentError::internal(format!(
                    "{NAME}: no jq result for the value"
                )));
            }
        },
        Condition::Fields(fields) => {
            let Value::Object(obj) = value else {
                return Ok((false, "Field conditions require dict data".into()));
            };
            for (field, expected) in fields {
                match obj.get(field) {
                    None if s.pass_if_missing => continue,
                    None => return Ok((false, format!("Missing field: {field}"))),
                    Some(actual) if actual != expected => {
                        return Ok((
                            false,
                            format!("Field '{field}': expected {expected}, got {actual}"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            (true, "All field conditions matched".into())
        }
        Condition::None => (true, "No conditions specified".into()),
    })
}

fn pass_fail(
    s: &Settings,
    data: Value,
    jq: Option<Vec<Result<Value, String>>>,
    cancel: &CancellationToken,
) -> Result<Value, ComponentError> {
    let jq = jq.and_then(|results| results.into_iter().next());
    let (mut passed, mut reason) = evaluate(s, "data", &data, jq, cancel)?;
    if s.invert {
        passed = !passed;
        reason = format!("(inverted) {reason}");
    }
    Ok(serde_json::json!({
        "passed": passed,
        "data": if passed { data } else { Value::Null },
        "filtered_count": 0,
        "reason": reason,
    }))
}

fn filter_array(
    s: &Settings,
    items: &[Value],
    jq: Option<Vec<Result<Value, String>>>,
    cancel: &CancellationToken,
) -> Result<Value, ComponentError> {
    let mut kept = Vec::new();
    let mut filtered = 0usize;
    let mut jq = jq.map(Vec::into_iter);
    for item in items {
        let (passed, _) = evaluate(
            s,
            "item",
            item,
            jq.as_mut().and_then(Iterator::next),
            cancel,
        )?;
        if passed != s.invert {
            kept.push(item.clone());
        } else {
            filtered += 1;
        }
    }
    Ok(serde_json::json!({
        "passed": !kept.is_empty(),
        "reason": format!("Filtered {filtered} items, {} passed", kept.len()),
        "data": kept,
        "filtered_count": filtered,
    }))
}

/// How Python prints a result in FlowMason's reasons (`True`, `None`, ...).
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_store::ErrorClass;
    use serde_json::json;

    async fn run(input: Value) -> Result<Value, ComponentError> {
        let (ctx, _) = context();
        Filter.execute(input, ctx).await.map(|o| o.output)
    }

    #[tokio::test]
    async fn pass_fail_with_a_python_condition() {
        let out = run(json!({"data": {"score": 0.9}, "condition": "data['score'] > 0.8"}))
            .await
            .unwrap();
        assert_eq!(out["passed"], json!(true));
        assert_eq!(out["data"], json!({"score": 0.9}));
        assert_eq!(
            out["reason"],
            json!("Expression 'data['score'] > 0.8' = True")
        );
        let out = run(
            json!({"data": {"score": 0.5}, "condition": "data['score'] > 0.8", "invert": true}),
        )
        .await
        .unwrap();
        assert_eq!(out["passed"], json!(true));
        assert!(out["reason"].as_str().unwrap().starts_with("(inverted)"));
    }

    #[tokio::test]
    async fn filter_array_keeps_matching_items() {
        let out = run(json!({
            "data": [{"status": "active"}, {"status": "off"}, {"x": 1}],
            "condition": "item.get('status') == 'active'",
            "filter_mode": "filter_array",
        }))
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"passed": true, "data": [{"status": "active"}], "filtered_count": 2,
                   "reason": "Filtered 2 items, 1 passed"})
        );
    }

    #[tokio::test]
    async fn field_conditions_and_pass_if_missing() {
        let out = run(json!({"data": {"status": "active"}, "field_conditions": {"status": "active", "ok": true}}))
            .await
            .unwrap();
        assert_eq!(out["passed"], json!(false));
        assert_eq!(out["reason"], json!("Missing field: ok"));
        let out = run(json!({"data": {"status": "active"}, "field_conditions": {"status": "active", "ok": true}, "pass_if_missing": true}))
            .await
            .unwrap();
        assert_eq!(out["passed"], json!(true));
    }

    #[tokio::test]
    async fn jq_condition_is_our_extension() {
        let out = run(json!({"data": [{"n": 1}, {"n": 5}], "jq_condition": ".n > 2", "filter_mode": "filter_array"}))
            .await
            .unwrap();
        assert_eq!(out["data"], json!([{"n": 5}]));
    }

    #[tokio::test]
    async fn failing_expression_blocks_unless_pass_if_missing() {
        let out = run(json!({"data": {}, "condition": "data['score'] > 1"}))
            .await
            .unwrap();
        assert_eq!(out["passed"], json!(false));
        assert_eq!(
            out["reason"],
            json!("Expression error: KeyError: \"score\"")
        );
        let out =
            run(json!({"data": {}, "condition": "data['score'] > 1", "pass_if_missing": true}))
                .await
                .unwrap();
        assert_eq!(out["passed"], json!(true));
    }

    #[tokio::test]
    async fn config_errors() {
        let cases = [
            (json!({"condition": "True"}), "`data` is required"),
            (
                json!({"data": 1, "condition": "os.system('x')"}),
                "name \"os\"",
            ),
            (
                json!({"data": 1, "condition": "eval('1')"}),
                "function \"eval\"",
            ),
            (
                json!({"data": [1], "condition": "data > 1", "filter_mode": "filter_array"}),
                "use `item`",
            ),
            (
                json!({"data": 1, "condition": "data >"}),
                "not valid Python",
            ),
            (
                json!({"data": 1, "filter_mode": "all"}),
                "`filter_mode` must be",
            ),
            (
                json!({"data": 1, "condition": "True", "jq_condition": "."}),
                "not both",
            ),
            (json!({"data": 1, "jq_condition": ".a | ("}), "is invalid"),
            (
                json!({"data": 1, "field_conditions": [1]}),
                "must be an object",
            ),
            (
                json!({"data": 1, "invert": "yes"}),
                "`invert` must be a boolean",
            ),
        ];
        for (input, want) in cases {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
    }

    #[test]
    fn validate_rejects_bad_static_conditions() {
        assert!(
            Filter
                .validate(&json!({"data": "{{input.x}}", "condition": "data > 1"}))
                .is_ok()
        );
        assert!(
            Filter
                .validate(&json!({"condition": "{{input.cond}}"}))
                .is_ok()
        );
        let err = Filter
            .validate(&json!({"condition": "exec('x')"}))
            .unwrap_err();
        assert!(err.message.contains("function \"exec\""), "{}", err.message);
    }
}

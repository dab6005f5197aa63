//! The tasks of `retry`, `timeout` and `parallel`: stages of the pipeline run inside the stage.
//!
//! FlowMason's operators take Python callables or coroutines as `task`/`tasks`, which a pipeline file
//! cannot hold (given a JSON value, its `retry` and `timeout` just hand the value back, and `parallel`
//! fails). Here a task names stages of the same pipeline, as `foreach`'s `loop_stages` do: a stage id, or
//! a list of them run in dependency order (see `flowmason_actors::nested`); the task's result is the
//! output of its last stage. The owning stage returns every task stage as its `skip`, so the engine does
//! not run them again as ordinary stages.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use flowmason_actors::nested::{self, NestedError};
use flowmason_actors::{ComponentError, RunView, StageContext};

use super::type_name;

/// A task field: a stage id or a non-empty list of them. `None` when absent or null.
pub(crate) fn task(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<String>>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => stage_ids(value)
            .map(Some)
            .ok_or_else(|| not_a_task(component, field, value)),
    }
}

/// A list of tasks (`parallel`'s `tasks`): each a stage id or a list of them; at least one.
pub(crate) fn tasks(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<Vec<String>>>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                stage_ids(item).ok_or_else(|| not_a_task(component, &format!("{field}[{i}]"), item))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a non-empty list of tasks (each a stage id or a list of \
             stage ids), got {}",
            describe(other)
        ))),
    }
}

fn stage_ids(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(id) if !id.is_empty() => Some(vec![id.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect(),
        _ => None,
    }
}

fn not_a_task(component: &str, field: &str, value: &Value) -> ComponentError {
    ComponentError::config(format!(
        "{component}: `{field}` must name the stages to run (a stage id or a list of stage ids of \
         this pipeline; FlowMason's Python callables cannot be written in a pipeline file), got {}",
        describe(value)
    ))
}

fn describe(value: &Value) -> String {
    match value {
        Value::Array(items) if items.is_empty() => "an empty list".into(),
        Value::String(s) if s.is_empty() => "an empty string".into(),
        other => type_name(other).into(),
    }
}

/// An optional number field that must satisfy `ok` (described by `bound`, e.g. "at least 1"): `None`
/// when absent or null.
pub(crate) fn opt_number(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    ok: impl Fn(f64) -> bool,
    bound: &str,
) -> Result<Option<f64>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite() && ok(*n))
            .map(Some)
            .ok_or_else(|| {
                ComponentError::config(format!(
                    "{component}: `{field}` must be a number {bound}, got {v}"
                ))
            }),
    }
}

/// The run view the engine gives stages that run others.
pub(crate) fn view(component: &str, ctx: &StageContext) -> Result<Arc<RunView>, ComponentError> {
    ctx.run_view().cloned().ok_or_else(|| {
        ComponentError::internal(format!(
            "{component}: the engine gave this stage no view of its run"
        ))
    })
}

/// Runs one task inside the stage of `ctx`; its result is its last stage's output.
pub(crate) async fn run(
    ctx: &StageContext,
    view: &RunView,
    stages: &[String],
    label: &str,
) -> Result<Value, NestedError> {
    let outcome = nested::run_stages(ctx, view, stages, label, BTreeMap::new()).await?;
    Ok(outcome.last.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_task_is_a_stage_id_or_a_list_of_them() {
        let m = map(json!({"a": "fetch", "b": ["fetch", "parse"], "c": {"x": 1}, "d": []}));
        assert_eq!(
            task("retry", &m, "a").expect("ok"),
            Some(vec!["fetch".to_string()])
        );
        assert_eq!(
            task("retry", &m, "b").expect("ok").map(|v| v.len()),
            Some(2)
        );
        assert_eq!(task("retry", &m, "none").expect("ok"), None);
        let err = task("retry", &m, "c").expect_err("refused");
        assert!(
            err.message.contains("retry: `c` must name the stages"),
            "{}",
            err.message
        );
        let err = task("retry", &m, "d").expect_err("refused");
        assert!(err.message.contains("an empty list"), "{}", err.message);
    }

    #[test]
    fn tasks_name_the_bad_element() {
        let m = map(json!({"tasks": ["a", ["b", "c"], 3], "empty": []}));
        let err = tasks("parallel", &m, "tasks").expect_err("refused");
        assert!(err.message.contains("`tasks[2]`"), "{}", err.message);
        let err = tasks("parallel", &m, "empty").expect_err("refused");
        assert!(err.message.contains("non-empty list"), "{}", err.message);
        let m = map(json!({"tasks": ["a", ["b", "c"]]}));
        assert_eq!(
            tasks("parallel", &m, "tasks").expect("ok").map(|t| t.len()),
            Some(2)
        );
    }
}

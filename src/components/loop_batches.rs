//! `loop`: splits a list into batches, as FlowMason's `loop` operator does. It runs no stages: stages after
//! it read `{{upstream.<loop>.batches[0]}}` and so on (`foreach` is the component that runs stages per
//! item).
//!
//! Input: `items` (a list, required), `batch_size` (1 to 1000, default 1), `max_iterations` (at least 1:
//! the most batches made), `start_index` (default 0: items before it are left out), `include_metadata`
//! (default true).
//!
//! Output: `{batches, total_items, total_batches, has_more, metadata}`, `metadata` being
//! `{start_index, batch_size, items_processed, items_remaining}` (or `{}` without `include_metadata`).
//! As in FlowMason, `items_processed` counts the skipped items before `start_index` too, so a
//! `start_index` past the end gives a negative `items_remaining`. Errors: `config` for bad fields.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, static_config, type_name};

/// The component type name.
pub const NAME: &str = "loop";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loop;

struct Settings {
    batch_size: usize,
    max_iterations: Option<usize>,
    start_index: usize,
    include_metadata: bool,
}

/// An optional integer of at least `min`: FlowMason's pydantic bounds, with the field named.
fn int_at_least(
    map: &Map<String, Value>,
    field: &str,
    min: u64,
    max: Option<u64>,
) -> Result<Option<usize>, ComponentError> {
    let Some(value) = map.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(n) if n >= min && max.is_none_or(|m| n <= m) => Ok(Some(n as usize)),
        _ => Err(ComponentError::config(match max {
            Some(max) => {
                format!("{NAME}: `{field}` must be an integer from {min} to {max}, got {value}")
            }
            None => format!("{NAME}: `{field}` must be an integer of at least {min}, got {value}"),
        })),
    }
}

fn settings(map: &Map<String, Value>) -> Result<Settings, ComponentError> {
    Ok(Settings {
        batch_size: int_at_least(map, "batch_size", 1, Some(1000))?.unwrap_or(1),
        max_iterations: int_at_least(map, "max_iterations", 1, None)?,
        start_index: int_at_least(map, "start_index", 0, None)?.unwrap_or(0),
        include_metadata: opt_bool(NAME, map, "include_metadata", true)?,
    })
}

/// The batches of `items` under `s`, and FlowMason's output.
fn batches(items: Vec<Value>, s: &Settings) -> Value {
    let total = items.len();
    let mut batches: Vec<Value> = Vec::new();
    let rest = items.into_iter().skip(s.start_index).collect::<Vec<_>>();
    for chunk in rest.chunks(s.batch_size) {
        if s.max_iterations.is_some_and(|max| batches.len() >= max) {
            break;
        }
        batches.push(Value::Array(chunk.to_vec()));
    }
    let in_batches: usize = batches
        .iter()
        .map(|b| b.as_array().map_or(0, Vec::len))
        .sum();
    let processed = in_batches + s.start_index;
    let metadata = if s.include_metadata {
        json!({
            "start_index": s.start_index,
            "batch_size": s.batch_size,
            "items_processed": processed,
            "items_remaining": total as i64 - processed as i64,
        })
    } else {
        json!({})
    };
    json!({
        "total_batches": batches.len(),
        "batches": batches,
        "total_items": total,
        "has_more": processed < total,
        "metadata": metadata,
    })
}

impl Component for Loop {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        if let Some(items) = statics.get("items").filter(|v| !v.is_array()) {
            return Err(ComponentError::config(format!(
                "{NAME}: `items` must be a list, got {}",
                type_name(items)
            )));
        }
        settings(&statics).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let s = settings(&map)?;
            let items = match map.remove("items") {
                Some(Value::Array(items)) => items,
                None | Some(Value::Null) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `items` is required"
                    )));
                }
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `items` must be a list, got {}",
                        type_name(&other)
                    )));
                }
            };
            Ok(batches(items, &s).into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    async fn run(input: Value) -> Result<Value, ComponentError> {
        Loop.execute(input, context().0).await.map(|o| o.output)
    }

    #[tokio::test]
    async fn splits_into_batches_up_to_max_iterations() {
        let out = run(json!({"items": [1, 2, 3, 4, 5], "batch_size": 2, "max_iterations": 2}))
            .await
            .expect("runs");
        assert_eq!(out["batches"], json!([[1, 2], [3, 4]]));
        assert_eq!(out["has_more"], json!(true));
        assert_eq!(out["metadata"]["items_remaining"], json!(1));
        let out = run(json!({"items": [1, 2, 3], "start_index": 1, "include_metadata": false}))
            .await
            .expect("runs");
        assert_eq!(out["batches"], json!([[2], [3]]));
        assert_eq!(out["metadata"], json!({}));
        assert_eq!(out["has_more"], json!(false));
    }

    #[tokio::test]
    async fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"items": [1], "batch_size": 0}), "batch_size"),
            (json!({"items": [1], "batch_size": 1001}), "batch_size"),
            (json!({"items": [1], "max_iterations": 0}), "max_iterations"),
            (json!({"items": [1], "start_index": -1}), "start_index"),
            (json!({"items": "abc"}), "items"),
        ] {
            let err = Loop.validate(&config).expect_err("refused");
            assert!(
                err.message.contains(&format!("`{field}`")),
                "{}",
                err.message
            );
            let err = run(config).await.expect_err("refused");
            assert!(
                err.message.contains(&format!("`{field}`")),
                "{}",
                err.message
            );
        }
        let err = run(json!({})).await.expect_err("items required");
        assert!(
            err.message.contains("`items` is required"),
            "{}",
            err.message
        );
        assert!(
            Loop.validate(&json!({"items": "{{input.docs}}", "batch_size": 3}))
                .is_ok()
        );
    }
}

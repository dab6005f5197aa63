//! `variable_set`: names a value (optionally a part of it) for later stages, as FlowMason's `variable_set`.
//!
//! Input: `name` (an identifier), `value`, `scope` (`pipeline` | `step` | `global`, recorded only),
//! `overwrite` (default true), `extract_path` (a dot path with `[i]` indexes into `value`; a path that does
//! not resolve gives `null`, as in FlowMason).
//! Output: `{name, value, previous_value, was_set}`. A run's stage outputs are immutable events, so the
//! variable lives in this stage's output: later stages read it as `{{upstream.<stage>.value}}`. No earlier
//! value can exist in that model: `previous_value` is always `null` and `was_set` always true.

use futures::future::BoxFuture;
use serde_json::Value;

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{config_object, input_object, is_templated, opt_bool, opt_str};

/// The component type name.
pub const NAME: &str = "variable_set";

const SCOPES: &[&str] = &["pipeline", "step", "global"];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct VariableSet;

impl Component for VariableSet {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        for field in ["name", "scope"] {
            if let Some(v) = map.get(field)
                && !is_templated(v)
            {
                check_field(field, v)?;
            }
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
            let name = map
                .get("name")
                .ok_or_else(|| ComponentError::config(format!("{NAME}: `name` is required")))?;
            check_field("name", name)?;
            if let Some(scope) = map.get("scope") {
                check_field("scope", scope)?;
            }
            opt_bool(NAME, &map, "overwrite", true)?;
            let value = map
                .remove("value")
                .ok_or_else(|| ComponentError::config(format!("{NAME}: `value` is required")))?;
            let value = match opt_str(NAME, &map, "extract_path")? {
                Some(path) if !path.is_empty() => extract(&value, path),
                _ => value,
            };
            Ok(ComponentOutput::from(serde_json::json!({
                "name": map.get("name").cloned().unwrap_or(Value::Null),
                "value": value,
                "previous_value": null,
                "was_set": true,
            })))
        })
    }
}

fn check_field(field: &str, value: &Value) -> Result<(), ComponentError> {
    let Value::String(s) = value else {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a string, got {}",
            super::type_name(value)
        )));
    };
    match field {
        "name" => {
            let mut chars = s.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(ComponentError::config(format!(
                    "{NAME}: `name` must be an identifier (letters, digits, _; not starting with a digit), got {s:?}"
                )));
            }
        }
        _ => {
            if !SCOPES.contains(&s.as_str()) {
                return Err(ComponentError::config(format!(
                    "{NAME}: `scope` must be one of {}, got {s:?}",
                    SCOPES.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// FlowMason's `_extract_path`: `a.b[0].c`; anything that does not resolve gives `null`.
fn extract(data: &Value, path: &str) -> Value {
    let normalized = path.replace('[', ".[");
    let mut current = data;
    for part in normalized.split('.').filter(|p| !p.is_empty()) {
        let next = if let Some(index) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            index
                .parse::<usize>()
                .ok()
                .and_then(|i| current.as_array().and_then(|a| a.get(i)))
        } else {
            current.as_object().and_then(|o| o.get(part))
        };
        match next {
            Some(Value::Null) | None => return Value::Null,
            Some(v) => current = v,
        }
    }
    current.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_store::ErrorClass;
    use serde_json::json;

    async fn run(input: Value) -> Result<Value, ComponentError> {
        let (ctx, _) = context();
        VariableSet.execute(input, ctx).await.map(|o| o.output)
    }

    #[tokio::test]
    async fn sets_and_extracts() {
        let out = run(json!({"name": "total", "value": 3})).await.unwrap();
        assert_eq!(
            out,
            json!({"name": "total", "value": 3, "previous_value": null, "was_set": true})
        );
        let out = run(
            json!({"name": "id", "value": {"items": [{"id": 7}]}, "extract_path": "items[0].id"}),
        )
        .await
        .unwrap();
        assert_eq!(out["value"], json!(7));
        let out = run(json!({"name": "id", "value": {}, "extract_path": "a.b"}))
            .await
            .unwrap();
        assert_eq!(out["value"], Value::Null);
    }

    #[tokio::test]
    async fn config_errors() {
        for (input, want) in [
            (json!({"value": 1}), "`name` is required"),
            (json!({"name": "x"}), "`value` is required"),
            (json!({"name": "1x", "value": 1}), "must be an identifier"),
            (
                json!({"name": "x", "value": 1, "scope": "world"}),
                "`scope` must be one of",
            ),
            (
                json!({"name": "x", "value": 1, "overwrite": "no"}),
                "`overwrite` must be a boolean",
            ),
        ] {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
        assert!(VariableSet.validate(&json!({"name": "bad name"})).is_err());
        assert!(
            VariableSet
                .validate(&json!({"name": "{{input.n}}"}))
                .is_ok()
        );
    }
}

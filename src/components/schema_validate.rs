//! `schema_validate`: checks data against a JSON Schema (Draft 7, as FlowMason's `Draft7Validator`).
//!
//! Input: `data`, `json_schema` (an object), `collect_all_errors` (default true; false reports the first
//! error only), `coerce_types` (FlowMason's shallow coercion to the schema's `type` first), `strict`
//! (accepted for compatibility; as in FlowMason it changes nothing: invalid data is reported, not failed).
//! Output: `{valid, data, errors, error_count}`, each error `{path, message, validator, validator_value}`
//! with `path` the instance path as a list of keys and indexes. Errors: `data` or `json_schema` missing, or
//! a schema that is not a valid Draft 7 schema (class `config`). Remote `$ref`s are never fetched.

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{config_object, input_object, is_templated, opt_bool, type_name};

/// The component type name.
pub const NAME: &str = "schema_validate";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaValidate;

impl Component for SchemaValidate {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        if let Some(schema) = map.get("json_schema")
            && !is_templated(schema)
        {
            compile(schema)?;
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
            let mut data = map
                .remove("data")
                .ok_or_else(|| ComponentError::config(format!("{NAME}: `data` is required")))?;
            let schema = map.get("json_schema").ok_or_else(|| {
                ComponentError::config(format!("{NAME}: `json_schema` is required"))
            })?;
            let all = opt_bool(NAME, &map, "collect_all_errors", true)?;
            opt_bool(NAME, &map, "strict", true)?;
            if opt_bool(NAME, &map, "coerce_types", false)? {
                data = coerce(data, schema);
            }
            let validator = compile(schema)?;
            let mut errors = Vec::new();
            for error in validator.iter_errors(&data) {
                let path: Vec<Value> = error
                    .instance_path()
                    .iter()
                    .map(|segment| match segment {
                        jsonschema::paths::LocationSegment::Property(p) => {
                            Value::String(p.to_string())
                        }
                        jsonschema::paths::LocationSegment::Index(i) => Value::from(i),
                    })
                    .collect();
                let validator_value = schema
                    .pointer(error.schema_path().as_str())
                    .cloned()
                    .unwrap_or(Value::Null);
                errors.push(serde_json::json!({
                    "path": path,
                    "message": error.to_string(),
                    "validator": error.kind().keyword(),
                    "validator_value": validator_value,
                }));
                if !all {
                    break;
                }
            }
            Ok(ComponentOutput::from(serde_json::json!({
                "valid": errors.is_empty(),
                "error_count": errors.len(),
                "errors": errors,
                "data": data,
            })))
        })
    }
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, ComponentError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(ComponentError::config(format!(
            "{NAME}: `json_schema` must be an object, got {}",
            type_name(schema)
        )));
    }
    jsonschema::draft7::new(schema).map_err(|e| {
        ComponentError::config(format!("{NAME}: `json_schema` is not a valid schema: {e}"))
    })
}

/// FlowMason's `_coerce_types`: converts scalars to the schema's `type`, recursing into object
/// properties and array items; what cannot be converted stays as it is.
fn coerce(data: Value, schema: &Value) -> Value {
    let ty = schema.get("type").and_then(Value::as_str);
    match (ty, data) {
        (Some("string"), Value::String(s)) => Value::String(s),
        (Some("string"), other) => Value::String(match other {
            Value::Null => "None".into(),
            Value::Bool(b) => if b { "True" } else { "False" }.into(),
            v => v.to_string(),
        }),
        (Some("integer"), Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(Value::String(s)),
        (Some("integer"), Value::Number(n)) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => n
            .as_f64()
            .map(|f| Value::from(f as i64))
            .unwrap_or(Value::Number(n)),
        (Some("number"), Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(s)),
        (Some("boolean"), Value::String(s)) => {
            Value::Bool(matches!(s.to_lowercase().as_str(), "true" | "1" | "yes"))
        }
        (Some("boolean"), other) => Value::Bool(super::expr::truthy(&other)),
        (Some("object"), Value::Object(map)) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let coerced: Map<String, Value> = map
                .into_iter()
                .map(|(k, v)| match props.and_then(|p| p.get(&k)) {
                    Some(sub) => {
                        let v = coerce(v, sub);
                        (k, v)
                    }
                    None => (k, v),
                })
                .collect();
            Value::Object(coerced)
        }
        (Some("array"), Value::Array(items)) => {
            let item_schema = schema
                .get("items")
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            Value::Array(items.into_iter().map(|i| coerce(i, &item_schema)).collect())
        }
        (_, other) => other,
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
        SchemaValidate.execute(input, ctx).await.map(|o| o.output)
    }

    fn schema() -> Value {
        json!({"type": "object", "required": ["name", "age"],
               "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}})
    }

    #[tokio::test]
    async fn valid_and_invalid_data() {
        let out = run(json!({"data": {"name": "Ada", "age": 36}, "json_schema": schema()}))
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"valid": true, "data": {"name": "Ada", "age": 36}, "errors": [], "error_count": 0})
        );
        let out = run(json!({"data": {"age": -1}, "json_schema": schema()}))
            .await
            .unwrap();
        assert_eq!(out["valid"], json!(false));
        assert_eq!(out["error_count"], json!(2));
        let errors = out["errors"].as_array().unwrap();
        let minimum = errors.iter().find(|e| e["validator"] == "minimum").unwrap();
        assert_eq!(minimum["path"], json!(["age"]));
        assert_eq!(minimum["validator_value"], json!(0));
        assert!(errors.iter().any(
            |e| e["validator"] == "required" && e["message"].as_str().unwrap().contains("name")
        ));
        let out =
            run(json!({"data": {"age": -1}, "json_schema": schema(), "collect_all_errors": false}))
                .await
                .unwrap();
        assert_eq!(out["error_count"], json!(1));
    }

    #[tokio::test]
    async fn coercion_converts_before_validating() {
        let out = run(json!({"data": {"name": 5, "age": "36"}, "json_schema": schema(), "coerce_types": true}))
            .await
            .unwrap();
        assert_eq!(out["valid"], json!(true));
        assert_eq!(out["data"], json!({"name": "5", "age": 36}));
    }

    #[tokio::test]
    async fn config_errors() {
        for (input, want) in [
            (json!({"json_schema": {}}), "`data` is required"),
            (json!({"data": 1}), "`json_schema` is required"),
            (
                json!({"data": 1, "json_schema": "object"}),
                "must be an object",
            ),
            (
                json!({"data": 1, "json_schema": {"type": "nope"}}),
                "not a valid schema",
            ),
        ] {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
        assert!(
            SchemaValidate
                .validate(&json!({"json_schema": {"minimum": "x"}}))
                .is_err()
        );
    }
}

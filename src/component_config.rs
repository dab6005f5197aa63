//! Readers of a stage's `config` and input fields, with one error message per wrong field naming the
//! component, the field and what it got: what the components and the LLM helpers check their fields
//! with. A leaf: it knows the engine's error type and nothing else of FlowMason.

use serde_json::{Map, Value};

use flowmason_actors::ComponentError;

/// The stage input as an object; `null` (a stage with no config) counts as an empty one.
pub fn input_object(component: &str, input: Value) -> Result<Map<String, Value>, ComponentError> {
    match input {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ComponentError::config(format!(
            "{component}: input must be an object, got {}",
            type_name(&other)
        ))),
    }
}

/// The static config as an object for `validate`; `null` counts as an empty one.
pub fn config_object<'a>(
    component: &str,
    config: &'a Value,
) -> Result<Option<&'a Map<String, Value>>, ComponentError> {
    match config {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        other => Err(ComponentError::config(format!(
            "{component}: config must be an object, got {}",
            type_name(other)
        ))),
    }
}

/// The fields of a stage's `config` whose values hold no templates: what `validate` can check before
/// any run (templated fields are checked when the run renders them). `None` for no config.
pub fn static_config(
    component: &str,
    config: &Value,
) -> Result<Option<Map<String, Value>>, ComponentError> {
    Ok(config_object(component, config)?.map(|map| {
        map.iter()
            .filter(|(_, v)| !is_templated(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }))
}

/// Whether a static config value is (or holds) a template, so that its type is only known after rendering.
pub fn is_templated(value: &Value) -> bool {
    flowmason_actors::template::has_templates(value)
}

/// A JSON type name for messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional boolean field: absent or `null` gives `default`.
pub fn opt_bool(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    default: bool,
) -> Result<bool, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a boolean, got {}",
            type_name(other)
        ))),
    }
}

/// An optional list of strings (stage ids): absent or `null` gives an empty list.
pub fn opt_str_list(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(ComponentError::config(format!(
                    "{component}: `{field}` must be a list of stage ids, got an element that is {}",
                    type_name(other)
                ))),
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a list of stage ids, got {}",
            type_name(other)
        ))),
    }
}

/// An optional string field: absent or `null` gives `None`.
pub fn opt_str<'a>(
    component: &str,
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// An optional integer field within `range` (inclusive): `None` when absent or null; anything else is a
/// configuration error naming the field, the range and the value.
pub fn opt_int_in(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                ComponentError::config(format!(
                    "{component}: `{field}` must be an integer from {} to {}, got {v}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// An optional list of strings (criteria, aspects, ...): absent or `null` gives an empty list.
pub fn opt_text_list(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ComponentError> {
    let not_strings = |what: String| {
        ComponentError::config(format!(
            "{component}: `{field}` must be an array of strings, got {what}"
        ))
    };
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(not_strings(format!(
                    "an element that is {}",
                    type_name(other)
                ))),
            })
            .collect(),
        Some(other) => Err(not_strings(type_name(other).to_string())),
    }
}

//! kube-apiserver's rules for what any object may carry in `metadata.labels` and
//! `metadata.annotations`, and for the keys and values of ConfigMap and Secret data, with its messages:
//! clients (and selectors, and the history's label index) rely on what a real cluster would have
//! refused never being stored.
//!
//! - label keys and annotation keys are qualified names: an optional DNS-1123 subdomain prefix (at most
//!   253 characters) and `/`, then a name of at most 63 characters matching
//!   `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` (annotation keys are checked lowercased, as upstream);
//! - label values are empty or at most 63 characters of the same form;
//! - annotations together (keys and values) hold at most 256 KiB;
//! - label and annotation values, and ConfigMap `data` values, are strings (upstream's decoder refuses
//!   anything else with 400 BadRequest before validation; so do we);
//! - ConfigMap and Secret data keys are at most 253 characters of `[-._a-zA-Z0-9]`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::error::{ApiError, Cause};

/// The most bytes all annotations of an object may hold, keys and values together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const CONFIG_KEY_MAX: usize = 253;

static QUALIFIED_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$").expect("qualified name regex")
});
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").expect("label value regex")
});
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("subdomain regex")
});
static CONFIG_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[-._a-zA-Z0-9]+$").expect("config key regex"));

const QUALIFIED_NAME_FORMAT: &str = "name part must consist of alphanumeric characters, '-', '_' or \
    '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
    '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_FORMAT: &str = "a valid label must be an empty string or consist of alphanumeric \
    characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
    'MyValue',  or 'my_value',  or '12345', regex used for validation is \
    '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS1123_SUBDOMAIN_FORMAT: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. \
    'example.com', regex used for validation is \
    '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const CONFIG_KEY_FORMAT: &str = "a valid config key must consist of alphanumeric characters, '-', \
    '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
    '[-._a-zA-Z0-9]+')";

fn cause(field: &str, message: String) -> Cause {
    Cause {
        field: field.to_string(),
        message,
    }
}

/// What is wrong with `value` as a qualified name (a label or annotation key), upstream's wording.
pub fn qualified_name_problems(value: &str) -> Vec<String> {
    let parts: Vec<&str> = value.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  \
                 or '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix \
                 and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    let mut problems = Vec::new();
    match prefix {
        Some("") => problems.push("prefix part must be non-empty".to_string()),
        Some(prefix) => {
            if prefix.len() > DNS1123_SUBDOMAIN_MAX {
                problems.push(format!(
                    "prefix part must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
                ));
            }
            if !DNS1123_SUBDOMAIN.is_match(prefix) {
                problems.push(format!("prefix part {DNS1123_SUBDOMAIN_FORMAT}"));
            }
        }
        None => {}
    }
    if name.is_empty() {
        problems.push("name part must be non-empty".to_string());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            problems.push(format!(
                "name part must be no more than {QUALIFIED_NAME_MAX} characters"
            ));
        }
        if !QUALIFIED_NAME.is_match(name) {
            problems.push(QUALIFIED_NAME_FORMAT.to_string());
        }
    }
    problems
}

/// What is wrong with `value` as a label value, upstream's wording.
pub fn label_value_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        problems.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !LABEL_VALUE.is_match(value) {
        problems.push(LABEL_VALUE_FORMAT.to_string());
    }
    problems
}

/// The JSON type name upstream's decoder reports.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A map of strings at `field` (`metadata.labels`, `data`, ...): 400 for a value of another type, as
/// upstream's decoder answers. `Ok(None)` when the field is absent or null.
fn string_map<'a>(
    object: &'a Value,
    path: &[&str],
    field: &str,
) -> Result<Option<Vec<(&'a str, &'a str)>>, ApiError> {
    let mut at = object;
    for step in path {
        at = &at[*step];
    }
    let map = match at {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        other => {
            return Err(ApiError::BadRequest(format!(
                "{field}: cannot unmarshal {} into a map of strings",
                json_type(other)
            )));
        }
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.as_str(), s.as_str())),
            other => Err(ApiError::BadRequest(format!(
                "{field}[{k}]: cannot unmarshal {} into a string: values of {field} must be strings",
                json_type(other)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Checks `metadata.labels` and `metadata.annotations` of any object: `Err` with 400 for values that
/// are not strings, else the `Invalid` causes (empty when all is well).
pub fn metadata_causes(object: &Value) -> Result<Vec<Cause>, ApiError> {
    let mut causes = Vec::new();
    if let Some(labels) = string_map(object, &["metadata", "labels"], "metadata.labels")? {
        for (key, value) in labels {
            for problem in qualified_name_problems(key) {
                causes.push(cause(
                    "metadata.labels",
                    format!("Invalid value: {key:?}: {problem}"),
                ));
            }
            for problem in label_value_problems(value) {
                causes.push(cause(
                    &format!("metadata.labels[{key}]"),
                    format!("Invalid value: {value:?}: {problem}"),
                ));
            }
        }
    }
    if let Some(annotations) =
        string_map(object, &["metadata", "annotations"], "metadata.annotations")?
    {
        let mut total = 0usize;
        for (key, value) in annotations {
            for problem in qualified_name_problems(&key.to_lowercase()) {
                causes.push(cause(
                    "metadata.annotations",
                    format!("Invalid value: {key:?}: {problem}"),
                ));
            }
            total += key.len() + value.len();
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            causes.push(cause(
                "metadata.annotations",
                format!("Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
            ));
        }
    }
    Ok(causes)
}

/// Checks a ConfigMap's `data` (strings) and the keys of its `data` and `binaryData`.
pub fn configmap_causes(object: &Value) -> Result<Vec<Cause>, ApiError> {
    let mut causes = Vec::new();
    if let Some(data) = string_map(object, &["data"], "data")? {
        causes.extend(data_key_causes("data", data.iter().map(|(k, _)| *k)));
    }
    if let Some(binary) = object["binaryData"].as_object() {
        causes.extend(data_key_causes(
            "binaryData",
            binary.keys().map(String::as_str),
        ));
    }
    Ok(causes)
}

/// Checks the keys of a Secret's `data`.
pub fn secret_key_causes(object: &Value) -> Vec<Cause> {
    match object["data"].as_object() {
        Some(data) => data_key_causes("data", data.keys().map(String::as_str)),
        None => Vec::new(),
    }
}

fn data_key_causes<'a>(field: &str, keys: impl Iterator<Item = &'a str>) -> Vec<Cause> {
    let mut causes = Vec::new();
    for key in keys {
        if key.len() > CONFIG_KEY_MAX {
            causes.push(cause(
                &format!("{field}[{key}]"),
                format!("Invalid value: {key:?}: must be no more than {CONFIG_KEY_MAX} characters"),
            ));
        }
        if !CONFIG_KEY.is_match(key) {
            causes.push(cause(
                &format!("{field}[{key}]"),
                format!("Invalid value: {key:?}: {CONFIG_KEY_FORMAT}"),
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qualified_names_follow_upstream() {
        for ok in [
            "app",
            "a",
            "app.kubernetes.io/name",
            "flowmason.io/pipeline",
            "My_Name-1.x",
            &"a".repeat(63),
            &format!("{}/x", "a".repeat(253)),
        ] {
            assert!(qualified_name_problems(ok).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "a b",
            "/name",
            "Example.com/name",
            "a/b/c",
            "prefix/",
            &"a".repeat(64),
            &format!("{}/x", "a".repeat(254)),
        ] {
            assert!(!qualified_name_problems(bad).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn label_values_follow_upstream() {
        for ok in ["", "v1", "a.b_c-d", &"x".repeat(63)] {
            assert!(label_value_problems(ok).is_empty(), "{ok}");
        }
        for bad in ["-x", "x-", "a b", "a/b", &"x".repeat(64)] {
            assert!(!label_value_problems(bad).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn annotations_total_at_most_256_kib_and_values_are_strings() {
        let under = json!({"metadata": {"annotations": {"k": "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT - 1)}}});
        assert!(metadata_causes(&under).expect("strings").is_empty());
        let over =
            json!({"metadata": {"annotations": {"k": "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)}}});
        let causes = metadata_causes(&over).expect("strings");
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.starts_with("Too long"), "{:?}", causes[0]);
        let number = json!({"metadata": {"labels": {"n": 1}}});
        assert!(
            matches!(metadata_causes(&number), Err(ApiError::BadRequest(m)) if m.contains("metadata.labels[n]"))
        );
    }

    #[test]
    fn configmap_data_values_are_strings_with_valid_keys() {
        let bad_value = json!({"data": {"k": true}});
        assert!(configmap_causes(&bad_value).is_err());
        let bad_key = json!({"data": {"a b": "x"}, "binaryData": {"ok": "eA=="}});
        let causes = configmap_causes(&bad_key).expect("strings");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "data[a b]");
    }
}

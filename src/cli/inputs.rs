//! Run inputs from the command line: `--input key=value` pairs and `--inputs FILE.json`.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

use crate::components::type_name;

/// Merges an inputs file (a JSON or YAML object) and `key=value` pairs (later pairs win). A value that
/// parses as JSON keeps its type (`n=3`, `flag=true`, `tags=["a"]`); anything else is a string. Returns
/// `None` when nothing was given, so that the caller can fall back to the pipeline's sample input.
pub fn parse(pairs: &[String], file: Option<&Path>) -> anyhow::Result<Option<Value>> {
    if pairs.is_empty() && file.is_none() {
        return Ok(None);
    }
    let mut inputs = Map::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--inputs: cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .or_else(|_| serde_saphyr::from_str(&text))
            .with_context(|| format!("--inputs: {} is neither JSON nor YAML", path.display()))?;
        match value {
            Value::Object(map) => inputs.extend(map),
            other => bail!(
                "--inputs: {} must hold an object, found {}",
                path.display(),
                type_name(&other)
            ),
        }
    }
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            bail!("--input {pair:?}: expected key=value");
        };
        if key.is_empty() {
            bail!("--input {pair:?}: the key is empty");
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        inputs.insert(key.to_string(), value);
    }
    Ok(Some(Value::Object(inputs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_keep_json_types_and_fall_back_to_strings() {
        let pairs = [
            "n=3".to_string(),
            "name=Ada Lovelace".to_string(),
            "tags=[\"a\"]".to_string(),
            "eq=a=b".to_string(),
        ];
        let inputs = parse(&pairs, None).expect("valid").expect("some");
        assert_eq!(
            inputs,
            json!({"n": 3, "name": "Ada Lovelace", "tags": ["a"], "eq": "a=b"})
        );
    }

    #[test]
    fn nothing_given_is_none() {
        assert_eq!(parse(&[], None).expect("valid"), None);
    }

    #[test]
    fn pair_without_equals_is_an_error_naming_it() {
        let err = parse(&["oops".to_string()], None).expect_err("invalid");
        assert_eq!(err.to_string(), "--input \"oops\": expected key=value");
    }

    #[test]
    fn file_and_pairs_merge_with_pairs_winning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.json");
        std::fs::write(&path, r#"{"a": 1, "b": 2}"#).expect("write");
        let inputs = parse(&["b=3".to_string()], Some(&path))
            .expect("valid")
            .expect("some");
        assert_eq!(inputs, json!({"a": 1, "b": 3}));
    }
}

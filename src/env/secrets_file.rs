//! A local secrets file (`fm run --secrets FILE`): YAML or JSON
//! `{secrets: {<name>: {<key>: <value>}}, configMaps: {<name>: {<key>: <value>}}}`, the Secrets and
//! ConfigMaps a pipeline's `secretKeyRef`/`configMapKeyRef` name, as they would be in the cluster. Scalar
//! values (numbers, booleans) are taken as their text. Namespaces are not distinguished: a local file
//! serves one run.

use std::collections::BTreeMap;
use std::path::Path;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{SecretError, SecretSource};

type Keys = BTreeMap<String, BTreeMap<String, String>>;

/// See the module docs.
#[derive(Clone, Default, PartialEq)]
pub struct SecretsFile {
    secrets: Keys,
    config_maps: Keys,
}

/// Never prints the values.
impl std::fmt::Debug for SecretsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsFile")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("config_maps", &self.config_maps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretsFile {
    pub fn load(path: &Path) -> Result<SecretsFile, SecretError> {
        let origin = format!("secrets file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| SecretError {
            source_name: origin.clone(),
            message: e.to_string(),
        })?;
        SecretsFile::parse(&origin, &text)
    }

    /// Parses the file's text. Error messages give the position and the field path, never the text: it
    /// holds secrets.
    pub fn parse(origin: &str, text: &str) -> Result<SecretsFile, SecretError> {
        let error = |message: String| SecretError {
            source_name: origin.to_string(),
            message,
        };
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(_) => serde_saphyr::from_str(text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                    .unwrap_or_default();
                error(format!("not valid YAML or JSON{at}"))
            })?,
        };
        let Value::Object(mut top) = value else {
            return Err(error(
                "must hold an object {secrets: {...}, configMaps: {...}}".into(),
            ));
        };
        let mut section = |field: &str, alias: &str| -> Result<Keys, SecretError> {
            let raw = top
                .remove(field)
                .or_else(|| top.remove(alias))
                .unwrap_or(Value::Null);
            keys(field, raw).map_err(error)
        };
        let secrets = section("secrets", "secret")?;
        let config_maps = section("configMaps", "config_maps")?;
        if let Some(other) = top.keys().next() {
            return Err(error(format!(
                "unknown field {other:?} (expected secrets and configMaps)"
            )));
        }
        Ok(SecretsFile {
            secrets,
            config_maps,
        })
    }
}

/// `{name: {key: scalar}}` as text values.
fn keys(field: &str, raw: Value) -> Result<Keys, String> {
    let map = match raw {
        Value::Null => return Ok(Keys::new()),
        Value::Object(map) => map,
        _ => {
            return Err(format!(
                "{field} must be an object of name -> {{key: value}}"
            ));
        }
    };
    let mut out = Keys::new();
    for (name, entries) in map {
        let Value::Object(entries) = entries else {
            return Err(format!("{field}.{name} must be an object of key -> value"));
        };
        let mut values = BTreeMap::new();
        for (key, value) in entries {
            let text = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("{field}.{name}.{key} must be a string")),
            };
            values.insert(key, text);
        }
        out.insert(name, values);
    }
    Ok(out)
}

fn get(keys: &Keys, name: &str, key: &str) -> Option<String> {
    keys.get(name).and_then(|k| k.get(key)).cloned()
}

impl SecretSource for SecretsFile {
    fn secret<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        Box::pin(async move { Ok(get(&self.secrets, name, key)) })
    }

    fn config_map<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        Box::pin(async move { Ok(get(&self.config_maps, name, key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yaml_and_json_with_scalars() {
        let yaml = SecretsFile::parse(
            "f",
            "secrets:\n  llm:\n    key: abc\n    port: 8080\nconfigMaps:\n  cfg:\n    on: true\n",
        )
        .unwrap();
        assert_eq!(
            yaml.secret("ns", "llm", "key").await.unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            yaml.secret("ns", "llm", "port").await.unwrap().as_deref(),
            Some("8080")
        );
        assert_eq!(
            yaml.config_map("ns", "cfg", "on").await.unwrap().as_deref(),
            Some("true")
        );
        assert_eq!(yaml.secret("ns", "cfg", "on").await.unwrap(), None);
        let json = SecretsFile::parse("f", r#"{"secrets": {"llm": {"key": "abc"}}}"#).unwrap();
        assert_eq!(
            json.secret("ns", "llm", "key").await.unwrap().as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn errors_name_the_field_and_never_echo_values() {
        let err = |text: &str| {
            SecretsFile::parse("secrets file f", text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("secrets: {s: {k: [topsecret]}}"),
            "secrets file f: secrets.s.k must be a string"
        );
        assert_eq!(
            err("secretz: {}"),
            "secrets file f: unknown field \"secretz\" (expected secrets and configMaps)"
        );
        let syntax = err("secrets: {s: {k: \"topsecret}}");
        assert!(
            syntax.starts_with("secrets file f: not valid YAML or JSON"),
            "{syntax}"
        );
        assert!(!syntax.contains("topsecret"));
    }
}

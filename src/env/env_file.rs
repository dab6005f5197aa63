//! Env files (`fm run --env-file [NAME=]FILE`): `KEY=VALUE` lines, as `kubectl create secret generic NAME
//! --from-env-file=FILE` reads them. With `NAME=`, the file is the Secret (and ConfigMap) called NAME and
//! its lines are that object's keys. Without a name it answers for any Secret or ConfigMap: key `K` of any
//! of them is line `K`, which suits a pipeline whose references all point at one local file.
//!
//! Blank lines and lines starting with `#` are skipped; `export ` before a key is allowed; a value in
//! matching single or double quotes loses them; everything after the first `=` is the value.

use std::collections::BTreeMap;
use std::path::Path;

use futures::future::BoxFuture;

use super::{SecretError, SecretSource};

/// See the module docs.
#[derive(Clone, PartialEq)]
pub struct EnvFile {
    /// The Secret/ConfigMap name this file stands for; `None` for any.
    name: Option<String>,
    values: BTreeMap<String, String>,
}

/// Never prints the values.
impl std::fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvFile")
            .field("name", &self.name)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EnvFile {
    /// Reads `[NAME=]FILE` as given to `--env-file`. A path that itself contains `=` can be given as
    /// `=PATH` (an empty name).
    pub fn load(arg: &str) -> Result<EnvFile, SecretError> {
        let (name, path) = match arg.split_once('=') {
            Some((name, path)) => ((!name.is_empty()).then(|| name.to_string()), path),
            None => (None, arg),
        };
        let origin = format!("env file {path}");
        let text = std::fs::read_to_string(Path::new(path)).map_err(|e| SecretError {
            source_name: origin.clone(),
            message: e.to_string(),
        })?;
        EnvFile::parse(&origin, name, &text)
    }

    /// Parses the lines. Errors give the line number, never the line: it may hold a secret.
    pub fn parse(origin: &str, name: Option<String>, text: &str) -> Result<EnvFile, SecretError> {
        let mut values = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(SecretError {
                    source_name: origin.to_string(),
                    message: format!("line {}: expected KEY=VALUE", i + 1),
                });
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(SecretError {
                    source_name: origin.to_string(),
                    message: format!("line {}: the key is empty", i + 1),
                });
            }
            values.insert(key.to_string(), unquote(value.trim()).to_string());
        }
        Ok(EnvFile { name, values })
    }

    fn get(&self, name: &str, key: &str) -> Option<String> {
        match &self.name {
            Some(own) if own != name => None,
            _ => self.values.get(key).cloned(),
        }
    }
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if value.len() >= 2
            && let Some(inner) = value
                .strip_prefix(quote)
                .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

impl SecretSource for EnvFile {
    fn secret<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        Box::pin(async move { Ok(self.get(name, key)) })
    }

    fn config_map<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        Box::pin(async move { Ok(self.get(name, key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# comment\n\nexport anthropic-key=sk-ant-1\nQUOTED=\"a b\"\nEQ=x=y\n";

    #[tokio::test]
    async fn named_and_catch_all_files() {
        let any = EnvFile::parse("f", None, TEXT).unwrap();
        assert_eq!(
            any.secret("ns", "whatever", "anthropic-key")
                .await
                .unwrap()
                .as_deref(),
            Some("sk-ant-1")
        );
        assert_eq!(
            any.config_map("ns", "c", "QUOTED")
                .await
                .unwrap()
                .as_deref(),
            Some("a b")
        );
        assert_eq!(
            any.secret("ns", "s", "EQ").await.unwrap().as_deref(),
            Some("x=y")
        );
        let named = EnvFile::parse("f", Some("llm-secrets".into()), TEXT).unwrap();
        assert_eq!(
            named
                .secret("ns", "llm-secrets", "anthropic-key")
                .await
                .unwrap()
                .as_deref(),
            Some("sk-ant-1")
        );
        assert_eq!(
            named.secret("ns", "other", "anthropic-key").await.unwrap(),
            None
        );
    }

    #[test]
    fn bad_lines_are_named_by_number_only() {
        let err =
            EnvFile::parse("env file f", None, "A=1\nsk-secret-without-equals\n").unwrap_err();
        assert_eq!(err.to_string(), "env file f: line 2: expected KEY=VALUE");
    }
}

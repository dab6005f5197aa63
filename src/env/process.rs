//! The process environment as a source (`fm run`): key `KEY` of Secret `NAME` is the variable
//! `FM_SECRET_<NAME>_<KEY>`, of ConfigMap `NAME` the variable `FM_CONFIGMAP_<NAME>_<KEY>`, with `NAME` and
//! `KEY` upper-cased and every character other than a letter or digit turned into `_` (Secret
//! `llm-secrets`, key `anthropic-key`: `FM_SECRET_LLM_SECRETS_ANTHROPIC_KEY`). The prefix keeps the rest of
//! the environment out of reach of pipelines.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::{SecretError, SecretSource};

/// A snapshot of the variables with our prefixes.
#[derive(Clone, Default, PartialEq)]
pub struct ProcessEnv {
    vars: BTreeMap<String, String>,
}

/// Never prints the values.
impl std::fmt::Debug for ProcessEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.vars.keys()).finish()
    }
}

impl ProcessEnv {
    /// The current process environment.
    pub fn current() -> ProcessEnv {
        ProcessEnv::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The current process environment, with the official SDKs' key variables (`ANTHROPIC_API_KEY`,
    /// `OPENAI_API_KEY`) as keys of Secret `fm-process-env` (`crate::model::project`): `fm run` only,
    /// which runs the user's own pipelines with the user's own keys; a server never offers them.
    pub fn current_with_sdk_keys() -> ProcessEnv {
        let mut env = ProcessEnv::current();
        env.add_sdk_keys(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        env
    }

    /// Adds the SDK key variables among `vars` as keys of Secret `fm-process-env`.
    pub fn add_sdk_keys(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        use crate::llm::ProviderKind;
        use crate::model::project::PROCESS_ENV_SECRET;
        for (name, value) in vars {
            if ProviderKind::ALL
                .iter()
                .any(|k| k.conventional_key_var() == name)
            {
                self.vars.insert(
                    ProcessEnv::variable("FM_SECRET_", PROCESS_ENV_SECRET, &name),
                    value,
                );
            }
        }
    }

    /// A given set of variables (tests, embedding).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> ProcessEnv {
        ProcessEnv {
            vars: vars
                .into_iter()
                .filter(|(k, _)| k.starts_with("FM_SECRET_") || k.starts_with("FM_CONFIGMAP_"))
                .collect(),
        }
    }

    /// The variable that holds `key` of `name` under `prefix`.
    pub fn variable(prefix: &str, name: &str, key: &str) -> String {
        let norm = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!("{prefix}{}_{}", norm(name), norm(key))
    }
}

impl SecretSource for ProcessEnv {
    fn secret<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        let var = ProcessEnv::variable("FM_SECRET_", name, key);
        Box::pin(async move { Ok(self.vars.get(&var).cloned()) })
    }

    fn config_map<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        let var = ProcessEnv::variable("FM_CONFIGMAP_", name, key);
        Box::pin(async move { Ok(self.vars.get(&var).cloned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_normalised_names() {
        let env = ProcessEnv::from_vars([
            (
                "FM_SECRET_LLM_SECRETS_ANTHROPIC_KEY".to_string(),
                "k1".to_string(),
            ),
            ("FM_CONFIGMAP_CFG_MODE".to_string(), "fast".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        assert_eq!(
            env.secret("ns", "llm-secrets", "anthropic-key")
                .await
                .unwrap()
                .as_deref(),
            Some("k1")
        );
        assert_eq!(
            env.config_map("ns", "cfg", "mode")
                .await
                .unwrap()
                .as_deref(),
            Some("fast")
        );
        assert_eq!(env.secret("ns", "cfg", "mode").await.unwrap(), None);
        assert!(!format!("{env:?}").contains("k1"));
    }
}

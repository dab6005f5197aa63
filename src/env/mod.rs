//! A run's environment: `spec.env` entries with a literal `value` are in the plan; entries `valueFrom` a
//! Secret or ConfigMap key (and LLM provider keys, see `crate::llm::providers`) are recorded in the plan
//! as references only (`PlanSpec.envFrom`) and resolved through a [`SecretSource`] each time the run starts
//! or resumes. Secret values are handed to the engine as values to redact.
//!
//! Sources: a local secrets file ([`SecretsFile`]), env files ([`EnvFile`]), the process environment
//! ([`ProcessEnv`]), tried in order by [`Chain`]; the Kubernetes source comes with the operator.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use flowmason_actors::{EnvRef, EnvRefKind, EnvResolver, PlanSpec, ResolvedEnv};

pub mod env_file;
pub mod process;
pub mod secrets_file;

pub use env_file::EnvFile;
pub use process::ProcessEnv;
pub use secrets_file::SecretsFile;

/// A source could not be asked (unreachable API, unreadable file). A key that is simply not there is not
/// an error: sources answer `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SecretError {
    /// Which source failed (`secrets file /x.yaml`, `kubernetes`).
    pub source_name: String,
    pub message: String,
}

/// Where Secret and ConfigMap keys are read from. Asynchronous because the Kubernetes source asks the API
/// server; local sources answer at once.
pub trait SecretSource: Send + Sync {
    /// The value of `key` in Secret `name` of `namespace`; `None` when the Secret or the key is missing.
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>>;

    /// The value of `key` in ConfigMap `name` of `namespace`; `None` when it is missing.
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>>;
}

/// Sources asked in order; the first that knows a key answers.
#[derive(Default)]
pub struct Chain {
    sources: Vec<Box<dyn SecretSource>>,
}

impl Chain {
    pub fn new() -> Chain {
        Chain::default()
    }

    pub fn with(mut self, source: impl SecretSource + 'static) -> Chain {
        self.sources.push(Box::new(source));
        self
    }

    async fn lookup(
        &self,
        kind: EnvRefKind,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, SecretError> {
        for source in &self.sources {
            let found = match kind {
                EnvRefKind::Secret => source.secret(namespace, name, key).await?,
                EnvRefKind::ConfigMap => source.config_map(namespace, name, key).await?,
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

impl SecretSource for Chain {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        Box::pin(self.lookup(EnvRefKind::Secret, namespace, name, key))
    }

    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SecretError>> {
        Box::pin(self.lookup(EnvRefKind::ConfigMap, namespace, name, key))
    }
}

/// Why an environment entry could not be resolved. Messages name the pipeline field, the Secret or
/// ConfigMap and the key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{field}: {} {name:?} has no key {key:?}", kind_word(*kind))]
    Missing {
        field: String,
        kind: EnvRefKind,
        name: String,
        key: String,
    },
    #[error("{field}: cannot read {} {name:?}: {source}", kind_word(*kind))]
    Source {
        field: String,
        kind: EnvRefKind,
        name: String,
        #[source]
        source: SecretError,
    },
}

fn kind_word(kind: EnvRefKind) -> &'static str {
    match kind {
        EnvRefKind::Secret => "secret",
        EnvRefKind::ConfigMap => "configMap",
    }
}

/// Resolves every reference; all problems are reported, not just the first. A missing `optional` key
/// gives no variable. Secret values are listed in `secrets` for redaction.
pub async fn resolve(
    refs: &[EnvRef],
    namespace: &str,
    source: &dyn SecretSource,
) -> Result<ResolvedEnv, Vec<EnvError>> {
    let mut vars = BTreeMap::new();
    let mut secrets = Vec::new();
    let mut errors = Vec::new();
    for r in refs {
        let found = match r.kind {
            EnvRefKind::Secret => source.secret(namespace, &r.source, &r.key).await,
            EnvRefKind::ConfigMap => source.config_map(namespace, &r.source, &r.key).await,
        };
        let field = if r.field.is_empty() {
            format!("env {:?}", r.name)
        } else {
            r.field.clone()
        };
        match found {
            Ok(Some(value)) => {
                if r.kind == EnvRefKind::Secret {
                    secrets.push(value.clone());
                }
                vars.insert(r.name.clone(), value);
            }
            Ok(None) if r.optional => {}
            Ok(None) => errors.push(EnvError::Missing {
                field,
                kind: r.kind,
                name: r.source.clone(),
                key: r.key.clone(),
            }),
            Err(source) => errors.push(EnvError::Source {
                field,
                kind: r.kind,
                name: r.source.clone(),
                source,
            }),
        }
    }
    if errors.is_empty() {
        Ok(ResolvedEnv { vars, secrets })
    } else {
        Err(errors)
    }
}

/// The engine's resolver over `source`: reads the `envFrom` references of the run's recorded plan and
/// resolves them in the run's namespace, at start and on resume alike.
pub fn resolver(source: Arc<dyn SecretSource>) -> EnvResolver {
    Arc::new(move |state| {
        let source = Arc::clone(&source);
        let namespace = state.namespace.clone();
        let refs = serde_json::from_value::<PlanSpec>(state.plan.clone())
            .map(|plan| plan.env_from)
            .map_err(|e| format!("the run's plan cannot be read: {e}"));
        Box::pin(async move {
            let refs = refs?;
            resolve(&refs, &namespace, source.as_ref())
                .await
                .map_err(|errors| {
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_ref(name: &str, source: &str, key: &str, optional: bool) -> EnvRef {
        EnvRef {
            name: name.into(),
            kind: EnvRefKind::Secret,
            source: source.into(),
            key: key.into(),
            optional,
            field: "env[0].valueFrom.secretKeyRef".into(),
        }
    }

    #[tokio::test]
    async fn chain_asks_in_order_and_errors_name_secret_and_key() {
        let first = SecretsFile::parse("a", "secrets: {s: {k: one}}").unwrap();
        let second = SecretsFile::parse(
            "b",
            "secrets: {s: {k: two, other: three}}\nconfigMaps: {c: {k: plain}}",
        )
        .unwrap();
        let chain = Chain::new().with(first).with(second);
        let mut refs = vec![
            secret_ref("A", "s", "k", false),
            secret_ref("B", "s", "other", false),
            secret_ref("C", "s", "gone", true),
        ];
        refs.push(EnvRef {
            kind: EnvRefKind::ConfigMap,
            ..secret_ref("D", "c", "k", false)
        });
        let env = resolve(&refs, "default", &chain).await.unwrap();
        assert_eq!(
            env.vars,
            BTreeMap::from([
                ("A".to_string(), "one".to_string()),
                ("B".to_string(), "three".to_string()),
                ("D".to_string(), "plain".to_string()),
            ])
        );
        assert_eq!(env.secrets, ["one", "three"]);
        let missing = vec![secret_ref("A", "llm-secrets", "anthropic-key", false)];
        let errors = resolve(&missing, "default", &chain).await.unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "env[0].valueFrom.secretKeyRef: secret \"llm-secrets\" has no key \"anthropic-key\""
        );
    }
}

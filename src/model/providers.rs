//! `spec.providers` of a Pipeline in its plan: one `envFrom` reference per provider API key held in a
//! Secret, and the `_providers` input field given to every LLM stage (see `llm::providers`, which reads
//! that field at run time).

use serde_json::{Map, Value};

use flowmason_actors::{EnvRef, EnvRefKind};

use crate::llm::ProviderKind;

use super::{ProviderSpec, ProvidersSpec};

/// The key references and the `_providers` stage field of a pipeline's `spec.providers`.
pub fn plan_providers(providers: &ProvidersSpec) -> (Vec<EnvRef>, Value) {
    let mut refs = Vec::new();
    let mut field = Map::new();
    if let Some(default) = &providers.default {
        field.insert("default".into(), Value::String(default.clone()));
    }
    for kind in ProviderKind::ALL {
        let Some(spec) = spec_of(kind, providers) else {
            continue;
        };
        let mut entry = Map::new();
        if let Some(model) = &spec.model {
            entry.insert("model".into(), Value::String(model.clone()));
        }
        if let Some(base_url) = &spec.base_url {
            entry.insert("baseUrl".into(), Value::String(base_url.clone()));
        }
        if let Some(secret) = &spec.secret_ref {
            refs.push(EnvRef {
                name: kind.api_key_var().into(),
                kind: EnvRefKind::Secret,
                source: secret.name.clone(),
                key: secret.key.clone(),
                optional: false,
                field: format!("providers.{}.secretRef", kind.name()),
            });
            entry.insert(
                "apiKey".into(),
                Value::String(format!("{{{{env.{}}}}}", kind.api_key_var())),
            );
        }
        field.insert(kind.name().into(), Value::Object(entry));
    }
    (refs, Value::Object(field))
}

/// The entry of `providers` for one provider kind.
fn spec_of(kind: ProviderKind, providers: &ProvidersSpec) -> Option<&ProviderSpec> {
    match kind {
        ProviderKind::Anthropic => providers.anthropic.as_ref(),
        ProviderKind::OpenAi => providers.openai.as_ref(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::SecretKeyRef;

    #[test]
    fn planning_keeps_keys_out_and_references_their_secrets() {
        let spec = ProvidersSpec {
            default: Some("openai".into()),
            anthropic: Some(ProviderSpec {
                model: Some("claude-x".into()),
                secret_ref: Some(SecretKeyRef {
                    name: "llm-secrets".into(),
                    key: "anthropic-key".into(),
                }),
                base_url: Some("{{env.BASE}}".into()),
            }),
            openai: Some(ProviderSpec::default()),
        };
        let (refs, field) = plan_providers(&spec);
        assert_eq!(
            refs,
            [EnvRef {
                name: "FM_PROVIDER_ANTHROPIC_API_KEY".into(),
                kind: EnvRefKind::Secret,
                source: "llm-secrets".into(),
                key: "anthropic-key".into(),
                optional: false,
                field: "providers.anthropic.secretRef".into(),
            }]
        );
        assert_eq!(
            field,
            json!({"default": "openai",
                   "anthropic": {"model": "claude-x", "baseUrl": "{{env.BASE}}",
                                 "apiKey": "{{env.FM_PROVIDER_ANTHROPIC_API_KEY}}"},
                   "openai": {}})
        );
    }
}

//! `spec.providers` in the plan and at run time.
//!
//! Planning (`model::providers::plan_providers`) turns the pipeline's providers into (a) one `envFrom`
//! reference per API key (`FM_PROVIDER_ANTHROPIC_API_KEY` from `providers.anthropic.secretRef`, ...),
//! resolved when the run starts like any `secretKeyRef` (so the key is redacted and a missing one fails
//! the run before any stage starts), and (b) the `_providers` input field given to every LLM stage: model and base URL as written
//! (templates allowed) and the key as a `{{env.FM_PROVIDER_<NAME>_API_KEY}}` template. At run time
//! ([`select`]) a component picks its provider from that rendered field.
//!
//! A provider without a `secretRef` takes its key from the run's environment under the provider's
//! conventional name (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`) when the pipeline or the run defines it, as
//! the FlowMason documentation injects it (`spec.env` with a `secretKeyRef`), and its base URL from
//! `ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL` there when it sets none; see [`keys_from_env`].

use serde_json::{Map, Value, json};

use flowmason_actors::{ComponentError, PlanSpec};

/// The stage input field carrying the providers to LLM stages.
pub const PROVIDERS_FIELD: &str = "_providers";

/// The components that call an LLM and so get [`PROVIDERS_FIELD`].
pub const LLM_COMPONENTS: &[&str] = &[
    "generator",
    "critic",
    "summarizer",
    "chat",
    "improver",
    "selector",
    "rewriter",
    "translator",
    "analyzer",
    "combiner",
    "synthesizer",
    "embedder",
];

/// An LLM API we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Anthropic,
    OpenAi,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Anthropic, ProviderKind::OpenAi];

    /// The name in `spec.providers` and in a stage's `provider` field.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
        }
    }

    pub fn parse(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// FlowMason's default model of the provider.
    pub fn default_model(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "claude-sonnet-4-20250514",
            ProviderKind::OpenAi => "gpt-4o",
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::OpenAi => "https://api.openai.com",
        }
    }

    /// The run environment variable that holds the provider's API key.
    pub fn api_key_var(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "FM_PROVIDER_ANTHROPIC_API_KEY",
            ProviderKind::OpenAi => "FM_PROVIDER_OPENAI_API_KEY",
        }
    }

    /// The conventional variable of the provider's key, read from the run's `env` when the provider has
    /// no `secretRef`.
    pub fn conventional_key_var(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
            ProviderKind::OpenAi => "OPENAI_API_KEY",
        }
    }

    /// The official SDKs' variable of the provider's base URL, read from the run's `env` like the key.
    pub fn base_url_var(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "ANTHROPIC_BASE_URL",
            ProviderKind::OpenAi => "OPENAI_BASE_URL",
        }
    }
}

/// Gives the LLM stages of a plan the keys its environment holds under the conventional names
/// (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, literal or `valueFrom`): a provider entry without a key (no
/// `secretRef`) gets `{{env.ANTHROPIC_API_KEY}}`, and a stage without any provider (no `spec.providers`)
/// gets one entry per provider whose variable is defined. Secret-sourced values stay references, resolved
/// and masked like any other. Applied after the run's `env` overrides, so a run may bring the key.
pub fn keys_from_env(plan: &mut PlanSpec) {
    let in_env =
        |var: &str| plan.env.contains_key(var) || plan.env_from.iter().any(|r| r.name == var);
    // Per provider: whether the run's env defines its key variable and its base URL variable.
    let defined: Vec<(ProviderKind, bool, bool)> = ProviderKind::ALL
        .into_iter()
        .map(|k| {
            (
                k,
                in_env(k.conventional_key_var()),
                in_env(k.base_url_var()),
            )
        })
        .filter(|(_, key, url)| *key || *url)
        .collect();
    if defined.is_empty() {
        return;
    }
    let template = |var: &str| Value::String(format!("{{{{env.{var}}}}}"));
    for stage in plan
        .stages
        .iter_mut()
        .filter(|s| LLM_COMPONENTS.contains(&s.component.as_str()))
    {
        let field = stage
            .input_mapping
            .entry(PROVIDERS_FIELD.to_string())
            .or_insert_with(|| {
                Value::Object(
                    defined
                        .iter()
                        .map(|(k, _, _)| (k.name().to_string(), json!({})))
                        .collect(),
                )
            });
        let Value::Object(field) = field else {
            continue;
        };
        for (kind, key, url) in &defined {
            if let Some(Value::Object(entry)) = field.get_mut(kind.name()) {
                if *key {
                    entry
                        .entry("apiKey")
                        .or_insert_with(|| template(kind.conventional_key_var()));
                }
                if *url {
                    entry
                        .entry("baseUrl")
                        .or_insert_with(|| template(kind.base_url_var()));
                }
            }
        }
    }
}

/// A provider as a stage calls it.
#[derive(Clone, PartialEq)]
pub struct Provider {
    pub kind: ProviderKind,
    pub model: String,
    /// Without a trailing `/`.
    pub base_url: String,
    pub api_key: Option<String>,
}

/// Never prints the key.
impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("kind", &self.kind)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Provider {
    /// `{base}{path}`, where `path` starts with `/v1/`; a base that already ends in `/v1` (as the OpenAI
    /// SDKs write it) does not get a second one.
    pub fn url(&self, path: &str) -> String {
        match (self.base_url.strip_suffix("/v1"), path.strip_prefix("/v1")) {
            (Some(_), Some(rest)) => format!("{}{rest}", self.base_url),
            _ => format!("{}{path}", self.base_url),
        }
    }
}

/// The provider a stage uses: its `provider` field, else `_providers.default`, else the only configured
/// one, else `anthropic` (FlowMason's default). `model` overrides the provider's model.
pub fn select(
    component: &str,
    input: &Map<String, Value>,
    provider: Option<&str>,
    model: Option<&str>,
) -> Result<Provider, ComponentError> {
    let none = || {
        ComponentError::config(format!(
            "{component}: no LLM provider is configured: set spec.providers.anthropic or spec.providers.openai"
        ))
    };
    let providers = match input.get(PROVIDERS_FIELD) {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => return Err(none()),
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{component}: `{PROVIDERS_FIELD}` must be an object, got {other}"
            )));
        }
    };
    let configured: Vec<ProviderKind> = ProviderKind::ALL
        .into_iter()
        .filter(|k| providers.get(k.name()).is_some_and(Value::is_object))
        .collect();
    let default = providers.get("default").and_then(Value::as_str);
    let name = match (provider, default, configured.as_slice()) {
        (Some(name), _, _) | (None, Some(name), _) => name,
        (None, None, [only]) => only.name(),
        (None, None, []) => return Err(none()),
        (None, None, _) => ProviderKind::Anthropic.name(),
    };
    let kind = ProviderKind::parse(name).ok_or_else(|| {
        ComponentError::config(format!(
            "{component}: unknown provider {name:?} (anthropic or openai)"
        ))
    })?;
    let Some(Value::Object(entry)) = providers.get(kind.name()) else {
        return Err(ComponentError::config(format!(
            "{component}: provider {name:?} is not configured in spec.providers"
        )));
    };
    let text = |field: &str| -> Result<Option<String>, ComponentError> {
        match entry.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(ComponentError::config(format!(
                "{component}: providers.{name}.{field} must be a string"
            ))),
        }
    };
    let base_url = text("baseUrl")?.unwrap_or_else(|| kind.default_base_url().to_string());
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(ComponentError::config(format!(
            "{component}: providers.{name}.baseUrl must be an http(s) URL, got {base_url:?}"
        )));
    }
    Ok(Provider {
        kind,
        model: match model {
            Some(m) if !m.trim().is_empty() => m.trim().to_string(),
            _ => text("model")?.unwrap_or_else(|| kind.default_model().to_string()),
        },
        base_url: base_url.trim_end_matches('/').to_string(),
        api_key: text("apiKey")?,
    })
}

/// The `_providers` field for tests and callers that build stage inputs by hand.
pub fn providers_field(kind: ProviderKind, model: &str, base_url: &str, api_key: &str) -> Value {
    json!({ kind.name(): {"model": model, "baseUrl": base_url, "apiKey": api_key} })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmason_actors::{EnvRef, EnvRefKind};

    fn llm_plan(providers: Option<Value>, env_from: &[&str]) -> PlanSpec {
        let mut input_mapping = std::collections::BTreeMap::new();
        if let Some(p) = providers {
            input_mapping.insert(PROVIDERS_FIELD.to_string(), p);
        }
        PlanSpec {
            stages: vec![flowmason_actors::StagePlan {
                id: "draft".into(),
                component: "generator".into(),
                depends_on: vec![],
                config: Value::Null,
                input_mapping,
                timeout_ms: None,
                retry: None,
            }],
            env_from: env_from
                .iter()
                .map(|name| EnvRef {
                    name: (*name).into(),
                    kind: EnvRefKind::Secret,
                    source: "llm-secrets".into(),
                    key: "k".into(),
                    optional: false,
                    field: "env[0].valueFrom.secretKeyRef".into(),
                })
                .collect(),
            parallelism: 1,
            timeout_ms: None,
            retry: flowmason_actors::RetryPolicy::default(),
            output_stage: None,
            env: std::collections::BTreeMap::new(),
            output_schema: None,
        }
    }

    #[test]
    fn a_provider_without_secret_ref_takes_its_key_from_the_conventional_env_var() {
        let mut plan = llm_plan(
            Some(
                json!({"anthropic": {"model": "m"}, "openai": {"apiKey": "{{env.FM_PROVIDER_OPENAI_API_KEY}}"}}),
            ),
            &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"],
        );
        keys_from_env(&mut plan);
        assert_eq!(
            plan.stages[0].input_mapping[PROVIDERS_FIELD],
            json!({"anthropic": {"model": "m", "apiKey": "{{env.ANTHROPIC_API_KEY}}"},
                   "openai": {"apiKey": "{{env.FM_PROVIDER_OPENAI_API_KEY}}"}})
        );
        // Without spec.providers, the seed's way: env alone configures the provider.
        let mut plan = llm_plan(None, &["ANTHROPIC_API_KEY"]);
        keys_from_env(&mut plan);
        assert_eq!(
            plan.stages[0].input_mapping[PROVIDERS_FIELD],
            json!({"anthropic": {"apiKey": "{{env.ANTHROPIC_API_KEY}}"}})
        );
        // The SDK's base URL variable too.
        let mut plan = llm_plan(None, &["OPENAI_BASE_URL"]);
        keys_from_env(&mut plan);
        assert_eq!(
            plan.stages[0].input_mapping[PROVIDERS_FIELD],
            json!({"openai": {"baseUrl": "{{env.OPENAI_BASE_URL}}"}})
        );
        // Nothing defined: nothing changes.
        let mut plan = llm_plan(None, &[]);
        keys_from_env(&mut plan);
        assert!(plan.stages[0].input_mapping.is_empty());
    }

    fn input(providers: Value) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert(PROVIDERS_FIELD.into(), providers);
        map
    }

    #[test]
    fn selection_follows_stage_then_default_then_the_only_one() {
        let both = input(
            json!({"default": "openai", "anthropic": {"apiKey": "k"}, "openai": {"model": "m"}}),
        );
        let p = select("g", &both, None, None).unwrap();
        assert_eq!((p.kind, p.model.as_str()), (ProviderKind::OpenAi, "m"));
        assert_eq!(p.base_url, "https://api.openai.com");
        let p = select("g", &both, Some("anthropic"), Some("x")).unwrap();
        assert_eq!((p.kind, p.model.as_str()), (ProviderKind::Anthropic, "x"));
        assert_eq!(p.api_key.as_deref(), Some("k"));
        assert!(!format!("{p:?}").contains("\"k\""));
        let only = input(json!({"openai": {"baseUrl": "http://127.0.0.1:9/v1/"}}));
        let p = select("g", &only, None, None).unwrap();
        assert_eq!(p.kind, ProviderKind::OpenAi);
        assert_eq!(
            p.url("/v1/chat/completions"),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(p.model, "gpt-4o");
    }

    #[test]
    fn selection_errors_name_the_problem() {
        let err = |i: &Map<String, Value>, p: Option<&str>| {
            select("generator", i, p, None).unwrap_err().message
        };
        assert_eq!(
            err(&Map::new(), None),
            "generator: no LLM provider is configured: set spec.providers.anthropic or spec.providers.openai"
        );
        let only = input(json!({"anthropic": {}}));
        assert_eq!(
            err(&only, Some("openai")),
            "generator: provider \"openai\" is not configured in spec.providers"
        );
        assert_eq!(
            err(&only, Some("gemini")),
            "generator: unknown provider \"gemini\" (anthropic or openai)"
        );
        let bad = input(json!({"anthropic": {"baseUrl": "ftp://x"}}));
        assert_eq!(
            err(&bad, None),
            "generator: providers.anthropic.baseUrl must be an http(s) URL, got \"ftp://x\""
        );
    }
}

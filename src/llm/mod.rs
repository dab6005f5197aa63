//! LLM providers for the `generator`, `critic`, `summarizer` and `chat` components: the Anthropic Messages
//! API and the OpenAI Chat Completions API, over HTTP with streaming off.
//!
//! How a stage reaches its provider: `spec.providers` is turned into a `_providers` input field of every
//! LLM stage when the pipeline is planned (`model::providers::plan_providers`), holding each provider's
//! model and base URL and, for the API key, only a template `{{env.FM_PROVIDER_<NAME>_API_KEY}}`. The
//! key itself is resolved from the provider's `secretRef` when the run starts, into the run's
//! environment, so the plan (which the event log records) never holds it and the run redacts it from
//! everything it records.

use serde_json::{Map, Value, json};

use flowmason_actors::{ComponentError, StageContext};

pub mod anthropic;
pub mod http;
pub mod openai;
pub mod pricing;
pub mod providers;

pub use providers::{Provider, ProviderKind};

/// Who said a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
}

/// A request for one completion, whatever the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: f64,
    pub stop_sequences: Vec<String>,
}

/// Tokens a call used and what they cost, in FlowMason's usage shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model: String,
    pub provider: ProviderKind,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Estimated cost in USD from the price table.
    pub fn cost_usd(&self) -> f64 {
        pricing::cost_usd(
            self.provider,
            &self.model,
            self.input_tokens,
            self.output_tokens,
        )
    }

    /// `{input_tokens, output_tokens, total_tokens, cost_usd, model, provider}`: the `usage` field of every
    /// LLM stage output, which the run's fold sums into its token and cost totals.
    pub fn to_json(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens(),
            "cost_usd": self.cost_usd(),
            "model": self.model,
            "provider": self.provider.name(),
        })
    }
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    /// The model that answered (as the provider names it).
    pub model: String,
    /// Why generation stopped: `stop`, `length`, `content_filter`, or the provider's own word.
    pub finish_reason: String,
    pub usage: Usage,
}

impl Completion {
    /// A completion from what a protocol module read off an answer (its text and finish reason), with
    /// the answering model (`model` of the answer, else the one asked for) and the usage counters both
    /// protocols keep under `usage` (missing counters count 0).
    pub(crate) fn from_answer(
        answer: &Value,
        requested_model: &str,
        provider: ProviderKind,
        content: String,
        finish_reason: String,
        [input_tokens, output_tokens]: [&str; 2],
    ) -> Completion {
        let tokens = |field: &str| {
            answer
                .get("usage")
                .and_then(|usage| usage.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let model = answer
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(requested_model)
            .to_string();
        Completion {
            content,
            finish_reason,
            usage: Usage {
                input_tokens: tokens(input_tokens),
                output_tokens: tokens(output_tokens),
                model: model.clone(),
                provider,
            },
            model,
        }
    }
}

/// Sends one request to `provider` and returns its answer.
pub async fn complete(
    provider: &Provider,
    request: &ChatRequest,
) -> Result<Completion, ComponentError> {
    match provider.kind {
        ProviderKind::Anthropic => anthropic::complete(provider, request).await,
        ProviderKind::OpenAi => openai::complete(provider, request).await,
    }
}

/// The knobs every LLM component takes besides its prompt fields.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmOptions {
    /// `provider`: `anthropic` or `openai`; default `spec.providers.default`.
    pub provider: Option<String>,
    /// `model`: overrides the provider's model.
    pub model: Option<String>,
    pub temperature: f64,
    pub max_tokens: u32,
}

impl LlmOptions {
    /// Reads `provider`, `model`, `temperature` (0..=2) and `max_tokens` (1..=128000) from a stage input,
    /// with the component's defaults.
    pub fn from_input(
        component: &str,
        input: &Map<String, Value>,
        temperature: f64,
        max_tokens: u32,
    ) -> Result<LlmOptions, ComponentError> {
        use crate::component_config::{opt_int_in, opt_str};
        let temperature = match input.get("temperature") {
            None | Some(Value::Null) => temperature,
            Some(v) => match v.as_f64() {
                Some(t) if (0.0..=2.0).contains(&t) => t,
                _ => {
                    return Err(ComponentError::config(format!(
                        "{component}: `temperature` must be a number from 0 to 2, got {v}"
                    )));
                }
            },
        };
        let max_tokens = opt_int_in(component, input, "max_tokens", 1..=128_000)?
            .map_or(max_tokens, |n| n as u32);
        Ok(LlmOptions {
            provider: opt_str(component, input, "provider")?.map(str::to_string),
            model: opt_str(component, input, "model")?.map(str::to_string),
            temperature,
            max_tokens,
        })
    }
}

/// What every LLM component does once it has built its request: picks the provider from the stage input
/// (`_providers`, `provider`, `model`), calls it, and logs the usage as a `StageLog` line.
pub async fn call(
    component: &str,
    input: &Map<String, Value>,
    options: &LlmOptions,
    request: &ChatRequest,
    ctx: &StageContext,
) -> Result<Completion, ComponentError> {
    let provider = providers::select(
        component,
        input,
        options.provider.as_deref(),
        options.model.as_deref(),
    )?;
    let completion = complete(&provider, request).await?;
    ctx.log(
        "info",
        format!(
            "{component}: {} {} used {} tokens ({} in, {} out)",
            provider.kind.name(),
            completion.model,
            completion.usage.total_tokens(),
            completion.usage.input_tokens,
            completion.usage.output_tokens
        ),
        Value::Null,
    );
    Ok(completion)
}

/// A JSON object in a model's answer: the whole answer, else the first fenced code block in it
/// (models often wrap the JSON they were asked for in a markdown block).
pub(crate) fn parse_json_object(answer: &str) -> Option<Map<String, Value>> {
    let whole = serde_json::from_str::<Value>(answer.trim()).ok();
    let fenced = || {
        let start = answer.find("```")?;
        let rest = &answer[start + 3..];
        let body_start = rest.find('\n')? + 1;
        let end = rest[body_start..].find("```")?;
        serde_json::from_str::<Value>(rest[body_start..body_start + end].trim()).ok()
    };
    match whole.or_else(fenced)? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// One user prompt with a system prompt, the shape of every FlowMason node's call
/// (`context.llm.generate_async(prompt, system_prompt, temperature, max_tokens)`).
pub async fn ask(
    component: &str,
    input: &Map<String, Value>,
    options: &LlmOptions,
    system: Option<String>,
    prompt: String,
    ctx: &StageContext,
) -> Result<Completion, ComponentError> {
    let request = ChatRequest {
        system,
        messages: vec![Message::user(prompt)],
        max_tokens: options.max_tokens,
        temperature: options.temperature,
        stop_sequences: Vec::new(),
    };
    call(component, input, options, &request, ctx).await
}

/// Checks the statically set fields of an LLM stage's config (templated values are checked once
/// rendered): `strings` must be strings, the knobs in range, a named `provider` known.
pub fn validate_config(
    component: &str,
    config: &Value,
    strings: &[&str],
) -> Result<(), ComponentError> {
    let Some(fixed) = crate::component_config::static_config(component, config)? else {
        return Ok(());
    };
    for field in strings {
        crate::component_config::opt_str(component, &fixed, field)?;
    }
    let options = LlmOptions::from_input(component, &fixed, 0.0, 1)?;
    if let Some(name) = &options.provider
        && ProviderKind::parse(name).is_none()
    {
        return Err(ComponentError::config(format!(
            "{component}: unknown provider {name:?} (anthropic or openai)"
        )));
    }
    Ok(())
}

/// A required, non-empty string field of a stage input.
pub(crate) fn required_str<'a>(
    component: &str,
    input: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str, ComponentError> {
    match crate::component_config::opt_str(component, input, field)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(ComponentError::config(format!(
            "{component}: `{field}` must not be empty"
        ))),
        None => Err(ComponentError::config(format!(
            "{component}: `{field}` is required"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_defaults_and_reject_out_of_range_values() {
        let input = |v: Value| v.as_object().cloned().unwrap_or_default();
        let o = LlmOptions::from_input("g", &input(json!({})), 0.7, 4096).unwrap();
        assert_eq!((o.temperature, o.max_tokens, o.provider), (0.7, 4096, None));
        let o = LlmOptions::from_input(
            "g",
            &input(json!({"temperature": 0, "max_tokens": 10, "provider": "openai", "model": "m"})),
            0.7,
            4096,
        )
        .unwrap();
        assert_eq!(o.temperature, 0.0);
        assert_eq!(o.max_tokens, 10);
        assert_eq!(o.provider.as_deref(), Some("openai"));
        assert_eq!(o.model.as_deref(), Some("m"));
        let e = LlmOptions::from_input("g", &input(json!({"temperature": 3})), 0.7, 1).unwrap_err();
        assert_eq!(
            e.message,
            "g: `temperature` must be a number from 0 to 2, got 3"
        );
        let e = LlmOptions::from_input("g", &input(json!({"max_tokens": 0})), 0.7, 1).unwrap_err();
        assert_eq!(
            e.message,
            "g: `max_tokens` must be an integer from 1 to 128000, got 0"
        );
    }

    #[test]
    fn usage_json_has_flowmason_shape() {
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            model: "gpt-4o-mini".into(),
            provider: ProviderKind::OpenAi,
        };
        assert_eq!(
            usage.to_json(),
            json!({"input_tokens": 1_000_000, "output_tokens": 0, "total_tokens": 1_000_000,
                   "cost_usd": 0.15, "model": "gpt-4o-mini", "provider": "openai"})
        );
    }
}

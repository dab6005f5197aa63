//! `embedder`: a text's embedding vector from an OpenAI-compatible Embeddings API
//! (`POST {base}/v1/embeddings`).
//!
//! FlowMason 1.0.24's `embedder` asks a chat model to invent a vector (its own docs call that a demo
//! and point to dedicated embedding APIs); this one calls the embeddings endpoint of the `openai`
//! provider (any OpenAI-compatible server, through `providers.openai.baseUrl`), with the same fields
//! and output. Input: `text` (required), `dimensions` (2..=3072: sent to the API, which shortens
//! text-embedding-3 vectors to it; not sent when absent), `normalize` (true: scale to unit length),
//! `model` (default `text-embedding-3-small`; the provider's chat `model` is not used), `provider`
//! (only `openai`: Anthropic has no embeddings API). Output `{embedding, text, dimensions, model, usage}`.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, opt_int_in, opt_str};
use crate::llm::{self, ProviderKind, Usage, openai, providers};

/// The component type name.
pub const NAME: &str = "embedder";

/// The embedding model used when the stage names none.
pub const DEFAULT_MODEL: &str = "text-embedding-3-small";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Embedder;

impl Component for Embedder {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["text"])?;
        let fixed = super::static_config(NAME, config)?.unwrap_or_default();
        provider_name(&fixed)?;
        opt_int_in(NAME, &fixed, "dimensions", 2..=3072)?;
        opt_bool(NAME, &fixed, "normalize", true)?;
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let text = llm::required_str(NAME, &input, "text")?.trim();
            let dimensions = opt_int_in(NAME, &input, "dimensions", 2..=3072)?;
            let normalize = opt_bool(NAME, &input, "normalize", true)?;
            let provider_name = provider_name(&input)?;
            let model = opt_str(NAME, &input, "model")?
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .unwrap_or(DEFAULT_MODEL);
            let provider = providers::select(NAME, &input, Some(provider_name), Some(model))?;
            let embedding = openai::embed(&provider, text, dimensions).await?;
            let usage = Usage {
                input_tokens: embedding.input_tokens,
                output_tokens: 0,
                model: embedding.model.clone(),
                provider: ProviderKind::OpenAi,
            };
            ctx.log(
                "info",
                format!(
                    "{NAME}: openai {} used {} tokens",
                    embedding.model, embedding.input_tokens
                ),
                Value::Null,
            );
            let vector = if normalize {
                normalized(embedding.vector)
            } else {
                embedding.vector
            };
            Ok(json!({
                "embedding": vector,
                "text": text,
                "dimensions": vector.len(),
                "model": embedding.model,
                "usage": usage.to_json(),
            })
            .into())
        })
    }
}

/// `provider`: absent or `openai`.
fn provider_name(input: &serde_json::Map<String, Value>) -> Result<&'static str, ComponentError> {
    match opt_str(NAME, input, "provider")? {
        None | Some("openai") => Ok(ProviderKind::OpenAi.name()),
        Some("anthropic") => Err(ComponentError::config(format!(
            "{NAME}: provider \"anthropic\" has no embeddings API; use provider \"openai\" (any OpenAI-compatible server, set with providers.openai.baseUrl)"
        ))),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: unknown provider {other:?} (openai)"
        ))),
    }
}

/// The vector scaled to unit length (a zero vector stays as it is), as FlowMason's `_normalize`.
pub fn normalized(vector: Vec<f64>) -> Vec<f64> {
    let magnitude = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if magnitude == 0.0 {
        return vector;
    }
    vector.into_iter().map(|x| x / magnitude).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_scaled_to_unit_length() {
        assert_eq!(normalized(vec![3.0, 4.0]), vec![0.6, 0.8]);
        assert_eq!(normalized(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn anthropic_is_refused_at_validation() {
        assert_eq!(
            Embedder
                .validate(&json!({"text": "t", "provider": "anthropic"}))
                .unwrap_err()
                .message,
            "embedder: provider \"anthropic\" has no embeddings API; use provider \"openai\" (any OpenAI-compatible server, set with providers.openai.baseUrl)"
        );
        assert_eq!(
            Embedder
                .validate(&json!({"dimensions": 1}))
                .unwrap_err()
                .message,
            "embedder: `dimensions` must be an integer from 2 to 3072, got 1"
        );
    }
}

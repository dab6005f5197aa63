//! `generator`: text from a prompt, FlowMason's core LLM node.
//!
//! Input: `prompt` (required), `system_prompt`, `max_tokens` (4096), `temperature` (0.7), `stop_sequences`,
//! `output_format` (a hint added to the system prompt), and `provider`/`model` to pick other than the
//! pipeline's default. Output `{content, tokens_used, finish_reason, model, usage}`.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_str};
use crate::llm::{self, ChatRequest, LlmOptions, Message};

/// The component type name.
pub const NAME: &str = "generator";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generator;

impl Component for Generator {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["prompt", "system_prompt", "output_format"])
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let prompt = llm::required_str(NAME, &input, "prompt")?;
            let options = LlmOptions::from_input(NAME, &input, 0.7, 4096)?;
            let mut system = opt_str(NAME, &input, "system_prompt")?.map(str::to_string);
            if let Some(format) = opt_str(NAME, &input, "output_format")?.filter(|f| !f.is_empty())
            {
                let hint = format!("Respond in {format} format.");
                system = Some(match system {
                    Some(s) => format!("{s}\n\n{hint}"),
                    None => hint,
                });
            }
            let stop_sequences = string_list(&input, "stop_sequences")?;
            let request = ChatRequest {
                system,
                messages: vec![Message::user(prompt)],
                max_tokens: options.max_tokens,
                temperature: options.temperature,
                stop_sequences,
            };
            let completion = llm::call(NAME, &input, &options, &request, &ctx).await?;
            Ok(json!({
                "content": completion.content,
                "tokens_used": completion.usage.total_tokens(),
                "finish_reason": completion.finish_reason,
                "model": completion.model,
                "usage": completion.usage.to_json(),
            })
            .into())
        })
    }
}

/// An optional array-of-strings field.
fn string_list(
    input: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ComponentError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `{field}` must be an array of strings, got an item {v}"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be an array of strings, got {}",
            super::type_name(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    #[tokio::test]
    async fn input_errors_name_the_field() {
        let cases = [
            (json!({}), "generator: `prompt` is required"),
            (
                json!({"prompt": " "}),
                "generator: `prompt` must not be empty",
            ),
            (
                json!({"prompt": 1}),
                "generator: `prompt` must be a string, got a number",
            ),
            (
                json!({"prompt": "p", "stop_sequences": "x"}),
                "generator: `stop_sequences` must be an array of strings, got a string",
            ),
            (
                json!({"prompt": "p"}),
                "generator: no LLM provider is configured: set spec.providers.anthropic or spec.providers.openai",
            ),
        ];
        for (input, message) in cases {
            let (ctx, _) = context();
            let err = Generator.execute(input, ctx).await.unwrap_err();
            assert_eq!(err.message, message);
            assert_eq!(err.class, flowmason_store::ErrorClass::Config);
        }
    }

    #[test]
    fn validate_checks_static_fields_only() {
        assert!(
            Generator
                .validate(&json!({"prompt": "{{input.x}}", "temperature": "{{input.t}}"}))
                .is_ok()
        );
        assert_eq!(
            Generator
                .validate(&json!({"temperature": 9}))
                .unwrap_err()
                .message,
            "generator: `temperature` must be a number from 0 to 2, got 9"
        );
        assert_eq!(
            Generator
                .validate(&json!({"provider": "gemini"}))
                .unwrap_err()
                .message,
            "generator: unknown provider \"gemini\" (anthropic or openai)"
        );
    }
}

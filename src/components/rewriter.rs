//! `rewriter`: rewrites text in a style and tone, FlowMason's core node.
//!
//! Input: `text` (required), `style` (`simplify`, `formal`, `casual`, `concise`, `expand`, `creative`,
//! `improve` (default); another word asks to improve), `tone`, `target_audience`, `preserve_key_points`
//! (true), plus `temperature` (0.7), `max_tokens` (4096), `provider`, `model`. Output `{rewritten, style,
//! tone, input, usage}`, `rewritten` being the model's answer trimmed.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, opt_str};
use crate::llm::{self, LlmOptions};

/// The component type name.
pub const NAME: &str = "rewriter";

const SYSTEM_PROMPT: &str = "You are an expert writer and editor. Rewrite text according to the given instructions while preserving the core meaning.";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewriter;

impl Component for Rewriter {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["text", "style", "tone", "target_audience"])
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let text = llm::required_str(NAME, &input, "text")?.trim();
            let style = opt_str(NAME, &input, "style")?
                .map(str::trim)
                .unwrap_or("improve");
            let tone = opt_str(NAME, &input, "tone")?.map(str::trim);
            let audience = opt_str(NAME, &input, "target_audience")?.map(str::trim);
            let preserve = opt_bool(NAME, &input, "preserve_key_points", true)?;
            let options = LlmOptions::from_input(NAME, &input, 0.7, 4096)?;
            let completion = llm::ask(
                NAME,
                &input,
                &options,
                Some(SYSTEM_PROMPT.into()),
                prompt(text, style, tone, audience, preserve),
                &ctx,
            )
            .await?;
            Ok(json!({
                "rewritten": completion.content.trim(),
                "style": style,
                "tone": tone,
                "input": text,
                "usage": completion.usage.to_json(),
            })
            .into())
        })
    }
}

/// FlowMason's rewriting request for a style, tone and audience.
pub fn prompt(
    text: &str,
    style: &str,
    tone: Option<&str>,
    audience: Option<&str>,
    preserve_key_points: bool,
) -> String {
    let mut prompt = match style {
        "simplify" => format!(
            "Simplify the following text to make it easier to understand. Use simpler words and shorter sentences:\n\n{text}"
        ),
        "formal" => {
            format!("Rewrite the following text in a formal, professional style:\n\n{text}")
        }
        "casual" => {
            format!("Rewrite the following text in a casual, conversational style:\n\n{text}")
        }
        "concise" => format!(
            "Rewrite the following text to be more concise while keeping all key information:\n\n{text}"
        ),
        "expand" => {
            format!("Expand the following text with more detail and explanation:\n\n{text}")
        }
        "creative" => format!(
            "Creatively rewrite the following text to make it more engaging and interesting:\n\n{text}"
        ),
        _ => format!("Improve the following text for clarity and readability:\n\n{text}"),
    };
    if let Some(tone) = tone.filter(|t| !t.is_empty()) {
        prompt.push_str(&format!("\n\nUse a {tone} tone."));
    }
    if let Some(audience) = audience.filter(|a| !a.is_empty()) {
        prompt.push_str(&format!("\n\nTarget audience: {audience}"));
    }
    if preserve_key_points {
        prompt.push_str("\n\nEnsure all key points from the original text are preserved.");
    }
    prompt.push_str("\n\nReturn only the rewritten text.");
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    #[test]
    fn an_unknown_style_asks_to_improve() {
        assert_eq!(
            prompt("T", "haiku", Some("friendly"), None, false),
            "Improve the following text for clarity and readability:\n\nT\n\nUse a friendly tone.\n\nReturn only the rewritten text."
        );
    }

    #[tokio::test]
    async fn input_errors_name_the_field() {
        let (ctx, _) = context();
        let err = Rewriter
            .execute(json!({"text": "t", "preserve_key_points": "yes"}), ctx)
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "rewriter: `preserve_key_points` must be a boolean, got a string"
        );
    }
}

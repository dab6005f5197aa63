//! `summarizer`: summarizes text in one of FlowMason's styles.
//!
//! Input: `text` (required), `style` (`brief` (default), `detailed`, `bullet`, `executive`; another word
//! asks for a plain summary), `max_length` (words, 10..=10000), `focus`, plus `temperature` (0.3),
//! `max_tokens` (2048), `provider`, `model`. Output `{summary, style, input, word_count, usage}`.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_int_in, opt_str};
use crate::llm::{self, ChatRequest, LlmOptions, Message};

/// The component type name.
pub const NAME: &str = "summarizer";

const SYSTEM_PROMPT: &str = "You are an expert summarizer. Create clear, accurate summaries.";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summarizer;

impl Component for Summarizer {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["text", "style", "focus"])
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let text = llm::required_str(NAME, &input, "text")?;
            let style = opt_str(NAME, &input, "style")?.unwrap_or("brief");
            let focus = opt_str(NAME, &input, "focus")?;
            let max_length = opt_int_in(NAME, &input, "max_length", 10..=10_000)?;
            let options = LlmOptions::from_input(NAME, &input, 0.3, 2048)?;
            let request = ChatRequest {
                system: Some(SYSTEM_PROMPT.into()),
                messages: vec![Message::user(prompt(text, style, focus, max_length))],
                max_tokens: options.max_tokens,
                temperature: options.temperature,
                stop_sequences: Vec::new(),
            };
            let completion = llm::call(NAME, &input, &options, &request, &ctx).await?;
            let summary = completion.content.trim();
            Ok(json!({
                "summary": summary,
                "style": style,
                "input": text,
                "word_count": summary.split_whitespace().count(),
                "usage": completion.usage.to_json(),
            })
            .into())
        })
    }
}

/// FlowMason's summarization prompt for a style, focus and length.
fn prompt(text: &str, style: &str, focus: Option<&str>, max_length: Option<u64>) -> String {
    let mut prompt = match style {
        "brief" => format!("Provide a brief 1-2 sentence summary of the following text:\n\n{text}"),
        "detailed" => format!(
            "Provide a detailed summary of the following text, capturing all key points:\n\n{text}"
        ),
        "bullet" => format!("Summarize the following text as bullet points:\n\n{text}"),
        "executive" => format!(
            "Provide an executive summary of the following text, focusing on key decisions and action items:\n\n{text}"
        ),
        _ => format!("Summarize the following text:\n\n{text}"),
    };
    if let Some(focus) = focus.filter(|f| !f.is_empty()) {
        prompt.push_str(&format!("\n\nFocus particularly on: {focus}"));
    }
    if let Some(words) = max_length {
        prompt.push_str(&format!("\n\nKeep the summary under {words} words."));
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    #[test]
    fn prompts_per_style() {
        assert_eq!(
            prompt("T", "bullet", Some("costs"), Some(50)),
            "Summarize the following text as bullet points:\n\nT\n\nFocus particularly on: costs\n\nKeep the summary under 50 words."
        );
        assert_eq!(
            prompt("T", "haiku", None, None),
            "Summarize the following text:\n\nT"
        );
    }

    #[tokio::test]
    async fn bad_max_length_is_a_config_error() {
        let (ctx, _) = context();
        let err = Summarizer
            .execute(json!({"text": "t", "max_length": 5}), ctx)
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "summarizer: `max_length` must be an integer from 10 to 10000, got 5"
        );
    }
}

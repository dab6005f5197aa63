//! `translator`: translates text into another language, FlowMason's core node.
//!
//! Input: `text` and `target_language` (required), `source_language` (detected when absent),
//! `preserve_formatting` (true), `preserve_tone` (true), `context`, plus `temperature` (0.3),
//! `max_tokens` (4096), `provider`, `model`. Output `{translated, source_language, target_language,
//! input, usage}`; `source_language` is `auto-detected` when none was given, as in FlowMason.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, opt_str};
use crate::llm::{self, LlmOptions};

/// The component type name.
pub const NAME: &str = "translator";

const SYSTEM_PROMPT: &str = "You are an expert translator. Translate text accurately while preserving meaning, tone, and context.";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Translator;

/// The fields of a translation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub text: &'a str,
    pub source_language: Option<&'a str>,
    pub target_language: &'a str,
    pub preserve_formatting: bool,
    pub preserve_tone: bool,
    pub context: Option<&'a str>,
}

impl Component for Translator {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(
            NAME,
            config,
            &["text", "source_language", "target_language", "context"],
        )?;
        if !super::config_object(NAME, config)?.is_some_and(|c| c.contains_key("target_language")) {
            return Err(ComponentError::config(format!(
                "{NAME}: `target_language` is required"
            )));
        }
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let request = Request {
                text: llm::required_str(NAME, &input, "text")?.trim(),
                target_language: llm::required_str(NAME, &input, "target_language")?.trim(),
                source_language: opt_str(NAME, &input, "source_language")?
                    .map(str::trim)
                    .filter(|s| !s.is_empty()),
                preserve_formatting: opt_bool(NAME, &input, "preserve_formatting", true)?,
                preserve_tone: opt_bool(NAME, &input, "preserve_tone", true)?,
                context: opt_str(NAME, &input, "context")?.map(str::trim),
            };
            let options = LlmOptions::from_input(NAME, &input, 0.3, 4096)?;
            let completion = llm::ask(
                NAME,
                &input,
                &options,
                Some(SYSTEM_PROMPT.into()),
                prompt(&request),
                &ctx,
            )
            .await?;
            Ok(json!({
                "translated": completion.content.trim(),
                "source_language": request.source_language.unwrap_or("auto-detected"),
                "target_language": request.target_language,
                "input": request.text,
                "usage": completion.usage.to_json(),
            })
            .into())
        })
    }
}

/// FlowMason's translation request.
pub fn prompt(r: &Request<'_>) -> String {
    let mut prompt = match r.source_language {
        Some(source) => format!(
            "Translate the following text from {source} to {}:\n\n{}",
            r.target_language, r.text
        ),
        None => format!(
            "Detect the language and translate the following text to {}:\n\n{}",
            r.target_language, r.text
        ),
    };
    if r.preserve_formatting {
        prompt.push_str("\n\nPreserve the original formatting, including paragraphs, bullet points, and emphasis.");
    }
    if r.preserve_tone {
        prompt.push_str("\n\nPreserve the original tone, style, and voice.");
    }
    if let Some(context) = r.context.filter(|c| !c.is_empty()) {
        prompt.push_str(&format!("\n\nContext: {context}"));
    }
    prompt.push_str("\n\nReturn only the translated text without any explanations.");
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_source_language_the_model_detects_it() {
        let r = Request {
            text: "Hola",
            source_language: None,
            target_language: "English",
            preserve_formatting: false,
            preserve_tone: false,
            context: Some("a greeting"),
        };
        assert_eq!(
            prompt(&r),
            "Detect the language and translate the following text to English:\n\nHola\n\nContext: a greeting\n\nReturn only the translated text without any explanations."
        );
    }

    #[test]
    fn validation_requires_the_target_language() {
        assert_eq!(
            Translator
                .validate(&json!({"text": "x"}))
                .unwrap_err()
                .message,
            "translator: `target_language` is required"
        );
        assert!(
            Translator
                .validate(&json!({"text": "x", "target_language": "{{input.lang}}"}))
                .is_ok()
        );
    }
}

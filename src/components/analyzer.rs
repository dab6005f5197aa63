//! `analyzer`: analyses text for sentiment, intent, topics, entities or by a custom prompt,
//! FlowMason's core node.
//!
//! Input: `text` (required), `analysis_type` (`sentiment` (default), `intent`, `topics`, `entities`;
//! anything else is a custom analysis), `prompt` (the custom analysis' instructions), `options`
//! (an object, accepted as FlowMason's is, which does not use it), plus `temperature` (0.3),
//! `max_tokens` (2048), `provider`, `model`. Output `{analysis, type, input, raw, usage}`: `analysis` is
//! the JSON from the first `{` to the last `}` of the answer when that parses, else the answer's text,
//! as in FlowMason; `raw` is the answer trimmed.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_str, type_name};
use crate::llm::{self, LlmOptions};

/// The component type name.
pub const NAME: &str = "analyzer";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Analyzer;

impl Component for Analyzer {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["text", "analysis_type", "prompt"])
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let text = llm::required_str(NAME, &input, "text")?.trim();
            let kind = opt_str(NAME, &input, "analysis_type")?
                .map(str::trim)
                .unwrap_or("sentiment");
            let custom = opt_str(NAME, &input, "prompt")?
                .map(str::trim)
                .filter(|p| !p.is_empty());
            match input.get("options") {
                None | Some(Value::Null) | Some(Value::Object(_)) => {}
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `options` must be an object, got {}",
                        type_name(other)
                    )));
                }
            }
            let options = LlmOptions::from_input(NAME, &input, 0.3, 2048)?;
            let (system, user) = prompts(kind, text, custom);
            let completion =
                llm::ask(NAME, &input, &options, Some(system.into()), user, &ctx).await?;
            let raw = completion.content.trim();
            Ok(json!({
                "analysis": analysis(raw),
                "type": kind,
                "input": text,
                "raw": raw,
                "usage": completion.usage.to_json(),
            })
            .into())
        })
    }
}

/// FlowMason's system and user prompts for an analysis type.
pub fn prompts(kind: &str, text: &str, custom: Option<&str>) -> (&'static str, String) {
    match kind {
        "sentiment" => (
            "You are a sentiment analysis expert. Analyze the sentiment of the given text.",
            format!(
                "Analyze the sentiment of the following text. Return JSON with: sentiment (positive/negative/neutral), confidence (0-1), and explanation.\n\nText: {text}"
            ),
        ),
        "intent" => (
            "You are an intent detection expert. Identify the user's intent from the given text.",
            format!(
                "Identify the intent of the following text. Return JSON with: intent, confidence (0-1), and entities mentioned.\n\nText: {text}"
            ),
        ),
        "topics" => (
            "You are a topic extraction expert. Extract the main topics from the given text.",
            format!(
                "Extract the main topics from the following text. Return JSON with: topics (array of topic names), primaryTopic, and summary.\n\nText: {text}"
            ),
        ),
        "entities" => (
            "You are a named entity recognition expert. Extract entities from the given text.",
            format!(
                "Extract named entities from the following text. Return JSON with: entities (array of {{type, value, context}}).\n\nText: {text}"
            ),
        ),
        _ => (
            "You are an expert analyst. Analyze the given text according to the instructions.",
            match custom {
                Some(p) => format!("{p}\n\nText: {text}"),
                None => format!("Analyze the following text and provide insights:\n\n{text}"),
            },
        ),
    }
}

/// The JSON between the first `{` and the last `}` of the answer, else the answer itself.
pub fn analysis(raw: &str) -> Value {
    let json = raw.find('{').and_then(|start| {
        let end = raw.rfind('}')?;
        (end > start).then(|| &raw[start..=end])
    });
    json.and_then(|j| serde_json::from_str::<Value>(j).ok())
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_inside_an_answer_is_the_analysis() {
        assert_eq!(
            analysis("Here: {\"sentiment\": \"positive\"} done"),
            json!({"sentiment": "positive"})
        );
        assert_eq!(analysis("no json"), json!("no json"));
        assert_eq!(analysis("} {"), json!("} {"));
    }

    #[test]
    fn a_custom_analysis_uses_the_prompt() {
        let (system, user) = prompts("custom", "T", Some("Rate it."));
        assert_eq!(
            system,
            "You are an expert analyst. Analyze the given text according to the instructions."
        );
        assert_eq!(user, "Rate it.\n\nText: T");
    }
}

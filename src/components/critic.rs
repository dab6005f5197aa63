//! `critic`: evaluates content and answers with structured feedback, FlowMason's core node.
//!
//! Input: `content` (required), `criteria` (list, or one string as FlowMason's templates write it), `context`, `rubric` (criterion -> description),
//! `strict_mode`, plus `temperature` (0.3), `max_tokens` (2048), `provider`, `model`. The model is asked
//! for FlowMason's JSON evaluation; its answer is read as JSON (also inside a markdown code block). An
//! answer that is not JSON becomes the `feedback` of an `acceptable` rating with score 0.5, as in
//! FlowMason. Output `{overall_rating, score, feedback, strengths, improvements, criterion_scores,
//! passes_threshold, usage}`.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, opt_str, type_name};
use crate::llm::{self, ChatRequest, LlmOptions, Message};

/// The component type name.
pub const NAME: &str = "critic";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Critic;

impl Component for Critic {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["content", "context"])
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let content = llm::required_str(NAME, &input, "content")?;
            let options = LlmOptions::from_input(NAME, &input, 0.3, 2048)?;
            let criteria = criteria(&input)?;
            let rubric = match input.get("rubric") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(map)) => map.clone(),
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `rubric` must be an object, got {}",
                        type_name(other)
                    )));
                }
            };
            let context = opt_str(NAME, &input, "context")?;
            let strict = opt_bool(NAME, &input, "strict_mode", false)?;
            let request = ChatRequest {
                system: Some(system_prompt(strict)),
                messages: vec![Message::user(user_prompt(
                    content, &criteria, &rubric, context,
                ))],
                max_tokens: options.max_tokens,
                temperature: options.temperature,
                stop_sequences: Vec::new(),
            };
            let completion = llm::call(NAME, &input, &options, &request, &ctx).await?;
            let mut output = evaluation(&completion.content);
            output.insert("usage".into(), completion.usage.to_json());
            Ok(Value::Object(output).into())
        })
    }
}

fn criteria(input: &Map<String, Value>) -> Result<Vec<String>, ComponentError> {
    match input.get("criteria") {
        None | Some(Value::Null) => Ok(Vec::new()),
        // FlowMason's studio templates write the criteria as one text.
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.trim().to_string()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `criteria` must be an array of strings, got an item {v}"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `criteria` must be an array of strings, got {}",
            type_name(other)
        ))),
    }
}

/// FlowMason's evaluator system prompt.
fn system_prompt(strict: bool) -> String {
    let strictness = if strict {
        "Apply strict evaluation standards."
    } else {
        ""
    };
    format!(
        "You are an expert content evaluator. Analyze the provided content and give structured feedback.\n\n\
{strictness}\n\n\
Respond in JSON format with:\n\
{{\n    \"overall_rating\": \"excellent|good|acceptable|needs_improvement|poor\",\n    \"score\": 0.0-1.0,\n    \
\"feedback\": \"detailed explanation\",\n    \"strengths\": [\"list of strengths\"],\n    \
\"improvements\": [\"list of improvements\"],\n    \"criterion_scores\": {{\"criterion\": score}},\n    \
\"passes_threshold\": true/false\n}}"
    )
}

/// FlowMason's evaluation request: the content, then each criterion with its rubric entry, then context.
fn user_prompt(
    content: &str,
    criteria: &[String],
    rubric: &Map<String, Value>,
    context: Option<&str>,
) -> String {
    let mut criteria_text = String::new();
    if !criteria.is_empty() {
        criteria_text.push_str("\n\nEvaluate against these criteria:\n");
        for c in criteria {
            criteria_text.push_str("- ");
            criteria_text.push_str(c);
            if let Some(desc) = rubric
                .get(c)
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                criteria_text.push_str(": ");
                criteria_text.push_str(desc);
            }
            criteria_text.push('\n');
        }
    }
    let context_text = context
        .filter(|c| !c.is_empty())
        .map(|c| format!("\n\nContext: {c}"))
        .unwrap_or_default();
    format!("Evaluate this content:\n\n---\n{content}\n---\n{criteria_text}{context_text}")
}

/// The evaluation read from the model's answer, with FlowMason's defaults for missing fields.
fn evaluation(answer: &str) -> Map<String, Value> {
    let parsed = llm::parse_json_object(answer);
    let Some(result) = parsed else {
        return json!({
            "overall_rating": "acceptable", "score": 0.5, "feedback": answer,
            "strengths": [], "improvements": [], "criterion_scores": {}, "passes_threshold": true,
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
    };
    let get = |k: &str| result.get(k).filter(|v| !v.is_null());
    let score = get("score")
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(0.5);
    json!({
        "overall_rating": get("overall_rating").and_then(Value::as_str).unwrap_or("acceptable"),
        "score": score,
        "feedback": get("feedback").and_then(Value::as_str).unwrap_or(""),
        "strengths": get("strengths").filter(|v| v.is_array()).cloned().unwrap_or(json!([])),
        "improvements": get("improvements").filter(|v| v.is_array()).cloned().unwrap_or(json!([])),
        "criterion_scores": get("criterion_scores").filter(|v| v.is_object()).cloned().unwrap_or(json!({})),
        "passes_threshold": get("passes_threshold").and_then(Value::as_bool).unwrap_or(true),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_flowmason() {
        let mut rubric = Map::new();
        rubric.insert("clarity".into(), json!("easy to read"));
        let prompt = user_prompt(
            "Text",
            &["clarity".into(), "tone".into()],
            &rubric,
            Some("for kids"),
        );
        assert_eq!(
            prompt,
            "Evaluate this content:\n\n---\nText\n---\n\n\nEvaluate against these criteria:\n- clarity: easy to read\n- tone\n\n\nContext: for kids"
        );
        assert!(system_prompt(true).contains("Apply strict evaluation standards."));
        assert!(system_prompt(false).contains("\"passes_threshold\": true/false"));
    }

    #[test]
    fn answers_are_read_as_json_with_defaults_or_as_feedback() {
        let e = evaluation(
            "```json\n{\"overall_rating\": \"good\", \"score\": 0.8, \"strengths\": [\"x\"]}\n```",
        );
        assert_eq!(
            Value::Object(e),
            json!({"overall_rating": "good", "score": 0.8, "feedback": "", "strengths": ["x"],
                   "improvements": [], "criterion_scores": {}, "passes_threshold": true})
        );
        let e = evaluation("Looks fine to me.");
        assert_eq!(e["feedback"], json!("Looks fine to me."));
        assert_eq!(e["score"], json!(0.5));
        assert_eq!(e["overall_rating"], json!("acceptable"));
    }
}

//! `improver`: rewrites content according to feedback (typically a `critic`'s), FlowMason's core node.
//!
//! Input: `content` and `feedback` (required), `improvements` and `preserve_aspects` (lists),
//! `improvement_focus`, `max_iterations` (1..=5, accepted as FlowMason's is, which does not use it),
//! plus `temperature` (0.5), `max_tokens` (4096), `provider`, `model`. `instructions` is our addition:
//! FlowMason's own templates give it, and the original refuses it as an unknown field; here it is added to
//! the request after the feedback. The model is asked for FlowMason's JSON answer; an answer that is not
//! a JSON object becomes the `improved_content` itself. Output `{improved_content, changes_made,
//! preserved_aspects, improvement_summary, usage}`.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_int_in, opt_str, opt_text_list};
use crate::llm::{self, LlmOptions};

/// The component type name.
pub const NAME: &str = "improver";

/// FlowMason's editor system prompt.
pub const SYSTEM_PROMPT: &str = "You are an expert editor and content improver. Your task is to improve the given content based on the provided feedback while maintaining the original intent and voice.

After improving the content, provide a JSON response with:
{
    \"improved_content\": \"the improved text\",
    \"changes_made\": [\"list of changes\"],
    \"preserved_aspects\": [\"what was kept\"],
    \"improvement_summary\": \"brief summary\"
}";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Improver;

/// The fields of an improver request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub content: &'a str,
    pub feedback: &'a str,
    pub improvements: Vec<String>,
    pub preserve_aspects: Vec<String>,
    pub improvement_focus: Option<&'a str>,
    pub instructions: Option<&'a str>,
}

impl Component for Improver {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(
            NAME,
            config,
            &["content", "feedback", "improvement_focus", "instructions"],
        )
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let request = Request {
                content: llm::required_str(NAME, &input, "content")?.trim(),
                feedback: llm::required_str(NAME, &input, "feedback")?.trim(),
                improvements: opt_text_list(NAME, &input, "improvements")?,
                preserve_aspects: opt_text_list(NAME, &input, "preserve_aspects")?,
                improvement_focus: opt_str(NAME, &input, "improvement_focus")?.map(str::trim),
                instructions: opt_str(NAME, &input, "instructions")?.map(str::trim),
            };
            opt_int_in(NAME, &input, "max_iterations", 1..=5)?;
            let options = LlmOptions::from_input(NAME, &input, 0.5, 4096)?;
            let completion = llm::ask(
                NAME,
                &input,
                &options,
                Some(SYSTEM_PROMPT.into()),
                prompt(&request),
                &ctx,
            )
            .await?;
            let mut output = shape(&completion.content, &request.preserve_aspects);
            output.insert("usage".into(), completion.usage.to_json());
            Ok(Value::Object(output).into())
        })
    }
}

/// FlowMason's improvement request (with `instructions` after the focus when given).
pub fn prompt(r: &Request<'_>) -> String {
    let list = |title: &str, items: &[String]| {
        if items.is_empty() {
            return String::new();
        }
        let mut text = format!("\n\n{title}:\n");
        for item in items {
            text.push_str(&format!("- {item}\n"));
        }
        text
    };
    let improvements = list("Specific improvements to make", &r.improvements);
    let preserve = list("Preserve these aspects", &r.preserve_aspects);
    let focus = r
        .improvement_focus
        .filter(|f| !f.is_empty())
        .map(|f| format!("\n\nPrimary focus: {f}"))
        .unwrap_or_default();
    let instructions = r
        .instructions
        .filter(|i| !i.is_empty())
        .map(|i| format!("\n\nInstructions:\n{i}"))
        .unwrap_or_default();
    format!(
        "Original content:\n---\n{}\n---\n\nFeedback:\n{}\n{improvements}{preserve}{focus}{instructions}\n\nPlease improve the content based on this feedback.",
        r.content, r.feedback
    )
}

/// The output from the model's answer: its JSON fields with FlowMason's defaults, or the whole answer
/// as the improved content.
pub fn shape(answer: &str, preserve_aspects: &[String]) -> Map<String, Value> {
    let output = match llm::parse_json_object(answer) {
        Some(result) => {
            let get = |k: &str| result.get(k).filter(|v| !v.is_null());
            json!({
                "improved_content": get("improved_content").cloned().unwrap_or_else(|| json!(answer)),
                "changes_made": get("changes_made").filter(|v| v.is_array()).cloned().unwrap_or(json!([])),
                "preserved_aspects": get("preserved_aspects").filter(|v| v.is_array()).cloned().unwrap_or(json!([])),
                "improvement_summary": get("improvement_summary").cloned().unwrap_or(json!("")),
            })
        }
        None => json!({
            "improved_content": answer,
            "changes_made": ["Applied feedback"],
            "preserved_aspects": preserve_aspects,
            "improvement_summary": "Content improved based on feedback",
        }),
    };
    output.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    #[test]
    fn the_prompt_lists_improvements_aspects_focus_and_instructions() {
        let r = Request {
            content: "Draft",
            feedback: "Too long",
            improvements: vec!["cut".into()],
            preserve_aspects: vec!["tone".into()],
            improvement_focus: Some("brevity"),
            instructions: Some("Keep it short."),
        };
        assert_eq!(
            prompt(&r),
            "Original content:\n---\nDraft\n---\n\nFeedback:\nToo long\n\n\nSpecific improvements to make:\n- cut\n\n\nPreserve these aspects:\n- tone\n\n\nPrimary focus: brevity\n\nInstructions:\nKeep it short.\n\nPlease improve the content based on this feedback."
        );
    }

    #[test]
    fn an_answer_that_is_not_json_is_the_improved_content() {
        let out = shape("Better text.", &["tone".into()]);
        assert_eq!(
            Value::Object(out),
            json!({"improved_content": "Better text.", "changes_made": ["Applied feedback"],
                   "preserved_aspects": ["tone"], "improvement_summary": "Content improved based on feedback"})
        );
    }

    #[tokio::test]
    async fn input_errors_name_the_field() {
        let cases = [
            (json!({"feedback": "f"}), "improver: `content` is required"),
            (json!({"content": "c"}), "improver: `feedback` is required"),
            (
                json!({"content": "c", "feedback": "f", "improvements": "x"}),
                "improver: `improvements` must be an array of strings, got a string",
            ),
            (
                json!({"content": "c", "feedback": "f", "max_iterations": 9}),
                "improver: `max_iterations` must be an integer from 1 to 5, got 9",
            ),
        ];
        for (input, message) in cases {
            let (ctx, _) = context();
            let err = Improver.execute(input, ctx).await.unwrap_err();
            assert_eq!(err.message, message);
        }
    }
}

//! `combiner`: merges several pieces of content into one, FlowMason's core node (formerly named
//! `synthesizer`; see `synthesizer.rs` for that name).
//!
//! Input: `inputs` (required, at least 2 strings), `synthesis_strategy` (`integrate` (default),
//! `summarize`, `compare`, `consensus`, `best_of`; another word gets the integrate instructions),
//! `context`, `output_format`, `preserve_sources` (false), `max_length` (words, 10..=10000), plus
//! `temperature` (0.5), `max_tokens` (4096), `provider`, `model`. The model is asked for FlowMason's JSON
//! answer; an answer that is not a JSON object is the `synthesized` text. Output `{synthesized,
//! sources_used, strategy_applied, key_themes, usage}`.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, opt_int_in, opt_str, type_name};
use crate::llm::{self, LlmOptions};

/// The component type name.
pub const NAME: &str = "combiner";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Combiner;

/// A synthesis request, shared with `synthesizer`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Each source with its heading (`Source 1`, or a `synthesizer` source's label).
    pub sources: Vec<(String, String)>,
    pub strategy: String,
    pub context: Option<String>,
    pub output_format: Option<String>,
    pub preserve_sources: bool,
    pub max_length: Option<u64>,
    /// `synthesizer`'s instructions; `combiner` has none.
    pub instructions: Option<String>,
}

impl Request {
    /// The fields both components share, read from a stage input.
    pub fn from_input(
        component: &str,
        input: &Map<String, Value>,
        sources: Vec<(String, String)>,
    ) -> Result<Request, ComponentError> {
        let text = |field: &str| -> Result<Option<String>, ComponentError> {
            Ok(opt_str(component, input, field)?
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string))
        };
        Ok(Request {
            sources,
            strategy: text("synthesis_strategy")?.unwrap_or_else(|| "integrate".into()),
            context: text("context")?,
            output_format: text("output_format")?,
            preserve_sources: opt_bool(component, input, "preserve_sources", false)?,
            max_length: opt_int_in(component, input, "max_length", 10..=10_000)?,
            instructions: None,
        })
    }
}

impl Component for Combiner {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(
            NAME,
            config,
            &["synthesis_strategy", "context", "output_format"],
        )?;
        let fixed = super::static_config(NAME, config)?.unwrap_or_default();
        if fixed.contains_key("inputs") {
            inputs(&fixed)?;
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
            let sources = inputs(&input)?
                .into_iter()
                .enumerate()
                .map(|(i, text)| (format!("Source {}", i + 1), text))
                .collect();
            let request = Request::from_input(NAME, &input, sources)?;
            run(NAME, &input, &request, &ctx).await
        })
    }
}

/// `inputs`: at least two strings.
fn inputs(input: &Map<String, Value>) -> Result<Vec<String>, ComponentError> {
    match input.get("inputs") {
        None | Some(Value::Null) => Err(ComponentError::config(format!(
            "{NAME}: `inputs` is required (a list of at least 2 pieces of content)"
        ))),
        Some(Value::Array(items)) if items.len() < 2 => Err(ComponentError::config(format!(
            "{NAME}: `inputs` must hold at least 2 pieces of content, got {}",
            items.len()
        ))),
        Some(Value::Array(_)) => super::opt_text_list(NAME, input, "inputs"),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `inputs` must be an array of strings, got {}",
            type_name(other)
        ))),
    }
}

/// Asks the model to synthesize and shapes its answer.
pub(crate) async fn run(
    component: &str,
    input: &Map<String, Value>,
    request: &Request,
    ctx: &StageContext,
) -> Result<ComponentOutput, ComponentError> {
    let options = LlmOptions::from_input(component, input, 0.5, 4096)?;
    let completion = llm::ask(
        component,
        input,
        &options,
        Some(system_prompt(&request.strategy)),
        user_prompt(request),
        ctx,
    )
    .await?;
    let mut output = shape(&completion.content, request);
    output.insert("usage".into(), completion.usage.to_json());
    Ok(Value::Object(output).into())
}

/// FlowMason's instructions for a synthesis strategy.
pub fn strategy_instructions(strategy: &str) -> &'static str {
    match strategy {
        "summarize" => {
            "Summarization Strategy: Create a concise summary that captures the key points from all inputs. Focus on the most important information and common themes."
        }
        "compare" => {
            "Comparison Strategy: Analyze the inputs and highlight similarities and differences. Present a balanced view of how the sources agree or disagree."
        }
        "consensus" => {
            "Consensus Strategy: Identify areas of agreement across all inputs. Focus on common ground and shared conclusions."
        }
        "best_of" => {
            "Best-of Strategy: Evaluate each input and select the highest quality content. Combine the strongest elements from each source."
        }
        _ => {
            "Integration Strategy: Combine all inputs into a single coherent narrative. Weave together the information smoothly, eliminating redundancy while preserving all unique insights."
        }
    }
}

/// FlowMason's synthesis system prompt.
pub fn system_prompt(strategy: &str) -> String {
    format!(
        "You are an expert at synthesizing information from multiple sources.

{}

After synthesizing, provide a JSON response with:
{{
    \"synthesized\": \"the synthesized content\",
    \"key_themes\": [\"list of common themes\"],
    \"strategy_applied\": \"{strategy}\"
}}",
        strategy_instructions(strategy)
    )
}

/// FlowMason's synthesis request: the sources under their headings, then context, format, length,
/// attribution (and a `synthesizer`'s instructions).
pub fn user_prompt(r: &Request) -> String {
    let mut sources = String::new();
    for (heading, text) in &r.sources {
        sources.push_str(&format!("\n[{heading}]:\n{text}\n"));
    }
    let context = r
        .context
        .as_ref()
        .map(|c| format!("\nContext: {c}"))
        .unwrap_or_default();
    let format = r
        .output_format
        .as_ref()
        .map(|f| format!("\nOutput format: {f}"))
        .unwrap_or_default();
    let length = r
        .max_length
        .map(|n| format!("\nTarget length: approximately {n} words"))
        .unwrap_or_default();
    let attribution = if r.preserve_sources {
        "\nInclude source attribution (e.g., 'According to Source 1...')"
    } else {
        ""
    };
    let instructions = r
        .instructions
        .as_ref()
        .map(|i| format!("\nInstructions:\n{i}\n"))
        .unwrap_or_default();
    format!(
        "Synthesize the following {} inputs:\n{sources}\n{context}{format}{length}{attribution}\n{instructions}\nApply the '{}' strategy to combine these inputs into a unified output.",
        r.sources.len(),
        r.strategy
    )
}

/// The output from the model's answer.
pub fn shape(answer: &str, r: &Request) -> Map<String, Value> {
    let output = match llm::parse_json_object(answer) {
        Some(result) => {
            let get = |k: &str| result.get(k).filter(|v| !v.is_null());
            json!({
                "synthesized": get("synthesized").cloned().unwrap_or_else(|| json!(answer)),
                "sources_used": r.sources.len(),
                "strategy_applied": get("strategy_applied").cloned().unwrap_or_else(|| json!(r.strategy)),
                "key_themes": get("key_themes").filter(|v| v.is_array()).cloned().unwrap_or(json!([])),
            })
        }
        None => json!({
            "synthesized": answer,
            "sources_used": r.sources.len(),
            "strategy_applied": r.strategy,
            "key_themes": [],
        }),
    };
    output.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_strategy_gets_the_integrate_instructions() {
        assert!(system_prompt("mash").contains("Integration Strategy:"));
        assert!(system_prompt("mash").contains("\"strategy_applied\": \"mash\""));
    }

    #[test]
    fn inputs_must_be_at_least_two() {
        assert_eq!(
            Combiner
                .validate(&json!({"inputs": ["a"]}))
                .unwrap_err()
                .message,
            "combiner: `inputs` must hold at least 2 pieces of content, got 1"
        );
        assert!(
            Combiner
                .validate(&json!({"inputs": "{{input.all}}"}))
                .is_ok()
        );
    }

    #[test]
    fn a_plain_answer_is_the_synthesis() {
        let r = Request {
            sources: vec![
                ("Source 1".into(), "a".into()),
                ("Source 2".into(), "b".into()),
            ],
            strategy: "compare".into(),
            context: None,
            output_format: None,
            preserve_sources: false,
            max_length: None,
            instructions: None,
        };
        assert_eq!(
            Value::Object(shape("merged", &r)),
            json!({"synthesized": "merged", "sources_used": 2, "strategy_applied": "compare", "key_themes": []})
        );
    }
}

//! `synthesizer`: FlowMason's former name of `combiner`, which its package documentation still lists
//! as a core node and its templates use, but which 1.0.24 does not register. Defined here from those
//! uses: `combiner`'s request and output, taking its content from either `inputs` (strings) or
//! `sources` (strings or `{label, content}` objects, each shown to the model under its label), with
//! `instructions` added to the request.
//!
//! Input: `inputs` or `sources` (required, at least 1), `instructions`, `synthesis_strategy`
//! (`integrate`), `context`, `output_format`, `preserve_sources`, `max_length`, plus `temperature` (0.5),
//! `max_tokens` (4096), `provider`, `model`. Output `{synthesized, sources_used, strategy_applied,
//! key_themes, usage}`, as `combiner`'s.

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::combiner::{self, Request};
use super::{input_object, opt_str, type_name};
use crate::llm;

/// The component type name.
pub const NAME: &str = "synthesizer";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Synthesizer;

impl Component for Synthesizer {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(
            NAME,
            config,
            &[
                "instructions",
                "synthesis_strategy",
                "context",
                "output_format",
            ],
        )?;
        let given =
            |map: &Map<String, Value>| map.contains_key("inputs") || map.contains_key("sources");
        if !super::config_object(NAME, config)?.is_some_and(given) {
            return Err(missing());
        }
        let fixed = super::static_config(NAME, config)?.unwrap_or_default();
        if given(&fixed) {
            sources(&fixed)?;
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
            let mut request = Request::from_input(NAME, &input, sources(&input)?)?;
            request.instructions = opt_str(NAME, &input, "instructions")?
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map(str::to_string);
            combiner::run(NAME, &input, &request, &ctx).await
        })
    }
}

fn missing() -> ComponentError {
    ComponentError::config(format!(
        "{NAME}: `inputs` or `sources` is required (the content to synthesize)"
    ))
}

/// The headed sources from `inputs` or `sources`: `Source N` unless an item has a `label`.
fn sources(input: &Map<String, Value>) -> Result<Vec<(String, String)>, ComponentError> {
    let (field, value) = match (input.get("inputs"), input.get("sources")) {
        (Some(v), _) if !v.is_null() => ("inputs", v),
        (_, Some(v)) if !v.is_null() => ("sources", v),
        _ => return Err(missing()),
    };
    let Value::Array(items) = value else {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a list of sources, got {}",
            type_name(value)
        )));
    };
    if items.is_empty() {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must hold at least 1 source"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let numbered = format!("Source {}", i + 1);
            match item {
                Value::String(s) => Ok((numbered, s.trim().to_string())),
                Value::Object(o) => match (o.get("label"), o.get("content")) {
                    (Some(Value::String(label)), Some(Value::String(content))) => {
                        Ok((label.trim().to_string(), content.trim().to_string()))
                    }
                    (None, Some(Value::String(content))) => {
                        Ok((numbered, content.trim().to_string()))
                    }
                    _ => Err(item_error(field, i, "an object without a string `content`")),
                },
                other => Err(item_error(field, i, type_name(other))),
            }
        })
        .collect()
}

fn item_error(field: &str, i: usize, got: &str) -> ComponentError {
    ComponentError::config(format!(
        "{NAME}: `{field}[{i}]` must be a string or an object with a string `content` (and `label`), got {got}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labelled_sources_are_headed_by_their_label_and_instructions_follow() {
        let input = json!({"sources": [{"label": "Deal", "content": "big"}, "small"],
                           "instructions": "Be short."});
        let input = input.as_object().cloned().unwrap_or_default();
        let mut request = Request::from_input(NAME, &input, sources(&input).unwrap()).unwrap();
        request.instructions = Some("Be short.".into());
        assert_eq!(
            combiner::user_prompt(&request),
            "Synthesize the following 2 inputs:\n\n[Deal]:\nbig\n\n[Source 2]:\nsmall\n\n\n\nInstructions:\nBe short.\n\nApply the 'integrate' strategy to combine these inputs into a unified output."
        );
    }

    #[test]
    fn validation_requires_inputs_or_sources() {
        assert_eq!(
            Synthesizer
                .validate(&json!({"instructions": "x"}))
                .unwrap_err()
                .message,
            "synthesizer: `inputs` or `sources` is required (the content to synthesize)"
        );
        assert_eq!(
            Synthesizer
                .validate(&json!({"sources": [1]}))
                .unwrap_err()
                .message,
            "synthesizer: `sources[0]` must be a string or an object with a string `content` (and `label`), got a number"
        );
    }
}

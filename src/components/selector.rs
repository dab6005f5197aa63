//! `selector`: picks the best of several candidates, FlowMason's core node.
//!
//! Input: `candidates` (required, at least 2 strings), `criteria` (list), `context`, `selection_mode`
//! (`best` (default), `top_n`, `rank_all`; another word asks for the best), `top_n` (1..=10),
//! `explain_choice` (accepted as FlowMason's is, which does not use it), plus `temperature` (0.2),
//! `max_tokens` (2048), `provider`, `model`. Our additions, for what FlowMason's own templates write and
//! the original refuses: `options` in place of `candidates`, whose items may also be `{label, content}`
//! objects (given to the model as `label:` and the content), and `criteria` as one string. The model
//! is asked for FlowMason's JSON answer; an index outside the candidates selects the first, and an answer
//! that is not JSON selects the first with the answer as `explanation`. Output `{selected,
//! selected_index, explanation, rankings, confidence, usage}`.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, opt_int_in, opt_str, opt_text_list, type_name};
use crate::llm::{self, LlmOptions};

/// The component type name.
pub const NAME: &str = "selector";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector;

impl Component for Selector {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["context", "selection_mode"])?;
        let given = |map: &Map<String, Value>| {
            map.contains_key("candidates") || map.contains_key("options")
        };
        if !super::config_object(NAME, config)?.is_some_and(given) {
            return Err(missing_candidates());
        }
        let map = super::static_config(NAME, config)?.unwrap_or_default();
        if given(&map) {
            candidates(&map)?;
        }
        criteria(&map)?;
        opt_int_in(NAME, &map, "top_n", 1..=10)?;
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let candidates = candidates(&input)?;
            let criteria = criteria(&input)?;
            let context = opt_str(NAME, &input, "context")?.map(str::trim);
            let mode = opt_str(NAME, &input, "selection_mode")?.unwrap_or("best");
            let top_n = opt_int_in(NAME, &input, "top_n", 1..=10)?.unwrap_or(1);
            opt_bool(NAME, &input, "explain_choice", true)?;
            let options = LlmOptions::from_input(NAME, &input, 0.2, 2048)?;
            let completion = llm::ask(
                NAME,
                &input,
                &options,
                Some(system_prompt(mode, top_n)),
                user_prompt(&candidates, &criteria, context),
                &ctx,
            )
            .await?;
            let mut output = shape(&completion.content, &candidates);
            output.insert("usage".into(), completion.usage.to_json());
            Ok(Value::Object(output).into())
        })
    }
}

fn missing_candidates() -> ComponentError {
    ComponentError::config(format!(
        "{NAME}: `candidates` is required (a list of at least 2 options to choose from)"
    ))
}

/// `candidates` (or `options`): at least two, each a string or a `{label, content}` object.
fn candidates(input: &Map<String, Value>) -> Result<Vec<String>, ComponentError> {
    let (field, value) = match (input.get("candidates"), input.get("options")) {
        (Some(v), _) if !v.is_null() => ("candidates", v),
        (_, Some(v)) if !v.is_null() => ("options", v),
        _ => return Err(missing_candidates()),
    };
    let Value::Array(items) = value else {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a list of candidates, got {}",
            type_name(value)
        )));
    };
    if items.len() < 2 {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must hold at least 2 candidates, got {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.trim().to_string()),
            Value::Object(o) => match (o.get("label"), o.get("content")) {
                (Some(Value::String(label)), Some(Value::String(content))) => {
                    Ok(format!("{}:\n{}", label.trim(), content.trim()))
                }
                (None, Some(Value::String(content))) => Ok(content.trim().to_string()),
                _ => Err(ComponentError::config(format!(
                    "{NAME}: `{field}[{i}]` must be a string or an object with a string `content` (and `label`)"
                ))),
            },
            other => Err(ComponentError::config(format!(
                "{NAME}: `{field}[{i}]` must be a string or an object with a string `content` (and `label`), got {}",
                type_name(other)
            ))),
        })
        .collect()
}

/// `criteria`: a list of strings, or one string.
fn criteria(input: &Map<String, Value>) -> Result<Vec<String>, ComponentError> {
    match input.get("criteria") {
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.trim().to_string()]),
        _ => opt_text_list(NAME, input, "criteria"),
    }
}

/// FlowMason's selection system prompt for a mode.
pub fn system_prompt(mode: &str, top_n: u64) -> String {
    let instruction = match mode {
        "top_n" => format!("Select the top {top_n} options, ranked from best to worst."),
        "rank_all" => "Rank all options from best to worst with scores.".to_string(),
        _ => "Select the single best option from the candidates.".to_string(),
    };
    format!(
        "You are an expert evaluator tasked with selecting the best option(s) from a set of candidates.

{instruction}

Respond in JSON format:
{{
    \"selected_index\": 0,  // 0-based index of the best option
    \"explanation\": \"why this was selected\",
    \"rankings\": [
        {{\"index\": 0, \"score\": 0.95, \"strengths\": [\"...\"], \"weaknesses\": [\"...\"]}},
        ...
    ],
    \"confidence\": 0.85  // 0-1 confidence in the selection
}}"
    )
}

/// FlowMason's selection request: the numbered options, the criteria, the context.
pub fn user_prompt(candidates: &[String], criteria: &[String], context: Option<&str>) -> String {
    let mut options = String::new();
    for (i, candidate) in candidates.iter().enumerate() {
        options.push_str(&format!("\n[Option {}]:\n{candidate}\n", i + 1));
    }
    let mut criteria_text = String::new();
    if !criteria.is_empty() {
        criteria_text.push_str("\nEvaluate based on these criteria:\n");
        for c in criteria {
            criteria_text.push_str(&format!("- {c}\n"));
        }
    }
    let context_text = context
        .filter(|c| !c.is_empty())
        .map(|c| format!("\nContext: {c}"))
        .unwrap_or_default();
    format!(
        "Select the best option from these {} candidates:\n{options}\n{criteria_text}{context_text}\n\nEvaluate each option and select the best one.",
        candidates.len()
    )
}

/// The output from the model's answer.
pub fn shape(answer: &str, candidates: &[String]) -> Map<String, Value> {
    let first = candidates.first().cloned().unwrap_or_default();
    let output = match llm::parse_json_object(answer) {
        Some(result) => {
            let index = result
                .get("selected_index")
                .and_then(Value::as_i64)
                .filter(|i| *i >= 0 && (*i as usize) < candidates.len())
                .unwrap_or(0) as usize;
            let confidence = result
                .get("confidence")
                .and_then(|v| {
                    v.as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                })
                .unwrap_or(0.5);
            json!({
                "selected": candidates.get(index).cloned().unwrap_or(first),
                "selected_index": index,
                "explanation": result.get("explanation").and_then(Value::as_str).unwrap_or(""),
                "rankings": result.get("rankings").filter(|v| v.is_array()).cloned().unwrap_or(json!([])),
                "confidence": confidence,
            })
        }
        None => json!({
            "selected": first,
            "selected_index": 0,
            "explanation": answer,
            "rankings": [],
            "confidence": 0.5,
        }),
    };
    output.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_options_and_a_criteria_string_are_read() {
        let input =
            json!({"options": [{"label": "A", "content": "one"}, "two"], "criteria": "clarity"});
        let input = input.as_object().cloned().unwrap_or_default();
        assert_eq!(candidates(&input).unwrap(), ["A:\none", "two"]);
        assert_eq!(criteria(&input).unwrap(), ["clarity"]);
    }

    #[test]
    fn an_index_outside_the_candidates_selects_the_first() {
        let c = vec!["a".to_string(), "b".to_string()];
        let out = shape(r#"{"selected_index": 7, "confidence": 0.9}"#, &c);
        assert_eq!(out["selected"], json!("a"));
        assert_eq!(out["selected_index"], json!(0));
        let out = shape(r#"{"selected_index": 1, "explanation": "b is best"}"#, &c);
        assert_eq!(
            (&out["selected"], &out["confidence"]),
            (&json!("b"), &json!(0.5))
        );
    }

    #[test]
    fn validation_requires_two_candidates() {
        assert_eq!(
            Selector
                .validate(&json!({"criteria": ["x"]}))
                .unwrap_err()
                .message,
            "selector: `candidates` is required (a list of at least 2 options to choose from)"
        );
        assert_eq!(
            Selector
                .validate(&json!({"candidates": ["x"]}))
                .unwrap_err()
                .message,
            "selector: `candidates` must hold at least 2 candidates, got 1"
        );
        assert!(
            Selector
                .validate(&json!({"candidates": ["{{input.a}}", "{{input.b}}"]}))
                .is_ok()
        );
        assert!(
            Selector
                .validate(&json!({"candidates": "{{input.list}}"}))
                .is_ok()
        );
    }
}

//! Built-in components: FlowMason's core operators, its LLM nodes (`generator`, `critic`, `summarizer`,
//! `chat`, `improver`, `selector`, `rewriter`, `translator`, `analyzer`, `combiner`, `synthesizer`,
//! `embedder`, calling the providers of `crate::llm`), its connectors (`local_file`, `postgres`, `redis`,
//! `s3`; `mongodb` registered as not available), plus `delay` and `noop`.
//!
//! Each component receives the stage's rendered input (its `config` with templates resolved and
//! `inputMapping` applied, see `flowmason_actors::template::build_input`), which must be a JSON object.
//! Field names, defaults, output shapes and error behaviour follow FlowMason's operators of the same name;
//! `docs/components.md` documents every field.

use std::sync::Arc;

use serde_json::{Map, Value};

use flowmason_actors::{ComponentError, Registry};

pub mod analyzer;
pub mod chat;
pub mod combiner;
pub mod conditional;
pub mod critic;
pub mod delay;
pub mod embedder;
pub mod eval_worker;
pub mod expr;
pub mod filter;
pub mod foreach;
pub mod generator;
pub mod http_request;
pub mod improver;
pub mod json_transform;
pub mod logger;
pub mod nesting;
pub mod noop;
pub mod rewriter;
pub mod router;
pub mod schema_validate;
pub mod selector;
pub mod subpipeline;
pub mod summarizer;
pub mod switch_router;
pub mod synthesizer;
pub mod translator;
pub mod trycatch;
pub mod variable_set;

// Connectors (issue 17): local_file, postgres, redis, s3, mongodb.
pub mod connector;
pub mod local_file;
pub mod mongodb;
pub mod postgres;
pub mod redis;
pub mod s3;

// Control flow and data components of issue 17 (flow).
pub mod aggregate;
pub mod join;
pub mod loop_batches;
pub mod loop_signals;
pub mod output_router;
pub mod pandas_ops;
pub mod parallel;
pub mod retry;
pub mod return_early;
pub mod sql;
pub mod task_stages;
pub mod timeout;

pub use analyzer::Analyzer;
pub use chat::Chat;
pub use combiner::Combiner;
pub use conditional::Conditional;
pub use critic::Critic;
pub use delay::Delay;
pub use embedder::Embedder;
pub use filter::Filter;
pub use foreach::ForEach;
pub use generator::Generator;
pub use http_request::HttpRequest;
pub use improver::Improver;
pub use json_transform::JsonTransform;
pub use logger::Logger;
pub use noop::Noop;
pub use rewriter::Rewriter;
pub use router::Router;
pub use schema_validate::SchemaValidate;
pub use selector::Selector;
pub use subpipeline::{DirectoryResolver, NoPipelines, PipelineResolver, SubPipeline};
pub use summarizer::Summarizer;
pub use switch_router::SwitchRouter;
pub use synthesizer::Synthesizer;
pub use translator::Translator;
pub use trycatch::TryCatch;
pub use variable_set::VariableSet;

pub use self::redis::Redis;
pub use aggregate::Aggregate;
pub use join::Join;
pub use local_file::LocalFile;
pub use loop_batches::Loop;
pub use loop_signals::{BreakLoop, ContinueLoop};
pub use mongodb::MongoDb;
pub use output_router::{ErrorRouter, OutputRouter};
pub use pandas_ops::Pandas;
pub use parallel::Parallel;
pub use postgres::Postgres;
pub use retry::Retry;
pub use return_early::Return;
pub use s3::S3;
pub use sql::SqlQuery;
pub use timeout::Timeout;

/// Every built-in component, under its FlowMason name (`componentType`). `subpipeline` finds no
/// pipelines here; use [`registry_with_resolver`] to give it some.
pub fn builtin_registry() -> Registry {
    registry_with_resolver(Arc::new(NoPipelines))
}

/// Every built-in component, with `subpipeline` resolving pipeline references through `resolver`.
pub fn registry_with_resolver(resolver: Arc<dyn PipelineResolver>) -> Registry {
    let mut registry = Registry::new();
    registry
        .register(json_transform::NAME, JsonTransform)
        .register(logger::NAME, Logger)
        .register(delay::NAME, Delay)
        .register(noop::NAME, Noop)
        .register(generator::NAME, Generator)
        .register(critic::NAME, Critic)
        .register(summarizer::NAME, Summarizer)
        .register(chat::NAME, Chat)
        .register(filter::NAME, Filter)
        .register(variable_set::NAME, VariableSet)
        .register(schema_validate::NAME, SchemaValidate)
        .register(conditional::NAME, Conditional)
        .register(router::NAME, Router)
        .register(switch_router::NAME, SwitchRouter)
        .register(foreach::NAME, ForEach)
        .register(trycatch::NAME, TryCatch)
        .register(subpipeline::NAME, SubPipeline::new(resolver))
        .register(http_request::NAME, HttpRequest::new());
    // Control flow and data components of issue 17 (flow).
    registry
        .register(loop_batches::NAME, Loop)
        .register(loop_signals::BREAK, BreakLoop)
        .register(loop_signals::CONTINUE, ContinueLoop)
        .register(return_early::NAME, Return)
        .register(retry::NAME, Retry)
        .register(timeout::NAME, Timeout)
        .register(parallel::NAME, Parallel)
        .register(output_router::OUTPUT, OutputRouter::new())
        .register(output_router::ERROR, ErrorRouter::new())
        .register(aggregate::NAME, Aggregate)
        .register(join::NAME, Join)
        .register(pandas_ops::NAME, Pandas)
        .register(sql::NAME, SqlQuery);
    // Connectors.
    registry
        .register(local_file::NAME, LocalFile::from_process())
        .register(postgres::NAME, Postgres)
        .register(redis::NAME, Redis)
        .register(s3::NAME, S3::new())
        .register(mongodb::NAME, MongoDb);
    // LLM nodes of issue 17.
    registry
        .register(improver::NAME, Improver)
        .register(selector::NAME, Selector)
        .register(rewriter::NAME, Rewriter)
        .register(translator::NAME, Translator)
        .register(analyzer::NAME, Analyzer)
        .register(combiner::NAME, Combiner)
        .register(synthesizer::NAME, Synthesizer)
        .register(embedder::NAME, Embedder);
    registry
}

/// The fields of the output of the LLM nodes, whose shape is fixed (FlowMason's `Output` models plus
/// `usage`): a template reading another field of their output can never resolve, which validation
/// reports before any run. `None` for components whose output depends on their config.
pub fn output_fields(component: &str) -> Option<&'static [&'static str]> {
    Some(match component {
        "generator" => &["content", "tokens_used", "finish_reason", "model", "usage"],
        "critic" => &[
            "overall_rating",
            "score",
            "feedback",
            "strengths",
            "improvements",
            "criterion_scores",
            "passes_threshold",
            "usage",
        ],
        "summarizer" => &["summary", "style", "input", "word_count", "usage"],
        "chat" => &["response", "turn_count", "history", "usage"],
        "improver" => &[
            "improved_content",
            "changes_made",
            "preserved_aspects",
            "improvement_summary",
            "usage",
        ],
        "selector" => &[
            "selected",
            "selected_index",
            "explanation",
            "rankings",
            "confidence",
            "usage",
        ],
        "rewriter" => &["rewritten", "style", "tone", "input", "usage"],
        "translator" => &[
            "translated",
            "source_language",
            "target_language",
            "input",
            "usage",
        ],
        "analyzer" => &["analysis", "type", "input", "raw", "usage"],
        "combiner" | "synthesizer" => &[
            "synthesized",
            "sources_used",
            "strategy_applied",
            "key_themes",
            "usage",
        ],
        "embedder" => &["embedding", "text", "dimensions", "model", "usage"],
        _ => return None,
    })
}

/// The stage input as an object; `null` (a stage with no config) counts as an empty one.
pub(crate) fn input_object(
    component: &str,
    input: Value,
) -> Result<Map<String, Value>, ComponentError> {
    match input {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ComponentError::config(format!(
            "{component}: input must be an object, got {}",
            type_name(&other)
        ))),
    }
}

/// The static config as an object for `validate`; `null` counts as an empty one.
pub(crate) fn config_object<'a>(
    component: &str,
    config: &'a Value,
) -> Result<Option<&'a Map<String, Value>>, ComponentError> {
    match config {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        other => Err(ComponentError::config(format!(
            "{component}: config must be an object, got {}",
            type_name(other)
        ))),
    }
}

/// The fields of a stage's `config` whose values hold no templates: what `validate` can check before
/// any run (templated fields are checked when the run renders them). `None` for no config.
pub(crate) fn static_config(
    component: &str,
    config: &Value,
) -> Result<Option<Map<String, Value>>, ComponentError> {
    Ok(config_object(component, config)?.map(|map| {
        map.iter()
            .filter(|(_, v)| !is_templated(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }))
}

/// Whether a static config value is (or holds) a template, so that its type is only known after rendering.
pub(crate) fn is_templated(value: &Value) -> bool {
    flowmason_actors::template::has_templates(value)
}

/// The first characters of a long expression or filter, for error messages.
pub(crate) fn abbreviate(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// A JSON type name for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional boolean field: absent or `null` gives `default`.
pub(crate) fn opt_bool(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    default: bool,
) -> Result<bool, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a boolean, got {}",
            type_name(other)
        ))),
    }
}

/// An optional list of strings (stage ids): absent or `null` gives an empty list.
pub(crate) fn opt_str_list(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(ComponentError::config(format!(
                    "{component}: `{field}` must be a list of stage ids, got an element that is {}",
                    type_name(other)
                ))),
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a list of stage ids, got {}",
            type_name(other)
        ))),
    }
}

/// An optional list of strings (criteria, aspects, ...): absent or `null` gives an empty list.
pub(crate) fn opt_text_list(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ComponentError> {
    let not_strings = |what: String| {
        ComponentError::config(format!(
            "{component}: `{field}` must be an array of strings, got {what}"
        ))
    };
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(not_strings(format!(
                    "an element that is {}",
                    type_name(other)
                ))),
            })
            .collect(),
        Some(other) => Err(not_strings(type_name(other).to_string())),
    }
}

/// An optional string field: absent or `null` gives `None`.
pub(crate) fn opt_str<'a>(
    component: &str,
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// An optional integer field within `range` (inclusive): `None` when absent or null; anything else is a
/// configuration error naming the field, the range and the value.
pub(crate) fn opt_int_in(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                ComponentError::config(format!(
                    "{component}: `{field}` must be an integer from {} to {}, got {v}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A `StageContext` whose log lines are collected, for component tests.

    use std::sync::{Arc, Mutex};

    use flowmason_actors::{LogLine, StageContext};
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    /// A context for stage `s1` of pipeline `p` and the lines it logs.
    pub(crate) fn context() -> (StageContext, Arc<Mutex<Vec<LogLine>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let ctx = StageContext::new(
            Uuid::nil(),
            "p".into(),
            "ns".into(),
            "s1".into(),
            1,
            CancellationToken::new(),
            Arc::new(move |line| sink.lock().expect("log lock").push(line)),
        );
        (ctx, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_every_builtin() {
        let registry = builtin_registry();
        let names: Vec<&str> = registry.names().collect();
        assert_eq!(
            names,
            [
                "aggregate",
                "analyzer",
                "break_loop",
                "chat",
                "combiner",
                "conditional",
                "continue_loop",
                "critic",
                "delay",
                "embedder",
                "error_router",
                "filter",
                "foreach",
                "generator",
                "http_request",
                "improver",
                "join",
                "json_transform",
                "local_file",
                "logger",
                "loop",
                "mongodb",
                "noop",
                "output_router",
                "pandas",
                "parallel",
                "postgres",
                "redis",
                "retry",
                "return",
                "rewriter",
                "router",
                "s3",
                "schema_validate",
                "selector",
                "sql",
                "subpipeline",
                "summarizer",
                "switch_router",
                "synthesizer",
                "timeout",
                "translator",
                "trycatch",
                "variable_set",
            ]
        );
    }
}

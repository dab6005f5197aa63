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

use flowmason_actors::Registry;

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
pub use subpipeline::{NoPipelines, PipelineResolver, SubPipeline};
pub use summarizer::Summarizer;
pub use switch_router::SwitchRouter;
pub use synthesizer::Synthesizer;
pub use translator::Translator;

/// The field readers every component checks its config and input with (see [`crate::component_config`]).
pub(crate) use crate::component_config::{
    config_object, input_object, is_templated, opt_bool, opt_int_in, opt_str, opt_str_list,
    opt_text_list, static_config, type_name,
};
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

/// The first characters of a long expression or filter, for error messages.
pub(crate) fn abbreviate(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
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

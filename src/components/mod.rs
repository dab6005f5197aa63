//! Built-in components: FlowMason's core operators, its LLM nodes (`generator`, `critic`, `summarizer`,
//! `chat`, calling the providers of `crate::llm`), plus `delay` and `noop`.
//!
//! Each component receives the stage's rendered input (its `config` with templates resolved and
//! `inputMapping` applied, see `flowmason_actors::template::build_input`), which must be a JSON object.
//! Field names, defaults, output shapes and error behaviour follow FlowMason's operators of the same name;
//! `docs/components.md` documents every field.

use std::sync::Arc;

use flowmason_actors::Registry;

pub mod chat;
pub mod conditional;
pub mod critic;
pub mod delay;
pub mod eval_worker;
pub mod expr;
pub mod filter;
pub mod foreach;
pub mod generator;
pub mod http_request;
pub mod json_transform;
pub mod logger;
pub mod nesting;
pub mod noop;
pub mod router;
pub mod schema_validate;
pub mod subpipeline;
pub mod summarizer;
pub mod switch_router;
pub mod trycatch;
pub mod variable_set;

pub use chat::Chat;
pub use conditional::Conditional;
pub use critic::Critic;
pub use delay::Delay;
pub use filter::Filter;
pub use foreach::ForEach;
pub use generator::Generator;
pub use http_request::HttpRequest;
pub use json_transform::JsonTransform;
pub use logger::Logger;
pub use noop::Noop;
pub use router::Router;
pub use schema_validate::SchemaValidate;
pub use subpipeline::{DirectoryResolver, NoPipelines, PipelineResolver, SubPipeline};
pub use summarizer::Summarizer;
pub use switch_router::SwitchRouter;

/// The field readers every component checks its config and input with (see [`crate::component_config`]).
pub(crate) use crate::component_config::{
    config_object, input_object, is_templated, opt_bool, opt_int_in, opt_str, opt_str_list,
    static_config, type_name,
};
pub use trycatch::TryCatch;
pub use variable_set::VariableSet;

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
    registry
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
                "chat",
                "conditional",
                "critic",
                "delay",
                "filter",
                "foreach",
                "generator",
                "http_request",
                "json_transform",
                "logger",
                "noop",
                "router",
                "schema_validate",
                "subpipeline",
                "summarizer",
                "switch_router",
                "trycatch",
                "variable_set"
            ]
        );
    }
}

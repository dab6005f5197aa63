//! `noop`: returns its input unchanged as its output.
//!
//! Not a FlowMason operator: it exists so that benchmarks measure the engine's own per-stage overhead
//! (template rendering, events, scheduling) with no component work, and so that tests can build pipelines
//! whose outputs are exactly their rendered inputs.

use futures::future::BoxFuture;
use serde_json::Value;

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

/// The component type name.
pub const NAME: &str = "noop";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Component for Noop {
    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move { Ok(ComponentOutput::from(input)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use serde_json::json;

    #[tokio::test]
    async fn returns_input_unchanged() {
        for input in [json!({"a": [1, {"b": null}]}), json!("text"), Value::Null] {
            let (ctx, logs) = context();
            let out = Noop.execute(input.clone(), ctx).await.unwrap();
            assert_eq!(out, ComponentOutput::from(input));
            assert!(logs.lock().unwrap().is_empty());
        }
        assert!(Noop.validate(&json!({"anything": 1})).is_ok());
    }
}

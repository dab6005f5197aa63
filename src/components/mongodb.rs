//! `mongodb`: FlowMason's MongoDB connector is registered so that a pipeline using it fails validation
//! with this specific reason rather than "unknown component": this engine has no MongoDB client.
//!
//! Why: a connector ships only when tests run it against a real server, and no MongoDB server installs
//! from the registries the project builds and tests with (Debian has none since MongoDB's licence
//! change; PyPI's and npm's wrappers download the server at run time). A client that could never be
//! tested here would be a guess at its behaviour.

use futures::future::BoxFuture;
use serde_json::Value;

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

/// The component type name.
pub const NAME: &str = "mongodb";

/// See the module docs.
#[derive(Clone, Default)]
pub struct MongoDb;

fn not_available() -> ComponentError {
    ComponentError::config(format!(
        "{NAME}: not available in this engine: it has no MongoDB client (no MongoDB server can be \
         installed to test one against); reach MongoDB through a service with http_request, or keep \
         this stage on the original FlowMason engine"
    ))
}

impl Component for MongoDb {
    fn validate(&self, _config: &Value) -> Result<(), ComponentError> {
        Err(not_available())
    }

    fn execute(
        &self,
        _input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async { Err(not_available()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_says_it_is_not_available() {
        let err = MongoDb
            .validate(&serde_json::json!({"operation": "find"}))
            .unwrap_err();
        assert!(
            err.message.starts_with("mongodb: not available"),
            "{}",
            err.message
        );
    }
}

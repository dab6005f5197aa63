//! What a stage runs: the `Component` trait and the registry the engine looks components up in.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use flowmason_store::{ErrorClass, StageError};

use crate::plan::Plan;
use crate::redact::Redactor;

/// One stage attempt's view of the run it belongs to.
#[derive(Clone)]
pub struct StageContext {
    pub run_id: Uuid,
    pub pipeline: String,
    pub namespace: String,
    pub stage_id: String,
    pub attempt: u32,
    /// Cancelled when the attempt is cancelled (run cancelled or timed out, attempt timed out). Dropping
    /// the component's future also cancels it; the token lets work outside that future stop too.
    pub cancel: CancellationToken,
    log: Arc<dyn Fn(LogLine) + Send + Sync>,
    /// The run as a stage that runs other stages sees it; set only for components whose
    /// [`Component::runs_stages`] is true.
    run: Option<Arc<RunView>>,
    /// For a stage run inside another (see [`StageContext::nested`]): the outer stages and iterations,
    /// `outer[label]/`, so that idempotency keys differ per iteration. Empty for a stage of the run.
    scope: String,
    /// The run's secret values, for what a component writes outside the run's events (its `tracing`
    /// lines): the engine masks the events, [`StageContext::redact`] everything else.
    redactor: Redactor,
}

/// What a component that runs other stages (`foreach`, `trycatch`, `subpipeline`) needs of its run: the plan
/// the stages come from, the components to run them with, and the data their templates read. A snapshot
/// taken when the attempt starts; see `crate::nested`.
#[derive(Clone)]
pub struct RunView {
    pub plan: Arc<Plan>,
    pub registry: Arc<Registry>,
    /// The run's inputs (`{{input...}}`).
    pub inputs: Arc<Value>,
    /// The run's environment (`{{env.NAME}}`).
    pub env: Arc<BTreeMap<String, String>>,
    /// The outputs of the run's stages that had succeeded when the attempt started (`{{upstream...}}`).
    pub outputs: Arc<BTreeMap<String, Value>>,
    /// The pipelines being run as subpipelines around this stage, outermost first (the run's own pipeline
    /// first), so that a cycle of subpipelines is caught.
    pub call_stack: Vec<String>,
}

impl fmt::Debug for RunView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunView")
            .field("stages", &self.plan.len())
            .field("outputs", &self.outputs.keys().collect::<Vec<_>>())
            .field("call_stack", &self.call_stack)
            .finish_non_exhaustive()
    }
}

/// A line a component logs; the engine records it as a `StageLog` event.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    pub data: Value,
}

impl StageContext {
    pub fn new(
        run_id: Uuid,
        pipeline: String,
        namespace: String,
        stage_id: String,
        attempt: u32,
        cancel: CancellationToken,
        log: Arc<dyn Fn(LogLine) + Send + Sync>,
    ) -> StageContext {
        StageContext {
            run_id,
            pipeline,
            namespace,
            stage_id,
            attempt,
            cancel,
            log,
            run: None,
            scope: String::new(),
            redactor: Redactor::default(),
        }
    }

    /// The same context masking `redactor`'s secrets in [`StageContext::redact`].
    pub fn with_redactor(mut self, redactor: Redactor) -> StageContext {
        self.redactor = redactor;
        self
    }

    /// `text` with the run's secret values masked as they are in its events: for anything a
    /// component sends elsewhere (its `tracing` lines).
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.redactor.redact_str(text)
    }

    /// The same context with a view of the run, for components that run other stages.
    pub fn with_run(mut self, view: Arc<RunView>) -> StageContext {
        self.run = Some(view);
        self
    }

    /// The view of the run, when the engine gave one (see [`Component::runs_stages`]).
    pub fn run_view(&self) -> Option<&Arc<RunView>> {
        self.run.as_ref()
    }

    /// A context for a stage run inside this one (a loop body, a try block): same run and attempt, its
    /// own stage id, a cancellation token that is cancelled with this one's, log lines recorded under
    /// this (the outer) stage with the inner stage named in `data.nestedStage`.
    /// `label` tells runs of the same inner stage apart (the iteration index, `try`, `catch`, ...) in its
    /// idempotency key: `runId/outer[label]/inner/attempt`.
    pub fn nested(&self, stage_id: &str, label: &str, view: Option<Arc<RunView>>) -> StageContext {
        let outer = self.log.clone();
        let inner = stage_id.to_string();
        let log = Arc::new(move |mut line: LogLine| {
            line.data = match line.data {
                Value::Object(mut map) => {
                    map.insert("nestedStage".into(), Value::String(inner.clone()));
                    Value::Object(map)
                }
                Value::Null => serde_json::json!({ "nestedStage": inner }),
                other => serde_json::json!({ "nestedStage": inner, "data": other }),
            };
            outer(line)
        });
        StageContext {
            run_id: self.run_id,
            pipeline: self.pipeline.clone(),
            namespace: self.namespace.clone(),
            stage_id: stage_id.to_string(),
            attempt: self.attempt,
            cancel: self.cancel.child_token(),
            log,
            run: view,
            scope: format!("{}{}[{label}]/", self.scope, self.stage_id),
            redactor: self.redactor.clone(),
        }
    }

    /// `runId/stageId/attempt`: the same for a retried request within one attempt, different across
    /// attempts, so that a remote side can deduplicate what the engine's at-least-once delivery repeats.
    /// A stage run inside another has the outer stage and iteration in it: `runId/loop[2]/fetch/1`.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}{}/{}",
            self.run_id, self.scope, self.stage_id, self.attempt
        )
    }

    /// Records a log line for this attempt (a `StageLog` event).
    pub fn log(&self, level: impl Into<String>, message: impl Into<String>, data: Value) {
        (self.log)(LogLine {
            level: level.into(),
            message: message.into(),
            data,
        });
    }
}

impl fmt::Debug for StageContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageContext")
            .field("key", &self.idempotency_key())
            .finish_non_exhaustive()
    }
}

/// What a component produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComponentOutput {
    pub output: Value,
    /// Downstream stages that must not run (the branches a router or conditional did not take).
    pub skip: Vec<String>,
}

impl From<Value> for ComponentOutput {
    fn from(output: Value) -> Self {
        ComponentOutput {
            output,
            skip: Vec::new(),
        }
    }
}

/// Why a component failed; the class decides whether the attempt is retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ComponentError {
    pub class: ErrorClass,
    pub message: String,
    pub details: Value,
    /// The earliest the remote side wants to be asked again (an HTTP `retry-after`): when the attempt is
    /// retried, the engine waits at least this long, even if the retry policy's backoff is shorter.
    pub retry_after: Option<Duration>,
}

impl ComponentError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ComponentError {
            class,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }
    /// The configuration is wrong: not retried.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Config, message)
    }
    /// A transient failure: retried.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    /// Refused by the remote side: not retried.
    pub fn client(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Client, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Internal, message)
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// Asks for the next attempt to wait at least `delay` (see `retry_after`).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    pub fn into_stage_error(self) -> StageError {
        StageError {
            retryable: self.class.retryable_by_default(),
            message: self.message,
            class: self.class,
            details: self.details,
        }
    }
}

/// A kind of stage: receives the stage's rendered input (its `config` with templates resolved and
/// `inputMapping` applied) and produces an output.
pub trait Component: Send + Sync + 'static {
    /// Checks a stage's static config before any run (templates not yet resolved). The default accepts
    /// everything; components override it to reject bad fields early.
    fn validate(&self, _config: &Value) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Whether the component runs other stages of its plan (`foreach`, `trycatch`, `subpipeline`) and so
    /// needs [`StageContext::run_view`]. The engine snapshots finished stage outputs only for these, so
    /// ordinary stages cost nothing extra.
    fn runs_stages(&self) -> bool {
        false
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>>;
}

/// A component type as registered: FlowMason's project loader and `init` write the hyphenated
/// spelling (`http-request`, `json-transform`) of the registered names (`http_request`), so a `-` reads
/// as `_`.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Components by type name (`componentType`); lookups accept the hyphenated spelling
/// ([`canonical_name`]).
#[derive(Clone, Default)]
pub struct Registry {
    components: BTreeMap<String, Arc<dyn Component>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, name: impl Into<String>, component: impl Component) -> &mut Self {
        self.components.insert(name.into(), Arc::new(component));
        self
    }

    /// The component registered as `name`, or as its [`canonical_name`] (`http-request` finds
    /// `http_request`).
    pub fn get(&self, name: &str) -> Option<Arc<dyn Component>> {
        self.components
            .get(name)
            .or_else(|| self.components.get(canonical_name(name).as_str()))
            .cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.components.contains_key(name)
            || self.components.contains_key(canonical_name(name).as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.components.keys().map(String::as_str)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.components.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Component for Nothing {
        fn execute(
            &self,
            _input: Value,
            _ctx: StageContext,
        ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
            Box::pin(async { Ok(Value::Null.into()) })
        }
    }

    #[test]
    fn the_hyphenated_spelling_finds_the_registered_component() {
        let mut registry = Registry::new();
        registry.register("http_request", Nothing);
        assert!(registry.contains("http-request"));
        assert!(registry.get("http-request").is_some());
        assert!(!registry.contains("http request"));
        assert_eq!(registry.names().collect::<Vec<_>>(), ["http_request"]);
    }
}

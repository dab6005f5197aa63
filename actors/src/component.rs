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
        }
    }

    /// `runId/stageId/attempt`: the same for a retried request within one attempt, different across
    /// attempts, so that a remote side can deduplicate what the engine's at-least-once delivery repeats.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.run_id, self.stage_id, self.attempt)
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

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>>;
}

/// Components by type name (`componentType`).
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

    pub fn get(&self, name: &str) -> Option<Arc<dyn Component>> {
        self.components.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.components.contains_key(name)
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

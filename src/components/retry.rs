//! `retry`: runs a task (stages of the pipeline, see `task_stages`) until it succeeds, with FlowMason's
//! exponential backoff, as FlowMason's `retry` operator does with a callable.
//!
//! Input: `task` (required: a stage id or a list of them), `max_retries` (0 to 10, default 3),
//! `initial_delay` (seconds, default 1), `backoff_multiplier` (at least 1, default 2), `max_delay`
//! (seconds, at least 0.1, default 30), `retry_on` (error classes to retry: ours, `transient`, `timeout`,
//! ..., or FlowMason's Python names `TimeoutError`, `ConnectionError`, `ValueError`, ...; absent retries
//! every error). The delay before retry `n` is `min(initial_delay * backoff_multiplier^(n-1),
//! max_delay)`. Each attempt is a pass of its own (`attempt<n>` in the task stages' idempotency keys).
//! The task stages' own retry policies (their `retries`, else the pipeline's) apply inside each attempt
//! first.
//!
//! Output, as FlowMason's: `{success, result, attempts, errors, exhausted}`: `result` is the task's
//! last stage's output; `errors` has one `Attempt n/N: <class>: <message>` per failed attempt. As in
//! FlowMason a task that keeps failing is not an error of this stage: `success: false, exhausted:
//! true` (or `exhausted: false` when an error outside `retry_on` stopped it). Errors: `config` for bad
//! fields; `cancelled` when the attempt is cancelled (during a task or a delay).

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::task_stages::{self, opt_number};
use super::trycatch::{caught_by, class_name};
use super::{input_object, opt_int_in, static_config, type_name};

/// The component type name.
pub const NAME: &str = "retry";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retry;

struct Settings {
    task: Option<Vec<String>>,
    max_retries: u64,
    initial_delay: f64,
    multiplier: f64,
    max_delay: f64,
    retry_on: Option<Vec<String>>,
}

fn settings(map: &Map<String, Value>) -> Result<Settings, ComponentError> {
    let retry_on = match map.get("retry_on") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        ComponentError::config(format!(
                            "{NAME}: `retry_on` must be a list of error type names, got an element \
                             that is {}",
                            type_name(i)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `retry_on` must be a list of error type names, got {}",
                type_name(other)
            )));
        }
    };
    Ok(Settings {
        task: task_stages::task(NAME, map, "task")?,
        max_retries: opt_int_in(NAME, map, "max_retries", 0..=10)?.unwrap_or(3),
        initial_delay: opt_number(NAME, map, "initial_delay", |n| n >= 0.0, "of at least 0")?
            .unwrap_or(1.0),
        multiplier: opt_number(
            NAME,
            map,
            "backoff_multiplier",
            |n| n >= 1.0,
            "of at least 1",
        )?
        .unwrap_or(2.0),
        max_delay: opt_number(NAME, map, "max_delay", |n| n >= 0.1, "of at least 0.1")?
            .unwrap_or(30.0),
        retry_on,
    })
}

/// FlowMason's delay before the retry that follows failed attempt `attempt` (1-based).
fn delay(s: &Settings, attempt: u64) -> Duration {
    let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = (s.initial_delay * s.multiplier.powi(exp)).min(s.max_delay);
    Duration::from_secs_f64(secs.max(0.0))
}

fn cancelled() -> ComponentError {
    ComponentError::new(ErrorClass::Cancelled, format!("{NAME}: cancelled"))
}

impl Component for Retry {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        settings(&statics).map(|_| ())
    }

    fn runs_stages(&self) -> bool {
        true
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let s = settings(&map)?;
            let Some(task) = s.task.clone() else {
                return Err(ComponentError::config(format!(
                    "{NAME}: `task` is required"
                )));
            };
            let view = task_stages::view(NAME, &ctx)?;
            let total = s.max_retries + 1;
            let mut errors = Vec::new();
            let mut attempt = 0;
            let (success, result, exhausted) = loop {
                attempt += 1;
                let label = format!("attempt{attempt}");
                let failure = match task_stages::run(&ctx, &view, &task, &label).await {
                    Ok(result) => break (true, result, false),
                    Err(e) if e.error.class == ErrorClass::Cancelled => return Err(cancelled()),
                    Err(e) => e,
                };
                let class = failure.error.class;
                errors.push(Value::String(format!(
                    "Attempt {attempt}/{total}: {}: stage {:?}: {}",
                    class_name(class),
                    failure.stage,
                    failure.error.message
                )));
                if s.retry_on.as_ref().is_some_and(|on| !caught_by(on, class)) {
                    break (false, Value::Null, false);
                }
                if attempt > s.max_retries {
                    break (false, Value::Null, true);
                }
                let wait = delay(&s, attempt);
                ctx.log(
                    "warn",
                    format!("task attempt {attempt} failed; retrying in {wait:?}"),
                    json!({"class": class, "stage": failure.stage}),
                );
                tokio::select! {
                    biased;
                    () = ctx.cancel.cancelled() => return Err(cancelled()),
                    () = tokio::time::sleep(wait) => {}
                }
            };
            Ok(ComponentOutput {
                output: json!({
                    "success": success,
                    "result": result,
                    "attempts": attempt,
                    "errors": errors,
                    "exhausted": exhausted,
                }),
                skip: task,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_is_flowmasons() {
        let Value::Object(map) = json!({"task": "t", "initial_delay": 0.5, "max_delay": 3}) else {
            unreachable!("an object literal")
        };
        let s = settings(&map).expect("valid");
        let delays: Vec<f64> = (1..=5).map(|n| delay(&s, n).as_secs_f64()).collect();
        assert_eq!(delays, [0.5, 1.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"max_retries": 11}), "`max_retries`"),
            (json!({"initial_delay": -1}), "`initial_delay`"),
            (json!({"backoff_multiplier": 0.5}), "`backoff_multiplier`"),
            (json!({"max_delay": 0}), "`max_delay`"),
            (json!({"retry_on": "ValueError"}), "`retry_on`"),
            (json!({"task": {"call": "f"}}), "`task`"),
        ] {
            let err = Retry.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{}", err.message);
            assert_eq!(err.class, ErrorClass::Config);
        }
        assert!(
            Retry
                .validate(&json!({"task": ["a", "b"], "max_retries": 0}))
                .is_ok()
        );
    }
}

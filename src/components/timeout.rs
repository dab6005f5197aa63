//! `timeout`: runs a task (stages of the pipeline, see `task_stages`) under a time limit, with an optional
//! fallback task, as FlowMason's `timeout` operator does with a callable.
//!
//! Input: `task` (required: a stage id or a list of them), `timeout` (seconds, more than 0, required),
//! `fallback_task` (stages run when the limit passes), `warn_at` (percent of the limit, 0 to 100,
//! default 80), `raise_on_timeout` (default true).
//!
//! When the limit passes the task's stages are cancelled (their futures dropped and their cancellation
//! tokens cancelled, so that work outside them, such as expression workers, stops too) and the fallback
//! runs. The stage then fails with class `timeout` (retried by the stage's policy like any timeout) when
//! `raise_on_timeout` is true and there is no fallback result (no `fallback_task`, or it failed: as in
//! FlowMason a failing fallback is ignored); otherwise it succeeds with `timed_out: true` and the
//! fallback's result. A task that fails before the limit fails the stage with its error and class.
//!
//! Output, as FlowMason's: `{success, timed_out, elapsed, timeout_value, result, warning,
//! percent_elapsed}` (`elapsed` in seconds; `warning` when `percent_elapsed >= warn_at`). Errors: `config`
//! for bad fields; `cancelled` when the attempt is cancelled.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::task_stages::{self, opt_number};
use super::{input_object, opt_bool, static_config};

/// The component type name.
pub const NAME: &str = "timeout";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeout;

struct Settings {
    task: Option<Vec<String>>,
    fallback: Option<Vec<String>>,
    timeout: Option<f64>,
    warn_at: f64,
    raise_on_timeout: bool,
}

fn settings(map: &Map<String, Value>) -> Result<Settings, ComponentError> {
    Ok(Settings {
        task: task_stages::task(NAME, map, "task")?,
        fallback: task_stages::task(NAME, map, "fallback_task")?,
        // At most a day: the attempt's own limit is the place for longer ones.
        timeout: opt_number(
            NAME,
            map,
            "timeout",
            |n| n > 0.0 && n <= 86_400.0,
            "of seconds, more than 0 and at most 86400",
        )?,
        warn_at: opt_number(
            NAME,
            map,
            "warn_at",
            |n| (0.0..=100.0).contains(&n),
            "from 0 to 100",
        )?
        .unwrap_or(80.0),
        raise_on_timeout: opt_bool(NAME, map, "raise_on_timeout", true)?,
    })
}

impl Component for Timeout {
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
            let (Some(task), Some(limit)) = (s.task.clone(), s.timeout) else {
                let field = if s.task.is_none() { "task" } else { "timeout" };
                return Err(ComponentError::config(format!(
                    "{NAME}: `{field}` is required"
                )));
            };
            let view = task_stages::view(NAME, &ctx)?;
            let mut skip = task.clone();
            skip.extend(s.fallback.iter().flatten().cloned());
            // The task's stages get a token of their own, cancelled when the limit passes.
            let mut task_ctx = ctx.clone();
            task_ctx.cancel = ctx.cancel.child_token();
            let started = Instant::now();
            let ran = tokio::time::timeout(
                Duration::from_secs_f64(limit),
                task_stages::run(&task_ctx, &view, &task, "task"),
            )
            .await;
            let elapsed = started.elapsed().as_secs_f64();
            if ctx.cancel.is_cancelled() {
                return Err(ComponentError::new(
                    ErrorClass::Cancelled,
                    format!("{NAME}: cancelled"),
                ));
            }
            let output = match ran {
                Ok(Ok(result)) => {
                    let percent = elapsed / limit * 100.0;
                    json!({
                        "success": true, "timed_out": false, "elapsed": elapsed,
                        "timeout_value": limit, "result": result,
                        "warning": percent >= s.warn_at, "percent_elapsed": percent,
                    })
                }
                Ok(Err(e)) => return Err(e.into_component_error(&format!("{NAME}: task"))),
                Err(_) => {
                    task_ctx.cancel.cancel();
                    let fallback = match &s.fallback {
                        Some(stages) => {
                            match task_stages::run(&ctx, &view, stages, "fallback").await {
                                Ok(result) => Some(result),
                                Err(e) if e.error.class == ErrorClass::Cancelled => {
                                    return Err(
                                        e.into_component_error(&format!("{NAME}: fallback_task"))
                                    );
                                }
                                Err(e) => {
                                    ctx.log(
                                        "warn",
                                        format!("fallback task failed: {}", e.error.message),
                                        json!({"stage": e.stage, "class": e.error.class}),
                                    );
                                    None
                                }
                            }
                        }
                        None => None,
                    };
                    if s.raise_on_timeout && fallback.is_none() {
                        return Err(ComponentError::new(
                            ErrorClass::Timeout,
                            format!(
                                "{NAME}: task execution exceeded timeout of {limit}s (elapsed: \
                                 {elapsed:.2}s)"
                            ),
                        )
                        .with_details(json!({"stages": task, "timeout": limit})));
                    }
                    json!({
                        "success": false, "timed_out": true, "elapsed": elapsed,
                        "timeout_value": limit, "result": fallback,
                        "warning": true, "percent_elapsed": 100.0,
                    })
                }
            };
            Ok(ComponentOutput { output, skip })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"timeout": 0}), "`timeout`"),
            (json!({"timeout": "soon"}), "`timeout`"),
            (json!({"warn_at": 120}), "`warn_at`"),
            (json!({"raise_on_timeout": "yes"}), "`raise_on_timeout`"),
            (json!({"fallback_task": 5}), "`fallback_task`"),
        ] {
            let err = Timeout.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{}", err.message);
        }
        assert!(
            Timeout
                .validate(&json!({"task": "slow", "timeout": 0.5}))
                .is_ok()
        );
    }
}

//! `parallel`: runs tasks (stages of the pipeline, see `task_stages`) at the same time, as FlowMason's
//! `parallel` operator does with coroutines.
//!
//! Input: `tasks` (required: a list, each a stage id or a list of stage ids run in dependency order),
//! `timeout` (seconds for all tasks, at least 0.1), `on_error` (`fail_fast`, the default: the first
//! failure fails the stage and cancels the other tasks; `continue`; `collect_errors`: also list them in
//! `errors`), `wait_for_all` (default true; false: the first task to finish is the result and the others
//! are cancelled), `return_exceptions` (default false: true keeps `fail_fast` from failing the stage).
//! Task `i` is pass `task<i>` in its stages' idempotency keys.
//!
//! Output, as FlowMason's: `{results, success_count, error_count, total_count, errors, execution_time}`:
//! `results` in task order, each a task's last stage's output or, for a failed task, `{error,
//! error_type, stage}` (FlowMason puts the Python exception there); `errors` is `null` unless
//! `collect_errors`, else `[{task_index, error, error_type}]`; `execution_time` in seconds. Errors: the
//! first failed task's error and class under `fail_fast`; class `timeout` when `timeout` passes (the
//! tasks are cancelled); `config` for bad fields; `cancelled` when the attempt is cancelled.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::{Map, Value, json};

use flowmason_actors::nested::NestedError;
use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::task_stages::{self, opt_number};
use super::trycatch::class_name;
use super::{input_object, opt_bool, opt_str, static_config};

/// The component type name.
pub const NAME: &str = "parallel";

const ON_ERROR: [&str; 3] = ["fail_fast", "continue", "collect_errors"];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parallel;

struct Settings {
    tasks: Option<Vec<Vec<String>>>,
    timeout: Option<f64>,
    on_error: String,
    wait_for_all: bool,
    return_exceptions: bool,
}

fn settings(map: &Map<String, Value>) -> Result<Settings, ComponentError> {
    let on_error = opt_str(NAME, map, "on_error")?.unwrap_or("fail_fast");
    if !ON_ERROR.contains(&on_error) {
        return Err(ComponentError::config(format!(
            "{NAME}: `on_error` must be one of {}, got {on_error:?}",
            ON_ERROR.join(", ")
        )));
    }
    Ok(Settings {
        tasks: task_stages::tasks(NAME, map, "tasks")?,
        timeout: opt_number(
            NAME,
            map,
            "timeout",
            |n| (0.1..=86_400.0).contains(&n),
            "of seconds from 0.1 to 86400",
        )?,
        on_error: on_error.to_string(),
        wait_for_all: opt_bool(NAME, map, "wait_for_all", true)?,
        return_exceptions: opt_bool(NAME, map, "return_exceptions", false)?,
    })
}

fn cancelled() -> ComponentError {
    ComponentError::new(ErrorClass::Cancelled, format!("{NAME}: cancelled"))
}

/// Runs the tasks; `Err` only for a failure that fails the stage (`fail_fast`, cancellation).
async fn run_all(
    ctx: &StageContext,
    s: &Settings,
    tasks: &[Vec<String>],
) -> Result<Vec<(usize, Result<Value, NestedError>)>, ComponentError> {
    let view = task_stages::view(NAME, ctx)?;
    let mut running: FuturesUnordered<_> = tasks
        .iter()
        .enumerate()
        .map(|(i, stages)| {
            let view = view.clone();
            async move {
                let label = format!("task{i}");
                (i, task_stages::run(ctx, &view, stages, &label).await)
            }
        })
        .collect();
    let mut done = Vec::with_capacity(tasks.len());
    while let Some((i, result)) = running.next().await {
        match &result {
            Err(e) if e.error.class == ErrorClass::Cancelled => return Err(cancelled()),
            Err(e) if s.on_error == "fail_fast" && !s.return_exceptions => {
                return Err(e.clone().into_component_error(&format!("{NAME}: task {i}")));
            }
            _ => {}
        }
        done.push((i, result));
        if !s.wait_for_all {
            break;
        }
    }
    // Dropping what still runs cancels it (FlowMason cancels the pending tasks too).
    drop(running);
    done.sort_by_key(|(i, _)| *i);
    Ok(done)
}

impl Component for Parallel {
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
            let Some(tasks) = s.tasks.clone() else {
                return Err(ComponentError::config(format!(
                    "{NAME}: `tasks` is required"
                )));
            };
            let started = Instant::now();
            // The tasks' stages get a token of their own, cancelled when `timeout` passes.
            let mut tasks_ctx = ctx.clone();
            tasks_ctx.cancel = ctx.cancel.child_token();
            let all = run_all(&tasks_ctx, &s, &tasks);
            let done = match s.timeout {
                Some(limit) => {
                    match tokio::time::timeout(Duration::from_secs_f64(limit), all).await {
                        Ok(done) => done?,
                        Err(_) => {
                            tasks_ctx.cancel.cancel();
                            return Err(ComponentError::new(
                                ErrorClass::Timeout,
                                format!(
                                    "{NAME}: parallel execution timed out after {limit} seconds \
                                 (completed in {:.2}s)",
                                    started.elapsed().as_secs_f64()
                                ),
                            ));
                        }
                    }
                }
                None => all.await?,
            };
            if ctx.cancel.is_cancelled() {
                return Err(cancelled());
            }
            let mut results = Vec::with_capacity(done.len());
            let mut errors = Vec::new();
            let mut success_count = 0;
            for (i, result) in &done {
                match result {
                    Ok(value) => {
                        success_count += 1;
                        results.push(value.clone());
                    }
                    Err(e) => {
                        let error_type = class_name(e.error.class);
                        results.push(json!({
                            "error": e.error.message, "error_type": error_type, "stage": e.stage,
                        }));
                        errors.push(json!({
                            "task_index": i, "error": e.error.message, "error_type": error_type,
                        }));
                    }
                }
            }
            let error_count = errors.len();
            let output = json!({
                "results": results,
                "success_count": success_count,
                "error_count": error_count,
                "total_count": done.len(),
                "errors": if s.on_error == "collect_errors" { Value::from(errors) } else { Value::Null },
                "execution_time": started.elapsed().as_secs_f64(),
            });
            Ok(ComponentOutput {
                output,
                skip: tasks.into_iter().flatten().collect(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"tasks": []}), "`tasks`"),
            (json!({"tasks": ["a", {"call": 1}]}), "`tasks[1]`"),
            (json!({"timeout": 0.01}), "`timeout`"),
            (json!({"on_error": "ignore"}), "`on_error`"),
            (json!({"wait_for_all": 1}), "`wait_for_all`"),
        ] {
            let err = Parallel.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{}", err.message);
        }
        assert!(
            Parallel
                .validate(&json!({"tasks": ["a", ["b", "c"]], "on_error": "collect_errors"}))
                .is_ok()
        );
    }
}

//! `trycatch`: runs try stages, and catch stages when they fail, then finally stages, inside this stage,
//! as FlowMason's executor does (MuleSoft's on-error-propagate / on-error-continue).
//!
//! Input: `try_stages` (required), `catch_stages`, `finally_stages` (stage ids), `error_scope`
//! (`propagate`, the default: run catch and finally, then fail with the original error; `continue`: run
//! them and succeed), `catch_error_types` (error classes to catch, e.g. `transient`, `timeout`, `client`,
//! or FlowMason's Python names `TimeoutError`, `ConnectionError`, `ValueError`; empty catches all),
//! `max_retries` / `retry_delay_ms` (re-run the try block before catching), `pass_data`.
//!
//! Catch and finally stages read the error as `{{upstream.<trycatch>.error}}`, `.error_type` (our error
//! class) and `.error_occurred`, and the try stages' outputs as usual. All three lists are returned as
//! this stage's `skip`, so the engine does not run them as ordinary stages (see `foreach`).
//!
//! Output: `{status: "success"|"caught", error_occurred, error_message, error_type, recovered,
//! try_result, catch_result, data}`. Errors: the try block's error when it is not caught or the scope is
//! `propagate`; a failing catch or finally stage; `config` for bad fields; cancellation is never caught.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::nested::{self, NestedError};
use flowmason_actors::{Component, ComponentError, ComponentOutput, RunView, StageContext};
use flowmason_store::ErrorClass;

use super::{input_object, opt_str, opt_str_list, static_config};

/// The component type name.
pub const NAME: &str = "trycatch";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TryCatch;

struct Settings {
    try_stages: Vec<String>,
    catch_stages: Vec<String>,
    finally_stages: Vec<String>,
    propagate: bool,
    catch_types: Vec<String>,
    max_retries: u64,
    retry_delay: Duration,
}

fn uint(map: &Map<String, Value>, field: &str, default: u64) -> Result<u64, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| {
            ComponentError::config(format!(
                "{NAME}: `{field}` must be a non-negative integer, got {v}"
            ))
        }),
    }
}

fn settings(map: &Map<String, Value>, need_try: bool) -> Result<Settings, ComponentError> {
    let try_stages = opt_str_list(NAME, map, "try_stages")?;
    if need_try && try_stages.is_empty() {
        return Err(ComponentError::config(format!(
            "{NAME}: `try_stages` is required"
        )));
    }
    let propagate = match opt_str(NAME, map, "error_scope")? {
        None | Some("propagate") => true,
        Some("continue") => false,
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `error_scope` must be \"propagate\" or \"continue\", got {other:?}"
            )));
        }
    };
    Ok(Settings {
        try_stages,
        catch_stages: opt_str_list(NAME, map, "catch_stages")?,
        finally_stages: opt_str_list(NAME, map, "finally_stages")?,
        propagate,
        catch_types: opt_str_list(NAME, map, "catch_error_types")?,
        max_retries: uint(map, "max_retries", 0)?,
        retry_delay: Duration::from_millis(uint(map, "retry_delay_ms", 1000)?),
    })
}

/// Our class name for an error, and whether `wanted` (our names or FlowMason's Python ones) covers it.
pub(crate) fn class_name(class: ErrorClass) -> String {
    serde_json::to_value(class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{class:?}").to_lowercase())
}

pub(crate) fn caught_by(wanted: &[String], class: ErrorClass) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let ours = class_name(class);
    wanted.iter().any(|w| {
        let w = w.as_str();
        w.eq_ignore_ascii_case(&ours)
            || match w {
                "Exception" => true,
                "TimeoutError" | "asyncio.TimeoutError" => class == ErrorClass::Timeout,
                "ConnectionError" => class == ErrorClass::Transient,
                "ValueError" | "ValidationError" => {
                    matches!(class, ErrorClass::Config | ErrorClass::Template)
                }
                "HTTPError" => matches!(class, ErrorClass::Client | ErrorClass::Transient),
                _ => false,
            }
    })
}

impl Component for TryCatch {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        settings(&statics, false).map(|_| ())
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
            let mut map = input_object(NAME, input)?;
            let s = settings(&map, true)?;
            let view = ctx.run_view().cloned().ok_or_else(|| {
                ComponentError::internal(format!(
                    "{NAME}: the engine gave this stage no view of its run"
                ))
            })?;
            let skip: Vec<String> = s
                .try_stages
                .iter()
                .chain(&s.catch_stages)
                .chain(&s.finally_stages)
                .cloned()
                .collect();
            let mut attempt = 0;
            let tried = loop {
                let label = if attempt == 0 {
                    "try".to_string()
                } else {
                    format!("try{attempt}")
                };
                let result =
                    nested::run_stages(&ctx, &view, &s.try_stages, &label, BTreeMap::new()).await;
                match result {
                    Err(e) if e.error.class != ErrorClass::Cancelled && attempt < s.max_retries => {
                        attempt += 1;
                        tokio::select! {
                            () = ctx.cancel.cancelled() => return Err(cancelled()),
                            () = tokio::time::sleep(s.retry_delay) => {}
                        }
                    }
                    other => break other,
                }
            };
            let (try_result, mut overlay, failure) = match tried {
                Ok(o) => (o.last.clone(), o.outputs, None),
                Err(e) if e.error.class == ErrorClass::Cancelled => return Err(cancelled()),
                Err(e) => (None, e.outputs.clone(), Some(e)),
            };
            let mut catch_result = None;
            let caught = failure
                .as_ref()
                .is_some_and(|f| caught_by(&s.catch_types, f.error.class));
            if let Some(f) = &failure {
                overlay.insert(
                    ctx.stage_id.clone(),
                    serde_json::json!({
                        "error": f.error.message,
                        "error_type": class_name(f.error.class),
                        "error_occurred": true,
                        "failed_stage": f.stage,
                    }),
                );
                if caught && !s.catch_stages.is_empty() {
                    let o =
                        run_block(&ctx, &view, &s.catch_stages, "catch", overlay.clone()).await?;
                    catch_result = o.last.clone();
                    overlay.extend(o.outputs);
                }
            }
            if !s.finally_stages.is_empty() {
                run_block(&ctx, &view, &s.finally_stages, "finally", overlay).await?;
            }
            let (message, error_type) = match &failure {
                Some(f) => (
                    Value::String(f.error.message.clone()),
                    Value::String(class_name(f.error.class)),
                ),
                None => (Value::Null, Value::Null),
            };
            if let Some(f) = failure
                && (s.propagate || !caught)
            {
                return Err(f.into_component_error(&format!("{NAME}: try block")));
            }
            let output = serde_json::json!({
                "status": if caught { "caught" } else { "success" },
                "error_occurred": caught,
                "error_message": message,
                "error_type": error_type,
                "recovered": caught,
                "try_result": try_result,
                "catch_result": catch_result,
                "data": map.remove("pass_data").unwrap_or(Value::Null),
            });
            Ok(ComponentOutput { output, skip })
        })
    }
}

fn cancelled() -> ComponentError {
    ComponentError::new(ErrorClass::Cancelled, format!("{NAME}: cancelled"))
}

async fn run_block(
    ctx: &StageContext,
    view: &RunView,
    stages: &[String],
    label: &str,
    overlay: BTreeMap<String, Value>,
) -> Result<nested::NestedOutcome, ComponentError> {
    nested::run_stages(ctx, view, stages, label, overlay)
        .await
        .map_err(|e: NestedError| e.into_component_error(&format!("{NAME}: {label} block")))
}

//! `logger`: records a structured log line for the attempt, as FlowMason's operator of that name does.
//!
//! Input: `message` (required string), `level` (`debug`, `info` (default), `warning`, `error`, and
//! `critical`, which FlowMason's logging accepts too), `data` (any JSON), `tags` (object of strings),
//! `emit_to_trace` (default `true`), `passthrough` (any JSON, returned unchanged for chaining).
//!
//! The line goes to the run's history as a `StageLog` event (FlowMason's "execution trace") unless
//! `emit_to_trace` is `false`; it is always emitted to the engine's own `tracing` log, as FlowMason always
//! emits it to its Python logger. The `StageLog` carries `level` and `message`, and as data
//! `{log_id, data?, tags?}` (the run, stage and time are already on the event). The engine masks the
//! run's secret values in the event; the `tracing` copy is masked the same way here.
//!
//! Output: `{logged: true, log_id, passthrough}`; `log_id` is 8 random hex digits, as FlowMason makes it.

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_bool, static_config, type_name};

/// The component type name.
pub const NAME: &str = "logger";

/// The levels `level` accepts.
pub const LEVELS: &[&str] = &["debug", "info", "warning", "error", "critical"];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logger;

impl Component for Logger {
    /// Checks the statically set fields' types and the level.
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(literal) = static_config(NAME, config)? else {
            return Ok(());
        };
        if let Some(message) = literal.get("message")
            && !message.is_string()
        {
            return Err(message_type_error(message));
        }
        level(&literal)?;
        tags(&literal)?;
        opt_bool(NAME, &literal, "emit_to_trace", true)?;
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let message = match map.remove("message") {
                Some(Value::String(message)) => message,
                Some(other) => return Err(message_type_error(&other)),
                None => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `message` is required"
                    )));
                }
            };
            let level = level(&map)?;
            let tags = tags(&map)?.cloned();
            let emit_to_trace = opt_bool(NAME, &map, "emit_to_trace", true)?;
            let data = map.remove("data").unwrap_or(Value::Null);
            let passthrough = map.remove("passthrough").unwrap_or(Value::Null);

            let log_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
            emit_tracing(level, &log_id, &message, &ctx);
            if emit_to_trace {
                let mut entry = Map::new();
                entry.insert("log_id".into(), Value::String(log_id.clone()));
                if !data.is_null() {
                    entry.insert("data".into(), data);
                }
                if let Some(tags) = tags.filter(|t| !t.is_empty()) {
                    entry.insert("tags".into(), Value::Object(tags));
                }
                ctx.log(level, message, Value::Object(entry));
            }

            let mut out = Map::with_capacity(3);
            out.insert("logged".into(), Value::Bool(true));
            out.insert("log_id".into(), Value::String(log_id));
            out.insert("passthrough".into(), passthrough);
            Ok(ComponentOutput::from(Value::Object(out)))
        })
    }
}

fn message_type_error(message: &Value) -> ComponentError {
    ComponentError::config(format!(
        "{NAME}: `message` must be a string, got {}",
        type_name(message)
    ))
}

/// `level`, default `info`.
fn level(map: &Map<String, Value>) -> Result<&'static str, ComponentError> {
    match map.get("level") {
        None | Some(Value::Null) => Ok("info"),
        Some(Value::String(level)) => {
            LEVELS
                .iter()
                .find(|l| **l == level)
                .copied()
                .ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `level` {level:?} is not one of {}",
                        LEVELS.join(", ")
                    ))
                })
        }
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `level` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// `tags`: an object of strings, or absent / `null`.
fn tags(map: &Map<String, Value>) -> Result<Option<&Map<String, Value>>, ComponentError> {
    match map.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(tags)) => match tags.iter().find(|(_, v)| !v.is_string()) {
            Some((key, v)) => Err(ComponentError::config(format!(
                "{NAME}: `tags.{key}` must be a string, got {}",
                type_name(v)
            ))),
            None => Ok(Some(tags)),
        },
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `tags` must be an object, got {}",
            type_name(other)
        ))),
    }
}

/// The engine-side copy of the line, at the matching `tracing` level (`critical` as error), with the
/// run's secrets masked as in its events (the message is rendered: `{{env.X}}` of a Secret is in it).
fn emit_tracing(level: &str, log_id: &str, message: &str, ctx: &StageContext) {
    let message = ctx.redact(message);
    let run_id = ctx.run_id.to_string();
    let stage = ctx.stage_id.as_str();
    let pipeline = ctx.pipeline.as_str();
    match level {
        "debug" => {
            tracing::debug!(target: "flowmason::pipeline", %run_id, stage, pipeline, log_id, "{message}")
        }
        "info" => {
            tracing::info!(target: "flowmason::pipeline", %run_id, stage, pipeline, log_id, "{message}")
        }
        "warning" => {
            tracing::warn!(target: "flowmason::pipeline", %run_id, stage, pipeline, log_id, "{message}")
        }
        _ => {
            tracing::error!(target: "flowmason::pipeline", %run_id, stage, pipeline, log_id, level, "{message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_actors::LogLine;
    use flowmason_store::ErrorClass;
    use serde_json::json;

    #[tokio::test]
    async fn logs_a_structured_line_and_passes_data_through() {
        let (ctx, logs) = context();
        let out = Logger
            .execute(
                json!({"message": "User data received", "level": "warning", "data": {"n": 1},
                       "tags": {"component": "auth"}, "passthrough": [1, 2]}),
                ctx,
            )
            .await
            .unwrap()
            .output;
        let log_id = out["log_id"].as_str().unwrap().to_owned();
        assert_eq!(log_id.len(), 8);
        assert!(log_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            out,
            json!({"logged": true, "log_id": log_id, "passthrough": [1, 2]})
        );
        let lines = logs.lock().unwrap().clone();
        assert_eq!(
            lines,
            vec![LogLine {
                level: "warning".into(),
                message: "User data received".into(),
                data: json!({"log_id": log_id, "data": {"n": 1}, "tags": {"component": "auth"}}),
            }]
        );
    }

    #[tokio::test]
    async fn defaults_to_info_and_null_passthrough() {
        let (ctx, logs) = context();
        let out = Logger
            .execute(json!({"message": "hi"}), ctx)
            .await
            .unwrap()
            .output;
        assert_eq!(out["passthrough"], Value::Null);
        assert_eq!(out["logged"], json!(true));
        let lines = logs.lock().unwrap().clone();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].level, "info");
        assert_eq!(lines[0].data, json!({"log_id": out["log_id"]}));
    }

    #[tokio::test]
    async fn every_level_and_no_trace() {
        for level in LEVELS {
            let (ctx, logs) = context();
            Logger
                .execute(json!({"message": "m", "level": level}), ctx)
                .await
                .unwrap();
            assert_eq!(logs.lock().unwrap()[0].level, *level);
        }
        let (ctx, logs) = context();
        let out = Logger
            .execute(json!({"message": "m", "emit_to_trace": false}), ctx)
            .await
            .unwrap()
            .output;
        assert_eq!(out["logged"], json!(true));
        assert!(logs.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_inputs_are_config_errors() {
        let cases = [
            (json!({}), "`message` is required"),
            (json!({"message": 5}), "`message` must be a string"),
            (
                json!({"message": "m", "level": "fatal"}),
                "`level` \"fatal\" is not one of",
            ),
            (
                json!({"message": "m", "level": 1}),
                "`level` must be a string",
            ),
            (
                json!({"message": "m", "tags": {"a": 1}}),
                "`tags.a` must be a string",
            ),
            (
                json!({"message": "m", "tags": []}),
                "`tags` must be an object",
            ),
            (
                json!({"message": "m", "emit_to_trace": "no"}),
                "`emit_to_trace` must be a boolean",
            ),
            (json!("m"), "input must be an object"),
        ];
        for (input, want) in cases {
            let (ctx, logs) = context();
            let err = Logger.execute(input.clone(), ctx).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
            assert!(logs.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn validate_checks_static_fields() {
        assert!(
            Logger
                .validate(&json!({"message": "m", "level": "error"}))
                .is_ok()
        );
        assert!(
            Logger
                .validate(&json!({"message": "{{input.m}}", "level": "{{input.level}}"}))
                .is_ok()
        );
        assert!(Logger.validate(&json!({"level": "loud"})).is_err());
        assert!(Logger.validate(&json!({"message": ["m"]})).is_err());
        assert!(Logger.validate(&json!({"tags": {"a": 1}})).is_err());
    }
}

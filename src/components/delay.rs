//! `delay`: waits for a while, then succeeds.
//!
//! Input: `ms` (milliseconds) or `seconds`, a non-negative number (fractions allowed); exactly one of them.
//! Output: `{delayed_ms}`, the requested wait in milliseconds (an integer when it is whole).
//! The wait ends early when the attempt is cancelled (its token, or by dropping the future), failing the
//! attempt with class `Cancelled`. Useful to test timeouts, cancellation and parallelism.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::{config_object, input_object, is_templated, type_name};

/// The component type name.
pub const NAME: &str = "delay";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delay;

impl Component for Delay {
    /// Checks `ms` / `seconds` when they are set statically (they may also come from `inputMapping`).
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        if map.values().any(is_templated) {
            return Ok(());
        }
        if map.contains_key("ms") || map.contains_key("seconds") {
            duration(map)?;
        }
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let wait = duration(&map)?;
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => Err(ComponentError::new(ErrorClass::Cancelled, format!("{NAME}: cancelled"))),
                () = tokio::time::sleep(wait) => {
                    let mut out = Map::new();
                    out.insert("delayed_ms".into(), millis(wait));
                    Ok(ComponentOutput::from(Value::Object(out)))
                }
            }
        })
    }
}

/// The wait from `ms` or `seconds`.
fn duration(map: &Map<String, Value>) -> Result<Duration, ComponentError> {
    let (field, value, scale) = match (map.get("ms"), map.get("seconds")) {
        (Some(ms), None) => ("ms", ms, 0.001),
        (None, Some(seconds)) => ("seconds", seconds, 1.0),
        (Some(_), Some(_)) => {
            return Err(ComponentError::config(format!(
                "{NAME}: give either `ms` or `seconds`, not both"
            )));
        }
        (None, None) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `ms` (or `seconds`) is required"
            )));
        }
    };
    let Some(amount) = value.as_f64() else {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a number, got {}",
            type_name(value)
        )));
    };
    if amount < 0.0 {
        return Err(ComponentError::config(format!(
            "{NAME}: `{field}` must not be negative, got {amount}"
        )));
    }
    Duration::try_from_secs_f64(amount * scale).map_err(|e| {
        ComponentError::config(format!(
            "{NAME}: `{field}` = {amount} is not a usable duration: {e}"
        ))
    })
}

/// A duration in milliseconds as JSON: an integer when whole, else a float.
fn millis(wait: Duration) -> Value {
    if wait.subsec_nanos().is_multiple_of(1_000_000) {
        Value::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    } else {
        Value::from(wait.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use serde_json::json;
    use std::time::Instant;

    #[tokio::test]
    async fn waits_ms_or_seconds() {
        let (ctx, _) = context();
        let start = Instant::now();
        let out = Delay.execute(json!({"ms": 30}), ctx).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(out.output, json!({"delayed_ms": 30}));
        let (ctx, _) = context();
        let out = Delay
            .execute(json!({"seconds": 0.0125}), ctx)
            .await
            .unwrap();
        assert_eq!(out.output, json!({"delayed_ms": 12.5}));
    }

    #[tokio::test]
    async fn cancellation_via_token_ends_the_wait() {
        let (ctx, _) = context();
        let token = ctx.cancel.clone();
        let task = tokio::spawn(Delay.execute(json!({"ms": 60_000}), ctx));
        tokio::time::sleep(Duration::from_millis(20)).await;
        token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("delay ignored cancellation");
        let err = result.expect("task panicked").unwrap_err();
        assert_eq!(err.class, ErrorClass::Cancelled);
    }

    #[tokio::test]
    async fn already_cancelled_fails_at_once() {
        let (ctx, _) = context();
        ctx.cancel.cancel();
        let err = Delay.execute(json!({"ms": 0}), ctx).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Cancelled);
    }

    #[tokio::test]
    async fn bad_durations_are_config_errors() {
        let cases = [
            (json!({}), "is required"),
            (json!({"ms": -1}), "must not be negative"),
            (json!({"seconds": -0.5}), "must not be negative"),
            (json!({"ms": "10"}), "must be a number"),
            (json!({"ms": 1, "seconds": 1}), "not both"),
            (json!({"seconds": 1e300}), "not a usable duration"),
            (json!(5), "input must be an object"),
        ];
        for (input, want) in cases {
            let (ctx, _) = context();
            let err = Delay.execute(input.clone(), ctx).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(err.message.contains(want), "{input}: {}", err.message);
        }
    }

    #[test]
    fn validate_checks_static_values() {
        assert!(Delay.validate(&json!({"ms": 10})).is_ok());
        assert!(
            Delay.validate(&json!({})).is_ok(),
            "ms may come from inputMapping"
        );
        assert!(Delay.validate(&json!({"ms": "{{input.wait}}"})).is_ok());
        assert!(Delay.validate(&json!({"ms": -5})).is_err());
        assert!(Delay.validate(&json!({"seconds": true})).is_err());
    }
}

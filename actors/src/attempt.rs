//! One attempt of a stage, wherever it runs: a DAG stage in its `StageActor`, a nested stage inside the
//! stage that owns it (`crate::nested`). Both get the same guard: a panic becomes an error that carries
//! the panic's text, the output is checked against the limits, the attempt's time limit applies, and a
//! cancelled attempt ends at once.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use flowmason_store::ErrorClass;

use crate::component::{ComponentError, ComponentOutput};
use crate::limits;

/// The component's work with a panic turned into an internal error (`component panicked: <text>`) and
/// its output checked ([`check_output`]). The `StageActor` runs this on a task of its own.
pub(crate) async fn execute(
    stage: String,
    work: impl Future<Output = Result<ComponentOutput, ComponentError>>,
) -> Result<ComponentOutput, ComponentError> {
    let outcome = AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(ComponentError::internal(format!(
                "component panicked: {}",
                panic_message(&panic)
            )))
        });
    check_output(&stage, outcome)
}

/// Runs `work` under the attempt's time limit (`attempt timed out after 1.5s`, class `Timeout`) until
/// `cancel` fires (`attempt cancelled`, class `Cancelled`). A timed-out attempt cancels `cancel`, so that
/// what the component started outside its future stops too.
pub(crate) async fn guard(
    work: impl Future<Output = Result<ComponentOutput, ComponentError>>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<ComponentOutput, ComponentError> {
    let limited = async {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                cancel.cancel();
                Err(ComponentError::new(
                    ErrorClass::Timeout,
                    format!("attempt timed out after {}", humanize(limit)),
                ))
            }),
            None => work.await,
        }
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(ComponentError::new(ErrorClass::Cancelled, "attempt cancelled")),
        result = limited => result,
    }
}

/// A successful output larger than [`limits::max_output_bytes`] as JSON fails the attempt, naming the
/// stage: it would be kept in the event log and copied into every stage that reads it. So does one
/// nested deeper than [`limits::MAX_VALUE_DEPTH`], which the event log could not read back.
fn check_output(
    stage: &str,
    outcome: Result<ComponentOutput, ComponentError>,
) -> Result<ComponentOutput, ComponentError> {
    let limit = limits::max_output_bytes();
    match outcome {
        Ok(out) if limits::json_exceeds(&out.output, limit) => {
            Err(ComponentError::config(format!(
                "stage {stage:?}: output exceeds the limit of {limit} bytes (--max-output-bytes)"
            )))
        }
        Ok(out) if limits::deeper_than(&out.output, limits::MAX_VALUE_DEPTH) => {
            Err(ComponentError::config(format!(
                "stage {stage:?}: output nests deeper than the limit of {}",
                limits::MAX_VALUE_DEPTH
            )))
        }
        other => other,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// `1.5s`, `250ms`: how users wrote the limit.
pub(crate) fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn attempt(
        work: impl Future<Output = Result<ComponentOutput, ComponentError>>,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<ComponentOutput, ComponentError> {
        guard(execute("s".into(), work), timeout, cancel).await
    }

    #[tokio::test]
    async fn a_panic_becomes_an_internal_error_with_its_text() {
        let error = attempt(
            async { panic!("index out of range") },
            None,
            &CancellationToken::new(),
        )
        .await
        .expect_err("panicked");
        assert_eq!(error.class, ErrorClass::Internal);
        assert_eq!(error.message, "component panicked: index out of range");
    }

    #[tokio::test]
    async fn a_slow_attempt_times_out_and_cancels_its_token() {
        let cancel = CancellationToken::new();
        let error = attempt(
            std::future::pending(),
            Some(Duration::from_millis(20)),
            &cancel,
        )
        .await
        .expect_err("timed out");
        assert_eq!(error.class, ErrorClass::Timeout);
        assert_eq!(error.message, "attempt timed out after 20ms");
        assert!(cancel.is_cancelled());
    }

    #[tokio::test]
    async fn a_cancelled_attempt_ends_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let error = attempt(std::future::pending(), None, &cancel)
            .await
            .expect_err("cancelled");
        assert_eq!(
            (error.class, error.message.as_str()),
            (ErrorClass::Cancelled, "attempt cancelled")
        );
    }

    #[tokio::test]
    async fn an_output_over_the_limits_fails_naming_the_stage() {
        let deep = (0..=limits::MAX_VALUE_DEPTH).fold(json!(1), |v, _| json!([v]));
        let error = attempt(
            async move { Ok(deep.into()) },
            None,
            &CancellationToken::new(),
        )
        .await
        .expect_err("too deep");
        assert_eq!(error.class, ErrorClass::Config);
        assert!(
            error
                .message
                .starts_with("stage \"s\": output nests deeper"),
            "{}",
            error.message
        );
        let ok = attempt(
            async { Ok(json!({"a": 1}).into()) },
            Some(Duration::from_secs(5)),
            &CancellationToken::new(),
        )
        .await
        .expect("ok");
        assert_eq!(ok.output, json!({"a": 1}));
    }

    #[test]
    fn limits_read_as_written() {
        assert_eq!(humanize(Duration::from_millis(1500)), "1500ms");
        assert_eq!(humanize(Duration::from_secs(2)), "2s");
    }
}

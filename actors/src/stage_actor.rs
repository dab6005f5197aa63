//! `StageActor`: one attempt of one stage. It runs the component under the attempt's time limit and reports
//! the result to its run; stopping it cancels the component.
//!
//! The component runs as a task of its own on the tokio worker threads, never on the actor thread: a
//! component that computes for a while (an expression over a large list) must not stall the actors of
//! other runs. When the attempt times out or is stopped, the task is aborted.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use flowmason_store::ErrorClass;

use crate::component::{Component, ComponentError, ComponentOutput, StageContext};
use crate::limits;

/// The attempt ended: how, and which attempt it was.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StageDone {
    pub index: usize,
    pub attempt: u32,
    pub result: Result<ComponentOutput, ComponentError>,
}

/// Stop the attempt now; its result, if any comes later, is dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CancelStage;

pub(crate) struct StageActor {
    pub index: usize,
    pub attempt: u32,
    pub component: Arc<dyn Component>,
    pub input: Option<Value>,
    pub context: Option<StageContext>,
    pub timeout: Option<Duration>,
    pub cancel: CancellationToken,
    pub report: Recipient<StageDone>,
}

impl Actor for StageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(input), Some(context)) = (self.input.take(), self.context.take()) else {
            ctx.stop();
            return;
        };
        let component = self.component.clone();
        let stage = context.stage_id.clone();
        // `execute` itself may compute before it returns its future, so it is called on the task too.
        let task = AbortOnDrop(tokio::spawn(async move {
            let outcome = AssertUnwindSafe(async move { component.execute(input, context).await })
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(ComponentError::internal(format!(
                        "component panicked: {}",
                        panic_message(&panic)
                    )))
                });
            check_output_size(&stage, outcome)
        }));
        let work = async move {
            let mut task = task;
            (&mut task.0).await.unwrap_or_else(|join| {
                Err(ComponentError::internal(format!(
                    "component task ended abnormally: {join}"
                )))
            })
        };
        let timeout = self.timeout;
        let attempt = async move {
            match timeout {
                Some(limit) => match tokio::time::timeout(limit, work).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ComponentError::new(
                        ErrorClass::Timeout,
                        format!("attempt timed out after {}", humanize(limit)),
                    )),
                },
                None => work.await,
            }
        };
        ctx.spawn(attempt.into_actor(self).map(|result, act, ctx| {
            act.report.do_send(StageDone {
                index: act.index,
                attempt: act.attempt,
                result,
            });
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Whatever the component started outside its future (tasks, requests) learns that it must stop.
        self.cancel.cancel();
    }
}

impl Handler<CancelStage> for StageActor {
    type Result = ();

    fn handle(&mut self, _msg: CancelStage, ctx: &mut Self::Context) {
        self.cancel.cancel();
        ctx.stop();
    }
}

/// A successful output larger than [`limits::max_output_bytes`] as JSON fails the attempt, naming the
/// stage: it would be kept in the event log and copied into every stage that reads it. So does one
/// nested deeper than [`limits::MAX_VALUE_DEPTH`], which the event log could not read back.
pub(crate) fn check_output_size(
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

/// Aborts the component's task when the attempt is dropped (timed out, stopped, its run ended), so that
/// nothing of it keeps running.
struct AbortOnDrop(tokio::task::JoinHandle<Result<ComponentOutput, ComponentError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

//! `StageActor`: one attempt of one DAG stage. It runs the component under the attempt's guard
//! (`crate::attempt`: time limit, panics, output limits) and reports the result to its run; stopping it
//! cancels the component.
//!
//! The component runs as a task of its own on the tokio worker threads, never on the actor thread: a
//! component that computes for a while (an expression over a large list) must not stall the actors of
//! other runs. When the attempt times out or is stopped, the task is aborted.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::attempt;
use crate::component::{Component, ComponentError, ComponentOutput, StageContext};

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
        let task = AbortOnDrop(tokio::spawn(attempt::execute(stage, async move {
            component.execute(input, context).await
        })));
        let work = async move {
            let mut task = task;
            (&mut task.0).await.unwrap_or_else(|join| {
                Err(ComponentError::internal(format!(
                    "component task ended abnormally: {join}"
                )))
            })
        };
        let timeout = self.timeout;
        let cancel = self.cancel.clone();
        let attempt = async move { attempt::guard(work, timeout, &cancel).await };
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

/// Aborts the component's task when the attempt is dropped (timed out, stopped, its run ended), so that
/// nothing of it keeps running.
struct AbortOnDrop(tokio::task::JoinHandle<Result<ComponentOutput, ComponentError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! `RunActor`: one per run, the plumbing around its [`Scheduler`]. Each message (a stage attempt ended, a
//! component logged, a timer fired, a cancel) becomes a stimulus; the scheduler decides from the plan and
//! the journal's folded state; the actor records the decision's events in the run's journal and, once
//! they are durable, carries out its effects: starting a `StageActor` per attempt, arming retry and
//! timeout timers, stopping attempts, reporting the outcome.
//!
//! Every decision is first appended to the event log and only then acted on (`commit`): the run's state is
//! the fold of its events, so a restart resumes exactly where the log says the run was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use flowmason_store::{RunState, StoreError};

use crate::component::{Component, LogLine, Registry, RunView, StageContext};
use crate::journal::{EngineError, Journal};
use crate::plan::Plan;
use crate::scheduler::{Decision, Effect, Scheduler, Stimulus};
use crate::stage_actor::{CancelStage, StageActor, StageDone};

/// Everything a run actor starts with.
pub(crate) struct RunSetup {
    pub plan: Arc<Plan>,
    /// The run's events so far and where new ones go (masked with the run's secrets).
    pub journal: Journal,
    pub env: BTreeMap<String, String>,
    pub components: Vec<Arc<dyn Component>>,
    /// For stages that run other stages (see `Component::runs_stages`).
    pub registry: Arc<Registry>,
    pub outcome: oneshot::Sender<Result<RunState, EngineError>>,
    /// Called once when the actor stops (the engine forgets the run).
    pub on_stop: Box<dyn FnOnce() + Send>,
}

/// Cancel the run: it ends `Cancelled`, running attempts are stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CancelRun {
    pub reason: String,
}

/// Stop the run at once without appending anything (the engine hands it over to another): running
/// attempts are stopped, timers dropped, and the outcome is [`EngineError::Relinquished`].
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Relinquish;

/// A component logged a line.
#[derive(Message)]
#[rtype(result = "()")]
struct StageLogged {
    index: usize,
    attempt: u32,
    line: LogLine,
}

pub(crate) struct RunActor {
    /// Decides; reads the plan and the journal's folded state.
    scheduler: Scheduler,
    journal: Journal,
    components: Vec<Arc<dyn Component>>,
    registry: Arc<Registry>,
    outcome: Option<oneshot::Sender<Result<RunState, EngineError>>>,
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    /// The attempt running per stage (by plan index) and its actor.
    running: Vec<Option<(u32, Addr<StageActor>)>>,
}

impl RunActor {
    pub(crate) fn new(setup: RunSetup) -> RunActor {
        let n = setup.plan.len();
        let scheduler = Scheduler::new(
            setup.plan,
            setup.journal.state(),
            setup.env,
            setup.journal.redactor().clone(),
        );
        RunActor {
            scheduler,
            journal: setup.journal,
            components: setup.components,
            registry: setup.registry,
            outcome: Some(setup.outcome),
            on_stop: Some(setup.on_stop),
            running: (0..n).map(|_| None).collect(),
        }
    }

    /// Asks the scheduler what `stimulus` means for the run, and carries it out (see `commit`).
    fn react(&mut self, stimulus: Stimulus, ctx: &mut Context<Self>) {
        let decision = self.scheduler.decide(self.journal.state(), stimulus);
        self.commit(decision, ctx);
    }

    /// Records the decision's events (masked, appended, folded), then carries out its effects once the
    /// events are as durable as the policy requires: nothing is acted on before it is in the log.
    fn commit(&mut self, decision: Decision, ctx: &mut Context<Self>) {
        let Decision { events, effects } = decision;
        match self.journal.append(events) {
            Err(error) => self.abandon(error, ctx),
            Ok(true) => {
                ctx.wait(
                    self.journal.sync().into_actor(self).map(
                        move |result, act, ctx| match result {
                            Ok(()) => act.apply_effects(effects, ctx),
                            Err(e) => act.abandon(e, ctx),
                        },
                    ),
                );
            }
            Ok(false) => self.apply_effects(effects, ctx),
        }
    }

    fn apply_effects(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Start {
                    index,
                    attempt,
                    input,
                } => self.spawn_attempt(index, attempt, input, ctx),
                Effect::ArmRetry {
                    index,
                    attempt,
                    delay,
                } => {
                    ctx.run_later(delay, move |act, ctx| {
                        act.react(Stimulus::RetryDue { index, attempt }, ctx)
                    });
                }
                Effect::ArmTimeout { delay } => {
                    ctx.run_later(delay, |act, ctx| act.react(Stimulus::TimedOut, ctx));
                }
                Effect::StopAttempts => self.stop_all_stages(),
                Effect::Finish => self.finish(ctx),
            }
        }
    }

    /// The store failed, or another engine took the run over (`StoreError::LostOwnership`): the run cannot
    /// go on here, and nothing not yet in the log is acted on. It stays unfinished in the log and resumes
    /// on restart (or goes on with the engine that owns it now).
    fn abandon(&mut self, error: StoreError, ctx: &mut Context<Self>) {
        let run = self.journal.state().run_id;
        if matches!(error, StoreError::LostOwnership { .. }) {
            tracing::warn!(%run, %error, "this engine no longer owns the run; stopped here");
        } else {
            tracing::error!(%run, %error, "event log append failed; run abandoned until it is resumed");
        }
        self.stop_all_stages();
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(Err(EngineError::Store { run, source: error }));
        }
        ctx.stop();
    }

    fn spawn_attempt(&mut self, index: usize, attempt: u32, input: Value, ctx: &mut Context<Self>) {
        let stage = self.scheduler.plan().stage(index);
        let component = self.components[index].clone();
        let me = ctx.address();
        let log_to = me.clone();
        let log = Arc::new(move |line: LogLine| {
            log_to.do_send(StageLogged {
                index,
                attempt,
                line,
            })
        });
        let cancel = CancellationToken::new();
        let mut context = StageContext::new(
            self.journal.state().run_id,
            self.journal.state().pipeline.clone(),
            self.journal.state().namespace.clone(),
            stage.id.clone(),
            attempt,
            cancel.clone(),
            log,
        )
        .with_redactor(self.journal.redactor().clone());
        if component.runs_stages() {
            context = context.with_run(Arc::new(self.run_view()));
        }
        let actor = StageActor {
            index,
            attempt,
            component,
            input: Some(input),
            context: Some(context),
            timeout: stage.timeout_ms.map(Duration::from_millis),
            cancel,
            report: me.recipient(),
        };
        self.running[index] = Some((attempt, actor.start()));
    }

    /// The snapshot a stage that runs other stages works from: plan, registry, inputs, environment and the
    /// outputs of the stages that have succeeded so far.
    fn run_view(&self) -> RunView {
        let outputs = self
            .journal
            .state()
            .stages
            .iter()
            .filter_map(|(id, s)| s.output.clone().map(|o| (id.clone(), o)))
            .collect();
        RunView {
            plan: self.scheduler.plan().clone(),
            registry: self.registry.clone(),
            inputs: Arc::new(self.journal.state().inputs.clone()),
            env: Arc::new(self.scheduler.env().clone()),
            outputs: Arc::new(outputs),
            call_stack: vec![self.journal.state().pipeline.clone()],
        }
    }

    fn stop_all_stages(&mut self) {
        for slot in &mut self.running {
            if let Some((_, addr)) = slot.take() {
                addr.do_send(CancelStage);
            }
        }
    }

    /// The terminal event is in the log (and durable): report the outcome and stop.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(Ok(self.journal.state().clone()));
        }
        ctx.stop();
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.react(Stimulus::Begin { now: now_micros() }, ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.stop_all_stages();
        if let Some(on_stop) = self.on_stop.take() {
            on_stop();
        }
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(Err(EngineError::Lost {
                run: self.journal.state().run_id,
            }));
        }
    }
}

impl Handler<StageDone> for RunActor {
    type Result = ();

    fn handle(&mut self, done: StageDone, ctx: &mut Self::Context) {
        let StageDone {
            index,
            attempt,
            result,
        } = done;
        match &self.running[index] {
            Some((running, _)) if *running == attempt => {}
            _ => return, // a cancelled attempt's late answer
        }
        self.running[index] = None;
        let stimulus = Stimulus::StageDone {
            index,
            attempt,
            result,
            now: now_micros(),
            jitter: rand::random::<f64>(),
        };
        self.react(stimulus, ctx);
    }
}

impl Handler<StageLogged> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: StageLogged, ctx: &mut Self::Context) {
        let StageLogged {
            index,
            attempt,
            line,
        } = msg;
        self.react(
            Stimulus::Logged {
                index,
                attempt,
                line,
            },
            ctx,
        );
    }
}

impl Handler<CancelRun> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: CancelRun, ctx: &mut Self::Context) {
        self.react(Stimulus::Cancel { reason: msg.reason }, ctx);
    }
}

impl Handler<Relinquish> for RunActor {
    type Result = ();

    fn handle(&mut self, _msg: Relinquish, ctx: &mut Self::Context) {
        self.stop_all_stages();
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(Err(EngineError::Relinquished {
                run: self.journal.state().run_id,
            }));
        }
        ctx.stop();
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

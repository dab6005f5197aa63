//! `RunActor`: one per run. It owns the run's event stream and DAG frontier, starts a `StageActor` per stage
//! attempt, and enforces parallelism, retries, timeouts and cancellation.
//!
//! Every decision is first appended to the event log and only then acted on (`commit`): the run's state is
//! the fold of its events, so a restart resumes exactly where the log says the run was.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use flowmason_store::{
    ErrorClass, EventKind, RunError, RunPhase, RunState, SkipReason, StageError, StagePhase,
    StoreError,
};

use crate::attempt::humanize;
use crate::component::{Component, ComponentOutput, LogLine, Registry, RunView, StageContext};
use crate::journal::{EngineError, Journal};
use crate::plan::Plan;
use crate::stage_actor::{CancelStage, StageActor, StageDone};
use crate::template::{self, Scope};

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

/// Something to do once the events describing it are in the log.
enum Effect {
    Start {
        index: usize,
        attempt: u32,
        input: Value,
    },
    Retry {
        index: usize,
        attempt: u32,
        delay: Duration,
    },
    Finish,
}

/// How a run is ending, once a decision to end it has been taken.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    /// A stage failed for good: no new stages start; the run fails when running ones have finished.
    Failed {
        stage: String,
        message: String,
        details: Value,
    },
}

pub(crate) struct RunActor {
    plan: Arc<Plan>,
    journal: Journal,
    env: BTreeMap<String, String>,
    context: Value,
    components: Vec<Arc<dyn Component>>,
    registry: Arc<Registry>,
    outcome: Option<oneshot::Sender<Result<RunState, EngineError>>>,
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    /// Stage phases by plan index, kept in step with `state`.
    phases: Vec<StagePhase>,
    skip_reasons: Vec<Option<SkipReason>>,
    /// Stages branch decisions have excluded.
    excluded: HashSet<usize>,
    /// Ready stages, by position in the plan's topological order.
    ready: BTreeSet<(usize, usize)>,
    /// Attempt to start next per stage (set when a stage becomes ready).
    next_attempt: Vec<u32>,
    position: Vec<usize>,
    /// Whether a stage's input needs rendering (it has templates or an input mapping).
    templated: Vec<bool>,
    running: Vec<Option<(u32, Addr<StageActor>)>>,
    running_count: usize,
    /// Stages whose phase is `Retrying`: whether the run is idle is asked after every stage.
    retrying_count: usize,
    ending: Option<Ending>,
    finished: bool,
    /// Something recorded since the last `commit` must be durable before it is acted on.
    must_sync: bool,
    store_error: Option<StoreError>,
}

impl RunActor {
    pub(crate) fn new(setup: RunSetup) -> RunActor {
        let n = setup.plan.len();
        let mut position = vec![0; n];
        for (pos, &index) in setup.plan.order().iter().enumerate() {
            position[index] = pos;
        }
        // Canonical spellings only: templates map FlowMason's `run_id`/`stage_id` onto them.
        let state = setup.journal.state();
        let context = serde_json::json!({
            "runId": state.run_id.to_string(),
            "pipeline": state.pipeline,
            "namespace": state.namespace,
            "generation": state.generation,
            "trigger": state.trigger.as_str(),
        });
        let templated = setup
            .plan
            .spec()
            .stages
            .iter()
            .map(|s| !s.input_mapping.is_empty() || template::has_templates(&s.config))
            .collect();
        let mut env = setup.plan.spec().env.clone();
        env.extend(setup.env);
        RunActor {
            plan: setup.plan,
            journal: setup.journal,
            env,
            context,
            components: setup.components,
            registry: setup.registry,
            outcome: Some(setup.outcome),
            on_stop: Some(setup.on_stop),
            phases: vec![StagePhase::Pending; n],
            skip_reasons: vec![None; n],
            excluded: HashSet::new(),
            ready: BTreeSet::new(),
            next_attempt: vec![1; n],
            templated,
            position,
            running: (0..n).map(|_| None).collect(),
            running_count: 0,
            retrying_count: 0,
            ending: None,
            finished: false,
            must_sync: false,
            store_error: None,
        }
    }

    /// Records `kinds` in the journal (masked, appended, folded). Decisions are recorded as they are
    /// taken, so that later decisions in the same turn (rendering a stage's input from an output just
    /// recorded) see them; the first store error is kept for `commit` to act on.
    fn record(&mut self, kinds: Vec<EventKind>) {
        if kinds.is_empty() || self.store_error.is_some() {
            return;
        }
        match self.journal.append(kinds) {
            Ok(must_wait) => self.must_sync |= must_wait,
            Err(e) => self.store_error = Some(e),
        }
    }

    /// Records `kinds`, then carries out `effects` once everything recorded is as durable as the policy
    /// requires: nothing is acted on before it is in the log.
    fn commit(&mut self, kinds: Vec<EventKind>, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        self.record(kinds);
        if let Some(error) = self.store_error.take() {
            return self.abandon(error, ctx);
        }
        if std::mem::take(&mut self.must_sync) {
            ctx.wait(self.journal.sync().into_actor(self).map(
                move |result, act, ctx| match result {
                    Ok(()) => act.apply_effects(effects, ctx),
                    Err(e) => act.abandon(e, ctx),
                },
            ));
        } else {
            self.apply_effects(effects, ctx);
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
                Effect::Retry {
                    index,
                    attempt,
                    delay,
                } => {
                    ctx.run_later(delay, move |act, ctx| act.retry_due(index, attempt, ctx));
                }
                Effect::Finish => self.finish(ctx),
            }
        }
    }

    /// The store failed, or another engine took the run over (`StoreError::LostOwnership`): the run cannot
    /// go on here, and nothing not yet in the log is acted on. It stays unfinished in the log and resumes
    /// on restart (or goes on with the engine that owns it now).
    fn abandon(&mut self, error: StoreError, ctx: &mut Context<Self>) {
        tracing::error!(run = %self.journal.state().run_id, %error, "event log append failed; run abandoned until restart");
        self.stop_all_stages();
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(Err(EngineError::Store {
                run: self.journal.state().run_id,
                source: error,
            }));
        }
        self.finished = true;
        ctx.stop();
    }

    /// Rebuilds the frontier from the folded state: after `RunAccepted` alone that is the initial frontier,
    /// after a restart it is where the log left the run.
    fn resume_frontier(&mut self, ctx: &mut Context<Self>) {
        let mut kinds = Vec::new();
        let mut retries = Vec::new();
        if self.journal.state().phase == RunPhase::Pending {
            kinds.push(EventKind::RunStarted);
        }
        for index in 0..self.plan.len() {
            let id = &self.plan.stage(index).id;
            let Some(stage) = self.journal.state().stages.get(id) else {
                continue;
            };
            self.phases[index] = stage.phase;
            self.skip_reasons[index] = stage.skip_reason;
            for skipped in &stage.skip {
                if let Some(excluded) = self.plan.index_of(skipped) {
                    self.excluded.insert(excluded);
                }
            }
            match stage.phase {
                StagePhase::Running => {
                    // The attempt was cut off by a restart: record that, and run the stage again.
                    let attempt = stage.attempts;
                    kinds.push(EventKind::StageFailed {
                        stage: id.clone(),
                        attempt,
                        error: StageError {
                            message: format!(
                                "attempt {attempt} was interrupted by an engine restart"
                            ),
                            class: ErrorClass::Internal,
                            retryable: true,
                            details: Value::Null,
                        },
                    });
                    self.phases[index] = StagePhase::Pending;
                    self.next_attempt[index] = attempt + 1;
                }
                StagePhase::Retrying => {
                    self.retrying_count += 1;
                    let now = now_micros();
                    let due = stage.retry_at.unwrap_or(now);
                    let delay = Duration::from_micros(due.saturating_sub(now).max(0) as u64);
                    retries.push(Effect::Retry {
                        index,
                        attempt: stage.attempts + 1,
                        delay,
                    });
                }
                StagePhase::Failed if self.ending.is_none() => {
                    let error = stage.error.clone();
                    self.ending = Some(Ending::Failed {
                        stage: id.clone(),
                        message: format!(
                            "stage {id:?} failed: {}",
                            error
                                .as_ref()
                                .map(|e| e.message.as_str())
                                .unwrap_or("no error recorded")
                        ),
                        details: error.map(|e| e.details).unwrap_or(Value::Null),
                    });
                }
                _ => {}
            }
        }
        // Stages whose dependencies have all finished are decided now; the rest wait for them.
        for pos in 0..self.plan.len() {
            let index = self.plan.order()[pos];
            if self.phases[index] == StagePhase::Pending {
                self.decide(index, &mut kinds);
            }
        }
        let mut effects = retries;
        self.fill(&mut kinds, &mut effects);
        self.commit(kinds, effects, ctx);
    }

    /// Looks at a pending stage whose dependencies may all have finished: it becomes ready, or is skipped.
    fn decide(&mut self, index: usize, kinds: &mut Vec<EventKind>) {
        if self.phases[index] != StagePhase::Pending
            || self.ready.contains(&(self.position[index], index))
        {
            return;
        }
        let deps = self.plan.dependencies(index);
        if deps.iter().any(|&d| !self.phases[d].is_terminal()) {
            return;
        }
        let upstream_failed = deps.iter().any(|&d| match self.phases[d] {
            StagePhase::Failed | StagePhase::Cancelled => true,
            StagePhase::Skipped => self.skip_reasons[d] != Some(SkipReason::BranchNotTaken),
            _ => false,
        });
        let branch_skipped = self.excluded.contains(&index)
            || (!deps.is_empty()
                && deps
                    .iter()
                    .all(|&d| self.skip_reasons[d] == Some(SkipReason::BranchNotTaken)));
        let reason = if upstream_failed {
            Some(SkipReason::UpstreamFailed)
        } else if branch_skipped {
            Some(SkipReason::BranchNotTaken)
        } else {
            None
        };
        match reason {
            Some(reason) => self.skip(index, reason, kinds),
            None => {
                self.ready.insert((self.position[index], index));
            }
        }
    }

    /// Records a skip, and decides the stages that waited on it.
    fn skip(&mut self, index: usize, reason: SkipReason, kinds: &mut Vec<EventKind>) {
        kinds.push(EventKind::StageSkipped {
            stage: self.plan.stage(index).id.clone(),
            reason,
        });
        self.phases[index] = StagePhase::Skipped;
        self.skip_reasons[index] = Some(reason);
        self.decide_dependants(index, kinds);
    }

    fn decide_dependants(&mut self, index: usize, kinds: &mut Vec<EventKind>) {
        let plan = self.plan.clone();
        for &d in plan.dependants(index) {
            self.decide(d, kinds);
        }
    }

    /// Starts ready stages up to the parallelism cap (none once the run is ending), and ends the run when
    /// nothing is left to do.
    fn fill(&mut self, kinds: &mut Vec<EventKind>, effects: &mut Vec<Effect>) {
        if self.finished {
            return;
        }
        let cap = self.plan.spec().parallelism.max(1);
        while self.ending.is_none() && self.running_count < cap {
            let Some((_, index)) = self.ready.pop_first() else {
                break;
            };
            let attempt = self.next_attempt[index];
            if self.templated[index] {
                // The input renders from the folded state: what was decided so far must be in it.
                self.record(std::mem::take(kinds));
            }
            match self.render_input(index, attempt) {
                Ok(input) => {
                    // The journal masks the recorded copy; the component gets the input as rendered.
                    kinds.push(EventKind::StageStarted {
                        stage: self.plan.stage(index).id.clone(),
                        attempt,
                        input: input.clone(),
                    });
                    self.phases[index] = StagePhase::Running;
                    self.running_count += 1;
                    effects.push(Effect::Start {
                        index,
                        attempt,
                        input,
                    });
                }
                Err(error) => {
                    // The input cannot be built: the attempt fails without running; retrying cannot help.
                    let id = self.plan.stage(index).id.clone();
                    kinds.push(EventKind::StageStarted {
                        stage: id.clone(),
                        attempt,
                        input: Value::Null,
                    });
                    kinds.push(EventKind::StageFailed {
                        stage: id,
                        attempt,
                        error: error.clone(),
                    });
                    self.fail_for_good(index, error, kinds);
                }
            }
        }
        // Once the run is ending, a stage waiting for a retry will not get it.
        let idle = self.running_count == 0 && (self.ending.is_some() || self.retrying_count == 0);
        if idle && (self.ending.is_some() || self.ready.is_empty()) {
            self.conclude(kinds);
            effects.push(Effect::Finish);
        }
    }

    fn render_input(&self, index: usize, attempt: u32) -> Result<Value, StageError> {
        let stage = self.plan.stage(index);
        if !self.templated[index] {
            return Ok(stage.config.clone());
        }
        let mut context = self.context.clone();
        if let Value::Object(map) = &mut context {
            map.insert("stageId".into(), Value::String(stage.id.clone()));
            map.insert("attempt".into(), Value::from(attempt));
        }
        let stages = &self.journal.state().stages;
        let upstream = |id: &str| stages.get(id).and_then(|s| s.output.as_ref());
        let scope = Scope {
            input: &self.journal.state().inputs,
            upstream: &upstream,
            env: &self.env,
            context: &context,
        };
        template::build_input(&stage.config, &stage.input_mapping, &scope).map_err(|e| StageError {
            message: e.to_string(),
            class: ErrorClass::Template,
            retryable: false,
            details: Value::Null,
        })
    }

    /// A stage failed and will not be retried: fail fast.
    fn fail_for_good(&mut self, index: usize, error: StageError, kinds: &mut Vec<EventKind>) {
        self.phases[index] = StagePhase::Failed;
        let id = self.plan.stage(index).id.clone();
        if self.ending.is_none() {
            self.ending = Some(Ending::Failed {
                message: format!("stage {id:?} failed: {}", error.message),
                stage: id,
                details: error.details,
            });
        }
        self.decide_dependants(index, kinds);
    }

    /// The closing events: every stage that never ran is skipped, then the run's terminal event.
    fn conclude(&mut self, kinds: &mut Vec<EventKind>) {
        // The run's output is read from the folded state: the last outputs must be in it.
        self.record(std::mem::take(kinds));
        let plan = self.plan.clone();
        let ending = self.ending.clone();
        let after_failure = self.downstream_of_failure();
        for &index in plan.order() {
            if !self.phases[index].is_terminal() {
                let reason = if ending.is_some() && after_failure[index] {
                    SkipReason::UpstreamFailed
                } else {
                    SkipReason::RunEnded
                };
                kinds.push(EventKind::StageSkipped {
                    stage: plan.stage(index).id.clone(),
                    reason,
                });
                self.phases[index] = StagePhase::Skipped;
                self.skip_reasons[index] = Some(reason);
            }
        }
        match ending {
            Some(Ending::Failed {
                stage,
                message,
                details,
            }) => {
                kinds.push(EventKind::RunFailed {
                    error: RunError {
                        message,
                        stage: Some(stage),
                        details,
                    },
                });
            }
            None => {
                let output = self.run_output();
                match output_problems(self.plan.spec().output_schema.as_ref(), &output) {
                    None => kinds.push(EventKind::RunSucceeded { output }),
                    Some(problems) => kinds.push(EventKind::RunFailed {
                        error: RunError {
                            message: format!(
                                "the run's output does not match outputSchema: {}",
                                problems.join("; ")
                            ),
                            stage: None,
                            details: serde_json::json!({ "outputSchema": problems }),
                        },
                    }),
                }
            }
        }
        self.finished = true;
    }

    /// By plan index: whether a failed stage is upstream of the stage. One pass in topological order.
    fn downstream_of_failure(&self) -> Vec<bool> {
        let mut after = vec![false; self.plan.len()];
        for &index in self.plan.order() {
            after[index] = self
                .plan
                .dependencies(index)
                .iter()
                .any(|&d| after[d] || self.phases[d] == StagePhase::Failed);
        }
        after
    }

    /// The output of `outputStage`, else of the single sink stage, else an object keyed by sink stage id
    /// (sinks that did not succeed are left out).
    fn run_output(&self) -> Value {
        let output_of = |index: usize| {
            self.journal
                .state()
                .stages
                .get(&self.plan.stage(index).id)
                .and_then(|s| s.output.clone())
        };
        if let Some(id) = &self.plan.spec().output_stage {
            return self
                .plan
                .index_of(id)
                .and_then(output_of)
                .unwrap_or(Value::Null);
        }
        let sinks = self.plan.sinks();
        if let [only] = sinks.as_slice() {
            return output_of(*only).unwrap_or(Value::Null);
        }
        let mut map = Map::new();
        for index in sinks {
            if let Some(output) = output_of(index) {
                map.insert(self.plan.stage(index).id.clone(), output);
            }
        }
        Value::Object(map)
    }

    fn spawn_attempt(&mut self, index: usize, attempt: u32, input: Value, ctx: &mut Context<Self>) {
        let stage = self.plan.stage(index);
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
            plan: self.plan.clone(),
            registry: self.registry.clone(),
            inputs: Arc::new(self.journal.state().inputs.clone()),
            env: Arc::new(self.env.clone()),
            outputs: Arc::new(outputs),
            call_stack: vec![self.journal.state().pipeline.clone()],
        }
    }

    fn retry_due(&mut self, index: usize, attempt: u32, ctx: &mut Context<Self>) {
        if self.finished || self.phases[index] != StagePhase::Retrying {
            return;
        }
        self.phases[index] = StagePhase::Pending;
        self.retrying_count -= 1;
        self.next_attempt[index] = attempt;
        let mut kinds = Vec::new();
        let mut effects = Vec::new();
        if self.ending.is_none() {
            self.ready.insert((self.position[index], index));
        } else {
            // The run is failing: the retry will not happen.
            self.phases[index] = StagePhase::Failed;
        }
        self.fill(&mut kinds, &mut effects);
        self.commit(kinds, effects, ctx);
    }

    /// Ends the run now with `kind` (cancelled, timed out): running attempts are stopped, stages that did
    /// not run are skipped.
    fn interrupt(&mut self, kind: EventKind, ctx: &mut Context<Self>) {
        if self.finished {
            return;
        }
        self.stop_all_stages();
        self.running_count = 0;
        let mut kinds = Vec::new();
        for &index in self.plan.clone().order() {
            if matches!(self.phases[index], StagePhase::Pending) {
                kinds.push(EventKind::StageSkipped {
                    stage: self.plan.stage(index).id.clone(),
                    reason: SkipReason::RunEnded,
                });
            }
        }
        kinds.push(kind);
        self.finished = true;
        self.commit(kinds, vec![Effect::Finish], ctx);
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

    fn arm_run_timeout(&mut self, ctx: &mut Context<Self>) {
        let Some(limit_ms) = self.plan.spec().timeout_ms else {
            return;
        };
        let started = self.journal.state().started_at.unwrap_or_else(now_micros);
        let elapsed = Duration::from_micros(now_micros().saturating_sub(started).max(0) as u64);
        let limit = Duration::from_millis(limit_ms);
        let remaining = limit.saturating_sub(elapsed);
        ctx.run_later(remaining, move |act, ctx| {
            let message = format!("run exceeded its timeout of {}", humanize(limit));
            act.interrupt(EventKind::RunTimedOut { message }, ctx);
        });
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.resume_frontier(ctx);
        if !self.finished {
            self.arm_run_timeout(ctx);
        }
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
        self.running_count -= 1;
        if self.finished {
            return;
        }
        let id = self.plan.stage(index).id.clone();
        let mut kinds = Vec::new();
        let mut effects = Vec::new();
        match result {
            Ok(ComponentOutput { output, skip }) => {
                kinds.push(EventKind::StageSucceeded {
                    stage: id,
                    attempt,
                    output,
                    skip: skip.clone(),
                    reused_from: None,
                });
                self.phases[index] = StagePhase::Succeeded;
                for excluded in skip.iter().filter_map(|s| self.plan.index_of(s)) {
                    self.excluded.insert(excluded);
                }
                self.decide_dependants(index, &mut kinds);
            }
            Err(error) => {
                let retry_after = error.retry_after;
                let error = error.into_stage_error();
                let policy = self.plan.retry_policy(index);
                let retry = self.ending.is_none()
                    && policy.allows_retry(attempt, error.class, error.retryable);
                kinds.push(EventKind::StageFailed {
                    stage: id.clone(),
                    attempt,
                    error: error.clone(),
                });
                if retry {
                    // The remote side's `retry-after` is a floor under the policy's backoff.
                    let delay = policy
                        .delay(attempt, rand::random::<f64>())
                        .max(retry_after.unwrap_or_default());
                    let at = now_micros() + delay.as_micros() as i64;
                    kinds.push(EventKind::StageRetryScheduled {
                        stage: id,
                        attempt: attempt + 1,
                        at,
                    });
                    self.phases[index] = StagePhase::Retrying;
                    self.retrying_count += 1;
                    effects.push(Effect::Retry {
                        index,
                        attempt: attempt + 1,
                        delay,
                    });
                } else {
                    self.fail_for_good(index, error, &mut kinds);
                }
            }
        }
        self.fill(&mut kinds, &mut effects);
        self.commit(kinds, effects, ctx);
    }
}

impl Handler<StageLogged> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: StageLogged, ctx: &mut Self::Context) {
        if self.finished {
            return;
        }
        let kind = EventKind::StageLog {
            stage: self.plan.stage(msg.index).id.clone(),
            attempt: msg.attempt,
            level: msg.line.level,
            message: msg.line.message,
            data: msg.line.data,
        };
        self.commit(vec![kind], Vec::new(), ctx);
    }
}

impl Handler<CancelRun> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: CancelRun, ctx: &mut Self::Context) {
        self.interrupt(EventKind::RunCancelled { reason: msg.reason }, ctx);
    }
}

impl Handler<Relinquish> for RunActor {
    type Result = ();

    fn handle(&mut self, _msg: Relinquish, ctx: &mut Self::Context) {
        self.stop_all_stages();
        self.finished = true;
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(Err(EngineError::Relinquished {
                run: self.journal.state().run_id,
            }));
        }
        ctx.stop();
    }
}

pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// How `output` breaks the plan's `outputSchema`, one message per problem; `None` when there is no
/// schema or the output matches it.
fn output_problems(
    schema: Option<&serde_json::Value>,
    output: &serde_json::Value,
) -> Option<Vec<String>> {
    match crate::schema::problems(schema?, output, "output") {
        Ok(problems) => (!problems.is_empty()).then_some(problems),
        Err(problem) => Some(vec![format!("outputSchema: {problem}")]),
    }
}

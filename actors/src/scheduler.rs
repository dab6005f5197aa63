//! The run's scheduler: every DAG decision of a run, as a pure function.
//!
//! Given the plan, the run's folded state (`store::fold`) and what just happened (a [`Stimulus`]: the run
//! was taken up, an attempt ended, a retry came due, a cancel or the run's time limit), the scheduler
//! answers with a [`Decision`]: the events to append and the [`Effect`]s to carry out once they are in
//! the log. It does no I/O and reads no clock and no randomness: time and jitter come with the stimulus.
//! The run actor owns the plumbing (journal, durability, stage actors, timers) and calls it.
//!
//! What a stage is (its phase, skip reason, attempt number, output) is read from the state. Decisions
//! taken earlier in the same turn are not folded yet, so a turn keeps them beside the state until the
//! events are appended ([`Turn`]). To stay linear in stages, the scheduler keeps one index between turns,
//! the [`Frontier`]: which stages are ready, how many run or wait for a retry, which stages branch
//! decisions left out, and which failure ends the run. It is a pure function of plan and state
//! ([`Frontier::of`]), rebuilt from the state when the scheduler is made, and its unit tests check after
//! every decision that it still equals that function of the new state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use flowmason_store::{
    ErrorClass, EventKind, RunError, RunPhase, RunState, SkipReason, StageError, StagePhase,
    StageState,
};

use crate::attempt::humanize;
use crate::component::{ComponentError, ComponentOutput, LogLine};
use crate::plan::Plan;
use crate::redact::Redactor;
use crate::template::{self, Scope};

/// What happened to a run, for the scheduler to decide on.
#[derive(Debug)]
pub(crate) enum Stimulus {
    /// The run actor took the run up: after `RunAccepted` alone the run starts; after a restart it goes
    /// on where the log left it (an attempt that was running is recorded as interrupted and run again).
    Begin {
        /// Unix microseconds: when retries that were waiting are due, when the run's time limit runs out.
        now: i64,
    },
    /// An attempt of a stage ended.
    StageDone {
        index: usize,
        attempt: u32,
        result: Result<ComponentOutput, ComponentError>,
        /// Unix microseconds, for when a retry is due.
        now: i64,
        /// Drawn from `0..=1`: the part of the retry policy's jitter this retry gets.
        jitter: f64,
    },
    /// The timer of a retry fired: attempt `attempt` of the stage may start.
    RetryDue { index: usize, attempt: u32 },
    /// A running attempt's component logged a line.
    Logged {
        index: usize,
        attempt: u32,
        line: LogLine,
    },
    /// Someone asked for the run to stop: it ends `Cancelled`.
    Cancel { reason: String },
    /// The run's time limit (`timeoutMs`) ran out: it ends `TimedOut`.
    TimedOut,
}

/// Something to do once the events of the same decision are in the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Start attempt `attempt` of a stage with this input (as rendered: secrets are masked in the
    /// recorded copy only).
    Start {
        index: usize,
        attempt: u32,
        input: Value,
    },
    /// After `delay`, answer [`Stimulus::RetryDue`] for attempt `attempt` of the stage.
    ArmRetry {
        index: usize,
        attempt: u32,
        delay: Duration,
    },
    /// After `delay`, answer [`Stimulus::TimedOut`].
    ArmTimeout { delay: Duration },
    /// Stop every running attempt; their results, if any come, are not wanted.
    StopAttempts,
    /// The run's terminal event is in the log: report the outcome and stop.
    Finish,
}

/// The events to append, then the effects to carry out once they are as durable as the policy requires.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Decision {
    pub events: Vec<EventKind>,
    pub effects: Vec<Effect>,
}

/// How a run is ending once a stage failed for good: no new stages start, and the run fails when the
/// running ones have finished.
#[derive(Debug, Clone, PartialEq)]
struct Ending {
    /// The stage that failed first.
    index: usize,
    message: String,
    details: Value,
}

impl Ending {
    fn new(plan: &Plan, index: usize, error: Option<&StageError>) -> Ending {
        Ending {
            index,
            message: format!(
                "stage {:?} failed: {}",
                plan.stage(index).id,
                error
                    .map(|e| e.message.as_str())
                    .unwrap_or("no error recorded")
            ),
            details: error.map(|e| e.details.clone()).unwrap_or(Value::Null),
        }
    }
}

/// The scheduler's index over a run's state (see the module doc): a pure function of plan and state,
/// kept between turns so that a decision costs what it changes, not the size of the run.
#[derive(Debug, Clone, PartialEq)]
struct Frontier {
    /// Pending stages that may start, by position in the plan's topological order: their dependencies
    /// have finished and nothing skips them. Retries that came due join them.
    ready: BTreeSet<(usize, usize)>,
    /// Stages with an attempt running.
    running: usize,
    /// Stages waiting for a retry.
    retrying: usize,
    /// By plan index: a branch decision of a stage that succeeded left this stage out.
    excluded: Vec<bool>,
    /// By plan index: how many of the stage's dependencies have not finished. A stage is looked at
    /// only once this reaches zero, so a join of `n` branches costs `n`, not `n` squared.
    unfinished: Vec<usize>,
    ending: Option<Ending>,
}

impl Frontier {
    /// The frontier of `state`. `ready` holds no retry that came due: whether a timer fired is not in
    /// the state.
    fn of(plan: &Plan, position: &[usize], state: &RunState) -> Frontier {
        let mut frontier = Frontier {
            ready: BTreeSet::new(),
            running: 0,
            retrying: 0,
            excluded: vec![false; plan.len()],
            unfinished: vec![0; plan.len()],
            ending: None,
        };
        let mut first_failure: Option<(i64, usize)> = None;
        for (id, stage) in &state.stages {
            for skipped in &stage.skip {
                if let Some(index) = plan.index_of(skipped) {
                    frontier.excluded[index] = true;
                }
            }
            let Some(index) = plan.index_of(id) else {
                continue;
            };
            match stage.phase {
                StagePhase::Running => frontier.running += 1,
                StagePhase::Retrying => frontier.retrying += 1,
                StagePhase::Failed => {
                    let key = (stage.finished_at.unwrap_or(i64::MAX), position[index]);
                    if first_failure.is_none_or(|first| key < first) {
                        first_failure = Some(key);
                    }
                }
                _ => {}
            }
        }
        frontier.ending = first_failure.map(|(_, pos)| {
            let index = plan.order()[pos];
            let error = state.stages.get(&plan.stage(index).id);
            Ending::new(plan, index, error.and_then(|s| s.error.as_ref()))
        });
        let turn = Turn::new(state);
        for &index in plan.order() {
            frontier.unfinished[index] = plan
                .dependencies(index)
                .iter()
                .filter(|&&d| !turn.phase(plan, d).is_terminal())
                .count();
            if turn.phase(plan, index) == StagePhase::Pending
                && frontier.verdict(plan, &turn, index) == Some(Verdict::Ready)
            {
                frontier.ready.insert((position[index], index));
            }
        }
        frontier
    }

    /// What becomes of a pending stage: `None` while a dependency has not finished.
    fn verdict(&self, plan: &Plan, turn: &Turn<'_>, index: usize) -> Option<Verdict> {
        if self.unfinished[index] > 0 {
            return None;
        }
        let deps = plan.dependencies(index);
        let mut upstream_failed = false;
        let mut all_branch_not_taken = !deps.is_empty();
        for &d in deps {
            let phase = turn.phase(plan, d);
            if !phase.is_terminal() {
                return None;
            }
            let reason = turn.skip_reason(plan, d);
            upstream_failed |= match phase {
                StagePhase::Failed | StagePhase::Cancelled => true,
                StagePhase::Skipped => reason != Some(SkipReason::BranchNotTaken),
                _ => false,
            };
            all_branch_not_taken &= reason == Some(SkipReason::BranchNotTaken);
        }
        Some(if upstream_failed {
            Verdict::Skip(SkipReason::UpstreamFailed)
        } else if self.excluded[index] || all_branch_not_taken {
            Verdict::Skip(SkipReason::BranchNotTaken)
        } else {
            Verdict::Ready
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Ready,
    Skip(SkipReason),
}

/// What a turn has decided about a stage that the state does not show yet.
#[derive(Debug, Clone, Copy)]
struct Change {
    phase: StagePhase,
    skip_reason: Option<SkipReason>,
}

/// One decision in the making: the state as folded, and what this turn decided on top of it.
struct Turn<'s> {
    state: &'s RunState,
    events: Vec<EventKind>,
    effects: Vec<Effect>,
    changes: BTreeMap<usize, Change>,
    /// Where in `events` the output of a stage that succeeded in this turn is.
    succeeded: Option<(usize, usize)>,
    /// The run's terminal event is among `events`.
    concluded: bool,
}

impl<'s> Turn<'s> {
    fn new(state: &'s RunState) -> Turn<'s> {
        Turn {
            state,
            events: Vec::new(),
            effects: Vec::new(),
            changes: BTreeMap::new(),
            succeeded: None,
            concluded: false,
        }
    }

    fn stage(&self, plan: &Plan, index: usize) -> Option<&'s StageState> {
        self.state.stages.get(&plan.stage(index).id)
    }

    fn phase(&self, plan: &Plan, index: usize) -> StagePhase {
        match self.changes.get(&index) {
            Some(change) => change.phase,
            None => self.stage(plan, index).map(|s| s.phase).unwrap_or_default(),
        }
    }

    fn skip_reason(&self, plan: &Plan, index: usize) -> Option<SkipReason> {
        match self.changes.get(&index) {
            Some(change) => change.skip_reason,
            None => self.stage(plan, index).and_then(|s| s.skip_reason),
        }
    }

    /// The next attempt of a stage: one after the last one started.
    fn next_attempt(&self, plan: &Plan, index: usize) -> u32 {
        self.stage(plan, index).map(|s| s.attempts).unwrap_or(0) + 1
    }

    fn set(&mut self, index: usize, phase: StagePhase, skip_reason: Option<SkipReason>) {
        self.changes.insert(index, Change { phase, skip_reason });
    }

    /// The output of a stage that succeeded, with the run's secrets masked as the fold will hold it.
    fn output(&self, plan: &Plan, redactor: &Redactor, index: usize) -> Option<Value> {
        if let Some((stage, at)) = self.succeeded
            && stage == index
            && let Some(EventKind::StageSucceeded { output, .. }) = self.events.get(at)
        {
            let mut output = output.clone();
            redactor.redact_value(&mut output);
            return Some(output);
        }
        self.stage(plan, index).and_then(|s| s.output.clone())
    }

    fn finished(&self) -> bool {
        self.concluded || self.state.phase.is_terminal()
    }

    fn into_decision(self) -> Decision {
        Decision {
            events: self.events,
            effects: self.effects,
        }
    }
}

/// One run's scheduler (see the module doc).
pub(crate) struct Scheduler {
    plan: Arc<Plan>,
    /// By plan index: the position in the plan's topological order.
    position: Vec<usize>,
    /// By plan index: whether the input needs rendering (it has templates or an input mapping).
    templated: Vec<bool>,
    /// The run's values templates read as `{{run.*}}` (and `stageId`, `attempt` per attempt).
    context: Value,
    /// The run's environment: the plan's literal entries, overridden by the resolved ones.
    env: BTreeMap<String, String>,
    /// The run's secrets: an output read back in the turn that recorded it is masked as the fold masks it.
    redactor: Redactor,
    frontier: Frontier,
}

impl Scheduler {
    /// The scheduler of a run in `state` (just accepted, or taken up after a restart).
    pub(crate) fn new(
        plan: Arc<Plan>,
        state: &RunState,
        env: BTreeMap<String, String>,
        redactor: Redactor,
    ) -> Scheduler {
        let mut position = vec![0; plan.len()];
        for (pos, &index) in plan.order().iter().enumerate() {
            position[index] = pos;
        }
        let templated = plan
            .spec()
            .stages
            .iter()
            .map(|s| !s.input_mapping.is_empty() || template::has_templates(&s.config))
            .collect();
        // Canonical spellings only: templates map FlowMason's `run_id`/`stage_id` onto them.
        let context = serde_json::json!({
            "runId": state.run_id.to_string(),
            "pipeline": state.pipeline,
            "namespace": state.namespace,
            "generation": state.generation,
            "trigger": state.trigger.as_str(),
        });
        let mut all_env = plan.spec().env.clone();
        all_env.extend(env);
        let frontier = Frontier::of(&plan, &position, state);
        Scheduler {
            plan,
            position,
            templated,
            context,
            env: all_env,
            redactor,
            frontier,
        }
    }

    pub(crate) fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    pub(crate) fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// What to append and do about `stimulus`, given the run's folded `state`. The events must be
    /// appended and folded into the state the next call is given.
    pub(crate) fn decide(&mut self, state: &RunState, stimulus: Stimulus) -> Decision {
        let mut turn = Turn::new(state);
        if turn.finished() {
            return Decision::default();
        }
        match stimulus {
            Stimulus::Begin { now } => self.begin(&mut turn, now),
            Stimulus::StageDone {
                index,
                attempt,
                result,
                now,
                jitter,
            } => self.stage_done(&mut turn, index, attempt, result, now, jitter),
            Stimulus::RetryDue { index, attempt } => self.retry_due(&mut turn, index, attempt),
            Stimulus::Logged {
                index,
                attempt,
                line,
            } => turn.events.push(EventKind::StageLog {
                stage: self.plan.stage(index).id.clone(),
                attempt,
                level: line.level,
                message: line.message,
                data: line.data,
            }),
            Stimulus::Cancel { reason } => {
                self.interrupt(&mut turn, EventKind::RunCancelled { reason });
            }
            Stimulus::TimedOut => {
                let limit = Duration::from_millis(self.plan.spec().timeout_ms.unwrap_or(0));
                let message = format!("run exceeded its timeout of {}", humanize(limit));
                self.interrupt(&mut turn, EventKind::RunTimedOut { message });
            }
        }
        turn.into_decision()
    }

    fn begin(&mut self, turn: &mut Turn<'_>, now: i64) {
        if turn.state.phase == RunPhase::Pending {
            turn.events.push(EventKind::RunStarted);
        }
        let plan = self.plan.clone();
        // Attempts cut off by a restart are recorded as such and run again, before any other stage:
        // they ran together before, so they fit under the parallelism cap.
        let mut interrupted = Vec::new();
        for &index in plan.order() {
            let Some(stage) = turn.stage(&plan, index) else {
                continue;
            };
            match stage.phase {
                StagePhase::Running => {
                    let attempt = stage.attempts;
                    turn.events.push(EventKind::StageFailed {
                        stage: plan.stage(index).id.clone(),
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
                    turn.set(index, StagePhase::Pending, None);
                    self.frontier.running -= 1;
                    interrupted.push(index);
                }
                StagePhase::Retrying => {
                    let due = stage.retry_at.unwrap_or(now);
                    turn.effects.push(Effect::ArmRetry {
                        index,
                        attempt: stage.attempts + 1,
                        delay: Duration::from_micros(due.saturating_sub(now).max(0) as u64),
                    });
                }
                _ => {}
            }
        }
        // Stages whose dependencies have all finished are decided now; the rest wait for them.
        for &index in plan.order() {
            if turn.phase(&plan, index) == StagePhase::Pending {
                self.decide_stage(turn, index);
            }
        }
        if self.frontier.ending.is_none() {
            for index in interrupted {
                if self.frontier.ready.remove(&(self.position[index], index)) {
                    self.start(turn, index);
                }
            }
        }
        self.fill(turn);
        if let (false, Some(limit_ms)) = (turn.finished(), plan.spec().timeout_ms) {
            let started = turn.state.started_at.unwrap_or(now);
            let elapsed = Duration::from_micros(now.saturating_sub(started).max(0) as u64);
            turn.effects.push(Effect::ArmTimeout {
                delay: Duration::from_millis(limit_ms).saturating_sub(elapsed),
            });
        }
    }

    fn stage_done(
        &mut self,
        turn: &mut Turn<'_>,
        index: usize,
        attempt: u32,
        result: Result<ComponentOutput, ComponentError>,
        now: i64,
        jitter: f64,
    ) {
        let current = turn.stage(&self.plan, index).map(|s| (s.phase, s.attempts));
        if current != Some((StagePhase::Running, attempt)) {
            return; // an attempt this run no longer waits for
        }
        self.frontier.running -= 1;
        let id = self.plan.stage(index).id.clone();
        match result {
            Ok(ComponentOutput { output, skip }) => {
                for excluded in skip.iter().filter_map(|s| self.plan.index_of(s)) {
                    self.frontier.excluded[excluded] = true;
                }
                turn.succeeded = Some((index, turn.events.len()));
                turn.events.push(EventKind::StageSucceeded {
                    stage: id,
                    attempt,
                    output,
                    skip,
                    reused_from: None,
                });
                turn.set(index, StagePhase::Succeeded, None);
                self.decide_dependants(turn, index);
            }
            Err(error) => {
                let retry_after = error.retry_after;
                let error = error.into_stage_error();
                let retry = match self.frontier.ending {
                    None => self.plan.retry_policy(index).retry_delay(
                        attempt,
                        error.class,
                        error.retryable,
                        retry_after,
                        jitter,
                    ),
                    Some(_) => None,
                };
                turn.events.push(EventKind::StageFailed {
                    stage: id.clone(),
                    attempt,
                    error: error.clone(),
                });
                if let Some(delay) = retry {
                    turn.events.push(EventKind::StageRetryScheduled {
                        stage: id,
                        attempt: attempt + 1,
                        at: now + delay.as_micros() as i64,
                    });
                    turn.set(index, StagePhase::Retrying, None);
                    self.frontier.retrying += 1;
                    turn.effects.push(Effect::ArmRetry {
                        index,
                        attempt: attempt + 1,
                        delay,
                    });
                } else {
                    self.fail_for_good(turn, index, error);
                }
            }
        }
        self.fill(turn);
    }

    fn retry_due(&mut self, turn: &mut Turn<'_>, index: usize, attempt: u32) {
        let due = turn.phase(&self.plan, index) == StagePhase::Retrying
            && turn.next_attempt(&self.plan, index) == attempt;
        // Once the run is failing, the retry will not happen: the stage ends with the run.
        if due && self.frontier.ending.is_none() {
            self.frontier.ready.insert((self.position[index], index));
            self.fill(turn);
        }
    }

    /// Ends the run now with `kind` (cancelled, timed out): running attempts are stopped, stages that
    /// did not run are skipped.
    fn interrupt(&mut self, turn: &mut Turn<'_>, kind: EventKind) {
        for &index in self.plan.order() {
            if turn.phase(&self.plan, index) == StagePhase::Pending {
                turn.events.push(EventKind::StageSkipped {
                    stage: self.plan.stage(index).id.clone(),
                    reason: SkipReason::RunEnded,
                });
            }
        }
        turn.events.push(kind);
        turn.concluded = true;
        self.frontier.ready.clear();
        self.frontier.running = 0;
        turn.effects.push(Effect::StopAttempts);
        turn.effects.push(Effect::Finish);
    }

    /// Looks at a pending stage whose dependencies may all have finished: it becomes ready, or is
    /// skipped.
    fn decide_stage(&mut self, turn: &mut Turn<'_>, index: usize) {
        let key = (self.position[index], index);
        if turn.phase(&self.plan, index) != StagePhase::Pending
            || self.frontier.ready.contains(&key)
        {
            return;
        }
        match self.frontier.verdict(&self.plan, turn, index) {
            None => {}
            Some(Verdict::Ready) => {
                self.frontier.ready.insert(key);
            }
            Some(Verdict::Skip(reason)) => {
                turn.events.push(EventKind::StageSkipped {
                    stage: self.plan.stage(index).id.clone(),
                    reason,
                });
                turn.set(index, StagePhase::Skipped, Some(reason));
                self.decide_dependants(turn, index);
            }
        }
    }

    /// A stage has just finished (succeeded, failed for good or skipped): its dependants have one
    /// unfinished dependency less, and those with none left are decided.
    fn decide_dependants(&mut self, turn: &mut Turn<'_>, index: usize) {
        let plan = self.plan.clone();
        for &d in plan.dependants(index) {
            self.frontier.unfinished[d] -= 1;
            self.decide_stage(turn, d);
        }
    }

    /// Starts ready stages up to the parallelism cap (none once the run is ending), and ends the run
    /// when nothing is left to do.
    fn fill(&mut self, turn: &mut Turn<'_>) {
        if turn.finished() {
            return;
        }
        let cap = self.plan.spec().parallelism.max(1);
        while self.frontier.ending.is_none() && self.frontier.running < cap {
            let Some((_, index)) = self.frontier.ready.pop_first() else {
                break;
            };
            self.start(turn, index);
        }
        // Once the run is ending, a stage waiting for a retry will not get it.
        let ending = self.frontier.ending.is_some();
        let idle = self.frontier.running == 0 && (ending || self.frontier.retrying == 0);
        if idle && (ending || self.frontier.ready.is_empty()) {
            self.conclude(turn);
            turn.effects.push(Effect::Finish);
        }
    }

    /// Starts the next attempt of a ready stage, or fails it when its input cannot be built.
    fn start(&mut self, turn: &mut Turn<'_>, index: usize) {
        let attempt = turn.next_attempt(&self.plan, index);
        let id = self.plan.stage(index).id.clone();
        if turn.phase(&self.plan, index) == StagePhase::Retrying {
            self.frontier.retrying -= 1;
        }
        match self.render_input(turn, index, attempt) {
            Ok(input) => {
                turn.events.push(EventKind::StageStarted {
                    stage: id,
                    attempt,
                    input: input.clone(),
                });
                turn.set(index, StagePhase::Running, None);
                self.frontier.running += 1;
                turn.effects.push(Effect::Start {
                    index,
                    attempt,
                    input,
                });
            }
            Err(error) => {
                // The input cannot be built: the attempt fails without running; retrying cannot help.
                turn.events.push(EventKind::StageStarted {
                    stage: id.clone(),
                    attempt,
                    input: Value::Null,
                });
                turn.events.push(EventKind::StageFailed {
                    stage: id,
                    attempt,
                    error: error.clone(),
                });
                self.fail_for_good(turn, index, error);
            }
        }
    }

    fn render_input(
        &self,
        turn: &Turn<'_>,
        index: usize,
        attempt: u32,
    ) -> Result<Value, StageError> {
        let stage = self.plan.stage(index);
        if !self.templated[index] {
            return Ok(stage.config.clone());
        }
        let mut context = self.context.clone();
        if let Value::Object(map) = &mut context {
            map.insert("stageId".into(), Value::String(stage.id.clone()));
            map.insert("attempt".into(), Value::from(attempt));
        }
        // The output recorded in this turn is not folded yet: it is read from the turn, masked.
        let fresh = turn.succeeded.and_then(|(stage, _)| {
            let output = turn.output(&self.plan, &self.redactor, stage)?;
            Some((self.plan.stage(stage).id.as_str(), output))
        });
        let stages = &turn.state.stages;
        let upstream = |id: &str| match &fresh {
            Some((fresh_id, output)) if *fresh_id == id => Some(output),
            _ => stages.get(id).and_then(|s| s.output.as_ref()),
        };
        let scope = Scope {
            input: &turn.state.inputs,
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
    fn fail_for_good(&mut self, turn: &mut Turn<'_>, index: usize, error: StageError) {
        turn.set(index, StagePhase::Failed, None);
        if self.frontier.ending.is_none() {
            self.frontier.ending = Some(Ending::new(&self.plan, index, Some(&error)));
        }
        self.decide_dependants(turn, index);
    }

    /// The closing events: every stage that never ran is skipped, then the run's terminal event.
    fn conclude(&mut self, turn: &mut Turn<'_>) {
        let plan = self.plan.clone();
        let ending = self.frontier.ending.clone();
        let after_failure = self.downstream_of_failure(turn);
        for &index in plan.order() {
            if !turn.phase(&plan, index).is_terminal() {
                let reason = if ending.is_some() && after_failure[index] {
                    SkipReason::UpstreamFailed
                } else {
                    SkipReason::RunEnded
                };
                turn.events.push(EventKind::StageSkipped {
                    stage: plan.stage(index).id.clone(),
                    reason,
                });
                turn.set(index, StagePhase::Skipped, Some(reason));
            }
        }
        self.frontier.ready.clear();
        let terminal = match ending {
            Some(Ending {
                index,
                message,
                details,
            }) => EventKind::RunFailed {
                error: RunError {
                    message,
                    stage: Some(plan.stage(index).id.clone()),
                    details,
                },
            },
            None => {
                let output = self.run_output(turn);
                match output_problems(plan.spec().output_schema.as_ref(), &output) {
                    None => EventKind::RunSucceeded { output },
                    Some(problems) => EventKind::RunFailed {
                        error: RunError {
                            message: format!(
                                "the run's output does not match outputSchema: {}",
                                problems.join("; ")
                            ),
                            stage: None,
                            details: serde_json::json!({ "outputSchema": problems }),
                        },
                    },
                }
            }
        };
        turn.events.push(terminal);
        turn.concluded = true;
    }

    /// By plan index: whether a failed stage is upstream of the stage. One pass in topological order.
    fn downstream_of_failure(&self, turn: &Turn<'_>) -> Vec<bool> {
        let mut after = vec![false; self.plan.len()];
        for &index in self.plan.order() {
            after[index] = self
                .plan
                .dependencies(index)
                .iter()
                .any(|&d| after[d] || turn.phase(&self.plan, d) == StagePhase::Failed);
        }
        after
    }

    /// The output of `outputStage`, else of the single sink stage, else an object keyed by sink stage
    /// id (sinks that did not succeed are left out).
    fn run_output(&self, turn: &Turn<'_>) -> Value {
        if let Some(id) = &self.plan.spec().output_stage {
            return self
                .plan
                .index_of(id)
                .and_then(|index| turn.output(&self.plan, &self.redactor, index))
                .unwrap_or(Value::Null);
        }
        let sinks = self.plan.sinks();
        if let [only] = sinks.as_slice() {
            return turn
                .output(&self.plan, &self.redactor, *only)
                .unwrap_or(Value::Null);
        }
        let mut map = Map::new();
        for index in sinks {
            if let Some(output) = turn.output(&self.plan, &self.redactor, index) {
                map.insert(self.plan.stage(index).id.clone(), output);
            }
        }
        Value::Object(map)
    }
}

/// How `output` breaks the plan's `outputSchema`, one message per problem; `None` when there is no
/// schema or the output matches it.
fn output_problems(schema: Option<&Value>, output: &Value) -> Option<Vec<String>> {
    match crate::schema::problems(schema?, output, "output") {
        Ok(problems) => (!problems.is_empty()).then_some(problems),
        Err(problem) => Some(vec![format!("outputSchema: {problem}")]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use flowmason_store::{Event, RunId, Trigger};

    use super::*;
    use crate::plan::tests::stage;
    use crate::plan::{PlanSpec, RetryPolicy, StagePlan};

    fn spec(stages: Vec<StagePlan>) -> PlanSpec {
        PlanSpec {
            stages,
            parallelism: 10,
            timeout_ms: None,
            retry: RetryPolicy::default(),
            output_stage: None,
            env: BTreeMap::new(),
            env_from: Vec::new(),
            output_schema: None,
        }
    }

    /// A run of `spec` whose log holds `RunAccepted` and then `events`, and its scheduler, made from the
    /// fold as the run actor makes it. Event `n` is appended at Unix microsecond `n`.
    fn given(spec: PlanSpec, events: Vec<EventKind>) -> Given {
        given_with_secrets(spec, events, Redactor::default())
    }

    fn given_with_secrets(spec: PlanSpec, events: Vec<EventKind>, redactor: Redactor) -> Given {
        let plan = Arc::new(Plan::build(spec).expect("a valid plan"));
        let accepted = EventKind::RunAccepted {
            pipeline: "p".into(),
            namespace: "default".into(),
            generation: 1,
            trigger: Trigger::Manual,
            run_name: None,
            labels: BTreeMap::new(),
            plan: serde_json::to_value(plan.spec()).expect("a plan encodes"),
            inputs: json!({}),
        };
        let mut state = None;
        for (seq, kind) in std::iter::once(accepted).chain(events).enumerate() {
            let event = Event {
                seq: seq as u64,
                at: seq as i64,
                kind,
            };
            RunState::apply_to(&mut state, RunId::nil(), &event).expect("the given events fold");
        }
        let state = state.expect("RunAccepted folds into a state");
        let scheduler = Scheduler::new(plan, &state, BTreeMap::new(), redactor);
        Given { scheduler, state }
    }

    struct Given {
        scheduler: Scheduler,
        state: RunState,
    }

    struct When {
        given: Given,
        decision: Decision,
    }

    impl Given {
        fn when(mut self, stimulus: Stimulus) -> When {
            let decision = self.scheduler.decide(&self.state, stimulus);
            When {
                given: self,
                decision,
            }
        }
    }

    impl When {
        /// Asserts the decision, folds its events into the state (as the journal does) and checks that the
        /// scheduler's index still is the function of plan and state it claims to be.
        fn then(self, events: Vec<EventKind>, effects: Vec<Effect>) -> Given {
            assert_eq!(self.decision.events, events, "events");
            assert_eq!(self.decision.effects, effects, "effects");
            let Given {
                scheduler,
                mut state,
            } = self.given;
            for kind in events {
                let seq = state.last_seq + 1;
                let event = Event {
                    seq,
                    at: seq as i64,
                    kind,
                };
                state.apply(&event).expect("the decided events fold");
            }
            if !state.phase.is_terminal() {
                let rebuilt = Frontier::of(&scheduler.plan, &scheduler.position, &state);
                let frontier = &scheduler.frontier;
                assert_eq!(
                    (
                        frontier.running,
                        frontier.retrying,
                        &frontier.excluded,
                        &frontier.unfinished
                    ),
                    (
                        rebuilt.running,
                        rebuilt.retrying,
                        &rebuilt.excluded,
                        &rebuilt.unfinished
                    )
                );
                assert_eq!(frontier.ending, rebuilt.ending);
                // Beyond the state's ready stages, only retries that came due.
                let plan = &scheduler.plan;
                assert!(rebuilt.ready.is_subset(&frontier.ready));
                for &(_, index) in frontier.ready.difference(&rebuilt.ready) {
                    assert_eq!(
                        state.stage(&plan.stage(index).id).phase,
                        StagePhase::Retrying
                    );
                }
            }
            Given { scheduler, state }
        }
    }

    fn started(stage: &str, attempt: u32) -> EventKind {
        EventKind::StageStarted {
            stage: stage.into(),
            attempt,
            input: Value::Null,
        }
    }

    fn succeeded(stage: &str, attempt: u32, output: Value) -> EventKind {
        EventKind::StageSucceeded {
            stage: stage.into(),
            attempt,
            output,
            skip: Vec::new(),
            reused_from: None,
        }
    }

    fn failed(stage: &str, attempt: u32, error: ComponentError) -> EventKind {
        EventKind::StageFailed {
            stage: stage.into(),
            attempt,
            error: error.into_stage_error(),
        }
    }

    fn interrupted(stage: &str, attempt: u32) -> EventKind {
        EventKind::StageFailed {
            stage: stage.into(),
            attempt,
            error: StageError {
                message: format!("attempt {attempt} was interrupted by an engine restart"),
                class: ErrorClass::Internal,
                retryable: true,
                details: Value::Null,
            },
        }
    }

    fn skipped(stage: &str, reason: SkipReason) -> EventKind {
        EventKind::StageSkipped {
            stage: stage.into(),
            reason,
        }
    }

    fn start(index: usize, attempt: u32) -> Effect {
        Effect::Start {
            index,
            attempt,
            input: Value::Null,
        }
    }

    fn done(index: usize, attempt: u32, result: Result<Value, ComponentError>) -> Stimulus {
        Stimulus::StageDone {
            index,
            attempt,
            result: result.map(ComponentOutput::from),
            now: 1_000,
            jitter: 0.0,
        }
    }

    fn begin() -> Stimulus {
        Stimulus::Begin { now: 1_000 }
    }

    #[test]
    fn a_chain_runs_one_stage_after_the_other_and_ends_with_the_last_output() {
        given(
            spec(vec![
                stage("a", &[]),
                stage("b", &["a"]),
                stage("c", &["b"]),
            ]),
            vec![],
        )
        .when(begin())
        .then(
            vec![EventKind::RunStarted, started("a", 1)],
            vec![start(0, 1)],
        )
        .when(done(0, 1, Ok(json!(1))))
        .then(
            vec![succeeded("a", 1, json!(1)), started("b", 1)],
            vec![start(1, 1)],
        )
        .when(done(1, 1, Ok(json!(2))))
        .then(
            vec![succeeded("b", 1, json!(2)), started("c", 1)],
            vec![start(2, 1)],
        )
        .when(done(2, 1, Ok(json!(3))))
        .then(
            vec![
                succeeded("c", 1, json!(3)),
                EventKind::RunSucceeded { output: json!(3) },
            ],
            vec![Effect::Finish],
        );
    }

    #[test]
    fn a_fan_out_starts_no_more_stages_than_the_parallelism_cap() {
        let mut plan = spec(vec![
            stage("s", &[]),
            stage("a", &["s"]),
            stage("b", &["s"]),
            stage("c", &["s"]),
            stage("j", &["a", "b", "c"]),
        ]);
        plan.parallelism = 2;
        given(plan, vec![])
            .when(begin())
            .then(
                vec![EventKind::RunStarted, started("s", 1)],
                vec![start(0, 1)],
            )
            .when(done(0, 1, Ok(json!("s"))))
            .then(
                vec![
                    succeeded("s", 1, json!("s")),
                    started("a", 1),
                    started("b", 1),
                ],
                vec![start(1, 1), start(2, 1)],
            )
            .when(done(2, 1, Ok(json!("b"))))
            .then(
                vec![succeeded("b", 1, json!("b")), started("c", 1)],
                vec![start(3, 1)],
            )
            .when(done(1, 1, Ok(json!("a"))))
            .then(vec![succeeded("a", 1, json!("a"))], vec![])
            .when(done(3, 1, Ok(json!("c"))))
            .then(
                vec![succeeded("c", 1, json!("c")), started("j", 1)],
                vec![start(4, 1)],
            );
    }

    #[test]
    fn a_failed_attempt_is_retried_with_backoff_until_the_retries_are_used_up() {
        let mut plan = spec(vec![stage("a", &[])]);
        plan.retry = RetryPolicy {
            limit: 2,
            initial_ms: 100,
            factor: 2.0,
            max_ms: 10_000,
            jitter: 0.5,
            retry_on: Vec::new(),
        };
        let boom = || ComponentError::transient("boom");
        let retry_at = |attempt: u32, at: i64| EventKind::StageRetryScheduled {
            stage: "a".into(),
            attempt,
            at,
        };
        let arm = |attempt: u32, ms: u64| Effect::ArmRetry {
            index: 0,
            attempt,
            delay: Duration::from_millis(ms),
        };
        let given = given(plan, vec![]).when(begin()).then(
            vec![EventKind::RunStarted, started("a", 1)],
            vec![start(0, 1)],
        );
        // The whole jitter: 100 ms + 50%.
        let given = given
            .when(Stimulus::StageDone {
                index: 0,
                attempt: 1,
                result: Err(boom()),
                now: 1_000,
                jitter: 1.0,
            })
            .then(
                vec![failed("a", 1, boom()), retry_at(2, 151_000)],
                vec![arm(2, 150)],
            );
        // A timer of an attempt that is not the next one is not this retry's.
        let given = given
            .when(Stimulus::RetryDue {
                index: 0,
                attempt: 3,
            })
            .then(vec![], vec![])
            .when(Stimulus::RetryDue {
                index: 0,
                attempt: 2,
            })
            .then(vec![started("a", 2)], vec![start(0, 2)])
            .when(done(0, 2, Err(boom())))
            .then(
                vec![failed("a", 2, boom()), retry_at(3, 201_000)],
                vec![arm(3, 200)],
            )
            .when(Stimulus::RetryDue {
                index: 0,
                attempt: 3,
            })
            .then(vec![started("a", 3)], vec![start(0, 3)]);
        given.when(done(0, 3, Err(boom()))).then(
            vec![
                failed("a", 3, boom()),
                EventKind::RunFailed {
                    error: RunError {
                        message: "stage \"a\" failed: boom".into(),
                        stage: Some("a".into()),
                        details: Value::Null,
                    },
                },
            ],
            vec![Effect::Finish],
        );
    }

    #[test]
    fn a_retry_waits_at_least_as_long_as_the_remote_side_asked() {
        let mut plan = spec(vec![stage("a", &[])]);
        plan.retry.limit = 1;
        plan.retry.initial_ms = 100;
        let busy = || ComponentError::transient("busy").with_retry_after(Duration::from_secs(2));
        given(plan, vec![EventKind::RunStarted, started("a", 1)])
            .when(done(0, 1, Err(busy())))
            .then(
                vec![
                    failed("a", 1, busy()),
                    EventKind::StageRetryScheduled {
                        stage: "a".into(),
                        attempt: 2,
                        at: 2_001_000,
                    },
                ],
                vec![Effect::ArmRetry {
                    index: 0,
                    attempt: 2,
                    delay: Duration::from_secs(2),
                }],
            );
    }

    #[test]
    fn the_run_times_out_when_its_limit_has_passed_since_it_started() {
        let mut plan = spec(vec![stage("a", &[]), stage("b", &["a"])]);
        plan.timeout_ms = Some(5_000);
        // Started at microsecond 1, taken up again 2 s later: 3 s are left.
        given(plan, vec![EventKind::RunStarted, started("a", 1)])
            .when(Stimulus::Begin { now: 2_000_001 })
            .then(
                vec![interrupted("a", 1), started("a", 2)],
                vec![
                    start(0, 2),
                    Effect::ArmTimeout {
                        delay: Duration::from_secs(3),
                    },
                ],
            )
            .when(Stimulus::TimedOut)
            .then(
                vec![
                    skipped("b", SkipReason::RunEnded),
                    EventKind::RunTimedOut {
                        message: "run exceeded its timeout of 5s".into(),
                    },
                ],
                vec![Effect::StopAttempts, Effect::Finish],
            );
    }

    #[test]
    fn a_cancel_stops_running_attempts_skips_the_rest_and_ignores_late_results() {
        let plan = spec(vec![
            stage("a", &[]),
            stage("b", &[]),
            stage("c", &["a", "b"]),
        ]);
        given(plan, vec![])
            .when(begin())
            .then(
                vec![EventKind::RunStarted, started("a", 1), started("b", 1)],
                vec![start(0, 1), start(1, 1)],
            )
            .when(Stimulus::Cancel {
                reason: "user".into(),
            })
            .then(
                vec![
                    skipped("c", SkipReason::RunEnded),
                    EventKind::RunCancelled {
                        reason: "user".into(),
                    },
                ],
                vec![Effect::StopAttempts, Effect::Finish],
            )
            .when(done(0, 1, Ok(json!(1))))
            .then(vec![], vec![])
            .when(Stimulus::Cancel {
                reason: "again".into(),
            })
            .then(vec![], vec![]);
    }

    #[test]
    fn a_branch_not_taken_is_skipped_with_everything_only_it_leads_to() {
        let plan = spec(vec![
            stage("cond", &[]),
            stage("yes", &["cond"]),
            stage("no", &["cond"]),
            stage("after_no", &["no"]),
            stage("join", &["yes", "no"]),
        ]);
        let branch = ComponentOutput {
            output: json!(true),
            skip: vec!["no".into()],
        };
        given(plan, vec![EventKind::RunStarted, started("cond", 1)])
            .when(Stimulus::StageDone {
                index: 0,
                attempt: 1,
                result: Ok(branch),
                now: 1_000,
                jitter: 0.0,
            })
            .then(
                vec![
                    EventKind::StageSucceeded {
                        stage: "cond".into(),
                        attempt: 1,
                        output: json!(true),
                        skip: vec!["no".into()],
                        reused_from: None,
                    },
                    skipped("no", SkipReason::BranchNotTaken),
                    skipped("after_no", SkipReason::BranchNotTaken),
                    started("yes", 1),
                ],
                vec![start(1, 1)],
            )
            .when(done(1, 1, Ok(json!("y"))))
            .then(
                vec![succeeded("yes", 1, json!("y")), started("join", 1)],
                vec![start(4, 1)],
            )
            .when(done(4, 1, Ok(json!("j"))))
            .then(
                vec![
                    succeeded("join", 1, json!("j")),
                    EventKind::RunSucceeded {
                        output: json!({ "join": "j" }),
                    },
                ],
                vec![Effect::Finish],
            );
    }

    #[test]
    fn a_resumed_run_reruns_the_interrupted_attempt_and_rearms_waiting_retries() {
        let plan = spec(vec![stage("a", &[]), stage("b", &["a"]), stage("r", &[])]);
        given(
            plan,
            vec![
                EventKind::RunStarted,
                started("a", 1),
                started("r", 1),
                succeeded("a", 1, json!(1)),
                failed("r", 1, ComponentError::transient("busy")),
                EventKind::StageRetryScheduled {
                    stage: "r".into(),
                    attempt: 2,
                    at: 5_000,
                },
                started("b", 1),
                failed("b", 1, ComponentError::transient("flaky")),
                EventKind::StageRetryScheduled {
                    stage: "b".into(),
                    attempt: 2,
                    at: 900,
                },
                started("b", 2),
            ],
        )
        .when(Stimulus::Begin { now: 1_000 })
        .then(
            vec![interrupted("b", 2), started("b", 3)],
            vec![
                Effect::ArmRetry {
                    index: 2,
                    attempt: 2,
                    delay: Duration::from_millis(4),
                },
                start(1, 3),
            ],
        );
    }

    #[test]
    fn a_failure_ends_the_run_once_the_running_stages_have_finished() {
        let plan = spec(vec![
            stage("a", &[]),
            stage("b", &[]),
            stage("c", &["a"]),
            stage("d", &["b"]),
        ]);
        let broken = || ComponentError::config("bad field").with_details(json!({ "field": "x" }));
        given(
            plan,
            vec![EventKind::RunStarted, started("a", 1), started("b", 1)],
        )
        .when(done(0, 1, Err(broken())))
        .then(
            vec![
                failed("a", 1, broken()),
                skipped("c", SkipReason::UpstreamFailed),
            ],
            vec![],
        )
        .when(done(1, 1, Ok(json!("b"))))
        .then(
            vec![
                succeeded("b", 1, json!("b")),
                skipped("d", SkipReason::RunEnded),
                EventKind::RunFailed {
                    error: RunError {
                        message: "stage \"a\" failed: bad field".into(),
                        stage: Some("a".into()),
                        details: json!({ "field": "x" }),
                    },
                },
            ],
            vec![Effect::Finish],
        );
    }

    #[test]
    fn an_input_renders_from_the_output_just_recorded_with_secrets_masked() {
        let mut b = stage("b", &["a"]);
        b.config = json!({ "token": "{{upstream.a.token}}" });
        let given = given_with_secrets(
            spec(vec![stage("a", &[]), b]),
            vec![EventKind::RunStarted, started("a", 1)],
            Redactor::new(["hunter22"]),
        );
        let output = json!({ "token": "hunter22" });
        let input = json!({ "token": crate::redact::MASK });
        given.when(done(0, 1, Ok(output.clone()))).then(
            vec![
                succeeded("a", 1, output),
                EventKind::StageStarted {
                    stage: "b".into(),
                    attempt: 1,
                    input: input.clone(),
                },
            ],
            vec![Effect::Start {
                index: 1,
                attempt: 1,
                input,
            }],
        );
    }

    #[test]
    fn an_input_that_cannot_render_fails_the_stage_without_running_it() {
        let mut b = stage("b", &["a"]);
        b.config = json!({ "x": "{{upstream.missing.field}}" });
        let decision = given(
            spec(vec![stage("a", &[]), b]),
            vec![EventKind::RunStarted, started("a", 1)],
        )
        .when(done(0, 1, Ok(json!(1))))
        .decision;
        let kinds: Vec<&str> = decision.events.iter().map(EventKind::name).collect();
        assert_eq!(
            kinds,
            ["StageSucceeded", "StageStarted", "StageFailed", "RunFailed"]
        );
        assert_eq!(decision.effects, vec![Effect::Finish]);
    }
}

//! The engine's front door: accepts runs, resumes unfinished ones after a restart, cancels on request.
//!
//! An `Engine` is created inside an actix `System`; its handle is `Send + Sync` and may be used from any
//! thread or tokio task. Each run is a `RunActor` on one of the engine's arbiters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use flowmason_store::{
    EngineSession, Event, EventKind, EventStore, QUARANTINED, ResumeState, RunError, RunId,
    RunState, Trigger,
};

use crate::component::{Component, Registry};
use crate::journal::{
    AppendGuard, DurabilityObserver, EngineError, EventObserver, Followers, Journal,
};
use crate::plan::{Plan, PlanSpec};
use crate::redact::Redactor;
use crate::run_actor::{CancelRun, Relinquish, RunActor, RunSetup};
use crate::run_states::RunStates;

/// Resolves a run's environment (`{{env.NAME}}`) when it starts and when it resumes, typically from the
/// plan's `envFrom` references (the state holds the recorded plan). Values are never recorded in events,
/// so a resumed run asks again. Asynchronous, since secrets may live behind an API (Kubernetes). An error
/// fails the run before any stage starts; its message names what is missing, never a value.
pub type EnvResolver =
    Arc<dyn Fn(&RunState) -> BoxFuture<'static, Result<ResolvedEnv, String>> + Send + Sync>;

/// A run's environment as an [`EnvResolver`] found it.
#[derive(Clone, Default)]
pub struct ResolvedEnv {
    /// Variables by name, added to the plan's literal `env`.
    pub vars: BTreeMap<String, String>,
    /// The values that are secret: masked in everything the run records.
    pub secrets: Vec<String>,
}

/// Never prints the values.
impl std::fmt::Debug for ResolvedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedEnv")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Stage outputs a run takes over from an earlier run instead of executing those stages (a rerun from
/// the failed stage).
#[derive(Debug, Clone)]
pub struct Reuse {
    /// The run the outputs come from; recorded on each reused stage's `StageSucceeded`.
    pub from: RunId,
    /// By stage id.
    pub stages: BTreeMap<String, ReusedStage>,
}

/// What a reused stage produced in the earlier run.
#[derive(Debug, Clone, PartialEq)]
pub struct ReusedStage {
    pub output: Value,
    /// The branch decision it took (stages it left out), so that the rerun takes the same branches.
    pub skip: Vec<String>,
}

impl Reuse {
    /// Every stage that succeeded in `state` (a finished run), to rerun from its failed stage on.
    pub fn succeeded_stages(state: &RunState) -> Reuse {
        let stages = state
            .stages
            .iter()
            .filter(|(_, s)| s.phase == flowmason_store::StagePhase::Succeeded)
            .map(|(id, s)| {
                (
                    id.clone(),
                    ReusedStage {
                        output: s.output.clone().unwrap_or(Value::Null),
                        skip: s.skip.clone(),
                    },
                )
            })
            .collect();
        Reuse {
            from: state.run_id,
            stages,
        }
    }
}

/// Settings of an engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// Arbiters (threads) that host run actors; runs are spread over them round-robin. 0 uses the arbiter
    /// of the thread that creates the engine.
    pub workers: usize,
    pub env: EnvResolver,
    /// Sees every recorded event (metrics); `None` costs nothing.
    pub observer: Option<EventObserver>,
    /// Sees how long each run's waits for durability took (benchmarks); `None` costs nothing.
    pub durability_observer: Option<DurabilityObserver>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 0,
            env: Arc::new(|_| Box::pin(async { Ok(ResolvedEnv::default()) })),
            observer: None,
            durability_observer: None,
        }
    }
}

/// What to run.
#[derive(Clone)]
pub struct RunRequest {
    /// The run's id; a fresh UUIDv7 when absent.
    pub run_id: Option<RunId>,
    pub pipeline: String,
    pub namespace: String,
    pub generation: i64,
    pub trigger: Trigger,
    pub run_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub plan: PlanSpec,
    pub inputs: Value,
    /// Resolved environment, added to what `EngineConfig::env` resolves (these win); never written to
    /// the event log.
    pub env: BTreeMap<String, String>,
    /// Secret values to mask in everything the run records, besides those `EngineConfig::env` reports.
    /// Never written anywhere.
    pub secrets: Vec<String>,
    /// Stages not to execute: recorded as succeeded with these outputs (marked `reused_from`) when the
    /// run is accepted, in the same atomic append, so a restart never runs them either.
    pub reuse: Option<Reuse>,
}

/// Leaves out environment and secret values.
impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("run_id", &self.run_id)
            .field("pipeline", &self.pipeline)
            .field("namespace", &self.namespace)
            .field("generation", &self.generation)
            .field("trigger", &self.trigger)
            .field("run_name", &self.run_name)
            .field("labels", &self.labels)
            .field("plan", &self.plan)
            .field("inputs", &self.inputs)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.len())
            .field("reuse", &self.reuse)
            .finish()
    }
}

impl RunRequest {
    pub fn new(pipeline: impl Into<String>, plan: PlanSpec, inputs: Value) -> RunRequest {
        RunRequest {
            run_id: None,
            pipeline: pipeline.into(),
            namespace: "default".into(),
            generation: 0,
            trigger: Trigger::Manual,
            run_name: None,
            labels: BTreeMap::new(),
            plan,
            inputs,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            reuse: None,
        }
    }
}

/// A run refused before it could start (its pipeline is missing, its spec invalid, a reference absent):
/// recorded as a run that failed, so that history, metrics and the pipeline's last run see it as they
/// see any other failed run.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub run_id: RunId,
    pub pipeline: String,
    pub namespace: String,
    pub generation: i64,
    pub trigger: Trigger,
    pub run_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub inputs: Value,
    /// Why, for machines (`PipelineNotFound`); kept as `reason` in the error's details.
    pub reason: String,
    /// Why, for people: names the field or object at fault.
    pub message: String,
}

/// How an engine takes up a run another engine had (see [`Engine::take_over`]), as the caller observed
/// the handover: what decides whether a run that keeps crashing engines is quarantined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TakeUp {
    /// The previous engine stopped running the run without handing it over (it died or stalled).
    pub after_crash: bool,
    /// That engine's session ([`Engine::session_id`]), when known.
    pub crashed_session: Option<u64>,
}

/// A run in progress: its id, its end, and (when asked for) its events as they are appended.
pub struct RunHandle {
    pub run_id: RunId,
    outcome: oneshot::Receiver<Result<RunState, EngineError>>,
    /// Every event of the run as it is appended (when the run was started with `observe`).
    pub events: Option<mpsc::UnboundedReceiver<Event>>,
    /// The state the run started or resumed with (when observed): what to show before its first decision,
    /// which the watch may already have replaced by the time its reader looks.
    pub initial: Option<RunState>,
    /// The run's folded state as it changes (when observed), followed since the run started; see
    /// [`Engine::watch`]. Dropping it unread spares the run copying its state.
    states: Option<crate::StateReceiver>,
    /// Set when the engine relinquished the run (see [`Engine::relinquish`]).
    relinquished: Option<Arc<AtomicBool>>,
}

impl RunHandle {
    /// Waits for the run to end; the state is the fold of all its events. The rest of the handle (a
    /// state reader not taken) is dropped at once, not when the run ends. A run the engine relinquished
    /// before it ended here ends with [`EngineError::Relinquished`].
    pub fn finished(
        self,
    ) -> impl std::future::Future<Output = Result<RunState, EngineError>> + Send + 'static {
        let run = self.run_id;
        let outcome = self.outcome;
        let relinquished = self.relinquished;
        async move {
            match outcome.await.unwrap_or(Err(EngineError::Lost { run })) {
                Err(_) if relinquished.is_some_and(|r| r.load(Ordering::Acquire)) => {
                    Err(EngineError::Relinquished { run })
                }
                outcome => outcome,
            }
        }
    }

    /// Splits off the event stream, leaving a handle that only waits for the end.
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events.take()
    }

    /// Splits off the run's folded state as the engine publishes it (when observed).
    pub fn take_states(&mut self) -> Option<crate::StateReceiver> {
        self.states.take()
    }
}

struct Inner {
    store: EventStore,
    registry: Arc<Registry>,
    env: EnvResolver,
    on_event: Option<EventObserver>,
    on_wait: Option<DurabilityObserver>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    runs: Mutex<HashMap<RunId, Active>>,
    /// This engine's session of the log; `None` when it could not be recorded (then nothing is
    /// quarantined).
    session: Option<EngineSession>,
    /// Whether this engine has resumed a run (see [`Engine::shutdown`]).
    resumed_any: AtomicBool,
    /// The folded state of each run observed live (see [`Engine::watch`]).
    states: RunStates,
    /// Asked before every append (see [`Engine::guard_appends`]).
    guard: std::sync::OnceLock<AppendGuard>,
}

/// A run whose actor runs in this engine.
struct Active {
    addr: Addr<RunActor>,
    /// Set when the engine relinquishes the run; also tells this actor's registration from a later one
    /// of the same run (taken over again).
    relinquished: Arc<AtomicBool>,
}

/// The engine handle; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Creates an engine. Must be called from a thread running an actix `System`.
    ///
    /// Begins an engine session of the log (see [`EventStore::begin_engine_session`]): until
    /// [`shutdown`](Self::shutdown), a stop of the process counts as a crash, and the unfinished runs are
    /// resumed as after a crash by the next engine.
    pub fn new(store: EventStore, registry: Registry, config: EngineConfig) -> Engine {
        let session = match store.begin_engine_session() {
            Ok(session) => {
                if session.after_crash {
                    tracing::warn!(
                        session = session.id,
                        "the previous engine on this event log did not shut down; its unfinished runs resume as after a crash"
                    );
                }
                Some(session)
            }
            Err(error) => {
                tracing::error!(%error, "cannot record the engine session; crashed runs will not be quarantined");
                None
            }
        };
        let arbiters = if config.workers == 0 {
            vec![Arbiter::current()]
        } else {
            (0..config.workers)
                .map(|_| Arbiter::new().handle())
                .collect()
        };
        Engine {
            inner: Arc::new(Inner {
                store,
                registry: Arc::new(registry),
                env: config.env,
                on_event: config.observer,
                on_wait: config.durability_observer,
                arbiters,
                next_arbiter: AtomicUsize::new(0),
                runs: Mutex::new(HashMap::new()),
                session,
                resumed_any: AtomicBool::new(false),
                states: RunStates::default(),
                guard: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Records that this engine stops gracefully (SIGTERM, end of `fm run`): the runs it leaves unfinished
    /// are then resumed normally by the next engine, however often that happens. Not calling it makes
    /// the stop count as a crash. An engine that began after a crash and resumed nothing leaves the
    /// crash on record, so that the runs in flight at it are still resumed as after a crash. The log is
    /// flushed afterwards (even when recording failed), so a graceful stop leaves nothing buffered.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        let ended = match self.inner.session {
            Some(session)
                if !session.after_crash || self.inner.resumed_any.load(Ordering::Acquire) =>
            {
                self.inner.store.end_engine_session(session.id)
            }
            _ => Ok(()),
        };
        let flushed = self.inner.store.flush();
        ended?;
        flushed?;
        Ok(())
    }

    /// This engine's session of the log (see [`EventStore::begin_engine_session`]): unique among the
    /// engines sharing the log; `None` when it could not be recorded.
    pub fn session_id(&self) -> Option<u64> {
        self.inner.session.map(|s| s.id)
    }

    /// The take-up of a restart: this engine's own session says whether the previous one crashed.
    fn restart(&self) -> TakeUp {
        self.inner
            .session
            .map(|s| TakeUp {
                after_crash: s.after_crash,
                crashed_session: s.crashed,
            })
            .unwrap_or_default()
    }

    /// Whether the run's actor runs in this engine.
    fn is_active(&self, run: RunId) -> bool {
        self.inner
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(&run)
    }

    /// Makes every later append of this engine ask `guard` first (see [`AppendGuard`]): set once,
    /// before the first run starts; a second guard is refused (returned).
    pub fn guard_appends(&self, guard: AppendGuard) -> Result<(), AppendGuard> {
        self.inner.guard.set(guard)
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn run_states(&self) -> &RunStates {
        &self.inner.states
    }

    /// Checks a plan against the DAG rules and the registry, without running anything.
    pub fn check(&self, spec: PlanSpec) -> Result<Plan, EngineError> {
        let plan = Plan::build(spec).map_err(EngineError::InvalidPlan)?;
        self.components(&plan)?;
        Ok(plan)
    }

    /// The component of each stage, by plan index.
    fn components(&self, plan: &Plan) -> Result<Vec<Arc<dyn Component>>, EngineError> {
        (0..plan.len())
            .map(|index| {
                let component = &plan.stage(index).component;
                self.inner
                    .registry
                    .get(component)
                    .ok_or_else(|| EngineError::UnknownComponent {
                        index,
                        component: component.clone(),
                    })
            })
            .collect()
    }

    /// Accepts a run: records `RunAccepted` (durably, as the policy says) and starts its actor.
    pub async fn start(&self, request: RunRequest) -> Result<RunHandle, EngineError> {
        self.start_inner(request, false).await
    }

    /// Like `start`, with every appended event also sent to `RunHandle::events`.
    pub async fn start_observed(&self, request: RunRequest) -> Result<RunHandle, EngineError> {
        self.start_inner(request, true).await
    }

    async fn start_inner(
        &self,
        request: RunRequest,
        observe: bool,
    ) -> Result<RunHandle, EngineError> {
        let plan = self.check(request.plan.clone())?;
        let run_id = request.run_id.unwrap_or_else(uuid::Uuid::now_v7);
        let plan_value = serde_json::to_value(plan.spec()).map_err(|e| EngineError::Encode {
            run: run_id,
            reason: e.to_string(),
        })?;
        let accepted = EventKind::RunAccepted {
            pipeline: request.pipeline,
            namespace: request.namespace,
            generation: request.generation,
            trigger: request.trigger,
            run_name: request.run_name,
            labels: request.labels,
            plan: plan_value,
            inputs: request.inputs,
        };
        let mut kinds = vec![accepted];
        if let Some(reuse) = request.reuse.filter(|r| !r.stages.is_empty()) {
            kinds.push(EventKind::RunStarted);
            // In plan order, so that the log reads like a run.
            let mut reused = reuse.stages;
            for &index in plan.order() {
                let id = &plan.stage(index).id;
                if let Some(stage) = reused.remove(id) {
                    kinds.push(EventKind::StageSucceeded {
                        stage: id.clone(),
                        attempt: 0,
                        output: stage.output,
                        skip: stage.skip,
                        reused_from: Some(reuse.from),
                    });
                }
            }
            if let Some(stage) = reused.into_keys().next() {
                return Err(EngineError::UnknownReusedStage { stage });
            }
        }
        let plan = Arc::new(plan);
        let (followers, events) = self.followers(observe);
        let journal = Journal::accept(
            self.inner.store.clone(),
            run_id,
            kinds,
            Some(plan.clone()),
            followers,
        )
        .await?;
        // The environment is resolved once the run is on record, so that a missing secret leaves a
        // failed run behind (visible in history and status) rather than nothing.
        let mut resolved = match (self.inner.env)(journal.state()).await {
            Ok(resolved) => resolved,
            Err(e) => return self.fail_at_start(journal, e, events).await,
        };
        resolved.vars.extend(request.env);
        resolved.secrets.extend(request.secrets);
        self.spawn(plan, journal, resolved, events)
    }

    /// Who follows a run's events: the engine's observer, and a stream for the run handle when the run
    /// is `observe`d.
    fn followers(&self, observe: bool) -> (Followers, Option<mpsc::UnboundedReceiver<Event>>) {
        let (stream, events) = if observe {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let followers = Followers {
            observer: self.inner.on_event.clone(),
            stream,
            waits: self.inner.on_wait.clone(),
            guard: self.inner.guard.get().cloned(),
        };
        (followers, events)
    }

    /// Ends a run whose environment cannot be resolved: `RunFailed` before any stage started. The handle
    /// reports the failed run as any other.
    async fn fail_at_start(
        &self,
        mut journal: Journal,
        message: String,
        events: Option<mpsc::UnboundedReceiver<Event>>,
    ) -> Result<RunHandle, EngineError> {
        let run = journal.run_id();
        let error = RunError {
            message: format!("environment: {message}"),
            stage: None,
            details: Value::Null,
        };
        journal
            .append_durable(vec![EventKind::RunFailed { error }])
            .await
            .map_err(|source| EngineError::Store { run, source })?;
        let (outcome_tx, outcome) = oneshot::channel();
        let _ = outcome_tx.send(Ok(journal.into_state()));
        Ok(RunHandle {
            run_id: run,
            outcome,
            events,
            initial: None,
            states: None,
            relinquished: None,
        })
    }

    /// Records a run that cannot start as `RunAccepted` (with an empty plan) followed by `RunFailed`, in
    /// one durable append, and shows both events to the observer. Idempotent: a run already in the log is
    /// left as it is and its fold returned.
    pub async fn reject(&self, rejection: Rejection) -> Result<RunState, EngineError> {
        let run = rejection.run_id;
        let store = &self.inner.store;
        if let Some(state) = store
            .fold(run)
            .map_err(|source| EngineError::Store { run, source })?
        {
            return Ok(state);
        }
        let kinds = vec![
            EventKind::RunAccepted {
                pipeline: rejection.pipeline,
                namespace: rejection.namespace,
                generation: rejection.generation,
                trigger: rejection.trigger,
                run_name: rejection.run_name,
                labels: rejection.labels,
                plan: serde_json::json!({ "stages": [] }),
                inputs: rejection.inputs,
            },
            EventKind::RunFailed {
                error: RunError {
                    message: rejection.message,
                    stage: None,
                    details: serde_json::json!({ "reason": rejection.reason }),
                },
            },
        ];
        let (followers, _) = self.followers(false);
        let journal = Journal::accept(store.clone(), run, kinds, None, followers).await?;
        Ok(journal.into_state())
    }

    /// Resumes every run the log holds that has not ended, as after a restart. A run whose record cannot
    /// be used (unreadable plan, unknown component) is ended `Failed` with the reason.
    pub async fn resume_all(&self) -> Result<Vec<RunHandle>, EngineError> {
        let mut handles = Vec::new();
        let mut taken = Vec::new();
        let cause = self.restart();
        for run in self.inner.store.unfinished_runs()? {
            if self.is_active(run) {
                continue;
            }
            if let Some(journal) = self.take_up(run, cause).await? {
                taken.push(journal);
            }
        }
        // One wait for every `RunResumed` just recorded: durable before any of the runs is acted on.
        if !taken.is_empty() {
            self.inner.store.sync().await?;
        }
        for journal in taken {
            if let Some(handle) = self.continue_resumed(journal, false).await? {
                handles.push(handle);
            }
        }
        Ok(handles)
    }

    /// Resumes one unfinished run from its events; `None` when it has already ended or does not exist.
    pub async fn resume(
        &self,
        run: RunId,
        observe: bool,
    ) -> Result<Option<RunHandle>, EngineError> {
        let Some(journal) = self.take_up(run, self.restart()).await? else {
            return Ok(None);
        };
        journal
            .sync()
            .await
            .map_err(|source| EngineError::Store { run, source })?;
        self.continue_resumed(journal, observe).await
    }

    /// Takes over a run another engine sharing the log had (an operator replica gaining the run's shard),
    /// observed as [`resume`](Self::resume)`(run, true)`: first brings this process's view of the run up
    /// to date with the log ([`EventStore::catch_up`], which also lifts a [`StoreError::LostOwnership`]
    /// refusal from an earlier ownership), then records `RunResumed` with `cause.after_crash` and
    /// continues the run. `cause` decides quarantine: a run taken up after a crash whose last resume was
    /// also after a crash, by the session that crashed now (`cause.crashed_session`), is ended `Failed`
    /// as quarantined. `None` when there is nothing to take over: the run has ended, is unknown,
    /// unreadable or quarantined, or already runs in this engine.
    ///
    /// [`StoreError::LostOwnership`]: flowmason_store::StoreError::LostOwnership
    pub async fn take_over(
        &self,
        run: RunId,
        cause: TakeUp,
    ) -> Result<Option<RunHandle>, EngineError> {
        if self.is_active(run) {
            return Ok(None);
        }
        self.inner
            .store
            .catch_up(run)
            .await
            .map_err(|source| EngineError::Store { run, source })?;
        let Some(journal) = self.take_up(run, cause).await? else {
            return Ok(None);
        };
        journal
            .sync()
            .await
            .map_err(|source| EngineError::Store { run, source })?;
        self.continue_resumed(journal, true).await
    }

    /// The run's state as the log holds it now, for a run this engine does not run (another engine
    /// sharing the log may be appending to it): [`EventStore::catch_up`], then the fold, so that a
    /// lagging local index never makes it look older than it is. A run running in this engine is
    /// folded as it is (this engine is its writer).
    pub async fn fold_latest(&self, run: RunId) -> Result<Option<RunState>, EngineError> {
        if !self.is_active(run) {
            self.inner
                .store
                .catch_up(run)
                .await
                .map_err(|source| EngineError::Store { run, source })?;
        }
        self.fold(run)
    }

    /// Hands a run over: stops its actor at once (running attempts are cancelled, timers dropped)
    /// without appending anything and without ending it; its handle's outcome is
    /// [`EngineError::Relinquished`]. Once this returns, this engine appends nothing more to the run
    /// (an append its actor still tries is refused), and the store forgets its writer state of the run,
    /// so that this process can take it over again later ([`take_over`](Self::take_over)). A publish
    /// already made and still in flight is not recalled: it is stored when no other engine appended to
    /// the run first, and refused by fencing ([`StoreError::LostOwnership`]) when one did. Returns
    /// whether the run was running here.
    ///
    /// [`StoreError::LostOwnership`]: flowmason_store::StoreError::LostOwnership
    pub fn relinquish(&self, run: RunId) -> bool {
        let active = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&run);
        let Some(active) = active else {
            self.inner.store.relinquish(run);
            return false;
        };
        active.relinquished.store(true, Ordering::Release);
        self.inner.store.relinquish(run);
        self.inner.states.remove(run);
        active.addr.do_send(Relinquish);
        true
    }

    /// Folds an unfinished run and records that this session takes it up ([`Self::record_resume`]),
    /// without waiting for that to be durable; `None` when there is nothing to resume (ended, unknown,
    /// unreadable or quarantined: the last two are ended `Failed`).
    async fn take_up(&self, run: RunId, cause: TakeUp) -> Result<Option<Journal>, EngineError> {
        let store = &self.inner.store;
        let state = match store.fold(run) {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::error!(%run, error = %e, "cannot resume run");
                self.fail_unreadable(run, format!("the run's events cannot be read: {e}"))
                    .await?;
                return Ok(None);
            }
        };
        if state.phase.is_terminal() {
            return Ok(None);
        }
        let (followers, _) = self.followers(false);
        self.record_resume(
            Journal::resume(store.clone(), state, None, followers),
            cause,
        )
        .await
    }

    /// Starts a run taken up by [`Self::take_up`], once its `RunResumed` is durable.
    async fn continue_resumed(
        &self,
        mut journal: Journal,
        observe: bool,
    ) -> Result<Option<RunHandle>, EngineError> {
        let plan = match serde_json::from_value::<PlanSpec>(journal.state().plan.clone()) {
            Ok(spec) => match self.check(spec) {
                Ok(plan) => Arc::new(plan),
                Err(e) => {
                    self.fail_unusable(journal, format!("the run's plan cannot run: {e}"))
                        .await?;
                    return Ok(None);
                }
            },
            Err(e) => {
                self.fail_unusable(journal, format!("the run's plan cannot be read: {e}"))
                    .await?;
                return Ok(None);
            }
        };
        journal.set_plan(plan.clone());
        let env = match (self.inner.env)(journal.state()).await {
            Ok(env) => env,
            Err(e) => {
                self.fail_unusable(journal, format!("environment: {e}"))
                    .await?;
                return Ok(None);
            }
        };
        let (followers, events) = self.followers(observe);
        journal.follow(followers);
        self.spawn(plan, journal, env, events).map(Some)
    }

    /// Records that this engine session takes the run up again, and whether after a crash (`cause`; the
    /// caller waits for it to be durable before acting on the run). A run that the crashed session had
    /// resumed after a crash, and that was still in flight when that session crashed too, is not resumed
    /// a third time: it is ended `Failed` as quarantined (`None`), so that whatever in it brings the
    /// process down cannot do so again.
    async fn record_resume(
        &self,
        mut journal: Journal,
        cause: TakeUp,
    ) -> Result<Option<Journal>, EngineError> {
        let run = journal.run_id();
        let Some(session) = self.inner.session else {
            return Ok(Some(journal));
        };
        if let Some(previous) = journal.state().last_resume
            && quarantine(cause, previous)
        {
            let error = quarantine_error(previous);
            tracing::error!(%run, pipeline = %journal.state().pipeline, reason = %error.message, "run quarantined");
            self.fail_with(journal, error).await?;
            return Ok(None);
        }
        let resumed = EventKind::RunResumed {
            session: session.id,
            after_crash: cause.after_crash,
        };
        match journal.append(vec![resumed]) {
            Ok(_) => {}
            // Ended meanwhile (cancelled by another path): nothing to resume.
            Err(e) if e.is_run_ended() => return Ok(None),
            Err(source) => return Err(EngineError::Store { run, source }),
        }
        self.inner.resumed_any.store(true, Ordering::Release);
        Ok(Some(journal))
    }

    /// Ends a run that cannot be resumed as it is recorded (its plan cannot be read or run, its
    /// environment cannot be resolved): `RunFailed` with the reason.
    async fn fail_unusable(&self, journal: Journal, message: String) -> Result<(), EngineError> {
        self.fail_with(
            journal,
            RunError {
                message,
                stage: None,
                details: Value::Null,
            },
        )
        .await
    }

    async fn fail_with(&self, mut journal: Journal, error: RunError) -> Result<(), EngineError> {
        let run = journal.run_id();
        match journal
            .append_durable(vec![EventKind::RunFailed { error }])
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_run_ended() => Ok(()),
            Err(source) => Err(EngineError::Store { run, source }),
        }
    }

    /// Ends a run whose events cannot be read (so not folded, and not shown to the observer, which needs
    /// the run's state): `RunFailed` with the reason, appended to the log directly.
    async fn fail_unreadable(&self, run: RunId, message: String) -> Result<(), EngineError> {
        let error = RunError {
            message,
            stage: None,
            details: Value::Null,
        };
        match self
            .inner
            .store
            .append_durable(run, vec![EventKind::RunFailed { error }])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_run_ended() => Ok(()),
            Err(source) => Err(EngineError::Store { run, source }),
        }
    }

    fn spawn(
        &self,
        plan: Arc<Plan>,
        mut journal: Journal,
        env: ResolvedEnv,
        events: Option<mpsc::UnboundedReceiver<Event>>,
    ) -> Result<RunHandle, EngineError> {
        let run_id = journal.run_id();
        let components = self.components(&plan)?;
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let relinquished = Arc::new(AtomicBool::new(false));
        journal.stop_when(relinquished.clone());
        journal.mask(Redactor::new(env.secrets));
        // An observed run publishes its folded state for whoever follows it (the operator's status
        // writer), from the state it starts with.
        let (initial, states) = if events.is_some() {
            let (publisher, reader) = self.inner.states.register(journal.state());
            journal.publish_states(publisher);
            (Some(journal.state().clone()), Some(reader))
        } else {
            (None, None)
        };
        let engine = Arc::downgrade(&self.inner);
        let registration = relinquished.clone();
        let setup = RunSetup {
            plan,
            journal,
            env: env.vars,
            components,
            registry: self.inner.registry.clone(),
            outcome: outcome_tx,
            on_stop: Box::new(move || deregister(&engine, run_id, &registration)),
        };
        let arbiter = {
            let i =
                self.inner.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.inner.arbiters.len();
            &self.inner.arbiters[i]
        };
        // Registered under the lock so that a run ending at once cannot deregister before it is registered.
        let mut runs = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let addr = RunActor::start_in_arbiter(arbiter, move |_| RunActor::new(setup));
        runs.insert(
            run_id,
            Active {
                addr,
                relinquished: relinquished.clone(),
            },
        );
        Ok(RunHandle {
            run_id,
            outcome: outcome_rx,
            events,
            initial,
            states,
            relinquished: Some(relinquished),
        })
    }

    /// Ends a run that has not ended and is not running in this engine as `Cancelled`, without resuming
    /// it: for a run whose owner is gone (e.g. its PipelineRun was deleted while no operator ran), which
    /// nothing would otherwise ever end. Returns whether it ended the run; a run that is running here,
    /// has already ended or is not in the log is left alone.
    pub async fn cancel_unfinished(
        &self,
        run: RunId,
        reason: impl Into<String>,
    ) -> Result<bool, EngineError> {
        if self.is_active(run) {
            return Ok(false);
        }
        let store = &self.inner.store;
        let state = match store.fold(run) {
            Ok(Some(state)) if !state.phase.is_terminal() => state,
            Ok(_) => return Ok(false),
            Err(source) => return Err(EngineError::Store { run, source }),
        };
        let cancelled = EventKind::RunCancelled {
            reason: reason.into(),
        };
        let (followers, _) = self.followers(false);
        let mut journal = Journal::resume(store.clone(), state, None, followers);
        match journal.append_durable(vec![cancelled]).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_run_ended() => Ok(false),
            Err(source) => Err(EngineError::Store { run, source }),
        }
    }

    /// Asks a run to stop; it ends `Cancelled`. Returns false when the run is not running here.
    pub fn cancel(&self, run: RunId, reason: impl Into<String>) -> bool {
        let addr = self
            .inner
            .runs
            .lock()
            .ok()
            .and_then(|runs| runs.get(&run).map(|active| active.addr.clone()));
        match addr {
            Some(addr) => {
                addr.do_send(CancelRun {
                    reason: reason.into(),
                });
                true
            }
            None => false,
        }
    }

    /// Runs currently executing in this engine.
    pub fn running(&self) -> usize {
        self.inner.runs.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// Forgets a run whose actor stopped, unless the run was relinquished and registered again since (then
/// `registration` is not the one registered); the readers of its published state keep its last one.
fn deregister(engine: &std::sync::Weak<Inner>, run: RunId, registration: &Arc<AtomicBool>) {
    let Some(inner) = engine.upgrade() else {
        return;
    };
    let mut runs = inner
        .runs
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if runs
        .get(&run)
        .is_some_and(|active| Arc::ptr_eq(&active.relinquished, registration))
    {
        runs.remove(&run);
        inner.states.remove(run);
    }
}

/// Whether a run whose last resume was `previous` must be quarantined when taken up as `cause` says: it
/// is taken up after a crash, its last resume was after a crash too, and that resume's session is the
/// one that crashed now, so it was in flight at two consecutive crashes.
fn quarantine(cause: TakeUp, previous: ResumeState) -> bool {
    cause.after_crash && previous.after_crash && cause.crashed_session == Some(previous.session)
}

/// The error a quarantined run ends with; `details.reason` is [`QUARANTINED`].
fn quarantine_error(previous: ResumeState) -> RunError {
    let resumed_at = chrono::DateTime::from_timestamp_micros(previous.at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| previous.at.to_string());
    RunError {
        message: format!(
            "quarantined: in flight at 2 consecutive crashes of the engine (last resumed at {resumed_at}, \
             after the first); not resumed again, since something in it may be what brings the process down"
        ),
        stage: None,
        details: serde_json::json!({
            "reason": QUARANTINED,
            "crashes": 2,
            "lastResumedAt": resumed_at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resumed(session: u64, after_crash: bool) -> ResumeState {
        ResumeState {
            at: 1_700_000_000_000_000,
            session,
            after_crash,
        }
    }

    /// The take-up of a restart whose session reports the previous one as `crashed`.
    fn restart_after(crashed: Option<u64>) -> TakeUp {
        TakeUp {
            after_crash: crashed.is_some(),
            crashed_session: crashed,
        }
    }

    #[test]
    fn a_restart_quarantines_only_a_run_the_crashed_session_had_resumed_after_a_crash() {
        // Given a run last resumed after a crash by session 4, when session 4 crashes too and the next
        // session takes the run up, then it is quarantined.
        assert!(quarantine(restart_after(Some(4)), resumed(4, true)));
        // A clean stop in between, or a clean resume, resets the count.
        assert!(!quarantine(restart_after(None), resumed(4, true)));
        assert!(!quarantine(restart_after(Some(4)), resumed(4, false)));
        // Resumed long ago by another session that crashed.
        assert!(!quarantine(restart_after(Some(4)), resumed(2, true)));
    }

    #[test]
    fn a_takeover_after_the_owners_crash_quarantines_a_run_that_owner_had_taken_up_after_a_crash() {
        // Given replica session 17 took the run over after a crash, when 17 dies and replica session 40
        // takes the run over from 17's expired shard, then the run is quarantined.
        let from_crashed_17 = TakeUp {
            after_crash: true,
            crashed_session: Some(17),
        };
        assert!(quarantine(from_crashed_17, resumed(17, true)));
        // The holder that died is not known (no session annotation): never quarantined.
        let unknown = TakeUp {
            after_crash: true,
            crashed_session: None,
        };
        assert!(!quarantine(unknown, resumed(17, true)));
    }

    #[test]
    fn a_graceful_takeover_never_quarantines() {
        // Given a run taken up after a crash by session 17, when 17 hands its shard back (a rolling
        // restart), then the next owner takes it up normally.
        let handed_over = TakeUp {
            after_crash: false,
            crashed_session: None,
        };
        assert!(!quarantine(handed_over, resumed(17, true)));
        assert!(!quarantine(TakeUp::default(), resumed(17, true)));
    }

    #[test]
    fn the_crash_of_a_session_other_than_the_last_resumer_does_not_quarantine() {
        // Given a run last resumed after a crash by session 17, when session 23 (which never ran it)
        // crashes and its shard is taken over, then the run is not quarantined: 17 is still running or
        // stopped cleanly.
        let from_crashed_23 = TakeUp {
            after_crash: true,
            crashed_session: Some(23),
        };
        assert!(!quarantine(from_crashed_23, resumed(17, true)));
    }

    #[test]
    fn the_quarantine_error_says_why_and_carries_the_reason() {
        let error = quarantine_error(resumed(4, true));
        assert_eq!(error.reason(), Some(QUARANTINED));
        assert!(
            error
                .message
                .starts_with("quarantined: in flight at 2 consecutive crashes"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("2023-11-14T22:13:20Z"),
            "{}",
            error.message
        );
    }
}

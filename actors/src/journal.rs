//! A run's journal: the one way the engine records what happens to a run.
//!
//! Every event of a run, whoever decides it (the engine accepting, resuming, rejecting or cancelling a
//! run; the run actor running it), goes the same way: its secret values are masked, it is appended to the
//! event log, folded into the run's state, and then shown to whoever follows the run ([`Journal::after_fold`]:
//! the engine's [`EventObserver`] and the run handle's event stream). Nothing is folded that is not in
//! the log, and nothing is shown that is not folded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use flowmason_store::{Event, EventKind, EventStore, RunId, RunState, StoreError};

use crate::plan::{Plan, PlanError};
use crate::redact::Redactor;
use crate::run_states::StatePublisher;

/// Why the engine could not accept, resume or finish a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid plan: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidPlan(Vec<PlanError>),
    #[error("stages[{index}].componentType: unknown component {component:?}")]
    UnknownComponent { index: usize, component: String },
    #[error("run {run}: {source}")]
    Store { run: RunId, source: StoreError },
    #[error("event log: {0}")]
    Log(#[from] StoreError),
    #[error("run {run}: the plan cannot be encoded: {reason}")]
    Encode { run: RunId, reason: String },
    #[error("run {run}: the engine stopped before the run ended")]
    Lost { run: RunId },
    #[error("reuse.stages: stage {stage:?} is not in the plan")]
    UnknownReusedStage { stage: String },
    /// The run was handed over (`Engine::relinquish`): this engine stopped it without ending it; it goes
    /// on wherever it is taken over.
    #[error("run {run}: relinquished by this engine; the run goes on where it is taken over")]
    Relinquished { run: RunId },
}

/// One event as the engine recorded it, shown to an [`EventObserver`].
pub struct Observation<'a> {
    pub event: &'a Event,
    /// The run's state just before the event was folded in (for `RunAccepted`, just after): a stage's
    /// attempt start and the run's start are there for durations, and the stages still running for a
    /// terminal event.
    pub before: &'a RunState,
    /// The component type of the stage the event is about, when it is about one.
    pub component: Option<&'a str>,
}

/// Sees every event the engine records, in order per run, on the thread that recorded it: how metrics
/// are fed without the engine knowing about them. Must be cheap and must not block (it runs on the
/// append path).
pub type EventObserver = Arc<dyn Fn(&Observation<'_>) + Send + Sync>;

/// Sees how long each wait for durability took (append until the log acknowledged it: the group fsync
/// under sled, the stream's ack under JetStream), i.e. how long a decision waited before it could be
/// acted on; `fm bench engine` reports its percentiles. Must be cheap.
pub type DurabilityObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Who follows a run's events as they are recorded.
#[derive(Clone, Default)]
pub(crate) struct Followers {
    /// The engine's observer (metrics, lifecycle notifications).
    pub observer: Option<EventObserver>,
    /// The run handle's event stream, when the run was started observed.
    pub stream: Option<mpsc::UnboundedSender<Event>>,
    /// The engine's durability-wait observer.
    pub waits: Option<DurabilityObserver>,
    /// The engine's append guard (see [`AppendGuard`]).
    pub guard: Option<AppendGuard>,
}

/// Whether this engine may still append to a run, asked before every append: false makes the append
/// fail [`StoreError::LostOwnership`] before anything reaches the log. An operator replica sharing the log
/// with others answers from its shard Leases' renew deadlines, so that a process that was stopped
/// (SIGSTOP, a long pause) appends nothing once its Leases may have been taken, even before its lease
/// manager has noticed.
pub type AppendGuard = Arc<dyn Fn(RunId) -> bool + Send + Sync>;

/// One run's events and their fold: masks, appends, folds, shows (see the module doc).
pub(crate) struct Journal {
    store: EventStore,
    state: RunState,
    /// Names the component of a stage event for the observer; `None` for a run whose plan is not known
    /// (rejected, or ended without being read).
    plan: Option<Arc<Plan>>,
    redactor: Redactor,
    followers: Followers,
    /// Where the folded state is published after each append, when the run is followed by state.
    states: Option<StatePublisher>,
    /// Set when the engine relinquishes the run: from then on every append is refused.
    relinquished: Option<Arc<AtomicBool>>,
}

impl Journal {
    /// Records a new run's first events (`RunAccepted`, and what is decided with it) in one append, and
    /// waits until they are as durable as the policy requires. They are not masked: the run's secrets are
    /// resolved only once it is on record (see [`Journal::mask`]).
    pub(crate) async fn accept(
        store: EventStore,
        run: RunId,
        kinds: Vec<EventKind>,
        plan: Option<Arc<Plan>>,
        followers: Followers,
    ) -> Result<Journal, EngineError> {
        let store_error = |source| EngineError::Store { run, source };
        let events = store
            .append(run, kinds)
            .map_err(store_error)?
            .durable()
            .await
            .map_err(store_error)?;
        let (first, rest) = events.split_first().ok_or(EngineError::Lost { run })?;
        let state = RunState::fold(run, std::slice::from_ref(first))
            .map_err(|e| store_error(e.into()))?
            .ok_or(EngineError::Lost { run })?;
        let mut journal = Journal {
            store,
            state,
            plan,
            redactor: Redactor::default(),
            followers,
            states: None,
            relinquished: None,
        };
        // There is no state before `RunAccepted`: it is shown with the state it made.
        journal.observe(first);
        journal.after_fold(first);
        for event in rest {
            journal.fold(event).map_err(store_error)?;
        }
        Ok(journal)
    }

    /// Takes up a run already in the log, from its fold.
    pub(crate) fn resume(
        store: EventStore,
        state: RunState,
        plan: Option<Arc<Plan>>,
        followers: Followers,
    ) -> Journal {
        Journal {
            store,
            state,
            plan,
            redactor: Redactor::default(),
            followers,
            states: None,
            relinquished: None,
        }
    }

    /// From now on, masks these secret values in every event before it is appended, so that neither the
    /// log nor the folded state (status, outputs seen downstream) holds one.
    pub(crate) fn mask(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    /// Who follows the run's events from now on.
    pub(crate) fn follow(&mut self, followers: Followers) {
        self.followers = followers;
    }

    /// Publishes the folded state through `publisher` after each append from now on.
    pub(crate) fn publish_states(&mut self, publisher: StatePublisher) {
        self.states = Some(publisher);
    }

    /// Refuses every append (as [`StoreError::LostOwnership`]: this engine no longer owns the run) once
    /// `relinquished` is set, so that nothing is appended after the engine handed the run over.
    pub(crate) fn stop_when(&mut self, relinquished: Arc<AtomicBool>) {
        self.relinquished = Some(relinquished);
    }

    /// Names the component of stage events for the observer from now on.
    pub(crate) fn set_plan(&mut self, plan: Arc<Plan>) {
        self.plan = Some(plan);
    }

    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub(crate) fn run_id(&self) -> RunId {
        self.state.run_id
    }

    /// The fold of every event recorded so far.
    pub(crate) fn state(&self) -> &RunState {
        &self.state
    }

    pub(crate) fn into_state(self) -> RunState {
        self.state
    }

    /// Masks, appends and folds `kinds`, showing each event to the followers; does not wait for
    /// durability. Returns whether something appended must be waited for ([`Journal::sync`]) before it
    /// is acted on.
    pub(crate) fn append(&mut self, mut kinds: Vec<EventKind>) -> Result<bool, StoreError> {
        if kinds.is_empty() {
            return Ok(false);
        }
        if self
            .relinquished
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire))
        {
            return Err(StoreError::LostOwnership {
                run: self.state.run_id,
            });
        }
        if let Some(guard) = &self.followers.guard
            && !guard(self.state.run_id)
        {
            return Err(StoreError::LostOwnership {
                run: self.state.run_id,
            });
        }
        if !self.redactor.is_empty() {
            kinds.iter_mut().for_each(|k| self.redactor.redact_event(k));
        }
        let appended = self.store.append(self.state.run_id, kinds)?;
        let must_wait = appended.must_wait();
        for event in &appended.events {
            self.fold(event)?;
        }
        // Once per append, not per event: a copy of the state per event would be quadratic in the run.
        if let Some(states) = &self.states {
            states.publish(&self.state);
        }
        Ok(must_wait)
    }

    /// [`append`](Self::append), then waits until the events are as durable as the policy requires.
    pub(crate) async fn append_durable(&mut self, kinds: Vec<EventKind>) -> Result<(), StoreError> {
        if self.append(kinds)? {
            self.sync().await?;
        }
        Ok(())
    }

    /// Waits until everything appended to this run's log so far is durable (never for another run's
    /// acknowledgements); owns what it needs, so that an actor can wait for it without borrowing the
    /// journal.
    pub(crate) fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + 'static {
        let (store, run) = (self.store.clone(), self.state.run_id);
        let waits = self.followers.waits.clone();
        async move {
            let Some(waits) = waits else {
                return store.sync_run(run).await;
            };
            let started = Instant::now();
            let synced = store.sync_run(run).await;
            waits(started.elapsed());
            synced
        }
    }

    /// Folds one appended event in: shown to the observer with the state before it, then to the
    /// followers of the folded state.
    fn fold(&mut self, event: &Event) -> Result<(), StoreError> {
        self.observe(event);
        self.state.apply(event)?;
        self.after_fold(event);
        Ok(())
    }

    /// Shows an event to the engine's observer, with the journal's state as `before`.
    fn observe(&self, event: &Event) {
        if let Some(observer) = &self.followers.observer {
            observer(&Observation {
                event,
                before: &self.state,
                component: self.component(event),
            });
        }
    }

    /// The one place where whoever follows the folded state hears of an event, once it is in the log and
    /// in [`Journal::state`].
    fn after_fold(&self, event: &Event) {
        if let Some(stream) = &self.followers.stream {
            let _ = stream.send(event.clone());
        }
    }

    fn component(&self, event: &Event) -> Option<&str> {
        let plan = self.plan.as_deref()?;
        let index = plan.index_of(event.kind.stage()?)?;
        Some(plan.stage(index).component.as_str())
    }
}

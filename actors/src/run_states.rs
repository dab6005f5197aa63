//! Each live run's folded state, published as it changes: what a status writer (the operator's
//! PipelineRun status) reads instead of folding the run's events a second time.
//!
//! The run actor folds every event it records into its `RunState` and then publishes the result here
//! (one `tokio::sync::watch` per run), so a reader always sees the state the engine acts on, with its
//! secret values already masked. A watch keeps only the latest state: a reader that is slower than the
//! run skips intermediate states, never the last one. Only runs started or resumed observed (see
//! [`Engine::start_observed`]) publish, and only while someone reads (the run's handle holds the first
//! reader, see `RunHandle::take_states`): a copy of the state per recorded batch is linear in the run's
//! size, which a 20,000-stage `fm run`, observed for its progress but not reading states, must not pay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use flowmason_store::{RunId, RunState, RunSummary};

use crate::engine::Engine;
use crate::journal::EngineError;

/// A run's folded state as published by the engine; the channel closes when the run's actor stops
/// (its last value is then the run's final state).
pub type StateReceiver = watch::Receiver<RunState>;

/// One run's published state.
struct Published {
    sender: watch::Sender<RunState>,
    /// Whether a state went unpublished because nobody read: from then on the channel's value may be
    /// stale, and a new reader is answered from the log instead.
    skipped: Mutex<bool>,
}

impl Published {
    fn skipped(&self) -> MutexGuard<'_, bool> {
        self.skipped.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The publishing side of one run's state, held by its run actor.
pub(crate) struct StatePublisher {
    published: Arc<Published>,
}

impl StatePublisher {
    /// Shows `state` to the run's readers; with none, copies nothing and marks the channel stale.
    pub(crate) fn publish(&self, state: &RunState) {
        let mut skipped = self.published.skipped();
        if self.published.sender.receiver_count() > 0 {
            self.published.sender.send_replace(state.clone());
        } else {
            *skipped = true;
        }
    }
}

/// The published state of every run live in one engine, by run id.
#[derive(Default)]
pub(crate) struct RunStates {
    runs: Mutex<HashMap<RunId, Arc<Published>>>,
}

impl RunStates {
    /// Registers a run starting (or resuming) with `state`: what its actor publishes through, and the
    /// first reader (for the run's handle).
    pub(crate) fn register(&self, state: &RunState) -> (StatePublisher, StateReceiver) {
        let (sender, receiver) = watch::channel(state.clone());
        let published = Arc::new(Published {
            sender,
            skipped: Mutex::new(false),
        });
        self.lock().insert(state.run_id, published.clone());
        (StatePublisher { published }, receiver)
    }

    /// Forgets a run whose actor stopped; its readers keep its last state.
    pub(crate) fn remove(&self, run: RunId) {
        self.lock().remove(&run);
    }

    /// A new reader of a live run, unless a state went unpublished (then `None`).
    fn subscribe(&self, run: RunId) -> Option<StateReceiver> {
        let published = self.lock().get(&run).cloned()?;
        let skipped = published.skipped();
        (!*skipped).then(|| published.sender.subscribe())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RunId, Arc<Published>>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Engine {
    /// A run's state as the event log holds it (the fold of its events); `None` when the log has no such
    /// run. For a run live in this engine, [`Engine::watch`] follows the state without reading the log.
    pub fn fold(&self, run: RunId) -> Result<Option<RunState>, EngineError> {
        self.store()
            .fold(run)
            .map_err(|source| EngineError::Store { run, source })
    }

    /// Follows a run's folded state: live while the run runs observed in this engine and has been
    /// followed since it started (its handle's reader, [`crate::RunHandle::take_states`], kept), then
    /// closed with its final state. Any other run is answered with its fold from the log on a closed
    /// channel; `None` when the log has no such run.
    pub fn watch(&self, run: RunId) -> Result<Option<StateReceiver>, EngineError> {
        if let Some(receiver) = self.run_states().subscribe(run) {
            return Ok(Some(receiver));
        }
        Ok(self.fold(run)?.map(|state| watch::channel(state).1))
    }

    /// The runs of the event log that have not ended (running here or not), as summaries.
    pub fn unfinished_runs(&self) -> Result<Vec<RunSummary>, EngineError> {
        let store = self.store();
        store
            .unfinished_runs()?
            .into_iter()
            .filter_map(|run| store.summary(run).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(EngineError::from)
    }

    /// Waits until everything appended to the log so far is durable, whatever the durability policy
    /// (concurrent callers share one fsync).
    pub async fn sync(&self) -> Result<(), EngineError> {
        Ok(self.store().sync().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmason_store::{Event, EventKind, Trigger};

    fn accepted(run: RunId) -> RunState {
        let event = Event {
            seq: 0,
            at: 1,
            kind: EventKind::RunAccepted {
                pipeline: "p".into(),
                namespace: "default".into(),
                generation: 1,
                trigger: Trigger::Manual,
                run_name: None,
                labels: Default::default(),
                plan: serde_json::json!({"stages": []}),
                inputs: serde_json::Value::Null,
            },
        };
        RunState::fold(run, [&event]).expect("fold").expect("a run")
    }

    #[test]
    fn a_reader_sees_the_latest_published_state_and_the_last_one_after_the_run_is_gone() {
        let run = uuid::Uuid::now_v7();
        let states = RunStates::default();
        let mut state = accepted(run);
        let (publisher, _first) = states.register(&state);
        let mut reader = states.subscribe(run).expect("registered");
        state.generation = 2;
        publisher.publish(&state);
        state.generation = 3;
        publisher.publish(&state);
        assert!(reader.has_changed().expect("open"));
        assert_eq!(reader.borrow_and_update().generation, 3);
        states.remove(run);
        drop(publisher);
        assert!(states.subscribe(run).is_none());
        assert!(reader.has_changed().is_err(), "closed once the run is gone");
        assert_eq!(reader.borrow().generation, 3);
    }

    #[test]
    fn a_reader_that_comes_late_starts_from_the_current_state() {
        let run = uuid::Uuid::now_v7();
        let states = RunStates::default();
        let mut state = accepted(run);
        let (publisher, _first) = states.register(&state);
        state.generation = 7;
        publisher.publish(&state);
        let mut reader = states.subscribe(run).expect("registered");
        assert_eq!(reader.borrow_and_update().generation, 7);
    }

    #[test]
    fn nobody_reading_copies_nothing_and_a_later_reader_is_sent_to_the_log() {
        let run = uuid::Uuid::now_v7();
        let states = RunStates::default();
        let mut state = accepted(run);
        let (publisher, first) = states.register(&state);
        drop(first);
        state.generation = 7;
        publisher.publish(&state);
        assert!(
            states.subscribe(run).is_none(),
            "the channel holds a stale state"
        );
    }
}

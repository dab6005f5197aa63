//! Engine plans as the tests that drive the engine directly build them, and a run of one to its end
//! (`#[path = "support/plans.rs"] mod plans;`).

#![allow(dead_code)]

use std::collections::BTreeMap;

use flowmason_actors::{Engine, PlanSpec, RetryPolicy, RunRequest, StagePlan};
use flowmason_store::{Event, EventStore, RunState};
use serde_json::Value;

/// Stage `id` of `component` after `deps`, without config, timeout or retry of its own.
pub fn stage(id: &str, component: &str, deps: &[&str]) -> StagePlan {
    StagePlan {
        id: id.into(),
        component: component.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        config: Value::Null,
        input_mapping: BTreeMap::new(),
        timeout_ms: None,
        retry: None,
    }
}

/// [`stage`] with `config`.
pub fn configured(id: &str, component: &str, deps: &[&str], config: Value) -> StagePlan {
    with_config(stage(id, component, deps), config)
}

/// `s` with its config replaced by `config`.
pub fn with_config(mut s: StagePlan, config: Value) -> StagePlan {
    s.config = config;
    s
}

/// A plan of `stages`: parallelism 10, no timeout, the default retry policy, no env.
pub fn plan(stages: Vec<StagePlan>) -> PlanSpec {
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

/// Runs `spec` with `inputs` on `engine` to its end: the final state and every event `store` holds of it.
pub async fn run_to_end(
    engine: &Engine,
    store: &EventStore,
    spec: PlanSpec,
    inputs: Value,
) -> (RunState, Vec<Event>) {
    let state = engine
        .start(RunRequest::new("test", spec, inputs))
        .await
        .expect("start")
        .finished()
        .await
        .expect("end");
    let events = store.events(state.run_id).expect("events");
    (state, events)
}

//! The FlowMason execution engine: plans as DAGs, one `RunActor` per run and one `StageActor` per stage
//! attempt, with parallelism, retries, timeouts and cancellation. Every transition is appended to the
//! event log before it is acted on. Knows nothing of Kubernetes.

mod attempt;
pub mod component;
pub mod engine;
mod journal;
pub mod limits;
pub mod nested;
pub mod plan;
pub mod redact;
mod run_actor;
pub mod run_states;
mod scheduler;
pub mod schema;
mod stage_actor;
pub mod template;

pub use component::{
    Component, ComponentError, ComponentOutput, LogLine, Registry, RunView, StageContext,
    canonical_name,
};
pub use engine::{
    Engine, EngineConfig, EnvResolver, Rejection, ResolvedEnv, Reuse, ReusedStage, RunHandle,
    RunRequest, TakeUp,
};
pub use journal::{AppendGuard, DurabilityObserver, EngineError, EventObserver, Observation};
pub use plan::{EnvRef, EnvRefKind, Plan, PlanError, PlanSpec, RetryPolicy, StagePlan};
pub use redact::Redactor;
pub use run_states::StateReceiver;

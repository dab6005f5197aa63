//! The execution plan: what a run executes, as data (`PlanSpec`, recorded in `RunAccepted`) and as a
//! checked DAG (`Plan`) the run actor walks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use flowmason_store::ErrorClass;

/// The default cap on stages running at once in one run.
pub const DEFAULT_PARALLELISM: usize = 10;

/// A run's plan as data. It is what `RunAccepted` records, so a run resumes with exactly the plan it
/// started with, whatever happened to its Pipeline since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    pub stages: Vec<StagePlan>,
    /// Most stages running at once.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// The whole run's time limit, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The retry policy of every stage that has none of its own.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The stage whose output is the run's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_stage: Option<String>,
    /// Environment entries with literal values (`env[].value`). Secret-sourced entries are resolved when
    /// the run starts or resumes and never appear here, since the plan is recorded in the event log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment entries whose values are read from a Secret or ConfigMap when the run starts or
    /// resumes. Only the references are recorded, never the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvRef>,
    /// JSON Schema (Draft 7) the run's output must match: a run whose stages all succeeded but whose
    /// output breaks it ends `Failed`, naming each problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

/// An environment variable whose value is read, when a run starts or resumes, from a key of a Secret or
/// ConfigMap (`env[].valueFrom`, or an LLM provider's `secretRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvRef {
    /// The variable's name, `{{env.NAME}}`.
    pub name: String,
    pub kind: EnvRefKind,
    /// The Secret's or ConfigMap's name.
    pub source: String,
    pub key: String,
    /// A missing key gives no variable instead of failing the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// The pipeline field this entry came from (`env[0].valueFrom.secretKeyRef`), for error messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// What an [`EnvRef`] reads from. A Secret's values are redacted from everything the run records; a
/// ConfigMap's are not secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvRefKind {
    Secret,
    ConfigMap,
}

fn default_parallelism() -> usize {
    DEFAULT_PARALLELISM
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagePlan {
    pub id: String,
    /// The registered component that runs this stage.
    pub component: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The component's input fields; string values may hold templates.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    /// Fields added to or overriding `config`, each a template (or a literal).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_mapping: BTreeMap<String, Value>,
    /// Time limit of one attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Overrides the plan's retry policy for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// How failed attempts are retried: `limit` extra attempts, waiting `initial * factor^(n-1)` (capped at
/// `max`) before attempt `n + 1`, with up to `jitter` of that delay added at random.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    #[serde(default)]
    pub limit: u32,
    #[serde(default = "default_initial_ms")]
    pub initial_ms: u64,
    #[serde(default = "default_factor")]
    pub factor: f64,
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    /// Fraction (0..=1) of the delay added at random, so that retries of many runs spread out.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Error classes to retry; empty means every class that is retryable by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<ErrorClass>,
}

fn default_initial_ms() -> u64 {
    1_000
}
fn default_factor() -> f64 {
    2.0
}
fn default_max_ms() -> u64 {
    60_000
}
fn default_jitter() -> f64 {
    0.1
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            limit: 0,
            initial_ms: default_initial_ms(),
            factor: default_factor(),
            max_ms: default_max_ms(),
            jitter: default_jitter(),
            retry_on: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether a failure of `attempt` (1-based) with this class and retryability gets another attempt.
    fn allows_retry(&self, attempt: u32, class: ErrorClass, retryable: bool) -> bool {
        if attempt > self.limit {
            return false;
        }
        if self.retry_on.is_empty() {
            retryable
        } else {
            self.retry_on.contains(&class)
        }
    }

    /// The delay before attempt `attempt + 1`, without jitter.
    fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63) as i32;
        let ms = (self.initial_ms as f64) * self.factor.max(1.0).powi(exp);
        Duration::from_millis(ms.min(self.max_ms as f64) as u64)
    }

    /// The delay before attempt `attempt + 1`, with `jitter` drawn from `0..=1`.
    fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self.base_delay(attempt);
        base + base.mul_f64(self.jitter.clamp(0.0, 1.0) * jitter.clamp(0.0, 1.0))
    }

    /// Whether a failure of `attempt` gets another attempt and after how long: the policy's backoff, with
    /// the remote side's `retry_after` (e.g. an HTTP `Retry-After`) as a floor under it. One rule for DAG
    /// stages (the scheduler) and nested stages (`nested.rs`).
    pub fn retry_delay(
        &self,
        attempt: u32,
        class: ErrorClass,
        retryable: bool,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        self.allows_retry(attempt, class, retryable).then(|| {
            self.delay(attempt, jitter)
                .max(retry_after.unwrap_or_default())
        })
    }
}

/// A problem that makes a plan impossible to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("stages[{index}].id: duplicate stage id {id:?}")]
    DuplicateStage { index: usize, id: String },
    #[error("stages[{index}].dependsOn: stage {stage:?} depends on unknown stage {dependency:?}")]
    UnknownDependency {
        index: usize,
        stage: String,
        dependency: String,
    },
    #[error("stages: dependency cycle {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    #[error("parallelism: must be at least 1, got {0}")]
    Parallelism(usize),
    #[error("outputStageId: unknown stage {0:?}")]
    UnknownOutputStage(String),
    #[error("stages: a pipeline needs at least one stage")]
    Empty,
}

/// A plan checked to be a DAG, with its stages in a stable topological order.
#[derive(Debug, Clone)]
pub struct Plan {
    spec: PlanSpec,
    graph: DiGraph<usize, ()>,
    nodes: Vec<NodeIndex>,
    by_id: HashMap<String, usize>,
    /// Stage indexes in topological order, ties broken by declaration order.
    order: Vec<usize>,
    dependants: Vec<Vec<usize>>,
    dependencies: Vec<Vec<usize>>,
}

impl Plan {
    /// Checks the spec and builds the DAG; returns every problem found, not just the first.
    pub fn build(spec: PlanSpec) -> Result<Plan, Vec<PlanError>> {
        let mut errors = Vec::new();
        if spec.stages.is_empty() {
            errors.push(PlanError::Empty);
        }
        if spec.parallelism < 1 {
            errors.push(PlanError::Parallelism(spec.parallelism));
        }
        let mut by_id = HashMap::new();
        for (index, stage) in spec.stages.iter().enumerate() {
            if by_id.insert(stage.id.clone(), index).is_some() {
                errors.push(PlanError::DuplicateStage {
                    index,
                    id: stage.id.clone(),
                });
            }
        }
        let mut graph = DiGraph::with_capacity(spec.stages.len(), spec.stages.len());
        let nodes: Vec<NodeIndex> = (0..spec.stages.len()).map(|i| graph.add_node(i)).collect();
        let mut dependants = vec![Vec::new(); spec.stages.len()];
        let mut dependencies = vec![Vec::new(); spec.stages.len()];
        for (index, stage) in spec.stages.iter().enumerate() {
            for dependency in &stage.depends_on {
                match by_id.get(dependency) {
                    Some(&dep) => {
                        if !dependencies[index].contains(&dep) {
                            graph.add_edge(nodes[dep], nodes[index], ());
                            dependants[dep].push(index);
                            dependencies[index].push(dep);
                        }
                    }
                    None => errors.push(PlanError::UnknownDependency {
                        index,
                        stage: stage.id.clone(),
                        dependency: dependency.clone(),
                    }),
                }
            }
        }
        if let Some(out) = &spec.output_stage
            && !by_id.contains_key(out)
        {
            errors.push(PlanError::UnknownOutputStage(out.clone()));
        }
        for cycle in cycles(&graph, &spec) {
            errors.push(PlanError::Cycle { cycle });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let order = stable_topological_order(&dependencies, &dependants);
        Ok(Plan {
            spec,
            graph,
            nodes,
            by_id,
            order,
            dependants,
            dependencies,
        })
    }

    pub fn spec(&self) -> &PlanSpec {
        &self.spec
    }

    pub fn len(&self) -> usize {
        self.spec.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spec.stages.is_empty()
    }

    pub fn stage(&self, index: usize) -> &StagePlan {
        &self.spec.stages[index]
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Stage indexes in a stable topological order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn dependencies(&self, index: usize) -> &[usize] {
        &self.dependencies[index]
    }

    pub fn dependants(&self, index: usize) -> &[usize] {
        &self.dependants[index]
    }

    /// Whether `ancestor` is upstream of `stage` (reachable by following `dependsOn`).
    pub fn is_upstream(&self, ancestor: usize, stage: usize) -> bool {
        ancestor != stage
            && petgraph::algo::has_path_connecting(
                &self.graph,
                self.nodes[ancestor],
                self.nodes[stage],
                None,
            )
    }

    /// Stages nothing depends on; their outputs make the run's output when no output stage is set.
    pub fn sinks(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.dependants[i].is_empty())
            .collect()
    }

    /// The retry policy in force for a stage.
    pub fn retry_policy(&self, index: usize) -> &RetryPolicy {
        self.spec.stages[index]
            .retry
            .as_ref()
            .unwrap_or(&self.spec.retry)
    }
}

/// Every cycle of the graph, each named by its stages in dependency order and closed on its first stage.
fn cycles(graph: &DiGraph<usize, ()>, spec: &PlanSpec) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // Kosaraju's walks are iterative; petgraph's Tarjan recurses once per stage of a path and overflows
    // the stack on a long chain.
    for component in kosaraju_scc(graph) {
        let self_loop = component.len() == 1 && graph.contains_edge(component[0], component[0]);
        if component.len() < 2 && !self_loop {
            continue;
        }
        // Sets, not lists: a cycle may have thousands of stages.
        let members: HashSet<usize> = component.iter().map(|n| graph[*n]).collect();
        // Walk from the first-declared member along edges inside the component until we come back.
        let Some(&start) = members.iter().min() else {
            continue;
        };
        let mut path = vec![start];
        let mut on_path = HashSet::from([start]);
        let mut current = start;
        loop {
            let next = graph
                .neighbors(NodeIndex::new(current))
                .map(|n| graph[n])
                .filter(|n| members.contains(n))
                .min_by_key(|n| if *n == start { usize::MAX } else { *n });
            let Some(next) = next else { break };
            if next == start || !on_path.insert(next) {
                break;
            }
            path.push(next);
            current = next;
            if path.len() > members.len() {
                break;
            }
        }
        let mut names: Vec<String> = path.iter().map(|&i| spec.stages[i].id.clone()).collect();
        names.push(spec.stages[start].id.clone());
        found.push(names);
    }
    found.sort();
    found
}

/// Kahn's algorithm, always taking the lowest declaration index among the ready stages.
fn stable_topological_order(dependencies: &[Vec<usize>], dependants: &[Vec<usize>]) -> Vec<usize> {
    let mut remaining: Vec<usize> = dependencies.iter().map(Vec::len).collect();
    let mut ready: std::collections::BTreeSet<usize> = (0..remaining.len())
        .filter(|&i| remaining[i] == 0)
        .collect();
    let mut order = Vec::with_capacity(remaining.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &d in &dependants[next] {
            remaining[d] -= 1;
            if remaining[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn stage(id: &str, deps: &[&str]) -> StagePlan {
        StagePlan {
            id: id.into(),
            component: "noop".into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            config: Value::Null,
            input_mapping: BTreeMap::new(),
            timeout_ms: None,
            retry: None,
        }
    }

    fn spec(stages: Vec<StagePlan>) -> PlanSpec {
        PlanSpec {
            stages,
            parallelism: 4,
            timeout_ms: None,
            retry: RetryPolicy::default(),
            output_stage: None,
            env: BTreeMap::new(),
            env_from: Vec::new(),
            output_schema: None,
        }
    }

    #[test]
    fn topological_order_is_stable_by_declaration() {
        let plan = Plan::build(spec(vec![
            stage("c", &["a"]),
            stage("a", &[]),
            stage("b", &[]),
            stage("d", &["b", "c"]),
        ]))
        .expect("valid plan");
        let ids: Vec<&str> = plan
            .order()
            .iter()
            .map(|&i| plan.stage(i).id.as_str())
            .collect();
        assert_eq!(ids, ["a", "c", "b", "d"]);
        assert_eq!(plan.sinks(), vec![3]);
        assert!(plan.is_upstream(1, 3));
        assert!(!plan.is_upstream(2, 0));
    }

    #[test]
    fn cycle_is_named_by_its_stages() {
        let errors = Plan::build(spec(vec![
            stage("a", &["c"]),
            stage("b", &["a"]),
            stage("c", &["b"]),
            stage("d", &[]),
        ]))
        .expect_err("cycle");
        assert_eq!(
            errors,
            vec![PlanError::Cycle {
                cycle: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }]
        );
        assert_eq!(
            errors[0].to_string(),
            "stages: dependency cycle a -> b -> c -> a"
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let errors = Plan::build(spec(vec![stage("a", &["a"])])).expect_err("cycle");
        assert_eq!(
            errors,
            vec![PlanError::Cycle {
                cycle: vec!["a".into(), "a".into()]
            }]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec(vec![stage("a", &["x"]), stage("a", &[])]);
        s.parallelism = 0;
        let errors = Plan::build(s).expect_err("invalid");
        assert!(errors.contains(&PlanError::Parallelism(0)));
        assert!(errors.contains(&PlanError::DuplicateStage {
            index: 1,
            id: "a".into()
        }));
        assert!(errors.contains(&PlanError::UnknownDependency {
            index: 0,
            stage: "a".into(),
            dependency: "x".into()
        }));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            limit: 5,
            initial_ms: 100,
            factor: 2.0,
            max_ms: 500,
            jitter: 0.5,
            retry_on: vec![],
        };
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(3), Duration::from_millis(400));
        assert_eq!(p.base_delay(4), Duration::from_millis(500));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(150));
        assert!(p.allows_retry(5, ErrorClass::Transient, true));
        assert!(!p.allows_retry(6, ErrorClass::Transient, true));
        assert!(!p.allows_retry(1, ErrorClass::Config, false));
    }

    #[test]
    fn a_retry_waits_for_the_backoff_or_the_remote_retry_after_whichever_is_longer() {
        let p = RetryPolicy {
            limit: 2,
            initial_ms: 100,
            factor: 2.0,
            max_ms: 1_000,
            jitter: 0.0,
            retry_on: vec![],
        };
        let transient =
            |attempt, after| p.retry_delay(attempt, ErrorClass::Transient, true, after, 0.5);
        assert_eq!(transient(1, None), Some(Duration::from_millis(100)));
        assert_eq!(
            transient(2, Some(Duration::from_millis(50))),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            transient(1, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            transient(3, None),
            None,
            "attempt 3 is past the limit of 2 retries"
        );
        assert_eq!(p.retry_delay(1, ErrorClass::Config, false, None, 0.5), None);
    }
}

//! Synthetic pipeline shapes for the load harness (`fm bench`) and the criterion benchmarks, so that both
//! measure the same pipelines.

use std::collections::BTreeMap;
use std::str::FromStr;

use flowmason_actors::{PlanSpec, RetryPolicy, StagePlan};
use serde_json::{Value, json};

/// A synthetic pipeline shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chain(usize),
    Fanout(usize),
    Diamond,
}

impl FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shape {s:?}: expected chain:N, fanout:N or diamond");
        match s.split_once(':') {
            None if s == "diamond" => Ok(Shape::Diamond),
            Some(("chain", n)) => n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(Shape::Chain)
                .ok_or_else(bad),
            Some(("fanout", n)) => n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(Shape::Fanout)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// The form `FromStr` reads, so that a shape can be handed on to a child `fm bench`.
impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Chain(n) => write!(f, "chain:{n}"),
            Shape::Fanout(n) => write!(f, "fanout:{n}"),
            Shape::Diamond => f.write_str("diamond"),
        }
    }
}

impl Shape {
    /// (id, dependencies) of each stage.
    fn stages(self) -> Vec<(String, Vec<String>)> {
        match self {
            Shape::Chain(n) => (0..n)
                .map(|i| {
                    (
                        format!("s{i}"),
                        if i == 0 {
                            vec![]
                        } else {
                            vec![format!("s{}", i - 1)]
                        },
                    )
                })
                .collect(),
            Shape::Fanout(n) => {
                let mut stages = vec![("source".to_string(), vec![])];
                stages.extend((0..n).map(|i| (format!("f{i}"), vec!["source".to_string()])));
                stages.push((
                    "join".to_string(),
                    (0..n).map(|i| format!("f{i}")).collect(),
                ));
                stages
            }
            Shape::Diamond => vec![
                ("a".into(), vec![]),
                ("b".into(), vec!["a".into()]),
                ("c".into(), vec!["a".into()]),
                ("d".into(), vec!["b".into(), "c".into()]),
            ],
        }
    }

    pub fn plan(self, parallelism: usize, stage_ms: u64) -> PlanSpec {
        let (component, config) = if stage_ms > 0 {
            ("delay", json!({ "ms": stage_ms }))
        } else {
            ("noop", Value::Null)
        };
        PlanSpec {
            stages: self
                .stages()
                .into_iter()
                .map(|(id, depends_on)| StagePlan {
                    id,
                    component: component.into(),
                    depends_on,
                    config: config.clone(),
                    input_mapping: BTreeMap::new(),
                    timeout_ms: None,
                    retry: None,
                })
                .collect(),
            parallelism,
            timeout_ms: None,
            retry: RetryPolicy::default(),
            output_stage: None,
            env: BTreeMap::new(),
            env_from: Vec::new(),
            output_schema: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_build_their_dags() {
        assert_eq!("chain:3".parse::<Shape>(), Ok(Shape::Chain(3)));
        assert_eq!("fanout:2".parse::<Shape>(), Ok(Shape::Fanout(2)));
        assert_eq!("diamond".parse::<Shape>(), Ok(Shape::Diamond));
        assert!("chain:0".parse::<Shape>().is_err());
        assert!("ring:3".parse::<Shape>().is_err());
        for shape in [Shape::Chain(7), Shape::Fanout(3), Shape::Diamond] {
            assert_eq!(shape.to_string().parse::<Shape>(), Ok(shape));
        }
        let fanout = Shape::Fanout(2).plan(10, 0);
        assert_eq!(fanout.stages.len(), 4);
        assert_eq!(fanout.stages[3].depends_on, vec!["f0", "f1"]);
        assert!(flowmason_actors::Plan::build(Shape::Chain(50).plan(1, 0)).is_ok());
    }
}

//! "Is stage A upstream of stage B?" for validation, in time and memory linear in the pipeline for the
//! shapes pipelines have.
//!
//! Validation asks it for every stage a template or a control-flow list names. Materialising every stage's
//! ancestor set answers in O(1) but costs O(n²) memory and time on a chain (a 20,000-stage chain took more
//! than 6.9 GB). Here the questions are collected first and answered per named (ancestor) stage, with one
//! search downstream from it that never goes past the last asking stage in topological order: a stage
//! reading its direct dependency costs O(1), many stages reading one common ancestor cost one O(n + e)
//! search together, and memory stays O(n + e) in every case.
//!
//! The spec may be invalid (unknown dependencies, duplicate ids, cycles; the plan check reports those):
//! unknown ids are ignored, the first stage of a duplicated id wins, and stages on or behind a cycle have
//! no topological position: a search for one of them is not cut short (still O(n + e)), and nothing with
//! a position is reached through them.

use std::collections::{HashMap, HashSet};

use super::crd::StageSpec;

/// The dependency graph of a spec's stages, by declaration index.
pub struct Upstream<'a> {
    index: HashMap<&'a str, usize>,
    dependants: Vec<Vec<usize>>,
    /// Topological position of each stage; `usize::MAX` for stages on or behind a cycle.
    position: Vec<usize>,
}

impl<'a> Upstream<'a> {
    pub fn new(stages: &'a [StageSpec]) -> Upstream<'a> {
        let mut index = HashMap::with_capacity(stages.len());
        for (i, stage) in stages.iter().enumerate() {
            index.entry(stage.id.as_str()).or_insert(i);
        }
        let mut dependants = vec![Vec::new(); stages.len()];
        let mut remaining = vec![0usize; stages.len()];
        for (i, stage) in stages.iter().enumerate() {
            let mut seen = HashSet::with_capacity(stage.depends_on.len());
            for dep in &stage.depends_on {
                if let Some(&d) = index.get(dep.as_str())
                    && seen.insert(d)
                {
                    dependants[d].push(i);
                    remaining[i] += 1;
                }
            }
        }
        let mut position = vec![usize::MAX; stages.len()];
        let mut ready: Vec<usize> = (0..stages.len()).filter(|&i| remaining[i] == 0).collect();
        let mut next = 0;
        while let Some(i) = ready.pop() {
            position[i] = next;
            next += 1;
            for &d in &dependants[i] {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    ready.push(d);
                }
            }
        }
        Upstream {
            index,
            dependants,
            position,
        }
    }

    /// Answers every question `(ancestor, stage)`: whether `ancestor` is upstream of `stage` (reachable
    /// from it through `dependsOn`, not the stage itself). Questions naming an unknown id are answered
    /// false. The answers are in the order of the questions.
    pub fn answer(&self, questions: &[(&str, &str)]) -> Vec<bool> {
        let mut answers = vec![false; questions.len()];
        // Per ancestor: the stages asked about (by index) and where their answers go.
        let mut by_ancestor: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for (q, (ancestor, stage)) in questions.iter().enumerate() {
            if let (Some(&a), Some(&s)) = (self.index.get(ancestor), self.index.get(stage))
                && a != s
            {
                by_ancestor.entry(a).or_default().push((s, q));
            }
        }
        // Reused across searches: `seen[i] == round` marks stages reached in this search.
        let mut seen = vec![0usize; self.dependants.len()];
        let mut wanted = vec![0usize; self.dependants.len()];
        let mut stack = Vec::new();
        for (round, (ancestor, asked)) in by_ancestor.into_iter().enumerate() {
            let round = round + 1;
            let mut left = 0;
            for &(s, _) in &asked {
                if wanted[s] != round {
                    wanted[s] = round;
                    left += 1;
                }
            }
            // Nothing past the last asking stage can lead to one (unless a cycle hides positions).
            let horizon = asked
                .iter()
                .map(|&(s, _)| self.position[s])
                .max()
                .unwrap_or(0);
            stack.clear();
            stack.push(ancestor);
            seen[ancestor] = round;
            while let Some(i) = stack.pop() {
                if left == 0 {
                    break;
                }
                for &d in &self.dependants[i] {
                    if seen[d] == round || self.position[d] > horizon {
                        continue;
                    }
                    seen[d] = round;
                    if wanted[d] == round {
                        left -= 1;
                    }
                    stack.push(d);
                }
            }
            for (s, q) in asked {
                answers[q] = seen[s] == round;
            }
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(id: &str, deps: &[&str]) -> StageSpec {
        StageSpec {
            id: id.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..StageSpec::default()
        }
    }

    #[test]
    fn upstream_is_transitive_and_directed() {
        let stages = [
            stage("a", &[]),
            stage("b", &["a"]),
            stage("c", &["b"]),
            stage("d", &[]),
            stage("e", &["c", "d"]),
        ];
        let up = Upstream::new(&stages);
        let answers = up.answer(&[
            ("a", "e"),
            ("a", "c"),
            ("c", "a"),
            ("d", "e"),
            ("d", "c"),
            ("a", "a"),
            ("x", "a"),
            ("a", "x"),
            ("b", "c"),
        ]);
        assert_eq!(
            answers,
            [true, true, false, true, false, false, false, false, true]
        );
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_tolerated() {
        let stages = [
            stage("a", &["c", "ghost"]),
            stage("b", &["a"]),
            stage("c", &["b"]),
            stage("d", &["c"]),
            stage("e", &[]),
        ];
        let up = Upstream::new(&stages);
        assert_eq!(
            up.answer(&[("a", "d"), ("b", "a"), ("d", "a"), ("e", "d")]),
            [true, true, false, false]
        );
    }

    #[test]
    fn a_long_chain_reading_its_first_and_previous_stages() {
        let ids: Vec<String> = (0..5_000).map(|i| format!("s{i}")).collect();
        let stages: Vec<StageSpec> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| match i {
                0 => stage(id, &[]),
                _ => stage(id, &[ids[i - 1].as_str()]),
            })
            .collect();
        let up = Upstream::new(&stages);
        let mut questions = Vec::new();
        for i in 1..ids.len() {
            questions.push((ids[0].as_str(), ids[i].as_str()));
            questions.push((ids[i - 1].as_str(), ids[i].as_str()));
            questions.push((ids[i].as_str(), ids[i - 1].as_str()));
        }
        let answers = up.answer(&questions);
        for (q, answer) in questions.iter().zip(answers) {
            let (a, s) = (&q.0[1..], &q.1[1..]);
            let expected = a.parse::<usize>().unwrap() < s.parse::<usize>().unwrap();
            assert_eq!(answer, expected, "{q:?}");
        }
    }
}

//! History queries: newest-first listings of run summaries, served from the indexes with keyset pagination.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::event::{RunPhase, Trigger};
use crate::keys::{self, Index, POSITION_LEN, Position};
use crate::store::EventStore;
use crate::summary::RunSummary;

/// Page size when a query does not say.
pub const DEFAULT_QUERY_LIMIT: usize = 100;

/// Which runs to list. Every field narrows the result; the default lists all runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub namespace: Option<String>,
    pub pipeline: Option<String>,
    /// Any of these phases; empty means any phase.
    pub phases: Vec<RunPhase>,
    pub trigger: Option<Trigger>,
    /// Accepted at or after (Unix micros, inclusive).
    pub since: Option<i64>,
    /// Accepted before (Unix micros, exclusive).
    pub until: Option<i64>,
    /// Equality selector: every label must be present with this value.
    pub labels: BTreeMap<String, String>,
    /// Page size; 0 means [`DEFAULT_QUERY_LIMIT`].
    pub limit: usize,
    /// From the previous page, to get the next one.
    pub continue_token: Option<String>,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Present when there are more runs: pass it as [`RunQuery::continue_token`] for the next page.
    pub continue_token: Option<String>,
    /// Under JetStream, when the local index that answered lags behind the stream: how many of the
    /// stream's messages it has not read yet (runs and phases in them are not in this page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_lag: Option<u64>,
}

impl RunQuery {
    fn matches(&self, s: &RunSummary) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == s.namespace)
            && self.pipeline.as_ref().is_none_or(|p| *p == s.pipeline)
            && (self.phases.is_empty() || self.phases.contains(&s.phase))
            && self.trigger.is_none_or(|t| t == s.trigger)
            && self.since.is_none_or(|since| s.accepted_at >= since)
            && self.until.is_none_or(|until| s.accepted_at < until)
            && self.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
    }

    /// The most selective indexes that together hold every match.
    fn indexes(&self) -> Vec<Index<'_>> {
        match (&self.namespace, &self.pipeline) {
            (Some(namespace), Some(pipeline)) => vec![Index::Pipeline {
                namespace,
                pipeline,
            }],
            (None, Some(pipeline)) => vec![Index::PipelineAnyNamespace(pipeline)],
            _ if !self.phases.is_empty() => {
                let mut phases = self.phases.clone();
                phases.sort();
                phases.dedup();
                phases.into_iter().map(Index::Phase).collect()
            }
            (Some(namespace), None) => vec![Index::Namespace(namespace)],
            (None, None) => vec![Index::All],
        }
    }
}

/// The continue token of a position: opaque hex.
fn encode_token(pos: &Position) -> String {
    pos.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<Position, StoreError> {
    let bad = || StoreError::BadContinueToken(format!("{token:?} was not issued by this store"));
    if token.len() != POSITION_LEN * 2 || !token.is_ascii() {
        return Err(bad());
    }
    let mut pos = [0u8; POSITION_LEN];
    for (i, byte) in pos.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(pos)
}

/// Positions from one index within the bounds, in order.
struct Cursor {
    prefix: Vec<u8>,
    iter: sled::Iter,
    head: Option<Position>,
}

impl Cursor {
    fn advance(&mut self, store: &EventStore) -> Result<(), StoreError> {
        self.head = match self.iter.next() {
            None => None,
            Some(item) => {
                let (key, _) = item?;
                Some(store.inner.position_of(&self.prefix, &key)?)
            }
        };
        Ok(())
    }
}

impl EventStore {
    /// Lists run summaries newest first, a page at a time.
    ///
    /// Reads the most selective index (the pipeline's when a pipeline is given, else the phases' merged by
    /// position, else the namespace's or all runs), bounded by `since`/`until`, and filters the remaining
    /// fields on the summaries. Pagination is by key: the continue token is the position of the last run
    /// returned, and the next page starts strictly after it, so a page never repeats or skips a run even
    /// while new runs arrive (they are newer and sort before the token).
    pub fn query(&self, q: &RunQuery) -> Result<RunPage, StoreError> {
        self.inner.write_buffered()?;
        let limit = if q.limit == 0 {
            DEFAULT_QUERY_LIMIT
        } else {
            q.limit
        };
        let empty = RunPage {
            runs: Vec::new(),
            continue_token: None,
            index_lag: self.index_lag(),
        };

        // Bounds on positions (ascending = newest first).
        let mut lower: Option<(Position, bool)> = None; // (position, inclusive)
        if let Some(until) = q.until {
            if until <= 0 {
                return Ok(empty);
            }
            let mut p = [0u8; POSITION_LEN];
            p[..8].copy_from_slice(&keys::inverted(until - 1).to_be_bytes());
            lower = Some((p, true));
        }
        if let Some(token) = &q.continue_token {
            let after = decode_token(token)?;
            if lower.is_none_or(|(p, _)| after >= p) {
                lower = Some((after, false));
            }
        }
        let mut upper = [0xFFu8; POSITION_LEN];
        if let Some(since) = q.since.filter(|s| *s > 0) {
            upper[..8].copy_from_slice(&keys::inverted(since).to_be_bytes());
        }
        if lower.is_some_and(|(p, _)| p > upper) {
            return Ok(empty);
        }

        let mut cursors = Vec::new();
        for index in q.indexes() {
            let prefix = index.prefix();
            let key = |p: &Position| [prefix.as_slice(), p].concat();
            let start = match &lower {
                None => Bound::Included(prefix.clone()),
                Some((p, true)) => Bound::Included(key(p)),
                Some((p, false)) => Bound::Excluded(key(p)),
            };
            let iter = self
                .inner
                .tree
                .range::<Vec<u8>, _>((start, Bound::Included(key(&upper))));
            let mut cursor = Cursor {
                prefix,
                iter,
                head: None,
            };
            cursor.advance(self)?;
            cursors.push(cursor);
        }

        let mut runs: Vec<(Position, RunSummary)> = Vec::with_capacity(limit.min(1024) + 1);
        let mut last: Option<Position> = None;
        while runs.len() <= limit {
            // k-way merge: the smallest head is the newest run.
            let Some(i) = (0..cursors.len())
                .filter(|&i| cursors[i].head.is_some())
                .min_by_key(|&i| cursors[i].head)
            else {
                break;
            };
            let Some(pos) = cursors[i].head else { break };
            cursors[i].advance(self)?;
            if last == Some(pos) {
                continue; // a run that changed phase during the scan can show up in two phase indexes
            }
            last = Some(pos);
            // Missing: deleted since the index was read. Phases are re-checked on the summary itself.
            if let Some(summary) = self.inner.summary(keys::position_run(&pos))?
                && q.matches(&summary)
            {
                runs.push((pos, summary));
            }
        }
        let continue_token = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|(pos, _)| encode_token(pos))
        } else {
            None
        };
        Ok(RunPage {
            runs: runs.into_iter().map(|(_, s)| s).collect(),
            continue_token,
            index_lag: self.index_lag(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;
    use crate::config::Durability;
    use crate::event::{EventKind, RunId};
    use crate::store::tests::{accepted, accepted_with, config, new_run, put, run_succeeded};

    fn ids(page: &RunPage) -> Vec<RunId> {
        page.runs.iter().map(|s| s.run_id).collect()
    }

    /// A test run: pipeline, namespace, trigger, labels, and the events after `RunAccepted`.
    type Spec = (
        &'static str,
        &'static str,
        Trigger,
        &'static [(&'static str, &'static str)],
        Vec<EventKind>,
    );

    /// Six runs, oldest first: (pipeline, namespace, trigger, labels, final phase).
    fn fixture(store: &EventStore) -> Vec<(RunId, i64)> {
        let specs: [Spec; 6] = [
            ("build", "ci", Trigger::Manual, &[("team", "a")], vec![]),
            (
                "build",
                "ci",
                Trigger::Cron,
                &[("team", "b")],
                vec![EventKind::RunStarted],
            ),
            (
                "deploy",
                "ci",
                Trigger::Webhook,
                &[("team", "a")],
                vec![EventKind::RunStarted, run_succeeded()],
            ),
            (
                "build",
                "prod",
                Trigger::Pubsub,
                &[],
                vec![EventKind::RunCancelled {
                    reason: String::new(),
                }],
            ),
            (
                "build",
                "ci",
                Trigger::Cron,
                &[("team", "a"), ("tier", "1")],
                vec![EventKind::RunStarted],
            ),
            ("deploy", "prod", Trigger::Manual, &[], vec![]),
        ];
        let mut out = Vec::new();
        for (pipeline, namespace, trigger, labels, more) in specs {
            let run = new_run();
            let at = put(
                store,
                run,
                vec![accepted_with(pipeline, namespace, trigger, labels)],
            )[0]
            .at;
            if !more.is_empty() {
                put(store, run, more);
            }
            out.push((run, at));
            std::thread::sleep(Duration::from_millis(2));
        }
        out
    }

    fn query(store: &EventStore, q: RunQuery) -> Vec<RunId> {
        ids(&store.query(&q).unwrap())
    }

    #[test]
    fn query_filters_and_lists_newest_first() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let f = fixture(&store);
        let r = |i: usize| f[i].0;
        assert_eq!(
            query(&store, RunQuery::default()),
            [r(5), r(4), r(3), r(2), r(1), r(0)]
        );
        let pipeline = |ns: Option<&str>| RunQuery {
            pipeline: Some("build".into()),
            namespace: ns.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(query(&store, pipeline(Some("ci"))), [r(4), r(1), r(0)]);
        assert_eq!(query(&store, pipeline(None)), [r(4), r(3), r(1), r(0)]);
        assert_eq!(
            query(
                &store,
                RunQuery {
                    namespace: Some("prod".into()),
                    ..Default::default()
                }
            ),
            [r(5), r(3)]
        );
        let phases = |p: &[RunPhase]| RunQuery {
            phases: p.to_vec(),
            ..Default::default()
        };
        assert_eq!(query(&store, phases(&[RunPhase::Running])), [r(4), r(1)]);
        assert_eq!(
            query(&store, phases(&[RunPhase::Pending, RunPhase::Running])),
            [r(5), r(4), r(1), r(0)]
        );
        assert_eq!(
            query(
                &store,
                phases(&[
                    RunPhase::Cancelled,
                    RunPhase::Succeeded,
                    RunPhase::Pending,
                    RunPhase::Pending
                ])
            ),
            [r(5), r(3), r(2), r(0)]
        );
        assert_eq!(query(&store, phases(&[RunPhase::Failed])), [] as [RunId; 0]);
        // Pipeline index plus phase filter.
        let q = RunQuery {
            phases: vec![RunPhase::Pending],
            ..pipeline(Some("ci"))
        };
        assert_eq!(query(&store, q), [r(0)]);
        assert_eq!(
            query(
                &store,
                RunQuery {
                    trigger: Some(Trigger::Cron),
                    ..Default::default()
                }
            ),
            [r(4), r(1)]
        );
        let labels = |l: &[(&str, &str)]| RunQuery {
            labels: l
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(query(&store, labels(&[("team", "a")])), [r(4), r(2), r(0)]);
        assert_eq!(
            query(&store, labels(&[("team", "a"), ("tier", "1")])),
            [r(4)]
        );
        // since inclusive, until exclusive, on accepted_at.
        let range = |since: Option<i64>, until: Option<i64>| RunQuery {
            since,
            until,
            ..Default::default()
        };
        assert_eq!(
            query(&store, range(Some(f[2].1), None)),
            [r(5), r(4), r(3), r(2)]
        );
        assert_eq!(query(&store, range(None, Some(f[2].1))), [r(1), r(0)]);
        assert_eq!(
            query(&store, range(Some(f[1].1), Some(f[4].1))),
            [r(3), r(2), r(1)]
        );
        assert_eq!(
            query(&store, range(Some(f[4].1), Some(f[1].1))),
            [] as [RunId; 0]
        );
        assert_eq!(query(&store, range(None, Some(0))), [] as [RunId; 0]);
        let q = RunQuery {
            since: Some(f[1].1),
            until: Some(f[5].1),
            ..phases(&[RunPhase::Running, RunPhase::Pending])
        };
        assert_eq!(query(&store, q), [r(4), r(1)]);
        let page = store.query(&RunQuery::default()).unwrap();
        assert_eq!(page.continue_token, None);
        assert_eq!(page.runs[0].pipeline, "deploy");
    }

    #[test]
    fn pages_never_repeat_or_miss_runs_while_new_runs_arrive() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let mut original = Vec::new();
        for _ in 0..25 {
            let run = new_run();
            put(&store, run, vec![accepted("p", "ns")]);
            original.push(run);
        }
        assert_eq!(original.len(), 25);
        for q in [
            RunQuery {
                limit: 4,
                ..Default::default()
            },
            RunQuery {
                limit: 4,
                pipeline: Some("p".into()),
                ..Default::default()
            },
            RunQuery {
                limit: 3,
                phases: vec![RunPhase::Pending, RunPhase::Succeeded],
                ..Default::default()
            },
        ] {
            // What exists when the listing starts, newest first.
            let expected = ids(&store
                .query(&RunQuery {
                    limit: 100_000,
                    ..q.clone()
                })
                .unwrap());
            assert!(expected.len() >= 25);
            let mut seen = Vec::new();
            let mut q = q;
            let mut pages = 0;
            loop {
                let page = store.query(&q).unwrap();
                assert!(page.runs.len() <= q.limit);
                seen.extend(ids(&page));
                // New runs arrive between pages.
                for _ in 0..3 {
                    put(&store, new_run(), vec![accepted("p", "ns")]);
                }
                pages += 1;
                match page.continue_token {
                    Some(t) => q.continue_token = Some(t),
                    None => break,
                }
            }
            let unique: HashSet<_> = seen.iter().collect();
            assert_eq!(unique.len(), seen.len(), "a run was repeated");
            assert_eq!(
                seen, expected,
                "pages must list exactly the runs that existed, newest first"
            );
            assert!(pages >= 7, "{pages}");
        }
        // A full last page has no token when nothing follows.
        let page = store
            .query(&RunQuery {
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.continue_token, None);
        let err = store
            .query(&RunQuery {
                continue_token: Some("nope".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::BadContinueToken(_)), "{err:?}");
    }

    #[test]
    fn default_limit_applies() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        for _ in 0..DEFAULT_QUERY_LIMIT + 1 {
            put(&store, new_run(), vec![accepted("p", "ns")]);
        }
        let page = store.query(&RunQuery::default()).unwrap();
        assert_eq!(page.runs.len(), DEFAULT_QUERY_LIMIT);
        let rest = store
            .query(&RunQuery {
                continue_token: page.continue_token,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rest.runs.len(), 1);
        assert_eq!(rest.continue_token, None);
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let pos = keys::position(123, crate::RunId::from_u128(77));
        assert_eq!(decode_token(&encode_token(&pos)).unwrap(), pos);
        for bad in ["", "zz", &"g".repeat(48), &"é".repeat(24)] {
            let err = decode_token(bad).unwrap_err();
            assert!(matches!(err, StoreError::BadContinueToken(_)), "{err:?}");
        }
    }
}

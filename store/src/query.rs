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
        let limit = if q.limit == 0 {
            DEFAULT_QUERY_LIMIT
        } else {
            q.limit
        };
        let empty = RunPage {
            runs: Vec::new(),
            continue_token: None,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

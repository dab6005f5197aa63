//! Binary key layout of the single sled tree.
//!
//! Everything of a run lives in one tree so that an append (events, summary, index entries) is one atomic
//! sled batch. The first byte of a key says what the record is:
//!
//! | prefix | rest of the key | value |
//! |---|---|---|
//! | `e` | run id (16) ++ seq (u64 BE) | version byte ++ JSON `{at, kind}` |
//! | `s` | run id (16) | version byte ++ JSON [`crate::RunSummary`] |
//! | `a` | position | empty: all runs |
//! | `n` | len-prefixed namespace ++ position | empty: runs of a namespace |
//! | `p` | len-prefixed namespace ++ len-prefixed pipeline ++ position | empty: runs of a pipeline |
//! | `q` | len-prefixed pipeline ++ position | empty: runs of a pipeline name in any namespace |
//! | `h` | phase byte ++ position | empty: runs in a phase |
//!
//! A *position* is `u64::MAX - accepted_at` (big-endian) ++ run id: sorted ascending it lists runs newest
//! first, ties broken by run id. Strings are prefixed with their length (u32 BE) so that no name can be a
//! prefix of another and scans of one scope never see another's keys.

use crate::event::{RunId, RunPhase};

pub(crate) const EVENT: u8 = b'e';
pub(crate) const SUMMARY: u8 = b's';
const IDX_ALL: u8 = b'a';
const IDX_NAMESPACE: u8 = b'n';
const IDX_PIPELINE: u8 = b'p';
const IDX_PIPELINE_ANY_NS: u8 = b'q';
const IDX_PHASE: u8 = b'h';

/// Length of an event key: prefix, run id, seq.
pub(crate) const EVENT_KEY_LEN: usize = 1 + 16 + 8;
/// Length of a position: inverted timestamp and run id.
pub(crate) const POSITION_LEN: usize = 8 + 16;

/// Where a run sorts in the newest-first indexes.
pub(crate) type Position = [u8; POSITION_LEN];

/// The key of event `seq` of `run`.
pub(crate) fn event_key(run: RunId, seq: u64) -> [u8; EVENT_KEY_LEN] {
    let mut k = [0u8; EVENT_KEY_LEN];
    k[0] = EVENT;
    k[1..17].copy_from_slice(run.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix shared by all events of `run`.
pub(crate) fn event_prefix(run: RunId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = EVENT;
    k[1..].copy_from_slice(run.as_bytes());
    k
}

/// The sequence number in an event key of `run`, or `None` when the key is malformed.
pub(crate) fn event_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(17..EVENT_KEY_LEN)?.try_into().ok()?;
    (key.len() == EVENT_KEY_LEN).then_some(u64::from_be_bytes(bytes))
}

pub(crate) fn summary_key(run: RunId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = SUMMARY;
    k[1..].copy_from_slice(run.as_bytes());
    k
}

/// Inverted timestamp: newer sorts first. Timestamps before 1970 (never stamped by the store) clamp to 0.
pub(crate) fn inverted(at: i64) -> u64 {
    u64::MAX - at.max(0) as u64
}

pub(crate) fn position(accepted_at: i64, run: RunId) -> Position {
    let mut p = [0u8; POSITION_LEN];
    p[..8].copy_from_slice(&inverted(accepted_at).to_be_bytes());
    p[8..].copy_from_slice(run.as_bytes());
    p
}

/// The run id in a position.
pub(crate) fn position_run(p: &Position) -> RunId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&p[8..]);
    RunId::from_bytes(id)
}

/// The inverted timestamp in a position.
pub(crate) fn position_inverted(p: &Position) -> u64 {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&p[..8]);
    u64::from_be_bytes(ts)
}

fn phase_byte(phase: RunPhase) -> u8 {
    match phase {
        RunPhase::Pending => 0,
        RunPhase::Running => 1,
        RunPhase::Succeeded => 2,
        RunPhase::Failed => 3,
        RunPhase::Cancelled => 4,
        RunPhase::TimedOut => 5,
    }
}

fn push_str(k: &mut Vec<u8>, s: &str) {
    // Names longer than 4 GiB cannot reach the store (they come from JSON events in memory).
    k.extend_from_slice(&(s.len() as u32).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
}

/// One newest-first index: the set of runs sharing a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Index<'a> {
    All,
    Namespace(&'a str),
    Pipeline {
        namespace: &'a str,
        pipeline: &'a str,
    },
    PipelineAnyNamespace(&'a str),
    Phase(RunPhase),
}

impl Index<'_> {
    /// The key prefix of this index; its keys are the prefix followed by a [`Position`].
    pub(crate) fn prefix(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(16);
        match self {
            Index::All => k.push(IDX_ALL),
            Index::Namespace(ns) => {
                k.push(IDX_NAMESPACE);
                push_str(&mut k, ns);
            }
            Index::Pipeline {
                namespace,
                pipeline,
            } => {
                k.push(IDX_PIPELINE);
                push_str(&mut k, namespace);
                push_str(&mut k, pipeline);
            }
            Index::PipelineAnyNamespace(pipeline) => {
                k.push(IDX_PIPELINE_ANY_NS);
                push_str(&mut k, pipeline);
            }
            Index::Phase(phase) => {
                k.push(IDX_PHASE);
                k.push(phase_byte(*phase));
            }
        }
        k
    }

    /// The key of the run at `pos` in this index.
    pub(crate) fn key(&self, pos: &Position) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(pos);
        k
    }
}

/// The indexes a run belongs to apart from its phase index, which changes with the phase.
pub(crate) fn fixed_indexes<'a>(namespace: &'a str, pipeline: &'a str) -> [Index<'a>; 4] {
    [
        Index::All,
        Index::Namespace(namespace),
        Index::Pipeline {
            namespace,
            pipeline,
        },
        Index::PipelineAnyNamespace(pipeline),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_sort_by_seq() {
        let run = RunId::from_u128(7);
        assert!(event_key(run, 1) < event_key(run, 2));
        assert!(event_key(run, 255) < event_key(run, 256));
        assert_eq!(event_seq(&event_key(run, 300)), Some(300));
        assert_eq!(event_seq(&event_key(run, 300)[..20]), None);
        assert!(event_key(run, 0).starts_with(&event_prefix(run)));
    }

    #[test]
    fn positions_sort_newest_first() {
        let a = RunId::from_u128(1);
        let b = RunId::from_u128(2);
        assert!(position(200, a) < position(100, a));
        assert!(position(100, a) < position(100, b));
        assert_eq!(position_run(&position(5, b)), b);
        assert_eq!(position_inverted(&position(5, b)), u64::MAX - 5);
    }

    #[test]
    fn index_prefixes_do_not_overlap() {
        let ab_c = Index::Pipeline {
            namespace: "ab",
            pipeline: "c",
        }
        .prefix();
        let a_bc = Index::Pipeline {
            namespace: "a",
            pipeline: "bc",
        }
        .prefix();
        assert!(!ab_c.starts_with(&a_bc) && !a_bc.starts_with(&ab_c));
        let ns_a = Index::Namespace("a").prefix();
        let ns_ab = Index::Namespace("ab").prefix();
        assert!(!ns_ab.starts_with(&ns_a));
    }
}

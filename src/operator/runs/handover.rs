//! The handover of runs between replicas when the shards this replica holds change: which runs it must
//! drop at once (their shard was lost), which it must take over (their shard was gained), and when the
//! runs of a shard taken after a crash have all resumed (the failover time). Pure decisions; the run
//! controller acts on them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use flowmason_store::RunId;

use crate::operator::shards::{Owned, Takeover, shard_of_run};

/// What a change of the shards held means for the runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Handover {
    /// Shards held now that were not held before, or taken again since (their Takeover changed: the
    /// shard was lost and regained between two looks), with how each was taken.
    pub gained: BTreeMap<u32, Takeover>,
    /// Shards held before and not held now, or taken again since: the runs this replica has of them
    /// are dropped (another replica may have appended to them meanwhile).
    pub lost: BTreeSet<u32>,
}

impl Handover {
    /// The handover from holding `before` to holding `after`.
    pub fn between(before: &Owned, after: &Owned) -> Handover {
        let mut handover = Handover::default();
        for (shard, was) in &before.shards {
            if after.shards.get(shard) != Some(was) {
                handover.lost.insert(*shard);
            }
        }
        for (shard, now) in &after.shards {
            if before.shards.get(shard) != Some(now) {
                handover.gained.insert(*shard, now.clone());
            }
        }
        handover
    }

    pub fn is_empty(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty()
    }

    /// Whether `run`, active here, must be relinquished.
    pub fn relinquishes(&self, run: RunId, count: u32) -> bool {
        self.lost.contains(&shard_of_run(run, count))
    }

    /// Whether `run`'s PipelineRun must be reconciled again to be taken over.
    pub fn takes_over(&self, run: RunId, count: u32) -> bool {
        self.gained.contains_key(&shard_of_run(run, count))
    }
}

/// The shards taken after a crash whose runs are not all resumed yet: when the last one has, the time
/// since the crashed holder's last renewal is the failover time (`flowmason_shard_failover_seconds`).
#[derive(Debug, Default)]
pub(super) struct Failovers {
    pending: HashMap<u32, Pending>,
}

#[derive(Debug)]
struct Pending {
    /// The crashed holder's last renewal of the shard's Lease.
    since: Timestamp,
    runs: HashSet<RunId>,
}

impl Failovers {
    /// Starts timing shard `shard`, taken as `takeover`, whose unfinished runs are `runs`. Only a
    /// shard taken after a crash with runs to resume is timed; a shard taken again restarts its timing.
    pub fn taken(&mut self, shard: u32, takeover: &Takeover, runs: HashSet<RunId>) {
        self.pending.remove(&shard);
        if let (true, Some(since), false) = (
            takeover.after_crash,
            takeover.previous_renew,
            runs.is_empty(),
        ) {
            self.pending.insert(shard, Pending { since, runs });
        }
    }

    /// Stops timing a shard lost before its runs all resumed.
    pub fn lost(&mut self, shard: u32) {
        self.pending.remove(&shard);
    }

    /// `run` of `shard` has resumed (or was found ended): the failover time when it was the shard's
    /// last one.
    pub fn resumed(&mut self, shard: u32, run: RunId, now: Timestamp) -> Option<Duration> {
        let pending = self.pending.get_mut(&shard)?;
        if !pending.runs.remove(&run) || !pending.runs.is_empty() {
            return None;
        }
        let since = pending.since;
        self.pending.remove(&shard);
        let elapsed = now.duration_since(since);
        Some(Duration::try_from(elapsed).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(shards: &[(u32, bool)]) -> Owned {
        Owned {
            shards: shards
                .iter()
                .map(|&(s, after_crash)| {
                    (
                        s,
                        Takeover {
                            after_crash,
                            ..Takeover::default()
                        },
                    )
                })
                .collect(),
        }
    }

    /// A run id of shard `shard` out of `count`.
    fn run_of(shard: u32, count: u32) -> RunId {
        (0u128..)
            .map(RunId::from_u128)
            .find(|r| shard_of_run(*r, count) == shard)
            .unwrap_or_default()
    }

    #[test]
    fn gained_shards_are_taken_over_and_lost_ones_relinquished() {
        let handover = Handover::between(
            &owned(&[(0, false), (1, false)]),
            &owned(&[(1, false), (2, true)]),
        );
        assert_eq!(handover.lost, BTreeSet::from([0]));
        assert_eq!(handover.gained.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert!(handover.gained[&2].after_crash);
        assert!(handover.relinquishes(run_of(0, 4), 4));
        assert!(
            !handover.relinquishes(run_of(1, 4), 4),
            "a shard kept keeps its runs"
        );
        assert!(handover.takes_over(run_of(2, 4), 4));
        assert!(
            !handover.takes_over(run_of(1, 4), 4),
            "a shard kept is not taken over again"
        );
    }

    #[test]
    fn a_shard_lost_and_regained_between_two_looks_is_both_dropped_and_taken_over() {
        let handover = Handover::between(&owned(&[(3, false)]), &owned(&[(3, true)]));
        assert_eq!(handover.lost, BTreeSet::from([3]));
        assert!(handover.gained.contains_key(&3));
        assert!(Handover::between(&owned(&[(3, true)]), &owned(&[(3, true)])).is_empty());
    }

    #[test]
    fn failover_time_is_taken_when_the_last_run_of_a_crashed_shard_resumes() {
        let crash = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let takeover = Takeover {
            after_crash: true,
            previous_renew: Some(crash),
            ..Takeover::default()
        };
        let (a, b) = (RunId::from_u128(1), RunId::from_u128(2));
        let mut failovers = Failovers::default();
        failovers.taken(5, &takeover, HashSet::from([a, b]));
        let later = |s: i64| Timestamp::from_second(1_000 + s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(failovers.resumed(5, a, later(3)), None, "one run left");
        assert_eq!(failovers.resumed(5, a, later(4)), None, "counted once");
        assert_eq!(
            failovers.resumed(5, b, later(7)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(failovers.resumed(5, b, later(8)), None, "timed once");
    }

    #[test]
    fn only_a_shard_taken_after_a_crash_with_runs_is_timed() {
        let run = RunId::from_u128(1);
        let renew = Some(Timestamp::UNIX_EPOCH);
        let mut failovers = Failovers::default();
        let handed = Takeover {
            after_crash: false,
            previous_renew: renew,
            ..Takeover::default()
        };
        failovers.taken(1, &handed, HashSet::from([run]));
        assert_eq!(failovers.resumed(1, run, Timestamp::UNIX_EPOCH), None);
        let crashed = Takeover {
            after_crash: true,
            previous_renew: renew,
            ..Takeover::default()
        };
        failovers.taken(2, &crashed, HashSet::new());
        assert_eq!(failovers.resumed(2, run, Timestamp::UNIX_EPOCH), None);
        failovers.taken(3, &crashed, HashSet::from([run]));
        failovers.lost(3);
        assert_eq!(
            failovers.resumed(3, run, Timestamp::UNIX_EPOCH),
            None,
            "lost before resuming"
        );
    }
}

//! The fair-share planner: given the shard and member Leases one list returned, which shards this
//! replica renews, takes and releases on this tick. Pure (the clock is an argument), so that the balancing
//! of several replicas can be simulated tick by tick in its tests; the lease manager (`leases.rs`) turns
//! the plan into resourceVersion-guarded writes.
//!
//! The rule (DESIGN-12 "Fair share"): the live members (member Leases not expired, and this replica)
//! sorted by identity; with `n` shards and `m` members, member `k` targets `n / m + (k < n % m)`. A
//! replica renews what it holds, releases its surplus above the target, and takes free or expired shards
//! up to it. A shard is taken only when free (no holder: released) or expired (its holder did not renew
//! within the lease duration), so that a holder following the protocol has stopped acting on it first.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::model::vocabulary::ENGINE_SESSION_ANNOTATION;

use super::Takeover;

/// What a Lease says, as far as the planner needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseState {
    /// `spec.holderIdentity`; `None` (or empty) when free.
    pub holder: Option<String>,
    /// `spec.renewTime`: the holder's last renewal.
    pub renewed: Option<Timestamp>,
    /// `spec.leaseDurationSeconds`.
    pub duration_secs: u32,
    /// The holder's engine session (`flowmason.io/engine-session`).
    pub session: Option<u64>,
}

/// The duration assumed for a Lease that does not state one (client-go's default).
const DEFAULT_DURATION_SECS: u32 = 15;

impl LeaseState {
    /// What `spec` says, with the holder's engine session read from the Lease's annotation.
    pub fn of_spec(spec: &LeaseSpec, session: Option<u64>) -> LeaseState {
        LeaseState {
            holder: spec.holder_identity.clone(),
            renewed: spec.renew_time.as_ref().map(|t| t.0),
            duration_secs: spec
                .lease_duration_seconds
                .and_then(|d| u32::try_from(d).ok())
                .unwrap_or(DEFAULT_DURATION_SECS),
            session,
        }
    }

    /// What `lease` says (a Lease without a spec is free). An engine-session annotation that is not a
    /// number is read as none: the takeover then cannot tell a second crash of that session.
    pub fn of_lease(lease: &Lease) -> LeaseState {
        let session = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ENGINE_SESSION_ANNOTATION))
            .and_then(|v| v.parse().ok());
        match &lease.spec {
            Some(spec) => LeaseState::of_spec(spec, session),
            None => LeaseState {
                session,
                ..LeaseState::default()
            },
        }
    }

    /// When the lease runs out without another renewal; `None` when it was never renewed.
    pub fn deadline(&self) -> Option<Timestamp> {
        let renewed = self.renewed?;
        renewed
            .checked_add(SignedDuration::from_secs(i64::from(self.duration_secs)))
            .ok()
    }

    /// Expired at `now`: not renewed within its duration (a lease never renewed counts as expired).
    pub fn expired(&self, now: Timestamp) -> bool {
        self.deadline().is_none_or(|deadline| now > deadline)
    }

    /// The holder, an empty identity read as none.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// The Leases of one list: shard Leases by shard index (a shard without a Lease is free), member Leases
/// by identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub shards: BTreeMap<u32, LeaseState>,
    pub members: BTreeMap<String, LeaseState>,
}

/// What to do on this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Held, valid and within the target: renew.
    pub renew: Vec<u32>,
    /// Free or expired, and below the target: take, with how.
    pub take: Vec<(u32, Takeover)>,
    /// Held above the target: give back (clear the holder) so that a replica below its share takes it.
    pub release: Vec<u32>,
    /// The fair share this replica aims at.
    pub target: u32,
}

/// The live members at `now`, sorted by identity: every member Lease not expired, and `me`.
pub fn live_members<'a>(seen: &'a Seen, me: &'a str, now: Timestamp) -> Vec<&'a str> {
    let mut members: Vec<&str> = seen
        .members
        .iter()
        .filter(|(_, lease)| !lease.expired(now))
        .map(|(identity, _)| identity.as_str())
        .collect();
    if !members.contains(&me) {
        members.push(me);
    }
    members.sort_unstable();
    members
}

/// The fair share of member `index` (0-based, in identity order) of `members`: `count / members`, one more
/// for the first `count % members`.
pub fn fair_share(count: u32, members: usize, index: usize) -> u32 {
    let members = u32::try_from(members.max(1)).unwrap_or(u32::MAX);
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    count / members + u32::from(index < count % members)
}

/// Who plans: this replica's identity, its engine session, and the shards it holds now (renewed in
/// time, as far as it knows).
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub identity: &'a str,
    pub session: Option<u64>,
    pub held: &'a BTreeSet<u32>,
}

/// How a shard whose Lease says `lease` is taken by `me`: after a crash when it was held by a replica that
/// stopped renewing it, or by an earlier process of this identity (another engine session).
fn takeover(lease: &LeaseState, me: &Me<'_>) -> Takeover {
    let previous_holder = lease.holder().map(str::to_string);
    let after_crash = match lease.holder() {
        None => false,
        // Ours, but the Lease ran out or is not tracked: this process dropped its runs itself when the
        // deadline passed (no crash), unless the Lease was written by an earlier process of this identity.
        Some(holder) if holder == me.identity => {
            lease.session.is_some() && lease.session != me.session
        }
        Some(_) => true,
    };
    Takeover {
        after_crash,
        crashed_session: if after_crash { lease.session } else { None },
        previous_holder,
        previous_renew: lease.renewed,
    }
}

/// This tick's plan for replica `me` out of `count` shards.
pub fn plan(seen: &Seen, me: &Me<'_>, now: Timestamp, count: u32) -> Plan {
    let members = live_members(seen, me.identity, now);
    let index = members.iter().position(|m| *m == me.identity).unwrap_or(0);
    let target = fair_share(count, members.len(), index) as usize;
    let free = LeaseState::default();
    let mut held = Vec::new();
    // Ours on the Lease and valid, but not held by this process (a restart under the same identity, or a
    // take whose answer was lost): first in line to be taken, else released.
    let mut adoptable = Vec::new();
    let mut takeable = Vec::new();
    for shard in 0..count {
        let lease = seen.shards.get(&shard).unwrap_or(&free);
        let valid = !lease.expired(now);
        match lease.holder() {
            Some(holder) if holder == me.identity && valid && me.held.contains(&shard) => {
                held.push(shard)
            }
            Some(holder) if holder == me.identity && valid => {
                adoptable.push((shard, takeover(lease, me)))
            }
            Some(holder) if holder != me.identity && valid => {}
            _ => takeable.push((shard, takeover(lease, me))),
        }
    }
    let mut release = held.split_off(held.len().min(target));
    let wanted = target.saturating_sub(held.len());
    let adopted = adoptable.len().min(wanted);
    release.extend(adoptable.drain(adopted..).map(|(shard, _)| shard));
    takeable.truncate(wanted - adopted);
    let take = adoptable.into_iter().chain(takeable).collect();
    release.sort_unstable();
    Plan {
        renew: held,
        take,
        release,
        target: u32::try_from(target).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const DURATION_MS: i64 = 3_000;
    const TICK_MS: i64 = DURATION_MS / 3;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_700_000_000_000 + ms).expect("time")
    }

    fn held_by(holder: &str, renewed_ms: i64, session: Option<u64>) -> LeaseState {
        LeaseState {
            holder: Some(holder.into()),
            renewed: Some(at(renewed_ms)),
            duration_secs: 3,
            session,
        }
    }

    /// The API server's Leases, each with a resourceVersion that guards writes as on a real one.
    #[derive(Default)]
    struct Leases {
        shards: BTreeMap<u32, (u64, LeaseState)>,
        members: BTreeMap<String, (u64, LeaseState)>,
    }

    impl Leases {
        fn seen(&self) -> (Seen, BTreeMap<u32, u64>) {
            let seen = Seen {
                shards: self
                    .shards
                    .iter()
                    .map(|(s, (_, l))| (*s, l.clone()))
                    .collect(),
                members: self
                    .members
                    .iter()
                    .map(|(m, (_, l))| (m.clone(), l.clone()))
                    .collect(),
            };
            let versions = self.shards.iter().map(|(s, (v, _))| (*s, *v)).collect();
            (seen, versions)
        }

        /// A write guarded by the version read (0: the Lease did not exist): false on a conflict.
        fn write(&mut self, shard: u32, read: u64, lease: LeaseState) -> bool {
            let current = self.shards.get(&shard).map_or(0, |(v, _)| *v);
            if current != read {
                return false;
            }
            self.shards.insert(shard, (current + 1, lease));
            true
        }
    }

    /// One replica following the lease manager's protocol: what it holds, with each renew deadline.
    struct Replica {
        name: String,
        session: u64,
        /// Tick phase in milliseconds within a tick period.
        phase: i64,
        held: BTreeMap<u32, (Timestamp, Takeover)>,
        alive: bool,
    }

    impl Replica {
        fn new(name: &str, session: u64, phase: i64) -> Replica {
            Replica {
                name: name.into(),
                session,
                phase,
                held: BTreeMap::new(),
                alive: true,
            }
        }

        /// The shards it acts on at `now`: held, with the deadline not passed.
        fn owned(&self, now: Timestamp) -> BTreeSet<u32> {
            self.held
                .iter()
                .filter(|(_, (deadline, _))| now < *deadline)
                .map(|(s, _)| *s)
                .collect()
        }
    }

    struct Sim {
        leases: Leases,
        replicas: Vec<Replica>,
        now_ms: i64,
        /// Since when each shard has had no owner (absent: owned).
        unowned_since: HashMap<u32, i64>,
        longest_unowned_ms: i64,
        takeovers: Vec<(String, u32, Takeover)>,
        count: u32,
    }

    impl Sim {
        fn new(count: u32) -> Sim {
            Sim {
                leases: Leases::default(),
                replicas: Vec::new(),
                now_ms: 0,
                unowned_since: (0..count).map(|s| (s, 0)).collect(),
                longest_unowned_ms: 0,
                takeovers: Vec::new(),
                count,
            }
        }

        fn join(&mut self, name: &str, session: u64, phase: i64) {
            self.replicas.push(Replica::new(name, session, phase));
        }

        fn replica(&mut self, name: &str) -> &mut Replica {
            self.replicas
                .iter_mut()
                .find(|r| r.name == name)
                .expect("replica")
        }

        /// A graceful stop: drops every shard, releases them and deletes its member Lease.
        fn stop(&mut self, name: &str) {
            let replica = self.replica(name);
            replica.alive = false;
            let held: Vec<u32> = std::mem::take(&mut replica.held).into_keys().collect();
            for shard in held {
                let (version, mut lease) = self.leases.shards[&shard].clone();
                lease.holder = None;
                assert!(self.leases.write(shard, version, lease));
            }
            self.leases.members.remove(name);
        }

        /// A crash (or a stall): it stops ticking; its Leases stay until they expire.
        fn crash(&mut self, name: &str) {
            self.replica(name).alive = false;
        }

        /// Advances in steps of 50 ms to `until_ms`, ticking each live replica at its phase and checking
        /// after each step that no shard is owned twice and none stays unowned too long.
        fn run_until(&mut self, until_ms: i64) {
            while self.now_ms < until_ms {
                self.now_ms += 50;
                let now = at(self.now_ms);
                let ticking: Vec<usize> = (0..self.replicas.len())
                    .filter(|i| {
                        let r = &self.replicas[*i];
                        r.alive && (self.now_ms - r.phase).rem_euclid(TICK_MS) == 0
                    })
                    .collect();
                // Replicas ticking at the same instant all list first, then write: they race.
                let (seen, versions) = self.leases.seen();
                for i in &ticking {
                    self.tick(*i, &seen, &versions, now);
                }
                self.check(now);
            }
        }

        fn tick(&mut self, i: usize, seen: &Seen, versions: &BTreeMap<u32, u64>, now: Timestamp) {
            let count = self.count;
            let name = self.replicas[i].name.clone();
            let session = self.replicas[i].session;
            let member = held_by(&name, self.now_ms, Some(session));
            let member_version = self.leases.members.get(&name).map_or(0, |(v, _)| *v + 1);
            self.leases
                .members
                .insert(name.clone(), (member_version, member));
            let held = self.replicas[i].owned(now);
            let me = Me {
                identity: &name,
                session: Some(session),
                held: &held,
            };
            let plan = plan(seen, &me, now, count);
            let deadline = at(self.now_ms + DURATION_MS);
            let mine = held_by(&name, self.now_ms, Some(session));
            let version = |s: u32| versions.get(&s).copied().unwrap_or(0);
            // Whatever the plan does not renew is no longer ours: a renewal is the only way to keep it.
            let renewed: BTreeSet<u32> = plan.renew.iter().copied().collect();
            self.replicas[i].held.retain(|s, _| renewed.contains(s));
            for shard in plan.release {
                let mut lease = seen.shards[&shard].clone();
                lease.holder = None;
                self.leases.write(shard, version(shard), lease);
            }
            for shard in plan.renew {
                if self.leases.write(shard, version(shard), mine.clone()) {
                    if let Some(held) = self.replicas[i].held.get_mut(&shard) {
                        held.0 = deadline;
                    }
                } else {
                    self.replicas[i].held.remove(&shard);
                }
            }
            for (shard, takeover) in plan.take {
                if self.leases.write(shard, version(shard), mine.clone()) {
                    self.takeovers.push((name.clone(), shard, takeover.clone()));
                    self.replicas[i].held.insert(shard, (deadline, takeover));
                }
            }
        }

        fn check(&mut self, now: Timestamp) {
            let mut owners: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
            // A crashed or stalled replica counts as owning its shards until their deadlines pass.
            for r in &self.replicas {
                for s in r.owned(now) {
                    owners.entry(s).or_default().push(&r.name);
                }
            }
            for (shard, names) in &owners {
                assert!(
                    names.len() <= 1,
                    "shard {shard} owned by {names:?} at {} ms",
                    self.now_ms
                );
            }
            for shard in 0..self.count {
                if owners.contains_key(&shard) {
                    self.unowned_since.remove(&shard);
                } else {
                    let since = *self.unowned_since.entry(shard).or_insert(self.now_ms);
                    self.longest_unowned_ms = self.longest_unowned_ms.max(self.now_ms - since);
                }
            }
        }

        fn counts(&self) -> BTreeMap<String, usize> {
            let now = at(self.now_ms);
            self.replicas
                .iter()
                .filter(|r| r.alive)
                .map(|r| (r.name.clone(), r.owned(now).len()))
                .collect()
        }
    }

    fn plan_for(seen: &Seen, identity: &str, held: &[u32], now: Timestamp, count: u32) -> Plan {
        let held: BTreeSet<u32> = held.iter().copied().collect();
        let me = Me {
            identity,
            session: Some(1),
            held: &held,
        };
        plan(seen, &me, now, count)
    }

    fn shares(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn fair_shares_split_the_remainder_over_the_first_members() {
        assert_eq!(
            (0..3).map(|k| fair_share(16, 3, k)).collect::<Vec<_>>(),
            [6, 5, 5]
        );
        assert_eq!(fair_share(16, 1, 0), 16);
        assert_eq!(
            (0..5).map(|k| fair_share(2, 5, k)).collect::<Vec<_>>(),
            [1, 1, 0, 0, 0]
        );
        assert_eq!(fair_share(8, 0, 0), 8, "no members is read as this one");
    }

    #[test]
    fn one_then_three_then_one_replica_converge_to_fair_shares_without_overlap_or_long_gaps() {
        let mut sim = Sim::new(16);
        sim.join("a", 1, 0);
        sim.run_until(5_000);
        assert_eq!(sim.counts(), shares(&[("a", 16)]));
        sim.join("b", 2, 350);
        sim.join("c", 3, 700);
        sim.run_until(15_000);
        assert_eq!(sim.counts(), shares(&[("a", 6), ("b", 5), ("c", 5)]));
        sim.stop("b");
        sim.run_until(20_000);
        assert_eq!(sim.counts(), shares(&[("a", 8), ("c", 8)]));
        sim.stop("c");
        sim.run_until(25_000);
        assert_eq!(sim.counts(), shares(&[("a", 16)]));
        assert!(
            sim.longest_unowned_ms <= DURATION_MS,
            "a shard was unowned for {} ms (lease duration {DURATION_MS} ms)",
            sim.longest_unowned_ms
        );
        assert!(
            sim.takeovers.iter().all(|(_, _, t)| !t.after_crash),
            "graceful joins and stops are no crashes: {:?}",
            sim.takeovers
        );
    }

    #[test]
    fn replicas_ticking_at_the_same_instant_race_without_holding_a_shard_twice() {
        let mut sim = Sim::new(8);
        for (name, session) in [("a", 1), ("b", 2), ("c", 3)] {
            sim.join(name, session, 0);
        }
        sim.run_until(12_000);
        assert_eq!(sim.counts(), shares(&[("a", 3), ("b", 3), ("c", 2)]));
        assert!(sim.longest_unowned_ms <= DURATION_MS);
    }

    #[test]
    fn a_crashed_replicas_shards_are_taken_after_their_leases_expire_as_after_a_crash() {
        let mut sim = Sim::new(8);
        sim.join("a", 11, 0);
        sim.join("b", 12, 500);
        sim.run_until(10_000);
        assert_eq!(sim.counts(), shares(&[("a", 4), ("b", 4)]));
        let lost: BTreeSet<u32> = sim.replicas[1].owned(at(10_000));
        sim.takeovers.clear();
        sim.crash("b");
        sim.run_until(20_000);
        assert_eq!(sim.counts(), shares(&[("a", 8)]));
        let taken: BTreeSet<u32> = sim.takeovers.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(taken, lost);
        for (by, _, takeover) in &sim.takeovers {
            assert_eq!(by, "a");
            assert!(takeover.after_crash);
            assert_eq!(takeover.crashed_session, Some(12));
            assert_eq!(takeover.previous_holder.as_deref(), Some("b"));
            assert!(takeover.previous_renew.is_some());
        }
    }

    #[test]
    fn an_expired_holders_shard_is_taken_after_a_crash_with_its_session() {
        let now = at(10_000);
        let seen = Seen {
            shards: BTreeMap::from([(0, held_by("b", 5_000, Some(7)))]),
            members: BTreeMap::new(),
        };
        let plan = plan_for(&seen, "a", &[], now, 1);
        assert_eq!(
            plan.take,
            [(
                0,
                Takeover {
                    after_crash: true,
                    crashed_session: Some(7),
                    previous_holder: Some("b".into()),
                    previous_renew: Some(at(5_000)),
                }
            )]
        );
    }

    #[test]
    fn a_released_shard_is_taken_as_a_graceful_handoff() {
        let now = at(10_000);
        let mut released = held_by("b", 9_000, Some(7));
        released.holder = None;
        let seen = Seen {
            shards: BTreeMap::from([(0, released)]),
            members: BTreeMap::new(),
        };
        let plan = plan_for(&seen, "a", &[], now, 2);
        assert_eq!(
            plan.take.len(),
            2,
            "the released shard and the one never leased"
        );
        assert!(plan.take.iter().all(|(_, t)| !t.after_crash));
        assert!(plan.take.iter().all(|(_, t)| t.crashed_session.is_none()));
    }

    #[test]
    fn a_valid_lease_of_another_replica_is_never_taken() {
        let now = at(10_000);
        let seen = Seen {
            shards: BTreeMap::from([(0, held_by("b", 9_000, Some(7)))]),
            members: BTreeMap::from([("b".to_string(), held_by("b", 9_000, None))]),
        };
        let plan = plan_for(&seen, "a", &[], now, 1);
        assert!(plan.take.is_empty());
        assert!(plan.renew.is_empty() && plan.release.is_empty());
    }

    #[test]
    fn a_replica_above_its_share_releases_its_highest_shards() {
        let now = at(10_000);
        let seen = Seen {
            shards: (0..4).map(|s| (s, held_by("a", 9_500, Some(1)))).collect(),
            members: BTreeMap::from([("b".to_string(), held_by("b", 9_500, None))]),
        };
        let plan = plan_for(&seen, "a", &[0, 1, 2, 3], now, 4);
        assert_eq!(
            (plan.renew, plan.release, plan.target),
            (vec![0, 1], vec![2, 3], 2)
        );
    }

    #[test]
    fn a_restarted_replica_takes_its_earlier_sessions_valid_leases_as_after_a_crash() {
        let now = at(10_000);
        let seen = Seen {
            shards: BTreeMap::from([
                (0, held_by("a", 9_000, Some(1))),
                (1, held_by("a", 9_000, Some(9))),
            ]),
            members: BTreeMap::new(),
        };
        let plan = plan_for(&seen, "a", &[], now, 2);
        assert!(plan.renew.is_empty());
        let facts: Vec<(u32, bool, Option<u64>)> = plan
            .take
            .iter()
            .map(|(s, t)| (*s, t.after_crash, t.crashed_session))
            .collect();
        assert_eq!(
            facts,
            [(0, false, None), (1, true, Some(9))],
            "session 1 is this process (a lost answer); session 9 an earlier process that crashed"
        );
    }

    #[test]
    fn a_shard_this_process_does_not_hold_is_released_when_above_its_share() {
        let now = at(10_000);
        let seen = Seen {
            shards: BTreeMap::from([(0, held_by("a", 9_000, Some(9)))]),
            members: BTreeMap::from([("0".to_string(), held_by("0", 9_500, None))]),
        };
        let plan = plan_for(&seen, "a", &[], now, 1);
        assert_eq!(
            (plan.target, plan.take.len(), plan.release),
            (0, 0, vec![0])
        );
    }

    #[test]
    fn expired_members_do_not_count_towards_the_shares() {
        let now = at(10_000);
        let seen = Seen {
            shards: BTreeMap::new(),
            members: BTreeMap::from([
                ("b".to_string(), held_by("b", 9_500, None)),
                ("c".to_string(), held_by("c", 1_000, None)),
            ]),
        };
        assert_eq!(live_members(&seen, "a", now), ["a", "b"]);
        assert_eq!(plan_for(&seen, "a", &[], now, 4).target, 2);
    }
}

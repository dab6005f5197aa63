//! Which shards this replica holds now. The lease manager publishes every change; the run controller,
//! the Pipeline controller and the triggers read it before acting, and follow its changes to take runs
//! over (a shard gained) or drop them at once (a shard lost).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use flowmason_store::RunId;

use super::{shard_of_pipeline, shard_of_run};

/// How this replica took a shard: what resuming its runs must know.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Takeover {
    /// The shard's Lease had expired with a holder still set: that replica died or stalled with the
    /// shard's runs in flight (not a graceful handoff).
    pub after_crash: bool,
    /// The engine session of that holder (its Lease's `flowmason.io/engine-session`), so that a run it
    /// had itself resumed after a crash is recognised as in flight at two crashes in a row.
    pub crashed_session: Option<u64>,
    pub previous_holder: Option<String>,
    /// The previous holder's last renewal: its death was after this (the failover time starts here).
    pub previous_renew: Option<Timestamp>,
}

/// The shards held now, each with how it was taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Owned {
    pub shards: BTreeMap<u32, Takeover>,
}

/// This replica's view of its shards; cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    count: u32,
    identity: Arc<str>,
    /// `None`: this replica owns every shard, always (a single replica).
    owned: Option<watch::Receiver<Owned>>,
    /// Until when each held shard may be acted on (see [`OwnershipSender::renewed`]).
    act_until: Arc<Mutex<BTreeMap<u32, Timestamp>>>,
}

/// Publishes the changes of an [`Ownership`] (the lease manager, or a test).
pub struct OwnershipSender {
    tx: watch::Sender<Owned>,
    act_until: Arc<Mutex<BTreeMap<u32, Timestamp>>>,
}

impl OwnershipSender {
    /// Replaces the set of shards held.
    pub fn set(&self, owned: Owned) {
        self.act_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|shard, _| owned.shards.contains_key(shard));
        self.tx.send_replace(owned);
    }

    /// Records that `shard` may be acted on until `until` (its Lease's renew deadline less a margin):
    /// past it, [`Ownership::may_act_on_run`] answers false at once, whether or not the lease manager
    /// has run since (a stopped or starved process must not act on a shard another replica may hold).
    pub fn renewed(&self, shard: u32, until: Timestamp) {
        self.act_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(shard, until);
    }

    /// The shards held now.
    pub fn current(&self) -> Owned {
        self.tx.borrow().clone()
    }
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("count", &self.count)
            .field("identity", &self.identity)
            .field("owned", &self.owned.as_ref().map(|o| o.borrow().clone()))
            .finish()
    }
}

impl Ownership {
    /// Owns every run and every Pipeline: `fm serve`, the sled log, or `--no-leader-election`.
    pub fn everything(identity: impl Into<String>) -> Ownership {
        Ownership {
            count: 1,
            identity: Arc::from(identity.into()),
            owned: None,
            act_until: Arc::default(),
        }
    }

    /// Owns the shards the returned sender sets (none at first), out of `count`.
    pub fn manual(identity: impl Into<String>, count: u32) -> (Ownership, OwnershipSender) {
        let (tx, rx) = watch::channel(Owned::default());
        let act_until = Arc::<Mutex<BTreeMap<u32, Timestamp>>>::default();
        let ownership = Ownership {
            count: count.max(1),
            identity: Arc::from(identity.into()),
            owned: Some(rx),
            act_until: act_until.clone(),
        };
        (ownership, OwnershipSender { tx, act_until })
    }

    /// How many shards the runs are split over.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether this replica is one of several sharing the work (false: it owns everything).
    pub fn is_sharded(&self) -> bool {
        self.owned.is_some()
    }

    /// This replica's identity (shown in a run's `status.replica`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn owns_shard(&self, shard: u32) -> bool {
        match &self.owned {
            None => true,
            Some(owned) => owned.borrow().shards.contains_key(&shard),
        }
    }

    pub fn owns_run(&self, run: RunId) -> bool {
        self.owns_shard(shard_of_run(run, self.count))
    }

    /// Whether this replica may still act on `run` now: it owns the run's shard and the shard's
    /// deadline (when one was recorded, see [`OwnershipSender::renewed`]) has not passed. The engine asks
    /// this before every append of a sharded replica.
    pub fn may_act_on_run(&self, run: RunId) -> bool {
        let shard = self.shard_of_run(run);
        if !self.owns_shard(shard) {
            return false;
        }
        let until = self
            .act_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&shard)
            .copied();
        until.is_none_or(|until| Timestamp::now() < until)
    }

    pub fn owns_pipeline(&self, namespace: &str, name: &str) -> bool {
        self.owns_shard(shard_of_pipeline(namespace, name, self.count))
    }

    /// The shard of `run` under this replica's count.
    pub fn shard_of_run(&self, run: RunId) -> u32 {
        shard_of_run(run, self.count)
    }

    /// The shards held now (every shard when not sharded).
    pub fn owned(&self) -> Owned {
        match &self.owned {
            Some(owned) => owned.borrow().clone(),
            None => Owned {
                shards: (0..self.count).map(|s| (s, Takeover::default())).collect(),
            },
        }
    }

    /// Follows the changes; `None` when not sharded (nothing ever changes).
    pub fn subscribe(&self) -> Option<watch::Receiver<Owned>> {
        self.owned.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_replica_owns_every_run_and_pipeline() {
        let ownership = Ownership::everything("solo");
        assert!(ownership.owns_run(RunId::from_u128(7)));
        assert!(ownership.owns_pipeline("default", "etl"));
        assert!(!ownership.is_sharded());
        assert_eq!(ownership.owned().shards.len(), 1);
    }

    #[test]
    fn a_sharded_replica_owns_exactly_the_shards_it_was_given() {
        let (ownership, sender) = Ownership::manual("a", 4);
        let run = RunId::from_u128(42);
        let shard = ownership.shard_of_run(run);
        assert!(
            !ownership.owns_run(run),
            "nothing is owned before the first lease"
        );
        let changes = ownership.subscribe().expect("sharded");
        sender.set(Owned {
            shards: BTreeMap::from([(shard, Takeover::default())]),
        });
        assert!(changes.has_changed().unwrap_or(false));
        assert!(ownership.owns_run(run));
        assert!(!ownership.owns_shard((shard + 1) % 4));
        sender.set(Owned::default());
        assert!(
            !ownership.owns_run(run),
            "a lost shard stops counting at once"
        );
    }
}

//! The lease manager of a sharded replica: every third of the lease duration it lists the Leases of the
//! sharded operator (label `flowmason.io/lease`), renews its member Lease `flowmason-replica-<identity>`,
//! and renews, takes and releases shard Leases `flowmason-shard-<i>` as the fair-share planner
//! ([`super::planning`]) says, each write guarded by the resourceVersion it read (the primitives of
//! [`crate::operator::leader`]). It publishes the shards it holds through an [`OwnershipSender`]:
//!
//! - a shard is published once its Lease was written with this replica as the holder;
//! - it is withdrawn before its Lease is released (so the controllers stop acting on it before another
//!   replica may take it), at once when a write finds another holder, and as soon as its renew deadline
//!   (the last successful renewal plus the lease duration) could pass before the next tick has renewed it
//!   (a renewal failed twice, the API server hangs, or this process was stalled);
//! - on a graceful stop every shard is withdrawn, then released, and the member Lease deleted.
//!
//! Every Lease it writes carries the engine session of this replica (`flowmason.io/engine-session`), so
//! that a replica taking an expired shard over knows which session crashed with its runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::future::join_all;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::planning::{self, LeaseState, Me, Seen};
use super::{Owned, OwnershipSender, Takeover};
use crate::metrics::Metrics;
use crate::model::vocabulary::{ENGINE_SESSION_ANNOTATION, LEASE_LABEL};
use crate::operator::error::{Error, Result};
use crate::operator::leader::{self, Hold};

/// The `flowmason.io/lease` label of a shard Lease.
const SHARD_KIND: &str = "shard";
/// The `flowmason.io/lease` label of a member Lease.
const REPLICA_KIND: &str = "replica";
const SHARD_PREFIX: &str = "flowmason-shard-";

/// What the lease manager of one replica needs.
#[derive(Debug, Clone)]
pub struct ShardLeaseConfig {
    /// Namespace of the Leases (all replicas must agree).
    pub namespace: String,
    /// Unique per replica (the pod name in a cluster); a valid part of a Kubernetes name.
    pub identity: String,
    /// Seconds a Lease stays valid after its last renewal: a dead replica's shards are taken after this.
    pub duration_secs: u32,
    /// How many shards the runs are split over (recorded in the event log; every replica the same).
    pub count: u32,
    /// This replica's engine session, written on every Lease it holds; `None` writes none.
    pub session: Option<u64>,
}

impl ShardLeaseConfig {
    /// How often the manager ticks: a third of the lease duration.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(u64::from(self.duration_secs.max(1)) * 1000 / 3)
    }
}

/// The Lease of shard `shard`.
pub fn shard_lease_name(shard: u32) -> String {
    format!("{SHARD_PREFIX}{shard}")
}

/// The member Lease of replica `identity`.
pub fn member_lease_name(identity: &str) -> String {
    format!("flowmason-replica-{identity}")
}

/// A running lease manager; [`ShardLeases::stop`] gives everything back.
pub struct ShardLeases {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ShardLeases {
    /// Starts managing this replica's Leases, publishing the shards it holds through `sender` (the
    /// sending end of the [`super::Ownership`] the controllers read, made with `config.count`). Must be
    /// called inside a tokio runtime.
    pub fn start(
        client: Client,
        config: ShardLeaseConfig,
        sender: OwnershipSender,
        metrics: Option<Arc<Metrics>>,
    ) -> ShardLeases {
        if let Some(m) = &metrics {
            m.set_shard_count(config.count);
            m.set_shards_owned(0);
            m.set_leader(false);
        }
        let manager = Manager {
            api: Api::namespaced(client, &config.namespace),
            config,
            sender,
            metrics,
            held: BTreeMap::new(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(manager.run(stop.clone()));
        ShardLeases { stop, task }
    }

    /// A graceful stop: withdraws every shard, releases its Lease so that another replica takes it at
    /// once, and deletes the member Lease.
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            tracing::warn!("the shard Leases were not all released in 10 s");
        }
    }
}

/// A shard this replica holds.
struct Held {
    takeover: Takeover,
    /// The last successful renewal plus the lease duration (this replica's clock).
    deadline: Timestamp,
    /// The Lease as last written (its resourceVersion guards the release).
    lease: Lease,
}

struct Manager {
    api: Api<Lease>,
    config: ShardLeaseConfig,
    sender: OwnershipSender,
    metrics: Option<Arc<Metrics>>,
    held: BTreeMap<u32, Held>,
}

/// Keys and values of labels or annotations.
type Pairs = Vec<(&'static str, String)>;

/// The outcome of one guarded write.
type Written = Result<Option<Lease>>;

impl Manager {
    async fn run(mut self, stop: CancellationToken) {
        let period = self.config.tick();
        // A tick is bounded by half a period, so that a hanging API server cannot keep a shard past its
        // deadline; ticks start a period apart however long each took.
        let bound = period / 2;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => break,
            }
            let started = Instant::now();
            // Stalled past a deadline (e.g. a stopped process): withdrawn before anything else.
            self.withdraw_expiring(Duration::ZERO);
            match tokio::time::timeout(bound, self.tick()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "shard leases"),
                Err(_) => tracing::warn!(?bound, "shard leases: the tick timed out"),
            }
            // The next renewal is written by the end of the next tick at the latest: a shard whose
            // deadline could come before that (with a margin for the clocks) is withdrawn now.
            let next = (started + period).saturating_duration_since(Instant::now());
            self.withdraw_expiring(next + bound + period / 4);
        }
        self.give_back().await;
    }

    /// The labels and annotations of a Lease of `kind` this replica holds.
    fn hold(&self, kind: &str) -> (Pairs, Pairs) {
        let labels = vec![(LEASE_LABEL, kind.to_string())];
        let annotations = self
            .config
            .session
            .map(|s| vec![(ENGINE_SESSION_ANNOTATION, s.to_string())])
            .unwrap_or_default();
        (labels, annotations)
    }

    /// Withdraws every shard whose renew deadline is less than `within` away.
    fn withdraw_expiring(&mut self, within: Duration) {
        let now = Timestamp::now();
        let horizon = SignedDuration::try_from(within)
            .ok()
            .and_then(|w| now.checked_add(w).ok())
            .unwrap_or(now);
        let before = self.held.len();
        self.held.retain(|shard, held| {
            let keep = held.deadline > horizon;
            if !keep {
                tracing::warn!(shard, deadline = %held.deadline, "shard not renewed in time: dropped");
            }
            keep
        });
        if self.held.len() != before {
            self.publish();
        }
    }

    /// Publishes the shards held now (when they changed) and their gauges.
    fn publish(&self) {
        let owned = Owned {
            shards: self
                .held
                .iter()
                .map(|(shard, held)| (*shard, held.takeover.clone()))
                .collect(),
        };
        if let Some(m) = &self.metrics {
            m.set_shards_owned(owned.shards.len());
            m.set_leader(!owned.shards.is_empty());
        }
        if self.sender.current() != owned {
            self.sender.set(owned);
        }
    }

    async fn tick(&mut self) -> Result<()> {
        let namespace = self.config.namespace.clone();
        let listed = self
            .api
            .list(&ListParams::default().labels(LEASE_LABEL))
            .await
            .map_err(|e| Error::kube(format!("list Leases in {namespace} ({LEASE_LABEL})"), e))?;
        let mut seen = Seen::default();
        let mut leases: BTreeMap<u32, Lease> = BTreeMap::new();
        let mut member = None;
        let member_name = member_lease_name(&self.config.identity);
        for lease in listed {
            let name = lease.name_any();
            if name == member_name {
                member = Some(lease.clone());
            }
            match lease.labels().get(LEASE_LABEL).map(String::as_str) {
                Some(SHARD_KIND) => {
                    if let Some(shard) = name
                        .strip_prefix(SHARD_PREFIX)
                        .and_then(|i| i.parse::<u32>().ok())
                        .filter(|s| *s < self.config.count)
                    {
                        seen.shards.insert(shard, LeaseState::of_lease(&lease));
                        leases.insert(shard, lease);
                    }
                }
                Some(REPLICA_KIND) => {
                    let state = LeaseState::of_lease(&lease);
                    if let Some(identity) = state.holder().map(str::to_string) {
                        seen.members.insert(identity, state);
                    }
                }
                _ => {}
            }
        }
        self.renew_member(member.unwrap_or_else(|| leader::unwritten(&namespace, &member_name)))
            .await;
        let now = Timestamp::now();
        let held: BTreeSet<u32> = self.held.keys().copied().collect();
        let me = Me {
            identity: &self.config.identity,
            session: self.config.session,
            held: &held,
        };
        let plan = planning::plan(&seen, &me, now, self.config.count);
        // Held but neither renewed nor released: the Lease names another holder now.
        let kept: BTreeSet<u32> = plan.renew.iter().chain(&plan.release).copied().collect();
        self.held.retain(|shard, _| {
            let keep = kept.contains(shard);
            if !keep {
                tracing::warn!(shard, "shard taken by another replica: dropped");
            }
            keep
        });
        // Withdrawn before released: the controllers stop acting before another replica may take it.
        // (A shard ours on its Lease but not held by this process is released as listed.)
        let released: Vec<Lease> = plan
            .release
            .iter()
            .filter_map(|shard| {
                self.held
                    .remove(shard)
                    .map(|held| held.lease)
                    .or_else(|| leases.get(shard).cloned())
            })
            .collect();
        self.publish();
        let released = join_all(
            released
                .into_iter()
                .map(|lease| leader::write_released(&self.api, lease, &self.config.identity)),
        )
        .await;
        for outcome in released {
            if let Err(error) = outcome {
                tracing::warn!(%error, "releasing a shard");
            }
        }
        self.renew(&plan.renew, &leases).await;
        self.take(plan.take, &leases).await;
        self.publish();
        Ok(())
    }

    async fn renew_member(&self, lease: Lease) {
        let (labels, annotations) = self.hold(REPLICA_KIND);
        let hold = Hold {
            identity: &self.config.identity,
            duration_secs: self.config.duration_secs,
            labels: &labels,
            annotations: &annotations,
        };
        match leader::write_held(&self.api, lease, &hold, Timestamp::now()).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!("member Lease written by another process"),
            Err(error) => tracing::warn!(%error, "member Lease"),
        }
    }

    /// Writes `shards` as held now, each from the Lease as listed (or a new one).
    async fn write_all(
        &self,
        shards: &[u32],
        leases: &BTreeMap<u32, Lease>,
        now: Timestamp,
    ) -> Vec<Written> {
        let (labels, annotations) = self.hold(SHARD_KIND);
        let hold = Hold {
            identity: &self.config.identity,
            duration_secs: self.config.duration_secs,
            labels: &labels,
            annotations: &annotations,
        };
        join_all(shards.iter().map(|shard| {
            let lease = leases.get(shard).cloned().unwrap_or_else(|| {
                leader::unwritten(&self.config.namespace, &shard_lease_name(*shard))
            });
            let hold = &hold;
            async move { leader::write_held(&self.api, lease, hold, now).await }
        }))
        .await
    }

    fn deadline(&self, renewed: Timestamp) -> Timestamp {
        renewed
            .checked_add(SignedDuration::from_secs(i64::from(
                self.config.duration_secs,
            )))
            .unwrap_or(renewed)
    }

    /// Until when a shard renewed with `deadline` may be acted on: a fifth of the lease duration
    /// before it, for the clocks of the replicas and an append already on its way to the log.
    fn act_until(&self, deadline: Timestamp) -> Timestamp {
        let margin = SignedDuration::from_millis(i64::from(self.config.duration_secs) * 200);
        deadline.checked_sub(margin).unwrap_or(deadline)
    }

    async fn renew(&mut self, shards: &[u32], leases: &BTreeMap<u32, Lease>) {
        let now = Timestamp::now();
        let written = self.write_all(shards, leases, now).await;
        let deadline = self.deadline(now);
        for (shard, outcome) in shards.iter().zip(written) {
            match outcome {
                Ok(Some(lease)) => {
                    if let Some(held) = self.held.get_mut(shard) {
                        held.deadline = deadline;
                        held.lease = lease;
                        self.sender.renewed(*shard, self.act_until(deadline));
                    }
                }
                Ok(None) => {
                    tracing::warn!(shard, "shard renewal conflicted: dropped");
                    self.held.remove(shard);
                }
                // Kept until its deadline comes too near (see `run`).
                Err(error) => tracing::warn!(shard, %error, "shard renewal"),
            }
        }
    }

    async fn take(&mut self, take: Vec<(u32, Takeover)>, leases: &BTreeMap<u32, Lease>) {
        let shards: Vec<u32> = take.iter().map(|(shard, _)| *shard).collect();
        let now = Timestamp::now();
        let written = self.write_all(&shards, leases, now).await;
        let deadline = self.deadline(now);
        for ((shard, takeover), outcome) in take.into_iter().zip(written) {
            match outcome {
                Ok(Some(lease)) => {
                    tracing::info!(
                        shard,
                        after_crash = takeover.after_crash,
                        previous = ?takeover.previous_holder,
                        "shard taken"
                    );
                    if let Some(m) = &self.metrics {
                        m.shard_taken(takeover.after_crash);
                    }
                    self.sender.renewed(shard, self.act_until(deadline));
                    self.held.insert(
                        shard,
                        Held {
                            takeover,
                            deadline,
                            lease,
                        },
                    );
                }
                // Another replica was faster.
                Ok(None) => {}
                Err(error) => tracing::warn!(shard, %error, "taking a shard"),
            }
        }
    }

    /// The graceful stop: withdraw, release, leave.
    async fn give_back(mut self) {
        let held = std::mem::take(&mut self.held);
        self.publish();
        let released = join_all(
            held.into_values()
                .map(|held| leader::write_released(&self.api, held.lease, &self.config.identity)),
        )
        .await;
        for outcome in released {
            if let Err(error) = outcome {
                tracing::warn!(%error, "releasing a shard");
            }
        }
        let member = member_lease_name(&self.config.identity);
        match self.api.delete(&member, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => tracing::warn!(%error, lease = %member, "deleting the member Lease"),
        }
    }
}

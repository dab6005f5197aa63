//! Leader election on a `coordination.k8s.io` Lease, so that of several operator replicas only one runs
//! controllers and engine runs at a time.
//!
//! The protocol is client-go's leaderelection with plain reads and updates guarded by
//! `resourceVersion` (optimistic concurrency): a replica takes the Lease when it is free or its holder
//! has not renewed within `leaseDurationSeconds`, and the holder renews every third of that. Two replicas
//! racing for the Lease conflict on the write and exactly one wins. (kube-lease-manager does the same
//! with server-side apply, which the embedded API server of `fm serve` does not serve, so the plain
//! protocol works against both it and any cluster.)

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};
use super::shards::planning::LeaseState;

/// Which Lease to hold and as whom.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name in a cluster).
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal; a crashed leader is replaced after this.
    pub duration_secs: u32,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: "flowmason-operator".into(),
            identity: identity.into(),
            duration_secs: 15,
        }
    }

    fn renew_every(&self) -> Duration {
        Duration::from_millis(u64::from(self.duration_secs.max(1)) * 1000 / 3)
    }
}

/// What one attempt on the Lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// We hold it (taken or renewed).
    Held,
    /// Another replica holds a valid lease.
    Taken,
}

/// Whether a Lease may be taken by `identity` at `now`: free, ours, or expired.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let state = LeaseState::of_spec(spec, None);
    match state.holder() {
        None => true,
        Some(holder) => holder == identity || state.expired(now),
    }
}

/// How a replica writes a Lease it holds.
#[derive(Debug, Clone)]
pub struct Hold<'a> {
    pub identity: &'a str,
    /// `spec.leaseDurationSeconds`.
    pub duration_secs: u32,
    /// Labels set on the Lease (e.g. `flowmason.io/lease`).
    pub labels: &'a [(&'a str, String)],
    /// Annotations set on the Lease (e.g. `flowmason.io/engine-session`).
    pub annotations: &'a [(&'a str, String)],
}

/// A Lease not created yet, to write with [`write_held`].
pub fn unwritten(namespace: &str, name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec: None,
    }
}

fn describe(lease: &Lease) -> String {
    format!(
        "Lease {}/{}",
        lease.metadata.namespace.as_deref().unwrap_or(""),
        lease.metadata.name.as_deref().unwrap_or("")
    )
}

/// Writes `lease` (as last read: its resourceVersion guards the write; without one it is created) held
/// by `hold.identity` and renewed at `now`. `Ok(None)`: another replica wrote it first (409).
pub async fn write_held(
    api: &Api<Lease>,
    mut lease: Lease,
    hold: &Hold<'_>,
    now: Timestamp,
) -> Result<Option<Lease>> {
    let mut spec = lease.spec.take().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(hold.identity) {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(hold.identity.to_string());
    spec.lease_duration_seconds = Some(i32::try_from(hold.duration_secs).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    for (key, value) in hold.labels {
        lease
            .metadata
            .labels
            .get_or_insert_default()
            .insert((*key).to_string(), value.clone());
    }
    for (key, value) in hold.annotations {
        lease
            .metadata
            .annotations
            .get_or_insert_default()
            .insert((*key).to_string(), value.clone());
    }
    let name = lease.metadata.name.clone().unwrap_or_default();
    let result = if lease.metadata.resource_version.is_some() {
        api.replace(&name, &PostParams::default(), &lease).await
    } else {
        api.create(&PostParams::default(), &lease).await
    };
    match result {
        Ok(written) => Ok(Some(written)),
        // Another replica wrote first (409 on create or on a stale resourceVersion).
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(Error::kube(format!("write {}", describe(&lease)), e)),
    }
}

/// Gives `lease` (as last read) up if `identity` holds it: clears the holder, guarded by its
/// resourceVersion, so that another replica takes it at once (a graceful handoff). `Ok(false)`: not held
/// by `identity`, or written by another replica since it was read.
pub async fn write_released(api: &Api<Lease>, mut lease: Lease, identity: &str) -> Result<bool> {
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(false);
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    spec.holder_identity = None;
    let name = lease.metadata.name.clone().unwrap_or_default();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(Error::kube(format!("release {}", describe(&lease)), e)),
    }
}

/// One try to take or renew the Lease.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<Attempt> {
    let now = Timestamp::now();
    let lease = api
        .get_opt(&config.name)
        .await
        .map_err(|e| {
            Error::kube(
                format!("read Lease {}/{}", config.namespace, config.name),
                e,
            )
        })?
        .unwrap_or_else(|| unwritten(&config.namespace, &config.name));
    if !may_take(lease.spec.as_ref(), &config.identity, now) {
        return Ok(Attempt::Taken);
    }
    let hold = Hold {
        identity: &config.identity,
        duration_secs: config.duration_secs,
        labels: &[],
        annotations: &[],
    };
    Ok(match write_held(api, lease, &hold, now).await? {
        Some(_) => Attempt::Held,
        None => Attempt::Taken,
    })
}

/// Leadership held: `lost` is cancelled when a renewal fails or finds another holder.
pub struct Leadership {
    pub lost: CancellationToken,
    release: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing and gives the Lease up, so that another replica takes over at once.
    pub async fn release(self) {
        self.release.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Waits until this replica holds the Lease (or `stop` is cancelled: `None`), then keeps renewing it.
pub async fn acquire(
    client: Client,
    config: &LeaseConfig,
    stop: &CancellationToken,
) -> Result<Option<Leadership>> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        match try_acquire(&api, config).await {
            Ok(Attempt::Held) => break,
            Ok(Attempt::Taken) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.renew_every()) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
    tracing::info!(identity = %config.identity, lease = %config.name, "leader");
    let lost = CancellationToken::new();
    let release = CancellationToken::new();
    let (signal, released, config) = (lost.clone(), release.clone(), config.clone());
    let task = tokio::spawn(async move {
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(config.renew_every()) => {}
                _ = released.cancelled() => break,
            }
            match try_acquire(&api, &config).await {
                Ok(Attempt::Held) => failures = 0,
                Ok(Attempt::Taken) => {
                    signal.cancel();
                    return;
                }
                // Tolerate a failed renewal or two: the lease is valid for three renewal periods.
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "lease renewal");
                    if failures >= 2 {
                        signal.cancel();
                        return;
                    }
                }
            }
        }
        // Give the lease up: clear the holder (guarded by resourceVersion like every write).
        if let Ok(Some(lease)) = api.get_opt(&config.name).await
            && let Err(error) = write_released(&api, lease, &config.identity).await
        {
            tracing::warn!(%error, "releasing the operator lease");
        }
    });
    Ok(Some(Leadership {
        lost,
        release,
        task,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Timestamp::from_second(renewed_secs).ok().map(MicroTime),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_own_or_expired_leases_may_be_taken() {
        let now = Timestamp::from_second(1_000).expect("time");
        assert!(may_take(None, "a", now));
        assert!(may_take(Some(&LeaseSpec::default()), "a", now));
        assert!(may_take(Some(&spec("a", 999, 15)), "a", now));
        assert!(!may_take(Some(&spec("b", 999, 15)), "a", now));
        assert!(may_take(Some(&spec("b", 900, 15)), "a", now));
    }
}

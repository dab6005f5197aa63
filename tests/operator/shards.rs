//! The shard lease manager against `fm serve`'s embedded API server: two managers in this process split
//! 8 shards with 2 s Leases, hand them over on a graceful stop, and split them again when one comes back,
//! never both owning a shard at once. Run only these with `cargo test --test operator shards::`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use flowmason::operator::shards::leases::member_lease_name;
use flowmason::operator::shards::{Ownership, ShardLeaseConfig, ShardLeases};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;

use super::*;

const COUNT: u32 = 8;

/// A lease manager for `identity` with 2 s Leases, and the Ownership it feeds.
fn start(client: &Client, identity: &str, session: u64) -> (Ownership, ShardLeases) {
    let (ownership, sender) = Ownership::manual(identity, COUNT);
    let config = ShardLeaseConfig {
        namespace: "default".into(),
        identity: identity.into(),
        duration_secs: 2,
        count: COUNT,
        session: Some(session),
    };
    let leases = ShardLeases::start(client.clone(), config, sender, None);
    (ownership, leases)
}

fn shards(ownership: &Ownership) -> BTreeSet<u32> {
    ownership.owned().shards.into_keys().collect()
}

/// Samples both ownerships until `stop`, recording every shard seen owned by both: a shard counts only
/// when the first was seen holding it before and after the second was (so a handoff between two samples
/// is not taken for an overlap).
fn watch_overlaps(
    a: Ownership,
    b: Arc<Mutex<Ownership>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeSet<u32>> {
    std::thread::spawn(move || {
        let mut overlaps = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            let b = b.lock().expect("lock").clone();
            let (a1, b1, a2, b2) = (shards(&a), shards(&b), shards(&a), shards(&b));
            overlaps.extend(a1.iter().filter(|s| b1.contains(s) && a2.contains(s)));
            overlaps.extend(b1.iter().filter(|s| a2.contains(s) && b2.contains(s)));
            std::thread::sleep(Duration::from_millis(2));
        }
        overlaps
    })
}

/// Both hold four shards, disjoint, and the Leases say the same.
async fn split_four_and_four(leases: &Api<Lease>, a: &Ownership, b: &Ownership, session_b: u64) {
    eventually("a 4 + 4 split", || async {
        let (sa, sb) = (shards(a), shards(b));
        (sa.len() == 4 && sb.len() == 4 && sa.is_disjoint(&sb)).then_some(())
    })
    .await;
    eventually("the shard Leases name the owners", || async {
        let listed = leases
            .list(&ListParams::default().labels("flowmason.io/lease=shard"))
            .await
            .ok()?;
        let (sa, sb) = (shards(a), shards(b));
        let mut agree = listed.items.len() == COUNT as usize;
        for lease in &listed.items {
            let name = lease.metadata.name.clone()?;
            let shard: u32 = name.strip_prefix("flowmason-shard-")?.parse().ok()?;
            let holder = lease.spec.as_ref()?.holder_identity.clone()?;
            let session = lease
                .metadata
                .annotations
                .as_ref()?
                .get("flowmason.io/engine-session")?
                .clone();
            agree &= match holder.as_str() {
                "a" => sa.contains(&shard) && session == "1",
                "b" => sb.contains(&shard) && session == session_b.to_string(),
                _ => false,
            };
        }
        agree.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lease_managers_split_the_shards_and_hand_them_over_on_a_graceful_stop() {
    let data = tempfile::tempdir().expect("tempdir");
    let api = Fm::serve(data.path(), &["--no-controllers", "--no-triggers"]);
    let client = api.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");

    let (a, a_leases) = start(&client, "a", 1);
    let (b, b_leases) = start(&client, "b", 2);
    let b_slot = Arc::new(Mutex::new(b.clone()));
    let stop_watching = Arc::new(AtomicBool::new(false));
    let overlaps = watch_overlaps(a.clone(), b_slot.clone(), stop_watching.clone());
    split_four_and_four(&leases, &a, &b, 2).await;

    b_leases.stop().await;
    assert!(
        shards(&b).is_empty(),
        "a stopped manager owns nothing: {b:?}"
    );
    assert!(
        leases
            .get_opt(&member_lease_name("b"))
            .await
            .expect("read")
            .is_none(),
        "a graceful stop deletes the member Lease"
    );
    eventually("a holds every shard", || async {
        (shards(&a).len() == COUNT as usize).then_some(())
    })
    .await;
    assert!(
        a.owned().shards.values().all(|t| !t.after_crash),
        "released shards are taken as a graceful handoff: {a:?}"
    );

    let (b, b_leases) = start(&client, "b", 3);
    *b_slot.lock().expect("lock") = b.clone();
    split_four_and_four(&leases, &a, &b, 3).await;

    stop_watching.store(true, Ordering::Relaxed);
    let overlaps = overlaps.join().expect("watcher");
    assert!(overlaps.is_empty(), "owned by both at once: {overlaps:?}");
    a_leases.stop().await;
    b_leases.stop().await;
    api.stop();
}

//! The shard lease manager against `fm serve`'s embedded API server: two managers in this process split
//! 8 shards with 2 s Leases, hand them over on a graceful stop, and split them again when one comes back,
//! never both owning a shard at once; and `fm operator --event-log jetstream` in sharded mode. Run only
//! these with `cargo test --test operator shards::`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use flowmason::operator::shards::leases::member_lease_name;
use flowmason::operator::shards::{Ownership, ShardLeaseConfig, ShardLeases};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;

use super::nats::NatsCluster;
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

/// `fm operator --event-log jetstream` on `nats`: sharded, 2 s Leases, `shards` shards.
fn jetstream_operator(
    kubeconfig: &Path,
    dir: &Path,
    nats: &NatsCluster,
    id: &str,
    shards: &str,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fm"));
    command
        .args(["operator", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--data-dir")
        .arg(dir)
        .args(["--event-log", "jetstream", "--event-nats", &nats.url_list()])
        .args(["--identity", id, "--lease-seconds", "2", "--shards", shards])
        .args([
            "--http-bind",
            "127.0.0.1:0",
            "--webhook-bind",
            "127.0.0.1:0",
        ])
        .arg("--no-triggers")
        .env("FM_LOG", "error");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_operator_alone_holds_every_shard_and_another_shard_count_is_refused() {
    let nats = NatsCluster::single();
    let data = tempfile::tempdir().expect("tempdir");
    let api = Fm::serve(data.path(), &["--no-controllers", "--no-triggers"]);
    let client = api.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let mut a = jetstream_operator(&api.kubeconfig, &data.path().join("a"), &nats, "a", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fm operator");
    let base = serve::operator_http_address(&mut a);

    eventually(
        "a holds the 4 shard Leases and its member Lease",
        || async {
            let listed = leases
                .list(&ListParams::default().labels("flowmason.io/lease"))
                .await
                .ok()?;
            let held = listed
                .items
                .iter()
                .filter(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some("a"))
                .count();
            (held == 5).then_some(())
        },
    )
    .await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), "default");
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_pipeline(&pipelines, "sharded", delay_stages(10)).await;
    create_run(&runs, "sharded-1", "sharded", json!({"x": 1})).await;
    let done = wait_phase(&runs, "sharded-1", &terminal()).await;
    assert_eq!(done.status.and_then(|s| s.phase), Some(RunPhase::Succeeded));
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    for line in [
        "flowmason_shards 4",
        "flowmason_shards_owned 4",
        "flowmason_leader 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }

    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(
        ready.status().as_u16(),
        200,
        "a sharded replica's readiness needs no leader Lease"
    );

    let refused = jetstream_operator(&api.kubeconfig, &data.path().join("b"), &nats, "b", "8")
        .output()
        .expect("fm operator");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{message}");
    assert!(
        message.contains("shards=4") && message.contains("shards=8"),
        "the refusal names both counts: {message}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status();
    let _ = a.wait();
    let listed = leases
        .list(&ListParams::default().labels("flowmason.io/lease"))
        .await
        .expect("list");
    assert!(
        listed.items.iter().all(|l| l
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_none()),
        "a graceful stop releases every shard and deletes the member Lease: {:?}",
        listed.items
    );
    api.stop();
}

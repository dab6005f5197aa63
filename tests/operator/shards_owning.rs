//! Sharded ownership (issue 12) seen from one replica: the operator in process against the embedded API
//! server, given a manual `Ownership` the test grants and revokes shards of, as the lease manager would.
//! A replica leaves the runs of a shard it does not hold alone, takes them over when it gains the shard,
//! drops them at once when it loses it, and arms a Pipeline's schedule only while it owns its shard.
//!
//! Run only these with `cargo test --test operator shards::`.

use flowmason::operator::runs::run_id_of;
use flowmason::operator::shards::{Owned, Ownership, OwnershipSender, Takeover};
use flowmason::triggers::{ManualClock, TriggerConfig, Triggers};
use flowmason_actors::Engine;
use flowmason_store::{EventKind, RunId};
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::ResourceExt;
use kube::api::ListParams;

use super::*;

/// Two shards: every run is in one the test holds or in the other.
const SHARDS: u32 = 2;
const IDENTITY: &str = "replica-a";

/// The operator of one replica, in process, and what the test drives it with.
struct Replica {
    server: Server,
    client: Client,
    engine: Engine,
    sender: OwnershipSender,
    ownership: Ownership,
    /// The triggers the operator owns (with a clock that does not move), when asked for.
    triggers: Option<Arc<Triggers>>,
    stop: CancellationToken,
    running: tokio::task::JoinHandle<flowmason::operator::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts the embedded API server (with the CRDs) and an operator owning no shard yet, with triggers of
/// its own when `with_triggers`.
async fn replica(with_triggers: bool) -> Replica {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServeConfig::new(dir.path().join("api")))
        .await
        .expect("server starts");
    let client =
        Client::try_from(server.client_config().await.expect("kubeconfig")).expect("client");
    install_crds(&client).await;
    let events =
        EventStore::open(dir.path().join("events"), StoreConfig::default()).expect("events");
    let (ownership, sender) = Ownership::manual(IDENTITY, SHARDS);
    let triggers = with_triggers.then(|| {
        Arc::new(Triggers::new(
            client.clone(),
            TriggerConfig {
                clock: Arc::new(ManualClock::new(chrono::Utc::now())),
                ..TriggerConfig::default()
            },
        ))
    });
    let operator = Operator::new(
        client.clone(),
        events,
        builtin_registry(),
        OperatorConfig {
            ownership: Some(ownership.clone()),
            triggers: triggers.clone(),
            ..OperatorConfig::default()
        },
    );
    let engine = operator.engine().clone();
    let stop = CancellationToken::new();
    let running = actix::spawn(operator.run(stop.clone()));
    Replica {
        server,
        client,
        engine,
        sender,
        ownership,
        triggers,
        stop,
        running,
        _dir: dir,
    }
}

impl Replica {
    /// Holds exactly `shards` (handed over, not after a crash).
    fn hold(&self, shards: &[u32]) {
        self.sender.set(Owned {
            shards: shards.iter().map(|s| (*s, Takeover::default())).collect(),
        });
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.running.await;
        self.server.shutdown().await;
    }
}

/// The run id and shard of PipelineRun `name`.
async fn shard_of(runs: &Api<PipelineRun>, name: &str, ownership: &Ownership) -> (RunId, u32) {
    let run = runs.get(name).await.expect("get run");
    let id = run_id_of(&run).expect("run id");
    (id, ownership.shard_of_run(id))
}

/// Creates runs `<prefix>-<i>` of `pipeline` until one lands in `shard`; returns its name.
async fn run_in_shard(
    runs: &Api<PipelineRun>,
    prefix: &str,
    pipeline: &str,
    shard: u32,
    ownership: &Ownership,
) -> String {
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        create_run(runs, &name, pipeline, json!({"x": i})).await;
        if shard_of(runs, &name, ownership).await.1 == shard {
            return name;
        }
    }
    unreachable!("some run lands in every shard")
}

/// The Kubernetes Events recorded on run `name`.
async fn kube_events(client: &Client, name: &str) -> usize {
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default().labels(&format!("flowmason.io/run={name}")))
        .await
        .expect("list events")
        .items
        .len()
}

/// Runs a quick run in shard `shard` (held) to its end: every change made before it was reconciled by
/// then too, so what a run of another shard did not do meanwhile, it will not do.
async fn settle(runs: &Api<PipelineRun>, prefix: &str, shard: u32, ownership: &Ownership) {
    let name = run_in_shard(runs, prefix, "quick", shard, ownership).await;
    let status = final_status(runs, &name).await;
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    assert_eq!(status.replica.as_deref(), Some(IDENTITY));
}

#[test]
fn a_run_is_left_alone_until_its_shard_is_granted_and_dropped_when_it_is_revoked() {
    flowmason::runtime::block_on(|| async {
        let replica = replica(false).await;
        let ownership = replica.ownership.clone();
        let pipelines: Api<Pipeline> = Api::namespaced(replica.client.clone(), "default");
        let runs: Api<PipelineRun> = Api::namespaced(replica.client.clone(), "default");
        create_pipeline(&pipelines, "slow", delay_stages(600_000)).await;
        create_pipeline(&pipelines, "quick", delay_stages(1)).await;

        // Nothing held: the run is seen and left alone.
        create_run(&runs, "idle", "slow", json!({"x": 0})).await;
        let (run_id, shard) = shard_of(&runs, "idle", &ownership).await;
        let other = (shard + 1) % SHARDS;
        replica.hold(&[other]);
        settle(&runs, "before", other, &ownership).await;
        let idle = runs.get("idle").await.expect("get idle");
        assert!(idle.finalizers().is_empty(), "no finalizer: {idle:?}");
        assert!(idle.status.is_none(), "no status: {idle:?}");
        assert_eq!(
            replica.engine.fold(run_id).expect("fold"),
            None,
            "not started"
        );

        // Granted: started here, and its status names this replica.
        replica.hold(&[other, shard]);
        let running = wait_phase(&runs, "idle", &[RunPhase::Running]).await;
        assert_eq!(
            running.status.and_then(|s| s.replica).as_deref(),
            Some(IDENTITY)
        );
        assert!(!running.metadata.finalizers.unwrap_or_default().is_empty());

        // Revoked: dropped at once. A cancel asked for afterwards is not acted on here, and nothing
        // more reaches the log, the status or the Events.
        replica.hold(&[other]);
        let appended = replica.engine.store().events(run_id).expect("events").len();
        let events = kube_events(&replica.client, "idle").await;
        runs.patch(
            "idle",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"status": "Cancelled"}})),
        )
        .await
        .expect("cancel idle");
        settle(&runs, "after", other, &ownership).await;
        let idle = runs.get("idle").await.expect("get idle");
        assert_eq!(
            idle.status.and_then(|s| s.phase),
            Some(RunPhase::Running),
            "the status is left as the owner last wrote it"
        );
        assert_eq!(
            replica.engine.store().events(run_id).expect("events").len(),
            appended,
            "nothing appended after the shard was lost"
        );
        assert_eq!(kube_events(&replica.client, "idle").await, events);

        // Granted again: taken over from the log (RunResumed), and the cancel is acted on.
        replica.hold(&[other, shard]);
        let status = final_status(&runs, "idle").await;
        assert_eq!(status.phase, Some(RunPhase::Cancelled), "{status:?}");
        let kinds: Vec<EventKind> = replica
            .engine
            .store()
            .events(run_id)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, EventKind::RunResumed { .. })),
            "{kinds:?}"
        );
        replica.stop().await;
    })
    .expect("runtime");
}

#[test]
fn a_pipelines_schedule_is_armed_only_while_its_shard_is_owned() {
    flowmason::runtime::block_on(|| async {
        let replica = replica(true).await;
        let triggers = replica.triggers.clone().expect("triggers");
        let pipelines: Api<Pipeline> = Api::namespaced(replica.client.clone(), "default");
        let mut cron = pipeline("nightly", delay_stages(1));
        cron.spec.schedule = Some("0 3 * * *".into());
        pipelines
            .create(&PostParams::default(), &cron)
            .await
            .expect("create pipeline");
        let shard = flowmason::operator::shards::shard_of_pipeline("default", "nightly", SHARDS);
        let other = (shard + 1) % SHARDS;
        let armed = || triggers.schedule_armed("default", "nightly");

        replica.hold(&[shard]);
        eventually("the schedule armed once its shard is owned", || async {
            armed().then_some(())
        })
        .await;
        replica.hold(&[other]);
        eventually("the schedule disarmed once its shard is lost", || async {
            (!armed()).then_some(())
        })
        .await;
        replica.hold(&[other, shard]);
        eventually(
            "the schedule armed again once its shard is regained",
            || async { armed().then_some(()) },
        )
        .await;
        replica.stop().await;
    })
    .expect("runtime");
}

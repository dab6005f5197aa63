//! The event log's conformance suite, run against both backends (a sled log in a temp dir, and a NATS
//! JetStream stream on a real `nats-server`), and the JetStream log's fencing: a writer that did not see
//! the run's last message is refused, and its run actor stops.

use std::time::Duration;

use flowmason_actors::{Engine, EngineConfig, EngineError, RunRequest, TakeUp};
use flowmason_store::{
    Durability, EventKind, EventStore, JetStreamConfig, LifecycleError, RunPhase, RunQuery,
    StoreConfig, StoreError,
};
use serde_json::json;

use super::{Flaky, Sleep, accepted, plan, registry, stage, with_config};

#[path = "../support/nats.rs"]
mod nats;

use nats::NatsCluster;

/// Where a conformance case keeps its log; [`Backend::open`] opens it (again).
enum Backend {
    Sled(tempfile::TempDir),
    JetStream(NatsCluster),
}

impl Backend {
    fn sled() -> Backend {
        Backend::Sled(tempfile::tempdir().expect("tempdir"))
    }

    fn jetstream() -> Backend {
        Backend::JetStream(NatsCluster::single())
    }

    fn open(&self, durability: Durability) -> EventStore {
        let config = StoreConfig {
            durability,
            ..StoreConfig::default()
        };
        match self {
            Backend::Sled(dir) => EventStore::open(dir.path().join("events"), config),
            Backend::JetStream(cluster) => {
                EventStore::open_jetstream(&JetStreamConfig::new(cluster.urls()), config)
            }
        }
        .expect("open the event log")
    }
}

fn both() -> [Backend; 2] {
    [Backend::sled(), Backend::jetstream()]
}

fn new_run() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

fn accepted_in(pipeline: &str, namespace: &str) -> EventKind {
    let EventKind::RunAccepted {
        generation,
        trigger,
        run_name,
        labels,
        plan,
        inputs,
        ..
    } = accepted(json!({"stages": []}), 1, None)
    else {
        unreachable!()
    };
    EventKind::RunAccepted {
        pipeline: pipeline.into(),
        namespace: namespace.into(),
        generation,
        trigger,
        run_name,
        labels,
        plan,
        inputs,
    }
}

fn started(stage: &str) -> EventKind {
    EventKind::StageStarted {
        stage: stage.into(),
        attempt: 1,
        input: serde_json::Value::Null,
    }
}

fn succeeded() -> EventKind {
    EventKind::RunSucceeded { output: json!(1) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_logs_number_events_refuse_bad_streams_and_fold_the_same() {
    for backend in both() {
        let store = backend.open(Durability::Always);
        let run = new_run();
        let events = store
            .append_durable(run, vec![accepted_in("p", "ns"), EventKind::RunStarted])
            .await
            .expect("accept");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
        let more = store
            .append_durable(run, vec![started("a"), started("b")])
            .await
            .expect("stages");
        assert_eq!(more.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(matches!(
            store.append(run, vec![accepted_in("p", "ns")]),
            Err(StoreError::Lifecycle(
                LifecycleError::AlreadyAccepted { .. }
            ))
        ));
        assert!(matches!(
            store.append(new_run(), vec![started("a")]),
            Err(StoreError::Lifecycle(LifecycleError::NotAccepted { .. }))
        ));
        store
            .append_durable(run, vec![succeeded()])
            .await
            .expect("end");
        assert!(matches!(
            store.append(run, vec![started("c")]),
            Err(StoreError::Lifecycle(LifecycleError::RunEnded { .. }))
        ));
        let state = store.fold(run).expect("fold").expect("run");
        assert_eq!((state.phase, state.last_seq), (RunPhase::Succeeded, 4));
        let summary = store.summary(run).expect("summary").expect("run");
        assert_eq!((summary.phase, summary.last_seq), (RunPhase::Succeeded, 4));
        assert_eq!(store.events(run).expect("events").len(), 5);
        assert_eq!(store.events_from(run, 3).expect("events").len(), 2);
        drop(store);
        // Reopened (JetStream: a new index built from the stream), the log holds the same.
        let store = backend.open(Durability::Always);
        assert_eq!(store.fold(run).expect("fold").expect("run"), state);
        assert_eq!(store.summary(run).expect("summary").expect("run"), summary);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_logs_list_unfinished_runs_page_history_and_delete_ended_runs() {
    for backend in both() {
        let store = backend.open(Durability::Batch);
        let mut runs = Vec::new();
        for i in 0..5 {
            let run = new_run();
            store
                .append_durable(run, vec![accepted_in(&format!("p{}", i % 2), "ns")])
                .await
                .expect("accept");
            runs.push(run);
            std::thread::sleep(Duration::from_millis(2));
        }
        store
            .append_durable(runs[1], vec![EventKind::RunStarted, succeeded()])
            .await
            .expect("end");
        assert_eq!(
            store.unfinished_runs().expect("unfinished"),
            vec![runs[0], runs[2], runs[3], runs[4]]
        );
        // Pages of two, newest first, none repeated or skipped.
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = store
                .query(&RunQuery {
                    limit: 2,
                    continue_token: token.clone(),
                    ..RunQuery::default()
                })
                .expect("query");
            seen.extend(page.runs.iter().map(|s| s.run_id));
            token = page.continue_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen, runs.iter().rev().copied().collect::<Vec<_>>());
        let p1 = store
            .query(&RunQuery {
                pipeline: Some("p1".into()),
                ..RunQuery::default()
            })
            .expect("query");
        assert_eq!(
            p1.runs.iter().map(|s| s.run_id).collect::<Vec<_>>(),
            vec![runs[3], runs[1]]
        );

        assert!(matches!(
            store.delete_run(runs[0]),
            Err(StoreError::RunInFlight { .. })
        ));
        assert!(store.delete_run(runs[1]).expect("delete"));
        assert_eq!(store.summary(runs[1]).expect("summary"), None);
        assert!(store.events(runs[1]).expect("events").is_empty());
        drop(store);
        let store = backend.open(Durability::Batch);
        assert_eq!(
            store.summary(runs[1]).expect("summary"),
            None,
            "deleted for good"
        );
        assert_eq!(store.unfinished_runs().expect("unfinished").len(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_logs_keep_every_event_of_concurrent_appenders() {
    for backend in both() {
        let store = backend.open(Durability::Always);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let run = new_run();
                store
                    .append_durable(run, vec![accepted_in("p", "ns")])
                    .await
                    .expect("accept");
                for i in 0..10 {
                    let events = store
                        .append_durable(run, vec![started(&format!("s{i}"))])
                        .await
                        .expect("append");
                    assert_eq!(events[0].seq, i + 1);
                }
                run
            }));
        }
        let mut runs = Vec::new();
        for task in tasks {
            runs.push(task.await.expect("appender"));
        }
        drop(store);
        let store = backend.open(Durability::Always);
        for run in runs {
            let events = store.events(run).expect("events");
            assert_eq!(
                events.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (0..11).collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_writer_that_did_not_see_the_last_append_is_refused() {
    let cluster = NatsCluster::single();
    let open = || {
        EventStore::open_jetstream(
            &JetStreamConfig::new(cluster.urls()),
            StoreConfig {
                durability: Durability::Batch,
                ..StoreConfig::default()
            },
        )
        .expect("open")
    };
    let stale = open();
    let run = new_run();
    stale
        .append_durable(run, vec![accepted_in("p", "ns"), EventKind::RunStarted])
        .await
        .expect("accept");
    // Another engine takes the run over: it has read the run's messages when it opened the log.
    let owner = open();
    owner
        .append_durable(run, vec![started("b")])
        .await
        .expect("the new owner appends");
    // The old owner did not append that event: its next append is refused (at once when its index has
    // already read the other writer's message, else by the stream), and so is every later one.
    let err = match stale.append(run, vec![started("a")]) {
        Err(e) => e,
        Ok(receipt) => receipt.durable().await.expect_err("fenced"),
    };
    assert!(
        matches!(err, StoreError::LostOwnership { run: r, .. } if r == run),
        "{err:?}"
    );
    assert!(err.to_string().contains(&run.to_string()), "{err}");
    assert!(matches!(
        stale.append(run, vec![started("c")]),
        Err(StoreError::LostOwnership { .. })
    ));
    assert!(matches!(
        stale.sync_run(run).await,
        Err(StoreError::LostOwnership { .. })
    ));
    // The stale writer's index holds the stream's events again, not its refused ones.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kinds: Vec<_> = stale
            .events(run)
            .expect("events")
            .into_iter()
            .map(|e| e.kind.name())
            .collect();
        if kinds == ["RunAccepted", "RunStarted", "StageStarted"]
            && stale.events(run).expect("events")[2].kind.stage() == Some("b")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stale index not rebuilt: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream is one consistent run: a fresh reader folds it.
    owner
        .append_durable(run, vec![succeeded()])
        .await
        .expect("end");
    let fresh = open();
    let state = fresh.fold(run).expect("fold").expect("run");
    assert_eq!((state.phase, state.last_seq), (RunPhase::Succeeded, 3));
    assert_eq!(state.stages.len(), 1);
    assert!(state.stages.contains_key("b"));
}

#[actix_rt::test]
async fn an_engine_that_lost_its_run_to_another_stops_it_and_acts_on_nothing_more() {
    let cluster = NatsCluster::single();
    let open = || {
        EventStore::open_jetstream(
            &JetStreamConfig::new(cluster.urls()),
            StoreConfig {
                durability: Durability::Batch,
                ..StoreConfig::default()
            },
        )
        .expect("open")
    };
    let (sleep, flaky) = (Sleep::default(), Flaky::default());
    let stale_store = open();
    let stale = Engine::new(
        stale_store.clone(),
        registry(&sleep, &flaky),
        EngineConfig::default(),
    );
    let spec = plan(vec![
        with_config(stage("slow", "sleep", &[]), json!({ "ms": 1500 })),
        stage("after", "echo", &["slow"]),
    ]);
    let handle = stale
        .start(RunRequest::new("test", spec, json!({})))
        .await
        .expect("start");
    let run = handle.run_id;
    // While `slow` runs, a second engine takes the run over (as a new operator leader would).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let owner_store = loop {
        let store = open();
        if store
            .fold(run)
            .expect("fold")
            .is_some_and(|s| s.stages.contains_key("slow"))
        {
            break store;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run not in the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let owner = Engine::new(
        owner_store.clone(),
        registry(&sleep, &flaky),
        EngineConfig::default(),
    );
    let resumed = owner
        .resume(run, false)
        .await
        .expect("resume")
        .expect("unfinished");
    let state = resumed
        .finished()
        .await
        .expect("the new owner finishes the run");
    assert_eq!(state.phase, RunPhase::Succeeded);
    // The old engine's `slow` ends after that: its append is refused and the run stops there.
    let err = handle.finished().await.expect_err("fenced");
    assert!(
        matches!(
            &err,
            EngineError::Store {
                source: StoreError::LostOwnership { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // One consistent stream: one terminal event, `after` ran once (by the owner), consecutive seqs.
    let events = open().events(run).expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (0..events.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(events.iter().filter(|e| e.kind.is_terminal()).count(), 1);
    assert_eq!(
        events
            .iter()
            .filter(
                |e| matches!(&e.kind, EventKind::StageStarted { stage, .. } if stage == "after")
            )
            .count(),
        1
    );
}

#[actix_rt::test]
async fn runs_on_a_three_node_r3_stream_survive_the_kill_of_a_node() {
    let mut cluster = NatsCluster::start(3);
    let mut config = JetStreamConfig::new(cluster.urls());
    config.replicas = 3;
    let open = |config: &JetStreamConfig| {
        EventStore::open_jetstream(
            config,
            StoreConfig {
                durability: Durability::Batch,
                ..StoreConfig::default()
            },
        )
        .expect("open the R3 stream")
    };
    let store = open(&config);
    let (sleep, flaky) = (Sleep::default(), Flaky::default());
    let engine = Engine::new(
        store.clone(),
        registry(&sleep, &flaky),
        EngineConfig::default(),
    );
    let spec = plan(vec![
        with_config(stage("a", "sleep", &[]), json!({ "ms": 20 })),
        stage("b", "echo", &["a"]),
        stage("c", "echo", &["b"]),
    ]);
    let mut handles = Vec::new();
    for i in 0..200 {
        let handle = engine
            .start(RunRequest::new("test", spec.clone(), json!({ "i": i })))
            .await
            .expect("start");
        handles.push(handle);
        if i == 100 {
            // SIGKILL a node with half the runs accepted and many in flight.
            cluster.kill(0);
        }
    }
    let mut ended = Vec::new();
    for handle in handles {
        let state = handle.finished().await.expect("every run ends");
        assert_eq!(state.phase, RunPhase::Succeeded, "run {}", state.run_id);
        ended.push(state);
    }
    cluster.restart(0);
    // Every acknowledged event is in the stream, once: a fresh reader through the surviving nodes folds
    // each run to the state its engine reported.
    let mut survivors = config.clone();
    survivors.servers = cluster.urls()[1..].to_vec();
    let reader = open(&survivors);
    for state in &ended {
        let events = reader.events(state.run_id).expect("events");
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (0..=state.last_seq).collect::<Vec<_>>(),
            "run {}",
            state.run_id
        );
        assert_eq!(events.iter().filter(|e| e.kind.is_terminal()).count(), 1);
    }
    assert!(reader.unfinished_runs().expect("unfinished").is_empty());
    // The killed node rejoined: a reader connected to it alone sees every run.
    let mut rejoined = config.clone();
    rejoined.servers = cluster.urls()[..1].to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ok = EventStore::open_jetstream(&rejoined, StoreConfig::default())
            .ok()
            .and_then(|r| {
                r.query(&RunQuery {
                    limit: 1000,
                    ..RunQuery::default()
                })
                .ok()
            })
            .is_some_and(|page| page.runs.len() == ended.len());
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed node did not rejoin"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message of the stream that cannot be read (corrupt bytes, or a record format this version does not
/// know) is named, with its run and stream sequence, when the run is read after the log is opened: never
/// silently left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_names_corrupt_and_unknown_messages_when_their_run_is_read() {
    let backend = Backend::jetstream();
    let Backend::JetStream(cluster) = &backend else {
        unreachable!()
    };
    let store = backend.open(Durability::Always);
    let corrupt = new_run();
    store
        .append_durable(corrupt, vec![accepted_in("p", "ns")])
        .await
        .expect("accept");
    let healthy = new_run();
    store
        .append_durable(healthy, vec![accepted_in("p", "ns")])
        .await
        .expect("accept");
    drop(store);

    // Written behind the log's back: a truncated segment after the accepted event, and a first message
    // in a record format from the future.
    let client = async_nats::connect(cluster.urls()[0].as_str())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let unknown = new_run();
    for (run, seq, payload) in [
        (corrupt, "1", vec![2u8, 9, 9]),
        (unknown, "0", b"\x7f{\"future\":true}".to_vec()),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Fm-Seq", seq);
        js.publish_with_headers(
            format!("flowmason.FLOWMASON_EVENTS.events.{run}"),
            headers,
            payload.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }

    let store = backend.open(Durability::Always);
    for run in [corrupt, unknown] {
        let err = store.fold(run).expect_err("an unreadable message");
        assert!(
            matches!(&err, StoreError::UnreadableMessage { run: r, stream, .. } if *r == run && stream == "FLOWMASON_EVENTS"),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("run {run}: message "))
                && text.contains("of JetStream stream FLOWMASON_EVENTS cannot be read"),
            "{text}"
        );
        assert!(store.summary(run).is_err(), "the summary names it too");
    }
    // Other runs read as before.
    let state = store.fold(healthy).expect("fold").expect("run");
    assert_eq!(state.phase, RunPhase::Pending);
}

/// The shards setting of a sharded operator: the first process records it, later ones must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_logs_record_a_claimed_setting_once_and_refuse_another_value_naming_both() {
    for backend in both() {
        let store = backend.open(Durability::Batch);
        store.claim_setting("shards", "16").expect("first claim");
        drop(store);
        let store = backend.open(Durability::Batch);
        store.claim_setting("shards", "16").expect("the same value");
        let err = store
            .claim_setting("shards", "8")
            .expect_err("another value");
        assert!(
            matches!(&err, StoreError::SettingMismatch { name, recorded, wanted, .. }
                if name == "shards" && recorded == "16" && wanted == "8"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.ends_with("records shards=16; this process has shards=8"),
            "{text}"
        );
    }
}

fn open_jetstream(cluster: &NatsCluster) -> EventStore {
    EventStore::open_jetstream(
        &JetStreamConfig::new(cluster.urls()),
        StoreConfig {
            durability: Durability::Batch,
            ..StoreConfig::default()
        },
    )
    .expect("open")
}

/// Waits until `engine`'s view of the run (caught up with the stream) satisfies `done`.
async fn wait_for_state(
    engine: &Engine,
    run: uuid::Uuid,
    what: &str,
    done: impl Fn(&flowmason_store::RunState) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if engine
            .fold_latest(run)
            .await
            .expect("fold")
            .is_some_and(|s| done(&s))
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn running_attempt(state: &flowmason_store::RunState, stage: &str, attempt: u32) -> bool {
    state
        .stages
        .get(stage)
        .is_some_and(|s| s.phase == flowmason_store::StagePhase::Running && s.attempts == attempt)
}

/// A run handed from one engine to another while it runs, and back: it ends once, one consistent
/// stream, whatever the engine that gave it up still had in flight.
#[actix_rt::test]
async fn two_engines_on_one_stream_hand_a_running_run_over_and_back() {
    let cluster = NatsCluster::single();
    let (sleep, flaky) = (Sleep::default(), Flaky::default());
    let a = Engine::new(
        open_jetstream(&cluster),
        registry(&sleep, &flaky),
        EngineConfig::default(),
    );
    let b = Engine::new(
        open_jetstream(&cluster),
        registry(&sleep, &flaky),
        EngineConfig::default(),
    );
    let (a_session, b_session) = (
        a.session_id().expect("session"),
        b.session_id().expect("session"),
    );
    assert_ne!(a_session, b_session);
    let spec = plan(vec![
        with_config(stage("slow", "sleep", &[]), json!({ "ms": 1500 })),
        stage("after", "echo", &["slow"]),
    ]);
    let on_a = a
        .start(RunRequest::new("test", spec, json!({})))
        .await
        .expect("start");
    let run = on_a.run_id;
    wait_for_state(&b, run, "A never started slow", |s| {
        running_attempt(s, "slow", 1)
    })
    .await;

    // B takes the run over while A still runs it (a shard changing hands); A then gives it up.
    let on_b = b
        .take_over(run, TakeUp::default())
        .await
        .expect("take over")
        .expect("unfinished");
    assert!(a.relinquish(run));
    assert!(!a.relinquish(run), "A no longer runs it");
    let err = on_a.finished().await.expect_err("A gave the run up");
    assert!(
        matches!(
            &err,
            EngineError::Relinquished { run: r } if *r == run
        ) || matches!(
            &err,
            EngineError::Store {
                source: StoreError::LostOwnership { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(a.running(), 0);

    // B gives it back before its attempt of slow ends; A takes it over again in the same process.
    wait_for_state(&a, run, "B never started slow again", |s| {
        running_attempt(s, "slow", 2)
    })
    .await;
    assert!(b.relinquish(run));
    let err = on_b.finished().await.expect_err("B gave the run up");
    assert!(
        matches!(&err, EngineError::Relinquished { run: r } if *r == run),
        "{err:?}"
    );
    let back = a
        .take_over(run, TakeUp::default())
        .await
        .expect("take over again")
        .expect("unfinished");
    let state = back.finished().await.expect("A finishes the run");
    assert_eq!(state.phase, RunPhase::Succeeded);

    let events = open_jetstream(&cluster).events(run).expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (0..events.len() as u64).collect::<Vec<_>>(),
        "one consistent sequence"
    );
    assert_eq!(events.iter().filter(|e| e.kind.is_terminal()).count(), 1);
    let started = |stage: &str| {
        events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::StageStarted { stage: s, .. } if s == stage))
            .count()
    };
    assert_eq!((started("slow"), started("after")), (3, 1));
    let resumes: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RunResumed {
                session,
                after_crash,
            } => Some((session, after_crash)),
            _ => None,
        })
        .collect();
    assert_eq!(resumes, [(b_session, false), (a_session, false)]);
}

/// A rolling restart of two engines sharing a stream, each resuming the runs of the one that stopped:
/// an engine begun while the other runs is not "after a crash", so no resume counts as one and no run
/// is quarantined, however often the runs change engines.
#[actix_rt::test]
async fn a_rolling_restart_of_engines_sharing_a_stream_quarantines_nothing() {
    let cluster = NatsCluster::single();
    let (sleep, flaky) = (Sleep::default(), Flaky::default());
    let engine = || {
        Engine::new(
            open_jetstream(&cluster),
            registry(&sleep, &flaky),
            EngineConfig::default(),
        )
    };
    let spec = plan(vec![
        with_config(stage("slow", "sleep", &[]), json!({ "ms": 60_000 })),
        stage("after", "echo", &["slow"]),
    ]);
    let mut running = engine();
    let mut standing = engine();
    let handle = running
        .start(RunRequest::new("test", spec, json!({})))
        .await
        .expect("start");
    let run = handle.run_id;
    drop(handle);
    // Four rounds of a rolling restart: a new engine starts beside the two running ones (begun while
    // they run), the engine running the run stops gracefully, and the other resumes the run.
    for round in 1..=4u32 {
        wait_for_state(&standing, run, "the run's slow stage never started", |s| {
            running_attempt(s, "slow", round)
        })
        .await;
        let replacement = engine();
        assert!(running.relinquish(run));
        running.shutdown().expect("graceful stop");
        let resumed = standing
            .resume(run, false)
            .await
            .expect("resume")
            .expect("not quarantined");
        drop(resumed);
        running = std::mem::replace(&mut standing, replacement);
    }
    let state = running.fold_latest(run).await.expect("fold").expect("run");
    assert!(!state.phase.is_terminal(), "{:?}", state.phase);
    let events = open_jetstream(&cluster).events(run).expect("events");
    let resumes: Vec<bool> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RunResumed { after_crash, .. } => Some(after_crash),
            _ => None,
        })
        .collect();
    assert_eq!(resumes, [false; 4], "{events:?}");
    assert!(running.cancel(run, "done"));
}

/// `fold_latest` reads what another process appended as soon as the stream acknowledged it, not when
/// this process's index gets to it.
#[actix_rt::test]
async fn fold_latest_sees_an_append_of_another_process_at_once() {
    let cluster = NatsCluster::single();
    let (sleep, flaky) = (Sleep::default(), Flaky::default());
    let writer = open_jetstream(&cluster);
    let reader = Engine::new(
        open_jetstream(&cluster),
        registry(&sleep, &flaky),
        EngineConfig::default(),
    );
    let run = new_run();
    writer
        .append_durable(run, vec![accepted_in("p", "ns"), EventKind::RunStarted])
        .await
        .expect("accept");
    for i in 0..20u64 {
        writer
            .append_durable(run, vec![started(&format!("s{i}"))])
            .await
            .expect("append");
        let state = reader.fold_latest(run).await.expect("fold").expect("run");
        assert_eq!(state.last_seq, i + 2);
    }
}

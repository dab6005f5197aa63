//! `fm bench resume`: the restart target of docs/architecture.md ("restart with 10k in-flight runs: resumed in <= 2 s,
//! none lost, none run twice to completion"). A child `fm bench engine` starts the runs, with stages
//! that outlast it, and is killed with SIGKILL once every run is in flight; this process then opens the
//! same event log and resumes the runs as `fm serve` and `fm resume` do on start, reports how long that
//! took and how long until every run ended, and checks from the log that each run ended exactly once
//! and no stage succeeded twice.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use flowmason_actors::{Engine, EngineConfig};
use flowmason_store::{EventStore, RunId, RunPhase, RunQuery, StoreConfig};
use serde_json::{Value, json};

use crate::bench::Shape;
use crate::components::builtin_registry;

#[derive(Args, Debug)]
pub struct ResumeBench {
    /// Runs in flight when the process is killed.
    #[arg(long, default_value_t = 10_000)]
    pub runs: usize,
    /// Pipeline shape of every run (as `fm bench engine --shape`).
    #[arg(long, default_value = "chain:5")]
    pub shape: Shape,
    /// Each stage sleeps this long: long enough for every run to be in flight at the kill.
    #[arg(long, default_value_t = 3_000)]
    pub stage_ms: u64,
    /// Arbiter threads hosting the resumed run actors (0: the main one).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Keep the event log here instead of a temporary directory that is removed afterwards.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the figures as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the event log says of the runs after the resumed ones ended.
#[derive(Debug, Default)]
struct Audit {
    runs: usize,
    unfinished: usize,
    not_succeeded: usize,
    ended_twice: usize,
    stage_succeeded_twice: usize,
}

pub fn resume(args: ResumeBench) -> anyhow::Result<i32> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (data_dir, _temp) = super::bench::data_dir(args.data_dir.as_deref())?;
    let killed_after = start_and_kill(&args, &data_dir)?;

    // The restart: from opening the log to every run owned by a live actor again.
    let restart = Instant::now();
    let store = super::bench::open_events(&data_dir, StoreConfig::default().durability)?;
    let opened = restart.elapsed();
    let (resumed, resumed_runs, ended, phases) = crate::runtime::block_on({
        let store = store.clone();
        let workers = args.workers;
        move || async move {
            let engine = Engine::new(
                store,
                builtin_registry(),
                EngineConfig {
                    workers,
                    ..EngineConfig::default()
                },
            );
            let handles = engine.resume_all().await.context("cannot resume runs")?;
            let resumed = restart.elapsed();
            let resumed_runs = handles.len();
            let mut phases = HashMap::<RunPhase, usize>::new();
            for handle in handles {
                let state = handle.finished().await?;
                *phases.entry(state.phase).or_default() += 1;
            }
            engine
                .shutdown()
                .context("cannot record the engine's shutdown in the event log and flush it")?;
            anyhow::Ok((resumed, resumed_runs, restart.elapsed(), phases))
        }
    })??;
    let audit = audit(&store)?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let figures = json!({
        "runs": args.runs,
        "shape": args.shape.to_string(),
        "stageMs": args.stage_ms,
        "killedAfterMs": ms(killed_after),
        "resumedRuns": resumed_runs,
        "storeOpenMs": ms(opened),
        "resumeMs": ms(resumed),
        "allEndedMs": ms(ended),
        "phases": phases.iter().map(|(p, n)| (p.to_string(), json!(n))).collect::<serde_json::Map<String, Value>>(),
        "runsInLog": audit.runs,
        "unfinished": audit.unfinished,
        "notSucceeded": audit.not_succeeded,
        "endedTwice": audit.ended_twice,
        "stageSucceededTwice": audit.stage_succeeded_twice,
    });
    if args.json {
        println!("{figures}");
    } else {
        eprintln!(
            "{} runs of {} killed in flight after {:.0} ms; restart: log opened in {:.0} ms, {} runs \
             resumed in {:.0} ms, all ended {:.0} ms after the restart\n  \
             event log: {} runs, {} unfinished, {} not Succeeded, {} ended twice, {} stages succeeded twice",
            args.runs,
            args.shape,
            ms(killed_after),
            ms(opened),
            resumed_runs,
            ms(resumed),
            ms(ended),
            audit.runs,
            audit.unfinished,
            audit.not_succeeded,
            audit.ended_twice,
            audit.stage_succeeded_twice,
        );
    }
    let sound = audit.runs == args.runs
        && resumed_runs == args.runs
        && audit.unfinished == 0
        && audit.not_succeeded == 0
        && audit.ended_twice == 0
        && audit.stage_succeeded_twice == 0;
    Ok(if sound { 0 } else { super::EXIT_RUN_FAILED })
}

/// Starts the runs in a child `fm bench engine` on `data_dir` and kills it with SIGKILL once every run
/// has been accepted and started and the log has had time to write their first stage's start. Returns
/// how long the child ran.
fn start_and_kill(args: &ResumeBench, data_dir: &Path) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe().context("cannot find the fm executable")?;
    let runs = args.runs.to_string();
    let mut child = Command::new(exe)
        .args(["bench", "engine", "--runs", &runs, "--concurrency", &runs])
        .args(["--shape", &args.shape.to_string()])
        .args(["--stage-ms", &args.stage_ms.to_string()])
        .args(["--durability", "batch", "--print-runs", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the child fm bench engine")?;
    let started_at = Instant::now();
    let stdout = child.stdout.take().context("no stdout of the child")?;
    let mut started = 0;
    let mut outcome = Ok(());
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the child's output")?;
        let value: Value = serde_json::from_str(&line)
            .with_context(|| format!("the child printed {line:?}, not a JSON line"))?;
        match value["event"].as_str() {
            Some("started") => started += 1,
            Some("ended") => {
                outcome = Err(anyhow::anyhow!(
                    "run {} ended before every run was in flight: raise --stage-ms",
                    value["runId"]
                ));
                break;
            }
            _ => {}
        }
        if started == args.runs {
            break;
        }
    }
    // Every run has started its first stage or is about to: one more write cycle of the log (batch
    // durability writes every few milliseconds) puts those starts on disk before the kill.
    std::thread::sleep(Duration::from_millis(100));
    let killed_after = started_at.elapsed();
    child.kill().context("cannot kill the child")?;
    child.wait().context("cannot reap the child")?;
    outcome?;
    if started < args.runs {
        bail!(
            "the child stopped after starting {started} of {} runs",
            args.runs
        );
    }
    Ok(killed_after)
}

/// Reads every run of the log: ended exactly once, Succeeded, and no stage succeeded twice.
fn audit(store: &EventStore) -> anyhow::Result<Audit> {
    let mut audit = Audit {
        unfinished: store.unfinished_runs()?.len(),
        ..Audit::default()
    };
    let mut query = RunQuery {
        limit: 1_000,
        ..RunQuery::default()
    };
    loop {
        let page = store.query(&query)?;
        for summary in &page.runs {
            audit.runs += 1;
            if summary.phase != RunPhase::Succeeded {
                audit.not_succeeded += 1;
            }
            audit_events(store, summary.run_id, &mut audit)?;
        }
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => return Ok(audit),
        }
    }
}

fn audit_events(store: &EventStore, run: RunId, audit: &mut Audit) -> anyhow::Result<()> {
    let events = store.events(run)?;
    if events.iter().filter(|e| e.kind.is_terminal()).count() > 1 {
        audit.ended_twice += 1;
    }
    let mut succeeded = HashMap::<&str, usize>::new();
    for event in &events {
        if let ("StageSucceeded", Some(stage)) = (event.kind.name(), event.kind.stage()) {
            *succeeded.entry(stage).or_default() += 1;
        }
    }
    audit.stage_succeeded_twice += succeeded.values().filter(|&&n| n > 1).count();
    Ok(())
}

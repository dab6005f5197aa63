//! `fm history`: what ran, read from the event log in the data dir (never from Kubernetes, so history
//! outlives deleted PipelineRuns).

use anyhow::{Context as _, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use flowmason_store::{
    EventStore, RunId, RunPage, RunPhase, RunQuery, RunState, RunSummary, Trigger,
};
use serde_json::json;

use crate::history::rerun::{self, RerunOptions};
use crate::history::retention::{self, RetentionPolicy};
use crate::history::{self, RunDetail};

use super::{EXIT_INVALID, OutputFormat, StoreArgs, print_structured, progress::describe};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HistoryArgs {
    #[command(subcommand)]
    pub show: Option<HistoryCommand>,
    /// Only runs of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only runs in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only runs in this phase (repeatable: any of them).
    #[arg(long)]
    pub phase: Vec<RunPhase>,
    /// Only runs started by this trigger: manual, cron, webhook or pubsub.
    #[arg(long)]
    pub trigger: Option<Trigger>,
    /// Only runs accepted at or after this time: RFC 3339 (2026-11-28T10:00:00Z) or an age (90s, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only runs accepted before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Most runs to list (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Continue after the last run of a previous page (the token it printed).
    #[arg(long = "continue")]
    pub continue_token: Option<String>,
    /// Only runs with these labels: key=value pairs separated by commas.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Read the history API of this server (http://HOST:PORT) instead of the data dir.
    #[arg(long)]
    pub server: Option<String>,
    /// With --server: file holding the bearer token the server wants.
    #[arg(long, env = "FM_HTTP_TOKEN_FILE", value_name = "FILE")]
    pub http_token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// One run in full: stages, attempts, durations, errors and its events.
    Show {
        /// The run's id, or its start where no other run's id starts the same way.
        run_id: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
        /// Read the history API of this server instead of the data dir.
        #[arg(long)]
        server: Option<String>,
        /// Keep printing the run's events as they happen, until it ends (needs --server: the process
        /// running the run holds the data dir).
        #[arg(long, short = 'f', requires = "server")]
        follow: bool,
        /// With --server: file holding the bearer token the server wants.
        #[arg(long, env = "FM_HTTP_TOKEN_FILE", value_name = "FILE")]
        http_token_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run a finished run again with the same plan and inputs (in-process on the data dir, waiting for
    /// the end; or through a server's API, returning at once).
    Rerun(RerunArgs),
    /// Delete finished runs as a retention policy says (once; servers do it in the background).
    Prune {
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Serve the history API, the web UI (/ui/), /metrics, /healthz and /readyz over the data dir, with
    /// an engine for reruns and the retention policy applied in the background.
    Serve(ServeHistoryArgs),
}

#[derive(Args, Debug)]
pub struct RerunArgs {
    /// The run to rerun: its id, or the start of it that no other run shares.
    pub run_id: String,
    /// Take the stages that succeeded from the old run; run only the failed stage and its dependants.
    #[arg(long)]
    pub from_failed: bool,
    /// Ask this server (http://HOST:PORT) to start the rerun instead of running it here.
    #[arg(long)]
    pub server: Option<String>,
    /// With --server: file holding the bearer token the server wants.
    #[arg(long, env = "FM_HTTP_TOKEN_FILE", value_name = "FILE")]
    pub http_token_file: Option<std::path::PathBuf>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub env: super::EnvArgs,
}

/// How much history to keep (both limits apply).
#[derive(Args, Debug, Clone, Default)]
pub struct RetentionArgs {
    /// Delete finished runs that ended longer ago than this (90m, 12h, 30d).
    #[arg(long)]
    pub history_ttl: Option<String>,
    /// Keep at most this many finished runs per pipeline (the newest).
    #[arg(long)]
    pub history_keep_per_pipeline: Option<usize>,
}

impl RetentionArgs {
    pub fn policy(&self) -> anyhow::Result<RetentionPolicy> {
        let ttl = self
            .history_ttl
            .as_deref()
            .map(|t| history::parse_duration_ms("--history-ttl", t))
            .transpose()?
            .map(std::time::Duration::from_millis);
        Ok(RetentionPolicy {
            ttl,
            keep_per_pipeline: self.history_keep_per_pipeline,
        })
    }
}

#[derive(Args, Debug)]
pub struct ServeHistoryArgs {
    /// Address to serve on; port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    #[command(flatten)]
    pub http_auth: super::HttpAuthArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// How often the retention policy is applied.
    #[arg(long, default_value = "5m")]
    pub retention_interval: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub env: super::EnvArgs,
}

pub fn history(args: HistoryArgs) -> anyhow::Result<i32> {
    match args.show {
        Some(HistoryCommand::Show {
            run_id,
            output,
            server: Some(server),
            follow,
            http_token_file,
            ..
        }) => return show_remote(&server, http_token_file.as_deref(), &run_id, output, follow),
        Some(HistoryCommand::Show {
            run_id,
            output,
            store,
            ..
        }) => return show(&run_id, output, &store),
        Some(HistoryCommand::Rerun(args)) => return rerun(args),
        Some(HistoryCommand::Prune { retention, store }) => {
            let policy = retention.policy()?;
            let store = store.open()?;
            let deleted = retention::sweep(&store, policy, history::now_micros())
                .context("retention sweep failed")?;
            store.flush().context("cannot flush the event log")?;
            println!("deleted {deleted} runs");
            return Ok(0);
        }
        Some(HistoryCommand::Serve(args)) => return serve(args),
        None => {}
    }
    if let Some(server) = &args.server {
        return list_remote(server, args.http_token_file.as_deref(), &args);
    }
    let query = RunQuery {
        namespace: args.namespace,
        pipeline: args.pipeline,
        phases: args.phase,
        trigger: args.trigger,
        since: args
            .since
            .as_deref()
            .map(|t| parse_time("--since", t))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time("--until", t))
            .transpose()?,
        limit: args.limit,
        continue_token: args.continue_token.clone(),
        labels: args
            .selector
            .as_deref()
            .map(history::parse_label_selector)
            .transpose()?
            .unwrap_or_default(),
    };
    let store = args.store.open()?;
    let page = store.query(&query).context("history query failed")?;
    print_page(&page, args.output)
}

fn print_page(page: &RunPage, output: OutputFormat) -> anyhow::Result<i32> {
    match output {
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = page.runs.iter().map(summary_row).collect();
            print_table(
                &[
                    "RUN ID",
                    "PIPELINE",
                    "NAMESPACE",
                    "PHASE",
                    "TRIGGER",
                    "STARTED",
                    "DURATION",
                ],
                &rows,
            );
            if let Some(token) = &page.continue_token {
                eprintln!("more runs: --continue {token}");
            }
            if let Some(lag) = page.index_lag {
                eprintln!(
                    "the local index is {lag} messages behind the event stream: the newest runs may be missing"
                );
            }
        }
        format => print_structured(&with_rfc3339_times(page)?, format)?,
    }
    Ok(0)
}

/// A blocking client of a history server, sending the token in `token_file` when given.
fn client(token_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::blocking::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(path) = token_file {
        let token = crate::http::auth::read_token(path)?;
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .with_context(|| {
                format!(
                    "--http-token-file {}: the token is not a valid header value",
                    path.display()
                )
            })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .build()
        .context("cannot build the HTTP client")
}

/// The body of a successful answer, else an error naming the URL and the server's message.
fn expect_ok(
    url: &str,
    response: reqwest::blocking::Response,
) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .with_context(|| format!("{url}: the answer is not JSON"))?;
    if !status.is_success() {
        let message = body
            .get("error")
            .or_else(|| body.get("message"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        bail!("{url}: {status}: {message}");
    }
    Ok(body)
}

fn list_remote(
    server: &str,
    token_file: Option<&std::path::Path>,
    args: &HistoryArgs,
) -> anyhow::Result<i32> {
    let url = format!("{}/api/v1/runs", server.trim_end_matches('/'));
    let mut params: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    let opt = [
        ("namespace", args.namespace.clone()),
        ("pipeline", args.pipeline.clone()),
        ("trigger", args.trigger.map(|t| t.to_string())),
        ("since", args.since.clone()),
        ("until", args.until.clone()),
        ("labelSelector", args.selector.clone()),
        ("continue", args.continue_token.clone()),
    ];
    params.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    params.extend(args.phase.iter().map(|p| ("phase", p.to_string())));
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_component(v)))
        .collect();
    let url = format!("{url}?{}", query.join("&"));
    let response = client(token_file)?
        .get(&url)
        .send()
        .with_context(|| format!("cannot reach {url}"))?;
    let page: RunPage = serde_json::from_value(expect_ok(&url, response)?)
        .with_context(|| format!("{url}: unexpected answer"))?;
    print_page(&page, args.output)
}

/// [`resolve_run_id`] over the runs of the event log `store`.
fn resolve_local_run_id(store: &EventStore, text: &str) -> anyhow::Result<RunId> {
    resolve_run_id(text, |token| {
        store
            .query(&RunQuery {
                limit: 1000,
                continue_token: token,
                ..RunQuery::default()
            })
            .context("history query failed")
    })
}

/// [`resolve_run_id`] over the runs of the history API at `base`.
fn resolve_remote_run_id(
    http: &reqwest::blocking::Client,
    base: &str,
    text: &str,
) -> anyhow::Result<RunId> {
    resolve_run_id(text, |token| {
        let mut url = format!("{base}/api/v1/runs?limit=1000");
        if let Some(token) = token {
            url.push_str(&format!("&continue={}", encode_component(&token)));
        }
        let response = http
            .get(&url)
            .send()
            .with_context(|| format!("cannot reach {url}"))?;
        serde_json::from_value(expect_ok(&url, response)?)
            .with_context(|| format!("{url}: unexpected answer"))
    })
}

/// The run a run id names, or a prefix of one (as `git` takes short hashes): `text` itself when it is a
/// whole id, else the only run whose id starts with it, found by walking the listing `page` gives (a
/// continue token in, a page of runs and the next token out). An ambiguous prefix names the candidates.
fn resolve_run_id(
    text: &str,
    mut page: impl FnMut(Option<String>) -> anyhow::Result<RunPage>,
) -> anyhow::Result<RunId> {
    if let Ok(id) = text.parse() {
        return Ok(id);
    }
    let prefix = text.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        anyhow::bail!(
            "run id {text:?} is neither a UUID nor the start of one (at least 4 hex digits)"
        );
    }
    let mut found: Vec<RunId> = Vec::new();
    let mut token = None;
    loop {
        let RunPage {
            runs,
            continue_token,
            ..
        } = page(token)?;
        found.extend(
            runs.iter()
                .map(|r| r.run_id)
                .filter(|id| id.to_string().starts_with(&prefix)),
        );
        if found.len() > 5 {
            break;
        }
        match continue_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => anyhow::bail!("no run id starts with {text:?}"),
        many => anyhow::bail!(
            "run id {text:?} is ambiguous: {} ...",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The fields of runs, stages and events that hold Unix microseconds.
const TIME_FIELDS: &[&str] = &[
    "acceptedAt",
    "startedAt",
    "finishedAt",
    "retryAt",
    "at",
    "retry_at",
];

/// `value` as JSON with every time field (see [`TIME_FIELDS`]) as RFC 3339 text, as `-o json|yaml`
/// print them for people and scripts alike (the history API itself keeps Unix microseconds).
fn with_rfc3339_times(value: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, field) in map.iter_mut() {
                    match field.as_i64() {
                        Some(micros) if TIME_FIELDS.contains(&key.as_str()) => {
                            *field = serde_json::Value::String(history::format_time(micros));
                        }
                        _ => walk(field),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(value).context("cannot render the runs")?;
    walk(&mut value);
    Ok(value)
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode_component(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn show_remote(
    server: &str,
    token_file: Option<&std::path::Path>,
    run_id: &str,
    output: OutputFormat,
    follow: bool,
) -> anyhow::Result<i32> {
    let base = server.trim_end_matches('/');
    let http = client(token_file)?;
    let run_id = resolve_remote_run_id(&http, base, run_id)?.to_string();
    let run_id = run_id.as_str();
    let url = format!("{base}/api/v1/runs/{run_id}");
    let response = http
        .get(&url)
        .send()
        .with_context(|| format!("cannot reach {url}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        eprintln!("run {run_id} not found");
        return Ok(EXIT_INVALID);
    }
    let run = expect_ok(&url, response)?;
    let events_url = format!("{url}/events");
    let response = http
        .get(&events_url)
        .send()
        .with_context(|| format!("cannot reach {events_url}"))?;
    let events: Vec<flowmason_store::Event> =
        serde_json::from_value(expect_ok(&events_url, response)?)
            .with_context(|| format!("{events_url}: unexpected answer"))?;
    match output {
        OutputFormat::Table => {
            // The detail is the fold of the same events: fold them here for the table.
            let run_id: RunId = run_id
                .parse()
                .with_context(|| format!("run id {run_id:?} is not a UUID"))?;
            let state = RunState::fold(run_id, &events)
                .with_context(|| format!("{events_url}: the events do not fold"))?
                .with_context(|| format!("{events_url}: no events"))?;
            print_run(&state, &events);
        }
        format => print_structured(
            &with_rfc3339_times(&json!({ "run": run, "events": events }))?,
            format,
        )?,
    }
    if follow && !events.last().is_some_and(|e| e.kind.is_terminal()) {
        let start = events.first().map_or(0, |e| e.at);
        let from = events.last().map_or(0, |e| e.seq + 1);
        follow_events(&events_url, from, start, output)?;
    }
    Ok(0)
}

/// Prints a run's events from sequence `from` on as the server appends them, until the terminal one:
/// as event lines for a table, one JSON object per line otherwise.
fn follow_events(
    events_url: &str,
    from: u64,
    start: i64,
    output: OutputFormat,
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let url = format!("{events_url}?follow=true&from={from}");
    // No time-out: a run may take hours between two events.
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .context("cannot build the HTTP client")?;
    let response = http
        .get(&url)
        .send()
        .with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        anyhow::bail!("{url}: {}", response.status());
    }
    for line in std::io::BufReader::new(response).lines() {
        let line = line.with_context(|| format!("{url}: the stream broke off"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: flowmason_store::Event = serde_json::from_str(&line)
            .with_context(|| format!("{url}: unexpected line {line:?}"))?;
        match output {
            OutputFormat::Table => print_event(&event, start),
            _ => println!("{line}"),
        }
        if event.kind.is_terminal() {
            break;
        }
    }
    Ok(())
}

fn rerun(args: RerunArgs) -> anyhow::Result<i32> {
    let options = RerunOptions {
        from_failed: args.from_failed,
    };
    if let Some(server) = &args.server {
        let base = server.trim_end_matches('/');
        let http = client(args.http_token_file.as_deref())?;
        let run = resolve_remote_run_id(&http, base, &args.run_id)?;
        let url = format!("{base}/api/v1/runs/{run}/rerun");
        let response = http
            .post(&url)
            .json(&options)
            .send()
            .with_context(|| format!("cannot reach {url}"))?;
        let started = expect_ok(&url, response)?;
        match args.output {
            OutputFormat::Table => println!(
                "{}",
                started
                    .get("runId")
                    .and_then(|r| r.as_str())
                    .unwrap_or_default()
            ),
            format => print_structured(&started, format)?,
        }
        return Ok(0);
    }
    let store = args.store.open()?;
    let run = resolve_local_run_id(&store, &args.run_id)?;
    let old = store
        .fold(run)
        .with_context(|| format!("cannot read run {run}"))?
        .with_context(|| format!("run {run} not found"))?;
    let request = rerun::request(&old, options)?;
    let env = args.env.resolver()?;
    let state = crate::runtime::block_on(|| async move {
        let engine = flowmason_actors::Engine::new(
            store.clone(),
            crate::components::builtin_registry(),
            flowmason_actors::EngineConfig {
                env,
                ..Default::default()
            },
        );
        let handle = engine.start(request).await?;
        let state = handle.finished().await;
        if let Err(error) = engine.shutdown() {
            tracing::error!(%error, "cannot record the engine's shutdown in the event log and flush it");
        }
        state
    })??;
    match args.output {
        OutputFormat::Table => {
            println!("rerun of {run}: run {} {}", state.run_id, state.phase);
        }
        format => print_structured(
            &with_rfc3339_times(&RunDetail::from_state(state.clone()))?,
            format,
        )?,
    }
    Ok(if state.phase == RunPhase::Succeeded {
        0
    } else {
        super::EXIT_RUN_FAILED
    })
}

fn serve(args: ServeHistoryArgs) -> anyhow::Result<i32> {
    let policy = args.retention.policy()?;
    let every = std::time::Duration::from_millis(history::parse_duration_ms(
        "--retention-interval",
        &args.retention_interval,
    )?);
    let guard = args.http_auth.guard("--bind", args.bind)?;
    let data_dir = args.store.data_dir()?;
    let store = args.store.open()?;
    let env = args.env.resolver()?;
    crate::runtime::block_on(|| async move {
        use crate::http::surface::{Reruns, Surface};
        let stop = tokio_util::sync::CancellationToken::new();
        let surface = Surface::new(&store, Reruns::Engine, stop.clone())?;
        let engine = flowmason_actors::Engine::new(
            store.clone(),
            crate::components::builtin_registry(),
            flowmason_actors::EngineConfig {
                env,
                observer: Some(surface.metrics.engine_observer()),
                workers: 1,
                durability_observer: None,
            },
        );
        surface.engine_started(engine.clone());
        // Runs left unfinished by a previous process go on here.
        engine.resume_all().await.context("cannot resume runs")?;
        let router = surface.app(&guard, args.http_auth.metrics_public);
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("--bind {}: cannot listen", args.bind))?;
        let served = crate::http::serve(listener, router, stop.clone())?;
        let retention = retention::spawn(store.clone(), policy, every, stop.clone());
        super::announce(&[
            format!("web UI: http://{}/ui/", served.addr),
            // Last: scripts (and the tests) read up to this line and may stop reading there.
            format!("FlowMason history API listening on http://{}", served.addr),
        ]);
        // Ctrl-C, SIGTERM, or a failed event log once the disk takes writes again (exit 74, so that
        // a supervisor restarts it with the log reopened); a stuck shutdown ends by the watchdog.
        let events = store.clone();
        let stores: Vec<super::stopping::FailureCheck> = vec![Box::new(move || {
            events
                .write_failure()
                .map(|e| format!("event log cannot write: {e}"))
        })];
        let reason = super::stopping::wait_for_stop(stores, data_dir).await?;
        let code = reason.exit_code();
        super::stopping::exit_after(super::stopping::SHUTDOWN_GRACE, code);
        stop.cancel();
        let _ = served.task.await;
        let _ = retention.await;
        if code != 0 {
            return anyhow::Ok(code);
        }
        engine
            .shutdown()
            .context("cannot record the engine's shutdown in the event log and flush it")?;
        anyhow::Ok(0)
    })?
}

fn show(run_id: &str, output: OutputFormat, store: &StoreArgs) -> anyhow::Result<i32> {
    let store = store.open()?;
    let run = resolve_local_run_id(&store, run_id)?;
    let Some(state) = store
        .fold(run)
        .with_context(|| format!("cannot read run {run}"))?
    else {
        eprintln!("run {run} not found");
        return Ok(EXIT_INVALID);
    };
    let events = store
        .events(run)
        .with_context(|| format!("cannot read run {run}"))?;
    match output {
        OutputFormat::Table => print_run(&state, &events),
        format => print_structured(
            &with_rfc3339_times(&json!({ "run": state, "events": events }))?,
            format,
        )?,
    }
    Ok(0)
}

fn print_run(state: &RunState, events: &[flowmason_store::Event]) {
    println!("Run:       {}", state.run_id);
    println!(
        "Pipeline:  {}/{} (generation {})",
        state.namespace, state.pipeline, state.generation
    );
    println!("Trigger:   {}", state.trigger);
    match state.error.as_ref().and_then(|e| e.reason()) {
        Some(reason) => println!("Phase:     {} ({reason})", state.phase),
        None => println!("Phase:     {}", state.phase),
    }
    println!("Accepted:  {}", format_time(state.accepted_at));
    if let Some(d) = state.duration_micros() {
        println!("Duration:  {}", format_duration(d));
    }
    if let Some(error) = &state.error {
        println!("Error:     {}", error.message);
    }
    println!();
    // In plan order, as the run went (the fold keeps stages by id).
    let planned: Vec<&str> = state
        .plan
        .get("stages")
        .and_then(serde_json::Value::as_array)
        .map(|stages| {
            stages
                .iter()
                .filter_map(|s| s.get("id").and_then(serde_json::Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut stages: Vec<(&String, &flowmason_store::StageState)> = state.stages.iter().collect();
    stages.sort_by_key(|(id, _)| {
        planned
            .iter()
            .position(|p| p == id)
            .unwrap_or(planned.len())
    });
    let rows: Vec<Vec<String>> = stages
        .into_iter()
        .map(|(id, s)| {
            let duration = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => format_duration(b - a),
                _ => "-".into(),
            };
            vec![
                id.clone(),
                s.phase.as_str().to_string(),
                s.attempts.to_string(),
                duration,
                s.error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["STAGE", "PHASE", "ATTEMPTS", "DURATION", "ERROR"], &rows);
    println!();
    for event in events {
        print_event(event, state.accepted_at);
    }
}

/// One event line: its sequence number, its time since the run was accepted (`start`), what happened.
fn print_event(event: &flowmason_store::Event, start: i64) {
    let line = describe(&event.kind).unwrap_or_default();
    println!(
        "{:>5} {:>10} {line}",
        event.seq,
        format!("+{}", format_duration(event.at - start))
    );
}

fn summary_row(s: &RunSummary) -> Vec<String> {
    let duration = s
        .finished_at
        .map(|end| format_duration(end - s.started_at.unwrap_or(s.accepted_at)));
    vec![
        s.run_id.to_string(),
        s.pipeline.clone(),
        s.namespace.clone(),
        s.phase.to_string(),
        s.trigger.to_string(),
        format_time(s.accepted_at),
        duration.unwrap_or_else(|| "-".into()),
    ]
}

/// Left-aligned columns wide enough for their longest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// An RFC 3339 instant, or an age (`90s`, `2h`, `7d`) counted back from now; in Unix microseconds.
fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    let age_ms = if let Some(days) = text.strip_suffix('d') {
        days.parse::<u64>().ok().map(|d| d * 86_400_000)
    } else {
        crate::model::duration::parse_millis(text).ok()
    };
    match age_ms {
        Some(ms) => Ok(Utc::now().timestamp_micros() - (ms as i64) * 1000),
        None => bail!(
            "{flag} {text:?}: expected an RFC 3339 time (2026-11-28T10:00:00Z) or an age (90s, 2h, 7d)"
        ),
    }
}

fn format_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| micros.to_string())
}

/// `350us`, `12.5ms`, `3.20s`, `2m05s`.
pub fn format_duration(micros: i64) -> String {
    let micros = micros.max(0);
    if micros < 1_000 {
        format!("{micros}us")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1e3)
    } else if micros < 60_000_000 {
        format!("{:.2}s", micros as f64 / 1e6)
    } else {
        let secs = micros / 1_000_000;
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_the_unit_that_reads_best() {
        assert_eq!(format_duration(350), "350us");
        assert_eq!(format_duration(12_500), "12.5ms");
        assert_eq!(format_duration(3_200_000), "3.20s");
        assert_eq!(format_duration(125_000_000), "2m05s");
    }

    #[test]
    fn times_parse_as_rfc3339_or_age() {
        assert_eq!(
            parse_time("--since", "2026-01-01T00:00:00Z").expect("rfc3339"),
            1_767_225_600_000_000
        );
        let hour_ago = parse_time("--since", "1h").expect("age");
        let expected = Utc::now().timestamp_micros() - 3_600_000_000;
        assert!((hour_ago - expected).abs() < 5_000_000);
        let err = parse_time("--since", "yesterday").expect_err("invalid");
        assert!(err.to_string().starts_with("--since \"yesterday\""));
    }
}

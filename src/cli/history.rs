//! `fm history`: what ran, read from the event log in the data dir (never from Kubernetes, so history
//! outlives deleted PipelineRuns).

use anyhow::{Context as _, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use flowmason_store::{RunId, RunPhase, RunQuery, RunState, RunSummary, Trigger};
use serde_json::json;

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
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// One run in full: stages, attempts, durations, errors and its events.
    Show {
        run_id: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn history(args: HistoryArgs) -> anyhow::Result<i32> {
    if let Some(HistoryCommand::Show {
        run_id,
        output,
        store,
    }) = args.show
    {
        return show(&run_id, output, &store);
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
        continue_token: args.continue_token,
        ..RunQuery::default()
    };
    let store = args.store.open()?;
    let page = store.query(&query).context("history query failed")?;
    match args.output {
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
        }
        format => print_structured(&page, format)?,
    }
    Ok(0)
}

fn show(run_id: &str, output: OutputFormat, store: &StoreArgs) -> anyhow::Result<i32> {
    let run: RunId = run_id
        .parse()
        .with_context(|| format!("run id {run_id:?} is not a UUID"))?;
    let store = store.open()?;
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
        format => print_structured(&json!({ "run": state, "events": events }), format)?,
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
    println!("Phase:     {}", state.phase);
    println!("Accepted:  {}", format_time(state.accepted_at));
    if let Some(d) = state.duration_micros() {
        println!("Duration:  {}", format_duration(d));
    }
    if let Some(error) = &state.error {
        println!("Error:     {}", error.message);
    }
    println!();
    let rows: Vec<Vec<String>> = state
        .stages
        .iter()
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
    let start = state.accepted_at;
    for event in events {
        let line = describe(&event.kind).unwrap_or_default();
        println!(
            "{:>5} {:>10} {line}",
            event.seq,
            format!("+{}", format_duration(event.at - start))
        );
    }
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

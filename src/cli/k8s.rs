//! `fm k8s ...`: FlowMason pipelines on a Kubernetes API server (a cluster, or `fm serve`), through
//! [`crate::client::FlowMasonClient`]. The verbs of the seed: `deploy`, `list`, `status`, `run`
//! (`--wait` follows it with a progress view), `logs` (`-f` follows), `delete`, `cancel`; and
//! `backfill`, which creates the scheduled runs a window missed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use super::{
    EXIT_INTERRUPTED, EXIT_INVALID, EXIT_RUN_FAILED, OutputFormat, inputs, print_structured,
};
use crate::client::{FlowMasonClient, follow_run};
use crate::model::{self, Pipeline, PipelineRun, RunPhase};
use crate::triggers::cron::{self, parse_instant};

#[derive(Args, Debug)]
pub struct K8sArgs {
    #[command(subcommand)]
    pub command: K8sCommand,
    /// Namespace (default: the context's, else `default`).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Output: a table, or the objects as JSON or YAML.
    #[arg(long, short = 'o', global = true, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Subcommand, Debug)]
pub enum K8sCommand {
    /// Create or update a Pipeline from a file: a Pipeline resource, a bare spec, or a FlowMason
    /// pipeline.json (converted), in YAML or JSON. The file is checked as `fm validate` checks it first
    /// (unknown fields such as `dependOn` included, as `kubectl apply` refuses them by default); an
    /// invalid one is not sent (exit 2). A project pipeline carries the providers of the flowmason.json
    /// above it (never a key: give it through the Pipeline's env or a providers secretRef).
    Deploy { file: PathBuf },
    /// List the Pipelines.
    List,
    /// A Pipeline's status and its recent runs.
    Status { name: String },
    /// Start a run of a Pipeline (prints the PipelineRun's name). Refuses a Pipeline that does not exist.
    Run {
        name: String,
        /// Name of the PipelineRun (default: `<pipeline>-<8 hex digits>`).
        #[arg(long = "name", value_name = "RUN")]
        run_name: Option<String>,
        /// A run input, `key=value` (the value is parsed as JSON when it is JSON). Repeatable.
        #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
        input: Vec<String>,
        /// A JSON or YAML file holding an object of inputs.
        #[arg(long, value_name = "FILE")]
        inputs: Option<PathBuf>,
        /// Follow the run to its end with a progress view; exit 0 only if it succeeded. Ctrl-C stops
        /// following; the run goes on.
        #[arg(long)]
        wait: bool,
    },
    /// A run's stage logs and events (recorded by the operator as Kubernetes Events).
    Logs {
        run: String,
        /// Keep printing new ones until the run ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Delete a Pipeline (its runs go with it), or a run with --run.
    Delete {
        name: String,
        /// NAME is a PipelineRun.
        #[arg(long)]
        run: bool,
    },
    /// Cancel a run.
    Cancel { run: String },
    /// Rerun a finished run (by PipelineRun name or engine run id): a new PipelineRun with the same
    /// spec and `spec.rerunOf` (prints its name).
    Rerun {
        run: String,
        /// Take the stages that succeeded over from the old run; run the failed stage and its
        /// dependants only.
        #[arg(long)]
        from_failed: bool,
    },
    /// Create the scheduled runs a window missed (e.g. one the engine was down for), named as the
    /// schedule names them so instants that already ran are skipped; refuses windows of more than
    /// `--max-runs` runs.
    Backfill {
        /// The Pipeline (it must have a `spec.schedule`).
        name: String,
        /// Window start (inclusive), RFC 3339 or YYYY-MM-DDTHH:MM (UTC).
        #[arg(long, value_parser = parse_instant)]
        from: chrono::DateTime<chrono::Utc>,
        /// Window end (inclusive).
        #[arg(long, value_parser = parse_instant)]
        to: chrono::DateTime<chrono::Utc>,
        /// Most runs one backfill may create.
        #[arg(long, default_value_t = 100)]
        max_runs: usize,
    },
}

pub fn k8s(args: K8sArgs) -> anyhow::Result<i32> {
    crate::runtime::block_on(|| async move {
        let client = FlowMasonClient::from_kubeconfig(
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
            args.namespace.as_deref(),
        )
        .await?;
        dispatch(&client, args.command, args.output).await
    })?
}

fn age(time: Option<&Time>) -> String {
    let Some(t) = time else { return "-".into() };
    let secs = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
    crate::model::duration::format_millis(u64::try_from(secs.max(0)).unwrap_or(0) * 1000)
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn run_row(run: &PipelineRun) -> Vec<String> {
    let status = run.status.as_ref();
    let metrics = status.and_then(|s| s.metrics.as_ref());
    vec![
        run.name_any(),
        run.spec.pipeline_ref.clone(),
        status
            .and_then(|s| s.phase)
            .map_or("Pending".into(), |p| format!("{p:?}")),
        status
            .and_then(|s| s.conditions.first())
            .and_then(|c| c.reason.clone())
            .unwrap_or_else(|| "-".into()),
        metrics.map_or("-".into(), |m| {
            format!("{}/{}", m.completed_stages, m.total_stages)
        }),
        status
            .and_then(|s| s.duration.clone())
            .unwrap_or_else(|| "-".into()),
        age(run.metadata.creation_timestamp.as_ref()),
        status
            .and_then(|s| s.replica.clone())
            .unwrap_or_else(|| "-".into()),
    ]
}

async fn dispatch(
    client: &FlowMasonClient,
    command: K8sCommand,
    output: OutputFormat,
) -> anyhow::Result<i32> {
    match command {
        K8sCommand::Deploy { file } => {
            // A project pipeline carries its flowmason.json providers; keys stay out (the Pipeline's
            // `env` or the providers' `secretRef` give them on the cluster).
            let loaded = super::load_pipeline(&file, false).map_err(anyhow::Error::msg)?;
            // Checked here too, so that a cluster whose API server only knows the CRD's schema does not
            // accept a Pipeline that could never run.
            if !super::validate::report(&file, &loaded, super::validate::Problems::Stderr) {
                return Ok(EXIT_INVALID);
            }
            let mut pipeline = Pipeline::new(&loaded.name, loaded.spec);
            if !loaded.annotations.is_empty() {
                pipeline.metadata.annotations = Some(loaded.annotations);
            }
            if pipeline.spec.sample_input.is_none() {
                pipeline.spec.sample_input = loaded.sample_input;
            }
            let deployed = client.apply_pipeline(&pipeline).await?;
            match output {
                OutputFormat::Table => println!(
                    "pipeline.flowmason.io/{} deployed in {} (generation {})",
                    deployed.name_any(),
                    client.namespace(),
                    deployed.metadata.generation.unwrap_or(1)
                ),
                format => print_structured(&deployed, format)?,
            }
            Ok(0)
        }
        K8sCommand::List => {
            let pipelines = client.list_pipelines().await?;
            if output != OutputFormat::Table {
                print_structured(&as_list(&pipelines), output)?;
                return Ok(0);
            }
            if pipelines.is_empty() {
                eprintln!("No resources found in {} namespace.", client.namespace());
                return Ok(0);
            }
            let mut rows = vec![
                ["NAME", "PHASE", "STAGES", "LAST RUN", "LAST STATUS", "AGE"]
                    .map(String::from)
                    .to_vec(),
            ];
            for p in &pipelines {
                let status = p.status.as_ref();
                rows.push(vec![
                    p.name_any(),
                    status
                        .and_then(|s| s.phase)
                        .map_or("Pending".into(), |ph| format!("{ph:?}")),
                    if p.spec.stages.is_empty() && p.spec.source.is_some() {
                        "source".into()
                    } else {
                        p.spec.stages.len().to_string()
                    },
                    age(status.and_then(|s| s.last_run_time.as_ref())),
                    status
                        .and_then(|s| s.last_run_status.clone())
                        .unwrap_or_else(|| "-".into()),
                    age(p.metadata.creation_timestamp.as_ref()),
                ]);
            }
            print_table(&rows);
            Ok(0)
        }
        K8sCommand::Status { name } => {
            let pipeline = client
                .get_pipeline(&name)
                .await?
                .with_context(|| format!("Pipeline {}/{name} not found", client.namespace()))?;
            let mut runs = client.list_runs(Some(&name)).await?;
            runs.sort_by(|a, b| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
            });
            runs.truncate(10);
            if output != OutputFormat::Table {
                print_structured(&json!({"pipeline": pipeline, "runs": runs}), output)?;
                return Ok(0);
            }
            let status = pipeline.status.clone().unwrap_or_default();
            println!("Pipeline:    {}/{}", client.namespace(), name);
            println!(
                "Phase:       {}",
                status.phase.map_or("Pending".into(), |p| format!("{p:?}"))
            );
            for c in &status.conditions {
                println!(
                    "Condition:   {}={} {} {}",
                    c.type_,
                    c.status,
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                );
            }
            println!("Generation:  {}", pipeline.metadata.generation.unwrap_or(0));
            if let Some(id) = &status.last_run_id {
                println!(
                    "Last run:    {id} {} ({} ago)",
                    status.last_run_status.clone().unwrap_or_default(),
                    age(status.last_run_time.as_ref())
                );
            }
            if !runs.is_empty() {
                println!();
                let mut rows = vec![
                    [
                        "RUN", "PIPELINE", "PHASE", "REASON", "STAGES", "DURATION", "AGE",
                        "REPLICA",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                rows.extend(runs.iter().map(run_row));
                print_table(&rows);
            }
            Ok(0)
        }
        K8sCommand::Run {
            name,
            run_name,
            input,
            inputs: file,
            wait,
        } => {
            // No inputs at all: the run takes the Pipeline's sampleInput, as `fm run` does.
            let inputs: Option<Map<String, Value>> = match inputs::parse(&input, file.as_deref())? {
                Some(Value::Object(map)) => Some(map),
                Some(other) => anyhow::bail!("--inputs: expected an object, got {other}"),
                None => None,
            };
            // A run of a Pipeline that does not exist could only fail: refuse it here, naming it.
            if client.get_pipeline(&name).await?.is_none() {
                anyhow::bail!(
                    "Pipeline {}/{name} not found (fm k8s list shows the Pipelines; fm k8s deploy FILE creates one)",
                    client.namespace()
                );
            }
            let run = client
                .create_run(&name, run_name.as_deref(), inputs)
                .await?;
            let run_name = run.name_any();
            if !wait {
                match output {
                    OutputFormat::Table => println!("pipelinerun.flowmason.io/{run_name} created"),
                    format => print_structured(&run, format)?,
                }
                return Ok(0);
            }
            eprintln!("pipelinerun.flowmason.io/{run_name} created; waiting for it to end");
            let mut shown = String::new();
            let followed = follow_run(client, &run_name, |run| {
                let line = progress_line(run);
                if line != shown {
                    eprintln!("{line}");
                    shown = line;
                }
            });
            let end = tokio::select! {
                end = followed => end?,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!(
                        "interrupted: stopped waiting, but PipelineRun {}/{run_name} goes on; cancel it with: fm k8s cancel {run_name} -n {}",
                        client.namespace(),
                        client.namespace()
                    );
                    return Ok(EXIT_INTERRUPTED);
                }
            }
            .with_context(|| format!("PipelineRun {run_name} disappeared before it ended"))?;
            let status = end.status.clone().unwrap_or_default();
            match output {
                OutputFormat::Table => match status.phase {
                    Some(RunPhase::Succeeded) => println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &status.output.clone().unwrap_or(Value::Null)
                        )?
                    ),
                    _ => println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "run": run_name, "phase": status.phase, "error": status.error
                        }))?
                    ),
                },
                format => print_structured(&end, format)?,
            }
            Ok(if status.phase == Some(RunPhase::Succeeded) {
                0
            } else {
                EXIT_RUN_FAILED
            })
        }
        K8sCommand::Logs { run, follow } => logs(client, &run, follow, output).await,
        K8sCommand::Delete { name, run } => {
            if run {
                client.delete_run(&name).await?;
                println!("pipelinerun.flowmason.io/{name} deleted");
            } else {
                client.delete_pipeline(&name).await?;
                println!("pipeline.flowmason.io/{name} deleted");
            }
            Ok(0)
        }
        K8sCommand::Cancel { run } => {
            client.cancel_run(&run).await?;
            println!("pipelinerun.flowmason.io/{run} cancel requested");
            Ok(0)
        }
        K8sCommand::Rerun { run, from_failed } => {
            let old = client.find_run(&run).await?;
            let Some(old_id) = old.status.as_ref().and_then(|s| s.run_id.clone()) else {
                anyhow::bail!(
                    "PipelineRun {}/{} has no status.runId: it has not started, so there is nothing to rerun",
                    client.namespace(),
                    old.name_any()
                );
            };
            let created = client
                .create_rerun(old.spec.clone(), &old_id, from_failed)
                .await?;
            match output {
                OutputFormat::Table => {
                    println!("pipelinerun.flowmason.io/{} created", created.name_any())
                }
                format => print_structured(&created, format)?,
            }
            Ok(0)
        }
        K8sCommand::Backfill {
            name,
            from,
            to,
            max_runs,
        } => {
            let report = cron::backfill(
                client.kube_client(),
                client.namespace(),
                &name,
                from,
                to,
                max_runs,
            )
            .await?;
            match output {
                OutputFormat::Table => {
                    for run in &report.created {
                        println!("created {run}");
                    }
                    for run in &report.deduplicated {
                        println!("exists  {run}");
                    }
                    println!(
                        "{} created, {} already existed",
                        report.created.len(),
                        report.deduplicated.len()
                    );
                }
                format => print_structured(
                    &json!({"created": report.created, "existed": report.deduplicated}),
                    format,
                )?,
            }
            Ok(0)
        }
    }
}

/// Objects as kubectl prints a list of them: a `v1` `List` with the objects as `items`.
fn as_list<T: serde::Serialize>(items: &[T]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

/// One line of the `run --wait` progress view: phase, stages done, and the stages running.
fn progress_line(run: &PipelineRun) -> String {
    let Some(status) = run.status.as_ref() else {
        return "Pending".into();
    };
    let phase = status.phase.map_or("Pending".into(), |p| format!("{p:?}"));
    let running: Vec<&str> = status
        .stages
        .iter()
        .filter(|s| {
            matches!(
                s.phase,
                model::StagePhase::Running | model::StagePhase::Retrying
            )
        })
        .map(|s| s.id.as_str())
        .collect();
    let mut line = match &status.metrics {
        Some(m) => format!(
            "{phase:<9} [{}/{} stages]",
            m.completed_stages, m.total_stages
        ),
        None => phase,
    };
    if !running.is_empty() {
        line.push_str(&format!(" running: {}", running.join(", ")));
    }
    if let Some(e) = &status.error {
        line.push_str(&format!(" error: {}", e.message));
    }
    line
}

/// One line of `fm k8s logs`: when, why, what.
struct LogLine {
    at: Option<Time>,
    reason: String,
    message: String,
}

/// Each stage's start and end as the run's status records them (the operator writes no Kubernetes
/// Events for stage starts and successes), keyed so that a line is printed once.
fn stage_lines(run: &PipelineRun) -> Vec<(String, LogLine)> {
    let mut lines = Vec::new();
    let Some(status) = run.status.as_ref() else {
        return lines;
    };
    for stage in &status.stages {
        let id = &stage.id;
        if let Some(start) = &stage.start_time {
            let component = stage
                .component_type
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            lines.push((
                format!("stage-start/{id}"),
                LogLine {
                    at: Some(start.clone()),
                    reason: "StageStarted".into(),
                    message: format!("[{id}] started{component}"),
                },
            ));
        }
        let ended = matches!(
            stage.phase,
            model::StagePhase::Succeeded | model::StagePhase::Failed | model::StagePhase::Skipped
        );
        if ended && (stage.completion_time.is_some() || stage.phase == model::StagePhase::Skipped) {
            let verb = format!("{:?}", stage.phase).to_lowercase();
            let duration = stage
                .duration
                .as_deref()
                .map(|d| format!(" in {d}"))
                .unwrap_or_default();
            let attempts = match stage.attempts {
                0 => String::new(),
                1 => " (1 attempt)".into(),
                n => format!(" ({n} attempts)"),
            };
            lines.push((
                format!("stage-end/{id}"),
                LogLine {
                    at: stage.completion_time.clone(),
                    reason: format!("Stage{:?}", stage.phase),
                    message: format!("[{id}] {verb}{duration}{attempts}"),
                },
            ));
        }
    }
    lines
}

async fn logs(
    client: &FlowMasonClient,
    run: &str,
    follow: bool,
    output: OutputFormat,
) -> anyhow::Result<i32> {
    let mut seen = HashSet::new();
    let mut saw_end = false;
    // The operator writes a run's final status and its last Kubernetes Events separately: after the
    // status says the run ended, follow a little longer until its terminal event is listed too.
    let mut ended_at: Option<std::time::Instant> = None;
    loop {
        let current = client
            .get_run(run)
            .await?
            .with_context(|| format!("PipelineRun {}/{run} not found", client.namespace()))?;
        let ended = current
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(crate::model::RunPhase::is_terminal);
        let mut batch: Vec<LogLine> = Vec::new();
        for event in client.run_events(run).await? {
            let name = event.metadata.name.clone().unwrap_or_default();
            if !seen.insert(name) {
                continue;
            }
            saw_end |= matches!(
                event.reason.as_deref(),
                Some("RunSucceeded" | "RunFailed" | "RunCancelled" | "RunTimedOut")
            );
            if output != OutputFormat::Table {
                match output {
                    OutputFormat::Json => println!("{}", serde_json::to_string(&event)?),
                    _ => print_structured(&event, output)?,
                }
                continue;
            }
            batch.push(LogLine {
                at: event.event_time.as_ref().map(|t| Time(t.0)),
                reason: event.reason.clone().unwrap_or_default(),
                message: event.message.clone().unwrap_or_default(),
            });
        }
        if output == OutputFormat::Table {
            for (key, line) in stage_lines(&current) {
                if seen.insert(key) {
                    batch.push(line);
                }
            }
            // In time order; a line without a time (a skipped stage) goes last.
            batch.sort_by(|a, b| match (&a.at, &b.at) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            for line in batch {
                println!(
                    "{} {:<15} {}",
                    line.at.map(|t| t.0.to_string()).unwrap_or_default(),
                    line.reason,
                    line.message
                );
            }
        }
        if !follow {
            return Ok(0);
        }
        if ended {
            let since = *ended_at.get_or_insert_with(std::time::Instant::now);
            if saw_end || since.elapsed() > Duration::from_secs(5) {
                return Ok(0);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

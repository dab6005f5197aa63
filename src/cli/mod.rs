//! The `fm` command line: argument definitions and dispatch. Each verb lives in its own file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use flowmason_store::{Durability, EventStore, StoreConfig};

mod bench;
mod bench_k8s;
mod bench_resume;
mod event_log;
mod history;
mod inputs;
mod k8s;
mod operator;
mod progress;
mod resume;
mod run;
mod serve;
mod stopping;
mod validate;

/// Exit code of a run that did not succeed (failed, cancelled, timed out).
pub const EXIT_RUN_FAILED: i32 = 1;
/// Exit code of bad input: an invalid pipeline file, bad arguments, an unusable data dir.
pub const EXIT_INVALID: i32 = 2;
/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;
pub use event_log::{EventLogArgs, EventLogKind};
pub use stopping::EXIT_STORAGE;

#[derive(Parser, Debug)]
#[command(
    name = "fm",
    version,
    about = "FlowMason engine: run, validate and inspect FlowMason pipelines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Largest stage output, rendered stage input or jq/JMESPath result, in bytes of JSON; a stage that
    /// produces more fails with an error naming it.
    #[arg(
        long,
        global = true,
        env = "FM_MAX_OUTPUT_BYTES",
        default_value_t = flowmason_actors::limits::DEFAULT_MAX_OUTPUT_BYTES
    )]
    pub max_output_bytes: usize,
    /// The directory `local_file` stages read and write under (paths relative to it, no escape through
    /// `..`, absolute paths or symlinks). Without it, `local_file` stages fail.
    #[arg(long, global = true, env = "FM_FILES_ROOT", value_name = "DIR")]
    pub files_root: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one pipeline in-process and print its output as JSON.
    Run(run::RunArgs),
    /// Check a pipeline file and print every problem found.
    Validate(validate::ValidateArgs),
    /// Print the CustomResourceDefinitions of Pipeline and PipelineRun as YAML.
    Crds,
    /// Query the run history kept in the data dir.
    History(Box<history::HistoryArgs>),
    /// Finish every run in the data dir that has not ended (after a crash or a kill).
    Resume(resume::ResumeArgs),
    /// Load harnesses measuring the engine end to end.
    Bench(bench::BenchArgs),
    /// Serve the embedded Kubernetes-compatible API (kubectl and kube clients work against it), the
    /// controllers and the web UI (/ui/; a login link with the token is printed).
    Serve(serve::ServeArgs),
    /// Run the controllers and the engine against a cluster (kubeconfig or in-cluster).
    Operator(operator::OperatorArgs),
    /// Deploy, run and inspect pipelines on a Kubernetes API server (a cluster or `fm serve`).
    K8s(k8s::K8sArgs),
    /// Internal: evaluates jq and JMESPath jobs from stdin for the engine (see `eval_worker`).
    #[command(name = crate::components::eval_worker::WORKER_COMMAND, hide = true)]
    EvalWorker(EvalWorkerArgs),
}

/// Limits of an expression worker, set by the engine that starts it.
#[derive(Args, Debug)]
pub struct EvalWorkerArgs {
    #[arg(long)]
    memory_bytes: u64,
    #[arg(long)]
    cpu_seconds: u64,
}

impl Command {
    /// Whether the command is a long-running server (`fm serve`, `fm operator`, `fm history serve`),
    /// which must outlive a closed stdout or stderr; every other command ends quietly when the reader
    /// of its output goes away (`fm history show ... | head`).
    pub fn is_server(&self) -> bool {
        match self {
            Command::Serve(_) | Command::Operator(_) => true,
            Command::History(args) => {
                matches!(args.show, Some(history::HistoryCommand::Serve(_)))
            }
            _ => false,
        }
    }
}

/// Trigger options shared by `fm serve` (and `fm operator`).
#[derive(Args, Debug, Clone)]
pub struct TriggerArgs {
    /// NATS server for `spec.triggers.pubsub` (e.g. nats://127.0.0.1:4222); without it pubsub
    /// triggers are reported as not armed.
    #[arg(long, env = "FM_NATS_URL")]
    pub nats: Option<String>,
    /// Secret NAMESPACE/NAME holding the NATS credentials: key `creds` (a .creds file), or `token`, or
    /// `user` and `password`.
    #[arg(long)]
    pub nats_credentials: Option<String>,
    /// JetStream stream that captures the trigger subjects (found, or created with them).
    #[arg(long, default_value = crate::triggers::nats::DEFAULT_STREAM)]
    pub nats_stream: String,
    /// Dead letters go to PREFIX.<namespace>.<pipeline>.
    #[arg(long, default_value = crate::triggers::nats::DEFAULT_DEADLETTER_PREFIX)]
    pub nats_deadletter_prefix: String,
    /// Largest webhook body accepted (bytes); larger ones are answered 413.
    #[arg(long, default_value_t = crate::triggers::webhook::DEFAULT_MAX_BODY)]
    pub webhook_max_body: usize,
    /// How far the `X-FlowMason-Timestamp` of a signed webhook request may be from now (older ones are
    /// refused as replays): 30s, 5m, 1h.
    #[arg(long, default_value = "5m", value_parser = parse_window)]
    pub webhook_replay_window: std::time::Duration,
    /// Serve no triggers (no cron, NATS or webhooks).
    #[arg(long)]
    pub no_triggers: bool,
}

/// A `--webhook-replay-window` value.
fn parse_window(text: &str) -> Result<std::time::Duration, String> {
    crate::history::parse_duration_ms("--webhook-replay-window", text)
        .map(std::time::Duration::from_millis)
        .map_err(|e| e.to_string())
}

impl TriggerArgs {
    /// The webhook router state, before the triggers exist (servers mount it first).
    pub fn webhook_mount(&self) -> crate::triggers::webhook::WebhookMount {
        crate::triggers::webhook::WebhookMount::new(
            self.webhook_max_body,
            self.webhook_replay_window,
        )
    }

    /// Connects NATS (credentials read through `client`) and builds the triggers.
    pub async fn start(
        &self,
        client: kube::Client,
        webhooks: crate::triggers::webhook::WebhookMount,
    ) -> anyhow::Result<std::sync::Arc<crate::triggers::Triggers>> {
        use crate::triggers::nats::{NatsAuth, NatsConnection, NatsOptions};
        let nats = match &self.nats {
            None => None,
            Some(url) => {
                let mut options = NatsOptions::new(url.clone());
                options.stream = self.nats_stream.clone();
                options.deadletter_prefix = self.nats_deadletter_prefix.clone();
                if let Some(secret) = &self.nats_credentials {
                    let (ns, name) = secret.split_once('/').with_context(|| {
                        format!("--nats-credentials {secret:?}: expected NAMESPACE/NAME")
                    })?;
                    options.auth = NatsAuth::from_secret(&client, ns, name).await?;
                }
                Some(NatsConnection::connect(options).await?)
            }
        };
        Ok(std::sync::Arc::new(crate::triggers::Triggers::new(
            client,
            crate::triggers::TriggerConfig {
                nats,
                webhook_max_body: self.webhook_max_body,
                webhook_replay_window: self.webhook_replay_window,
                webhooks: Some(webhooks),
                ..crate::triggers::TriggerConfig::default()
            },
        )))
    }
}

/// Who may read run data on a port of its own (`fm operator --http-bind`, `fm history serve`).
#[derive(Args, Debug, Clone)]
pub struct HttpAuthArgs {
    /// File holding the bearer token every request for run data (history API, `/metrics`) must carry;
    /// a wrong token is always answered 401. Required on a non-loopback bind. deploy/ mounts it from
    /// the Secret `flowmason-http-token`.
    #[arg(long, env = "FM_HTTP_TOKEN_FILE", value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Serve `/metrics` without the token (for a Prometheus that cannot send one); the history API
    /// still needs it.
    #[arg(long)]
    pub metrics_public: bool,
}

impl HttpAuthArgs {
    /// The guard of a port bound at `bind` (named `flag` in errors).
    pub fn guard(
        &self,
        flag: &str,
        bind: std::net::SocketAddr,
    ) -> anyhow::Result<crate::http::auth::Guard> {
        Ok(crate::http::auth::Guard::new(
            flag,
            bind,
            self.http_token_file.as_deref(),
        )?)
    }
}

/// The capacity the runs in flight reserve their Pipeline's `spec.resources.requests` from, shared by
/// `fm serve` and `fm operator`. Unset: nothing is reserved (every run starts at once).
#[derive(Args, Debug, Clone)]
pub struct CapacityArgs {
    /// CPU the runs in flight may request in all (a Kubernetes quantity: 2, 1500m). deploy/ sets it
    /// from the operator container's own CPU limit.
    #[arg(long, env = "FM_CAPACITY_CPU")]
    pub capacity_cpu: Option<String>,
    /// Memory the runs in flight may request in all (a Kubernetes quantity: 4Gi, 512M). deploy/ sets
    /// it from the operator container's own memory limit.
    #[arg(long, env = "FM_CAPACITY_MEMORY")]
    pub capacity_memory: Option<String>,
}

impl CapacityArgs {
    pub fn capacity(&self) -> anyhow::Result<crate::operator::capacity::Capacity> {
        crate::operator::capacity::Capacity::parse(
            self.capacity_cpu.as_deref(),
            self.capacity_memory.as_deref(),
        )
        .map_err(anyhow::Error::msg)
    }
}

/// Where runs are recorded.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Directory holding the event log (default: $FM_DATA_DIR, else ~/.local/share/flowmason).
    #[arg(long, env = "FM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When appended events reach the disk: always, batch (group commit; terminal events always durable)
    /// or never.
    #[arg(long, default_value = "batch")]
    pub durability: Durability,
    #[command(flatten)]
    pub event_log: EventLogArgs,
}

impl StoreArgs {
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let home =
            std::env::var_os("HOME").context("--data-dir is not given and HOME is not set")?;
        Ok(PathBuf::from(home).join(".local/share/flowmason"))
    }

    /// Opens (creating if needed) the event log under the data dir, or on JetStream with
    /// `--event-log jetstream`.
    pub fn open(&self) -> anyhow::Result<EventStore> {
        if self.event_log.event_log == EventLogKind::Jetstream {
            return self
                .event_log
                .open(std::path::Path::new(""), self.durability);
        }
        let dir = self.data_dir()?;
        let path = dir.join("events");
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create data dir {}", path.display()))?;
        EventStore::open(
            &path,
            StoreConfig {
                durability: self.durability,
                ..StoreConfig::default()
            },
        )
        .map_err(|e| {
            let locked = matches!(&e, flowmason_store::StoreError::Sled(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock"));
            let e = anyhow::Error::new(e);
            if is_disk_full(&e) {
                e.context(format!(
                    "no space left on device: cannot open the event log in {}",
                    path.display()
                ))
            } else if locked {
                e.context(format!(
                    "cannot open the event log in {} (is another fm using it?)",
                    path.display()
                ))
            } else {
                e.context(format!("cannot open the event log in {}", path.display()))
            }
        })
    }

    /// Says that the disk is full, naming the event log's directory, when `error` comes from a full disk.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        if !is_disk_full(&error) {
            return error;
        }
        let dir = self.data_dir().map_or_else(
            |_| "the data dir".to_string(),
            |d| d.join("events").display().to_string(),
        );
        error.context(format!(
            "no space left on device: the event log in {dir} cannot be written"
        ))
    }
}

/// Whether an error comes from a full disk (ENOSPC), wherever in its chain. Errors that crossed the
/// engine's actors arrive as text, so the OS's wording of ENOSPC counts too.
pub fn is_disk_full(error: &anyhow::Error) -> bool {
    let typed = error.chain().any(|e| {
        let io =
            e.downcast_ref::<std::io::Error>()
                .or_else(|| match e.downcast_ref::<sled::Error>() {
                    Some(sled::Error::Io(io)) => Some(io),
                    _ => None,
                });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    });
    typed || format!("{error:#}").contains("No space left on device")
}

/// The exit code of a command that failed with `error`: [`EXIT_STORAGE`] when the disk is full, else
/// [`EXIT_INVALID`].
pub fn exit_code_of(error: &anyhow::Error) -> i32 {
    if is_disk_full(error) {
        EXIT_STORAGE
    } else {
        EXIT_INVALID
    }
}

/// Where a run's `secretKeyRef`/`configMapKeyRef` entries and provider keys are read from, in this order:
/// the secrets file, the env files (as given), then `FM_SECRET_<NAME>_<KEY>` / `FM_CONFIGMAP_<NAME>_<KEY>`
/// process variables. See docs/environment.md.
#[derive(Args, Debug, Clone, Default)]
pub struct EnvArgs {
    /// YAML/JSON file `{secrets: {NAME: {KEY: VALUE}}, configMaps: {NAME: {KEY: VALUE}}}`.
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// `KEY=VALUE` lines: with `NAME=` the keys of Secret/ConfigMap NAME, without it keys of any. Repeatable.
    #[arg(long = "env-file", value_name = "[NAME=]FILE")]
    pub env_files: Vec<String>,
}

impl EnvArgs {
    /// The engine's environment resolver over the sources given.
    pub fn resolver(&self) -> anyhow::Result<flowmason_actors::EnvResolver> {
        self.resolver_over(crate::env::ProcessEnv::current())
    }

    /// [`EnvArgs::resolver`] for `fm run`, which also offers the process' SDK key variables
    /// (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`) to the providers (see `crate::model::project`).
    pub fn resolver_with_sdk_keys(&self) -> anyhow::Result<flowmason_actors::EnvResolver> {
        self.resolver_over(crate::env::ProcessEnv::current_with_sdk_keys())
    }

    fn resolver_over(
        &self,
        process: crate::env::ProcessEnv,
    ) -> anyhow::Result<flowmason_actors::EnvResolver> {
        use crate::env::{Chain, EnvFile, SecretsFile};
        let mut chain = Chain::new();
        if let Some(path) = &self.secrets {
            chain = chain.with(SecretsFile::load(path).context("--secrets")?);
        }
        for arg in &self.env_files {
            chain = chain.with(EnvFile::load(arg).context("--env-file")?);
        }
        chain = chain.with(process);
        Ok(crate::env::resolver(std::sync::Arc::new(chain)))
    }
}

/// Loads a pipeline file for `fm run`, `fm validate` and `fm k8s deploy`: the providers of the
/// project's `flowmason.json` (found walking up from the file) fill what the pipeline leaves open, and
/// with `process_env` (`fm run`, `fm validate`) so do the SDK variables of this process
/// (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`, ...). The message of an error names the file.
pub(crate) fn load_pipeline(
    file: &std::path::Path,
    process_env: bool,
) -> Result<crate::model::LoadedPipeline, String> {
    let mut loaded = crate::model::load_pipeline_file(file).map_err(|e| e.to_string())?;
    if let Some(project) = crate::model::project::project_of(file).map_err(|e| e.to_string())? {
        project.apply(&mut loaded.spec);
    }
    if process_env {
        crate::model::project::apply_process_env(&mut loaded.spec, &|name| {
            std::env::var(name).ok()
        });
    }
    Ok(loaded)
}

/// How results are printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
    /// `kind.group/name` of each object, as `kubectl -o name` prints it.
    Name,
}

/// `kind.group/name` of an object (`pipelinerun.flowmason.io/etl-1`), of each item of a list, of each
/// object in a map of them (`fm k8s status`'s `{pipeline, runs}`).
fn object_names(value: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    match value {
        Value::Array(items) => items.iter().flat_map(object_names).collect(),
        Value::Object(map) => match (map.get("kind"), map.get("metadata")) {
            (Some(Value::String(kind)), Some(metadata)) if kind != "List" => {
                let group = map
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .and_then(|v| v.split_once('/'))
                    .map(|(group, _)| format!(".{group}"))
                    .unwrap_or_default();
                let name = metadata["name"].as_str().unwrap_or_default();
                vec![format!("{}{group}/{name}", kind.to_lowercase())]
            }
            _ => map.values().flat_map(object_names).collect(),
        },
        _ => Vec::new(),
    }
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    use crate::components::eval_worker::{self, WorkerLimits};
    flowmason_actors::limits::set_max_output_bytes(cli.max_output_bytes);
    if let Some(root) = &cli.files_root {
        crate::components::local_file::set_files_root(root)
            .with_context(|| format!("--files-root {}", root.display()))?;
    }
    if let Command::EvalWorker(args) = &cli.command {
        let limits = WorkerLimits {
            memory_bytes: args.memory_bytes,
            cpu_seconds: args.cpu_seconds,
            max_output_bytes: cli.max_output_bytes,
        };
        eval_worker::serve(limits, crate::components::json_transform::evaluate)
            .context("expression worker")?;
        return Ok(0);
    }
    let program = std::env::current_exe().context("cannot find the fm executable")?;
    eval_worker::configure(
        program,
        WorkerLimits {
            max_output_bytes: cli.max_output_bytes,
            ..WorkerLimits::default()
        },
    );
    match cli.command {
        Command::EvalWorker(_) => Ok(0),
        Command::Run(args) => run::run(args),
        Command::Validate(args) => validate::validate(args),
        Command::Crds => {
            print!(
                "{}---\n{}",
                crate::model::pipeline_crd_yaml(),
                crate::model::pipelinerun_crd_yaml()
            );
            Ok(0)
        }
        Command::History(args) => history::history(*args),
        Command::Resume(args) => resume::resume(args),
        Command::Bench(args) => bench::bench(args),
        Command::Serve(args) => serve::serve(args),
        Command::Operator(args) => operator::operator(args),
        Command::K8s(args) => k8s::k8s(args),
    }
}

/// Prints a value as pretty JSON or YAML.
/// Prints a server's start-up lines on stdout. A server must outlive whoever reads them: scripts and
/// tests often stop reading after the address, so a closed pipe is ignored here instead of ending the
/// process (`println!` panics on it, and servers keep SIGPIPE ignored).
pub(crate) fn announce(lines: &[String]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

pub fn print_structured(value: &impl serde::Serialize, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Name => {
            let value = serde_json::to_value(value).context("cannot render the objects")?;
            for name in object_names(&value) {
                println!("{name}");
            }
        }
        OutputFormat::Yaml => print!(
            "{}",
            serde_saphyr::to_string(value).context("cannot render YAML")?
        ),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(value).context("cannot render JSON")?
        ),
    }
    Ok(())
}

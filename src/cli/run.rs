//! `fm run FILE`: one pipeline, in-process, no server. Progress on stderr, the run's output as JSON on stdout,
//! exit code 0 only when the run succeeded.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use flowmason_actors::{Engine, EngineConfig, RunRequest};
use flowmason_store::RunPhase;
use serde_json::Value;

use super::progress::Progress;
use super::{EXIT_INVALID, EXIT_RUN_FAILED, EnvArgs, StoreArgs, inputs};
use crate::components::registry_with_resolver;
use crate::model;
use crate::model::directory::DirectoryResolver;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pipeline file: a Pipeline resource, a bare spec, or a FlowMason pipeline.json (YAML or JSON). In a
    /// FlowMason project, the flowmason.json above it gives the LLM providers; ANTHROPIC_API_KEY /
    /// OPENAI_API_KEY (and *_BASE_URL) in this environment give their keys.
    pub file: PathBuf,
    /// A run input, `key=value`; the value is parsed as JSON when it is JSON. Repeatable.
    #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
    pub input: Vec<String>,
    /// A JSON or YAML file holding an object of inputs (`--input` pairs override its keys).
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,
    /// How to print the run's output: compact JSON, or indented.
    #[arg(long, short = 'o', default_value = "pretty")]
    pub output: RunOutput,
    #[command(flatten)]
    pub env: EnvArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutput {
    Json,
    Pretty,
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let loaded = super::load_pipeline(&args.file, true).map_err(anyhow::Error::msg)?;
    // `subpipeline` stages find the pipelines they name among the files next to this one.
    let dir = match args.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let registry = registry_with_resolver(std::sync::Arc::new(DirectoryResolver::new(dir)));
    // Refused as `fm validate` and the API server refuse it, unknown fields included.
    let problems = super::validate::problems(&loaded, &|name| registry.contains(name));
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{}: {problem}", args.file.display());
        }
        eprintln!(
            "{}: {} problem(s); nothing was run",
            args.file.display(),
            problems.len()
        );
        return Ok(EXIT_INVALID);
    }
    let plan = model::to_plan(&loaded.spec).map_err(|problems| {
        anyhow::anyhow!(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let mut inputs = inputs::parse(&args.input, args.inputs.as_deref())?
        .or_else(|| loaded.sample_input.clone())
        .unwrap_or_else(|| Value::Object(Default::default()));
    if let Some(schema) = &loaded.spec.input_schema {
        model::input_schema::apply_defaults(schema, &mut inputs);
        let problems = model::input_schema::check(schema, &inputs);
        if !problems.is_empty() {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "the inputs do not match the pipeline's inputSchema ({} problem(s)); nothing was run",
                problems.len()
            );
            return Ok(EXIT_INVALID);
        }
    }
    let env = args.env.resolver_with_sdk_keys()?;
    let store = args.store.open()?;
    let mut request = RunRequest::new(loaded.name.clone(), plan, inputs);
    request.namespace = loaded.namespace.clone().unwrap_or_else(|| "default".into());
    let output_format = args.output;
    let store_args = args.store.clone();

    let ran = crate::runtime::block_on(move || async move {
        // Secret values are resolved inside the engine and masked in every event; everything printed
        // below comes from those events, so no secret value reaches the terminal.
        let config = EngineConfig {
            env,
            ..EngineConfig::default()
        };
        let engine = Engine::new(store.clone(), registry, config);
        let mut handle = engine
            .start_observed(request)
            .await
            .context("cannot start the run")?;
        let run_id = handle.run_id;
        eprintln!("run {run_id} of {}", loaded.name);
        let mut events = handle.take_events();
        let mut progress = Progress::for_stderr();
        let finished = handle.finished();
        tokio::pin!(finished);
        let mut interrupted = false;
        let state = loop {
            tokio::select! {
                state = &mut finished => break state?,
                Some(event) = async { match events.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                    progress.show(&event);
                }
                _ = tokio::signal::ctrl_c(), if !interrupted => {
                    interrupted = true;
                    engine.cancel(run_id, "interrupted (Ctrl-C)");
                }
            }
        };
        if let Some(rx) = events.as_mut() {
            while let Ok(event) = rx.try_recv() {
                progress.show(&event);
            }
        }
        progress.finish();
        if state
            .error
            .as_ref()
            .is_some_and(|e| e.stage.is_none() && e.message.starts_with("environment: "))
        {
            eprintln!(
                "hint: give Secret and ConfigMap values with --secrets FILE or --env-file NAME=FILE (see docs/environment.md)"
            );
        }
        engine
            .shutdown()
            .context("cannot record the engine's shutdown in the event log and flush it")?;
        let output = match state.phase {
            RunPhase::Succeeded => state.output.clone().unwrap_or(Value::Null),
            _ => serde_json::json!({
                "runId": run_id.to_string(),
                "phase": state.phase,
                "error": state.error,
            }),
        };
        let text = match output_format {
            RunOutput::Json => serde_json::to_string(&output)?,
            RunOutput::Pretty => serde_json::to_string_pretty(&output)?,
        };
        println!("{text}");
        Ok(if state.phase == RunPhase::Succeeded {
            0
        } else {
            EXIT_RUN_FAILED
        })
    })?;
    ran.map_err(|e| store_args.explain(e))
}

//! `fm validate FILE`: every problem of a pipeline file, one line each, before anything runs.

use std::path::{Path, PathBuf};

use clap::Args;

use super::EXIT_INVALID;
use crate::components::builtin_registry;
use crate::model::{self, PipelineSpec};

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Pipeline file: a Pipeline resource, a bare spec, or a FlowMason pipeline.json (YAML or JSON).
    pub file: PathBuf,
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<i32> {
    let loaded = match model::load_pipeline_file(&args.file) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_INVALID);
        }
    };
    if !report(&args.file, &loaded.spec) {
        return Ok(EXIT_INVALID);
    }
    let stages = match &loaded.spec.source {
        // The stages are in a ConfigMap this command cannot read; the server checks them when it
        // resolves the source (the file the ConfigMap is made from can be checked on its own).
        Some(source) => format!(
            "its stages come from ConfigMap {:?} key {:?}, checked when the server resolves it",
            source.name,
            source.key.as_deref().unwrap_or("pipeline.json")
        ),
        None => format!("{} stages", loaded.spec.stages.len()),
    };
    println!(
        "{}: pipeline {} is valid ({stages})",
        args.file.display(),
        loaded.name,
    );
    Ok(0)
}

/// Checks a spec loaded from `file` before it is deployed or run: prints each problem on stdout and each
/// warning on stderr, one line each prefixed with the file, and answers whether the spec is valid.
pub(super) fn report(file: &Path, spec: &PipelineSpec) -> bool {
    for warning in model::warnings(spec) {
        eprintln!("{}: warning: {warning}", file.display());
    }
    let registry = builtin_registry();
    let problems = model::validate(spec, &|name| registry.contains(name));
    for problem in &problems {
        println!("{}: {problem}", file.display());
    }
    if !problems.is_empty() {
        eprintln!("{}: {} problem(s)", file.display(), problems.len());
    }
    problems.is_empty()
}

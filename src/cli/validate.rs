//! `fm validate FILE`: every problem of a pipeline file, one line each, before anything runs. Unknown
//! fields (typos such as `dependOn`, which loading would ignore) are problems too, with the closest
//! allowed name.

use std::path::{Path, PathBuf};

use clap::Args;

use super::EXIT_INVALID;
use crate::components::builtin_registry;
use crate::model::{self, LoadedPipeline};

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Pipeline file: a Pipeline resource, a bare spec, or a FlowMason pipeline.json (YAML or JSON). In a
    /// FlowMason project, the flowmason.json above it gives the LLM providers; ANTHROPIC_API_KEY /
    /// OPENAI_API_KEY (and *_BASE_URL) in this environment give their keys.
    pub file: PathBuf,
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<i32> {
    let loaded = match super::load_pipeline(&args.file, true) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_INVALID);
        }
    };
    if !report(&args.file, &loaded, Problems::Stdout) {
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

/// Where [`report`] prints the problems: `fm validate`'s answer is its problems (stdout); a command
/// with an answer of its own (`fm k8s deploy`) prints them on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Problems {
    Stdout,
    Stderr,
}

/// Every problem of a loaded pipeline: its unknown fields (a misspelt field would silently lose its
/// meaning) and the problems of its spec, with `known` telling which component types exist.
pub(super) fn problems(
    loaded: &LoadedPipeline,
    known: &dyn Fn(&str) -> bool,
) -> Vec<model::ValidationError> {
    loaded
        .unknown_fields
        .iter()
        .map(|u| model::ValidationError::new(&u.path, u.message()))
        .chain(model::validate(&loaded.spec, known))
        .collect()
}

/// Checks a pipeline loaded from `file` before it is deployed or run: its unknown fields (with the
/// closest allowed name) and every problem of its spec, one line each prefixed with the file, and each
/// warning on stderr; answers whether it is valid.
pub(super) fn report(file: &Path, loaded: &LoadedPipeline, to: Problems) -> bool {
    for warning in model::warnings(&loaded.spec) {
        eprintln!("{}: warning: {warning}", file.display());
    }
    let registry = builtin_registry();
    let problems = problems(loaded, &|name| registry.contains(name));
    for problem in &problems {
        match to {
            Problems::Stdout => println!("{}: {problem}", file.display()),
            Problems::Stderr => eprintln!("{}: {problem}", file.display()),
        }
    }
    if !problems.is_empty() {
        eprintln!("{}: {} problem(s)", file.display(), problems.len());
    }
    problems.is_empty()
}

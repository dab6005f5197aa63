//! `fm validate FILE`: every problem of a pipeline file, one line each, before anything runs. Unknown
//! fields (typos such as `dependOn`, which loading would ignore) are problems too, with the closest
//! allowed name.

use std::path::PathBuf;

use clap::Args;

use super::EXIT_INVALID;
use crate::components::builtin_registry;
use crate::model;

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
    let registry = builtin_registry();
    let problems: Vec<model::ValidationError> = loaded
        .unknown_fields
        .iter()
        .map(|u| model::ValidationError::new(&u.path, u.message()))
        .chain(model::validate(&loaded.spec, &|name| {
            registry.contains(name)
        }))
        .collect();
    if problems.is_empty() {
        println!(
            "{}: pipeline {} is valid ({} stages)",
            args.file.display(),
            loaded.name,
            loaded.spec.stages.len()
        );
        return Ok(0);
    }
    for problem in &problems {
        println!("{}: {problem}", args.file.display());
    }
    eprintln!("{}: {} problem(s)", args.file.display(), problems.len());
    Ok(EXIT_INVALID)
}

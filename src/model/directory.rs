//! The pipelines of one directory as `subpipeline` stages find them: `fm run` gives its registry a
//! [`DirectoryResolver`] over the directory of the file it runs, so a stage names a sibling pipeline.

use std::path::PathBuf;

use flowmason_actors::PlanSpec;

use crate::components::PipelineResolver;

/// Pipelines from the files (`*.yaml`, `*.yml`, `*.json`) of one directory, by name. Read at each
/// resolution, so an edited file is seen by the next run.
#[derive(Debug, Clone)]
pub struct DirectoryResolver {
    dir: PathBuf,
}

impl DirectoryResolver {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectoryResolver { dir: dir.into() }
    }
}

impl PipelineResolver for DirectoryResolver {
    fn resolve(&self, _namespace: &str, name: &str) -> Result<PlanSpec, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        files.sort();
        for file in files {
            // Files that are not pipelines (inputs, other documents) are passed over.
            let Ok(loaded) = super::load_pipeline_file(&file) else {
                continue;
            };
            if loaded.name == name {
                return super::to_plan(&loaded.spec).map_err(|problems| {
                    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    format!(
                        "pipeline {name:?} in {} is invalid: {}",
                        file.display(),
                        text.join("; ")
                    )
                });
            }
        }
        Err(format!(
            "no pipeline named {name:?} in {}",
            self.dir.display()
        ))
    }
}

//! A PipelineRun's ownerReference to its Pipeline (deleting the Pipeline deletes its runs) and its label
//! `flowmason.io/pipeline` (the Python client's `list_runs(pipeline_ref=...)` selects on it).

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use super::{RunContext, object_name};
use crate::model::vocabulary::PIPELINE_LABEL;
use crate::model::{Pipeline, PipelineRun};
use crate::operator::error::{Error, Result};

/// Gives a PipelineRun an ownerReference to its Pipeline (deleting the Pipeline deletes its runs) and
/// the label `flowmason.io/pipeline` (the Python client's `list_runs(pipeline_ref=...)` selects on it).
pub(super) async fn own(run: &PipelineRun, pipeline: &Pipeline, ctx: &RunContext) -> Result<()> {
    let Some(metadata) = ownership(run, pipeline) else {
        return Ok(());
    };
    let namespace = run.namespace().unwrap_or_else(|| "default".into());
    Api::<PipelineRun>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": metadata })),
        )
        .await
        .map_err(|e| Error::kube(format!("set the owner of {}", object_name(run)), e))?;
    Ok(())
}

/// The metadata (merge patch) that makes `pipeline` own `run`: an ownerReference and the label
/// `flowmason.io/pipeline`; `None` when the run already has both.
pub(super) fn ownership(
    run: &PipelineRun,
    pipeline: &Pipeline,
) -> Option<serde_json::Map<String, Value>> {
    let owner = pipeline.controller_owner_ref(&())?;
    let owned = run.owner_references().iter().any(|o| o.uid == owner.uid);
    let labelled = run.labels().get(PIPELINE_LABEL) == Some(&pipeline.name_any());
    if owned && labelled {
        return None;
    }
    let mut refs = run.owner_references().to_vec();
    if !owned {
        refs.push(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                controller: Some(false),
                ..owner
            },
        );
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert("ownerReferences".into(), json!(refs));
    metadata.insert(
        "labels".into(),
        json!({ PIPELINE_LABEL: pipeline.name_any() }),
    );
    Some(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures;

    #[test]
    fn ownership_adds_the_pipeline_reference_and_label_once() {
        let pipeline = fixtures::pipeline("etl", &["a"]);
        let mut run = fixtures::pipeline_run("etl-1", "etl");
        let metadata = ownership(&run, &pipeline).expect("not owned yet");
        assert_eq!(metadata["labels"], json!({"flowmason.io/pipeline": "etl"}));
        assert_eq!(metadata["ownerReferences"][0]["uid"], json!("uid-etl"));
        assert_eq!(metadata["ownerReferences"][0]["kind"], json!("Pipeline"));
        assert_eq!(metadata["ownerReferences"][0]["controller"], json!(false));
        let patched: kube::api::ObjectMeta =
            serde_json::from_value(Value::Object(metadata)).expect("metadata");
        run.metadata.owner_references = patched.owner_references;
        run.metadata.labels = patched.labels;
        assert_eq!(ownership(&run, &pipeline), None, "nothing left to write");
    }
}

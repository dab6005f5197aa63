//! The rerun of `fm serve` and `fm operator`: a PipelineRun created through the Kubernetes API, which the
//! operator then starts (the engine path is [`crate::history::rerun::engine_rerunner`]).

use std::sync::{Arc, OnceLock};

use flowmason_store::RunState;

use crate::client::FlowMasonClient;
use crate::history::rerun::{RerunError, RerunOptions, RerunStarted, Rerunner, reuse};
use crate::model::PipelineRunSpec;
use crate::operator::runs::run_id_of;

/// Reruns through the Kubernetes API (`fm serve`, `fm operator`): creates a PipelineRun of the old run's
/// pipeline with its inputs and `spec.rerunOf`, and answers at once; the operator starts it, taking the
/// succeeded stages over from the event log when `fromFailed`. The client is set once the API server is
/// up (the routes are built before it); until then reruns answer an error naming that.
pub fn api_rerunner(client: Arc<OnceLock<kube::Client>>) -> Rerunner {
    Arc::new(move |old: RunState, options: RerunOptions| {
        let client = client.clone();
        Box::pin(async move {
            let run = old.run_id;
            // Refuse what the controller would refuse, before creating anything.
            let reused_stages = reuse(&old, options)?
                .map(|r| r.stages.keys().cloned().collect())
                .unwrap_or_default();
            let Some(client) = client.get().cloned() else {
                return Err(RerunError::Start {
                    run,
                    message: "the Kubernetes API server is not up yet".into(),
                });
            };
            let inputs = match &old.inputs {
                serde_json::Value::Object(map) => Some(map.clone()),
                serde_json::Value::Null => None,
                other => {
                    return Err(RerunError::Start {
                        run,
                        message: format!("recorded inputs are not an object: {other}"),
                    });
                }
            };
            let spec = PipelineRunSpec {
                pipeline_ref: old.pipeline.clone(),
                inputs,
                ..PipelineRunSpec::default()
            };
            let api = FlowMasonClient::new(client, old.namespace.clone());
            let created = api
                .create_rerun(spec, &run.to_string(), options.from_failed)
                .await
                .map_err(|e| RerunError::Start {
                    run,
                    message: e.to_string(),
                })?;
            let run_id = run_id_of(&created).map_err(|e| RerunError::Start {
                run,
                message: e.to_string(),
            })?;
            Ok(RerunStarted {
                run_id,
                rerun_of: run,
                reused_stages,
                run_name: Some(kube::ResourceExt::name_any(&created)),
            })
        })
    })
}

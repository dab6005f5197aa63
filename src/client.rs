//! `FlowMasonClient`: a typed async client of FlowMason's resources on any Kubernetes API server (a
//! cluster, or `fm serve`), with the operations of the original Python `FlowMasonK8sClient` plus
//! `watch_run` and `cancel_run`. The `fm k8s` commands are built on it.

use std::path::Path;

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Map, Value, json};

use crate::model::vocabulary::{CANCEL_ANNOTATION, PIPELINE_LABEL, RERUN_OF_LABEL, RUN_LABEL};
use crate::model::{Pipeline, PipelineRun, PipelineRunSpec, PipelineRunStatus, RerunOf, RunPhase};

/// Why a client call failed; each names the object involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {message}")]
    Config { path: String, message: String },
    /// Printed once, as kubectl prints it: the server's message, then each cause on a line of its own
    /// (not chained: the server's message already says everything the error's sources would repeat).
    #[error("{action}: {}", describe(.error))]
    Api { action: String, error: kube::Error },
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("watch of PipelineRun {name}: {message}")]
    Watch { name: String, message: String },
    #[error("run id {prefix:?} is ambiguous in {namespace}: {}", .candidates.join(", "))]
    Ambiguous {
        prefix: String,
        namespace: String,
        candidates: Vec<String>,
    },
}

fn api_error(action: String) -> impl FnOnce(kube::Error) -> ClientError {
    move |error| ClientError::Api { action, error }
}

/// What an API error says to a person: the server's message, or for an invalid object its summary and
/// one `* field: message` line per cause, as kubectl prints a 422.
fn describe(error: &kube::Error) -> String {
    let kube::Error::Api(status) = error else {
        return error.to_string();
    };
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    if causes.is_empty() {
        return status.message.clone();
    }
    // The server's message repeats the causes after the summary (`... is invalid: a; b`).
    let summary = status
        .message
        .split_once(" is invalid")
        .map_or(status.message.as_str(), |(head, _)| head);
    let mut text = format!("{summary} is invalid:");
    for cause in causes {
        if cause.field.is_empty() {
            text.push_str(&format!("\n* {}", cause.message));
        } else {
            text.push_str(&format!("\n* {}: {}", cause.field, cause.message));
        }
    }
    text
}

/// A client bound to one namespace.
#[derive(Clone)]
pub struct FlowMasonClient {
    client: Client,
    namespace: String,
}

impl FlowMasonClient {
    /// From a kubeconfig file and context (both optional: `$KUBECONFIG`, `~/.kube/config` or the
    /// in-cluster service account, and the current context). The namespace is `namespace`, else the
    /// context's, else `default`.
    pub async fn from_kubeconfig(
        path: Option<&Path>,
        context: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<FlowMasonClient, ClientError> {
        let options = kube::config::KubeConfigOptions {
            context: context.map(String::from),
            ..Default::default()
        };
        let origin = path.map_or_else(|| "(default)".to_string(), |p| p.display().to_string());
        let config_error = |message: String| ClientError::Config {
            path: origin.clone(),
            message,
        };
        let config = match path {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| config_error(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| config_error(e.to_string()))?
            }
            None if context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| config_error(e.to_string()))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| config_error(e.to_string()))?,
        };
        let namespace = namespace
            .map(String::from)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| config_error(e.to_string()))?;
        Ok(FlowMasonClient { client, namespace })
    }

    /// From a ready kube client.
    pub fn new(client: Client, namespace: impl Into<String>) -> FlowMasonClient {
        FlowMasonClient {
            client,
            namespace: namespace.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The underlying kube client, for verbs built on other modules' functions (e.g. the cron
    /// backfill) that take one.
    pub fn kube_client(&self) -> &Client {
        &self.client
    }

    fn pipelines(&self) -> Api<Pipeline> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn runs(&self) -> Api<PipelineRun> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn what(&self, kind: &str, name: &str) -> String {
        format!("{kind} {}/{name}", self.namespace)
    }

    /// Creates a Pipeline (in the client's namespace unless it names one).
    pub async fn create_pipeline(&self, pipeline: &Pipeline) -> Result<Pipeline, ClientError> {
        let mut pipeline = pipeline.clone();
        pipeline.metadata.namespace = Some(self.namespace.clone());
        self.pipelines()
            .create(&PostParams::default(), &pipeline)
            .await
            .map_err(api_error(format!(
                "create {}",
                self.what("Pipeline", &pipeline.name_any())
            )))
    }

    /// Creates the Pipeline, or replaces the spec of the existing one of that name.
    pub async fn apply_pipeline(&self, pipeline: &Pipeline) -> Result<Pipeline, ClientError> {
        match self.get_pipeline(&pipeline.name_any()).await? {
            None => self.create_pipeline(pipeline).await,
            Some(current) => {
                let mut next = pipeline.clone();
                next.metadata.resource_version = current.metadata.resource_version;
                self.update_pipeline(&next).await
            }
        }
    }

    pub async fn get_pipeline(&self, name: &str) -> Result<Option<Pipeline>, ClientError> {
        self.pipelines()
            .get_opt(name)
            .await
            .map_err(api_error(format!("read {}", self.what("Pipeline", name))))
    }

    pub async fn list_pipelines(&self) -> Result<Vec<Pipeline>, ClientError> {
        Ok(self
            .pipelines()
            .list(&ListParams::default())
            .await
            .map_err(api_error(format!("list Pipelines in {}", self.namespace)))?
            .items)
    }

    /// Replaces a Pipeline (its `resourceVersion`, when set, guards against lost updates).
    pub async fn update_pipeline(&self, pipeline: &Pipeline) -> Result<Pipeline, ClientError> {
        let name = pipeline.name_any();
        let mut pipeline = pipeline.clone();
        pipeline.metadata.namespace = Some(self.namespace.clone());
        if pipeline.metadata.resource_version.is_none() {
            let current = self
                .get_pipeline(&name)
                .await?
                .ok_or_else(|| ClientError::NotFound {
                    kind: "Pipeline",
                    namespace: self.namespace.clone(),
                    name: name.clone(),
                })?;
            pipeline.metadata.resource_version = current.metadata.resource_version;
        }
        self.pipelines()
            .replace(&name, &PostParams::default(), &pipeline)
            .await
            .map_err(api_error(format!(
                "update {}",
                self.what("Pipeline", &name)
            )))
    }

    /// Deletes a Pipeline; its PipelineRuns go with it (they are owned by it).
    pub async fn delete_pipeline(&self, name: &str) -> Result<(), ClientError> {
        self.pipelines()
            .delete(name, &DeleteParams::default())
            .await
            .map_err(api_error(format!("delete {}", self.what("Pipeline", name))))?;
        Ok(())
    }

    /// Creates a PipelineRun of `pipeline` with `inputs` (none: the Pipeline's `sampleInput`), named
    /// `name`, else `<pipeline>-<8 hex digits>`.
    pub async fn create_run(
        &self,
        pipeline: &str,
        name: Option<&str>,
        inputs: Option<Map<String, Value>>,
    ) -> Result<PipelineRun, ClientError> {
        let name = match name {
            Some(name) => name.to_string(),
            None => {
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                format!("{pipeline}-{}", &suffix[..8])
            }
        };
        let mut run = PipelineRun::new(
            &name,
            PipelineRunSpec {
                pipeline_ref: pipeline.to_string(),
                inputs,
                ..PipelineRunSpec::default()
            },
        );
        run.metadata.namespace = Some(self.namespace.clone());
        run.metadata.labels = Some([(PIPELINE_LABEL.to_string(), pipeline.to_string())].into());
        self.runs()
            .create(&PostParams::default(), &run)
            .await
            .map_err(api_error(format!(
                "create {}",
                self.what("PipelineRun", &name)
            )))
    }

    /// Creates a rerun of the run `old_run_id`: a PipelineRun with `spec` (the old run's, so the same
    /// pipeline and inputs) and `spec.rerunOf`, named `<pipeline>-rerun-<8 hex digits>` and labelled with
    /// the run it reruns. The operator starts it; with `from_failed` it takes the old run's succeeded
    /// stages over from the event log.
    pub async fn create_rerun(
        &self,
        spec: PipelineRunSpec,
        old_run_id: &str,
        from_failed: bool,
    ) -> Result<PipelineRun, ClientError> {
        let pipeline = spec.pipeline_ref.clone();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{pipeline}-rerun-{}", &suffix[..8]);
        let mut run = PipelineRun::new(
            &name,
            PipelineRunSpec {
                status: None,
                rerun_of: Some(RerunOf {
                    run_id: old_run_id.to_string(),
                    from_failed,
                }),
                ..spec
            },
        );
        run.metadata.namespace = Some(self.namespace.clone());
        run.metadata.labels = Some(
            [
                (PIPELINE_LABEL.to_string(), pipeline),
                (RERUN_OF_LABEL.to_string(), old_run_id.to_string()),
            ]
            .into(),
        );
        self.runs()
            .create(&PostParams::default(), &run)
            .await
            .map_err(api_error(format!(
                "create {}",
                self.what("PipelineRun", &name)
            )))
    }

    /// The PipelineRun named `name_or_run_id`, or else the one whose `status.runId` it is.
    /// The PipelineRun named `name_or_run_id`, else the one whose `status.runId` is it, or starts with it
    /// (at least 4 characters, as `fm history show` takes short ids) when no other run's does.
    pub async fn find_run(&self, name_or_run_id: &str) -> Result<PipelineRun, ClientError> {
        if let Some(run) = self.get_run(name_or_run_id).await? {
            return Ok(run);
        }
        let runs = self.list_runs(None).await?;
        let run_id = |r: &PipelineRun| r.status.as_ref().and_then(|s| s.run_id.clone());
        if let Some(run) = runs
            .iter()
            .find(|r| run_id(r).as_deref() == Some(name_or_run_id))
        {
            return Ok(run.clone());
        }
        let prefix = name_or_run_id.to_ascii_lowercase();
        let mut matching: Vec<&PipelineRun> = if prefix.len() >= 4 {
            runs.iter()
                .filter(|r| run_id(r).is_some_and(|id| id.starts_with(&prefix)))
                .collect()
        } else {
            Vec::new()
        };
        match matching.len() {
            1 => Ok(matching.remove(0).clone()),
            0 => Err(ClientError::NotFound {
                kind: "PipelineRun (by name or status.runId)",
                namespace: self.namespace.clone(),
                name: name_or_run_id.to_string(),
            }),
            _ => Err(ClientError::Ambiguous {
                prefix: name_or_run_id.to_string(),
                namespace: self.namespace.clone(),
                candidates: matching
                    .iter()
                    .map(|r| format!("{} ({})", r.name_any(), run_id(r).unwrap_or_default()))
                    .collect(),
            }),
        }
    }

    pub async fn get_run(&self, name: &str) -> Result<Option<PipelineRun>, ClientError> {
        self.runs().get_opt(name).await.map_err(api_error(format!(
            "read {}",
            self.what("PipelineRun", name)
        )))
    }

    /// The run's status (`None` before the operator wrote any).
    pub async fn get_run_status(
        &self,
        name: &str,
    ) -> Result<Option<PipelineRunStatus>, ClientError> {
        let run = self
            .get_run(name)
            .await?
            .ok_or_else(|| ClientError::NotFound {
                kind: "PipelineRun",
                namespace: self.namespace.clone(),
                name: name.to_string(),
            })?;
        Ok(run.status)
    }

    /// PipelineRuns, of one Pipeline when `pipeline` is given.
    pub async fn list_runs(&self, pipeline: Option<&str>) -> Result<Vec<PipelineRun>, ClientError> {
        let mut runs = self
            .runs()
            .list(&ListParams::default())
            .await
            .map_err(api_error(format!(
                "list PipelineRuns in {}",
                self.namespace
            )))?
            .items;
        if let Some(p) = pipeline {
            runs.retain(|r| r.spec.pipeline_ref == p);
        }
        Ok(runs)
    }

    /// Every state of a run as it changes, starting with the current one; ends when it is deleted.
    pub fn watch_run(
        &self,
        name: &str,
    ) -> impl Stream<Item = Result<PipelineRun, ClientError>> + Send + use<> {
        let name = name.to_string();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(self.runs(), config)
            .applied_objects()
            .map_err(move |e| ClientError::Watch {
                name: name.clone(),
                message: e.to_string(),
            })
    }

    /// Asks the operator to cancel a run: `spec.status: Cancelled` and the annotation the Python client
    /// sets (either alone is honoured).
    pub async fn cancel_run(&self, name: &str) -> Result<(), ClientError> {
        self.runs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"annotations": {CANCEL_ANNOTATION: "true"}},
                    "spec": {"status": "Cancelled"}
                })),
            )
            .await
            .map_err(api_error(format!(
                "cancel {}",
                self.what("PipelineRun", name)
            )))?;
        Ok(())
    }

    /// Deletes a PipelineRun (a running one is cancelled first by the operator).
    pub async fn delete_run(&self, name: &str) -> Result<(), ClientError> {
        self.runs()
            .delete(name, &DeleteParams::default())
            .await
            .map_err(api_error(format!(
                "delete {}",
                self.what("PipelineRun", name)
            )))?;
        Ok(())
    }

    /// The Kubernetes Events the operator recorded for a run (stage logs, failures, retries, start and
    /// end), in the order they happened.
    pub async fn run_events(&self, run: &str) -> Result<Vec<KubeEvent>, ClientError> {
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut events = api
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={run}")))
            .await
            .map_err(api_error(format!(
                "list the Events of {}",
                self.what("PipelineRun", run)
            )))?
            .items;
        events.sort_by_key(event_seq);
        Ok(events)
    }
}

/// The run event sequence number an operator-recorded Event carries (its name ends in `.<seq>`).
pub fn event_seq(event: &KubeEvent) -> u64 {
    event
        .metadata
        .name
        .as_deref()
        .and_then(|n| n.rsplit('.').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Consumes a watch until the run ends (or the stream ends), calling `on_change` for each state.
pub async fn follow_run(
    client: &FlowMasonClient,
    name: &str,
    mut on_change: impl FnMut(&PipelineRun),
) -> Result<Option<PipelineRun>, ClientError> {
    let stream = client.watch_run(name);
    futures::pin_mut!(stream);
    while let Some(run) = stream.try_next().await? {
        on_change(&run);
        if run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(RunPhase::is_terminal)
        {
            return Ok(Some(run));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_object_is_described_once_with_a_line_per_cause() {
        let status: kube::core::Status = serde_json::from_value(json!({
            "code": 422, "reason": "Invalid",
            "message": "Pipeline.flowmason.io \"p\" is invalid: spec.stages[0].id: required, spec.timeout: bad",
            "details": {"causes": [
                {"field": "spec.stages[0].id", "message": "required"},
                {"field": "spec.timeout", "message": "bad"}]}
        }))
        .expect("status");
        let error = ClientError::Api {
            action: "create Pipeline default/p".into(),
            error: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(
            format!("{:#}", anyhow::Error::from(error)),
            "create Pipeline default/p: Pipeline.flowmason.io \"p\" is invalid:\n* spec.stages[0].id: required\n* spec.timeout: bad"
        );
    }
}

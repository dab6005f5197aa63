//! The Pipeline and PipelineRun CRDs installed into an in-process API server a test started, as
//! `kubectl apply -f deploy/crds` installs them into a cluster (`#[path = "support/crds.rs"] mod crds;`).

use flowmason::model::crd_yaml::{pipeline_crd, pipelinerun_crd};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, Client};

/// Creates both CRDs through `client`.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [pipeline_crd(), pipelinerun_crd()] {
        let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("crd");
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("crd create");
    }
}

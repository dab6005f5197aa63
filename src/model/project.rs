//! FlowMason projects: the `flowmason.json` manifest found by walking up from a pipeline file (as the
//! original's `find_manifest` does), whose `providers` (`default`, and per provider `model` and
//! `base_url`) apply to the project's pipelines where the pipeline itself sets nothing; and the
//! providers the official SDKs read from the environment (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`,
//! `ANTHROPIC_BASE_URL`, `OPENAI_BASE_URL`), which `fm run` takes from its own process.
//!
//! API keys never enter the spec: the process environment's key is referenced as key `<VAR>` of the
//! Secret [`PROCESS_ENV_SECRET`], which `fm run`'s environment resolves from the process (see
//! `crate::env::ProcessEnv`), so the run resolves, masks and never records it like any Secret.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::crd::{PipelineSpec, ProviderSpec, ProvidersSpec, SecretKeyRef};
use crate::llm::ProviderKind;

/// The manifest's file name.
pub const MANIFEST: &str = "flowmason.json";

/// The Secret name under which `fm run` offers the SDK variables of its process environment.
pub const PROCESS_ENV_SECRET: &str = "fm-process-env";

/// Why a project manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The parts of `flowmason.json` this engine uses; the rest (components, testing, org, ...) is ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub providers: Option<ManifestProviders>,
}

/// `providers` of the manifest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ManifestProviders {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub anthropic: Option<ManifestProvider>,
    #[serde(default)]
    pub openai: Option<ManifestProvider>,
}

/// One provider's settings in the manifest (`api_key_env`, `temperature`, ... are not used).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ManifestProvider {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, alias = "baseUrl")]
    pub base_url: Option<String>,
}

/// A project manifest and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// The `flowmason.json` in the pipeline file's directory or the nearest one above it.
pub fn find_manifest(pipeline_file: &Path) -> Option<PathBuf> {
    let start = pipeline_file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))?;
    start
        .ancestors()
        .map(|dir| dir.join(MANIFEST))
        .find(|candidate| candidate.is_file())
}

/// The project of a pipeline file, if it is in one.
pub fn project_of(pipeline_file: &Path) -> Result<Option<Project>, ProjectError> {
    let Some(path) = find_manifest(pipeline_file) else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ProjectError::Io {
        path: shown.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ProjectError::Invalid {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if let Some(default) = manifest.providers.as_ref().and_then(|p| p.default.as_ref())
        && ProviderKind::parse(default).is_none()
    {
        return Err(ProjectError::Invalid {
            path: shown,
            message: format!(
                "providers.default: unknown provider {default:?} (anthropic or openai)"
            ),
        });
    }
    Ok(Some(Project { path, manifest }))
}

impl Project {
    /// Gives the spec the project's providers where it sets none of its own: the default, and per
    /// provider the model and base URL.
    pub fn apply(&self, spec: &mut PipelineSpec) {
        let Some(project) = &self.manifest.providers else {
            return;
        };
        let providers = spec.providers.get_or_insert_with(ProvidersSpec::default);
        if providers.default.is_none() {
            providers.default = project.default.clone();
        }
        for (kind, from) in [
            (ProviderKind::Anthropic, &project.anthropic),
            (ProviderKind::OpenAi, &project.openai),
        ] {
            let Some(from) = from else {
                continue;
            };
            let to = provider_mut(providers, kind).get_or_insert_with(ProviderSpec::default);
            if to.model.is_none() {
                to.model = from.model.clone();
            }
            if to.base_url.is_none() {
                to.base_url = from.base_url.clone();
            }
        }
    }
}

fn provider_mut(providers: &mut ProvidersSpec, kind: ProviderKind) -> &mut Option<ProviderSpec> {
    match kind {
        ProviderKind::Anthropic => &mut providers.anthropic,
        ProviderKind::OpenAi => &mut providers.openai,
    }
}

/// Configures providers from the SDK variables of `fm run`'s process (`lookup` reads one): a set
/// `ANTHROPIC_API_KEY` makes the provider's key the process' (unless the spec gives it a `secretRef` or
/// defines the variable in `env`), a set `ANTHROPIC_BASE_URL` its base URL (unless the spec sets one);
/// either configures the provider if the spec does not.
pub fn apply_process_env(spec: &mut PipelineSpec, lookup: &dyn Fn(&str) -> Option<String>) {
    for kind in ProviderKind::ALL {
        let key_var = kind.conventional_key_var();
        let key = lookup(key_var).filter(|v| !v.trim().is_empty());
        let base_url = lookup(kind.base_url_var()).filter(|v| !v.trim().is_empty());
        if key.is_none() && base_url.is_none() {
            continue;
        }
        let in_env = spec.env.iter().any(|e| e.name == key_var);
        let providers = spec.providers.get_or_insert_with(ProvidersSpec::default);
        let provider = provider_mut(providers, kind).get_or_insert_with(ProviderSpec::default);
        if key.is_some() && provider.secret_ref.is_none() && !in_env {
            provider.secret_ref = Some(SecretKeyRef {
                name: PROCESS_ENV_SECRET.into(),
                key: key_var.into(),
            });
        }
        if provider.base_url.is_none() {
            provider.base_url = base_url.map(|u| u.trim().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        serde_json::from_str(text).expect("manifest")
    }

    #[test]
    fn the_manifest_is_found_walking_up_from_the_pipeline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pipelines = dir.path().join("pipelines/nested");
        std::fs::create_dir_all(&pipelines).expect("mkdir");
        let file = pipelines.join("main.pipeline.json");
        std::fs::write(&file, "{}").expect("write");
        assert_eq!(find_manifest(&file), None);
        std::fs::write(
            dir.path().join(MANIFEST),
            r#"{"name": "p", "providers": {"default": "openai", "openai": {"model": "gpt-x"}}}"#,
        )
        .expect("write");
        let project = project_of(&file).expect("read").expect("found");
        assert_eq!(
            project.path.canonicalize().ok(),
            dir.path().join(MANIFEST).canonicalize().ok()
        );
        std::fs::write(
            dir.path().join(MANIFEST),
            r#"{"name": "p", "providers": {"default": "gemini"}}"#,
        )
        .expect("write");
        let err = project_of(&file).expect_err("bad default").to_string();
        assert!(
            err.ends_with("providers.default: unknown provider \"gemini\" (anthropic or openai)"),
            "{err}"
        );
    }

    #[test]
    fn project_providers_fill_what_the_pipeline_leaves_open() {
        let project = Project {
            path: PathBuf::from(MANIFEST),
            manifest: manifest(
                r#"{"name": "p", "providers": {"default": "anthropic",
                    "anthropic": {"model": "claude-p", "base_url": "http://127.0.0.1:1"},
                    "openai": {"model": "gpt-p"}}}"#,
            ),
        };
        let mut spec = PipelineSpec {
            providers: Some(ProvidersSpec {
                default: None,
                anthropic: None,
                openai: Some(ProviderSpec {
                    model: Some("gpt-own".into()),
                    ..ProviderSpec::default()
                }),
            }),
            ..PipelineSpec::default()
        };
        project.apply(&mut spec);
        let providers = spec.providers.expect("providers");
        assert_eq!(providers.default.as_deref(), Some("anthropic"));
        let anthropic = providers.anthropic.expect("anthropic");
        assert_eq!(anthropic.model.as_deref(), Some("claude-p"));
        assert_eq!(anthropic.base_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(
            providers.openai.expect("openai").model.as_deref(),
            Some("gpt-own")
        );
    }

    #[test]
    fn the_process_key_is_referenced_never_copied() {
        let mut spec = PipelineSpec::default();
        let vars = |name: &str| match name {
            "ANTHROPIC_API_KEY" => Some("sk-secret".to_string()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:2/v1".to_string()),
            _ => None,
        };
        apply_process_env(&mut spec, &vars);
        let providers = spec.providers.expect("providers");
        let anthropic = providers.anthropic.expect("anthropic");
        assert_eq!(
            anthropic.secret_ref,
            Some(SecretKeyRef {
                name: PROCESS_ENV_SECRET.into(),
                key: "ANTHROPIC_API_KEY".into()
            })
        );
        let openai = providers.openai.expect("openai");
        assert_eq!(openai.secret_ref, None);
        assert_eq!(openai.base_url.as_deref(), Some("http://127.0.0.1:2/v1"));
        let text = format!("{anthropic:?}");
        assert!(!text.contains("sk-secret"));
    }
}

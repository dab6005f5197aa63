//! Where a Pipeline's webhook (`spec.triggers.webhook`) is served: its `path`, or one derived from the
//! Pipeline's name, always under [`PREFIX`]. Validation refuses a path outside it; the trigger manager
//! arms the webhook at it.

/// Every webhook path lives under this prefix (so it never shadows the Kubernetes API).
pub const PREFIX: &str = "/webhooks/";

/// The path a Pipeline's webhook is served at: its `path` (without a trailing `/`), or
/// `/webhooks/<namespace>/<name>`.
pub fn served_path(namespace: &str, name: &str, path: Option<&str>) -> String {
    match path.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => p.trim_end_matches('/').to_string(),
        None => format!("{PREFIX}{namespace}/{name}"),
    }
}

/// Whether `path` names a path below [`PREFIX`] (the prefix alone names none).
pub fn is_below_prefix(path: &str) -> bool {
    path.starts_with(PREFIX) && path.len() > PREFIX.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_without_a_path_is_served_under_its_namespace_and_name() {
        assert_eq!(served_path("ns", "p", None), "/webhooks/ns/p");
        assert_eq!(served_path("ns", "p", Some("  ")), "/webhooks/ns/p");
        assert_eq!(served_path("ns", "p", Some("/webhooks/x/")), "/webhooks/x");
    }

    #[test]
    fn only_paths_below_the_prefix_are_served() {
        assert!(is_below_prefix("/webhooks/x"));
        assert!(!is_below_prefix("/webhooks/"));
        assert!(!is_below_prefix("/api/v1"));
    }
}

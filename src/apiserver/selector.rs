//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors (`path=value`,
//! `path!=value` on any dotted field path, e.g. `metadata.name`, `metadata.namespace`,
//! `involvedObject.uid` which `kubectl describe` uses), parsed once per request and matched per object.

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Splits at commas outside parentheses.
fn split_top(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn bad(kind: &str, text: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement {text:?} of {kind}: {why}"
    ))
}

fn set_values(text: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad("labelSelector", text, "expected a parenthesised value list"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(text: &str, key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(bad(
            "labelSelector",
            text,
            &format!("invalid label key {key:?}"),
        ));
    }
    Ok(key.to_string())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            if let Some(key) = part.strip_prefix('!') {
                reqs.push(LabelReq::NotExists(check_key(&part, key)?));
            } else if let Some((key, value)) = part.split_once("!=") {
                reqs.push(LabelReq::NotEquals(
                    check_key(&part, key)?,
                    value.trim().to_string(),
                ));
            } else if let Some((key, value)) = part.split_once("==") {
                reqs.push(LabelReq::Equals(
                    check_key(&part, key)?,
                    value.trim().to_string(),
                ));
            } else if let Some((key, value)) = part.split_once('=') {
                reqs.push(LabelReq::Equals(
                    check_key(&part, key)?,
                    value.trim().to_string(),
                ));
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                reqs.push(LabelReq::NotIn(
                    check_key(&part, key)?,
                    set_values(&part, rest)?,
                ));
            } else if let Some((key, rest)) = part.split_once(" in ") {
                reqs.push(LabelReq::In(
                    check_key(&part, key)?,
                    set_values(&part, rest)?,
                ));
            } else if part.contains(['<', '>', '(', ' ']) {
                return Err(bad("labelSelector", &part, "unsupported operator"));
            } else {
                reqs.push(LabelReq::Exists(check_key(&part, &part)?));
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether labels (the `metadata.labels` object, or null) satisfy every requirement.
    pub fn matches_labels(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.matches_labels(&object["metadata"]["labels"])
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, true, v)
            } else {
                return Err(bad(
                    "fieldSelector",
                    &part,
                    "expected path=value or path!=value",
                ));
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err(bad("fieldSelector", &part, "empty field path segment"));
            }
            reqs.push((path, equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Field values compare as text; a missing field reads as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let mut v = object;
            for seg in path {
                v = &v[seg.as_str()];
            }
            let text = match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (text == *value) == *equal
        })
    }

    /// The name this selector pins (`metadata.name=x`), if any: lets lists and watches skip the scan.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, eq, _)| *eq && p.len() == 2 && p[0] == "metadata" && p[1] == "name")
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_operators() {
        let labels = json!({"app": "web", "tier": "front"});
        let t = |s: &str| {
            LabelSelector::parse(s)
                .expect("parses")
                .matches_labels(&labels)
        };
        assert!(t("app=web"));
        assert!(t("app==web,tier"));
        assert!(!t("app!=web"));
        assert!(t("app in (web, db)"));
        assert!(!t("app notin (web)"));
        assert!(t("!missing"));
        assert!(!t("!app"));
        assert!(t("missing notin (x)"));
        assert!(!t("missing in (x)"));
        assert!(LabelSelector::parse("app > 3").is_err());
    }

    #[test]
    fn field_selector_paths() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "involvedObject": {"uid": "u"}});
        let t = |s: &str| FieldSelector::parse(s).expect("parses").matches(&obj);
        assert!(t("metadata.name=a,metadata.namespace==ns"));
        assert!(!t("metadata.name!=a"));
        assert!(t("involvedObject.uid=u"));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}

//! What every runner of the bad-input corpus (`tests/corpus/`, see its README) shares: reading a
//! manifest and generating the inputs too big to commit.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Generated text: `text` repeated `times` times, with `{i}` replaced by the repetition's number (counted
/// from `from`) and `{prev}` by the number before it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    pub text: String,
    pub times: usize,
    #[serde(default)]
    pub from: usize,
}

impl Repeat {
    pub fn generate(&self) -> String {
        if !self.text.contains("{i}") && !self.text.contains("{prev}") {
            return self.text.repeat(self.times);
        }
        (self.from..self.from + self.times)
            .map(|i| {
                self.text
                    .replace("{i}", &i.to_string())
                    .replace("{prev}", &i.saturating_sub(1).to_string())
            })
            .collect()
    }
}

/// `content` with every marker of `expand` replaced by its generated text; `what` names the case when a
/// marker is missing (a typo in the manifest must not silently test a small input).
pub fn expand(content: &str, expand: &BTreeMap<String, Repeat>, what: &str) -> String {
    let mut content = content.to_string();
    for (marker, repeat) in expand {
        assert!(
            content.contains(marker.as_str()),
            "{what}: no marker {marker}"
        );
        content = content.replace(marker.as_str(), &repeat.generate());
    }
    content
}

/// The cases of `dir/cases.json`, read strictly so that a malformed manifest fails loudly.
pub fn cases<T: DeserializeOwned>(dir: &Path) -> Vec<T> {
    let manifest = dir.join("cases.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let cases: Vec<T> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    assert!(!cases.is_empty(), "{} has cases", manifest.display());
    cases
}

//! The bad-input corpus of pipeline files (`tests/corpus/files/`, described in `tests/corpus/README.md`):
//! every case of `cases.json` is run through `fm validate` or `fm run`, and must end with its exit code and
//! say each of its substrings. A case never ends by a signal: no input may crash `fm`.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;

use serde::Deserialize;

#[path = "../support/corpus.rs"]
mod support;

use super::{fm, repo, text};
use support::{Repeat, cases, expand};

/// One case of `cases.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The pipeline file, in `tests/corpus/files/`.
    file: String,
    /// `validate` (the default) or `run`.
    #[serde(default = "validate")]
    verb: String,
    /// Extra arguments after the file.
    #[serde(default)]
    args: Vec<String>,
    /// Markers in the file replaced by generated text, for inputs too big to commit.
    #[serde(default)]
    expand: BTreeMap<String, Repeat>,
    /// The expected exit code.
    exit: i32,
    /// Substrings the output (stdout and stderr) must contain.
    says: Vec<String>,
}

fn validate() -> String {
    "validate".into()
}

#[test]
fn every_bad_pipeline_file_gets_its_stated_answer_and_never_a_crash() {
    let corpus = repo("tests/corpus/files");
    let work = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for (n, case) in cases::<Case>(&corpus).into_iter().enumerate() {
        let source = corpus.join(&case.file);
        let path = if case.expand.is_empty() {
            source
        } else {
            let content = std::fs::read_to_string(&source).expect("corpus file");
            let content = expand(&content, &case.expand, &case.file);
            // The generated file keeps the corpus file's name: messages name it.
            let dir = work.path().join(n.to_string());
            std::fs::create_dir(&dir).expect("case dir");
            let path = dir.join(&case.file);
            std::fs::write(&path, content).expect("generated file");
            path
        };
        let data = work.path().join(format!("data-{n}"));
        let out = fm()
            .arg(&case.verb)
            .arg(&path)
            .args(&case.args)
            .env("FM_DATA_DIR", &data)
            .output()
            .expect("fm runs");
        let said = text(&out.stdout) + &text(&out.stderr);
        let label = format!("case {n} (fm {} {})", case.verb, case.file);
        if let Some(signal) = out.status.signal() {
            failures.push(format!("{label}: killed by signal {signal}: {said}"));
            continue;
        }
        if out.status.code() != Some(case.exit) {
            failures.push(format!(
                "{label}: exit {:?}, expected {}: {said}",
                out.status.code(),
                case.exit
            ));
            continue;
        }
        for needle in &case.says {
            if !said.contains(needle.as_str()) {
                failures.push(format!("{label}: does not say {needle:?}: {said}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

//! The layering check of the product crate: the top-level modules of `src/` (`model`, `components`,
//! `operator`, ...) import each other in layers (docs/architecture.md, "Inside `src/`"), so no two of them
//! may reach each other, directly or around a longer circle. A circle lets a low layer (the resource model)
//! grow to depend on a high one (the operator) without anyone noticing; this test notices.
//!
//! An edge `y -> x` is a path `crate::x...` (or an item of a `crate::{x, ...}` group) written in
//! `src/y.rs` or under `src/y/`, outside comments. Test code counts too: a module's tests import through
//! the same module tree.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// This file, whose strings and docs spell paths it does not import.
    const SELF: &str = "layering.rs";

    /// The path prefix an import of a sibling top-level module starts with.
    const CRATE_PATH: &str = "crate::";

    /// Edges between top-level modules, each with the files that make it: `from -> to -> files`.
    type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

    /// The top-level module a file under `src/` belongs to (`model/validate.rs` -> `model`), `None`
    /// for the crate roots.
    fn module_of(relative: &Path) -> Option<String> {
        let first = relative.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main")).then(|| name.to_string())
    }

    /// The source text without its line comments (doc comments included): only lines that start
    /// with `//` are dropped, so a `//` inside a string (`http://`) keeps its line.
    fn code_of(text: &str) -> String {
        text.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn is_ident(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_'
    }

    fn leading_ident(text: &str) -> &str {
        let text = text.trim_start();
        &text[..text.find(|c: char| !is_ident(c)).unwrap_or(text.len())]
    }

    /// The top-level modules the code names after `crate::`, including each item of a
    /// `crate::{a::B, c}` group.
    fn imported_modules(code: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut rest = code;
        while let Some(at) = rest.find(CRATE_PATH) {
            let preceded_by_ident = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == '$');
            let after = &rest[at + CRATE_PATH.len()..];
            rest = after;
            if preceded_by_ident {
                continue;
            }
            if let Some(group) = after.strip_prefix('{') {
                let mut depth = 0usize;
                let mut item_start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            found.insert(leading_ident(&group[item_start..i]).to_string());
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.insert(leading_ident(&group[item_start..i]).to_string());
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                found.insert(leading_ident(after).to_string());
            }
        }
        found.retain(|m| !m.is_empty() && m != "self");
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every edge between the top-level modules of the sources under `src`, given as
    /// `(path relative to src, text)`.
    fn edges_of(sources: &[(PathBuf, String)]) -> Edges {
        let modules: BTreeSet<String> = sources
            .iter()
            .filter_map(|(path, _)| module_of(path))
            .collect();
        let mut edges = Edges::new();
        for (path, text) in sources {
            let Some(from) = module_of(path) else {
                continue;
            };
            for to in imported_modules(&code_of(text)) {
                if to != from && modules.contains(&to) {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_default()
                        .insert(path.display().to_string());
                }
            }
        }
        edges
    }

    /// One circle per group of modules that reach each other, each written `a -> b (files) -> a`.
    fn circles(edges: &Edges) -> Vec<String> {
        let reaches = |from: &str| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.to_string()];
            while let Some(m) = todo.pop() {
                for next in edges.get(&m).into_iter().flat_map(BTreeMap::keys) {
                    if seen.insert(next.clone()) {
                        todo.push(next.clone());
                    }
                }
            }
            seen
        };
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut found = Vec::new();
        for start in edges.keys() {
            if reported.contains(start) || !reaches(start).contains(start) {
                continue;
            }
            // The shortest way back to `start` (breadth first), so the circle named is the tightest.
            let mut parent: BTreeMap<String, String> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start.clone()]);
            let mut last = None;
            while let Some(m) = queue.pop_front() {
                for next in edges.get(&m).into_iter().flat_map(BTreeMap::keys) {
                    if next == start {
                        last = Some(m.clone());
                        break;
                    }
                    if !parent.contains_key(next) {
                        parent.insert(next.clone(), m.clone());
                        queue.push_back(next.clone());
                    }
                }
                if last.is_some() {
                    break;
                }
            }
            let mut path = vec![start.clone()];
            let mut m = last.unwrap_or_else(|| start.clone());
            while &m != start {
                path.push(m.clone());
                m = parent[&m].clone();
            }
            path[1..].reverse();
            path.push(start.clone());
            let mut text = start.clone();
            for pair in path.windows(2) {
                let files: Vec<&str> = edges[&pair[0]][&pair[1]]
                    .iter()
                    .map(String::as_str)
                    .collect();
                text.push_str(&format!(" -> {} (in {})", pair[1], files.join(", ")));
            }
            reported.extend(path);
            found.push(text);
        }
        found
    }

    fn source(path: &str, text: &str) -> (PathBuf, String) {
        (PathBuf::from(path), text.to_string())
    }

    #[test]
    fn no_import_circles_between_top_level_modules() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .filter(|f| !f.ends_with(SELF))
            .map(|f| {
                let text = std::fs::read_to_string(f)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
                let relative = f.strip_prefix(&src).unwrap_or(f).to_path_buf();
                (relative, text)
            })
            .collect();
        let edges = edges_of(&sources);
        assert!(
            edges.len() > 5,
            "too few module edges found in {} ({edges:?}): the scan is broken",
            src.display()
        );
        let found = circles(&edges);
        assert!(
            found.is_empty(),
            "import circles between top-level modules of src/:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn a_circle_is_named_with_the_files_that_make_it() {
        let edges = edges_of(&[
            source("model/validate.rs", "use crate::operator::capacity;"),
            source("operator/mod.rs", "use crate::model::Pipeline;"),
            source(
                "operator/runs/start.rs",
                "let p = crate::model::to_plan(&spec);",
            ),
            source("cli.rs", "use crate::operator::run;"),
        ]);
        assert_eq!(
            circles(&edges),
            vec![
                concat!(
                    "model -> operator (in model/validate.rs) -> ",
                    "model (in operator/mod.rs, operator/runs/start.rs)"
                )
                .to_string()
            ]
        );
    }

    #[test]
    fn a_longer_circle_is_found_and_layers_are_not_circles() {
        let edges = edges_of(&[
            source("a.rs", "use crate::b::X;"),
            source("b.rs", "use crate::c::Y;"),
            source("c.rs", "use crate::a::Z;"),
            source("d.rs", "use crate::a::Z;"),
        ]);
        assert_eq!(
            circles(&edges),
            vec!["a -> b (in a.rs) -> c (in b.rs) -> a (in c.rs)".to_string()]
        );
        let layered = edges_of(&[
            source("a.rs", "use crate::b::X;"),
            source("b.rs", "use crate::c::Y;"),
            source("c.rs", "fn f() {}"),
        ]);
        assert!(circles(&layered).is_empty());
    }

    #[test]
    fn groups_count_each_module_and_comments_and_other_crates_do_not() {
        let code = code_of(
            "//! See `crate::http` for the surface.\n\
             use crate::{\n    model::{Pipeline, PipelineRun},\n    components,\n    self,\n};\n\
             use flowmason_crate::operator;\n\
             let x = crate::llm::select(); // a call\n\
             let url = \"http://host\";",
        );
        assert_eq!(
            imported_modules(&code),
            ["components", "llm", "model"]
                .into_iter()
                .map(String::from)
                .collect::<BTreeSet<_>>()
        );
    }
}

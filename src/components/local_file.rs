//! `local_file`: files under one directory, as FlowMason's `local_file` connector, confined to a root.
//!
//! Input: `operation` (`read`, `write`, `append`, `delete`, `list`, `exists`, `parse_csv`), `path`
//! (relative to the files root), `format` (`text` default, `json`, `csv` for write, `binary`: base64 text
//! in `content`), `content`, `encoding` (`utf-8` only), `pattern` (glob on file names for `list`, default
//! `*`), `recursive`, `csv_options` (`delimiter`, `header`, `skip_rows`). FlowMason's `parse_excel` is
//! refused at validation (no Excel reader here: export to CSV and use `parse_csv`).
//!
//! Output: FlowMason's shape: `{success, operation, content, content_length, rows, row_count, columns,
//! files, file_count, exists, metadata, error}`, unset fields `null`.
//!
//! Confinement: stages see only the directory given by `--files-root` (`FM_FILES_ROOT`); with none,
//! every `local_file` stage fails (class `config`) saying how to set one. A path must be relative and
//! may not contain `..`; it is resolved through symlinks and must stay under the root, so a symlink
//! pointing out of it is refused like `../x` (the final file of a write is opened without following a
//! symlink). `list` skips entries that resolve outside the root.

use std::io::Write as _;
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, UNIX_EPOCH};

use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::connector::{cancellable, operation, output, required_str};
use super::{config_object, input_object, is_templated, opt_bool, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "local_file";

const OPERATIONS: &[&str] = &[
    "read",
    "write",
    "append",
    "delete",
    "list",
    "exists",
    "parse_csv",
];

/// Fields of FlowMason's `LocalFileConnector.Output` besides `success`, `operation`, `metadata`, `error`.
const FIELDS: &[&str] = &[
    "content",
    "content_length",
    "rows",
    "row_count",
    "columns",
    "files",
    "file_count",
    "exists",
];

static PROCESS_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the files root of this process (`--files-root`): the directory `local_file` stages of
/// [`super::builtin_registry`] are confined to. Fails when it is not a directory.
pub fn set_files_root(root: &Path) -> std::io::Result<()> {
    let canonical = canonical_root(root)?;
    // A second call (tests in one process) keeps the first root.
    let _ = PROCESS_ROOT.set(canonical);
    Ok(())
}

fn canonical_root(root: &Path) -> std::io::Result<PathBuf> {
    let canonical = root.canonicalize()?;
    if !canonical.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    Ok(canonical)
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct LocalFile {
    /// `None`: the process root set by [`set_files_root`], if any.
    root: Option<Arc<PathBuf>>,
}

impl LocalFile {
    /// Confined to the process's `--files-root` (none set: every stage fails).
    pub fn from_process() -> Self {
        Self { root: None }
    }

    /// Confined to `root` (which must be a directory).
    pub fn with_root(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: Some(Arc::new(canonical_root(root)?)),
        })
    }

    fn root(&self) -> Result<PathBuf, ComponentError> {
        match &self.root {
            Some(root) => Ok(root.as_ref().clone()),
            None => PROCESS_ROOT.get().cloned().ok_or_else(|| {
                ComponentError::config(format!(
                    "{NAME}: no files root is configured: start fm with --files-root DIR (or FM_FILES_ROOT) \
                     to let local_file stages use the files under DIR"
                ))
            }),
        }
    }
}

struct Request {
    operation: String,
    path: String,
    format: String,
    content: Option<Value>,
    pattern: glob::Pattern,
    recursive: bool,
    delimiter: u8,
    header: bool,
    skip_rows: usize,
}

fn parse(map: &Map<String, Value>) -> Result<Request, ComponentError> {
    if opt_str(NAME, map, "operation")? == Some("parse_excel") {
        return Err(ComponentError::config(format!(
            "{NAME}: `operation` parse_excel is not supported by this engine: export the sheet as CSV and \
             use parse_csv"
        )));
    }
    let op = operation(NAME, map, OPERATIONS)?.to_string();
    let path = required_str(NAME, map, "path", &op)?.to_string();
    lexical_check(&path)?;
    let format = opt_str(NAME, map, "format")?.unwrap_or("text").to_string();
    if !["text", "json", "csv", "binary"].contains(&format.as_str()) {
        return Err(ComponentError::config(format!(
            "{NAME}: `format` must be one of text, json, csv, binary, got {format:?}"
        )));
    }
    if format == "csv" && op != "write" {
        return Err(ComponentError::config(format!(
            "{NAME}: `format` csv is for write; read a CSV file with operation parse_csv"
        )));
    }
    if let Some(encoding) = opt_str(NAME, map, "encoding")?
        && !matches!(
            encoding.to_ascii_lowercase().as_str(),
            "utf-8" | "utf8" | "ascii"
        )
    {
        return Err(ComponentError::config(format!(
            "{NAME}: `encoding` {encoding:?} is not supported: files are read and written as utf-8"
        )));
    }
    let content = match map.get("content") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.clone()),
    };
    if matches!(op.as_str(), "write" | "append") && content.is_none() {
        return Err(ComponentError::config(format!(
            "{NAME}: `content` is required for operation {op:?}"
        )));
    }
    let pattern_text = opt_str(NAME, map, "pattern")?.unwrap_or("*");
    let pattern = glob::Pattern::new(pattern_text).map_err(|e| {
        ComponentError::config(format!(
            "{NAME}: `pattern` {pattern_text:?} is not a glob pattern: {e}"
        ))
    })?;
    let (delimiter, header, skip_rows) = csv_options(map)?;
    Ok(Request {
        operation: op,
        path,
        format,
        content,
        pattern,
        recursive: opt_bool(NAME, map, "recursive", false)?,
        delimiter,
        header,
        skip_rows,
    })
}

fn csv_options(map: &Map<String, Value>) -> Result<(u8, bool, usize), ComponentError> {
    let options = match map.get("csv_options") {
        None | Some(Value::Null) => return Ok((b',', true, 0)),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `csv_options` must be an object, got {}",
                type_name(other)
            )));
        }
    };
    let delimiter = match opt_str(NAME, options, "delimiter")? {
        None => b',',
        Some(d) if d.len() == 1 => d.as_bytes()[0],
        Some(d) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `csv_options.delimiter` must be one ASCII character, got {d:?}"
            )));
        }
    };
    let header = opt_bool(NAME, options, "header", true)?;
    let skip_rows = match options.get("skip_rows") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
            ComponentError::config(format!(
                "{NAME}: `csv_options.skip_rows` must be a non-negative integer, got {v}"
            ))
        })?,
    };
    Ok((delimiter, header, skip_rows))
}

/// Refuses absolute paths and `..` before touching the disk: neither can stay under the root.
fn lexical_check(path: &str) -> Result<(), ComponentError> {
    let p = Path::new(path);
    for part in p.components() {
        match part {
            PathPart::Normal(_) | PathPart::CurDir => {}
            PathPart::ParentDir => {
                return Err(ComponentError::config(format!(
                    "{NAME}: `path` {path:?} contains `..`: paths are relative to the files root and stay under it"
                )));
            }
            PathPart::RootDir | PathPart::Prefix(_) => {
                return Err(ComponentError::config(format!(
                    "{NAME}: `path` {path:?} is absolute: paths are relative to the files root"
                )));
            }
        }
    }
    Ok(())
}

/// `path` under `root` with every existing part resolved through symlinks; an error when that leaves the
/// root. The parts that do not exist yet are appended as written (they hold no `..`).
fn resolve(root: &Path, path: &str) -> Result<PathBuf, ComponentError> {
    let joined = root.join(path);
    let mut existing = joined.as_path();
    let mut missing = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(p) => break p,
            Err(_) => {
                // A dangling symlink is refused: where it points is not ours to create.
                if existing.symlink_metadata().is_ok() {
                    return Err(escape(path));
                }
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(escape(path));
                };
                missing.push(name.to_owned());
                existing = parent;
            }
        }
    };
    if !resolved.starts_with(root) {
        return Err(escape(path));
    }
    let mut full = resolved;
    for name in missing.into_iter().rev() {
        full.push(name);
    }
    Ok(full)
}

fn escape(path: &str) -> ComponentError {
    ComponentError::config(format!(
        "{NAME}: `path` {path:?} leads outside the files root (through a symlink)"
    ))
}

fn io_error(path: &str, action: &str, e: &std::io::Error) -> ComponentError {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            ComponentError::client(format!("{NAME}: {action} {path:?}: file not found"))
        }
        std::io::ErrorKind::PermissionDenied => {
            ComponentError::client(format!("{NAME}: {action} {path:?}: permission denied"))
        }
        _ => ComponentError::transient(format!("{NAME}: {action} {path:?}: {e}")),
    }
}

impl Component for LocalFile {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        let literal: Map<String, Value> = map
            .iter()
            .filter(|(_, v)| !is_templated(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if literal.get("operation").and_then(Value::as_str) == Some("parse_excel") {
            return parse(&literal).map(|_| ());
        }
        if let Some(path) = literal.get("path").and_then(Value::as_str) {
            lexical_check(path)?;
        }
        if map.values().any(is_templated) || !map.contains_key("operation") {
            // Required fields may come from templates: checked once rendered.
            return operation_if_literal(&literal);
        }
        parse(map).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let this = self.clone();
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let req = parse(&map)?;
            let root = this.root()?;
            let started = Instant::now();
            // File system calls block: run them off the async threads.
            let work = tokio::task::spawn_blocking(move || perform(&root, &req, started));
            let joined = cancellable(NAME, &ctx, async {
                work.await.map_err(|e| {
                    ComponentError::internal(format!("{NAME}: the file operation panicked: {e}"))
                })
            })
            .await?;
            joined.map(ComponentOutput::from)
        })
    }
}

fn operation_if_literal(literal: &Map<String, Value>) -> Result<(), ComponentError> {
    if literal.contains_key("operation") {
        operation(NAME, literal, OPERATIONS)?;
    }
    Ok(())
}

fn perform(root: &Path, req: &Request, started: Instant) -> Result<Value, ComponentError> {
    let path = resolve(root, &req.path)?;
    let shown = req.path.as_str();
    let mut set = Map::new();
    let mut metadata = Map::new();
    metadata.insert("path".into(), Value::String(req.path.clone()));
    match req.operation.as_str() {
        "read" => {
            let size = std::fs::metadata(&path)
                .map_err(|e| io_error(shown, "read", &e))?
                .len();
            let limit = flowmason_actors::limits::max_output_bytes() as u64;
            if size > limit {
                return Err(ComponentError::client(format!(
                    "{NAME}: read {shown:?}: the file has {size} bytes, more than the output limit of \
                     {limit} (--max-output-bytes)"
                )));
            }
            let bytes = std::fs::read(&path).map_err(|e| io_error(shown, "read", &e))?;
            let (content, length) = match req.format.as_str() {
                "binary" => {
                    let n = bytes.len();
                    let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    (Value::String(text), Value::from(n))
                }
                format => {
                    let text = String::from_utf8(bytes).map_err(|_| {
                        ComponentError::client(format!(
                            "{NAME}: read {shown:?}: the file is not utf-8 text (use format binary)"
                        ))
                    })?;
                    if format == "json" {
                        let parsed = serde_json::from_str(&text).map_err(|e| {
                            ComponentError::client(format!("{NAME}: read {shown:?}: not JSON: {e}"))
                        })?;
                        (parsed, Value::Null)
                    } else {
                        let n = text.chars().count();
                        (Value::String(text), Value::from(n))
                    }
                }
            };
            set.insert("content".into(), content);
            set.insert("content_length".into(), length);
            metadata.insert("format".into(), Value::String(req.format.clone()));
            metadata.insert("size_bytes".into(), Value::from(size));
        }
        "write" | "append" => {
            let content = req.content.as_ref().unwrap_or(&Value::Null);
            let bytes = if req.operation == "append" {
                super::router::py_str(content).into_bytes()
            } else {
                encode(content, &req.format, shown)?
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error(shown, "write", &e))?;
            }
            write_file(&path, &bytes, req.operation == "append")
                .map_err(|e| io_error(shown, &req.operation, &e))?;
            if req.operation == "write" {
                metadata.insert("format".into(), Value::String(req.format.clone()));
            }
        }
        "delete" => {
            std::fs::remove_file(&path).map_err(|e| io_error(shown, "delete", &e))?;
        }
        "exists" => {
            set.insert("exists".into(), Value::Bool(path.exists()));
        }
        "list" => {
            if !path.is_dir() {
                return Err(ComponentError::client(format!(
                    "{NAME}: list {shown:?}: not a directory"
                )));
            }
            let mut files = Vec::new();
            list(root, &path, req, &mut files).map_err(|e| io_error(shown, "list", &e))?;
            set.insert("file_count".into(), Value::from(files.len()));
            set.insert("files".into(), Value::Array(files));
            metadata.insert("directory".into(), Value::String(req.path.clone()));
            metadata.insert("pattern".into(), Value::String(req.pattern.to_string()));
            metadata.insert("recursive".into(), Value::Bool(req.recursive));
        }
        "parse_csv" => {
            let (rows, columns) = parse_csv(&path, req, shown)?;
            set.insert("row_count".into(), Value::from(rows.len()));
            set.insert("rows".into(), Value::Array(rows));
            set.insert(
                "columns".into(),
                Value::Array(columns.into_iter().map(Value::String).collect()),
            );
            metadata.insert(
                "delimiter".into(),
                Value::String(char::from(req.delimiter).to_string()),
            );
            metadata.insert("encoding".into(), Value::String("utf-8".into()));
        }
        other => {
            return Err(ComponentError::internal(format!(
                "{NAME}: operation {other:?} passed parsing but has no implementation"
            )));
        }
    }
    Ok(output(FIELDS, &req.operation, started, set, metadata))
}

/// The bytes `write` puts in the file, by `format`.
fn encode(content: &Value, format: &str, shown: &str) -> Result<Vec<u8>, ComponentError> {
    match format {
        "json" => serde_json::to_vec_pretty(content).map_err(|e| {
            ComponentError::internal(format!("{NAME}: write {shown:?}: cannot encode JSON: {e}"))
        }),
        "binary" => {
            let Value::String(text) = content else {
                return Err(ComponentError::config(format!(
                    "{NAME}: `content` must be base64 text for format binary, got {}",
                    type_name(content)
                )));
            };
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| {
                    ComponentError::config(format!(
                        "{NAME}: `content` is not base64 (format binary): {e}"
                    ))
                })
        }
        "csv" => csv_bytes(content),
        _ => Ok(super::router::py_str(content).into_bytes()),
    }
}

/// A list of objects as CSV: the first object's keys are the header (Python's `csv.DictWriter`).
fn csv_bytes(content: &Value) -> Result<Vec<u8>, ComponentError> {
    let not_records = || {
        ComponentError::config(format!(
            "{NAME}: for format csv, `content` must be a list of objects"
        ))
    };
    let Value::Array(rows) = content else {
        return Err(not_records());
    };
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let Some(Value::Object(first)) = rows.first() else {
        return if rows.is_empty() {
            Ok(Vec::new())
        } else {
            Err(not_records())
        };
    };
    let header: Vec<&String> = first.keys().collect();
    let csv_error =
        |e: csv::Error| ComponentError::internal(format!("{NAME}: cannot write CSV: {e}"));
    writer
        .write_record(header.iter().map(|k| k.as_str()))
        .map_err(csv_error)?;
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(row) = row else {
            return Err(not_records());
        };
        if let Some(extra) = row.keys().find(|k| !first.contains_key(*k)) {
            return Err(ComponentError::config(format!(
                "{NAME}: `content[{i}]` has key {extra:?}, which the first row (the header) does not have"
            )));
        }
        let cells: Vec<String> = header
            .iter()
            .map(|k| match row.get(*k) {
                None | Some(Value::Null) => String::new(),
                Some(v) => super::router::py_str(v),
            })
            .collect();
        writer.write_record(&cells).map_err(csv_error)?;
    }
    writer
        .into_inner()
        .map_err(|e| ComponentError::internal(format!("{NAME}: cannot write CSV: {e}")))
}

fn write_file(path: &Path, bytes: &[u8], append: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).custom_flags(libc::O_NOFOLLOW);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

fn list(root: &Path, dir: &Path, req: &Request, files: &mut Vec<Value>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        // Entries (symlinks) that resolve outside the root are not shown.
        let Ok(real) = path.canonicalize() else {
            continue;
        };
        if !real.starts_with(root) {
            continue;
        }
        let meta = std::fs::metadata(&real)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            if req.recursive && !entry.file_type()?.is_symlink() {
                list(root, &path, req, files)?;
            }
            continue;
        }
        if !meta.is_file() || !req.pattern.matches(&name) {
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        files.push(json!({
            "path": relative,
            "name": name,
            "size": meta.len(),
            "modified": modified,
            "is_file": true,
        }));
    }
    Ok(())
}

/// Rows as objects, columns in order, with pandas' `read_csv` typing of cells: integers and floats as
/// numbers, `True`/`False` as booleans, empty cells as `null`, everything else as text.
fn parse_csv(
    path: &Path,
    req: &Request,
    shown: &str,
) -> Result<(Vec<Value>, Vec<String>), ComponentError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(shown, "parse_csv", &e))?;
    let body: String = text
        .split_inclusive('\n')
        .skip(req.skip_rows)
        .collect::<String>();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(req.delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(body.as_bytes());
    let mut records = reader.records();
    let bad = |e: csv::Error| ComponentError::client(format!("{NAME}: parse_csv {shown:?}: {e}"));
    let columns: Vec<String> = if req.header {
        match records.next() {
            Some(r) => r.map_err(bad)?.iter().map(str::to_string).collect(),
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let mut rows = Vec::new();
    let mut columns = columns;
    for record in records {
        let record = record.map_err(bad)?;
        if !req.header && columns.len() < record.len() {
            columns = (0..record.len()).map(|i| i.to_string()).collect();
        }
        let mut row = Map::new();
        for (i, column) in columns.iter().enumerate() {
            row.insert(column.clone(), cell(record.get(i).unwrap_or("")));
        }
        rows.push(Value::Object(row));
    }
    Ok((rows, columns))
}

fn cell(text: &str) -> Value {
    let t = text.trim();
    if t.is_empty() {
        return Value::Null;
    }
    if let Ok(n) = t.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match t {
        "True" | "TRUE" | "true" => Value::Bool(true),
        "False" | "FALSE" | "false" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    fn run(component: &LocalFile, input: Value) -> Result<Value, ComponentError> {
        let (ctx, _) = context();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(component.execute(input, ctx)).map(|o| o.output)
    }

    #[test]
    fn write_then_read_text_json_and_csv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = LocalFile::with_root(dir.path()).expect("root");
        run(&c, json!({"operation": "write", "path": "out/a.json", "content": {"k": [1, 2]}, "format": "json"}))
            .expect("write json");
        let read = run(
            &c,
            json!({"operation": "read", "path": "out/a.json", "format": "json"}),
        )
        .expect("read");
        assert_eq!(read["content"], json!({"k": [1, 2]}));
        assert_eq!(read["content_length"], Value::Null);
        assert_eq!(read["rows"], Value::Null);
        assert_eq!(read["metadata"]["path"], "out/a.json");

        run(
            &c,
            json!({"operation": "write", "path": "t.csv", "format": "csv",
                       "content": [{"a": 1, "b": "x"}, {"a": 2.5, "b": null}]}),
        )
        .expect("write csv");
        let parsed = run(&c, json!({"operation": "parse_csv", "path": "t.csv"})).expect("parse");
        assert_eq!(parsed["columns"], json!(["a", "b"]));
        assert_eq!(
            parsed["rows"],
            json!([{"a": 1, "b": "x"}, {"a": 2.5, "b": null}])
        );
        assert_eq!(parsed["row_count"], 2);

        run(
            &c,
            json!({"operation": "append", "path": "log.txt", "content": "one\n"}),
        )
        .expect("append");
        run(
            &c,
            json!({"operation": "append", "path": "log.txt", "content": "two\n"}),
        )
        .expect("append");
        let text = run(&c, json!({"operation": "read", "path": "log.txt"})).expect("read");
        assert_eq!(text["content"], "one\ntwo\n");
        assert_eq!(text["content_length"], 8);
    }

    #[test]
    fn list_exists_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("d/sub")).expect("mkdir");
        std::fs::write(dir.path().join("d/a.csv"), "x").expect("write");
        std::fs::write(dir.path().join("d/b.txt"), "x").expect("write");
        std::fs::write(dir.path().join("d/sub/c.csv"), "x").expect("write");
        let c = LocalFile::with_root(dir.path()).expect("root");
        let flat = run(
            &c,
            json!({"operation": "list", "path": "d", "pattern": "*.csv"}),
        )
        .expect("list");
        assert_eq!(flat["file_count"], 1);
        assert_eq!(flat["files"][0]["path"], "d/a.csv");
        let deep = run(
            &c,
            json!({"operation": "list", "path": "d", "pattern": "*.csv", "recursive": true}),
        )
        .expect("list");
        assert_eq!(deep["file_count"], 2);
        assert_eq!(
            run(&c, json!({"operation": "exists", "path": "d/b.txt"})).expect("exists")["exists"],
            true
        );
        run(&c, json!({"operation": "delete", "path": "d/b.txt"})).expect("delete");
        assert_eq!(
            run(&c, json!({"operation": "exists", "path": "d/b.txt"})).expect("exists")["exists"],
            false
        );
        let err = run(&c, json!({"operation": "delete", "path": "d/b.txt"})).unwrap_err();
        assert!(err.message.contains("file not found"), "{}", err.message);
    }

    #[test]
    fn every_escape_from_the_root_is_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret.txt"), "s3cr3t").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link_dir")).expect("symlink");
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            dir.path().join("link_file"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("new.txt"), dir.path().join("dangling"))
            .expect("symlink");
        let c = LocalFile::with_root(dir.path()).expect("root");
        let outside_abs = outside.path().join("secret.txt").display().to_string();
        for (op, path) in [
            ("read", "../secret.txt"),
            ("read", "a/../../secret.txt"),
            ("read", outside_abs.as_str()),
            ("read", "link_dir/secret.txt"),
            ("read", "link_file"),
            ("write", "link_dir/new.txt"),
            ("write", "dangling"),
            ("delete", "link_file"),
            ("list", "link_dir"),
        ] {
            let err = run(&c, json!({"operation": op, "path": path, "content": "x"})).unwrap_err();
            assert_eq!(
                err.class,
                flowmason_store::ErrorClass::Config,
                "{op} {path}: {}",
                err.message
            );
            assert!(
                err.message.contains("`path`"),
                "{op} {path}: {}",
                err.message
            );
        }
        assert!(!outside.path().join("new.txt").exists());
        assert!(outside.path().join("secret.txt").exists());
        // A listing of the root does not show what the symlinks point at.
        let listed = run(
            &c,
            json!({"operation": "list", "path": ".", "recursive": true}),
        )
        .expect("list");
        assert_eq!(listed["file_count"], 0, "{listed}");
    }

    #[test]
    fn no_root_configured_is_a_config_error_saying_how() {
        let c = LocalFile { root: None };
        if PROCESS_ROOT.get().is_some() {
            return;
        }
        let err = run(&c, json!({"operation": "exists", "path": "a"})).unwrap_err();
        assert!(err.message.contains("--files-root"), "{}", err.message);
    }

    #[test]
    fn validation_names_the_field() {
        let c = LocalFile::from_process();
        for (config, needle) in [
            (
                json!({"operation": "parse_excel", "path": "a.xlsx"}),
                "parse_excel is not supported",
            ),
            (
                json!({"operation": "rename", "path": "a"}),
                "`operation` must be one of",
            ),
            (
                json!({"operation": "read", "path": "../a"}),
                "contains `..`",
            ),
            (
                json!({"operation": "read", "path": "/etc/passwd"}),
                "is absolute",
            ),
            (
                json!({"operation": "write", "path": "a"}),
                "`content` is required",
            ),
            (
                json!({"operation": "read", "path": "a", "format": "xml"}),
                "`format` must be one of",
            ),
            (
                json!({"operation": "read", "path": "a", "encoding": "latin-1"}),
                "`encoding`",
            ),
            (
                json!({"operation": "parse_csv", "path": "a", "csv_options": {"delimiter": ";;"}}),
                "csv_options.delimiter",
            ),
            (json!({"operation": "read"}), "`path` is required"),
        ] {
            let err = c.validate(&config).unwrap_err();
            assert!(err.message.contains(needle), "{config}: {}", err.message);
        }
        assert!(
            c.validate(&json!({"operation": "read", "path": "{{input.file}}"}))
                .is_ok()
        );
        assert!(c.validate(&json!({"operation": "write", "path": "o.json", "content": "{{upstream.a}}", "format": "json"})).is_ok());
    }
}

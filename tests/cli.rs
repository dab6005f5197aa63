//! The `fm` binary as users run it: exit codes, output, validation messages, history, and crash recovery
//! with a real SIGKILL.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flowmason_store::{EventStore, RunPhase, RunQuery, StoreConfig};
use serde_json::{Value, json};

fn fm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fm"));
    command.env_remove("FM_DATA_DIR").env("FM_LOG", "error");
    command
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_fm(args: &[&str]) -> Output {
    fm().args(args).output().expect("fm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write fixture");
    path
}

// ---------------------------------------------------------------------------------------------------------
// fm run

#[test]
fn run_of_the_example_succeeds_and_prints_the_output_as_json() {
    let data = tempfile::tempdir().expect("tempdir");
    let example = repo("examples/hello.yaml");
    let orders =
        r#"orders=[{"id": 1, "total": 30}, {"id": 2, "total": 120}, {"id": 3, "total": 75}]"#;
    let args = [
        "run",
        example.to_str().expect("path"),
        "--input",
        "name=Ada",
        "--input",
        orders,
    ];
    let out = run_fm(
        &[
            &args[..],
            &[
                "--data-dir",
                data.path().to_str().expect("path"),
                "-o",
                "json",
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let output: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(output["result"]["big_orders"], json!([2, 3]));
    assert_eq!(output["result"]["greeted"], json!("Ada"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("stage greet [info] Hello, Ada!"),
        "progress lines on stderr: {stderr}"
    );
}

#[test]
fn run_without_inputs_uses_the_sample_input_of_a_flowmason_pipeline_json() {
    let data = tempfile::tempdir().expect("tempdir");
    let file = repo("examples/flowmason-pipeline.json");
    let out = run_fm(&[
        "run",
        file.to_str().expect("path"),
        "--data-dir",
        data.path().to_str().expect("path"),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let output: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(output["result"], json!(150));
}

#[test]
fn run_of_a_failing_pipeline_exits_1_and_prints_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "fails.yaml",
        r#"
stages:
  - id: first
    componentType: noop
  - id: broken
    componentType: json_transform
    dependsOn: [first]
    config:
      data: "{{upstream.first.nothing}}"
  - id: never
    componentType: noop
    dependsOn: [broken]
"#,
    );
    let out = run_fm(&[
        "run",
        file.to_str().expect("path"),
        "--data-dir",
        dir.path().to_str().expect("path"),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let output: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(output["phase"], json!("Failed"));
    assert_eq!(output["error"]["stage"], json!("broken"));
    let message = output["error"]["message"].as_str().expect("message");
    assert!(message.contains("upstream.first.nothing"), "{message}");
}

#[test]
fn run_of_an_invalid_file_exits_2_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "bad.yaml",
        "stages:\n  - id: a\n    componentType: teleport\n",
    );
    let out = run_fm(&[
        "run",
        file.to_str().expect("path"),
        "--data-dir",
        dir.path().to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("stages[0].componentType"), "{stderr}");
    assert!(stderr.contains("teleport"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let missing = run_fm(&[
        "run",
        "/nonexistent/pipeline.yaml",
        "--data-dir",
        dir.path().to_str().expect("path"),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = text(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains("/nonexistent/pipeline.yaml"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------
// fm validate

#[test]
fn validate_prints_every_problem_with_its_field_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "problems.yaml",
        r#"
parallelism: 0
timeout: soon
retries: -1
stages:
  - id: a
    componentType: noop
  - id: a
    componentType: noop
  - id: b
    componentType: teleport
    dependsOn: [ghost]
  - id: c
    componentType: noop
    dependsOn: [d]
  - id: d
    componentType: noop
    dependsOn: [c]
  - id: e
    componentType: noop
    config:
      x: "{{upstream.nowhere.y}}"
      z: "{{upstream.f.y}}"
  - id: f
    componentType: noop
"#,
    );
    let out = run_fm(&["validate", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let expected = [
        "duplicate stage id \"a\"",
        "stages[2].componentType",
        "teleport",
        "unknown stage \"ghost\"",
        "dependency cycle c -> d -> c",
        "parallelism: must be at least 1, got 0",
        "timeout",
        "\"soon\"",
        "retries",
        "-1",
        "nowhere",
        "\"f\"",
    ];
    for needle in expected {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(
        stdout.lines().count() >= 8,
        "one line per problem:\n{stdout}"
    );

    let ok = run_fm(&[
        "validate",
        repo("examples/hello.yaml").to_str().expect("path"),
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
}

/// Issue 15: a duplicate stage id is one problem (no false "not upstream" beside it), a Pipeline whose
/// stages come from a ConfigMap is not "valid (0 stages)", and ids YAML 1.1 reads as booleans are warned
/// about without making the file invalid.
#[test]
fn validate_reports_duplicates_once_sourced_stages_and_yaml_boolean_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let duplicate = write(
        dir.path(),
        "duplicate.yaml",
        r#"
stages:
  - {id: y, componentType: noop}
  - {id: x, componentType: noop}
  - id: x
    componentType: noop
    dependsOn: [y]
    config: {v: "{{upstream.y.z}}"}
"#,
    );
    let out = run_fm(&["validate", duplicate.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: stages[2].id: duplicate stage id \"x\"",
            duplicate.display()
        )
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning: stages[0].id: \"y\" is a boolean in YAML 1.1"),
        "{stderr}"
    );

    let booleans = write(
        dir.path(),
        "booleans.yaml",
        "stages:\n  - {id: \"on\", componentType: noop}\n  - {id: \"off\", componentType: noop, dependsOn: [\"on\"]}\n",
    );
    let out = run_fm(&["validate", booleans.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    for field in ["stages[0].id: \"on\"", "stages[1].id: \"off\""] {
        assert!(stderr.contains(&format!("warning: {field}")), "{stderr}");
    }

    let sourced = write(
        dir.path(),
        "sourced.yaml",
        "apiVersion: flowmason.io/v1\nkind: Pipeline\nmetadata: {name: sourced}\nspec:\n  source: {name: cm}\n",
    );
    let out = run_fm(&["validate", sourced.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("0 stages"), "{stdout}");
    assert!(stdout.contains("ConfigMap \"cm\""), "{stdout}");
}

/// Issue 15: literal component config, the schedule, the webhook path and resource quantities are checked
/// by `fm validate`, each problem naming its field and value, instead of failing a run (or never firing).
#[test]
fn validate_checks_component_config_triggers_and_quantities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "unrunnable.yaml",
        r#"
schedule: "61 * * * *"
triggers:
  webhook:
    path: /hooks/x
resources:
  requests:
    memory: 256MB
stages:
  - id: jq
    componentType: json_transform
    config: {data: 1, jq: ".a | ("}
  - id: log
    componentType: logger
    config: {message: hi, level: loud}
  - id: wait
    componentType: delay
    config: {ms: -1}
  - id: fetch
    componentType: http_request
    config: {url: "https://example.com", method: FETCH}
  - id: ftp
    componentType: http_request
    config: {url: "ftp://x"}
  - id: process
    componentType: json_transform
    dependsOn: [ftp]
  - id: mapped
    componentType: json_transform
    dependsOn: [ftp]
    inputMapping: {data: "{{upstream.ftp}}"}
    config: {jq: "{{input.filter}}"}
"#,
    );
    let out = run_fm(&["validate", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    for (field, needle) in [
        ("stages[0].config", "jq filter \".a | (\""),
        ("stages[1].config", "\"loud\""),
        ("stages[2].config", "-1"),
        ("stages[3].config", "\"FETCH\""),
        ("stages[4].config", "\"ftp://x\""),
        ("stages[5].config", "`data` is required"),
        ("schedule", "\"61 * * * *\""),
        ("triggers.webhook.path", "\"/hooks/x\""),
        ("resources.requests.memory", "\"256MB\""),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!(": {field}: ")) && l.contains(needle)),
            "missing {field} naming {needle} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("stages[6]"),
        "data from inputMapping counts:\n{stdout}"
    );
    assert_eq!(stdout.lines().count(), 9, "{stdout}");
}

// ---------------------------------------------------------------------------------------------------------
// fm history

#[test]
fn history_lists_runs_newest_first_and_shows_one_in_full() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().to_str().expect("path");
    let example = repo("examples/hello.yaml");
    for name in ["one", "two"] {
        let inputs = format!(r#"{{"name": "{name}", "orders": []}}"#);
        let file = write(data.path(), "inputs.json", &inputs);
        let out = run_fm(&[
            "run",
            example.to_str().expect("path"),
            "--inputs",
            file.to_str().expect("path"),
            "--data-dir",
            data_dir,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let out = run_fm(&[
        "history",
        "--pipeline",
        "hello",
        "--data-dir",
        data_dir,
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).expect("JSON page");
    let runs = page["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    // Times as RFC 3339 (same length and zone, so they sort as text).
    let accepted = |i: usize| {
        runs[i]["acceptedAt"]
            .as_str()
            .expect("RFC 3339 acceptedAt")
            .to_string()
    };
    assert!(
        chrono::DateTime::parse_from_rfc3339(&accepted(0)).is_ok(),
        "{}",
        accepted(0)
    );
    assert!(accepted(0) >= accepted(1), "newest first");
    assert!(runs.iter().all(|r| r["phase"] == json!("Succeeded")));

    let table = run_fm(&["history", "--phase", "Succeeded", "--data-dir", data_dir]);
    let table = text(&table.stdout);
    assert!(table.starts_with("RUN ID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    let none = run_fm(&[
        "history",
        "--phase",
        "Failed",
        "--data-dir",
        data_dir,
        "-o",
        "json",
    ]);
    let none: Value = serde_json::from_slice(&none.stdout).expect("JSON page");
    assert_eq!(none["runs"], json!([]));

    let run_id = runs[0]["runId"].as_str().expect("id");
    let show = run_fm(&["history", "show", run_id, "--data-dir", data_dir]);
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    let shown = text(&show.stdout);
    for needle in [
        "Phase:     Succeeded",
        "STAGE",
        "report",
        "big_orders",
        "run of hello accepted",
        "run succeeded",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(
        shown.contains("stage report succeeded (attempt 1)"),
        "{shown}"
    );

    // A run id may be shortened while it stays unambiguous.
    let short = &run_id[..run_id.len() - 4];
    let by_prefix = run_fm(&["history", "show", short, "--data-dir", data_dir]);
    assert_eq!(
        by_prefix.status.code(),
        Some(0),
        "{}",
        text(&by_prefix.stderr)
    );
    assert!(text(&by_prefix.stdout).contains(run_id));
    let ambiguous = run_fm(&["history", "show", &run_id[..4], "--data-dir", data_dir]);
    assert_ne!(ambiguous.status.code(), Some(0));
    assert!(
        text(&ambiguous.stderr).contains("is ambiguous"),
        "{}",
        text(&ambiguous.stderr)
    );
    let rerun = run_fm(&["history", "rerun", short, "--data-dir", data_dir]);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun.stderr));
    assert!(
        text(&rerun.stdout).starts_with(&format!("rerun of {run_id}: run ")),
        "{}",
        text(&rerun.stdout)
    );

    // A reader that goes away (`| head`) ends the command quietly, without a panic.
    let mut child = fm()
        .args(["history", "show", run_id, "--data-dir", data_dir])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fm runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("fm ends");
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn run_with_inputs_that_break_the_input_schema_exits_2_and_runs_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().to_str().expect("path");
    let file = write(
        data.path(),
        "typed.yaml",
        "apiVersion: flowmason.io/v1\nkind: Pipeline\nmetadata:\n  name: typed\nspec:\n  \
         inputSchema:\n    type: object\n    required: [name]\n    properties:\n      \
         name: {type: string}\n      count: {type: integer}\n  stages:\n    \
         - {id: a, componentType: noop}\n",
    );
    let file = file.to_str().expect("path");
    let out = run_fm(&["run", file, "--input", "count=many", "--data-dir", data_dir]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("inputs: \"name\" is a required property"),
        "{stderr}"
    );
    assert!(
        stderr.contains("inputs.count: \"many\" is not of type \"integer\""),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was run"), "{stderr}");
    let listed = run_fm(&["history", "--data-dir", data_dir, "-o", "json"]);
    let page: Value = serde_json::from_slice(&listed.stdout).expect("JSON page");
    assert_eq!(page["runs"], json!([]), "no run was recorded");
    let ok = run_fm(&[
        "run",
        file,
        "--input",
        "name=Ada",
        "--input",
        "count=2",
        "--data-dir",
        data_dir,
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
}

#[test]
fn history_serve_answers_queries_metrics_health_and_reruns_on_its_engine() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().to_str().expect("path");
    let example = repo("examples/hello.yaml");
    let inputs = write(
        data.path(),
        "inputs.json",
        r#"{"name": "one", "orders": []}"#,
    );
    let out = run_fm(&[
        "run",
        example.to_str().expect("path"),
        "--inputs",
        inputs.to_str().expect("path"),
        "--data-dir",
        data_dir,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut child = KillOnDrop(
        fm().args([
            "history",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fm history serve"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let base = lines
        .by_ref()
        .find_map(|l| {
            l.strip_prefix("FlowMason history API listening on ")
                .map(str::to_string)
        })
        .expect("fm history serve prints its address");
    // Read on: a closed pipe would make the server's next line (the web UI's address) end it.
    std::thread::spawn(move || lines.for_each(drop));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send().expect("request");
    let page: Value = get("/api/v1/runs?pipeline=hello").json().expect("JSON");
    let runs = page["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 1, "{page}");
    let old = runs[0]["runId"].as_str().expect("id").to_string();
    assert_eq!(get("/readyz").status().as_u16(), 200);
    let metrics = get("/metrics").text().expect("metrics");
    assert!(
        metrics.contains("flowmason_event_log_size_bytes"),
        "{metrics}"
    );

    let rerun = http
        .post(format!("{base}/api/v1/runs/{old}/rerun"))
        .send()
        .expect("rerun");
    assert!(rerun.status().is_success(), "{}", rerun.status());
    let started: Value = rerun.json().expect("JSON");
    let new = started["runId"].as_str().expect("new run id").to_string();
    assert_ne!(new, old);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let detail = loop {
        let detail: Value = get(&format!("/api/v1/runs/{new}")).json().expect("JSON");
        if detail["phase"] == json!("Succeeded") {
            break detail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rerun never ended: {detail}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(detail["inputs"], json!({"name": "one", "orders": []}));

    // SIGTERM (how Kubernetes and systemd stop it) ends it cleanly.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fm history serve ignored SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// Crash recovery

#[test]
fn runs_killed_mid_flight_are_finished_exactly_once_by_resume() {
    killed_mid_flight_then_resumed("always", None);
}

/// Under `batch` a crash may lose the last stage events (resume re-runs those stages), but never a run
/// whose start was reported nor an outcome that was reported.
#[test]
fn under_batch_durability_no_reported_start_or_end_is_lost_to_a_kill() {
    killed_mid_flight_then_resumed("batch", None);
}

/// The same with the event log on JetStream: `fm resume --event-log jetstream` finishes every run the
/// killed engine left in the stream, each once.
#[test]
fn runs_killed_mid_flight_on_jetstream_are_finished_exactly_once_by_resume() {
    let nats = nats::NatsCluster::single();
    killed_mid_flight_then_resumed("batch", Some(&nats));
}

/// The event log options of a command: sled in the data dir, or the JetStream stream on `nats`.
fn event_log_args(nats: Option<&nats::NatsCluster>) -> Vec<String> {
    match nats {
        None => Vec::new(),
        Some(nats) => vec![
            "--event-log".into(),
            "jetstream".into(),
            "--event-nats".into(),
            nats.url_list(),
        ],
    }
}

/// Opens the event log the commands used.
fn open_event_log(data: &Path, nats: Option<&nats::NatsCluster>) -> EventStore {
    match nats {
        None => EventStore::open(data.join("events"), StoreConfig::default()),
        Some(nats) => EventStore::open_jetstream(
            &flowmason_store::JetStreamConfig::new(nats.urls()),
            StoreConfig::default(),
        ),
    }
    .expect("open the event log")
}

/// Kills `fm bench engine` (SIGKILL) with runs in flight, checks that every run it reported started or
/// ended is in the log as reported, then resumes the rest: each ends once, no stage succeeds twice.
fn killed_mid_flight_then_resumed(durability: &str, nats: Option<&nats::NatsCluster>) {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().to_str().expect("path");
    let log = event_log_args(nats);
    let mut child = fm()
        .args([
            "bench",
            "engine",
            "--runs",
            "80",
            "--concurrency",
            "20",
            "--shape",
            "chain:4",
            "--stage-ms",
            "50",
            "--durability",
            durability,
            "--print-runs",
            "--data-dir",
            data_dir,
        ])
        .args(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fm bench");
    // Let the first wave of runs end (each reported after its terminal event is durable) while the next
    // wave is accepted and some stages into its 200 ms; kill -9 the moment one more run is reported
    // started, before anything else can be written.
    let stdout = child.stdout.take().expect("stdout");
    let mut reported = HashSet::new();
    let mut started = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let value: Value = serde_json::from_str(&line).expect("JSON line");
        let run = value["runId"].as_str().expect("id").to_string();
        if value["event"] == json!("started") {
            started.insert(run);
            if reported.len() >= 10 {
                break;
            }
            continue;
        }
        assert_eq!(value["event"], json!("ended"));
        assert_eq!(value["phase"], json!("Succeeded"));
        reported.insert(run);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let query_all = RunQuery {
        limit: 10_000,
        ..RunQuery::default()
    };
    let (unfinished_before, total) = {
        let store = open_event_log(data.path(), nats);
        for run in &started {
            let run = run.parse().expect("uuid");
            assert!(
                store.summary(run).expect("read").is_some(),
                "run {run} was reported started, so it survives the kill"
            );
        }
        for run in &reported {
            let summary = store
                .summary(run.parse().expect("uuid"))
                .expect("read")
                .expect("reported run exists");
            assert_eq!(
                summary.phase,
                RunPhase::Succeeded,
                "a run reported durable is durable"
            );
        }
        let runs = store.query(&query_all).expect("query").runs;
        (
            store.unfinished_runs().expect("unfinished").len(),
            runs.len(),
        )
    };
    assert!(
        unfinished_before > 0,
        "the kill left runs in flight (total {total}, reported {})",
        reported.len()
    );

    let resume: Vec<&str> = ["resume", "--data-dir", data_dir]
        .into_iter()
        .chain(log.iter().map(String::as_str))
        .collect();
    let out = run_fm(&resume);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        unfinished_before,
        "every unfinished run resumed once"
    );

    let store = open_event_log(data.path(), nats);
    assert!(store.unfinished_runs().expect("unfinished").is_empty());
    let runs = store.query(&query_all).expect("query").runs;
    assert_eq!(runs.len(), total, "no run lost or added");
    for summary in runs {
        assert_eq!(summary.phase, RunPhase::Succeeded, "run {}", summary.run_id);
        let events = store.events(summary.run_id).expect("events");
        assert_eq!(
            events.iter().filter(|e| e.kind.is_terminal()).count(),
            1,
            "one terminal event"
        );
        assert!(
            events.iter().enumerate().all(|(i, e)| e.seq == i as u64),
            "no gap in the stream"
        );
        let mut succeeded = BTreeMap::<String, usize>::new();
        for e in &events {
            if e.kind.name() == "StageSucceeded" {
                *succeeded
                    .entry(e.kind.stage().expect("stage").to_string())
                    .or_default() += 1;
            }
        }
        assert_eq!(succeeded.len(), 4, "every stage succeeded");
        assert!(
            succeeded.values().all(|&n| n == 1),
            "no stage succeeded twice: {succeeded:?}"
        );
    }
    drop(store);

    let again = run_fm(&resume);
    assert_eq!(again.status.code(), Some(0));
    assert!(again.stdout.is_empty(), "nothing left to resume");
}

#[test]
fn bench_resume_kills_runs_in_flight_and_finds_each_ended_once() {
    let out = run_fm(&[
        "bench",
        "resume",
        "--runs",
        "50",
        "--shape",
        "chain:2",
        "--stage-ms",
        "1000",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let figures: Value = serde_json::from_slice(&out.stdout).expect("JSON figures");
    assert_eq!(figures["resumedRuns"], json!(50), "{figures}");
    assert_eq!(figures["runsInLog"], json!(50), "{figures}");
    assert_eq!(figures["phases"], json!({"Succeeded": 50}), "{figures}");
    for zero in [
        "unfinished",
        "notSucceeded",
        "endedTwice",
        "stageSucceededTwice",
    ] {
        assert_eq!(figures[zero], json!(0), "{zero}: {figures}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// fm crds

#[test]
fn crds_prints_the_checked_in_definitions() {
    let out = run_fm(&["crds"]);
    assert_eq!(out.status.code(), Some(0));
    let printed = text(&out.stdout);
    let pipeline =
        std::fs::read_to_string(repo("deploy/crds/pipeline.yaml")).expect("pipeline crd");
    let run =
        std::fs::read_to_string(repo("deploy/crds/pipelinerun.yaml")).expect("pipelinerun crd");
    assert_eq!(printed, format!("{pipeline}---\n{run}"));
}

// ---------------------------------------------------------------------------------------------------------
// Environment and secrets

const CLI_SECRET: &str = "pw-cli-0123456789";

/// A process environment variable given to `fm`.
type EnvVar<'a> = (&'a str, &'a str);

/// A pipeline whose stages print a secret-sourced variable every way they can: a log line, an output,
/// and (with `fail`) an error message.
fn env_pipeline(dir: &Path, fail: bool) -> PathBuf {
    let last = if fail {
        r#"  - id: use
    componentType: json_transform
    dependsOn: [show]
    config:
      data: {}
      jq: 'error("cannot log in with {{env.DB_PASSWORD}}")'"#
    } else {
        r#"  - id: use
    componentType: noop
    dependsOn: [show]
    config:
      dsn: "postgres://app:{{env.DB_PASSWORD}}@db/{{env.DB_NAME}}""#
    };
    write(
        dir,
        "env.yaml",
        &format!(
            r#"
env:
  - name: DB_PASSWORD
    valueFrom:
      secretKeyRef: {{name: db, key: password}}
  - name: DB_NAME
    valueFrom:
      configMapKeyRef: {{name: db-config, key: name}}
  - name: MAYBE
    valueFrom:
      secretKeyRef: {{name: db, key: absent, optional: true}}
stages:
  - id: show
    componentType: logger
    config:
      message: "password is {{{{env.DB_PASSWORD}}}}"
{last}
"#
        ),
    )
}

/// Runs `fm run FILE` with extra arguments and environment; returns (exit code, stdout, stderr).
fn run_env(
    file: &Path,
    data: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut command = fm();
    command
        .args([
            "run",
            file.to_str().expect("path"),
            "--data-dir",
            data.to_str().expect("path"),
            "-o",
            "json",
        ])
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("fm runs");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Every event of every run in the data dir, serialized.
fn all_events(data: &Path) -> String {
    let store = EventStore::open(data.join("events"), StoreConfig::default()).expect("open");
    let runs = store
        .query(&RunQuery {
            limit: 1000,
            ..RunQuery::default()
        })
        .expect("query")
        .runs;
    let events: Vec<_> = runs
        .iter()
        .flat_map(|r| store.events(r.run_id).expect("events"))
        .collect();
    serde_json::to_string(&events).expect("serialize")
}

#[test]
fn secrets_resolve_from_each_source_and_never_reach_the_log_or_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = env_pipeline(dir.path(), false);
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        &format!(
            "secrets:\n  db:\n    password: {CLI_SECRET}\nconfigMaps:\n  db-config:\n    name: orders\n"
        ),
    );
    let env_file = write(
        dir.path(),
        "db.env",
        &format!("password={CLI_SECRET}\nname=orders\n"),
    );
    let secrets_arg = format!("--secrets={}", secrets.display());
    let any_env_file = format!("--env-file={}", env_file.display());
    let config_file = write(dir.path(), "db-config.env", "name=orders\n");
    let named_env_file = format!("--env-file=db={}", env_file.display());
    let named_config_file = format!("--env-file=db-config={}", config_file.display());
    let process = [
        ("FM_SECRET_DB_PASSWORD", CLI_SECRET),
        ("FM_CONFIGMAP_DB_CONFIG_NAME", "orders"),
    ];
    // At FM_LOG=info the logger's line also goes to the tracing log on stderr: masked there too.
    let traced = [
        ("FM_SECRET_DB_PASSWORD", CLI_SECRET),
        ("FM_CONFIGMAP_DB_CONFIG_NAME", "orders"),
        ("FM_LOG", "info"),
    ];
    let cases: [(&str, Vec<&str>, &[EnvVar]); 5] = [
        ("secrets file", vec![secrets_arg.as_str()], &[]),
        ("env file", vec![any_env_file.as_str()], &[]),
        (
            "named env files",
            vec![named_env_file.as_str(), named_config_file.as_str()],
            &[],
        ),
        ("process environment", vec![], &process),
        ("tracing at info", vec![], &traced),
    ];
    for (source, args, env) in cases {
        let data = dir.path().join(source.replace(' ', "-"));
        let (code, stdout, stderr) = run_env(&file, &data, &args, env);
        assert_eq!(code, Some(0), "{source}: {stdout}\n{stderr}");
        let output: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
        assert_eq!(
            output["dsn"],
            json!("postgres://app:***@db/orders"),
            "{source}"
        );
        assert!(stderr.contains("password is ***"), "{source}: {stderr}");
        for (what, text) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("events", &all_events(&data)),
        ] {
            assert!(
                !text.contains(CLI_SECRET),
                "{source}: {what} holds the secret: {text}"
            );
        }
    }
}

#[test]
fn a_failing_stage_error_is_masked_and_a_missing_secret_fails_before_any_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let failing = env_pipeline(dir.path(), true);
    let env = [
        ("FM_SECRET_DB_PASSWORD", CLI_SECRET),
        ("FM_CONFIGMAP_DB_CONFIG_NAME", "orders"),
    ];
    let (code, stdout, stderr) = run_env(&failing, &data, &[], &env);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("cannot log in with ***"), "{stdout}");
    for text in [&stdout, &stderr, &all_events(&data)] {
        assert!(!text.contains(CLI_SECRET), "{text}");
    }

    let data = dir.path().join("missing");
    let (code, stdout, stderr) = run_env(
        &failing,
        &data,
        &[],
        &[("FM_CONFIGMAP_DB_CONFIG_NAME", "orders")],
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let output: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(output["phase"], json!("Failed"));
    assert_eq!(
        output["error"]["message"],
        json!(r#"environment: env[0].valueFrom.secretKeyRef: secret "db" has no key "password""#)
    );
    assert!(
        stderr.contains(
            "hint: give Secret and ConfigMap values with --secrets FILE or --env-file NAME=FILE"
        ),
        "{stderr}"
    );
    let events = all_events(&data);
    assert!(!events.contains("StageStarted"), "{events}");
}

// ---------------------------------------------------------------------------------------------------------
// Durability across a power loss and a full disk

#[path = "cli/durability.rs"]
mod durability;
#[path = "support/pipelines.rs"]
mod pipelines;
use pipelines::chain_pipeline;

#[path = "support/nats.rs"]
mod nats;

#[path = "cli/corpus.rs"]
mod corpus;

// ---------------------------------------------------------------------------------------------------------
// Hostile expressions: refused or failed cleanly, never a crash of `fm`

/// A one-stage pipeline as JSON, with `timeout` on the stage when given.
fn one_stage(component: &str, config: Value, timeout: Option<&str>) -> String {
    let mut stage = json!({"id": "s", "componentType": component, "config": config});
    if let Some(limit) = timeout {
        stage["timeout"] = json!(limit);
    }
    json!({
        "apiVersion": "flowmason.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": "hostile"},
        "spec": {"stages": [stage]},
    })
    .to_string()
}

#[test]
fn validate_names_unknown_fields_with_the_closest_allowed_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "typos.yaml",
        r#"
apiVersion: flowmason.io/v1
kind: Pipeline
metadata: {name: typos}
spec:
  shedule: "0 * * * *"
  stages:
    - id: a
      component_type: noop
      confg: {x: 1}
    - id: b
      componentType: noop
      dependOn: [a]
      depends_on: [a]
"#,
    );
    let out = run_fm(&["validate", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let path = file.display();
    for line in [
        format!("{path}: spec.shedule: unknown field; did you mean \"schedule\"?"),
        format!("{path}: spec.stages[0].confg: unknown field; did you mean \"config\"?"),
        format!("{path}: spec.stages[1].dependOn: unknown field; did you mean \"dependsOn\"?"),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.lines().count(),
        3,
        "snake_case spellings are known: {stdout}"
    );
    let bare = write(
        dir.path(),
        "bare.yaml",
        "stages:\n  - {id: a, componentType: noop, dependOn: []}\n",
    );
    let out = run_fm(&["validate", bare.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout)
            .contains(": stages[0].dependOn: unknown field; did you mean \"dependsOn\"?"),
        "{}",
        text(&out.stdout)
    );
    // fm run refuses the same file before anything runs, instead of running `a` without its meaning.
    let out = run_fm(&["run", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("spec.stages[1].dependOn: unknown field; did you mean \"dependsOn\"?")
            && stderr.contains("nothing was run"),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_deeply_nested_expressions_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "filter",
            json!({"data": 1, "condition": "not ".repeat(100_000) + "data"}),
            "config.condition",
        ),
        (
            "filter",
            json!({"data": 1, "condition": "-".repeat(100_000) + "1"}),
            "config.condition",
        ),
        (
            "filter",
            json!({"data": 1, "condition": "[".repeat(50_000) + &"]".repeat(50_000)}),
            "config.condition",
        ),
        (
            "filter",
            json!({"data": 1, "condition": vec!["1"; 50_000].join("+")}),
            "config.condition",
        ),
        (
            "json_transform",
            json!({"data": {}, "jmespath_expression": "a".to_string() + &".a".repeat(10_000)}),
            "config.jmespath_expression",
        ),
        (
            "json_transform",
            json!({"data": {}, "jq": "[".repeat(50_000) + &"]".repeat(50_000)}),
            "config.jq",
        ),
    ];
    for (i, (component, config, field)) in cases.into_iter().enumerate() {
        let file = write(
            dir.path(),
            &format!("deep{i}.json"),
            &one_stage(component, config, None),
        );
        for verb in ["validate", "run"] {
            let data = tempfile::tempdir().expect("tempdir");
            let path = file.to_str().expect("path");
            let out = match verb {
                "run" => run_fm(&[
                    verb,
                    path,
                    "--data-dir",
                    data.path().to_str().expect("path"),
                ]),
                _ => run_fm(&[verb, path]),
            };
            let said = text(&out.stdout) + &text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{verb} case {i}: {said}");
            assert!(
                said.contains(field) && said.contains("limit of 256"),
                "{verb} case {i} names {field} and the limit: {said}"
            );
        }
    }
}

#[test]
fn runaway_expressions_fail_their_stage_and_fm_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "filter",
            json!({"data": 1, "condition": "sorted(list('z' * 10**8))"}),
            None,
            "evaluation limit",
        ),
        (
            "json_transform",
            json!({"data": 1, "jq": "def f: [f]; f"}),
            None,
            "evaluation was stopped",
        ),
        (
            "json_transform",
            json!({"data": 1, "jq": "[range(1e9)]"}),
            None,
            "json_transform: jq filter",
        ),
        (
            "json_transform",
            json!({"data": 1, "jq": "last(range(1e15))"}),
            Some("2s"),
            "timed out",
        ),
        (
            "json_transform",
            json!({"data": 1, "jq": "reduce range(110) as $i (0; [.])"}),
            None,
            "output nests deeper than the limit of 100",
        ),
    ];
    for (i, (component, config, timeout, want)) in cases.into_iter().enumerate() {
        let file = write(
            dir.path(),
            &format!("runaway{i}.json"),
            &one_stage(component, config, timeout),
        );
        let data = tempfile::tempdir().expect("tempdir");
        let out = run_fm(&[
            "run",
            file.to_str().expect("path"),
            "--data-dir",
            data.path().to_str().expect("path"),
            "--max-output-bytes",
            "1000000",
        ]);
        let stderr = text(&out.stderr);
        // Exit 1 (the run failed), not a signal.
        assert_eq!(out.status.code(), Some(1), "case {i}: {stderr}");
        assert!(stderr.contains(want), "case {i} says {want:?}: {stderr}");
    }
}

#[test]
fn an_output_over_the_limit_fails_its_stage_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = json!({
        "apiVersion": "flowmason.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": "doubling"},
        "spec": {"stages": [
            {"id": "a", "componentType": "logger", "config": {"message": "x", "passthrough": "{{input.text}}"}},
            {"id": "b", "componentType": "logger", "dependsOn": ["a"],
             "config": {"message": "x", "passthrough": "{{upstream.a.passthrough}}{{upstream.a.passthrough}}"}},
        ]},
    });
    let file = write(dir.path(), "doubling.json", &pipeline.to_string());
    let data = tempfile::tempdir().expect("tempdir");
    let text_input = format!("text={}", "y".repeat(600));
    let out = run_fm(&[
        "run",
        file.to_str().expect("path"),
        "--input",
        &text_input,
        "--data-dir",
        data.path().to_str().expect("path"),
        "--max-output-bytes",
        "1000",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stage \"b\" failed") && stderr.contains("exceeds the limit of 1000 bytes"),
        "{stderr}"
    );
}

#[test]
fn history_show_names_a_quarantined_run_and_its_resumes() {
    use flowmason_store::{Event, EventKind, QUARANTINED, RunError, RunId};
    let data = tempfile::tempdir().expect("tempdir");
    let run = RunId::now_v7();
    let kinds = vec![
        EventKind::RunAccepted {
            pipeline: "poison".into(),
            namespace: "default".into(),
            generation: 1,
            trigger: Default::default(),
            run_name: None,
            labels: BTreeMap::new(),
            plan: json!({"stages": [{"id": "boom", "component": "noop"}]}),
            inputs: json!({}),
        },
        EventKind::RunStarted,
        EventKind::RunResumed {
            session: 2,
            after_crash: true,
        },
        EventKind::RunFailed {
            error: RunError {
                message: "quarantined: in flight at 2 consecutive crashes of the engine".into(),
                stage: None,
                details: json!({"reason": QUARANTINED}),
            },
        },
    ];
    let events: Vec<Event> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Event {
            seq: i as u64,
            at: 1_700_000_000_000_000 + i as i64,
            kind,
        })
        .collect();
    {
        let store =
            EventStore::open(data.path().join("events"), StoreConfig::default()).expect("open");
        store.import_runs(&[(run, events)]).expect("import");
        store.flush().expect("flush");
    }
    let data_dir = data.path().to_str().expect("path");
    let show = run_fm(&["history", "show", &run.to_string(), "--data-dir", data_dir]);
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    let shown = text(&show.stdout);
    for needle in [
        "Phase:     Failed (Quarantined)",
        "Error:     quarantined: in flight at 2 consecutive crashes",
        "run resumed after a crash of the engine (engine session 2)",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Big pipelines: validation, planning and the run are linear in the stages

/// Runs `fm` with `args` to its end: exit code (None: killed by a signal), stdout, and its peak resident
/// set size in bytes, read by `wait4` for that child alone.
fn run_fm_measured(args: &[&str], data: &Path) -> (Option<i32>, String, u64) {
    let out_path = data.join("stdout");
    let out = std::fs::File::create(&out_path).expect("stdout file");
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which also reads its peak memory"
    )]
    let child = fm()
        .args(args)
        .env("FM_DATA_DIR", data)
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("fm starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value; wait4 writes both out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for by anything else; the pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stdout = std::fs::read_to_string(&out_path).expect("stdout");
    // Linux reports ru_maxrss in KiB.
    (code, stdout, usage.ru_maxrss as u64 * 1024)
}

#[test]
fn a_20000_stage_chain_validates_and_runs_within_512_mib() {
    const STAGES: usize = 20_000;
    // Measured: about 130 MiB to validate and 280 MiB to run (debug build); quadratic validation took
    // more than 6.9 GB, and a recursive cycle check overflowed the stack.
    const BOUND: u64 = 512 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut chain = chain_pipeline("chain", STAGES, json!({"value": "{{input.x}}"}));
    chain["spec"]["sampleInput"] = json!({"x": 7});
    let file = write(dir.path(), "chain.json", &chain.to_string());
    let file = file.to_str().expect("utf-8 path");

    let (code, stdout, rss) = run_fm_measured(&["validate", file], dir.path());
    assert_eq!(code, Some(0), "fm validate: {stdout}");
    assert!(stdout.contains("is valid (20000 stages)"), "{stdout}");
    assert!(rss < BOUND, "fm validate peaked at {} MiB", rss >> 20);

    let (code, stdout, rss) = run_fm_measured(&["run", file], dir.path());
    assert_eq!(code, Some(0), "fm run: {stdout}");
    let output: Value = serde_json::from_str(stdout.trim()).expect("output is JSON");
    assert_eq!(output, json!({"value": 7}), "the last stage's output");
    assert!(rss < BOUND, "fm run peaked at {} MiB", rss >> 20);
}

//! The connectors against real servers that the tests start on free loopback ports and kill on drop:
//! PostgreSQL (Debian's `postgresql`: initdb and postgres in a temp dir, as `nobody` when the tests run as
//! root), `redis-server`, and moto's S3-compatible server (from PyPI, in target/pyenv);
//! `local_file` on temp dirs. `scripts/test.sh` installs all of them.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::Instant;

use super::*;

#[path = "../support/ports.rs"]
mod ports;

use ports::free_port;

/// Waits (up to a generous 60 s) for something to listen on `port`.
fn wait_listening(what: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL

const PG_USER: &str = "fm";
const PG_PASSWORD: &str = "pg-secret-4242";

/// A PostgreSQL server on a loopback port, password authentication (scram), data in a temp dir.
struct PgServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// Debian installs PostgreSQL's programs under /usr/lib/postgresql/<version>/bin (`PG_BIN` overrides).
fn pg_bin(program: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Path::new(&dir).join(program);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin").join(program))
        .unwrap_or_else(|| PathBuf::from(program))
}

/// The uid and gid to run PostgreSQL as: ours, or `nobody`'s when we are root (postgres refuses root).
fn pg_identity() -> Option<(u32, u32)> {
    let meta = std::fs::metadata("/proc/self").expect("/proc/self");
    if std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&"nobody"))
            .then(|| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
    })
}

fn as_pg_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = pg_identity() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl PgServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).expect("pwfile");
        if let Some((uid, gid)) = pg_identity() {
            for p in [dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let data = dir.path().join("data");
        let out = as_pg_user(&mut Command::new(pg_bin("initdb")))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs (scripts/test.sh installs postgresql)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = PgServer {
            child: None,
            port: free_port(),
            dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = as_pg_user(&mut Command::new(pg_bin("postgres")))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        // Listening is not ready: until recovery ends, connections are refused with 57P03.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("pg_isready runs");
            if ready.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not get ready on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// The connector config fields for this server, the password from `{{env.PGPASSWORD}}`.
    fn config(&self, extra: Value) -> Value {
        let mut config = json!({
            "host": "127.0.0.1",
            "port": self.port,
            "database": "postgres",
            "user": PG_USER,
            "password": "{{env.PGPASSWORD}}",
        });
        for (k, v) in extra.as_object().expect("object") {
            config[k] = v.clone();
        }
        config
    }

    async fn client(&self) -> tokio_postgres::Client {
        let url = format!(
            "postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn with_env(mut spec: PlanSpec, name: &str, value: &str) -> PlanSpec {
    spec.env.insert(name.into(), value.into());
    spec
}

fn chain(stages: Vec<(&str, &str, Value)>) -> PlanSpec {
    let mut previous: Option<&str> = None;
    let mut out = Vec::new();
    for (id, component, config) in stages {
        let deps: Vec<&str> = previous.into_iter().collect();
        out.push(configured(id, component, &deps, config));
        previous = Some(id);
    }
    plan(out)
}

fn retried(limit: u32) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        limit,
        initial_ms: 1,
        jitter: 0.0,
        ..RetryPolicy::default()
    })
}

#[actix_rt::test]
async fn postgres_query_execute_bulk_insert_and_transaction_give_flowmason_s_outputs() {
    let pg = PgServer::start();
    let f = fixture(builtin_registry());
    let spec = chain(vec![
        ("create", "postgres", pg.config(json!({"operation": "execute",
            "sql": "CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric(10,2), paid bool, \
                    meta jsonb, placed timestamptz, tags text[])"}))),
        ("load", "postgres", pg.config(json!({"operation": "bulk_insert", "table": "orders",
            "columns": ["id", "customer", "total", "paid", "meta", "placed", "tags"],
            "values": [[1, "ada", 12.5, true, {"vip": true}, "2026-01-02T03:04:05Z", ["a", "b"]],
                       [2, "bob", 3, false, null, null, []],
                       [3, "cy", 100.25, true, {"vip": false}, "2026-02-01T00:00:00+01:00", ["c"]]]}))),
        ("pay", "postgres", pg.config(json!({"operation": "transaction", "queries": [
            {"sql": "UPDATE orders SET paid = true WHERE id = $1", "parameters": [2]},
            {"sql": "DELETE FROM orders WHERE customer = $1", "parameters": ["cy"]}]}))),
        ("touch", "postgres", pg.config(json!({"operation": "execute",
            "sql": "UPDATE orders SET total = total + $1 WHERE paid", "parameters": [1]}))),
        ("read", "postgres", pg.config(json!({"operation": "query",
            "sql": "SELECT * FROM orders WHERE total > $1 ORDER BY id", "parameters": ["{{input.min}}"],
            "fetch_size": 5}))),
        ("first", "postgres", json!({"operation": "query",
            "connection_string": format!("postgresql://{PG_USER}:{{{{env.PGPASSWORD}}}}@127.0.0.1:{}/postgres", pg.port),
            "sql": "SELECT customer FROM orders ORDER BY id", "fetch_size": 1})),
    ]);
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        with_env(spec, "PGPASSWORD", PG_PASSWORD),
        json!({"min": 0}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);

    let load = output(&state, "load");
    assert_eq!(load["success"], true);
    assert_eq!(load["operation"], "bulk_insert");
    assert_eq!(load["affected_rows"], 3);
    assert_eq!(load["metadata"]["rows_inserted"], 3);
    assert_eq!(
        load["rows"],
        Value::Null,
        "FlowMason's output has every field: {load}"
    );
    assert_eq!(output(&state, "pay")["transaction_queries"], 2);
    assert_eq!(output(&state, "touch")["affected_rows"], 2);

    let read = output(&state, "read");
    assert_eq!(read["row_count"], 2);
    assert_eq!(read["affected_rows"], Value::Null);
    assert_eq!(read["error"], Value::Null);
    assert_eq!(
        read["rows"],
        json!([
            {"id": 1, "customer": "ada", "total": 13.5, "paid": true, "meta": {"vip": true},
             "placed": "2026-01-02T03:04:05+00:00", "tags": ["a", "b"]},
            {"id": 2, "customer": "bob", "total": 4.0, "paid": true, "meta": null, "placed": null, "tags": []}
        ])
    );
    assert_eq!(
        read["metadata"]["query"],
        "SELECT * FROM orders WHERE total > $1 ORDER BY id"
    );
    // The same server through a connection string whose password comes from env; fetch_size cuts.
    let first = output(&state, "first");
    assert_eq!(first["rows"], json!([{"customer": "ada"}]));
    assert_eq!(first["row_count"], 1);
}

#[actix_rt::test]
async fn postgres_sql_errors_are_client_errors_and_not_retried() {
    let pg = PgServer::start();
    let f = fixture(builtin_registry());
    let mut bad = configured(
        "bad",
        "postgres",
        &[],
        pg.config(json!({"operation": "query", "sql": "SELECT * FROM nowhere"})),
    );
    bad.retry = retried(3);
    let (state, events) = run_to_end(
        &f.engine,
        &f.store,
        with_env(plan(vec![bad]), "PGPASSWORD", PG_PASSWORD),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(started(&events, "bad"), 1, "a SQL error is not retried");
    let error = state.stages["bad"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Client);
    assert!(
        error
            .message
            .contains("relation \"nowhere\" does not exist"),
        "{}",
        error.message
    );

    // A wrong password is refused by the server: a client error too.
    let denied = configured(
        "denied",
        "postgres",
        &[],
        pg.config(json!({"operation": "query", "sql": "SELECT 1"})),
    );
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        with_env(plan(vec![denied]), "PGPASSWORD", "wrong-password"),
        json!({}),
    )
    .await;
    let error = state.stages["denied"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Client, "{}", error.message);
    assert!(
        error.message.contains("password authentication failed"),
        "{}",
        error.message
    );
}

#[actix_rt::test]
async fn postgres_stopped_server_is_retried_then_fails_with_a_connect_error() {
    let mut pg = PgServer::start();
    pg.stop();
    let f = fixture(builtin_registry());
    let mut q = configured(
        "q",
        "postgres",
        &[],
        pg.config(json!({"operation": "query", "sql": "SELECT 1"})),
    );
    q.retry = retried(2);
    let (state, events) = run_to_end(
        &f.engine,
        &f.store,
        with_env(plan(vec![q]), "PGPASSWORD", PG_PASSWORD),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(
        started(&events, "q"),
        3,
        "two retries after the first attempt"
    );
    let error = state.stages["q"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(
        error.message.starts_with("postgres: cannot connect"),
        "{}",
        error.message
    );

    // Started again, the same stage succeeds.
    pg.spawn();
    let q = configured(
        "q",
        "postgres",
        &[],
        pg.config(json!({"operation": "query", "sql": "SELECT 1 AS one"})),
    );
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        with_env(plan(vec![q]), "PGPASSWORD", PG_PASSWORD),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);
    assert_eq!(output(&state, "q")["rows"], json!([{"one": 1}]));
}

#[actix_rt::test]
async fn postgres_slow_query_is_cancelled_on_the_server_when_the_stage_times_out() {
    let pg = PgServer::start();
    let f = fixture(builtin_registry());
    let mut slow = configured(
        "slow",
        "postgres",
        &[],
        pg.config(json!({"operation": "query", "sql": "SELECT pg_sleep(120)"})),
    );
    slow.timeout_ms = Some(1_000);
    let (state, _) = run_to_end(
        &f.engine,
        &f.store,
        with_env(plan(vec![slow]), "PGPASSWORD", PG_PASSWORD),
        json!({}),
    )
    .await;
    assert_eq!(state.phase, RunPhase::Failed);
    let error = state.stages["slow"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Timeout, "{}", error.message);
    // Without the cancel request the server would sleep on for two minutes.
    let client = pg.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = client
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        if rows[0].get::<_, i64>(0) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow query still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Redis

const REDIS_PASSWORD: &str = "redis-secret-77";

/// A `redis-server` on a loopback port with a password, no persistence.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = free_port();
        let child =
            Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()))
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--requirepass", REDIS_PASSWORD])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts (scripts/test.sh installs it)");
        wait_listening("redis-server", port);
        RedisServer {
            child: Some(child),
            port,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

async fn redis(port: u16, input: Value) -> Result<Value, ComponentError> {
    let mut input = input;
    input["host"] = json!("127.0.0.1");
    input["port"] = json!(port);
    input["password"] = json!(REDIS_PASSWORD);
    let component = builtin_registry().get("redis").expect("redis");
    component
        .execute(input, context("cache"))
        .await
        .map(|o| o.output)
}

#[tokio::test]
async fn redis_operations_give_flowmason_s_outputs() {
    let server = RedisServer::start();
    let p = server.port;
    let r = redis(
        p,
        json!({"operation": "set", "key": "user:1", "value": {"name": "ada", "n": 1}}),
    )
    .await
    .expect("set");
    assert_eq!(r["set_result"], true);
    assert_eq!(r["value"], Value::Null);
    assert_eq!(r["metadata"]["key"], "user:1");
    let r = redis(p, json!({"operation": "get", "key": "user:1"}))
        .await
        .expect("get");
    assert_eq!(r["value"], json!({"name": "ada", "n": 1}));
    assert_eq!(
        redis(p, json!({"operation": "get", "key": "none"}))
            .await
            .expect("get")["value"],
        Value::Null
    );

    assert_eq!(
        redis(p, json!({"operation": "incr", "key": "hits", "amount": 5}))
            .await
            .expect("incr")["new_value"],
        5
    );
    assert_eq!(
        redis(p, json!({"operation": "decr", "key": "hits"}))
            .await
            .expect("decr")["new_value"],
        4
    );

    let r = redis(
        p,
        json!({"operation": "rpush", "key": "q", "values": ["a", {"b": 2}, 3]}),
    )
    .await
    .expect("rpush");
    assert_eq!(r["new_value"], 3);
    assert_eq!(r["metadata"]["pushed_count"], 3);
    let r = redis(p, json!({"operation": "lrange", "key": "q"}))
        .await
        .expect("lrange");
    assert_eq!(r["values"], json!(["a", {"b": 2}, 3]));
    assert_eq!(
        redis(p, json!({"operation": "lpop", "key": "q"}))
            .await
            .expect("lpop")["value"],
        "a"
    );

    redis(
        p,
        json!({"operation": "hset", "key": "h", "fields": {"x": 1, "y": "why"}}),
    )
    .await
    .expect("hset");
    let r = redis(p, json!({"operation": "hgetall", "key": "h"}))
        .await
        .expect("hgetall");
    assert_eq!(r["hash_fields"], json!({"x": 1, "y": "why"}));
    assert_eq!(
        redis(p, json!({"operation": "hget", "key": "h", "field": "x"}))
            .await
            .expect("hget")["value"],
        1
    );
    assert_eq!(
        redis(p, json!({"operation": "hdel", "key": "h", "field": "x"}))
            .await
            .expect("hdel")["deleted_count"],
        1
    );

    redis(
        p,
        json!({"operation": "sadd", "key": "s", "values": ["b", "a"]}),
    )
    .await
    .expect("sadd");
    assert_eq!(
        redis(p, json!({"operation": "smembers", "key": "s"}))
            .await
            .expect("smembers")["values"],
        json!(["a", "b"])
    );
    assert_eq!(
        redis(
            p,
            json!({"operation": "sismember", "key": "s", "value": "a"})
        )
        .await
        .expect("sismember")["exists"],
        true
    );

    assert_eq!(
        redis(
            p,
            json!({"operation": "expire", "key": "user:1", "expire_seconds": 100})
        )
        .await
        .expect("expire")["expire_set"],
        true
    );
    let ttl = redis(p, json!({"operation": "ttl", "key": "user:1"}))
        .await
        .expect("ttl")["ttl_seconds"]
        .as_i64()
        .expect("ttl");
    assert!((1..=100).contains(&ttl), "{ttl}");
    let r = redis(p, json!({"operation": "keys", "keys_pattern": "user:*"}))
        .await
        .expect("keys");
    assert_eq!(
        (r["keys"].clone(), r["key_count"].clone()),
        (json!(["user:1"]), json!(1))
    );
    assert_eq!(
        redis(p, json!({"operation": "delete", "key": "user:1"}))
            .await
            .expect("delete")["deleted_count"],
        1
    );
    assert_eq!(
        redis(p, json!({"operation": "exists", "key": "user:1"}))
            .await
            .expect("exists")["exists"],
        false
    );

    // The server's own refusals are client errors.
    let err = redis(p, json!({"operation": "lrange", "key": "hits"}))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Client, "{}", err.message);
    assert!(err.message.contains("WRONGTYPE"), "{}", err.message);
    let mut wrong =
        json!({"operation": "get", "key": "k", "host": "127.0.0.1", "port": p, "password": "nope"});
    wrong["db"] = json!(0);
    let err = builtin_registry()
        .get("redis")
        .expect("redis")
        .execute(wrong, context("c"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Client, "{}", err.message);
}

#[actix_rt::test]
async fn redis_unreachable_is_retried_then_fails_and_a_silent_server_times_out() {
    let f = fixture(builtin_registry());
    let port = free_port();
    let mut get = configured(
        "get",
        "redis",
        &[],
        json!({"operation": "get", "key": "k", "host": "127.0.0.1", "port": port}),
    );
    get.retry = retried(2);
    let (state, events) = run_to_end(&f.engine, &f.store, plan(vec![get]), json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(started(&events, "get"), 3);
    let error = state.stages["get"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(
        error.message.starts_with("redis: cannot connect"),
        "{}",
        error.message
    );

    // A server that accepts and never answers: the stage's timeout ends the attempt.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let mut get = configured(
        "get",
        "redis",
        &[],
        json!({"operation": "get", "key": "k", "host": "127.0.0.1", "port": port}),
    );
    get.timeout_ms = Some(500);
    let (state, _) = run_to_end(&f.engine, &f.store, plan(vec![get]), json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(
        state.stages["get"].error.as_ref().expect("error").class,
        ErrorClass::Timeout
    );
    drop(silent);
}

// ---------------------------------------------------------------------------------------------------------
// local_file through `fm`

fn fm(args: &[&str], files_root: Option<&Path>) -> std::process::Output {
    let data = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_fm"));
    command
        .env_remove("FM_DATA_DIR")
        .env_remove("FM_FILES_ROOT")
        .env("FM_LOG", "error")
        .args(args)
        .arg("--data-dir")
        .arg(data.path());
    if let Some(root) = files_root {
        command.arg("--files-root").arg(root);
    }
    command.output().expect("fm runs")
}

const FILES_PIPELINE: &str = r#"
name: files
stages:
  - id: save
    componentType: local_file
    config: {operation: write, path: "out/{{input.name}}.json", content: "{{input.data}}", format: json}
  - id: load
    componentType: local_file
    dependsOn: [save]
    config: {operation: read, path: "out/{{input.name}}.json", format: json}
  - id: table
    componentType: local_file
    config: {operation: parse_csv, path: in/people.csv, csv_options: {delimiter: ";"}}
  - id: listing
    componentType: local_file
    dependsOn: [save]
    config: {operation: list, path: out, pattern: "*.json"}
"#;

#[test]
fn local_file_pipeline_runs_under_files_root_and_refuses_without_one() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("in")).expect("mkdir");
    std::fs::write(
        root.path().join("in/people.csv"),
        "name;age\nada;36\nbob;\n",
    )
    .expect("csv");
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("files.yaml");
    std::fs::write(&file, FILES_PIPELINE).expect("pipeline");
    let file_arg = file.to_str().expect("path");
    let args = [
        "run",
        file_arg,
        "-o",
        "json",
        "--input",
        "name=report",
        "--input",
        r#"data={"ok":[1,2]}"#,
    ];

    let out = fm(&args, Some(root.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let text = outputs.to_string();
    assert!(text.contains(r#""content":{"ok":[1,2]}"#), "{text}");
    assert!(
        text.contains(r#""rows":[{"age":36,"name":"ada"},{"age":null,"name":"bob"}]"#),
        "{text}"
    );
    assert!(text.contains(r#""path":"out/report.json""#), "{text}");
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(root.path().join("out/report.json")).expect("written"),
    )
    .expect("JSON file");
    assert_eq!(written, json!({"ok": [1, 2]}));

    // No root: the stage fails saying how to give one.
    let out = fm(&args, None);
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("--files-root"), "{all}");

    // An escape in a literal path is refused by fm validate, naming the stage and the field.
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\nstages:\n  - id: steal\n    componentType: local_file\n    config: {operation: read, path: ../etc/passwd}\n",
    )
    .expect("pipeline");
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .arg("validate")
        .arg(&bad)
        .output()
        .expect("fm validate");
    assert!(!out.status.success());
    let stderr = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stderr.contains("stages[0].config: local_file: `path` \"../etc/passwd\" contains `..`"),
        "{stderr}"
    );
    assert!(stderr.contains("(stage \"steal\")"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------
// Credentials through fm run: from a Secret (here an env file), masked in what the run records.

#[test]
fn postgres_password_comes_from_a_secret_and_is_masked_and_a_literal_one_is_refused() {
    let pg = PgServer::start();
    let work = tempfile::tempdir().expect("tempdir");
    let env_file = work.path().join("db.env");
    let mut f = std::fs::File::create(&env_file).expect("env file");
    writeln!(f, "password={PG_PASSWORD}").expect("write");
    let pipeline = format!(
        r#"
apiVersion: flowmason.io/v1
kind: Pipeline
metadata:
  name: secret-db
spec:
  env:
    - name: PGPASSWORD
      valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
  stages:
    - id: who
      componentType: postgres
      config:
        operation: query
        host: 127.0.0.1
        port: {port}
        user: {PG_USER}
        database: postgres
        password: "{{{{env.PGPASSWORD}}}}"
        sql: "SELECT current_user AS name, $1::text AS echoed"
        parameters: ["{{{{env.PGPASSWORD}}}}"]
"#,
        port = pg.port
    );
    let file = work.path().join("db.yaml");
    std::fs::write(&file, &pipeline).expect("pipeline");
    let env_arg = format!("db={}", env_file.display());
    let out = fm(
        &[
            "run",
            file.to_str().expect("path"),
            "-o",
            "json",
            "--env-file",
            &env_arg,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""name":"fm""#), "{stdout}");
    assert!(
        stdout.contains(r#""echoed":"***""#),
        "the secret is masked: {stdout}"
    );
    assert!(!stdout.contains(PG_PASSWORD), "{stdout}");

    let literal = pipeline.replace(
        "\"{{env.PGPASSWORD}}\"\n        sql",
        "hunter2-literal\n        sql",
    );
    assert!(literal.contains("hunter2-literal"));
    std::fs::write(&file, &literal).expect("pipeline");
    let out = Command::new(env!("CARGO_BIN_EXE_fm"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("fm validate");
    assert!(!out.status.success());
    let stderr = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stderr.contains("stages[0].config: postgres: `password` holds a credential literally"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// S3 (moto's S3-compatible server)

/// moto's server (`moto_server`, from PyPI into target/pyenv by scripts/test.sh; `MOTO_SERVER` overrides).
struct MotoServer {
    child: Option<Child>,
    port: u16,
}

impl MotoServer {
    fn start() -> Self {
        let bin = std::env::var("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/moto_server")
            });
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} starts (scripts/test.sh installs moto[server]): {e}",
                    bin.display()
                )
            });
        wait_listening("moto_server", port);
        MotoServer {
            child: Some(child),
            port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn create_bucket(&self, bucket: &str) {
        let status = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .expect("create bucket")
            .status();
        assert!(status.is_success(), "{status}");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

async fn s3(endpoint: &str, input: Value) -> Result<Value, ComponentError> {
    let mut input = input;
    input["endpoint_url"] = json!(endpoint);
    input["aws_access_key_id"] = json!("AKIDTESTING");
    input["aws_secret_access_key"] = json!("test-secret-key");
    let component = builtin_registry().get("s3").expect("s3");
    component
        .execute(input, context("bucket"))
        .await
        .map(|o| o.output)
}

#[tokio::test]
async fn s3_operations_give_flowmason_s_outputs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let moto = MotoServer::start();
    moto.create_bucket("reports").await;
    let e = moto.endpoint();
    let r = s3(
        &e,
        json!({"operation": "upload", "bucket": "reports", "key": "2026/jan summary.txt",
        "content": "totals: 42", "content_type": "text/plain", "metadata": {"Owner": "ada"}}),
    )
    .await
    .expect("upload");
    assert_eq!(r["success"], true);
    assert_eq!(r["content_length"], 10);
    assert!(
        r["etag"]
            .as_str()
            .is_some_and(|t| t.len() == 32 && !t.contains('"')),
        "{r}"
    );
    assert_eq!(r["metadata"]["bucket"], "reports");
    assert_eq!(r["metadata"]["acl"], "private");
    assert_eq!(r["presigned_url"], Value::Null);

    let r = s3(
        &e,
        json!({"operation": "download", "bucket": "reports", "key": "2026/jan summary.txt"}),
    )
    .await
    .expect("download");
    assert_eq!(r["content"], "totals: 42");
    assert_eq!(r["content_length"], 10);
    assert_eq!(r["content_type"], "text/plain");
    assert_eq!(r["object_metadata"], json!({"owner": "ada"}));
    assert!(
        r["last_modified"]
            .as_str()
            .is_some_and(|t| t.ends_with("+00:00")),
        "{r}"
    );

    let r = s3(
        &e,
        json!({"operation": "head", "bucket": "reports", "key": "2026/jan summary.txt"}),
    )
    .await
    .expect("head");
    assert_eq!(
        (r["content_length"].clone(), r["content"].clone()),
        (json!(10), Value::Null)
    );

    let r = s3(
        &e,
        json!({"operation": "copy", "bucket": "reports", "key": "latest.txt",
        "source_bucket": "reports", "source_key": "2026/jan summary.txt"}),
    )
    .await
    .expect("copy");
    assert!(r["etag"].as_str().is_some_and(|t| t.len() == 32), "{r}");

    let r = s3(
        &e,
        json!({"operation": "list", "bucket": "reports", "delimiter": "/"}),
    )
    .await
    .expect("list");
    assert_eq!(r["object_count"], 1);
    assert_eq!(r["objects"][0]["key"], "latest.txt");
    assert_eq!(r["objects"][0]["size"], 10);
    assert_eq!(r["objects"][0]["storage_class"], "STANDARD");
    assert_eq!(r["common_prefixes"], json!(["2026/"]));
    let r = s3(
        &e,
        json!({"operation": "list", "bucket": "reports", "prefix": "2026/"}),
    )
    .await
    .expect("list");
    assert_eq!(r["objects"][0]["key"], "2026/jan summary.txt");

    let r = s3(&e, json!({"operation": "presigned_url", "bucket": "reports", "key": "latest.txt", "expires_in": 60})).await.expect("presign");
    let url = r["presigned_url"].as_str().expect("url");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let fetched = reqwest::get(url)
        .await
        .expect("GET presigned")
        .text()
        .await
        .expect("body");
    assert_eq!(fetched, "totals: 42");

    let r = s3(&e, json!({"operation": "delete_many", "bucket": "reports", "keys": ["latest.txt", "2026/jan summary.txt"]})).await.expect("delete_many");
    assert_eq!(r["deleted_count"], 2);
    let r = s3(&e, json!({"operation": "list", "bucket": "reports"}))
        .await
        .expect("list");
    assert_eq!(r["object_count"], 0);

    let err = s3(
        &e,
        json!({"operation": "download", "bucket": "reports", "key": "gone"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Client, "{}", err.message);
    assert!(err.message.contains("NoSuchKey"), "{}", err.message);
    let err = s3(&e, json!({"operation": "list", "bucket": "missing"}))
        .await
        .unwrap_err();
    assert!(err.message.contains("NoSuchBucket"), "{}", err.message);
}

#[actix_rt::test]
async fn s3_credentials_from_env_and_a_stopped_server_is_retried_then_fails() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut moto = MotoServer::start();
    moto.create_bucket("inbox").await;
    let f = fixture(builtin_registry());
    let config = json!({"operation": "upload", "bucket": "inbox", "key": "k", "content": "v",
        "endpoint_url": moto.endpoint(),
        "aws_access_key_id": "{{env.AWS_ACCESS_KEY_ID}}", "aws_secret_access_key": "{{env.AWS_SECRET_ACCESS_KEY}}"});
    let spec = with_env(
        with_env(
            plan(vec![configured("put", "s3", &[], config.clone())]),
            "AWS_ACCESS_KEY_ID",
            "AKIDTESTING",
        ),
        "AWS_SECRET_ACCESS_KEY",
        "test-secret-key",
    );
    let (state, _) = run_to_end(&f.engine, &f.store, spec.clone(), json!({})).await;
    assert_eq!(state.phase, RunPhase::Succeeded, "{:?}", state.error);

    kill(&mut moto.child);
    let mut spec = spec;
    spec.stages[0].retry = retried(2);
    let (state, events) = run_to_end(&f.engine, &f.store, spec, json!({})).await;
    assert_eq!(state.phase, RunPhase::Failed);
    assert_eq!(started(&events, "put"), 3);
    let error = state.stages["put"].error.clone().expect("error");
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(error.message.contains("no answer"), "{}", error.message);
}

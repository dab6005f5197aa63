//! Durability across a power loss and a full disk, checked on real `fm` processes.
//!
//! - Power loss: `fm` runs under `strace -f -y`, and every acknowledgement (the output `fm run` prints on
//!   stdout; a `201 Created` that `fm serve` writes on a socket) must be preceded by an fdatasync/fsync of
//!   every sled file written before it (the log `db`, large values in `blobs/`), and of the directory of
//!   every file created in it. A `sync_file_range` (all sled's `flush()` does) does not count.
//! - Full disk: a small tmpfs is filled while `fm serve` runs (skipped with a printed reason where mount is
//!   not permitted).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{KillOnDrop, fm, repo, text};

/// The syscalls the check needs: writes, acks, syncs and file creation.
const TRACED: &str = "trace=write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,\
                      fsync,fdatasync,sync_file_range,openat";

fn strace() -> Option<PathBuf> {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("strace"))
}

/// One traced syscall start or end, as `strace -f -y` prints it.
#[derive(Debug)]
struct Call<'a> {
    pid: &'a str,
    name: &'a str,
    /// The path of the first argument's fd (`-y`), when it is an fd.
    fd: Option<(&'a str, &'a str)>,
    starts: bool,
    /// The result, with its fd path for calls returning an fd, when the call ended on this line.
    result: Option<&'a str>,
    line: &'a str,
}

fn parse(line: &str) -> Option<Call<'_>> {
    let (pid, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let result = rest.rsplit_once(") = ").map(|(_, r)| r).or_else(|| {
        rest.contains("resumed>")
            .then(|| rest.rsplit_once(" = ").map(|(_, r)| r))
            .flatten()
    });
    if let Some(resumed) = rest.strip_prefix("<... ") {
        let name = resumed.split_whitespace().next()?;
        return Some(Call {
            pid,
            name,
            fd: None,
            starts: false,
            result,
            line,
        });
    }
    let (name, args) = rest.split_once('(')?;
    let fd = args.split_once('<').and_then(|(num, tail)| {
        let num = num.trim();
        (!num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
            .then(|| tail.split_once('>').map(|(path, _)| (num, path)))
            .flatten()
    });
    Some(Call {
        pid,
        name,
        fd,
        starts: true,
        result: if rest.contains("<unfinished ...>") {
            None
        } else {
            result
        },
        line,
    })
}

/// Replays a trace and returns every acknowledgement that was not preceded by a sync of what was written
/// under `dirs` before it (with what was not synced). `is_ack` says whether a write call acknowledges.
fn unsynced_acks(trace: &str, dirs: &[PathBuf], is_ack: &dyn Fn(&Call) -> bool) -> Vec<String> {
    let watched = |path: &str| dirs.iter().any(|d| Path::new(path).starts_with(d));
    // Path -> number of the last write that made it dirty.
    let mut dirty: HashMap<String, usize> = HashMap::new();
    // Per pid: a sync in progress (path, the write count when it started), or an openat in progress.
    let mut syncing: HashMap<&str, (String, usize)> = HashMap::new();
    let mut writes = 0usize;
    let mut acks = 0usize;
    let mut failures = Vec::new();
    for line in trace.lines() {
        let Some(call) = parse(line) else { continue };
        let is_write = matches!(
            call.name,
            "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "sendto" | "sendmsg"
        );
        if call.starts && is_write {
            if is_ack(&call) {
                acks += 1;
                if !dirty.is_empty() {
                    let mut paths: Vec<_> = dirty.keys().cloned().collect();
                    paths.sort();
                    failures.push(format!("{}\n  not synced: {paths:?}", call.line));
                }
            } else if let Some((_, path)) = call.fd
                && watched(path)
            {
                writes += 1;
                dirty.insert(path.to_string(), writes);
            }
        }
        if matches!(call.name, "fsync" | "fdatasync") {
            if call.starts
                && let Some((_, path)) = call.fd
            {
                syncing.insert(call.pid, (path.to_string(), writes));
            }
            if call.result.is_some_and(|r| r.starts_with('0'))
                && let Some((path, at_start)) = syncing.remove(call.pid)
                && dirty.get(&path).is_some_and(|w| *w <= at_start)
            {
                dirty.remove(&path);
            }
        }
        if call.name == "openat"
            && call.line.contains("O_CREAT")
            && let Some(result) = call.result
            && let Some((_, tail)) = result.split_once('<')
            && let Some((path, _)) = tail.split_once('>')
            && watched(path)
            && let Some(parent) = Path::new(path).parent()
        {
            writes += 1;
            dirty.insert(parent.display().to_string(), writes);
        }
    }
    assert!(acks > 0, "no acknowledgement found in the trace:\n{trace}");
    failures
}

#[test]
fn unsynced_acks_are_found_in_a_trace() {
    let dir = PathBuf::from("/d/events");
    let trace = "\
7 pwrite64(5</d/events/db>, \"x\", 1, 0) = 1
7 sync_file_range(5</d/events/db>, 0, 1, 7) = 0
7 write(1<pipe:[1]>, \"{}\", 2) = 2
7 pwrite64(5</d/events/db>, \"x\", 1, 1 <unfinished ...>
8 fdatasync(5</d/events/db> <unfinished ...>
7 <... pwrite64 resumed>) = 1
8 <... fdatasync resumed>) = 0
7 write(1<pipe:[1]>, \"{}\", 2) = 2
9 openat(AT_FDCWD</>, \"/d/events/blobs/3\", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 6</d/events/blobs/3>
9 write(6</d/events/blobs/3>, \"b\", 1) = 1
9 fdatasync(6</d/events/blobs/3>) = 0
7 write(1<pipe:[1]>, \"{}\", 2) = 2
9 fsync(4</d/events/blobs>) = 0
7 write(1<pipe:[1]>, \"{}\", 2) = 2
";
    let ack = |c: &Call| c.fd.is_some_and(|(fd, _)| fd == "1");
    let failures = unsynced_acks(trace, &[dir], &ack);
    // The first ack follows only a sync_file_range; the third comes before the blob's directory is synced.
    // The second is covered by an fdatasync that started after the write did (strace order): counted.
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert!(failures[0].contains("/d/events/db"), "{}", failures[0]);
    assert!(failures[1].contains("/d/events/blobs\""), "{}", failures[1]);
}

/// `fm run` under strace: the run's output (the ack that it ended) comes only after the log is synced.
fn run_acks_follow_a_sync(durability: &str) {
    let Some(strace) = strace() else {
        eprintln!("SKIPPED: strace is not installed (scripts/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let trace_path = dir.path().join("trace");
    let out = Command::new(strace)
        .args(["-f", "-y", "-qq", "-s", "64", "-e", TRACED, "-o"])
        .arg(&trace_path)
        .arg(env!("CARGO_BIN_EXE_fm"))
        .args([
            "run",
            "--durability",
            durability,
            "-o",
            "json",
            "--data-dir",
        ])
        .arg(&data)
        .arg(repo("examples/hello.yaml"))
        .env_remove("FM_DATA_DIR")
        .env("FM_LOG", "error")
        .output()
        .expect("strace runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    // The ack is a write to `fm run`'s stdout: the pipe the result (its last line) went to. Expression
    // worker processes (`jmespath_expression`, compiled when the pipeline is validated) answer on their
    // own stdout, a different pipe, which acknowledges nothing.
    let stdout_pipe = trace
        .lines()
        .rev()
        .filter_map(parse)
        .filter(|c| c.starts && c.name == "write")
        .filter_map(|c| c.fd.filter(|(fd, _)| *fd == "1"))
        .map(|(_, pipe)| pipe)
        .next()
        .expect("fm run wrote its result");
    let ack = |c: &Call| c.fd == Some(("1", stdout_pipe));
    let failures = unsynced_acks(&trace, &[data.join("events")], &ack);
    assert!(
        failures.is_empty(),
        "fm run --durability {durability} printed its result before syncing:\n{}",
        failures.join("\n")
    );
}

#[test]
fn run_prints_its_result_only_after_the_event_log_is_synced_under_always() {
    run_acks_follow_a_sync("always");
}

#[test]
fn run_prints_its_result_only_after_the_event_log_is_synced_under_batch() {
    run_acks_follow_a_sync("batch");
}

/// Starts `fm serve` (API only) on `data` through `wrapper` (e.g. strace); returns it and its URL.
fn serve(wrapper: Option<Command>, data: &Path) -> (KillOnDrop, String) {
    let mut command = match wrapper {
        Some(mut w) => {
            w.arg(env!("CARGO_BIN_EXE_fm"));
            w
        }
        None => fm(),
    };
    let mut child = command
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-controllers",
            "--no-triggers",
            "--data-dir",
        ])
        .arg(data)
        .env_remove("FM_DATA_DIR")
        .env("FM_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fm serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("fm serve printed its address")
            .expect("read stdout");
        if let Some(url) = line.strip_prefix("FlowMason API server listening on ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (KillOnDrop(child), url)
}

/// One HTTP/1.1 request on loopback; the status code and the body.
fn http(url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn configmap(name: &str, value: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"value": value},
    })
    .to_string()
}

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn serve_answers_a_write_only_after_the_api_store_is_synced() {
    let Some(strace) = strace() else {
        eprintln!("SKIPPED: strace is not installed (scripts/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let trace_path = dir.path().join("trace");
    let mut wrapper = Command::new(strace);
    wrapper
        .args(["-f", "-y", "-qq", "-s", "64", "-e", TRACED, "-o"])
        .arg(&trace_path);
    let (mut server, url) = serve(Some(wrapper), &data);
    // Small objects go to the log; one large enough goes to a file of its own under blobs/.
    for (name, value) in [
        ("small-1", "x".to_string()),
        ("large", "y".repeat(600 * 1024)),
        ("small-2", "z".to_string()),
    ] {
        let (status, body) = http(&url, "POST", CONFIGMAPS, &configmap(name, &value));
        assert_eq!(status, 201, "{body}");
    }
    // strace exits with fm: SIGTERM to fm (the first pid in the trace), then wait.
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    let pid = trace.split_whitespace().next().expect("a traced call");
    let killed = Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "fm serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    let ack = |c: &Call| c.line.contains("\"HTTP/1.1 201");
    let failures = unsynced_acks(&trace, &[data.join("api").join("db")], &ack);
    assert!(
        failures.is_empty(),
        "fm serve answered writes before syncing them:\n{}",
        failures.join("\n")
    );
    assert!(
        trace.contains("/api/db/blobs/"),
        "the large object was not written to a blob file"
    );
}

/// A small tmpfs mounted for one test, unmounted when it drops.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not permitted.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (root is needed): {}",
                    text(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with one file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Waits for `child` to exit; its exit code.
fn exit_code(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "fm did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes ConfigMaps of `size` bytes until one is refused; that answer.
fn write_until_refused(url: &str, size: usize) -> (u16, String) {
    for i in 0..200 {
        let (status, body) = http(
            url,
            "POST",
            CONFIGMAPS,
            &configmap(&format!("fill-{i}"), &"f".repeat(size)),
        );
        if status != 201 {
            return (status, body);
        }
    }
    panic!("200 writes were accepted on a full disk");
}

#[test]
fn serve_on_a_full_disk_refuses_writes_says_not_ready_and_exits_for_a_restart_when_space_returns() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let data = fs.path().join("data");
    let (mut server, url) = serve(None, &data);
    let (status, body) = http(&url, "POST", CONFIGMAPS, &configmap("kept", "acknowledged"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(http(&url, "GET", "/readyz", "").0, 200);

    let filler = fs.fill();
    let (status, body) = write_until_refused(&url, 64 * 1024);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    let (status, body) = http(&url, "GET", "/readyz", "");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("apiStore") && body.contains("No space left on device"),
        "{body}"
    );
    // Refused at once from now on, even a small write.
    let (status, body) = http(&url, "POST", CONFIGMAPS, &configmap("late", "x"));
    assert_eq!(status, 500, "{body}");
    assert_eq!(http(&url, "GET", "/healthz", "").0, 200);

    // Space is back: the process exits so that a restart reopens the stores.
    std::fs::remove_file(filler).expect("free space");
    assert_eq!(
        exit_code(&mut server.0, Duration::from_secs(60)),
        Some(flowmason::cli::EXIT_STORAGE)
    );
    drop(server);
    let (_server, url) = serve(None, &data);
    let (status, body) = http(&url, "GET", &format!("{CONFIGMAPS}/kept"), "");
    assert_eq!(status, 200, "the acknowledged write is lost: {body}");
    let (status, body) = http(&url, "POST", CONFIGMAPS, &configmap("after", "x"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(http(&url, "GET", "/readyz", "").0, 200);
}

#[test]
fn serve_ends_on_sigterm_while_its_store_cannot_write() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let (mut server, url) = serve(None, &fs.path().join("data"));
    fs.fill();
    let (status, body) = write_until_refused(&url, 64 * 1024);
    assert_eq!(status, 500, "{body}");
    let killed = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    exit_code(&mut server.0, Duration::from_secs(60));
}

#[test]
fn run_on_a_full_disk_says_so_naming_the_event_log() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    fs.fill();
    let data = fs.path().join("data");
    let out = fm()
        .args(["run", "-o", "json", "--data-dir"])
        .arg(&data)
        .arg(repo("examples/hello.yaml"))
        .output()
        .expect("fm runs");
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(flowmason::cli::EXIT_STORAGE),
        "{stderr}"
    );
    assert!(
        stderr.contains("no space left on device")
            && stderr.contains(&data.join("events").display().to_string())
            && !stderr.contains("another fm"),
        "{stderr}"
    );
}

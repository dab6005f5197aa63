//! `fm serve` (API server + controllers + engine) started as a child process on 127.0.0.1:0 for a test,
//! reached with a kube-rs client or kubectl through the kubeconfig it prints, and stopped with SIGTERM or
//! killed (`#[path = "support/serve.rs"] mod serve;`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kube::Client;

#[path = "kubectl.rs"]
mod kubectl;

use kubectl::Kubectl;

/// The line on which `fm operator` prints the address of its HTTP port (history API, UI, metrics).
pub const OPERATOR_HTTP_LINE: &str =
    "history API, web UI (/ui/), /metrics, /healthz and /readyz on ";

/// The address an `fm operator` child started with a piped stderr prints for its HTTP port; the rest of
/// its stderr is read (and dropped) on a thread so that the child never blocks on a full pipe.
pub fn operator_http_address(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix(OPERATOR_HTTP_LINE).map(String::from))
        .expect("the operator prints its HTTP address");
    std::thread::spawn(move || lines.for_each(drop));
    address
}

/// A running `fm serve` (or another `fm` server command), killed on drop.
pub struct Fm {
    pub child: Child,
    pub kubeconfig: PathBuf,
}

impl Fm {
    /// Starts `fm <args>` and waits for its `export KUBECONFIG=` line.
    pub fn start(args: &[&str]) -> Fm {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fm"))
            .args(args)
            .env_remove("FM_DATA_DIR")
            .env("FM_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fm starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut kubeconfig = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read stdout");
            if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
                kubeconfig = Some(PathBuf::from(path));
                break;
            }
        }
        Fm {
            child,
            kubeconfig: kubeconfig.expect("fm serve prints its kubeconfig"),
        }
    }

    /// `fm serve` on `data`, with `extra` arguments.
    pub fn serve(data: &Path, extra: &[&str]) -> Fm {
        let dir = data.to_str().expect("path");
        let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--data-dir", dir];
        args.extend_from_slice(extra);
        Fm::start(&args)
    }

    pub async fn client(&self) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let file = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("config");
        Client::try_from(config).expect("client")
    }

    /// The server URL the kubeconfig names (the API server, and next to it the history API and
    /// /metrics).
    pub fn url(&self) -> String {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
            .expect("server url")
    }

    /// Stops the process with SIGTERM (a graceful stop) and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// kubectl against this server: whether it exited 0, and its stdout followed by its stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        Kubectl::new(&self.kubeconfig).output(args, stdin)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

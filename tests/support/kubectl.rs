//! The real `kubectl` against a test server (`fm serve`'s API or the in-process one), shared by the test
//! binaries that drive it as users do (`#[path = "support/kubectl.rs"] mod kubectl;`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kubectl binary: `$KUBECTL`, else the first on PATH (scripts/test.sh installs Debian's
/// `kubernetes-client` when none is there).
pub fn kubectl_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return PathBuf::from(path);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("kubectl");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("kubectl not found on PATH (scripts/test.sh installs the kubernetes-client package)");
}

/// kubectl pointed at one kubeconfig, with its HOME (and so its cache) next to it.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// [`kubectl_path`]'s kubectl with `kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin: kubectl_path(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.kubeconfig.parent().expect("dir"))
            .env_remove("KUBERNETES_SERVICE_HOST");
        command
    }

    /// Runs kubectl to completion on a blocking thread; asserts it exits 0; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args).await;
        assert_eq!(code, Some(0), "kubectl {args:?} failed: {err}");
        out
    }

    /// Runs kubectl to completion on a blocking thread: its exit code, stdout and stderr.
    pub async fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut command = self.command(args);
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("kubectl runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl with `stdin` as its input (for `apply -f -`): whether it exited 0, and its stdout
    /// followed by its stderr.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("kubectl ends");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

//! `fm operator` replicas sharing one JetStream event log, as real processes: the API server
//! (`fm serve --no-controllers --no-triggers`), a 3-node NATS cluster and any number of replicas, each
//! started, SIGKILLed, SIGSTOPped and continued, stopped with SIGTERM and restarted under its identity;
//! their shard Leases and `/metrics` read as a test checks them. Everything is killed on drop.
//! (`#[path = "support/replicas.rs"] mod replicas;`, next to `serve.rs`, `nats.rs` and `wait.rs`.)

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client};
use rustix::process::{Pid, Signal, kill_process};

use crate::nats::NatsCluster;
use crate::serve::{Fm, OPERATOR_HTTP_LINE as HTTP_LINE};

/// The namespace of the Leases (the operator's default `--lease-namespace`).
pub const LEASE_NAMESPACE: &str = "default";

/// How the replicas of one test are configured.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// `--lease-seconds`: short, so that failover is quick.
    pub lease_seconds: u32,
    /// `--shards`.
    pub shards: u32,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            lease_seconds: 3,
            shards: 16,
        }
    }
}

/// One `fm operator` replica: its identity, data dir and current process.
pub struct Replica {
    pub identity: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `http://127.0.0.1:port` of the current process's HTTP port (/metrics).
    pub http: String,
}

impl Replica {
    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fm"))
            .args(&self.args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("FM_LOG", "error")
            .env_remove("FM_DATA_DIR")
            .env_remove("FM_HTTP_TOKEN_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fm operator starts");
        let stderr = child.stderr.take().expect("stderr");
        let (found, address) = mpsc::channel();
        let identity = self.identity.clone();
        // Read on a thread of its own (a replica that never prints its address fails the test instead
        // of hanging it); later lines are the replica's errors, shown under its identity.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.strip_prefix(HTTP_LINE) {
                    Some(address) if !sent => {
                        sent = found.send(address.to_string()).is_ok();
                    }
                    _ => eprintln!("[{identity}] {line}"),
                }
            }
        });
        match address.recv_timeout(Duration::from_secs(90)) {
            Ok(http) => self.http = http,
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "replica {} did not print its HTTP address ({e})",
                    self.identity
                )
            }
        }
        self.child = Some(child);
    }

    /// The process id of the running process.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("replica {} is not running", self.identity))
    }

    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a valid pid");
        kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("signal {signal:?} to {}: {e}", self.identity));
    }

    /// SIGKILL: the replica dies with its runs in flight.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stalls (no renewals, no appends) until [`Replica::resume`].
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// SIGCONT after [`Replica::pause`].
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// SIGTERM, then waits for the graceful stop to end (it hands its shards back).
    pub fn terminate(&mut self) {
        self.signal(Signal::TERM);
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if start.elapsed() < crate::wait::PATIENCE => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                outcome => {
                    let _ = child.kill();
                    panic!(
                        "replica {} did not stop after SIGTERM: {outcome:?}",
                        self.identity
                    );
                }
            }
        }
    }

    /// Starts the process again with the same identity, arguments and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("/metrics of {}: {e}", self.identity))
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused process must be continued to die of SIGKILL promptly; SIGKILL works either way.
            self.kill();
        }
    }
}

/// The value of the sample `name` (with exactly these labels, `name{..}` form or bare) in `/metrics`
/// text, 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == sample).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// Who holds one shard Lease, as read from the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub holder: Option<String>,
    /// Unix microseconds until which the holder's claim is valid (renewTime + leaseDurationSeconds).
    pub valid_until: Option<i64>,
}

impl Holding {
    /// A holder whose claim has not expired at `now` (Unix microseconds).
    pub fn valid_holder(&self, now: i64) -> Option<&str> {
        let holder = self.holder.as_deref().filter(|h| !h.is_empty())?;
        (self.valid_until? > now).then_some(holder)
    }
}

/// Unix microseconds now (the clock the replicas write renewTime with: the same machine).
pub fn now_micros() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_micros()).expect("micros fit")
}

fn holding(lease: &Lease) -> Holding {
    let spec = lease.spec.clone().unwrap_or_default();
    let valid_until = spec
        .renew_time
        .as_ref()
        .zip(spec.lease_duration_seconds)
        .map(|(renewed, seconds)| renewed.0.as_microsecond() + i64::from(seconds) * 1_000_000);
    Holding {
        holder: spec.holder_identity,
        valid_until,
    }
}

/// Every Lease of the lease namespace (found by name rather than by label, so that a Lease missing its
/// label is still seen).
async fn leases(client: &Client) -> Vec<Lease> {
    Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .list(&ListParams::default())
        .await
        .expect("list Leases")
        .items
}

/// The shard Leases `flowmason-shard-<i>` by shard.
pub async fn shard_leases(client: &Client) -> BTreeMap<u32, Holding> {
    leases(client)
        .await
        .iter()
        .filter_map(|l| {
            let name = l.metadata.name.as_deref()?;
            let shard = name.strip_prefix("flowmason-shard-")?.parse().ok()?;
            Some((shard, holding(l)))
        })
        .collect()
}

/// Identities of the replicas whose membership Lease `flowmason-replica-<id>` is valid now.
pub async fn live_members(client: &Client) -> Vec<String> {
    let now = now_micros();
    let mut live: Vec<String> = leases(client)
        .await
        .iter()
        .filter(|l| {
            l.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("flowmason-replica-"))
        })
        .filter_map(|l| holding(l).valid_holder(now).map(String::from))
        .collect();
    live.sort();
    live
}

/// The fair share of each of `members` (sorted by identity) of `shards` shards, as DESIGN-12 fixes it:
/// member k targets `n / m + (k < n % m)`.
pub fn fair_shares(members: &[String], shards: u32) -> BTreeMap<String, u32> {
    let m = u32::try_from(members.len()).expect("few members");
    members
        .iter()
        .enumerate()
        .map(|(k, id)| {
            let k = u32::try_from(k).expect("few members");
            (id.clone(), shards / m + u32::from(k < shards % m))
        })
        .collect()
}

/// Valid shard holdings per replica identity at `now`, and the shards without a valid holder.
pub fn holdings_by_replica(
    leases: &BTreeMap<u32, Holding>,
    shards: u32,
    now: i64,
) -> (BTreeMap<String, u32>, Vec<u32>) {
    let mut held = BTreeMap::new();
    let mut unowned = Vec::new();
    for shard in 0..shards {
        match leases.get(&shard).and_then(|h| h.valid_holder(now)) {
            Some(holder) => *held.entry(holder.to_string()).or_insert(0) += 1,
            None => unowned.push(shard),
        }
    }
    (held, unowned)
}

/// The processes of one test: NATS cluster, API server and replicas of one JetStream stream.
pub struct Cluster {
    pub config: ReplicaConfig,
    // Replicas first: they stop before the servers they use.
    pub replicas: BTreeMap<String, Replica>,
    pub api: Fm,
    pub nats: NatsCluster,
    _api_dir: tempfile::TempDir,
    pub client: Client,
    /// The JetStream stream of the event log.
    pub stream: String,
}

impl Cluster {
    /// A 3-node NATS cluster and the API server; no replica yet.
    pub async fn start(config: ReplicaConfig) -> Cluster {
        let nats = NatsCluster::start(3);
        let api_dir = tempfile::tempdir().expect("tempdir");
        let api = Fm::serve(api_dir.path(), &["--no-controllers", "--no-triggers"]);
        let client = api.client().await;
        Cluster {
            config,
            replicas: BTreeMap::new(),
            api,
            nats,
            _api_dir: api_dir,
            client,
            stream: "FLOWMASON_EVENTS".into(),
        }
    }

    /// The `fm operator` arguments of replica `identity` (without `--data-dir`).
    fn operator_args(&self, identity: &str) -> Vec<String> {
        let kubeconfig = self.api.kubeconfig.to_str().expect("path").to_string();
        [
            "operator",
            "--kubeconfig",
            &kubeconfig,
            "--event-log",
            "jetstream",
            "--event-nats",
            &self.nats.url_list(),
            "--event-replicas",
            "3",
            "--event-stream",
            &self.stream,
            "--shards",
            &self.config.shards.to_string(),
            "--identity",
            identity,
            "--lease-seconds",
            &self.config.lease_seconds.to_string(),
            "--http-bind",
            "127.0.0.1:0",
            "--webhook-bind",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts replica `identity` (a new process; its data dir is its own).
    pub fn add_replica(&mut self, identity: &str) {
        let mut replica = Replica {
            identity: identity.into(),
            args: self.operator_args(identity),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            http: String::new(),
        };
        replica.spawn();
        self.replicas.insert(identity.into(), replica);
    }

    pub fn replica(&mut self, identity: &str) -> &mut Replica {
        self.replicas
            .get_mut(identity)
            .unwrap_or_else(|| panic!("no replica {identity}"))
    }

    /// Stops replica `identity` with SIGTERM and forgets it (a scale down).
    pub fn remove_replica(&mut self, identity: &str) {
        let mut replica = self
            .replicas
            .remove(identity)
            .unwrap_or_else(|| panic!("no replica {identity}"));
        replica.terminate();
    }

    /// Waits until every shard has a valid holder and each of `members` (all live, no one else)
    /// holds exactly its fair share; returns the holdings.
    pub async fn converged(&self, members: &[&str]) -> BTreeMap<String, u32> {
        let mut members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        members.sort();
        let wanted = fair_shares(&members, self.config.shards);
        crate::wait::eventually(&format!("shards balanced as {wanted:?}"), || async {
            if live_members(&self.client).await != members {
                return None;
            }
            let leases = shard_leases(&self.client).await;
            let (held, unowned) = holdings_by_replica(&leases, self.config.shards, now_micros());
            (unowned.is_empty() && held == wanted).then_some(held)
        })
        .await
    }

    /// The replicas' shard metrics, `identity: (flowmason_shards_owned, takeovers total)`.
    pub async fn shard_metrics(&self) -> BTreeMap<String, (f64, f64)> {
        let mut out = BTreeMap::new();
        for (id, replica) in &self.replicas {
            let text = replica.metrics().await;
            let takeovers = metric(
                &text,
                "flowmason_shard_takeovers_total{after_crash=\"true\"}",
            ) + metric(
                &text,
                "flowmason_shard_takeovers_total{after_crash=\"false\"}",
            );
            out.insert(
                id.clone(),
                (metric(&text, "flowmason_shards_owned"), takeovers),
            );
        }
        out
    }

    /// The NATS URLs of the event log.
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats.urls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_give_the_remainder_to_the_first_members() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let shares = fair_shares(&members, 16);
        assert_eq!(shares.values().copied().collect::<Vec<_>>(), [6, 5, 5]);
    }

    #[test]
    fn metric_reads_the_sample_with_its_labels_and_zero_when_absent() {
        let text = "# HELP x\nflowmason_shards_owned 5\nflowmason_x{a=\"1\"} 2.5\n";
        assert_eq!(metric(text, "flowmason_shards_owned"), 5.0);
        assert_eq!(metric(text, "flowmason_x{a=\"1\"}"), 2.5);
        assert_eq!(metric(text, "flowmason_y"), 0.0);
    }
}

//! Expression worker processes: where jq filters and JMESPath expressions are evaluated.
//!
//! Neither jaq nor the jmespath crate can be interrupted from inside: `last(range(1e15))` never yields,
//! `[range(1e9)]` allocates until the process dies, a recursive jq definition overflows the stack. A
//! thread cannot be stopped from outside either, so a stage's timeout or cancellation could never end such
//! an evaluation. They therefore run in worker processes: `fm` re-executed with the hidden subcommand
//! [`WORKER_COMMAND`], one job at a time, JSON lines over stdin/stdout. A worker limits its own address
//! space (`RLIMIT_AS`, [`WorkerLimits::memory_bytes`]) and, per job, its CPU time (`RLIMIT_CPU`,
//! [`WorkerLimits::cpu_seconds`], a backstop for stages without a timeout). The engine kills it
//! (SIGKILL) as soon as the attempt waiting for it ends: timed out, cancelled, its run ended. A worker
//! that crashed or was killed is not reused; the next job starts a new one. Idle workers are kept (up to
//! [`MAX_IDLE`]) so that a job costs a round trip over pipes, not a process start (see BENCHMARKS.md).
//!
//! The answer is bounded too: a worker refuses to send a result larger than
//! [`WorkerLimits::max_output_bytes`], and the engine reads no more than that.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use flowmason_actors::ComponentError;
use flowmason_actors::limits::DEFAULT_MAX_OUTPUT_BYTES;
use flowmason_store::ErrorClass;

/// The hidden `fm` subcommand a worker runs.
pub const WORKER_COMMAND: &str = "__eval-worker";

/// Idle workers kept for reuse.
pub const MAX_IDLE: usize = 4;

/// Workers evaluating at once; further jobs wait for one to finish (their stage's timeout still runs),
/// so that many stages of runaway filters cannot each take [`WorkerLimits::memory_bytes`].
pub const MAX_BUSY: usize = 8;

static BUSY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BUSY);

/// What one evaluation is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Runs jq filter `code` on each input: per input, `null` for no output, the value for one, an array
    /// for several.
    Jq { code: String, inputs: Vec<Value> },
    /// Searches each input with a JMESPath expression.
    Jmespath {
        expression: String,
        inputs: Vec<Value>,
    },
}

/// A worker's answer: `Err` when the job could not start (the filter does not compile), else one result
/// per input (`Err` with the message when evaluation failed on that input).
pub type Answer = Result<Vec<Result<Value, String>>, String>;

/// Limits a worker runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// The worker's address space (`RLIMIT_AS`): allocation beyond it fails and the worker ends.
    pub memory_bytes: u64,
    /// CPU seconds one job may use (`RLIMIT_CPU`, raised before each job).
    pub cpu_seconds: u64,
    /// The largest answer, as JSON, a worker sends.
    pub max_output_bytes: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            memory_bytes: 2 * 1024 * 1024 * 1024,
            cpu_seconds: 300,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Sets the program workers run (`fm` itself: `std::env::current_exe()`) and their limits, once, before
/// the first job. Without it the pool looks for `fm` next to the running executable (tests).
pub fn configure(program: PathBuf, limits: WorkerLimits) {
    let _ = POOL.set(Pool::new(Some(program), limits));
}

/// Runs `job` in a worker. `what` prefixes error messages (`json_transform: jq filter`). A cancelled
/// `cancel`, or dropping the returned future, kills the worker.
pub async fn run(
    job: &Job,
    what: &str,
    cancel: &CancellationToken,
) -> Result<Answer, ComponentError> {
    let pool = POOL.get_or_init(|| Pool::new(None, WorkerLimits::default()));
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(ComponentError::new(
            ErrorClass::Cancelled,
            format!("{what}: cancelled"),
        )),
        answer = pool.run(job, what) => answer,
    }
}

static POOL: OnceLock<Pool> = OnceLock::new();

struct Pool {
    program: Option<PathBuf>,
    limits: WorkerLimits,
    idle: Mutex<Vec<Worker>>,
}

/// A worker process and its pipes. The pipes are plain blocking ones, used on tokio's blocking threads:
/// a worker outlives any one tokio runtime (tests start many), which pipes registered with a runtime
/// would not.
struct Worker {
    process: Arc<Mutex<Child>>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Kills (SIGKILL) and reaps the worker when dropped while armed: whoever drops a job mid-way (a timeout,
/// a cancellation, the end of the run) ends its evaluation, and the blocked read of its answer ends too.
struct KillOnDrop(Option<Arc<Mutex<Child>>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(process) = self.0.take()
            && let Ok(mut child) = process.lock()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pool {
    fn new(program: Option<PathBuf>, limits: WorkerLimits) -> Pool {
        Pool {
            program,
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn program(&self) -> Result<PathBuf, ComponentError> {
        if let Some(program) = &self.program {
            return Ok(program.clone());
        }
        // Test executables live in target/<profile>/deps, `fm` in target/<profile>.
        let exe = std::env::current_exe().map_err(|e| {
            ComponentError::internal(format!("cannot find the expression worker program: {e}"))
        })?;
        let name = format!("fm{}", std::env::consts::EXE_SUFFIX);
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                ComponentError::internal(format!(
                    "cannot find the expression worker program {name:?} near {}",
                    exe.display()
                ))
            })
    }

    fn spawn(&self) -> Result<Worker, ComponentError> {
        let program = self.program()?;
        let mut child = Command::new(&program)
            .arg(WORKER_COMMAND)
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string())
            .arg("--cpu-seconds")
            .arg(self.limits.cpu_seconds.to_string())
            .arg("--max-output-bytes")
            .arg(self.limits.max_output_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                ComponentError::internal(format!(
                    "cannot start the expression worker {}: {e}",
                    program.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ComponentError::internal(
                "the expression worker has no stdin/stdout pipes",
            ));
        };
        Ok(Worker {
            process: Arc::new(Mutex::new(child)),
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    async fn run(&'static self, job: &Job, what: &str) -> Result<Answer, ComponentError> {
        let mut request = serde_json::to_vec(job)
            .map_err(|e| ComponentError::internal(format!("{what}: cannot encode the job: {e}")))?;
        request.push(b'\n');
        let _permit = BUSY.acquire().await.map_err(|e| {
            ComponentError::internal(format!("{what}: no expression worker available: {e}"))
        })?;
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let worker = match idle {
            Some(worker) => worker,
            None => self.spawn()?,
        };
        let mut guard = KillOnDrop(Some(worker.process.clone()));
        let limits = self.limits;
        let exchange = tokio::task::spawn_blocking(move || {
            let mut worker = worker;
            let result = exchange(&mut worker, &request, limits.max_output_bytes);
            (worker, result)
        });
        let (worker, result) = exchange
            .await
            .map_err(|e| ComponentError::internal(format!("{what}: worker task failed: {e}")))?;
        let line = match result {
            Ok(line) => line,
            Err(Exchange::Died(why)) => {
                // Dropping the guard kills and reaps it; its status says why it ended.
                drop(guard);
                let status = worker
                    .process
                    .lock()
                    .ok()
                    .and_then(|mut child| child.try_wait().ok().flatten());
                let why = match status.map(|s| (s.signal(), s)) {
                    Some((Some(signal), _)) => format!("the worker was killed by signal {signal}"),
                    Some((None, status)) => format!("the worker exited with {status}"),
                    None => why,
                };
                return Err(ComponentError::new(
                    ErrorClass::Config,
                    format!(
                        "{what}: evaluation was stopped ({why}); it may exceed the worker's limits of {} MiB of memory or {} s of CPU, or recurse without end",
                        limits.memory_bytes / (1024 * 1024),
                        limits.cpu_seconds
                    ),
                ));
            }
            Err(Exchange::TooLarge) => {
                return Err(ComponentError::config(format!(
                    "{what}: the result exceeds the limit of {} bytes (--max-output-bytes)",
                    limits.max_output_bytes
                )));
            }
        };
        let answer: Answer = serde_json::from_slice(&line).map_err(|e| {
            ComponentError::config(format!(
                "{what}: the result cannot be used (nested too deeply or not JSON): {e}"
            ))
        })?;
        guard.0 = None;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(worker);
        } else {
            drop(KillOnDrop(Some(worker.process)));
        }
        Ok(answer)
    }
}

enum Exchange {
    /// The worker closed its pipes or could not be written to.
    Died(String),
    /// The answer is longer than the limit (the worker should have refused it).
    TooLarge,
}

/// Sends one job and reads its answer line, blocking.
fn exchange(worker: &mut Worker, request: &[u8], max_bytes: usize) -> Result<Vec<u8>, Exchange> {
    worker
        .stdin
        .write_all(request)
        .and_then(|()| worker.stdin.flush())
        .map_err(|e| Exchange::Died(format!("cannot send the job: {e}")))?;
    let mut line = Vec::new();
    let limit = max_bytes as u64 + 2;
    let read = (&mut worker.stdout)
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(|e| Exchange::Died(format!("cannot read its answer: {e}")))?;
    match line.last() {
        Some(b'\n') => Ok(line),
        _ if read as u64 >= limit => Err(Exchange::TooLarge),
        _ => Err(Exchange::Died("the worker ended".into())),
    }
}

/// The worker side, run by `fm __eval-worker`: sets its memory limit, then answers jobs line by line until
/// stdin closes. `evaluate` does the work (see `json_transform::evaluate`).
pub fn serve(limits: WorkerLimits, evaluate: impl Fn(&Job) -> Answer) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::As,
        Rlimit {
            current: Some(limits.memory_bytes),
            maximum: Some(limits.memory_bytes),
        },
    )?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line?;
        let answer = match serde_json::from_str::<Job>(&line) {
            Ok(job) => {
                let used = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
                // SIGXCPU ends the worker once this job has used its share.
                setrlimit(
                    Resource::Cpu,
                    Rlimit {
                        current: Some(used.tv_sec as u64 + limits.cpu_seconds),
                        maximum: None,
                    },
                )?;
                evaluate(&job)
            }
            Err(e) => Err(format!("the job is not valid: {e}")),
        };
        let mut text = serde_json::to_string(&answer).unwrap_or_else(|e| {
            serde_json::json!({"Err": format!("the result cannot be encoded: {e}")}).to_string()
        });
        if text.len() > limits.max_output_bytes {
            text = serde_json::json!({"Err": format!(
                "the result is {} bytes, more than the limit of {} bytes (--max-output-bytes)",
                text.len(),
                limits.max_output_bytes
            )})
            .to_string();
        }
        stdout.write_all(text.as_bytes())?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}

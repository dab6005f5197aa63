//! Waiting for something to become true in an integration test, shared by the test binaries that watch a
//! server converge (`#[path = "support/wait.rs"] mod wait;`).

use std::time::{Duration, Instant};

/// How long [`eventually`] waits before giving up: a bound that turns a hang into a failure with a
/// message, never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Polls `check` until it yields a value; panics naming `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

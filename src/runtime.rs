//! The process runtime: an actix `System` (for the engine's actors) on a multi-threaded tokio runtime (for
//! everything else); see docs/architecture.md. Actors started with `.start()` live on the system's arbiter;
//! `tokio::spawn` work runs on the worker threads.

use std::future::Future;

/// Runs `make()`'s future to completion inside a fresh actix system.
pub fn block_on<F, Fut>(make: F) -> std::io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let system = actix::System::with_tokio_rt(move || runtime);
    Ok(system.block_on(make()))
}

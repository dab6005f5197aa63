//! `fm resume`: finishes every run the data dir holds that has not ended, as `fm serve` does on start.

use anyhow::Context as _;
use clap::Args;
use flowmason_actors::{Engine, EngineConfig};

use super::{EnvArgs, StoreArgs};
use crate::components::builtin_registry;

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The same secret sources the runs were started with: their values are never recorded, so a
    /// resumed run resolves its environment again.
    #[command(flatten)]
    pub env: EnvArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn resume(args: ResumeArgs) -> anyhow::Result<i32> {
    let env = args.env.resolver_with_sdk_keys()?;
    let store = args.store.open()?;
    crate::runtime::block_on(move || async move {
        let config = EngineConfig {
            env,
            ..EngineConfig::default()
        };
        let engine = Engine::new(store.clone(), builtin_registry(), config);
        let handles = engine.resume_all().await.context("cannot resume runs")?;
        if handles.is_empty() {
            eprintln!("no unfinished runs");
        }
        let mut lost = 0;
        for handle in handles {
            let run = handle.run_id;
            match handle.finished().await {
                Ok(state) => println!("{run} {} {}", state.pipeline, state.phase),
                Err(e) => {
                    lost += 1;
                    eprintln!("{run}: {e}");
                }
            }
        }
        engine
            .shutdown()
            .context("cannot record the engine's shutdown in the event log and flush it")?;
        Ok(if lost == 0 { 0 } else { super::EXIT_RUN_FAILED })
    })?
}

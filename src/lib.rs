//! FlowMason: the product crate. Resource model (CRD types, loading, validation), components, and the `fm`
//! command line, wired onto the engine (`flowmason-actors`) and the event log (`flowmason-store`).

pub mod apiserver;
pub mod bench;
pub mod cli;
pub mod client;
pub mod component_config;
pub mod components;
pub mod env;
pub mod health;
pub mod history;
pub mod http;
#[cfg(test)]
mod layering;
pub mod llm;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod runtime;
pub mod triggers;

//! `--event-log` and its options: which backend records runs (see docs/event-log.md).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use flowmason_store::{Durability, EventStore, JetStreamConfig, NatsAuth, StoreConfig};

/// The backends of the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum EventLogKind {
    /// A sled database in the data dir (embedded; one process).
    #[default]
    Sled,
    /// A NATS JetStream stream (replicated; runs outlive the process and the node).
    Jetstream,
}

/// Where runs are recorded, for every command that opens the event log.
#[derive(Args, Debug, Clone)]
pub struct EventLogArgs {
    /// The event log: sled (a database in the data dir) or jetstream (a NATS JetStream stream that
    /// other engines can continue runs from; see docs/event-log.md).
    #[arg(long, env = "FM_EVENT_LOG", value_enum, default_value_t = EventLogKind::Sled)]
    pub event_log: EventLogKind,
    /// NATS servers of the jetstream event log, comma-separated (nats://a:4222,nats://b:4222). `fm serve`
    /// and `fm operator` use their --nats when this is not given.
    #[arg(long, env = "FM_EVENT_NATS", value_delimiter = ',', value_name = "URL")]
    pub event_nats: Vec<String>,
    /// NATS credentials of the jetstream event log: a .creds file (JWT and NKey seed).
    #[arg(long, env = "FM_EVENT_NATS_CREDS", value_name = "FILE")]
    pub event_nats_creds: Option<PathBuf>,
    /// The JetStream stream of the event log (created if missing; a present one with other subjects,
    /// storage, retention, limits or replicas is refused).
    #[arg(long, env = "FM_EVENT_STREAM", default_value = flowmason_store::DEFAULT_STREAM)]
    pub event_stream: String,
    /// Replicas of the stream: 1 on a single server, 3 on a NATS cluster (survives the loss of a node).
    #[arg(long, env = "FM_EVENT_REPLICAS", default_value_t = 1)]
    pub event_replicas: usize,
}

impl Default for EventLogArgs {
    fn default() -> Self {
        EventLogArgs {
            event_log: EventLogKind::Sled,
            event_nats: Vec::new(),
            event_nats_creds: None,
            event_stream: flowmason_store::DEFAULT_STREAM.into(),
            event_replicas: 1,
        }
    }
}

impl EventLogArgs {
    /// These options with `nats` (the triggers' --nats) as the servers when --event-nats is not given.
    pub fn with_nats_fallback(&self, nats: Option<&str>) -> EventLogArgs {
        let mut args = self.clone();
        if args.event_nats.is_empty()
            && let Some(nats) = nats
        {
            args.event_nats = nats.split(',').map(str::to_string).collect();
        }
        args
    }

    /// The JetStream settings, `None` under sled.
    pub fn jetstream(&self) -> anyhow::Result<Option<JetStreamConfig>> {
        if self.event_log == EventLogKind::Sled {
            return Ok(None);
        }
        if self.event_nats.is_empty() {
            anyhow::bail!(
                "--event-log jetstream needs --event-nats URL[,URL...] (or $FM_EVENT_NATS)"
            );
        }
        if self.event_replicas == 0 || self.event_replicas > 5 {
            anyhow::bail!(
                "--event-replicas {}: expected 1 to 5 (JetStream's limit)",
                self.event_replicas
            );
        }
        let mut config = JetStreamConfig::new(self.event_nats.clone());
        config.stream = self.event_stream.clone();
        config.replicas = self.event_replicas;
        if let Some(file) = &self.event_nats_creds {
            let creds = std::fs::read_to_string(file)
                .with_context(|| format!("--event-nats-creds {}: cannot read", file.display()))?;
            config.auth = NatsAuth::Creds(creds);
        }
        Ok(Some(config))
    }

    /// Opens the event log: the sled database in `sled_dir`, or the JetStream stream.
    pub fn open(&self, sled_dir: &Path, durability: Durability) -> anyhow::Result<EventStore> {
        let config = StoreConfig {
            durability,
            ..StoreConfig::default()
        };
        match self.jetstream()? {
            Some(js) => EventStore::open_jetstream(&js, config).with_context(|| {
                format!(
                    "cannot open the event log on JetStream stream {} at {}",
                    js.stream,
                    js.servers.join(",")
                )
            }),
            None => {
                std::fs::create_dir_all(sled_dir)
                    .with_context(|| format!("cannot create {}", sled_dir.display()))?;
                EventStore::open(sled_dir, config)
                    .with_context(|| format!("cannot open the event log in {}", sled_dir.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetstream_needs_servers_and_takes_the_triggers_nats_as_a_fallback() {
        let args = EventLogArgs {
            event_log: EventLogKind::Jetstream,
            ..EventLogArgs::default()
        };
        let err = args.jetstream().unwrap_err().to_string();
        assert!(err.contains("--event-nats"), "{err}");
        let config = args
            .with_nats_fallback(Some("nats://a:4222,nats://b:4222"))
            .jetstream()
            .unwrap()
            .unwrap();
        assert_eq!(config.servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(config.stream, "FLOWMASON_EVENTS");
        assert!(EventLogArgs::default().jetstream().unwrap().is_none());
    }
}

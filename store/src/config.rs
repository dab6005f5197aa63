//! How the store trades durability for throughput.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When appended events are on disk before the engine acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every receipt waits for a flush (group commit: one fsync serves every append queued meanwhile).
    Always,
    /// Receipts of a run's acceptance and of terminal events wait for a flush; everything else is
    /// flushed in the background every [`StoreConfig::flush_interval`]. A crash may lose the last few
    /// milliseconds of stage events, which resume re-runs (at-least-once), but never an accepted run nor
    /// a reported run outcome.
    #[default]
    Batch,
    /// Nothing waits and the store never flushes on its own; sled's background flush (every 500 ms) is all
    /// there is. Even terminal events are NOT guaranteed durable when reported. For benchmarks and tests.
    Never,
}

impl Durability {
    pub const ALL: [Durability; 3] = [Durability::Always, Durability::Batch, Durability::Never];

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::Batch => "batch",
            Durability::Never => "never",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Durability::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown durability {s:?} (expected always, batch or never)"))
    }
}

/// Settings of an [`crate::EventStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub durability: Durability,
    /// Under [`Durability::Batch`], how often the background flush runs when there were appends.
    pub flush_interval: Duration,
    /// sled's page cache size.
    pub cache_capacity_bytes: u64,
    /// Most encoded event bytes the write-behind buffer holds: an append that finds more buffered writes
    /// the buffer into sled itself (waiting for a write cycle in progress), so appenders slow down to
    /// sled's pace instead of growing memory without bound when sled falls behind.
    pub max_buffered_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            durability: Durability::Batch,
            flush_interval: Duration::from_millis(5),
            cache_capacity_bytes: 256 * 1024 * 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_displays() {
        for d in Durability::ALL {
            assert_eq!(d.to_string().parse::<Durability>(), Ok(d));
        }
        assert_eq!("ALWAYS".parse::<Durability>(), Ok(Durability::Always));
        let err = "sometimes".parse::<Durability>().unwrap_err();
        assert!(err.contains("sometimes"), "{err}");
        assert_eq!(
            serde_json::to_string(&Durability::Batch).unwrap(),
            "\"batch\""
        );
        assert_eq!(Durability::default(), Durability::Batch);
    }
}

//! Engine sessions: whether the engine that last used this log stopped cleanly.
//!
//! An engine begins a session when it starts and ends it when it shuts down gracefully. A session that was
//! begun and never ended means the process died (SIGKILL, abort, stack overflow, power loss) with its
//! unfinished runs in flight: the next engine resumes them "after a crash", which is how a run that keeps
//! crashing the engine is recognised and quarantined instead of being resumed forever.
//!
//! The record is `{"session": n, "open": bool}`: one key of sled's default tree, apart from the runs, or
//! under JetStream the last message on the stream's session subject.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::EventStore;

const KEY: &[u8] = b"flowmason-engine-session";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    session: u64,
    open: bool,
}

/// The session an engine began, and how the engine before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSession {
    /// Increases with every session of this log (1 for the first).
    pub id: u64,
    /// The previous session was begun and never ended: its engine crashed.
    pub after_crash: bool,
}

impl EventStore {
    /// Begins an engine session: records (durably) that an engine is working on this log, and reports
    /// whether the previous one ended without [`end_engine_session`](Self::end_engine_session).
    pub fn begin_engine_session(&self) -> Result<EngineSession, StoreError> {
        let previous = self.read_session()?;
        let session = EngineSession {
            id: previous.session.saturating_add(1),
            after_crash: previous.open,
        };
        self.write_session(&Record {
            session: session.id,
            open: true,
        })?;
        Ok(session)
    }

    /// Ends the engine session `id` as a clean stop (durably): the next engine does not resume its runs
    /// as after a crash.
    pub fn end_engine_session(&self, id: u64) -> Result<(), StoreError> {
        self.write_session(&Record {
            session: id,
            open: false,
        })
    }

    fn read_session(&self) -> Result<Record, StoreError> {
        let value = match &self.stream {
            Some(stream) => stream.read_session()?,
            None => self.inner.disk.db.get(KEY)?.map(|v| v.to_vec()),
        };
        match value {
            None => Ok(Record::default()),
            Some(value) => serde_json::from_slice(&value).map_err(|e| StoreError::CorruptSession {
                reason: format!("{e} in {:?}", String::from_utf8_lossy(&value)),
            }),
        }
    }

    fn write_session(&self, record: &Record) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|e| StoreError::CorruptSession {
            reason: format!("cannot encode: {e}"),
        })?;
        if let Some(stream) = &self.stream {
            return stream.write_session(value);
        }
        self.inner.disk.db.insert(KEY, value)?;
        self.inner.disk.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::StoreConfig;
    use crate::store::EventStore;

    #[test]
    fn a_session_not_ended_is_reported_as_a_crash_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let open = || EventStore::open(dir.path(), StoreConfig::default()).unwrap();
        let store = open();
        let first = store.begin_engine_session().unwrap();
        assert_eq!((first.id, first.after_crash), (1, false));
        drop(store);
        let store = open();
        let second = store.begin_engine_session().unwrap();
        assert_eq!((second.id, second.after_crash), (2, true));
        store.end_engine_session(second.id).unwrap();
        drop(store);
        let store = open();
        let third = store.begin_engine_session().unwrap();
        assert_eq!((third.id, third.after_crash), (3, false));
    }
}

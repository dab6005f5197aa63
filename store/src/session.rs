//! Engine sessions: whether the engine that last used this log stopped cleanly.
//!
//! An engine begins a session when it starts and ends it when it shuts down gracefully. A session that was
//! begun and never ended means the process died (SIGKILL, abort, stack overflow, power loss) with its
//! unfinished runs in flight: the next engine resumes them "after a crash", which is how a run that keeps
//! crashing the engine is recognised and quarantined instead of being resumed forever.
//!
//! Under sled the record is `{"session": n, "open": bool}`, one key of sled's default tree apart from the
//! runs; session ids count up from 1, and the previous session is the one the record names.
//!
//! Under JetStream several engines (operator replicas) can share the log at once, so ids must be unique
//! across processes: a session's id is the stream sequence of the message that began it,
//! `{"open": true, "writer": w}` on `flowmason.<stream>.session` (`w` is the process's writer id); its end
//! is `{"session": id, "open": false}` there. The previous session is the one the subject's last message
//! began or ended. An open one counts as crashed only when its process no longer answers on
//! `flowmason-live.<stream>.<w>` (a live engine begun before this one is not a crash): so one engine
//! restarting alone on the stream sees its own crash, while among several running engines the engine-level
//! verdict only concerns the last session recorded. Sharded operators therefore do not rely on it; they
//! say per run how it was taken up (see `Engine::take_over` in the engine crate).

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::EventStore;

const KEY: &[u8] = b"flowmason-engine-session";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// The session's id; absent in a JetStream begin record, whose id is its stream sequence.
    #[serde(default)]
    session: u64,
    open: bool,
    /// The writer id of the JetStream process that began the session (what its liveness is asked by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer: Option<String>,
}

/// The session an engine began, and how the engine before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSession {
    /// Unique among the sessions of this log: under sled it increases with every session (1 for the
    /// first); under JetStream it is the stream sequence of the message that began the session.
    pub id: u64,
    /// The previous session was begun and never ended: its engine crashed.
    pub after_crash: bool,
    /// The id of that crashed session (`Some` exactly when `after_crash`).
    pub crashed: Option<u64>,
}

impl EventStore {
    /// Begins an engine session: records (durably) that an engine is working on this log, and reports
    /// whether the previous one ended without [`end_engine_session`](Self::end_engine_session).
    pub fn begin_engine_session(&self) -> Result<EngineSession, StoreError> {
        let (previous, previous_seq) = self.read_session()?.unwrap_or_default();
        let Some(stream) = &self.stream else {
            let session = EngineSession {
                id: previous.session.saturating_add(1),
                after_crash: previous.open,
                crashed: previous.open.then_some(previous.session),
            };
            self.write_session(&Record {
                session: session.id,
                open: true,
                writer: None,
            })?;
            return Ok(session);
        };
        let crashed = match previous.open {
            false => None,
            true => {
                let alive = match &previous.writer {
                    Some(writer) => stream.is_alive(writer)?,
                    None => false,
                };
                let id = match previous.session {
                    0 => previous_seq,
                    id => id,
                };
                (!alive).then_some(id)
            }
        };
        let id = self.write_session(&Record {
            session: 0,
            open: true,
            writer: Some(stream.writer().into()),
        })?;
        Ok(EngineSession {
            id,
            after_crash: crashed.is_some(),
            crashed,
        })
    }

    /// Ends the engine session `id` as a clean stop (durably): the next engine does not resume its runs
    /// as after a crash.
    pub fn end_engine_session(&self, id: u64) -> Result<(), StoreError> {
        self.write_session(&Record {
            session: id,
            open: false,
            writer: None,
        })
        .map(drop)
    }

    /// The last session record, with its stream sequence under JetStream (0 under sled).
    fn read_session(&self) -> Result<Option<(Record, u64)>, StoreError> {
        let value = match &self.stream {
            Some(stream) => stream.read_session()?,
            None => self.inner.disk.db.get(KEY)?.map(|v| (v.to_vec(), 0)),
        };
        match value {
            None => Ok(None),
            Some((value, seq)) => serde_json::from_slice(&value)
                .map(|record| Some((record, seq)))
                .map_err(|e| StoreError::CorruptSession {
                    reason: format!("{e} in {:?}", String::from_utf8_lossy(&value)),
                }),
        }
    }

    /// Writes a session record durably; under JetStream returns its stream sequence (0 under sled).
    fn write_session(&self, record: &Record) -> Result<u64, StoreError> {
        let value = serde_json::to_vec(record).map_err(|e| StoreError::CorruptSession {
            reason: format!("cannot encode: {e}"),
        })?;
        if let Some(stream) = &self.stream {
            return stream.write_session(value);
        }
        self.inner.disk.db.insert(KEY, value)?;
        self.inner.disk.flush()?;
        Ok(0)
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

//! The event store: per-run append-only streams, the summary and indexes kept with them, and durability.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::{Batch, IVec};

use crate::codec;
use crate::config::{Durability, StoreConfig};
use crate::error::StoreError;
use crate::event::{Event, EventKind, RunId, RunPhase};
use crate::flusher::Flusher;
use crate::fold::RunState;
use crate::keys::{self, Index};
use crate::summary::RunSummary;

/// Number of cursor shards; appends to runs in different shards do not contend.
const SHARDS: usize = 64;

/// What an append needs to know about a run that has not ended, kept so that appends do not read sled.
struct RunCursor {
    next_seq: u64,
    summary: RunSummary,
}

/// Run ids are UUIDv7 with 74 random bits, so hashing needs no DoS-resistant mixing.
#[derive(Default)]
struct RunIdHasher(u64);

impl Hasher for RunIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

type CursorMap = HashMap<RunId, RunCursor, BuildHasherDefault<RunIdHasher>>;

pub(crate) struct Inner {
    // Dropped first: joins the flusher thread (which holds a handle on the database) before `db` closes.
    flusher: Flusher,
    pub(crate) tree: sled::Tree,
    db: sled::Db,
    durability: Durability,
    cursors: Box<[Mutex<CursorMap>]>,
    /// The last timestamp handed out: stamps never go backwards, so newer runs always sort first.
    clock: AtomicI64,
}

/// The sled-backed event log of all runs. Cheap to clone (one `Arc`); all methods take `&self` and may be
/// called from any thread. Appends write in the caller; durability is awaited through [`Appended`].
#[derive(Clone)]
pub struct EventStore {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStore")
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

/// The receipt of an append: the events as stored, and whether acting on them must wait for durability.
#[must_use = "a receipt says whether the events must be made durable before acting on them"]
pub struct Appended {
    pub events: Vec<Event>,
    /// The store to wait on, when the policy says to wait.
    wait: Option<Arc<Inner>>,
}

impl fmt::Debug for Appended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appended")
            .field("events", &self.events)
            .field("must_wait", &self.must_wait())
            .finish()
    }
}

impl Appended {
    /// Whether acting on these events must wait for durability: always under `always`, under `batch` iff a
    /// terminal event is among them, never under `never`.
    pub fn must_wait(&self) -> bool {
        self.wait.is_some()
    }

    /// Resolves once the events are durable as the policy requires (immediately when `!must_wait()`).
    pub async fn durable(self) -> Result<Vec<Event>, StoreError> {
        if let Some(inner) = &self.wait {
            sync_inner(inner).await?;
        }
        Ok(self.events)
    }
}

async fn sync_inner(inner: &Inner) -> Result<(), StoreError> {
    let reply = inner.flusher.request()?;
    reply
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(StoreError::Sled)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl EventStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<EventStore, StoreError> {
        Self::with_sled(sled::Config::new().path(path.as_ref()), config)
    }

    /// A store in a temporary directory that is removed when the store drops (tests, `fm run`).
    pub fn temporary(config: StoreConfig) -> Result<EventStore, StoreError> {
        Self::with_sled(sled::Config::new().temporary(true), config)
    }

    fn with_sled(sled_config: sled::Config, config: StoreConfig) -> Result<EventStore, StoreError> {
        let sled_config = sled_config.cache_capacity(config.cache_capacity_bytes);
        // Under always/batch we flush ourselves; sled's own timer would only add fsyncs. Under never,
        // sled's timer (500 ms) is the only thing that ever writes the log out.
        let sled_config = match config.durability {
            Durability::Always | Durability::Batch => sled_config.flush_every_ms(None),
            Durability::Never => sled_config,
        };
        let db = sled_config.open()?;
        let tree = db.open_tree("flowmason-runs")?;
        let flusher = Flusher::start(db.clone(), config.durability, config.flush_interval)?;
        let cursors = (0..SHARDS)
            .map(|_| Mutex::new(CursorMap::default()))
            .collect();
        Ok(EventStore {
            inner: Arc::new(Inner {
                flusher,
                tree,
                db,
                durability: config.durability,
                cursors,
                clock: AtomicI64::new(0),
            }),
        })
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    fn shard(&self, run: RunId) -> MutexGuard<'_, CursorMap> {
        let (_, low) = run.as_u64_pair();
        // A panic while holding the lock cannot leave a cursor half-updated (it is updated after the write
        // succeeds, in one assignment), so a poisoned lock is safe to use.
        self.inner.cursors[(low as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A timestamp not older than any handed out before.
    fn stamp(&self) -> i64 {
        let now = now_micros();
        let prev = self.inner.clock.fetch_max(now, Ordering::AcqRel);
        prev.max(now)
    }

    /// Reads what an append needs to know about a run that is not cached: `None` when it does not exist.
    fn load_cursor(&self, run: RunId) -> Result<Option<RunCursor>, StoreError> {
        let tree = &self.inner.tree;
        let last = tree
            .scan_prefix(keys::event_prefix(run))
            .next_back()
            .transpose()?;
        let summary = match tree.get(keys::summary_key(run))? {
            Some(v) => codec::decode_summary(run, &v)?,
            None if last.is_some() => {
                return Err(StoreError::CorruptSummary {
                    run,
                    reason: "events without a summary".into(),
                });
            }
            None => return Ok(None),
        };
        let Some((key, _)) = last else {
            return Err(StoreError::CorruptSummary {
                run,
                reason: "summary without events".into(),
            });
        };
        let seq = keys::event_seq(&key).ok_or_else(|| StoreError::Corrupt {
            run,
            seq: 0,
            reason: format!("malformed event key of {} bytes", key.len()),
        })?;
        Ok(Some(RunCursor {
            next_seq: seq + 1,
            summary,
        }))
    }

    /// Appends events to the run's stream in ONE atomic sled batch together with the summary and index
    /// updates; assigns consecutive seqs (0 for the first event of a run) and stamps `at` (Unix micros, now,
    /// never going backwards). Does not wait for durability; the receipt does.
    ///
    /// Enforces the shape of a stream: `RunAccepted` only as event 0 ([`StoreError::AlreadyAccepted`]),
    /// nothing before it ([`StoreError::NotAccepted`]), nothing after a terminal event
    /// ([`StoreError::RunEnded`], which makes a second terminal event impossible). A rejected append writes
    /// nothing.
    pub fn append(&self, run: RunId, kinds: Vec<EventKind>) -> Result<Appended, StoreError> {
        if kinds.is_empty() {
            return Ok(Appended {
                events: Vec::new(),
                wait: None,
            });
        }
        let mut shard = self.shard(run);
        let mut loaded = None;
        let cursor = match shard.get(&run) {
            Some(c) => Some(c),
            None => {
                loaded = self.load_cursor(run)?;
                loaded.as_ref()
            }
        };
        let first_seq = cursor.map_or(0, |c| c.next_seq);
        let old_phase = cursor.map(|c| c.summary.phase);
        let at = self.stamp();

        // Validate everything before writing anything, and see whether the summary changes.
        let mut phase = old_phase;
        let mut changed: Option<RunSummary> = None;
        let mut terminal = false;
        for (i, kind) in kinds.iter().enumerate() {
            let seq = first_seq + i as u64;
            match phase {
                Some(p) if p.is_terminal() => {
                    return Err(StoreError::RunEnded {
                        run,
                        event: kind.name(),
                    });
                }
                None => {
                    let Some(summary) =
                        RunSummary::accepted(run, kind, at, seq).filter(|_| seq == 0)
                    else {
                        return Err(StoreError::NotAccepted { run });
                    };
                    phase = Some(RunPhase::Pending);
                    changed = Some(summary);
                }
                Some(_) if matches!(kind, EventKind::RunAccepted { .. }) => {
                    return Err(StoreError::AlreadyAccepted { run });
                }
                Some(_) => {
                    if let Some(p) = kind.run_phase() {
                        let summary = match &mut changed {
                            Some(s) => s,
                            // A phase without a change so far comes from the cursor.
                            None => changed.insert(
                                cursor
                                    .map(|c| c.summary.clone())
                                    .ok_or(StoreError::NotAccepted { run })?,
                            ),
                        };
                        summary.apply_phase_change(kind, at, seq);
                        phase = Some(p);
                        terminal |= p.is_terminal();
                    }
                }
            }
        }

        if changed.is_none() && kinds.len() == 1 {
            // The common case (a stage event): one insert is as atomic as a batch, and cheaper.
            let value = codec::encode_event(run, first_seq, at, &kinds[0])?;
            self.inner
                .tree
                .insert(keys::event_key(run, first_seq), value)?;
        } else {
            let mut batch = Batch::default();
            for (i, kind) in kinds.iter().enumerate() {
                let seq = first_seq + i as u64;
                batch.insert(
                    &keys::event_key(run, seq),
                    codec::encode_event(run, seq, at, kind)?,
                );
            }
            if let Some(summary) = &changed {
                batch.insert(&keys::summary_key(run), codec::encode_summary(summary)?);
                let pos = keys::position(summary.accepted_at, run);
                if old_phase.is_none() {
                    for index in keys::fixed_indexes(&summary.namespace, &summary.pipeline) {
                        batch.insert(index.key(&pos), IVec::default());
                    }
                }
                if old_phase != Some(summary.phase) {
                    if let Some(old) = old_phase {
                        batch.remove(Index::Phase(old).key(&pos));
                    }
                    batch.insert(Index::Phase(summary.phase).key(&pos), IVec::default());
                }
            }
            self.inner.tree.apply_batch(batch)?;
        }
        self.inner.flusher.note_append();

        let next_seq = first_seq + kinds.len() as u64;
        if terminal {
            // Ended runs are not cached: memory stays bounded by the runs in flight.
            shard.remove(&run);
        } else {
            match (shard.get_mut(&run), changed) {
                (Some(c), changed) => {
                    c.next_seq = next_seq;
                    if let Some(s) = changed {
                        c.summary = s;
                    }
                }
                (None, Some(summary)) => {
                    shard.insert(run, RunCursor { next_seq, summary });
                }
                (None, None) => {
                    if let Some(c) = loaded {
                        shard.insert(
                            run,
                            RunCursor {
                                next_seq,
                                summary: c.summary,
                            },
                        );
                    }
                }
            }
        }
        drop(shard);

        let wait = match self.inner.durability {
            Durability::Always => true,
            Durability::Batch => terminal,
            Durability::Never => false,
        };
        let events = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: first_seq + i as u64,
                at,
                kind,
            })
            .collect();
        Ok(Appended {
            events,
            wait: wait.then(|| self.inner.clone()),
        })
    }

    /// [`append`](Self::append), then wait for durability as the policy requires.
    pub async fn append_durable(
        &self,
        run: RunId,
        kinds: Vec<EventKind>,
    ) -> Result<Vec<Event>, StoreError> {
        self.append(run, kinds)?.durable().await
    }

    /// Waits until everything appended before the call is on disk, whatever the policy. Concurrent callers
    /// share one flush.
    pub async fn sync(&self) -> Result<(), StoreError> {
        sync_inner(&self.inner).await
    }

    /// Flushes everything to disk, blocking the calling thread.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// All events of a run, in order; empty when the run does not exist.
    pub fn events(&self, run: RunId) -> Result<Vec<Event>, StoreError> {
        self.events_from(run, 0)
    }

    /// The events of a run from sequence `from_seq` on, in order.
    pub fn events_from(&self, run: RunId, from_seq: u64) -> Result<Vec<Event>, StoreError> {
        self.inner
            .tree
            .range(keys::event_key(run, from_seq)..=keys::event_key(run, u64::MAX))
            .map(|item| {
                let (key, value) = item?;
                codec::decode_event(run, &key, &value)
            })
            .collect()
    }

    /// The state of a run folded from its events; `None` when the run does not exist.
    pub fn fold(&self, run: RunId) -> Result<Option<RunState>, StoreError> {
        let events = self.events(run)?;
        Ok(RunState::fold(run, &events)?)
    }

    /// The summary of a run; `None` when the run does not exist.
    pub fn summary(&self, run: RunId) -> Result<Option<RunSummary>, StoreError> {
        self.inner.summary(run)
    }

    /// Runs whose phase is Pending or Running (what a restart must resume), oldest first. Reads the phase
    /// index, not the events.
    pub fn unfinished_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let mut found: Vec<keys::Position> = Vec::new();
        for phase in [RunPhase::Pending, RunPhase::Running] {
            let prefix = Index::Phase(phase).prefix();
            for item in self.inner.tree.scan_prefix(&prefix) {
                let (key, _) = item?;
                found.push(self.inner.position_of(&prefix, &key)?);
            }
        }
        // Positions sort newest first; oldest first is the reverse, ties by run id.
        found.sort_by(|a, b| {
            keys::position_inverted(b)
                .cmp(&keys::position_inverted(a))
                .then_with(|| keys::position_run(a).cmp(&keys::position_run(b)))
        });
        found.dedup();
        Ok(found.iter().map(keys::position_run).collect())
    }

    /// Deletes a whole run (events, summary, index entries) in one atomic batch. Refuses a run that has not
    /// ended with [`StoreError::RunInFlight`]; returns `false` when the run does not exist. Stray events
    /// without a summary (never written by this store) are deleted too.
    pub fn delete_run(&self, run: RunId) -> Result<bool, StoreError> {
        // Holding the run's shard keeps appends to it out while it is deleted.
        let mut shard = self.shard(run);
        let tree = &self.inner.tree;
        let summary = self.inner.summary(run)?;
        if let Some(s) = &summary
            && !s.phase.is_terminal()
        {
            return Err(StoreError::RunInFlight { run });
        }
        let mut batch = Batch::default();
        let mut any = false;
        for item in tree.scan_prefix(keys::event_prefix(run)).keys() {
            batch.remove(item?);
            any = true;
        }
        if let Some(s) = &summary {
            any = true;
            batch.remove(&keys::summary_key(run));
            let pos = keys::position(s.accepted_at, run);
            for index in keys::fixed_indexes(&s.namespace, &s.pipeline) {
                batch.remove(index.key(&pos));
            }
            batch.remove(Index::Phase(s.phase).key(&pos));
        }
        if !any {
            return Ok(false);
        }
        tree.apply_batch(batch)?;
        shard.remove(&run);
        self.inner.flusher.note_append();
        Ok(true)
    }
}

impl Inner {
    pub(crate) fn summary(&self, run: RunId) -> Result<Option<RunSummary>, StoreError> {
        match self.tree.get(keys::summary_key(run))? {
            Some(v) => Ok(Some(codec::decode_summary(run, &v)?)),
            None => Ok(None),
        }
    }

    /// The position in an index key, checked.
    pub(crate) fn position_of(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<keys::Position, StoreError> {
        key.strip_prefix(prefix)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| {
                let run = key
                    .get(key.len().saturating_sub(16)..)
                    .and_then(|b| RunId::from_slice(b).ok())
                    .unwrap_or_default();
                StoreError::CorruptSummary {
                    run,
                    reason: format!("malformed index key of {} bytes", key.len()),
                }
            })
    }
}

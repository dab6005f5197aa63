//! The event store: per-run append-only streams, the summary and indexes kept with them, and durability.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sled::{Batch, IVec};
use tokio::sync::watch;

use crate::buffer::WriteBuffer;
use crate::codec;
use crate::config::{Durability, StoreConfig};
use crate::error::StoreError;
use crate::event::{Event, EventKind, RunId, RunPhase};
use crate::flusher::{Disk, Flusher};
use crate::fold::RunState;
use crate::jetstream::{Ack, JetStream};
use crate::keys::{self, Index};
use crate::lifecycle::{self, LifecycleError};
use crate::sled_files::SledFiles;
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
    pub(crate) disk: Disk,
    durability: Durability,
    cursors: Arc<[Mutex<CursorMap>]>,
    buffer: Arc<WriteBuffer>,
    /// Past this many buffered bytes an append writes the buffer out itself (back-pressure).
    max_buffered_bytes: usize,
    /// The last timestamp handed out: stamps never go backwards, so newer runs always sort first.
    clock: AtomicI64,
    /// Published after every write cycle that wrote something (and every deletion or import).
    written: Arc<Notify>,
}

/// What one write cycle of the log did, for observers (metrics).
#[derive(Debug, Clone, Copy)]
pub struct WriteCycle {
    /// Events moved from the write-behind buffer into the log.
    pub events: usize,
    /// Their encoded size.
    pub bytes: usize,
    /// How long the atomic batch took (not the fsync that may follow).
    pub duration: Duration,
}

/// Sees every write cycle; runs on the thread that wrote (the flusher, or a reader), so must be cheap.
pub type WriteObserver = Arc<dyn Fn(&WriteCycle) + Send + Sync>;

/// What happens after a write cycle: followers are woken, the observer is told.
#[derive(Default)]
struct Notify {
    /// Bumped per cycle: what followers of a run's events wait on. Published once per cycle, never on
    /// the append hot path.
    cycles: watch::Sender<u64>,
    observer: OnceLock<WriteObserver>,
}

impl Notify {
    fn bump(&self) {
        self.cycles.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The event log of all runs, on one of two backends:
///
/// - **sled** ([`EventStore::open`], [`EventStore::temporary`]): the log is a local sled database.
/// - **JetStream** ([`EventStore::open_jetstream`]): the log is a replicated NATS JetStream stream; the
///   sled database is then a local index, a projection of the stream that this process builds by
///   consuming it (and writes its own appends into at once), and which answers every read.
///
/// Nothing above this crate knows which backend it talks to. Cheap to clone (`Arc`s); all methods take
/// `&self` and may be called from any thread. Appends write in the caller; durability is awaited through
/// [`Appended`], [`EventStore::sync_run`] or [`EventStore::sync`].
#[derive(Clone)]
pub struct EventStore {
    /// The sled log, or under JetStream the local index.
    pub(crate) inner: Arc<Inner>,
    /// The JetStream log, when that is the backend.
    pub(crate) stream: Option<Arc<JetStream>>,
}

impl fmt::Debug for EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStore")
            .field("backend", &self.backend())
            .field("durability", &self.durability())
            .finish_non_exhaustive()
    }
}

/// What a receipt waits for before the events may be acted on.
pub(crate) enum Wait {
    /// A flush of the sled log.
    Flush(Arc<Inner>),
    /// The stream's acknowledgement of the message holding the events (and so of every earlier message
    /// of the run: a run's messages are published one after the other).
    Ack(RunId, Ack),
}

/// The receipt of an append: the events as stored, and whether acting on them must wait for durability.
#[must_use = "a receipt says whether the events must be made durable before acting on them"]
pub struct Appended {
    pub events: Vec<Event>,
    /// What to wait on, when the policy says to wait.
    pub(crate) wait: Option<Wait>,
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
    /// Whether acting on these events must wait for durability. sled: always under `always`, under
    /// `batch` iff they accept the run or a terminal event is among them, never under `never`. JetStream:
    /// under `always` and `batch` until the stream acknowledged them, never under `never`.
    pub fn must_wait(&self) -> bool {
        self.wait.is_some()
    }

    /// Resolves once the events are durable as the policy requires (immediately when `!must_wait()`).
    pub async fn durable(self) -> Result<Vec<Event>, StoreError> {
        match &self.wait {
            None => {}
            Some(Wait::Flush(inner)) => sync_inner(inner).await?,
            Some(Wait::Ack(run, ack)) => {
                ack.clone().await.map_err(|f| f.into_error(*run))?;
            }
        }
        Ok(self.events)
    }
}

async fn sync_inner(inner: &Inner) -> Result<(), StoreError> {
    let reply = inner.flusher.request()?;
    reply
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(StoreError::from)
}

/// Opens sled, waiting a little while another handle on the same directory is still closing.
///
/// sled takes an exclusive file lock, and after its last handle drops in this process, jobs on sled's own
/// I/O thread pool can hold the file (and so the lock) for a few more milliseconds. Reopening a directory
/// right after dropping the store (tests, an in-process restart) would then fail spuriously. A lock held by
/// another process is reported after the wait.
fn open_with_retry(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl EventStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<EventStore, StoreError> {
        Self::with_sled(
            sled::Config::new().path(path.as_ref()),
            Some(path.as_ref()),
            config,
        )
    }

    /// A store in a temporary directory that is removed when the store drops (tests, `fm run`). Its
    /// flushes are never synced: it does not outlive the process anyway.
    pub fn temporary(config: StoreConfig) -> Result<EventStore, StoreError> {
        Self::with_sled(sled::Config::new().temporary(true), None, config)
    }

    fn with_sled(
        sled_config: sled::Config,
        path: Option<&Path>,
        config: StoreConfig,
    ) -> Result<EventStore, StoreError> {
        let sled_config = sled_config.cache_capacity(config.cache_capacity_bytes);
        // Under always/batch we flush ourselves; sled's own timer would only add fsyncs. Under never,
        // sled's timer (500 ms) is the only thing that ever writes the log out.
        let sled_config = match config.durability {
            Durability::Always | Durability::Batch => sled_config.flush_every_ms(None),
            Durability::Never => sled_config,
        };
        let db = open_with_retry(&sled_config)?;
        let tree = db.open_tree("flowmason-runs")?;
        let files = match path {
            Some(path) => Some(Arc::new(
                SledFiles::open(path).map_err(|e| StoreError::Sync(Arc::new(e)))?,
            )),
            None => None,
        };
        let disk = Disk { db, files };
        let cursors: Arc<[Mutex<CursorMap>]> = (0..SHARDS)
            .map(|_| Mutex::new(CursorMap::default()))
            .collect();
        let buffer = Arc::new(WriteBuffer::default());
        let written = Arc::new(Notify::default());
        let write_out = {
            let (buffer, tree, cursors, written) = (
                buffer.clone(),
                tree.clone(),
                cursors.clone(),
                written.clone(),
            );
            Box::new(move || write_buffered(&buffer, &tree, &cursors, &written))
        };
        let flusher = Flusher::start(
            disk.clone(),
            config.durability,
            config.flush_interval,
            write_out,
        )?;
        Ok(EventStore {
            stream: None,
            inner: Arc::new(Inner {
                flusher,
                tree,
                disk,
                durability: config.durability,
                cursors,
                buffer,
                max_buffered_bytes: config.max_buffered_bytes,
                clock: AtomicI64::new(0),
                written,
            }),
        })
    }

    /// The durability policy appends follow.
    pub fn durability(&self) -> Durability {
        match &self.stream {
            Some(stream) => stream.durability(),
            None => self.inner.durability,
        }
    }

    /// Which backend holds the log: `"sled"` or `"jetstream"`.
    pub fn backend(&self) -> &'static str {
        if self.stream.is_some() {
            "jetstream"
        } else {
            "sled"
        }
    }

    /// The sled log alone (under JetStream: the local index), for the JetStream log to write into.
    pub(crate) fn local(&self) -> EventStore {
        EventStore {
            inner: self.inner.clone(),
            stream: None,
        }
    }

    fn shard(&self, run: RunId) -> MutexGuard<'_, CursorMap> {
        shard_of(&self.inner.cursors, run)
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
    /// Enforces the run's lifecycle ([`lifecycle::check`]): `RunAccepted` only as event 0, nothing before
    /// it, nothing after a terminal event (which makes a second terminal event impossible). A rejected
    /// append writes nothing.
    ///
    /// Under JetStream the events go into the local index at once (so that this process reads its own
    /// writes) and are published to the run's subject; the receipt waits for the stream's acknowledgement.
    /// A publish rejected because another writer appended to the run meanwhile fails the receipt (and
    /// every later append to the run) with [`StoreError::LostOwnership`].
    pub fn append(&self, run: RunId, kinds: Vec<EventKind>) -> Result<Appended, StoreError> {
        match &self.stream {
            Some(stream) => stream.append(&self.local(), run, kinds),
            None => self.append_at(run, kinds, None, None),
        }
    }

    /// [`append`](Self::append) to the sled log. With `first`, the events must start at that seq (a
    /// first seq other than the run's next is refused with [`StoreError::OutOfOrder`]); with `at`, they
    /// keep that timestamp (both: as another process appended them to the stream).
    pub(crate) fn append_at(
        &self,
        run: RunId,
        kinds: Vec<EventKind>,
        first: Option<u64>,
        at: Option<i64>,
    ) -> Result<Appended, StoreError> {
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
        if let Some(seq) = first
            && seq != first_seq
        {
            return Err(StoreError::OutOfOrder {
                run,
                expected: first_seq,
                got: seq,
            });
        }
        let at = match at {
            None => self.stamp(),
            Some(at) => {
                self.inner.clock.fetch_max(at, Ordering::AcqRel);
                at
            }
        };

        // Validate everything before writing anything, and see whether the summary changes.
        let mut phase = old_phase;
        let mut changed: Option<RunSummary> = None;
        let mut terminal = false;
        for (i, kind) in kinds.iter().enumerate() {
            let seq = first_seq + i as u64;
            lifecycle::check(run, phase, seq, kind)?;
            if let Some(summary) = RunSummary::accepted(run, kind, at, seq) {
                phase = Some(summary.phase);
                changed = Some(summary);
            } else if let Some(p) = kind.run_phase() {
                let summary = match &mut changed {
                    Some(s) => s,
                    // A phase without a change so far comes from the cursor.
                    None => changed.insert(cursor.map(|c| c.summary.clone()).ok_or(
                        LifecycleError::NotAccepted {
                            run,
                            seq,
                            event: kind.name(),
                        },
                    )?),
                };
                summary.apply_phase_change(kind, at, seq);
                phase = Some(p);
                terminal |= p.is_terminal();
            }
        }

        let records = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| codec::encode_event(run, first_seq + i as u64, at, kind))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ops = Vec::new();
        if let Some(summary) = &changed {
            ops.push((
                keys::summary_key(run).to_vec(),
                Some(codec::encode_summary(summary)?),
            ));
            let pos = keys::position(summary.accepted_at, run);
            if old_phase.is_none() {
                for index in keys::fixed_indexes(&summary.namespace, &summary.pipeline) {
                    ops.push((index.key(&pos), Some(IVec::default())));
                }
            }
            if old_phase != Some(summary.phase) {
                if let Some(old) = old_phase {
                    ops.push((Index::Phase(old).key(&pos), None));
                }
                ops.push((Index::Phase(summary.phase).key(&pos), Some(IVec::default())));
            }
        }
        let buffered = self
            .inner
            .buffer
            .push(run, first_seq, records, terminal, ops);
        self.inner.flusher.note_append();

        let next_seq = first_seq + kinds.len() as u64;
        {
            // An ended run stays cached (so that a late append is refused as `RunEnded`) until the write
            // cycle that stores its terminal event forgets it: memory stays bounded by the runs in flight.
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
        if buffered > self.inner.max_buffered_bytes {
            // sled is behind: this appender pays for a write cycle (after the one in progress, if any)
            // rather than letting the buffer grow. Not yet durable either way; the flusher still syncs.
            // The events are appended whatever happens here: a failed cycle keeps them buffered for the
            // next one, and whoever waits for durability hears of the failure.
            if let Err(e) = self.inner.write_buffered() {
                tracing::warn!(error = %e, "event log write cycle under back-pressure failed");
            }
        }

        // Under `batch`, a run's acceptance waits as its end does: whoever started the run is told it
        // exists (and may record its id elsewhere, as a PipelineRun's status does) only once a crash can no
        // longer lose it.
        let wait = match self.inner.durability {
            Durability::Always => true,
            Durability::Batch => terminal || old_phase.is_none(),
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
            wait: wait.then(|| Wait::Flush(self.inner.clone())),
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

    /// Waits until everything appended before the call is on disk (sled: concurrent callers share one
    /// flush) or acknowledged by the stream (JetStream), whatever the policy.
    pub async fn sync(&self) -> Result<(), StoreError> {
        match &self.stream {
            Some(stream) => stream.sync().await,
            None => sync_inner(&self.inner).await,
        }
    }

    /// Waits until everything appended to `run` before the call is durable: under sled the same as
    /// [`sync`](Self::sync); under JetStream only the run's own messages are waited for, never another
    /// run's round trip.
    pub async fn sync_run(&self, run: RunId) -> Result<(), StoreError> {
        match &self.stream {
            Some(stream) => stream.sync_run(run).await,
            None => sync_inner(&self.inner).await,
        }
    }

    /// Brings this process's view of `run` up to date before it takes the run over from another
    /// process sharing the log. JetStream: waits until this process's own publishes of the run have been
    /// stored or refused, re-reads the run from the stream into the local index, and forgets this
    /// process's writer state of it (its publish chain, and the refusal of every append after a fenced
    /// one: [`StoreError::LostOwnership`] no longer sticks), so that its next append names the stream's
    /// last message of the run. sled: nothing to do (one process has the log).
    pub async fn catch_up(&self, run: RunId) -> Result<(), StoreError> {
        match &self.stream {
            Some(stream) => stream.catch_up(&self.local(), run).await,
            None => Ok(()),
        }
    }

    /// Forgets this process's writer state of `run` (JetStream: its publish chain and a refusal after a
    /// fenced append), once the publishes already made are stored or refused; for a run this process
    /// hands over to another. Does not wait for those publishes: one still in flight may yet be stored
    /// (it continues the run's sequence as this process left it) or be refused by fencing when another
    /// process appended first. A later [`catch_up`](Self::catch_up) waits for them. sled: nothing to do.
    pub fn relinquish(&self, run: RunId) {
        if let Some(stream) = &self.stream {
            stream.relinquish(run);
        }
    }

    /// Flushes everything to disk (JetStream: waits for every publish to be acknowledged), blocking the
    /// calling thread.
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(stream) = &self.stream {
            return stream.flush();
        }
        if let Some(failure) = self.inner.flusher.failure() {
            return Err(failure.into());
        }
        self.inner.write_buffered()?;
        Ok(self.inner.disk.flush()?)
    }

    /// The first write, flush or sync of the log that failed (a full disk, an I/O error), if any. After
    /// one, the store makes nothing durable any more (every wait for durability fails with this error):
    /// sled cannot be trusted to recover in-process, so the process should be restarted.
    pub fn write_failure(&self) -> Option<StoreError> {
        self.inner.flusher.failure().map(StoreError::from)
    }

    /// All events of a run, in order; empty when the run does not exist.
    pub fn events(&self, run: RunId) -> Result<Vec<Event>, StoreError> {
        self.events_from(run, 0)
    }

    /// The events of a run from sequence `from_seq` on, in order.
    pub fn events_from(&self, run: RunId, from_seq: u64) -> Result<Vec<Event>, StoreError> {
        if let Some(stream) = &self.stream {
            stream.check_readable(run)?;
        }
        self.inner.write_buffered()?;
        // A value holds the events up to its key's seq: the first one to read is the first key >= from_seq.
        let mut events = Vec::new();
        for item in self
            .inner
            .tree
            .range(keys::event_key(run, from_seq)..=keys::event_key(run, u64::MAX))
        {
            let (key, value) = item?;
            events.extend(
                codec::decode_events(run, &key, &value)?
                    .into_iter()
                    .filter(|e| e.seq >= from_seq),
            );
        }
        Ok(events)
    }

    /// The state of a run folded from its events; `None` when the run does not exist.
    pub fn fold(&self, run: RunId) -> Result<Option<RunState>, StoreError> {
        let events = self.events(run)?;
        Ok(RunState::fold(run, &events)?)
    }

    /// The summary of a run; `None` when the run does not exist.
    pub fn summary(&self, run: RunId) -> Result<Option<RunSummary>, StoreError> {
        if let Some(stream) = &self.stream {
            stream.check_readable(run)?;
        }
        self.inner.summary(run)
    }

    /// Runs whose phase is Pending or Running (what a restart must resume), oldest first. Reads the phase
    /// index, not the events.
    pub fn unfinished_runs(&self) -> Result<Vec<RunId>, StoreError> {
        self.inner.write_buffered()?;
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
        if let Some(stream) = &self.stream {
            return stream.delete_run(&self.local(), run);
        }
        self.delete_local(run, false)
    }

    /// Deletes the run from the sled log; `force` deletes a run in flight too (the JetStream log replacing
    /// its index entry of a run from the stream).
    pub(crate) fn delete_local(&self, run: RunId, force: bool) -> Result<bool, StoreError> {
        self.inner.write_buffered()?;
        // Holding the run's shard keeps appends to it out while it is deleted.
        let mut shard = self.shard(run);
        let tree = &self.inner.tree;
        let summary = self.inner.summary(run)?;
        if let Some(s) = &summary
            && !s.phase.is_terminal()
            && !force
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
        self.inner.written.bump();
        Ok(true)
    }

    /// A receiver that changes whenever appended events become readable (a write cycle moved them from
    /// the write-behind buffer into the log) or a run was deleted or imported. Followers of a run's events
    /// wait on it, then read [`events_from`](Self::events_from) where they left off: the notification
    /// costs one publication per write cycle, nothing per append.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.inner.written.cycles.subscribe()
    }

    /// Sets the one observer of write cycles (metrics); returns false when one was already set.
    pub fn observe_writes(&self, observer: WriteObserver) -> bool {
        self.inner.written.observer.set(observer).is_ok()
    }

    /// Bytes the log takes on disk, as sled counts them (JetStream: the stream's bytes, as the server
    /// counts them).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        if let Some(stream) = &self.stream {
            return stream.size_on_disk();
        }
        Ok(self.inner.disk.db.size_on_disk()?)
    }

    /// Writes whole runs with their own timestamps in one atomic batch: events, summaries and index
    /// entries, as appends would have left them. For importing history from elsewhere and for filling a
    /// store quickly (`fm bench history`); the engine appends. Each stream must fold (start with
    /// `RunAccepted` at seq 0, consecutive seqs, nothing after a terminal event); a run that already
    /// exists is refused with [`LifecycleError::AlreadyAccepted`]. Nothing is written when any run is refused.
    pub fn import_runs(&self, runs: &[(RunId, Vec<Event>)]) -> Result<(), StoreError> {
        if let Some(stream) = &self.stream {
            return stream.import_runs(&self.local(), runs);
        }
        self.import_local(runs)
    }

    /// [`import_runs`](Self::import_runs) into the sled log.
    pub(crate) fn import_local(&self, runs: &[(RunId, Vec<Event>)]) -> Result<(), StoreError> {
        self.inner.write_buffered()?;
        let mut batch = Batch::default();
        for (run, events) in runs {
            let run = *run;
            RunState::fold(run, events)?;
            let Some(first) = events.first() else {
                continue;
            };
            if self.inner.tree.contains_key(keys::summary_key(run))? {
                return Err(LifecycleError::AlreadyAccepted {
                    run,
                    seq: first.seq,
                }
                .into());
            }
            let mut summary = RunSummary::accepted(run, &first.kind, first.at, first.seq).ok_or(
                LifecycleError::NotAccepted {
                    run,
                    seq: first.seq,
                    event: first.kind.name(),
                },
            )?;
            let mut records = Vec::with_capacity(events.len());
            for event in events {
                summary.apply_phase_change(&event.kind, event.at, event.seq);
                records.push(codec::encode_event(run, event.seq, event.at, &event.kind)?);
            }
            let last = events.len() as u64 - 1;
            batch.insert(&keys::event_key(run, last), codec::encode_segment(&records));
            let pos = keys::position(summary.accepted_at, run);
            for index in keys::fixed_indexes(&summary.namespace, &summary.pipeline) {
                batch.insert(index.key(&pos), IVec::default());
            }
            batch.insert(Index::Phase(summary.phase).key(&pos), IVec::default());
            batch.insert(&keys::summary_key(run), codec::encode_summary(&summary)?);
        }
        self.inner.tree.apply_batch(batch)?;
        self.inner.flusher.note_append();
        self.inner.written.bump();
        Ok(())
    }
}

fn shard_of(cursors: &[Mutex<CursorMap>], run: RunId) -> MutexGuard<'_, CursorMap> {
    let (_, low) = run.as_u64_pair();
    // A panic while holding the lock cannot leave a cursor half-updated (it is updated after the write
    // succeeds, in one assignment), so a poisoned lock is safe to use.
    cursors[(low as usize) % SHARDS]
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// One write cycle: the buffer into sled, then the cursors of runs that ended in it are forgotten.
fn write_buffered(
    buffer: &WriteBuffer,
    tree: &sled::Tree,
    cursors: &[Mutex<CursorMap>],
    written: &Notify,
) -> Result<(), sled::Error> {
    let started = Instant::now();
    let Some(cycle) = buffer.write(tree)? else {
        return Ok(());
    };
    if let Some(observer) = written.observer.get() {
        observer(&WriteCycle {
            events: cycle.events,
            bytes: cycle.bytes,
            duration: started.elapsed(),
        });
    }
    written.bump();
    for run in cycle.ended {
        let mut shard = shard_of(cursors, run);
        if shard
            .get(&run)
            .is_some_and(|c| c.summary.phase.is_terminal())
        {
            shard.remove(&run);
        }
    }
    Ok(())
}

impl Inner {
    #[cfg(test)]
    pub(crate) fn flusher_is_dirty(&self) -> bool {
        self.flusher.is_dirty()
    }

    /// Writes the appends buffered so far into sled (not yet durable): every read path calls this first,
    /// so that readers see every append that returned before they started.
    pub(crate) fn write_buffered(&self) -> Result<(), StoreError> {
        Ok(write_buffered(
            &self.buffer,
            &self.tree,
            &self.cursors,
            &self.written,
        )?)
    }

    pub(crate) fn summary(&self, run: RunId) -> Result<Option<RunSummary>, StoreError> {
        self.write_buffered()?;
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

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::event::{RunError, Trigger};
    use crate::query::RunQuery;

    pub(crate) fn config(durability: Durability) -> StoreConfig {
        StoreConfig {
            durability,
            flush_interval: Duration::from_millis(5),
            cache_capacity_bytes: 16 << 20,
            max_buffered_bytes: 64 << 20,
        }
    }

    pub(crate) fn accepted(pipeline: &str, namespace: &str) -> EventKind {
        accepted_with(pipeline, namespace, Trigger::Manual, &[])
    }

    pub(crate) fn accepted_with(
        pipeline: &str,
        namespace: &str,
        trigger: Trigger,
        labels: &[(&str, &str)],
    ) -> EventKind {
        EventKind::RunAccepted {
            pipeline: pipeline.into(),
            namespace: namespace.into(),
            generation: 3,
            trigger,
            run_name: Some(format!("{pipeline}-run")),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            plan: json!({"stages": ["a", "b"]}),
            inputs: json!({"x": 1}),
        }
    }

    pub(crate) fn started(stage: &str) -> EventKind {
        EventKind::StageStarted {
            stage: stage.into(),
            attempt: 1,
            input: serde_json::Value::Null,
        }
    }

    pub(crate) fn succeeded(stage: &str) -> EventKind {
        EventKind::StageSucceeded {
            stage: stage.into(),
            attempt: 1,
            output: json!({"ok": stage}),
            skip: vec![],
            reused_from: None,
        }
    }

    pub(crate) fn run_succeeded() -> EventKind {
        EventKind::RunSucceeded { output: json!(42) }
    }

    /// Appends and returns the events, for tests that do not wait on the receipt.
    pub(crate) fn put(store: &EventStore, run: RunId, kinds: Vec<EventKind>) -> Vec<Event> {
        store.append(run, kinds).unwrap().events
    }

    pub(crate) fn new_run() -> RunId {
        RunId::now_v7()
    }

    #[test]
    fn appends_past_the_buffer_bound_write_the_buffer_out_themselves() {
        let bounded = |max_buffered_bytes| {
            EventStore::temporary(StoreConfig {
                // No timer-driven write cycle during the test: only the bound empties the buffer.
                flush_interval: Duration::from_secs(3600),
                max_buffered_bytes,
                ..config(Durability::Never)
            })
            .unwrap()
        };
        let append_200 = |store: &EventStore| {
            let run = new_run();
            let _ = store.append(run, vec![accepted("p", "ns")]).unwrap();
            let mut most = 0;
            for i in 0..200 {
                let _ = store.append(run, vec![started(&format!("s{i}"))]).unwrap();
                most = most.max(store.inner.buffer.bytes());
            }
            (run, most)
        };
        let (_, unbounded_most) = append_200(&bounded(usize::MAX));
        assert!(
            unbounded_most > 4_000,
            "200 events buffer {unbounded_most} bytes"
        );
        let store = bounded(1_000);
        let (run, most) = append_200(&store);
        assert!(most > 0, "appends are still buffered");
        assert!(most <= 1_000, "the buffer stayed within its bound: {most}");
        let events = store.events(run).unwrap();
        assert_eq!(events.len(), 201);
        assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    }

    #[test]
    fn append_assigns_consecutive_seqs_and_reads_back_in_order() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let run = new_run();
        let a = store
            .append(run, vec![accepted("p", "ns"), EventKind::RunStarted])
            .unwrap();
        assert_eq!(a.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
        assert!(!a.must_wait());
        for i in 0..300u64 {
            let e = store.append(run, vec![started(&format!("s{i}"))]).unwrap();
            assert_eq!(e.events[0].seq, i + 2);
        }
        let events = store.events(run).unwrap();
        assert_eq!(events.len(), 302);
        assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(events[0].kind, accepted("p", "ns"));
        assert_eq!(store.events_from(run, 300).unwrap().len(), 2);
        assert_eq!(store.events_from(run, 400).unwrap(), vec![]);
        assert_eq!(store.events(new_run()).unwrap(), vec![]);
        assert_eq!(store.fold(new_run()).unwrap(), None);
        // Another run's events never mix in.
        let other = new_run();
        put(&store, other, vec![accepted("q", "ns")]);
        assert_eq!(store.events(run).unwrap().len(), 302);
        assert_eq!(store.events(other).unwrap().len(), 1);
    }

    #[test]
    fn seqs_summaries_and_indexes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let run = new_run();
        let done = new_run();
        let before;
        {
            let store = EventStore::open(dir.path(), config(Durability::Batch)).unwrap();
            put(
                &store,
                run,
                vec![accepted("p", "ns"), EventKind::RunStarted, started("a")],
            );
            put(
                &store,
                done,
                vec![accepted("p", "ns"), EventKind::RunStarted, run_succeeded()],
            );
            before = (
                store.fold(run).unwrap(),
                store.summary(run).unwrap(),
                store.fold(done).unwrap(),
            );
            assert!(before.0.is_some());
        }
        let store = EventStore::open(dir.path(), config(Durability::Batch)).unwrap();
        assert_eq!(
            (
                store.fold(run).unwrap(),
                store.summary(run).unwrap(),
                store.fold(done).unwrap()
            ),
            before
        );
        // The sequence continues where it stopped.
        let next = store.append(run, vec![succeeded("a")]).unwrap();
        assert_eq!(next.events[0].seq, 3);
        // The ended run stays ended.
        let err = store.append(done, vec![started("x")]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Lifecycle(LifecycleError::RunEnded {
                    event: "StageStarted",
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(store.unfinished_runs().unwrap(), vec![run]);
        let page = store.query(&RunQuery::default()).unwrap();
        assert_eq!(
            page.runs.iter().map(|s| s.run_id).collect::<Vec<_>>(),
            vec![done, run]
        );
    }

    #[test]
    fn run_accepted_only_first_and_nothing_after_the_end() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let run = new_run();
        let err = store.append(run, vec![started("a")]).unwrap_err();
        assert!(
            matches!(err, StoreError::Lifecycle(LifecycleError::NotAccepted { run: r, .. }) if r == run),
            "{err:?}"
        );
        assert_eq!(store.events(run).unwrap(), vec![]);

        put(&store, run, vec![accepted("p", "ns")]);
        let err = store.append(run, vec![accepted("p", "ns")]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Lifecycle(LifecycleError::AlreadyAccepted { .. })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(&run.to_string()), "{err}");
        // A rejected batch writes nothing, not even its valid prefix.
        let err = store
            .append(run, vec![EventKind::RunStarted, accepted("p", "ns")])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Lifecycle(LifecycleError::AlreadyAccepted { .. })
            ),
            "{err:?}"
        );
        assert_eq!(store.events(run).unwrap().len(), 1);
        assert_eq!(
            store.summary(run).unwrap().unwrap().phase,
            RunPhase::Pending
        );

        let fail = EventKind::RunFailed {
            error: RunError {
                message: "boom".into(),
                stage: None,
                details: json!(null),
            },
        };
        put(&store, run, vec![EventKind::RunStarted, fail]);
        for kind in [
            run_succeeded(),
            EventKind::RunCancelled {
                reason: String::new(),
            },
            started("b"),
        ] {
            let name = kind.name();
            let err = store.append(run, vec![kind]).unwrap_err();
            assert!(
                matches!(err, StoreError::Lifecycle(LifecycleError::RunEnded { event, .. }) if event == name),
                "{err:?}"
            );
        }
        // Terminal then more in one batch is refused too.
        let other = new_run();
        let err = store
            .append(
                other,
                vec![accepted("p", "ns"), run_succeeded(), started("a")],
            )
            .unwrap_err();
        assert!(err.is_run_ended(), "{err:?}");
        assert_eq!(store.summary(other).unwrap(), None);
        let state = store.fold(run).unwrap().unwrap();
        assert_eq!(state.phase, RunPhase::Failed);
        assert_eq!(state.last_seq, 2);
        // Ended runs are dropped from the cursor cache.
        assert!(
            store
                .inner
                .cursors
                .iter()
                .all(|s| s.lock().unwrap().get(&run).is_none())
        );
        assert!(store.append(run, vec![]).unwrap().events.is_empty());
    }

    #[test]
    fn summary_follows_phase_changes_atomically() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let run = new_run();
        let a = store
            .append(
                run,
                vec![accepted_with("p", "ns", Trigger::Webhook, &[("team", "x")])],
            )
            .unwrap();
        let s = store.summary(run).unwrap().unwrap();
        assert_eq!(s.phase, RunPhase::Pending);
        assert_eq!(s.accepted_at, a.events[0].at);
        assert_eq!(
            (
                s.pipeline.as_str(),
                s.namespace.as_str(),
                s.trigger,
                s.generation
            ),
            ("p", "ns", Trigger::Webhook, 3)
        );
        assert_eq!(s.run_name.as_deref(), Some("p-run"));
        assert_eq!(s.labels.get("team").map(String::as_str), Some("x"));

        put(&store, run, vec![EventKind::RunStarted]);
        put(&store, run, vec![started("a")]);
        let s = store.summary(run).unwrap().unwrap();
        assert_eq!((s.phase, s.last_seq), (RunPhase::Running, 1));
        assert!(s.started_at.is_some());
        // Stage events do not rewrite the summary.
        put(&store, run, vec![succeeded("a")]);
        assert_eq!(store.summary(run).unwrap().unwrap(), s);

        put(
            &store,
            run,
            vec![EventKind::RunTimedOut {
                message: String::new(),
            }],
        );
        let s = store.summary(run).unwrap().unwrap();
        let state = store.fold(run).unwrap().unwrap();
        assert_eq!(s.phase, state.phase);
        assert_eq!(s.phase, RunPhase::TimedOut);
        assert_eq!(s.last_seq, state.last_seq);
        assert_eq!(s.finished_at, state.finished_at);
        assert_eq!(s.error.as_deref(), Some("run timed out"));
        // Exactly one phase index entry.
        let phase_keys: usize = RunPhase::ALL
            .iter()
            .map(|p| {
                store
                    .inner
                    .tree
                    .scan_prefix(Index::Phase(*p).prefix())
                    .count()
            })
            .sum();
        assert_eq!(phase_keys, 1);
        assert_eq!(
            store
                .inner
                .tree
                .scan_prefix(Index::Phase(RunPhase::TimedOut).prefix())
                .count(),
            1
        );
    }

    #[test]
    fn unfinished_runs_lists_pending_and_running_oldest_first() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let runs: Vec<RunId> = (0..5).map(|_| new_run()).collect();
        for run in &runs {
            put(&store, *run, vec![accepted("p", "ns")]);
            std::thread::sleep(Duration::from_millis(1));
        }
        put(&store, runs[1], vec![EventKind::RunStarted]);
        put(
            &store,
            runs[2],
            vec![EventKind::RunStarted, run_succeeded()],
        );
        put(
            &store,
            runs[4],
            vec![EventKind::RunCancelled {
                reason: "user".into(),
            }],
        );
        assert_eq!(
            store.unfinished_runs().unwrap(),
            vec![runs[0], runs[1], runs[3]]
        );
        assert_eq!(
            store.summary(runs[4]).unwrap().unwrap().error.as_deref(),
            Some("user")
        );
    }

    #[test]
    fn delete_run_removes_everything_and_refuses_runs_in_flight() {
        let store = EventStore::temporary(config(Durability::Never)).unwrap();
        let keep = new_run();
        put(&store, keep, vec![accepted("p", "ns")]);
        store.inner.write_buffered().unwrap();
        let before: Vec<_> = store.inner.tree.iter().keys().map(Result::unwrap).collect();

        let run = new_run();
        put(
            &store,
            run,
            vec![
                accepted_with("p", "ns", Trigger::Cron, &[("a", "b")]),
                EventKind::RunStarted,
            ],
        );
        put(&store, run, vec![started("a"), succeeded("a")]);
        let err = store.delete_run(run).unwrap_err();
        assert!(
            matches!(err, StoreError::RunInFlight { run: r } if r == run),
            "{err:?}"
        );
        assert_eq!(store.events(run).unwrap().len(), 4);

        put(&store, run, vec![run_succeeded()]);
        assert!(store.delete_run(run).unwrap());
        // Every key of the run is gone: the tree is as it was before the run.
        let after: Vec<_> = store.inner.tree.iter().keys().map(Result::unwrap).collect();
        assert_eq!(after, before);
        assert_eq!(store.summary(run).unwrap(), None);
        assert_eq!(store.events(run).unwrap(), vec![]);
        assert!(!store.delete_run(run).unwrap());
        assert!(!store.delete_run(new_run()).unwrap());
        assert_eq!(store.query(&RunQuery::default()).unwrap().runs.len(), 1);
    }

    #[test]
    fn corrupt_and_unknown_version_records_name_run_and_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path(), config(Durability::Batch)).unwrap();
        let run = new_run();
        put(
            &store,
            run,
            vec![
                accepted("p", "ns"),
                EventKind::RunStarted,
                started("a"),
                succeeded("a"),
            ],
        );
        let tree = &store.inner.tree;

        tree.insert(
            keys::event_key(run, 2),
            &b"\x01{\"at\":1,\"kind\":{\"type\":\"NoSuchEvent\"}}"[..],
        )
        .unwrap();
        let err = store.events(run).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { run: r, seq: 2, .. } if r == run),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("run {run}: event 2 is corrupt: "))
                && msg.contains("NoSuchEvent"),
            "{msg}"
        );
        assert!(matches!(
            store.fold(run).unwrap_err(),
            StoreError::Corrupt { seq: 2, .. }
        ));

        tree.insert(keys::event_key(run, 2), &b"\x01not json at all"[..])
            .unwrap();
        assert!(matches!(
            store.events(run).unwrap_err(),
            StoreError::Corrupt { seq: 2, .. }
        ));

        tree.insert(keys::event_key(run, 3), &b"\x07{}"[..])
            .unwrap();
        let err = store.events_from(run, 3).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedVersion {
                    seq: 3,
                    version: 7,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("run {run}: event 3 has unsupported format version 7")
        );

        tree.insert(keys::summary_key(run), &b"\x01[]"[..]).unwrap();
        let err = store.summary(run).unwrap_err();
        assert!(
            matches!(err, StoreError::CorruptSummary { run: r, .. } if r == run),
            "{err:?}"
        );
        // A corrupt summary is reported by queries too, never a panic.
        assert!(matches!(
            store.query(&RunQuery::default()).unwrap_err(),
            StoreError::CorruptSummary { .. }
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn always_durable_appends_from_100_tasks_all_complete() {
        // sled#1308: 100 concurrent insert + flush_async hung; here they share group-committed flushes.
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path(), config(Durability::Always)).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let run = new_run();
                let receipt = store.append(run, vec![accepted("p", "ns")]).unwrap();
                assert!(receipt.must_wait());
                receipt.durable().await.unwrap();
                for i in 0..5 {
                    let events = store
                        .append_durable(run, vec![started(&format!("s{i}"))])
                        .await
                        .unwrap();
                    assert_eq!(events[0].seq, i + 1);
                }
                run
            }));
        }
        let all = tokio::time::timeout(Duration::from_secs(60), futures_join(tasks))
            .await
            .expect("appenders hung");
        assert_eq!(all.len(), 100);
        store.sync().await.unwrap();
        drop(store);
        let store = EventStore::open(dir.path(), config(Durability::Always)).unwrap();
        for run in all {
            assert_eq!(store.events(run).unwrap().len(), 6);
        }
    }

    async fn futures_join(tasks: Vec<tokio::task::JoinHandle<RunId>>) -> Vec<RunId> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receipts_wait_as_the_policy_says() {
        // (policy, acceptance waits, stage event waits, terminal event waits)
        for (durability, accepted_waits, stage_waits, terminal_waits) in [
            (Durability::Always, true, true, true),
            (Durability::Batch, true, false, true),
            (Durability::Never, false, false, false),
        ] {
            let store = EventStore::temporary(config(durability)).unwrap();
            assert_eq!(store.durability(), durability);
            let run = new_run();
            let r = store.append(run, vec![accepted("p", "ns")]).unwrap();
            assert_eq!(r.must_wait(), accepted_waits, "{durability}");
            r.durable().await.unwrap();
            let r = store.append(run, vec![started("a")]).unwrap();
            assert_eq!(r.must_wait(), stage_waits, "{durability}");
            assert_eq!(r.durable().await.unwrap().len(), 1);
            let r = store.append(run, vec![run_succeeded()]).unwrap();
            assert_eq!(r.must_wait(), terminal_waits, "{durability}");
            r.durable().await.unwrap();
            store.sync().await.unwrap();
            store.flush().unwrap();
        }
    }

    #[test]
    fn batch_policy_flushes_in_the_background_and_the_flusher_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = new_run();
        let store = EventStore::open(dir.path(), config(Durability::Batch)).unwrap();
        put(&store, run, vec![accepted("p", "ns")]);
        // The dirty flag is cleared by the background flush within a few intervals.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.inner.flusher_is_dirty() {
            assert!(std::time::Instant::now() < deadline, "no background flush");
            std::thread::sleep(Duration::from_millis(1));
        }
        let clone = store.clone();
        drop(store);
        assert_eq!(clone.events(run).unwrap().len(), 1);
        drop(clone);
        // Dropping the last handle joined the flusher and closed sled: the directory opens again at once.
        let store = EventStore::open(dir.path(), config(Durability::Batch)).unwrap();
        assert_eq!(store.events(run).unwrap().len(), 1);
    }

    mod recovery_properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            // Each case opens a sled log twice: few cases.
            #![proptest_config(ProptestConfig::with_cases(24))]

            #[test]
            fn recovery_of_a_log_with_a_corrupt_record_reports_it_and_never_panics(
                garbage in proptest::collection::vec(any::<u8>(), 0..256),
                seq in 0..6u64,
            ) {
                let dir = tempfile::tempdir().unwrap();
                let run = new_run();
                {
                    let store = EventStore::open(dir.path(), config(Durability::Always)).unwrap();
                    put(
                        &store,
                        run,
                        vec![accepted("p", "ns"), EventKind::RunStarted, started("a")],
                    );
                    store.flush().unwrap();
                    store.inner.tree.insert(keys::event_key(run, seq), garbage.clone()).unwrap();
                    store.flush().unwrap();
                }
                // What a restart does: reopen, list the unfinished runs, fold each.
                let store = EventStore::open(dir.path(), config(Durability::Always)).unwrap();
                prop_assert_eq!(store.unfinished_runs().unwrap(), vec![run]);
                match store.fold(run) {
                    Ok(_) => {}
                    Err(err) => prop_assert!(
                        err.to_string().contains(&run.to_string()),
                        "{}", err
                    ),
                }
                // Listing stays usable: the corrupt event does not touch the summary and indexes.
                prop_assert!(store.query(&RunQuery::default()).is_ok());
            }
        }
    }
}

//! The write-behind buffer: appends land here and a write cycle moves them into sled in one atomic batch.
//!
//! sled pays per key written, far more than encoding an event costs. Buffering appends for a few
//! milliseconds (the batch policy's flush interval, or until someone waits for durability) turns the events
//! a run appends in that time into one segment under one key, and the summary and index updates of all
//! runs into one batch. Nothing is weaker for it: an append was never durable before the flush that
//! follows it, and a write cycle always precedes that flush. Readers see their writes because every read
//! path writes the buffer out first. The buffer is bounded: past `StoreConfig::max_buffered_bytes` the
//! appender runs the write cycle itself, so a slow disk slows appends down instead of filling memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sled::{Batch, IVec};

use crate::codec;
use crate::event::RunId;
use crate::keys;

/// Consecutive events of one run appended since the last write cycle.
struct Segment {
    first_seq: u64,
    records: Vec<IVec>,
    ended: bool,
}

#[derive(Default)]
struct Pending {
    segments: HashMap<RunId, Segment>,
    /// Summary and index writes (`None` removes), in append order.
    ops: Vec<(Vec<u8>, Option<IVec>)>,
}

/// What one write cycle moved into sled.
pub(crate) struct Written {
    /// Runs whose terminal event was among what was written.
    pub ended: Vec<RunId>,
    pub events: usize,
    /// Encoded size of the events.
    pub bytes: usize,
}

/// Appends not yet in sled.
#[derive(Default)]
pub(crate) struct WriteBuffer {
    pending: Mutex<Pending>,
    /// Encoded event bytes in `pending` (what bounds the buffer; see `StoreConfig::max_buffered_bytes`).
    bytes: AtomicUsize,
    /// Held for a whole write cycle: cycles never overlap, so they reach sled in append order.
    writing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent (pushes and swaps), so a poisoned lock is usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WriteBuffer {
    /// Buffers encoded events (consecutive from `first_seq`) and the summary/index writes that go with them.
    pub(crate) fn push(
        &self,
        run: RunId,
        first_seq: u64,
        records: Vec<IVec>,
        ended: bool,
        ops: Vec<(Vec<u8>, Option<IVec>)>,
    ) -> usize {
        let added: usize = records.iter().map(|r| r.len()).sum();
        let mut pending = lock(&self.pending);
        match pending.segments.get_mut(&run) {
            Some(segment) => {
                segment.records.extend(records);
                segment.ended |= ended;
            }
            None => {
                pending.segments.insert(
                    run,
                    Segment {
                        first_seq,
                        records,
                        ended,
                    },
                );
            }
        }
        pending.ops.extend(ops);
        self.bytes.fetch_add(added, Ordering::Relaxed) + added
    }

    /// Encoded event bytes buffered now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Moves everything buffered into `tree` in one atomic batch; `None` when nothing was buffered. On
    /// error the buffered writes are kept for the next cycle.
    pub(crate) fn write(&self, tree: &sled::Tree) -> Result<Option<Written>, sled::Error> {
        let _cycle = lock(&self.writing);
        let taken = {
            let mut pending = lock(&self.pending);
            self.bytes.store(0, Ordering::Relaxed);
            std::mem::take(&mut *pending)
        };
        if taken.segments.is_empty() && taken.ops.is_empty() {
            return Ok(None);
        }
        let mut batch = Batch::default();
        let mut ended = Vec::new();
        let (mut events, mut bytes) = (0, 0);
        for (run, segment) in &taken.segments {
            events += segment.records.len();
            bytes += segment.records.iter().map(|r| r.len()).sum::<usize>();
            let last = segment.first_seq + segment.records.len() as u64 - 1;
            batch.insert(
                &keys::event_key(*run, last),
                codec::encode_segment(&segment.records),
            );
            if segment.ended {
                ended.push(*run);
            }
        }
        for (key, value) in &taken.ops {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.clone()),
                None => batch.remove(key.as_slice()),
            }
        }
        if let Err(e) = tree.apply_batch(batch) {
            self.restore(taken);
            return Err(e);
        }
        Ok(Some(Written {
            ended,
            events,
            bytes,
        }))
    }

    /// Puts a cycle that could not be written back in front of what was appended since.
    fn restore(&self, mut taken: Pending) {
        let mut pending = lock(&self.pending);
        let restored: usize = taken
            .segments
            .values()
            .flat_map(|s| &s.records)
            .map(|r| r.len())
            .sum();
        self.bytes.fetch_add(restored, Ordering::Relaxed);
        for (run, newer) in std::mem::take(&mut pending.segments) {
            match taken.segments.get_mut(&run) {
                Some(older) => {
                    older.records.extend(newer.records);
                    older.ended |= newer.ended;
                }
                None => {
                    taken.segments.insert(run, newer);
                }
            }
        }
        taken.ops.append(&mut pending.ops);
        *pending = taken;
    }
}

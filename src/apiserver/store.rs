//! The object store: one sled database (`DATA_DIR/api`, separate from the event log) holding every API
//! object as JSON, keyed by `group/version/resource`, namespace and name.
//!
//! Every write goes through one lock: it takes the next global `resourceVersion` and writes the object, a
//! watch-history entry, the owner and uid indexes and the persisted counter in one sled transaction.
//! Then, outside the lock, it waits until a flush covers it (group commit: one writer flushes for every
//! write committed meanwhile, in resourceVersion order, while the next writers already take the lock),
//! and only then is it answered and fanned out to watchers. So resource versions are consecutive, never
//! reused after a restart (the counter resumes from the highest one persisted), the watch history is
//! ordered, watchers hear only of writes on disk, and an answered write is on disk: the flush is sled's
//! `flush()` followed by an fdatasync of sled's files (see `flowmason_store::sled_files`), so it survives a
//! power loss, not just a crash of the process.
//!
//! A failed flush (a full disk) makes the store refuse every later write with that error: sled does not
//! recover from a failed write in-process (its next flush waits for the failed one forever), so the
//! process reports the store as not ready ([`ObjectStore::write_failure`]) and is meant to be restarted.
//!
//! The watch history keeps the last `history_limit` changes (by resourceVersion) so that a watch
//! resuming from a recent version replays what it missed, including across a restart; a watch from an
//! older version is told it expired (410 Gone).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use flowmason_store::sled_files::{SledFiles, SyncError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};
use tokio::sync::broadcast;

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the API store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("cannot open the API store: {0}")]
    OpenFiles(#[source] SyncError),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored object under key {key:?} is not valid JSON: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot encode object as JSON: {0}")]
    Encode(serde_json::Error),
    /// The write was applied but the flush meant to put it on disk failed.
    #[error("cannot flush the API store to disk (resourceVersion {rv}): {message}")]
    Flush { rv: u64, message: String },
    /// An earlier flush failed; nothing is written until the process is restarted.
    #[error("the API store accepts no writes since a flush failed: {0}")]
    Unwritable(String),
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeType {
    #[serde(rename = "ADDED")]
    Added,
    #[serde(rename = "MODIFIED")]
    Modified,
    #[serde(rename = "DELETED")]
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One committed change, as kept in the watch history and broadcast to watchers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub rv: u64,
    #[serde(rename = "type")]
    pub change: ChangeType,
    /// `group/version/resource`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// The object after the change (for `Deleted`, its last state with the deleting resourceVersion).
    pub object: Value,
    /// The object's labels before the change, so that a label-selector watch can tell an object that
    /// stopped (or started) matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_labels: Option<Value>,
}

/// What a [`ObjectStore::mutate`] closure decided.
#[derive(Debug)]
pub enum Mutation {
    /// Write this object (created or replaced).
    Put(Value),
    /// Remove the object.
    Delete,
    /// Leave things as they are (e.g. an update that changes nothing).
    Keep,
}

/// The result of a mutation: the object as stored (with its new resourceVersion), or as it was when
/// nothing changed, plus the previous state.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub object: Option<Value>,
    pub previous: Option<Value>,
    pub change: Option<ChangeType>,
}

/// Identifies one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// `group/version/resource` (core group is empty: `/v1/configmaps`).
    pub resource: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        ObjectKey {
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// `resource \0 namespace \0 name`: keys of one resource sort together, then by namespace.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\0{}\0{}", self.resource, self.namespace, self.name).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, '\0');
        Some(ObjectKey {
            resource: parts.next()?.to_string(),
            namespace: parts.next()?.to_string(),
            name: parts.next()?.to_string(),
        })
    }
}

/// Key prefix of one resource, optionally narrowed to a namespace.
pub fn scan_prefix(resource: &str, namespace: Option<&str>) -> Vec<u8> {
    match namespace {
        Some(ns) => format!("{resource}\0{ns}\0").into_bytes(),
        None => format!("{resource}\0").into_bytes(),
    }
}

const RV_KEY: &[u8] = b"resourceVersion";

/// The sled-backed store of API objects. Cheap to share behind an `Arc`.
pub struct ObjectStore {
    db: sled::Db,
    /// sled's files, synced after each flush (when durable).
    files: Option<SledFiles>,
    /// The first flush that failed; set once, never cleared.
    failure: OnceLock<String>,
    objects: Tree,
    history: Tree,
    meta: Tree,
    /// `owner uid \0 dependent key` -> empty: who to cascade to.
    owners: Tree,
    /// `uid` -> object key.
    uids: Tree,
    /// The last resourceVersion handed out; holding the lock serialises writers.
    write: Mutex<u64>,
    /// Committed writes waiting for a flush (group commit).
    commit: Mutex<Commit>,
    /// Signalled when a flush ends.
    flushed: Condvar,
    changes: broadcast::Sender<Arc<Change>>,
    history_limit: u64,
    durable: bool,
}

/// The group commit's state.
#[derive(Default)]
struct Commit {
    /// Committed changes not yet flushed, in resourceVersion order.
    queue: Vec<Arc<Change>>,
    /// A writer is flushing (the others wait for it).
    flushing: bool,
    /// Every change up to this resourceVersion is on disk (or was given up on: see `failed`).
    done_rv: u64,
    /// The latest flushes that failed: the resourceVersions each covered (first, last) and its error.
    failed: VecDeque<(u64, u64, String)>,
}

/// How many failed flushes are remembered for writers still to wake up.
const FAILED_FLUSHES_KEPT: usize = 64;

impl ObjectStore {
    /// Opens (creating) the store at `path`. `history_limit` is how many recent changes watches can
    /// resume from; `durable` flushes every write before it is answered.
    pub fn open(path: &Path, history_limit: u64, durable: bool) -> Result<Self, StoreError> {
        let db = open_with_retry(path)?;
        let files = if durable {
            Some(SledFiles::open(path).map_err(StoreError::OpenFiles)?)
        } else {
            None
        };
        let objects = db.open_tree("objects")?;
        let history = db.open_tree("history")?;
        let meta = db.open_tree("meta")?;
        let owners = db.open_tree("owners")?;
        let uids = db.open_tree("uids")?;
        let persisted = meta
            .get(RV_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let last_history = history
            .last()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let rv = persisted.max(last_history);
        // A smaller limit than last time (or none kept) compacts right away.
        let keep_from = rv.saturating_sub(history_limit) + 1;
        for key in history.range(..keep_from.to_be_bytes().to_vec()).keys() {
            history.remove(key?)?;
        }
        let (changes, _) = broadcast::channel(4096);
        Ok(ObjectStore {
            db,
            files,
            failure: OnceLock::new(),
            objects,
            history,
            meta,
            owners,
            uids,
            write: Mutex::new(rv),
            commit: Mutex::new(Commit {
                done_rv: rv,
                ..Commit::default()
            }),
            flushed: Condvar::new(),
            changes,
            history_limit,
            durable,
        })
    }

    fn lock_commit(&self) -> MutexGuard<'_, Commit> {
        self.commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the change with resourceVersion `rv` is on disk and announced to watchers. The first
    /// writer to find no flush going takes every queued change, flushes once, announces them in order
    /// and wakes the others; a writer whose change was covered by someone else's flush just returns.
    fn wait_durable(&self, rv: u64) -> Result<(), StoreError> {
        let mut commit = self.lock_commit();
        loop {
            if commit.done_rv >= rv {
                return match commit
                    .failed
                    .iter()
                    .find(|(first, last, _)| (*first..=*last).contains(&rv))
                {
                    Some((_, _, message)) => Err(StoreError::Flush {
                        rv,
                        message: message.clone(),
                    }),
                    None => Ok(()),
                };
            }
            if commit.flushing {
                commit = self.flushed.wait(commit).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            commit.flushing = true;
            let batch = std::mem::take(&mut commit.queue);
            drop(commit);
            let flushed = self.flush_to_disk();
            // Announced even if the flush failed: readers already see these writes, and watchers must
            // not fall behind what a list shows. The writers hear of the failure.
            for change in &batch {
                // No receivers is fine: nobody is watching.
                let _ = self.changes.send(change.clone());
            }
            commit = self.lock_commit();
            commit.flushing = false;
            if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                commit.done_rv = commit.done_rv.max(last.rv);
                if let Err(e) = flushed {
                    if commit.failed.len() == FAILED_FLUSHES_KEPT {
                        commit.failed.pop_front();
                    }
                    commit.failed.push_back((first.rv, last.rv, e));
                }
            }
            self.flushed.notify_all();
        }
    }

    /// sled's flush, then the sync of its files (when durable). The first failure is kept: it refuses
    /// every later write.
    fn flush_to_disk(&self) -> Result<(), String> {
        if let Some(earlier) = self.failure.get() {
            return Err(earlier.clone());
        }
        if !self.durable {
            return Ok(());
        }
        let result = self.db.flush().map(drop).map_err(|e| e.to_string());
        let result = result.and_then(|()| match &self.files {
            Some(files) => files.sync().map_err(|e| e.to_string()),
            None => Ok(()),
        });
        if let Err(e) = &result
            && self.failure.set(e.clone()).is_ok()
        {
            tracing::error!(error = %e, "API store flush failed; the API store accepts no more writes");
        }
        result
    }

    /// Why the store cannot write any more (a flush failed), if it cannot.
    pub fn write_failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // A writer that panicked left no partial state behind (sled transactions are atomic).
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest resourceVersion handed out.
    pub fn current_rv(&self) -> u64 {
        *self.lock()
    }

    /// Receives every committed change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        match self.objects.get(key.encode())? {
            Some(bytes) => Ok(Some(decode(key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The key of the object with this uid, if it exists.
    pub fn key_of_uid(&self, uid: &str) -> Result<Option<ObjectKey>, StoreError> {
        Ok(self
            .uids
            .get(uid.as_bytes())?
            .and_then(|k| ObjectKey::decode(&k)))
    }

    /// Keys of the objects whose ownerReferences name `uid`.
    pub fn dependents(&self, uid: &str) -> Result<Vec<ObjectKey>, StoreError> {
        let prefix = format!("{uid}\0").into_bytes();
        let mut out = Vec::new();
        for key in self.owners.scan_prefix(&prefix).keys() {
            let key = key?;
            if let Some(dep) = ObjectKey::decode(&key[prefix.len()..]) {
                out.push(dep);
            }
        }
        Ok(out)
    }

    /// A consistent page of objects under `prefix`, starting after `after` (an encoded key), at most
    /// `limit` (0: all) objects accepted by `keep`, together with the resourceVersion they reflect and
    /// whether more objects follow. Holds the write lock while reading, so the page is a snapshot.
    pub fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        keep: &dyn Fn(&Value) -> bool,
    ) -> Result<ListPage, StoreError> {
        let guard = self.lock();
        let rv = *guard;
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        let iter = match after {
            Some(after) => {
                let mut start = after.to_vec();
                start.push(0);
                self.objects.range(start..)
            }
            None => self.objects.range(prefix.to_vec()..),
        };
        for entry in iter {
            let (k, v) = entry?;
            if !k.starts_with(prefix) {
                break;
            }
            let key = ObjectKey::decode(&k).unwrap_or_else(|| ObjectKey::new("", "", ""));
            let value = decode(&key, &v)?;
            if !keep(&value) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
            last_key = Some(k.to_vec());
            items.push(value);
        }
        drop(guard);
        Ok(ListPage {
            rv,
            items,
            last_key: if more { last_key } else { None },
        })
    }

    /// The changes after `rv`, oldest first, or `None` when some of them were compacted away (the
    /// caller answers 410 Gone).
    pub fn history_after(&self, rv: u64) -> Result<Option<Vec<Change>>, StoreError> {
        let current = self.current_rv();
        if rv >= current {
            return Ok(Some(Vec::new()));
        }
        let oldest = self
            .history
            .first()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes));
        match oldest {
            Some(oldest) if oldest <= rv + 1 => {}
            _ => return Ok(None),
        }
        let mut out = Vec::new();
        for entry in self.history.range((rv + 1).to_be_bytes().to_vec()..) {
            let (k, v) = entry?;
            let change: Change =
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    key: format!("history/{k:?}"),
                    source,
                })?;
            out.push(change);
        }
        Ok(Some(out))
    }

    /// Reads the object at `key`, lets `decide` choose what to do with it, and commits that under the
    /// write lock: the new object gets the next resourceVersion, the change is recorded in the watch
    /// history, flushed (when durable) and broadcast. `decide` runs under the lock, so
    /// read-check-write sequences (optimistic concurrency, patches) are atomic. Blocking: call it
    /// from `spawn_blocking`.
    pub fn mutate<E>(
        &self,
        key: &ObjectKey,
        decide: impl FnOnce(Option<Value>) -> Result<Mutation, E>,
    ) -> Result<Outcome, E>
    where
        E: From<StoreError>,
    {
        let mut guard = self.lock();
        if let Some(failure) = self.failure.get() {
            return Err(StoreError::Unwritable(failure.clone()).into());
        }
        let encoded = key.encode();
        let previous = self.get(key)?;
        let mutation = decide(previous.clone())?;
        let (object, change) = match mutation {
            Mutation::Keep => {
                return Ok(Outcome {
                    object: previous.clone(),
                    previous,
                    change: None,
                });
            }
            Mutation::Put(object) => {
                let change = if previous.is_some() {
                    ChangeType::Modified
                } else {
                    ChangeType::Added
                };
                (object, change)
            }
            Mutation::Delete => match &previous {
                Some(p) => (p.clone(), ChangeType::Deleted),
                None => {
                    return Ok(Outcome {
                        object: None,
                        previous: None,
                        change: None,
                    });
                }
            },
        };
        let rv = *guard + 1;
        let mut object = object;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let record = Change {
            rv,
            change,
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            object,
            old_labels: previous
                .as_ref()
                .map(|p| p["metadata"]["labels"].clone())
                .filter(|l| !l.is_null()),
        };
        let history_bytes = serde_json::to_vec(&record).map_err(StoreError::Encode)?;
        let object_bytes = serde_json::to_vec(&record.object).map_err(StoreError::Encode)?;
        let old_owners = owner_uids(previous.as_ref());
        let new_owners = if change == ChangeType::Deleted {
            Vec::new()
        } else {
            owner_uids(Some(&record.object))
        };
        let old_uid = uid_of(previous.as_ref());
        let new_uid = if change == ChangeType::Deleted {
            None
        } else {
            uid_of(Some(&record.object))
        };
        let compact = rv
            .checked_sub(self.history_limit)
            .filter(|k| *k > 0)
            .map(u64::to_be_bytes);
        let result: Result<(), TransactionError<()>> = (
            &self.objects,
            &self.history,
            &self.meta,
            &self.owners,
            &self.uids,
        )
            .transaction(|(objects, history, meta, owners, uids)| {
                if change == ChangeType::Deleted {
                    objects.remove(encoded.as_slice())?;
                } else {
                    objects.insert(encoded.as_slice(), object_bytes.as_slice())?;
                }
                if self.history_limit > 0 {
                    history.insert(&rv.to_be_bytes(), history_bytes.as_slice())?;
                }
                if let Some(old) = compact {
                    history.remove(&old)?;
                }
                meta.insert(RV_KEY, &rv.to_be_bytes())?;
                for uid in &old_owners {
                    owners.remove(owner_key(uid, &encoded))?;
                }
                for uid in &new_owners {
                    owners.insert(owner_key(uid, &encoded), &[])?;
                }
                if let Some(uid) = &old_uid {
                    uids.remove(uid.as_bytes())?;
                }
                if let Some(uid) = &new_uid {
                    uids.insert(uid.as_bytes(), encoded.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(StoreError::Sled(e).into()),
            Err(TransactionError::Abort(())) => {
                return Err(StoreError::Sled(sled::Error::Unsupported(
                    "transaction aborted".into(),
                ))
                .into());
            }
        }
        *guard = rv;
        let object = record.object.clone();
        self.lock_commit().queue.push(Arc::new(record));
        drop(guard);
        self.wait_durable(rv)?;
        Ok(Outcome {
            object: Some(object),
            previous,
            change: Some(change),
        })
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub rv: u64,
    pub items: Vec<Value>,
    /// Encoded key of the last item returned when more follow (the continue point).
    pub last_key: Option<Vec<u8>>,
}

fn owner_key(uid: &str, dependent: &[u8]) -> Vec<u8> {
    let mut key = format!("{uid}\0").into_bytes();
    key.extend_from_slice(dependent);
    key
}

fn owner_uids(object: Option<&Value>) -> Vec<String> {
    object
        .and_then(|o| o["metadata"]["ownerReferences"].as_array())
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn uid_of(object: Option<&Value>) -> Option<String> {
    object.and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
}

fn decode(key: &ObjectKey, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: format!("{}/{}/{}", key.resource, key.namespace, key.name),
        source,
    })
}

/// sled's I/O threads can hold the file lock for a few milliseconds after a previous handle in this
/// process was dropped (a server restarted in place); wait briefly before reporting a held lock.
fn open_with_retry(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(db) => return Ok(db),
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn concurrent_writers_get_consecutive_versions_announced_once_in_order_and_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (writers, writes) = (8, 40);
        let mut changes = {
            let store = Arc::new(ObjectStore::open(dir.path(), 10_000, true).expect("open"));
            let mut watcher = store.subscribe();
            std::thread::scope(|scope| {
                for w in 0..writers {
                    let store = store.clone();
                    scope.spawn(move || {
                        for i in 0..writes {
                            let key =
                                ObjectKey::new("/v1/configmaps", "default", &format!("w{w}-{i}"));
                            let outcome = store
                                .mutate::<StoreError>(&key, |_| {
                                    Ok(Mutation::Put(json!({"metadata": {"name": key.name}})))
                                })
                                .expect("write");
                            assert_eq!(outcome.change, Some(ChangeType::Added));
                        }
                    });
                }
            });
            let mut seen = Vec::new();
            while let Ok(change) = watcher.try_recv() {
                seen.push(change.rv);
            }
            seen
        };
        let total = (writers * writes) as u64;
        assert_eq!(
            changes,
            (1..=total).collect::<Vec<_>>(),
            "each once, in order"
        );
        // Reopened: every answered write is there, and versions go on from the last one.
        let store = ObjectStore::open(dir.path(), 10_000, true).expect("reopen");
        assert_eq!(store.current_rv(), total);
        let history = store.history_after(0).expect("history").expect("kept");
        changes = history.iter().map(|c| c.rv).collect();
        assert_eq!(changes, (1..=total).collect::<Vec<_>>());
        let page = store
            .list(b"/v1/configmaps\0", None, 0, &|_| true)
            .expect("list");
        assert_eq!(page.items.len(), total as usize);
    }
}

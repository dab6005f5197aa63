//! The event log on NATS JetStream: runs that outlive the process (and the node) that ran them.
//!
//! Layout: one stream (file storage, limits retention, `--event-replicas` replicas) whose subjects are
//! `flowmason.<stream>.>`. Each append is ONE message on the run's subject `flowmason.<stream>.events.<run>`
//! holding the append's events (the same encoding as a sled value: one record, or a segment of several),
//! with headers
//!
//! - `Fm-Seq`: the seq of the last event in it (its first is found from the count);
//! - `Nats-Msg-Id`: `<writer>:<run>:<first seq>`, so that a publish retried after a lost acknowledgement is
//!   stored once (the writer id is random per process, so two writers never share an id);
//! - `Nats-Expected-Last-Subject-Sequence`: the stream sequence of the run's last message as this writer
//!   saw it (0 for a new run). A writer that lost ownership of the run (paused, partitioned, replaced) has
//!   not seen the other writer's messages, so its publish is rejected: [`StoreError::LostOwnership`].
//!
//! One message per append rather than per event keeps an append atomic (as one sled batch is) and needs
//! one expected sequence per append.
//!
//! Pipelining: a run's messages go out one after the other (the next needs the previous one's stream
//! sequence), but every run has its own chain, so no run waits for another run's round trip. Receipts
//! wait for the acknowledgement under `always` and `batch`; `never` acts before it.
//!
//! Reads are answered by the local index: a temporary sled log that this process fills by consuming the
//! stream from the start when it opens (it is a projection, rebuilt from the stream every time) and then
//! follows; the process's own appends go into it at once. When a publish fails, the run's entry in the
//! index is rebuilt from the stream so that the index holds only what the stream holds.
//!
//! Engine sessions (see `session.rs`) are messages on `flowmason.<stream>.session`; each process answers
//! on `flowmason-live.<stream>.<writer>` while it runs, so that an engine can tell a session still running
//! elsewhere from one that crashed. Settings that the processes sharing the stream must agree on (see
//! `settings.rs`) are the one message on `flowmason.<stream>.settings.<name>`.
//!
//! Several processes may append to the stream; which one owns a run is decided outside the store, and
//! fencing (above) keeps a run's messages one sequence whatever happens. A process taking a run over
//! first catches up with it ([`EventStore::catch_up`]); one handing it over forgets its writer state of
//! the run ([`EventStore::relinquish`]).
//!
//! The NATS client runs on a runtime of its own (one thread), so that the store's blocking methods can
//! wait for the server from any thread, inside an async runtime or not, without starving it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, RetentionPolicy, StorageType, Stream as JsStream,
};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;

use crate::codec;
use crate::config::{Durability, StoreConfig};
use crate::error::{StoreError, StreamMismatch};
use crate::event::{Event, EventKind, RunId};
use crate::keys;
use crate::store::{Appended, EventStore, Wait};

/// The stream name when none is given.
pub const DEFAULT_STREAM: &str = "FLOWMASON_EVENTS";
/// How long an engine session's process may take to answer that it is alive before it counts as crashed.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
/// Header holding the seq of the last event in a message.
const SEQ_HEADER: &str = "Fm-Seq";
/// Cursor shards of the publish chains (as the sled log's cursors).
const SHARDS: usize = 64;

/// How to authenticate to NATS.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    UserPassword(String, String),
    /// The contents of a `.creds` file (JWT and NKey seed).
    Creds(String),
}

/// Where the JetStream event log lives.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS server URLs (any of a cluster's; the client finds the others).
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    /// The stream's name; created if missing, checked if present.
    pub stream: String,
    /// Replicas of a stream this process creates (1; 3 for a cluster). A present stream with another
    /// count is refused.
    pub replicas: usize,
    /// How long a publish is retried (lost connection, leader election) before the append fails.
    pub publish_timeout: Duration,
}

impl JetStreamConfig {
    pub fn new(servers: Vec<String>) -> JetStreamConfig {
        JetStreamConfig {
            servers,
            auth: NatsAuth::None,
            stream: DEFAULT_STREAM.into(),
            replicas: 1,
            publish_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a publish failed; cloned to every receipt of the run waiting on it.
#[derive(Debug, Clone)]
pub(crate) enum AckFailure {
    /// The stream's last message of the run was not the one this writer expected.
    Fenced,
    Failed(String),
}

impl AckFailure {
    pub(crate) fn into_error(self, run: RunId) -> StoreError {
        match self {
            AckFailure::Fenced => StoreError::LostOwnership { run },
            AckFailure::Failed(reason) => {
                StoreError::jetstream(format!("append to run {run}"), reason)
            }
        }
    }
}

/// The stream sequence of a run's message once acknowledged.
pub(crate) type Ack = Shared<BoxFuture<'static, Result<u64, AckFailure>>>;

/// The last publish of a run: the next one waits for it.
struct Chain {
    id: u64,
    last: Ack,
    /// The seq of the run's next event as this writer left it: when the index holds more, another
    /// writer appended to the run.
    next_seq: u64,
}

type Chains = HashMap<RunId, Chain>;

/// A runtime that is shut down without blocking when dropped (it may be dropped inside another runtime).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The state shared with the tasks on the client's runtime.
pub(crate) struct Log {
    context: jetstream::Context,
    stream: JsStream,
    name: String,
    /// `flowmason.<stream>.`
    prefix: String,
    /// Random per process: part of every message id.
    writer: String,
    durability: Durability,
    publish_timeout: Duration,
    chains: Box<[Mutex<Chains>]>,
    next_chain: AtomicU64,
    /// Runs whose publish failed here: every later append to them fails the same way.
    lost: Mutex<HashMap<RunId, AckFailure>>,
    /// The stream sequence of each run's last message the index holds.
    seen: Mutex<HashMap<RunId, u64>>,
    /// Runs with a message the index could not read: (its stream sequence, why). Reading such a run
    /// names the message instead of answering with a partial run.
    unreadable: Mutex<HashMap<RunId, (u64, String)>>,
    /// The stream sequence of the last message the index consumed, and how many messages were still
    /// pending after it when it was delivered.
    consumed: watch::Sender<(u64, u64)>,
    /// The highest stream sequence this process knows of: from acknowledgements, and from each
    /// delivered message's sequence plus the messages still pending after it.
    known_last: AtomicU64,
}

/// The JetStream event log (see the module doc). Held by an [`EventStore`] whose sled log is the index.
pub(crate) struct JetStream {
    shared: Arc<Log>,
    handle: tokio::runtime::Handle,
    // Last: shutting the runtime down stops the consumer and publish tasks.
    _runtime: Runtime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shard(run: RunId) -> usize {
    (run.as_u64_pair().1 as usize) % SHARDS
}

impl Log {
    fn run_subject(&self, run: RunId) -> String {
        format!("{}events.{run}", self.prefix)
    }

    pub(crate) fn session_subject(&self) -> String {
        format!("{}session", self.prefix)
    }

    /// Where the process with writer id `writer` answers while it runs; outside the stream's subjects.
    fn liveness_subject(&self, writer: &str) -> String {
        format!("flowmason-live.{}.{writer}", self.name)
    }

    fn chains(&self, run: RunId) -> MutexGuard<'_, Chains> {
        lock(&self.chains[shard(run)])
    }

    fn note_seen(&self, run: RunId, seq: u64) {
        let mut seen = lock(&self.seen);
        let entry = seen.entry(run).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Publishes one message, retrying (same message id: stored once) until acknowledged, rejected, or
    /// `publish_timeout` has passed.
    async fn publish(
        &self,
        subject: String,
        id: &str,
        expected: u64,
        last_seq: u64,
        payload: Bytes,
    ) -> Result<u64, AckFailure> {
        let deadline = Instant::now() + self.publish_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(id)
                .expected_last_subject_sequence(expected)
                .header(SEQ_HEADER, last_seq.to_string().as_str());
            let error = match self.context.send_publish(subject.clone(), message).await {
                Ok(ack) => match ack.await {
                    Ok(ack) => return Ok(ack.sequence),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            match error.kind() {
                // The server checks the expected sequence before the message id: a retry of a
                // publish whose acknowledgement was lost is refused, though its message is stored.
                PublishErrorKind::WrongLastSequence => {
                    return match self.stored_last(&subject, id).await {
                        Some(seq) => Ok(seq),
                        None => Err(AckFailure::Fenced),
                    };
                }
                PublishErrorKind::MaxPayloadExceeded => {
                    return Err(AckFailure::Failed(error.to_string()));
                }
                _ if Instant::now() + backoff < deadline => {
                    tracing::debug!(%subject, %error, "event publish failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                _ => return Err(AckFailure::Failed(error.to_string())),
            }
        }
    }

    /// The stream sequence of the subject's last message when that is the message with id `id`.
    async fn stored_last(&self, subject: &str, id: &str) -> Option<u64> {
        let last = self
            .stream
            .get_last_raw_message_by_subject(subject)
            .await
            .ok()?;
        let stored_id = last.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
        (stored_id.as_str() == id).then_some(last.sequence)
    }

    /// Reads every message of `run` from the stream: its events and the stream sequence of the last one.
    async fn read_run(&self, run: RunId) -> Result<(Vec<Event>, u64), StoreError> {
        let subject = self.run_subject(run);
        let mut events = Vec::new();
        let mut last = 0;
        loop {
            let next = self
                .stream
                .raw_message_builder()
                .sequence(last + 1)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let message = match next {
                Ok(m) => m,
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    break;
                }
                Err(e) => return Err(StoreError::jetstream(format!("reading run {run}"), e)),
            };
            last = message.sequence;
            events.extend(decode(
                run,
                message.headers.get(SEQ_HEADER).map(|v| v.as_str()),
                &message.payload,
            )?);
        }
        Ok((events, last))
    }

    /// The stream sequence of the run's last message (0 when the stream holds none).
    async fn last_message_of(&self, run: RunId) -> Result<u64, StoreError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.run_subject(run))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(0)
            }
            Err(e) => Err(StoreError::jetstream(format!("reading run {run}"), e)),
        }
    }

    /// Replaces the index's entry of `run` with what the stream holds.
    async fn rebuild_run(&self, local: &EventStore, run: RunId) -> Result<(), StoreError> {
        let (events, last) = self.read_run(run).await?;
        local.delete_local(run, true)?;
        if !events.is_empty() {
            local.import_local(&[(run, events)])?;
        }
        let mut seen = lock(&self.seen);
        if last == 0 {
            seen.remove(&run);
        } else {
            seen.insert(run, last);
        }
        Ok(())
    }

    /// Projects one message of the stream into the index.
    async fn project(
        &self,
        local: &EventStore,
        subject: &str,
        seq_header: Option<&str>,
        msg_id: Option<&str>,
        payload: &[u8],
        stream_seq: u64,
    ) {
        let Some(run) = subject
            .strip_prefix(&self.prefix)
            .and_then(|s| s.strip_prefix("events."))
            .and_then(|id| RunId::parse_str(id).ok())
        else {
            return;
        };
        let events = match decode(run, seq_header, payload) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(%run, stream_seq, error = %e, "event log: a message of the stream cannot be read; reading the run names it");
                lock(&self.unreadable).insert(run, (stream_seq, e.to_string()));
                return;
            }
        };
        let Some(first) = events.first() else {
            return;
        };
        let (first_seq, at) = (first.seq, first.at);
        let kinds = events.into_iter().map(|e| e.kind).collect();
        match local.append_at(run, kinds, Some(first_seq), Some(at)) {
            Ok(_) => self.note_seen(run, stream_seq),
            // This process appended these events itself (or read them when it rebuilt the run).
            Err(StoreError::OutOfOrder { expected, got, .. }) if got < expected => {
                if msg_id.is_some_and(|id| id.starts_with(&self.writer)) {
                    self.note_seen(run, stream_seq);
                }
            }
            Err(e) => {
                tracing::debug!(%run, stream_seq, error = %e, "event log: rebuilding the run's index entry from the stream");
                if let Err(e) = self.rebuild_run(local, run).await {
                    tracing::error!(%run, error = %e, "event log: cannot rebuild the run's index entry");
                }
            }
        }
    }
}

impl JetStream {
    /// Fails naming the message when one of `run`'s messages could not be read into the index.
    pub(crate) fn check_readable(&self, run: RunId) -> Result<(), StoreError> {
        match lock(&self.shared.unreadable).get(&run) {
            Some((stream_seq, reason)) => Err(StoreError::UnreadableMessage {
                run,
                stream: self.shared.name.clone(),
                stream_seq: *stream_seq,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Decodes the events of one message of `run`.
fn decode(run: RunId, seq_header: Option<&str>, payload: &[u8]) -> Result<Vec<Event>, StoreError> {
    let last = seq_header
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Corrupt {
            run,
            seq: 0,
            reason: format!("message without a valid {SEQ_HEADER} header ({seq_header:?})"),
        })?;
    codec::decode_events(run, &keys::event_key(run, last), payload)
}

/// Encodes events as one message payload.
fn encode(run: RunId, events: &[Event]) -> Result<Bytes, StoreError> {
    let records = events
        .iter()
        .map(|e| codec::encode_event(run, e.seq, e.at, &e.kind))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bytes::copy_from_slice(&codec::encode_segment(&records)))
}

/// Checks that a present stream is one the event log can use; names the first difference.
fn check_stream(name: &str, found: &StreamConfig, wanted: &StreamConfig) -> Result<(), StoreError> {
    let mismatch = |field: &'static str, expected: String, found: String| {
        StoreError::StreamMismatch(Box::new(StreamMismatch {
            stream: name.into(),
            field,
            expected,
            found,
        }))
    };
    if found.subjects != wanted.subjects {
        return Err(mismatch(
            "subjects",
            format!("{:?}", wanted.subjects),
            format!("{:?}", found.subjects),
        ));
    }
    if found.retention != wanted.retention {
        return Err(mismatch(
            "retention",
            format!("{:?}", wanted.retention),
            format!("{:?}", found.retention),
        ));
    }
    if found.storage != wanted.storage {
        return Err(mismatch(
            "storage",
            format!("{:?}", wanted.storage),
            format!("{:?}", found.storage),
        ));
    }
    if found.num_replicas != wanted.num_replicas {
        return Err(mismatch(
            "replicas",
            wanted.num_replicas.to_string(),
            found.num_replicas.to_string(),
        ));
    }
    // Zero and negative limits both mean none (the server reports -1 for what a client sends as 0).
    let limited = |n: i64| n > 0;
    if limited(found.max_messages_per_subject)
        || limited(found.max_messages)
        || limited(found.max_bytes)
        || !found.max_age.is_zero()
    {
        return Err(mismatch(
            "limits",
            "none (no message, byte or age limit: runs are deleted by retention)".into(),
            format!(
                "max_msgs_per_subject {}, max_msgs {}, max_bytes {}, max_age {:?}",
                found.max_messages_per_subject, found.max_messages, found.max_bytes, found.max_age
            ),
        ));
    }
    Ok(())
}

async fn connect(config: &JetStreamConfig) -> Result<async_nats::Client, StoreError> {
    let options = match &config.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
        NatsAuth::UserPassword(u, p) => {
            async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
        }
        NatsAuth::Creds(c) => async_nats::ConnectOptions::with_credentials(c)
            .map_err(|e| StoreError::jetstream("reading the NATS credentials", e))?,
    };
    let urls = config.servers.join(",");
    options
        .retry_on_initial_connect()
        .max_reconnects(None)
        .name("flowmason-event-log")
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| StoreError::jetstream(format!("connecting to {urls}"), e))
}

async fn open_stream(
    config: &JetStreamConfig,
) -> Result<(jetstream::Context, JsStream), StoreError> {
    let client = tokio::time::timeout(Duration::from_secs(30), connect(config))
        .await
        .map_err(|_| {
            StoreError::jetstream(
                format!("connecting to {}", config.servers.join(",")),
                "no server answered within 30s",
            )
        })??;
    let context = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(100_000)
        .backpressure_on_inflight(true)
        .build(client);
    // A cluster that is still electing its JetStream leader answers with errors for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match ensure_stream(&context, config).await {
            Ok(stream) => break stream,
            Err(e @ StoreError::StreamMismatch(_)) => return Err(e),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "event log stream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    Ok((context, stream))
}

/// Finds the stream (and checks it) or creates it.
async fn ensure_stream(
    context: &jetstream::Context,
    config: &JetStreamConfig,
) -> Result<JsStream, StoreError> {
    let wanted = StreamConfig {
        name: config.stream.clone(),
        subjects: vec![format!("flowmason.{}.>", config.stream)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        description: Some("FlowMason event log: one subject per run".into()),
        ..StreamConfig::default()
    };
    match context.get_stream(&config.stream).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| {
                StoreError::jetstream(format!("reading stream {}", config.stream), e)
            })?;
            check_stream(&config.stream, &info.config, &wanted)?;
            Ok(stream)
        }
        Err(e)
            if matches!(e.kind(), async_nats::jetstream::context::GetStreamErrorKind::JetStream(js)
                if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            context
                .create_stream(wanted)
                .await
                .map_err(|e| StoreError::jetstream(format!("creating stream {}", config.stream), e))
        }
        Err(e) => Err(StoreError::jetstream(
            format!("reading stream {}", config.stream),
            e,
        )),
    }
}

/// Follows the stream from `start` into the index, for as long as the runtime runs.
async fn follow(shared: Arc<Log>, local: EventStore) {
    loop {
        let start = shared.consumed.borrow().0 + 1;
        let messages = async {
            shared
                .stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: format!("{}>", shared.prefix),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await?
                .messages()
                .await
                .map_err(async_nats::Error::from)
        }
        .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "event log: cannot consume the stream; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "event log: consuming the stream failed; resuming");
                    break;
                }
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let stream_seq = info.stream_sequence;
            let headers = message.headers.as_ref();
            shared
                .project(
                    &local,
                    message.subject.as_str(),
                    headers.and_then(|h| h.get(SEQ_HEADER)).map(|v| v.as_str()),
                    headers
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .map(|v| v.as_str()),
                    &message.payload,
                    stream_seq,
                )
                .await;
            shared
                .known_last
                .fetch_max(stream_seq.saturating_add(info.pending), Ordering::Relaxed);
            shared.consumed.send_replace((stream_seq, info.pending));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers every liveness request of this process (see [`JetStream::is_alive`]) while it runs.
async fn answer_liveness(client: async_nats::Client, mut requests: async_nats::Subscriber) {
    while let Some(request) = requests.next().await {
        if let Some(reply) = request.reply
            && let Err(e) = client.publish(reply, Bytes::new()).await
        {
            tracing::debug!(error = %e, "event log: cannot answer a liveness request");
        }
    }
}

impl JetStream {
    /// Connects, creates or checks the stream, and fills `local` (an empty sled log) from it before
    /// returning: a process reads every run the stream holds from the moment it opened the log.
    pub(crate) fn open(
        config: &JetStreamConfig,
        durability: Durability,
        local: &EventStore,
    ) -> Result<JetStream, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flowmason-jetstream")
            .enable_all()
            .build()
            .map_err(|e| StoreError::jetstream("starting the NATS client's runtime", e))?;
        let handle = runtime.handle().clone();
        let runtime = Runtime(Some(runtime));
        let (context, stream) = block_on(&handle, {
            let config = config.clone();
            async move { open_stream(&config).await }
        })??;
        // The sequence of the last message still in the stream (newer ones may have been deleted).
        let last = block_on(&handle, {
            let stream = stream.clone();
            let all = format!("flowmason.{}.>", config.stream);
            let name = config.stream.clone();
            let deadline = Instant::now() + config.publish_timeout;
            async move {
                use async_nats::jetstream::stream::LastRawMessageErrorKind;
                let mut backoff = Duration::from_millis(50);
                loop {
                    match stream.get_last_raw_message_by_subject(&all).await {
                        Ok(message) => return Ok(message.sequence),
                        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                            return Ok(0);
                        }
                        // A stream just created by another replica answers once its replicas have
                        // elected a leader (until then: timeouts or JetStream errors): retried as a
                        // publish is, until `publish_timeout`.
                        Err(e)
                            if e.kind() != LastRawMessageErrorKind::InvalidSubject
                                && Instant::now() + backoff < deadline =>
                        {
                            tracing::debug!(stream = %name, error = %e, "reading the stream; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                        Err(e) => {
                            return Err(StoreError::jetstream(format!("reading stream {name}"), e));
                        }
                    }
                }
            }
        })??;
        let shared = Arc::new(Log {
            context,
            stream,
            name: config.stream.clone(),
            prefix: format!("flowmason.{}.", config.stream),
            writer: uuid::Uuid::new_v4().simple().to_string(),
            durability,
            publish_timeout: config.publish_timeout,
            chains: (0..SHARDS).map(|_| Mutex::new(Chains::new())).collect(),
            next_chain: AtomicU64::new(0),
            lost: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(HashMap::new()),
            consumed: watch::channel((0, 0)).0,
            known_last: AtomicU64::new(last),
        });
        let client = shared.context.client();
        let liveness = shared.liveness_subject(&shared.writer);
        let subscriber = block_on(&handle, {
            let client = client.clone();
            async move {
                let subscriber = client.subscribe(liveness).await?;
                client.flush().await?;
                Ok::<_, async_nats::Error>(subscriber)
            }
        })?
        .map_err(|e| StoreError::jetstream("answering liveness requests", e))?;
        handle.spawn(answer_liveness(client, subscriber));
        let mut consumed = shared.consumed.subscribe();
        handle.spawn(follow(shared.clone(), local.clone()));
        block_on(&handle, async move {
            consumed.wait_for(|&(seq, _)| seq >= last).await.map(drop)
        })?
        .map_err(|_| StoreError::Closed)?;
        Ok(JetStream {
            shared,
            handle,
            _runtime: runtime,
        })
    }

    pub(crate) fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Runs `fut` on the client's runtime and waits for it on this thread.
    pub(crate) fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        block_on(&self.handle, fut)
    }

    pub(crate) fn append(
        &self,
        local: &EventStore,
        run: RunId,
        kinds: Vec<EventKind>,
    ) -> Result<Appended, StoreError> {
        if kinds.is_empty() {
            return Ok(Appended {
                events: Vec::new(),
                wait: None,
            });
        }
        if let Some(failure) = lock(&self.shared.lost).get(&run) {
            return Err(failure.clone().into_error(run));
        }
        // Held until the chain is extended: a run's appends are published in the order they are made.
        let mut chains = self.shared.chains(run);
        let previous = chains.get(&run).map(|c| (c.last.clone(), c.next_seq));
        let appended = match local.append_at(run, kinds, previous.as_ref().map(|p| p.1), None) {
            // The index holds events this writer did not append: another writer owns the run now.
            Err(StoreError::OutOfOrder { .. }) => {
                lock(&self.shared.lost).insert(run, AckFailure::Fenced);
                return Err(StoreError::LostOwnership { run });
            }
            other => other?,
        };
        let previous = previous.map(|p| p.0);
        let events = appended.events;
        let payload = encode(run, &events)?;
        let (Some(first_seq), Some(last_seq)) =
            (events.first().map(|e| e.seq), events.last().map(|e| e.seq))
        else {
            return Ok(Appended { events, wait: None });
        };
        let terminal = events.iter().any(|e| e.kind.is_terminal());
        let expected_known = if first_seq == 0 {
            Some(0)
        } else if previous.is_none() {
            Some(lock(&self.shared.seen).get(&run).copied().unwrap_or(0))
        } else {
            None
        };
        let id = self.shared.next_chain.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let local = local.clone();
        let task = self.handle.spawn(async move {
            let expected = match (expected_known, previous) {
                (Some(seq), _) => seq,
                (None, Some(previous)) => previous.await?,
                (None, None) => 0,
            };
            let msg_id = format!("{}:{run}:{first_seq}", shared.writer);
            let result = shared
                .publish(shared.run_subject(run), &msg_id, expected, last_seq, payload)
                .await;
            match &result {
                Ok(seq) => {
                    shared.note_seen(run, *seq);
                    shared.known_last.fetch_max(*seq, Ordering::Relaxed);
                    if terminal {
                        let mut chains = shared.chains(run);
                        if chains.get(&run).is_some_and(|c| c.id == id) {
                            chains.remove(&run);
                        }
                    }
                }
                Err(failure) => {
                    tracing::error!(%run, error = %failure.clone().into_error(run), "event log append failed");
                    lock(&shared.lost).insert(run, failure.clone());
                    if let Err(e) = shared.rebuild_run(&local, run).await {
                        tracing::error!(%run, error = %e, "event log: cannot rebuild the run's index entry");
                    }
                }
            }
            result
        });
        let ack: Ack = async move {
            task.await
                .unwrap_or_else(|e| Err(AckFailure::Failed(format!("publish task ended: {e}"))))
        }
        .boxed()
        .shared();
        chains.insert(
            run,
            Chain {
                id,
                last: ack.clone(),
                next_seq: last_seq + 1,
            },
        );
        drop(chains);
        let wait = match self.shared.durability {
            Durability::Never => None,
            Durability::Always | Durability::Batch => Some(Wait::Ack(run, ack)),
        };
        Ok(Appended { events, wait })
    }

    /// Waits for every publish of `run` made so far.
    pub(crate) async fn sync_run(&self, run: RunId) -> Result<(), StoreError> {
        if let Some(failure) = lock(&self.shared.lost).get(&run) {
            return Err(failure.clone().into_error(run));
        }
        let last = self.shared.chains(run).get(&run).map(|c| c.last.clone());
        match last {
            Some(ack) => ack.await.map(drop).map_err(|f| f.into_error(run)),
            None => Ok(()),
        }
    }

    /// Waits for every publish made so far, of every run.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        wait_for_all(self.pending()).await
    }

    /// [`sync`](Self::sync), blocking the calling thread.
    pub(crate) fn flush(self: &JetStream) -> Result<(), StoreError> {
        self.block(wait_for_all(self.pending()))?
    }

    /// The last publish of every run with one, as the chains hold them now.
    fn pending(&self) -> Vec<(RunId, Ack)> {
        self.shared
            .chains
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .map(|(run, c)| (*run, c.last.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Purges the run's subject, then its index entry. Refuses a run in flight as the index sees it.
    pub(crate) fn delete_run(&self, local: &EventStore, run: RunId) -> Result<bool, StoreError> {
        let summary = local.summary(run)?;
        if summary.as_ref().is_some_and(|s| !s.phase.is_terminal()) {
            return Err(StoreError::RunInFlight { run });
        }
        let shared = self.shared.clone();
        let purged = self.block(async move {
            shared
                .stream
                .purge()
                .filter(shared.run_subject(run))
                .await
                .map(|r| r.purged)
                .map_err(|e| StoreError::jetstream(format!("deleting run {run}"), e))
        })??;
        let deleted = local.delete_local(run, false)?;
        lock(&self.shared.seen).remove(&run);
        Ok(deleted || purged > 0)
    }

    /// Publishes each run as one message (a new run each: expected sequence 0), then indexes them.
    pub(crate) fn import_runs(
        &self,
        local: &EventStore,
        runs: &[(RunId, Vec<Event>)],
    ) -> Result<(), StoreError> {
        for (run, events) in runs {
            crate::fold::RunState::fold(*run, events)?;
            if local.summary(*run)?.is_some() {
                return Err(StoreError::Lifecycle(
                    crate::lifecycle::LifecycleError::AlreadyAccepted { run: *run, seq: 0 },
                ));
            }
        }
        let mut messages = Vec::with_capacity(runs.len());
        for (run, events) in runs {
            if let Some(last) = events.last() {
                messages.push((*run, last.seq, encode(*run, events)?));
            }
        }
        let shared = self.shared.clone();
        let acked = self.block(async move {
            let publishes = messages.into_iter().map(|(run, last_seq, payload)| {
                let shared = shared.clone();
                async move {
                    let msg_id = format!("{}:{run}:0", shared.writer);
                    let seq = shared
                        .publish(shared.run_subject(run), &msg_id, 0, last_seq, payload)
                        .await
                        .map_err(|f| f.into_error(run))?;
                    Ok::<_, StoreError>((run, seq))
                }
            });
            futures::future::try_join_all(publishes).await
        })??;
        local.import_local(runs)?;
        for (run, seq) in acked {
            self.shared.note_seen(run, seq);
        }
        Ok(())
    }

    /// The last engine session record, if any, with its stream sequence.
    pub(crate) fn read_session(&self) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let shared = self.shared.clone();
        self.block(async move {
            match shared
                .stream
                .get_last_raw_message_by_subject(&shared.session_subject())
                .await
            {
                Ok(message) => Ok(Some((message.payload.to_vec(), message.sequence))),
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(StoreError::jetstream("reading the engine session", e)),
            }
        })?
    }

    /// Publishes a new engine session record and waits for the acknowledgement: its stream sequence.
    pub(crate) fn write_session(&self, value: Vec<u8>) -> Result<u64, StoreError> {
        let shared = self.shared.clone();
        self.block(async move {
            let ack = shared
                .context
                .publish(shared.session_subject(), Bytes::from(value))
                .await
                .map_err(|e| StoreError::jetstream("recording the engine session", e))?;
            ack.await
                .map(|ack| ack.sequence)
                .map_err(|e| StoreError::jetstream("recording the engine session", e))
        })?
    }

    /// This process's writer id (see the module doc).
    pub(crate) fn writer(&self) -> &str {
        &self.shared.writer
    }

    /// The stream's name.
    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the process with writer id `writer` still answers on its liveness subject. No answer
    /// (nobody subscribed: the process is gone; or none within [`LIVENESS_TIMEOUT`]: it is stalled)
    /// means it does not run any more.
    pub(crate) fn is_alive(&self, writer: &str) -> Result<bool, StoreError> {
        let shared = self.shared.clone();
        let subject = shared.liveness_subject(writer);
        self.block(async move {
            let client = shared.context.client();
            let request = client.request(subject, Bytes::new());
            match tokio::time::timeout(LIVENESS_TIMEOUT, request).await {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        async_nats::RequestErrorKind::NoResponders
                            | async_nats::RequestErrorKind::TimedOut
                    ) =>
                {
                    Ok(false)
                }
                Ok(Err(e)) => Err(StoreError::jetstream(
                    "asking whether the previous engine session still runs",
                    e,
                )),
                Err(_) => Ok(false),
            }
        })?
    }

    /// Publishes `value` as setting `name` unless the setting's subject already holds a message: `None`
    /// when this call recorded it, else the value recorded before.
    pub(crate) fn claim_setting(
        &self,
        name: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        let shared = self.shared.clone();
        let subject = format!("{}settings.{name}", shared.prefix);
        // A retry of this very claim is stored once; a claim of another value is another message.
        let id = format!("{}:settings:{name}={value}", shared.writer);
        let (name, value) = (name.to_owned(), value.to_owned());
        self.block(async move {
            let payload = Bytes::from(value.into_bytes());
            match shared.publish(subject.clone(), &id, 0, 0, payload).await {
                Ok(_) => Ok(None),
                Err(AckFailure::Fenced) => shared
                    .stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map(|m| Some(String::from_utf8_lossy(&m.payload).into_owned()))
                    .map_err(|e| StoreError::jetstream(format!("reading setting {name}"), e)),
                Err(AckFailure::Failed(reason)) => Err(StoreError::jetstream(
                    format!("recording setting {name}"),
                    reason,
                )),
            }
        })?
    }

    /// Brings the index's entry of `run` up to date with the stream and forgets this process's writer
    /// state of the run (its publish chain, once every publish in it is settled, and a refusal after a
    /// fenced or failed publish), so that its next append names the stream's last message of the run.
    /// One round trip when the index already holds the run's last message and this process had no writer
    /// state of it; else the run is read again from the stream.
    pub(crate) async fn catch_up(&self, local: &EventStore, run: RunId) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let local = local.clone();
        self.handle
            .spawn(async move {
                let pending = shared.chains(run).get(&run).map(|c| c.last.clone());
                if let Some(ack) = pending {
                    // Stored or refused, the stream says which when the run is read below.
                    let _ = ack.await;
                }
                let chained = shared.chains(run).remove(&run).is_some();
                let fenced = lock(&shared.lost).remove(&run).is_some();
                if !chained && !fenced {
                    let last = shared.last_message_of(run).await?;
                    if lock(&shared.seen).get(&run).copied().unwrap_or(0) == last {
                        return Ok(());
                    }
                }
                shared.rebuild_run(&local, run).await
            })
            .await
            .map_err(|e| StoreError::jetstream(format!("catching up with run {run}"), e))?
    }

    /// Forgets this process's writer state of `run` (see [`catch_up`](Self::catch_up)) once the
    /// publishes already made settle, in the background.
    pub(crate) fn relinquish(&self, run: RunId) {
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            let pending = shared.chains(run).get(&run).map(|c| (c.id, c.last.clone()));
            if let Some((id, ack)) = pending {
                let _ = ack.await;
                let mut chains = shared.chains(run);
                if chains.get(&run).is_some_and(|c| c.id == id) {
                    chains.remove(&run);
                }
            }
            lock(&shared.lost).remove(&run);
        });
    }

    /// Bytes the stream holds, as the server counts them.
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        let shared = self.shared.clone();
        self.block(async move {
            shared
                .stream
                .get_info()
                .await
                .map(|i| i.state.bytes)
                .map_err(|e| StoreError::jetstream(format!("reading stream {}", shared.name), e))
        })?
    }

    /// How many messages of the stream the index has not read, as far as this process knows (no round
    /// trip: from acknowledgements and from what the consumer was told is pending).
    pub(crate) fn index_lag(&self) -> u64 {
        let consumed = self.shared.consumed.borrow().0;
        self.shared
            .known_last
            .load(Ordering::Relaxed)
            .saturating_sub(consumed)
    }

    /// How far the index is behind the stream: the stream's last sequence and the last one indexed.
    pub(crate) fn index_position(&self) -> Result<(u64, u64), StoreError> {
        let shared = self.shared.clone();
        let last = self.block(async move {
            shared
                .stream
                .get_info()
                .await
                .map(|i| i.state.last_sequence)
                .map_err(|e| StoreError::jetstream(format!("reading stream {}", shared.name), e))
        })??;
        let (consumed, pending) = *self.shared.consumed.borrow();
        // Caught up at a message with nothing pending after it: later sequences were deleted.
        Ok((
            last,
            if pending == 0 {
                last.max(consumed)
            } else {
                consumed
            },
        ))
    }
}

/// Runs `fut` on `handle`'s runtime and blocks this thread until it is done.
/// Waits for each of `pending`'s acknowledgements; the first failure names its run.
async fn wait_for_all(pending: Vec<(RunId, Ack)>) -> Result<(), StoreError> {
    for (run, ack) in pending {
        ack.await.map_err(|f| f.into_error(run))?;
    }
    Ok(())
}

fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| StoreError::Closed)
}

impl EventStore {
    /// Opens the event log on NATS JetStream (see the module doc of `jetstream`): connects, creates the
    /// stream if missing (checks it if present), and builds the local index from it before returning.
    /// `config.durability` says which appends wait for the stream's acknowledgement; the index itself is
    /// never synced (it is rebuilt from the stream on every open).
    pub fn open_jetstream(
        jetstream: &JetStreamConfig,
        config: StoreConfig,
    ) -> Result<EventStore, StoreError> {
        let durability = config.durability;
        let local = EventStore::temporary(StoreConfig {
            durability: Durability::Never,
            ..config
        })?;
        let stream = JetStream::open(jetstream, durability, &local)?;
        Ok(EventStore {
            inner: local.inner,
            stream: Some(Arc::new(stream)),
        })
    }

    /// Under JetStream, how many of the stream's messages the local index has not read yet, when any
    /// (answered without a round trip; see [`RunPage::index_lag`](crate::RunPage::index_lag)).
    pub fn index_lag(&self) -> Option<u64> {
        self.stream
            .as_ref()
            .map(|s| s.index_lag())
            .filter(|lag| *lag > 0)
    }

    /// Under JetStream, the stream's last sequence and the last one the local index holds (their
    /// difference is how far reads lag behind the stream); `None` under sled, which has no lag.
    pub fn index_position(&self) -> Result<Option<(u64, u64)>, StoreError> {
        match &self.stream {
            Some(stream) => stream.index_position().map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[path = "../../tests/support/nats.rs"]
mod test_nats;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::accepted;

    fn open(cluster: &test_nats::NatsCluster) -> EventStore {
        EventStore::open_jetstream(
            &JetStreamConfig::new(cluster.urls()),
            StoreConfig::default(),
        )
        .expect("open the JetStream log")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_retried_after_a_lost_ack_is_stored_once() {
        let cluster = test_nats::NatsCluster::single();
        let store = open(&cluster);
        let log = store.stream.as_ref().expect("jetstream").shared.clone();
        let run = RunId::now_v7();
        let events = store
            .local()
            .append_at(run, vec![accepted("p", "ns")], None, None)
            .expect("index")
            .events;
        let payload = encode(run, &events).expect("encode");
        let id = format!("{}:{run}:0", log.writer);
        let subject = log.run_subject(run);
        let first = log
            .publish(subject.clone(), &id, 0, 0, payload.clone())
            .await
            .expect("stored");
        // The same publish again, as after an acknowledgement that never arrived.
        let again = log
            .publish(subject.clone(), &id, 0, 0, payload.clone())
            .await
            .expect("a retry is not refused");
        assert_eq!(again, first);
        let (events, last) = log.read_run(run).await.expect("read");
        assert_eq!((events.len(), last), (1, first));
        // Another writer's message with the same expected sequence is refused.
        let other = log
            .publish(subject, "other-writer:0", 0, 0, payload)
            .await
            .expect_err("fenced");
        assert!(matches!(other, AckFailure::Fenced), "{other:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_setting_claimed_by_one_process_binds_every_other_process_on_the_stream() {
        let cluster = test_nats::NatsCluster::single();
        let first = open(&cluster);
        first.claim_setting("shards", "16").expect("first claim");
        first
            .claim_setting("shards", "16")
            .expect("the same claim again");
        let second = open(&cluster);
        second.claim_setting("shards", "16").expect("same value");
        let err = second
            .claim_setting("shards", "8")
            .expect_err("other value");
        assert!(
            matches!(&err, StoreError::SettingMismatch { name, recorded, wanted, .. }
                if &**name == "shards" && &**recorded == "16" && &**wanted == "8"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "JetStream stream FLOWMASON_EVENTS records shards=16; this process has shards=8"
        );
        // Another setting is independent of the first.
        second.claim_setting("other", "8").expect("another setting");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_of_engines_sharing_a_stream_are_distinct_and_a_running_one_is_no_crash() {
        let cluster = test_nats::NatsCluster::single();
        let first = open(&cluster);
        let a = first.begin_engine_session().expect("begin");
        assert_eq!((a.after_crash, a.crashed), (false, None));
        // Begun while the first engine runs: the first's open session is not a crash.
        let second = open(&cluster);
        let b = second.begin_engine_session().expect("begin");
        assert_ne!(a.id, b.id);
        assert_eq!((b.after_crash, b.crashed), (false, None));
        // The second process dies without ending its session: the next engine sees that crash.
        drop(second);
        let third = open(&cluster);
        let c = third.begin_engine_session().expect("begin");
        assert!(c.id != a.id && c.id != b.id);
        assert_eq!((c.after_crash, c.crashed), (true, Some(b.id)));
        // Ended cleanly, a session is no crash for the next one.
        third.end_engine_session(c.id).expect("end");
        let d = open(&cluster).begin_engine_session().expect("begin");
        assert_eq!((d.after_crash, d.crashed), (false, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catching_up_reads_another_writers_appends_and_lifts_a_fence() {
        let cluster = test_nats::NatsCluster::single();
        let (stale, owner) = (open(&cluster), open(&cluster));
        let run = RunId::now_v7();
        stale
            .append_durable(run, vec![accepted("p", "ns")])
            .await
            .expect("accept");
        owner.catch_up(run).await.expect("catch up");
        let started = |stage: &str| EventKind::StageStarted {
            stage: stage.into(),
            attempt: 1,
            input: serde_json::Value::Null,
        };
        owner
            .append_durable(run, vec![started("b")])
            .await
            .expect("the owner appends after catching up");
        let err = match stale.append(run, vec![started("a")]) {
            Err(e) => e,
            Ok(receipt) => receipt.durable().await.expect_err("fenced"),
        };
        assert!(matches!(err, StoreError::LostOwnership { .. }), "{err:?}");
        // Caught up, the fenced writer holds the owner's events and may append after them again.
        stale.catch_up(run).await.expect("catch up");
        let kinds: Vec<_> = stale
            .events(run)
            .expect("events")
            .iter()
            .map(|e| e.kind.stage().map(str::to_owned))
            .collect();
        assert_eq!(kinds, [None, Some("b".to_owned())]);
        let events = stale
            .append_durable(run, vec![started("c")])
            .await
            .expect("no longer fenced");
        assert_eq!(events[0].seq, 2);
        let fresh = open(&cluster);
        let seqs: Vec<_> = fresh
            .events(run)
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_present_stream_with_other_settings_is_refused_naming_the_difference() {
        let cluster = test_nats::NatsCluster::single();
        let client = async_nats::connect(cluster.urls()[0].as_str())
            .await
            .expect("connect");
        let js = jetstream::new(client);
        js.create_stream(StreamConfig {
            name: "OTHER".into(),
            subjects: vec!["flowmason.OTHER.>".into()],
            max_age: Duration::from_secs(3600),
            ..StreamConfig::default()
        })
        .await
        .expect("create");
        let mut config = JetStreamConfig::new(cluster.urls());
        config.stream = "OTHER".into();
        let err = EventStore::open_jetstream(&config, StoreConfig::default()).expect_err("refused");
        assert!(
            matches!(&err, StoreError::StreamMismatch(m) if m.field == "limits"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("OTHER") && err.to_string().contains("max_age"),
            "{err}"
        );
        js.create_stream(StreamConfig {
            name: "MEMORY".into(),
            subjects: vec!["flowmason.MEMORY.>".into()],
            storage: StorageType::Memory,
            ..StreamConfig::default()
        })
        .await
        .expect("create");
        config.stream = "MEMORY".into();
        let err = EventStore::open_jetstream(&config, StoreConfig::default()).expect_err("refused");
        assert!(
            matches!(&err, StoreError::StreamMismatch(m) if m.field == "storage"),
            "{err:?}"
        );
    }
}

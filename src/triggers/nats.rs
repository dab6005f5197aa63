//! The NATS trigger (`spec.triggers.pubsub`): `topic` is a subject (wildcards allowed); `subscription`
//! names a durable JetStream pull consumer on a stream the engine finds or creates (default
//! [`DEFAULT_STREAM`]), so that every replica bound to it shares the work; without JetStream a core-NATS
//! queue group of that name does the same (at-most-once then).
//!
//! A message's JSON object body becomes the run inputs. The run name derives from the `Nats-Msg-Id`
//! header, else from the stream sequence, and the message is acknowledged only once the PipelineRun
//! exists (created or already there), so a redelivery finds the run and never makes a second one. A body
//! that is not a JSON object goes to `<dead-letter prefix>.<namespace>.<pipeline>` with the reason in the
//! `FlowMason-Reason` header, and is acknowledged.
//!
//! Credentials come from a Secret with the keys `token`, or `user` and `password`, or `creds` (the
//! content of a NATS `.creds` file) — see [`NatsAuth::from_secret_data`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt as _;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use flowmason_store::Trigger;

use super::{
    NewRun, Outcome, TriggerContext, TriggerError, connected_condition, create_run, key_digest,
};
use crate::model::Pipeline;
use crate::model::vocabulary::NATS_SUBJECT_ANNOTATION;

/// The stream trigger subjects are captured in, unless configured otherwise.
pub const DEFAULT_STREAM: &str = "FLOWMASON_TRIGGERS";
/// Dead letters go to `<prefix>.<namespace>.<pipeline>`.
pub const DEFAULT_DEADLETTER_PREFIX: &str = "flowmason.deadletter";
/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "FlowMason-Reason";
/// Header naming the subject a dead letter was first published to.
pub const SUBJECT_HEADER: &str = "FlowMason-Subject";

/// NATS credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    UserPassword(String, String),
    /// Content of a `.creds` file (JWT and NKey seed).
    Creds(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            NatsAuth::None => "None",
            NatsAuth::Token(_) => "Token(..)",
            NatsAuth::UserPassword(..) => "UserPassword(..)",
            NatsAuth::Creds(_) => "Creds(..)",
        })
    }
}

impl NatsAuth {
    /// Reads a Secret's data: `creds`, else `token`, else `user` + `password`.
    pub fn from_secret_data(
        secret: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, TriggerError> {
        let text = |key: &str| -> Result<Option<String>, TriggerError> {
            data.get(key)
                .map(|v| {
                    String::from_utf8(v.clone()).map_err(|_| TriggerError::NatsCredentials {
                        secret: secret.into(),
                        reason: format!("key {key:?} is not UTF-8"),
                    })
                })
                .transpose()
        };
        if let Some(creds) = text("creds")? {
            return Ok(NatsAuth::Creds(creds));
        }
        if let Some(token) = text("token")? {
            return Ok(NatsAuth::Token(token.trim().to_string()));
        }
        match (text("user")?, text("password")?) {
            (Some(u), Some(p)) => Ok(NatsAuth::UserPassword(u.trim().into(), p.trim().into())),
            (Some(_), None) => Err(TriggerError::NatsCredentials {
                secret: secret.into(),
                reason: "key \"user\" without key \"password\"".into(),
            }),
            _ => Err(TriggerError::NatsCredentials {
                secret: secret.into(),
                reason: "expected key \"creds\", \"token\", or \"user\" and \"password\"".into(),
            }),
        }
    }

    /// Reads the credentials Secret `namespace/name` through the API.
    pub async fn from_secret(
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, TriggerError> {
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), namespace);
        let secret = api.get(name).await.map_err(|e| {
            TriggerError::kube(
                format!("reading NATS credentials Secret {namespace}/{name}"),
                e,
            )
        })?;
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        Self::from_secret_data(&format!("{namespace}/{name}"), &data)
    }

    fn apply(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, TriggerError> {
        Ok(match self {
            NatsAuth::None => options,
            NatsAuth::Token(t) => options.token(t.clone()),
            NatsAuth::UserPassword(u, p) => options.user_and_password(u.clone(), p.clone()),
            NatsAuth::Creds(c) => options
                .credentials(c)
                .map_err(|e| TriggerError::Nats(format!("credentials: {e}")))?,
        })
    }
}

/// How the engine uses NATS.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub url: String,
    pub auth: NatsAuth,
    /// Stream holding the trigger subjects.
    pub stream: String,
    pub deadletter_prefix: String,
    /// How long a delivered, unacknowledged message waits before redelivery.
    pub ack_wait: Duration,
    /// Messages one pull asks for: small batches spread the work over replicas.
    pub batch: usize,
}

impl NatsOptions {
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            auth: NatsAuth::None,
            stream: DEFAULT_STREAM.into(),
            deadletter_prefix: DEFAULT_DEADLETTER_PREFIX.into(),
            ack_wait: Duration::from_secs(30),
            batch: 16,
        }
    }
}

/// One connection shared by every NATS trigger of an engine; it reconnects by itself (with backoff)
/// and publishes its state for the `TriggerConnected` conditions.
#[derive(Clone)]
pub struct NatsConnection {
    pub client: async_nats::Client,
    pub options: NatsOptions,
    connected: watch::Receiver<bool>,
}

impl NatsConnection {
    /// Connects (retrying in the background when the server is not up yet).
    pub async fn connect(options: NatsOptions) -> Result<Self, TriggerError> {
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let events = tx.clone();
        let connect = options
            .auth
            .apply(async_nats::ConnectOptions::new())?
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100u64 << attempts.min(6) as u64).min(5_000))
            })
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            events.send_replace(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            events.send_replace(false);
                        }
                        _ => {}
                    }
                }
            });
        let client = connect
            .connect(options.url.as_str())
            .await
            .map_err(|e| TriggerError::Nats(format!("connecting to {}: {e}", options.url)))?;
        if client.connection_state() == async_nats::connection::State::Connected {
            tx.send_replace(true);
        }
        Ok(NatsConnection {
            client,
            options,
            connected: rx,
        })
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The dead-letter subject of a pipeline.
    pub fn deadletter_subject(&self, namespace: &str, pipeline: &str) -> String {
        format!("{}.{namespace}.{pipeline}", self.options.deadletter_prefix)
    }
}

/// Whether subject pattern `pattern` matches every subject `subject` can match (tokens split on `.`;
/// `*` one token, `>` the rest).
pub fn subject_covers(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What to do with one delivered message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Create this run with these inputs.
    Run {
        name: String,
        inputs: serde_json::Map<String, serde_json::Value>,
    },
    /// Dead-letter it with this reason.
    DeadLetter(String),
}

/// Decides about a message from its body, its `Nats-Msg-Id` and its stream sequence (`None` on core
/// NATS, where a message without an id gets a fresh name).
pub fn decide(
    pipeline: &str,
    stream: &str,
    body: &[u8],
    msg_id: Option<&str>,
    sequence: Option<u64>,
) -> Decision {
    let inputs = match super::webhook::body_inputs(body) {
        Ok(i) => i,
        Err(reason) => return Decision::DeadLetter(reason),
    };
    let suffix = match (msg_id.map(str::trim).filter(|m| !m.is_empty()), sequence) {
        (Some(id), _) => format!("nats-{}", key_digest(id)),
        (None, Some(seq)) => format!("nats-{}-{seq}", &key_digest(stream)[..8]),
        (None, None) => format!("nats-{}", &uuid::Uuid::now_v7().simple().to_string()[..20]),
    };
    Decision::Run {
        name: super::run_name(pipeline, &suffix),
        inputs,
    }
}

/// The NATS trigger of one Pipeline.
#[derive(Clone)]
pub struct NatsTrigger {
    ctx: TriggerContext,
    conn: NatsConnection,
    namespace: String,
    name: String,
    topic: String,
    subscription: String,
}

impl NatsTrigger {
    pub fn new(
        ctx: TriggerContext,
        conn: NatsConnection,
        namespace: &str,
        name: &str,
        topic: &str,
        subscription: Option<&str>,
    ) -> Self {
        let subscription = subscription
            .map(str::to_string)
            .unwrap_or_else(|| format!("{namespace}-{name}"));
        NatsTrigger {
            ctx,
            conn,
            namespace: namespace.into(),
            name: name.into(),
            topic: topic.into(),
            // Durable names may not contain `.`, `*`, `>` or whitespace.
            subscription: subscription
                .chars()
                .map(|c| {
                    if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect(),
        }
    }

    /// The durable consumer (or queue group) name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// Handles one message up to (not including) its acknowledgement: creates the run or dead-letters
    /// the message. `Ok` means the message may be acknowledged.
    pub async fn process(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: &[u8],
        sequence: Option<u64>,
    ) -> Result<(Outcome, Option<String>), TriggerError> {
        let msg_id = headers
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string());
        match decide(
            &self.name,
            &self.conn.options.stream,
            body,
            msg_id.as_deref(),
            sequence,
        ) {
            Decision::DeadLetter(reason) => {
                let mut h = HeaderMap::new();
                h.insert(REASON_HEADER, reason.as_str());
                h.insert(SUBJECT_HEADER, subject);
                let dl = self.conn.deadletter_subject(&self.namespace, &self.name);
                self.conn
                    .client
                    .publish_with_headers(dl.clone(), h, body.to_vec().into())
                    .await
                    .map_err(|e| {
                        TriggerError::Nats(format!("publishing dead letter to {dl}: {e}"))
                    })?;
                self.conn.client.flush().await.map_err(|e| {
                    TriggerError::Nats(format!("flushing dead letter to {dl}: {e}"))
                })?;
                self.ctx.metrics.record(Trigger::Pubsub, Outcome::Rejected);
                Ok((Outcome::Rejected, None))
            }
            Decision::Run { name, inputs } => {
                let pipelines: Api<Pipeline> =
                    Api::namespaced(self.ctx.client.clone(), &self.namespace);
                let pipeline = pipelines.get(&self.name).await.map_err(|e| {
                    TriggerError::kube(
                        format!("reading Pipeline {}/{}", self.namespace, self.name),
                        e,
                    )
                })?;
                let created = create_run(
                    &self.ctx.client,
                    &pipeline,
                    NewRun {
                        name: name.clone(),
                        kind: Trigger::Pubsub,
                        inputs: Some(inputs),
                        annotations: BTreeMap::from([(
                            NATS_SUBJECT_ANNOTATION.to_string(),
                            subject.to_string(),
                        )]),
                    },
                )
                .await?;
                self.ctx.metrics.record(Trigger::Pubsub, created.outcome());
                Ok((created.outcome(), Some(name)))
            }
        }
    }

    /// Finds or creates the stream so that it captures `topic`.
    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
    ) -> Result<stream::Stream, async_nats::Error> {
        let name = &self.conn.options.stream;
        match js.get_stream(name).await {
            Ok(mut stream) => {
                let info = stream.info().await?;
                if info
                    .config
                    .subjects
                    .iter()
                    .any(|s| subject_covers(s, &self.topic))
                {
                    return Ok(stream);
                }
                let mut config = info.config.clone();
                // Subjects the new topic covers would overlap it: the topic replaces them.
                config.subjects.retain(|s| !subject_covers(&self.topic, s));
                config.subjects.push(self.topic.clone());
                js.update_stream(config).await?;
                Ok(js.get_stream(name).await?)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                Ok(js
                    .create_stream(stream::Config {
                        name: name.clone(),
                        subjects: vec![self.topic.clone()],
                        max_age: Duration::from_secs(7 * 24 * 3600),
                        ..Default::default()
                    })
                    .await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the server has JetStream: only a definite "no responders" means it is off (a timeout
    /// while reconnecting must not switch a JetStream deployment to at-most-once delivery).
    async fn jetstream_available(&self) -> bool {
        let js = jetstream::new(self.conn.client.clone());
        match js.query_account().await {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                jetstream::context::AccountErrorKind::JetStreamUnavailable
            ),
        }
    }

    /// One consuming session over JetStream: returns when the stream of messages fails or ends.
    async fn consume_jetstream(&self, stop: &CancellationToken) -> Result<(), async_nats::Error> {
        let js = jetstream::new(self.conn.client.clone());
        let stream = self.ensure_stream(&js).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.subscription,
                consumer::pull::Config {
                    durable_name: Some(self.subscription.clone()),
                    filter_subject: self.topic.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_wait: self.conn.options.ack_wait,
                    ..Default::default()
                },
            )
            .await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.conn.options.batch.max(1))
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await?;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let message = match next {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => m,
            };
            let sequence = message.info().ok().map(|i| i.stream_sequence);
            match self
                .process(
                    &message.subject,
                    message.headers.as_ref(),
                    &message.payload,
                    sequence,
                )
                .await
            {
                Ok(_) => message.ack().await?,
                Err(e) => {
                    tracing::warn!("NATS trigger of {}/{}: {e}", self.namespace, self.name);
                    // Not acknowledged: redelivered later, when the API may answer again.
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await?;
                }
            }
        }
    }

    /// One consuming session over a core-NATS queue group.
    async fn consume_core(&self, stop: &CancellationToken) -> Result<(), async_nats::Error> {
        let mut sub = self
            .conn
            .client
            .queue_subscribe(self.topic.clone(), self.subscription.clone())
            .await?;
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = sub.next() => match next { Some(m) => m, None => return Ok(()) },
            };
            if let Err(e) = self
                .process(
                    message.subject.as_str(),
                    message.headers.as_ref(),
                    &message.payload,
                    None,
                )
                .await
            {
                tracing::warn!("NATS trigger of {}/{}: {e}", self.namespace, self.name);
            }
        }
    }

    async fn report(&self, connected: bool, message: &str) {
        if let Err(e) = self
            .ctx
            .status
            .condition(
                &self.namespace,
                &self.name,
                connected_condition(connected, message),
            )
            .await
        {
            tracing::debug!("reporting the NATS trigger state: {e}");
        }
    }

    /// Consumes until `stop`, re-establishing the consumer with backoff after any failure and keeping
    /// the `TriggerConnected` condition current.
    pub async fn run(self, stop: CancellationToken) {
        let reporter = {
            let this = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut state = this.conn.connected.clone();
                loop {
                    let connected = *state.borrow_and_update();
                    let message = if connected {
                        format!("subscribed to {:?} as {:?}", this.topic, this.subscription)
                    } else {
                        format!(
                            "NATS at {} is unreachable; reconnecting",
                            this.conn.options.url
                        )
                    };
                    this.report(connected, &message).await;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = state.changed() => if changed.is_err() { return },
                    }
                }
            })
        };
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let result = if self.jetstream_available().await {
                self.consume_jetstream(&stop).await
            } else {
                self.consume_core(&stop).await
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::info!(
                        "NATS trigger of {}/{}: {e}; retrying in {backoff:?}",
                        self.namespace,
                        self.name
                    );
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        reporter.abort();
    }
}

/// Name of a pipeline for logs.
pub fn describe(p: &Pipeline) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_coverage() {
        assert!(subject_covers("orders.>", "orders.eu.new"));
        assert!(subject_covers("orders.*", "orders.new"));
        assert!(subject_covers("orders.*", "orders.*"));
        assert!(!subject_covers("orders.*", "orders.>"));
        assert!(!subject_covers("orders.*", "orders.eu.new"));
        assert!(subject_covers("a.b", "a.b"));
        assert!(!subject_covers("a.b", "a.*"));
    }

    #[test]
    fn names_derive_from_the_message_id_or_the_sequence() {
        let by_id = decide("p", "S", br#"{"a":1}"#, Some("m-1"), Some(7));
        let again = decide("p", "S", br#"{"a":1}"#, Some("m-1"), Some(9));
        assert_eq!(by_id, again);
        let by_seq = decide("p", "S", b"{}", None, Some(7));
        match by_seq {
            Decision::Run { name, .. } => assert!(name.ends_with("-7"), "{name}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide("p", "S", b"not json", None, Some(1)),
            Decision::DeadLetter(r) if r.contains("not JSON")
        ));
    }

    #[test]
    fn credentials_from_secret_keys() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(
            NatsAuth::from_secret_data("ns/s", &data(&[("token", "t\n")])).expect("token"),
            NatsAuth::Token("t".into())
        );
        assert_eq!(
            NatsAuth::from_secret_data("ns/s", &data(&[("user", "u"), ("password", "p")]))
                .expect("user"),
            NatsAuth::UserPassword("u".into(), "p".into())
        );
        let err = NatsAuth::from_secret_data("ns/s", &data(&[("user", "u")])).expect_err("no pw");
        assert!(err.to_string().contains("ns/s"), "{err}");
        assert!(NatsAuth::from_secret_data("ns/s", &data(&[])).is_err());
    }
}

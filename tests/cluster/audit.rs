//! What the shared JetStream log says about runs that several replicas ran: every message of each run as
//! the stream stored it (who wrote it, which events, when the stream stored it) next to the run's
//! events as the event log reads them back. The checks here are the "exactly once": one
//! terminal event, every stage succeeded once, a stage started again only after the run was taken up
//! again, and a writer that appends to a run another replica wrote to only after taking it up itself.

use std::collections::BTreeMap;

use async_nats::jetstream;
use flowmason_store::{Event, EventKind, EventStore, JetStreamConfig, RunId, StoreConfig};

/// One message of a run's subject.
#[derive(Debug, Clone)]
pub struct Message {
    /// The writer part of its `Nats-Msg-Id` (random per process).
    pub writer: String,
    /// The seqs of the first and last event it holds.
    pub first_seq: u64,
    pub last_seq: u64,
    /// When the stream stored it, Unix microseconds.
    pub stored_at: i64,
}

/// The runs of a stream, read once every run of interest has ended.
pub struct LogAudit {
    pub messages: BTreeMap<RunId, Vec<Message>>,
    pub events: BTreeMap<RunId, Vec<Event>>,
}

/// Every message on the stream's run subjects, in stream order, by run.
async fn read_messages(urls: &[String], stream: &str) -> BTreeMap<RunId, Vec<Message>> {
    let client = async_nats::connect(urls).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let mut handle = js.get_stream(stream).await.expect("the event log's stream");
    let state = handle.info().await.expect("stream info").state.clone();
    let prefix = format!("flowmason.{stream}.events.");
    let mut out: BTreeMap<RunId, Vec<Message>> = BTreeMap::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(message) = handle.get_raw_message(seq).await else {
            continue; // deleted or purged
        };
        let Some(run) = message
            .subject
            .as_str()
            .strip_prefix(&prefix)
            .and_then(|r| r.parse::<RunId>().ok())
        else {
            continue; // the session record, settings
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| panic!("stream message {seq} has no {name} header"))
        };
        let id = header("Nats-Msg-Id");
        let mut parts = id.split(':');
        let writer = parts.next().unwrap_or_default().to_string();
        let first_seq = parts
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("Nats-Msg-Id {id:?} of message {seq}: no first seq"));
        let last_seq = header("Fm-Seq")
            .parse()
            .unwrap_or_else(|e| panic!("Fm-Seq of message {seq}: {e}"));
        let stored_at =
            i64::try_from(message.time.unix_timestamp_nanos() / 1_000).expect("a time of this era");
        out.entry(run).or_default().push(Message {
            writer,
            first_seq,
            last_seq,
            stored_at,
        });
    }
    out
}

impl LogAudit {
    /// Reads `runs` from the stream `stream` on the NATS cluster at `urls` (3 replicas).
    pub async fn read(urls: &[String], stream: &str, runs: &[RunId]) -> LogAudit {
        let messages = read_messages(urls, stream).await;
        let mut config = JetStreamConfig::new(urls.to_vec());
        config.stream = stream.to_string();
        config.replicas = 3;
        let runs = runs.to_vec();
        let events = tokio::task::spawn_blocking(move || {
            let log = EventStore::open_jetstream(&config, StoreConfig::default())
                .expect("open the event log");
            runs.iter()
                .map(|run| {
                    let events = log
                        .events(*run)
                        .unwrap_or_else(|e| panic!("events of run {run}: {e}"));
                    (*run, events)
                })
                .collect()
        })
        .await
        .expect("join");
        LogAudit { messages, events }
    }

    fn event(&self, run: RunId, seq: u64) -> Option<&Event> {
        self.events.get(&run)?.iter().find(|e| e.seq == seq)
    }

    /// The problems of the "exactly once" rules, one line each (none: the log is right).
    pub fn exactly_once_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (run, events) in &self.events {
            let terminal: Vec<&str> = events
                .iter()
                .filter(|e| e.kind.is_terminal())
                .map(|e| e.kind.name())
                .collect();
            if terminal != ["RunSucceeded"] {
                problems.push(format!(
                    "run {run}: terminal events {terminal:?}, wanted one RunSucceeded"
                ));
            }
            // Per stage: how often it succeeded, and for an attempt started and not ended whether the
            // run was taken up since (a take-over interrupted the attempt: it may run again).
            let mut succeeded: BTreeMap<&str, usize> = BTreeMap::new();
            let mut started: BTreeMap<&str, bool> = BTreeMap::new();
            for event in events {
                match &event.kind {
                    EventKind::RunResumed { .. } => {
                        for interrupted in started.values_mut() {
                            *interrupted = true;
                        }
                    }
                    EventKind::StageStarted { stage, attempt, .. } => {
                        if succeeded.contains_key(stage.as_str()) {
                            problems.push(format!(
                                "run {run}: stage {stage} started again (attempt {attempt}) after it succeeded"
                            ));
                        }
                        if started.get(stage.as_str()) == Some(&false) {
                            problems.push(format!(
                                "run {run}: stage {stage} attempt {attempt} started while an attempt ran, with no take-up between"
                            ));
                        }
                        started.insert(stage, false);
                    }
                    EventKind::StageSucceeded { stage, .. } => {
                        *succeeded.entry(stage).or_insert(0) += 1;
                        started.remove(stage.as_str());
                    }
                    EventKind::StageFailed { stage, .. } => {
                        started.remove(stage.as_str());
                    }
                    _ => {}
                }
            }
            for (stage, count) in succeeded {
                if count != 1 {
                    problems.push(format!("run {run}: stage {stage} succeeded {count} times"));
                }
            }
            problems.extend(self.writer_problems(*run));
        }
        problems
    }

    /// A writer that follows another writer on a run must begin with the run's `RunResumed`.
    fn writer_problems(&self, run: RunId) -> Vec<String> {
        let Some(messages) = self.messages.get(&run) else {
            return vec![format!("run {run}: no message on the stream")];
        };
        messages
            .windows(2)
            .filter(|pair| pair[0].writer != pair[1].writer)
            .filter(|pair| {
                !matches!(
                    self.event(run, pair[1].first_seq).map(|e| &e.kind),
                    Some(EventKind::RunResumed { .. })
                )
            })
            .map(|pair| {
                format!(
                    "run {run}: writer {} appended seq {}..={} after writer {} without taking the run up (no RunResumed first)",
                    pair[1].writer, pair[1].first_seq, pair[1].last_seq, pair[0].writer
                )
            })
            .collect()
    }

    /// The writer of the run's last message.
    pub fn last_writer(&self, run: RunId) -> &str {
        self.messages
            .get(&run)
            .and_then(|m| m.last())
            .map(|m| m.writer.as_str())
            .unwrap_or_else(|| panic!("run {run}: no message on the stream"))
    }

    /// Messages `writer` got stored after `lost(run)` (Unix micros: when it lost the run) on a run it
    /// had not taken up again (with a `RunResumed` of its own stored after that) or started itself
    /// before them.
    pub fn appends_after_losing(&self, writer: &str, lost: impl Fn(RunId) -> i64) -> Vec<String> {
        let mut out = Vec::new();
        for (run, messages) in &self.messages {
            let since = lost(*run);
            let mut retaken = false;
            for m in messages
                .iter()
                .filter(|m| m.writer == writer && m.stored_at > since)
            {
                let resumes = matches!(
                    self.event(*run, m.first_seq).map(|e| &e.kind),
                    Some(EventKind::RunResumed { .. })
                );
                // A run it takes up again, or one it starts (its RunAccepted): its own from then on.
                retaken |= resumes || m.first_seq == 0;
                if !retaken {
                    out.push(format!(
                        "run {run}: seq {}..={} stored at {} us, {} us after it lost the run's shard",
                        m.first_seq,
                        m.last_seq,
                        m.stored_at,
                        m.stored_at - since
                    ));
                }
            }
        }
        out
    }

    /// Each run's `RunResumed` events recorded after `since` (Unix micros): `(run, at)`.
    pub fn resumes_after(&self, since: i64) -> Vec<(RunId, i64)> {
        self.events
            .iter()
            .flat_map(|(run, events)| {
                events
                    .iter()
                    .filter(move |e| matches!(e.kind, EventKind::RunResumed { .. }) && e.at > since)
                    .map(move |e| (*run, e.at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64, at: i64, kind: EventKind) -> Event {
        Event { seq, at, kind }
    }

    fn started(stage: &str, attempt: u32) -> EventKind {
        EventKind::StageStarted {
            stage: stage.into(),
            attempt,
            input: json!(null),
        }
    }

    fn succeeded(stage: &str, attempt: u32) -> EventKind {
        EventKind::StageSucceeded {
            stage: stage.into(),
            attempt,
            output: json!(null),
            skip: Vec::new(),
            reused_from: None,
        }
    }

    fn resumed() -> EventKind {
        EventKind::RunResumed {
            session: 7,
            after_crash: true,
        }
    }

    fn message(writer: &str, first_seq: u64, last_seq: u64, stored_at: i64) -> Message {
        Message {
            writer: writer.into(),
            first_seq,
            last_seq,
            stored_at,
        }
    }

    /// A run of one stage `s`, taken over by writer `w2` after `w1` began its attempt 1; `w2`'s first
    /// message holds `w2_first`.
    fn taken_over(w2_first: EventKind) -> LogAudit {
        let run = RunId::nil();
        let kinds = [
            EventKind::RunStarted,
            started("s", 1),
            w2_first,
            started("s", 2),
            succeeded("s", 2),
            EventKind::RunSucceeded { output: json!(1) },
        ];
        let events = kinds
            .into_iter()
            .enumerate()
            .map(|(i, k)| event(i as u64, i as i64, k))
            .collect();
        LogAudit {
            messages: BTreeMap::from([(
                run,
                vec![
                    message("w1", 0, 0, 3),
                    message("w1", 1, 1, 10),
                    message("w2", 2, 5, 20),
                ],
            )]),
            events: BTreeMap::from([(run, events)]),
        }
    }

    #[test]
    fn an_attempt_run_again_after_a_take_up_is_exactly_once() {
        assert_eq!(
            taken_over(resumed()).exactly_once_problems(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_second_writer_without_taking_the_run_up_is_reported() {
        let problems = taken_over(EventKind::StageLog {
            stage: "s".into(),
            attempt: 1,
            level: "info".into(),
            message: "late".into(),
            data: json!(null),
        })
        .exactly_once_problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("without taking the run up")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("while an attempt ran")),
            "{problems:?}"
        );
    }

    #[test]
    fn appends_after_losing_are_those_before_the_writer_took_the_run_up_again() {
        let audit = taken_over(resumed());
        assert_eq!(
            audit.appends_after_losing("w2", |_| 15),
            Vec::<String>::new()
        );
        assert_eq!(
            audit.appends_after_losing("w1", |_| 15),
            Vec::<String>::new()
        );
        assert_eq!(audit.appends_after_losing("w1", |_| 5).len(), 1);
    }
}

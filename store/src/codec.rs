//! Versioned encoding of the stored records.
//!
//! Every value starts with a format version byte so that a later release can change the encoding and still
//! read (or at least recognise) old records. Version 1 is JSON: readable with any tool, and the event
//! payloads (plans, outputs) are JSON already. The sequence number of an event is in its key, not its value.
//!
//! An event value is either one version-1 record (its key holds its seq) or a version-2 segment: several
//! consecutive version-1 records of one run written in one go, keyed by the seq of the LAST of them, each
//! preceded by its length (u32, little endian). Segments are how the write-behind buffer turns many small
//! appends into few sled writes.

use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::error::StoreError;
use crate::event::{Event, EventKind, RunId};
use crate::keys;
use crate::summary::RunSummary;

/// The format version of one record (an event, a summary).
pub(crate) const FORMAT_VERSION: u8 = 1;
/// The format version of a segment of consecutive event records.
pub(crate) const SEGMENT_VERSION: u8 = 2;

#[derive(Serialize)]
struct RecordRef<'a> {
    at: i64,
    kind: &'a EventKind,
}

#[derive(Deserialize)]
struct Record {
    at: i64,
    kind: EventKind,
}

thread_local! {
    /// Reused encode buffer: an append allocates only the value sled keeps.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}

/// Encodes an event value (`seq` is only for the error message).
pub(crate) fn encode_event(
    run: RunId,
    seq: u64,
    at: i64,
    kind: &EventKind,
) -> Result<IVec, StoreError> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.push(FORMAT_VERSION);
        serde_json::to_writer(&mut *buf, &RecordRef { at, kind }).map_err(|e| {
            StoreError::Encode {
                run,
                seq,
                reason: e.to_string(),
            }
        })?;
        let value = IVec::from(buf.as_slice());
        // Do not keep a huge buffer alive after one huge event.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::with_capacity(512);
        }
        Ok(value)
    })
}

/// The value storing `records` (encoded events of one run with consecutive seqs): the record itself when
/// there is one, else a segment.
pub(crate) fn encode_segment(records: &[IVec]) -> IVec {
    if let [only] = records {
        return only.clone();
    }
    let len = 1 + records.iter().map(|r| 4 + r.len()).sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    buf.push(SEGMENT_VERSION);
    for record in records {
        buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        buf.extend_from_slice(record);
    }
    IVec::from(buf)
}

/// Decodes the events stored under `key` for `run`: one record, or a segment ending at the key's seq.
pub(crate) fn decode_events(
    run: RunId,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<Event>, StoreError> {
    let last = keys::event_seq(key).ok_or_else(|| StoreError::Corrupt {
        run,
        seq: 0,
        reason: format!("malformed event key of {} bytes", key.len()),
    })?;
    let Some((&SEGMENT_VERSION, mut rest)) = value.split_first() else {
        return Ok(vec![decode_record(run, last, value)?]);
    };
    let mut records = Vec::new();
    while !rest.is_empty() {
        let corrupt = |reason: &str| StoreError::Corrupt {
            run,
            seq: last,
            reason: format!("segment: {reason}"),
        };
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt("truncated record"));
        }
        records.push(&tail[..len]);
        rest = &tail[len..];
    }
    let first = (last + 1)
        .checked_sub(records.len() as u64)
        .ok_or_else(|| StoreError::Corrupt {
            run,
            seq: last,
            reason: format!(
                "segment of {} records cannot end at sequence {last}",
                records.len()
            ),
        })?;
    records
        .iter()
        .enumerate()
        .map(|(i, record)| decode_record(run, first + i as u64, record))
        .collect()
}

/// Decodes the event stored under `key` for `run` (a single record).
#[cfg(test)]
pub(crate) fn decode_event(run: RunId, key: &[u8], value: &[u8]) -> Result<Event, StoreError> {
    let seq = keys::event_seq(key).ok_or_else(|| StoreError::Corrupt {
        run,
        seq: 0,
        reason: format!("malformed event key of {} bytes", key.len()),
    })?;
    decode_record(run, seq, value)
}

/// Decodes one version-1 event record with sequence `seq`.
fn decode_record(run: RunId, seq: u64, value: &[u8]) -> Result<Event, StoreError> {
    match value.split_first() {
        None => Err(StoreError::Corrupt {
            run,
            seq,
            reason: "empty record".into(),
        }),
        Some((&FORMAT_VERSION, json)) => {
            let Record { at, kind } =
                serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
                    run,
                    seq,
                    reason: e.to_string(),
                })?;
            Ok(Event { seq, at, kind })
        }
        Some((&version, _)) => Err(StoreError::UnsupportedVersion { run, seq, version }),
    }
}

pub(crate) fn encode_summary(summary: &RunSummary) -> Result<IVec, StoreError> {
    let mut buf = Vec::with_capacity(256);
    buf.push(FORMAT_VERSION);
    serde_json::to_writer(&mut buf, summary).map_err(|e| StoreError::CorruptSummary {
        run: summary.run_id,
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(IVec::from(buf))
}

pub(crate) fn decode_summary(run: RunId, value: &[u8]) -> Result<RunSummary, StoreError> {
    match value.split_first() {
        None => Err(StoreError::CorruptSummary {
            run,
            reason: "empty record".into(),
        }),
        Some((&FORMAT_VERSION, json)) => {
            let summary: RunSummary =
                serde_json::from_slice(json).map_err(|e| StoreError::CorruptSummary {
                    run,
                    reason: e.to_string(),
                })?;
            if summary.run_id != run {
                return Err(StoreError::CorruptSummary {
                    run,
                    reason: format!("record names run {}", summary.run_id),
                });
            }
            Ok(summary)
        }
        Some((&version, _)) => Err(StoreError::CorruptSummary {
            run,
            reason: format!("unsupported format version {version}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_truncation_names_the_run() {
        let run = RunId::from_u128(9);
        let kinds = [
            EventKind::RunStarted,
            EventKind::StageStarted {
                stage: "a".into(),
                attempt: 1,
                input: serde_json::Value::Null,
            },
            EventKind::StageSkipped {
                stage: "b".into(),
                reason: crate::event::SkipReason::RunEnded,
            },
        ];
        let records: Vec<IVec> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| encode_event(run, 4 + i as u64, 50, k).unwrap())
            .collect();
        let value = encode_segment(&records);
        assert_eq!(value[0], SEGMENT_VERSION);
        let events = decode_events(run, &keys::event_key(run, 6), &value).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(
            events.into_iter().map(|e| e.kind).collect::<Vec<_>>(),
            kinds
        );
        // One record is stored as itself.
        assert_eq!(encode_segment(&records[..1]), records[0]);
        let err =
            decode_events(run, &keys::event_key(run, 6), &value[..value.len() - 3]).unwrap_err();
        assert!(err.to_string().contains(&run.to_string()), "{err}");
        let err = decode_events(run, &keys::event_key(run, 1), &value).unwrap_err();
        assert!(
            err.to_string().contains("cannot end at sequence 1"),
            "{err}"
        );
    }

    #[test]
    fn event_round_trips() {
        let run = RunId::from_u128(9);
        let kind = EventKind::StageRetryScheduled {
            stage: "a".into(),
            attempt: 2,
            at: 77,
        };
        let value = encode_event(run, 3, 1234, &kind).unwrap();
        assert_eq!(value[0], FORMAT_VERSION);
        let event = decode_event(run, &keys::event_key(run, 3), &value).unwrap();
        assert_eq!(
            event,
            Event {
                seq: 3,
                at: 1234,
                kind
            }
        );
    }

    #[test]
    fn bad_records_name_run_and_seq() {
        let run = RunId::from_u128(9);
        let key = keys::event_key(run, 7);
        let err = decode_event(run, &key, b"\x01{not json").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { seq: 7, .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("run {run}: event 7 is corrupt: ")),
            "{err}"
        );
        let err = decode_event(run, &key, br#"{"at":1,"kind":{"type":"Nope"}}"#).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedVersion {
                    seq: 7,
                    version: b'{',
                    ..
                }
            ),
            "{err:?}"
        );
        let err = decode_event(run, &key, b"").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { seq: 7, .. }), "{err:?}");
        let err = decode_event(run, &key[..10], b"\x01{}").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Event kinds that cover the shapes of a stream: unit variants, strings, numbers, JSON payloads.
        fn kinds() -> Vec<EventKind> {
            vec![
                EventKind::RunStarted,
                EventKind::StageStarted {
                    stage: "a\u{e9}\"b".into(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                },
                EventKind::StageRetryScheduled {
                    stage: "a".into(),
                    attempt: 2,
                    at: -77,
                },
                EventKind::StageSkipped {
                    stage: "b".into(),
                    reason: crate::event::SkipReason::RunEnded,
                },
            ]
        }

        fn names_the_run(err: &StoreError, run: RunId) -> bool {
            err.to_string().contains(&run.to_string())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes_decode_to_events_or_an_error_naming_the_run(
                value in proptest::collection::vec(any::<u8>(), 0..512),
                seq in any::<u64>(),
            ) {
                let run = RunId::from_u128(11);
                if let Err(err) = decode_events(run, &keys::event_key(run, seq), &value) {
                    prop_assert!(names_the_run(&err, run), "{err}");
                }
                if let Err(err) = decode_summary(run, &value) {
                    prop_assert!(names_the_run(&err, run), "{err}");
                }
            }

            #[test]
            fn arbitrary_keys_never_panic_the_decoder(
                key in proptest::collection::vec(any::<u8>(), 0..64),
                value in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let run = RunId::from_u128(12);
                if let Err(err) = decode_events(run, &key, &value) {
                    prop_assert!(names_the_run(&err, run), "{err}");
                }
            }

            #[test]
            fn a_truncated_record_is_an_error_naming_run_and_seq(
                which in 0..4usize,
                cut in any::<proptest::sample::Index>(),
            ) {
                let run = RunId::from_u128(13);
                let record = encode_event(run, 5, 99, &kinds()[which]).unwrap();
                let cut = cut.index(record.len());
                let err = decode_events(run, &keys::event_key(run, 5), &record[..cut]).unwrap_err();
                prop_assert!(
                    err.to_string().starts_with(&format!("run {run}: event 5 ")),
                    "{err}"
                );
            }

            #[test]
            fn a_truncated_segment_decodes_whole_records_or_names_the_run(
                count in 2..5usize,
                cut in any::<proptest::sample::Index>(),
            ) {
                let run = RunId::from_u128(14);
                let records: Vec<IVec> = (0..count)
                    .map(|i| encode_event(run, i as u64, 7, &kinds()[i % 4]).unwrap())
                    .collect();
                let segment = encode_segment(&records);
                let cut = cut.index(segment.len());
                let key = keys::event_key(run, count as u64 - 1);
                match decode_events(run, &key, &segment[..cut]) {
                    // A cut between two records leaves a shorter, well-formed segment.
                    Ok(events) => prop_assert!(events.len() < count),
                    Err(err) => prop_assert!(names_the_run(&err, run), "{err}"),
                }
            }

            #[test]
            fn a_flipped_byte_in_a_record_never_panics_the_decoder(
                which in 0..4usize,
                at in any::<proptest::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let run = RunId::from_u128(15);
                let mut record = encode_event(run, 3, 1, &kinds()[which]).unwrap().to_vec();
                let at = at.index(record.len());
                record[at] = byte;
                if let Err(err) = decode_events(run, &keys::event_key(run, 3), &record) {
                    prop_assert!(names_the_run(&err, run), "{err}");
                }
            }
        }
    }
}

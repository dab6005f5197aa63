//! Settings recorded in the log itself, so that every process sharing the log agrees on them.
//!
//! Some settings decide how processes divide a shared log between them (the operator's shard count): two
//! processes with different values would each believe they own runs the other owns. The first process to
//! claim a setting records its value; every later claim must bring the same value, or is refused naming
//! both. Under JetStream the value is the one message on `flowmason.<stream>.settings.<name>`, published
//! only if that subject is empty (expected last subject sequence 0), so that two processes claiming at
//! once cannot both win. Under sled it is a key of the default tree, apart from the runs, flushed.

use crate::error::StoreError;
use crate::store::EventStore;

/// The sled key of setting `name`.
fn key(name: &str) -> Vec<u8> {
    format!("flowmason-setting/{name}").into_bytes()
}

/// Setting names are subject tokens under JetStream: letters, digits, `-` and `_`.
fn check_name(name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidSettingName { name: name.into() })
    }
}

impl EventStore {
    /// Records `value` as setting `name` of this log the first time it is claimed; a later claim with the
    /// same value succeeds, one with another value fails with [`StoreError::SettingMismatch`] naming the
    /// log, the setting and both values. Durable (sled: flushed; JetStream: acknowledged) before it
    /// returns.
    pub fn claim_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let (recorded, stream) = match &self.stream {
            Some(stream) => (
                stream.claim_setting(name, value)?,
                format!("JetStream stream {}", stream.name()),
            ),
            None => (self.claim_local(name, value)?, "the sled event log".into()),
        };
        match recorded {
            Some(recorded) if recorded != value => Err(StoreError::SettingMismatch {
                stream,
                name: name.into(),
                recorded,
                wanted: value.into(),
            }),
            _ => Ok(()),
        }
    }

    /// Records the setting in sled unless present; the value recorded before, if any.
    fn claim_local(&self, name: &str, value: &str) -> Result<Option<String>, StoreError> {
        let db = &self.inner.disk.db;
        match db.compare_and_swap(key(name), None as Option<&[u8]>, Some(value.as_bytes()))? {
            Ok(()) => {
                self.inner.disk.flush()?;
                Ok(None)
            }
            Err(present) => Ok(Some(
                present
                    .current
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::StoreConfig;
    use crate::error::StoreError;
    use crate::store::EventStore;

    #[test]
    fn a_sled_log_records_the_first_claim_and_refuses_another_value_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let open = || EventStore::open(dir.path(), StoreConfig::default()).unwrap();
        let store = open();
        store.claim_setting("shards", "16").unwrap();
        drop(store);
        let store = open();
        store.claim_setting("shards", "16").unwrap();
        let err = store.claim_setting("shards", "8").unwrap_err();
        assert!(
            matches!(&err, StoreError::SettingMismatch { name, recorded, wanted, .. }
                if name == "shards" && recorded == "16" && wanted == "8"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the sled event log records shards=16; this process has shards=8"
        );
    }

    #[test]
    fn a_setting_name_that_is_not_a_subject_token_is_refused() {
        let store = EventStore::temporary(StoreConfig::default()).unwrap();
        for name in ["", "a.b", "a*", ">", "a b"] {
            let err = store.claim_setting(name, "1").unwrap_err();
            assert!(
                matches!(&err, StoreError::InvalidSettingName { name: n } if n == name),
                "{err:?}"
            );
        }
    }
}

//! A Pipeline's `spec.schedule` in its `spec.timeZone`, parsed: when it fires. Validation refuses a
//! schedule that does not parse (so a Pipeline whose trigger could never fire is invalid); the cron trigger
//! (`triggers::cron`) plans its runs by it.

use std::str::FromStr as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule or its time zone does not parse; each names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("spec.schedule {expr:?}: {reason}")]
    Expression { expr: String, reason: String },
    #[error("spec.timeZone {0:?} is not an IANA time zone name")]
    TimeZone(String),
}

/// A parsed `spec.schedule` in its `spec.timeZone`.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
    expr: String,
}

impl CronSchedule {
    /// Parses a 5-field expression (ranges, lists, steps, month and weekday names, `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`) in an IANA time zone (UTC when `None`).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match time_zone.map(str::trim).filter(|t| !t.is_empty()) {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(name.to_string()))?
            }
        };
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 {
            return Err(ScheduleError::Expression {
                expr: expr.into(),
                reason: format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
                ),
            });
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expr).map_err(|e| ScheduleError::Expression {
            expr: expr.into(),
            reason: e.to_string(),
        })?;
        Ok(CronSchedule {
            cron,
            tz,
            expr: expr.to_string(),
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first scheduled instant strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest scheduled instant at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Scheduled instants in `(after, until]`, at most `max` of them; `Err(count)` when there are more
    /// (the count found so far, `max + 1`).
    pub fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<DateTime<Utc>>, usize> {
        let mut out = Vec::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor) {
            if next > until {
                break;
            }
            if out.len() == max {
                return Err(max + 1);
            }
            out.push(next);
            cursor = next;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_usual_extensions_and_rejects_bad_fields() {
        for expr in [
            "*/6 * * * *",
            "0 9-17 * * MON-FRI",
            "0,30 * * JAN,JUL *",
            "@hourly",
            "@daily",
            "15 3 1 * *",
        ] {
            CronSchedule::parse(expr, None).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
        let err = CronSchedule::parse("* * * *", None).expect_err("4 fields");
        assert!(
            err.to_string().contains("spec.schedule \"* * * *\""),
            "{err}"
        );
        let err = CronSchedule::parse("0 0 * * * *", None).expect_err("seconds");
        assert!(err.to_string().contains("found 6"), "{err}");
        assert!(CronSchedule::parse("61 * * * *", None).is_err());
        let err = CronSchedule::parse("@daily", Some("Mars/Olympus")).expect_err("zone");
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn step_schedule_next_and_previous() {
        let s = CronSchedule::parse("*/6 * * * *", None).expect("parse");
        assert_eq!(
            s.next_after(t("2025-01-01T10:07:30Z")),
            Some(t("2025-01-01T10:12:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("2025-01-01T10:12:00Z")),
            Some(t("2025-01-01T10:12:00Z"))
        );
    }

    #[test]
    fn time_zone_shifts_the_schedule() {
        let s = CronSchedule::parse("0 9 * * *", Some("Europe/Berlin")).expect("parse");
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(
            s.next_after(t("2025-01-10T00:00:00Z")),
            Some(t("2025-01-10T08:00:00Z"))
        );
    }

    #[test]
    fn dst_skipped_hour_fires_once() {
        // 2025-03-09: New York clocks jump from 02:00 to 03:00; 02:30 does not exist that day.
        let s = CronSchedule::parse("30 2 * * *", Some("America/New_York")).expect("parse");
        let fires = s
            .between(t("2025-03-08T12:00:00Z"), t("2025-03-10T12:00:00Z"), 10)
            .expect("bounded");
        assert_eq!(fires.len(), 2, "{fires:?}");
        // The skipped 02:30 runs once, right after the gap (03:00 EDT = 07:00 UTC).
        assert_eq!(fires[0], t("2025-03-09T07:00:00Z"));
        assert_eq!(fires[1], t("2025-03-10T06:30:00Z"));
    }

    #[test]
    fn dst_repeated_hour_fires_once() {
        // 2025-11-02: New York clocks go back from 02:00 to 01:00; 01:30 happens twice.
        let s = CronSchedule::parse("30 1 * * *", Some("America/New_York")).expect("parse");
        let fires = s
            .between(t("2025-11-02T00:00:00Z"), t("2025-11-02T12:00:00Z"), 10)
            .expect("bounded");
        assert_eq!(fires, vec![t("2025-11-02T05:30:00Z")]);
    }

    #[test]
    fn between_is_bounded() {
        let s = CronSchedule::parse("* * * * *", None).expect("parse");
        assert_eq!(
            s.between(t("2025-01-01T00:00:00Z"), t("2025-01-01T01:00:00Z"), 10),
            Err(11)
        );
        assert_eq!(
            s.between(t("2025-01-01T00:00:00Z"), t("2025-01-01T00:10:00Z"), 10)
                .map(|v| v.len()),
            Ok(10)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use chrono::TimeZone as _;

        use super::*;

        /// Pieces of cron fields, valid and not.
        const PIECES: &[&str] = &[
            "*",
            "*/",
            "0",
            "1",
            "5",
            "7",
            "12",
            "23",
            "31",
            "59",
            "60",
            "99",
            "4294967296",
            "-",
            ",",
            "/",
            "L",
            "W",
            "#",
            "?",
            "MON",
            "fri",
            "JAN",
            "dec",
            "@",
            "@daily",
            "@hourly",
            "@yearly",
            "@reboot",
            " ",
            "  ",
        ];

        fn schedule() -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(PIECES), 0..16)
                .prop_map(|pieces| pieces.concat())
        }

        fn instant() -> impl Strategy<Value = DateTime<Utc>> {
            // Years 1970 to 2200.
            (0i64..7_258_118_400).prop_map(|s| Utc.timestamp_opt(s, 0).single().unwrap_or_default())
        }

        fn exercise(expr: &str, zone: Option<&str>, t: DateTime<Utc>) {
            let Ok(schedule) = CronSchedule::parse(expr, zone) else {
                return;
            };
            if let Some(next) = schedule.next_after(t) {
                assert!(next > t, "{expr}: next {next} after {t}");
            }
            if let Some(latest) = schedule.latest_at_or_before(t) {
                assert!(latest <= t, "{expr}: latest {latest} at or before {t}");
            }
            let until = t + chrono::Duration::hours(2);
            if let Ok(found) = schedule.between(t, until, 200) {
                assert!(found.iter().all(|at| *at > t && *at <= until), "{expr}");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_schedules_parse_or_fail_without_panicking(
                expr in any::<String>(),
                t in instant(),
            ) {
                exercise(&expr, None, t);
            }

            #[test]
            fn cron_soup_in_any_zone_gives_ordered_instants_or_an_error(
                expr in schedule(),
                zone in proptest::sample::select(
                    &["", "UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "Nope/Zone"][..],
                ),
                t in instant(),
            ) {
                exercise(&expr, Some(zone), t);
            }
        }
    }
}

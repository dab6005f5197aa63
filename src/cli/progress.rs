//! Live progress of a run on stderr: one spinner line per stage on a terminal, plain lines otherwise (logs,
//! CI), each with its time and, for the end of a stage attempt or of the run, how long it took; stdout
//! carries nothing but the run's output.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use flowmason_store::{Event, EventKind};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows the events of one run as they arrive.
pub enum Progress {
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
        style: ProgressStyle,
    },
    Lines(Timing),
}

/// What plain lines need to say how long things took: when the run was accepted and when each stage's
/// current attempt started (Unix microseconds, from the events).
#[derive(Default)]
pub struct Timing {
    accepted: Option<i64>,
    started: HashMap<String, i64>,
}

impl Timing {
    /// The line of an event: its time (RFC 3339, milliseconds), what happened, and for an attempt or a
    /// run that ended, its duration; `None` for events that say nothing to a person watching.
    pub fn line(&mut self, event: &Event) -> Option<String> {
        let text = describe(&event.kind)?;
        let took = match &event.kind {
            EventKind::RunAccepted { .. } => {
                self.accepted = Some(event.at);
                None
            }
            EventKind::StageStarted { stage, .. } => {
                self.started.insert(stage.clone(), event.at);
                None
            }
            EventKind::StageSucceeded { stage, .. } | EventKind::StageFailed { stage, .. } => {
                self.started.get(stage).map(|start| event.at - start)
            }
            kind if kind.is_terminal() => self.accepted.map(|start| event.at - start),
            _ => None,
        };
        let time = crate::history::format_time(event.at);
        Some(match took {
            Some(micros) => format!(
                "{time} {text} in {}",
                super::history::format_duration(micros)
            ),
            None => format!("{time} {text}"),
        })
    }
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(
                "{spinner:.cyan} {prefix:.bold} {wide_msg} {elapsed:>4}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            Progress::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: HashMap::new(),
                style,
            }
        } else {
            Progress::Lines(Timing::default())
        }
    }

    pub fn show(&mut self, event: &Event) {
        match self {
            Progress::Lines(timing) => {
                if let Some(line) = timing.line(event) {
                    eprintln!("{line}");
                }
            }
            Progress::Bars { multi, bars, style } => {
                let Some(stage) = event.kind.stage() else {
                    if event.kind.is_terminal()
                        && let Some(line) = describe(&event.kind)
                    {
                        let _ = multi.println(line);
                    }
                    return;
                };
                let bar = bars.entry(stage.to_string()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                    bar.set_prefix(stage.to_string());
                    bar.enable_steady_tick(Duration::from_millis(100));
                    bar
                });
                match &event.kind {
                    EventKind::StageStarted { attempt, .. } if *attempt > 1 => {
                        bar.set_message(format!("running (attempt {attempt})"))
                    }
                    EventKind::StageStarted { .. } => bar.set_message("running"),
                    EventKind::StageLog { level, message, .. } => {
                        bar.set_message(format!("{level}: {message}"))
                    }
                    EventKind::StageRetryScheduled { attempt, .. } => {
                        bar.set_message(format!("retrying (attempt {attempt} scheduled)"))
                    }
                    EventKind::StageSucceeded { .. } => bar.finish_with_message("✔ succeeded"),
                    EventKind::StageFailed { error, .. } => {
                        bar.set_message(format!("✘ {}", error.message))
                    }
                    EventKind::StageSkipped { reason, .. } => {
                        bar.finish_with_message(format!("– skipped ({reason:?})"))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Stops every spinner (a run that ended leaves some stages unfinished).
    pub fn finish(&mut self) {
        if let Progress::Bars { bars, .. } = self {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

/// One line for an event, or none for events that say nothing to a person watching.
pub fn describe(kind: &EventKind) -> Option<String> {
    Some(match kind {
        EventKind::RunAccepted { pipeline, .. } => format!("run of {pipeline} accepted"),
        EventKind::RunStarted => "run started".to_string(),
        EventKind::RunResumed {
            session,
            after_crash: true,
        } => format!("run resumed after a crash of the engine (engine session {session})"),
        EventKind::RunResumed { session, .. } => {
            format!("run resumed after a restart (engine session {session})")
        }
        EventKind::StageStarted { stage, attempt, .. } => {
            format!("stage {stage} started (attempt {attempt})")
        }
        EventKind::StageSucceeded { stage, attempt, .. } => {
            format!("stage {stage} succeeded (attempt {attempt})")
        }
        EventKind::StageFailed {
            stage,
            attempt,
            error,
        } => format!(
            "stage {stage} failed (attempt {attempt}): {}",
            error.message
        ),
        EventKind::StageRetryScheduled { stage, attempt, .. } => {
            format!("stage {stage} will retry (attempt {attempt})")
        }
        EventKind::StageSkipped { stage, reason } => format!("stage {stage} skipped ({reason:?})"),
        EventKind::StageLog {
            stage,
            level,
            message,
            ..
        } => format!("stage {stage} [{level}] {message}"),
        EventKind::RunSucceeded { .. } => "run succeeded".to_string(),
        EventKind::RunFailed { error } => format!("run failed: {}", error.message),
        EventKind::RunCancelled { reason } => format!("run cancelled: {reason}"),
        EventKind::RunTimedOut { message } => format!("run timed out: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, micros: i64, kind: EventKind) -> Event {
        Event {
            seq,
            at: micros,
            kind,
        }
    }

    #[test]
    fn lines_carry_their_time_and_the_duration_of_what_ended() {
        let base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
        let mut timing = Timing::default();
        let accepted = EventKind::RunAccepted {
            pipeline: "p".into(),
            namespace: "default".into(),
            generation: 1,
            trigger: flowmason_store::Trigger::Manual,
            run_name: None,
            labels: Default::default(),
            plan: serde_json::json!({}),
            inputs: serde_json::json!({}),
        };
        let lines: Vec<String> = [
            at(0, base, accepted),
            at(
                1,
                base + 1_000,
                EventKind::StageStarted {
                    stage: "a".into(),
                    attempt: 1,
                    input: serde_json::Value::Null,
                },
            ),
            at(
                2,
                base + 301_000,
                EventKind::StageSucceeded {
                    stage: "a".into(),
                    attempt: 1,
                    output: serde_json::json!({}),
                    skip: Vec::new(),
                    reused_from: None,
                },
            ),
            at(
                3,
                base + 2_500_000,
                EventKind::RunSucceeded {
                    output: serde_json::json!({}),
                },
            ),
        ]
        .iter()
        .filter_map(|e| timing.line(e))
        .collect();
        assert_eq!(
            lines,
            [
                "2026-01-01T00:00:00.000Z run of p accepted",
                "2026-01-01T00:00:00.001Z stage a started (attempt 1)",
                "2026-01-01T00:00:00.301Z stage a succeeded (attempt 1) in 300.0ms",
                "2026-01-01T00:00:02.500Z run succeeded in 2.50s",
            ]
        );
    }
}

//! Live progress of a run on stderr: one spinner line per stage on a terminal, plain lines otherwise (logs,
//! CI), so that stdout carries nothing but the run's output.

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
    Lines,
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
            Progress::Lines
        }
    }

    pub fn show(&mut self, event: &Event) {
        match self {
            Progress::Lines => {
                if let Some(line) = describe(&event.kind) {
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
        EventKind::StageStarted { stage, attempt } => {
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

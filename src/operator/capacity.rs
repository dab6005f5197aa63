//! The operator's capacity and its reservations: runs execute inside the operator's process (actors, not
//! pods), so a run's `spec.resources` requests (read by `model::resources`) are reserved from the
//! operator's capacity (`--capacity-cpu`, `--capacity-memory`) while it is in flight. A run that does not
//! fit now waits `Pending` (reason `WaitingForResources`) until runs in flight end; one that could never
//! fit fails (`Unschedulable`). Without a configured capacity nothing is reserved. `limits` are recorded;
//! an in-process engine cannot cap one run's memory or CPU.

use std::collections::HashMap;
use std::sync::Mutex;

use flowmason_store::RunId;

use crate::model::resources::{Demand, cpu_millis, memory_bytes};

/// How much the operator lends out; `None` on an axis: that axis is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

impl Capacity {
    /// A capacity from Kubernetes quantities (e.g. `2`, `1500m`; `4Gi`, `512M`).
    pub fn parse(cpu: Option<&str>, memory: Option<&str>) -> Result<Capacity, String> {
        Ok(Capacity {
            cpu_millis: cpu.map(|q| cpu_millis("--capacity-cpu", q)).transpose()?,
            memory_bytes: memory
                .map(|q| memory_bytes("--capacity-memory", q))
                .transpose()?,
        })
    }

    fn fits(&self, demand: Demand) -> bool {
        self.cpu_millis.is_none_or(|c| demand.cpu_millis <= c)
            && self.memory_bytes.is_none_or(|m| demand.memory_bytes <= m)
    }
}

/// Whether a run may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: it starts.
    Admitted,
    /// Not now: the message says what it needs and what is in use.
    Wait(String),
    /// Never: it needs more than the whole capacity.
    Never(String),
}

/// The reservations of the runs in flight.
#[derive(Debug)]
pub struct Ledger {
    capacity: Capacity,
    held: Mutex<HashMap<RunId, Demand>>,
}

impl Ledger {
    pub fn new(capacity: Capacity) -> Ledger {
        Ledger {
            capacity,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Demand>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves `demand` for `run` if it fits next to the runs in flight.
    pub fn admit(&self, run: RunId, demand: Demand) -> Admission {
        if !self.capacity.fits(demand) {
            return Admission::Never(format!(
                "needs {} but the operator's whole capacity is {}",
                describe(demand),
                describe_capacity(self.capacity)
            ));
        }
        let mut held = self.held();
        if held.contains_key(&run) {
            return Admission::Admitted;
        }
        let in_use = held.values().fold(Demand::default(), |a, d| a.plus(*d));
        if self.capacity.fits(in_use.plus(demand)) {
            held.insert(run, demand);
            Admission::Admitted
        } else {
            Admission::Wait(format!(
                "needs {}; {} of {} in use by {} run(s) in flight",
                describe(demand),
                describe(in_use),
                describe_capacity(self.capacity),
                held.len()
            ))
        }
    }

    /// Reserves `demand` for a run that is already in flight (resumed after a restart), fitting or not.
    pub fn hold(&self, run: RunId, demand: Demand) {
        self.held().insert(run, demand);
    }

    /// The run ended: its reservation returns to the capacity.
    pub fn release(&self, run: RunId) {
        self.held().remove(&run);
    }
}

fn describe(d: Demand) -> String {
    format!("cpu {}m, memory {}", d.cpu_millis, bytes(d.memory_bytes))
}

fn describe_capacity(c: Capacity) -> String {
    let cpu = c
        .cpu_millis
        .map_or("unlimited".to_string(), |m| format!("{m}m"));
    let memory = c.memory_bytes.map_or("unlimited".to_string(), bytes);
    format!("cpu {cpu}, memory {memory}")
}

fn bytes(b: u64) -> String {
    const MI: u64 = 1024 * 1024;
    if b.is_multiple_of(MI) {
        format!("{}Mi", b / MI)
    } else {
        format!("{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_wait_until_their_requests_fit_and_never_beyond_the_capacity() {
        let ledger = Ledger::new(Capacity::parse(Some("1"), Some("1Gi")).expect("capacity"));
        let half = Demand {
            cpu_millis: 600,
            memory_bytes: 1 << 20,
        };
        let (a, b) = (RunId::from_u128(1), RunId::from_u128(2));
        assert_eq!(ledger.admit(a, half), Admission::Admitted);
        assert_eq!(
            ledger.admit(a, half),
            Admission::Admitted,
            "admitting twice holds once"
        );
        match ledger.admit(b, half) {
            Admission::Wait(m) => assert!(
                m.contains("needs cpu 600m") && m.contains("1 run(s)"),
                "{m}"
            ),
            other => panic!("expected to wait, got {other:?}"),
        }
        ledger.release(a);
        assert_eq!(ledger.admit(b, half), Admission::Admitted);
        let huge = Demand {
            cpu_millis: 4000,
            memory_bytes: 0,
        };
        assert!(matches!(
            ledger.admit(RunId::from_u128(3), huge),
            Admission::Never(_)
        ));
        // A resumed run is held even when it does not fit.
        ledger.hold(a, half);
        assert!(matches!(
            ledger.admit(
                RunId::from_u128(4),
                Demand {
                    cpu_millis: 1,
                    memory_bytes: 0
                }
            ),
            Admission::Wait(_)
        ));
        let unlimited = Ledger::new(Capacity::default());
        assert_eq!(unlimited.admit(a, huge), Admission::Admitted);
    }
}

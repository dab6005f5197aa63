//! `spec.resources` of a Pipeline: runs execute inside the operator's process (actors, not pods), so a
//! run's `requests` are reserved from the operator's capacity (`--capacity-cpu`, `--capacity-memory`)
//! while it is in flight. A run that does not fit now waits `Pending` (reason `WaitingForResources`)
//! until runs in flight end; one that could never fit fails (`Unschedulable`). Without a configured
//! capacity nothing is reserved. `limits` are checked to be quantities no smaller than the requests, and
//! recorded; an in-process engine cannot cap one run's memory or CPU.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ResourceRequirements;

use flowmason_store::RunId;

/// What a run reserves: CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Demand {
    fn plus(self, other: Demand) -> Demand {
        Demand {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
    }
}

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

/// A Kubernetes quantity as a number: decimal (`k`, `M`, `G`, `T`, `P`, `E`, `m`, exponent `e3`) or
/// binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) suffixes.
fn quantity(field: &str, text: &str) -> Result<f64, String> {
    let bad = || format!("{field}: {text:?} is not a quantity (e.g. 500m, 2, 256Mi, 1G)");
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let e: i32 = exponent
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse().ok())
                .ok_or_else(bad)?;
            10f64.powi(e)
        }
    };
    let value = number * factor;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(bad())
    }
}

fn cpu_millis(field: &str, text: &str) -> Result<u64, String> {
    Ok((quantity(field, text)? * 1000.0).ceil() as u64)
}

fn memory_bytes(field: &str, text: &str) -> Result<u64, String> {
    Ok(quantity(field, text)?.ceil() as u64)
}

/// The demand of `spec.resources` (its `requests`; `limits` stand in for requests not given, as in
/// Kubernetes), or the first problem with it, naming the field.
pub fn demand(resources: Option<&ResourceRequirements>) -> Result<Demand, String> {
    let Some(resources) = resources else {
        return Ok(Demand::default());
    };
    let read = |kind: &str, key: &str, parse: fn(&str, &str) -> Result<u64, String>| {
        let map = match kind {
            "requests" => &resources.requests,
            _ => &resources.limits,
        };
        map.as_ref()
            .and_then(|m| m.get(key))
            .map(|q| parse(&format!("spec.resources.{kind}.{key}"), &q.0))
            .transpose()
    };
    let cpu_request = read("requests", "cpu", cpu_millis)?;
    let cpu_limit = read("limits", "cpu", cpu_millis)?;
    let memory_request = read("requests", "memory", memory_bytes)?;
    let memory_limit = read("limits", "memory", memory_bytes)?;
    for (key, request, limit) in [
        ("cpu", cpu_request, cpu_limit),
        ("memory", memory_request, memory_limit),
    ] {
        if let (Some(request), Some(limit)) = (request, limit)
            && request > limit
        {
            return Err(format!(
                "spec.resources.requests.{key}: must not exceed spec.resources.limits.{key}"
            ));
        }
    }
    Ok(Demand {
        cpu_millis: cpu_request.or(cpu_limit).unwrap_or(0),
        memory_bytes: memory_request.or(memory_limit).unwrap_or(0),
    })
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
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            )
        };
        ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
            ..ResourceRequirements::default()
        }
    }

    #[test]
    fn quantities_parse_with_decimal_binary_and_exponent_suffixes() {
        assert_eq!(cpu_millis("f", "100m"), Ok(100));
        assert_eq!(cpu_millis("f", "1.5"), Ok(1500));
        assert_eq!(cpu_millis("f", "2"), Ok(2000));
        assert_eq!(memory_bytes("f", "256Mi"), Ok(256 * 1024 * 1024));
        assert_eq!(memory_bytes("f", "1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("f", "1e3"), Ok(1000));
        let err = memory_bytes("spec.resources.requests.memory", "lots").expect_err("bad");
        assert!(
            err.starts_with("spec.resources.requests.memory: \"lots\""),
            "{err}"
        );
        assert!(cpu_millis("f", "-1").is_err());
    }

    #[test]
    fn demand_is_the_requests_with_limits_standing_in_and_checked() {
        let d = demand(Some(&resources(&[("cpu", "100m")], &[("memory", "1Gi")]))).expect("ok");
        assert_eq!(
            d,
            Demand {
                cpu_millis: 100,
                memory_bytes: 1 << 30
            }
        );
        assert_eq!(demand(None), Ok(Demand::default()));
        let err = demand(Some(&resources(&[("cpu", "2")], &[("cpu", "1")]))).expect_err("over");
        assert_eq!(
            err,
            "spec.resources.requests.cpu: must not exceed spec.resources.limits.cpu"
        );
    }

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

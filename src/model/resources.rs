//! `spec.resources` of a Pipeline read as what a run reserves (CPU in millicores, memory in bytes), and
//! Kubernetes quantities (`500m`, `2`, `256Mi`, `1G`) read as numbers. The operator lends its capacity
//! out by these demands (`operator::capacity`); validation reports resources that are not quantities.

use k8s_openapi::api::core::v1::ResourceRequirements;

/// What a run reserves: CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Demand {
    /// Both demands together.
    pub fn plus(self, other: Demand) -> Demand {
        Demand {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
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

/// A CPU quantity in millicores (rounded up), the problem naming `field`.
pub fn cpu_millis(field: &str, text: &str) -> Result<u64, String> {
    Ok((quantity(field, text)? * 1000.0).ceil() as u64)
}

/// A memory quantity in bytes (rounded up), the problem naming `field`.
pub fn memory_bytes(field: &str, text: &str) -> Result<u64, String> {
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
}

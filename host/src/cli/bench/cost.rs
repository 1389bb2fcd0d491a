//! Where an event's time goes: CPU used by Redis (`INFO cpu`) and by each Redis command or
//! script (`INFO commandstats`: calls and microseconds), and CPU used by this process
//! (`/proc/self/stat`, every thread), as deltas around one measured run, per event.

use std::collections::BTreeMap;

use anyhow::Context as _;
use redis::aio::ConnectionLike;

/// Counters read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Redis server CPU (user + system), µs.
    redis_cpu_us: f64,
    /// Per command (`xreadgroup`, `evalsha`, ...): (calls, µs).
    commands: BTreeMap<String, (u64, u64)>,
    /// This process's CPU (user + system, all threads), µs.
    host_cpu_us: f64,
}

/// Read the counters now.
pub async fn sample<C: ConnectionLike>(conn: &mut C) -> anyhow::Result<Sample> {
    let info: String = redis::cmd("INFO").arg("cpu").arg("commandstats").query_async(conn).await.context("INFO")?;
    let mut s = Sample { host_cpu_us: host_cpu_us(), ..Sample::default() };
    for line in info.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("used_cpu_user:").or_else(|| line.strip_prefix("used_cpu_sys:")) {
            s.redis_cpu_us += v.parse::<f64>().unwrap_or(0.0) * 1e6;
        } else if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, stats)) = rest.split_once(':')
        {
            let field = |key: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s.commands.insert(name.to_string(), (field("calls"), field("usec")));
        }
    }
    Ok(s)
}

impl Sample {
    /// Redis server CPU (user + system) so far, µs.
    pub fn redis_cpu_us(&self) -> f64 {
        self.redis_cpu_us
    }
}

/// CPU time of this process so far (every thread, alive or exited), µs.
pub fn host_cpu_us() -> f64 {
    process_cpu_us("self")
}

/// CPU time of process `pid` (`self` for this one) so far, µs. `/proc` counts in clock ticks
/// of 10 ms (USER_HZ is 100 on Linux): fine over runs of a second or more.
pub fn process_cpu_us(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name and state.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10_000.0
}

/// What one run cost, per event.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Host CPU, µs per event.
    pub host_us: f64,
    /// Redis CPU, µs per event.
    pub redis_us: f64,
    /// Per command: (calls per event, µs per event, µs per call), busiest first.
    pub commands: Vec<(String, f64, f64, f64)>,
}

impl Cost {
    /// The cost of `events` events between `before` and `after`.
    pub fn between(before: &Sample, after: &Sample, events: usize) -> Cost {
        let n = events.max(1) as f64;
        let mut commands: Vec<(String, f64, f64, f64)> = after
            .commands
            .iter()
            .filter_map(|(name, (calls, usec))| {
                let (c0, u0) = before.commands.get(name).copied().unwrap_or((0, 0));
                let calls = calls.saturating_sub(c0);
                let usec = usec.saturating_sub(u0);
                // INFO itself, and the harness's own polling, are not the consumer's work.
                (calls > 0 && name != "info")
                    .then(|| (name.clone(), calls as f64 / n, usec as f64 / n, usec as f64 / calls as f64))
            })
            .collect();
        commands.sort_by(|a, b| b.2.total_cmp(&a.2));
        Cost {
            host_us: (after.host_cpu_us - before.host_cpu_us) / n,
            redis_us: (after.redis_cpu_us - before.redis_cpu_us) / n,
            commands,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_per_event_and_busiest_command_first() {
        let before = Sample {
            redis_cpu_us: 1_000.0,
            commands: [("xack".to_string(), (10, 100)), ("info".to_string(), (1, 5))].into(),
            host_cpu_us: 0.0,
        };
        let after = Sample {
            redis_cpu_us: 3_000.0,
            commands: [
                ("xack".to_string(), (12, 300)),
                ("evalsha".to_string(), (4, 800)),
                ("info".to_string(), (2, 10)),
                ("ping".to_string(), (0, 0)),
            ]
            .into(),
            host_cpu_us: 4_000.0,
        };
        let cost = Cost::between(&before, &after, 1000);
        assert_eq!(cost.redis_us, 2.0);
        assert_eq!(cost.host_us, 4.0);
        let names: Vec<&str> = cost.commands.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["evalsha", "xack"]);
        assert_eq!(cost.commands[1], ("xack".to_string(), 0.002, 0.2, 100.0));
    }

    #[test]
    fn this_process_cpu_time_moves_forward_while_it_spins() {
        let start = host_cpu_us();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while host_cpu_us() <= start {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted in 30 s of spinning");
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
    }
}

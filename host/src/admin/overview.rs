//! `GET /api/overview`: the console's first page. One row per (subscriber, stream) from the
//! same [`crate::status`] collection `ferry status` prints, and the last hour of throughput,
//! failures and handler latency: [`History`], one point per [`EVERY`], sampled by a task of
//! the endpoint's own from the host's metrics registry (what `/metrics` exports, so the
//! charts and a Prometheus scrape never disagree).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::host::Host;

/// How often the history is sampled: one point each.
pub const EVERY: Duration = Duration::from_secs(10);
/// Points kept: the last hour.
pub const POINTS: usize = 360;

/// One interval of the history: counts over it, latency quantiles of the runs in it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// End of the interval (Unix seconds).
    pub t: u64,
    /// Events handled.
    pub handled: u64,
    /// Failed runs (each failure, whatever its disposition).
    pub failed: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Median handler duration (ms), `None` without runs.
    pub p50_ms: Option<f64>,
    /// 99th percentile handler duration (ms), `None` without runs.
    pub p99_ms: Option<f64>,
}

/// The cumulative figures the history takes differences of.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    handled: u64,
    failed: u64,
    dead_lettered: u64,
    /// Handler-duration buckets over every subscriber: upper bound (seconds) → cumulative count.
    buckets: BTreeMap<Bound, u64>,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound(f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Totals {
    /// The figures of a Prometheus text exposition (what [`crate::metrics::Metrics::render`]
    /// writes).
    fn read(text: &str) -> Self {
        let mut totals = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let name = series.split('{').next().unwrap_or(series);
            let count = value.max(0.0) as u64;
            match name {
                "ferry_events_handled_total" => totals.handled += count,
                "ferry_failures_total" => totals.failed += count,
                "ferry_events_dead_lettered_total" => totals.dead_lettered += count,
                "ferry_handler_duration_seconds_bucket" => {
                    let le = series.split("le=\"").nth(1).and_then(|rest| rest.split('"').next());
                    let bound = match le {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(bound) => bound,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    *totals.buckets.entry(Bound(bound)).or_default() += count;
                }
                _ => {}
            }
        }
        totals
    }

    /// The point for the interval from `earlier` to `self`, ending at `t`.
    fn since(&self, earlier: &Totals, t: u64) -> Point {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|(bound, n)| (bound.0, n.saturating_sub(earlier.buckets.get(bound).copied().unwrap_or(0))))
            .collect();
        Point {
            t,
            handled: self.handled.saturating_sub(earlier.handled),
            failed: self.failed.saturating_sub(earlier.failed),
            dead_lettered: self.dead_lettered.saturating_sub(earlier.dead_lettered),
            p50_ms: quantile(&buckets, 0.5).map(|s| s * 1000.0),
            p99_ms: quantile(&buckets, 0.99).map(|s| s * 1000.0),
        }
    }
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), interpolated inside its
/// bucket as Prometheus's `histogram_quantile` does; `None` without observations.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                // Beyond the largest finite bucket: its bound is the best that can be said.
                return Some(below.0);
            }
            let inside = (count - below.1) as f64;
            let share = if inside > 0.0 { (rank - below.1 as f64) / inside } else { 1.0 };
            return Some(below.0 + (bound - below.0) * share);
        }
        below = (bound, count);
    }
    Some(below.0)
}

/// The last hour of points, newest last.
#[derive(Debug, Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

impl History {
    /// The points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn push(&self, point: Point) {
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        if points.len() >= POINTS {
            points.pop_front();
        }
        points.push_back(point);
    }
}

/// Sample the host's metrics every [`EVERY`] into `history`, for as long as the task lives.
pub async fn sample(host: Arc<Host>, history: Arc<History>) {
    let mut last = Totals::read(&host.context().metrics.render());
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = Totals::read(&host.context().metrics.render());
        history.push(now.since(&last, crate::consume::now_ms() / 1000));
        last = now;
    }
}

/// One row of the overview: a subscriber on one stream.
#[derive(Debug, Serialize)]
struct Row {
    subscriber: String,
    stream: String,
    lag: Option<u64>,
    pending: u64,
    retries_waiting: u64,
    dead_letters: u64,
    held_keys: u64,
    /// How many consumers (host instances) the group has.
    consumers: usize,
    /// Their names, pending counts and idle times.
    consumer_list: Vec<crate::status::ConsumerStatus>,
}

#[derive(Debug, Serialize)]
struct Overview {
    subscribers: Vec<Row>,
    history: Vec<Point>,
}

/// `GET /api/overview`.
pub(super) async fn overview(
    State(host): State<Arc<Host>>,
    axum::Extension(history): axum::Extension<Arc<History>>,
) -> axum::response::Response {
    let groups = match super::groups(&host).await {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!("admin endpoint: overview: {e}");
            return (StatusCode::SERVICE_UNAVAILABLE, "redis failed; see the host's log\n").into_response();
        }
    };
    let subscribers = groups
        .into_iter()
        .map(|g| Row {
            retries_waiting: g.retries_scheduled + g.retries_pending,
            subscriber: g.group,
            stream: g.stream,
            lag: g.lag,
            pending: g.pending,
            dead_letters: g.dead_letters,
            held_keys: g.held_keys,
            consumers: g.consumers.len(),
            consumer_list: g.consumers,
        })
        .collect();
    Json(Overview { subscribers, history: history.points() }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_counts_the_interval_and_its_quantiles_come_from_the_bucket_differences() {
        let metrics = crate::metrics::Metrics::new();
        let before = Totals::read(&metrics.render());
        let sub = crate::metrics::Metrics::sub("a");
        metrics.handled.get_or_create(&sub).inc_by(7);
        metrics.dead_lettered.get_or_create(&sub).inc_by(2);
        let kind = crate::metrics::FailureLabels { subscriber: "a".into(), kind: "trap".into() };
        metrics.failures.get_or_create(&kind).inc_by(3);
        for _ in 0..98 {
            metrics.duration.get_or_create(&sub).observe(0.002);
        }
        metrics.duration.get_or_create(&sub).observe(0.5);
        metrics.duration.get_or_create(&sub).observe(0.5);
        let after = Totals::read(&metrics.render());
        let point = after.since(&before, 60);
        assert_eq!((point.t, point.handled, point.dead_lettered, point.failed), (60, 7, 2, 3));
        let p50 = point.p50_ms.expect("runs");
        assert!(p50 > 0.64 && p50 <= 2.56, "in the bucket of 2 ms: {p50}");
        let p99 = point.p99_ms.expect("runs");
        assert!(p99 > 163.0 && p99 <= 655.4, "in the bucket of 500 ms: {p99}");
        let idle = after.since(&after, 70);
        assert_eq!((idle.handled, idle.p50_ms), (0, None));
    }

    #[test]
    fn the_history_keeps_the_last_hour() {
        let history = History::default();
        for t in 0..(POINTS as u64 + 5) {
            history.push(Point { t, handled: 0, failed: 0, dead_lettered: 0, p50_ms: None, p99_ms: None });
        }
        let points = history.points();
        assert_eq!((points.len(), points[0].t), (POINTS, 5));
    }
}

//! The retention rows of `ferry bench`: what one trimming pass costs Redis, how long one call
//! blocks it, and the inflow retention keeps at `max_len` while a subscriber consumes at full
//! speed.
//!
//! Redis time is read from `SLOWLOG` (entries of `trim.lua`'s `EVALSHA` only, logged from
//! [`LOGGED_FROM_US`] up; a call under that is counted at that bound), so it is the server's
//! own execution time, not a round trip queued behind the producer's writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry::config::RetentionConfig;
use ferry::consume::{self, Subscriber, trim};
use ferry::stop::Stop;

use super::harness::{Bench, Native, active, preload, sample_event};
use super::report::Report;
use ferry::metrics;

/// Calls shorter than this (µs) are not logged by `SLOWLOG` during these rows.
const LOGGED_FROM_US: u64 = 50;

/// The newest `SLOWLOG` entry id (0 when empty).
async fn last_logged(conn: &mut ferry::connection::Conn) -> anyhow::Result<i64> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(1).query_async(conn).await?;
    Ok(entries
        .first()
        .and_then(|e| match e {
            redis::Value::Array(f) => match f.first() {
                Some(redis::Value::Int(id)) => Some(*id),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or(0))
}

/// Redis time (µs) of the trim calls logged after entry `since`, and how many were logged.
async fn trim_time_since(conn: &mut ferry::connection::Conn, since: i64) -> anyhow::Result<(u64, u64, u64)> {
    let sha = ferry::consume::scripts::TRIM.get_hash().to_string();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(100_000).query_async(conn).await?;
    let (mut total, mut longest, mut logged) = (0, 0, 0);
    for entry in entries {
        let redis::Value::Array(f) = entry else { continue };
        let (Some(redis::Value::Int(id)), Some(redis::Value::Int(us)), Some(redis::Value::Array(args))) =
            (f.first(), f.get(2), f.get(3))
        else {
            continue;
        };
        let arg = |i: usize| args.get(i).and_then(ferry::consume::read::text).unwrap_or_default();
        if *id > since && arg(0).eq_ignore_ascii_case("evalsha") && arg(1) == sha {
            let us = u64::try_from(*us).unwrap_or(0);
            total += us;
            longest = longest.max(us);
            logged += 1;
        }
    }
    Ok((total, longest, logged))
}

/// One pass measured: (Redis µs, longest call µs, calls, entries removed).
async fn measured_pass(
    conn: &mut ferry::connection::Conn,
    stream: &str,
    retention: &RetentionConfig,
) -> anyhow::Result<(u64, u64, u32, u64)> {
    let since = last_logged(conn).await?;
    let pass = trim::pass(conn, stream, Some(retention), consume::now_ms()).await?;
    let (logged_us, longest, logged) = trim_time_since(conn, since).await?;
    let unlogged = u64::from(pass.calls).saturating_sub(logged);
    Ok((logged_us + unlogged * LOGGED_FROM_US, longest, pass.calls, pass.removed))
}

/// The retention rows.
pub async fn figures(bench: &Bench, quick: bool, report: &mut Report) -> anyhow::Result<()> {
    let mut conn = bench.ctx.shared.clone();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(LOGGED_FROM_US)
        .query_async(&mut conn)
        .await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(100_000).query_async(&mut conn).await?;
    let result = rows(bench, quick, report).await;
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(10_000).query_async(&mut conn).await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(128).query_async(&mut conn).await?;
    result
}

async fn rows(bench: &Bench, quick: bool, report: &mut Report) -> anyhow::Result<()> {
    let mut conn = bench.ctx.shared.clone();
    // A backlog nobody needs any more (its only group has read it all), removed in one pass.
    let backlog = if quick { 50_000 } else { 1_000_000 };
    let stream = "bench-retention-backlog";
    preload(&mut conn, stream, backlog).await?;
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("done").arg("$").query_async(&mut conn).await?;
    let retention = RetentionConfig { max_len: Some(10_000), max_age: None, interval: Duration::from_secs(1) };
    let (us, longest, calls, removed) = measured_pass(&mut conn, stream, &retention).await?;
    report.add(
        format!("retention: one pass over a backlog of {backlog} events"),
        us as f64 / 1000.0,
        "ms Redis",
        format!("{removed} removed in {calls} calls; longest call {longest} us (max_len 10000)"),
    );
    // Steady inflows, each for a few seconds: the highest one kept at max_len (never longer
    // than max_len plus two intervals' inflow, back at max_len after the run) is what
    // retention sustains with this subscriber.
    let (rates, secs): (&[usize], u64) = if quick { (&[10_000], 2) } else { (&[10_000, 25_000, 50_000, 100_000], 5) };
    let max_len = retention.max_len.unwrap_or(0);
    let (mut passes, mut total_us, mut longest_us, mut calls) = (0u64, 0u64, 0u64, 0u32);
    let mut sustained = 0.0f64;
    for (i, rate) in rates.iter().enumerate() {
        let run = steady(bench, &format!("bench-retention-{i}"), *rate, secs, &retention).await?;
        (passes, total_us, longest_us, calls) =
            (passes + run.passes, total_us + run.total_us, longest_us.max(run.longest_us), calls + run.calls);
        let margin = max_len + (2.0 * run.inflow * retention.interval.as_secs_f64()) as u64;
        let kept = run.longest_len <= margin && run.after <= max_len + 1000;
        if kept {
            sustained = sustained.max(run.inflow);
        }
        report.add(
            format!("retention: longest length at {rate} events/s"),
            run.longest_len as f64,
            "entries",
            format!(
                "{:.0} events/s reached; {} after the run; {}",
                run.inflow,
                run.after,
                if kept { "kept at max_len" } else { "over: the subscriber fell behind, its lag holds the floor" }
            ),
        );
    }
    report.add(
        "retention: Redis time per trimming pass",
        total_us as f64 / passes.max(1) as f64,
        "us/pass",
        format!("{passes} passes, {calls} calls; longest call {longest_us} us (one pass per {:?})", retention.interval),
    );
    report.add(
        format!("retention: highest inflow kept at max_len {max_len}"),
        sustained,
        "events/s",
        if cfg!(debug_assertions) {
            "native subscriber at full speed, trimming once per second; DEBUG BUILD: the subscriber is the limit"
        } else {
            "native subscriber consuming at full speed, trimming once per second"
        },
    );
    Ok(())
}

/// What one steady run measured.
struct Steady {
    inflow: f64,
    longest_len: u64,
    after: u64,
    passes: u64,
    total_us: u64,
    longest_us: u64,
    calls: u32,
}

/// A producer at `rate` for `secs`, a native subscriber at full speed, and a trimming pass
/// every interval: Redis time per pass and the longest length seen.
async fn steady(
    bench: &Bench,
    stream: &str,
    rate: usize,
    secs: u64,
    retention: &RetentionConfig,
) -> anyhow::Result<Steady> {
    let (stop, rx) = Stop::channel();
    let sub = Arc::new(Subscriber::new(format!("retention-{stream}"), active(Arc::new(Native), stream)?));
    // A fresh metric name per stream: the subscriber's handled count says when it caught up.
    let consumer = tokio::spawn(consume::run_stream(bench.ctx.clone(), sub, stream.into(), rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = Arc::new(AtomicBool::new(false));
    let longest_len = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn({
        let mut conn = bench.ctx.shared.clone();
        let (done, longest_len, stream) = (done.clone(), longest_len.clone(), stream.to_string());
        async move {
            let started = Instant::now();
            let total = rate * secs as usize;
            let mut sent = 0;
            while sent < total {
                let mut pipe = redis::pipe();
                for i in sent..sent + 500 {
                    ferry::outbox::add(&mut pipe, &stream, &sample_event(i));
                    pipe.ignore();
                }
                pipe.cmd("XLEN").arg(&stream);
                let (len,): (u64,) = pipe.query_async(&mut conn).await?;
                longest_len.fetch_max(len, Ordering::Relaxed);
                sent += 500;
                tokio::time::sleep_until((started + Duration::from_secs_f64(sent as f64 / rate as f64)).into()).await;
            }
            done.store(true, Ordering::Relaxed);
            anyhow::Ok((sent, sent as f64 / started.elapsed().as_secs_f64()))
        }
    });
    let mut conn = bench.ctx.shared.clone();
    let mut run = Steady { inflow: 0.0, longest_len: 0, after: 0, passes: 0, total_us: 0, longest_us: 0, calls: 0 };
    let mut tick = tokio::time::interval(retention.interval);
    let mut last = false;
    let name = format!("retention-{stream}");
    loop {
        tick.tick().await;
        // After the producer stops: one more pass, once the subscriber has caught up (at most
        // a minute), so what is left says what retention does, not what the subscriber owes.
        last |= done.load(Ordering::Relaxed);
        if last {
            let deadline = Instant::now() + Duration::from_secs(60);
            let total = (rate * secs as usize) as u64;
            while metrics::count(&bench.ctx.metrics.handled, &name) < total && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Its last settles' acks are in; the floor is at the end of the stream.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (us, longest, calls, _) = measured_pass(&mut conn, stream, retention).await?;
        run.passes += 1;
        run.total_us += us;
        run.longest_us = run.longest_us.max(longest);
        run.calls += calls;
        if last {
            break;
        }
    }
    (_, run.inflow) = producer.await??;
    run.longest_len = longest_len.load(Ordering::Relaxed);
    run.after = redis::cmd("XLEN").arg(stream).query_async(&mut conn).await?;
    let _ = stop.send(true);
    let _ = consumer.await;
    Ok(run)
}

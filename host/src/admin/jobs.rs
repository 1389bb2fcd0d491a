//! Dead-letter actions, run at once or as a job: a replay or purge of more than
//! [`JOB_ABOVE`] dead letters (or any, when asked) runs in a task of its own and answers
//! with a job id at once; the job's progress lives in Redis so a page reload, or another
//! replica of the host, sees it.
//!
//! A job is the hash [`keys::job`] (expiring a day after its last change) listed in the
//! sorted set [`keys::JOBS`] (the newest [`MAX_JOBS`] kept). While it runs,
//! [`keys::job_running`] of its (action, subscriber, selection) holds its id, set with `NX`:
//! the same action on the same selection returns the running job's id instead of starting a
//! second. The key expires [`RUNNING_TTL`] after the job's last batch, so a job whose host
//! died stops blocking its selection; such a job reads as `failed` once its last change is
//! older than [`STALE`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use crate::dlq::{Plan, Selection};
use crate::host::Host;
use crate::keys;

/// Dead letters an action may reach and still run within its request.
pub const JOB_ABOVE: usize = 100;
/// Jobs [`list`] keeps.
pub const MAX_JOBS: usize = 100;
/// How long a job's record lasts after its last change.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// How long a running job's claim on its selection outlives its last batch.
pub const RUNNING_TTL: Duration = Duration::from_secs(120);
/// A running job whose record did not change for this long lost its host.
pub const STALE: Duration = Duration::from_secs(300);

/// What an action does with the dead letters it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deliver them again.
    Replay,
    /// Delete them.
    Purge,
}

impl Action {
    /// Its name, in jobs and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Purge => "purge",
        }
    }

    /// The key of its answer when it ran within the request (`{"replayed": N}`).
    pub fn done_key(self) -> &'static str {
        match self {
            Action::Replay => "replayed",
            Action::Purge => "purged",
        }
    }

    /// Act on one batch of a plan; how many it reached.
    async fn batch(self, host: &Host, batch: &[crate::dlq::Planned]) -> anyhow::Result<usize> {
        let mut conn = host.context().shared.clone();
        Ok(match self {
            Action::Replay => crate::dlq::replay_batch(&mut conn, batch, host.context().replication).await?,
            Action::Purge => crate::dlq::purge_batch(&mut conn, batch).await?,
        })
    }

    /// Run the whole plan; how many it reached.
    pub async fn run(self, host: &Host, plan: &Plan) -> anyhow::Result<usize> {
        let mut done = 0;
        for (_, batch) in plan.batches() {
            done += self.batch(host, batch).await?;
        }
        Ok(done)
    }
}

/// One job, as `GET /api/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// `replay` or `purge`.
    pub action: String,
    /// Whose dead letters.
    pub subscriber: String,
    /// Which, as the request named them.
    pub selection: serde_json::Value,
    /// Dead letters selected when it started.
    pub total: u64,
    /// Dead letters covered so far (replayed, purged, or gone meanwhile).
    pub done: u64,
    /// Dead letters it actually replayed or purged (one replayed meanwhile by someone else is
    /// covered but not counted).
    pub count: u64,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// When it ended (Unix ms).
    pub finished_ms: Option<u64>,
    /// Its last change (Unix ms).
    pub updated_ms: u64,
    /// The token name that started it.
    pub by: String,
}

/// The id of the claim on (action, subscriber, selection).
fn digest(action: Action, subscriber: &str, selection: &Selection) -> String {
    use sha2::Digest as _;
    let selection = serde_json::to_string(selection).unwrap_or_default();
    let hash = sha2::Sha256::new()
        .chain_update(action.name())
        .chain_update([0u8])
        .chain_update(subscriber)
        .chain_update([0u8])
        .chain_update(selection)
        .finalize();
    hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The id of the job running `action` on `selection` of `subscriber`, if one runs.
pub async fn running(
    host: &Host,
    action: Action,
    subscriber: &str,
    selection: &Selection,
) -> redis::RedisResult<Option<String>> {
    let mut conn = host.context().shared.clone();
    conn.get(keys::job_running(&digest(action, subscriber, selection))).await
}

async fn save(conn: &mut crate::connection::Conn, job: &Job) -> redis::RedisResult<()> {
    let text = serde_json::to_string(job).unwrap_or_default();
    let key = keys::job(&job.id);
    let _: () = redis::pipe().set(&key, text).pexpire(&key, KEEP.as_millis() as i64).ignore().query_async(conn).await?;
    Ok(())
}

/// Start a job running `action` on `plan` (what `selection` named), or return the id of the
/// one that already runs it. Returns the job id.
pub async fn start(
    host: Arc<Host>,
    principal: &Principal,
    action: Action,
    subscriber: &str,
    selection: &Selection,
    plan: Plan,
) -> redis::RedisResult<String> {
    let mut conn = host.context().shared.clone();
    let claim = keys::job_running(&digest(action, subscriber, selection));
    let id: String = {
        let bytes: [u8; 8] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let ttl = RUNNING_TTL.as_millis() as u64;
    let claimed: Option<String> =
        redis::cmd("SET").arg(&claim).arg(&id).arg("NX").arg("PX").arg(ttl).query_async(&mut conn).await?;
    if claimed.is_none() {
        let other: Option<String> = conn.get(&claim).await?;
        if let Some(other) = other {
            return Ok(other);
        }
    }
    let now = crate::consume::now_ms();
    let job = Job {
        id: id.clone(),
        action: action.name().into(),
        subscriber: subscriber.into(),
        selection: serde_json::to_value(selection).unwrap_or_default(),
        total: plan.len() as u64,
        done: 0,
        count: 0,
        state: "running".into(),
        error: None,
        started_ms: now,
        finished_ms: None,
        updated_ms: now,
        by: principal.name.clone(),
    };
    save(&mut conn, &job).await?;
    let _: () = redis::pipe()
        .zadd(keys::JOBS, &id, now)
        .ignore()
        .zremrangebyrank(keys::JOBS, 0, -(MAX_JOBS as isize) - 1)
        .ignore()
        .query_async(&mut conn)
        .await?;
    let selection = selection.clone();
    tokio::spawn(async move { run(host, job, claim, selection, plan).await });
    Ok(id)
}

/// Run the batches of a started job, its progress saved after each; how many it reached.
async fn drive(host: &Host, job: &mut Job, claim: &str, plan: &Plan) -> anyhow::Result<usize> {
    let mut conn = host.context().shared.clone();
    let action = if job.action == Action::Purge.name() { Action::Purge } else { Action::Replay };
    let mut count = 0;
    for (covered, batch) in plan.batches() {
        count += action.batch(host, batch).await?;
        job.done = covered as u64;
        job.count = count as u64;
        job.updated_ms = crate::consume::now_ms();
        if let Err(e) = save(&mut conn, job).await {
            tracing::warn!(job = %job.id, "saving a job's progress: {e}");
        }
        let _: redis::RedisResult<()> = conn.pexpire(claim, RUNNING_TTL.as_millis() as i64).await;
        pause_point(&job.subscriber).await;
    }
    Ok(count)
}

/// Run a started job to its end, then let go of its claim and record it in the audit trail.
async fn run(host: Arc<Host>, mut job: Job, claim: String, selection: Selection, plan: Plan) {
    let outcome = drive(&host, &mut job, &claim, &plan).await;
    let mut conn = host.context().shared.clone();
    let now = crate::consume::now_ms();
    (job.finished_ms, job.updated_ms) = (Some(now), now);
    match outcome {
        Ok(count) => {
            job.state = "done".into();
            job.count = count as u64;
            job.done = job.total;
        }
        Err(e) => {
            tracing::error!(job = %job.id, "admin endpoint: {} job of {} failed: {e:#}", job.action, job.subscriber);
            job.state = "failed".into();
            job.error = Some(format!("{e:#}"));
        }
    }
    if let Err(e) = save(&mut conn, &job).await {
        tracing::error!(job = %job.id, "saving a finished job: {e}");
    }
    // Let go of the claim only if it is still this job's.
    let release = redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end");
    let _: redis::RedisResult<()> = release.key(&claim).arg(&job.id).invoke_async(&mut conn).await;
    tracing::info!(token = %job.by, action = %job.action, subscriber = %job.subscriber, count = job.count, job = %job.id, "admin endpoint: dead letters");
    if let Err(e) =
        crate::audit::record(&mut conn, &job.by, &job.action, &job.subscriber, &selection, job.count as usize).await
    {
        tracing::error!("recording a {} job of {} in the audit trail: {e}", job.action, job.subscriber);
    }
}

/// One job, `None` if unknown or expired.
pub async fn get(host: &Host, id: &str) -> redis::RedisResult<Option<Job>> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let mut conn = host.context().shared.clone();
    let text: Option<String> = conn.get(keys::job(id)).await?;
    Ok(text.and_then(|t| serde_json::from_str::<Job>(&t).ok()).map(stale))
}

/// A running job whose record has not changed for [`STALE`] lost its host.
fn stale(mut job: Job) -> Job {
    let now = crate::consume::now_ms();
    if job.state == "running" && now.saturating_sub(job.updated_ms) > STALE.as_millis() as u64 {
        job.state = "failed".into();
        job.error = Some("the host running it stopped before it ended; run the action again".into());
    }
    job
}

/// The newest jobs, newest first (expired ones dropped from the list).
pub async fn list(host: &Host) -> redis::RedisResult<Vec<Job>> {
    let mut conn = host.context().shared.clone();
    let ids: Vec<String> = conn.zrevrange(keys::JOBS, 0, MAX_JOBS as isize - 1).await?;
    let mut out = Vec::new();
    for id in ids {
        match get(host, &id).await? {
            Some(job) => out.push(job),
            None => {
                let _: () = conn.zrem(keys::JOBS, &id).await?;
            }
        }
    }
    Ok(out)
}

/// Subscribers whose jobs stop after their first batch until released: a test hook (see
/// [`pause_after_first_batch`]).
static PAUSED: LazyLock<Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>> = LazyLock::new(Mutex::default);

/// Held by a test while the jobs of one subscriber wait after their first batch; dropping it
/// (or [`Pause::release`]) lets them go on.
#[doc(hidden)]
pub struct Pause {
    subscriber: String,
    release: tokio::sync::watch::Sender<bool>,
}

impl Pause {
    /// Let the held jobs go on.
    pub fn release(self) {}
}

impl Drop for Pause {
    fn drop(&mut self) {
        PAUSED.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.subscriber);
        let _ = self.release.send(true);
    }
}

/// A test hook: the jobs of `subscriber` stop after each batch until the returned [`Pause`]
/// is dropped, so a test can act while one provably runs (never by timing).
#[doc(hidden)]
pub fn pause_after_first_batch(subscriber: &str) -> Pause {
    let (release, rx) = tokio::sync::watch::channel(false);
    PAUSED.lock().unwrap_or_else(|p| p.into_inner()).insert(subscriber.to_string(), rx);
    Pause { subscriber: subscriber.to_string(), release }
}

async fn pause_point(subscriber: &str) {
    let held = PAUSED.lock().unwrap_or_else(|p| p.into_inner()).get(subscriber).cloned();
    if let Some(mut held) = held {
        let _ = held.wait_for(|released| *released).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, updated_ms: u64) -> Job {
        Job {
            id: "00ff".into(),
            action: "replay".into(),
            subscriber: "s".into(),
            selection: serde_json::json!({"all": true}),
            total: 10,
            done: 2,
            count: 2,
            state: state.into(),
            error: None,
            started_ms: updated_ms,
            finished_ms: None,
            updated_ms,
            by: "alice".into(),
        }
    }

    #[test]
    fn a_running_job_without_progress_for_too_long_reads_as_failed() {
        let now = crate::consume::now_ms();
        assert_eq!(stale(job("running", now)).state, "running");
        let lost = stale(job("running", now - STALE.as_millis() as u64 - 1000));
        assert_eq!((lost.state.as_str(), lost.error.is_some()), ("failed", true));
        let old = now - 10 * STALE.as_millis() as u64;
        assert_eq!(stale(job("done", old)).state, "done", "an ended job stays as it ended");
    }

    #[test]
    fn the_claim_is_per_action_subscriber_and_selection() {
        let all = Selection::All;
        let group = Selection::Group("abc".into());
        assert_eq!(digest(Action::Replay, "s", &all), digest(Action::Replay, "s", &all));
        assert_ne!(digest(Action::Replay, "s", &all), digest(Action::Purge, "s", &all));
        assert_ne!(digest(Action::Replay, "s", &all), digest(Action::Replay, "t", &all));
        assert_ne!(digest(Action::Replay, "s", &all), digest(Action::Replay, "s", &group));
    }
}

//! `/api/dlq`: the console's dead letters, through [`crate::dlq`], the functions `ferry dlq`
//! runs too, so the page and the command line never disagree.
//!
//! Reads take the filter as query parameters (`type`, `kind`, `reason`, `since`, `until`,
//! `correlation`, `id`, and `limit`); `replay` and `purge` (operator only, see
//! [`super::auth`]) take a JSON body naming what to act on: `{"ids": [...]}`,
//! `{"group": "..."}`, `{"all": true}` or the filter's fields. Each action is recorded in
//! the audit trail ([`crate::audit`]) under its token's name.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::auth::Principal;
use crate::dlq::{Filter, Selection};
use crate::host::Host;

/// Most dead letters one listing returns.
const MAX_LIMIT: usize = 1000;

/// The query of a listing: the filter's fields as text, and how many to return.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct DlqQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    kind: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    correlation: Option<String>,
    id: Option<String>,
    limit: Option<usize>,
}

type Refusal = (StatusCode, String);

impl DlqQuery {
    fn filter(&self) -> Result<Filter, Refusal> {
        let now = crate::consume::now_ms();
        let text = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let instant = |v: &Option<String>| {
            text(v)
                .map(|t| crate::dlq::parse_instant(&t, now))
                .transpose()
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))
        };
        Ok(Filter {
            event_type: text(&self.event_type),
            kind: text(&self.kind),
            reason: text(&self.reason),
            since: instant(&self.since)?,
            until: instant(&self.until)?,
            correlation: text(&self.correlation),
            id: text(&self.id),
        })
    }
}

fn redis_failed(e: redis::RedisError) -> Refusal {
    tracing::warn!("admin endpoint: dead letters: {e}");
    (StatusCode::SERVICE_UNAVAILABLE, "redis failed; see the host's log\n".into())
}

/// A listing: `{"total": N, "dead_letters": [...]}`, what `ferry dlq list --json` prints as
/// its array.
#[derive(serde::Serialize)]
struct Listing {
    total: u64,
    dead_letters: Vec<crate::dlq::DeadLetter>,
}

/// `GET /api/dlq/{subscriber}`.
pub(super) async fn list(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    Query(query): Query<DlqQuery>,
) -> Result<impl IntoResponse, Refusal> {
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(crate::dlq::DEFAULT_LIMIT).min(MAX_LIMIT);
    let mut conn = host.context().shared.clone();
    let (dead_letters, total) =
        crate::dlq::find(&mut conn, Some(&subscriber), &filter, limit).await.map_err(redis_failed)?;
    Ok(Json(Listing { total, dead_letters }))
}

/// `GET /api/dlq/{subscriber}/groups`: what `ferry dlq groups --json` prints.
pub(super) async fn groups(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    Query(query): Query<DlqQuery>,
) -> Result<impl IntoResponse, Refusal> {
    let filter = query.filter()?;
    let mut conn = host.context().shared.clone();
    Ok(Json(crate::dlq::groups(&mut conn, Some(&subscriber), &filter).await.map_err(redis_failed)?))
}

/// What an action's body names, as a [`Selection`].
fn selection(body: &[u8]) -> Result<Selection, Refusal> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, format!("{why}\n"));
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("expected a JSON object: {e}")))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(bad("expected a JSON object".into()));
    };
    let ids = fields.remove("ids");
    let group = fields.remove("group");
    let all = fields.remove("all");
    let named = [ids.is_some(), group.is_some(), all.is_some(), !fields.is_empty()].iter().filter(|b| **b).count();
    if named != 1 {
        return Err(bad("name the dead letters with exactly one of ids, group, all or a filter".into()));
    }
    if let Some(ids) = ids {
        let ids: Vec<String> = serde_json::from_value(ids).map_err(|e| bad(format!("ids: {e}")))?;
        return Ok(Selection::Ids(ids));
    }
    if let Some(group) = group {
        let group: String = serde_json::from_value(group).map_err(|e| bad(format!("group: {e}")))?;
        return Ok(Selection::Group(group));
    }
    if let Some(all) = all {
        return match all {
            serde_json::Value::Bool(true) => Ok(Selection::All),
            _ => Err(bad("all: expected true".into())),
        };
    }
    let filter: Filter =
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| bad(format!("filter: {e}")))?;
    if filter.is_empty() {
        return Err(bad("an empty filter: pass {\"all\": true} to act on every dead letter".into()));
    }
    Ok(Selection::Filter(filter))
}

/// Which action.
#[derive(Debug, Clone, Copy)]
enum Action {
    Replay,
    Purge,
}

/// `POST /api/dlq/{subscriber}/replay`.
pub(super) async fn replay(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    axum::Extension(principal): axum::Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, Refusal> {
    act(host, subscriber, principal, Action::Replay, &body).await
}

/// `POST /api/dlq/{subscriber}/purge`.
pub(super) async fn purge(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    axum::Extension(principal): axum::Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, Refusal> {
    act(host, subscriber, principal, Action::Purge, &body).await
}

async fn act(
    host: Arc<Host>,
    subscriber: String,
    principal: Principal,
    action: Action,
    body: &[u8],
) -> Result<Json<serde_json::Value>, Refusal> {
    let selection = selection(body)?;
    // Its own task: a request that times out (or a client that goes away) must not cut an
    // action off half done.
    let work = tokio::spawn(async move {
        let mut conn = host.context().shared.clone();
        let replication = host.context().replication;
        let done = match action {
            Action::Replay => crate::dlq::replay_with(&mut conn, &subscriber, &selection, replication, |_, _| {}).await,
            Action::Purge => crate::dlq::purge(&mut conn, &subscriber, &selection).await,
        }?;
        let name = match action {
            Action::Replay => "replay",
            Action::Purge => "purge",
        };
        tracing::info!(token = %principal.name, action = name, %subscriber, count = done, "admin endpoint: dead letters");
        if let Err(e) = crate::audit::record(&mut conn, &principal.name, name, &subscriber, &selection, done).await {
            tracing::error!("recording {name} of {done} dead letter(s) of {subscriber} in the audit trail: {e}");
        }
        Ok::<_, redis::RedisError>(done)
    });
    let done = work.await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?.map_err(redis_failed)?;
    let key = match action {
        Action::Replay => "replayed",
        Action::Purge => "purged",
    };
    Ok(Json(serde_json::json!({ key: done })))
}

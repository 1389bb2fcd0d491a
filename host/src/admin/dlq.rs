//! `/api/dlq`: the console's dead letters, through [`crate::dlq`], the functions `ferry dlq`
//! runs too, so the page and the command line never disagree.
//!
//! Reads take the filter as query parameters (`type`, `kind`, `reason`, `since`, `until`,
//! `correlation`, `id`, and `limit`); `replay` and `purge` (operator only, see
//! [`super::auth`]) take a JSON body naming what to act on: `{"ids": [...]}`,
//! `{"group": "..."}`, `{"all": true}` or the filter's fields, and `"job": true` to run it as
//! a job whatever its size (one of more than [`jobs::JOB_ABOVE`] dead letters always is: see
//! [`super::jobs`]). One dead letter is read in full at `letters/{entry_id}` and edited and
//! replayed at `letters/{entry_id}/edit`. Each action is recorded in the audit trail
//! ([`crate::audit`]) under its token's name.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::auth::Principal;
use super::jobs::{self, Action};
use crate::dlq::{Filter, Selection};
use crate::host::Host;

/// Most dead letters one listing returns.
const MAX_LIMIT: usize = 1000;

type Refusal = (StatusCode, String);

fn bad(why: impl std::fmt::Display) -> Refusal {
    (StatusCode::BAD_REQUEST, format!("{why}\n"))
}

/// A listing's query: the filter's fields (read as [`Filter`] reads an action's body, empty
/// values left out) and `limit`.
fn filter_of(mut query: HashMap<String, String>) -> Result<(Filter, Option<usize>), Refusal> {
    let limit =
        query.remove("limit").map(|l| l.parse::<usize>()).transpose().map_err(|e| bad(format!("limit: {e}")))?;
    query.retain(|_, v| !v.is_empty());
    let fields = query.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    let filter = serde_json::from_value(serde_json::Value::Object(fields)).map_err(bad)?;
    Ok((filter, limit))
}

fn redis_failed(e: impl std::fmt::Display) -> Refusal {
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
    Query(query): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Refusal> {
    let (filter, limit) = filter_of(query)?;
    let limit = limit.unwrap_or(crate::dlq::DEFAULT_LIMIT).min(MAX_LIMIT);
    let mut conn = host.context().shared.clone();
    let (dead_letters, total) =
        crate::dlq::find(&mut conn, Some(&subscriber), &filter, limit).await.map_err(redis_failed)?;
    Ok(Json(Listing { total, dead_letters }))
}

/// `GET /api/dlq/{subscriber}/groups`: what `ferry dlq groups --json` prints.
pub(super) async fn groups(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Refusal> {
    let (filter, _) = filter_of(query)?;
    let mut conn = host.context().shared.clone();
    Ok(Json(crate::dlq::groups(&mut conn, Some(&subscriber), &filter).await.map_err(redis_failed)?))
}

/// `GET /api/dlq/{subscriber}/letters/{entry_id}`: one dead letter in full (what `ferry dlq
/// show` prints); 404 if there is none.
pub(super) async fn letter(
    State(host): State<Arc<Host>>,
    Path((subscriber, entry_id)): Path<(String, String)>,
) -> axum::response::Response {
    let mut conn = host.context().shared.clone();
    match crate::dlq::detail(&mut conn, &subscriber, &entry_id).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such dead letter\n").into_response(),
        Err(e) => redis_failed(e).into_response(),
    }
}

/// `POST /api/dlq/{subscriber}/letters/{entry_id}/edit` (operator): body `{"data": "...",
/// "attributes": {...}}`; the edited event is replayed as the same event id and the edit
/// recorded. Answers `{"replayed": 1, "fields": [...]}`.
pub(super) async fn edit(
    State(host): State<Arc<Host>>,
    Path((subscriber, entry_id)): Path<(String, String)>,
    axum::Extension(principal): axum::Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, Refusal> {
    let edit: crate::dlq::Edit =
        serde_json::from_slice(&body).map_err(|e| bad(format!("expected {{\"data\", \"attributes\"}}: {e}")))?;
    // Its own task, as an action's: a client that goes away must not cut it off.
    let work = tokio::spawn(async move {
        let mut conn = host.context().shared.clone();
        let replication = host.context().replication;
        let changed = crate::dlq::edit(&mut conn, &subscriber, &entry_id, &edit, &principal.name, replication).await;
        if let Ok(fields) = &changed {
            tracing::info!(token = %principal.name, %subscriber, entry = %entry_id, ?fields, "admin endpoint: dead letter edited and replayed");
        }
        changed
    });
    match work.await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))? {
        Ok(fields) => Ok(Json(serde_json::json!({ "replayed": 1, "fields": fields }))),
        Err(crate::dlq::EditError::NotFound(id)) => Err((StatusCode::NOT_FOUND, format!("no dead letter {id}\n"))),
        Err(e @ (crate::dlq::EditError::Refused(_) | crate::dlq::EditError::Invalid(_))) => Err(bad(e)),
        Err(e) => Err(redis_failed(e)),
    }
}

/// What an action's body names, as a [`Selection`], and whether it asks for a job.
fn selection(body: &[u8]) -> Result<(Selection, bool), Refusal> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("expected a JSON object: {e}")))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(bad("expected a JSON object"));
    };
    let job = match fields.remove("job") {
        None => false,
        Some(serde_json::Value::Bool(job)) => job,
        Some(_) => return Err(bad("job: expected true or false")),
    };
    let ids = fields.remove("ids");
    let group = fields.remove("group");
    let all = fields.remove("all");
    let named = [ids.is_some(), group.is_some(), all.is_some(), !fields.is_empty()].iter().filter(|b| **b).count();
    if named != 1 {
        return Err(bad("name the dead letters with exactly one of ids, group, all or a filter"));
    }
    let selection = if let Some(ids) = ids {
        Selection::Ids(serde_json::from_value(ids).map_err(|e| bad(format!("ids: {e}")))?)
    } else if let Some(group) = group {
        Selection::Group(serde_json::from_value(group).map_err(|e| bad(format!("group: {e}")))?)
    } else if let Some(all) = all {
        match all {
            serde_json::Value::Bool(true) => Selection::All,
            _ => return Err(bad("all: expected true")),
        }
    } else {
        let filter: Filter =
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| bad(format!("filter: {e}")))?;
        if filter.is_empty() {
            return Err(bad("an empty filter: pass {\"all\": true} to act on every dead letter"));
        }
        Selection::Filter(filter)
    };
    Ok((selection, job))
}

/// `POST /api/dlq/{subscriber}/replay`.
pub(super) async fn replay(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    axum::Extension(principal): axum::Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, Refusal> {
    act(host, subscriber, principal, Action::Replay, &body).await
}

/// `POST /api/dlq/{subscriber}/purge`.
pub(super) async fn purge(
    State(host): State<Arc<Host>>,
    Path(subscriber): Path<String>,
    axum::Extension(principal): axum::Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, Refusal> {
    act(host, subscriber, principal, Action::Purge, &body).await
}

fn job_started(id: String) -> axum::response::Response {
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "job": id }))).into_response()
}

/// Run an action: within the request when it selects few dead letters, else as a job (the
/// running one, if the same action on the same selection already runs).
async fn act(
    host: Arc<Host>,
    subscriber: String,
    principal: Principal,
    action: Action,
    body: &[u8],
) -> Result<axum::response::Response, Refusal> {
    let (selection, want_job) = selection(body)?;
    if let Some(id) = jobs::running(&host, action, &subscriber, &selection).await.map_err(redis_failed)? {
        return Ok(job_started(id));
    }
    let mut conn = host.context().shared.clone();
    let plan = crate::dlq::plan(&mut conn, &subscriber, &selection).await.map_err(redis_failed)?;
    if want_job || plan.len() > jobs::JOB_ABOVE {
        let id = jobs::start(host, &principal, action, &subscriber, &selection, plan).await.map_err(redis_failed)?;
        return Ok(job_started(id));
    }
    // Its own task: a request that times out (or a client that goes away) must not cut an
    // action off half done.
    let work = tokio::spawn(async move {
        let done = action.run(&host, &plan).await?;
        tracing::info!(token = %principal.name, action = action.name(), %subscriber, count = done, "admin endpoint: dead letters");
        if let Err(e) =
            crate::audit::record(&mut conn, &principal.name, action.name(), &subscriber, &selection, done).await
        {
            tracing::error!(
                "recording {} of {done} dead letter(s) of {subscriber} in the audit trail: {e}",
                action.name()
            );
        }
        Ok::<_, anyhow::Error>(done)
    });
    let done = work.await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?.map_err(redis_failed)?;
    Ok(Json(serde_json::json!({ action.done_key(): done })).into_response())
}

/// `GET /api/jobs`: the newest jobs, newest first.
pub(super) async fn job_list(State(host): State<Arc<Host>>) -> Result<impl IntoResponse, Refusal> {
    Ok(Json(jobs::list(&host).await.map_err(redis_failed)?))
}

/// `GET /api/jobs/{id}`; 404 if unknown or expired.
pub(super) async fn job(State(host): State<Arc<Host>>, Path(id): Path<String>) -> axum::response::Response {
    match jobs::get(&host, &id).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => redis_failed(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_names_one_selection_and_may_ask_for_a_job() {
        let parse = |body: &str| selection(body.as_bytes()).map_err(|(_, why)| why);
        assert_eq!(parse(r#"{"all": true}"#), Ok((Selection::All, false)));
        assert_eq!(parse(r#"{"group": "g", "job": true}"#), Ok((Selection::Group("g".into()), true)));
        assert_eq!(parse(r#"{"ids": ["a"], "job": false}"#), Ok((Selection::Ids(vec!["a".into()]), false)));
        let filter = parse(r#"{"type": "T", "since": "1h"}"#).expect("a filter").0;
        assert!(matches!(filter, Selection::Filter(f) if f.event_type.as_deref() == Some("T") && f.since.is_some()));
        for bad in [
            r#"{"all": true, "group": "g"}"#,
            r#"{"job": true}"#,
            r#"{"all": false}"#,
            r#"{"job": 1, "all": true}"#,
            "[]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_listing_query_is_read_as_a_filter_with_empty_values_left_out() {
        let query = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (filter, limit) = filter_of(query(&[("type", "T"), ("reason", ""), ("limit", "5")])).expect("reads");
        assert_eq!((filter.event_type.as_deref(), filter.reason, limit), (Some("T"), None, Some(5)));
        assert!(filter_of(query(&[("since", "yesterday-ish")])).is_err());
        assert!(filter_of(query(&[("colour", "red")])).is_err(), "unknown parameters are refused");
        assert!(filter_of(query(&[("limit", "many")])).is_err());
    }
}

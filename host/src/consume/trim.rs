//! Safe trimming: optional retention that never removes an entry still pending or not yet
//! delivered to every consumer group.
//!
//! Redis 7.0 has no "acked only" trim, so the safe floor is computed from all groups of the
//! stream (ferry's and anyone else's, including groups of removed plugins, whose events wait):
//! for each group, its oldest pending entry, or the entry after its last delivered one. An
//! entry below every group's floor has been delivered to and settled by every group. Ferry's
//! own retry streams are always trimmed to their floor.

use redis::aio::ConnectionLike;

use super::read::{self, cmp_ids, parse_id};
use super::scripts;
use crate::config::RetentionConfig;

/// Most entries one trimming pass removes by length: the cut is found by walking that many
/// entries inside Redis, so a large excess is trimmed over several passes.
const MAX_CUT_PER_PASS: u64 = 10_000;

/// The lowest id any group still needs on `stream`, or `None` when the stream has no group.
pub async fn safe_floor<C: ConnectionLike>(conn: &mut C, stream: &str) -> redis::RedisResult<Option<String>> {
    let groups: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
    let redis::Value::Array(groups) = groups else { return Ok(None) };
    let mut floor: Option<String> = None;
    for group in groups {
        let group = read::pairs(group);
        let name = read::pair_str(&group, "name");
        let last = read::pair_str(&group, "last-delivered-id");
        let pending = read::pair_int(&group, "pending").unwrap_or(0);
        let (Some(name), Some(last)) = (name, last) else { continue };
        let needed = if pending > 0 {
            let summary: redis::Value = redis::cmd("XPENDING").arg(stream).arg(&name).query_async(conn).await?;
            match summary {
                redis::Value::Array(items) => items.get(1).and_then(read::text).unwrap_or(last),
                _ => last,
            }
        } else {
            let (ms, seq) = parse_id(&last);
            format!("{ms}-{}", seq + 1)
        };
        floor = Some(match floor {
            Some(f) if cmp_ids(&f, &needed).is_le() => f,
            _ => needed,
        });
    }
    Ok(floor)
}

/// Trim `stream` by `retention` (or, with no limits, to its safe floor), never past the
/// safe floor. Returns the number of entries removed.
pub async fn trim<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    retention: Option<&RetentionConfig>,
    now_ms: u64,
) -> redis::RedisResult<u64> {
    let Some(floor) = safe_floor(conn, stream).await? else { return Ok(0) };
    let mut cut = match retention {
        None => floor.clone(),
        Some(r) => {
            let mut cut: Option<String> = None;
            if let Some(age) = r.max_age {
                cut = Some(format!("{}-0", now_ms.saturating_sub(age.as_millis() as u64)));
            }
            if let Some(max_len) = r.max_len {
                let len: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
                let excess = len.saturating_sub(max_len);
                if excess > 0 {
                    let n = excess.min(MAX_CUT_PER_PASS);
                    let cmd = scripts::evalsha(&scripts::CUT, &[stream], &[n]);
                    let keep: Option<String> = scripts::run(conn, &cmd).await?;
                    let len_cut = keep.unwrap_or_else(|| floor.clone());
                    cut = Some(match cut {
                        Some(c) if cmp_ids(&c, &len_cut).is_ge() => c,
                        _ => len_cut,
                    });
                }
            }
            match cut {
                Some(c) => c,
                None => return Ok(0),
            }
        }
    };
    if cmp_ids(&cut, &floor).is_gt() {
        cut = floor;
    }
    redis::cmd("XTRIM").arg(stream).arg("MINID").arg(&cut).query_async(conn).await
}

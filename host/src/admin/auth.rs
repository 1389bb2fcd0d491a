//! Who may use the admin endpoint: the `Host` check against DNS rebinding and the time limit
//! every request runs under.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

/// Longest a request may take to answer once its headers are read.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Refuse a request whose `Host` names something other than an IP address, `localhost` or
/// one of `admin.hosts` (see the module docs).
pub(super) async fn check_host(
    State(allowed): State<Arc<Vec<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if host.is_none_or(|h| admits(&allowed, h)) {
        // A handler waiting on a stalled Redis must not hold the connection forever.
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
            Ok(response) => response,
            Err(_) => (StatusCode::GATEWAY_TIMEOUT, "timed out\n").into_response(),
        }
    } else {
        (StatusCode::MISDIRECTED_REQUEST, "this endpoint does not answer to that host name (admin.hosts)\n")
            .into_response()
    }
}

/// Whether a `Host` header value (`name[:port]`, `[v6]:port`) may address the endpoint.
fn admits(allowed: &[String], host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

#[cfg(test)]
mod tests {
    /// Issue 23, item 12: a DNS-rebinding page sends its own name in `Host`.
    #[test]
    fn only_ip_addresses_localhost_and_configured_names_are_admitted() {
        let allowed = vec!["ferry.internal".to_string()];
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "localhost:9464",
            "LOCALHOST",
            "10.1.2.3:80",
            "ferry.internal:9464",
            "Ferry.Internal.",
        ] {
            assert!(super::admits(&allowed, ok), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "evil.example",
            "127.0.0.1.evil.example:9464",
            "localhost.evil.example",
            "",
            "\u{fffd}",
        ] {
            assert!(!super::admits(&allowed, bad), "{bad}");
        }
    }
}

//! Who may use the admin endpoint and how: the `Host` check against DNS rebinding, tokens and
//! their roles, sessions for the console's cookie, the CSRF check on state-changing routes,
//! the limit on failed logins, and the time limit every request runs under.
//!
//! A request is identified by `Authorization: Bearer TOKEN` (scripts) or by the session
//! cookie `POST /api/login` sets (the page). Tokens come from `admin.tokens_file` or
//! `FERRY_ADMIN_TOKENS`, never from the plugin directory, whose files belong to plugin
//! authors. Without any token the endpoint is open, which [`super::spawn`] allows on a
//! loopback address only (today's behaviour: the demo and a developer's machine).
//!
//! Every state-changing route is `POST`, needs the `operator` role, and is refused when its
//! `Origin` names another site than its `Host` (a browser always sends `Origin` on a
//! cross-site `POST`); a cookie-identified `POST` without `Origin` is refused as well.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;

use crate::config::AdminConfig;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything the endpoint shows.
    Viewer,
    /// Read, and act: replay and purge dead letters.
    Operator,
}

/// One access token.
#[derive(Clone)]
pub struct Token {
    /// Who holds it: written to the audit trail, never the secret.
    pub name: String,
    /// What it allows.
    pub role: Role,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Why the tokens could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// The file could not be read.
    #[error("reading the admin tokens file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error("the admin tokens file {path:?} is readable by group or others (mode {mode:o}): chmod 600 it")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file lies inside the plugin directory.
    #[error("the admin tokens file {path:?} is inside the plugin directory: keep credentials out of it")]
    InPlugins {
        /// The file.
        path: PathBuf,
    },
    /// A line is not `name role token`.
    #[error("{origin} line {line}: expected `name role token`")]
    Malformed {
        /// The file or `FERRY_ADMIN_TOKENS`.
        origin: String,
        /// 1-based line (or entry) number.
        line: usize,
    },
    /// A line names a role that does not exist.
    #[error("{origin} line {line}: unknown role {role:?} (viewer or operator)")]
    Role {
        /// The file or `FERRY_ADMIN_TOKENS`.
        origin: String,
        /// 1-based line (or entry) number.
        line: usize,
        /// The role named.
        role: String,
    },
    /// A token is too short to resist guessing.
    #[error("{origin} line {line}: the token of {name:?} is shorter than {MIN_TOKEN} characters")]
    Short {
        /// The file or `FERRY_ADMIN_TOKENS`.
        origin: String,
        /// 1-based line (or entry) number.
        line: usize,
        /// The token's name.
        name: String,
    },
}

/// Fewest characters a token may have.
pub const MIN_TOKEN: usize = 16;

/// The tokens of `admin.tokens_file` and of `env` (the value of `FERRY_ADMIN_TOKENS`).
pub fn load_tokens(admin: &AdminConfig, plugins: &Path, env: Option<&str>) -> Result<Vec<Token>, TokensError> {
    let mut tokens = Vec::new();
    if let Some(path) = &admin.tokens_file {
        let read = |source| TokensError::Read { path: path.clone(), source };
        let canonical = std::fs::canonicalize(path).map_err(read)?;
        if std::fs::canonicalize(plugins).is_ok_and(|dir| canonical.starts_with(dir)) {
            return Err(TokensError::InPlugins { path: path.clone() });
        }
        let metadata = std::fs::metadata(&canonical).map_err(read)?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokensError::Exposed { path: path.clone(), mode });
        }
        let text = std::fs::read_to_string(&canonical).map_err(read)?;
        tokens.extend(parse_tokens(&format!("{}", path.display()), text.lines())?);
    }
    if let Some(env) = env {
        tokens.extend(parse_tokens("FERRY_ADMIN_TOKENS", env.split(['\n', ',']))?);
    }
    Ok(tokens)
}

fn parse_tokens<'a>(origin: &str, lines: impl Iterator<Item = &'a str>) -> Result<Vec<Token>, TokensError> {
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let origin = || origin.to_string();
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, role, secret] = words[..] else {
            return Err(TokensError::Malformed { origin: origin(), line: i + 1 });
        };
        let role = match role {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            other => return Err(TokensError::Role { origin: origin(), line: i + 1, role: other.to_string() }),
        };
        if secret.len() < MIN_TOKEN {
            return Err(TokensError::Short { origin: origin(), line: i + 1, name: name.to_string() });
        }
        out.push(Token { name: name.to_string(), role, secret: secret.to_string() });
    }
    Ok(out)
}

/// Who a request acts as: the name of its token (or `anonymous` on an open endpoint) and
/// the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// How long a login's session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins a client address may make per [`FAILURE_WINDOW`] before it gets 429.
pub const MAX_FAILURES: usize = 5;
/// The window [`MAX_FAILURES`] counts over.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Name of the session cookie.
pub const COOKIE: &str = "ferry_session";
/// Most client addresses whose failures are remembered at once; beyond it the oldest go.
const MAX_TRACKED: usize = 10_000;

/// The endpoint's tokens, its sessions and its failed logins.
pub struct Auth {
    tokens: Vec<Token>,
    open_metrics: bool,
    sessions: Mutex<HashMap<String, (Principal, Instant)>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Auth {
    /// Authentication with these tokens; with none, the endpoint is open.
    pub fn new(tokens: Vec<Token>, open_metrics: bool) -> Self {
        Self { tokens, open_metrics, sessions: Mutex::default(), failures: Mutex::default() }
    }

    /// Whether the endpoint has no token, so answers everyone.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    fn token(&self, secret: &str) -> Option<Principal> {
        // Every token is compared, each in constant time: the reply's timing says nothing
        // about how much of a guess was right.
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(t.secret.as_bytes(), secret.as_bytes()) {
                found = Some(Principal { name: t.name.clone(), role: t.role });
            }
        }
        found
    }

    fn session(&self, id: &str) -> Option<Principal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some((p, expires)) if *expires > Instant::now() => Some(p.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    fn start_session(&self, principal: Principal) -> String {
        let id: [u8; 32] = rand::random();
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, (_, expires)| *expires > now);
        sessions.insert(id.clone(), (principal, now + SESSION_TTL));
        id
    }

    fn end_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Whether `addr` has used up its failed logins for now.
    fn limited(&self, addr: Option<IpAddr>) -> bool {
        let Some(addr) = addr else { return false };
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = failures.get_mut(&addr) else { return false };
        while times.front().is_some_and(|t| t.elapsed() > FAILURE_WINDOW) {
            times.pop_front();
        }
        times.len() >= MAX_FAILURES
    }

    fn failed(&self, addr: Option<IpAddr>, how: &str) {
        // The presented token is never logged: a typo of a real one is nearly the real one.
        match addr {
            Some(addr) => tracing::warn!(client = %addr, "admin endpoint: failed {how} (wrong token)"),
            None => tracing::warn!("admin endpoint: failed {how} (wrong token)"),
        }
        let Some(addr) = addr else { return };
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&addr) {
            failures.retain(|_, times| times.back().is_some_and(|t| t.elapsed() <= FAILURE_WINDOW));
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        failures.entry(addr).or_default().push_back(Instant::now());
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Routes that answer without a token when `admin.open_metrics` is on.
const SCRAPED: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Whether `path` is the console page or one of its assets.
fn is_page(path: &str) -> bool {
    path == "/console" || path.strip_prefix("/console/").is_some_and(|asset| !asset.contains('/'))
}

fn client(request: &axum::extract::Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether the request's `Origin`, if any, is its own `Host`: `None` without `Origin`.
fn same_origin(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(header::ORIGIN)?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().ok();
    let authority = origin.and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")));
    Some(matches!((authority, host), (Some(a), Some(h)) if a.trim_end_matches('/').eq_ignore_ascii_case(h)))
}

fn refuse(status: StatusCode, why: &str) -> axum::response::Response {
    let mut response = (status, format!("{why}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Identify the request, check its role and origin (see the module docs), and hand it on
/// with its [`Principal`] as an extension.
pub(super) async fn authorize(
    State(auth): State<Arc<Auth>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if (auth.open_metrics && SCRAPED.contains(&path)) || path == "/" || is_page(path) {
        // The pages themselves hold no data: what they show comes from /api/, which needs
        // a token (the console's own login form gets the session).
        return next.run(request).await;
    }
    let post = request.method() == axum::http::Method::POST;
    let headers = request.headers();
    let addr = client(&request);
    let cross_origin = || refuse(StatusCode::FORBIDDEN, "cross-origin request refused (Origin is not this Host)");
    if path == "/api/login" || path == "/api/logout" {
        if post && same_origin(headers) == Some(false) {
            return cross_origin();
        }
        return next.run(request).await;
    }
    let principal = if let Some(secret) = bearer(headers) {
        if auth.limited(addr) {
            return refuse(StatusCode::TOO_MANY_REQUESTS, "too many failed logins; wait a minute");
        }
        match auth.token(secret) {
            Some(p) => p,
            None => {
                auth.failed(addr, "bearer authentication");
                return refuse(StatusCode::UNAUTHORIZED, "unknown token");
            }
        }
    } else if let Some(p) = session_cookie(headers).and_then(|id| auth.session(id)) {
        p
    } else if auth.is_open() {
        Principal { name: "anonymous".into(), role: Role::Operator }
    } else {
        return refuse(StatusCode::UNAUTHORIZED, "log in: POST /api/login or Authorization: Bearer TOKEN");
    };
    if post {
        match same_origin(headers) {
            Some(false) => return cross_origin(),
            // A script's bearer token is no ambient credential a foreign page could ride on;
            // a cookie is, so a cookie's POST must say where it comes from.
            None if bearer(headers).is_none() && !auth.is_open() => {
                return refuse(StatusCode::FORBIDDEN, "a POST without a bearer token must carry Origin");
            }
            _ => {}
        }
    }
    if post && principal.role != Role::Operator {
        return refuse(StatusCode::FORBIDDEN, "this needs the operator role");
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// `POST /api/login` body.
#[derive(serde::Deserialize)]
pub(super) struct Login {
    token: String,
}

/// `POST /api/login`: a valid token starts a session, kept in the HttpOnly, SameSite=Strict
/// cookie; failures count towards the client's limit.
pub(super) async fn login(State(auth): State<Arc<Auth>>, request: axum::extract::Request) -> axum::response::Response {
    let addr = client(&request);
    let headers = request.headers().clone();
    let Ok(body) = axum::body::to_bytes(request.into_body(), 64 << 10).await else {
        return refuse(StatusCode::BAD_REQUEST, "unreadable body");
    };
    if auth.is_open() {
        return refuse(StatusCode::BAD_REQUEST, "no tokens are configured: this endpoint is open");
    }
    if auth.limited(addr) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "too many failed logins; wait a minute");
    }
    let Ok(Login { token }) = serde_json::from_slice::<Login>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "expected {\"token\": \"...\"}");
    };
    let Some(principal) = auth.token(&token) else {
        auth.failed(addr, "login");
        return refuse(StatusCode::UNAUTHORIZED, "unknown token");
    };
    tracing::info!(token = %principal.name, "admin endpoint: login");
    let reply = serde_json::json!({ "name": principal.name, "role": principal.role });
    let id = auth.start_session(principal);
    // Secure when the reverse proxy in front says the page came over TLS; plain HTTP on
    // loopback would otherwise lose the cookie.
    let secure =
        headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, cookie)], axum::Json(reply)).into_response()
}

/// `POST /api/logout`: ends the cookie's session.
pub(super) async fn logout(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> axum::response::Response {
    if let Some(id) = session_cookie(&headers) {
        auth.end_session(id);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], "logged out\n").into_response()
}

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
        let mut response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
            Ok(response) => response,
            Err(_) => (StatusCode::GATEWAY_TIMEOUT, "timed out\n").into_response(),
        };
        // Answers carry producers' and plugins' text (types, reasons): a browser must take
        // them as the declared type (JSON, plain text), never sniff them into HTML.
        let headers = response.headers_mut();
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
        headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
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
    use super::*;

    #[test]
    fn token_lines_are_name_role_token_and_bad_ones_are_refused() {
        let tokens =
            parse_tokens("t", "# comment\nalice operator 0123456789abcdef\n\nbob viewer fedcba9876543210 # x".lines())
                .expect("parses");
        assert_eq!(tokens.len(), 2);
        assert_eq!((tokens[0].name.as_str(), tokens[0].role), ("alice", Role::Operator));
        assert_eq!((tokens[1].name.as_str(), tokens[1].role), ("bob", Role::Viewer));
        assert!(!format!("{:?}", tokens[0]).contains("0123456789abcdef"), "Debug hides the secret");
        assert!(matches!(parse_tokens("t", ["alice operator"].into_iter()), Err(TokensError::Malformed { .. })));
        assert!(matches!(parse_tokens("t", ["a root 0123456789abcdef"].into_iter()), Err(TokensError::Role { .. })));
        assert!(matches!(parse_tokens("t", ["a viewer short"].into_iter()), Err(TokensError::Short { .. })));
    }

    #[test]
    fn a_tokens_file_readable_by_others_or_in_the_plugin_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("mkdir");
        let file = dir.path().join("tokens");
        std::fs::write(&file, "alice operator 0123456789abcdef\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let admin = AdminConfig { tokens_file: Some(file.clone()), ..AdminConfig::default() };
        assert!(matches!(load_tokens(&admin, &plugins, None), Err(TokensError::Exposed { .. })));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(load_tokens(&admin, &plugins, Some("bob viewer fedcba9876543210")).expect("loads").len(), 2);
        let inside = plugins.join("tokens");
        std::fs::copy(&file, &inside).expect("copy");
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let admin = AdminConfig { tokens_file: Some(inside), ..AdminConfig::default() };
        assert!(matches!(load_tokens(&admin, &plugins, None), Err(TokensError::InPlugins { .. })));
    }

    #[test]
    fn the_sixth_failure_within_the_window_is_limited() {
        let auth = Auth::new(Vec::new(), true);
        let addr = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..MAX_FAILURES {
            assert!(!auth.limited(addr));
            auth.failed(addr, "login");
        }
        assert!(auth.limited(addr));
        assert!(!auth.limited(Some(IpAddr::from([10, 0, 0, 2]))), "per client address");
    }

    #[test]
    fn origin_must_name_the_host() {
        let headers = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "127.0.0.1:9464".parse().expect("value"));
            h.insert(header::ORIGIN, origin.parse().expect("value"));
            h
        };
        assert_eq!(same_origin(&headers("http://127.0.0.1:9464")), Some(true));
        assert_eq!(same_origin(&headers("https://evil.example")), Some(false));
        assert_eq!(same_origin(&headers("null")), Some(false));
        assert_eq!(same_origin(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_console_page_and_its_assets_answer_without_a_token() {
        for page in ["/console", "/console/console.js", "/console/console.css"] {
            assert!(is_page(page), "{page}");
        }
        for other in ["/consoles", "/console/a/b", "/api/console", "/console.js"] {
            assert!(!is_page(other), "{other}");
        }
    }

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
            assert!(admits(&allowed, ok), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "evil.example",
            "127.0.0.1.evil.example:9464",
            "localhost.evil.example",
            "",
            "\u{fffd}",
        ] {
            assert!(!admits(&allowed, bad), "{bad}");
        }
    }
}

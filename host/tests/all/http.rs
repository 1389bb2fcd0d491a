//! Outbound HTTP granted per subscriber (issue 25), with the fetcher fixture
//! (`tests/guests/fetcher`: one request through the standard `wasi:http/outgoing-handler`
//! per event, its status and body length recorded). Each test starts its own Redis and its
//! own HTTP/1.1 server on a free port, answering by hand.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::event::Event;
use ferry_test_fixtures as fixtures;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Env;

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    /// These bytes, then close.
    With(String),
    /// Nothing, ever (the connection is held open).
    Never,
    /// These bytes to every request on the connection (keep-alive).
    KeepAlive(String),
}

/// A local HTTP/1.1 server: the requests it received (head and body, as sent).
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    async fn start(reply: Reply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let requests = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (requests, reply) = (requests.clone(), reply.clone());
                tokio::spawn(async move {
                    let request = read_request(&mut conn).await;
                    requests.lock().expect("lock").push(request);
                    match reply {
                        Reply::KeepAlive(bytes) => loop {
                            if conn.write_all(bytes.as_bytes()).await.is_err() {
                                break;
                            }
                            let request = read_request(&mut conn).await;
                            if request.is_empty() {
                                break;
                            }
                            requests.lock().expect("lock").push(request);
                        },
                        Reply::With(bytes) => {
                            let _ = conn.write_all(bytes.as_bytes()).await;
                            let _ = conn.shutdown().await;
                        }
                        Reply::Never => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(conn);
                        }
                    }
                });
            }
        });
        Self { port, seen, connections }
    }

    /// Connections accepted so far.
    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The requests received so far, lower-cased.
    fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("lock").iter().map(|r| r.to_ascii_lowercase()).collect()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// One request's head and (by its content-length) body.
async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = conn.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            let chunked = text[..end].to_ascii_lowercase().contains("transfer-encoding: chunked");
            let body = &text[end + 4..];
            let complete = match length {
                Some(n) => body.len() >= n,
                None if chunked => body.ends_with("0\r\n\r\n"),
                None => true,
            };
            if complete {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// The fetcher's plugin file: `http` is the `[http]` table's body (none: not granted).
fn fetcher_toml(http: Option<&str>, extra: &str) -> String {
    let http = http.map(|t| format!("[http]\n{t}\n")).unwrap_or_default();
    format!(
        r#"start = "beginning"
publish_streams = ["records"]
{extra}
[config]
record_to = "records"
[retry]
max_attempts = 3
initial_delay = "20ms"
multiplier = 1.0
max_delay = "20ms"
jitter = 0.0
{http}"#
    )
}

fn allow(urls: &[String]) -> String {
    format!("allow = {}", serde_json::to_string(urls).expect("json"))
}

fn fetch(data: Value) -> Event {
    Event::new("Fetch", "tests", data.to_string())
}

/// The fetcher's record of `event`'s last attempt.
async fn record_of(env: &Env, event: &Event) -> Value {
    let id = event.id.clone();
    let conn = env.conn().await;
    env.wait_for(&format!("the record of {id}"), Duration::from_secs(60), || {
        let (mut conn, id) = (conn.clone(), id.clone());
        async move {
            let recs = crate::support::records(&mut conn, "records").await;
            recs.into_iter().rfind(|r| r["of"] == id.as_str())
        }
    })
    .await
}

/// An allowed request reaches the server with `Idempotency-Key: SUBSCRIBER:EVENT_ID` and the
/// event's `traceparent`, and the guest gets the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_request_succeeds_carrying_the_idempotency_key_and_traceparent() {
    let server = Server::start(Reply::With(OK.into())).await;
    let env = Env::new();
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&allow(&[server.url("")])), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let mut e = fetch(json!({"url": server.url("/mail?to=x"), "method": "POST", "body": "hello"}));
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    e.traceparent = Some(traceparent.into());
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    let record = record_of(&env, &e).await;
    assert_eq!((record["status"].as_u64(), record["bytes"].as_u64()), (Some(200), Some(2)), "{record}");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert!(request.starts_with("post /mail?to=x http/1.1"), "{request}");
    assert!(request.contains(&format!("idempotency-key: fetcher:{}", e.id.to_ascii_lowercase())), "{request}");
    assert!(request.contains(&format!("traceparent: {traceparent}")), "{request}");
    assert!(request.contains("\r\nhello\r\n"), "the body arrived (chunked): {request}");
    host.stop_all().await;
}

/// A subscriber's connection is kept alive: three events' requests to one server over one
/// connection (each still resolved and checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_successive_events_reuse_a_kept_alive_connection() {
    let server = Server::start(Reply::KeepAlive("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into())).await;
    let env = Env::new();
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&allow(&[server.url("")])), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    for _ in 0..3 {
        let e = fetch(json!({"url": server.url("/again")}));
        ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
        assert_eq!(record_of(&env, &e).await["status"].as_u64(), Some(200));
    }
    assert_eq!((server.requests().len(), server.connections()), (3, 1), "three requests, one connection");
    host.stop_all().await;
}

/// `https` verifies the server against the system's roots: a server whose certificate (for
/// the right address) no trusted CA signed is refused, and nothing is sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_with_an_untrusted_certificate_is_refused() {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let seen = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let result = acceptor.accept(tcp).await.map(drop).map_err(|e| e.to_string());
            seen.lock().expect("lock").push(result);
        }
    });
    let env = Env::new();
    let url = format!("https://127.0.0.1:{port}");
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&allow(std::slice::from_ref(&url))), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let e = fetch(json!({"url": format!("{url}/secret"), "method": "POST", "body": "token"}));
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    let record = record_of(&env, &e).await;
    assert!(record["error"].as_str().is_some_and(|e| e.starts_with("Tls")), "{record}");
    let handshakes = handshakes.lock().expect("lock").clone();
    assert!(!handshakes.is_empty() && handshakes.iter().all(Result::is_err), "no handshake completed: {handshakes:?}");
    host.stop_all().await;
}

/// A local TLS server for `127.0.0.1` with a certificate from a CA made here (its PEM at
/// `ca`), offering only the ALPN `protocols`; it answers `ok` to every request and records
/// each request's HTTP version.
struct TlsServer {
    port: u16,
    versions: Arc<Mutex<Vec<http::Version>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Spawns the test server's HTTP/2 tasks.
#[derive(Clone, Copy)]
struct Spawn;

impl<F: Future<Output: Send + 'static> + Send + 'static> hyper::rt::Executor<F> for Spawn {
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

impl TlsServer {
    async fn start(protocols: &[&[u8]]) -> Self {
        use tokio_rustls::rustls;
        let dir = tempfile::Builder::new().prefix("ferry-http-pki-").tempdir().expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry http test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("CA key")).expect("CA");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("writing the CA");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(ferry::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let versions = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, accepted) = (versions.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = wasmtime_wasi_http::io::TokioIo::new(tls);
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        seen.lock().expect("lock").push(request.version());
                        let ok = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"));
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(ok)) }
                    });
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(Spawn).serve_connection(io, service).await
                    } else {
                        hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                    };
                });
            }
        });
        Self { port, versions, connections, ca: ca_path, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The `[http]` grant of this server, trusting its CA.
    fn grant(&self) -> String {
        format!("{}\nca_file = {:?}", allow(&[self.url("")]), self.ca.display().to_string())
    }
}

/// Over TLS the host offers `h2` and `http/1.1`: a server speaking only HTTP/2 gets the
/// plugin's requests over HTTP/2, successive events' over one connection; a server speaking
/// only HTTP/1.1 gets them over HTTP/1.1. Both trusted through `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_go_over_http2_when_the_server_offers_it_and_http1_otherwise() {
    let h2 = TlsServer::start(&[b"h2"]).await;
    let h1 = TlsServer::start(&[b"http/1.1"]).await;
    let env = Env::new();
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&h2.grant()), ""));
    env.add_plugin("old", fixtures::FETCHER, &fetcher_toml(Some(&h1.grant()), "").replace("\"records\"", "\"old\""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    for _ in 0..3 {
        let e = fetch(json!({"url": h2.url("/two")}));
        ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
        let record = record_of(&env, &e).await;
        assert_eq!((record["status"].as_u64(), record["bytes"].as_u64()), (Some(200), Some(2)), "{record}");
    }
    assert_eq!(*h2.versions.lock().expect("lock"), [http::Version::HTTP_2; 3]);
    assert_eq!(h2.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one HTTP/2 connection for three requests");
    // Every event reaches both subscribers: `old` is granted only the HTTP/1.1 server.
    let e = fetch(json!({"url": h1.url("/one")}));
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    let record = env
        .wait_for("old's record", Duration::from_secs(60), || {
            let (mut conn, id) = (conn.clone(), e.id.clone());
            async move { crate::support::records(&mut conn, "old").await.into_iter().find(|r| r["of"] == id.as_str()) }
        })
        .await;
    assert_eq!(record["status"].as_u64(), Some(200), "{record}");
    assert_eq!(h1.versions.lock().expect("lock")[0], http::Version::HTTP_11);
    host.stop_all().await;
}

/// Refused before anything is sent, with `HttpRequestDenied` to the guest: another host,
/// another port; and after resolution: a granted *name* resolving to loopback
/// (`http://localhost:PORT` granted by name only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_other_hosts_ports_or_a_name_resolving_to_loopback_are_refused() {
    let granted = Server::start(Reply::With(OK.into())).await;
    let other = Server::start(Reply::With(OK.into())).await;
    // Granted by name only: its address (127.0.0.1) is not named for this port.
    let named = Server::start(Reply::With(OK.into())).await;
    let env = Env::new();
    let grant = allow(&[granted.url(""), format!("http://localhost:{}", named.port)]);
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&grant), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let cases = [
        (format!("http://other.example:{}/", granted.port), "HttpRequestDenied"),
        (other.url("/"), "HttpRequestDenied"),
        (format!("https://127.0.0.1:{}/", granted.port), "HttpRequestDenied"),
        (format!("http://localhost:{}/", named.port), "DestinationIpProhibited"),
    ];
    for (url, error) in &cases {
        let e = fetch(json!({"url": url}));
        ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
        let record = record_of(&env, &e).await;
        assert_eq!(record["error"].as_str(), Some(*error), "{url}: {record}");
    }
    let reached = [&granted, &other, &named].map(|s| s.requests().len());
    assert_eq!(reached, [0, 0, 0], "nothing reached a server");
    host.stop_all().await;
}

/// A plugin hammering a refused URL does not flood the log: its refusals are logged once per
/// window (`send::REFUSAL_WINDOW`, 1 s) per subscriber, the ones held back counted into the
/// next line, and every one counted in `ferry_http_requests_total{outcome="refused"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_logged_once_per_window_and_counted_every_time() {
    let env = Env::new();
    let grant = format!("{}\nrequests_per_event = 1000", allow(&["http://127.0.0.1:9".to_string()]));
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&grant), ""));
    let mut config = env.config();
    let addr = crate::support::free_addr();
    config.admin.listen = addr.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let host = crate::support::HostProcess::start(&config, dir.path(), "host");
    let mut conn = env.conn().await;
    let refused = "http://refused.example/hammer";
    let started = Instant::now();
    let burst = fetch(json!({"url": refused, "times": 200}));
    ferry::outbox::publish(&mut conn, "events", &burst).await.expect("publish");
    assert_eq!(record_of(&env, &burst).await["error"].as_str(), Some("HttpRequestDenied"));
    let burst_took = started.elapsed();
    // One more refusal after the window: always logged, carrying every one held back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = fetch(json!({"url": refused}));
    ferry::outbox::publish(&mut conn, "events", &last).await.expect("publish");
    record_of(&env, &last).await;
    let log = env
        .wait_for("the last refusal's log line", Duration::from_secs(30), || async {
            let log = host.log();
            let lines: Vec<String> =
                log.lines().filter(|l| l.contains("outbound HTTP request refused")).map(str::to_string).collect();
            lines.last().is_some_and(|l| l.contains("before it, not logged")).then_some(lines)
        })
        .await;
    let held_back: u64 =
        log.iter().filter_map(|l| l.split(" (").nth(1)?.split_whitespace().next()?.parse::<u64>().ok()).sum();
    assert_eq!(log.len() as u64 + held_back, 201, "every refusal logged or counted into a line: {log:#?}");
    let windows = burst_took.as_secs() + 2;
    assert!(log.len() as u64 <= windows + 1, "{} lines for 201 refusals in {windows} windows: {log:#?}", log.len());
    let metrics = ferry::status::http_get(&addr, "/metrics").await.expect("metrics");
    let counted = metrics
        .lines()
        .find(|l| l.starts_with(r#"ferry_http_requests_total{subscriber="fetcher",outcome="refused"}"#))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
    assert_eq!(counted, Some(201.0), "each refusal counted");
    drop(host);
}

/// Redirects are not followed: the guest gets the 3xx as it came, and a request it makes
/// to the `Location` is checked like any other (here it would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_refused_host_reaches_the_guest_unfollowed() {
    let redirect = "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let server = Server::start(Reply::With(redirect.into())).await;
    let env = Env::new();
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&allow(&[server.url("")])), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let e = fetch(json!({"url": server.url("/go")}));
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    let record = record_of(&env, &e).await;
    assert_eq!(record["status"].as_u64(), Some(302), "{record}");
    let then = fetch(json!({"url": "http://169.254.169.254/latest/meta-data"}));
    ferry::outbox::publish(&mut conn, "events", &then).await.expect("publish");
    assert_eq!(record_of(&env, &then).await["error"].as_str(), Some("HttpRequestDenied"));
    assert_eq!(server.requests().len(), 1, "one request, no redirect followed");
    host.stop_all().await;
}

/// A server that accepts and never answers is stopped at the event's deadline (1 s), not at
/// the first-byte timeout (1 min): the event fails as any event past its deadline does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_stopped_at_the_events_deadline() {
    let server = Server::start(Reply::Never).await;
    let env = Env::new();
    let grant = format!("{}\nfirst_byte_timeout = \"1m\"", allow(&[server.url("")]));
    let toml =
        fetcher_toml(Some(&grant), "[limits]\ndeadline = \"1s\"").replace("max_attempts = 3", "max_attempts = 1");
    env.add_plugin("fetcher", fixtures::FETCHER, &toml);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let e = fetch(json!({"url": server.url("/slow")}));
    let published = Instant::now();
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    // Either the clamped timeout reaches the guest just before its deadline (it records the
    // error) or the deadline cuts the call (a dead letter): both within the deadline's slack.
    let ended = env
        .wait_for("the event to end", Duration::from_secs(30), || {
            let (mut conn, id) = (conn.clone(), e.id.clone());
            async move {
                let recs = crate::support::records(&mut conn, "records").await;
                if let Some(r) = recs.into_iter().find(|r| r["of"] == id.as_str()) {
                    return Some(format!("recorded {r}"));
                }
                let letters = ferry::dlq::list(&mut conn, Some("fetcher"), 10).await.ok()?;
                letters
                    .into_iter()
                    .find(|l| l.event_id == id)
                    .map(|l| format!("dead-lettered: {} {}", l.kind, l.reason))
            }
        })
        .await;
    let took = published.elapsed();
    assert!(took < Duration::from_secs(10), "ended after {took:?} ({ended}), long before the 1 min timeout");
    assert!(ended.contains("deadline") || ended.contains("Timeout"), "{ended}");
    assert_eq!(server.requests().len(), 1, "the request was sent");
    host.stop_all().await;
}

/// A response body over `response_bytes` is `HttpResponseBodySize(Some(cap))` to the guest,
/// whether its length is declared up front or it streams past the cap; a request body over
/// `request_bytes` is `HttpRequestBodySize(Some(cap))` and never reaches the server whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_their_caps_are_the_precise_wasi_http_codes_to_the_guest() {
    let declared = format!("HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{}", "x".repeat(100));
    let chunk = "y".repeat(80);
    let streamed =
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n50\r\n{chunk}\r\n0\r\n\r\n");
    let (a, b) = (Server::start(Reply::With(declared)).await, Server::start(Reply::With(streamed)).await);
    let env = Env::new();
    let grant = format!("{}\nresponse_bytes = 64\nrequest_bytes = 64", allow(&[a.url(""), b.url("")]));
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&grant), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    for server in [&a, &b] {
        let e = fetch(json!({"url": server.url("/big")}));
        ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
        let record = record_of(&env, &e).await;
        assert_eq!(record["error"].as_str(), Some("HttpResponseBodySize(Some(64))"), "{record}");
    }
    let big = "z".repeat(10_000);
    let e = fetch(json!({"url": a.url("/upload"), "method": "POST", "body": big}));
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    let record = record_of(&env, &e).await;
    assert_eq!(record["error"].as_str(), Some("HttpRequestBodySize(Some(64))"), "{record}");
    let uploads: Vec<String> = a.requests().into_iter().filter(|r| r.starts_with("post /upload")).collect();
    assert!(uploads.iter().all(|r| !r.contains(&big)), "the body was cut");
    host.stop_all().await;
}

/// Every attempt of a retried event sends the same `Idempotency-Key`; a subscriber with
/// `idempotency_key = false` sends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_is_equal_across_the_attempts_of_a_retried_event() {
    let server = Server::start(Reply::With(OK.into())).await;
    let env = Env::new();
    let grant = allow(&[server.url("")]);
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&grant), ""));
    env.add_plugin("nokey", fixtures::FETCHER, &fetcher_toml(Some(&format!("{grant}\nidempotency_key = false")), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let e = fetch(json!({"url": server.url("/charge"), "retry_below": 3}));
    ferry::outbox::publish(&mut conn, "events", &e).await.expect("publish");
    env.wait_for("three attempts of each subscriber", Duration::from_secs(60), || async {
        (server.requests().len() >= 6).then_some(())
    })
    .await;
    env.settled_groups("events", &["fetcher", "nokey"], Duration::from_secs(60)).await;
    let requests = server.requests();
    let key = format!("idempotency-key: fetcher:{}\r\n", e.id.to_ascii_lowercase());
    let keyed = requests.iter().filter(|r| r.contains(&key)).count();
    let without = requests.iter().filter(|r| !r.contains("idempotency-key")).count();
    assert_eq!((requests.len(), keyed, without), (6, 3, 3), "{requests:#?}");
    host.stop_all().await;
}

/// The host's shutdown does not wait on a hung server beyond `shutdown_grace`, even with a
/// long deadline and long HTTP timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_grace_while_a_call_hangs() {
    let server = Server::start(Reply::Never).await;
    let env = Env::new();
    let grant = format!("{}\nfirst_byte_timeout = \"10m\"", allow(&[server.url("")]));
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(Some(&grant), "[limits]\ndeadline = \"10m\""));
    let mut config = env.config();
    config.shutdown_grace = Duration::from_secs(1);
    let host = ferry::host::Host::start(config).await.expect("host");
    let mut conn = env.conn().await;
    ferry::outbox::publish(&mut conn, "events", &fetch(json!({"url": server.url("/hang")}))).await.expect("publish");
    env.wait_for("the request to reach the server", Duration::from_secs(30), || async {
        (!server.requests().is_empty()).then_some(())
    })
    .await;
    let stopping = Instant::now();
    host.stop_all().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?} (grace 1 s)");
}

/// A plugin whose component imports `wasi:http` is refused at load without an `[http]`
/// grant, with a message naming it, and with a grant entry that cannot be read, naming the
/// entry; `ferry plugins check` says which grant the import needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_importing_wasi_http_without_a_grant_is_refused_at_load() {
    let env = Env::new();
    env.add_plugin("fetcher", fixtures::FETCHER, &fetcher_toml(None, ""));
    env.add_plugin("badgrant", fixtures::FETCHER, &fetcher_toml(Some(r#"allow = ["https://api.example.com/v1"]"#), ""));
    env.add_plugin("granted", fixtures::FETCHER, &fetcher_toml(Some("allow = []"), ""));
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let plugins = host.plugins().await;
    let state = |name: &str| plugins.iter().find(|p| p.name == name).cloned().expect(name);
    let refused = state("fetcher");
    assert_eq!(refused.state, "refused");
    let error = refused.error.unwrap_or_default();
    assert!(error.contains("wasi:http") && error.contains("[subscribers.fetcher.http]"), "{error}");
    let bad = state("badgrant");
    assert_eq!(bad.state, "refused");
    assert!(bad.error.unwrap_or_default().contains("https://api.example.com/v1"), "the entry is named");
    assert_eq!(state("granted").state, "running", "an empty allow list loads (and refuses every request)");
    host.stop_all().await;
    // `ferry plugins check` names the grant too.
    let (status, stdout, _) = crate::support::ferry(&["plugins", "check", fixtures::FETCHER]);
    assert!(status.success());
    assert!(
        stdout.contains("imports wasi:http/outgoing-handler@") && stdout.contains("[subscribers.NAME.http]"),
        "{stdout}"
    );
}

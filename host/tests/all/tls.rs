//! TLS against real local servers with a CA made for each test (rcgen): `rediss://` to a
//! node and to a cluster (with a password: the scans that open a connection per primary keep
//! it), a wrong CA refused without showing the password, and the relay's PostgreSQL sessions
//! under `sslmode` (`verify-full` with `sslrootcert`, `require`, `prefer`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry::connection::Target;
use ferry::event::Event;
use ferry_test_fixtures as fixtures;
use ferry_test_kit::postgres_server::PostgresServer;
use ferry_test_kit::redis_server::{Options, RedisCluster, RedisServer, TlsFiles};
use redis::aio::MultiplexedConnection;

use crate::pg::{self, InProcessRelay, stream_events};
use crate::support::{Env, InProcessHost, RECORDER_TOML, records};

const PASSWORD: &str = "s3cret-hunter2";

/// A CA and a server certificate for `localhost` and `127.0.0.1` signed by it, as PEM files
/// in a temp dir; and a second CA that signed nothing (the wrong one).
struct Pki {
    /// Holds the files; removed on drop.
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Signed by the same CA, for `db.example.invalid` only (not the address dialled).
    other_name_cert: PathBuf,
    other_name_key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("ferry-pki-").tempdir().expect("temp dir");
        let ca = issuer("ferry test CA");
        let other = issuer("some other CA");
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry test server");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let other_key = rcgen::KeyPair::generate().expect("server key");
        let other_cert = rcgen::CertificateParams::new(vec!["db.example.invalid".to_string()])
            .expect("params")
            .signed_by(&other_key, &ca)
            .expect("server certificate");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("writing PEM");
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            cert: write("server.pem", &cert.pem()),
            key: write("server.key", &key.serialize_pem()),
            other_name_cert: write("other-name.pem", &other_cert.pem()),
            other_name_key: write("other-name.key", &other_key.serialize_pem()),
            _dir: dir,
        }
    }

    fn redis(&self) -> Options {
        Options {
            tls: Some(TlsFiles { cert: self.cert.clone(), key: self.key.clone(), ca: self.ca.clone() }),
            password: Some(PASSWORD.to_string()),
            ..Options::default()
        }
    }
}

fn issuer(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("CA key")).expect("CA")
}

/// A plain redis-rs connection over TLS trusting `ca`, for the test's own reads and writes.
async fn tls_conn(url: &str, ca: &Path) -> MultiplexedConnection {
    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).expect("CA")) };
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::build_with_tls(url, certs)
        .expect("TLS client")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connecting over TLS")
}

/// Run `ferry ARGS` (no `FERRY_*` variable of the caller's); (success, stdout, stderr).
async fn ferry_cli(args: &[&str]) -> (bool, String, String) {
    ferry_cli_env(args, &[]).await
}

/// Run `ferry ARGS` with `env` and no other `FERRY_*` variable of the caller's.
async fn ferry_cli_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(crate::support::ferry_bin());
        cmd.args(&args).env("FERRY_LOG", "warn").stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") && k != "FERRY_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env);
        let out = cmd.output().expect("running ferry");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("ferry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reads_and_handles_events_over_rediss_trusting_its_tls_ca() {
    let pki = Pki::new();
    let env = Env::with_redis(RedisServer::start_with_options(pki.redis()).expect("redis-server with TLS"));
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    config.redis = env.redis.tls_url();
    config.tls_ca = Some(pki.ca.clone());
    let host = InProcessHost::start(config);

    let mut conn = tls_conn(&env.redis.tls_url(), &pki.ca).await;
    let event = Event::new("Placed", "tests", r#"{"n":1}"#);
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publishing over TLS");
    let recs = env
        .wait_for("the event handled over rediss://", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move {
                let r = records(&mut conn, "records").await;
                (!r.is_empty()).then_some(r)
            }
        })
        .await;
    assert_eq!(recs[0]["id"], event.id, "{recs:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_a_password_protected_tls_cluster_handles_events_and_scans_keep_the_credentials() {
    let pki = Pki::new();
    let cluster = tokio::task::spawn_blocking({
        let options = pki.redis();
        move || RedisCluster::start_with_options(options)
    })
    .await
    .expect("spawn")
    .expect("a TLS cluster with a password");
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let seeds = cluster.tls_seeds();
    let mut config = env.config();
    config.redis = seeds.clone();
    config.cluster = true;
    config.tls_ca = Some(pki.ca.clone());
    let host = InProcessHost::start(config);

    let target = Target::new(&seeds, true).with_tls_ca(Some(pki.ca.clone()));
    let (_, mut conn) = ferry::connection::connect(&target).await.expect("connecting to the TLS cluster");
    let event = Event::new("Placed", "tests", r#"{"n":1}"#);
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publishing over TLS");
    let recs = env
        .wait_for("the event handled on the TLS cluster", Duration::from_secs(90), || {
            let mut conn = conn.clone();
            async move {
                let value: redis::Value = redis::cmd("XRANGE")
                    .arg("records")
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(redis::Value::Nil);
                let r = ferry::consume::read::parse_entries("records", value);
                (!r.is_empty()).then_some(r)
            }
        })
        .await;
    assert_eq!(recs.len(), 1);

    // A scan opens a connection of its own to each primary: with the seed's password, TLS
    // and CA (before, it dialled redis://host:port and the TLS port refused it).
    let names: Vec<String> = (0..12).map(|i| format!("tls-scan-{i}")).collect();
    for name in &names {
        let _: String =
            redis::cmd("XADD").arg(name).arg("*").arg("f").arg("v").query_async(&mut conn).await.expect("XADD");
    }
    let slots: std::collections::HashSet<usize> =
        names.iter().map(|n| cluster.primary_of(ferry::keys::slot(n)).expect("a primary")).collect();
    assert_eq!(slots.len(), 3, "the keys are spread over the three primaries");
    let found = ferry::connection::scan(&mut conn, "tls-scan-*", Some("stream")).await.expect("scanning every primary");
    let mut want = names.clone();
    want.sort();
    assert_eq!(found, want);

    // The CLI too: `ferry status` scans for the groups' streams on every primary.
    let ca = pki.ca.to_str().expect("utf-8").to_string();
    let (ok, out, err) = ferry_cli(&["status", "--cluster", "--redis", &seeds, "--tls-ca", &ca, "--json"]).await;
    assert!(ok, "ferry status on the TLS cluster: {out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert!(
        status.as_array().is_some_and(|g| g.iter().any(|g| g["group"] == "rec" && g["stream"] == "events")),
        "{status}"
    );
    assert!(!format!("{out}{err}").contains(PASSWORD), "{out}{err}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_with_a_clear_error_that_shows_no_password() {
    let pki = Pki::new();
    let redis = RedisServer::start_with_options(pki.redis()).expect("redis-server with TLS");
    let url = redis.tls_url();
    assert!(url.contains(PASSWORD));

    // A CA that did not sign the server's certificate.
    let wrong = Target::node(&url).with_tls_ca(Some(pki.other_ca.clone()));
    let err = format!("{:#}", ferry::connection::connect(&wrong).await.err().expect("refused"));
    assert!(err.contains("cannot reach Redis at rediss://default:***@127.0.0.1"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "says what was wrong: {err}");
    assert!(!err.contains(PASSWORD), "{err}");

    // No CA: the system's roots do not know the test CA either.
    let err = format!("{:#}", ferry::connection::connect(&Target::node(&url)).await.err().expect("refused"));
    assert!(err.to_lowercase().contains("certificate") && !err.contains(PASSWORD), "{err}");

    // A CA for a plain redis:// URL would protect nothing: refused, not ignored.
    let plain = format!("redis://default:{PASSWORD}@127.0.0.1:{}", redis.port());
    let err = format!(
        "{:#}",
        ferry::connection::connect(&Target::node(&plain).with_tls_ca(Some(pki.ca.clone())))
            .await
            .err()
            .expect("refused")
    );
    assert!(err.contains("not a rediss:// URL") && !err.contains(PASSWORD), "{err}");

    // The right CA works; and the CLI says the same as the library, redacted.
    ferry::connection::connect(&Target::node(&url).with_tls_ca(Some(pki.ca.clone()))).await.expect("the right CA");
    let other = pki.other_ca.to_str().expect("utf-8").to_string();
    let (ok, out, err) = ferry_cli(&["status", "--redis", &url, "--tls-ca", &other]).await;
    assert!(!ok, "{out}{err}");
    assert!(err.contains("rediss://default:***@") && err.to_lowercase().contains("certificate"), "{err}");
    assert!(!format!("{out}{err}").contains(PASSWORD), "{out}{err}");
    // FERRY_TLS_CA names the right one; the flag overrides it.
    let ca = pki.ca.to_str().expect("utf-8").to_string();
    let (ok, out, err) = ferry_cli_env(&["status", "--redis", &url], &[("FERRY_TLS_CA", &ca)]).await;
    assert!(ok, "FERRY_TLS_CA is read: {out}{err}");
    let (ok, out, err) =
        ferry_cli_env(&["status", "--redis", &url, "--tls-ca", &other], &[("FERRY_TLS_CA", &ca)]).await;
    assert!(!ok && !format!("{out}{err}").contains(PASSWORD), "--tls-ca overrides FERRY_TLS_CA: {out}{err}");
}

/// A PostgreSQL that accepts TCP only over TLS, with the outbox table, created through the
/// relay's own connect (TLS, verify-full).
async fn tls_postgres(pki: &Pki) -> (PostgresServer, String) {
    let pg = tokio::task::block_in_place(|| PostgresServer::start_with_tls(&pki.cert, &pki.key))
        .expect("starting postgres with ssl");
    // A password in the URL (the server trusts local connections and ignores it): every
    // message below must hide it.
    let base = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());
    let verify_full = format!("{base}?sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let (client, _) = ferry::relay::connect(&verify_full, "test").await.expect("connecting with verify-full");
    ferry::relay::manage::init(&client, &ferry::relay::Table::default()).await.expect("creating the outbox table");
    (pg, base)
}

/// Run a relay with `postgres` until row `id` is in the stream.
async fn relay_one_row(env: &Env, postgres: &str, client: &tokio_postgres::Client, what: &str) {
    let mut settings = pg::settings_for(postgres, &env.redis.url());
    settings.poll = Duration::from_millis(100);
    let relay = InProcessRelay::start(settings);
    let id = pg::insert_plain(client, "Placed", r#"{"n": 1}"#).await.to_string();
    let conn = env.conn().await;
    env.wait_for(what, Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let id = id.clone();
        async move { stream_events(&mut conn, "events").await.iter().any(|e| e.id == id).then_some(()) }
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_moves_rows_over_tls_with_verify_full_require_and_prefer() {
    let pki = Pki::new();
    let env = Env::new();
    let (pg, base) = tls_postgres(&pki).await;
    let verify_full = format!("{base}?sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let (client, _) = ferry::relay::connect(&verify_full, "test producer").await.expect("producer");

    relay_one_row(&env, &verify_full, &client, "a row relayed with sslmode=verify-full").await;
    relay_one_row(&env, &format!("{base}?sslmode=require"), &client, "a row relayed with sslmode=require").await;
    // `prefer` (the default) tries TLS first: this server refuses plaintext.
    relay_one_row(&env, &base, &client, "a row relayed with the default sslmode (prefer)").await;

    // Every session of this server is encrypted (pg_hba has only hostssl lines); the
    // producer's own says so.
    let ssl: bool = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl);

    // verify-full against the wrong CA: refused, clearly, without the password.
    let wrong = format!("{base}?sslmode=verify-full&sslrootcert={}", pki.other_ca.display());
    let err = ferry::relay::connect(&wrong, "test").await.expect_err("refused").to_string();
    assert!(err.contains("TLS") && err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    // The CLI shows the address redacted.
    let (ok, out, err) = ferry_cli(&["relay", "status", "--postgres", &wrong]).await;
    assert!(!ok && err.contains("postgres:***@127.0.0.1"), "{out}{err}");
    assert!(!format!("{out}{err}").contains(PASSWORD), "{out}{err}");
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_fails_against_a_server_without_tls_and_prefer_warns_that_it_fell_back() {
    let pg = pg::start().await;
    let base = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());

    let err = ferry::relay::connect(&format!("{base}?sslmode=require"), "test").await.expect_err("refused");
    let err = err.to_string();
    assert!(err.contains("server does not support TLS"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    // `prefer` connects in plaintext to a server without TLS, and says so.
    let (ok, out, err) = ferry_cli(&["relay", "status", "--postgres", &base]).await;
    assert!(ok, "{out}{err}");
    assert!(err.contains("not encrypted"), "the fallback is logged: {err}");
    assert!(!format!("{out}{err}").contains(PASSWORD), "{out}{err}");

    // A Unix socket (no TLS there, no host name to verify) still connects under the default.
    let socket = format!("host={} port={} user=postgres dbname=postgres", pg.dir().display(), pg.port());
    ferry::relay::connect(&socket, "test").await.expect("connecting over the Unix socket");

    // An unknown sslmode is refused without quoting the URL.
    let err = ferry::relay::connect(&format!("{base}?sslmode=verify"), "test").await.expect_err("refused").to_string();
    assert!(err.contains("unknown sslmode") && !err.contains(PASSWORD), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_for_another_name_that_verify_ca_and_require_accept() {
    let pki = Pki::new();
    let pg = tokio::task::block_in_place(|| PostgresServer::start_with_tls(&pki.other_name_cert, &pki.other_name_key))
        .expect("starting postgres with ssl");
    let base = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres", pg.port());
    let ca = pki.ca.display();

    let err = ferry::relay::connect(&format!("{base}?sslmode=verify-full&sslrootcert={ca}"), "test")
        .await
        .expect_err("verify-full checks the name")
        .to_string();
    assert!(err.contains("not valid for name") && err.contains("not for the host name"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    // verify-ca checks the chain only; require with a root certificate does as verify-ca
    // (libpq's rule), so the wrong CA is refused there but this one passes.
    ferry::relay::connect(&format!("{base}?sslmode=verify-ca&sslrootcert={ca}"), "test").await.expect("verify-ca");
    ferry::relay::connect(&format!("{base}?sslmode=require&sslrootcert={ca}"), "test")
        .await
        .expect("require with sslrootcert");
    let other = pki.other_ca.display();
    let err = ferry::relay::connect(&format!("{base}?sslmode=require&sslrootcert={other}"), "test")
        .await
        .expect_err("require with a root certificate checks the chain")
        .to_string();
    assert!(err.contains("UnknownIssuer") && !err.contains(PASSWORD), "{err}");
}

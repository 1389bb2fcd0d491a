//! Redis connections, to one node or to a Redis Cluster, behind one type.
//!
//! Everything ferry sends is either keyed on one hash slot (a script over one stream's keys,
//! an `XADD`) or sent to one node on purpose (a scan), so the rest of the code works on
//! [`Conn`] whatever the deployment. Two kinds of connection exist, as the field notes
//! require: the shared one ([`Redis::shared`]) for settles, scripts and reads that do not
//! block, and a dedicated one per blocking reader ([`Redis::dedicated`]): a blocked
//! `XREADGROUP` on a shared multiplexed (or cluster) connection stalls every command behind
//! it. Response timeouts always exceed the blocking time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::redact::redact;
use anyhow::Context as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionAddr, Pipeline, RedisFuture, TlsCertificates, Value};

/// Where Redis is (one node, or the seed nodes of a cluster) and what TLS trusts there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node or the seeds.
    pub nodes: Nodes,
    /// A PEM CA bundle that replaces the system's roots for `rediss://` (config `tls_ca`):
    /// for a private or self-signed CA. `None`: the system's roots.
    pub tls_ca: Option<PathBuf>,
}

/// The addresses of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// A single node (or a proxy): one URL.
    Node(String),
    /// A Redis Cluster: seed node URLs; the client discovers the rest.
    Cluster(Vec<String>),
}

impl Target {
    /// `redis` as given on the command line or in the config: with `cluster`, a
    /// comma-separated list of seed nodes. The system's roots for TLS.
    pub fn new(redis: &str, cluster: bool) -> Self {
        let nodes = if cluster {
            Nodes::Cluster(redis.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        } else {
            Nodes::Node(redis.to_string())
        };
        Self { nodes, tls_ca: None }
    }

    /// One node at `url`, trusting the system's roots.
    pub fn node(url: impl Into<String>) -> Self {
        Self { nodes: Nodes::Node(url.into()), tls_ca: None }
    }

    /// The same target, trusting only the CA bundle at `ca` (when given) for `rediss://`.
    pub fn with_tls_ca(mut self, ca: Option<PathBuf>) -> Self {
        self.tls_ca = ca;
        self
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match &self.nodes {
            Nodes::Node(url) => crate::redact::redact(url),
            Nodes::Cluster(seeds) => format!("the cluster at {}", crate::redact::redact(&seeds.join(","))),
        }
    }

    /// The CA bundle as redis-rs takes it, after checking that every URL uses TLS: a CA set
    /// for a plain `redis://` address would protect nothing, so it is refused rather than
    /// ignored.
    fn certificates(&self) -> anyhow::Result<Option<TlsCertificates>> {
        let Some(path) = &self.tls_ca else { return Ok(None) };
        let urls = match &self.nodes {
            Nodes::Node(url) => std::slice::from_ref(url),
            Nodes::Cluster(seeds) => seeds.as_slice(),
        };
        if let Some(plain) = urls.iter().find(|u| !u.starts_with("rediss://")) {
            anyhow::bail!("tls_ca is set but {} is not a rediss:// URL", redact(plain));
        }
        let ca = crate::tls::read_ca(path)?;
        Ok(Some(TlsCertificates { client_tls: None, root_cert: Some(ca.pem) }))
    }
}

/// A client for a [`Target`]: opens connections.
#[derive(Clone)]
pub enum Redis {
    /// One node (boxed: with TLS settings a client is large).
    Node(Box<redis::Client>),
    /// A cluster, with a client for its first seed: the template of the connections opened
    /// to one node on purpose (scans), so they keep the seed's credentials and TLS settings.
    Cluster(Box<ClusterClient>, Arc<redis::Client>),
}

/// A connection to a node or a cluster; cheap to clone (clones share the connection).
#[derive(Clone)]
pub enum Conn {
    /// The shared connection to one node: reconnects by itself.
    Managed(ConnectionManager),
    /// A dedicated connection to one node.
    Node(MultiplexedConnection),
    /// A connection to a cluster: follows `MOVED`/`ASK` and retries `TRYAGAIN`/`CLUSTERDOWN`.
    /// With the template for connections to one of its nodes (see [`Redis::Cluster`]).
    Cluster(ClusterConnection, Arc<redis::Client>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c, _) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Node(c) => c.get_db(),
            Self::Cluster(c, _) => c.get_db(),
        }
    }
}

impl Redis {
    /// A client for `target` (no connection yet). With `target.tls_ca`, TLS trusts only that
    /// bundle; `rediss://` without it trusts the system's roots.
    pub fn open(target: &Target) -> anyhow::Result<Self> {
        let certs = target.certificates()?;
        let node = |url: &str| -> anyhow::Result<redis::Client> {
            // Neither the URL nor the parser's message (which may quote it) is shown as is.
            let client = match &certs {
                Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
                None => redis::Client::open(url),
            };
            client.map_err(|e| anyhow::anyhow!("invalid Redis URL {}: {}", redact(url), redact(&e.to_string())))
        };
        Ok(match &target.nodes {
            Nodes::Node(url) => Self::Node(Box::new(node(url)?)),
            Nodes::Cluster(seeds) => {
                anyhow::ensure!(!seeds.is_empty(), "--cluster needs at least one seed node in --redis");
                let template = Arc::new(node(&seeds[0])?);
                let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(10))
                    .retries(16)
                    // A node that stays unreachable (a primary that died for good) is dropped
                    // after 8 attempts (~5 s of backoff) instead of being dialled every second
                    // for ever by every connection whose slot map still lists it (one that
                    // never sends a command to its slots never learns it left). A request
                    // for its slots then finds the new primary through `MOVED`; a node that
                    // comes back is added again by the next topology refresh.
                    .max_connection_attempts(std::num::NonZeroUsize::new(8).expect("8 > 0"));
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(|e| {
                    anyhow::anyhow!(
                        "invalid Redis Cluster seeds {}: {}",
                        redact(&seeds.join(",")),
                        redact(&e.to_string())
                    )
                })?;
                Self::Cluster(Box::new(client), template)
            }
        })
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(..))
    }

    /// The shared connection: settles, scripts, housekeeping, reads that do not block.
    pub async fn shared(&self) -> redis::RedisResult<Conn> {
        match self {
            Self::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(10)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                Ok(Conn::Managed(client.get_connection_manager_with_config(config).await?))
            }
            Self::Cluster(client, template) => {
                Ok(Conn::Cluster(client.get_async_connection().await?, template.clone()))
            }
        }
    }

    /// A connection of its own for a reader that blocks up to `block`.
    pub async fn dedicated(&self, block: Duration) -> redis::RedisResult<Conn> {
        let timeout = block + Duration::from_secs(5);
        match self {
            Self::Node(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(timeout));
                Ok(Conn::Node(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Self::Cluster(client, template) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(timeout);
                Ok(Conn::Cluster(client.get_async_connection_with_config(config).await?, template.clone()))
            }
        }
    }
}

/// How far a write must reach before ferry counts it as done. Redis replicates
/// asynchronously: a primary killed right after a write can lose it when its replica takes
/// over. `Replicated` makes ferry's own writes (publish, settles, forwarded follow-ups, the
/// relay) wait for one replica with `WAIT 1 timeout` and report when none confirmed in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Done when the primary has it (Redis's default). Fastest; a failover may lose the
    /// newest writes.
    #[default]
    Primary,
    /// Done when one replica has it too.
    Replicated,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(Self::Primary),
            "replicated" => Ok(Self::Replicated),
            other => Err(format!("unknown durability {other:?}: expected \"primary\" or \"replicated\"")),
        }
    }
}

/// What ferry's writes do under `durability = "replicated"` when no replica confirms them:
/// the primary serving their slot has no replica (its own died and it was promoted, or the
/// replica is down) or none answered within `durability_timeout`. Kafka's
/// `min.insync.replicas` and Redis's `min-replicas-to-write` make the same choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingReplica {
    /// No progress and nothing unconfirmed (the default): a settle waits until a replica has
    /// it before the next one, the stream key is not read meanwhile, a follow-up stays in its
    /// forward key, a relayed row stays unmarked. Consuming resumes by itself once a replica
    /// confirms (the operator's action: add a replica).
    #[default]
    Wait,
    /// Progress: every write that no replica confirmed is counted
    /// (`ferry_writes_unconfirmed_total`) and goes ahead; a settle's later `WAIT` on the same
    /// connection confirms the earlier ones once a replica is back.
    Continue,
}

impl std::str::FromStr for OnMissingReplica {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wait" => Ok(Self::Wait),
            "continue" => Ok(Self::Continue),
            other => Err(format!("unknown durability_on_missing_replica {other:?}: expected \"wait\" or \"continue\"")),
        }
    }
}

impl OnMissingReplica {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wait => "wait",
            Self::Continue => "continue",
        }
    }
}

/// A durability setting with the time a write may wait for its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// What a write must reach.
    pub durability: Durability,
    /// How long `WAIT` waits for a replica.
    pub timeout: Duration,
}

impl Replication {
    /// Writes are done when the primary has them.
    pub const PRIMARY: Self = Self { durability: Durability::Primary, timeout: Duration::from_secs(1) };

    /// Whether writes wait for a replica.
    pub fn waits(&self) -> bool {
        self.durability == Durability::Replicated
    }

    /// `WAIT 1 timeout-ms` (never `0`, which would wait forever).
    pub fn wait_cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(1).arg((self.timeout.as_millis() as u64).max(1));
        cmd
    }

    /// Whether a `WAIT` reply counts as replicated.
    pub fn check(&self, reply: &Value) -> Result<(), NotReplicated> {
        match reply {
            Value::Int(n) if *n >= 1 => Ok(()),
            _ => Err(NotReplicated::Shortfall(self.timeout)),
        }
    }

    /// End `pipe` with a `WAIT` when writes wait for a replica: sent in the same pipeline, it
    /// covers exactly the pipeline's writes. Read its answer with [`Replication::take_wait`].
    pub fn append_wait(&self, pipe: &mut Pipeline) {
        if self.waits() {
            pipe.add_command(self.wait_cmd());
        }
    }

    /// Remove the answer of the `WAIT` that [`Replication::append_wait`] added from the end
    /// of `replies` and check it (nothing to do when writes do not wait).
    pub fn take_wait(&self, replies: &mut Vec<Value>) -> Result<(), NotReplicated> {
        if !self.waits() {
            return Ok(());
        }
        self.check(&replies.pop().unwrap_or(Value::Nil))
    }
}

/// A write that reached its primary but is not known to be on a replica.
#[derive(Debug, thiserror::Error)]
pub enum NotReplicated {
    /// `WAIT` answered that no replica confirmed in time.
    #[error("reached the primary but no replica confirmed it within {0:?}; writing it again is safe")]
    Shortfall(Duration),
    /// `WAIT` itself failed.
    #[error("reached the primary but could not ask for a replica's confirmation ({0}); writing it again is safe")]
    Redis(#[from] redis::RedisError),
}

impl NotReplicated {
    /// As a Redis error about `what` (for code that reports Redis errors): a failed `WAIT`
    /// stays itself, a shortfall becomes an I/O error that says what fell short.
    pub fn into_redis(self, what: &'static str) -> redis::RedisError {
        match self {
            Self::Redis(e) => e,
            shortfall => redis::RedisError::from((redis::ErrorKind::Io, what, shortfall.to_string())),
        }
    }
}

/// Wait until one replica has every write made so far on `conn` to `key`'s node (`WAIT 1`).
/// On a cluster the `WAIT` goes to the primary serving `key`'s slot, on the connection the
/// writes went through. Prefer sending the `WAIT` in the same pipeline as the writes where
/// one is at hand ([`Replication::wait_cmd`]): a connection re-made between the writes and a
/// separate `WAIT` confirms nothing of the old one's writes.
pub async fn replicated(conn: &mut Conn, key: &str, replication: Replication) -> Result<(), NotReplicated> {
    if !replication.waits() {
        return Ok(());
    }
    let reply = to_primary_of(conn, key, replication.wait_cmd()).await?;
    replication.check(&reply)
}

/// Send `cmd` to the node serving `key`: on a cluster the primary of `key`'s slot (for
/// commands without a key, such as `WAIT` or `ROLE`), else the one node.
///
/// On a cluster the command rides in a pipeline behind an `EXISTS key`, which the client
/// routes by the key and follows through `MOVED`: a command routed to "the primary of slot S"
/// alone goes to *any* node while the client's slot map still names a primary that died (its
/// fallback for an unreachable primary is a random node), so a `WAIT` would be answered by a
/// node that never saw the writes, and confirm them falsely.
async fn to_primary_of(conn: &mut Conn, key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
    match conn {
        Conn::Cluster(..) => {
            let mut pipe = redis::pipe();
            pipe.cmd("EXISTS").arg(key).ignore().add_command(cmd);
            let (reply,): (Value,) = pipe.query_async(conn).await?;
            Ok(reply)
        }
        other => cmd.query_async(other).await,
    }
}

/// The primary serving `key` as it sees itself: its `host:port` (on a cluster, from its own
/// line of `CLUSTER NODES`) and how many replicas it has that are not failed. For saying why
/// a `WAIT` fell short.
pub async fn replicas_of(conn: &mut Conn, key: &str) -> redis::RedisResult<(Option<String>, usize)> {
    let nodes = to_primary_of(conn, key, redis::cmd("CLUSTER").arg("NODES").clone()).await;
    if let Ok(nodes) = nodes.and_then(|v| redis::from_redis_value::<String>(v).map_err(Into::into)) {
        return Ok(replicas_in(&nodes));
    }
    // Not a cluster: `ROLE` lists the connected replicas.
    let role = to_primary_of(conn, key, redis::cmd("ROLE")).await?;
    let replicas = match role {
        Value::Array(parts) => match parts.get(2) {
            Some(Value::Array(replicas)) => replicas.len(),
            _ => 0,
        },
        _ => 0,
    };
    Ok((None, replicas))
}

/// From a node's `CLUSTER NODES`: its own address and the number of its replicas not failed.
fn replicas_in(nodes: &str) -> (Option<String>, usize) {
    let fields = |line: &str| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let Some(me) = nodes.lines().map(fields).find(|f| f.len() > 2 && f[2].contains("myself")) else {
        return (None, 0);
    };
    let addr = me[1].split('@').next().unwrap_or(&me[1]).to_string();
    let replicas = nodes
        .lines()
        .map(fields)
        .filter(|f| f.len() > 3 && f[3] == me[0] && f[2].contains("slave") && !f[2].contains("fail"))
        .count();
    (Some(addr), replicas)
}

/// Connect to `target`, failing with a clear message when it is unreachable: the client
/// and its shared connection.
pub async fn connect(target: &Target) -> anyhow::Result<(Redis, Conn)> {
    let redis = Redis::open(target)?;
    let what = target.describe();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), redis.shared())
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .map_err(|e| anyhow::anyhow!(redact(&crate::tls::explain(&*e, "tls_ca"))))
        .with_context(|| format!("cannot reach Redis at {what}"))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!(redact(&e.to_string())))
        .with_context(|| format!("cannot reach Redis at {what}"))?;
    Ok((redis, conn))
}

/// A connection [`scan`] can read every primary through.
pub trait Scan: ConnectionLike {
    /// The client whose settings (scheme, TLS roots, user, password) a connection of one's
    /// own to one cluster node copies; `None` when there is none to copy (a connection made
    /// outside [`Redis`]: a node is then dialled at `redis://host:port`).
    fn node_template(&self) -> Option<Arc<redis::Client>> {
        None
    }
}

impl Scan for Conn {
    fn node_template(&self) -> Option<Arc<redis::Client>> {
        match self {
            Self::Cluster(_, template) => Some(template.clone()),
            Self::Managed(_) | Self::Node(_) => None,
        }
    }
}

impl Scan for MultiplexedConnection {}
impl Scan for ConnectionManager {}
impl Scan for ClusterConnection {}

/// Every key matching `pattern` (of `kind`, e.g. `stream`, if given), on every primary: a
/// `SCAN` sees one node, so on a cluster each primary (from `CLUSTER NODES`) is scanned on a
/// connection of its own, opened like the first seed's (its user, password, `rediss://` and
/// CA: a node that requires them refuses a connection without).
pub async fn scan<C: Scan>(conn: &mut C, pattern: &str, kind: Option<&str>) -> redis::RedisResult<Vec<String>> {
    let nodes: redis::RedisResult<String> = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await;
    let Ok(nodes) = nodes else { return scan_node(conn, pattern, kind).await };
    let template = match conn.node_template() {
        Some(t) => t,
        None => Arc::new(redis::Client::open("redis://127.0.0.1")?),
    };
    let mut out = Vec::new();
    for addr in primaries(&nodes) {
        let mut node = node_connection(&template, &addr).await?;
        out.extend(scan_node(&mut node, pattern, kind).await?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A connection to the node at `addr` (`host:port`, as `CLUSTER NODES` lists it) with
/// everything else from `template`: the same scheme (TLS or not) and trusted roots, the same
/// user, password and protocol.
async fn node_connection(template: &redis::Client, addr: &str) -> redis::RedisResult<MultiplexedConnection> {
    let invalid =
        || redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid node address", addr.to_string()));
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let info = template.get_connection_info().clone();
    let addr = match info.addr().clone() {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host, port, insecure, tls_params }
        }
        _ => ConnectionAddr::Tcp(host, port),
    };
    let client = redis::Client::open(info.set_addr(addr))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// The `host:port` of every primary that is not failed, from a `CLUSTER NODES` reply.
pub fn primaries(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (_, addr, flags) = (parts.next()?, parts.next()?, parts.next()?);
            let primary = flags.split(',').any(|f| f == "master") && !flags.contains("fail");
            primary.then(|| addr.split('@').next().unwrap_or(addr).to_string())
        })
        .collect()
}

async fn scan_node<C: ConnectionLike>(
    conn: &mut C,
    pattern: &str,
    kind: Option<&str>,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
        if let Some(kind) = kind {
            cmd.arg("TYPE").arg(kind);
        }
        let (next, batch): (u64, Vec<String>) = cmd.query_async(conn).await?;
        out.extend(batch);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_target_is_a_list_of_seeds() {
        assert_eq!(
            Target::new("redis://a:1, redis://b:2,", true).nodes,
            Nodes::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(Target::new("redis://a:1", false), Target::node("redis://a:1"));
    }

    #[test]
    fn a_primary_counts_its_replicas_that_are_not_failed() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 slave a1 0 0 1 connected\n\
                     c3 127.0.0.1:7002@17002 slave,fail a1 0 0 2 disconnected\n\
                     d4 127.0.0.1:7003@17003 slave e5 0 0 3 connected\n";
        assert_eq!(replicas_in(nodes), (Some("127.0.0.1:7000".into()), 1));
        let alone = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n";
        assert_eq!(replicas_in(alone), (Some("127.0.0.1:7000".into()), 0));
    }

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 slave a1 0 0 1 connected\n\
                     c3 127.0.0.1:7002@17002 master,fail - 0 0 2 disconnected\n\
                     d4 127.0.0.1:7003@17003 master - 0 0 3 connected 5461-10922\n";
        assert_eq!(primaries(nodes), vec!["127.0.0.1:7000".to_string(), "127.0.0.1:7003".to_string()]);
    }
}

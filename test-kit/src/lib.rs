//! ferry's test kit: throwaway servers with their own ports and temp dirs, stopped on drop,
//! so no test, demo run or benchmark depends on a server already running or shares state
//! with another.
//!
//! - [`redis_server`]: a `redis-server` ([`RedisServer`], with TLS and a password as
//!   [`Options`] say) and a local Redis Cluster ([`RedisCluster`]: failover, replicas,
//!   slot migration).
//! - [`postgres_server`]: a PostgreSQL ([`PostgresServer`]), plain or TLS only.
//!
//! A crate of its own rather than modules of the `ferry` library: the library runs in
//! production and has no business starting servers. The tests, `ferry demo` and `ferry bench`
//! share it.

pub mod postgres_server;
pub mod redis_server;

pub use postgres_server::PostgresServer;
pub use redis_server::{Options, RedisCluster, RedisServer, TlsFiles};

//! ferry's integration tests: one binary (as wasmtime's `tests/all`), real `redis-server`
//! processes and real components built from source.

mod pg;
mod support;

mod cli;
mod cluster;
mod cluster_faults;
mod console;
mod console_browser;
mod contracts;
mod delivery;
mod e2e;
mod edges;
mod guarantees;
mod http;
mod invoke;
mod observability;
mod polyglot;
mod recovery;
mod relay;
mod relay_partitions;
mod reload;
mod replica_loss;
mod replication;
mod retention;
mod sandbox;
mod scripts;
mod security;
mod state;
mod state_faults;
mod tls;

//! The `state` capability (`ferry:plugin@0.2.0`): the subscriber's own keys and values,
//! changed exactly once per event.
//!
//! Grant: `state = true` (or a `[subscribers.NAME.state]` table of bounds) in the operator's
//! `[subscribers.NAME]` or the plugin's `NAME.toml`; off by default, and a call without it
//! fails and the event is retried naming the grant (the operator's to fix, as for
//! `publish`). Each call of the handler gets a [`Txn`] on the subscriber's state hash of the
//! stream the event came from (`keys::state`, in the stream's slot): reads go to Redis (the
//! event's partition key's state was read ahead with its start, `consume/start.lua`) and
//! see the event's own writes; writes stay in the transaction, and [`Capability::finish`]
//! hands them to the settle as [`Effects::state`], which commits them with the `XACK` only if
//! every key the event read is unchanged (`consume/settle.lua`, `ackst`). A handler that fails,
//! traps or times out never reaches `finish`: its writes are dropped with its store's call.
//!
//! Where no Redis runs (`ferry plugins invoke`), the state is a [`Memory`] the caller seeds
//! (`Services::memory`): the same [`Txn`], reading from memory, its writes applied there.

pub mod stored;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::seam::{Capability, Current, Services};
use crate::config::{Effective, StateLimits};
use crate::connection::Conn;
use crate::handler::{Effects, StateCommit};
use crate::plugin::bindings::v0_2;
use crate::plugin::contract::Contract;
use crate::plugin::state::{Memory, Source, StateError, Stored, Txn};

/// The `state` capability.
pub struct State;

/// What a subscriber was granted: its bounds (none: not granted) and where state lives.
pub struct StateGrant {
    subscriber: Arc<str>,
    limits: Option<StateLimits>,
    redis: Option<Conn>,
    /// The state in memory when there is no Redis.
    memory: Option<Memory>,
    watch: Option<super::seam::Watch>,
}

impl std::fmt::Debug for StateGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateGrant").field("limits", &self.limits).field("redis", &self.redis.is_some()).finish()
    }
}

/// A store's state: the grant and the current call's transaction.
pub struct StateCtx {
    grant: Arc<StateGrant>,
    txn: Option<Txn>,
    denied: Option<String>,
}

impl Capability for State {
    type Grant = StateGrant;
    type Ctx = StateCtx;

    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "state",
        "keeps state committed with each event: needs `state = true` in `[subscribers.NAME]` (or NAME.toml)",
    )];

    fn grant(subscriber: &Arc<str>, settings: &Effective, services: &Services) -> StateGrant {
        StateGrant {
            subscriber: subscriber.clone(),
            limits: settings.state,
            redis: services.redis.clone(),
            memory: services.memory.clone(),
            watch: services.watch.clone(),
        }
    }

    fn ctx(grant: &Arc<StateGrant>) -> StateCtx {
        StateCtx { grant: grant.clone(), txn: None, denied: None }
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        contract: Contract,
        get: fn(&mut T) -> &mut StateCtx,
    ) -> wasmtime::Result<()> {
        match contract {
            Contract::V0_1 => Ok(()),
            Contract::V0_2 => v0_2::ferry::plugin::state::add_to_linker::<T, HasSelf<StateCtx>>(linker, get),
        }
    }

    fn begin(ctx: &mut StateCtx, current: &Arc<Current>) {
        ctx.denied = None;
        ctx.txn = ctx.grant.limits.map(|limits| {
            Txn::new(crate::keys::state(&current.stream, &ctx.grant.subscriber), limits)
                .with_prefetched(current.prefetched.clone())
        });
    }

    fn finish(ctx: &mut StateCtx, effects: &mut Effects) {
        if let Some(txn) = ctx.txn.take().filter(|t| !t.is_empty()) {
            if let Some(watch) = &ctx.grant.watch {
                let writes = txn.writes().iter().map(|(k, v)| (k.clone(), v.clone()));
                watch.record(|seen| seen.writes.extend(writes));
            }
            if ctx.grant.redis.is_none()
                && let Some(memory) = &ctx.grant.memory
            {
                memory.apply(txn.writes());
                return;
            }
            effects.state = Some(StateCommit { args: txn.commit_args() });
        }
    }

    fn denied(ctx: &mut StateCtx) -> Option<String> {
        ctx.denied.take()
    }
}

impl StateCtx {
    /// The call's transaction and where it reads, or why there is none.
    fn open(&mut self) -> Result<(&mut Txn, Reads), String> {
        let Some(txn) = self.txn.as_mut() else {
            let message = format!(
                "state is not granted to this plugin: grant it with `state = true` in its `[subscribers.{}]` (or its NAME.toml)",
                crate::redact::escape(&self.grant.subscriber)
            );
            self.denied = Some(message.clone());
            return Err(message);
        };
        let reads = match (&self.grant.redis, &self.grant.memory) {
            (Some(conn), _) => Reads::Redis(conn.clone()),
            (None, Some(memory)) => Reads::Memory(memory.clone()),
            (None, None) => return Err("state is unavailable here: no Redis".into()),
        };
        Ok((txn, reads))
    }
}

/// Where a call's transaction reads the committed state.
enum Reads {
    Redis(Conn),
    Memory(Memory),
}

impl Source for Reads {
    async fn read(&mut self, hash: &str, keys: &[&str]) -> Result<Vec<Stored>, StateError> {
        match self {
            Self::Redis(conn) => conn.read(hash, keys).await,
            Self::Memory(memory) => memory.read(hash, keys).await,
        }
    }
}

impl v0_2::ferry::plugin::state::Host for StateCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let (txn, mut conn) = self.open()?;
        txn.get(&mut conn, &key).await.map_err(|e| e.to_string())
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, String> {
        let (txn, mut conn) = self.open()?;
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        txn.get_many(&mut conn, &keys).await.map_err(|e| e.to_string())
    }

    async fn exists(&mut self, key: String) -> Result<bool, String> {
        let (txn, mut conn) = self.open()?;
        txn.exists(&mut conn, &key).await.map_err(|e| e.to_string())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let (txn, _) = self.open()?;
        txn.set(&key, value).map_err(|e| e.to_string())
    }

    fn delete(&mut self, key: String) -> Result<(), String> {
        let (txn, _) = self.open()?;
        txn.delete(&key).map_err(|e| e.to_string())
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, String> {
        let (txn, mut conn) = self.open()?;
        txn.increment(&mut conn, &key, delta).await.map_err(|e| e.to_string())
    }
}

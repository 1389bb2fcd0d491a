//! A store for one plugin instance: its state, its limiter and the epoch callback that
//! enforces deadlines and shares the CPU (see `schedule`), and marking a call on it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::capability::Grants;
use super::engine::Engine;
use super::sandbox::HostState;
use super::schedule::{CallState, on_tick};

/// A store for `grants`, with its limiter, the epoch callback that enforces deadlines and
/// shares the CPU, and nothing else granted.
pub fn new_store(engine: &Engine, grants: Arc<Grants>) -> Store<HostState> {
    let fuel = grants.limits.fuel;
    let mut store = Store::new(&engine.engine, HostState::new(grants));
    store.limiter(|state| state.limiter());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| Ok(on_tick(ctx.data().call.as_ref())));
    if engine.config.fuel {
        // Without a configured budget a metered engine still needs fuel to run at all.
        let _ = store.set_fuel(fuel.unwrap_or(u64::MAX));
    }
    store
}

/// Mark `store` as running a call with `deadline` for the epoch callback; returns when the
/// call started. Wrap the call in `tokio::time::timeout(cutoff(deadline), ..)` and [`disarm`]
/// after.
pub fn arm(store: &mut Store<HostState>, engine: &Engine, deadline: Duration, penalized: bool) -> Instant {
    let started = Instant::now();
    store.data_mut().call = Some(CallState {
        deadline_at: started + deadline,
        permit: Arc::new(Mutex::new(None)),
        permits: engine.permits.clone(),
        ticks: Arc::default(),
        penalized,
    });
    // Fire the callback at the next tick: that is where the deadline and the permits live.
    store.set_epoch_deadline(1);
    started
}

/// The call on `store` is over: give its permit back.
pub fn disarm(store: &mut Store<HostState>) {
    store.data_mut().call = None;
}

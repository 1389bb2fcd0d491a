//! The subscriber's own state (`ferry:plugin@0.2.0`), changed exactly once per event.
//!
//! Reads see the committed state plus this event's own writes. Writes are kept by the host
//! and committed with the event's acknowledgement: a handler that returns an error (or traps,
//! or runs out of time) leaves none behind, and a retried event starts again from the
//! committed state. Concurrent events that read and write one key lose no update: the host
//! checks at the commit that every key the event read is unchanged, and runs it again if not.
//! So write the handler as if it ran alone, once.
//!
//! Needs the operator's grant, `state = true` in the subscriber's config: without it every
//! call fails and the event is retried, naming the grant. Keys are at most 512 bytes and
//! values 64 KiB unless the operator says otherwise.
//!
//! Every function returns [`crate::Result`]: a failed call (no grant, Redis unreachable, a
//! bound exceeded) is a [retry](crate::Error::retry), so `?` in a handler does the right thing.
//! On the machine's own target (`cargo test`) the state is [`crate::testing`]'s map.
//!
//! ```no_run
//! use ferry_plugin_sdk::{Error, Result, state};
//!
//! fn reserve(sku: &str, quantity: i64) -> Result {
//!     let key = format!("stock:{sku}");
//!     let left = state::increment(&key, -quantity)?;
//!     if left < 0 {
//!         // Returning an error drops this event's writes, the decrement included.
//!         return Err(Error::reject(format!("only {} of {sku} left", left + quantity)));
//!     }
//!     Ok(())
//! }
//! ```

use crate::{Error, Result};

fn failed(e: String) -> Error {
    Error::retry(format!("state: {e}"))
}

#[cfg(target_arch = "wasm32")]
use crate::bindings::ferry::plugin::state as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::state as host;

/// The value of `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    host::get(key).map_err(failed)
}

/// The values of `keys`, in order, in one round trip.
pub fn get_many(keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    host::get_many(&keys).map_err(failed)
}

/// Whether `key` has a value.
pub fn exists(key: &str) -> Result<bool> {
    host::exists(key).map_err(failed)
}

/// Set `key` to `value`.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result {
    host::set(key, value.as_ref()).map_err(failed)
}

/// Delete `key`.
pub fn delete(key: &str) -> Result {
    host::delete(key).map_err(failed)
}

/// Add `delta` to the decimal integer at `key` (absent: 0) and return the new value. No
/// concurrent increment is lost. A value that is not an integer is an error.
pub fn increment(key: &str, delta: i64) -> Result<i64> {
    host::increment(key, delta).map_err(failed)
}

/// The value of `key` deserialized from JSON, if any. A value that is not the expected JSON
/// is a [rejection](crate::Error::reject): retrying would read it again.
pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::reject(format!("state key {key:?} is not the expected JSON: {e}"))),
    }
}

/// Set `key` to `value` serialized as JSON.
pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::reject(format!("cannot serialize state: {e}")))?;
    set(key, bytes)
}

//! Where a guest's stdout and stderr go: a capped in-memory pipe, read into the host's log
//! after each event (see `sandbox::HostState::drain_stdio`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// An output pipe that accepts every write but keeps only the first `capacity` bytes, so a
/// guest flooding stdout neither blocks nor traps nor grows the host's memory.
#[derive(Clone)]
pub struct CappedPipe {
    capacity: usize,
    inner: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl CappedPipe {
    /// A pipe keeping up to `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Arc::new(Mutex::new((Vec::new(), 0))) }
    }

    fn push(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = self.capacity.saturating_sub(inner.0.len());
        let keep = room.min(bytes.len());
        inner.0.extend_from_slice(&bytes[..keep]);
        inner.1 += bytes.len() - keep;
    }

    /// Take the captured bytes and the count of dropped bytes, emptying the pipe.
    pub fn take(&self) -> (Vec<u8>, usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dropped = std::mem::take(&mut inner.1);
        (std::mem::take(&mut inner.0), dropped)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: wasmtime_wasi_io::bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

//! [`Stop`]: the signal every long-running task of the host watches (a pipeline's reader,
//! settler, housekeeper and forwarder; the retention trimmer), in one type instead of a
//! `watch::Receiver<bool>` read by hand at each place. Modelled on mini-redis's `Shutdown`:
//! [`Stop::is_stopped`] between steps, [`Stop::stopped`] inside a `select!`.
//!
//! A task is stopped once its sender said `true` or was dropped (whoever could stop it is
//! gone). Clones share the signal; [`Stop::stopped`] borrows, so a task can wait on it in
//! any number of places, each returning at once when already stopped.

use tokio::sync::watch;

/// The receiving side of a stop signal. Made by [`Stop::channel`]; `send(true)` on the sender
/// stops every clone.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A new signal, not stopped: the sender and the first receiver.
    pub fn channel() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Whether the task was told to stop (or its sender is gone).
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Wait until the task is told to stop (or its sender is gone); at once if it was.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

impl From<watch::Receiver<bool>> for Stop {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Stop(rx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Stop;

    #[tokio::test]
    async fn every_clone_stops_when_told_and_stays_stopped() {
        let (tx, stop) = Stop::channel();
        let other = stop.clone();
        assert!(!stop.is_stopped());
        let waiting = tokio::spawn(async move { other.stopped().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "stopped() returned before the stop");
        tx.send(true).expect("a receiver is alive");
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("stopped() returned").expect("task");
        assert!(stop.is_stopped());
        // Waiting again returns at once, however many times (unlike `changed()`).
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_millis(100), stop.stopped()).await.expect("at once");
        }
    }

    #[tokio::test]
    async fn a_dropped_sender_stops_the_task() {
        let (tx, stop) = Stop::channel();
        drop(tx);
        assert!(stop.is_stopped());
        tokio::time::timeout(Duration::from_millis(100), stop.stopped()).await.expect("at once");
    }
}

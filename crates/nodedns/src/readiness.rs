//! What `/ready` and `/health` report about the process's phase, owned by the [`crate::app::App`]
//! and passed to admin: no flag lives on the resolver or in a global.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use tokio::sync::Notify;

/// A one-way switch: once released it stays released, and waiters are woken.
#[derive(Default)]
pub struct Latch {
    released: AtomicBool,
    notify: Notify,
}

impl Latch {
    pub fn release(&self) {
        if !self.released.swap(true, Relaxed) {
            self.notify.notify_waiters();
        }
    }

    pub fn is_released(&self) -> bool {
        self.released.load(Relaxed)
    }

    /// Resolves once released (at once if it is).
    pub async fn released(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_released() {
                return;
            }
            notified.await;
        }
    }
}

/// Where the process stands, in the order it goes through the phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Not serving yet (node setup, binding).
    Starting = 0,
    /// Another nodedns serves this node; this one takes over its sockets once an upstream has
    /// answered (issue 15): alive, not ready.
    WaitingForTakeover = 1,
    /// Listeners bound and read.
    Serving = 2,
    /// Shutting down: not ready, so no new traffic is sent here.
    Draining = 3,
}

/// The process's phase and whether an upstream has answered: ready is both "serving" and
/// "an upstream answered", released by the app's first successful upstream probe.
#[derive(Default)]
pub struct Readiness {
    phase: AtomicU8,
    pub upstream_answered: Latch,
}

impl Readiness {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Starting,
            1 => Phase::WaitingForTakeover,
            2 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    pub fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.phase() == Phase::Serving && self.upstream_answered.is_released()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_needs_both_serving_and_an_answer_and_drain_ends_it() {
        let r = Readiness::default();
        assert_eq!(r.phase(), Phase::Starting);
        r.upstream_answered.release();
        assert!(!r.ready(), "an answer alone is not readiness");
        r.enter(Phase::Serving);
        assert!(r.ready());
        r.enter(Phase::Draining);
        assert!(!r.ready());
        // A latch stays released and wakes waiters that come late.
        r.upstream_answered.released().await;
    }

    #[tokio::test]
    async fn waiters_are_woken_by_the_release() {
        let latch = std::sync::Arc::new(Latch::default());
        let waiter = tokio::spawn({
            let latch = latch.clone();
            async move { latch.released().await }
        });
        tokio::task::yield_now().await;
        latch.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}

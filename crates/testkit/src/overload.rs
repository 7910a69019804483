//! An upstream that dies of overload, as CoreDNS did in the incident behind issue #13: its
//! latency grows with the queries it holds, and once it holds more than a threshold it stops
//! answering anything for a while (as if OOM-killed and restarting), dropping what it held.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How the fake upstream behaves under load; set with
/// [`FakeUpstream::set_overload`](crate::FakeUpstream::set_overload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverloadModel {
    /// Holding more than this many unanswered queries kills the upstream.
    pub die_above: usize,
    /// How long it stays dead: every query meanwhile, and every one it held, goes unanswered.
    pub dead_for: Duration,
    /// Added to each answer's delay per query held when it arrived (latency grows with the
    /// queue, which is what makes clients with unbounded concurrency pile up).
    pub latency_per_held: Duration,
}

/// The counters a test reads after a storm.
#[derive(Debug, Default)]
pub(crate) struct OverloadState {
    model: Mutex<Option<OverloadModel>>,
    /// Queries admitted and not yet answered or dropped.
    held: AtomicUsize,
    /// The most ever held at once.
    pub(crate) peak: AtomicUsize,
    /// Times it died.
    pub(crate) deaths: AtomicUsize,
    /// Bumped on each death, so answers admitted before it are dropped.
    epoch: AtomicU64,
    dead_until: Mutex<Option<Instant>>,
}

/// What to do with one answer under the model.
pub(crate) enum Admission {
    /// No model set: answer as the behaviour says.
    Unmodelled,
    /// Dead: do not answer.
    Drop,
    /// Answer after this extra delay, if the guard is still alive then.
    Held { extra_delay: Duration, guard: HeldQuery },
}

/// One held query; counted out of `held` on drop.
pub(crate) struct HeldQuery {
    state: Arc<OverloadState>,
    epoch: u64,
}

impl HeldQuery {
    /// Whether the upstream has not died since this query was admitted.
    pub(crate) fn alive(&self) -> bool {
        self.state.epoch.load(SeqCst) == self.epoch && !self.state.is_dead(Instant::now())
    }
}

impl Drop for HeldQuery {
    fn drop(&mut self) {
        self.state.held.fetch_sub(1, SeqCst);
    }
}

impl OverloadState {
    pub(crate) fn set(&self, model: Option<OverloadModel>) {
        *self.model.lock() = model;
        *self.dead_until.lock() = None;
    }

    fn is_dead(&self, now: Instant) -> bool {
        self.dead_until.lock().is_some_and(|until| now < until)
    }

    /// Admits one answer that is about to be scheduled.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let Some(model) = *self.model.lock() else {
            return Admission::Unmodelled;
        };
        let now = Instant::now();
        if self.is_dead(now) {
            return Admission::Drop;
        }
        let held = self.held.fetch_add(1, SeqCst) + 1;
        let guard = HeldQuery { state: self.clone(), epoch: self.epoch.load(SeqCst) };
        self.peak.fetch_max(held, SeqCst);
        if held > model.die_above {
            self.deaths.fetch_add(1, SeqCst);
            self.epoch.fetch_add(1, SeqCst);
            *self.dead_until.lock() = Some(now + model.dead_for);
            return Admission::Drop;
        }
        Admission::Held { extra_delay: model.latency_per_held.saturating_mul(held as u32), guard }
    }
}

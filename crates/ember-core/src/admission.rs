//! Admission control for a model: a fixed number of sequence slots, a bounded line of requests
//! waiting for one, and a bounded wait. Over capacity a request fails with `Overloaded` (3040),
//! at once when it asked `rejectIfBusy`. Nothing here grows without bound.

use crate::InferError;
use crate::metrics::ModelMetrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A model's admission limits.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Sequences the engine runs at once.
    pub slots: usize,
    /// Requests that may wait for a slot; more are refused at once.
    pub max_waiting: usize,
    /// Longest a request waits for a slot before it is refused.
    pub max_wait: Duration,
}

/// Hands out sequence slots.
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: AdmissionLimits,
    metrics: ModelMetrics,
}

/// A held sequence slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(limits: AdmissionLimits, metrics: ModelMetrics) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(limits.slots)),
            waiting: AtomicUsize::new(0),
            limits,
            metrics,
        }
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Requests holding or waiting for a slot.
    pub fn in_flight(&self) -> usize {
        self.limits.slots - self.slots.available_permits() + self.waiting.load(Ordering::SeqCst)
    }

    /// Takes a slot, waiting in line for at most `max_wait` unless `reject_if_busy`.
    pub async fn admit(&self, reject_if_busy: bool) -> Result<Ticket, InferError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Ticket { _permit: permit });
        }
        if reject_if_busy {
            return Err(self.refuse());
        }
        let _in_line = InLine::join(self);
        if self.waiting.load(Ordering::SeqCst) > self.limits.max_waiting {
            return Err(self.refuse());
        }
        match tokio::time::timeout(self.limits.max_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Ticket { _permit: permit }),
            _ => Err(self.refuse()),
        }
    }

    fn refuse(&self) -> InferError {
        self.metrics.rejected();
        InferError::Overloaded
    }
}

/// A place in the waiting line, given up on drop (admitted, refused or the caller went away).
struct InLine<'a>(&'a Admission);

impl<'a> InLine<'a> {
    fn join(admission: &'a Admission) -> InLine<'a> {
        let waiting = admission.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        admission.metrics.set_queue_depth(waiting);
        InLine(admission)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let waiting = self.0.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.metrics.set_queue_depth(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn admission(slots: usize, max_waiting: usize, max_wait_ms: u64) -> Arc<Admission> {
        Arc::new(Admission::new(
            AdmissionLimits {
                slots,
                max_waiting,
                max_wait: Duration::from_millis(max_wait_ms),
            },
            Metrics::new().model("m"),
        ))
    }

    #[tokio::test]
    async fn reject_if_busy_fails_at_once_when_every_slot_is_taken() {
        let admission = admission(1, 4, 10_000);
        let held = admission.admit(true).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            admission.admit(true).await.unwrap_err(),
            InferError::Overloaded
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(held);
        admission.admit(true).await.unwrap();
    }

    #[tokio::test]
    async fn waiting_is_bounded_in_length_and_time() {
        let admission = admission(1, 1, 200);
        let _held = admission.admit(false).await.unwrap();
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(false).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The line (one place) is full: refused at once.
        assert_eq!(
            admission.admit(false).await.unwrap_err(),
            InferError::Overloaded
        );
        // The one in line gives up after max_wait.
        assert_eq!(waiter.await.unwrap().unwrap_err(), InferError::Overloaded);
        assert_eq!(admission.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_request() {
        let admission = admission(1, 4, 10_000);
        let held = admission.admit(false).await.unwrap();
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(false).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(admission.in_flight(), 2);
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(admission.in_flight(), 0);
    }
}

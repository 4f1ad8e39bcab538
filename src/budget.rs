//! A global budget for message bytes held in memory across all connections.
//!
//! Each connection's size limit bounds one message; this bounds their sum,
//! so memory stays bounded however many clients send at once. Reservations
//! grow as data arrives (in steps, not per read) and are returned when the
//! message has been handed over and answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared counter of message bytes in memory.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

/// Reservations grow in steps of this many octets.
const STEP: usize = 64 * 1024;

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn available(&self) -> usize {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes held from a [`MemoryBudget`]; returned on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Reservation {
    pub(crate) fn empty(budget: Arc<MemoryBudget>) -> Self {
        Reservation { budget, held: 0 }
    }

    /// Makes sure at least `len` octets are covered; false when the budget
    /// cannot cover them (what is held stays held).
    pub(crate) fn cover(&mut self, len: usize) -> bool {
        if len <= self.held {
            return true;
        }
        let target = len.div_ceil(STEP).saturating_mul(STEP);
        let extra = target - self.held;
        if self.budget.try_take(extra) {
            self.held = target;
            true
        } else {
            false
        }
    }

    pub(crate) fn release(&mut self) {
        self.budget.give_back(self.held);
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_returned() {
        let budget = MemoryBudget::new(4 * STEP);
        let mut a = Reservation::empty(budget.clone());
        let mut b = Reservation::empty(budget.clone());
        assert!(a.cover(1));
        assert!(a.cover(3 * STEP));
        assert_eq!(budget.available(), STEP);
        assert!(!b.cover(STEP + 1));
        assert!(b.cover(STEP));
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 3 * STEP);
        b.release();
        assert_eq!(budget.available(), 4 * STEP);
    }
}

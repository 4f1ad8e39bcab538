//! Where token buckets live: the [`RateLimitStore`] trait, its
//! [`StoreError`], and the bounded in-memory [`MemoryStore`].

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    burst: u32,
    refill_every: Duration,
}

impl Quota {
    /// `count` requests per `period`, all of which may come at once
    /// (burst `count`); tokens come back evenly over the period.
    pub fn per(count: u32, period: Duration) -> Self {
        let count = count.max(1);
        Quota {
            burst: count,
            refill_every: (period / count).max(Duration::from_nanos(1)),
        }
    }

    /// Sets how many requests may come at once (at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The bucket size.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The time for one token to come back.
    pub fn refill_every(&self) -> Duration {
        self.refill_every
    }

    fn tokens_per_sec(&self) -> f64 {
        1.0 / self.refill_every.as_secs_f64()
    }
}

/// A store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the quota; the cost was taken.
    Allow,
    /// Over the quota; enough tokens come back after `retry_after`.
    Deny {
        /// When a retry may succeed.
        retry_after: Duration,
    },
}

/// A store that could not answer: unreachable, refused the command, or
/// replied with something it should not have. The layer then follows its
/// [`StoreFailurePolicy`](super::StoreFailurePolicy).
#[derive(Debug)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limit store failed: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Keeps the token buckets of a [`RateLimitLayer`](super::RateLimitLayer).
///
/// `check` takes `cost` tokens from the bucket `key` (created full) if it
/// has them. It returns a future so that a store can live elsewhere (a
/// Redis or a database shared by a cluster); the in-memory store answers
/// at once with [`std::future::Ready`]. `now` is tokio's clock, so tests can
/// pause time; a shared store may use its own.
///
/// A store that cannot answer says so with a [`StoreError`]; one that
/// answers late is cut short by the layer's
/// [`store_timeout`](super::RateLimitLayer::store_timeout). Either way the
/// layer's [`StoreFailurePolicy`](super::StoreFailurePolicy) decides.
pub trait RateLimitStore: Clone + Send + Sync + 'static {
    /// The answer's future.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Takes `cost` tokens from `key`'s bucket if it has them.
    fn check(&self, key: &str, quota: Quota, cost: u32, now: Instant) -> Self::Future;
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// When the bucket is full again, so as good as absent.
    full_at: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<Box<str>, Bucket>,
    max_keys: usize,
    last_sweep: Instant,
}

/// How often idle buckets are swept even when there is room.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Buckets {
    /// Drops buckets that refilled: forgetting them changes nothing.
    fn sweep(&mut self, now: Instant) {
        self.map.retain(|_, b| b.full_at > now);
        self.last_sweep = now;
    }

    /// Makes room for a new key: sweep, and if every bucket is still
    /// active, forget an arbitrary tenth of them (they start over full).
    fn make_room(&mut self, now: Instant) {
        self.sweep(now);
        if self.map.len() >= self.max_keys {
            let excess = self.map.len() + 1 - self.max_keys;
            let forget = excess.max(self.max_keys / 10);
            let victims: Vec<Box<str>> = self.map.keys().take(forget).cloned().collect();
            for k in victims {
                self.map.remove(&k);
            }
        }
    }

    fn check(&mut self, key: &str, quota: Quota, cost: u32, now: Instant) -> Decision {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        let burst = f64::from(quota.burst);
        let rate = quota.tokens_per_sec();
        let cost = f64::from(cost);
        if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
            self.make_room(now);
        }
        let bucket = self.map.entry(key.into()).or_insert(Bucket {
            tokens: burst,
            updated: now,
            full_at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        let decision = if cost > burst {
            // Never affordable: say when the bucket is full, at least.
            Decision::Deny {
                retry_after: Duration::from_secs_f64((burst - bucket.tokens) / rate),
            }
        } else if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Decision::Allow
        } else {
            Decision::Deny {
                retry_after: Duration::from_secs_f64((cost - bucket.tokens) / rate),
            }
        };
        bucket.full_at = now + Duration::from_secs_f64((burst - bucket.tokens) / rate);
        decision
    }
}

/// Token buckets in this process's memory, bounded: buckets that refilled
/// are dropped (a full bucket is the same as none), and past `max_keys`
/// some active keys are forgotten early (they get a fresh burst), so
/// memory stays bounded whatever the peers do. Clones share the buckets.
///
/// ```
/// use std::time::Duration;
/// use smtpsrv_middleware::rate_limit::{Decision, MemoryStore, Quota, RateLimitStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new().max_keys(10_000);
/// let quota = Quota::per(2, Duration::from_secs(60));
/// let now = tokio::time::Instant::now();
/// assert_eq!(store.check("ip:192.0.2.1", quota, 1, now).await.unwrap(), Decision::Allow);
/// assert_eq!(store.check("ip:192.0.2.1", quota, 1, now).await.unwrap(), Decision::Allow);
/// assert!(matches!(store.check("ip:192.0.2.1", quota, 1, now).await, Ok(Decision::Deny { .. })));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    buckets: Arc<Mutex<Buckets>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store of at most 100,000 keys.
    pub fn new() -> Self {
        MemoryStore {
            buckets: Arc::new(Mutex::new(Buckets {
                map: HashMap::new(),
                max_keys: 100_000,
                last_sweep: Instant::now(),
            })),
        }
    }

    /// Sets the most keys kept at once (at least 1).
    pub fn max_keys(self, n: usize) -> Self {
        self.lock().max_keys = n.max(1);
        self
    }

    /// How many keys are kept now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // A panic elsewhere cannot leave a bucket half-updated in a way
        // that matters: recover the guard.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RateLimitStore for MemoryStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn check(&self, key: &str, quota: Quota, cost: u32, now: Instant) -> Self::Future {
        ready(Ok(self.lock().check(key, quota, cost, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_refilled_buckets_are_dropped() {
        let store = MemoryStore::new().max_keys(100);
        let quota = Quota::per(5, Duration::from_secs(5));
        let now = Instant::now();
        for i in 0..1000 {
            assert_eq!(
                store.check(&format!("k{i}"), quota, 1, now).await.unwrap(),
                Decision::Allow
            );
            assert!(store.len() <= 100);
        }
        // Each bucket refilled a second after its use; the periodic sweep
        // a minute later forgets them all.
        tokio::time::advance(Duration::from_secs(61)).await;
        store
            .check("fresh", quota, 1, Instant::now())
            .await
            .unwrap();
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_affordable_cost_is_denied() {
        let store = MemoryStore::new();
        let quota = Quota::per(2, Duration::from_secs(2));
        let d = store.check("k", quota, 3, Instant::now()).await;
        assert!(matches!(d, Ok(Decision::Deny { .. })));
        assert_eq!(
            store.check("k", quota, 2, Instant::now()).await.unwrap(),
            Decision::Allow
        );
    }
}

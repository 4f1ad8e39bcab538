//! Token buckets in Redis, shared by every instance of a cluster.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use smtpsrv_middleware::rate_limit::{Decision, Quota, RateLimitStore, StoreError};
use tokio::time::Instant;

/// The whole check in one atomic step, so that instances racing for the
/// last token cannot both get it, and in one round trip (`EVALSHA`).
///
/// The bucket is a hash `{tokens, ts}`; time is Redis's own clock (`TIME`),
/// so instances with skewed clocks still agree. The key expires when the
/// bucket would be full again: a full bucket and no key are the same, so
/// idle senders cost no memory. Returns `{allowed, retry_after_us}`.
const TOKEN_BUCKET: &str = r#"
local burst = tonumber(ARGV[1])
local every = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) / every)
end
local allowed = 0
local wait = 0
if cost > burst then
  wait = (burst - tokens) * every
elseif tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) * every
end
local full_in_ms = math.ceil((burst - tokens) * every / 1000)
if full_in_ms > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], full_in_ms)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, math.ceil(wait)}
"#;

/// How a [`RedisStore`] talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// Prefix of every key (default `smtpsrv:rl:`), so that a Redis can be
    /// shared with other applications.
    pub prefix: String,
    /// Longest wait for one reply (default 500 ms). Keep it below the
    /// layer's `store_timeout`, so that a slow Redis shows up as a store
    /// error with its cause.
    pub response_timeout: Duration,
    /// Longest wait for a (re)connection (default 500 ms).
    pub connection_timeout: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            prefix: "smtpsrv:rl:".into(),
            response_timeout: Duration::from_millis(500),
            connection_timeout: Duration::from_millis(500),
        }
    }
}

/// A [`RateLimitStore`] in Redis: give the same Redis to every instance
/// and a sender's quota holds across all of them.
///
/// The connection is made lazily and remade after a failure (redis-rs's
/// `ConnectionManager`), so an instance starts, and keeps serving, while
/// Redis is down: each check then fails fast with a [`StoreError`] and the
/// layer's [`StoreFailurePolicy`](smtpsrv_middleware::rate_limit::StoreFailurePolicy)
/// decides. Clones share the connection.
///
/// ```no_run
/// use std::time::Duration;
/// use smtpsrv_cluster::RedisStore;
/// use smtpsrv_middleware::rate_limit::{Quota, RateLimitLayer};
///
/// # fn main() -> Result<(), redis::RedisError> {
/// let store = RedisStore::open("redis://127.0.0.1:6379/")?;
/// let layer = RateLimitLayer::per_ip(Quota::per(30, Duration::from_secs(60))).store(store);
/// # drop(layer); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`) with the default
    /// [`RedisStoreConfig`]. Does not connect yet; must be called within a
    /// tokio runtime.
    pub fn open(url: &str) -> Result<Self, redis::RedisError> {
        Self::with_config(url, RedisStoreConfig::default())
    }

    /// A store at `url` with `config`.
    pub fn with_config(url: &str, config: RedisStoreConfig) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            // Reconnect attempts after a failure: a few, quickly; the
            // next check starts a new round if they all fail.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, manager)?;
        Ok(RedisStore {
            connection,
            script: Arc::new(redis::Script::new(TOKEN_BUCKET)),
            prefix: config.prefix.into(),
        })
    }

    /// The Redis key of the bucket `key`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl RateLimitStore for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    /// `now` is ignored: Redis's clock is the one all instances share.
    fn check(&self, key: &str, quota: Quota, cost: u32, _now: Instant) -> Self::Future {
        let mut connection = self.connection.clone();
        let script = Arc::clone(&self.script);
        let key = self.redis_key(key);
        let every_us = quota.refill_every().as_micros().max(1) as u64;
        let burst = quota.burst_size();
        Box::pin(async move {
            let (allowed, wait_us): (i64, i64) = script
                .key(key)
                .arg(burst)
                .arg(every_us)
                .arg(cost)
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(if allowed == 1 {
                Decision::Allow
            } else {
                Decision::Deny {
                    retry_after: Duration::from_micros(wait_us.max(0) as u64),
                }
            })
        })
    }
}

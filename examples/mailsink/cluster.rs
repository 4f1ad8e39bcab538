//! mailsink's cluster options: `--redis` keeps the `--rate-limit` buckets
//! in Redis (shared by every instance), `--nats` hands every accepted
//! message to NATS JetStream instead of storing it. See smtpsrv-cluster.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use clap::ValueEnum;
use smtpsrv::BoxError;
use smtpsrv_cluster::{JetStreamHandoff, RedisStore, handoff};
use smtpsrv_middleware::rate_limit::{
    Decision, MemoryStore, Quota, RateLimitLayer, RateLimitStore, StoreError, StoreFailurePolicy,
};
use tokio::time::Instant;

/// The command-line options of a cluster member.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Keep the --rate-limit buckets in this Redis (redis://HOST:PORT/DB),
    /// so that every instance sharing it enforces one quota.
    #[arg(long, value_name = "URL", requires = "rate_limit")]
    pub redis: Option<String>,

    /// What --rate-limit does when Redis is down or slower than 1 s:
    /// `open` lets mail through (logging a warning and counting it), `refuse`
    /// answers 451 4.7.0.
    #[arg(long, value_enum, default_value_t = RedisDown::Open, requires = "redis")]
    pub redis_down: RedisDown,

    /// Hand every accepted message to NATS JetStream at URL
    /// (nats://HOST:PORT) instead of storing it: 250 only once the stream
    /// acknowledged it, 451 4.3.0 when NATS is down or slower than
    /// --nats-ack-timeout.
    /// The stream is created if missing; SIZE is capped to what the NATS
    /// server carries (its max_payload).
    #[arg(long, value_name = "URL", conflicts_with = "discard")]
    pub nats: Option<String>,

    /// The JetStream stream (created with file storage and a 2-minute
    /// duplicate window if missing).
    #[arg(long, value_name = "NAME", default_value = "SMTP", requires = "nats")]
    pub nats_stream: String,

    /// Seconds to wait for the stream's ack before answering 451 4.3.0.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..), requires = "nats")]
    pub nats_ack_timeout: u64,

    /// The subject messages are published on.
    #[arg(
        long,
        value_name = "SUBJECT",
        default_value = "smtp.accepted",
        requires = "nats"
    )]
    pub nats_subject: String,
}

/// `--redis-down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisDown {
    /// Let mail through.
    Open,
    /// 451 4.7.0.
    Refuse,
}

/// Where the buckets live: this process, or Redis.
#[derive(Clone, Debug)]
pub enum Store {
    /// In memory (one instance).
    Memory(MemoryStore),
    /// In Redis (a cluster).
    Redis(RedisStore),
}

impl RateLimitStore for Store {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn check(&self, key: &str, quota: Quota, cost: u32, now: Instant) -> Self::Future {
        match self {
            Store::Memory(m) => Box::pin(m.check(key, quota, cost, now)),
            Store::Redis(r) => r.check(key, quota, cost, now),
        }
    }
}

/// The rate limit layer on the store the options ask for.
pub fn rate_limit(
    args: &ClusterArgs,
    layer: RateLimitLayer<MemoryStore>,
) -> Result<RateLimitLayer<Store>, BoxError> {
    Ok(match &args.redis {
        None => layer.store(Store::Memory(MemoryStore::new())),
        Some(url) => {
            let store = RedisStore::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
            let policy = match args.redis_down {
                RedisDown::Open => StoreFailurePolicy::FailOpen,
                RedisDown::Refuse => StoreFailurePolicy::Refuse,
            };
            layer
                .store(Store::Redis(store))
                .namespace("mailsink")
                .on_store_failure(policy)
        }
    })
}

/// The JetStream hand-off when `--nats` is given: connected, its stream
/// ensured, before any client is accepted.
pub async fn handoff(
    args: &ClusterArgs,
    hostname: &str,
) -> Result<Option<JetStreamHandoff>, BoxError> {
    let Some(url) = &args.nats else {
        return Ok(None);
    };
    let client = smtpsrv_cluster::async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        // After a NATS restart, be back within a second.
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(1000)))
        .connect(url.as_str())
        .await
        .map_err(|e| format!("--nats {url}: {e}"))?;
    let handoff = JetStreamHandoff::new(client, args.nats_subject.clone())
        .hostname(hostname)
        .ack_timeout(Duration::from_secs(args.nats_ack_timeout));
    handoff::ensure_stream(handoff.jetstream(), &args.nats_stream, &args.nats_subject)
        .await
        .map_err(|e| format!("JetStream stream {}: {e}", args.nats_stream))?;
    tracing::info!(nats = %url, stream = %args.nats_stream, subject = %args.nats_subject, "handing messages off to JetStream");
    Ok(Some(handoff))
}

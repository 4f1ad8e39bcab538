//! smtpsrv past one machine: the pieces that let several stateless
//! instances behind a TCP load balancer keep one instance's promises.
//!
//! - [`RedisStore`]: a [`RateLimitStore`](smtpsrv_middleware::rate_limit::RateLimitStore)
//!   kept in Redis, so that a sender gets its quota once, not once per
//!   instance. One round trip per check (an atomic Lua token bucket), keys
//!   that expire when the bucket is full again, a connection that
//!   reconnects by itself.
//! - [`JetStreamHandoff`]: a message service (`Service<Context>`) that
//!   publishes every accepted message to a NATS JetStream stream and
//!   answers 250 only once the stream acknowledged it, `451 4.3.0` when
//!   NATS is down or late. The wire format (headers and payload) is in
//!   [`handoff`].
//! - [`consumer`]: reads the stream with explicit acks and delivers into a
//!   Maildir exactly once per message id, whatever is redelivered.
//!
//! ```text
//! clients ─> HAProxy (TCP, send-proxy-v2, SMTP health checks)
//!              ├─> smtpsrv #1 ─┐   rate limits: RedisStore
//!              ├─> smtpsrv #2 ─┼─> JetStreamHandoff (250 only after the ack)
//!              └─> smtpsrv #3 ─┘        └─> consumer ─> Maildir (exactly once)
//! ```
//!
//! The `deploy/cluster/` folder of the repository runs all of it on
//! 127.0.0.1; the README's "Running a cluster" walks through it.
#![warn(missing_docs)]

pub mod consumer;
pub mod handoff;
mod redis_store;

/// The NATS client the hand-off and consumer are built on.
pub use async_nats;
/// The Redis client [`RedisStore`] is built on.
pub use redis;

pub use handoff::JetStreamHandoff;
pub use redis_store::{RedisStore, RedisStoreConfig};

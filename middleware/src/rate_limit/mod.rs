//! Keyed rate limits: token buckets per client IP or network, per sender,
//! per sender domain, per authenticated identity or per recipient, each
//! with a burst and a refill rate.
//!
//! Over the limit the layer answers at once with `450 4.7.0` (or `421
//! 4.7.0`, which closes the connection, with
//! [`close_connection`](RateLimitLayer::close_connection)) and does not call
//! the inner service. Unlike `tower::limit::RateLimit`, which has one
//! bucket for everybody and makes `poll_ready` wait, one abusive client
//! neither stalls the others nor holds its connection open waiting.
//!
//! Buckets live in a [`RateLimitStore`]: [`MemoryStore`] by default
//! (bounded memory), or your own, shared by a cluster. A request without
//! the key (no sender before `MAIL`, no identity without `AUTH`, no
//! recipient but at `RCPT`) passes unlimited: stack layers to limit by
//! several keys.
//!
//! # When the store fails
//!
//! A shared store can be down or slow. The layer never waits for it longer
//! than [`store_timeout`](RateLimitLayer::store_timeout) (1 s by default),
//! and a store error or a timeout is handled by the layer's
//! [`StoreFailurePolicy`]:
//! - [`FailOpen`](StoreFailurePolicy::FailOpen), the default: the request
//!   passes, a warning is logged and [`StoreFailures`] counts it (a rate
//!   limit is a defence against abuse; refusing all mail because its store
//!   is down would be a self-inflicted outage);
//! - [`Refuse`](StoreFailurePolicy::Refuse): `451 4.7.0`, the client
//!   retries later, for deployments where the quota matters more than
//!   availability.
//!
//! ```
//! use std::time::Duration;
//! use smtpsrv::{BoxError, Connect, MailFrom, Reply};
//! use smtpsrv_middleware::rate_limit::{MemoryStore, Quota, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! let store = MemoryStore::new().max_keys(50_000); // shared by both layers
//! let on_connect = ServiceBuilder::new()
//!     // 20 connections a minute from one /24 (IPv4) or /64 (IPv6).
//!     .layer(RateLimitLayer::per_network(24, 64, Quota::per(20, Duration::from_secs(60)))
//!         .store(store.clone()).close_connection())
//!     .service_fn(|_: Connect| async { Ok::<_, BoxError>(Reply::ok()) });
//! let on_mail = ServiceBuilder::new()
//!     // 100 messages an hour per login, 10 at once.
//!     .layer(RateLimitLayer::per_identity(Quota::per(100, Duration::from_secs(3600)).burst(10))
//!         .store(store))
//!     .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
//! let server = smtpsrv::Server::builder().on_connect(on_connect).on_mail(on_mail).build();
//! # drop(server);
//! ```

mod store;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use smtpsrv::{BoxError, Reply};
use tower::{Layer, Service};

pub use store::{Decision, MemoryStore, Quota, RateLimitStore, StoreError};

use crate::future::take_ready;
use crate::request::{StageData, client_ip, sender};

/// What requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    /// The client's IP address.
    Ip,
    /// The client's network: the address cut to these prefix lengths, so
    /// that one IPv6 client cannot dodge the limit by changing addresses.
    Network {
        /// IPv4 prefix length (e.g. 24).
        v4: u8,
        /// IPv6 prefix length (e.g. 64).
        v6: u8,
    },
    /// The reverse-path (`<>` for the null sender), from `MAIL` on.
    Sender,
    /// The reverse-path's domain, from `MAIL` on (the null sender passes).
    SenderDomain,
    /// The authenticated identity (unauthenticated requests pass).
    Identity,
    /// The recipient, at `RCPT`.
    Recipient,
}

fn network(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(v4.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            format!("{}/{bits}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let bits = u32::from(v6.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            format!("{}/{bits}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl KeyBy {
    /// The bucket key of `req`, or `None` when it has no such key.
    pub fn key<R: StageData>(self, req: &R) -> Option<String> {
        match self {
            KeyBy::Ip => Some(format!("ip:{}", client_ip(req))),
            KeyBy::Network { v4, v6 } => Some(format!("net:{}", network(client_ip(req), v4, v6))),
            KeyBy::Sender => sender(req).map(|from| {
                format!(
                    "from:{}",
                    from.map_or("<>".into(), |a| a.as_str().to_lowercase())
                )
            }),
            KeyBy::SenderDomain => sender(req)
                .flatten()
                .and_then(|a| a.domain())
                .map(|d| format!("domain:{}", d.to_ascii_lowercase())),
            KeyBy::Identity => req.session().identity().map(|id| format!("id:{id}")),
            KeyBy::Recipient => req
                .recipient()
                .map(|r| format!("rcpt:{}", r.address().as_str().to_lowercase())),
        }
    }
}

/// What the layer does when its store fails or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreFailurePolicy {
    /// Let the request pass; log a warning and count it in
    /// [`StoreFailures`].
    #[default]
    FailOpen,
    /// Answer `451 4.7.0` (counted too): the client retries later.
    Refuse,
}

/// How many checks a layer (and all its clones) could not make because the
/// store failed or timed out: a counter to export as a metric.
#[derive(Debug, Clone, Default)]
pub struct StoreFailures(Arc<AtomicU64>);

impl StoreFailures {
    /// Failures so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
struct Config {
    key: KeyBy,
    quota: Quota,
    namespace: Option<Arc<str>>,
    close: bool,
    cost_per_recipient: bool,
    store_timeout: Duration,
    on_failure: StoreFailurePolicy,
    failures: StoreFailures,
}

/// Keyed token-bucket limits; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RateLimitLayer<St = MemoryStore> {
    config: Arc<Config>,
    store: St,
}

impl RateLimitLayer<MemoryStore> {
    /// Limits by `key` with `quota`, in a new [`MemoryStore`].
    pub fn new(key: KeyBy, quota: Quota) -> Self {
        RateLimitLayer {
            config: Arc::new(Config {
                key,
                quota,
                namespace: None,
                close: false,
                cost_per_recipient: false,
                store_timeout: Duration::from_secs(1),
                on_failure: StoreFailurePolicy::FailOpen,
                failures: StoreFailures::default(),
            }),
            store: MemoryStore::new(),
        }
    }

    /// Per client IP address.
    pub fn per_ip(quota: Quota) -> Self {
        Self::new(KeyBy::Ip, quota)
    }

    /// Per client network (IPv4 and IPv6 prefix lengths).
    pub fn per_network(v4: u8, v6: u8, quota: Quota) -> Self {
        Self::new(KeyBy::Network { v4, v6 }, quota)
    }

    /// Per reverse-path.
    pub fn per_sender(quota: Quota) -> Self {
        Self::new(KeyBy::Sender, quota)
    }

    /// Per reverse-path domain.
    pub fn per_sender_domain(quota: Quota) -> Self {
        Self::new(KeyBy::SenderDomain, quota)
    }

    /// Per authenticated identity.
    pub fn per_identity(quota: Quota) -> Self {
        Self::new(KeyBy::Identity, quota)
    }

    /// Per recipient (at `RCPT`).
    pub fn per_recipient(quota: Quota) -> Self {
        Self::new(KeyBy::Recipient, quota)
    }
}

impl<St> RateLimitLayer<St> {
    /// Keeps buckets in `store` (e.g. one shared with other layers, or an
    /// external one).
    pub fn store<T: RateLimitStore>(self, store: T) -> RateLimitLayer<T> {
        RateLimitLayer {
            config: self.config,
            store,
        }
    }

    /// Prefixes keys with `name`, so that two layers with the same key
    /// kind can share a store without sharing buckets.
    pub fn namespace(mut self, name: &str) -> Self {
        Arc::make_mut(&mut self.config).namespace = Some(name.into());
        self
    }

    /// Answers `421 4.7.0` (the server closes) instead of `450 4.7.0`.
    pub fn close_connection(mut self) -> Self {
        Arc::make_mut(&mut self.config).close = true;
        self
    }

    /// At `DATA`, a message costs one token per recipient (a limit on
    /// recipients rather than messages).
    pub fn cost_per_recipient(mut self) -> Self {
        Arc::make_mut(&mut self.config).cost_per_recipient = true;
        self
    }

    /// The longest wait for the store's answer (default 1 s); past it the
    /// check counts as failed.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).store_timeout = timeout;
        self
    }

    /// What to do when the store fails (default
    /// [`FailOpen`](StoreFailurePolicy::FailOpen)).
    pub fn on_store_failure(mut self, policy: StoreFailurePolicy) -> Self {
        Arc::make_mut(&mut self.config).on_failure = policy;
        self
    }

    /// The failure counter of this layer and every service it makes.
    pub fn store_failures(&self) -> StoreFailures {
        self.config.failures.clone()
    }
}

impl<S, St: Clone> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: self.config.clone(),
            store: self.store.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S, St = MemoryStore> {
    inner: S,
    config: Arc<Config>,
    store: St,
}

/// The answer when the store failed under [`StoreFailurePolicy::Refuse`].
pub fn store_unavailable() -> Reply {
    Reply::new(
        451,
        (4, 7, 0),
        "Rate limit service unavailable, try again later",
    )
}

/// The refusal: `450 4.7.0`, or `421 4.7.0` to close the connection.
pub fn limited(close: bool, retry_after: std::time::Duration) -> Reply {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let text = format!("Rate limit exceeded, try again in {secs} seconds");
    if close {
        Reply::new(421, (4, 7, 0), text)
    } else {
        Reply::rate_limited().with_text(text)
    }
}

impl<S, St, R> Service<R> for RateLimit<S, St>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    St: RateLimitStore,
    R: StageData,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<tokio::time::Timeout<St::Future>, S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let config = &self.config;
        let Some(key) = config.key.key(&req) else {
            return ResponseFuture::called(self.inner.call(req));
        };
        let key = match &config.namespace {
            Some(ns) => format!("{ns}/{key}"),
            None => key,
        };
        let cost = match (config.cost_per_recipient, req.body(), req.envelope()) {
            (true, Some(_), Some(env)) => u32::try_from(env.recipients().len())
                .unwrap_or(u32::MAX)
                .max(1),
            _ => 1,
        };
        let check = tokio::time::timeout(
            config.store_timeout,
            self.store
                .check(&key, config.quota, cost, tokio::time::Instant::now()),
        );
        // The ready service goes into the future; a fresh clone stays.
        let inner = take_ready(&mut self.inner);
        ResponseFuture {
            state: State::Checking {
                check,
                pending: Some((inner, req, key)),
                config: Arc::clone(config),
            },
        }
    }
}

pin_project! {
    /// Waits for the store's decision, then calls the inner service or
    /// refuses.
    pub struct ResponseFuture<CF, S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<CF, S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<CF, S, R>
    where
        S: Service<R>,
    {
        Checking {
            #[pin]
            check: CF,
            pending: Option<(S, R, String)>,
            config: Arc<Config>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
    }
}

impl<CF, S: Service<R>, R> ResponseFuture<CF, S, R> {
    fn called(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { future },
        }
    }
}

impl<CF, S, R> Future for ResponseFuture<CF, S, R>
where
    CF: Future<Output = Result<Result<Decision, StoreError>, tokio::time::error::Elapsed>>,
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Checking {
                    check,
                    pending,
                    config,
                } => {
                    let answer = ready!(check.poll(cx));
                    let Some((mut inner, req, key)) = pending.take() else {
                        return Poll::Ready(
                            Err("rate limit future polled after completion".into()),
                        );
                    };
                    let decision = match answer {
                        Ok(Ok(decision)) => decision,
                        failed => {
                            config.failures.record();
                            let error = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("no answer within {:?}", config.store_timeout),
                            };
                            match config.on_failure {
                                StoreFailurePolicy::FailOpen => {
                                    tracing::warn!(key = %key, %error, "rate limit store failed; letting the request pass");
                                    Decision::Allow
                                }
                                StoreFailurePolicy::Refuse => {
                                    tracing::warn!(key = %key, %error, "rate limit store failed; refusing for now");
                                    return Poll::Ready(Err(Box::new(store_unavailable())));
                                }
                            }
                        }
                    };
                    match decision {
                        Decision::Allow => {
                            let future = inner.call(req);
                            state.set(State::Called { future });
                        }
                        Decision::Deny { retry_after } => {
                            tracing::info!(key = %key, retry_after_ms = retry_after.as_millis() as u64, "rate limited");
                            return Poll::Ready(Err(Box::new(limited(config.close, retry_after))));
                        }
                    }
                }
                StateProj::Called { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use smtpsrv::Connect;
    use std::time::Duration;
    use tokio::time::{Instant, advance};

    fn connect(ip: &str) -> Connect {
        Connect::new(session_from(ip, "c.example", None))
    }

    #[tokio::test(start_paused = true)]
    async fn exhausts_then_refills_per_ip() {
        let inner = Counting::default();
        // Burst 3, then one every 20 s.
        let mut svc =
            RateLimitLayer::per_ip(Quota::per(3, Duration::from_secs(60))).layer(inner.clone());
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 250);
        }
        let r = reply_of(&mut svc, connect("192.0.2.1")).await;
        assert_eq!(code(&r), (450, "4.7.0".into()));
        assert!(r.text().contains("20 seconds"), "{}", r.text());
        assert_eq!(Instant::now(), start, "answered at once, no waiting");
        // Another client is not affected.
        assert_eq!(reply_of(&mut svc, connect("192.0.2.2")).await.code(), 250);
        // Nor the same client through an IPv4-mapped address... it is the same key.
        assert_eq!(
            reply_of(&mut svc, connect("::ffff:192.0.2.1")).await.code(),
            450
        );

        advance(Duration::from_secs(19)).await;
        assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 450);
        advance(Duration::from_secs(1)).await;
        assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 250);
        assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 450);
        advance(Duration::from_secs(600)).await;
        for _ in 0..3 {
            assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 250);
        }
        assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 450);
        assert_eq!(inner.calls(), 3 + 1 + 1 + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn network_prefixes_share_a_bucket_and_421_closes() {
        let mut svc = RateLimitLayer::per_network(24, 64, Quota::per(2, Duration::from_secs(60)))
            .close_connection()
            .layer(Counting::default());
        assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 250);
        assert_eq!(reply_of(&mut svc, connect("192.0.2.200")).await.code(), 250);
        assert_eq!(
            code(&reply_of(&mut svc, connect("192.0.2.9")).await),
            (421, "4.7.0".into())
        );
        assert_eq!(reply_of(&mut svc, connect("192.0.3.1")).await.code(), 250);
        assert_eq!(
            reply_of(&mut svc, connect("2001:db8:1:2::1")).await.code(),
            250
        );
        assert_eq!(
            reply_of(&mut svc, connect("2001:db8:1:2::ffff"))
                .await
                .code(),
            250
        );
        assert_eq!(
            reply_of(&mut svc, connect("2001:db8:1:2:aaaa::1"))
                .await
                .code(),
            421
        );
        assert_eq!(
            reply_of(&mut svc, connect("2001:db8:1:3::1")).await.code(),
            250
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keys_by_sender_domain_identity_and_recipient() {
        let q = Quota::per(1, Duration::from_secs(60));
        let mut by_sender = RateLimitLayer::per_sender(q).layer(Counting::default());
        assert_eq!(
            reply_of(&mut by_sender, mail_from(session(), Some("a@x.example")))
                .await
                .code(),
            250
        );
        assert_eq!(
            reply_of(&mut by_sender, mail_from(session(), Some("A@x.example")))
                .await
                .code(),
            450
        );
        assert_eq!(
            reply_of(&mut by_sender, mail_from(session(), Some("b@x.example")))
                .await
                .code(),
            250
        );
        assert_eq!(
            reply_of(&mut by_sender, connect("192.0.2.1")).await.code(),
            250,
            "no sender yet"
        );

        let mut by_domain = RateLimitLayer::per_sender_domain(q).layer(Counting::default());
        assert_eq!(
            reply_of(&mut by_domain, mail_from(session(), Some("a@x.example")))
                .await
                .code(),
            250
        );
        assert_eq!(
            reply_of(&mut by_domain, mail_from(session(), Some("b@X.example")))
                .await
                .code(),
            450
        );
        assert_eq!(
            reply_of(&mut by_domain, mail_from(session(), None))
                .await
                .code(),
            250
        );
        assert_eq!(
            reply_of(&mut by_domain, mail_from(session(), None))
                .await
                .code(),
            250
        );

        let mut by_id = RateLimitLayer::per_identity(q).layer(Counting::default());
        let ann = session_from("192.0.2.1", "c.example", Some("ann"));
        assert_eq!(
            reply_of(&mut by_id, mail_from(ann.clone(), None))
                .await
                .code(),
            250
        );
        assert_eq!(reply_of(&mut by_id, mail_from(ann, None)).await.code(), 450);
        assert_eq!(
            reply_of(&mut by_id, mail_from(session(), None))
                .await
                .code(),
            250
        );

        let mut by_rcpt = RateLimitLayer::per_recipient(q).layer(Counting::default());
        assert_eq!(
            reply_of(&mut by_rcpt, rcpt_to(session(), None, "bob@y.example"))
                .await
                .code(),
            250
        );
        assert_eq!(
            reply_of(&mut by_rcpt, rcpt_to(session(), None, "bob@y.example"))
                .await
                .code(),
            450
        );
        assert_eq!(
            reply_of(&mut by_rcpt, rcpt_to(session(), None, "eve@y.example"))
                .await
                .code(),
            250
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cost_per_recipient_at_data_and_shared_store_namespaces() {
        let store = MemoryStore::new();
        let q = Quota::per(5, Duration::from_secs(60));
        let mut a = RateLimitLayer::per_ip(q)
            .store(store.clone())
            .namespace("a")
            .cost_per_recipient()
            .layer(Counting::default());
        let mut b = RateLimitLayer::per_ip(q)
            .store(store.clone())
            .namespace("b")
            .layer(Counting::default());
        let four = context(
            session(),
            None,
            &["1@x.example", "2@x.example", "3@x.example", "4@x.example"],
            "x",
        );
        assert_eq!(reply_of(&mut a, four.clone()).await.code(), 250);
        assert_eq!(
            reply_of(&mut a, four.clone()).await.code(),
            450,
            "1 token left, 4 needed"
        );
        assert_eq!(
            reply_of(&mut b, four).await.code(),
            250,
            "another namespace"
        );
        assert_eq!(store.len(), 2);
    }

    /// A store answering later, as a networked one would.
    #[derive(Clone)]
    struct SlowDenyStore;

    impl RateLimitStore for SlowDenyStore {
        type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

        fn check(&self, _: &str, _: Quota, _: u32, _: Instant) -> Self::Future {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Decision::Deny {
                    retry_after: Duration::from_secs(7),
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn async_stores_work() {
        let inner = Counting::default();
        let mut svc = RateLimitLayer::per_ip(Quota::per(1, Duration::from_secs(1)))
            .store(SlowDenyStore)
            .layer(inner.clone());
        let r = reply_of(&mut svc, connect("192.0.2.1")).await;
        assert_eq!(r.code(), 450);
        assert!(r.text().contains("7 seconds"));
        assert_eq!(inner.calls(), 0);
    }

    /// A store that is down (fails at once) or hung (never answers).
    #[derive(Clone)]
    enum BrokenStore {
        Down,
        Hung,
    }

    impl RateLimitStore for BrokenStore {
        type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

        fn check(&self, _: &str, _: Quota, _: u32, _: Instant) -> Self::Future {
            match self {
                BrokenStore::Down => Box::pin(async { Err(StoreError::new("connection refused")) }),
                BrokenStore::Hung => Box::pin(std::future::pending()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_store_fails_open_by_default_and_is_counted() {
        let inner = Counting::default();
        let layer =
            RateLimitLayer::per_ip(Quota::per(1, Duration::from_secs(60))).store(BrokenStore::Down);
        let failures = layer.store_failures();
        let mut svc = layer.layer(inner.clone());
        for _ in 0..3 {
            assert_eq!(reply_of(&mut svc, connect("192.0.2.1")).await.code(), 250);
        }
        assert_eq!(inner.calls(), 3);
        assert_eq!(failures.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn hung_store_is_cut_short_by_the_timeout_then_refused_by_policy() {
        let inner = Counting::default();
        let layer = RateLimitLayer::per_ip(Quota::per(1, Duration::from_secs(60)))
            .store(BrokenStore::Hung)
            .store_timeout(Duration::from_millis(300))
            .on_store_failure(StoreFailurePolicy::Refuse);
        let failures = layer.store_failures();
        let mut svc = layer.layer(inner.clone());
        let start = Instant::now();
        let r = reply_of(&mut svc, connect("192.0.2.1")).await;
        assert_eq!(code(&r), (451, "4.7.0".into()));
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
        assert_eq!(inner.calls(), 0);
        assert_eq!(failures.get(), 1);

        // Fail-open with the default timeout: passes after 1 s, not never.
        let mut open = RateLimitLayer::per_ip(Quota::per(1, Duration::from_secs(60)))
            .store(BrokenStore::Hung)
            .layer(inner.clone());
        let start = Instant::now();
        assert_eq!(reply_of(&mut open, connect("192.0.2.1")).await.code(), 250);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(inner.calls(), 1);
    }

    #[test]
    fn network_masks() {
        assert_eq!(
            network("192.0.2.77".parse().unwrap(), 24, 64),
            "192.0.2.0/24"
        );
        assert_eq!(network("192.0.2.77".parse().unwrap(), 0, 64), "0.0.0.0/0");
        assert_eq!(
            network("192.0.2.77".parse().unwrap(), 40, 64),
            "192.0.2.77/32"
        );
        assert_eq!(
            network("2001:db8:1:2:3::1".parse().unwrap(), 24, 48),
            "2001:db8:1::/48"
        );
    }
}

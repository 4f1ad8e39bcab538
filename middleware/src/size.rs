//! Policy size limits below the server's hard cap
//! ([`Builder::max_message_bytes`](smtpsrv::Builder::max_message_bytes)):
//! a default, per authenticated identity, per recipient domain.
//! Over the limit: `552 5.3.4`.
//!
//! The limit for one recipient is its domain's limit if one is set,
//! otherwise the sender's: the identity's if set, otherwise the default. A
//! message must fit the smallest limit of its recipients. So a domain's
//! limit may be larger than the default (a file-drop domain) or smaller.
//!
//! - at `MAIL`, the declared `SIZE` is checked against the largest limit
//!   any recipient could have;
//! - at `RCPT`, the declared `SIZE` against this recipient's limit;
//! - at `DATA`, the actual size against the message's limit. The size of a
//!   spilled body is known without reading it. A streaming body's is known
//!   only at its end: a declared `SIZE` over the limit is refused at once,
//!   otherwise the body is capped ([`Body::limit`](smtpsrv::Body::limit)),
//!   so a handler reading past the limit gets `BodyError::TooLarge`, which
//!   it passes on with `?` to answer `552 5.3.4`.
//!
//! ```
//! use smtpsrv::{BoxError, Context};
//! use smtpsrv_middleware::size::SizeLimitLayer;
//! use tower::ServiceBuilder;
//!
//! let handler = ServiceBuilder::new()
//!     .layer(
//!         SizeLimitLayer::new(10 << 20)             // 10 MiB for everyone
//!             .identity("archiver", 50 << 20)       // 50 MiB for this login
//!             .recipient_domain("tiny.example", 1 << 20),
//!     )
//!     .service_fn(|_: Context| async { Ok::<_, BoxError>(()) });
//! # drop(handler);
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use smtpsrv::{BoxError, Recipient, Reply, SessionInfo};
use tower::{Layer, Service};

use crate::future::ResponseFuture;
use crate::request::StageData;

#[derive(Debug, Clone)]
struct Policy {
    default: u64,
    identities: HashMap<String, u64>,
    domains: HashMap<String, u64>,
}

impl Policy {
    fn sender_limit(&self, session: &SessionInfo) -> u64 {
        session
            .identity()
            .and_then(|id| self.identities.get(id.as_str()))
            .copied()
            .unwrap_or(self.default)
    }

    fn recipient_limit(&self, sender_limit: u64, rcpt: &Recipient) -> u64 {
        rcpt.address()
            .domain()
            .and_then(|d| self.domains.get(&d.to_ascii_lowercase()))
            .copied()
            .unwrap_or(sender_limit)
    }

    fn largest_limit(&self, sender_limit: u64) -> u64 {
        self.domains.values().copied().fold(sender_limit, u64::max)
    }
}

/// Applies policy size limits; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SizeLimitLayer {
    policy: Arc<Policy>,
}

impl SizeLimitLayer {
    /// A limit of `default` octets for every message.
    pub fn new(default: usize) -> Self {
        SizeLimitLayer {
            policy: Arc::new(Policy {
                default: default as u64,
                identities: HashMap::new(),
                domains: HashMap::new(),
            }),
        }
    }

    /// The limit for messages sent by an authenticated identity.
    pub fn identity(mut self, identity: &str, limit: usize) -> Self {
        Arc::make_mut(&mut self.policy)
            .identities
            .insert(identity.to_owned(), limit as u64);
        self
    }

    /// The limit for messages to recipients at `domain` (case-insensitive).
    pub fn recipient_domain(mut self, domain: &str, limit: usize) -> Self {
        Arc::make_mut(&mut self.policy)
            .domains
            .insert(domain.to_ascii_lowercase(), limit as u64);
        self
    }
}

impl<S> Layer<S> for SizeLimitLayer {
    type Service = SizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SizeLimit {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`SizeLimitLayer`].
#[derive(Debug, Clone)]
pub struct SizeLimit<S> {
    inner: S,
    policy: Arc<Policy>,
}

/// `552 5.3.4` with the limit in the text.
pub fn too_big(limit: u64) -> Reply {
    Reply::message_too_large()
        .with_text(format!("Message size exceeds the limit of {limit} octets"))
}

impl<S> SizeLimit<S> {
    /// The limit `req` breaks, if any.
    fn exceeded<R: StageData>(&self, req: &mut R) -> Option<u64> {
        let envelope = req.envelope()?;
        let sender_limit = self.policy.sender_limit(req.session());
        if req.body().is_some() {
            let limit = envelope
                .recipients()
                .iter()
                .map(|r| self.policy.recipient_limit(sender_limit, r))
                .min()
                .unwrap_or(sender_limit);
            let declared = envelope.mail_params().size;
            let body = req.body_mut()?;
            return match body.len() {
                Some(len) => (len > limit).then_some(limit),
                None if declared.is_some_and(|d| d > limit) => Some(limit),
                None => {
                    body.limit(limit);
                    None
                }
            };
        }
        let declared = envelope.mail_params().size?;
        let limit = match req.recipient() {
            Some(rcpt) => self.policy.recipient_limit(sender_limit, rcpt),
            None => self.policy.largest_limit(sender_limit),
        };
        (declared > limit).then_some(limit)
    }
}

impl<S, R> Service<R> for SizeLimit<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: StageData,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        match self.exceeded(&mut req) {
            Some(limit) => ResponseFuture::refused(too_big(limit)),
            None => ResponseFuture::called(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use smtpsrv::proto::{MailParams, RcptParams};
    use smtpsrv::{Envelope, RcptTo};

    fn layer() -> SizeLimitLayer {
        SizeLimitLayer::new(100)
            .identity("big", 1000)
            .recipient_domain("Tiny.example", 10)
            .recipient_domain("drop.example", 5000)
    }

    fn rcpt_sized(s: std::sync::Arc<SessionInfo>, size: u64, to: &str) -> RcptTo {
        let env = Envelope::new(
            Some(addr("a@example.org")),
            MailParams {
                size: Some(size),
                ..Default::default()
            },
        );
        RcptTo::new(s, env, Recipient::new(addr(to), RcptParams::default()))
    }

    #[tokio::test]
    async fn declared_size_at_mail() {
        let inner = Counting::default();
        let mut svc = layer().layer(inner.clone());
        // The largest limit any recipient could have: drop.example's.
        let r = reply_of(
            &mut svc,
            mail_from_sized(session(), Some("a@example.org"), 5000),
        )
        .await;
        assert_eq!(r.code(), 250);
        let r = reply_of(
            &mut svc,
            mail_from_sized(session(), Some("a@example.org"), 5001),
        )
        .await;
        assert_eq!(code(&r), (552, "5.3.4".into()));
        let r = reply_of(&mut svc, mail_from(session(), Some("a@example.org"))).await;
        assert_eq!(r.code(), 250, "no SIZE declared: nothing to check yet");
        assert_eq!(inner.calls(), 2);
    }

    #[tokio::test]
    async fn declared_size_per_recipient() {
        let mut svc = layer().layer(Counting::default());
        let cases = [
            (session(), 101, "b@other.example", 552),
            (session(), 100, "b@other.example", 250),
            (session(), 11, "b@tiny.example", 552),
            (session(), 4000, "b@drop.example", 250),
            (
                session_from("192.0.2.1", "c.example", Some("big")),
                900,
                "b@other.example",
                250,
            ),
            (
                session_from("192.0.2.1", "c.example", Some("big")),
                900,
                "b@tiny.example",
                552,
            ),
        ];
        for (s, size, to, want) in cases {
            let r = reply_of(&mut svc, rcpt_sized(s, size, to)).await;
            assert_eq!(r.code(), want, "{size} to {to}");
        }
    }

    #[tokio::test]
    async fn actual_size_at_data_uses_the_smallest_recipient_limit() {
        let inner = Counting::default();
        let mut svc = layer().layer(inner.clone());
        let body = "x".repeat(50);
        let ok = context(
            session(),
            Some("a@example.org"),
            &["b@other.example"],
            &body,
        );
        assert_eq!(reply_of(&mut svc, ok).await.code(), 250);
        let mixed = context(
            session(),
            Some("a@example.org"),
            &["b@other.example", "c@tiny.example"],
            &body,
        );
        let r = reply_of(&mut svc, mixed).await;
        assert_eq!(code(&r), (552, "5.3.4".into()));
        assert!(r.text().contains("10 octets"));
        let big = "x".repeat(3000);
        let to_drop = context(session(), Some("a@example.org"), &["b@drop.example"], &big);
        assert_eq!(reply_of(&mut svc, to_drop).await.code(), 250);
        let to_other = context(session(), Some("a@example.org"), &["b@other.example"], &big);
        assert_eq!(reply_of(&mut svc, to_other).await.code(), 552);
        assert_eq!(inner.calls(), 2);
    }
}

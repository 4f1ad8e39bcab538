//! Require authentication (`530 5.7.0`), and optionally restrict which
//! senders each identity may use at `MAIL FROM` (`553 5.7.1`): what a
//! submission server needs so that Ann cannot send as Bob.
//!
//! Put it on the `MAIL` hook (refused before any data is read), and on the
//! message service as a second line. At connect and HELO nobody has
//! authenticated yet, so it would refuse everyone there.
//!
//! When every message on every listener needs AUTH and no sender rule is
//! wanted, `smtpsrv::Builder::require_auth(true)` says the same in one line
//! and is checked by the session itself; this layer is for rules that
//! depend on the identity, the sender or the stage (see that method's docs).
//!
//! ```
//! use smtpsrv::{BoxError, Identity, MailFrom, Reply, SessionInfo};
//! use smtpsrv_middleware::require_auth::{RequireAuthLayer, SenderRules};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let rules = SenderRules::new()
//!     .allow("ann", "ann@example.org")
//!     .allow("ann", "@lists.example.org") // any address of that domain
//!     .allow("mailer", "<>");             // bounces
//! let hook = ServiceBuilder::new()
//!     .layer(RequireAuthLayer::new().senders(rules))
//!     .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
//!
//! let session = SessionInfo::new("192.0.2.1:4000".parse().unwrap(), "127.0.0.1:587".parse().unwrap())
//!     .with_identity(Identity::new("ann"));
//! let req = MailFrom::new(session.into(), Some("bob@example.org".parse().unwrap()), Default::default());
//! let refused = hook.oneshot(req).await.unwrap_err();
//! assert_eq!(smtpsrv::error_reply(refused).code(), 553);
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use smtpsrv::{Address, BoxError, Identity, Reply};
use tower::{Layer, Service};

use crate::future::ResponseFuture;
use crate::request::{StageData, sender};

/// One allowed sender: an address, a whole domain, or the null sender.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Address(String),
    Domain(String),
    Null,
    Any,
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        let s = s.trim();
        match s {
            "<>" => Pattern::Null,
            "*" => Pattern::Any,
            _ => match s.strip_prefix('@') {
                Some(domain) => Pattern::Domain(domain.to_ascii_lowercase()),
                None => Pattern::Address(s.to_lowercase()),
            },
        }
    }

    fn matches(&self, sender: Option<&Address>) -> bool {
        match (self, sender) {
            (Pattern::Any, _) => true,
            (Pattern::Null, None) => true,
            (Pattern::Domain(d), Some(a)) => {
                a.domain().is_some_and(|ad| ad.eq_ignore_ascii_case(d))
            }
            (Pattern::Address(p), Some(a)) => a.as_str().to_lowercase() == *p,
            _ => false,
        }
    }
}

/// Which senders (reverse-paths) each identity may use.
///
/// Patterns: an exact address (compared without regard to case), `@domain`
/// for every address of a domain, `<>` for the null sender, `*` for any.
/// An identity with no rule may use no sender at all: once rules are given,
/// the check fails closed.
#[derive(Debug, Clone, Default)]
pub struct SenderRules {
    by_identity: HashMap<String, Vec<Pattern>>,
}

impl SenderRules {
    /// No rules yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `identity` use senders matching `pattern`.
    pub fn allow(mut self, identity: &str, pattern: &str) -> Self {
        self.by_identity
            .entry(identity.to_owned())
            .or_default()
            .push(Pattern::parse(pattern));
        self
    }

    /// Whether `identity` may use `sender` (`None` is the null sender).
    pub fn allows(&self, identity: &Identity, sender: Option<&Address>) -> bool {
        self.by_identity
            .get(identity.as_str())
            .is_some_and(|patterns| patterns.iter().any(|p| p.matches(sender)))
    }
}

/// Refuses unauthenticated requests; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RequireAuthLayer {
    rules: Option<Arc<SenderRules>>,
}

impl RequireAuthLayer {
    /// Requires authentication only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also requires the reverse-path to be one the identity may use.
    pub fn senders(mut self, rules: SenderRules) -> Self {
        self.rules = Some(Arc::new(rules));
        self
    }
}

impl<S> Layer<S> for RequireAuthLayer {
    type Service = RequireAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service of [`RequireAuthLayer`].
#[derive(Debug, Clone)]
pub struct RequireAuth<S> {
    inner: S,
    rules: Option<Arc<SenderRules>>,
}

/// `530 5.7.0`: the client has not authenticated.
pub fn auth_required() -> Reply {
    Reply::auth_required()
}

/// `553 5.7.1`: the identity may not use this sender.
pub fn sender_not_allowed() -> Reply {
    Reply::new(553, (5, 7, 1), "Sender address not allowed for this login")
}

impl<S, R> Service<R> for RequireAuth<S>
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

    fn call(&mut self, req: R) -> Self::Future {
        let Some(identity) = req.session().identity() else {
            return ResponseFuture::refused(auth_required());
        };
        if let (Some(rules), Some(from)) = (&self.rules, sender(&req))
            && !rules.allows(identity, from)
        {
            tracing::info!(
                identity = %identity,
                from = from.map_or("<>", Address::as_str),
                "sender not allowed for identity"
            );
            return ResponseFuture::refused(sender_not_allowed());
        }
        ResponseFuture::called(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use smtpsrv::Connect;
    use tower::ServiceExt;

    fn rules() -> SenderRules {
        SenderRules::new()
            .allow("ann", "ann@example.org")
            .allow("ann", "@Lists.Example.org")
            .allow("mailer", "<>")
            .allow("admin", "*")
    }

    #[tokio::test]
    async fn unauthenticated_is_refused_with_530_without_calling_inner() {
        let inner = Counting::default();
        let mut svc = RequireAuthLayer::new().layer(inner.clone());
        let r = reply_of(&mut svc, mail_from(session(), Some("a@example.org"))).await;
        assert_eq!(code(&r), (530, "5.7.0".into()));
        let r = reply_of(
            &mut svc,
            context(session(), Some("a@example.org"), &["b@x.example"], "x"),
        )
        .await;
        assert_eq!(r.code(), 530);
        assert_eq!(inner.calls(), 0);
    }

    #[tokio::test]
    async fn authenticated_passes_without_rules() {
        let inner = Counting::default();
        let mut svc = RequireAuthLayer::new().layer(inner.clone());
        let s = session_from("192.0.2.1", "c.example", Some("ann"));
        let r = reply_of(
            &mut svc,
            mail_from(s.clone(), Some("anyone@anywhere.example")),
        )
        .await;
        assert_eq!(r.code(), 250);
        let r = reply_of(&mut svc, rcpt_to(s, None, "x@y.example")).await;
        assert_eq!(r.code(), 250);
        assert_eq!(inner.calls(), 2);
    }

    #[tokio::test]
    async fn sender_rules_per_identity() {
        let inner = Counting::default();
        let mut svc = RequireAuthLayer::new()
            .senders(rules())
            .layer(inner.clone());
        let ann = session_from("192.0.2.1", "c.example", Some("ann"));
        let cases = [
            (ann.clone(), Some("ann@example.org"), 250),
            (ann.clone(), Some("ANN@EXAMPLE.ORG"), 250),
            (ann.clone(), Some("news@lists.example.org"), 250),
            (ann.clone(), Some("bob@example.org"), 553),
            (ann.clone(), Some("ann@evil.example"), 553),
            (ann.clone(), None, 553),
            (
                session_from("192.0.2.1", "c.example", Some("mailer")),
                None,
                250,
            ),
            (
                session_from("192.0.2.1", "c.example", Some("mailer")),
                Some("m@example.org"),
                553,
            ),
            (
                session_from("192.0.2.1", "c.example", Some("admin")),
                Some("ceo@example.org"),
                250,
            ),
            (
                session_from("192.0.2.1", "c.example", Some("stranger")),
                Some("s@example.org"),
                553,
            ),
        ];
        for (s, from, want) in cases {
            let r = reply_of(&mut svc, mail_from(s, from)).await;
            assert_eq!(r.code(), want, "{from:?}");
            if want == 553 {
                assert_eq!(code(&r).1, "5.7.1");
            }
        }
        assert_eq!(inner.calls(), 5);
    }

    #[tokio::test]
    async fn works_on_the_message_service_too() {
        let svc = RequireAuthLayer::new()
            .senders(rules())
            .layer(Counting::default());
        let ann = session_from("192.0.2.1", "c.example", Some("ann"));
        let ctx = context(
            ann,
            Some("bob@example.org"),
            &["x@y.example"],
            "Subject: x\r\n\r\n",
        );
        let err = svc.oneshot(ctx).await.unwrap_err();
        assert_eq!(smtpsrv::error_reply(err).code(), 553);
    }

    #[tokio::test]
    async fn stages_without_envelope_only_need_auth() {
        let mut svc = RequireAuthLayer::new()
            .senders(rules())
            .layer(Counting::default());
        let ann = session_from("192.0.2.1", "c.example", Some("ann"));
        assert_eq!(reply_of(&mut svc, Connect::new(ann)).await.code(), 250);
        assert_eq!(
            reply_of(&mut svc, Connect::new(session())).await.code(),
            530
        );
    }
}

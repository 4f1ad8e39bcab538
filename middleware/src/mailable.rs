//! Is the sender's domain able to receive mail (bounces, replies)? This is
//! go-smtpsrv's `Mailable()` done right:
//! - the domain has MX records, and they are not a Null MX (RFC 7505: a
//!   single MX whose exchange is `.`, "this domain never accepts mail"), or
//! - it has no MX but an A or AAAA record (the implicit MX of RFC 5321 5.1).
//!
//! At `MAIL` (and later stages, reusing the result): `550 5.1.8` when the
//! domain does not exist or has neither MX nor address, `550 5.7.27` for a
//! Null MX (the code RFC 7505 3.3 gives), `451 4.1.8` when DNS fails. The
//! null sender `<>` and address literals (`user@[192.0.2.1]`) pass: there
//! is nothing to look up. The [`MailableOutcome`] goes into the extensions.
//!
//! ```
//! use smtpsrv::{BoxError, MailFrom, Reply};
//! use smtpsrv_middleware::{Resolver, mailable::MailableLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> std::io::Result<()> {
//! let on_mail = ServiceBuilder::new()
//!     .layer(MailableLayer::new(Resolver::nameservers(["127.0.0.1:53".parse().unwrap()])?))
//!     .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
//! smtpsrv::Server::builder().on_mail(on_mail).build();
//! # Ok(()) }
//! ```

use std::task::{Context, Poll};

use mail_auth::common::cache::NoCache;
use mail_auth::{MX, RecordSet};
use smtpsrv::{BoxError, Reply};
use tower::{Layer, Service};

use crate::dns::{LookupFailure, Resolver, classify};
use crate::future::{BoxResponseFuture, pass_through, refuse, take_ready};
use crate::request::{StageData, sender};

/// Why a sender domain is (not) mailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mailability {
    /// The null sender `<>`: nothing to check.
    NullSender,
    /// An address literal (`[192.0.2.1]`) or no domain: nothing to look up.
    NoLookup,
    /// The domain has MX records.
    Mx,
    /// No MX, but A or AAAA records: the implicit MX.
    ImplicitMx,
    /// A Null MX: the domain declares it accepts no mail.
    NullMx,
    /// NXDOMAIN.
    NoSuchDomain,
    /// The domain exists but has no MX, A or AAAA record.
    NoAddress,
    /// DNS failed (SERVFAIL, timeout): the answer is unknown.
    DnsFailure,
}

impl Mailability {
    /// Whether mail to the domain can be delivered (or nothing was checked).
    pub fn is_mailable(self) -> bool {
        matches!(
            self,
            Mailability::NullSender
                | Mailability::NoLookup
                | Mailability::Mx
                | Mailability::ImplicitMx
        )
    }

    /// The refusal for an unmailable domain.
    pub fn refusal(self) -> Option<Reply> {
        match self {
            Mailability::NullMx => Some(Reply::new(550, (5, 7, 27), "Sender address has null MX")),
            Mailability::NoSuchDomain | Mailability::NoAddress => Some(Reply::new(
                550,
                (5, 1, 8),
                "Sender address rejected: domain cannot receive mail",
            )),
            Mailability::DnsFailure => Some(Reply::new(
                451,
                (4, 1, 8),
                "Sender address rejected: domain lookup failed, try again later",
            )),
            _ => None,
        }
    }
}

/// The check of one sender domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailableOutcome {
    domain: Option<String>,
    verdict: Mailability,
}

impl MailableOutcome {
    /// The domain checked; `None` for the null sender.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The verdict.
    pub fn verdict(&self) -> Mailability {
        self.verdict
    }
}

/// Checks whether `domain` can receive mail.
pub async fn check(resolver: &Resolver, domain: &str) -> Mailability {
    if domain.is_empty() || domain.starts_with('[') {
        return Mailability::NoLookup;
    }
    let auth = resolver.authenticator();
    match auth
        .mx_lookup(domain, None::<&NoCache<Box<str>, RecordSet<MX>>>)
        .await
    {
        Ok(set) => {
            let exchanges: Vec<&str> = set
                .rrset
                .iter()
                .flat_map(|mx| mx.exchanges.iter().map(|e| &**e))
                .collect();
            match exchanges.as_slice() {
                [] => {}
                [only] if matches!(*only, "." | "") => return Mailability::NullMx,
                _ => return Mailability::Mx,
            }
        }
        Err(e) => match classify(&e) {
            LookupFailure::NoSuchDomain => return Mailability::NoSuchDomain,
            LookupFailure::Temporary => return Mailability::DnsFailure,
            LookupFailure::NoRecords => {}
        },
    }
    let v4 = auth
        .ipv4_lookup(domain, None::<&NoCache<_, _>>)
        .await
        .map(|s| s.rrset.is_empty());
    if matches!(v4, Ok(false)) {
        return Mailability::ImplicitMx;
    }
    let v6 = auth
        .ipv6_lookup(domain, None::<&NoCache<_, _>>)
        .await
        .map(|s| s.rrset.is_empty());
    if matches!(v6, Ok(false)) {
        return Mailability::ImplicitMx;
    }
    let failures = [v4.err(), v6.err()]
        .into_iter()
        .flatten()
        .map(|e| classify(&e));
    if failures.into_iter().any(|f| f == LookupFailure::Temporary) {
        Mailability::DnsFailure
    } else {
        Mailability::NoAddress
    }
}

/// Refuses senders whose domain cannot receive mail; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MailableLayer {
    resolver: Resolver,
}

impl MailableLayer {
    /// Checks with `resolver`.
    pub fn new(resolver: Resolver) -> Self {
        MailableLayer { resolver }
    }
}

impl<S> Layer<S> for MailableLayer {
    type Service = Mailable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Mailable {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

/// The service of [`MailableLayer`].
#[derive(Debug, Clone)]
pub struct Mailable<S> {
    inner: S,
    resolver: Resolver,
}

impl<S, R> Service<R> for Mailable<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    R: StageData,
{
    type Response = S::Response;
    type Error = BoxError;
    /// Boxed: the DNS lookups are mail-auth `async fn`s.
    type Future = BoxResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let domain = match sender(&req) {
            None => {
                return pass_through(self.inner.call(req));
            }
            Some(from) => from.map(|a| a.domain().unwrap_or_default().to_ascii_lowercase()),
        };
        let mut inner = take_ready(&mut self.inner);
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let outcome = match req.extension::<MailableOutcome>() {
                Some(known) if known.domain == domain => known,
                _ => {
                    let verdict = match &domain {
                        None => Mailability::NullSender,
                        Some(d) => check(&resolver, d).await,
                    };
                    MailableOutcome { domain, verdict }
                }
            };
            let refusal = outcome.verdict.refusal();
            if refusal.is_some() {
                tracing::info!(domain = outcome.domain(), verdict = ?outcome.verdict, "sender domain not mailable");
            }
            req.insert_extension(outcome);
            match refusal {
                Some(reply) => Err(refuse(reply)),
                None => inner.call(req).await.map_err(Into::into),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dns::Zone;
    use crate::test_support::*;

    fn zone() -> Zone {
        Zone::new()
            .mx("mx.example", 10, "mail.mx.example")
            .a("mail.mx.example", "192.0.2.25".parse().unwrap())
            .a("a-only.example", "192.0.2.26".parse().unwrap())
            .aaaa("aaaa-only.example", "2001:db8::26".parse().unwrap())
            .mx("nullmx.example", 0, ".")
            .a("nullmx.example", "192.0.2.27".parse().unwrap())
            .txt("txt-only.example", "v=spf1 -all")
            .servfail("broken.example")
    }

    #[tokio::test]
    async fn verdicts() {
        let r = resolver(zone()).await;
        let cases = [
            ("mx.example", Mailability::Mx),
            ("a-only.example", Mailability::ImplicitMx),
            ("aaaa-only.example", Mailability::ImplicitMx),
            ("nullmx.example", Mailability::NullMx),
            ("nxdomain.example", Mailability::NoSuchDomain),
            ("txt-only.example", Mailability::NoAddress),
            ("broken.example", Mailability::DnsFailure),
            ("[192.0.2.1]", Mailability::NoLookup),
        ];
        for (domain, want) in cases {
            assert_eq!(check(&r, domain).await, want, "{domain}");
        }
    }

    #[tokio::test]
    async fn replies_at_mail() {
        let r = resolver(zone()).await;
        let inner = Counting::default();
        let mut svc = MailableLayer::new(r).layer(inner.clone());
        let cases = [
            (Some("a@mx.example"), (250, "2.0.0")),
            (Some("a@A-Only.example"), (250, "2.0.0")),
            (None, (250, "2.0.0")),
            (Some("a@nullmx.example"), (550, "5.7.27")),
            (Some("a@nxdomain.example"), (550, "5.1.8")),
            (Some("a@txt-only.example"), (550, "5.1.8")),
            (Some("a@broken.example"), (451, "4.1.8")),
        ];
        for (from, (c, status)) in cases {
            let reply = reply_of(&mut svc, mail_from(session(), from)).await;
            assert_eq!(code(&reply), (c, status.to_string()), "{from:?}");
        }
        assert_eq!(inner.calls(), 3);
    }

    #[tokio::test]
    async fn later_stages_reuse_the_outcome() {
        // An empty zone would say NXDOMAIN: the stored outcome wins.
        let r = resolver(Zone::new()).await;
        let mut svc = MailableLayer::new(r).layer(Counting::default());
        let mut ctx = context(
            session(),
            Some("a@mx.example"),
            &["b@x.example"],
            "Subject: x\r\n\r\n",
        );
        smtpsrv::Stage::insert_extension(
            &mut ctx,
            MailableOutcome {
                domain: Some("mx.example".into()),
                verdict: Mailability::Mx,
            },
        );
        assert_eq!(reply_of(&mut svc, ctx).await.code(), 250);
        let ctx = context(
            session(),
            Some("a@mx.example"),
            &["b@x.example"],
            "Subject: x\r\n\r\n",
        );
        assert_eq!(reply_of(&mut svc, ctx).await.code(), 550);
    }
}

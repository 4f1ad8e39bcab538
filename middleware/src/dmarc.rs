//! DMARC (RFC 7489 and its successor) on the complete message with
//! mail-auth: is the `From:` domain aligned with a passing SPF or DKIM
//! identity, and what does its owner want done when it is not?
//!
//! Works on the message service (the `DATA` stage). It reuses what earlier
//! layers left in the extensions — the [`SpfOutcome`] of `MAIL`, the
//! [`DkimOutcome`] and the shared parse — and computes what is missing, so
//! it also works alone. The [`DmarcOutcome`] goes into the extensions.
//! Like [`dkim`](crate::dkim), it reads a spilled body from its file and
//! reads a streaming body to its end before calling the handler (see there
//! why it buffers rather than refusing streaming servers).
//!
//! Policy: tag only by default; [`reject_on_policy`](DmarcLayer::reject_on_policy)
//! refuses with `550 5.7.1` when DMARC fails and the domain's policy is
//! `reject` (after `t=y` test mode lowered it, if set).
//! [`authentication_results`](DmarcLayer::authentication_results) puts an
//! `Authentication-Results` header (SPF, DKIM and DMARC) on top of the
//! message.
//!
//! ```
//! use smtpsrv::{BoxError, Context};
//! use smtpsrv_middleware::{Resolver, dkim::DkimLayer, dmarc::{DmarcLayer, DmarcOutcome}, spf::SpfLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> std::io::Result<()> {
//! let resolver = Resolver::nameservers(["127.0.0.1:53".parse().unwrap()])?;
//! let handler = ServiceBuilder::new()
//!     .layer(SpfLayer::new(resolver.clone()))
//!     .layer(DkimLayer::new(resolver.clone()))
//!     .layer(DmarcLayer::new(resolver).reject_on_policy().authentication_results("mx.example.com"))
//!     .service_fn(|ctx: Context| async move {
//!         if let Some(dmarc) = ctx.extensions().get::<DmarcOutcome>() {
//!             println!("DMARC for {}: {:?}", dmarc.domain(), dmarc.result());
//!         }
//!         Ok::<_, BoxError>(())
//!     });
//! # drop(handler); Ok(()) }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticationResults, DmarcOutput, DmarcResult};
use smtpsrv::{BodyError, BoxError, Reply};
use tower::{Layer, Service};

use crate::dkim::{DkimOutcome, outcome_of};
use crate::dns::Resolver;
use crate::future::{BoxResponseFuture, pass_through, refuse, take_ready};
use crate::request::{StageData, client_ip, sender};
use crate::spf::{self, SpfOutcome};

/// The DMARC evaluation of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcOutcome {
    output: DmarcOutput,
}

impl DmarcOutcome {
    /// `pass`, `fail`, `temperror`, `permerror` or `none` (no policy).
    pub fn result(&self) -> DmarcResult {
        self.output.result()
    }

    /// Whether DMARC passed.
    pub fn passed(&self) -> bool {
        self.result() == DmarcResult::Pass
    }

    /// The policy to apply to a failing message.
    pub fn policy(&self) -> Policy {
        self.output.policy()
    }

    /// The `From:` domain that was evaluated.
    pub fn domain(&self) -> &str {
        self.output.domain()
    }

    /// Whether a failing message should be rejected (policy `reject`).
    pub fn wants_reject(&self) -> bool {
        matches!(self.result(), DmarcResult::Fail(_)) && self.policy() == Policy::Reject
    }

    /// mail-auth's output (aligned SPF and DKIM results, the record).
    pub fn output(&self) -> &DmarcOutput {
        &self.output
    }
}

#[derive(Debug, Clone)]
struct Config {
    receiver: String,
    reject_on_policy: bool,
    authentication_results: bool,
}

/// Evaluates DMARC; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct DmarcLayer {
    resolver: Resolver,
    config: Arc<Config>,
}

impl DmarcLayer {
    /// Tags only: the outcome goes into the extensions.
    pub fn new(resolver: Resolver) -> Self {
        DmarcLayer {
            resolver,
            config: Arc::new(Config {
                receiver: "localhost".into(),
                reject_on_policy: false,
                authentication_results: false,
            }),
        }
    }

    /// This server's host name (SPF's `%{r}` macro and the header).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).receiver = name.into();
        self
    }

    /// Refuses with `550 5.7.1` when DMARC fails and the policy is `reject`.
    pub fn reject_on_policy(mut self) -> Self {
        Arc::make_mut(&mut self.config).reject_on_policy = true;
        self
    }

    /// Puts an `Authentication-Results` header (SPF, DKIM, DMARC) on top
    /// of the message; `hostname` is this server's authserv-id.
    pub fn authentication_results(self, hostname: impl Into<String>) -> Self {
        let mut layer = self.hostname(hostname);
        Arc::make_mut(&mut layer.config).authentication_results = true;
        layer
    }
}

impl<S> Layer<S> for DmarcLayer {
    type Service = Dmarc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Dmarc {
            inner,
            resolver: self.resolver.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service of [`DmarcLayer`].
#[derive(Debug, Clone)]
pub struct Dmarc<S> {
    inner: S,
    resolver: Resolver,
    config: Arc<Config>,
}

/// `550 5.7.1` for a message its author domain asks to reject.
pub fn rejected(domain: &str) -> Reply {
    Reply::rejected().with_text(format!("Rejected by the DMARC policy of {domain}"))
}

/// Evaluates `req` (a message) and leaves SPF, DKIM and DMARC outcomes in
/// its extensions; returns the DMARC outcome and the header to add.
async fn evaluate<R: StageData>(
    req: &mut R,
    resolver: &Resolver,
    config: &Config,
) -> Result<(DmarcOutcome, Option<String>), BodyError> {
    let ip = client_ip(req);
    let helo = req.session().helo_name().unwrap_or_default().to_owned();
    let from = sender(req).flatten().cloned();
    let spf = match req.extension::<SpfOutcome>() {
        Some(known)
            if known.client_ip() == ip && known.sender() == from.as_ref().map(|a| a.as_str()) =>
        {
            known
        }
        _ => {
            let fresh = spf::check(resolver, &config.receiver, ip, &helo, from.as_ref()).await;
            req.insert_extension(fresh.clone());
            fresh
        }
    };
    let dkim: DkimOutcome = outcome_of(req, resolver).await?;
    let Some(message) = dkim.message() else {
        // No header at all: nothing to evaluate against.
        return Ok((
            DmarcOutcome {
                output: DmarcOutput::default(),
            },
            None,
        ));
    };
    let dkim_outputs = dkim.outputs();
    // RFC 7489 4.1: the HELO identity stands in for the null sender.
    let mail_from_domain = match &from {
        Some(a) => a.domain().unwrap_or_default(),
        None => helo.as_str(),
    };
    let params = DmarcParameters::new(message.get(), &dkim_outputs, mail_from_domain, spf.output());
    let output = resolver.authenticator().verify_dmarc(params).await;
    let header = config.authentication_results.then(|| {
        let results = AuthenticationResults::new(&config.receiver)
            .with_dkim_results(&dkim_outputs, message.get().from());
        let results = match &from {
            Some(a) => results.with_spf_mailfrom_result(spf.output(), ip, a.as_str(), &helo),
            None => results.with_spf_ehlo_result(spf.output(), ip, &helo),
        };
        results.with_dmarc_result(&output).to_header()
    });
    Ok((DmarcOutcome { output }, header))
}

impl<S, R> Service<R> for Dmarc<S>
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
        if req.body().is_none() {
            return pass_through(self.inner.call(req));
        }
        let mut inner = take_ready(&mut self.inner);
        let resolver = self.resolver.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let (outcome, header) = evaluate(&mut req, &resolver, &config).await?;
            tracing::debug!(domain = outcome.domain(), result = ?outcome.result(), policy = %outcome.policy(), "DMARC evaluated");
            let refuse_it = config.reject_on_policy && outcome.wants_reject();
            let domain = outcome.domain().to_owned();
            req.insert_extension(outcome);
            if refuse_it {
                return Err(refuse(rejected(&domain)));
            }
            if let Some(header) = header {
                req.prepend_header(&header);
            }
            inner.call(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dns::Zone;
    use crate::test_support::*;
    use smtpsrv::Stage;
    use tower::ServiceExt;

    fn message(from: &str) -> String {
        format!("From: {from}\r\nTo: bob@example.net\r\nSubject: Hello\r\n\r\nHi.\r\n")
    }

    fn zone(key: &DkimKey) -> Zone {
        let zone = Zone::new()
            .txt("_dmarc.strict.example", "v=DMARC1; p=reject")
            .txt("_dmarc.relaxed.example", "v=DMARC1; p=none")
            .txt("_dmarc.testing.example", "v=DMARC1; p=reject; t=y")
            .txt("strict.example", "v=spf1 ip4:192.0.2.1 -all")
            .txt("bounces.strict.example", "v=spf1 ip4:192.0.2.1 -all")
            .txt("other.example", "v=spf1 ip4:198.51.100.9 -all")
            .a("strict.example", "192.0.2.1".parse().unwrap());
        key.publish(zone, "strict.example", "s1")
    }

    async fn run(
        svc: &mut Dmarc<Counting>,
        ip: &str,
        mail_from: &str,
        raw: &str,
    ) -> smtpsrv::Reply {
        let s = session_from(ip, "client.example", None);
        reply_of(svc, context(s, Some(mail_from), &["bob@example.net"], raw)).await
    }

    #[tokio::test]
    async fn reject_policy_refuses_unaligned_mail() {
        let key = DkimKey::generate();
        let r = resolver(zone(&key)).await;
        let inner = Counting::default();
        let mut svc = DmarcLayer::new(r).reject_on_policy().layer(inner.clone());
        let spoof = message("ceo@strict.example");
        // SPF passes, but for other.example: not aligned, no DKIM.
        let reply = run(&mut svc, "198.51.100.9", "x@other.example", &spoof).await;
        assert_eq!(code(&reply), (550, "5.7.1".into()));
        assert!(reply.text().contains("strict.example"));
        // Aligned SPF pass (relaxed: a subdomain of the From domain).
        let reply = run(&mut svc, "192.0.2.1", "x@bounces.strict.example", &spoof).await;
        assert_eq!(reply.code(), 250);
        // Aligned DKIM pass from an address SPF does not allow.
        let signed = key.sign(&spoof, "strict.example", "s1");
        let reply = run(&mut svc, "198.51.100.9", "x@other.example", &signed).await;
        assert_eq!(reply.code(), 250);
        // p=none and t=y: fail, but not refused.
        let reply = run(
            &mut svc,
            "198.51.100.9",
            "x@other.example",
            &message("a@relaxed.example"),
        )
        .await;
        assert_eq!(reply.code(), 250);
        let reply = run(
            &mut svc,
            "198.51.100.9",
            "x@other.example",
            &message("a@testing.example"),
        )
        .await;
        assert_eq!(reply.code(), 250);
        // No DMARC record.
        let reply = run(
            &mut svc,
            "198.51.100.9",
            "x@other.example",
            &message("a@nodmarc.example"),
        )
        .await;
        assert_eq!(reply.code(), 250);
        assert_eq!(inner.calls(), 5);
    }

    #[tokio::test]
    async fn tag_only_leaves_every_outcome_and_the_header() {
        let key = DkimKey::generate();
        let r = resolver(zone(&key)).await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let svc = DmarcLayer::new(r)
            .authentication_results("mx.test")
            .layer(tower::service_fn(move |ctx: smtpsrv::Context| {
                *seen2.lock().unwrap() = Some(ctx);
                async { Ok::<_, BoxError>(()) }
            }));
        let s = session_from("198.51.100.9", "client.example", None);
        let ctx = context(
            s,
            Some("x@other.example"),
            &["bob@example.net"],
            &message("ceo@strict.example"),
        );
        svc.oneshot(ctx).await.unwrap();
        let ctx = seen.lock().unwrap().take().unwrap();
        let dmarc = ctx.extension::<DmarcOutcome>().unwrap();
        assert!(matches!(dmarc.result(), DmarcResult::Fail(_)), "{dmarc:?}");
        assert_eq!(
            (dmarc.policy(), dmarc.domain()),
            (Policy::Reject, "strict.example")
        );
        assert!(dmarc.wants_reject());
        assert_eq!(
            ctx.extension::<SpfOutcome>().unwrap().result(),
            mail_auth::SpfResult::Pass
        );
        assert!(
            ctx.extension::<DkimOutcome>()
                .unwrap()
                .signatures()
                .is_empty()
        );
        let text = String::from_utf8(ctx.message().unwrap().to_vec()).unwrap();
        assert!(
            text.starts_with("Authentication-Results: mx.test;"),
            "{text}"
        );
        assert!(text.contains("spf=pass"), "{text}");
        assert!(text.contains("dmarc=fail"), "{text}");
        assert!(text.contains("policy.dmarc=reject"), "{text}");
    }

    #[tokio::test]
    async fn reuses_the_dkim_outcome_of_an_earlier_layer() {
        let key = DkimKey::generate();
        let r = resolver(zone(&key)).await;
        let signed = key.sign(&message("ceo@strict.example"), "strict.example", "s1");
        let s = session_from("198.51.100.9", "client.example", None);
        let mut ctx = context(s, Some("x@other.example"), &["bob@example.net"], &signed);
        let dkim = outcome_of(&mut ctx, &r).await.unwrap();
        assert!(dkim.passed());
        // The key disappears: only the earlier outcome can make DMARC pass.
        let r2 = resolver(Zone::new().txt("_dmarc.strict.example", "v=DMARC1; p=reject")).await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let svc = DmarcLayer::new(r2)
            .reject_on_policy()
            .layer(tower::service_fn(move |ctx: smtpsrv::Context| {
                *seen2.lock().unwrap() = ctx.extension::<DmarcOutcome>();
                async { Ok::<_, BoxError>(()) }
            }));
        svc.oneshot(ctx).await.unwrap();
        assert!(seen.lock().unwrap().as_ref().unwrap().passed());
    }
}

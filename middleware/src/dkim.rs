//! DKIM (RFC 6376) verification of the complete message with mail-auth.
//!
//! Works on the message service (the `DATA` stage); at other stages it
//! passes requests through.
//!
//! DKIM needs the whole message, and mail-auth parses a byte slice, so the
//! message is in memory while the parse lives (it is kept for DMARC and the
//! handler). A spilled body is read from its file, asynchronously, and stays
//! spilled for the handler. On a streaming server the layer reads the body
//! to its end before calling the handler, which then gets it whole, in
//! memory (at most the server's size limit): the layer works, but the
//! handler behind it no longer streams. It buffers rather than refusing to
//! be built because a layer cannot know how the server runs, and a refusal
//! at every message would answer all mail `451`. A transfer that fails
//! while the layer reads (too large, client gone) is an error from the
//! layer; the server answers it as without the layer. Every signature's result goes into a
//! [`DkimOutcome`] in the extensions, next to the shared parse
//! ([`AuthMessage`]) that [`dmarc`](crate::dmarc) and the handler reuse.
//!
//! Policy: tag only by default;
//! [`reject_unless_pass`](DkimLayer::reject_unless_pass) refuses messages
//! with no passing signature with `550 5.7.20` (RFC 7372), or `451 4.7.20`
//! when only DNS failures kept a signature from passing.
//! [`authentication_results`](DkimLayer::authentication_results) puts an
//! `Authentication-Results` header with the DKIM results on top of the
//! message (with [`dmarc`](crate::dmarc) in the stack, let that layer write
//! the header instead: it has SPF, DKIM and DMARC).
//!
//! ```
//! use std::sync::Arc;
//! use smtpsrv::{BoxError, Context, Envelope, SessionInfo};
//! use smtpsrv_middleware::{Resolver, dkim::{DkimLayer, DkimOutcome}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! // Your local resolver; an unsigned message needs no lookup.
//! let resolver = Resolver::nameservers(["127.0.0.1:53".parse().unwrap()])?;
//! let handler = ServiceBuilder::new()
//!     .layer(DkimLayer::new(resolver).authentication_results("mx.example.com"))
//!     .service_fn(|ctx: Context| async move {
//!         let dkim = ctx.extensions().get::<DkimOutcome>().unwrap();
//!         let signed_by: Vec<&str> = dkim.passing_domains().collect();
//!         assert!(signed_by.is_empty());
//!         assert!(ctx.message()?.starts_with(b"Authentication-Results: mx.example.com;\r\n\tdkim=none\r\n"));
//!         Ok::<_, BoxError>(())
//!     });
//! let session = SessionInfo::new("192.0.2.1:4000".parse().unwrap(), "127.0.0.1:25".parse().unwrap());
//! let ctx = Context::new(Arc::new(session), Envelope::default(), "From: a@example.org\r\n\r\nhi\r\n".into());
//! handler.oneshot(ctx).await.unwrap();
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::{AuthenticationResults, DkimOutput, DkimResult};
use smtpsrv::{BodyError, BoxError, Reply};
use tower::{Layer, Service};

use crate::dns::Resolver;
use crate::future::{BoxResponseFuture, pass_through, refuse, take_ready};
use crate::message::AuthMessage;
use crate::request::StageData;

/// The result of one `DKIM-Signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSignatureResult {
    result: DkimResult,
    domain: String,
    selector: String,
    /// Which `DKIM-Signature` of the parse this is, to rebuild mail-auth's
    /// output for DMARC.
    index: Option<usize>,
}

impl DkimSignatureResult {
    /// `pass`, `fail`, `neutral`, `temperror`, `permerror` (with the reason).
    pub fn result(&self) -> &DkimResult {
        &self.result
    }

    /// Whether the signature verified.
    pub fn passed(&self) -> bool {
        self.result == DkimResult::Pass
    }

    /// The signing domain (`d=`); empty for a signature too broken to parse.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }
}

/// The DKIM results of one message.
#[derive(Debug, Clone)]
pub struct DkimOutcome {
    signatures: Arc<[DkimSignatureResult]>,
    message: Option<AuthMessage>,
}

impl DkimOutcome {
    /// One result per signature (none for an unsigned message).
    pub fn signatures(&self) -> &[DkimSignatureResult] {
        &self.signatures
    }

    /// Whether at least one signature verified.
    pub fn passed(&self) -> bool {
        self.signatures.iter().any(DkimSignatureResult::passed)
    }

    /// The domains of the signatures that verified.
    pub fn passing_domains(&self) -> impl Iterator<Item = &str> {
        self.signatures
            .iter()
            .filter(|s| s.passed())
            .map(DkimSignatureResult::domain)
    }

    /// The parse that was verified.
    pub fn message(&self) -> Option<&AuthMessage> {
        self.message.as_ref()
    }

    /// mail-auth's outputs again, borrowing the parse (for DMARC and
    /// `Authentication-Results`).
    pub fn outputs(&self) -> Vec<DkimOutput<'_>> {
        let Some(message) = &self.message else {
            return Vec::new();
        };
        let headers = &message.get().dkim_headers;
        self.signatures
            .iter()
            .filter_map(|s| {
                let output = match s.result.clone() {
                    DkimResult::Pass => DkimOutput::pass(),
                    DkimResult::Fail(e) => DkimOutput::fail(e),
                    DkimResult::Neutral(e) => DkimOutput::neutral(e),
                    DkimResult::PermError(e) => DkimOutput::perm_err(e),
                    DkimResult::TempError(e) => DkimOutput::temp_err(e),
                    DkimResult::None => return None,
                };
                Some(match s.index.and_then(|i| headers.get(i)) {
                    Some(h) => output.with_signature(&h.header),
                    None => output,
                })
            })
            .collect()
    }

    /// An `Authentication-Results` header field with the DKIM results,
    /// CRLF included; `hostname` is this server's authserv-id.
    pub fn authentication_results(&self, hostname: &str) -> String {
        if self.signatures.is_empty() {
            // mail-auth writes "none" for no results at all; RFC 8601 wants
            // the method named for an unsigned message.
            return format!("Authentication-Results: {hostname};\r\n\tdkim=none\r\n");
        }
        let from = self.message.as_ref().map_or("", |m| m.get().from());
        AuthenticationResults::new(hostname)
            .with_dkim_results(&self.outputs(), from)
            .to_header()
    }
}

/// Verifies every DKIM signature of `message`.
pub async fn verify(resolver: &Resolver, message: Option<AuthMessage>) -> DkimOutcome {
    let Some(message) = message else {
        return DkimOutcome {
            signatures: Arc::new([]),
            message: None,
        };
    };
    let parsed = message.get();
    let outputs = resolver.authenticator().verify_dkim(parsed).await;
    let signatures = outputs
        .iter()
        .map(|o| {
            let signature = o.signature();
            DkimSignatureResult {
                result: o.result().clone(),
                domain: signature.map(|s| s.d.clone()).unwrap_or_default(),
                selector: signature.map(|s| s.s.clone()).unwrap_or_default(),
                index: signature.and_then(|sig| {
                    parsed
                        .dkim_headers
                        .iter()
                        .position(|h| std::ptr::eq(&h.header, sig))
                }),
            }
        })
        .collect();
    drop(outputs);
    DkimOutcome {
        signatures,
        message: Some(message),
    }
}

#[derive(Debug, Clone, Default)]
struct Config {
    reject_unless_pass: bool,
    authentication_results: Option<String>,
}

/// Verifies DKIM signatures; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct DkimLayer {
    resolver: Resolver,
    config: Arc<Config>,
}

impl DkimLayer {
    /// Tags only: results go into the extensions.
    pub fn new(resolver: Resolver) -> Self {
        DkimLayer {
            resolver,
            config: Arc::default(),
        }
    }

    /// Refuses messages without a passing signature: `550 5.7.20`, or
    /// `451 4.7.20` when a signature could not be checked for a DNS failure.
    pub fn reject_unless_pass(mut self) -> Self {
        Arc::make_mut(&mut self.config).reject_unless_pass = true;
        self
    }

    /// Puts an `Authentication-Results` header on top of the message;
    /// `hostname` is this server's authserv-id.
    pub fn authentication_results(mut self, hostname: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).authentication_results = Some(hostname.into());
        self
    }
}

impl<S> Layer<S> for DkimLayer {
    type Service = Dkim<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Dkim {
            inner,
            resolver: self.resolver.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service of [`DkimLayer`].
#[derive(Debug, Clone)]
pub struct Dkim<S> {
    inner: S,
    resolver: Resolver,
    config: Arc<Config>,
}

fn refusal(outcome: &DkimOutcome) -> Reply {
    let temporary = outcome
        .signatures()
        .iter()
        .any(|s| matches!(s.result(), DkimResult::TempError(_)));
    if temporary {
        Reply::new(
            451,
            (4, 7, 20),
            "DKIM signature could not be verified, try again later",
        )
    } else {
        Reply::new(550, (5, 7, 20), "No passing DKIM signature found")
    }
}

/// The outcome in `req`'s extensions if it is of the current parse, or a
/// new verification (left in the extensions).
/// A body that cannot be read whole (failed transfer, unreadable spill
/// file) is the error.
pub(crate) async fn outcome_of<R: StageData>(
    req: &mut R,
    resolver: &Resolver,
) -> Result<DkimOutcome, BodyError> {
    let message = AuthMessage::of(req).await?;
    if let Some(known) = req.extension::<DkimOutcome>()
        && known.message.is_some()
    {
        return Ok(known);
    }
    let outcome = verify(resolver, message).await;
    req.insert_extension(outcome.clone());
    Ok(outcome)
}

impl<S, R> Service<R> for Dkim<S>
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
            let outcome = outcome_of(&mut req, &resolver).await?;
            tracing::debug!(
                signatures = outcome.signatures().len(),
                passed = outcome.passed(),
                "DKIM verified"
            );
            if config.reject_unless_pass && !outcome.passed() {
                return Err(refuse(refusal(&outcome)));
            }
            if let Some(hostname) = &config.authentication_results {
                req.prepend_header(&outcome.authentication_results(hostname));
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

    const MESSAGE: &str = "From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: Hello\r\n\r\nHi Bob,\r\nsee you.\r\n";

    #[tokio::test]
    async fn valid_signature_passes_and_tampered_body_fails() {
        let key = DkimKey::generate();
        let r = resolver(key.publish(Zone::new(), "example.org", "s1")).await;
        let signed = key.sign(MESSAGE, "example.org", "s1");

        let o = verify(&r, AuthMessage::parse(signed.clone().into())).await;
        assert_eq!(o.signatures().len(), 1);
        assert_eq!(o.signatures()[0].result(), &DkimResult::Pass);
        assert_eq!(
            (o.signatures()[0].domain(), o.signatures()[0].selector()),
            ("example.org", "s1")
        );
        assert!(o.passed());

        // mail-auth reports a body hash mismatch as `neutral` with the reason.
        let tampered = signed.replace("see you.", "send money.");
        let o = verify(&r, AuthMessage::parse(tampered.into())).await;
        let body_hash = mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch);
        assert_eq!(o.signatures()[0].result(), &DkimResult::Neutral(body_hash));
        assert!(!o.passed());

        let tampered = signed.replace("Subject: Hello", "Subject: Invoice");
        let o = verify(&r, AuthMessage::parse(tampered.into())).await;
        assert!(
            matches!(o.signatures()[0].result(), DkimResult::Fail(_)),
            "{:?}",
            o.signatures()
        );
        assert!(!o.passed());

        let o = verify(&r, AuthMessage::parse(MESSAGE.into())).await;
        assert!(o.signatures().is_empty() && !o.passed());
    }

    #[tokio::test]
    async fn a_key_that_is_not_published_is_a_permerror_and_dns_failure_a_temperror() {
        let key = DkimKey::generate();
        let zone = Zone::new().servfail("s2._domainkey.example.org");
        let r = resolver(zone).await;
        let o = verify(
            &r,
            AuthMessage::parse(key.sign(MESSAGE, "example.org", "s1").into()),
        )
        .await;
        assert!(
            matches!(o.signatures()[0].result(), DkimResult::PermError(_)),
            "{:?}",
            o.signatures()
        );
        let o = verify(
            &r,
            AuthMessage::parse(key.sign(MESSAGE, "example.org", "s2").into()),
        )
        .await;
        assert!(
            matches!(o.signatures()[0].result(), DkimResult::TempError(_)),
            "{:?}",
            o.signatures()
        );
    }

    #[tokio::test]
    async fn layer_refuses_unless_a_signature_passes() {
        let key = DkimKey::generate();
        let zone = key
            .publish(Zone::new(), "example.org", "s1")
            .servfail("s9._domainkey.example.org");
        let r = resolver(zone).await;
        let inner = Counting::default();
        let mut svc = DkimLayer::new(r).reject_unless_pass().layer(inner.clone());
        let signed = key.sign(MESSAGE, "example.org", "s1");
        let cases = [
            (signed.clone(), (250, "2.0.0")),
            (signed.replace("see you.", "bye."), (550, "5.7.20")),
            (MESSAGE.to_owned(), (550, "5.7.20")),
            (key.sign(MESSAGE, "example.org", "s9"), (451, "4.7.20")),
        ];
        for (msg, (c, status)) in cases {
            let ctx = context(
                session(),
                Some("ann@example.org"),
                &["bob@example.net"],
                &msg,
            );
            assert_eq!(
                code(&reply_of(&mut svc, ctx).await),
                (c, status.to_string())
            );
        }
        assert_eq!(inner.calls(), 1);
        // Before DATA there is nothing to verify.
        assert_eq!(
            reply_of(&mut svc, mail_from(session(), Some("a@b.example")))
                .await
                .code(),
            250
        );
    }

    #[tokio::test]
    async fn tags_and_adds_authentication_results() {
        let key = DkimKey::generate();
        let r = resolver(key.publish(Zone::new(), "example.org", "s1")).await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let svc = DkimLayer::new(r)
            .authentication_results("mx.test")
            .layer(tower::service_fn(move |ctx: smtpsrv::Context| {
                *seen2.lock().unwrap() = Some(ctx);
                async { Ok::<_, BoxError>(()) }
            }));
        let ctx = context(
            session(),
            Some("ann@example.org"),
            &["bob@example.net"],
            &key.sign(MESSAGE, "example.org", "s1"),
        );
        svc.oneshot(ctx).await.unwrap();
        let ctx = seen.lock().unwrap().take().unwrap();
        let text = String::from_utf8(ctx.message().unwrap().to_vec()).unwrap();
        assert!(
            text.starts_with("Authentication-Results: mx.test;"),
            "{text}"
        );
        assert!(text.contains("dkim=pass"), "{text}");
        assert!(text.contains("header.d=example.org"), "{text}");
        let o = ctx.extension::<DkimOutcome>().unwrap();
        assert_eq!(o.passing_domains().collect::<Vec<_>>(), ["example.org"]);
        // The shared parse is the one the client sent, without our header.
        let shared = ctx.extension::<AuthMessage>().unwrap();
        assert!(!shared.raw().starts_with(b"Authentication-Results"));
    }
}

//! SPF (RFC 7208) with mail-auth: checks the client's IP address (never
//! `ip:port`; IPv4-mapped IPv6 addresses are checked as IPv4) against the
//! `MAIL FROM` domain, or the HELO name for the null sender.
//!
//! The [`SpfOutcome`] goes into the request's extensions, where later
//! stages and the handler find it. Policy, per layer:
//! - tag only (the default): never refuses;
//! - [`reject_fail`](SpfLayer::reject_fail): `550 5.7.23` on `fail`;
//! - [`reject_permerror`](SpfLayer::reject_permerror): `550 5.7.24` on `permerror`;
//! - [`tempfail_temperror`](SpfLayer::tempfail_temperror): `451 4.7.24` on `temperror`.
//!
//! Put it on the `MAIL` hook to refuse before any data is read. On the
//! message service it reuses the outcome of `MAIL` (no second lookup), and
//! with [`received_spf`](SpfLayer::received_spf) it puts a `Received-SPF`
//! header on top of the message.
//!
//! ```
//! use smtpsrv::{BoxError, Context, MailFrom, Reply};
//! use smtpsrv_middleware::{Resolver, spf::{SpfLayer, SpfOutcome}};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> std::io::Result<()> {
//! let resolver = Resolver::nameservers(["127.0.0.1:53".parse().unwrap()])?;
//! let on_mail = ServiceBuilder::new()
//!     .layer(SpfLayer::new(resolver.clone()).reject_fail().tempfail_temperror())
//!     .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
//! let handler = ServiceBuilder::new()
//!     .layer(SpfLayer::new(resolver).received_spf("mx.example.com"))
//!     .service_fn(|ctx: Context| async move {
//!         let spf = ctx.extensions().get::<SpfOutcome>();
//!         println!("SPF: {:?}", spf.map(|o| o.result()));
//!         Ok::<_, BoxError>(())
//!     });
//! smtpsrv::Server::builder().on_mail(on_mail).build();
//! # drop(handler); Ok(()) }
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{ReceivedSpf, SpfOutput, SpfResult};
use smtpsrv::{Address, BoxError, Reply};
use tower::{Layer, Service};

use crate::dns::Resolver;
use crate::future::{BoxResponseFuture, pass_through, refuse, take_ready};
use crate::request::{StageData, client_ip, sender};

/// Which identity SPF checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfIdentity {
    /// The `MAIL FROM` domain.
    MailFrom,
    /// The HELO/EHLO name: for the null sender `<>`.
    Helo,
}

/// An SPF check's result and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    identity: SpfIdentity,
    sender: Option<String>,
    helo: String,
    client_ip: IpAddr,
    output: SpfOutput,
}

impl SpfOutcome {
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror` or `permerror`.
    pub fn result(&self) -> SpfResult {
        self.output.result()
    }

    /// Which identity was checked.
    pub fn identity(&self) -> SpfIdentity {
        self.identity
    }

    /// The domain whose policy was evaluated.
    pub fn domain(&self) -> &str {
        self.output.domain()
    }

    /// The `MAIL FROM` address; `None` for the null sender.
    pub fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    /// The HELO name.
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// The client IP address that was checked.
    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    /// The domain's explanation (`exp=`) for a fail, if any.
    pub fn explanation(&self) -> Option<&str> {
        self.output.explanation()
    }

    /// mail-auth's output, e.g. for an `Authentication-Results` header.
    pub fn output(&self) -> &SpfOutput {
        &self.output
    }

    /// A `Received-SPF` header field (RFC 7208 9.1), CRLF included;
    /// `receiver` is this server's host name.
    pub fn received_spf(&self, receiver: &str) -> String {
        ReceivedSpf::new(
            &self.output,
            self.client_ip,
            &self.helo,
            self.sender.as_deref().unwrap_or(""),
            receiver,
        )
        .to_header()
    }

    fn is_for(&self, ip: IpAddr, helo: &str, sender: Option<&Address>) -> bool {
        self.client_ip == ip
            && self.helo == helo
            && self.sender.as_deref() == sender.map(Address::as_str)
    }
}

/// Checks SPF for one client, HELO name and sender (`None`: null sender).
pub async fn check(
    resolver: &Resolver,
    receiver: &str,
    ip: IpAddr,
    helo: &str,
    sender: Option<&Address>,
) -> SpfOutcome {
    let ip = ip.to_canonical();
    let auth = resolver.authenticator();
    let (identity, output) = match sender {
        Some(from) => {
            let params = SpfParameters::verify_mail_from(ip, helo, receiver, from.as_str());
            (SpfIdentity::MailFrom, auth.verify_spf(params).await)
        }
        None => {
            let params = SpfParameters::verify_ehlo(ip, helo, receiver);
            (SpfIdentity::Helo, auth.verify_spf(params).await)
        }
    };
    SpfOutcome {
        identity,
        sender: sender.map(|a| a.as_str().to_owned()),
        helo: helo.to_owned(),
        client_ip: ip,
        output,
    }
}

#[derive(Debug, Clone)]
struct Config {
    receiver: String,
    reject_fail: bool,
    reject_permerror: bool,
    tempfail_temperror: bool,
    received_spf: bool,
}

impl Config {
    fn refusal(&self, result: SpfResult) -> Option<Reply> {
        match result {
            SpfResult::Fail if self.reject_fail => Some(Reply::new(
                550,
                (5, 7, 23),
                "SPF validation failed: sender not permitted from this address",
            )),
            SpfResult::PermError if self.reject_permerror => Some(Reply::new(
                550,
                (5, 7, 24),
                "SPF validation error: the sender's SPF record is invalid",
            )),
            SpfResult::TempError if self.tempfail_temperror => Some(Reply::new(
                451,
                (4, 7, 24),
                "SPF validation error: DNS failure, try again later",
            )),
            _ => None,
        }
    }
}

/// Checks SPF; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SpfLayer {
    resolver: Resolver,
    config: Arc<Config>,
}

impl SpfLayer {
    /// Tags only: the outcome goes into the extensions, nothing is refused.
    pub fn new(resolver: Resolver) -> Self {
        SpfLayer {
            resolver,
            config: Arc::new(Config {
                receiver: "localhost".into(),
                reject_fail: false,
                reject_permerror: false,
                tempfail_temperror: false,
                received_spf: false,
            }),
        }
    }

    fn set(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// This server's host name, for the `%{r}` macro and headers.
    pub fn hostname(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.set(|c| c.receiver = name)
    }

    /// Refuses `fail` with `550 5.7.23`.
    pub fn reject_fail(self) -> Self {
        self.set(|c| c.reject_fail = true)
    }

    /// Refuses `permerror` (a broken record) with `550 5.7.24`.
    pub fn reject_permerror(self) -> Self {
        self.set(|c| c.reject_permerror = true)
    }

    /// Answers `temperror` (DNS failure) with `451 4.7.24`.
    pub fn tempfail_temperror(self) -> Self {
        self.set(|c| c.tempfail_temperror = true)
    }

    /// Puts a `Received-SPF` header on top of messages (at `DATA`);
    /// `hostname` is this server's name in it.
    pub fn received_spf(self, hostname: impl Into<String>) -> Self {
        self.hostname(hostname).set(|c| c.received_spf = true)
    }
}

impl<S> Layer<S> for SpfLayer {
    type Service = Spf<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Spf {
            inner,
            resolver: self.resolver.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service of [`SpfLayer`].
#[derive(Debug, Clone)]
pub struct Spf<S> {
    inner: S,
    resolver: Resolver,
    config: Arc<Config>,
}

impl<S, R> Service<R> for Spf<S>
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
        let Some(from) = sender(&req).map(|s| s.cloned()) else {
            // Before MAIL there is no sender to check.
            return pass_through(self.inner.call(req));
        };
        // The ready service goes into the future; a fresh clone stays.
        let mut inner = take_ready(&mut self.inner);
        let resolver = self.resolver.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let ip = client_ip(&req);
            let helo = req.session().helo_name().unwrap_or_default().to_owned();
            let outcome = match req.extension::<SpfOutcome>() {
                Some(known) if known.is_for(ip, &helo, from.as_ref()) => known,
                _ => check(&resolver, &config.receiver, ip, &helo, from.as_ref()).await,
            };
            tracing::debug!(result = %outcome.result(), domain = outcome.domain(), ip = %ip, "SPF checked");
            let refusal = config.refusal(outcome.result());
            if refusal.is_none() && config.received_spf && req.body().is_some() {
                req.prepend_header(&outcome.received_spf(&config.receiver));
            }
            req.insert_extension(outcome);
            if let Some(reply) = refusal {
                return Err(refuse(reply));
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
    use smtpsrv::{Helo, Stage};
    use tower::ServiceExt;

    fn zone() -> Zone {
        Zone::new()
            .txt("pass.example", "v=spf1 ip4:192.0.2.1 ip6:2001:db8::25 -all")
            .txt("soft.example", "v=spf1 ip4:192.0.2.1 ~all")
            .txt("neutral.example", "v=spf1 ?all")
            .txt("broken.example", "v=spf1 ip4:not-an-address -all")
            .txt("byname.example", "v=spf1 a:out.byname.example -all")
            .a("out.byname.example", "192.0.2.77".parse().unwrap())
            .a("none.example", "192.0.2.1".parse().unwrap())
            .txt("mta.helo.example", "v=spf1 ip4:192.0.2.1 -all")
            .servfail("temp.example")
    }

    async fn outcome(resolver: &Resolver, ip: &str, helo: &str, from: Option<&str>) -> SpfResult {
        check(
            resolver,
            "mx.test",
            ip.parse().unwrap(),
            helo,
            from.map(addr).as_ref(),
        )
        .await
        .result()
    }

    #[tokio::test]
    async fn results_for_the_client_ip() {
        let r = resolver(zone()).await;
        let from = |d: &str| format!("ann@{d}");
        let cases = [
            ("192.0.2.1", "pass.example", SpfResult::Pass),
            ("2001:db8::25", "pass.example", SpfResult::Pass),
            ("::ffff:192.0.2.1", "pass.example", SpfResult::Pass),
            ("198.51.100.9", "pass.example", SpfResult::Fail),
            ("198.51.100.9", "soft.example", SpfResult::SoftFail),
            ("198.51.100.9", "neutral.example", SpfResult::Neutral),
            ("192.0.2.77", "byname.example", SpfResult::Pass),
            ("192.0.2.78", "byname.example", SpfResult::Fail),
            ("192.0.2.1", "none.example", SpfResult::None),
            ("192.0.2.1", "nxdomain.example", SpfResult::None),
            ("192.0.2.1", "temp.example", SpfResult::TempError),
            ("192.0.2.1", "broken.example", SpfResult::PermError),
        ];
        for (ip, domain, want) in cases {
            let got = outcome(&r, ip, "client.example", Some(&from(domain))).await;
            assert_eq!(got, want, "{ip} for {domain}");
        }
    }

    #[tokio::test]
    async fn null_sender_checks_the_helo_identity() {
        let r = resolver(zone()).await;
        let o = check(
            &r,
            "mx.test",
            "192.0.2.1".parse().unwrap(),
            "mta.helo.example",
            None,
        )
        .await;
        assert_eq!(
            (o.result(), o.identity(), o.domain()),
            (SpfResult::Pass, SpfIdentity::Helo, "mta.helo.example")
        );
        let bad = outcome(&r, "198.51.100.9", "mta.helo.example", None).await;
        assert_eq!(bad, SpfResult::Fail);
    }

    #[tokio::test]
    async fn policy_replies_at_mail() {
        let r = resolver(zone()).await;
        let inner = Counting::default();
        let mut svc = SpfLayer::new(r)
            .reject_fail()
            .reject_permerror()
            .tempfail_temperror()
            .layer(inner.clone());
        let good = session_from("192.0.2.1", "client.example", None);
        let bad = session_from("198.51.100.9", "client.example", None);
        let cases = [
            (good.clone(), "a@pass.example", (250, "2.0.0")),
            (bad.clone(), "a@pass.example", (550, "5.7.23")),
            (bad.clone(), "a@soft.example", (250, "2.0.0")),
            (good.clone(), "a@temp.example", (451, "4.7.24")),
            (good.clone(), "a@broken.example", (550, "5.7.24")),
            (good.clone(), "a@nxdomain.example", (250, "2.0.0")),
        ];
        for (s, from, (c, status)) in cases {
            let r = reply_of(&mut svc, mail_from(s, Some(from))).await;
            assert_eq!(code(&r), (c, status.to_string()), "{from}");
        }
        assert_eq!(inner.calls(), 3);
    }

    #[tokio::test]
    async fn tag_only_never_refuses_and_leaves_the_outcome() {
        let r = resolver(zone()).await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let svc = SpfLayer::new(r).layer(tower::service_fn(move |req: smtpsrv::MailFrom| {
            *seen2.lock().unwrap() = req.extension::<SpfOutcome>();
            async { Ok::<_, BoxError>(Reply::ok()) }
        }));
        let bad = session_from("198.51.100.9", "client.example", None);
        let reply = svc
            .oneshot(mail_from(bad, Some("a@pass.example")))
            .await
            .unwrap();
        assert_eq!(reply.code(), 250);
        let o = seen.lock().unwrap().clone().unwrap();
        assert_eq!(o.result(), SpfResult::Fail);
        assert_eq!(o.client_ip(), "198.51.100.9".parse::<IpAddr>().unwrap());
        assert_eq!(o.sender(), Some("a@pass.example"));
    }

    #[tokio::test]
    async fn data_stage_reuses_the_mail_outcome_and_adds_received_spf() {
        // An empty zone: a second lookup would give `none`, not `pass`.
        let r = resolver(Zone::new()).await;
        let zone_r = resolver(zone()).await;
        let s = session_from("192.0.2.1", "client.example", None);
        let known = check(
            &zone_r,
            "mx.test",
            "192.0.2.1".parse().unwrap(),
            "client.example",
            Some(&addr("a@pass.example")),
        )
        .await;
        let mut ctx = context(
            s,
            Some("a@pass.example"),
            &["b@x.example"],
            "Subject: hi\r\n\r\nbody\r\n",
        );
        ctx.insert_extension(known);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let svc = SpfLayer::new(r)
            .received_spf("mx.test")
            .layer(tower::service_fn(move |ctx: smtpsrv::Context| {
                *seen2.lock().unwrap() = Some(ctx.clone());
                async { Ok::<_, BoxError>(()) }
            }));
        svc.oneshot(ctx).await.unwrap();
        let ctx = seen.lock().unwrap().clone().unwrap();
        let text = String::from_utf8(ctx.message().unwrap().to_vec()).unwrap();
        assert!(text.starts_with("Received-SPF: pass (mx.test"), "{text}");
        assert!(text.contains("client-ip=192.0.2.1;"), "{text}");
        assert!(text.ends_with("\r\nSubject: hi\r\n\r\nbody\r\n"));
        assert_eq!(
            ctx.extensions().get::<SpfOutcome>().unwrap().result(),
            SpfResult::Pass
        );
    }

    #[tokio::test]
    async fn data_stage_checks_when_mail_did_not_and_refuses() {
        let r = resolver(zone()).await;
        let inner = Counting::default();
        let mut svc = SpfLayer::new(r)
            .reject_fail()
            .received_spf("mx.test")
            .layer(inner.clone());
        let bad = session_from("198.51.100.9", "client.example", None);
        let ctx = context(
            bad,
            Some("a@pass.example"),
            &["b@x.example"],
            "Subject: hi\r\n\r\n",
        );
        assert_eq!(code(&reply_of(&mut svc, ctx).await), (550, "5.7.23".into()));
        assert_eq!(inner.calls(), 0);
    }

    #[tokio::test]
    async fn stages_before_mail_pass_through() {
        let r = resolver(Zone::new()).await;
        let inner = Counting::default();
        let mut svc = SpfLayer::new(r).reject_fail().layer(inner.clone());
        let helo = Helo::new(session(), smtpsrv::Greeting::Ehlo("x".into()));
        assert_eq!(reply_of(&mut svc, helo).await.code(), 250);
        assert_eq!(inner.calls(), 1);
    }
}

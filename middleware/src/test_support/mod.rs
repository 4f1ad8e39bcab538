//! The one test harness of the middleware crate: requests for each stage,
//! a counting handler, a loopback DNS server (`dns`), a DKIM key, and a raw
//! SMTP client.
//!
//! The unit tests use it as `crate::test_support`; the integration tests in
//! `tests/` include this very file with
//! `#[path = "../src/test_support/mod.rs"] mod support;`, which is why it
//! names this crate `smtpsrv_middleware` (lib.rs aliases itself so under
//! `cfg(test)`) and why each user leaves parts unused.
#![allow(dead_code)]

pub mod dns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use smtpsrv::proto::{MailParams, RcptParams};
use smtpsrv::{
    Address, BoxError, Context, Envelope, Greeting, Identity, MailFrom, RcptTo, Recipient, Reply,
    SessionInfo, error_reply,
};
use tower::{Service, ServiceExt};

use smtpsrv_middleware::Resolver;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

pub fn session_from(ip: &str, helo: &str, identity: Option<&str>) -> Arc<SessionInfo> {
    let mut s = SessionInfo::new(peer(ip), "127.0.0.1:25".parse().unwrap())
        .with_greeting(Greeting::Ehlo(helo.into()));
    if let Some(id) = identity {
        s = s.with_identity(Identity::new(id));
    }
    Arc::new(s)
}

pub fn session() -> Arc<SessionInfo> {
    session_from("192.0.2.1", "client.example", None)
}

pub fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

pub fn envelope(from: Option<&str>, to: &[&str]) -> Envelope {
    to.iter().fold(
        Envelope::new(from.map(addr), MailParams::default()),
        |e, r| e.with_recipient(Recipient::new(addr(r), RcptParams::default())),
    )
}

pub fn mail_from(session: Arc<SessionInfo>, from: Option<&str>) -> MailFrom {
    MailFrom::new(session, from.map(addr), MailParams::default())
}

pub fn mail_from_sized(session: Arc<SessionInfo>, from: Option<&str>, size: u64) -> MailFrom {
    let params = MailParams {
        size: Some(size),
        ..MailParams::default()
    };
    MailFrom::new(session, from.map(addr), params)
}

pub fn rcpt_to(session: Arc<SessionInfo>, from: Option<&str>, to: &str) -> RcptTo {
    RcptTo::new(
        session,
        envelope(from, &[]),
        Recipient::new(addr(to), RcptParams::default()),
    )
}

pub fn context(session: Arc<SessionInfo>, from: Option<&str>, to: &[&str], msg: &str) -> Context {
    Context::new(
        session,
        envelope(from, to),
        bytes::Bytes::from(msg.to_owned()),
    )
}

/// A handler that accepts and counts its calls.
#[derive(Clone, Default)]
pub struct Counting(pub Arc<AtomicUsize>);

impl Counting {
    pub fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<R: Send + 'static> Service<R> for Counting {
    type Response = Reply;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Reply, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Reply::ok()))
    }
}

/// Runs one request and returns the reply the client would get.
pub async fn reply_of<S, R>(service: &mut S, req: R) -> Reply
where
    S: Service<R>,
    S::Response: smtpsrv::IntoReply,
    S::Error: Into<BoxError>,
{
    match service.ready().await {
        Err(e) => error_reply(e.into()),
        Ok(s) => match s.call(req).await {
            Ok(r) => smtpsrv::IntoReply::into_reply(r),
            Err(e) => error_reply(e.into()),
        },
    }
}

/// The code and enhanced status of a reply, e.g. `(550, "5.7.23")`.
pub fn code(r: &Reply) -> (u16, String) {
    (
        r.code(),
        r.status().map(|s| s.to_string()).unwrap_or_default(),
    )
}

/// A resolver asking only the test server for `zone`.
pub async fn resolver(zone: dns::Zone) -> Resolver {
    let addr = dns::serve(zone).await;
    let mut opts = mail_auth::hickory_resolver::config::ResolverOpts::default();
    opts.timeout = std::time::Duration::from_secs(2);
    opts.attempts = 1;
    Resolver::nameservers_with([addr], opts).unwrap()
}

/// An Ed25519 DKIM key made for one test.
pub struct DkimKey {
    pkcs8: Vec<u8>,
}

impl DkimKey {
    pub fn generate() -> Self {
        DkimKey {
            pkcs8: mail_auth::common::crypto::Ed25519Key::generate_pkcs8().unwrap(),
        }
    }

    fn key(&self) -> mail_auth::common::crypto::Ed25519Key {
        mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&self.pkcs8).unwrap()
    }

    /// Adds the public key record `selector._domainkey.domain`.
    pub fn publish(&self, zone: dns::Zone, domain: &str, selector: &str) -> dns::Zone {
        use base64::Engine;
        let p = base64::engine::general_purpose::STANDARD.encode(self.key().public_key());
        zone.txt(
            &format!("{selector}._domainkey.{domain}"),
            &format!("v=DKIM1; k=ed25519; p={p}"),
        )
    }

    /// The message with a `DKIM-Signature` on top.
    pub fn sign(&self, message: &str, domain: &str, selector: &str) -> String {
        use mail_auth::common::headers::HeaderWriter;
        let signature = mail_auth::dkim::DkimSigner::from_key(self.key())
            .domain(domain)
            .selector(selector)
            .headers(["From", "To", "Subject"])
            .sign(message.as_bytes())
            .unwrap();
        format!("{}{message}", signature.to_header())
    }
}

/// A scripted SMTP client reading one (possibly multi-line) reply per command.
pub struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    /// Connects and returns the client with the greeting's last line.
    pub async fn connect(addr: SocketAddr) -> (Self, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut c = RawClient {
            reader: BufReader::new(stream),
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    /// The next reply's last line, or "" at end of stream.
    pub async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.reader.read_line(&mut line),
            )
            .await
            .unwrap()
            .unwrap();
            if n == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    /// Sends one command line (CRLF added) and returns its reply's last line.
    pub async fn send(&mut self, line: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// Whether the server closed the connection.
    pub async fn is_closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }
}

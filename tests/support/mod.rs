//! Helpers for the TLS, AUTH and extension integration tests: a throw-away
//! PKI, a server on 127.0.0.1 that records every message, and a scripted
//! SMTP client over plain TCP or TLS.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use smtpsrv::tls::TlsConfig;
use smtpsrv::tls::rustls::{self, ClientConfig, RootCertStore};
use smtpsrv::tls::tokio_rustls::{TlsConnector, client::TlsStream};
use smtpsrv::{Authenticate, BoxError, Builder, Context, Identity, IntoDelivery, tower::Service};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long any single step of a test may wait before it fails.
pub const STEP: Duration = Duration::from_secs(5);

/// The user the test authenticator knows.
pub const USER: &str = "ann";
/// Her password.
pub const PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------- PKI

/// A test CA and a server certificate it signed. Keys live only in memory
/// (or in a temporary directory for reload tests).
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The server certificate for `localhost` and `127.0.0.1`.
    pub server: Leaf,
}

/// A certificate, its key, and the certificate's DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "smtpsrv integration test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let server = Self::sign(&ca, &["localhost", "127.0.0.1"]);
        Pki { ca, server }
    }

    fn sign(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Another server certificate from the same CA (e.g. a renewal).
    pub fn renewed(&self) -> Leaf {
        Self::sign(&self.ca, &["localhost", "127.0.0.1"])
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The server's TLS configuration, from PEM in memory.
    pub fn server_tls(&self) -> TlsConfig {
        TlsConfig::from_pem(
            self.server.cert_pem.as_bytes(),
            self.server.key_pem.as_bytes(),
        )
        .unwrap()
    }

    /// A rustls client trusting only the test CA (ring provider).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(config)
    }

    /// lettre's TLS parameters for `localhost`, trusting only the test CA.
    pub fn lettre_tls(&self) -> lettre::transport::smtp::client::TlsParameters {
        use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
        TlsParameters::builder("localhost".into())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(self.ca_pem().as_bytes()).unwrap())
            .build_rustls()
            .unwrap()
    }
}

// ---------------------------------------------------------------- server

/// A server running on 127.0.0.1 for one test; stopped when dropped.
pub struct TestServer {
    /// The plain listener (STARTTLS when TLS is configured).
    pub addr: SocketAddr,
    /// The implicit-TLS listener, when one was asked for.
    pub tls_addr: Option<SocketAddr>,
    task: JoinHandle<io::Result<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves `service` on a plain listener.
    pub async fn start<S>(builder: Builder, service: S) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::launch(builder, service, false).await
    }

    /// Serves `service` on a plain listener and an implicit-TLS listener.
    pub async fn start_with_implicit_tls<S>(builder: Builder, service: S) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::launch(builder, service, true).await
    }

    async fn launch<S>(builder: Builder, service: S, implicit: bool) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        let mut server = builder.build().listener(plain);
        let mut tls_addr = None;
        if implicit {
            server = server.bind_implicit_tls("127.0.0.1:0").await.unwrap();
            tls_addr = Some(server.local_addrs()[1]);
        }
        let task = tokio::spawn(async move { server.serve(service).await });
        TestServer {
            addr,
            tls_addr,
            task,
        }
    }

    /// A scripted client on the plain listener, greeting already read.
    pub async fn connect(&self) -> Client<TcpStream> {
        let mut client = Client::tcp(self.addr).await;
        let greeting = client.reply().await;
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        client
    }

    /// A scripted client on the implicit-TLS listener, greeting read.
    pub async fn connect_implicit(&self, pki: &Pki) -> Client<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.tls_addr.expect("no implicit TLS listener"))
            .await
            .unwrap();
        let mut client = Client::new(tls_handshake(tcp, pki, "localhost").await);
        let greeting = client.reply().await;
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        client
    }
}

// ---------------------------------------------------------------- services

/// A message handler that records every message and answers with `answer`.
#[derive(Clone)]
pub struct Recorder<F> {
    tx: mpsc::UnboundedSender<Context>,
    answer: F,
}

/// Where a [`Recorder`]'s messages arrive.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Context>,
}

/// A recorder accepting every message with `250 2.0.0 OK`.
pub fn recorder() -> (Recorder<fn(&Context)>, Inbox) {
    fn accept(_: &Context) {}
    recorder_with(accept as fn(&Context))
}

/// A recorder answering each message with `answer(&ctx)`.
pub fn recorder_with<F, R>(answer: F) -> (Recorder<F>, Inbox)
where
    F: Fn(&Context) -> R + Clone,
{
    let (tx, rx) = mpsc::unbounded_channel();
    (Recorder { tx, answer }, Inbox { rx })
}

impl<F, R> Service<Context> for Recorder<F>
where
    F: Fn(&Context) -> R + Clone,
{
    type Response = R;
    type Error = BoxError;
    type Future = std::future::Ready<Result<R, BoxError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        let answer = (self.answer)(&ctx);
        let _ = self.tx.send(ctx);
        std::future::ready(Ok(answer))
    }
}

impl Inbox {
    /// The next message; fails the test if none arrives in time.
    pub async fn next(&mut self) -> Context {
        within(self.rx.recv()).await.expect("recorder dropped")
    }

    /// Asserts that no message was delivered.
    pub fn assert_empty(&mut self) {
        if let Ok(ctx) = self.rx.try_recv() {
            panic!("unexpected message delivered: {ctx:?}");
        }
    }
}

/// An authenticator that knows only [`USER`] with [`PASSWORD`].
pub fn authenticator()
-> impl Service<Authenticate, Response = Option<Identity>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    smtpsrv::tower::service_fn(|req: Authenticate| async move {
        let ok = req.username() == USER && req.password() == PASSWORD;
        Ok::<_, BoxError>(ok.then(|| Identity::new(req.username())))
    })
}

/// `base64("\0user\0password")`: an `AUTH PLAIN` response.
pub fn plain_response(user: &str, password: &str) -> String {
    b64(format!("\0{user}\0{password}").as_bytes())
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

// ---------------------------------------------------------------- client

/// Fails the test when `fut` takes longer than [`STEP`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("timed out waiting for the server")
}

/// A TLS handshake as a client trusting the test CA, with SNI `name`.
pub async fn tls_handshake<IO>(io: IO, pki: &Pki, name: &str) -> TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(pki.client_config());
    let name = ServerName::try_from(name.to_owned()).unwrap();
    within(connector.connect(name, io)).await.unwrap()
}

/// One SMTP reply: its code and its lines' texts (after `250-`/`250 `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl RawReply {
    /// The enhanced status code of the first line, e.g. `5.7.8`.
    pub fn status(&self) -> &str {
        self.lines
            .first()
            .and_then(|l| l.split(' ').next())
            .unwrap_or("")
    }

    /// Whether an EHLO reply lists `keyword` (compared on the first word).
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split(' ')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The EHLO line starting with `keyword`, if any.
    pub fn keyword_line(&self, keyword: &str) -> Option<&str> {
        self.lines.iter().skip(1).map(String::as_str).find(|l| {
            l.split(' ')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// Asserts code and enhanced status (`""` to skip the status).
    #[track_caller]
    pub fn expect(&self, code: u16, status: &str) -> &Self {
        assert_eq!(self.code, code, "unexpected reply {self:?}");
        if !status.is_empty() {
            assert_eq!(self.status(), status, "unexpected status in {self:?}");
        }
        self
    }
}

/// A scripted SMTP client over any stream, with its own read buffer so that
/// it can tell exactly what the server has sent (and hand the bare stream
/// over for a TLS upgrade).
pub struct Client<S> {
    io: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    /// Connects; nothing is read yet.
    pub async fn tcp(addr: SocketAddr) -> Self {
        let io = within(TcpStream::connect(addr)).await.unwrap();
        Client::new(io)
    }

    /// Sends `STARTTLS`, expects 220 and upgrades the connection. Nothing
    /// must have been received after the 220.
    pub async fn starttls(mut self, pki: &Pki) -> Client<TlsStream<TcpStream>> {
        self.cmd("STARTTLS").await.expect(220, "2.0.0");
        self.upgrade(pki).await
    }

    /// Upgrades after a 220 to STARTTLS was read.
    pub async fn upgrade(self, pki: &Pki) -> Client<TlsStream<TcpStream>> {
        let tcp = self.into_inner();
        Client::new(tls_handshake(tcp, pki, "localhost").await)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Client {
            io,
            buf: Vec::new(),
        }
    }

    /// The stream; fails if the server sent anything not read yet.
    pub fn into_inner(self) -> S {
        assert!(
            self.buf.is_empty(),
            "unread bytes from the server: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.io
    }

    /// The stream itself (e.g. to inspect the TLS session).
    pub fn stream(&self) -> &S {
        &self.io
    }

    /// Sends raw bytes in one write.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within(async {
            self.io.write_all(bytes.as_ref()).await?;
            self.io.flush().await
        })
        .await
        .unwrap();
    }

    /// Sends one command line (CRLF added) and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> RawReply {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// `EHLO client.test`, expecting 250.
    /// One whole transaction from `from` to `to` with the body `hi`,
    /// every step expected to succeed.
    pub async fn send_hi(&mut self, from: &str, to: &str) {
        self.cmd(&format!("MAIL FROM:<{from}>"))
            .await
            .expect(250, "2.1.0");
        self.cmd(&format!("RCPT TO:<{to}>"))
            .await
            .expect(250, "2.1.5");
        self.cmd("DATA").await.expect(354, "");
        self.cmd("\r\nhi\r\n.").await.expect(250, "2.0.0");
    }

    pub async fn ehlo(&mut self) -> RawReply {
        let reply = self.cmd("EHLO client.test").await;
        reply.expect(250, "");
        reply
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> RawReply {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            assert!(
                line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                "malformed reply line {line:?}"
            );
            let code: u16 = line[..3].parse().unwrap();
            let more = match line.as_bytes()[3] {
                b'-' => true,
                b' ' => false,
                _ => panic!("malformed reply line {line:?}"),
            };
            lines.push((code, line[4..].to_owned()));
            if !more {
                break;
            }
        }
        let code = lines[0].0;
        assert!(
            lines.iter().all(|(c, _)| *c == code),
            "mixed codes {lines:?}"
        );
        RawReply {
            code,
            lines: lines.into_iter().map(|(_, l)| l).collect(),
        }
    }

    /// Reads one line (without CRLF).
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return String::from_utf8(line).expect("reply is not UTF-8");
            }
            let mut chunk = [0u8; 4096];
            let n = within(self.io.read(&mut chunk)).await.expect("read failed");
            assert!(
                n > 0,
                "connection closed; unread: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits until the server closes the connection and returns what it
    /// sent before (unread buffered bytes included). A reset counts as closed.
    pub async fn closed(&mut self) -> Vec<u8> {
        let mut got = std::mem::take(&mut self.buf);
        loop {
            let mut chunk = [0u8; 4096];
            match within(self.io.read(&mut chunk)).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts that nothing arrives within `wait`.
    pub async fn assert_silent(&mut self, wait: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 512];
        if let Ok(r) = tokio::time::timeout(wait, self.io.read(&mut chunk)).await {
            let n = r.unwrap_or(0);
            panic!(
                "expected silence, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            );
        }
    }
}

/// A stream whose first write carries `prefix` in front of the caller's
/// bytes, in one write: e.g. a PROXY header glued to a TLS ClientHello, as a
/// load balancer may forward them.
pub struct PrefixFirstWrite<S> {
    inner: S,
    prefix: Option<Vec<u8>>,
}

impl<S> PrefixFirstWrite<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        PrefixFirstWrite {
            inner,
            prefix: Some(prefix),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixFirstWrite<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixFirstWrite<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(mut first) = self.prefix.take() else {
            return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        first.extend_from_slice(buf);
        // A few hundred octets on loopback: written at once or not at all.
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, &first) {
            Poll::Ready(Ok(n)) if n == first.len() => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Ok(n)) => panic!("short first write: {n} of {}", first.len()),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                first.truncate(first.len() - buf.len());
                self.prefix = Some(first);
                Poll::Pending
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

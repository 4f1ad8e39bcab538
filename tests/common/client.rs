//! The scripted SMTP client: raw commands and bytes over TCP or TLS, replies
//! parsed strictly (CRLF, one code per reply, bounded size).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use smtpsrv::tls::tokio_rustls::{TlsConnector, client::TlsStream};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::TcpStream;

use super::{Pki, TIMEOUT, step, within};

/// Longest reply we accept from the server before calling it a bug.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One complete SMTP reply as read from the wire: its code and the text of
/// each line after the code and its separator (`250-` / `250 `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The three-digit code.
    pub code: u16,
    /// Each line's text, e.g. `["mx Hello c", "PIPELINING", "SIZE 100"]`.
    pub lines: Vec<String>,
}

/// The same reply under the name the code-by-code tests use.
pub type Reply = RawReply;

impl RawReply {
    /// Every line's text joined by `\n` (e.g. `"2.0.0 OK"` or
    /// `"mx Hello c\nPIPELINING\nSIZE 100"`).
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code of the first line, e.g. `5.7.8`.
    pub fn status(&self) -> &str {
        self.lines
            .first()
            .and_then(|l| l.split(' ').next())
            .unwrap_or("")
    }

    /// Whether an EHLO reply lists `keyword` (compared on the first word).
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keyword_line(keyword).is_some()
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

/// A scripted SMTP client over any stream (plain TCP by default). Its read
/// buffer is its own, so it can tell exactly what the server has sent, and
/// hand the bare stream over for a TLS upgrade.
pub struct Client<S = TcpStream> {
    stream: BufReader<S>,
}

impl Client<TcpStream> {
    /// Connects and reads the greeting, which must be 220.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Self::connect_raw(addr).await;
        c.expect(220).await;
        c
    }

    /// Connects without reading anything.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect to the test server");
        Client::new(stream)
    }

    /// Connects; nothing is read yet (the same as [`Client::connect_raw`]).
    pub async fn tcp(addr: SocketAddr) -> Client {
        Self::connect_raw(addr).await
    }

    /// Connects, reads the greeting and sends `EHLO client.example`.
    pub async fn connect_ehlo(addr: SocketAddr) -> Client {
        let mut c = Self::connect(addr).await;
        c.cmd_expect("EHLO client.example", 250).await;
        c
    }

    /// The client's own address (the server's peer address).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.get_ref().local_addr().expect("local addr")
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
    /// A client over an already connected stream; nothing is read yet.
    pub fn new(io: S) -> Self {
        Client {
            stream: BufReader::new(io),
        }
    }

    /// The stream; fails if the server sent anything not read yet.
    pub fn into_inner(self) -> S {
        assert!(
            self.stream.buffer().is_empty(),
            "unread bytes from the server: {:?}",
            String::from_utf8_lossy(self.stream.buffer())
        );
        self.stream.into_inner()
    }

    /// The stream itself (e.g. to inspect the TLS session).
    pub fn stream(&self) -> &S {
        self.stream.get_ref()
    }

    /// The underlying buffered stream, for tests that script raw IO.
    pub fn stream_mut(&mut self) -> &mut BufReader<S> {
        &mut self.stream
    }

    /// Writes raw bytes, all at once, and flushes them.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let io = self.stream.get_mut();
        within("write", async {
            io.write_all(bytes.as_ref()).await?;
            io.flush().await
        })
        .await
        .expect("write to the server");
    }

    /// Writes `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\r\n")).await;
    }

    /// Sends one command line (CRLF added) and reads the whole reply.
    pub async fn cmd(&mut self, line: &str) -> RawReply {
        self.send_line(line).await;
        self.reply().await
    }

    /// Sends a command line and expects `code`; returns the reply text.
    pub async fn cmd_expect(&mut self, line: &str, code: u16) -> String {
        self.send_line(line).await;
        self.expect(code).await
    }

    /// `EHLO client.test`, expecting 250.
    pub async fn ehlo(&mut self) -> RawReply {
        let reply = self.cmd("EHLO client.test").await;
        reply.expect(250, "");
        reply
    }

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

    /// The MAIL and RCPT lines of a transaction, all expected 250, then
    /// DATA (354); the caller sends the body.
    pub async fn begin_data(&mut self, from: &str, to: &[&str]) {
        self.cmd_expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.cmd_expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.cmd_expect("DATA", 354).await;
    }

    /// Reads one complete (possibly multi-line) reply; `None` at EOF (or a
    /// reset) before any byte of it. Panics on a malformed reply or after
    /// [`TIMEOUT`].
    pub async fn try_read_reply(&mut self) -> Option<RawReply> {
        within("a reply", self.read_reply_inner()).await
    }

    async fn read_reply_inner(&mut self) -> Option<RawReply> {
        let mut lines: Vec<String> = Vec::new();
        let mut total = 0;
        let mut first_code = None;
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.stream)
                .take((MAX_REPLY_BYTES - total) as u64)
                .read_until(b'\n', &mut raw)
                .await
                .unwrap_or(0);
            if n == 0 {
                assert!(lines.is_empty(), "EOF inside a multi-line reply: {lines:?}");
                return None;
            }
            total += n;
            let line = String::from_utf8(raw).expect("reply is UTF-8");
            let line = line
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("reply line without CRLF: {line:?}"));
            assert!(
                line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                "malformed reply line {line:?}"
            );
            let code: u16 = line[..3].parse().expect("reply code");
            if let Some(first) = first_code {
                assert_eq!(code, first, "code changed inside a multi-line reply");
            }
            first_code = Some(code);
            lines.push(line[4..].to_owned());
            match line.as_bytes()[3] {
                b' ' => return Some(RawReply { code, lines }),
                b'-' => continue,
                other => panic!("bad separator {:?} in {line:?}", other as char),
            }
        }
    }

    /// Reads one complete reply; panics at EOF.
    pub async fn reply(&mut self) -> RawReply {
        self.try_read_reply()
            .await
            .expect("connection closed while a reply was expected")
    }

    /// Reads one complete reply as code and text; panics at EOF.
    pub async fn read_reply(&mut self) -> (u16, String) {
        let r = self.reply().await;
        let text = r.text();
        (r.code, text)
    }

    /// Reads one reply and asserts its code; returns its text.
    pub async fn expect(&mut self, code: u16) -> String {
        let (got, text) = self.read_reply().await;
        assert_eq!(got, code, "expected {code}, got {got} {text:?}");
        text
    }

    /// Asserts that the server closes the connection with nothing more to say.
    pub async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let read = within("EOF", self.stream.read_to_end(&mut rest)).await;
        // A reset after the server closed is as good as EOF.
        if read.is_ok() {
            assert!(
                rest.is_empty(),
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }

    /// Waits until the server closes the connection and returns what it
    /// sent before (unread buffered bytes included). A reset counts as closed.
    pub async fn closed(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match step(self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts that nothing arrives for `quiet` (no unsolicited reply, no
    /// close), buffered bytes included.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        let mut byte = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(quiet, self.stream.read(&mut byte)).await {
            match r {
                Ok(0) => panic!("connection closed; expected it to stay open and silent"),
                Ok(_) => panic!("unexpected data from the server: {:?}", byte[0] as char),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Asserts that nothing arrives within `wait` (the same check as
    /// [`Client::expect_silence`]).
    pub async fn assert_silent(&mut self, wait: Duration) {
        assert!(
            self.stream.buffer().is_empty(),
            "unexpected: {:?}",
            String::from_utf8_lossy(self.stream.buffer())
        );
        self.expect_silence(wait).await;
    }
}

/// A TLS handshake as a client trusting the test CA, with SNI `name`.
pub async fn tls_handshake<IO>(io: IO, pki: &Pki, name: &str) -> TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(pki.client_config());
    let name = ServerName::try_from(name.to_owned()).unwrap();
    step(connector.connect(name, io)).await.unwrap()
}

/// Asserts that the server admits `n` connections at once (each greeted
/// 220): with `max_connections(n)` this detects a leaked slot, i.e. a
/// connection task that outlived its client. Slots are freed when the
/// connection tasks end, shortly after their clients leave, so refusals are
/// retried until [`TIMEOUT`].
pub async fn assert_admits(addr: SocketAddr, n: usize) {
    let started = tokio::time::Instant::now();
    loop {
        let mut clients = Vec::with_capacity(n);
        let mut refused = 0;
        for _ in 0..n {
            let mut c = Client::connect_raw(addr).await;
            match c.try_read_reply().await {
                Some(r) if r.code == 220 => clients.push(c),
                Some(r) if r.code == 421 => refused += 1,
                other => panic!("unexpected first reply {other:?}"),
            }
        }
        if refused == 0 {
            for mut c in clients {
                c.cmd_expect("QUIT", 221).await;
                c.expect_eof().await;
            }
            return;
        }
        drop(clients);
        assert!(
            started.elapsed() < TIMEOUT,
            "only {} of {n} connections admitted after {TIMEOUT:?}: a slot leaked",
            n - refused
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    /// `inner`, whose first write will be preceded by `prefix`.
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        PrefixFirstWrite {
            inner,
            prefix: Some(prefix),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixFirstWrite<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixFirstWrite<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(mut first) = self.prefix.take() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        first.extend_from_slice(buf);
        // A few hundred octets on loopback: written at once or not at all.
        match Pin::new(&mut self.inner).poll_write(cx, &first) {
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

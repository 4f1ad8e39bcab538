//! A small harness shared by the integration tests: a real [`Server`] on
//! `127.0.0.1:0` whose message service records every [`Context`], and a raw
//! scripted SMTP client.
//!
//! Everything here is bounded in time ([`TIMEOUT`]), so a server bug makes a
//! test fail with a message instead of hanging the suite.
//!
//! ```ignore
//! mod common;
//! use common::{Client, TestServer};
//!
//! let server = TestServer::start(smtpsrv::Server::builder()).await;
//! let mut c = Client::connect(server.addr).await; // reads the 220 greeting
//! c.cmd("EHLO client.example", 250).await;
//! c.cmd("QUIT", 221).await;
//! c.expect_eof().await;
//! assert!(server.recorder.is_empty());
//! server.shutdown().await;
//! ```
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use smtpsrv::tower::Service;
use smtpsrv::{BoxError, Builder, Context, IntoDelivery, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The upper bound of every single wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest reply we accept from the server before calling it a bug.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Awaits `fut` for at most [`TIMEOUT`], panicking with `what` otherwise.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

/// Every [`Context`] the server's message service was called with, in order.
///
/// A context is recorded *before* the wrapped service runs, so a message is
/// recorded even when that service fails or panics.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Context>>>);

impl Recorder {
    fn push(&self, ctx: Context) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(ctx);
    }

    /// A copy of every context received so far.
    pub fn all(&self) -> Vec<Context> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many messages were received.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no message was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The only message received; panics unless there is exactly one.
    pub fn single(&self) -> Context {
        let all = self.all();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one message, got {}",
            all.len()
        );
        all.into_iter().next().expect("one message")
    }
}

/// A service that records each context, then hands it to `inner`.
#[derive(Clone)]
pub struct Recording<S> {
    recorder: Recorder,
    inner: S,
}

impl<S: Service<Context>> Service<Context> for Recording<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        self.recorder.push(ctx.clone());
        self.inner.call(ctx)
    }
}

/// A service that accepts every message with `250 2.0.0 OK`.
pub fn accept_all() -> impl Service<
    Context,
    Response = (),
    Error = BoxError,
    Future = impl Future<Output = Result<(), BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    smtpsrv::tower::service_fn(|_ctx: Context| async { Ok::<(), BoxError>(()) })
}

/// A running server on `127.0.0.1:0` with a recording message service.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What the message service received.
    pub recorder: Recorder,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// Starts a server built from `builder` that accepts every message.
    pub async fn start(builder: Builder) -> TestServer {
        Self::start_with(builder, accept_all()).await
    }

    /// Starts a server built from `builder` whose messages go (after being
    /// recorded) to `service`, under `with_graceful_shutdown`.
    pub async fn start_with<S>(builder: Builder, service: S) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let server: Server = within("bind", builder.build().bind("127.0.0.1:0"))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = server.local_addrs()[0];
        let recorder = Recorder::default();
        let service = Recording {
            recorder: recorder.clone(),
            inner: service,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let serve = server.serve(service).with_graceful_shutdown(async move {
            // A dropped sender counts as a signal too: no server outlives its test.
            let _ = rx.await;
        });
        let handle = tokio::spawn(serve.into_future());
        TestServer {
            addr,
            recorder,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Fires the graceful-shutdown signal without waiting for the server.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded) for the server future to resolve, returning its result.
    pub async fn join(&mut self) -> io::Result<()> {
        let handle = self.handle.take().expect("server already joined");
        within("server future to resolve", handle)
            .await
            .expect("server task panicked")
    }

    /// Whether the server future has resolved.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Triggers graceful shutdown and waits for the server to resolve.
    pub async fn shutdown(mut self) {
        self.trigger_shutdown();
        self.join().await.expect("server ended with an error");
    }
}

/// One complete SMTP reply as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of every line after the code and its separator, joined by
    /// `\n` (e.g. `"2.0.0 OK"` or `"mx Hello c\nPIPELINING\nSIZE 100"`).
    pub text: String,
}

/// A raw scripted SMTP client over TCP.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
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
        Client {
            stream: BufReader::new(stream),
        }
    }

    /// Connects, reads the greeting and sends `EHLO client.example`.
    pub async fn connect_ehlo(addr: SocketAddr) -> Client {
        let mut c = Self::connect(addr).await;
        c.cmd("EHLO client.example", 250).await;
        c
    }

    /// The client's own address (the server's peer address).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.get_ref().local_addr().expect("local addr")
    }

    /// Writes raw bytes, all at once.
    pub async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.get_mut().write_all(bytes))
            .await
            .expect("write to the server");
    }

    /// Writes `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).await;
    }

    /// Reads one complete (possibly multi-line) reply; `None` at EOF before
    /// any byte of it. Panics on a malformed reply or after [`TIMEOUT`].
    pub async fn try_read_reply(&mut self) -> Option<Reply> {
        within("a reply", self.read_reply_inner()).await
    }

    async fn read_reply_inner(&mut self) -> Option<Reply> {
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
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let sep = line.as_bytes().get(3).copied().unwrap_or(b' ');
            if let Some(first) = first_code {
                assert_eq!(code, first, "code changed inside a multi-line reply");
            }
            first_code = Some(code);
            lines.push(line.get(4..).unwrap_or("").to_owned());
            match sep {
                b' ' => {
                    return Some(Reply {
                        code,
                        text: lines.join("\n"),
                    });
                }
                b'-' => continue,
                other => panic!("bad separator {:?} in {line:?}", other as char),
            }
        }
    }

    /// Reads one complete reply; panics at EOF.
    pub async fn read_reply(&mut self) -> (u16, String) {
        let r = self
            .try_read_reply()
            .await
            .expect("connection closed while a reply was expected");
        (r.code, r.text)
    }

    /// Reads one reply and asserts its code; returns its text.
    pub async fn expect(&mut self, code: u16) -> String {
        let (got, text) = self.read_reply().await;
        assert_eq!(got, code, "expected {code}, got {got} {text:?}");
        text
    }

    /// Sends a command line and expects `code`; returns the reply text.
    pub async fn cmd(&mut self, line: &str, code: u16) -> String {
        self.send_line(line).await;
        self.expect(code).await
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

    /// Asserts that nothing arrives for `quiet` (no unsolicited reply).
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

    /// The greeting, MAIL and RCPT lines of a transaction, all expected 250,
    /// then DATA (354); the caller sends the body.
    pub async fn begin_data(&mut self, from: &str, to: &[&str]) {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.cmd("DATA", 354).await;
    }
}

impl Client {
    /// The underlying buffered stream, for tests that script raw IO.
    pub fn stream_mut(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.stream
    }
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
                c.cmd("QUIT", 221).await;
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

/// This process's resident set size in KiB (`VmRSS` of
/// `/proc/self/status`), or `None` where that file does not exist.
///
/// The server runs inside the test process, so growth of this figure is
/// growth of the server's (and the test clients') memory.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Taken exclusively ([`alone`]) by tests that measure process-wide
/// figures (memory, open files) or load both cores, and shared
/// ([`beside_others`]) by the other tests of the same binary.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Waits until no other test of this binary that takes [`alone`] or
/// [`beside_others`] runs, and keeps it so while the guard lives.
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    SERIAL.write().await
}

/// Runs beside other tests, but never beside one that runs [`alone`].
pub async fn beside_others() -> tokio::sync::RwLockReadGuard<'static, ()> {
    SERIAL.read().await
}

/// How many sockets other than Unix sockets this process has open (Linux),
/// to detect sockets that outlive their connection. Unix sockets come and go
/// with the runtimes of other tests (tokio's signal driver holds one) and
/// are not counted; a leaked TCP socket is, even once the connection is
/// closed and gone from `/proc/net/tcp`.
pub fn open_sockets() -> Option<usize> {
    let unix = std::fs::read_to_string("/proc/self/net/unix").ok()?;
    // Columns: Num RefCount Protocol Flags Type St Inode [Path]
    let unix_inodes: std::collections::HashSet<String> = unix
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(6))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    let open = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:") && !unix_inodes.contains(target))
        .count();
    Some(open)
}

/// A deterministic pseudo-random generator (xorshift64*), so that "random"
/// inputs and failures are the same on every run.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed (zero is replaced).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Panics whose location is outside the test files: a bug in the library
/// (or a dependency), even when caught by the server's panic guard.
static LIBRARY_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts counting panics raised outside `tests/` (the default hook still
/// prints them). Deliberate panics in test handlers and failed assertions
/// are located in `tests/` and are not counted. Idempotent.
pub fn watch_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/") || l.file().contains("/tests/"));
            if !in_tests {
                LIBRARY_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Asserts that no panic outside `tests/` happened since [`watch_panics`].
pub fn assert_no_library_panic() {
    let n = LIBRARY_PANICS.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 0, "{n} panic(s) outside the tests (see stderr)");
}

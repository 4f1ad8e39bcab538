//! Hostile clients over TCP on 127.0.0.1 (issue 8): slowloris, connection
//! floods past the caps, a client that never reads its replies, clients
//! that vanish at every step of a transaction, garbage on the command port,
//! and message services that hang, panic or fail in unexpected ways.
//!
//! Every test is bounded: small counts, short configured timeouts, and every
//! wait under [`common::within`]. The connection caps double as the leak
//! detector: a task that outlives its client keeps its slot, so
//! `max_connections(n)` would no longer admit `n` new clients.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use common::{
    Client, TestServer, XorShift, alone, assert_admits, assert_no_library_panic, beside_others,
    open_sockets, rss_kib, watch_panics, within,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtpsrv::tls::TlsConfig;
use smtpsrv::tls::rustls::{self, ClientConfig, ClientConnection, RootCertStore};
use smtpsrv::tower::{Service, service_fn};
use smtpsrv::{Authenticate, BoxError, Context, Identity, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

// ------------------------------------------------------------ helpers

/// The text of the `Subject:` header, which the tests use as a label.
fn subject(ctx: &Context) -> String {
    let message = String::from_utf8_lossy(ctx.message().unwrap());
    message
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_owned()
}

/// A complete message labelled `label`, ready to send after `354`.
fn message(label: &str) -> Vec<u8> {
    format!("Subject: {label}\r\n\r\nbody of {label}\r\n.\r\n").into_bytes()
}

/// One transaction on an open session; returns the final reply.
async fn deliver_on(c: &mut Client, label: &str) -> (u16, String) {
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(&message(label)).await;
    c.read_reply().await
}

/// A new session that sends one message and quits; returns the final reply.
async fn deliver_one(server: &TestServer, label: &str) -> (u16, String) {
    let mut c = Client::connect_ehlo(server.addr).await;
    let reply = deliver_on(&mut c, label).await;
    c.cmd_expect("QUIT", 221).await;
    reply
}

fn lettre_client(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .hello_name(ClientId::Domain("client.example".into()))
        .timeout(Some(Duration::from_secs(5)))
        .build()
}

/// Sends one message with lettre, a real SMTP client; returns the code.
async fn lettre_send(server: &TestServer, label: &str) -> u16 {
    let envelope = lettre::address::Envelope::new(
        Some("ann@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let raw = format!("Subject: {label}\r\n\r\nsent by lettre\r\n");
    let response = within(
        "lettre send",
        lettre_client(server.addr.port()).send_raw(&envelope, raw.as_bytes()),
    )
    .await
    .expect("lettre delivery");
    u16::from(response.code())
}

/// Reads everything the server sends until it closes the connection (a
/// reset counts as the close), within [`common::TIMEOUT`].
async fn read_until_close(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    within("the server to close the connection", async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
            assert!(received.len() < 1 << 20, "the server talks without end");
        }
    })
    .await;
    received
}

/// Splits raw server output into replies `(code, last line's text)`,
/// asserting that every line is a well-formed reply line.
fn replies(raw: &[u8]) -> Vec<(u16, String)> {
    let text = String::from_utf8(raw.to_vec()).expect("replies are UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\r\n"),
        "output does not end with CRLF: {text:?}"
    );
    let mut out = Vec::new();
    for line in text.split_terminator("\r\n") {
        assert!(line.len() >= 4, "short reply line {line:?}");
        let code: u16 = line[..3].parse().expect("reply code");
        assert!((200..600).contains(&code), "bad code in {line:?}");
        match line.as_bytes()[3] {
            b' ' => out.push((code, line[4..].to_owned())),
            b'-' => {}
            _ => panic!("bad separator in {line:?}"),
        }
    }
    out
}

/// Sends `garbage` from its own task (so the replies are read meanwhile),
/// keeps the write side open, and returns the replies the server sent
/// until it closed the connection.
async fn answers_to(server: &TestServer, garbage: Vec<u8>) -> Vec<(u16, String)> {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may close first; a failed write is part of the game.
        let _ = wr.write_all(&garbage).await;
        wr // dropping it would half-close, which is not what is tested
    });
    let raw = read_until_close(&mut rd).await;
    let _wr = within("the garbage writer", writer).await.unwrap();
    replies(&raw)
}

/// Asserts the shape of a refused hostile session: the greeting, only 5xx
/// replies, then `421` with one of `statuses`.
fn assert_refused(replies: &[(u16, String)], statuses: &[&str]) {
    let (first, rest) = replies.split_first().expect("at least the greeting");
    assert_eq!(first.0, 220, "{replies:?}");
    let (last, middle) = rest.split_last().expect("a closing reply");
    assert!(
        middle.iter().all(|(code, _)| (500..600).contains(code)),
        "{middle:?}"
    );
    assert_eq!(last.0, 421, "{replies:?}");
    assert!(
        statuses.iter().any(|s| last.1.starts_with(s)),
        "{last:?} not one of {statuses:?}"
    );
}

/// A throw-away self-signed certificate for `localhost`, and a client
/// configuration that trusts it.
fn tls_pair() -> (TlsConfig, Arc<ClientConfig>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let server = TlsConfig::from_pem(
        key.cert.pem().as_bytes(),
        key.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    (server, Arc::new(client))
}

/// The first flight of a real TLS client: a ClientHello record.
fn client_hello() -> Vec<u8> {
    let (_, config) = tls_pair();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    hello
}

// ------------------------------------------------------------ slowloris

/// How a slowloris connection ended.
struct Trickled {
    output: Vec<u8>,
    /// From the end of the greeting to the close.
    lasted: Duration,
    sent: usize,
}

/// Connects, then sends one byte of an endless command every 100 ms until
/// the server closes the connection; `greeted` is told after the greeting.
async fn slowloris(
    addr: std::net::SocketAddr,
    greeted: tokio::sync::mpsc::Sender<()>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> Trickled {
    // A burst of connects beyond the listen backlog (128, as in std) would
    // wait for SYN retransmission; a few at a time is just as hostile.
    let permit = connecting.acquire_owned().await.unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut output = Vec::new();
    let mut chunk = [0u8; 512];
    while !output.ends_with(b"\r\n") {
        let n = within("greeting", stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed before the greeting");
        output.extend_from_slice(&chunk[..n]);
    }
    let start = Instant::now();
    drop(permit);
    greeted.send(()).await.unwrap();
    let command = b"EHLO a-client-that-types-one-letter-every-hundred-milliseconds.example";
    let (mut rd, mut wr) = stream.split();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sent = 0;
    within("the server to close a slowloris", async {
        loop {
            tokio::select! {
                r = rd.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => output.extend_from_slice(&chunk[..n]),
                },
                _ = tick.tick(), if sent < command.len() => {
                    if wr.write_all(&command[sent..=sent]).await.is_ok() {
                        sent += 1;
                    }
                }
            }
        }
    })
    .await;
    Trickled {
        output,
        lasted: start.elapsed(),
        sent,
    }
}

#[tokio::test]
async fn slowloris_connections_do_not_starve_others_and_are_timed_out() {
    watch_panics();
    let _guard = beside_others().await;
    const SLOW: usize = 200;
    let timeout = Duration::from_secs(1);
    let builder = Server::builder()
        .command_timeout(timeout)
        .max_connections_per_ip(SLOW + 10);
    let server = TestServer::start(builder).await;

    let (greeted_tx, mut greeted) = tokio::sync::mpsc::channel(SLOW);
    let connecting = Arc::new(tokio::sync::Semaphore::new(50));
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let slowloris = slowloris(server.addr, greeted_tx.clone(), connecting.clone());
            tokio::spawn(slowloris)
        })
        .collect();
    for _ in 0..SLOW {
        within("every slowloris greeted", greeted.recv())
            .await
            .unwrap();
    }
    // All of them are connected and trickling: others are still served.
    let started = Instant::now();
    assert_eq!(lettre_send(&server, "while slowloris").await, 250);
    assert_eq!(deliver_one(&server, "raw while slowloris").await.0, 250);
    assert!(
        started.elapsed() < timeout / 2,
        "deliveries took {:?} under slowloris",
        started.elapsed()
    );
    assert!(!slow.iter().any(|t| t.is_finished()), "closed too early");

    // The deadline is per command, not per byte: each is closed about one
    // command timeout after its greeting, though it kept sending.
    for t in slow {
        let t = t.await.unwrap();
        let r = replies(&t.output);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].0, 220);
        assert_eq!(r[1].0, 421, "{r:?}");
        assert!(r[1].1.starts_with("4.4.2"), "{r:?}");
        assert!(
            t.lasted >= timeout - Duration::from_millis(100) && t.lasted < timeout * 3,
            "closed after {:?}",
            t.lasted
        );
        assert!(t.sent >= 5, "only {} bytes trickled", t.sent);
    }
    assert_eq!(server.recorder.len(), 2);
    assert_eq!(deliver_one(&server, "after slowloris").await.0, 250);
    server.shutdown().await;
    assert_no_library_panic();
}

// ------------------------------------------------------------ floods

/// Opens `n` connections beyond a full cap, up to 100 at once (below the
/// listen backlog): half read the refusal (which must be `421 4.7.0` and a
/// close), half hang up at once.
async fn flood(addr: std::net::SocketAddr, n: usize) {
    let connecting = Arc::new(tokio::sync::Semaphore::new(100));
    let mut set = JoinSet::new();
    for i in 0..n {
        let connecting = connecting.clone();
        set.spawn(async move {
            let _permit = connecting.acquire_owned().await.unwrap();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                stream.set_zero_linger().unwrap();
                return; // drop: reset before reading anything
            }
            let r = replies(&read_until_close(&mut stream).await);
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].0, 421, "{r:?}");
            assert!(r[0].1.starts_with("4.7.0"), "{r:?}");
        });
    }
    while let Some(r) = within("the flood", set.join_next()).await {
        r.unwrap();
    }
}

#[tokio::test]
async fn a_flood_past_the_global_cap_gets_421_and_the_server_stays_responsive() {
    watch_panics();
    let _alone = alone().await;
    let sockets = open_sockets();
    const CAP: usize = 16;
    let builder = Server::builder()
        .max_connections(CAP)
        .max_connections_per_ip(10 * CAP);
    let server = TestServer::start(builder).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(Client::connect_ehlo(server.addr).await);
    }
    flood(server.addr, 200).await;
    // The admitted sessions were not disturbed.
    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(deliver_on(c, &format!("held {i}")).await.0, 250);
    }
    for mut c in held {
        c.cmd_expect("QUIT", 221).await;
    }
    // The refused connections took no slot, and the freed ones are back.
    assert_admits(server.addr, CAP).await;
    assert_eq!(deliver_one(&server, "after the flood").await.0, 250);
    assert_eq!(server.recorder.len(), CAP + 1);
    server.shutdown().await;
    assert_eq!(open_sockets(), sockets, "a socket outlived its connection");
    assert_no_library_panic();
}

#[tokio::test]
async fn a_flood_past_the_per_ip_cap_gets_421_and_the_server_stays_responsive() {
    watch_panics();
    let _guard = beside_others().await;
    const PER_IP: usize = 8;
    let builder = Server::builder()
        .max_connections(1000)
        .max_connections_per_ip(PER_IP);
    let server = TestServer::start(builder).await;
    let mut held = Vec::new();
    for _ in 0..PER_IP {
        held.push(Client::connect_ehlo(server.addr).await);
    }
    flood(server.addr, 100).await;
    assert_eq!(deliver_on(&mut held[0], "held").await.0, 250);
    // One leaves: its place is free again (soon: the slot goes with the task).
    let mut last = held.pop().unwrap();
    last.cmd_expect("QUIT", 221).await;
    last.expect_eof().await;
    let started = Instant::now();
    loop {
        let mut c = Client::connect_raw(server.addr).await;
        let r = c.try_read_reply().await.expect("a first reply");
        if r.code == 220 {
            c.cmd_expect("EHLO client.example", 250).await;
            held.push(c);
            break;
        }
        assert_eq!(r.code, 421);
        assert!(
            started.elapsed() < common::TIMEOUT,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for mut c in held {
        c.cmd_expect("QUIT", 221).await;
    }
    assert_admits(server.addr, PER_IP).await;
    server.shutdown().await;
    assert_no_library_panic();
}

// ------------------------------------------------------------ never reads

#[tokio::test]
async fn a_client_that_never_reads_cannot_make_the_server_buffer_without_bound() {
    watch_panics();
    let _alone = alone().await;
    // A long command timeout: the hog's slot must be freed by its close.
    let builder = Server::builder()
        .max_connections(2)
        .command_timeout(Duration::from_secs(60));
    let server = TestServer::start(builder).await;
    let before = rss_kib();

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    let mut hog = within("connect", socket.connect(server.addr))
        .await
        .unwrap();
    // EHLO answers with ~25 times its own size: the server's writes block
    // long before its reads would.
    let block = b"EHLO hog.example\r\nNOOP\r\nRSET\r\n".repeat(2048);
    let limit = 64 * 1024 * 1024;
    let mut written = 0usize;
    within("the hog's writes to block", async {
        loop {
            match tokio::time::timeout(Duration::from_millis(500), hog.write_all(&block)).await {
                Ok(Ok(())) => written += block.len(),
                Ok(Err(e)) => panic!("the server dropped the hog: {e}"),
                Err(_) => break, // blocked: the server stopped reading
            }
            assert!(
                written < limit,
                "the server took {written} bytes from a client that reads nothing"
            );
        }
    })
    .await;
    let grown = rss_kib()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    eprintln!(
        "never-reading client: {written} bytes written before blocking; RSS grew {grown:?} KiB"
    );
    if let Some(grown) = grown {
        assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    }

    // The stuck session holds one slot and nothing else: others are served.
    assert_eq!(deliver_one(&server, "beside the hog").await.0, 250);
    // Closing the hog (a reset: its replies were never read) frees its slot
    // long before the command timeout.
    drop(hog);
    assert_admits(server.addr, 2).await;
    server.shutdown().await;
    assert_no_library_panic();
}

// ------------------------------------------------------------ vanishing

/// Where a client hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vanish {
    BeforeGreeting,
    MidCommand,
    AfterMail,
    AfterRcpt,
    AfterData,
    MidBody,
    /// The whole message is sent; the client leaves before the reply.
    BeforeFinalReply,
    /// MAIL, RCPT and DATA pipelined, then the message; nothing read.
    PipelinedUnread,
    MidBdatChunk,
    /// A complete `BDAT LAST`; the client leaves before the reply.
    BdatLastUnread,
    MidAuthLogin,
    MidAuthPlainLine,
    MidStartTlsHandshake,
    AfterServerHello,
    MidBodyOverTls,
}

impl Vanish {
    const ALL: [Vanish; 15] = [
        Vanish::BeforeGreeting,
        Vanish::MidCommand,
        Vanish::AfterMail,
        Vanish::AfterRcpt,
        Vanish::AfterData,
        Vanish::MidBody,
        Vanish::BeforeFinalReply,
        Vanish::PipelinedUnread,
        Vanish::MidBdatChunk,
        Vanish::BdatLastUnread,
        Vanish::MidAuthLogin,
        Vanish::MidAuthPlainLine,
        Vanish::MidStartTlsHandshake,
        Vanish::AfterServerHello,
        Vanish::MidBodyOverTls,
    ];

    /// Whether the server has the complete message before the client leaves.
    fn completes_message(self) -> bool {
        matches!(
            self,
            Vanish::BeforeFinalReply | Vanish::PipelinedUnread | Vanish::BdatLastUnread
        )
    }
}

/// Body octets sent by the mid-body scenarios: enough to take a share of
/// the memory budget.
const PARTIAL_BODY: usize = 100 * 1024;

/// Plays `how`, then hangs up with a FIN, or a reset when `reset`.
async fn vanish(
    addr: std::net::SocketAddr,
    how: Vanish,
    reset: bool,
    tls: Arc<ClientConfig>,
    hello: Arc<Vec<u8>>,
    recorder: common::Recorder,
) {
    let label = format!("{how:?} reset={reset}");
    let mut c = Client::connect_raw(addr).await;
    if reset {
        c.stream_mut().get_ref().set_zero_linger().unwrap();
    }
    if how == Vanish::BeforeGreeting {
        return;
    }
    c.expect(220).await;
    c.cmd_expect("EHLO client.example", 250).await;
    let partial_body = || {
        let mut body = format!("Subject: {label}\r\n\r\n").into_bytes();
        body.extend(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"
                .repeat(PARTIAL_BODY / 64),
        );
        body
    };
    match how {
        Vanish::BeforeGreeting => unreachable!(),
        Vanish::MidCommand => c.send(b"MAIL FROM:<ann@exa").await,
        Vanish::AfterMail => {
            c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
        }
        Vanish::AfterRcpt => {
            c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
            c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
        }
        Vanish::AfterData => c.begin_data("ann@example.org", &["bob@example.net"]).await,
        Vanish::MidBody => {
            c.begin_data("ann@example.org", &["bob@example.net"]).await;
            c.send(&partial_body()).await;
        }
        Vanish::BeforeFinalReply => {
            c.begin_data("ann@example.org", &["bob@example.net"]).await;
            c.send(&message(&label)).await;
        }
        Vanish::PipelinedUnread => {
            c.send(b"MAIL FROM:<ann@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.send(&message(&label)).await;
        }
        Vanish::MidBdatChunk => {
            c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
            c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
            c.send(b"BDAT 1000\r\n").await;
            c.send(&[b'x'; 500]).await;
        }
        Vanish::BdatLastUnread => {
            c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
            c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
            let chunk = format!("Subject: {label}\r\n\r\nbinary\r\n");
            c.send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes())
                .await;
        }
        Vanish::MidAuthLogin => {
            c.cmd_expect("AUTH LOGIN", 334).await;
            c.cmd_expect("YW5u", 334).await; // "ann"
        }
        Vanish::MidAuthPlainLine => {
            c.cmd_expect("AUTH PLAIN", 334).await;
            c.send(b"AGFubgBzZWNy").await; // part of a line, no CRLF
        }
        Vanish::MidStartTlsHandshake => {
            c.cmd_expect("STARTTLS", 220).await;
            c.send(&hello[..hello.len() / 2]).await;
        }
        Vanish::AfterServerHello => {
            c.cmd_expect("STARTTLS", 220).await;
            c.send(&hello[..]).await;
            let mut byte = [0u8; 1];
            let n = within("the ServerHello", c.stream_mut().read(&mut byte))
                .await
                .unwrap();
            assert_eq!((n, byte[0]), (1, 0x16), "a TLS handshake record");
        }
        Vanish::MidBodyOverTls => {
            c.cmd_expect("STARTTLS", 220).await;
            let tcp = c.stream_mut().get_mut();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            // Borrowing the socket keeps the reset option for the close.
            let mut tls = within(
                "TLS handshake",
                smtpsrv::tls::tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .unwrap();
            let mut script = b"EHLO client.example\r\nMAIL FROM:<ann@example.org>\r\n\
                               RCPT TO:<bob@example.net>\r\nDATA\r\n"
                .to_vec();
            script.extend(partial_body());
            tls.write_all(&script).await.unwrap();
            tls.flush().await.unwrap();
            // Read until the 354: the server is inside the body.
            let mut seen = Vec::new();
            let mut chunk = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"354 ") {
                let n = within("354 over TLS", tls.read(&mut chunk)).await.unwrap();
                assert!(n > 0, "closed before 354");
                seen.extend_from_slice(&chunk[..n]);
            }
        }
    }
    if how.completes_message() {
        // Hang up while the handler works on the message (it takes 200 ms).
        within("the message to reach the handler", async {
            while !recorder.all().iter().any(|ctx| subject(ctx) == label) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    } else {
        // Let the server act on what arrived before the hang-up.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn clients_vanishing_at_every_step_leak_no_slot_budget_file_or_task() {
    watch_panics();
    let _alone = alone().await;
    let sockets = open_sockets();
    let runs: Vec<(Vanish, bool)> = Vanish::ALL
        .iter()
        .flat_map(|&how| [(how, false), (how, true)])
        .collect();
    let slots = runs.len();
    let budget = 1024 * 1024;
    let (tls, client_tls) = tls_pair();
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let handler = {
        let handled = handled.clone();
        service_fn(move |ctx: Context| {
            let handled = handled.clone();
            async move {
                // Still working when its client is gone.
                tokio::time::sleep(Duration::from_millis(200)).await;
                handled.lock().unwrap().push(subject(&ctx));
                Ok::<_, BoxError>(())
            }
        })
    };
    let auth = service_fn(|req: Authenticate| async move {
        Ok::<_, BoxError>(Some(Identity::new(req.username())))
    });
    let builder = Server::builder()
        .tls(tls)
        .authenticator(auth)
        .allow_insecure_auth(true)
        .max_connections(slots)
        .memory_budget(budget)
        .command_timeout(Duration::from_secs(30))
        .data_timeout(Duration::from_secs(30));
    let server = TestServer::start_with(builder, handler).await;
    let hello = Arc::new(client_hello());

    let mut set = JoinSet::new();
    for &(how, reset) in &runs {
        set.spawn(vanish(
            server.addr,
            how,
            reset,
            client_tls.clone(),
            hello.clone(),
            server.recorder.clone(),
        ));
    }
    while let Some(r) = within("every scenario", set.join_next()).await {
        r.unwrap();
    }

    // No connection task outlived its client (timeouts are 30 s)...
    assert_admits(server.addr, slots).await;
    // ...nor a share of the memory budget: a message whose reservation is
    // the whole budget (it grows in 64 KiB steps) still fits.
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    let mut big = b"Subject: nearly the whole budget\r\n\r\n".to_vec();
    big.extend(
        b"x".repeat(62)
            .iter()
            .chain(b"\r\n")
            .copied()
            .cycle()
            .take(budget - 40 * 1024),
    );
    big.extend(b".\r\n");
    c.send(&big).await;
    c.expect(250).await;
    c.cmd_expect("QUIT", 221).await;
    c.expect_eof().await;
    drop(c);

    // Only complete messages reached the service, and each was handled to
    // the end although its client had gone.
    let mut expected: Vec<String> = runs
        .iter()
        .filter(|(how, _)| how.completes_message())
        .map(|(how, reset)| format!("{how:?} reset={reset}"))
        .collect();
    expected.push("nearly the whole budget".into());
    expected.sort();
    let mut recorded: Vec<String> = server.recorder.all().iter().map(subject).collect();
    recorded.sort();
    assert_eq!(recorded, expected);
    let mut done = handled.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, expected);
    // Graceful shutdown resolves: no task is stuck anywhere, and every
    // socket is closed.
    server.shutdown().await;
    assert_eq!(open_sockets(), sockets, "a socket outlived its connection");
    assert_no_library_panic();
}

// ------------------------------------------------------------ garbage

/// A server for garbage tests: short command timeout, default limits.
async fn garbage_server() -> TestServer {
    TestServer::start(Server::builder().command_timeout(Duration::from_millis(500))).await
}

#[tokio::test]
async fn random_bytes_get_errors_or_421_and_a_close() {
    watch_panics();
    let _guard = beside_others().await;
    let server = garbage_server().await;
    let mut rng = XorShift::new(0x5eed_0001);
    // Pure noise: CRLF is rare, so mostly over-long lines, then the timeout.
    let r = answers_to(&server, rng.bytes(64 * 1024)).await;
    assert_refused(&r, &["4.4.2", "4.7.0"]);
    // Noise in lines: one error each, until too many errors.
    let mut lines = Vec::new();
    for _ in 0..200 {
        let len = rng.below(300) as usize;
        lines.extend(rng.bytes(len));
        lines.extend(b"\r\n");
    }
    let r = answers_to(&server, lines).await;
    assert_refused(&r, &["4.7.0"]);
    assert!(r.len() > 10, "{r:?}");
    assert_eq!(deliver_one(&server, "after noise").await.0, 250);
    server.shutdown().await;
    assert_no_library_panic();
}

#[tokio::test]
async fn a_tls_client_hello_on_the_plain_port_gets_errors_or_421_and_a_close() {
    watch_panics();
    let _guard = beside_others().await;
    let server = garbage_server().await;
    let r = answers_to(&server, client_hello()).await;
    assert_refused(&r, &["4.4.2", "4.7.0"]);
    assert_eq!(deliver_one(&server, "after a ClientHello").await.0, 250);
    server.shutdown().await;
    assert_no_library_panic();
}

#[tokio::test]
async fn an_http_request_on_the_smtp_port_gets_errors_and_a_close() {
    watch_panics();
    let _guard = beside_others().await;
    let server = garbage_server().await;
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\n\
                    Accept: */*\r\n\r\n"
        .to_vec();
    let r = answers_to(&server, request).await;
    assert_refused(&r, &["4.4.2"]);
    assert_eq!(r.len(), 2 + 5, "one error per line: {r:?}");
    let post = b"POST /submit HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'{', 5000))
        .collect();
    let r = answers_to(&server, post).await;
    assert_refused(&r, &["4.4.2", "4.7.0"]);
    assert_eq!(deliver_one(&server, "after HTTP").await.0, 250);
    server.shutdown().await;
    assert_no_library_panic();
}

#[tokio::test]
async fn nul_bytes_are_syntax_errors_and_the_session_stays_usable() {
    watch_panics();
    let _guard = beside_others().await;
    let server = garbage_server().await;
    let mut c = Client::connect(server.addr).await;
    let lines: [&[u8]; 5] = [
        b"\0\0\0\0\r\n",
        b"EHLO a\0b.example\r\n",
        b"\0EHLO client.example\r\n",
        b"NOOP\0\r\n",
        b"\0",
    ];
    for line in &lines[..4] {
        c.send(line).await;
        let (code, text) = c.read_reply().await;
        assert!((500..600).contains(&code), "{line:?} got {code} {text}");
    }
    c.cmd_expect("EHLO client.example", 250).await;
    c.send(b"MAIL FROM:<ann\0@example.org>\r\n").await;
    let (code, _) = c.read_reply().await;
    assert!((500..600).contains(&code), "{code}");
    c.send(lines[4]).await; // a NUL alone begins a line...
    c.send(b"\r\n").await; // ...which is an error when it ends
    let (code, _) = c.read_reply().await;
    assert!((500..600).contains(&code), "{code}");
    assert_eq!(deliver_on(&mut c, "after NULs").await.0, 250);
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
    assert_no_library_panic();
}

#[tokio::test]
async fn a_megabyte_without_a_newline_is_drained_then_refused() {
    watch_panics();
    let _guard = beside_others().await;
    let server =
        TestServer::start(Server::builder().command_timeout(Duration::from_millis(800))).await;
    let megabyte = vec![b'a'; 1024 * 1024];
    // Ended by CRLF: one 500, and the session goes on in sync.
    let mut c = Client::connect_ehlo(server.addr).await;
    c.send(&megabyte).await;
    c.send(b"\r\n").await;
    let text = c.expect(500).await;
    assert!(text.starts_with("5.5.2"), "{text}");
    c.cmd_expect("NOOP", 250).await;
    assert_eq!(deliver_on(&mut c, "after a megabyte").await.0, 250);
    c.cmd_expect("QUIT", 221).await;
    // Never ended: the command timeout closes it.
    let r = answers_to(&server, megabyte).await;
    assert_refused(&r, &["4.4.2"]);
    server.shutdown().await;
    assert_no_library_panic();
}

// ------------------------------------------------------------ faulty services

/// What `poll_ready` does on its next call.
#[derive(Debug, Clone, Copy)]
enum ReadyFault {
    Panic,
    NeverReady,
    Fail,
}

/// An error type no one expects.
#[derive(Debug)]
struct Weird(&'static str);

impl std::fmt::Display for Weird {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Weird {}

/// A message service that misbehaves on demand: through `ready_fault` for
/// its readiness, and by the message's subject for the call.
#[derive(Clone, Default)]
struct Faulty {
    ready_fault: Arc<Mutex<Option<ReadyFault>>>,
    handled: Arc<AtomicUsize>,
}

impl Service<Context> for Faulty {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        let mut slot = self.ready_fault.lock().unwrap();
        let fault = match *slot {
            // Stays until the test clears it, as a real stuck backend would.
            Some(ReadyFault::NeverReady) => *slot,
            _ => slot.take(),
        };
        drop(slot);
        match fault {
            Some(ReadyFault::Panic) => panic!("deliberate: poll_ready bug"),
            // Never woken: only the data timeout ends the wait.
            Some(ReadyFault::NeverReady) => Poll::Pending,
            Some(ReadyFault::Fail) => Poll::Ready(Err(Box::new(Weird("backend gone")))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        let handled = self.handled.clone();
        Box::pin(async move {
            match subject(&ctx).as_str() {
                "hang" => std::future::pending::<()>().await,
                "panic" => panic!("deliberate: handler bug"),
                "panic with a number" => std::panic::panic_any(42_u8),
                "weird" => {
                    return Err(Box::new(Weird("disk on fire\r\n250 2.0.0 injected")) as BoxError);
                }
                _ => {}
            }
            handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test]
async fn faulty_services_always_get_an_answer_and_the_session_goes_on() {
    watch_panics();
    let _guard = beside_others().await;
    let handler_timeout = Duration::from_millis(500);
    let faulty = Faulty::default();
    let builder = Server::builder().handler_timeout(handler_timeout);
    let server = TestServer::start_with(builder, faulty.clone()).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    let mut good = 0;

    // A handler that never completes: bounded by the handler timeout, while
    // other clients are served.
    let hung = {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut c = Client::connect_ehlo(addr).await;
            let started = Instant::now();
            let reply = deliver_on(&mut c, "hang").await;
            (c, reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(deliver_on(&mut c, "served meanwhile").await.0, 250);
    good += 1;
    let (mut h, (code, text), waited) = within("the hung handler", hung).await.unwrap();
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0 Timed out"), "{text}");
    assert!(
        waited >= handler_timeout - Duration::from_millis(50),
        "{waited:?}"
    );
    assert_eq!(deliver_on(&mut h, "after hang").await.0, 250);
    good += 1;
    h.cmd_expect("QUIT", 221).await;

    // Faults in the call itself.
    for (label, status) in [
        ("panic", "4.3.0"),
        ("panic with a number", "4.3.0"),
        ("weird", "4.3.0"),
    ] {
        let (code, text) = deliver_on(&mut c, label).await;
        assert_eq!(code, 451, "{label}: {text}");
        assert!(text.starts_with(status), "{label}: {text}");
        assert!(
            !text.contains("disk on fire"),
            "internal error leaked: {text}"
        );
        let (code, text) = deliver_on(&mut c, &format!("after {label}")).await;
        assert_eq!(code, 250, "after {label}: {text}");
        good += 1;
    }

    // Faults in readiness.
    for (fault, status) in [
        (ReadyFault::Panic, "4.3.0"),
        (ReadyFault::NeverReady, "4.3.0 Timed out"),
        (ReadyFault::Fail, "4.3.0"),
    ] {
        *faulty.ready_fault.lock().unwrap() = Some(fault);
        let (code, text) = deliver_on(&mut c, &format!("{fault:?}")).await;
        assert_eq!(code, 451, "{fault:?}: {text}");
        assert!(text.starts_with(status), "{fault:?}: {text}");
        *faulty.ready_fault.lock().unwrap() = None;
        let (code, text) = deliver_on(&mut c, &format!("after {fault:?}")).await;
        assert_eq!(code, 250, "after {fault:?}: {text}");
        good += 1;
    }
    c.cmd_expect("QUIT", 221).await;
    assert_eq!(faulty.handled.load(Ordering::SeqCst), good);
    assert_eq!(deliver_one(&server, "another client").await.0, 250);
    server.shutdown().await;
    assert_no_library_panic();
}

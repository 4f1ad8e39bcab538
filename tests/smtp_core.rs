//! The core server over real TCP on 127.0.0.1: delivery with a real client
//! (lettre), pipelining, limits, timeouts, graceful shutdown, SMTP smuggling,
//! and what failing message services turn into.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, within};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtpsrv::tower::{ServiceBuilder, service_fn};
use smtpsrv::{BoxError, Context, LineEndings, Reply, Server};

fn lettre_client(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .hello_name(ClientId::Domain("client.example".into()))
        .timeout(Some(Duration::from_secs(5)))
        .build()
}

fn address(s: &str) -> lettre::Address {
    s.parse().unwrap()
}

#[tokio::test]
async fn lettre_delivers_one_message_to_two_recipients() {
    let server = TestServer::start(Server::builder().hostname("mx.test")).await;
    let envelope = lettre::address::Envelope::new(
        Some(address("ann@example.org")),
        vec![address("bob@example.net"), address("carol@example.com")],
    )
    .unwrap();
    // A line starting with a dot: lettre stuffs it, the server must unstuff it.
    let raw = "From: ann@example.org\r\nTo: bob@example.net, carol@example.com\r\n\
               Subject: Two of you\r\n\r\nHello both\r\n.leading dot\r\nBye";
    let response = within(
        "lettre send",
        lettre_client(server.addr.port()).send_raw(&envelope, raw.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(u16::from(response.code()), 250);

    let ctx = server.recorder.single();
    assert_eq!(ctx.reverse_path().unwrap().as_str(), "ann@example.org");
    let rcpts: Vec<&str> = ctx
        .recipients()
        .iter()
        .map(|r| r.address().as_str())
        .collect();
    assert_eq!(rcpts, ["bob@example.net", "carol@example.com"]);
    assert_eq!(ctx.helo_name(), Some("client.example"));
    // lettre always ends the data with CRLF . CRLF, so the message is the
    // raw text plus that CRLF, byte for byte.
    assert_eq!(&ctx.message().unwrap()[..], format!("{raw}\r\n").as_bytes());
    assert_eq!(ctx.parse().unwrap().subject(), Some("Two of you"));
    server.shutdown().await;
}

#[tokio::test]
async fn lettre_built_message_round_trips() {
    let server = TestServer::start(Server::builder()).await;
    let message = lettre::Message::builder()
        .from("Ann <ann@example.org>".parse().unwrap())
        .to("Bob <bob@example.net>".parse().unwrap())
        .to("carol@example.com".parse().unwrap())
        .subject("Grüße aus Köln")
        .body(String::from("Ein Text mit Umlauten: äöü\r\n"))
        .unwrap();
    within(
        "lettre send",
        lettre_client(server.addr.port()).send(message),
    )
    .await
    .unwrap();
    let ctx = server.recorder.single();
    assert_eq!(ctx.recipients().len(), 2);
    let email = ctx.parse().unwrap();
    assert_eq!(email.subject(), Some("Grüße aus Köln"));
    assert_eq!(email.from()[0].address.as_deref(), Some("ann@example.org"));
    assert!(email.text_body().unwrap().contains("äöü"));
    server.shutdown().await;
}

#[tokio::test]
async fn pipelined_transaction_in_one_write_gets_every_reply_in_order() {
    let server = TestServer::start(Server::builder().hostname("mx.test")).await;
    let mut c = Client::connect(server.addr).await;
    c.send(
        b"EHLO client.example\r\n\
          MAIL FROM:<ann@example.org>\r\n\
          RCPT TO:<a@example.net>\r\n\
          RCPT TO:<b@example.net>\r\n\
          RCPT TO:<c@example.net>\r\n\
          DATA\r\n\
          Subject: piped\r\n\r\nbody\r\n.\r\n\
          QUIT\r\n",
    )
    .await;
    let ehlo = c.expect(250).await;
    assert!(ehlo.starts_with("mx.test Hello client.example"), "{ehlo}");
    assert!(ehlo.lines().any(|l| l == "PIPELINING"), "{ehlo}");
    assert!(c.expect(250).await.starts_with("2.1.0"));
    for _ in 0..3 {
        assert!(c.expect(250).await.starts_with("2.1.5"));
    }
    c.expect(354).await;
    assert!(c.expect(250).await.starts_with("2.0.0"));
    assert!(c.expect(221).await.starts_with("2.0.0"));
    c.expect_eof().await;

    let ctx = server.recorder.single();
    assert_eq!(ctx.recipients().len(), 3);
    assert_eq!(
        &ctx.message().unwrap()[..],
        b"Subject: piped\r\n\r\nbody\r\n"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn oversize_message_is_refused_after_its_end_then_the_session_goes_on() {
    let server = TestServer::start(Server::builder().max_message_bytes(1000)).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    // Commands inside an oversize body are data, never commands.
    let mut first = b"Subject: big\r\n\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n".to_vec();
    first.extend(std::iter::repeat_n(b'x', 3000));
    c.send(&first).await;
    c.expect_silence(Duration::from_millis(300)).await;
    c.send(b"\r\nmore\r\nDATA\r\n.\r\n").await;
    let text = c.expect(552).await;
    assert!(text.starts_with("5.3.4"), "{text}");
    assert!(server.recorder.is_empty());

    // The same connection carries the next transaction.
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: small\r\n\r\nfits\r\n.\r\n").await;
    c.expect(250).await;
    c.cmd_expect("QUIT", 221).await;
    c.expect_eof().await;
    let ctx = server.recorder.single();
    assert_eq!(
        &ctx.message().unwrap()[..],
        b"Subject: small\r\n\r\nfits\r\n"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn declared_size_over_the_limit_is_refused_at_mail() {
    let server = TestServer::start(Server::builder().max_message_bytes(1000)).await;
    let mut c = Client::connect(server.addr).await;
    let ehlo = c.cmd_expect("EHLO client.example", 250).await;
    assert!(ehlo.lines().any(|l| l == "SIZE 1000"), "{ehlo}");
    let text = c
        .cmd_expect("MAIL FROM:<ann@example.org> SIZE=1001", 552)
        .await;
    assert!(text.starts_with("5.3.4"), "{text}");
    c.cmd_expect("MAIL FROM:<ann@example.org> SIZE=1000", 250)
        .await;
    // Graceful shutdown waits for a transaction in progress: end it first.
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

#[tokio::test]
async fn overlong_command_line_is_refused_and_the_session_stays_in_sync() {
    let server = TestServer::start(Server::builder()).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    let mut line = b"MAIL FROM:<".to_vec();
    line.extend(std::iter::repeat_n(b'a', 10_000));
    line.extend_from_slice(b"@example.org>\r\n");
    c.send(&line).await;
    let text = c.expect(500).await;
    assert!(text.starts_with("5.5.2"), "{text}");
    // Nothing of the long line was taken as a transaction.
    c.cmd_expect("RCPT TO:<bob@example.net>", 503).await;
    c.cmd_expect("NOOP", 250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: after\r\n\r\nok\r\n.\r\n").await;
    c.expect(250).await;
    assert_eq!(server.recorder.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn each_command_restarts_the_command_timeout() {
    // The connection's read timer stays armed for the first deadline while
    // later commands move the deadline on: when it goes off early it must
    // be re-armed, not taken for a timeout. Four commands 200 ms apart
    // outlast one 600 ms timeout; silence after them is still cut off.
    let server =
        TestServer::start(Server::builder().command_timeout(Duration::from_millis(600))).await;
    let mut c = Client::connect(server.addr).await;
    c.cmd_expect("EHLO client.example", 250).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.cmd_expect("NOOP", 250).await;
    }
    let silent = Instant::now();
    let text = c.expect(421).await;
    assert!(text.starts_with("4.4.2"), "{text}");
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed too early: {waited:?}"
    );
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn idle_client_is_closed_after_the_command_timeout() {
    let server =
        TestServer::start(Server::builder().command_timeout(Duration::from_millis(300))).await;
    let started = Instant::now();
    let mut c = Client::connect(server.addr).await;
    c.cmd_expect("EHLO client.example", 250).await;
    let text = c.expect(421).await;
    let waited = started.elapsed();
    assert!(text.starts_with("4.4.2"), "{text}");
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_transactions_and_closes_idle_sessions() {
    let mut server = TestServer::start(Server::builder().hostname("mx.test")).await;
    let mut busy = Client::connect_ehlo(server.addr).await;
    busy.begin_data("ann@example.org", &["bob@example.net"])
        .await;
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n").await;
    let mut idle = Client::connect_ehlo(server.addr).await;

    server.trigger_shutdown();
    let text = idle.expect(421).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    idle.expect_eof().await;
    assert!(
        !server.is_finished(),
        "resolved while a message was in flight"
    );

    busy.send(b"second half\r\n.\r\n").await;
    busy.expect(250).await;
    // Once its transaction is done the session is idle: 421 and close.
    let text = busy.expect(421).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    busy.expect_eof().await;

    server.join().await.unwrap();
    let ctx = server.recorder.single();
    assert_eq!(
        &ctx.message().unwrap()[..],
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
    );
    // No listener is left.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn a_stalled_transaction_delays_shutdown_only_until_the_command_timeout() {
    let builder = Server::builder().command_timeout(Duration::from_millis(400));
    let mut server = TestServer::start(builder).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    server.trigger_shutdown();
    // The transaction may go on: the client is not cut off at once...
    c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
    // ...but a client that stops talking is timed out as usual.
    let text = c.expect(421).await;
    assert!(text.starts_with("4.4.2"), "{text}");
    c.expect_eof().await;
    server.join().await.unwrap();
    assert!(server.recorder.is_empty());
}

/// Bare line endings that some receivers take as the end of the data.
const SMUGGLING_SEPARATORS: &[&str] = &[
    "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r.\r\n", "\r\n.\r", "\n..\n",
];

fn smuggling_body(separator: &str) -> Vec<u8> {
    format!(
        "Subject: innocent\r\n\r\nhello{separator}MAIL FROM:<evil@x>\r\n\
         RCPT TO:<victim@y>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    .into_bytes()
}

/// Sends one smuggling attempt and returns the code of the one reply it
/// gets; QUIT's 221 must be the very next reply.
async fn smuggle(server: &TestServer, separator: &str) -> u16 {
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    let mut wire = smuggling_body(separator);
    wire.extend_from_slice(b"QUIT\r\n");
    c.send(&wire).await;
    let (code, text) = c.read_reply().await;
    assert_eq!(
        c.expect(221).await.get(..5),
        Some("2.0.0"),
        "a smuggled command was answered ({separator:?})"
    );
    c.expect_eof().await;
    assert!(code == 250 || code == 550, "{separator:?}: {code} {text}");
    code
}

#[tokio::test]
async fn smuggling_separators_are_rejected_whole_by_default() {
    let server = TestServer::start(Server::builder()).await;
    for separator in SMUGGLING_SEPARATORS {
        assert_eq!(smuggle(&server, separator).await, 550, "{separator:?}");
    }
    assert!(server.recorder.is_empty(), "a smuggled message got through");
    server.shutdown().await;
}

#[tokio::test]
async fn smuggling_separators_stay_inside_one_message_when_normalized() {
    let server = TestServer::start(Server::builder().line_endings(LineEndings::Normalize)).await;
    for separator in SMUGGLING_SEPARATORS {
        assert_eq!(smuggle(&server, separator).await, 250, "{separator:?}");
    }
    let all = server.recorder.all();
    assert_eq!(
        all.len(),
        SMUGGLING_SEPARATORS.len(),
        "one message per attempt"
    );
    for ctx in all {
        let text = String::from_utf8(ctx.message().unwrap().to_vec()).unwrap();
        assert_eq!(ctx.reverse_path().unwrap().as_str(), "ann@example.org");
        assert_eq!(ctx.recipients().len(), 1);
        assert!(text.contains("MAIL FROM:<evil@x>\r\n"), "{text:?}");
        assert!(text.ends_with("evil\r\n"), "{text:?}");
        // Every line ending was made a CRLF.
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "{text:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn dot_stuffing_and_empty_bodies() {
    let server = TestServer::start(Server::builder()).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: dots\r\n\r\n..x\r\n...\r\n.\r\n").await;
    c.expect(250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    let all = server.recorder.all();
    assert_eq!(
        &all[0].message().unwrap()[..],
        b"Subject: dots\r\n\r\n.x\r\n..\r\n"
    );
    assert!(all[1].message().unwrap().is_empty());
    assert_eq!(all[1].size(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_panicking_service_is_a_temporary_failure_and_the_server_lives_on() {
    let service = service_fn(|ctx: Context| async move {
        if ctx.message().unwrap().starts_with(b"Subject: panic") {
            panic!("handler bug");
        }
        Ok::<_, BoxError>(())
    });
    let server = TestServer::start_with(Server::builder(), service).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: panic\r\n\r\n.\r\n").await;
    let text = c.expect(451).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    // The same session goes on...
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: fine\r\n\r\n.\r\n").await;
    c.expect(250).await;
    // ...and so does the server.
    let mut d = Client::connect_ehlo(server.addr).await;
    d.begin_data("ann@example.org", &["bob@example.net"]).await;
    d.send(b"Subject: also fine\r\n\r\n.\r\n").await;
    d.expect(250).await;
    assert_eq!(server.recorder.len(), 3);
    server.shutdown().await;
}

/// Sends one small message and returns the final reply.
async fn send_one(server: &TestServer) -> (u16, String) {
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: t\r\n\r\nx\r\n.\r\n").await;
    c.read_reply().await
}

#[tokio::test]
async fn an_io_error_from_the_service_is_451_4_3_0() {
    let service =
        service_fn(|_ctx: Context| async { Err::<(), _>(std::io::Error::other("disk on fire")) });
    let server = TestServer::start_with(Server::builder(), service).await;
    let (code, text) = send_one(&server).await;
    assert_eq!(code, 451);
    assert!(text.starts_with("4.3.0"), "{text}");
    // The internal error text is not leaked to the client.
    assert!(!text.contains("disk on fire"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_reply_from_the_service_is_sent_as_is() {
    let service = service_fn(|_ctx: Context| async {
        Ok::<_, BoxError>(Reply::new(554, (5, 7, 1), "Message refused by policy"))
    });
    let server = TestServer::start_with(Server::builder(), service).await;
    assert_eq!(
        send_one(&server).await,
        (554, "5.7.1 Message refused by policy".into())
    );
    server.shutdown().await;

    let service = service_fn(|_ctx: Context| async {
        Err::<(), _>(Reply::new(452, (4, 2, 2), "Mailbox full"))
    });
    let server = TestServer::start_with(Server::builder(), service).await;
    assert_eq!(send_one(&server).await, (452, "4.2.2 Mailbox full".into()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_service_under_a_timeout_layer_is_451_4_4_7() {
    let service = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service_fn(|_ctx: Context| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, BoxError>(())
        });
    let server = TestServer::start_with(Server::builder(), service).await;
    let started = Instant::now();
    let (code, text) = send_one(&server).await;
    assert_eq!(code, 451);
    assert!(text.starts_with("4.4.7"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
    server.shutdown().await;
}

#[tokio::test]
async fn the_handler_timeout_bounds_a_slow_service_too() {
    let service = service_fn(|_ctx: Context| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, BoxError>(())
    });
    let builder = Server::builder().handler_timeout(Duration::from_millis(200));
    let server = TestServer::start_with(builder, service).await;
    let (code, text) = send_one(&server).await;
    assert_eq!(code, 451);
    assert!(text.starts_with("4.3.0 Timed out"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    let server = TestServer::start(Server::builder().max_connections_per_ip(2)).await;
    let mut a = Client::connect(server.addr).await;
    let _b = Client::connect(server.addr).await;
    let mut c = Client::connect_raw(server.addr).await;
    let text = c.expect(421).await;
    assert!(text.starts_with("4.7.0"), "{text}");
    c.expect_eof().await;

    // A freed slot is usable again.
    a.cmd_expect("QUIT", 221).await;
    a.expect_eof().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut d = Client::connect_raw(server.addr).await;
        match d.read_reply().await.0 {
            220 => break,
            421 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a freed slot was not reused: {other}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let server = TestServer::start(Server::builder().max_errors(3)).await;
    let mut c = Client::connect(server.addr).await;
    for _ in 0..3 {
        c.cmd_expect("BOGUS", 500).await;
    }
    let text = c.cmd_expect("BOGUS", 421).await;
    assert!(text.starts_with("4.7.0"), "{text}");
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn quit_is_221_then_eof() {
    let server = TestServer::start(Server::builder().hostname("mx.test")).await;
    let mut c = Client::connect(server.addr).await;
    let text = c.cmd_expect("QUIT", 221).await;
    assert!(text.starts_with("2.0.0 mx.test"), "{text}");
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_421_from_the_service_closes_the_connection() {
    let service = service_fn(|_ctx: Context| async {
        Ok::<_, BoxError>(Reply::new(421, (4, 3, 2), "Going away"))
    });
    let server = TestServer::start_with(Server::builder(), service).await;
    let mut client = Client::connect_ehlo(server.addr).await;
    client.begin_data("a@example.org", &["b@example.org"]).await;
    client.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(client.read_reply().await.0, 421);
    client.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_stalled_transaction_delays_shutdown_at_most_the_grace() {
    let builder = Server::builder()
        .command_timeout(Duration::from_secs(60))
        .shutdown_grace(Duration::from_millis(300));
    let mut server = TestServer::start(builder).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    let started = std::time::Instant::now();
    server.trigger_shutdown();
    // The client stops talking mid-transaction: closed after the grace,
    // long before the command timeout.
    let text = c.expect(421).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    c.expect_eof().await;
    server.join().await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn a_transaction_finished_during_shutdown_is_followed_by_421_at_once() {
    let builder = Server::builder().command_timeout(Duration::from_secs(60));
    let mut server = TestServer::start(builder).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    server.trigger_shutdown();
    c.send(b"Subject: t\r\n\r\nx\r\n.\r\n").await;
    c.expect(250).await;
    // Now idle: closed at once, not after the 60 s command timeout.
    let started = std::time::Instant::now();
    let text = c.expect(421).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
    c.expect_eof().await;
    server.join().await.unwrap();
    assert_eq!(server.recorder.len(), 1);
}

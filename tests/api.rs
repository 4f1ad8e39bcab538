//! The user-facing API of issue 15 over real sockets: the handler's own
//! deadline (and that it no longer shares a limit with the client's data
//! timeout), the named replies as they reach the wire, and the permanent
//! reply of an unparseable message through the README's `ctx.parse()?`.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer};
use smtpsrv::tower::service_fn;
use smtpsrv::{BoxError, Context, MailFrom, RcptTo, Reply, Server};

/// Sends one message whose body is `body` (without the final dot) on an
/// open session and returns the reply to its end of data.
async fn send_message(c: &mut Client, body: &str) -> (u16, String) {
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(body.as_bytes()).await;
    c.send(b".\r\n").await;
    c.read_reply().await
}

/// A handler that sleeps for the time named in the subject
/// (`Subject: sleep 800`) before accepting.
async fn sleepy(ctx: Context) -> Result<(), BoxError> {
    let email = ctx.parse()?;
    let millis = email
        .subject()
        .and_then(|s| s.strip_prefix("sleep "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(())
}

#[tokio::test]
async fn the_handler_deadline_answers_451_4_3_0_and_the_session_goes_on() {
    let deadline = Duration::from_millis(300);
    let builder = Server::builder().handler_timeout(deadline);
    let server = TestServer::start_with(builder, service_fn(sleepy)).await;
    let mut c = Client::connect_ehlo(server.addr).await;

    let started = Instant::now();
    let (code, text) = send_message(&mut c, "Subject: sleep 3000\r\n\r\nx\r\n").await;
    let waited = started.elapsed();
    assert_eq!(
        (code, text.as_str()),
        (451, "4.3.0 Timed out while processing, try again later")
    );
    assert!(
        waited >= deadline,
        "answered before the deadline: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "deadline ignored: {waited:?}"
    );

    // The same session goes on, and a quick handler call is accepted.
    let (code, text) = send_message(&mut c, "Subject: sleep 0\r\n\r\nx\r\n").await;
    assert_eq!(code, 250, "{text}");
    c.cmd_expect("QUIT", 221).await;
    assert_eq!(server.recorder.len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_handler_no_longer_collides_with_the_data_timeout() {
    // The handler takes four data timeouts; it used to be cut off at one.
    let builder = Server::builder()
        .data_timeout(Duration::from_millis(200))
        .handler_timeout(Duration::from_secs(4));
    let server = TestServer::start_with(builder, service_fn(sleepy)).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    let (code, text) = send_message(&mut c, "Subject: sleep 800\r\n\r\nx\r\n").await;
    assert_eq!(code, 250, "{text}");
    c.cmd_expect("NOOP", 250).await;

    // The data timeout still bounds a silent client: 421 and closed.
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: half a message\r\n").await;
    let text = c.expect(421).await;
    assert!(text.starts_with("4.4.2"), "{text}");
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn in_streaming_mode_the_handler_deadline_bounds_the_answer_not_the_data_timeout() {
    let handler = service_fn(|ctx: Context| async move {
        let body = ctx.body().bytes().await?;
        if body.windows(4).any(|w| w == b"hang") {
            std::future::pending::<()>().await;
        }
        // Slower than the data timeout, within the handler deadline.
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok::<_, BoxError>(Reply::queued(ctx.id()))
    });
    let builder = Server::builder()
        .streaming(true)
        .data_timeout(Duration::from_millis(200))
        .handler_timeout(Duration::from_millis(1500));
    let server = TestServer::start_with(builder, handler).await;
    let mut c = Client::connect_ehlo(server.addr).await;

    let (code, text) = send_message(&mut c, "Subject: slow\r\n\r\nx\r\n").await;
    assert_eq!(code, 250, "{text}");
    assert!(text.starts_with("2.0.0 OK queued as "), "{text}");

    let started = Instant::now();
    let (code, text) = send_message(&mut c, "Subject: hang\r\n\r\nhang\r\n").await;
    assert_eq!(
        (code, text.as_str()),
        (451, "4.3.0 Timed out while processing, try again later")
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

#[tokio::test]
async fn named_replies_reach_the_wire_as_documented() {
    // The README's on_rcpt: the domain (any case), then the local part.
    let on_rcpt = service_fn(|req: RcptTo| async move {
        let rcpt = req.address();
        if !rcpt.domain_is("example.com") {
            return Ok::<_, BoxError>(Reply::relay_denied());
        }
        match rcpt.local_part() {
            "ann" | "bob" => Ok(Reply::ok()),
            _ => Ok(Reply::no_such_user()),
        }
    });
    let on_mail = service_fn(|req: MailFrom| async move {
        Ok::<_, BoxError>(match req.reverse_path().map(|a| a.local_part()) {
            Some("flood") => Reply::rate_limited(),
            Some("grey") => Reply::temporarily_refused(),
            _ => Reply::ok(),
        })
    });
    let handler = service_fn(|ctx: Context| async move {
        if ctx.message()?.len() > 100 {
            return Err::<Reply, BoxError>(Box::new(Reply::message_too_large()));
        }
        Ok(Reply::queued(ctx.id()))
    });
    let builder = Server::builder().on_rcpt(on_rcpt).on_mail(on_mail);
    let server = TestServer::start_with(builder, handler).await;
    let mut c = Client::connect_ehlo(server.addr).await;

    let text = c.cmd_expect("MAIL FROM:<flood@example.org>", 450).await;
    assert_eq!(text, "4.7.0 Too many requests, slow down");
    let text = c.cmd_expect("MAIL FROM:<grey@example.org>", 451).await;
    assert_eq!(text, "4.7.1 Refused for now, try again later");

    c.cmd_expect("MAIL FROM:<carl@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<ann@Example.COM>", 250).await;
    let text = c
        .cmd_expect("RCPT TO:<ann@example.com.evil.example>", 550)
        .await;
    assert_eq!(text, "5.7.1 Relaying denied");
    let text = c.cmd_expect("RCPT TO:<zed@example.com>", 550).await;
    assert_eq!(text, "5.1.1 No such user here");
    c.cmd_expect("DATA", 354).await;
    c.send(b"Subject: hi\r\n\r\nshort\r\n.\r\n").await;
    let text = c.expect(250).await;
    let ctx = server.recorder.single();
    assert_eq!(text, format!("2.0.0 OK queued as {}", ctx.id()));
    let rcpts: Vec<String> = ctx
        .recipients()
        .iter()
        .map(|r| r.address().to_string())
        .collect();
    assert_eq!(rcpts, ["ann@Example.COM"]);

    c.cmd_expect("MAIL FROM:<carl@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<bob@example.com>", 250).await;
    c.cmd_expect("DATA", 354).await;
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(200)).as_bytes())
        .await;
    let text = c.expect(552).await;
    assert_eq!(text, "5.3.4 Message too big for system");
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_unparseable_message_gets_554_through_the_readme_pattern() {
    // The README's quick start handler, word for word but for the print.
    let handler = service_fn(|ctx: Context| async move {
        let email = ctx.parse()?;
        if email.subject() == Some("store down") {
            return Err::<Reply, BoxError>("database unreachable".into());
        }
        Ok::<_, BoxError>(Reply::ok())
    });
    let server = TestServer::start_with(Server::builder(), handler).await;
    let mut c = Client::connect_ehlo(server.addr).await;

    let permanent = "5.6.0 Malformed message: not an email message: no header found";
    for body in ["hello world\r\n", "", "hello\r\nworld\r\n"] {
        let (code, text) = send_message(&mut c, body).await;
        assert_eq!((code, text.as_str()), (554, permanent), "{body:?}");
    }
    // A blank line makes the rest a body: parsed, accepted.
    let (code, text) = send_message(&mut c, "hello world\r\n\r\nbody\r\n").await;
    assert_eq!(code, 250, "{text}");
    // An unterminated last line counts as a header field (BDAT can send one).
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
    c.send(b"BDAT 14 LAST\r\nno header here").await;
    c.expect(250).await;
    // Any other handler error stays temporary.
    let (code, text) = send_message(&mut c, "Subject: store down\r\n\r\nx\r\n").await;
    assert_eq!(
        (code, text.as_str()),
        (451, "4.3.0 Temporary failure, try again later")
    );
    c.cmd_expect("QUIT", 221).await;
    assert_eq!(server.recorder.len(), 6);
    server.shutdown().await;
}

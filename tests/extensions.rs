//! CHUNKING/BDAT and BINARYMIME (RFC 3030), DSN (RFC 3461), LMTP (RFC 2033),
//! the PROXY protocol, LIMITS (RFC 9422) and REQUIRETLS (RFC 8689) over real
//! TCP on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use smtpsrv::proto::{BodyType, Ret};
use smtpsrv::proxy::TrustedProxies;
use smtpsrv::{BoxError, Builder, Connect, PerRecipient, Reply, Server, Stage};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A session with EHLO, MAIL and one RCPT done, ready for BDAT or DATA.
async fn in_transaction(server: &TestServer) -> Client<TcpStream> {
    let mut client = server.connect().await;
    client.ehlo().await;
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client
}

fn bdat(chunk: &[u8], last: bool) -> Vec<u8> {
    let mut out = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(chunk);
    out
}

// ------------------------------------------------------------ CHUNKING

#[tokio::test]
async fn chunking_and_binarymime_are_advertised() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert!(ehlo.has_keyword("CHUNKING"), "{ehlo:?}");
    assert!(ehlo.has_keyword("BINARYMIME"), "{ehlo:?}");

    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder().chunking(false), service).await;
    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert!(!ehlo.has_keyword("CHUNKING"), "{ehlo:?}");
    assert!(!ehlo.has_keyword("BINARYMIME"), "{ehlo:?}");
    client
        .cmd("MAIL FROM:<a@b> BODY=BINARYMIME")
        .await
        .expect(555, "5.5.4");
}

#[tokio::test]
async fn bdat_single_chunk_is_byte_exact() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = in_transaction(&server).await;

    // Nothing in a chunk is a command or an end of data.
    let content = b"Subject: raw\r\n\r\n\0\xff..x\r\n.\r\nQUIT\r\nbare\nLF and CR\r.\n";
    client.send(bdat(content, true)).await;
    client.reply().await.expect(250, "2.0.0");
    client.cmd("NOOP").await.expect(250, "2.0.0");

    let ctx = inbox.next().await;
    assert_eq!(&ctx.message().unwrap()[..], &content[..]);
    assert_eq!(ctx.size(), content.len());
}

#[tokio::test]
async fn bdat_two_chunks() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = in_transaction(&server).await;

    client.send(bdat(b"Subject: two\r\n\r\nHello", false)).await;
    let first = client.reply().await;
    first.expect(250, "2.0.0");
    assert!(first.lines[0].contains("21 octets"), "{first:?}");
    client.send(bdat(b", world\r\n", true)).await;
    client.reply().await.expect(250, "2.0.0");

    let ctx = inbox.next().await;
    assert_eq!(
        &ctx.message().unwrap()[..],
        b"Subject: two\r\n\r\nHello, world\r\n"
    );
    assert_eq!(ctx.parse().unwrap().subject(), Some("two"));
}

#[tokio::test]
async fn bdat_many_chunks() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = in_transaction(&server).await;

    // 200 KiB of every octet value, in chunks of uneven sizes (empty ones too).
    let content: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut rest = &content[..];
    let mut size = 0usize;
    let mut chunks = 0;
    while !rest.is_empty() {
        size = (size * 31 + 17) % 9000;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        client.send(bdat(chunk, false)).await;
        client.reply().await.expect(250, "2.0.0");
        rest = tail;
        chunks += 1;
    }
    client.send("BDAT 0 LAST\r\n").await;
    client.reply().await.expect(250, "2.0.0");
    assert!(chunks > 30, "only {chunks} chunks");

    let ctx = inbox.next().await;
    assert_eq!(ctx.size(), content.len());
    assert!(ctx.message().unwrap()[..] == content[..], "content differs");
}

#[tokio::test]
async fn pipelined_bdats_in_one_write() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    client.ehlo().await;

    let mut batch = b"MAIL FROM:<ann@example.org>\r\nRCPT TO:<bob@example.net>\r\n".to_vec();
    batch.extend(bdat(b"abc\r\n", false));
    batch.extend(bdat(b"BDAT 1 LAST\r\n", false));
    batch.extend(bdat(b"def\r\n", true));
    batch.extend(b"NOOP\r\n");
    client.send(batch).await;
    client.reply().await.expect(250, "2.1.0");
    client.reply().await.expect(250, "2.1.5");
    client.reply().await.expect(250, "2.0.0");
    client.reply().await.expect(250, "2.0.0");
    client.reply().await.expect(250, "2.0.0");
    let noop = client.reply().await;
    noop.expect(250, "2.0.0");
    assert_eq!(noop.lines, vec!["2.0.0 OK".to_owned()]);

    let ctx = inbox.next().await;
    assert_eq!(
        &ctx.message().unwrap()[..],
        b"abc\r\nBDAT 1 LAST\r\ndef\r\n"
    );
    inbox.assert_empty();
}

#[tokio::test]
async fn bdat_0_last() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;

    let mut client = in_transaction(&server).await;
    client.send(bdat(b"Subject: x\r\n\r\nend\r\n", false)).await;
    client.reply().await.expect(250, "2.0.0");
    client.cmd("BDAT 0 LAST").await.expect(250, "2.0.0");
    assert_eq!(
        &inbox.next().await.message().unwrap()[..],
        b"Subject: x\r\n\r\nend\r\n"
    );

    // A message may be empty, too.
    client.cmd("MAIL FROM:<>").await.expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("BDAT 0 LAST").await.expect(250, "2.0.0");
    let ctx = inbox.next().await;
    assert!(ctx.message().unwrap().is_empty());
    assert!(ctx.reverse_path().is_none());
}

#[tokio::test]
async fn bdat_without_transaction_swallows_its_chunk() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    client.ehlo().await;

    // The chunk looks like commands; none may be answered or run.
    let chunk = b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<bob@example.net>\r\n";
    let mut batch = bdat(chunk, true);
    batch.extend(b"NOOP\r\n");
    client.send(batch).await;
    client.reply().await.expect(503, "5.5.1");
    let noop = client.reply().await;
    assert_eq!(noop.lines, vec!["2.0.0 OK".to_owned()], "{noop:?}");
    // No MAIL ran: RCPT is still out of sequence.
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(503, "5.5.1");

    // With MAIL but no accepted RCPT the same holds.
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    let chunk = b"RCPT TO:<bob@example.net>\r\nDATA\r\n";
    client.send(bdat(chunk, true)).await;
    client.reply().await.expect(503, "5.5.1");
    client.cmd("NOOP").await.expect(250, "2.0.0");
    inbox.assert_empty();
}

#[tokio::test]
async fn data_after_bdat_is_503() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = in_transaction(&server).await;

    client.send(bdat(b"abc", false)).await;
    client.reply().await.expect(250, "2.0.0");
    client.cmd("DATA").await.expect(503, "5.5.1");
    client
        .cmd("RCPT TO:<carol@example.net>")
        .await
        .expect(503, "5.5.1");
    client.send(bdat(b"def", true)).await;
    client.reply().await.expect(250, "2.0.0");
    let ctx = inbox.next().await;
    assert_eq!(&ctx.message().unwrap()[..], b"abcdef");
    assert_eq!(ctx.recipients().len(), 1);
}

#[tokio::test]
async fn bdat_with_bad_size_is_501() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = in_transaction(&server).await;

    client.cmd("BDAT x").await.expect(501, "5.5.2");
    client.cmd("BDAT").await.expect(501, "5.5.2");
    client.cmd("BDAT -1 LAST").await.expect(501, "5.5.2");
    client.cmd("BDAT 3 FIRST").await.expect(501, "5.5.2");
    // The transaction survives the syntax errors.
    client.send(bdat(b"ok", true)).await;
    client.reply().await.expect(250, "2.0.0");
}

#[tokio::test]
async fn bdat_over_the_size_limit_is_552() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder().max_message_bytes(64), service).await;

    // One chunk too large: drained exactly, then 552.
    let mut client = in_transaction(&server).await;
    client.send(bdat(&[b'x'; 100], true)).await;
    client.reply().await.expect(552, "5.3.4");
    client.cmd("NOOP").await.expect(250, "2.0.0");

    // Two chunks that only together exceed it.
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.send(bdat(&[b'y'; 40], false)).await;
    client.reply().await.expect(250, "2.0.0");
    client.send(bdat(&[b'z'; 40], true)).await;
    client.reply().await.expect(552, "5.3.4");
    client.cmd("NOOP").await.expect(250, "2.0.0");
    inbox.assert_empty();

    // Exactly the limit is fine.
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.send(bdat(&[b'w'; 64], true)).await;
    client.reply().await.expect(250, "2.0.0");
    assert_eq!(inbox.next().await.size(), 64);
}

// ------------------------------------------------------------ BINARYMIME

#[tokio::test]
async fn binarymime_needs_bdat() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    client.ehlo().await;

    client
        .cmd("MAIL FROM:<ann@example.org> BODY=BINARYMIME")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(503, "5.5.1");

    let content = b"Content-Type: application/octet-stream\r\n\r\n\0\x01\x02\r\n.\r\n\xfe";
    client.send(bdat(content, true)).await;
    client.reply().await.expect(250, "2.0.0");
    let ctx = inbox.next().await;
    assert_eq!(ctx.mail_params().body, Some(BodyType::BinaryMime));
    assert_eq!(&ctx.message().unwrap()[..], &content[..]);
}

// ------------------------------------------------------------ DSN

#[tokio::test]
async fn dsn_parameters_reach_the_context() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    assert!(client.ehlo().await.has_keyword("DSN"));

    client
        .cmd("MAIL FROM:<ann@example.org> RET=HDRS ENVID=QQ+2B314")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40example.net")
        .await
        .expect(250, "2.1.5");
    client
        .cmd("RCPT TO:<carol@example.net> NOTIFY=NEVER")
        .await
        .expect(250, "2.1.5");
    client
        .cmd("RCPT TO:<dave@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client.cmd("\r\nhi\r\n.").await.expect(250, "2.0.0");

    let ctx = inbox.next().await;
    assert_eq!(ctx.mail_params().ret, Some(Ret::Headers));
    assert_eq!(ctx.mail_params().envid.as_deref(), Some("QQ+314"));
    let rcpts = ctx.recipients();
    let bob = rcpts[0].params();
    let notify = bob.notify.unwrap();
    assert!(notify.success && notify.failure && !notify.delay);
    let orcpt = bob.orcpt.as_ref().unwrap();
    assert_eq!(orcpt.addr_type, "rfc822");
    assert_eq!(orcpt.address, "bob@example.net");
    assert!(rcpts[1].params().notify.unwrap().is_never());
    assert!(rcpts[2].params().is_empty());
}

#[tokio::test]
async fn bad_dsn_parameters_are_501() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    client.ehlo().await;

    client.cmd("MAIL FROM:<a@b> RET=FOO").await.expect(501, "");
    client
        .cmd("MAIL FROM:<a@b> RET=FULL RET=HDRS")
        .await
        .expect(501, "");
    client
        .cmd("MAIL FROM:<a@b> ENVID=bad+zz")
        .await
        .expect(501, "");
    client.cmd("MAIL FROM:<a@b>").await.expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<c@d> NOTIFY=NEVER,SUCCESS")
        .await
        .expect(501, "");
    client
        .cmd("RCPT TO:<c@d> NOTIFY=SOMETIMES")
        .await
        .expect(501, "");
    client
        .cmd("RCPT TO:<c@d> ORCPT=no-semicolon")
        .await
        .expect(501, "");
    client
        .cmd("RCPT TO:<c@d> NOTIFY=DELAY")
        .await
        .expect(250, "2.1.5");
}

/// RFC 3461 4: xtext is `+` and two upper-case hex digits, or a character
/// from `!` to `~` but `+` and `=`; a decoded ENVID is printable US-ASCII
/// (4.4). Nothing that decodes to a control character gets into the
/// Context: `501 5.5.4`, as Postfix answers.
#[tokio::test]
async fn xtext_violations_and_decoded_control_characters_are_501_5_5_4() {
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    client.ehlo().await;
    for mail in [
        "MAIL FROM:<a@example.com> ENVID=ab+0D+0Acd",
        "MAIL FROM:<a@example.com> ENVID=ab+0acd",
        "MAIL FROM:<a@example.com> ENVID=+00",
        "MAIL FROM:<a@example.com> ENVID=+C3+BC",
        "MAIL FROM:<a@example.com> AUTH=x+0D+0A@example.com",
    ] {
        client.cmd(mail).await.expect(501, "5.5.4");
    }
    client
        .cmd("MAIL FROM:<a@example.com> ENVID=ok+20id")
        .await
        .expect(250, "2.1.0");
    for rcpt in [
        "RCPT TO:<c@example.com> ORCPT=rfc822;c+0D+0AX-Injected:+20yes@example.com",
        "RCPT TO:<c@example.com> ORCPT=rfc822;c+2b@example.com",
        "RCPT TO:<c@example.com> ORCPT=rfc822;c+7F@example.com",
    ] {
        client.cmd(rcpt).await.expect(501, "5.5.4");
    }
    client
        .cmd("RCPT TO:<c@example.com> ORCPT=rfc822;c+2Bx@example.com")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client.cmd("\r\nhi\r\n.").await.expect(250, "2.0.0");
    let ctx = inbox.next().await;
    assert_eq!(ctx.mail_params().envid.as_deref(), Some("ok id"));
    let orcpt = ctx.recipients()[0].params().orcpt.clone().unwrap();
    assert_eq!(orcpt.address, "c+x@example.com");
    assert_eq!(ctx.recipients().len(), 1);
}

#[tokio::test]
async fn dsn_disabled_is_555() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder().dsn(false), service).await;
    let mut client = server.connect().await;
    assert!(!client.ehlo().await.has_keyword("DSN"));

    client
        .cmd("MAIL FROM:<a@b> RET=FULL")
        .await
        .expect(555, "5.5.4");
    client
        .cmd("MAIL FROM:<a@b> ENVID=x")
        .await
        .expect(555, "5.5.4");
    client.cmd("MAIL FROM:<a@b>").await.expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<c@d> NOTIFY=SUCCESS")
        .await
        .expect(555, "5.5.4");
    client
        .cmd("RCPT TO:<c@d> ORCPT=rfc822;c@d")
        .await
        .expect(555, "5.5.4");
    client.cmd("RCPT TO:<c@d>").await.expect(250, "2.1.5");
}

// ------------------------------------------------------------ LMTP

/// Answers 250, 550, 250 for the three recipients of a message.
fn mixed_delivery(_: &smtpsrv::Context) -> PerRecipient {
    PerRecipient(vec![
        Reply::ok(),
        Reply::new(550, (5, 1, 1), "No such mailbox"),
        Reply::ok(),
    ])
}

fn lmtp_builder() -> Builder {
    Server::builder().hostname("lmtp.test").lmtp(true)
}

#[tokio::test]
async fn lhlo_lists_pipelining_and_enhancedstatuscodes() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(lmtp_builder(), service).await;

    let mut client = Client::tcp(server.addr).await;
    let greeting = client.reply().await;
    assert_eq!(greeting.code, 220);
    assert!(greeting.lines[0].contains("LMTP"), "{greeting:?}");
    client.cmd("HELO client.test").await.expect(500, "");
    client.cmd("EHLO client.test").await.expect(500, "");
    client.cmd("MAIL FROM:<a@b>").await.expect(503, "5.5.1");
    let lhlo = client.cmd("LHLO client.test").await;
    lhlo.expect(250, "");
    assert!(lhlo.has_keyword("PIPELINING"), "{lhlo:?}");
    assert!(lhlo.has_keyword("ENHANCEDSTATUSCODES"), "{lhlo:?}");
    client.cmd("MAIL FROM:<a@b>").await.expect(250, "2.1.0");
}

#[tokio::test]
async fn lmtp_answers_each_recipient_in_order() {
    let (service, mut inbox) = recorder_with(mixed_delivery);
    let server = TestServer::serve(lmtp_builder(), service).await;
    let mut client = Client::tcp(server.addr).await;
    client.reply().await.expect(220, "");
    client.cmd("LHLO client.test").await.expect(250, "");

    // Pipelined, as LMTP clients do.
    client
        .send(
            "MAIL FROM:<ann@example.org>\r\nRCPT TO:<a@example.net>\r\n\
             RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
        )
        .await;
    client.reply().await.expect(250, "2.1.0");
    for _ in 0..3 {
        client.reply().await.expect(250, "2.1.5");
    }
    client.reply().await.expect(354, "");
    client.send("Subject: lmtp\r\n\r\nhi\r\n.\r\n").await;
    client.reply().await.expect(250, "2.0.0");
    client.reply().await.expect(550, "5.1.1");
    client.reply().await.expect(250, "2.0.0");
    // Exactly three: the next reply is the NOOP's.
    client.cmd("NOOP").await.expect(250, "2.0.0");

    let ctx = inbox.next().await;
    assert!(ctx.session().is_lmtp());
    assert_eq!(ctx.recipients().len(), 3);
    assert_eq!(ctx.recipients()[1].address().as_str(), "b@example.net");
}

#[tokio::test]
async fn lmtp_answers_each_recipient_after_bdat() {
    let (service, mut inbox) = recorder_with(mixed_delivery);
    let server = TestServer::serve(lmtp_builder(), service).await;
    let mut client = Client::tcp(server.addr).await;
    client.reply().await.expect(220, "");
    client.cmd("LHLO client.test").await.expect(250, "");

    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    for r in ["a", "b", "c"] {
        let line = format!("RCPT TO:<{r}@example.net>");
        client.cmd(&line).await.expect(250, "2.1.5");
    }
    client
        .send(bdat(b"Subject: chunked\r\n\r\nhi\r\n", true))
        .await;
    client.reply().await.expect(250, "2.0.0");
    client.reply().await.expect(550, "5.1.1");
    client.reply().await.expect(250, "2.0.0");
    client.cmd("NOOP").await.expect(250, "2.0.0");
    assert_eq!(inbox.next().await.recipients().len(), 3);
}

#[tokio::test]
async fn lmtp_data_without_recipients_is_503() {
    // RFC 2033 4.2: with no successful RCPT, DATA MUST fail with 503.
    let (service, _inbox) = recorder();
    let server = TestServer::serve(lmtp_builder(), service).await;
    let mut client = Client::tcp(server.addr).await;
    client.reply().await.expect(220, "");
    client.cmd("LHLO client.test").await.expect(250, "");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client.cmd("DATA").await.expect(503, "5.5.1");
}

const PYTHON_LMTP_CLIENT: &str = r#"
import smtplib, sys
s = smtplib.LMTP("127.0.0.1", int(sys.argv[1]), local_hostname="py.test", timeout=5)
code, _ = s.ehlo()
print("lhlo", code)
print("pipelining", s.has_extn("pipelining"))
print("enhancedstatuscodes", s.has_extn("enhancedstatuscodes"))
print("mail", s.mail("ann@example.org")[0])
for rcpt in ("a@example.net", "b@example.net", "c@example.net"):
    print("rcpt", s.rcpt(rcpt)[0])
# smtplib reads one reply after the data; LMTP sends one per recipient.
first = s.data(b"Subject: from python\r\n\r\nhello\r\n")
print("data", first[0], s.getreply()[0], s.getreply()[0])
print("quit", s.quit()[0])
"#;

#[tokio::test]
async fn python_smtplib_lmtp_client() {
    let (service, mut inbox) = recorder_with(mixed_delivery);
    let server = TestServer::serve(lmtp_builder(), service).await;
    let port = server.addr.port().to_string();

    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", PYTHON_LMTP_CLIENT, &port])
            .output()
    });
    let output = match step(run).await.unwrap() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED python_smtplib_lmtp_client: python3 is not installed");
            return;
        }
        Err(e) => panic!("running python3: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = "lhlo 250\npipelining True\nenhancedstatuscodes True\nmail 250\n\
                    rcpt 250\nrcpt 250\nrcpt 250\ndata 250 550 250\nquit 221\n";
    assert_eq!(stdout, expected);

    let ctx = inbox.next().await;
    assert_eq!(ctx.helo_name(), Some("py.test"));
    assert_eq!(ctx.recipients().len(), 3);
    assert_eq!(ctx.parse().unwrap().subject(), Some("from python"));
}

// ------------------------------------------------------------ PROXY

/// A server behind a PROXY-speaking load balancer trusted as `trusted`,
/// with a connect hook reporting the peer it sees.
async fn proxied_server(
    trusted: &str,
) -> (
    TestServer,
    Inbox,
    mpsc::UnboundedReceiver<(SocketAddr, SocketAddr)>,
) {
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let hook = smtpsrv::tower::service_fn(move |req: Connect| {
        let seen_tx = seen_tx.clone();
        async move {
            let session = req.session();
            let _ = seen_tx.send((session.peer_addr(), session.local_addr()));
            Ok::<_, BoxError>(())
        }
    });
    let builder = Server::builder()
        .proxy_protocol(TrustedProxies::parse(trusted).unwrap())
        .proxy_header_timeout(Duration::from_millis(500))
        .on_connect(hook);
    let (service, inbox) = recorder();
    (TestServer::serve(builder, service).await, inbox, seen_rx)
}

/// Sends one message and returns nothing; the caller inspects the inbox.
async fn send_one(client: &mut Client<TcpStream>) {
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client.cmd("\r\nproxied\r\n.").await.expect(250, "2.0.0");
}

/// The 16-octet v2 preamble: signature, version/command, family, length.
fn proxy_v2_preamble(command: u8, family: u8, len: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&len.to_be_bytes());
    out
}

#[tokio::test]
async fn proxy_v1_gives_the_real_client_address() {
    let (server, mut inbox, mut seen) = proxied_server("127.0.0.1").await;
    let mut client = Client::tcp(server.addr).await;
    // No greeting before the header.
    client.assert_silent(Duration::from_millis(150)).await;
    // The header and a pipelined EHLO in one write: nothing may be lost.
    client
        .send("PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\nEHLO client.test\r\n")
        .await;
    client.reply().await.expect(220, "");
    client.reply().await.expect(250, "");
    send_one(&mut client).await;

    let real: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let local: SocketAddr = "198.51.100.1:25".parse().unwrap();
    assert_eq!(step(seen.recv()).await.unwrap(), (real, local));
    let ctx = inbox.next().await;
    assert_eq!((ctx.peer_addr(), ctx.local_addr()), (real, local));
}

#[tokio::test]
async fn proxy_v2_ipv4_with_tlv_gives_the_real_client_address() {
    let (server, mut inbox, mut seen) = proxied_server("127.0.0.0/8").await;
    let mut header = proxy_v2_preamble(0x1, 0x11, 12 + 7);
    header.extend_from_slice(&[203, 0, 113, 7]); // source
    header.extend_from_slice(&[198, 51, 100, 2]); // destination
    header.extend_from_slice(&40_000u16.to_be_bytes());
    header.extend_from_slice(&587u16.to_be_bytes());
    header.extend_from_slice(&[0x02, 0x00, 0x04]); // PP2_TYPE_AUTHORITY
    header.extend_from_slice(b"mx.t");

    let mut client = Client::tcp(server.addr).await;
    client.send(header).await;
    client.reply().await.expect(220, "");
    client.ehlo().await;
    send_one(&mut client).await;

    let real: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let local: SocketAddr = "198.51.100.2:587".parse().unwrap();
    assert_eq!(step(seen.recv()).await.unwrap(), (real, local));
    let ctx = inbox.next().await;
    assert_eq!((ctx.peer_addr(), ctx.local_addr()), (real, local));
}

#[tokio::test]
async fn proxy_v2_ipv6_gives_the_real_client_address() {
    let (server, mut inbox, mut seen) = proxied_server("127.0.0.1, ::1").await;
    let src: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::25".parse().unwrap();
    let mut header = proxy_v2_preamble(0x1, 0x21, 36);
    header.extend_from_slice(&src.octets());
    header.extend_from_slice(&dst.octets());
    header.extend_from_slice(&1234u16.to_be_bytes());
    header.extend_from_slice(&25u16.to_be_bytes());

    let mut client = Client::tcp(server.addr).await;
    client.send(header).await;
    client.reply().await.expect(220, "");
    client.ehlo().await;
    send_one(&mut client).await;

    let real: SocketAddr = "[2001:db8::1]:1234".parse().unwrap();
    assert_eq!(step(seen.recv()).await.unwrap().0, real);
    assert_eq!(inbox.next().await.peer_addr(), real);
}

#[tokio::test]
async fn proxy_v2_local_keeps_the_connection_address() {
    let (server, _inbox, mut seen) = proxied_server("127.0.0.1").await;
    let mut client = Client::tcp(server.addr).await;
    let own = client.stream().local_addr().unwrap();
    // LOCAL: a health check from the proxy itself, no addresses.
    client.send(proxy_v2_preamble(0x0, 0x00, 0)).await;
    client.reply().await.expect(220, "");
    assert_eq!(step(seen.recv()).await.unwrap().0, own);
}

#[tokio::test]
async fn proxy_header_glued_to_a_tls_client_hello_on_the_implicit_port() {
    let pki = Pki::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let hook = smtpsrv::tower::service_fn(move |req: Connect| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(req.session().peer_addr());
            Ok::<_, BoxError>(())
        }
    });
    let builder = Server::builder()
        .tls(pki.server_tls())
        .proxy_protocol(TrustedProxies::parse("127.0.0.1").unwrap())
        .on_connect(hook);
    let (service, mut inbox) = recorder();
    let server = TestServer::start_with_implicit_tls(builder, service).await;

    for header in [
        b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 465\r\n".to_vec(),
        {
            let mut v2 = proxy_v2_preamble(0x1, 0x11, 12);
            v2.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 1]);
            v2.extend_from_slice(&5000u16.to_be_bytes());
            v2.extend_from_slice(&465u16.to_be_bytes());
            v2
        },
    ] {
        // The header and the ClientHello arrive in one segment.
        let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
        let tls = tls_handshake(PrefixFirstWrite::new(tcp, header), &pki, "localhost").await;
        let mut client = Client::new(tls);
        client.reply().await.expect(220, "");
        client.ehlo().await;
        client
            .cmd("MAIL FROM:<ann@example.org>")
            .await
            .expect(250, "2.1.0");
        client
            .cmd("RCPT TO:<bob@example.net>")
            .await
            .expect(250, "2.1.5");
        client.cmd("BDAT 2 LAST\r\nhi").await.expect(250, "2.0.0");

        let real: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(step(seen.recv()).await.unwrap(), real);
        let ctx = inbox.next().await;
        assert_eq!(ctx.peer_addr(), real);
        assert!(ctx.tls().is_some());
    }
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_closed() {
    let (server, mut inbox, mut seen) = proxied_server("10.0.0.0/8, 192.0.2.0/24").await;
    let mut client = Client::tcp(server.addr).await;
    client
        .send("PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\nEHLO client.test\r\n")
        .await;
    assert_eq!(client.closed().await, b"", "closed without a greeting");
    assert!(seen.try_recv().is_err(), "the connect hook must not run");
    inbox.assert_empty();
}

#[tokio::test]
async fn malformed_proxy_headers_are_closed() {
    let (server, _inbox, mut seen) = proxied_server("127.0.0.1").await;
    let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
    let mut bad_v2 = proxy_v2_preamble(0x1, 0x11, 12);
    bad_v2[12] = 0x31; // version 3
    bad_v2.extend_from_slice(&[0; 12]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header at all", b"EHLO client.test\r\n".to_vec()),
        (
            "unknown family",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "bad address",
            b"PROXY TCP4 300.1.1.1 5.6.7.8 1 2\r\n".to_vec(),
        ),
        ("v1 too long", long_v1.into_bytes()),
        ("v2 bad version", bad_v2),
    ];
    for (what, bytes) in cases {
        let mut client = Client::tcp(server.addr).await;
        client.send(bytes).await;
        assert_eq!(
            client.closed().await,
            b"",
            "{what}: closed without a greeting"
        );
    }
    // And one that never sends a header is closed after the header timeout.
    let mut client = Client::tcp(server.addr).await;
    assert_eq!(
        client.closed().await,
        b"",
        "silent: closed without a greeting"
    );
    assert!(seen.try_recv().is_err(), "the connect hook must not run");
}

// ------------------------------------------------------------ LIMITS

#[tokio::test]
async fn limits_are_advertised_and_enforced() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert_eq!(ehlo.keyword_line("LIMITS"), Some("LIMITS RCPTMAX=100"));

    let (service, _inbox) = recorder();
    let builder = Server::builder()
        .max_recipients(3)
        .max_messages_per_session(1);
    let server = TestServer::serve(builder, service).await;
    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert_eq!(
        ehlo.keyword_line("LIMITS"),
        Some("LIMITS RCPTMAX=3 MAILMAX=1")
    );
    client.cmd("MAIL FROM:<a@b>").await.expect(250, "2.1.0");
    for r in ["c", "d", "e"] {
        let line = format!("RCPT TO:<{r}@example.net>");
        client.cmd(&line).await.expect(250, "2.1.5");
    }
    client
        .cmd("RCPT TO:<f@example.net>")
        .await
        .expect(452, "4.5.3");
    client.cmd("DATA").await.expect(354, "");
    client.cmd("\r\nx\r\n.").await.expect(250, "2.0.0");
    client.cmd("MAIL FROM:<a@b>").await.expect(452, "4.5.3");
}

// ------------------------------------------------------------ REQUIRETLS

#[tokio::test]
async fn requiretls_only_on_tls_sessions() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let builder = Server::builder().tls(pki.server_tls());
    let server = TestServer::serve(builder, service).await;

    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert!(!ehlo.has_keyword("REQUIRETLS"), "{ehlo:?}");
    client
        .cmd("MAIL FROM:<ann@example.org> REQUIRETLS")
        .await
        .expect(555, "5.5.4");

    let mut client = client.starttls(&pki).await;
    let ehlo = client.ehlo().await;
    assert!(ehlo.has_keyword("REQUIRETLS"), "{ehlo:?}");
    client
        .cmd("MAIL FROM:<ann@example.org> REQUIRETLS")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client.cmd("\r\nsecret\r\n.").await.expect(250, "2.0.0");
    let ctx = inbox.next().await;
    assert!(ctx.mail_params().requiretls);
    assert!(ctx.tls().is_some());

    // Without the parameter the flag is off.
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("BDAT 0 LAST").await.expect(250, "2.0.0");
    assert!(!inbox.next().await.mail_params().requiretls);
}

#[tokio::test]
async fn the_per_ip_cap_counts_the_real_client_behind_a_proxy() {
    // Every connection comes from the balancer (127.0.0.1); the cap of one
    // connection per IP applies to the addresses in the PROXY headers.
    let builder = Server::builder()
        .proxy_protocol(TrustedProxies::parse("127.0.0.1").unwrap())
        .max_connections_per_ip(1);
    let (service, _inbox) = recorder();
    let server = TestServer::serve(builder, service).await;
    let header = |ip: &str| format!("PROXY TCP4 {ip} 198.51.100.1 5000 25\r\n");

    let mut first = Client::tcp(server.addr).await;
    first.send(header("192.0.2.1")).await;
    first.reply().await.expect(220, "");
    let mut second = Client::tcp(server.addr).await;
    second.send(header("192.0.2.2")).await;
    second.reply().await.expect(220, "");
    // The same real client again is over its cap.
    let mut third = Client::tcp(server.addr).await;
    third.send(header("192.0.2.1")).await;
    third.reply().await.expect(421, "4.7.0");
}

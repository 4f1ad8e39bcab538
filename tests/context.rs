//! What a message handler's [`Context`] holds after a real SMTP session over
//! TCP: addresses, HELO name, MAIL and RCPT parameters, the bytes (also as
//! an `AsyncRead`), parsing, and unique message ids.

mod common;

use std::collections::HashSet;

use common::{Client, TestServer};
use smtpsrv::proto::{BodyType, Ret};
use smtpsrv::{Context, Server};
use tokio::io::AsyncReadExt;

/// Runs one transaction with the given MAIL and RCPT command lines and body
/// (without the final dot), and returns the context the service saw.
async fn deliver(mail: &str, rcpts: &[&str], body: &[u8]) -> Context {
    let server = TestServer::start(Server::builder()).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect(mail, 250).await;
    for rcpt in rcpts {
        c.cmd_expect(rcpt, 250).await;
    }
    c.cmd_expect("DATA", 354).await;
    c.send(body).await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    c.cmd_expect("QUIT", 221).await;
    let ctx = server.recorder.single();
    server.shutdown().await;
    ctx
}

#[tokio::test]
async fn addresses_helo_name_and_session_facts() {
    let server = TestServer::start(Server::builder()).await;
    let mut c = Client::connect(server.addr).await;
    c.cmd_expect("EHLO client.example", 250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: facts\r\n\r\n.\r\n").await;
    c.expect(250).await;
    let ctx = server.recorder.single();
    assert_eq!(ctx.peer_addr(), c.local_addr());
    assert_eq!(ctx.local_addr(), server.addr);
    assert_eq!(ctx.helo_name(), Some("client.example"));
    assert!(ctx.session().greeting().unwrap().is_extended());
    assert!(ctx.tls().is_none());
    assert!(!ctx.session().is_tls());
    assert!(ctx.identity().is_none());
    assert!(!ctx.session().is_lmtp());
    assert!(ctx.received_at() <= std::time::SystemTime::now());
    server.shutdown().await;
}

#[tokio::test]
async fn helo_without_extensions_is_recorded_as_such() {
    let server = TestServer::start(Server::builder()).await;
    let mut c = Client::connect(server.addr).await;
    c.cmd_expect("HELO old.example", 250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    let ctx = server.recorder.single();
    assert_eq!(ctx.helo_name(), Some("old.example"));
    assert!(!ctx.session().greeting().unwrap().is_extended());
    assert!(ctx.mail_params().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn mail_and_rcpt_parameters() {
    let ctx = deliver(
        "MAIL FROM:<ann@example.org> SIZE=24 BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef",
        &[
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com",
            "RCPT TO:<carol@example.net> NOTIFY=NEVER",
            "RCPT TO:<dave@example.net>",
        ],
        "Subject: café\r\n\r\nnaïve\r\n".as_bytes(),
    )
    .await;
    let p = ctx.mail_params();
    assert_eq!(p.size, Some(24));
    assert_eq!(p.body, Some(BodyType::EightBitMime));
    assert_eq!(p.ret, Some(Ret::Headers));
    assert_eq!(p.envid.as_deref(), Some("abc+def"));
    assert!(!p.smtputf8);
    assert_eq!(
        &ctx.message().unwrap()[..],
        "Subject: café\r\n\r\nnaïve\r\n".as_bytes()
    );

    let r = ctx.recipients();
    assert_eq!(r.len(), 3);
    let notify = r[0].params().notify.unwrap();
    assert!(notify.success && notify.failure && !notify.delay);
    let orcpt = r[0].params().orcpt.as_ref().unwrap();
    assert_eq!(
        (orcpt.addr_type.as_str(), orcpt.address.as_str()),
        ("rfc822", "b+x@example.com")
    );
    assert!(r[1].params().notify.unwrap().is_never());
    assert!(r[1].params().orcpt.is_none());
    assert!(r[2].params().is_empty());
}

#[tokio::test]
async fn smtputf8_addresses() {
    let ctx = deliver(
        "MAIL FROM:<jürgen@bücher.example> SMTPUTF8",
        &["RCPT TO:<zoë@exämple.org>", "RCPT TO:<Postmaster>"],
        "From: jürgen@bücher.example\r\nSubject: Grüße\r\n\r\nHallo\r\n".as_bytes(),
    )
    .await;
    assert!(ctx.mail_params().smtputf8);
    let from = ctx.reverse_path().unwrap();
    assert_eq!(from.as_str(), "jürgen@bücher.example");
    assert_eq!(from.local_part(), "jürgen");
    assert_eq!(from.domain(), Some("bücher.example"));
    assert_eq!(ctx.recipients()[0].address().as_str(), "zoë@exämple.org");
    assert!(ctx.recipients()[1].address().is_postmaster());
    assert_eq!(ctx.parse().unwrap().subject(), Some("Grüße"));
}

#[tokio::test]
async fn utf8_address_without_smtputf8_is_refused() {
    let server = TestServer::start(Server::builder()).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    let text = c.cmd_expect("RCPT TO:<zoë@exämple.org>", 553).await;
    assert!(text.starts_with("5.6.7"), "{text}");
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

#[tokio::test]
async fn null_sender_is_none() {
    let ctx = deliver("MAIL FROM:<>", &["RCPT TO:<bob@example.net>"], b"").await;
    assert!(ctx.reverse_path().is_none());
    assert!(ctx.envelope().is_null_sender());
    assert!(ctx.message().unwrap().is_empty());
}

#[tokio::test]
async fn reader_yields_the_message_bytes() {
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..2000 {
        body.extend_from_slice(format!("line {i} of a longer message\r\n").as_bytes());
    }
    let ctx = deliver(
        "MAIL FROM:<ann@example.org>",
        &["RCPT TO:<bob@example.net>"],
        &body,
    )
    .await;
    let mut read = Vec::new();
    ctx.reader().read_to_end(&mut read).await.unwrap();
    assert_eq!(read, body);
    assert_eq!(ctx.size(), body.len());
    // Each reader starts from the beginning.
    let mut again = Vec::new();
    ctx.reader().read_to_end(&mut again).await.unwrap();
    assert_eq!(again, body);
}

const MULTIPART: &str = "From: Ann Example <ann@example.org>\r\n\
To: Bob <bob@example.net>, carol@example.net\r\n\
Cc: dave@example.net\r\n\
Subject: =?UTF-8?B?UmVwb3J0IMOcYmVyc2ljaHQ=?=\r\n\
Message-ID: <report-1@example.org>\r\n\
Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
This is a multipart message.\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Plain =C3=BCber text\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>HTML text</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"data.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAECAwQFBgcICQ==\r\n\
--outer--\r\n";

#[tokio::test]
async fn parse_a_multipart_message_sent_through_the_server() {
    let ctx = deliver(
        "MAIL FROM:<ann@example.org>",
        &["RCPT TO:<bob@example.net>"],
        MULTIPART.as_bytes(),
    )
    .await;
    assert_eq!(&ctx.message().unwrap()[..], MULTIPART.as_bytes());
    let email = ctx.parse().unwrap();
    assert_eq!(email.subject(), Some("Report Übersicht"));
    assert_eq!(email.message_id(), Some("report-1@example.org"));
    assert_eq!(email.from()[0].name.as_deref(), Some("Ann Example"));
    assert_eq!(email.from()[0].address.as_deref(), Some("ann@example.org"));
    let to: Vec<_> = email.to().into_iter().filter_map(|m| m.address).collect();
    assert_eq!(to, ["bob@example.net", "carol@example.net"]);
    assert_eq!(email.cc()[0].address.as_deref(), Some("dave@example.net"));
    assert!(email.text_body().unwrap().contains("Plain über text"));
    assert!(email.html_body().unwrap().contains("<p>HTML text</p>"));
    let attachments = email.attachments();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].filename.as_deref(), Some("data.bin"));
    assert_eq!(attachments[0].content_type, "application/octet-stream");
    assert_eq!(&attachments[0].data[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[tokio::test]
async fn message_ids_are_unique() {
    let server = TestServer::start(Server::builder()).await;
    let mut clients = [
        Client::connect_ehlo(server.addr).await,
        Client::connect_ehlo(server.addr).await,
    ];
    for i in [0, 1, 0, 1, 0] {
        let c = &mut clients[i];
        c.begin_data("ann@example.org", &["bob@example.net"]).await;
        c.send(b".\r\n").await;
        c.expect(250).await;
    }
    let first = clients[0].local_addr();
    let all = server.recorder.all();
    assert_eq!(all.len(), 5);
    let ids: HashSet<String> = all.iter().map(|c| c.id().to_string()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let sessions: HashSet<_> = all.iter().map(|c| c.session().id()).collect();
    assert_eq!(sessions.len(), 2);
    // Within a session the ids share the session part and count up.
    let first_ids: Vec<&str> = all
        .iter()
        .filter(|c| c.peer_addr() == first)
        .map(|c| c.id().as_str())
        .collect();
    let session = all[0].session().id().to_string();
    assert_eq!(
        first_ids,
        [
            format!("{session}.1"),
            format!("{session}.2"),
            format!("{session}.3")
        ]
    );
    drop(clients);
    server.shutdown().await;
}

/// `ctx.parse()?` in a handler: a message that is not an email at all gets
/// a permanent `554 5.6.0` (retrying the same bytes cannot succeed), and the
/// session goes on; a parseable one is accepted.
#[tokio::test]
async fn an_unparseable_message_gets_a_permanent_reply_from_parse_question_mark() {
    let handler = smtpsrv::tower::service_fn(|ctx: Context| async move {
        let email = ctx.parse()?;
        let _ = email.subject();
        Ok::<_, smtpsrv::BoxError>(())
    });
    let server = TestServer::start_with(Server::builder(), handler).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    for (body, code) in [
        (&b"hello world\r\n"[..], 554),
        (b"", 554),
        (b"Subject: fine\r\n\r\nbody\r\n", 250),
    ] {
        c.cmd_expect("MAIL FROM:<a@example.com>", 250).await;
        c.cmd_expect("RCPT TO:<b@example.com>", 250).await;
        c.cmd_expect("DATA", 354).await;
        c.send(body).await;
        c.send(b".\r\n").await;
        let reply = c.expect(code).await;
        if code == 554 {
            assert!(reply.contains("5.6.0"), "{reply}");
        }
    }
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

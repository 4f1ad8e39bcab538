//! STARTTLS (RFC 3207), implicit TLS (RFC 8314) and AUTH (RFC 4954) over
//! real TCP on 127.0.0.1, with lettre and with scripted conversations.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lettre::transport::smtp::authentication::Credentials as LettreCredentials;
use lettre::transport::smtp::client::Tls;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use smtpsrv::tls::TlsConfig;
use smtpsrv::{BoxError, Builder, Identity, MailFrom, Server};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn tls_builder(pki: &Pki) -> Builder {
    Server::builder().hostname("mx.test").tls(pki.server_tls())
}

/// TLS plus the test authenticator, failures answered at once.
fn auth_builder(pki: &Pki) -> Builder {
    tls_builder(pki)
        .authenticator(authenticator())
        .auth_failure_delay(Duration::ZERO)
}

/// A session over STARTTLS, greeted again with EHLO inside TLS.
async fn tls_session(
    server: &TestServer,
    pki: &Pki,
) -> Client<smtpsrv::tls::tokio_rustls::client::TlsStream<TcpStream>> {
    let mut client = server.connect().await;
    client.ehlo().await;
    let mut client = client.starttls(pki).await;
    client.ehlo().await;
    client
}

fn lettre_transport(port: u16, tls: Tls) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .hello_name(ClientId::Domain("client.test".into()))
        .timeout(Some(STEP))
}

fn message(subject: &str) -> Message {
    Message::builder()
        .from("Ann <ann@example.org>".parse().unwrap())
        .to("Bob <bob@example.net>".parse().unwrap())
        .subject(subject)
        .body(String::from("Hello over TLS\r\n"))
        .unwrap()
}

// ------------------------------------------------------------ STARTTLS

#[tokio::test]
async fn starttls_delivery_with_lettre() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(tls_builder(&pki), service).await;

    let mailer = lettre_transport(server.addr.port(), Tls::Required(pki.lettre_tls())).build();
    let response = step(mailer.send(message("over starttls"))).await.unwrap();
    assert!(response.is_positive());

    let ctx = inbox.next().await;
    let tls = ctx.tls().expect("message should have come over TLS");
    assert_eq!(tls.version, smtpsrv::tls::TlsVersion::Tls1_3);
    assert_eq!(tls.version.to_string(), "TLSv1.3");
    assert!(tls.cipher.starts_with("TLS13_"), "{}", tls.cipher);
    assert_eq!(tls.sni.as_deref(), Some("localhost"));
    assert!(tls.peer_certificates.is_empty());
    assert_eq!(ctx.helo_name(), Some("client.test"));
    assert_eq!(ctx.reverse_path().unwrap().as_str(), "ann@example.org");
    assert_eq!(ctx.recipients().len(), 1);
    assert_eq!(ctx.recipients()[0].address().as_str(), "bob@example.net");
    assert_eq!(ctx.parse().unwrap().subject(), Some("over starttls"));
    assert!(ctx.identity().is_none());
}

#[tokio::test]
async fn context_tls_facts_match_what_the_client_negotiated() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(tls_builder(&pki), service).await;

    let mut client = tls_session(&server, &pki).await;
    let conn = client.stream().get_ref().1;
    let version = smtpsrv::tls::TlsVersion::from(conn.protocol_version().unwrap());
    let cipher = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    assert_eq!(conn.peer_certificates().unwrap()[0], pki.server.der);

    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client
        .cmd("Subject: x\r\n\r\nbody\r\n.")
        .await
        .expect(250, "2.0.0");

    let ctx = inbox.next().await;
    let tls = ctx.tls().unwrap();
    assert_eq!(tls.version, version);
    assert_eq!(tls.cipher, cipher);
    assert_eq!(tls.sni.as_deref(), Some("localhost"));
    assert!(ctx.session().is_tls());
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(tls_builder(&pki), service).await;

    let mut client = server.connect().await;
    client.ehlo().await;
    // CVE-2011-0411: the NOOP was sent in plaintext and must never be answered.
    client.send("STARTTLS\r\nNOOP\r\n").await;
    client.reply().await.expect(220, "2.0.0");
    let mut client = client.upgrade(&pki).await;

    let ehlo = client.cmd("EHLO again.test").await;
    ehlo.expect(250, "");
    assert_eq!(ehlo.lines[0], "mx.test Hello again.test", "{ehlo:?}");
    assert!(
        ehlo.lines.len() > 1,
        "an EHLO reply, not a NOOP one: {ehlo:?}"
    );
    client.cmd("QUIT").await.expect(221, "2.0.0");
    assert_eq!(client.closed().await, b"", "nothing after 221");
}

#[tokio::test]
async fn mail_pipelined_after_starttls_does_not_run() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(tls_builder(&pki), service).await;

    let mut client = server.connect().await;
    client.ehlo().await;
    client
        .send("STARTTLS\r\nMAIL FROM:<mallory@example.org>\r\n")
        .await;
    client.reply().await.expect(220, "2.0.0");
    let mut client = client.upgrade(&pki).await;
    client.ehlo().await;
    // Had the injected MAIL run, this RCPT would be accepted.
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(503, "5.5.1");
    client.cmd("DATA").await.expect(503, "5.5.1");
    inbox.assert_empty();
}

#[tokio::test]
async fn starttls_resets_the_session() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(tls_builder(&pki), service).await;

    let mut client = server.connect().await;
    let before = client.ehlo().await;
    assert!(before.has_keyword("STARTTLS"), "{before:?}");
    assert!(!before.has_keyword("REQUIRETLS"), "{before:?}");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    let mut client = client.starttls(&pki).await;

    // Everything before the handshake is forgotten: greet again first.
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(503, "5.5.1");
    let after = client.ehlo().await;
    assert!(!after.has_keyword("STARTTLS"), "{after:?}");
    assert!(after.has_keyword("REQUIRETLS"), "{after:?}");
    client.cmd("STARTTLS").await.expect(503, "5.5.1");
    // The session goes on inside TLS.
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(503, "5.5.1");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
}

#[tokio::test]
async fn starttls_without_tls_configured_is_454() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;

    let mut client = server.connect().await;
    assert!(!client.ehlo().await.has_keyword("STARTTLS"));
    client.cmd("STARTTLS").await.expect(454, "4.7.0");
    client.cmd("NOOP").await.expect(250, "2.0.0");
    client.cmd("STARTTLS x").await.expect(501, "");
}

#[tokio::test]
async fn require_tls_refuses_mail_before_starttls() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(tls_builder(&pki).require_tls(true), service).await;

    let mut client = server.connect().await;
    client.ehlo().await;
    client.cmd("NOOP").await.expect(250, "2.0.0");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(530, "5.7.0");
    client.cmd("RSET").await.expect(530, "5.7.0");
    let mut client = client.starttls(&pki).await;
    client.ehlo().await;
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
}

// ------------------------------------------------------------ implicit TLS

#[tokio::test]
async fn implicit_tls_delivery_with_lettre() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let server = TestServer::start_with_implicit_tls(tls_builder(&pki), service).await;
    let port = server.tls_addr.unwrap().port();

    let mailer = lettre_transport(port, Tls::Wrapper(pki.lettre_tls())).build();
    let response = step(mailer.send(message("over implicit tls")))
        .await
        .unwrap();
    assert!(response.is_positive());

    let ctx = inbox.next().await;
    let tls = ctx.tls().expect("implicit TLS session");
    assert_eq!(tls.sni.as_deref(), Some("localhost"));
    assert_eq!(ctx.local_addr(), server.tls_addr.unwrap());
    assert_eq!(ctx.parse().unwrap().subject(), Some("over implicit tls"));
}

#[tokio::test]
async fn implicit_tls_greets_inside_tls_and_offers_no_starttls() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::start_with_implicit_tls(tls_builder(&pki), service).await;

    // connect_implicit reads the 220 only after the handshake.
    let mut client = server.connect_implicit(&pki).await;
    let ehlo = client.ehlo().await;
    assert!(!ehlo.has_keyword("STARTTLS"), "{ehlo:?}");
    assert!(ehlo.has_keyword("REQUIRETLS"), "{ehlo:?}");
    client.cmd("STARTTLS").await.expect(503, "5.5.1");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");

    // The plain listener of the same server still offers STARTTLS.
    let mut plain = server.connect().await;
    assert!(plain.ehlo().await.has_keyword("STARTTLS"));
}

#[tokio::test]
async fn silent_client_on_implicit_port_is_dropped_after_handshake_timeout() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let timeout = Duration::from_millis(300);
    let builder = tls_builder(&pki).handshake_timeout(timeout);
    let server = TestServer::start_with_implicit_tls(builder, service).await;

    let started = Instant::now();
    let mut client = Client::tcp(server.tls_addr.unwrap()).await;
    let got = client.closed().await;
    let waited = started.elapsed();
    assert_eq!(got, b"", "no greeting before the handshake");
    assert!(waited >= timeout, "closed after {waited:?}");
    assert!(waited < STEP, "closed after {waited:?}");
}

#[tokio::test]
async fn plaintext_on_implicit_port_is_closed() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::start_with_implicit_tls(tls_builder(&pki), service).await;

    let mut client = Client::tcp(server.tls_addr.unwrap()).await;
    client.send("EHLO client.test\r\n").await;
    let got = client.closed().await;
    // At most a TLS alert record (content type 21), never SMTP.
    assert!(got.is_empty() || got[0] == 0x15, "got {got:?}");
    assert!(!String::from_utf8_lossy(&got).contains("250"));
}

#[tokio::test]
async fn implicit_tls_needs_a_tls_configuration() {
    let err = Server::builder()
        .build()
        .bind_implicit_tls("127.0.0.1:0")
        .await
        .err()
        .expect("binding implicit TLS without certificates must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn reloaded_certificate_is_seen_by_the_next_connection() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &pki.server.cert_pem).unwrap();
    std::fs::write(&key, &pki.server.key_pem).unwrap();
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
    let (service, _inbox) = recorder();
    let builder = Server::builder().tls(tls.clone());
    let server = TestServer::start_with_implicit_tls(builder, service).await;

    let served = |c: &Client<smtpsrv::tls::tokio_rustls::client::TlsStream<TcpStream>>| {
        c.stream().get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let mut first = server.connect_implicit(&pki).await;
    assert_eq!(served(&first), pki.server.der);

    let renewed = pki.renewed();
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    std::fs::write(&key, &renewed.key_pem).unwrap();
    tls.reload().unwrap();

    let second = server.connect_implicit(&pki).await;
    assert_eq!(served(&second), renewed.der);
    let mut plain = server.connect().await;
    plain.ehlo().await;
    let upgraded = plain.starttls(&pki).await;
    assert_eq!(served(&upgraded), renewed.der);
    // The session established before the reload goes on.
    first.cmd("NOOP").await.expect(250, "2.0.0");
}

// ------------------------------------------------------------ AUTH

#[tokio::test]
async fn auth_plain_with_initial_response() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;

    let mut client = server.connect().await;
    client.ehlo().await;
    let mut client = client.starttls(&pki).await;
    let ehlo = client.ehlo().await;
    assert_eq!(ehlo.keyword_line("AUTH"), Some("AUTH PLAIN LOGIN"));
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(235, "2.7.0");
}

#[tokio::test]
async fn auth_plain_with_empty_challenge() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    let challenge = client.cmd("AUTH PLAIN").await;
    assert_eq!(challenge.code, 334);
    assert_eq!(
        challenge.lines,
        vec![String::new()],
        "`334 ` with nothing after"
    );
    client
        .cmd(&plain_response(USER, PASSWORD))
        .await
        .expect(235, "2.7.0");
}

#[tokio::test]
async fn auth_login_success() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    let ask_user = client.cmd("AUTH LOGIN").await;
    assert_eq!(
        (ask_user.code, ask_user.lines[0].as_str()),
        (334, "VXNlcm5hbWU6")
    );
    let ask_password = client.cmd(&b64(USER.as_bytes())).await;
    assert_eq!(
        (ask_password.code, ask_password.lines[0].as_str()),
        (334, "UGFzc3dvcmQ6")
    );
    client
        .cmd(&b64(PASSWORD.as_bytes()))
        .await
        .expect(235, "2.7.0");
}

#[tokio::test]
async fn auth_login_with_initial_username() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    let line = format!("AUTH LOGIN {}", b64(USER.as_bytes()));
    let ask_password = client.cmd(&line).await;
    assert_eq!(ask_password.code, 334);
    client
        .cmd(&b64(PASSWORD.as_bytes()))
        .await
        .expect(235, "2.7.0");
}

#[tokio::test]
async fn auth_failures_are_535_and_may_be_retried() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    let wrong = format!("AUTH PLAIN {}", plain_response(USER, "guess"));
    client.cmd(&wrong).await.expect(535, "5.7.8");
    let unknown = format!("AUTH PLAIN {}", plain_response("eve", PASSWORD));
    client.cmd(&unknown).await.expect(535, "5.7.8");
    client.cmd("AUTH LOGIN").await.expect(334, "");
    client.cmd(&b64(USER.as_bytes())).await.expect(334, "");
    client.cmd(&b64(b"guess")).await.expect(535, "5.7.8");

    let right = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&right).await.expect(235, "2.7.0");
}

#[tokio::test]
async fn auth_failure_delay_is_applied() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let delay = Duration::from_millis(300);
    let builder = auth_builder(&pki).auth_failure_delay(delay);
    let server = TestServer::serve(builder, service).await;
    let mut client = tls_session(&server, &pki).await;

    let wrong = format!("AUTH PLAIN {}", plain_response(USER, "guess"));
    let started = Instant::now();
    client.cmd(&wrong).await.expect(535, "5.7.8");
    let waited = started.elapsed();
    assert!(waited >= delay, "535 after only {waited:?}");
}

#[tokio::test]
async fn auth_over_plaintext_is_refused_and_not_advertised() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;

    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert!(!ehlo.has_keyword("AUTH"), "{ehlo:?}");
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(538, "5.7.11");
    client.cmd("AUTH LOGIN").await.expect(538, "5.7.11");
    // Over TLS the same credentials work.
    let mut client = client.starttls(&pki).await;
    assert!(client.ehlo().await.has_keyword("AUTH"));
    client.cmd(&line).await.expect(235, "2.7.0");
}

#[tokio::test]
async fn allow_insecure_auth_permits_plaintext() {
    let (service, mut inbox) = recorder();
    let builder = Server::builder()
        .authenticator(authenticator())
        .auth_failure_delay(Duration::ZERO)
        .allow_insecure_auth(true);
    let server = TestServer::serve(builder, service).await;

    let mut client = server.connect().await;
    let ehlo = client.ehlo().await;
    assert_eq!(ehlo.keyword_line("AUTH"), Some("AUTH PLAIN LOGIN"));
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(235, "2.7.0");
    client.send_hi("ann@example.org", "bob@example.net").await;
    let ctx = inbox.next().await;
    assert_eq!(ctx.identity(), Some(&Identity::new(USER)));
    assert!(ctx.tls().is_none());
}

/// `base64("authzid\0user\0password")`.
fn plain_with_authzid(authzid: &str, user: &str, password: &str) -> String {
    b64(format!("{authzid}\0{user}\0{password}").as_bytes())
}

/// RFC 4616 2: an authzid the authenticator did not grant fails the
/// exchange; the test authenticator knows nothing of authzids and returns
/// the username, so only an authzid equal to the username passes.
#[tokio::test]
async fn auth_plain_with_a_foreign_authzid_fails_by_default() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;
    let foreign = format!("AUTH PLAIN {}", plain_with_authzid("boss", USER, PASSWORD));
    client.cmd(&foreign).await.expect(535, "5.7.8");
    let same = format!("AUTH PLAIN {}", plain_with_authzid(USER, USER, PASSWORD));
    client.cmd(&same).await.expect(235, "2.7.0");
}

/// An authenticator that supports proxy authorization returns the authzid,
/// which becomes the identity the hooks and the Context see.
#[tokio::test]
async fn auth_plain_authzid_granted_by_the_authenticator_becomes_the_identity() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let proxying = smtpsrv::tower::service_fn(|req: smtpsrv::Authenticate| async move {
        let ok = req.username() == USER && req.password() == PASSWORD;
        let identity = match req.authzid() {
            Some("shared@example.org") if ok => Some(Identity::new("shared@example.org")),
            Some(_) => None,
            None => ok.then(|| Identity::new(USER)),
        };
        Ok::<_, BoxError>(identity)
    });
    let builder = tls_builder(&pki)
        .authenticator(proxying)
        .auth_failure_delay(Duration::ZERO);
    let server = TestServer::serve(builder, service).await;
    let mut client = tls_session(&server, &pki).await;
    let other = format!("AUTH PLAIN {}", plain_with_authzid("root", USER, PASSWORD));
    client.cmd(&other).await.expect(535, "5.7.8");
    let granted = format!(
        "AUTH PLAIN {}",
        plain_with_authzid("shared@example.org", USER, PASSWORD)
    );
    client.cmd(&granted).await.expect(235, "2.7.0");
    client
        .send_hi("shared@example.org", "bob@example.net")
        .await;
    let ctx = inbox.next().await;
    assert_eq!(ctx.identity(), Some(&Identity::new("shared@example.org")));
}

#[tokio::test]
async fn auth_protocol_errors() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    client.cmd("AUTH PLAIN").await.expect(334, "");
    client.cmd("*").await.expect(501, "");
    client.cmd("AUTH LOGIN").await.expect(334, "");
    client.cmd("*").await.expect(501, "");
    client
        .cmd("AUTH PLAIN !!not-base64!!")
        .await
        .expect(501, "");
    client.cmd("AUTH PLAIN").await.expect(334, "");
    client.cmd("@@@@").await.expect(501, "");
    client.cmd("AUTH CRAM-MD5").await.expect(504, "5.5.4");
    client.cmd("AUTH").await.expect(501, "");
    // None of that authenticated anybody, and the session is in sync.
    client.cmd("NOOP").await.expect(250, "2.0.0");
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(235, "2.7.0");
}

#[tokio::test]
async fn second_auth_is_503() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(235, "2.7.0");
    client.cmd(&line).await.expect(503, "5.5.1");
    client.cmd("AUTH LOGIN").await.expect(503, "5.5.1");
}

#[tokio::test]
async fn auth_inside_a_transaction_is_503() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(503, "5.5.1");
    client.cmd("RSET").await.expect(250, "2.0.0");
    client.cmd(&line).await.expect(235, "2.7.0");
}

#[tokio::test]
async fn mail_auth_parameter_is_accepted_and_kept() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki), service).await;
    let mut client = tls_session(&server, &pki).await;

    client
        .cmd("MAIL FROM:<a@b> AUTH=<>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client.cmd("\r\nhi\r\n.").await.expect(250, "2.0.0");
    let ctx = inbox.next().await;
    assert_eq!(ctx.mail_params().auth.as_deref(), Some("<>"));
    assert_eq!(ctx.reverse_path().unwrap().as_str(), "a@b");
}

#[tokio::test]
async fn mail_auth_parameter_without_auth_support_is_555() {
    let (service, _inbox) = recorder();
    let server = TestServer::serve(Server::builder(), service).await;
    let mut client = server.connect().await;
    client.ehlo().await;
    client
        .cmd("MAIL FROM:<a@b> AUTH=<>")
        .await
        .expect(555, "5.5.4");
}

#[tokio::test]
async fn require_auth_refuses_mail_until_authenticated() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki).require_auth(true), service).await;
    let mut client = tls_session(&server, &pki).await;

    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(530, "5.7.0");
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(235, "2.7.0");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
}

#[tokio::test]
async fn identity_reaches_mail_hook_and_context_but_password_never_does() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let hook = smtpsrv::tower::service_fn(move |req: MailFrom| {
        let seen_tx = seen_tx.clone();
        async move {
            use smtpsrv::Stage as _;
            let _ = seen_tx.send((req.session().identity().cloned(), format!("{req:?}")));
            Ok::<_, BoxError>(())
        }
    });
    let server = TestServer::serve(auth_builder(&pki).on_mail(hook), service).await;
    let mut client = tls_session(&server, &pki).await;

    let login = format!("AUTH LOGIN {}", b64(USER.as_bytes()));
    client.cmd(&login).await.expect(334, "");
    client
        .cmd(&b64(PASSWORD.as_bytes()))
        .await
        .expect(235, "2.7.0");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
    client
        .cmd("RCPT TO:<bob@example.net>")
        .await
        .expect(250, "2.1.5");
    client.cmd("DATA").await.expect(354, "");
    client
        .cmd("Subject: s\r\n\r\nhi\r\n.")
        .await
        .expect(250, "2.0.0");

    let (hook_identity, hook_debug) = step(seen_rx.recv()).await.unwrap();
    assert_eq!(hook_identity, Some(Identity::new(USER)));
    assert!(!hook_debug.contains(PASSWORD), "{hook_debug}");
    let ctx = inbox.next().await;
    assert_eq!(ctx.identity().map(Identity::as_str), Some(USER));
    let debug = format!("{ctx:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
}

#[tokio::test]
async fn lettre_with_credentials_over_starttls() {
    let pki = Pki::new();
    let (service, mut inbox) = recorder();
    let server = TestServer::serve(auth_builder(&pki).require_auth(true), service).await;
    let port = server.addr.port();

    let mailer = lettre_transport(port, Tls::Required(pki.lettre_tls()))
        .credentials(LettreCredentials::new(USER.into(), PASSWORD.into()))
        .build();
    let response = step(mailer.send(message("authenticated"))).await.unwrap();
    assert!(response.is_positive());
    let ctx = inbox.next().await;
    assert_eq!(ctx.identity(), Some(&Identity::new(USER)));
    assert!(ctx.tls().is_some());

    let wrong = lettre_transport(port, Tls::Required(pki.lettre_tls()))
        .credentials(LettreCredentials::new(USER.into(), "guess".into()))
        .build();
    let err = step(wrong.send(message("refused"))).await.unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    inbox.assert_empty();
}

#[tokio::test]
async fn auth_before_ehlo_is_503() {
    let (service, _inbox) = recorder();
    let builder = Server::builder()
        .authenticator(authenticator())
        .allow_insecure_auth(true);
    let server = TestServer::serve(builder, service).await;
    let mut client = server.connect().await;
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(503, "5.5.1");
    client.cmd("HELO client.test").await.expect(250, "");
    client.cmd(&line).await.expect(503, "5.5.1");
}

#[tokio::test]
async fn starttls_forgets_a_plaintext_authentication() {
    let pki = Pki::new();
    let (service, _inbox) = recorder();
    let builder = auth_builder(&pki)
        .allow_insecure_auth(true)
        .require_auth(true);
    let server = TestServer::serve(builder, service).await;

    let mut client = server.connect().await;
    client.ehlo().await;
    let line = format!("AUTH PLAIN {}", plain_response(USER, PASSWORD));
    client.cmd(&line).await.expect(235, "2.7.0");
    let mut client = client.starttls(&pki).await;
    client.ehlo().await;
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(530, "5.7.0");
    client.cmd(&line).await.expect(235, "2.7.0");
    client
        .cmd("MAIL FROM:<ann@example.org>")
        .await
        .expect(250, "2.1.0");
}

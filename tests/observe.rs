//! The connection observer (`Builder::observer`) over real TCP: every
//! event in order, and why each session ended.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, TestServer, within};
use smtpsrv::Server;
use smtpsrv::observe::{Event, Observer};

/// Writes each event down as a short line.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Observer for Log {
    fn event(&self, event: Event<'_>) {
        let line = match event {
            Event::Connected { tls, .. } => format!("connected tls={tls}"),
            Event::Closed { reason, .. } => format!("closed {}", reason.as_str()),
            Event::Command { verb } => format!("command {verb}"),
            Event::Reply { code } => format!("reply {code}"),
            Event::TlsHandshake { ok } => format!("tls ok={ok}"),
            Event::Auth { ok } => format!("auth ok={ok}"),
            Event::Received { .. } => return,
            _ => format!("{event:?}"),
        };
        self.0.lock().unwrap().push(line);
    }
}

impl Log {
    /// The events once the session has been closed.
    async fn closed(&self) -> Vec<String> {
        within("the session to close", async {
            loop {
                {
                    let lines = self.0.lock().unwrap();
                    if lines.last().is_some_and(|l| l.starts_with("closed")) {
                        return lines.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

#[tokio::test]
async fn observer_sees_commands_replies_and_a_quit() {
    let log = Log::default();
    let server = TestServer::start(Server::builder().observer(log.clone())).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<a@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<b@example.org>", 250).await;
    c.cmd_expect("DATA", 354).await;
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    c.expect(250).await;
    c.cmd_expect("FROB", 500).await;
    c.cmd_expect("QUIT", 221).await;
    let events = log.closed().await;
    let expected = [
        "connected tls=false",
        "reply 220",
        "command EHLO",
        "reply 250",
        "command MAIL",
        "reply 250",
        "command RCPT",
        "reply 250",
        "command DATA",
        "reply 354",
        "reply 250",
        "command invalid",
        "reply 500",
        "command QUIT",
        "reply 221",
        "closed quit",
    ];
    assert_eq!(events, expected);
    server.shutdown().await;
}

#[tokio::test]
async fn observer_tells_why_sessions_ended() {
    let log = Log::default();
    let builder = Server::builder()
        .observer(log.clone())
        .command_timeout(Duration::from_millis(300))
        .max_errors(2);
    let mut server = TestServer::start(builder).await;

    let mut c = Client::connect(server.addr).await;
    c.expect(421).await;
    assert_eq!(log.closed().await.last().unwrap(), "closed timeout");
    log.0.lock().unwrap().clear();

    let mut c = Client::connect(server.addr).await;
    for _ in 0..2 {
        c.cmd_expect("FROB", 500).await;
    }
    c.cmd_expect("FROB", 421).await;
    assert_eq!(log.closed().await.last().unwrap(), "closed error_limit");
    log.0.lock().unwrap().clear();

    drop(Client::connect(server.addr).await);
    assert_eq!(log.closed().await.last().unwrap(), "closed peer_gone");
    log.0.lock().unwrap().clear();

    let mut c = Client::connect(server.addr).await;
    server.trigger_shutdown();
    c.expect(421).await;
    assert_eq!(log.closed().await.last().unwrap(), "closed shutdown");
    server.join().await.unwrap();
}

#[tokio::test]
async fn observer_counts_a_failed_starttls_handshake() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let tls = smtpsrv::tls::TlsConfig::from_pem(
        key.cert.pem().as_bytes(),
        key.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let log = Log::default();
    let server = TestServer::start(Server::builder().observer(log.clone()).tls(tls)).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("STARTTLS", 220).await;
    // Not a ClientHello.
    c.send(b"EHLO again\r\n").await;
    let events = log.closed().await;
    assert_eq!(
        events[events.len() - 2..],
        ["tls ok=false".to_owned(), "closed server_closed".to_owned()]
    );
    server.shutdown().await;
}

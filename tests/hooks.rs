//! The per-stage hooks over real TCP: refusals at connect, HELO, MAIL and
//! RCPT, hooks under tower layers (timeouts), results left in extensions,
//! and one layer written once for every stage.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use common::{Client, TestServer, within};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtpsrv::tower::{Layer, Service, ServiceBuilder, service_fn};
use smtpsrv::{
    BoxError, Connect, Context, Helo, MailFrom, RcptTo, Reply, Server, Stage, StageKind,
};

/// Refuses `nobody@...` with 550 5.1.1 and accepts everyone else.
fn known_users_only() -> impl Service<
    RcptTo,
    Response = Reply,
    Error = BoxError,
    Future = impl Future<Output = Result<Reply, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: RcptTo| async move {
        if req.address().local_part() == "nobody" {
            return Ok::<_, BoxError>(Reply::new(550, (5, 1, 1), "No such user here"));
        }
        Ok(Reply::ok())
    })
}

fn lettre_client(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .hello_name(ClientId::Domain("client.example".into()))
        .timeout(Some(Duration::from_secs(5)))
        .build()
}

fn recipients(ctx: &Context) -> Vec<String> {
    ctx.recipients()
        .iter()
        .map(|r| r.address().as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn rcpt_hook_refuses_one_recipient_and_the_others_get_the_message() {
    let server = TestServer::start(Server::builder().on_rcpt(known_users_only())).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
    let text = c.cmd_expect("RCPT TO:<nobody@example.net>", 550).await;
    assert_eq!(text, "5.1.1 No such user here");
    c.cmd_expect("RCPT TO:<carol@example.net>", 250).await;
    c.cmd_expect("DATA", 354).await;
    c.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n").await;
    c.expect(250).await;
    let ctx = server.recorder.single();
    assert_eq!(recipients(&ctx), ["bob@example.net", "carol@example.net"]);
    server.shutdown().await;
}

#[tokio::test]
async fn rcpt_hook_refusal_seen_by_lettre() {
    let server = TestServer::start(Server::builder().on_rcpt(known_users_only())).await;
    let transport = lettre_client(server.addr.port());
    let raw = b"Subject: hi\r\n\r\nhello";
    let addr = |s: &str| s.parse::<lettre::Address>().unwrap();

    // lettre gives up on the whole message at the first refused RCPT (its
    // choice as a client): the refusal must reach it as a permanent 550.
    let three = lettre::address::Envelope::new(
        Some(addr("ann@example.org")),
        vec![
            addr("bob@example.net"),
            addr("nobody@example.net"),
            addr("carol@example.net"),
        ],
    )
    .unwrap();
    let err = within("lettre send", transport.send_raw(&three, raw))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.status().map(u16::from), Some(550));
    assert!(server.recorder.is_empty());

    let two = lettre::address::Envelope::new(
        Some(addr("ann@example.org")),
        vec![addr("bob@example.net"), addr("carol@example.net")],
    )
    .unwrap();
    within("lettre send", transport.send_raw(&two, raw))
        .await
        .unwrap();
    let ctx = server.recorder.single();
    assert_eq!(recipients(&ctx), ["bob@example.net", "carol@example.net"]);
    server.shutdown().await;
}

#[tokio::test]
async fn connect_hook_554_serves_only_quit() {
    let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let seen2 = seen.clone();
    let hook = service_fn(move |req: Connect| {
        seen2.lock().unwrap().push(req.session().peer_addr());
        async { Ok::<_, BoxError>(Reply::new(554, (5, 7, 1), "No SMTP service for you")) }
    });
    let server = TestServer::start(Server::builder().on_connect(hook)).await;
    let mut c = Client::connect_raw(server.addr).await;
    assert_eq!(c.expect(554).await, "5.7.1 No SMTP service for you");
    assert_eq!(*seen.lock().unwrap(), [c.local_addr()]);
    c.cmd_expect("EHLO client.example", 503).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 503).await;
    c.cmd_expect("NOOP", 503).await;
    c.cmd_expect("QUIT", 221).await;
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn connect_hook_421_closes_at_once() {
    let hook = service_fn(|_req: Connect| async {
        Ok::<_, BoxError>(Reply::new(421, (4, 7, 0), "Come back later"))
    });
    let server = TestServer::start(Server::builder().on_connect(hook)).await;
    let mut c = Client::connect_raw(server.addr).await;
    assert_eq!(c.expect(421).await, "4.7.0 Come back later");
    c.expect_eof().await;
    server.shutdown().await;
}

#[tokio::test]
async fn connect_hook_accepting_gives_the_normal_greeting() {
    let hook = service_fn(|_req: Connect| async { Ok::<_, BoxError>(()) });
    let server = TestServer::start(Server::builder().on_connect(hook)).await;
    let mut c = Client::connect(server.addr).await;
    c.cmd_expect("EHLO client.example", 250).await;
    server.shutdown().await;
}

#[tokio::test]
async fn mail_hook_refuses_a_sender_domain() {
    let hook = service_fn(|req: MailFrom| async move {
        if req.reverse_path().and_then(|a| a.domain()) == Some("spam.example") {
            return Ok::<_, BoxError>(Reply::new(550, (5, 7, 1), "Sender refused"));
        }
        Ok(Reply::ok())
    });
    let server = TestServer::start(Server::builder().on_mail(hook)).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    let text = c.cmd_expect("MAIL FROM:<boss@spam.example>", 550).await;
    assert_eq!(text, "5.7.1 Sender refused");
    // A refused MAIL leaves no transaction behind.
    c.cmd_expect("RCPT TO:<bob@example.net>", 503).await;
    // The null sender has no domain and passes.
    c.cmd_expect("MAIL FROM:<>", 250).await;
    c.cmd_expect("RSET", 250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b"Subject: ok\r\n\r\n.\r\n").await;
    c.expect(250).await;
    let ctx = server.recorder.single();
    assert_eq!(ctx.reverse_path().unwrap().as_str(), "ann@example.org");
    server.shutdown().await;
}

#[tokio::test]
async fn helo_hook_sees_the_name_and_can_refuse_it() {
    let names: Arc<Mutex<Vec<String>>> = Arc::default();
    let names2 = names.clone();
    let hook = service_fn(move |req: Helo| {
        names2.lock().unwrap().push(req.name().to_owned());
        let refuse = req.name() == "localhost";
        async move {
            if refuse {
                return Ok::<_, BoxError>(Reply::new(550, (5, 7, 1), "Liar"));
            }
            Ok(Reply::ok())
        }
    });
    let server = TestServer::start(Server::builder().on_helo(hook)).await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.cmd_expect("EHLO localhost", 550).await, "5.7.1 Liar");
    // Not greeted: MAIL is out of sequence.
    c.cmd_expect("MAIL FROM:<ann@example.org>", 503).await;
    c.cmd_expect("HELO client.example", 250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    assert_eq!(*names.lock().unwrap(), ["localhost", "client.example"]);
    assert_eq!(server.recorder.single().helo_name(), Some("client.example"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_hook_under_a_timeout_layer_answers_4xx() {
    let hook = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service_fn(|req: RcptTo| async move {
            if req.address().local_part() == "slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Ok::<_, BoxError>(())
        });
    let server = TestServer::start(Server::builder().on_rcpt(hook)).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    let text = c.cmd_expect("RCPT TO:<slow@example.net>", 451).await;
    assert!(text.starts_with("4.4.7"), "{text}");
    c.cmd_expect("RCPT TO:<quick@example.net>", 250).await;
    c.cmd_expect("DATA", 354).await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    assert_eq!(recipients(&server.recorder.single()), ["quick@example.net"]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_handler_timeout_bounds_a_hook_without_a_timeout_layer() {
    let hook = service_fn(|req: MailFrom| async move {
        if req.reverse_path().is_some_and(|a| a.local_part() == "slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok::<_, BoxError>(())
    });
    let builder = Server::builder()
        .handler_timeout(Duration::from_millis(300))
        .on_mail(hook);
    let server = TestServer::start(builder).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    let text = c.cmd_expect("MAIL FROM:<slow@example.org>", 451).await;
    assert!(text.starts_with("4.3.0 Timed out"), "{text}");
    c.cmd_expect("MAIL FROM:<quick@example.org>", 250).await;
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

#[tokio::test]
async fn failing_and_panicking_hooks_are_temporary_failures() {
    let hook = service_fn(|req: MailFrom| async move {
        match req
            .reverse_path()
            .map(|a| a.local_part().to_owned())
            .as_deref()
        {
            Some("err") => Err::<(), BoxError>(std::io::Error::other("db down").into()),
            Some("panic") => panic!("hook bug"),
            _ => Ok(()),
        }
    });
    let server = TestServer::start(Server::builder().on_mail(hook)).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    let text = c.cmd_expect("MAIL FROM:<err@example.org>", 451).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    let text = c.cmd_expect("MAIL FROM:<panic@example.org>", 451).await;
    assert!(text.starts_with("4.3.0"), "{text}");
    c.cmd_expect("MAIL FROM:<fine@example.org>", 250).await;
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

/// What a connect hook leaves for the rest of the session.
#[derive(Clone, Debug, PartialEq)]
struct ConnectTag(u32);

/// What a MAIL hook leaves for the rest of the transaction.
#[derive(Clone, Debug, PartialEq)]
struct SpfVerdict(&'static str);

#[tokio::test]
async fn hooks_leave_results_in_extensions_for_later_stages_and_the_handler() {
    let on_connect = service_fn(|mut req: Connect| async move {
        req.insert_extension(ConnectTag(7));
        Ok::<_, BoxError>(())
    });
    let on_mail = service_fn(|mut req: MailFrom| async move {
        // A result of the connect stage is visible at MAIL.
        assert_eq!(req.extension::<ConnectTag>(), Some(ConnectTag(7)));
        if req.reverse_path().and_then(|a| a.domain()) == Some("example.org") {
            req.insert_extension(SpfVerdict("pass"));
        }
        Ok::<_, BoxError>(())
    });
    let rcpt_saw: Arc<Mutex<Vec<Option<SpfVerdict>>>> = Arc::default();
    let rcpt_saw2 = rcpt_saw.clone();
    let on_rcpt = service_fn(move |req: RcptTo| {
        rcpt_saw2
            .lock()
            .unwrap()
            .push(req.extension::<SpfVerdict>());
        async { Ok::<_, BoxError>(()) }
    });
    let builder = Server::builder()
        .on_connect(on_connect)
        .on_mail(on_mail)
        .on_rcpt(on_rcpt);
    let server = TestServer::start(builder).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    // A second transaction starts with a fresh per-transaction map.
    c.begin_data("eve@elsewhere.example", &["bob@example.net"])
        .await;
    c.send(b".\r\n").await;
    c.expect(250).await;

    assert_eq!(
        *rcpt_saw.lock().unwrap(),
        [Some(SpfVerdict("pass")), None],
        "the RCPT hook sees the MAIL hook's result of its own transaction"
    );
    let all = server.recorder.all();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0].extensions().get::<SpfVerdict>(),
        Some(&SpfVerdict("pass"))
    );
    assert_eq!(all[0].extension::<ConnectTag>(), Some(ConnectTag(7)));
    assert_eq!(all[1].extensions().get::<SpfVerdict>(), None);
    assert_eq!(all[1].extension::<ConnectTag>(), Some(ConnectTag(7)));
    server.shutdown().await;
}

/// Calls per stage, and the peer each stage saw.
#[derive(Clone, Default)]
struct StageLog(Arc<Mutex<HashMap<StageKind, Vec<SocketAddr>>>>);

impl StageLog {
    fn calls(&self, kind: StageKind) -> usize {
        self.0.lock().unwrap().get(&kind).map_or(0, Vec::len)
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap().values().flatten().copied().collect()
    }
}

/// A layer written once for every stage through the [`Stage`] trait.
#[derive(Clone)]
struct StageLogLayer(StageLog);

impl<S> Layer<S> for StageLogLayer {
    type Service = StageLogged<S>;
    fn layer(&self, inner: S) -> StageLogged<S> {
        StageLogged {
            inner,
            log: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct StageLogged<S> {
    inner: S,
    log: StageLog,
}

impl<R: Stage, S: Service<R>> Service<R> for StageLogged<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        let peer = req.session().peer_addr();
        self.log
            .0
            .lock()
            .unwrap()
            .entry(req.kind())
            .or_default()
            .push(peer);
        self.inner.call(req)
    }
}

#[tokio::test]
async fn one_generic_layer_serves_every_stage() {
    let log = StageLog::default();
    let layer = StageLogLayer(log.clone());
    let builder = Server::builder()
        .on_mail(layer.layer(service_fn(|_req: MailFrom| async { Ok::<_, BoxError>(()) })))
        .on_rcpt(layer.layer(known_users_only()));
    let message_service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|_ctx: Context| async { Ok::<_, BoxError>(()) });
    let server = TestServer::start_with(builder, message_service).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<bob@example.net>", 250).await;
    c.cmd_expect("RCPT TO:<nobody@example.net>", 550).await;
    c.cmd_expect("DATA", 354).await;
    c.send(b".\r\n").await;
    c.expect(250).await;

    assert_eq!(log.calls(StageKind::Mail), 1);
    assert_eq!(log.calls(StageKind::Rcpt), 2);
    assert_eq!(log.calls(StageKind::Data), 1);
    assert_eq!(log.calls(StageKind::Helo), 0);
    let peers = log.peers();
    assert_eq!(peers.len(), 4);
    assert!(peers.iter().all(|p| *p == c.local_addr()), "{peers:?}");
    server.shutdown().await;
}

/// With only an RCPT hook, the transaction's map is made at the first RCPT
/// (not at MAIL): it still starts with the connect stage's results, later
/// recipients see earlier ones' results, and the handler gets them all.
#[tokio::test]
async fn a_rcpt_hook_alone_shares_one_map_per_transaction() {
    #[derive(Debug, Clone, PartialEq)]
    struct Seen(u32);
    let on_connect = service_fn(|mut req: Connect| async move {
        req.insert_extension(ConnectTag(9));
        Ok::<_, BoxError>(())
    });
    type Sightings = Vec<(Option<ConnectTag>, Option<Seen>)>;
    let rcpt_saw: Arc<Mutex<Sightings>> = Arc::default();
    let rcpt_saw2 = rcpt_saw.clone();
    let on_rcpt = service_fn(move |mut req: RcptTo| {
        let before = req.extension::<Seen>();
        rcpt_saw2
            .lock()
            .unwrap()
            .push((req.extension::<ConnectTag>(), before.clone()));
        req.insert_extension(Seen(before.map_or(1, |s| s.0 + 1)));
        async { Ok::<_, BoxError>(()) }
    });
    let builder = Server::builder().on_connect(on_connect).on_rcpt(on_rcpt);
    let server = TestServer::start(builder).await;
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net", "cy@example.net"])
        .await;
    c.send(b".\r\n").await;
    c.expect(250).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(b".\r\n").await;
    c.expect(250).await;

    assert_eq!(
        *rcpt_saw.lock().unwrap(),
        [
            (Some(ConnectTag(9)), None),
            (Some(ConnectTag(9)), Some(Seen(1))),
            (Some(ConnectTag(9)), None),
        ]
    );
    let all = server.recorder.all();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].extensions().get::<Seen>(), Some(&Seen(2)));
    assert_eq!(all[0].extension::<ConnectTag>(), Some(ConnectTag(9)));
    assert_eq!(all[1].extensions().get::<Seen>(), Some(&Seen(1)));
    server.shutdown().await;
}

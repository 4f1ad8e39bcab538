//! Writing layers with `smtpsrv` alone (issue 15 points 1, 3, 4), over
//! real sockets: a refusing layer made of the public building blocks of
//! `smtpsrv::layer`, `Stage`'s message access on a spilled body, one layer
//! on every hook through `Builder::hook_layer`, and the `Accept` service.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use common::{Client, TestServer, within};
use smtpsrv::layer::{Accept, ResponseFuture, accept};
use smtpsrv::tower::{Layer, Service, ServiceBuilder, service_fn};
use smtpsrv::{Authenticate, BoxError, Context, Identity, RcptTo, Reply, Server, Stage, StageKind};

/// `AUTH PLAIN` for ann / secret: base64 of `\0ann\0secret`.
const AUTH_ANN: &str = "AUTH PLAIN AGFubgBzZWNyZXQ=";

fn authenticator() -> impl Service<
    Authenticate,
    Response = Option<Identity>,
    Error = BoxError,
    Future = impl Future<Output = Result<Option<Identity>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: Authenticate| async move {
        let ok = req.username() == "ann" && req.password() == "secret";
        Ok::<_, BoxError>(ok.then(|| Identity::new(req.username())))
    })
}

/// Sends a small message after `DATA` was accepted with 354.
async fn send_body(c: &mut Client, subject: &str) {
    c.send(format!("Subject: {subject}\r\n\r\nhi\r\n.\r\n").as_bytes())
        .await;
}

// ---------------------------------------------------------------------------
// Refusing layers written against smtpsrv alone: no Box, no Send bounds.

/// Refuses a sender domain with `550 5.7.1`, at whatever stage it is put
/// (the envelope carries the sender from `MAIL` on).
#[derive(Clone)]
struct BlockDomainLayer(Arc<str>);

impl<S> Layer<S> for BlockDomainLayer {
    type Service = BlockDomain<S>;
    fn layer(&self, inner: S) -> BlockDomain<S> {
        BlockDomain {
            inner,
            domain: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct BlockDomain<S> {
    inner: S,
    domain: Arc<str>,
}

impl<S, R> Service<R> for BlockDomain<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: Stage,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let domain = req
            .envelope()
            .and_then(|e| e.reverse_path())
            .and_then(|a| a.domain());
        if domain.is_some_and(|d| d.eq_ignore_ascii_case(&self.domain)) {
            return ResponseFuture::refused(Reply::new(550, (5, 7, 1), "Sender domain refused"));
        }
        ResponseFuture::called(self.inner.call(req))
    }
}

/// Refuses a message for more than `max` recipients with `550 5.5.3`.
#[derive(Clone, Copy)]
struct MaxRecipientsLayer(usize);

impl<S> Layer<S> for MaxRecipientsLayer {
    type Service = MaxRecipients<S>;
    fn layer(&self, inner: S) -> MaxRecipients<S> {
        MaxRecipients { inner, max: self.0 }
    }
}

#[derive(Clone)]
struct MaxRecipients<S> {
    inner: S,
    max: usize,
}

impl<S, R> Service<R> for MaxRecipients<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: Stage,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let count = req.envelope().map_or(0, |e| e.recipients().len());
        if req.kind() == StageKind::Data && count > self.max {
            return ResponseFuture::refused(Reply::new(550, (5, 5, 3), "Too many recipients"));
        }
        ResponseFuture::called(self.inner.call(req))
    }
}

/// A message handler that counts the messages reaching it.
fn counting_handler(
    reached: Arc<AtomicUsize>,
) -> impl Service<
    Context,
    Response = (),
    Error = BoxError,
    Future = impl Future<Output = Result<(), BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_: Context| {
        reached.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    })
}

#[tokio::test]
async fn a_refusing_layer_from_the_public_blocks_refuses_with_its_reply_and_passes_the_rest() {
    let reached = Arc::new(AtomicUsize::new(0));
    let on_mail = ServiceBuilder::new()
        .layer(BlockDomainLayer("spam.example".into()))
        .service(Accept);
    let handler = ServiceBuilder::new()
        .layer(MaxRecipientsLayer(2))
        .service(counting_handler(reached.clone()));
    let server = TestServer::start_with(Server::builder().on_mail(on_mail), handler).await;

    let mut c = Client::connect_ehlo(server.addr).await;
    let refused = c.cmd_expect("MAIL FROM:<eve@SPAM.Example>", 550).await;
    assert_eq!(refused, "5.7.1 Sender domain refused");
    assert_eq!(
        c.cmd_expect("MAIL FROM:<ann@example.org>", 250).await,
        "2.1.0 Sender OK"
    );
    for rcpt in ["a@example.net", "b@example.net", "c@example.net"] {
        c.cmd_expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
    }
    c.cmd_expect("DATA", 354).await;
    send_body(&mut c, "three").await;
    assert_eq!(c.expect(550).await, "5.5.3 Too many recipients");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "a refusal never calls the handler"
    );

    c.begin_data("ann@example.org", &["a@example.net", "b@example.net"])
        .await;
    send_body(&mut c, "two").await;
    c.expect(250).await;
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Stage's message access, generic over the stage, on a spilled body.

/// What [`StampLayer`] saw at each call: the stage, the body's shape, the
/// message length and whether `prepend_header` changed anything.
type Seen = Arc<Mutex<Vec<(StageKind, Option<bool>, Option<usize>, bool)>>>;

/// What the handler read: whether its body was spilled, and its bytes.
type Received = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

/// Puts `X-Seen-Size: <length>` on top of the message, through `Stage` only.
#[derive(Clone, Default)]
struct StampLayer(Seen);

impl<S> Layer<S> for StampLayer {
    type Service = Stamp<S>;
    fn layer(&self, inner: S) -> Stamp<S> {
        Stamp {
            inner,
            seen: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Stamp<S> {
    inner: S,
    seen: Seen,
}

impl<S, R> Service<R> for Stamp<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: Stage,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let spilled = req.body().map(|b| b.is_spilled());
        let len = req.message().map(|m| m.unwrap().len());
        let stamped = req.prepend_header(&format!("X-Seen-Size: {}\r\n", len.unwrap_or(0)));
        self.seen
            .lock()
            .unwrap()
            .push((req.kind(), spilled, len, stamped));
        ResponseFuture::called(self.inner.call(req))
    }
}

#[tokio::test]
async fn stage_gives_a_layer_the_message_and_prepend_header_on_a_spilled_body() {
    let spill = tempfile::tempdir().unwrap();
    let stamp = StampLayer::default();
    let received = Received::default();
    let store = received.clone();
    let handler = ServiceBuilder::new()
        .layer(stamp.clone())
        .service(service_fn(move |ctx: Context| {
            let store = store.clone();
            async move {
                // The layer read the message whole, so this is from memory.
                let bytes = ctx.body().bytes().await?;
                store
                    .lock()
                    .unwrap()
                    .push((ctx.body().is_spilled(), bytes.to_vec()));
                Ok::<_, BoxError>(())
            }
        }));
    let builder = Server::builder()
        .spill_threshold(1024)
        .spill_dir(spill.path())
        .on_mail(ServiceBuilder::new().layer(stamp.clone()).service(Accept));
    let server = TestServer::start_with(builder, handler).await;

    // Past one read of the server (256 KiB at most), so it cannot arrive
    // whole in memory: the server spills it.
    let line = format!("{}\r\n", "x".repeat(76));
    let body = format!("Subject: big\r\n\r\n{}", line.repeat(1 << 14));
    let mut c = Client::connect_ehlo(server.addr).await;
    c.begin_data("ann@example.org", &["bob@example.net"]).await;
    c.send(format!("{body}.\r\n").as_bytes()).await;
    c.expect(250).await;
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;

    let seen = stamp.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (StageKind::Mail, None, None, false),
            (StageKind::Data, Some(true), Some(body.len()), true),
        ],
        "no message before DATA; at DATA a spilled body, read whole and stamped"
    );
    let received = received.lock().unwrap().clone();
    let expected = format!("X-Seen-Size: {}\r\n{body}", body.len());
    assert_eq!(received.len(), 1);
    assert!(received[0].0, "the body stayed on disk");
    assert!(
        received[0].1 == expected.as_bytes(),
        "the handler reads the stamp, then the message"
    );
}

// ---------------------------------------------------------------------------
// One layer on every hook.

/// `(stage, layer name)` of every call, in call order.
type CallLog = Arc<Mutex<Vec<(StageKind, &'static str)>>>;

/// Counts calls per stage and logs `(stage, name)` in call order.
#[derive(Clone)]
struct CountLayer {
    name: &'static str,
    counts: Arc<[AtomicUsize; 6]>,
    log: CallLog,
}

impl CountLayer {
    fn new(name: &'static str, log: &CallLog) -> Self {
        CountLayer {
            name,
            counts: Arc::default(),
            log: log.clone(),
        }
    }

    fn count(&self, stage: StageKind) -> usize {
        self.counts[stage as usize].load(Ordering::SeqCst)
    }

    fn counts(&self) -> [(StageKind, usize); 6] {
        [
            StageKind::Connect,
            StageKind::Helo,
            StageKind::Auth,
            StageKind::Mail,
            StageKind::Rcpt,
            StageKind::Data,
        ]
        .map(|k| (k, self.count(k)))
    }
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;
    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Count<S> {
    inner: S,
    layer: CountLayer,
}

impl<S, R> Service<R> for Count<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: Stage,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.layer.counts[req.kind() as usize].fetch_add(1, Ordering::SeqCst);
        self.layer
            .log
            .lock()
            .unwrap()
            .push((req.kind(), self.layer.name));
        ResponseFuture::called(self.inner.call(req))
    }
}

/// Only ann has a mailbox.
fn known_users() -> impl Service<
    RcptTo,
    Response = Reply,
    Error = BoxError,
    Future = impl Future<Output = Result<Reply, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: RcptTo| async move {
        Ok::<_, BoxError>(match req.address().local_part() {
            "ann" => Reply::ok(),
            _ => Reply::new(550, (5, 1, 1), "No such user here"),
        })
    })
}

#[tokio::test]
async fn one_layer_on_every_hook_observes_every_stage() {
    let log = CallLog::default();
    let counts = CountLayer::new("count", &log);
    // hook_layer comes first: the hooks installed after it are wrapped too.
    let builder = Server::builder()
        .hook_layer(counts.clone())
        .on_rcpt(known_users())
        .authenticator(authenticator())
        .allow_insecure_auth(true)
        .auth_failure_delay(Duration::ZERO);
    let handler = ServiceBuilder::new().layer(counts.clone()).service(Accept);
    let server = TestServer::start_with(builder, handler).await;

    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect(AUTH_ANN, 235).await;
    c.cmd_expect("MAIL FROM:<x@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<ann@example.net>", 250).await;
    let unknown = c.cmd_expect("RCPT TO:<nobody@example.net>", 550).await;
    assert_eq!(
        unknown, "5.1.1 No such user here",
        "the wrapped hook still decides"
    );
    c.cmd_expect("DATA", 354).await;
    send_body(&mut c, "counted").await;
    c.expect(250).await;
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;

    assert_eq!(
        counts.counts(),
        [
            (StageKind::Connect, 1),
            (StageKind::Helo, 1),
            (StageKind::Auth, 1),
            (StageKind::Mail, 1),
            (StageKind::Rcpt, 2),
            (StageKind::Data, 1),
        ]
    );
}

#[tokio::test]
async fn hook_layers_stack_with_the_first_outermost_and_keep_the_default_replies() {
    let log = CallLog::default();
    let layered = Server::builder()
        .hook_layer(CountLayer::new("outer", &log))
        .hook_layer(CountLayer::new("inner", &log));
    let script = |addr| async move {
        let mut c = Client::connect_raw(addr).await;
        let mut replies = vec![c.read_reply().await];
        for line in ["EHLO client.example", "MAIL FROM:<a@example.org>"] {
            c.send_line(line).await;
            replies.push(c.read_reply().await);
        }
        c.send_line("RCPT TO:<b@example.net>").await;
        replies.push(c.read_reply().await);
        c.cmd_expect("QUIT", 221).await;
        replies
    };

    let plain = TestServer::start(Server::builder()).await;
    let without = within("plain transcript", script(plain.addr)).await;
    plain.shutdown().await;
    let server = TestServer::start(layered).await;
    let with = within("layered transcript", script(server.addr)).await;
    server.shutdown().await;

    assert_eq!(
        with, without,
        "Accept under the layers gives the default replies"
    );
    assert_eq!(with[2], (250, "2.1.0 Sender OK".to_owned()));
    let stages = [
        StageKind::Connect,
        StageKind::Helo,
        StageKind::Mail,
        StageKind::Rcpt,
    ];
    let expected: Vec<_> = stages
        .into_iter()
        .flat_map(|k| [(k, "outer"), (k, "inner")])
        .collect();
    assert_eq!(*log.lock().unwrap(), expected);
}

#[tokio::test]
async fn a_middleware_rate_limit_on_every_hook_counts_every_stage_in_one_bucket() {
    use smtpsrv_middleware::metrics::MetricsLayer;
    use smtpsrv_middleware::rate_limit::{Quota, RateLimitLayer};
    use smtpsrv_middleware::trace::TraceLayer;

    // Connect, EHLO, AUTH, MAIL, RCPT, MAIL: six calls; the seventh is over.
    let builder = Server::builder()
        .hook_layer(TraceLayer::new())
        .hook_layer(MetricsLayer::new())
        .hook_layer(RateLimitLayer::per_ip(Quota::per(
            6,
            Duration::from_secs(3600),
        )))
        .authenticator(authenticator())
        .allow_insecure_auth(true);
    let server = TestServer::start(builder).await;

    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect(AUTH_ANN, 235).await;
    c.cmd_expect("MAIL FROM:<a@example.org>", 250).await;
    c.cmd_expect("RCPT TO:<b@example.net>", 250).await;
    c.cmd_expect("RSET", 250).await;
    c.cmd_expect("MAIL FROM:<a@example.org>", 250).await;
    let limited = c.cmd_expect("RCPT TO:<b@example.net>", 450).await;
    assert!(
        limited.starts_with("4.7.0 Rate limit exceeded"),
        "{limited}"
    );
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;
}

/// The only test here that installs the process-wide metrics recorder; the
/// others' layers count into it too, but none of them fails an AUTH.
#[tokio::test]
async fn metrics_on_every_hook_count_the_authenticator_too() {
    use smtpsrv_middleware::metrics::{Metrics, MetricsLayer};

    let metrics = Metrics::install().expect("the only recorder of this test binary");
    let builder = Server::builder()
        .hook_layer(MetricsLayer::new())
        .authenticator(authenticator())
        .allow_insecure_auth(true)
        .auth_failure_delay(Duration::ZERO);
    let server = TestServer::start(builder).await;

    let mut c = Client::connect_ehlo(server.addr).await;
    c.cmd_expect("AUTH PLAIN AGFubgB3cm9uZw==", 535).await; // ann / wrong
    c.cmd_expect(AUTH_ANN, 235).await;
    c.cmd_expect("QUIT", 221).await;
    server.shutdown().await;

    let text = metrics.render();
    let refused_auths = text
        .lines()
        .find(|l| {
            l.starts_with("smtp_hook_replies_total{")
                && l.contains("stage=\"auth\"")
                && l.contains("result=\"refused\"")
        })
        .unwrap_or_else(|| panic!("no refused auth counted in:\n{text}"));
    assert!(refused_auths.ends_with(" 1"), "{refused_auths}");
}

// ---------------------------------------------------------------------------
// Accept.

#[tokio::test]
async fn accept_answers_every_hook_and_the_message_with_the_default_replies() {
    let builder = Server::builder()
        .on_connect(accept())
        .on_helo(Accept)
        .on_mail(Accept)
        .on_rcpt(Accept);
    let server = TestServer::start_with(builder, Accept).await;

    let mut c = Client::connect(server.addr).await;
    c.cmd_expect("EHLO client.example", 250).await;
    assert_eq!(c.cmd_expect("MAIL FROM:<>", 250).await, "2.1.0 Sender OK");
    assert_eq!(
        c.cmd_expect("RCPT TO:<b@example.net>", 250).await,
        "2.1.5 Recipient OK"
    );
    c.cmd_expect("DATA", 354).await;
    send_body(&mut c, "accepted").await;
    c.expect(250).await;
    c.cmd_expect("QUIT", 221).await;
    let recorder = server.recorder.clone();
    server.shutdown().await;
    let ctx = recorder.single();
    assert!(ctx.envelope().is_null_sender());
    assert_eq!(ctx.recipients()[0].address().as_str(), "b@example.net");
    assert_eq!(
        &ctx.message().unwrap()[..],
        b"Subject: accepted\r\n\r\nhi\r\n"
    );
}

//! Prometheus metrics (feature `metrics`): a [`MetricsLayer`] for the
//! message service and every hook, a [`MetricsObserver`] for what only the
//! connection sees, and a small `/metrics` + `/healthz` HTTP endpoint.
//!
//! Built on the [`metrics`] facade with the `metrics-exporter-prometheus`
//! recorder (without its HTTP and push features: the endpoint here is a
//! few lines over tokio, so no HTTP server stack is compiled in).
//!
//! | metric | labels | from |
//! |---|---|---|
//! | `smtp_connections_total`, `smtp_connections_open` | `listener`, `tls` | observer |
//! | `smtp_sessions_ended_total` | `reason` (`quit`, `timeout`, `error_limit`, `shutdown`, `server_closed`, `peer_gone`) | observer |
//! | `smtp_commands_total` | `verb` | observer |
//! | `smtp_replies_total` | `class` (`2xx`..`5xx`) | observer |
//! | `smtp_tls_handshakes_total` | `result` (`ok`, `failed`) | observer |
//! | `smtp_auth_total` | `result` (`success`, `failure`) | observer |
//! | `smtp_received_bytes_total` | | observer |
//! | `smtp_memory_budget_in_use_bytes`, `smtp_memory_budget_limit_bytes` | | [`Metrics::watch_memory`] |
//! | `smtp_messages_total` | `result` (`accepted`, `deferred`, `refused`), `status` (enhanced code) | layer on the message service |
//! | `smtp_hook_replies_total` | `stage`, `result` | layer on a hook |
//! | `smtp_stage_duration_seconds` (histogram) | `stage` | layer |
//!
//! ```no_run
//! use smtpsrv::{BoxError, Context, MailFrom, Reply, Server};
//! use smtpsrv_middleware::metrics::{Metrics, MetricsLayer};
//! use tower::ServiceBuilder;
//! # async fn run() -> Result<(), BoxError> {
//! let metrics = Metrics::install()?;
//! let on_mail = ServiceBuilder::new()
//!     .layer(MetricsLayer::new())
//!     .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
//! let server = Server::builder()
//!     .observer(metrics.observer())
//!     .on_mail(on_mail)
//!     .build()
//!     .bind("127.0.0.1:2525")
//!     .await?;
//! metrics.watch_memory(server.memory_gauge());
//! let endpoint = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! tokio::spawn(metrics.clone().serve(endpoint));
//! let handler = ServiceBuilder::new()
//!     .layer(MetricsLayer::new())
//!     .service_fn(|_: Context| async { Ok::<_, BoxError>(()) });
//! server.serve(handler).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use metrics::{Counter, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use smtpsrv::observe::{Event, MemoryGauge, Observer};
use smtpsrv::{
    Authenticate, BoxError, Connect, Context, Delivery, Helo, Identity, IntoDelivery, IntoReply,
    MailFrom, RcptTo, Reply, Stage, StageKind, error_reply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service};

/// Histogram buckets of `smtp_stage_duration_seconds`: a DNS lookup to a
/// slow webhook.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The installed Prometheus recorder: renders what the layers and the
/// observer counted.
pub struct Metrics {
    handle: PrometheusHandle,
    memory: Mutex<Option<MemoryGauge>>,
}

impl Metrics {
    /// Installs the process-wide recorder of the `metrics` facade; fails
    /// when one is installed already.
    pub fn install() -> Result<Arc<Metrics>, BoxError> {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)?
            .install_recorder()?;
        Ok(Arc::new(Metrics {
            handle,
            memory: Mutex::new(None),
        }))
    }

    /// The observer to give [`smtpsrv::Builder::observer`]. Its per-command
    /// series are registered here (and shown at 0 until counted).
    pub fn observer(&self) -> MetricsObserver {
        MetricsObserver::new()
    }

    /// Reports the server's memory budget with every rendering.
    pub fn watch_memory(&self, gauge: MemoryGauge) {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(gauge);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(memory) = &*self.memory.lock().unwrap_or_else(|e| e.into_inner()) {
            gauge!("smtp_memory_budget_in_use_bytes").set(memory.in_use() as f64);
            gauge!("smtp_memory_budget_limit_bytes").set(memory.limit() as f64);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Answers HTTP on `listener`: `GET /metrics` (Prometheus text format),
    /// `GET /healthz` (`ok`), 404 for anything else. Runs until the
    /// listener fails; spawn it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: wait, never spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = Arc::clone(&self);
            tokio::spawn(async move {
                let answered =
                    tokio::time::timeout(Duration::from_secs(10), metrics.answer(stream)).await;
                if let Ok(Err(e)) = answered {
                    tracing::debug!(error = %e, "metrics endpoint: request failed");
                }
            });
        }
    }

    /// One HTTP/1.x request, then close.
    async fn answer(&self, mut stream: TcpStream) -> io::Result<()> {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > 8 * 1024 {
                return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let mut parts = line.split(|&b| b == b' ');
        let (method, path) = (parts.next(), parts.next());
        let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or(p));
        match (method, path) {
            (Some(b"GET"), Some(b"/metrics")) => {
                respond(&mut stream, "200 OK", &self.render()).await
            }
            (Some(b"GET"), Some(b"/healthz")) => respond(&mut stream, "200 OK", "ok\n").await,
            (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "not found\n").await,
            _ => respond(&mut stream, "405 Method Not Allowed", "GET only\n").await,
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Every verb `Event::Command` reports (`Command::verb`, and `invalid`).
const VERBS: [&str; 16] = [
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
    "HELP", "STARTTLS", "AUTH", "invalid",
];

/// Counts connection-level events into the `metrics` facade (see the
/// module's table). From [`Metrics::observer`].
///
/// The series counted several times per message (commands, replies, bytes)
/// are registered once, here: `counter!` with labels builds its key on
/// every call, which cost 39 allocations per message (benches/per_message.rs).
pub struct MetricsObserver {
    commands: Vec<(&'static str, Counter)>,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    replies: [Counter; 4],
    received: Counter,
}

impl MetricsObserver {
    fn new() -> Self {
        let reply = |class: &'static str| counter!("smtp_replies_total", "class" => class);
        MetricsObserver {
            commands: VERBS
                .iter()
                .map(|&verb| (verb, counter!("smtp_commands_total", "verb" => verb)))
                .collect(),
            replies: [reply("2xx"), reply("3xx"), reply("4xx"), reply("5xx")],
            received: counter!("smtp_received_bytes_total"),
        }
    }
}

impl Observer for MetricsObserver {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Connected { listener, tls } => {
                let labels = [("listener", listener.to_string()), ("tls", tls.to_string())];
                counter!("smtp_connections_total", &labels).increment(1);
                gauge!("smtp_connections_open", &labels).increment(1.0);
            }
            Event::Closed {
                listener,
                tls,
                reason,
            } => {
                let labels = [("listener", listener.to_string()), ("tls", tls.to_string())];
                gauge!("smtp_connections_open", &labels).decrement(1.0);
                counter!("smtp_sessions_ended_total", "reason" => reason.as_str()).increment(1);
            }
            Event::Command { verb } => match self.commands.iter().find(|(v, _)| *v == verb) {
                Some((_, counter)) => counter.increment(1),
                // A verb added to the server after VERBS was written.
                None => counter!("smtp_commands_total", "verb" => verb.to_owned()).increment(1),
            },
            Event::Reply { code } => {
                let class = match code / 100 {
                    2 => 0,
                    3 => 1,
                    4 => 2,
                    _ => 3,
                };
                self.replies[class].increment(1);
            }
            Event::TlsHandshake { ok } => {
                let result = if ok { "ok" } else { "failed" };
                counter!("smtp_tls_handshakes_total", "result" => result).increment(1);
            }
            Event::Auth { ok } => {
                let result = if ok { "success" } else { "failure" };
                counter!("smtp_auth_total", "result" => result).increment(1);
            }
            Event::Received { bytes } => self.received.increment(bytes as u64),
            _ => {}
        }
    }
}

/// Counts the outcome of a stage's service and times it: on the message
/// service, `smtp_messages_total` by result and enhanced code; on a hook
/// (`on_connect`, `on_helo`, `on_mail`, `on_rcpt`, the authenticator),
/// `smtp_hook_replies_total`; both `smtp_stage_duration_seconds`. Fits
/// [`Builder::hook_layer`](smtpsrv::Builder::hook_layer): one layer for
/// every hook.
///
/// Errors of the inner service become the reply the server would send
/// ([`error_reply`]), so they are counted as what the client saw.
#[derive(Debug, Clone, Copy)]
pub struct MetricsLayer {
    enabled: bool,
}

impl Default for MetricsLayer {
    fn default() -> Self {
        MetricsLayer { enabled: true }
    }
}

impl MetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        MetricsLayer::default()
    }

    /// Counts only when `enabled`: a program whose metrics are an option
    /// keeps one service type either way (the answer is converted all the
    /// same, nothing is recorded).
    pub fn enabled(enabled: bool) -> Self {
        MetricsLayer { enabled }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    enabled: bool,
}

pin_project! {
    /// The future of [`MetricsService`]: the inner future, timed and counted.
    pub struct ResponseFuture<F, O> {
        #[pin]
        inner: F,
        stage: &'static str,
        // `None` when the layer is off.
        started: Option<Instant>,
        _outcome: PhantomData<fn() -> O>,
    }
}

/// What a stage's answer is counted as.
pub trait Outcome: Sized {
    /// The answer, from the inner service's result.
    fn from_result<T: IntoOutcome<Self>>(result: Result<T, BoxError>) -> Self;
    /// Counts it.
    fn record(&self, stage: &'static str);
}

/// A response a stage's service may give: [`IntoReply`] for hooks,
/// [`IntoDelivery`] for the message service.
pub trait IntoOutcome<O> {
    /// The outcome.
    fn into_outcome(self) -> O;
}

impl<T: IntoReply> IntoOutcome<Reply> for T {
    fn into_outcome(self) -> Reply {
        self.into_reply()
    }
}

impl<T: IntoDelivery> IntoOutcome<Delivery> for T {
    fn into_outcome(self) -> Delivery {
        self.into_delivery()
    }
}

fn result_label(code: u16) -> &'static str {
    match code {
        200..=399 => "accepted",
        400..=499 => "deferred",
        _ => "refused",
    }
}

impl Outcome for Reply {
    fn from_result<T: IntoOutcome<Self>>(result: Result<T, BoxError>) -> Self {
        result.map_or_else(error_reply, IntoOutcome::into_outcome)
    }

    fn record(&self, stage: &'static str) {
        counter!("smtp_hook_replies_total", "stage" => stage, "result" => result_label(self.code()))
            .increment(1);
    }
}

impl Outcome for Delivery {
    fn from_result<T: IntoOutcome<Self>>(result: Result<T, BoxError>) -> Self {
        result.map_or_else(|e| Delivery::All(error_reply(e)), IntoOutcome::into_outcome)
    }

    fn record(&self, _stage: &'static str) {
        let replies = match self {
            Delivery::All(r) => std::slice::from_ref(r),
            Delivery::PerRecipient(list) => list.as_slice(),
        };
        for reply in replies {
            let status = reply
                .status()
                .map_or_else(|| "none".to_owned(), |s| s.to_string());
            counter!(
                "smtp_messages_total",
                "result" => result_label(reply.code()),
                "status" => status
            )
            .increment(1);
        }
    }
}

impl<F, T, E, O> Future for ResponseFuture<F, O>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    T: IntoOutcome<O>,
    O: Outcome,
{
    type Output = Result<O, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let outcome = O::from_result(result.map_err(Into::into));
        if let Some(started) = this.started {
            histogram!("smtp_stage_duration_seconds", "stage" => *this.stage)
                .record(started.elapsed().as_secs_f64());
            outcome.record(this.stage);
        }
        Poll::Ready(Ok(outcome))
    }
}

macro_rules! measured {
    ($request:ty, $outcome:ty, $bound:ident) => {
        impl<S> Service<$request> for MetricsService<S>
        where
            S: Service<$request>,
            S::Response: $bound,
            S::Error: Into<BoxError>,
        {
            type Response = $outcome;
            type Error = BoxError;
            type Future = ResponseFuture<S::Future, $outcome>;

            fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
                self.inner.poll_ready(cx).map_err(Into::into)
            }

            fn call(&mut self, request: $request) -> Self::Future {
                ResponseFuture {
                    stage: request.kind().as_str(),
                    started: self.enabled.then(Instant::now),
                    inner: self.inner.call(request),
                    _outcome: PhantomData,
                }
            }
        }
    };
}

measured!(Connect, Reply, IntoReply);
measured!(Helo, Reply, IntoReply);
measured!(MailFrom, Reply, IntoReply);
measured!(RcptTo, Reply, IntoReply);
measured!(Context, Delivery, IntoDelivery);

/// On the authenticator the answer stays what it is (an identity or not,
/// an error stays an error: `535` and `454` differ), counted as the reply
/// the client sees.
impl<S> Service<Authenticate> for MetricsService<S>
where
    S: Service<Authenticate, Response = Option<Identity>>,
    S::Error: Into<BoxError>,
{
    type Response = Option<Identity>;
    type Error = BoxError;
    type Future = AuthResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Authenticate) -> Self::Future {
        AuthResponseFuture {
            started: self.enabled.then(Instant::now),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The future of [`MetricsService`] on the authenticator: the inner
    /// future, timed and counted, its answer unchanged.
    pub struct AuthResponseFuture<F> {
        #[pin]
        inner: F,
        // `None` when the layer is off.
        started: Option<Instant>,
    }
}

impl<F, E> Future for AuthResponseFuture<F>
where
    F: Future<Output = Result<Option<Identity>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Option<Identity>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(started) = this.started {
            let stage = StageKind::Auth.as_str();
            histogram!("smtp_stage_duration_seconds", "stage" => stage)
                .record(started.elapsed().as_secs_f64());
            let code = match &result {
                Ok(Some(_)) => 235,
                Ok(None) => 535,
                Err(e) => e.downcast_ref::<Reply>().map_or(454, Reply::code),
            };
            counter!("smtp_hook_replies_total", "stage" => stage, "result" => result_label(code))
                .increment(1);
        }
        Poll::Ready(result)
    }
}

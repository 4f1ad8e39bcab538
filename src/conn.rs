//! Drives one connection: socket IO, timeouts, the STARTTLS upgrade,
//! pipelining, hooks and message delivery around the pure [`Session`].
//!
//! Replies are buffered and flushed only when no complete input is left to
//! process (RFC 2920 pipelining), so a pipelined `MAIL`/`RCPT`/`DATA` batch
//! costs one write. The command deadline is fixed per command (a byte every
//! few seconds does not keep a slow client alive); in DATA it is re-armed on
//! every read, since a large message may legitimately take long. Those two
//! bound only the client; every call into the user's services (hooks, the
//! message handler) has the handler deadline instead, so neither limit
//! doubles as the other.
//!
//! DESIGN.md sketches a `Framed<IO, SmtpCodec>`; the driver instead calls the
//! same [`SmtpCodec`] on a buffer it owns, because `Framed` hides three things
//! an SMTP server needs: whether a complete frame is still buffered (replies
//! are flushed only when none is), the read buffer itself (STARTTLS must
//! throw it away, the PROXY header reader pre-fills it), and its sizing (an
//! idle connection gives its buffer back). Users who want `Framed` can use
//! the codec with it as it is.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Decoder;
use tower::Service;
use tracing::Instrument;

use crate::body::{Body, BodyError, Spill};
use crate::budget::{MemoryBudget, Reservation};
use crate::codec::{Frame, SmtpCodec};
use crate::config::Config;
use crate::context::Context;
use crate::hooks::{Hooks, ask, authenticate, call_guarded};
use crate::info::SessionInfo;
use crate::observe::{self, CloseReason, Event};
use crate::proto::{BdatOutcome, DataOutcome, Reply};
use crate::reply_conv::{BoxError, Delivery, IntoDelivery, error_reply};
use crate::session::{Action, Check, InputMode, Received, Session};
use crate::shutdown::ShutdownWatch;
use crate::stage::Connect;
use crate::streaming::StreamingCall;
use crate::tls::{TlsConfig, TlsInfo};

/// A plain or TLS stream over the same socket.
pub(crate) enum Transport<IO> {
    Plain(IO),
    Tls(Box<TlsStream<IO>>),
    /// Only during the STARTTLS handshake.
    Upgrading,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Transport::Tls(io) => Pin::new(io).poll_read(cx, buf),
            Transport::Upgrading => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Transport::Tls(io) => Pin::new(io).poll_write(cx, buf),
            Transport::Upgrading => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_flush(cx),
            Transport::Tls(io) => Pin::new(io).poll_flush(cx),
            Transport::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Transport::Tls(io) => Pin::new(io).poll_shutdown(cx),
            Transport::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// The body error a streaming handler sees for a failed transfer; `None`
/// for a complete one.
fn failure(received: &Received) -> Option<BodyError> {
    match received {
        Received::Complete(_) => None,
        Received::TooLarge => Some(BodyError::TooLarge),
        Received::BareLineEnding => Some(BodyError::BareLineEnding),
        Received::OverBudget => Some(BodyError::Storage),
    }
}

/// Why reading stopped.
enum ReadStop {
    Eof,
    Timeout,
    Shutdown,
    Failed,
}

/// Whether the connection goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// Below this a buffer is kept between commands; above it, released when
/// empty, so idle connections stay small.
const IDLE_BUFFER: usize = 4 * 1024;
/// How much to read at once while receiving a message: starts small and
/// doubles while reads fill the buffer (large messages).
const DATA_READ_MIN: usize = 16 * 1024;
const DATA_READ_MAX: usize = 256 * 1024;
/// How much to read at once between commands.
const COMMAND_READ: usize = 1024;
/// A message-sized buffer up to this size is kept for `WARM_FOR` after the
/// last command, not released as soon as the client goes quiet: a client
/// that sends message after message (the usual sender) then reuses it,
/// warm in the cache, instead of costing two allocations, two frees and
/// shared-buffer bookkeeping per message. A larger one goes at once.
const WARM_BUFFER_MAX: usize = 64 * 1024;
const WARM_FOR: Duration = Duration::from_millis(100);
/// The least room a read gets, however much input is still unparsed (a
/// long command line arriving in pieces).
const MIN_READ_ROOM: usize = 512;
/// Chunks in flight to a streaming handler: with reads of at most
/// `DATA_READ_MAX`, what a streaming connection holds beyond its buffer.
const STREAM_CHUNKS: usize = 2;

pub(crate) struct Connection<IO, S> {
    transport: Transport<IO>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    codec: SmtpCodec,
    session: Session,
    service: S,
    hooks: Hooks,
    tls: Option<TlsConfig>,
    config: Arc<Config>,
    budget: Option<Arc<MemoryBudget>>,
    reservation: Option<Reservation>,
    over_budget: bool,
    /// The temporary file of a buffered message past the spill threshold.
    spill: Option<Spill>,
    /// The handler call of a message in streaming mode.
    stream: Option<StreamingCall>,
    shutdown: ShutdownWatch,
    deadline: Instant,
    /// The read deadline's timer, kept armed across waits (see
    /// `wait_for_input`); boxed because a `Sleep` must not move.
    timer: Pin<Box<tokio::time::Sleep>>,
    data_read: usize,
    /// The read buffer was sized for a message body (or is what is left of
    /// such a buffer after the body was split off it): give it back when
    /// the client goes quiet between commands, whatever it looks like.
    body_sized_buffer: bool,
    closing: CloseReason,
}

impl<IO, S> Connection<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Context> + Send,
    S::Response: IntoDelivery,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        transport: Transport<IO>,
        read_buf: BytesMut,
        info: SessionInfo,
        service: S,
        hooks: Hooks,
        tls: Option<TlsConfig>,
        config: Arc<Config>,
        budget: Option<Arc<MemoryBudget>>,
        shutdown: ShutdownWatch,
    ) -> Box<Self> {
        let mut info = info;
        if let Transport::Tls(stream) = &transport {
            info.tls = Some(Arc::new(TlsInfo::from_connection(stream.get_ref().1)));
        }
        let deadline = Instant::now() + config.command_timeout;
        // Boxed: the connection's task then holds a pointer, not the state,
        // and futures that move it around stay small (memory per connection).
        Box::new(Connection {
            transport,
            read_buf,
            write_buf: BytesMut::new(),
            codec: SmtpCodec::new(config.max_line_len, config.line_endings),
            session: Session::new(config.clone(), budget.clone(), info),
            service,
            hooks,
            tls,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            config,
            budget,
            reservation: None,
            over_budget: false,
            spill: None,
            stream: None,
            shutdown,
            data_read: DATA_READ_MIN,
            body_sized_buffer: false,
            closing: CloseReason::PeerGone,
        })
    }

    /// Runs the session to its end.
    pub(crate) async fn run(mut self: Box<Self>) {
        let span = tracing::info_span!(
            "smtp.session",
            id = %self.session.info().id(),
            peer = %crate::info::DisplayAddr(self.session.info().peer_addr()),
        );
        async move {
            tracing::debug!("connected");
            let (listener, tls) = (
                self.session.info().local_addr(),
                self.session.info().tls.is_some(),
            );
            self.observe(Event::Connected { listener, tls });
            if tls {
                self.observe(Event::TlsHandshake { ok: true });
            }
            self.serve().await;
            self.observe(Event::Closed {
                listener,
                tls,
                reason: self.closing,
            });
            let _ = tokio::time::timeout(Duration::from_secs(5), self.transport.shutdown()).await;
            tracing::debug!("closed");
        }
        .instrument(span)
        .await
    }

    async fn serve(&mut self) {
        let refusal = match &mut self.hooks.connect {
            Some(hook) => {
                let mut req = Connect::new(self.session.info().clone());
                req.extensions = self.session.session_extensions().clone();
                let answer = Box::pin(ask(hook, req, self.config.handler_timeout)).await;
                (answer.code() >= 400).then_some(answer)
            }
            None => None,
        };
        let greeting = self.session.greeting(refusal);
        if self.perform(greeting).await == Flow::Close {
            return;
        }
        loop {
            let frame = match self.codec.decode(&mut self.read_buf) {
                Ok(frame) => frame,
                Err(_) => return,
            };
            if let Some(frame) = frame {
                let action = self.on_frame(frame);
                if self.perform(action).await == Flow::Close {
                    return;
                }
                self.codec.set_mode(self.session.input_mode());
                if (self.stream.is_some() || self.spill.is_some()) && !self.session.in_transaction()
                {
                    // RSET, EHLO or STARTTLS between BDAT chunks.
                    self.drop_body(BodyError::Aborted);
                }
                if matches!(self.session.input_mode(), InputMode::Command { .. }) {
                    self.deadline = Instant::now() + self.config.command_timeout;
                }
                continue;
            }
            if self.stream.is_some()
                || self.spill.is_some()
                || self.codec.body_len() > self.config.spill_threshold
            {
                Box::pin(self.move_body()).await;
            }
            self.account_body();
            // Nothing complete is buffered: the client waits for our replies.
            if !self.write_buf.is_empty() && self.flush().await.is_err() {
                return;
            }
            match self.read_more().await {
                Ok(()) => {}
                Err(ReadStop::Eof | ReadStop::Failed) => return,
                Err(ReadStop::Timeout) => {
                    let r = Reply::new(
                        421,
                        (4, 4, 2),
                        format!("{} Timeout, closing connection", self.config.hostname),
                    );
                    tracing::info!("timeout");
                    self.closing = CloseReason::Timeout;
                    self.close_with(r).await;
                    return;
                }
                Err(ReadStop::Shutdown) => {
                    self.closing = CloseReason::Shutdown;
                    let r = Reply::new(
                        421,
                        (4, 3, 0),
                        format!("{} Service shutting down", self.config.hostname),
                    );
                    self.close_with(r).await;
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Action {
        match frame {
            Frame::Command(cmd) => {
                let verb = cmd.as_ref().map_or("invalid", |c| c.verb());
                self.observe(Event::Command { verb });
                self.session.command(cmd)
            }
            Frame::LineTooLong => self.session.line_too_long(),
            Frame::AuthResponse(line) => self.session.auth_response(&line),
            Frame::DataEnd(outcome) => {
                let received = match outcome {
                    DataOutcome::TooLarge => Received::TooLarge,
                    _ if self.over_budget => Received::OverBudget,
                    DataOutcome::BareLineEnding => Received::BareLineEnding,
                    // The body is taken by `deliver`.
                    DataOutcome::Complete => Received::Complete(bytes::Bytes::new()),
                };
                self.end_of_body(&received);
                self.session.received(received)
            }
            Frame::BdatEnd(outcome) => {
                let received = match outcome {
                    BdatOutcome::TooLarge => Received::TooLarge,
                    _ if self.over_budget => Received::OverBudget,
                    // The session decides whether this was the last chunk;
                    // the body stays in the codec until then.
                    BdatOutcome::Complete | BdatOutcome::Discarded => {
                        Received::Complete(bytes::Bytes::new())
                    }
                };
                let error = failure(&received);
                let action = self.session.received(received);
                if matches!(&action, Action::Reply(r) | Action::Close(r) if r.code() >= 400) {
                    self.codec.discard_body();
                    self.reservation = None;
                    self.over_budget = false;
                    self.drop_body(error.unwrap_or(BodyError::Aborted));
                }
                action
            }
        }
    }

    /// Frees the budget of a body that is not going to the service.
    fn end_of_body(&mut self, received: &Received) {
        if let Some(error) = failure(received) {
            self.codec.discard_body();
            self.reservation = None;
            self.drop_body(error);
        }
        self.over_budget = false;
    }

    /// Gives up on the message body in progress: removes its spill file,
    /// and fails a streaming handler's body with `error`.
    fn drop_body(&mut self, error: BodyError) {
        self.spill = None;
        if let Some(stream) = self.stream.take() {
            stream.fail(error);
        }
    }

    /// Moves the body received so far out of memory: to the streaming
    /// handler (waiting for it to take it: back-pressure) or to the spill
    /// file of a message past the threshold.
    async fn move_body(&mut self) {
        if let Some(stream) = &mut self.stream {
            if let Some(error) = self.codec.body_failure() {
                self.codec.clear_body();
                self.drop_body(error);
                return;
            }
            let chunk = self.codec.take_chunk();
            stream.feed(chunk, self.config.handler_timeout).await;
            return;
        }
        if self.config.streaming || self.over_budget || self.codec.body_failure().is_some() {
            // Streaming without a handler (its body failed): drain.
            self.codec.clear_body();
            return;
        }
        if self.spill.is_none() {
            match Spill::create(&self.config.spill_dir()) {
                Ok(spill) => self.spill = Some(spill),
                Err(e) => return self.spill_failed(e),
            }
        }
        let Some(spill) = &mut self.spill else {
            return;
        };
        // The body as received (split off the read buffer), without a copy.
        match spill.write(self.codec.take_chunk()).await {
            // What is on disk is off the memory budget.
            Ok(()) => self.reservation = None,
            Err(e) => self.spill_failed(e),
        }
    }

    /// The disk could not take the message: drained, then `452`.
    fn spill_failed(&mut self, e: std::io::Error) {
        tracing::warn!(error = %e, "cannot spill message to disk; draining it");
        self.spill = None;
        self.over_budget = true;
        self.codec.discard_body();
    }

    /// The complete body of a buffered message: the codec's bytes, or the
    /// spill file with the rest written.
    async fn take_body(&mut self) -> std::io::Result<Body> {
        let Some(mut spill) = self.spill.take() else {
            return Ok(Body::from(self.codec.take_body()));
        };
        spill.write(self.codec.take_chunk()).await?;
        spill.finish().await
    }

    /// In streaming mode, calls the service as the body starts.
    async fn start_stream(&mut self) {
        let streams = match self.session.input_mode() {
            InputMode::Data { .. } => true,
            InputMode::Bdat { first, discard, .. } => first && !discard,
            _ => false,
        };
        if !streams || self.stream.is_some() {
            return;
        }
        let Some(mut ctx) = self.session.streaming_context() else {
            return;
        };
        let (sender, body) = crate::body::channel(STREAM_CHUNKS);
        ctx.set_body(body.with_spill_policy(self.config.spill_policy()));
        // Debug level: a span per message costs more than the rest of the
        // session's work when a subscriber formats it (allocations, fmt);
        // `smtpsrv_middleware::trace` gives info-level spans to those who want them.
        let span = tracing::debug_span!(
            "smtp.message",
            id = %ctx.id(),
            from = %ctx.reverse_path().map_or("<>", |a| a.as_str()),
            rcpts = ctx.recipients().len(),
            streaming = true,
        );
        let call = StreamingCall::start(
            &mut self.service,
            ctx,
            sender,
            self.config.handler_timeout,
            span,
        )
        .await;
        self.stream = Some(call);
    }

    /// Keeps the memory budget covering the body buffered so far; past the
    /// budget the body is dropped and the transfer drained (452 at its end).
    fn account_body(&mut self) {
        if !matches!(
            self.session.input_mode(),
            InputMode::Data { .. } | InputMode::Bdat { discard: false, .. }
        ) {
            return;
        }
        let Some(budget) = &self.budget else {
            return;
        };
        let len = self.codec.body_len();
        if self.over_budget {
            self.codec.discard_body();
            return;
        }
        let reservation = self
            .reservation
            .get_or_insert_with(|| Reservation::empty(budget.clone()));
        if !reservation.cover(len) {
            tracing::warn!(len, "memory budget exhausted; draining message");
            self.over_budget = true;
            self.codec.discard_body();
        }
    }

    async fn perform(&mut self, mut action: Action) -> Flow {
        loop {
            action = match action {
                Action::Reply(r) => {
                    r.encode(&mut self.write_buf);
                    return Flow::Continue;
                }
                Action::Close(r) => {
                    self.closing = CloseReason::of(&r);
                    self.close_with(r).await;
                    return Flow::Close;
                }
                Action::Receive(r) => {
                    if let Some(r) = r {
                        r.encode(&mut self.write_buf);
                    }
                    if self.config.streaming {
                        Box::pin(self.start_stream()).await;
                    }
                    return Flow::Continue;
                }
                Action::StartTls(r) => {
                    r.encode(&mut self.write_buf);
                    // Boxed, like the other rare steps below, so that an idle
                    // connection's future stays small (memory per connection).
                    return Box::pin(self.start_tls()).await;
                }
                Action::Check(check) => Box::pin(self.check(check)).await,
                Action::AwaitAnswer { recipients } => {
                    let closing = Box::pin(self.answer_stream(recipients)).await;
                    return self.after_answer(closing).await;
                }
                Action::Deliver(ctx) => {
                    let closing = Box::pin(self.deliver(*ctx)).await;
                    return self.after_answer(closing).await;
                }
            };
        }
    }

    /// After a handler's answer was queued: a 421 from the handler means
    /// "closing" (RFC 5321 3.8).
    async fn after_answer(&mut self, closing: bool) -> Flow {
        if closing {
            let _ = self.flush().await;
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn check(&mut self, check: Check) -> Action {
        let limit = self.config.handler_timeout;
        let hooks = &mut self.hooks;
        let answer = match check {
            Check::Helo(req) => match &mut hooks.helo {
                Some(h) => ask(h, req, limit).await,
                None => Reply::ok(),
            },
            Check::Mail(req) => match &mut hooks.mail {
                Some(h) => ask(h, req, limit).await,
                None => Reply::ok(),
            },
            Check::Rcpt(req) => match &mut hooks.rcpt {
                Some(h) => ask(h, req, limit).await,
                None => Reply::ok(),
            },
            Check::Auth(req) => {
                let result = authenticate(hooks.auth.as_mut(), req, limit).await;
                observe::report(&self.config.observer, Event::Auth { ok: result.is_ok() });
                if result.is_err() && !self.config.auth_failure_delay.is_zero() {
                    // Slow down password guessing; grows with each failure.
                    let n = self.session.auth_failures().min(4) + 1;
                    tokio::time::sleep(self.config.auth_failure_delay * n).await;
                }
                return self.session.authenticated(result);
            }
        };
        self.session.checked(answer)
    }

    /// Hands the message over and queues the replies; true when a reply
    /// was 421 and the connection must close.
    async fn deliver(&mut self, mut ctx: Context) -> bool {
        let recipients = ctx.recipients().len();
        // The clock only for the debug line that would show it.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let result = match self.take_body().await {
            Ok(body) => {
                ctx.set_body(body);
                self.call_service(ctx).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot spill message to disk");
                Ok(Delivery::All(Reply::insufficient_storage()))
            }
        };
        self.answered(result, recipients, started)
    }

    /// The end of a streamed message: its last chunk to the handler, then
    /// the handler's answer.
    async fn answer_stream(&mut self, recipients: usize) -> bool {
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let result = match self.stream.take() {
            Some(stream) => {
                let last = self.codec.take_body();
                stream.finish(last, self.config.handler_timeout).await
            }
            // Not reached: the session asks for an answer only after a
            // streaming call began. Nothing is acknowledged without one.
            None => Err("the streaming call is gone".into()),
        };
        self.answered(result, recipients, started)
    }

    /// Queues the replies for a handler's answer; true if one is a 421.
    fn answered(
        &mut self,
        result: Result<Delivery, BoxError>,
        recipients: usize,
        started: Option<Instant>,
    ) -> bool {
        let delivery = match result {
            Ok(delivery) => delivery,
            Err(e) => Delivery::All(error_reply(e)),
        };
        self.reservation = None;
        let (mut first_code, mut closing) = (None, false);
        let write_buf = &mut self.write_buf;
        self.session.answer_delivery(delivery, recipients, |r| {
            first_code.get_or_insert(r.code());
            closing |= r.code() == 421;
            r.encode(write_buf);
        });
        if let Some(started) = started {
            tracing::debug!(
                code = first_code.unwrap_or(0),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "message answered"
            );
        }
        closing
    }

    /// Calls the service with a complete (buffered) message.
    async fn call_service(&mut self, ctx: Context) -> Result<Delivery, BoxError> {
        // Debug level: a span per message costs more than the rest of the
        // session's work when a subscriber formats it (allocations, fmt);
        // `smtpsrv_middleware::trace` gives info-level spans to those who want them.
        let span = tracing::debug_span!(
            "smtp.message",
            id = %ctx.id(),
            from = %ctx.reverse_path().map_or("<>", |a| a.as_str()),
            rcpts = ctx.recipients().len(),
            size = ctx.size(),
            spilled = ctx.body().is_spilled(),
        );
        call_guarded(&mut self.service, ctx, self.config.handler_timeout)
            .instrument(span)
            .await
            .map(IntoDelivery::into_delivery)
    }

    async fn start_tls(&mut self) -> Flow {
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        // Anything the client sent after STARTTLS was sent in plaintext
        // before the handshake: never act on it (CVE-2011-0411).
        self.read_buf = BytesMut::new();
        let Some(tls) = &self.tls else {
            return Flow::Close;
        };
        let io = match std::mem::replace(&mut self.transport, Transport::Upgrading) {
            Transport::Plain(io) => io,
            other => {
                self.transport = other;
                return Flow::Close;
            }
        };
        let handshake = tls.acceptor().accept(io);
        match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => {
                let info = TlsInfo::from_connection(stream.get_ref().1);
                tracing::debug!(version = %info.version, cipher = %info.cipher, "TLS established");
                self.transport = Transport::Tls(Box::new(stream));
                self.observe(Event::TlsHandshake { ok: true });
                self.session.tls_established(info);
                self.codec.set_mode(self.session.input_mode());
                Flow::Continue
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                self.observe(Event::TlsHandshake { ok: false });
                self.closing = CloseReason::ServerClosed;
                Flow::Close
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                self.observe(Event::TlsHandshake { ok: false });
                self.closing = CloseReason::ServerClosed;
                Flow::Close
            }
        }
    }

    async fn close_with(&mut self, reply: Reply) {
        reply.encode(&mut self.write_buf);
        let _ = self.flush().await;
    }

    fn observe(&self, event: Event<'_>) {
        observe::report(&self.config.observer, event);
    }

    async fn flush(&mut self) -> Result<(), ()> {
        observe::report_replies(&self.config.observer, &self.write_buf);
        // Fast path: the socket takes the replies at once (the usual case),
        // so no timer (and no clock read) is needed.
        let written = std::future::poll_fn(|cx| {
            Poll::Ready(
                match Pin::new(&mut self.transport).poll_write(cx, &self.write_buf) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => None,
                },
            )
        })
        .await;
        let result = match written {
            Some(Err(_)) => Err(()),
            // A TLS stream may still hold records: it needs its flush.
            Some(Ok(n))
                if n == self.write_buf.len() && matches!(self.transport, Transport::Plain(_)) =>
            {
                Ok(())
            }
            written => {
                let rest = &self.write_buf[written.map_or(0, |w| w.unwrap_or(0))..];
                let transport = &mut self.transport;
                let write = async {
                    transport.write_all(rest).await?;
                    transport.flush().await
                };
                let limit = self
                    .config
                    .write_timeout
                    .unwrap_or(self.config.command_timeout);
                match tokio::time::timeout(limit, write).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(()),
                }
            }
        };
        self.write_buf.clear();
        if self.write_buf.capacity() > IDLE_BUFFER {
            self.write_buf = BytesMut::new();
        }
        result
    }

    async fn read_more(&mut self) -> Result<(), ReadStop> {
        let receiving = !matches!(
            self.session.input_mode(),
            InputMode::Command { .. } | InputMode::AuthResponse { .. }
        );
        let want = if receiving {
            self.data_read
        } else {
            COMMAND_READ
        };
        // Room for `want` octets counting what is still unparsed (a partial
        // line, a few octets while a body arrives). Asking `BytesMut` to grow
        // on top of that would at least double the allocation (512 KiB per
        // connection at the largest read size instead of 256 KiB).
        let room = want.saturating_sub(self.read_buf.len()).max(MIN_READ_ROOM);
        if receiving && self.codec.body_len() == 0 {
            // Streaming, spilling or draining: the body was handed on, so the
            // buffer holds only the unparsed rest. Reuse its memory when no
            // chunk still holds it, else start a buffer of exactly the read
            // size (the old one is freed with the last chunk).
            if !self.read_buf.try_reclaim(room) {
                let mut fresh =
                    BytesMut::with_capacity(want.max(self.read_buf.len() + MIN_READ_ROOM));
                fresh.extend_from_slice(&self.read_buf);
                self.read_buf = fresh;
            }
        } else {
            self.codec.reserve_input(&mut self.read_buf, room);
        }
        self.body_sized_buffer |= receiving;
        // Fast path: input is already there, read it into the buffer we have.
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(
                match tokio_util::io::poll_read_buf(
                    Pin::new(&mut self.transport),
                    cx,
                    &mut self.read_buf,
                ) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => None,
                },
            )
        })
        .await;
        let result = match ready {
            Some(r) => r,
            None => {
                // The client is quiet between commands: give a large buffer
                // back before waiting (memory per idle connection stays
                // small). Not in the middle of a message: the socket is only
                // momentarily empty there, and the next read wants the same
                // room again (a body split off this buffer may still hold
                // its front; the rest is reused once that is dropped).
                let releasable = !receiving
                    && self.read_buf.is_empty()
                    && (self.body_sized_buffer || self.read_buf.capacity() > IDLE_BUFFER);
                let warm = releasable && self.read_buf.capacity() <= WARM_BUFFER_MAX;
                if releasable && !warm {
                    self.release_read_buffer();
                }
                // The last command's time, without reading the clock.
                let release_at = warm
                    .then(|| self.deadline.checked_sub(self.config.command_timeout))
                    .flatten()
                    .map(|last_command| last_command + WARM_FOR);
                match self.wait_for_input(receiving, release_at).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        // Quiet for `WARM_FOR`: an idle connection stays small.
                        self.release_read_buffer();
                        match self.wait_for_input(receiving, None).await {
                            // (No release time: the wait ends with input or a stop.)
                            Ok(r) => r.unwrap_or(Ok(0)),
                            Err(stop) => return Err(stop),
                        }
                    }
                    Err(stop) => return Err(stop),
                }
            }
        };
        match result {
            Ok(0) => Err(ReadStop::Eof),
            Ok(n) => {
                self.observe(Event::Received { bytes: n });
                // A read that filled what we asked for: ask for more next time.
                self.data_read = if !receiving {
                    DATA_READ_MIN
                } else if n >= room {
                    (want * 2).min(DATA_READ_MAX)
                } else {
                    want
                };
                Ok(())
            }
            Err(_) => Err(ReadStop::Failed),
        }
    }

    /// Replaces the read buffer with a small one (the connection is idle).
    fn release_read_buffer(&mut self) {
        self.read_buf = BytesMut::with_capacity(COMMAND_READ);
        self.body_sized_buffer = false;
    }

    /// Waits for input until the deadline, or for shutdown when idle; `None`
    /// when `release_at` (before the deadline) came first.
    ///
    /// The caller has just polled the read and found no input, which
    /// registered this task to be woken by the next: the first poll here
    /// does not read again (a wait is several times per message, and a
    /// read poll is most of what a wait costs).
    async fn wait_for_input(
        &mut self,
        receiving: bool,
        release_at: Option<Instant>,
    ) -> Result<Option<std::io::Result<usize>>, ReadStop> {
        let deadline = if receiving {
            Instant::now() + self.config.data_timeout
        } else {
            self.deadline
        };
        let idle = !self.session.in_transaction() && self.read_buf.is_empty();
        let grace = self.config.shutdown_grace;
        let Self {
            transport,
            read_buf,
            timer,
            shutdown,
            ..
        } = self;
        let mut grace_end: Option<Instant> = None;
        let mut read_polled = true;
        std::future::poll_fn(|cx| {
            if !std::mem::take(&mut read_polled)
                && let Poll::Ready(r) =
                    tokio_util::io::poll_read_buf(Pin::new(&mut *transport), cx, &mut *read_buf)
            {
                return Poll::Ready(Ok(Some(r)));
            }
            loop {
                let until = grace_end.map_or(deadline, |g| g.min(deadline));
                let wake_at = release_at.map_or(until, |r| r.min(until));
                // The connection's one timer stays in the timer wheel between
                // waits: re-armed only when the deadline moved earlier, or
                // when it went off at an earlier deadline than the one now in
                // force (deadlines mostly move later: a new command, more
                // data), so a wait costs no timer insertion and removal.
                if timer.deadline() > wake_at || (timer.deadline() < wake_at && timer.is_elapsed())
                {
                    timer.as_mut().reset(wake_at);
                }
                // Once shutdown is signalled, a transaction in progress may
                // finish, but a silent client waits at most the grace. One
                // atomic load while it is not (see `shutdown`).
                if grace_end.is_none() && shutdown.poll_signalled(cx).is_ready() {
                    if idle {
                        return Poll::Ready(Err(ReadStop::Shutdown));
                    }
                    grace_end = Some(Instant::now() + grace);
                    continue;
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if release_at.is_some_and(|r| r < until && timer.deadline() >= r) {
                    return Poll::Ready(Ok(None));
                }
                if timer.deadline() < until {
                    // Armed for an earlier deadline: re-armed above.
                    continue;
                }
                return Poll::Ready(match grace_end {
                    Some(g) if g < deadline => Err(ReadStop::Shutdown),
                    _ => Err(ReadStop::Timeout),
                });
            }
        })
        .await
    }
}

//! Tracing events for every call and every reply, with stable field names
//! for log queries and metrics:
//!
//! | event | fields |
//! |---|---|
//! | `smtp.call` | `stage`, `id`, `peer`, `from`, `recipients`, `size` |
//! | `smtp.reply` | `stage`, `id`, `peer`, `code`, `duration_ms` (and `error` for failures) |
//!
//! `stage` is `connect`, `helo`, `auth`, `mail`, `rcpt` or `data`; `id` the
//! message id at `data`, the session id before; `peer` the client's IP
//! address; `from` the reverse-path (`<>` for the null sender) from `mail`
//! on; `recipients` the number of recipients; `size` the message size at
//! `data` (absent for a streaming body, whose size is known only at its
//! end). Fields a stage does not have are left out. Levels are set per
//! kind of event: calls at `DEBUG`, positive replies and refusals at
//! `INFO`, failures (errors that are not replies) at `WARN` by default.
//!
//! The reply code is read with [`ReplyCode`], implemented for what our
//! hooks and handlers return; implement it for your own response types.
//!
//! ```
//! use smtpsrv::{BoxError, Context};
//! use smtpsrv_middleware::trace::TraceLayer;
//! use tower::ServiceBuilder;
//! use tracing::Level;
//!
//! let handler = ServiceBuilder::new()
//!     .layer(TraceLayer::new().call_level(Level::TRACE).refusal_level(Level::WARN))
//!     .service_fn(|_: Context| async { Ok::<_, BoxError>(()) });
//! # drop(handler);
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use smtpsrv::{BoxError, Delivery, Identity, PerRecipient, Reply};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Level;

use crate::request::{StageData, client_ip};

/// The reply code a response stands for, for logs.
pub trait ReplyCode {
    /// The SMTP reply code (the first one for per-recipient replies).
    fn reply_code(&self) -> u16;
}

impl ReplyCode for Reply {
    fn reply_code(&self) -> u16 {
        self.code()
    }
}

impl ReplyCode for () {
    fn reply_code(&self) -> u16 {
        250
    }
}

impl ReplyCode for PerRecipient {
    fn reply_code(&self) -> u16 {
        self.0.first().map_or(250, Reply::code)
    }
}

impl ReplyCode for Delivery {
    fn reply_code(&self) -> u16 {
        match self {
            Delivery::All(r) => r.code(),
            Delivery::PerRecipient(v) => v.first().map_or(250, Reply::code),
        }
    }
}

/// What an authenticator answers: `235` or `535`.
impl ReplyCode for Option<Identity> {
    fn reply_code(&self) -> u16 {
        if self.is_some() { 235 } else { 535 }
    }
}

impl<T: ReplyCode, E: ReplyCode> ReplyCode for Result<T, E> {
    fn reply_code(&self) -> u16 {
        match self {
            Ok(t) => t.reply_code(),
            Err(e) => e.reply_code(),
        }
    }
}

/// The code the client gets for an error (see [`smtpsrv::error_reply`]).
fn error_code(err: &BoxError) -> u16 {
    err.downcast_ref::<Reply>().map_or(451, Reply::code)
}

#[derive(Debug, Clone, Copy)]
struct Levels {
    call: Level,
    reply: Level,
    refusal: Level,
    failure: Level,
}

/// Logs calls and replies; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    levels: Levels,
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceLayer {
    /// Calls at `DEBUG`, replies and refusals at `INFO`, failures at `WARN`.
    pub fn new() -> Self {
        TraceLayer {
            levels: Levels {
                call: Level::DEBUG,
                reply: Level::INFO,
                refusal: Level::INFO,
                failure: Level::WARN,
            },
        }
    }

    /// The level of `smtp.call` events.
    pub fn call_level(mut self, level: Level) -> Self {
        self.levels.call = level;
        self
    }

    /// The level of `smtp.reply` events for positive (2xx/3xx) replies.
    pub fn reply_level(mut self, level: Level) -> Self {
        self.levels.reply = level;
        self
    }

    /// The level of `smtp.reply` events for refusals (4xx/5xx replies).
    pub fn refusal_level(mut self, level: Level) -> Self {
        self.levels.refusal = level;
        self
    }

    /// The level of `smtp.reply` events for errors that are not replies.
    pub fn failure_level(mut self, level: Level) -> Self {
        self.levels.failure = level;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            levels: self.levels,
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    levels: Levels,
}

/// Emits an event at a level chosen at run time (tracing's macros want a
/// constant).
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {{
        let level = $level;
        if level == Level::ERROR {
            tracing::error!($($rest)+)
        } else if level == Level::WARN {
            tracing::warn!($($rest)+)
        } else if level == Level::INFO {
            tracing::info!($($rest)+)
        } else if level == Level::DEBUG {
            tracing::debug!($($rest)+)
        } else {
            tracing::trace!($($rest)+)
        }
    }};
}

impl<S, R> Service<R> for Trace<S>
where
    S: Service<R>,
    S::Response: ReplyCode,
    S::Error: Into<BoxError>,
    R: StageData,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let stage = req.kind().as_str();
        let id = match req.message_id() {
            Some(id) => id.to_string(),
            None => req.session().id().to_string(),
        };
        let peer = client_ip(&req);
        let from = req
            .envelope()
            .map(|e| e.reverse_path().map_or("<>", |a| a.as_str()));
        let recipients = req.envelope().map(|e| e.recipients().len());
        // Unknown (absent) for a streaming body, which is still arriving.
        let size = req.body().and_then(|b| b.len());
        event_at!(
            self.levels.call,
            stage = %stage,
            id = %id,
            peer = %peer,
            from = from,
            recipients = recipients,
            size = size,
            "smtp.call"
        );
        TraceFuture {
            inner: self.inner.call(req),
            started: Instant::now(),
            stage,
            id,
            peer,
            levels: self.levels,
        }
    }
}

pin_project! {
    /// The inner future, logging `smtp.reply` when it completes.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        stage: &'static str,
        id: String,
        peer: IpAddr,
        levels: Levels,
    }
}

impl<F, T, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: ReplyCode,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        let duration_ms = this.started.elapsed().as_millis() as u64;
        let (stage, id, peer) = (*this.stage, &*this.id, *this.peer);
        match &result {
            Ok(response) => {
                let code = response.reply_code();
                let level = if code < 400 {
                    this.levels.reply
                } else {
                    this.levels.refusal
                };
                event_at!(level, stage = %stage, id = %id, peer = %peer, code, duration_ms, "smtp.reply");
            }
            Err(err) if err.is::<Reply>() => {
                let code = error_code(err);
                event_at!(this.levels.refusal, stage = %stage, id = %id, peer = %peer, code, duration_ms, "smtp.reply");
            }
            Err(err) => {
                let code = error_code(err);
                event_at!(this.levels.failure, stage = %stage, id = %id, peer = %peer, code, duration_ms, error = %err, "smtp.reply");
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require_auth::RequireAuthLayer;
    use crate::test_support::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tower::ServiceExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(max: Level) -> (Captured, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(max)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (out, tracing::subscriber::set_default(subscriber))
    }

    fn lines(out: &Captured) -> Vec<String> {
        String::from_utf8(out.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn call_and_reply_events_with_stable_fields() {
        let (out, _guard) = capture(Level::TRACE);
        let slow = tower::service_fn(|_: smtpsrv::Context| async {
            tokio::time::sleep(Duration::from_millis(42)).await;
            Ok::<_, BoxError>(Reply::new(250, (2, 0, 0), "Queued"))
        });
        let svc = TraceLayer::new().layer(slow);
        let ctx = context(
            session(),
            Some("ann@example.org"),
            &["b@x.example", "c@x.example"],
            "Subject: x\r\n\r\nhi\r\n",
        );
        let id = ctx.id().to_string();
        svc.oneshot(ctx).await.unwrap();
        let lines = lines(&out);
        let call = lines.iter().find(|l| l.contains("smtp.call")).unwrap();
        for field in [
            "DEBUG",
            "stage=data",
            &format!("id={id}"),
            "peer=192.0.2.1",
            "from=\"ann@example.org\"",
            "recipients=2",
            "size=18",
        ] {
            assert!(call.contains(field), "{field} in {call}");
        }
        let reply = lines.iter().find(|l| l.contains("smtp.reply")).unwrap();
        for field in [" INFO", "stage=data", "code=250", "duration_ms=42"] {
            assert!(reply.contains(field), "{field} in {reply}");
        }
    }

    #[tokio::test]
    async fn refusals_and_failures_have_their_codes_and_levels() {
        let (out, _guard) = capture(Level::TRACE);
        let refused = TraceLayer::new()
            .refusal_level(Level::ERROR)
            .layer(RequireAuthLayer::new().layer(Counting::default()));
        let _ = refused.oneshot(mail_from(session(), None)).await;
        let failing = TraceLayer::new().layer(tower::service_fn(|_: smtpsrv::MailFrom| async {
            Err::<Reply, BoxError>("database down".into())
        }));
        let _ = failing
            .oneshot(mail_from(session(), Some("a@b.example")))
            .await;
        let lines = lines(&out);
        let replies: Vec<&String> = lines.iter().filter(|l| l.contains("smtp.reply")).collect();
        assert!(
            replies[0].contains("ERROR")
                && replies[0].contains("code=530")
                && replies[0].contains("stage=mail"),
            "{}",
            replies[0]
        );
        assert!(
            replies[1].contains("WARN")
                && replies[1].contains("code=451")
                && replies[1].contains("database down"),
            "{}",
            replies[1]
        );
        let call = lines.iter().find(|l| l.contains("smtp.call")).unwrap();
        assert!(!call.contains("size="), "no size before data: {call}");
    }

    #[tokio::test]
    async fn levels_filter_events() {
        let (out, _guard) = capture(Level::INFO);
        let svc = TraceLayer::new().layer(Counting::default());
        svc.oneshot(smtpsrv::Connect::new(session())).await.unwrap();
        let lines = lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("smtp.reply") && lines[0].contains("stage=connect"));
    }

    #[test]
    fn reply_codes() {
        assert_eq!(().reply_code(), 250);
        assert_eq!(Some(Identity::new("a")).reply_code(), 235);
        assert_eq!(None::<Identity>.reply_code(), 535);
        assert_eq!(
            PerRecipient(vec![Reply::new(452, (4, 2, 2), "full")]).reply_code(),
            452
        );
    }
}

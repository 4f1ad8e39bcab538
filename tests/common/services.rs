//! The services a test server runs: a recorder of every message, answering
//! services, and an authenticator that knows one user.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use smtpsrv::tower::Service;
use smtpsrv::{Authenticate, BoxError, Context, Identity};
use tokio::sync::Notify;

use super::step;

/// The user the test authenticator knows.
pub const USER: &str = "ann";
/// Her password.
pub const PASSWORD: &str = "correct horse battery staple";

/// Every [`Context`] a message service was called with, in order; clones
/// share the record.
///
/// Read it as a whole ([`Recorder::all`], [`Recorder::single`]) or as a
/// queue ([`Recorder::next`], which takes the oldest message out and waits
/// for one if there is none yet); a test uses one way or the other.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Shared>);

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Context>>,
    arrived: Notify,
}

/// The recorder of a service made by [`recorder`] or [`recorder_with`],
/// under the name the TLS and extension tests use.
pub type Inbox = Recorder;

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Context>> {
        self.0.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, ctx: Context) {
        self.lock().push(ctx);
        self.0.arrived.notify_waiters();
    }

    /// A copy of every context received (and not taken by
    /// [`Recorder::next`]) so far.
    pub fn all(&self) -> Vec<Context> {
        self.lock().clone()
    }

    /// How many messages were received (and not taken).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no message was received (or all were taken).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The only message received; panics unless there is exactly one.
    pub fn single(&self) -> Context {
        let all = self.all();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one message, got {}",
            all.len()
        );
        all.into_iter().next().expect("one message")
    }

    /// Takes the oldest message out of the record, waiting (at most
    /// [`STEP`](super::STEP)) for one to arrive; the test then owns it.
    pub async fn next(&mut self) -> Context {
        step(async {
            loop {
                let arrived = self.0.arrived.notified();
                tokio::pin!(arrived);
                // Registered before looking, so a push in between wakes us.
                arrived.as_mut().enable();
                {
                    let mut messages = self.lock();
                    if !messages.is_empty() {
                        return messages.remove(0);
                    }
                }
                arrived.await;
            }
        })
        .await
    }

    /// Asserts that no message was delivered (or that all were taken).
    pub fn assert_empty(&mut self) {
        if let Some(ctx) = self.lock().first() {
            panic!("unexpected message delivered: {ctx:?}");
        }
    }
}

/// A service that records each context, then hands it to `inner`: a
/// message is recorded even when that service fails or panics.
#[derive(Clone)]
pub struct Recording<S> {
    /// Where the contexts go.
    pub recorder: Recorder,
    /// The service that answers.
    pub inner: S,
}

impl<S: Service<Context>> Service<Context> for Recording<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        self.recorder.push(ctx.clone());
        self.inner.call(ctx)
    }
}

/// A message handler that answers each message with `answer(&ctx)`, then
/// records it (so a message whose answer panicked is not recorded).
#[derive(Clone)]
pub struct Answering<F> {
    recorder: Recorder,
    answer: F,
}

impl<F, R> Service<Context> for Answering<F>
where
    F: Fn(&Context) -> R + Clone,
{
    type Response = R;
    type Error = BoxError;
    type Future = std::future::Ready<Result<R, BoxError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        let answer = (self.answer)(&ctx);
        self.recorder.push(ctx);
        std::future::ready(Ok(answer))
    }
}

/// A recording handler accepting every message with `250 2.0.0 OK`, and
/// its record.
pub fn recorder() -> (Answering<fn(&Context)>, Inbox) {
    fn accept(_: &Context) {}
    recorder_with(accept as fn(&Context))
}

/// A recording handler answering each message with `answer(&ctx)`, and its
/// record.
pub fn recorder_with<F, R>(answer: F) -> (Answering<F>, Inbox)
where
    F: Fn(&Context) -> R + Clone,
{
    let recorder = Recorder::default();
    (
        Answering {
            recorder: recorder.clone(),
            answer,
        },
        recorder,
    )
}

/// A service that accepts every message with `250 2.0.0 OK`.
pub fn accept_all() -> impl Service<
    Context,
    Response = (),
    Error = BoxError,
    Future = impl Future<Output = Result<(), BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    smtpsrv::tower::service_fn(|_ctx: Context| async { Ok::<(), BoxError>(()) })
}

/// An authenticator that knows only [`USER`] with [`PASSWORD`].
pub fn authenticator()
-> impl Service<Authenticate, Response = Option<Identity>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    smtpsrv::tower::service_fn(|req: Authenticate| async move {
        let ok = req.username() == USER && req.password() == PASSWORD;
        Ok::<_, BoxError>(ok.then(|| Identity::new(req.username())))
    })
}

/// `base64("\0user\0password")`: an `AUTH PLAIN` response.
pub fn plain_response(user: &str, password: &str) -> String {
    b64(format!("\0{user}\0{password}").as_bytes())
}

/// Standard base64 of `data`.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

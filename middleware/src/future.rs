//! [`ResponseFuture`]: the future of layers that decide at once, in `call`,
//! either to refuse (no inner call) or to pass the request on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use smtpsrv::{BoxError, Reply};

pin_project! {
    /// The inner service's future, or a refusal decided without calling it.
    ///
    /// A refusal resolves to `Err(Box<Reply>)`: the server sends a [`Reply`]
    /// error as is (see [`smtpsrv::error_reply`]).
    #[project = ResponseProj]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Refused { reply: Option<Reply> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        ResponseFuture {
            state: State::Called { future },
        }
    }

    pub(crate) fn refused(reply: Reply) -> Self {
        ResponseFuture {
            state: State::Refused { reply: Some(reply) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future.poll(cx).map_err(Into::into),
            StateProj::Refused { reply } => {
                let reply = reply.take().unwrap_or_else(|| {
                    Reply::new(451, (4, 3, 0), "Temporary failure, try again later")
                });
                Poll::Ready(Err(Box::new(reply)))
            }
        }
    }
}

/// A boxed response future, for layers that await DNS before deciding:
/// mail-auth's lookups are `async fn`s whose futures have no name.
pub type BoxResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// A refusal as the error a layer returns.
pub(crate) fn refuse(reply: Reply) -> BoxError {
    Box::new(reply)
}

/// The inner call as a boxed future, for requests a layer lets through
/// untouched.
pub(crate) fn pass_through<F, T, E>(future: F) -> BoxResponseFuture<T>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
{
    Box::pin(async move { future.await.map_err(Into::into) })
}

/// Takes the service that `poll_ready` made ready, leaving a fresh clone in
/// its place: the ready one moves into a future that calls it later (the
/// usual tower pattern for layers that await before calling).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

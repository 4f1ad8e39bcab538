//! [`ResponseFuture`] and the helpers of layers that refuse: a refusal is
//! the [`Reply`] itself as the error, decided without calling the inner
//! service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::proto::Reply;
use crate::reply_conv::BoxError;

pin_project! {
    /// The inner service's future, or a refusal decided without calling it:
    /// the future of a layer that decides at once, in `call`.
    ///
    /// A refusal resolves to `Err(Box<Reply>)`, which the server sends as is
    /// (see [`error_reply`](crate::error_reply)); the inner future's error
    /// is boxed. No allocation and no `Send`/`'static` bounds beyond the
    /// inner future's own. See the [module docs](super) for a whole layer.
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
    /// Passes the request on: resolves to what the inner future resolves to
    /// (its error boxed).
    pub fn called(future: F) -> Self {
        ResponseFuture {
            state: State::Called { future },
        }
    }

    /// Refuses without calling the inner service: resolves to
    /// `Err(Box::new(reply))`.
    pub fn refused(reply: Reply) -> Self {
        ResponseFuture {
            state: State::Refused { reply: Some(reply) },
        }
    }

    /// Whether this future refuses (the inner service was not called).
    pub fn is_refused(&self) -> bool {
        matches!(self.state, State::Refused { .. })
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
                // Polled again after completion (a caller bug): a temporary
                // failure rather than a panic, so nothing is accepted.
                let reply = reply.take().unwrap_or_else(|| {
                    Reply::new(451, (4, 3, 0), "Temporary failure, try again later")
                });
                Poll::Ready(Err(refuse(reply)))
            }
        }
    }
}

/// A boxed response future, for layers that await before deciding (a DNS
/// lookup, a store) through `async` blocks, whose futures have no name.
pub type BoxResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// A refusal as the error a layer returns, e.g. from inside an `async`
/// block: `return Err(refuse(reply))`.
pub fn refuse(reply: Reply) -> BoxError {
    Box::new(reply)
}

/// The inner call as a [`BoxResponseFuture`], for the requests a boxing
/// layer lets through untouched (its other branch being an `async` block).
pub fn pass_through<F, T, E>(future: F) -> BoxResponseFuture<T>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
{
    Box::pin(async move { future.await.map_err(Into::into) })
}

/// Takes the service that `poll_ready` made ready, leaving a fresh clone in
/// its place: the ready one moves into a future that calls it later.
///
/// This is the usual tower pattern for layers that await before calling:
/// calling a clone instead would call a service that was never polled
/// ready (wrong for `Buffer`, `ConcurrencyLimit`, `RateLimit`).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_resolves_to_the_reply_and_called_to_the_inner_result() {
        let refused = ResponseFuture::<std::future::Ready<Result<(), BoxError>>>::refused(
            Reply::new(550, (5, 7, 1), "No"),
        );
        assert!(refused.is_refused());
        let err = refused.await.unwrap_err();
        assert_eq!(err.downcast_ref::<Reply>().map(Reply::code), Some(550));

        let called = ResponseFuture::called(std::future::ready(Ok::<_, std::io::Error>(7)));
        assert!(!called.is_refused());
        assert_eq!(called.await.unwrap(), 7);

        let failed = ResponseFuture::called(std::future::ready(Err::<(), _>(
            std::io::Error::other("down"),
        )));
        assert!(failed.await.unwrap_err().is::<std::io::Error>());
    }
}

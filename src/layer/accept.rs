//! [`Accept`]: the service that says yes to everything, the inner service
//! of a stack of layers that only refuse.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use tower::Service;

/// Accepts every request of any stage with `()`: the stage's default
/// positive reply (`220`/`250` with the server's usual text).
///
/// Use it as the innermost service when the decisions are all in layers,
/// instead of writing `service_fn(|_: MailFrom| async { Ok::<_, BoxError>(()) })`
/// for each stage. It is `Copy`, never busy and never fails.
///
/// ```
/// use smtpsrv::layer::Accept;
/// use smtpsrv::tower::{ServiceBuilder, timeout::TimeoutLayer};
/// use std::time::Duration;
///
/// let on_rcpt = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(5)))
///     .service(Accept);
/// let builder = smtpsrv::Server::builder().on_rcpt(on_rcpt);
/// # drop(builder);
/// ```
///
/// As a message service it accepts and drops every message (a sink, like
/// Postfix's `smtp-sink`). It answers no authenticator: an authenticator
/// must return an identity, and accepting every password is not a default
/// anyone should get by accident.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accept;

/// [`Accept`], as a function for builder chains.
pub fn accept() -> Accept {
    Accept
}

impl<R> Service<R> for Accept {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: R) -> Self::Future {
        ready(Ok(()))
    }
}

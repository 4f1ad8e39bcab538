//! The installed early-decision hooks, boxed so the server has one type
//! whatever services the user plugs in, and the one place where they (and
//! the message service) are called: readiness, timeout, panic containment.
//!
//! The runtime contract, documented for users on
//! [`Server::serve`](crate::Server::serve): each connection has its own
//! clone of every service; each request is `ready().await`ed then `call`ed
//! once, both within the handler deadline, and the connection's next
//! command waits for the answer.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use crate::info::Identity;
use crate::proto::Reply;
use crate::reply_conv::{BoxError, HandlerTimeout, IntoReply, error_reply};
use crate::session::AuthResult;
use crate::stage::{Authenticate, Connect, Helo, MailFrom, RcptTo};

/// A stage hook whose answer is already a reply.
pub(crate) type Hook<R> = BoxCloneService<R, Reply, BoxError>;

/// The authenticator, answering an identity or a refusal.
pub(crate) type AuthHook = BoxCloneService<Authenticate, Option<Identity>, BoxError>;

/// Every installed hook (cloned per connection).
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub connect: Option<Hook<Connect>>,
    pub helo: Option<Hook<Helo>>,
    pub mail: Option<Hook<MailFrom>>,
    pub rcpt: Option<Hook<RcptTo>>,
    pub auth: Option<AuthHook>,
}

/// Boxes a user's stage service.
pub(crate) fn boxed_hook<R, S>(service: S) -> Hook<R>
where
    R: Send + 'static,
    S: Service<R> + Clone + Send + 'static,
    S::Response: IntoReply,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneService::new(
        service
            .map_response(IntoReply::into_reply)
            .map_err(Into::into),
    )
}

/// Boxes a user's authenticator.
pub(crate) fn boxed_authenticator<S>(service: S) -> AuthHook
where
    S: Service<Authenticate, Response = Option<Identity>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneService::new(service.map_err(Into::into))
}

/// Verifies credentials: `Some(identity)` accepts, `None` is `535 5.7.8`,
/// a reply error is sent as is, any other error is `454 4.7.0`.
///
/// An authorization identity (RFC 4616 2) other than the username is
/// granted only when the authenticator returned exactly that identity:
/// one that ignores the authzid (and so returns the username) makes the
/// exchange fail instead of silently dropping it.
pub(crate) async fn authenticate(
    hook: Option<&mut AuthHook>,
    request: Authenticate,
    limit: Duration,
) -> AuthResult {
    let Some(hook) = hook else {
        return Err(invalid_credentials());
    };
    let proxied = request
        .authzid()
        .filter(|authzid| *authzid != request.username())
        .map(str::to_owned);
    match call_guarded(hook, request, limit).await {
        Ok(Some(identity)) => match proxied {
            Some(authzid) if identity.as_str() != authzid => Err(Reply::auth_failed().with_text(
                "Authentication failed: not authorized to act as that authorization identity",
            )),
            _ => Ok(identity),
        },
        Ok(None) => Err(invalid_credentials()),
        Err(e) => Err(auth_error_reply(e)),
    }
}

fn invalid_credentials() -> Reply {
    Reply::auth_failed()
}

fn auth_error_reply(err: BoxError) -> Reply {
    match err.downcast::<Reply>() {
        Ok(reply) => *reply,
        Err(err) => {
            tracing::warn!(error = %err, "authenticator failed");
            Reply::new(454, (4, 7, 0), "Temporary authentication failure")
        }
    }
}

/// Waits for readiness and calls, both within `limit` (the handler
/// deadline), turning a panic or the deadline into an error
/// ([`HandlerTimeout`]). The future is dropped on timeout.
pub(crate) async fn call_guarded<S, R>(
    service: &mut S,
    request: R,
    limit: Duration,
) -> Result<S::Response, BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    let call = async {
        service.ready().await.map_err(Into::into)?;
        service.call(request).await.map_err(Into::into)
    };
    match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "service panicked; answering 451");
            Err(Box::new(
                Reply::try_again_later().with_text("Internal error, try again later"),
            ))
        }
        Err(_) => Err(Box::new(HandlerTimeout)),
    }
}

/// Calls a stage hook, mapping every failure to a reply.
pub(crate) async fn ask<R: Send + 'static>(
    hook: &mut Hook<R>,
    request: R,
    limit: Duration,
) -> Reply {
    call_guarded(hook, request, limit)
        .await
        .unwrap_or_else(error_reply)
}

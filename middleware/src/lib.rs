//! Tower layers for [`smtpsrv`]: policy as middleware.
//!
//! | module | refuses with |
//! |---|---|
//! | [`require_auth`] | `530 5.7.0` unauthenticated, `553 5.7.1` sender not allowed for the identity |
//! | [`size`] | `552 5.3.4` over a policy limit (declared `SIZE` or actual size) |
//! | [`spf`] | `550 5.7.23` fail, `550 5.7.24` permerror, `451 4.7.24` temperror |
//! | [`dkim`] | `550 5.7.20` no passing signature, `451 4.7.20` only temporary errors |
//! | [`dmarc`] | `550 5.7.1` failed with policy `reject` |
//! | [`mailable`] | `550 5.1.8` sender domain has no MX/A/AAAA, `550 5.7.27` Null MX, `451 4.1.8` DNS failure |
//! | [`rate_limit`] | `450 4.7.0` (or `421 4.7.0`) over a keyed quota; `451 4.7.0` when the store fails under [`StoreFailurePolicy::Refuse`](rate_limit::StoreFailurePolicy::Refuse) |
//! | [`trace`] | never: logs calls and replies |
//! | `metrics` (feature `metrics`) | never: counts and times calls and replies for Prometheus |
//!
//! # Stages
//!
//! The layers are generic over the request: any type implementing
//! [`smtpsrv::Stage`] — the hook requests
//! ([`Connect`](smtpsrv::Connect), [`Helo`](smtpsrv::Helo),
//! [`MailFrom`](smtpsrv::MailFrom), [`RcptTo`](smtpsrv::RcptTo),
//! [`Authenticate`](smtpsrv::Authenticate)) and the message
//! [`Context`](smtpsrv::Context). A layer does what makes sense at the
//! stage it is put on: SPF at `MAIL` refuses before data is read; at `DATA`
//! it reuses the `MAIL` result and can add a `Received-SPF` header.
//! Results are left in the request's extensions ([`SpfOutcome`](spf::SpfOutcome),
//! [`DkimOutcome`](dkim::DkimOutcome), ...), where later layers, later
//! stages of the same transaction and the handler find them.
//! [`StageData`] is another name of `Stage`, kept from when the message
//! and `prepend_header` lived here.
//!
//! To put one layer on every hook at once, give it to
//! [`Builder::hook_layer`](smtpsrv::Builder::hook_layer); the hooks you
//! did not install get [`Accept`](smtpsrv::layer::Accept) underneath.
//! [`trace`], [`rate_limit`] and `metrics` fit every hook, the
//! authenticator included.
//!
//! # How a layer refuses
//!
//! Rejections are replies. A layer that refuses does not call the inner
//! service and fails with the [`Reply`](smtpsrv::Reply) itself as the
//! error: `Err(Box::new(reply))`. The server sends a `Reply` error as is
//! ([`smtpsrv::error_reply`]), so every layer keeps `Response =
//! S::Response` and `Error = BoxError`. Why not a response enum carrying
//! either the inner response or the layer's reply? Because our hooks accept
//! any `IntoReply` response, message services any `IntoDelivery`, the
//! authenticator `Option<Identity>`: an unchanged response type composes
//! with all of them, with the user's own types, and with tower's layers
//! (`Timeout`, `ConcurrencyLimit`, `LoadShed`, `Buffer`), whose errors are
//! boxed too. A handler can tell a refusal from a failure with
//! `err.downcast_ref::<Reply>()`.
//!
//! The building blocks these layers use are public in the core,
//! [`smtpsrv::layer`], so a layer of your own needs only `smtpsrv`:
//! [`ResponseFuture`] (re-exported here) for layers that decide in `call`,
//! [`BoxResponseFuture`] and [`smtpsrv::layer::take_ready`] for those that
//! await first. The [`smtpsrv::layer`] docs show a whole refusing layer.
//!
//! ```
//! use std::time::Duration;
//! use smtpsrv::{BoxError, Context, MailFrom, Reply};
//! use smtpsrv_middleware::{Resolver, rate_limit::{Quota, RateLimitLayer}, require_auth::RequireAuthLayer,
//!     size::SizeLimitLayer, spf::SpfLayer, trace::TraceLayer};
//! use tower::ServiceBuilder;
//!
//! # fn build(resolver: Resolver) {
//! let on_mail = ServiceBuilder::new()
//!     .layer(TraceLayer::new())
//!     .layer(RateLimitLayer::per_ip(Quota::per(30, Duration::from_secs(60))))
//!     .layer(SpfLayer::new(resolver.clone()).reject_fail())
//!     .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
//! let handler = ServiceBuilder::new()
//!     .layer(TraceLayer::new())
//!     .layer(SizeLimitLayer::new(10 << 20))
//!     .layer(SpfLayer::new(resolver).received_spf("mx.example.com"))
//!     .service_fn(|ctx: Context| async move { Ok::<_, BoxError>(()) });
//! let server = smtpsrv::Server::builder().on_mail(on_mail).build();
//! # drop((server, handler)); }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dkim;
pub mod dmarc;
pub mod dns;
mod future;
pub mod mailable;
pub mod message;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod rate_limit;
mod request;
pub mod require_auth;
pub mod size;
pub mod spf;
pub mod trace;

#[cfg(test)]
mod test_support;
// The test harness is shared with tests/, where this crate is an external
// one: let it name the crate the same way in both.
#[cfg(test)]
extern crate self as smtpsrv_middleware;

pub use dns::Resolver;
pub use future::{BoxResponseFuture, ResponseFuture};
pub use request::StageData;

/// mail-auth, re-exported: its result types appear in our outcomes.
pub use mail_auth;

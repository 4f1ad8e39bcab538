//! Building blocks for writing your own layers, with `smtpsrv` alone: the
//! [`ResponseFuture`] of a layer that refuses, the [`Accept`] service, and
//! [`HookLayer`] for putting one layer on every hook at once
//! ([`Builder::hook_layer`](crate::Builder::hook_layer)).
//!
//! # How a layer refuses
//!
//! Rejections are replies, not a different response type: a layer that
//! refuses does not call the inner service and fails with the `Reply`
//! itself as the error. The server sends a [`Reply`](crate::Reply) error as is
//! ([`error_reply`](crate::error_reply)), so a layer keeps `Response =
//! S::Response` and `Error = BoxError`. That composes with every response
//! a stage accepts (any [`IntoReply`](crate::IntoReply) for hooks, any
//! [`IntoDelivery`](crate::IntoDelivery) for messages, `Option<Identity>`
//! for the authenticator), with your own types, and with tower's layers,
//! whose errors are boxed too. A caller tells a refusal from a failure
//! with `err.downcast_ref::<Reply>()`.
//!
//! A layer that decides at once, in `call`, returns [`ResponseFuture`]:
//! [`ResponseFuture::refused`] or [`ResponseFuture::called`] with the
//! inner future. It is a named future, so the layer needs no `Box`, no
//! `Send + 'static` bounds of its own, and its future type can be named by
//! the layers around it (tower-http's shape). A layer that must await
//! something before deciding (DNS, a store) either writes its own future
//! or boxes an `async` block: [`BoxResponseFuture`], with [`take_ready`]
//! to move the ready inner service into it, [`refuse`] for the error and
//! [`pass_through`] for the requests it does not look at.
//!
//! Every request type implements [`Stage`](crate::Stage), so a layer
//! generic over `R: Stage` works at every stage it makes sense at: the
//! envelope from `MAIL` on, the recipient at `RCPT`, the message (and
//! [`prepend_header`](crate::Stage::prepend_header)) at `DATA`.
//!
//! # Example: a refusing layer, no boxing
//!
//! Refuses senders of one domain, at `MAIL` when put on
//! [`on_mail`](crate::Builder::on_mail), and at any later stage it is put
//! on (the envelope carries the sender along):
//!
//! ```
//! use std::sync::Arc;
//! use std::task::{Context, Poll};
//!
//! use smtpsrv::layer::{Accept, ResponseFuture};
//! use smtpsrv::tower::{Layer, Service, ServiceBuilder, ServiceExt};
//! use smtpsrv::{Address, BoxError, MailFrom, Reply, SessionInfo, Stage};
//!
//! /// Refuses mail from one sender domain with `550 5.7.1`.
//! #[derive(Debug, Clone)]
//! pub struct BlockDomainLayer {
//!     domain: Arc<str>,
//! }
//!
//! impl BlockDomainLayer {
//!     /// Refuses senders at `domain` (compared without regard to case).
//!     pub fn new(domain: &str) -> Self {
//!         BlockDomainLayer { domain: domain.into() }
//!     }
//! }
//!
//! impl<S> Layer<S> for BlockDomainLayer {
//!     type Service = BlockDomain<S>;
//!
//!     fn layer(&self, inner: S) -> BlockDomain<S> {
//!         BlockDomain { inner, domain: self.domain.clone() }
//!     }
//! }
//!
//! /// The service of [`BlockDomainLayer`].
//! #[derive(Debug, Clone)]
//! pub struct BlockDomain<S> {
//!     inner: S,
//!     domain: Arc<str>,
//! }
//!
//! impl<S, R> Service<R> for BlockDomain<S>
//! where
//!     S: Service<R>,
//!     S::Error: Into<BoxError>,
//!     R: Stage,
//! {
//!     type Response = S::Response;
//!     type Error = BoxError;
//!     type Future = ResponseFuture<S::Future>;
//!
//!     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
//!         self.inner.poll_ready(cx).map_err(Into::into)
//!     }
//!
//!     fn call(&mut self, req: R) -> Self::Future {
//!         let sender_domain = req.envelope().and_then(|e| e.reverse_path()).and_then(|a| a.domain());
//!         if sender_domain.is_some_and(|d| d.eq_ignore_ascii_case(&self.domain)) {
//!             return ResponseFuture::refused(Reply::new(550, (5, 7, 1), "Sender domain refused"));
//!         }
//!         ResponseFuture::called(self.inner.call(req))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let on_mail = ServiceBuilder::new()
//!     .layer(BlockDomainLayer::new("spam.example"))
//!     .service(Accept);
//! # let session = Arc::new(SessionInfo::new("192.0.2.1:5000".parse()?, "127.0.0.1:25".parse()?));
//! # let mail = |from: &str| MailFrom::new(session.clone(), Some(Address::parse(from).unwrap()), Default::default());
//! let refusal = on_mail.clone().oneshot(mail("eve@SPAM.example")).await.unwrap_err();
//! assert_eq!(refusal.downcast_ref::<Reply>().map(Reply::code), Some(550));
//! on_mail.clone().oneshot(mail("ann@example.org")).await?;
//! let server = smtpsrv::Server::builder().on_mail(on_mail).build();
//! # drop(server); Ok(()) }
//! ```
//!
//! # One layer on every hook
//!
//! Each hook has its own request type, so each is its own service; a
//! layer generic over the request already fits them all, but writing one
//! `ServiceBuilder` per stage around an accept-all service is noise.
//! [`Builder::hook_layer`](crate::Builder::hook_layer) puts one layer
//! around every hook instead: the connect, HELO, MAIL and RCPT hooks and
//! the authenticator.
//!
//! Why a builder method and not a `ServiceBuilder` for all hooks: the
//! server holds each hook boxed ([`HookService`], [`AuthenticatorService`])
//! anyway, so wrapping the boxed hooks costs nothing new, and the layer
//! is given once whatever hooks are (or are later) installed. Its
//! semantics:
//!
//! - The layers are applied by [`Builder::build`](crate::Builder::build),
//!   so the order of builder calls does not matter. Several `hook_layer`
//!   calls stack like `ServiceBuilder::layer`: the first is outermost.
//! - A stage without a hook gets [`Accept`] inside the layers, so a
//!   tracing, metrics or rate-limit layer sees every stage. No
//!   authenticator is invented: without one, AUTH is not offered and
//!   there is nothing to wrap.
//! - The layer sees a hook's answer already turned into a [`Reply`](crate::Reply) (the
//!   authenticator's as `Option<Identity>`).
//! - The message service is not a hook: it is given to
//!   [`Server::serve`](crate::Server::serve) and has its own response
//!   type. Put the same layer value on it with a `ServiceBuilder`.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::task::{Context, Poll};
//!
//! use smtpsrv::layer::ResponseFuture;
//! use smtpsrv::tower::{Layer, Service, ServiceBuilder};
//! use smtpsrv::{BoxError, Stage, StageKind};
//!
//! /// Counts requests per stage.
//! #[derive(Clone, Default)]
//! pub struct CountLayer(Arc<[AtomicUsize; 6]>);
//!
//! impl CountLayer {
//!     /// Requests seen at `stage` so far.
//!     pub fn count(&self, stage: StageKind) -> usize {
//!         self.0[stage as usize].load(Ordering::Relaxed)
//!     }
//! }
//!
//! impl<S> Layer<S> for CountLayer {
//!     type Service = Count<S>;
//!     fn layer(&self, inner: S) -> Count<S> {
//!         Count { inner, counts: self.clone() }
//!     }
//! }
//!
//! /// The service of [`CountLayer`].
//! #[derive(Clone)]
//! pub struct Count<S> {
//!     inner: S,
//!     counts: CountLayer,
//! }
//!
//! impl<S: Service<R, Error: Into<BoxError>>, R: Stage> Service<R> for Count<S> {
//!     type Response = S::Response;
//!     type Error = BoxError;
//!     type Future = ResponseFuture<S::Future>;
//!
//!     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
//!         self.inner.poll_ready(cx).map_err(Into::into)
//!     }
//!
//!     fn call(&mut self, req: R) -> Self::Future {
//!         self.counts.0[req.kind() as usize].fetch_add(1, Ordering::Relaxed);
//!         ResponseFuture::called(self.inner.call(req))
//!     }
//! }
//!
//! let counts = CountLayer::default();
//! let server = smtpsrv::Server::builder()
//!     .hook_layer(counts.clone()) // connect, HELO, MAIL, RCPT (and AUTH, with an authenticator)
//!     .build();
//! let handler = ServiceBuilder::new()
//!     .layer(counts.clone()) // the message service: DATA/BDAT
//!     .service_fn(|_: smtpsrv::Context| async { Ok::<_, BoxError>(()) });
//! # drop((server, handler));
//! ```

mod accept;
mod every_hook;
mod future;

pub use accept::{Accept, accept};
pub use every_hook::{AuthenticatorService, HookLayer, HookService, StageLayer};
pub use future::{BoxResponseFuture, ResponseFuture, pass_through, refuse, take_ready};

pub(crate) use every_hook::HookLayers;

//! smtpsrv: write SMTP servers like a boss.
//!
//! A tokio-util codec decodes SMTP, a pure state machine ([`session`])
//! applies the protocol, and every completed message reaches a
//! [`tower::Service<Context>`](tower::Service). Early decisions at connect,
//! HELO, AUTH, MAIL and RCPT are tower services too, so the same layers
//! (timeouts, concurrency limits, rate limits, tracing) apply everywhere.
//!
//! # How it fits together
//!
//! ```text
//! TcpListener -accept-> [caps, PROXY header, implicit TLS] -> conn (IO, timeouts, STARTTLS)
//!    bytes -> codec::SmtpCodec -> proto::Command -> session::Session (pure) -> Action
//!    Action::Check   -> your hooks: on_connect / on_helo / authenticator / on_mail / on_rcpt
//!    Action::Deliver -> your Service<Context> -> IntoDelivery -> Reply(s) -> socket
//!    (streaming: the service is called as the body begins; Action::AwaitAnswer at its end)
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`proto`] | sans-IO protocol: commands, parameters, addresses, replies, line/DATA/BDAT receivers |
//! | [`codec`] | the tokio-util codec over `proto` |
//! | [`session`] | the state machine: command in, reply and next action out |
//! | [`Server`], [`Builder`] | settings, listeners, caps, graceful shutdown; how services are called ([`Server::serve`]) |
//! | [`Context`], [`email`] | what a handler gets, and the parsed message |
//! | [`stage`] | hook requests and the [`Stage`] trait layers are generic over |
//! | [`layer`] | building blocks for your own layers: [`ResponseFuture`](layer::ResponseFuture), [`Accept`](layer::Accept), one layer on every hook |
//! | [`tls`], [`sasl`], [`proxy`] | certificates and TLS facts, AUTH exchanges, PROXY protocol |
//!
//! Policy layers (SPF, DKIM, DMARC, rate limits, ...) are in the companion
//! crate `smtpsrv-middleware`. Limits and defences are listed in
//! `SECURITY.md`.
//!
//! ```no_run
//! use smtpsrv::{BoxError, Context, Server};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let handler = tower::service_fn(|ctx: Context| async move {
//!         // A message with neither a header field nor a blank line fails
//!         // here and gets a permanent `554 5.6.0` by itself (the sender does
//!         // not retry what can never parse): `?` is all it takes.
//!         let email = ctx.parse()?;
//!         println!("{}: {:?}", ctx.id(), email.subject());
//!         Ok::<_, BoxError>(()) // 250 2.0.0 OK; any other error: 451, retried
//!     });
//!     Server::builder()
//!         .hostname("mx.example.com")
//!         .build()
//!         .bind("127.0.0.1:2525")
//!         .await?
//!         .serve(handler)
//!         .await
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
mod budget;
pub mod codec;
mod config;
mod conn;
mod context;
mod digits;
pub mod email;
mod envelope;
pub mod extensions;
mod hooks;
mod info;
pub mod layer;
pub mod observe;
pub mod proto;
pub mod proxy;
mod reply_conv;
pub mod sasl;
mod server;
pub mod session;
mod shutdown;
pub mod stage;
mod streaming;
pub mod tls;

pub use body::{Body, BodyError};
pub use context::{Context, MessageId};
pub use envelope::{Envelope, Recipient};
pub use extensions::{Extensions, SharedExtensions};
pub use info::{Greeting, Identity, SessionId, SessionInfo};
pub use proto::{Address, LineEndings, Reply, split_address};
pub use reply_conv::{BoxError, Delivery, IntoDelivery, IntoReply, PerRecipient, error_reply};
pub use server::{Builder, CloneService, Serve, Server, WithGracefulShutdown, bind_listener};
pub use stage::{Authenticate, Connect, Helo, MailFrom, RcptTo, Stage, StageKind};

/// tower, re-exported so handlers need no separate dependency to name it.
pub use tower;

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

//! smtpsrv: write SMTP servers like a boss.
//!
//! A tokio-util codec decodes SMTP, a pure state machine ([`session`])
//! applies the protocol, and every completed message reaches a
//! [`tower::Service<Context>`](tower::Service). Early decisions at connect,
//! HELO, AUTH, MAIL and RCPT are tower services too, so the same layers
//! (timeouts, concurrency limits, rate limits, tracing) apply everywhere.
//!
//! ```no_run
//! use smtpsrv::{BoxError, Context, Server};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let handler = tower::service_fn(|ctx: Context| async move {
//!         let email = ctx.parse()?;
//!         println!("{}: {:?}", ctx.id(), email.subject());
//!         Ok::<_, BoxError>(()) // 250 2.0.0 OK
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

mod budget;
pub mod codec;
mod config;
mod conn;
mod context;
pub mod email;
mod envelope;
pub mod extensions;
mod hooks;
mod info;
pub mod proto;
pub mod proxy;
mod reply_conv;
pub mod sasl;
mod server;
pub mod session;
pub mod stage;
pub mod tls;

pub use context::{Context, MessageId};
pub use envelope::{Envelope, Recipient};
pub use extensions::{Extensions, SharedExtensions};
pub use info::{Greeting, Identity, SessionId, SessionInfo};
pub use proto::{Address, LineEndings, Reply, split_address};
pub use reply_conv::{BoxError, Delivery, IntoDelivery, IntoReply, PerRecipient, error_reply};
pub use server::{Builder, Serve, Server, WithGracefulShutdown, bind_listener};
pub use stage::{Authenticate, Connect, Helo, MailFrom, RcptTo, Stage, StageKind};

/// tower, re-exported so handlers need no separate dependency to name it.
pub use tower;

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

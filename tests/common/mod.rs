//! The one harness of the core crate's integration tests: a real [`Server`]
//! on `127.0.0.1:0` that records every [`Context`] ([`TestServer`]), a raw
//! scripted SMTP client over TCP or TLS ([`Client`]), a throw-away PKI
//! ([`Pki`]), and process probes (memory, sockets, panics) for the hostile
//! and conservation tests.
//!
//! Everything here is bounded in time ([`TIMEOUT`], also named [`STEP`]), so
//! a server bug makes a test fail with a message instead of hanging the
//! suite.
//!
//! Two shapes of test share it. The first lets the server record the
//! messages and asserts on the exchange code by code:
//!
//! ```ignore
//! mod common;
//! use common::{Client, TestServer};
//!
//! let server = TestServer::start(smtpsrv::Server::builder()).await;
//! let mut c = Client::connect(server.addr).await; // reads the 220 greeting
//! c.cmd_expect("EHLO client.example", 250).await;
//! c.cmd_expect("QUIT", 221).await;
//! c.expect_eof().await;
//! assert!(server.recorder.is_empty());
//! server.shutdown().await;
//! ```
//!
//! The second passes its own service (here a recorder answering `250`),
//! reads whole replies and checks their enhanced status codes:
//!
//! ```ignore
//! let (service, mut inbox) = common::recorder();
//! let server = TestServer::serve(Server::builder(), service).await;
//! let mut c = server.connect().await;
//! c.ehlo().await;
//! c.send_hi("a@example.org", "b@example.net").await;
//! assert_eq!(inbox.next().await.message().len(), 4);
//! ```
//!
//! [`Server`]: smtpsrv::Server
//! [`Context`]: smtpsrv::Context
#![allow(dead_code)] // each test crate uses a different part of the harness
#![allow(unused_imports)] // ... including of these re-exports

mod client;
mod pki;
mod probe;
mod rng;
mod server;
mod services;

use std::future::Future;
use std::time::Duration;

pub use client::{Client, PrefixFirstWrite, RawReply, Reply, assert_admits, tls_handshake};
pub use pki::{Leaf, Pki};
pub use probe::{
    alone, assert_no_library_panic, beside_others, open_sockets, rss_kib, watch_panics,
};
pub use rng::XorShift;
pub use server::TestServer;
pub use services::{
    Answering, Inbox, PASSWORD, Recorder, Recording, USER, accept_all, authenticator, b64,
    plain_response, recorder, recorder_with,
};

/// The upper bound of every single wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long any single step of a test may wait before it fails (the same
/// bound as [`TIMEOUT`], under the name the TLS and extension tests use).
pub const STEP: Duration = TIMEOUT;

/// Awaits `fut` for at most [`TIMEOUT`], panicking with `what` otherwise.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

/// Awaits one step of a test for at most [`STEP`]: [`within`] without a
/// label, for steps whose line number says enough.
#[track_caller]
pub fn step<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(STEP, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {STEP:?} waiting for the server (step at {caller})"),
        }
    }
}

//! smtpsrv-inbox: a test inbox in one binary — SMTP on 127.0.0.1:1025, a web
//! UI with live updates and a Mailpit-compatible REST API v1 on
//! 127.0.0.1:8025, messages in SQLite with full-text search.
//!
//! ```text
//! SMTP client ─> smtpsrv::Server ─> service::Inbox (Service<Context>) ─┐
//!                                                                       ├─> store::Store ─> SQLite (WAL, FTS5)
//! browser / CI helper ─> axum Router (api, ui) ───────────────────────-─┘        │
//!                        /api/events (SSE) <── store events after each commit <──┘
//! ```
//!
//! Both servers run on one tokio runtime and stop together: [`run`] takes
//! one shutdown signal for both.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod id;
pub mod mime;
pub mod packed;
pub mod search;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod time;
pub mod ui;

use std::{future::Future, path::PathBuf};

use smtpsrv::BoxError;

/// What [`run`] needs besides the SMTP server settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// SMTP listen address (`--smtp`).
    pub smtp: String,
    /// HTTP listen address (`--listen`).
    pub listen: String,
    /// Database file (`--database`); `None`: a temporary one.
    pub database: Option<PathBuf>,
    /// Messages kept (`--max`); 0: no limit.
    pub max: usize,
}

/// Runs the inbox until `signal` completes, then stops both servers
/// gracefully and closes the database after the last write.
///
/// Prints `smtp: ADDR` and `http: http://ADDR/` on standard output once both
/// listen (tests start the binary on port 0 and read them).
pub async fn run(
    smtp: smtpsrv::Builder,
    options: Options,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let store = store::Store::open(options.database.as_deref(), options.max)?;
    let server = smtp
        .build()
        .bind(&options.smtp)
        .await
        .map_err(|e| format!("SMTP listen on {}: {e}", options.smtp))?;
    let http = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|e| format!("HTTP listen on {}: {e}", options.listen))?;
    for addr in server.local_addrs() {
        println!("smtp: {addr}");
    }
    println!("http: http://{}/", http.local_addr()?);
    tracing::info!(database = %store.path().display(), max = options.max, "inbox ready");

    let cancel = shutdown::CancelSignal::default();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        signal.await;
        trigger.cancel();
    });
    let smtp_stop = cancel.clone();
    let smtp = server
        .serve(service::Inbox::new(store.clone()))
        .with_graceful_shutdown(async move { smtp_stop.cancelled().await });
    let http_stop = cancel.clone();
    let app = api::router(api::AppState {
        store: store.clone(),
        shutdown: cancel.clone(),
    });
    let http =
        axum::serve(http, app).with_graceful_shutdown(async move { http_stop.cancelled().await });
    let (smtp_result, http_result) = tokio::join!(smtp.into_future(), http.into_future());
    store.close().await;
    tracing::info!("inbox stopped");
    smtp_result?;
    http_result?;
    Ok(())
}

//! smtpsrv inside an axum application: one tokio runtime, one shutdown
//! signal for both servers.
//!
//! SMTP on 127.0.0.1:2525 counts the messages it accepts; HTTP on
//! 127.0.0.1:8080 answers `GET /messages` with the count. Ctrl-C stops both:
//! each stops accepting, finishes what is in progress (an SMTP transaction,
//! an HTTP request), and `main` returns once both are done.
//!
//! ```sh
//! cargo run --example with_axum
//! swaks --server 127.0.0.1:2525 --from ann@example.org --to bob@example.com
//! curl http://127.0.0.1:8080/messages     # 1
//! ```

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use smtpsrv::{BoxError, Context, Reply, Server};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let received = Arc::new(AtomicU64::new(0));

    // SMTP: a tower service, like the axum routes.
    let handler = {
        let received = received.clone();
        tower::service_fn(move |ctx: Context| {
            let received = received.clone();
            async move {
                received.fetch_add(1, Ordering::Relaxed);
                Ok::<_, BoxError>(Reply::queued(ctx.id()))
            }
        })
    };
    let smtp = Server::builder()
        .hostname("localhost")
        .build()
        .bind("127.0.0.1:2525")
        .await?;

    // HTTP: reads what the SMTP side counted.
    let app =
        Router::new()
            .route(
                "/messages",
                get(|State(n): State<Arc<AtomicU64>>| async move {
                    n.load(Ordering::Relaxed).to_string()
                }),
            )
            .with_state(received);
    let http = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;

    // One signal, handed to both servers as a future each.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }
    });
    let smtp = smtp
        .serve(handler)
        .with_graceful_shutdown(stop.clone().cancelled_owned());
    let http = axum::serve(http, app).with_graceful_shutdown(stop.cancelled_owned());

    // Both run until the signal; an error from either is reported.
    let (smtp, http) = tokio::join!(smtp.into_future(), http.into_future());
    smtp?;
    http?;
    Ok(())
}

//! submission: a mail submission server, port 587 style (RFC 6409). Clients
//! must STARTTLS, then AUTH; each login may only use its own sender
//! addresses and send so many messages a minute. Accepted mail goes into a
//! Maildir (a real server would relay it on).
//!
//! ```text
//! cargo run --example submission -- --listen 0.0.0.0:587 \
//!     --tls-cert cert.pem --tls-key key.pem \
//!     --user ann:secret --allow ann=ann@example.com --allow ann=@example.org \
//!     --rate-limit 30 --maildir ./maildir
//! ```
//!
//! The policy is a stack of tower layers on the `MAIL FROM` hook, each
//! refusing with its own reply before any data is read:
//! `530 5.7.0` not authenticated, `553 5.7.1` sender not allowed for the
//! login, `450 4.7.0` over the login's rate limit. TLS is the server's job
//! (`530 5.7.0` for anything but EHLO/STARTTLS before it), and so is the
//! size limit (advertised as `SIZE`, enforced while the message streams in).

#[path = "common/mod.rs"]
mod common;

use std::future::ready;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use smtpsrv::tls::TlsConfig;
use smtpsrv::{BoxError, Context, MailFrom, Reply, Server};
use smtpsrv_middleware::rate_limit::{Quota, RateLimitLayer};
use smtpsrv_middleware::require_auth::{RequireAuthLayer, SenderRules};
use smtpsrv_middleware::trace::TraceLayer;
use tower::ServiceBuilder;
use tracing_subscriber::EnvFilter;

use crate::common::accounts::{User, authenticator, parse_user};
use crate::common::maildir::Maildir;
use crate::common::metrics::MetricsOption;
use crate::common::trace::trace_header;

/// An authenticated submission server.
#[derive(Parser, Debug)]
#[command(name = "submission")]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:587")]
    listen: String,

    /// PEM certificate chain (STARTTLS is required).
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,

    /// An account for AUTH PLAIN/LOGIN; repeatable.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user, required = true)]
    users: Vec<User>,

    /// A sender the login may use: an address, `@domain`, `<>` or `*`;
    /// repeatable. A login without one may send as nobody.
    #[arg(long = "allow", value_name = "IDENTITY=PATTERN", value_parser = parse_allow)]
    allowed: Vec<(String, String)>,

    /// Messages per minute and login (that many may come at once).
    #[arg(long, value_name = "PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,

    /// Largest message accepted, advertised as SIZE.
    #[arg(long, value_name = "N", default_value_t = 25 << 20)]
    max_message_bytes: usize,

    /// Maildir to deliver into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./maildir")]
    maildir: PathBuf,

    /// Accept every message and drop it.
    #[arg(long, conflicts_with = "maildir")]
    discard: bool,

    /// Name in the banner, EHLO reply and Received header.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    hostname: String,

    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

fn parse_allow(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((identity, pattern)) if !identity.is_empty() && !pattern.is_empty() => {
            Ok((identity.into(), pattern.into()))
        }
        _ => Err("expected IDENTITY=PATTERN".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();

    let metrics = MetricsOption::start(args.metrics.as_deref())?;
    let rules = args
        .allowed
        .iter()
        .fold(SenderRules::new(), |rules, (id, pattern)| {
            rules.allow(id, pattern)
        });
    let rate_limit = args
        .rate_limit
        .map(|n| RateLimitLayer::per_identity(Quota::per(n, Duration::from_secs(60))));
    // Outermost first: log, then require a login allowed to use this
    // sender, then count the message against that login's quota (a refused
    // sender costs nothing).
    let on_mail = ServiceBuilder::new()
        .layer(metrics.layer())
        .layer(TraceLayer::new())
        .layer(RequireAuthLayer::new().senders(rules))
        .option_layer(rate_limit)
        .service_fn(|_: MailFrom| ready(Ok::<_, BoxError>(Reply::ok())));

    // Before listening: never accept a client into a server that cannot
    // store anything.
    let maildir = if args.discard {
        None
    } else {
        Some(Maildir::create(&args.maildir, &args.hostname)?)
    };
    let hostname: Arc<str> = args.hostname.as_str().into();
    let handler = ServiceBuilder::new()
        .layer(metrics.layer())
        .layer(TraceLayer::new())
        .service_fn(move |ctx: Context| store(ctx, maildir.clone(), Arc::clone(&hostname)));

    let server = metrics
        .configure(Server::builder())
        .hostname(&args.hostname)
        .tls(TlsConfig::from_pem_files(&args.tls_cert, &args.tls_key)?)
        .require_tls(true)
        .authenticator(authenticator(&args.users))
        .max_message_bytes(args.max_message_bytes)
        .on_mail(on_mail)
        .build()
        .bind(&args.listen)
        .await?;
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    metrics.serve(&server).await?;
    server
        .serve(handler)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Writes the message into the Maildir (unless `--discard`) behind its
/// trace header fields; 250 only once it is on disk.
async fn store(
    ctx: Context,
    maildir: Option<Arc<Maildir>>,
    hostname: Arc<str>,
) -> Result<Reply, BoxError> {
    if let Some(maildir) = maildir {
        let header = trace_header(&ctx, &hostname);
        let message = ctx.body().bytes().await?;
        maildir
            .deliver_with(maildir.line_ends_for(&ctx), header, message)
            .await?;
    }
    Ok(Reply::queued(ctx.id()))
}

//! mailsink: a complete mail server that stores what it receives in a
//! Maildir, with STARTTLS, implicit TLS, AUTH, SPF, rate limits, LMTP and
//! the PROXY protocol.
//!
//! ```text
//! cargo run --release --example mailsink -- --maildir ./maildir
//! cargo run --release --example mailsink -- --discard            # benchmarks
//! cargo run --release --example mailsink -- --listen 0.0.0.0:25 \
//!     --spf reject --rate-limit 30
//! cargo run --release --example mailsink -- --listen 0.0.0.0:587 \
//!     --tls-cert cert.pem --tls-key key.pem --require-tls \
//!     --user ann:secret --require-auth
//! ```
//!
//! Messages stream: the handler is called when DATA starts and writes into
//! the Maildir's `tmp/` while the message arrives, then fsyncs and renames
//! it into `new/` after the end of data (a failed message's file is
//! removed), so memory per connection does not grow with message size.
//! `--buffered` (implied by `--parse`) holds each message whole first.
//!
//! Every message answered 250 is in `<maildir>/new/` (with LF line ends,
//! named as Maildir++ readers expect; `--keep-wire-bytes` keeps CRLF), preceded by
//! `Return-Path` and `Received` header fields (and `Received-SPF` with
//! `--spf tag|reject`). One line per bound address, `listening on ADDR`,
//! goes to stdout (so `--listen 127.0.0.1:0` can be used and the port read
//! back); logs go to stderr (`RUST_LOG` sets the level, `info` by
//! default). Ctrl-C or SIGTERM stops it gracefully: no new
//! connections, transactions in progress finish, then it exits; SIGHUP
//! reloads the TLS certificate files.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod ops;

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use smtpsrv::proxy::TrustedProxies;
use smtpsrv::tls::TlsConfig;
use smtpsrv::{BoxError, Builder, Context, MailFrom, Reply, Server};
use smtpsrv_middleware::Resolver;
use smtpsrv_middleware::rate_limit::{Quota, RateLimitLayer};
use smtpsrv_middleware::spf::SpfLayer;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::common::accounts::{User, authenticator, parse_user};
use crate::common::maildir::Maildir;
use crate::common::trace;

/// A mail server that stores every message it accepts in a Maildir.
#[derive(Parser, Debug)]
#[command(name = "mailsink", version)]
struct Args {
    /// Plain SMTP address (STARTTLS offered when a certificate is given);
    /// repeatable. Default 127.0.0.1:2525 unless --tls-listen is given.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,

    /// Maildir to deliver into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./maildir")]
    maildir: PathBuf,

    /// Accept every message and drop it (for benchmarks).
    #[arg(long, conflicts_with = "maildir")]
    discard: bool,

    /// Parse every message (MIME: headers, bodies, attachments) before
    /// storing or discarding it, and log its subject; refuses messages
    /// without headers (554 5.6.0). Shows what parsing costs.
    #[arg(long)]
    parse: bool,
    /// Hold each message whole before storing it (in memory up to
    /// --spill-threshold, in a temporary file beyond) instead of writing it
    /// into the Maildir's tmp/ while it arrives. Implied by --parse.
    #[arg(long)]
    buffered: bool,
    /// With --buffered/--parse: messages larger than this many octets are
    /// held in a temporary file, not in memory (default 1 MiB).
    #[arg(long, value_name = "N")]
    spill_threshold: Option<usize>,
    /// Directory for those temporary files (default: the system's).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,

    /// Name in the banner, EHLO reply and Received header
    /// (default: this machine's host name).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,

    /// PEM certificate chain; with --tls-key enables STARTTLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Implicit-TLS address (port 465 style); repeatable.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    tls_listen: Vec<String>,

    /// Refuse mail on connections that did not STARTTLS.
    #[arg(long, requires = "tls_cert")]
    require_tls: bool,

    /// An account for AUTH PLAIN/LOGIN; repeatable. Enables AUTH.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    users: Vec<User>,

    /// Offer AUTH without TLS too.
    #[arg(long, requires = "users")]
    allow_insecure_auth: bool,

    /// Refuse mail from clients that did not authenticate.
    #[arg(long, requires = "users")]
    require_auth: bool,

    /// Largest message accepted, advertised as SIZE (default 25 MiB).
    #[arg(long, value_name = "N")]
    max_message_bytes: Option<usize>,

    /// Recipients per message (default 100).
    #[arg(long, value_name = "N")]
    max_recipients: Option<usize>,

    /// Seconds a client may stay silent between commands (default 300).
    #[arg(long, value_name = "SECS")]
    command_timeout: Option<u64>,

    /// Connections served at once (default 10000).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Connections from one client IP at once (default 100).
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,

    /// Worker threads: 0 (the default) uses one per CPU the process may run
    /// on; 1 runs everything on one thread, which costs the least CPU per
    /// message, and is what 0 means when the process may use only one CPU.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,

    /// SPF check of the sender at MAIL FROM.
    #[arg(long, value_enum, default_value_t = SpfMode::Off)]
    spf: SpfMode,

    /// DNS server for the SPF lookups, e.g. 127.0.0.1:53; repeatable
    /// (default: the system's, from /etc/resolv.conf).
    #[arg(long, value_name = "ADDR")]
    dns_server: Vec<SocketAddr>,

    /// Messages per minute and client IP (counted at MAIL FROM; that many
    /// may come at once, then one every 60/PER_MINUTE seconds). Over it:
    /// 450 4.7.0, the client retries later.
    #[arg(long, value_name = "PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,

    /// Speak LMTP instead of SMTP.
    #[arg(long)]
    lmtp: bool,

    /// Expect a PROXY protocol header from these peers (addresses or CIDR
    /// networks separated by commas), e.g. 127.0.0.1,10.0.0.0/8.
    #[arg(long, value_name = "TRUSTED_NETWORKS", value_parser = parse_trusted)]
    proxy_protocol: Option<TrustedProxies>,

    #[command(flatten)]
    ops: ops::OpsArgs,

    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SpfMode {
    /// No SPF check.
    Off,
    /// Record the result in a Received-SPF header of the stored message.
    Tag,
    /// Refuse senders whose SPF check fails (550 5.7.23); tag the others.
    Reject,
}

fn parse_trusted(s: &str) -> Result<TrustedProxies, String> {
    let trusted = TrustedProxies::parse(s).map_err(|e| e.to_string())?;
    if trusted.is_empty() {
        return Err("no network given".into());
    }
    Ok(trusted)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). A filter of
/// levels per target (`info`, `smtpsrv=debug,warn`: what nearly everyone
/// writes) is a `Targets` filter; one with span or field directives
/// (`[smtp.session{peer=...}]=debug`) is an `EnvFilter`. Why both: an
/// `EnvFilter` looks up every span in a locked map each time it is entered
/// or left, several times per message, to support those directives; for
/// plain levels that is ~1,000 instructions per message for nothing.
fn init_logging() {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match spec.parse::<Targets>() {
        Ok(targets) => tracing_subscriber::registry()
            .with(fmt)
            .with(targets)
            .init(),
        Err(_) => tracing_subscriber::registry()
            .with(fmt)
            .with(EnvFilter::new(spec))
            .init(),
    }
}

/// The runtime `--threads` asks for. One thread, asked for or all the
/// process may use (`taskset`, a cgroup's CPU quota), is the current-thread
/// runtime: a multi-thread runtime with one worker costs more per message
/// for nothing (its worker parks and is woken through a futex, and
/// `block_on` hands work across threads). Otherwise tokio's default stays,
/// `TOKIO_WORKER_THREADS` included.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = || {
        std::env::var_os("TOKIO_WORKER_THREADS").is_none()
            && std::thread::available_parallelism().is_ok_and(|n| n.get() == 1)
    };
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 if one_cpu() => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let runtime = match runtime(args.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailsink: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailsink: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    // Registered before listening, so that a signal is never lost to the
    // default action (which would kill the process mid-transaction).
    let ops = args.ops.start()?;
    let shutdown = ops.stopping(shutdown_signal()?);

    let hostname = args.hostname.clone().unwrap_or_else(system_hostname);
    // Before listening: a client must never be accepted into a server that
    // cannot store anything.
    let handoff = cluster::handoff(&args.cluster, &hostname).await?;
    let maildir = if args.discard || handoff.is_some() {
        None
    } else {
        let maildir = Maildir::with_line_ends(&args.maildir, &hostname, args.ops.line_ends())
            .map_err(|e| format!("cannot use Maildir {}: {e}", args.maildir.display()))?;
        Some(maildir)
    };
    let mut builder = ops.configure(configure(&args, &hostname)?);
    if let Some(handoff) = &handoff {
        builder = builder.max_message_bytes(
            handoff.max_message_bytes(args.max_message_bytes.unwrap_or(25 << 20)),
        );
    }
    let mut server = ops.inherit_listeners(builder.build())?;
    let plain = if args.listen.is_empty() && args.tls_listen.is_empty() && !args.ops.systemd {
        vec!["127.0.0.1:2525".to_owned()]
    } else {
        args.listen.clone()
    };
    for addr in &plain {
        let tcp = bind(addr).await?;
        println!("listening on {}", tcp.local_addr()?);
        server = server.listener(tcp);
    }
    for addr in &args.tls_listen {
        let tcp = bind(addr).await?;
        println!("listening on {} (implicit TLS)", tcp.local_addr()?);
        server = server.implicit_tls_listener(tcp);
    }
    ops.ready(&server).await?;

    if let Some(handoff) = handoff {
        server
            .serve(ServiceBuilder::new().layer(ops.layer()).service(handoff))
            .with_graceful_shutdown(shutdown)
            .await?;
        tracing::info!("stopped");
        return Ok(());
    }
    match maildir {
        None => {
            tracing::info!(%hostname, "discarding every message");
            let parse = args.parse;
            server
                .serve(
                    ServiceBuilder::new()
                        .layer(ops.layer())
                        .service_fn(move |ctx| discard(ctx, parse)),
                )
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        Some(maildir) => {
            tracing::info!(%hostname, maildir = %args.maildir.display(), "storing messages");
            let hostname: Arc<str> = hostname.into();
            let parse = args.parse;
            let handler =
                ServiceBuilder::new()
                    .layer(ops.layer())
                    .service_fn(move |ctx: Context| {
                        store(ctx, Arc::clone(&maildir), Arc::clone(&hostname), parse)
                    });
            server
                .serve(handler)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The server's settings from the command line.
fn configure(args: &Args, hostname: &str) -> Result<Builder, BoxError> {
    let mut builder = Server::builder()
        .hostname(hostname)
        .lmtp(args.lmtp)
        // The JetStream hand-off publishes the whole message in one payload.
        .streaming(!(args.buffered || args.parse || args.cluster.nats.is_some()));
    if let Some(n) = args.spill_threshold {
        builder = builder.spill_threshold(n);
    }
    if let Some(dir) = &args.spill_dir {
        builder = builder.spill_dir(dir);
    }
    if let Some(n) = args.max_message_bytes {
        builder = builder.max_message_bytes(n);
    }
    if let Some(n) = args.max_recipients {
        builder = builder.max_recipients(n);
    }
    if let Some(secs) = args.command_timeout {
        builder = builder.command_timeout(Duration::from_secs(secs));
    }
    if let Some(n) = args.max_connections_per_ip {
        builder = builder.max_connections_per_ip(n);
    }
    if let Some(n) = args.max_connections {
        builder = builder.max_connections(n);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = TlsConfig::from_pem_files(cert, key)?;
        reload_on_sighup(tls.clone())?;
        builder = builder.tls(tls).require_tls(args.require_tls);
    }
    if !args.users.is_empty() {
        builder = builder
            .authenticator(authenticator(&args.users))
            .allow_insecure_auth(args.allow_insecure_auth)
            .require_auth(args.require_auth);
    }
    if let Some(trusted) = args.proxy_protocol.clone() {
        builder = builder.proxy_protocol(trusted);
    }
    mail_policy(args, hostname, builder)
}

/// The `MAIL FROM` hook, when `--rate-limit` or `--spf` ask for one: the
/// policy layers decide before any data is read. The SPF outcome stays on
/// the transaction, so the stored message gets its `Received-SPF` field.
fn mail_policy(args: &Args, hostname: &str, builder: Builder) -> Result<Builder, BoxError> {
    let rate_limit = args
        .rate_limit
        .map(|per_minute| {
            let quota = Quota::per(per_minute, Duration::from_secs(60));
            cluster::rate_limit(&args.cluster, RateLimitLayer::per_ip(quota))
        })
        .transpose()?;
    let spf = match args.spf {
        SpfMode::Off => None,
        mode => {
            let resolver = if args.dns_server.is_empty() {
                Resolver::system()
            } else {
                Resolver::nameservers(args.dns_server.iter().copied())
            }
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
            let spf = SpfLayer::new(resolver).hostname(hostname);
            Some(if mode == SpfMode::Reject {
                spf.reject_fail()
            } else {
                spf
            })
        }
    };
    if rate_limit.is_none() && spf.is_none() {
        return Ok(builder);
    }
    // Rate limit first: a client over its quota costs no DNS lookups.
    let on_mail = ServiceBuilder::new()
        .option_layer(rate_limit)
        .option_layer(spf)
        .service_fn(|_: MailFrom| ready(Ok::<_, BoxError>(Reply::ok())));
    Ok(builder.on_mail(on_mail))
}

/// Writes the message into the Maildir behind its trace header fields; 250
/// only once it is safely on disk. An error becomes 451: the client retries.
async fn store(
    ctx: Context,
    maildir: Arc<Maildir>,
    hostname: Arc<str>,
    parse: bool,
) -> Result<Reply, BoxError> {
    if parse {
        parsed(&ctx)?;
    }
    let header = trace::trace_header(&ctx, &hostname);
    let (file, size) = write_message(&ctx, &maildir, header)
        .await
        .inspect_err(|e| tracing::error!(id = %ctx.id(), error = %e, "cannot store message"))?;
    tracing::info!(
        id = %ctx.id(),
        peer = %ctx.peer_addr().ip(),
        from = ctx.reverse_path().map_or("", |a| a.as_str()),
        rcpts = ctx.recipients().len(),
        size,
        file,
        "stored"
    );
    Ok(Reply::queued(ctx.id()))
}

/// Writes the message into `tmp/` chunk by chunk as the body yields them
/// (as they arrive, in streaming mode), then commits it into `new/`. A body
/// error (the transfer failed) drops the file, which removes it.
async fn write_message(
    ctx: &Context,
    maildir: &Arc<Maildir>,
    header: Vec<u8>,
) -> Result<(String, u64), BoxError> {
    let mut file = blocking({
        let maildir = Arc::clone(maildir);
        let line_ends = maildir.line_ends_for(ctx);
        move || {
            let mut file = maildir.begin_with(line_ends)?;
            file.write(&header)?;
            Ok(file)
        }
    })
    .await?;
    // Counted here: a streaming body's size is known only at its end.
    let mut size = 0;
    let mut chunks = ctx.body().chunks();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        file = blocking(move || file.write(&chunk).map(|()| file)).await?;
    }
    Ok((blocking(move || file.commit()).await?, size))
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// Accepts and drops: the cheapest possible handler (in streaming mode it
/// answers at once and the server drains the body; its log line is at
/// debug level so that benchmarks do not measure the logger).
fn discard(ctx: Context, parse: bool) -> Ready<Result<(), Reply>> {
    if parse && let Err(refusal) = parsed(&ctx) {
        return ready(Err(refusal));
    }
    tracing::debug!(id = %ctx.id(), size = ctx.size(), "discarded");
    ready(Ok(()))
}

/// Parses the message and logs its subject; a refusal when it has no headers.
fn parsed(ctx: &Context) -> Result<(), Reply> {
    match ctx.parse() {
        Ok(email) => {
            tracing::debug!(
                id = %ctx.id(),
                subject = email.subject().unwrap_or(""),
                attachments = email.attachments().len(),
                "parsed"
            );
            Ok(())
        }
        Err(e) => Err(Reply::malformed_message().with_text(format!("Cannot parse message: {e}"))),
    }
}

async fn bind(addr: &str) -> Result<TcpListener, BoxError> {
    smtpsrv::bind_listener(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}").into())
}

/// Completes on Ctrl-C or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            tracing::info!(signal = name, "shutting down gracefully");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down gracefully");
    })
}

/// Re-reads the certificate files on SIGHUP (after a renewal).
fn reload_on_sighup(tls: TlsConfig) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificates reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; keeping the old ones")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tls);
    Ok(())
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

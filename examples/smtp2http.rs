//! smtp2http: receive mail, POST it as JSON to a webhook.
//!
//! ```text
//! cargo run --example smtp2http -- --listen 0.0.0.0:2525 --webhook http://127.0.0.1:8080/mail
//! ```
//!
//! A drop-in for alash3al/smtp2http: its flags are accepted with their
//! meaning, with one or two dashes as Go's `flag` package allows
//! (`-webhook=URL`, `--webhook URL`):
//!
//! | flag | meaning |
//! |---|---|
//! | `--listen ADDR` | SMTP address (repeatable; `:25` means every interface) |
//! | `--webhook URL` (alias `--url`) | where to POST |
//! | `--name NAME` (alias `--hostname`) | name in the banner and EHLO reply |
//! | `--msglimit BYTES` (alias `--max-message-bytes`) | largest message, advertised as SIZE |
//! | `--timeout.read SECS` | how long a client may stay silent (per command; in DATA at least the webhook's time, which the same timeout bounds) |
//! | `--timeout.write SECS` | how long a reply may take to be written |
//! | `--domain DOMAIN` | refuse recipients of other domains (`550 5.7.1`, repeatable) |
//!
//! The payload keeps the field names of go-smtpsrv's smtp2http (`id`, `date`,
//! `subject`, `references`, `spf`, `body{text,html}`, `addresses{...}`,
//! `attachments[]`, `embedded_files[]`) and fixes what it got wrong:
//!
//! - `envelope{from, to[]}` carries the SMTP envelope with *every*
//!   recipient (the Go program kept only the last one);
//! - `addresses` are the message's header addresses, lists where a header
//!   may hold several (`addresses.to` was the single envelope recipient);
//! - the raw message is available as `raw` (base64) with `--raw`;
//! - any 2xx answer counts as delivered (not just 200); redirects are not
//!   followed (a 302 would turn the POST into a GET and lose the mail);
//! - a webhook that fails (5xx, connection refused, timeout) is retried
//!   with exponential backoff (0.5 s, 1 s, 2 s, ...) for at most
//!   `--retry-for` seconds (new attempts start only within that time, each
//!   bounded by `--timeout`); then the client gets `451` and retries later,
//!   instead of the Go program's permanent `554` that bounced the mail;
//! - a 4xx is the webhook *refusing* the message: it is not retried, and
//!   the client gets `554 5.7.1`, a permanent refusal, because the same
//!   payload would be refused again (retrying would only delay the bounce
//!   the sender needs to see). The two 4xx that HTTP defines as temporary,
//!   `408 Request Timeout` and `429 Too Many Requests`, answer `451 4.7.0`.
//!
//! The address printed first on stdout is `listening on ADDR`. With
//! `--metrics ADDR`, Prometheus metrics are served on `/metrics` (and a
//! health check on `/healthz`).

#[path = "common/metrics.rs"]
mod metrics;

use std::future::{Ready, ready};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::Parser;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use smtpsrv::email::{Attachment, Email, Mailbox};
use smtpsrv::{BoxError, Context, RcptTo, Reply, Server};
use tokio::time::Instant;
use tower::retry::{Policy, Retry};
use tower::{ServiceBuilder, ServiceExt as _};
use tracing_subscriber::EnvFilter;

/// Receives mail and POSTs each message as JSON to a webhook.
#[derive(Parser)]
#[command(name = "smtp2http", version)]
struct Args {
    /// SMTP address to listen on; repeatable (`:25` listens on every
    /// interface, as in the Go program).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    listen: Vec<String>,
    /// Webhook URL (http or https).
    #[arg(long, visible_alias = "url", value_name = "URL")]
    webhook: reqwest::Url,
    /// Seconds one webhook attempt may take to answer.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// Seconds during which a failing webhook (5xx, unreachable, timeout)
    /// is retried with backoff before answering 451; 0: no retry.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    retry_for: u64,
    /// Name in the banner and EHLO reply.
    #[arg(
        long,
        visible_alias = "hostname",
        value_name = "NAME",
        default_value = "localhost"
    )]
    name: String,
    /// Largest message accepted in bytes, advertised as SIZE (default 25 MiB).
    #[arg(long, visible_alias = "max-message-bytes", value_name = "BYTES")]
    msglimit: Option<usize>,
    /// Seconds a client may stay silent: between commands, and between
    /// reads of a message (default 300).
    #[arg(long = "timeout.read", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_read: Option<u64>,
    /// Seconds a reply may take to be written to a slow client (default 300).
    #[arg(long = "timeout.write", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_write: Option<u64>,
    /// Accept only recipients of this domain (repeatable); the others get
    /// 550 5.7.1 at RCPT TO.
    #[arg(long, value_name = "DOMAIN")]
    domain: Vec<String>,
    /// Include the raw message, base64-encoded, as `raw`.
    #[arg(long)]
    raw: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// The long flags, so that Go-style single-dash spellings (`-webhook`,
/// `-timeout.read=5`) can be read as their double-dash form.
const LONG_FLAGS: &[&str] = &[
    "listen",
    "webhook",
    "url",
    "timeout",
    "retry-for",
    "name",
    "hostname",
    "msglimit",
    "max-message-bytes",
    "timeout.read",
    "timeout.write",
    "domain",
    "raw",
    "metrics",
    "help",
    "version",
];

/// `-flag` and `-flag=value` (Go's `flag` syntax) become `--flag...`.
fn go_style(args: impl Iterator<Item = String>) -> impl Iterator<Item = String> {
    args.enumerate().map(|(i, arg)| {
        let name = arg
            .strip_prefix('-')
            .filter(|rest| !rest.starts_with('-'))
            .map(|rest| rest.split_once('=').map_or(rest, |(name, _)| name));
        match name {
            Some(name) if i > 0 && LONG_FLAGS.contains(&name) => format!("-{arg}"),
            _ => arg,
        }
    })
}

/// A listen address as the Go program takes it: `:25` is every interface.
fn listen_addr(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    }
}

/// The JSON body of one POST.
#[derive(Serialize)]
struct Payload {
    /// Message-ID (without angle brackets).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Date, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    references: Vec<String>,
    /// The SPF result, once an SPF layer provides one.
    #[serde(skip_serializing_if = "Option::is_none")]
    spf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resent_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resent_id: Option<String>,
    body: Body,
    addresses: Addresses,
    envelope: Envelope,
    attachments: Vec<File>,
    embedded_files: Vec<EmbeddedFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
}

#[derive(Serialize)]
struct Body {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<String>,
}

/// Header addresses. `from` and `resent_from` stay single objects as in
/// the Go payload (the first mailbox; `null` when absent).
#[derive(Serialize)]
struct Addresses {
    from: Option<Address>,
    to: Vec<Address>,
    reply_to: Vec<Address>,
    cc: Vec<Address>,
    bcc: Vec<Address>,
    in_reply_to: Vec<String>,
    resent_from: Option<Address>,
    resent_to: Vec<Address>,
    resent_cc: Vec<Address>,
    resent_bcc: Vec<Address>,
}

#[derive(Serialize)]
struct Address {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
}

/// The SMTP envelope and where the message came from.
#[derive(Serialize)]
struct Envelope {
    /// This server's id for the message (as in its logs).
    id: String,
    /// The reverse-path; `null` for the null sender `<>` (a bounce).
    from: Option<String>,
    /// Every accepted recipient, in RCPT order.
    to: Vec<String>,
    remote_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    helo: Option<String>,
    tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    authenticated: Option<String>,
}

#[derive(Serialize)]
struct File {
    filename: String,
    content_type: String,
    /// Base64 (standard alphabet, padded).
    data: String,
}

#[derive(Serialize)]
struct EmbeddedFile {
    cid: String,
    content_type: String,
    data: String,
}

impl Payload {
    fn new(ctx: &Context, email: &Email, with_raw: bool) -> Self {
        let addresses = |list: Vec<Mailbox>| list.into_iter().map(Address::from).collect();
        let first = |list: Vec<Mailbox>| list.into_iter().next().map(Address::from);
        Payload {
            id: email.message_id().map(str::to_owned),
            date: email.date(),
            subject: email.subject().map(str::to_owned),
            references: email.references(),
            spf: None,
            resent_date: email.resent_date(),
            resent_id: email.resent_message_id().map(str::to_owned),
            body: Body {
                text: email.text_body(),
                html: email.html_body(),
            },
            addresses: Addresses {
                from: first(email.from()),
                to: addresses(email.to()),
                reply_to: addresses(email.reply_to()),
                cc: addresses(email.cc()),
                bcc: addresses(email.bcc()),
                in_reply_to: email.in_reply_to(),
                resent_from: first(email.resent_from()),
                resent_to: addresses(email.resent_to()),
                resent_cc: addresses(email.resent_cc()),
                resent_bcc: addresses(email.resent_bcc()),
            },
            envelope: Envelope {
                id: ctx.id().to_string(),
                from: ctx.reverse_path().map(|a| a.to_string()),
                to: ctx
                    .recipients()
                    .iter()
                    .map(|r| r.address().to_string())
                    .collect(),
                remote_addr: ctx.peer_addr().to_string(),
                helo: ctx.helo_name().map(str::to_owned),
                tls: ctx.tls().is_some(),
                authenticated: ctx.identity().map(|i| i.to_string()),
            },
            attachments: email
                .attachments()
                .into_iter()
                .map(|a: Attachment| File {
                    filename: a.filename.unwrap_or_default(),
                    content_type: a.content_type,
                    data: BASE64.encode(&a.data),
                })
                .collect(),
            embedded_files: email
                .embedded_files()
                .into_iter()
                .map(|a: Attachment| EmbeddedFile {
                    cid: a.content_id.unwrap_or_default(),
                    content_type: a.content_type,
                    data: BASE64.encode(&a.data),
                })
                .collect(),
            raw: with_raw.then(|| BASE64.encode(email.raw())),
        }
    }
}

impl From<Mailbox> for Address {
    fn from(m: Mailbox) -> Self {
        Address {
            name: m.name,
            address: m.address,
        }
    }
}

/// Where and how to POST.
#[derive(Clone)]
struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    raw: bool,
    retry_for: Duration,
}

/// Retries a POST that failed for a reason that may pass (a 5xx, a
/// refused connection, a timeout) with doubling pauses, as long as the
/// next attempt starts before the deadline.
#[derive(Clone)]
struct RetryTransient {
    deadline: Instant,
    pause: Duration,
}

impl RetryTransient {
    fn new(within: Duration) -> Self {
        RetryTransient {
            deadline: Instant::now() + within,
            pause: Duration::from_millis(500),
        }
    }
}

impl Policy<Bytes, StatusCode, reqwest::Error> for RetryTransient {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _json: &mut Bytes,
        result: &mut Result<StatusCode, reqwest::Error>,
    ) -> Option<Self::Future> {
        let transient = match result {
            Ok(status) => status.is_server_error(),
            // Sending failed (refused, reset, timed out); a request that
            // could not even be built would fail again.
            Err(e) => !e.is_builder(),
        };
        let next = Instant::now() + self.pause;
        if !transient || next >= self.deadline {
            return None;
        }
        tracing::info!(
            pause_ms = self.pause.as_millis() as u64,
            "webhook failed; retrying"
        );
        self.pause *= 2;
        Some(tokio::time::sleep_until(next))
    }

    fn clone_request(&mut self, json: &Bytes) -> Option<Bytes> {
        Some(json.clone())
    }
}

impl Webhook {
    /// One POST of `json`; the answer's status.
    fn post(
        &self,
    ) -> impl tower::Service<
        Bytes,
        Response = StatusCode,
        Error = reqwest::Error,
        Future = impl Future<Output = Result<StatusCode, reqwest::Error>> + Send,
    > + Clone {
        let client = self.client.clone();
        let url = self.url.clone();
        tower::service_fn(move |json: Bytes| {
            let request = client
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(json);
            async move { Ok(request.send().await?.status()) }
        })
    }

    async fn deliver(self, ctx: Context) -> Result<Reply, BoxError> {
        let Ok(email) = ctx.parse() else {
            // Retrying would not help: the message has no header at all.
            return Err(Reply::malformed_message()
                .with_text("Not an email message: no header")
                .into());
        };
        let json = Bytes::from(serde_json::to_vec(&Payload::new(&ctx, &email, self.raw))?);
        let answer = Retry::new(RetryTransient::new(self.retry_for), self.post())
            .oneshot(json)
            .await;
        let id = ctx.id();
        match answer {
            Ok(status) if status.is_success() => {
                tracing::info!(%id, %status, "posted");
                Ok(Reply::queued(id))
            }
            Ok(status @ (StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS)) => {
                tracing::warn!(%id, %status, "webhook busy");
                Err(Reply::new(
                    451,
                    (4, 7, 0),
                    format!("Webhook busy (HTTP {}), try again later", status.as_u16()),
                )
                .into())
            }
            Ok(status) if status.is_client_error() => {
                tracing::warn!(%id, %status, "webhook refused the message");
                Err(Reply::new(
                    554,
                    (5, 7, 1),
                    format!("Message refused by the webhook (HTTP {})", status.as_u16()),
                )
                .into())
            }
            Ok(status) => {
                tracing::warn!(%id, %status, "webhook failed");
                Err(Reply::try_again_later()
                    .with_text("Webhook unavailable, try again later")
                    .into())
            }
            Err(e) if e.is_timeout() => {
                tracing::warn!(%id, "webhook timed out");
                Err(Reply::new(451, (4, 4, 7), "Webhook timed out, try again later").into())
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "webhook unreachable");
                Err(Reply::new(451, (4, 4, 1), "Webhook unreachable, try again later").into())
            }
        }
    }
}

/// The `--domain` check at RCPT TO: other domains are refused, as a relay
/// that is not ours to be.
fn own_domain(domains: &[String], rcpt: &RcptTo) -> Ready<Result<Reply, BoxError>> {
    let address = rcpt.address();
    ready(Ok(if domains.iter().any(|d| address.domain_is(d)) {
        Reply::ok()
    } else {
        let domain = address.domain().unwrap_or("");
        Reply::relay_denied().with_text(format!("Relaying to {domain} denied"))
    }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse_from(go_style(std::env::args()));
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if !matches!(args.webhook.scheme(), "http" | "https") {
        return Err(format!(
            "--webhook must be http or https, not {}",
            args.webhook.scheme()
        )
        .into());
    }
    // reqwest's TLS uses whichever rustls provider is installed: the same
    // ring provider as the server's TLS, so nothing else is compiled in.
    let _ = smtpsrv::tls::rustls::crypto::ring::default_provider().install_default();
    let webhook = Webhook {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout))
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        url: args.webhook,
        raw: args.raw,
        retry_for: Duration::from_secs(args.retry_for),
    };

    let metrics = metrics::MetricsOption::start(args.metrics.as_deref())?;
    let shutdown = shutdown_signal()?;
    let mut builder = metrics.configure(Server::builder()).hostname(&args.name);
    if let Some(n) = args.msglimit {
        builder = builder.max_message_bytes(n);
    }
    // The handler's deadline leaves the webhook all its attempts.
    let handler = Duration::from_secs(args.timeout.saturating_add(args.retry_for) + 5);
    builder = builder.handler_timeout(handler);
    if let Some(secs) = args.timeout_read {
        builder = builder
            .command_timeout(Duration::from_secs(secs))
            .data_timeout(Duration::from_secs(secs));
    }
    if let Some(secs) = args.timeout_write {
        builder = builder.write_timeout(Duration::from_secs(secs));
    }
    if !args.domain.is_empty() {
        let domains = args.domain.clone();
        let on_rcpt = ServiceBuilder::new()
            .layer(metrics.layer())
            .service_fn(move |rcpt: RcptTo| own_domain(&domains, &rcpt));
        builder = builder.on_rcpt(on_rcpt);
    }
    let mut server = builder.build();
    for addr in &args.listen {
        let addr = listen_addr(addr);
        server = server.bind(addr.as_str()).await?;
    }
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    metrics.serve(&server).await?;
    let handler = ServiceBuilder::new()
        .layer(metrics.layer())
        .service_fn(move |ctx: Context| webhook.clone().deliver(ctx));
    server
        .serve(handler)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` sends).
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

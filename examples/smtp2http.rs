//! smtp2http: receive mail, POST it as JSON to a webhook.
//!
//! ```text
//! cargo run --example smtp2http -- --listen 0.0.0.0:2525 --url http://127.0.0.1:8080/mail
//! ```
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
//! - a webhook failure or timeout answers `451` so the sending server
//!   retries later, instead of a permanent `554` that bounced the mail.
//!
//! The address printed first on stdout is `listening on ADDR`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use smtpsrv::email::{Attachment, Email, Mailbox};
use smtpsrv::{BoxError, Context, Reply, Server};
use tracing_subscriber::EnvFilter;

/// Receives mail and POSTs each message as JSON to a webhook.
#[derive(Parser)]
#[command(name = "smtp2http", version)]
struct Args {
    /// SMTP address to listen on; repeatable.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    listen: Vec<String>,
    /// Webhook URL (http or https).
    #[arg(long, value_name = "URL")]
    url: reqwest::Url,
    /// Seconds the webhook may take to answer.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// Name in the banner and EHLO reply.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    hostname: String,
    /// Largest message accepted, advertised as SIZE (default 25 MiB).
    #[arg(long, value_name = "N")]
    max_message_bytes: Option<usize>,
    /// Include the raw message, base64-encoded, as `raw`.
    #[arg(long)]
    raw: bool,
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
            raw: with_raw.then(|| BASE64.encode(ctx.message())),
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
}

impl Webhook {
    async fn deliver(self, ctx: Context) -> Result<Reply, BoxError> {
        let Ok(email) = ctx.parse() else {
            // Retrying would not help: the message has no header at all.
            return Err(Reply::new(554, (5, 6, 0), "Not an email message: no header").into());
        };
        let json = serde_json::to_vec(&Payload::new(&ctx, &email, self.raw))?;
        let answer = self
            .client
            .post(self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(json)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                tracing::info!(id = %ctx.id(), status = %response.status(), "posted");
                Ok(Reply::new(
                    250,
                    (2, 0, 0),
                    format!("OK queued as {}", ctx.id()),
                ))
            }
            Ok(response) => {
                tracing::warn!(id = %ctx.id(), status = %response.status(), "webhook refused");
                Err(Reply::new(451, (4, 3, 0), "Webhook unavailable, try again later").into())
            }
            Err(e) if e.is_timeout() => {
                tracing::warn!(id = %ctx.id(), "webhook timed out");
                Err(Reply::new(451, (4, 4, 7), "Webhook timed out, try again later").into())
            }
            Err(e) => {
                tracing::warn!(id = %ctx.id(), error = %e, "webhook unreachable");
                Err(Reply::new(451, (4, 4, 1), "Webhook unreachable, try again later").into())
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if !matches!(args.url.scheme(), "http" | "https") {
        return Err(format!("--url must be http or https, not {}", args.url.scheme()).into());
    }
    // reqwest's TLS uses whichever rustls provider is installed: the same
    // ring provider as the server's TLS, so nothing else is compiled in.
    let _ = smtpsrv::tls::rustls::crypto::ring::default_provider().install_default();
    let webhook = Webhook {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout))
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        url: args.url,
        raw: args.raw,
    };

    let shutdown = shutdown_signal()?;
    let mut builder = Server::builder().hostname(&args.hostname);
    if let Some(n) = args.max_message_bytes {
        builder = builder.max_message_bytes(n);
    }
    let mut server = builder.build();
    for addr in &args.listen {
        server = server.bind(addr.as_str()).await?;
    }
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    let handler = tower::service_fn(move |ctx: Context| webhook.clone().deliver(ctx));
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

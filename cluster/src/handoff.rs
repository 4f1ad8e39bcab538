//! The durable hand-off: every accepted message goes to a JetStream stream
//! before the client hears 250.
//!
//! # Wire format
//!
//! One JetStream message per SMTP message. The payload is the raw message
//! exactly as received (after dot-unstuffing, CRLF kept, no header added).
//! The envelope and session facts travel in NATS headers:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the cluster-wide message id, `<instance>.<smtpsrv message id>`: JetStream drops a second publish with the same id within the stream's duplicate window |
//! | `Smtp-Mail-From` | the reverse-path in angle brackets, `<>` for the null sender |
//! | `Smtp-Rcpt-To` | the recipients in angle brackets, in order, separated by `, ` (one value: JetStream's raw and direct gets keep only the last of a repeated header) |
//! | `Smtp-Peer`, `Smtp-Local` | client and server `ip:port` (the real client after the PROXY protocol) |
//! | `Smtp-Helo` | the HELO/EHLO name, when one was given |
//! | `Smtp-Tls` | `version cipher`, on TLS sessions |
//! | `Smtp-Auth` | the authenticated identity, when there is one |
//! | `Smtp-Host` | the receiving instance's host name |
//! | `Smtp-Received-At` | Unix time in seconds |
//!
//! Values are sanitised: control characters become `?` (NATS headers are
//! lines).
//!
//! # Large messages
//!
//! A NATS server refuses messages over its `max_payload` (1 MiB by
//! default), which is far below a mail server's usual 25 MiB. The shipped
//! `deploy/cluster/nats-server.conf` raises `max_payload` to 32 MiB rather
//! than moving large bodies to the JetStream object store: one publish
//! stays one atomic, deduplicated unit (an object-store upload plus a
//! reference message is two writes, with orphans to collect when the
//! second fails), and consumers need no second fetch. The price is that
//! the NATS server holds a whole message in memory while routing it,
//! bounded by the SIZE limit the instances advertise, which
//! [`JetStreamHandoff::max_message_bytes`] keeps under the server's limit.
//! A message over the server's limit anyway is refused with `552 5.3.4`.

use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use smtpsrv::{BoxError, Context, Reply};
use tower::Service;

/// Header names of the [wire format](self).
pub mod header {
    /// The reverse-path, `<>` for the null sender.
    pub const MAIL_FROM: &str = "Smtp-Mail-From";
    /// The recipients, `<a@x>, <b@y>`.
    pub const RCPT_TO: &str = "Smtp-Rcpt-To";
    /// The client's `ip:port`.
    pub const PEER: &str = "Smtp-Peer";
    /// The server's `ip:port`.
    pub const LOCAL: &str = "Smtp-Local";
    /// The HELO/EHLO name.
    pub const HELO: &str = "Smtp-Helo";
    /// `version cipher` of a TLS session.
    pub const TLS: &str = "Smtp-Tls";
    /// The authenticated identity.
    pub const AUTH: &str = "Smtp-Auth";
    /// The receiving instance's host name.
    pub const HOST: &str = "Smtp-Host";
    /// Unix time in seconds.
    pub const RECEIVED_AT: &str = "Smtp-Received-At";
    /// JetStream's deduplication id: the cluster-wide message id.
    pub const MESSAGE_ID: &str = "Nats-Msg-Id";
}

/// Room left for the headers under the server's `max_payload`.
const HEADER_ROOM: usize = 64 * 1024;

/// Creates the stream `name` on `subject` when it does not exist yet:
/// file storage, a two-minute duplicate window, messages up to the
/// server's `max_payload`. An existing stream is used as it is.
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Result<stream::Stream, BoxError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    Ok(stream)
}

/// A message service that publishes to JetStream; see the [module docs](self).
///
/// Answers `250 2.0.0 OK queued as <id>` once the stream acknowledged the
/// message, `451 4.3.0` when NATS is unreachable or no ack came within
/// [`ack_timeout`](Self::ack_timeout) (so the client retries; if the late
/// publish was stored after all, the retry is a second copy under a new
/// id), and `552 5.3.4` for a message the NATS server cannot carry.
///
/// ```no_run
/// use smtpsrv_cluster::JetStreamHandoff;
///
/// # async fn run() -> Result<(), smtpsrv::BoxError> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let handoff = JetStreamHandoff::new(client, "smtp.accepted").hostname("mx1.example.com");
/// smtpsrv_cluster::handoff::ensure_stream(handoff.jetstream(), "SMTP", "smtp.accepted").await?;
/// let max = handoff.max_message_bytes(25 << 20);
/// let tcp = smtpsrv::bind_listener("127.0.0.1:2525").await?;
/// smtpsrv::Server::builder()
///     .max_message_bytes(max)
///     .build()
///     .listener(tcp)
///     .serve(handoff)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JetStreamHandoff {
    js: jetstream::Context,
    config: Arc<Config>,
}

struct Config {
    subject: String,
    instance: String,
    hostname: String,
    ack_timeout: Duration,
}

impl std::fmt::Debug for JetStreamHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamHandoff")
            .field("subject", &self.config.subject)
            .field("instance", &self.config.instance)
            .field("ack_timeout", &self.config.ack_timeout)
            .finish_non_exhaustive()
    }
}

fn context(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// A random tag for this process, so that two instances never publish the
/// same `Nats-Msg-Id` (smtpsrv's ids are unique per process only).
fn random_instance() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl JetStreamHandoff {
    /// Publishes on `subject` through `client`, with a 5 s ack timeout.
    pub fn new(client: async_nats::Client, subject: impl Into<String>) -> Self {
        let ack_timeout = Duration::from_secs(5);
        JetStreamHandoff {
            js: context(client, ack_timeout),
            config: Arc::new(Config {
                subject: subject.into(),
                instance: random_instance(),
                hostname: "localhost".into(),
                ack_timeout,
            }),
        }
    }

    /// The longest wait for the stream's ack (default 5 s); past it the
    /// client gets `451 4.3.0`.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.js = context(self.js.client(), timeout);
        self.config_mut().ack_timeout = timeout;
        self
    }

    /// The host name put in [`header::HOST`].
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.config_mut().hostname = name.into();
        self
    }

    /// The instance tag in front of message ids (default: random per
    /// process). Must differ between the instances sharing a stream.
    pub fn instance(mut self, tag: impl Into<String>) -> Self {
        self.config_mut().instance = tag.into();
        self
    }

    fn config_mut(&mut self) -> &mut Config {
        if Arc::get_mut(&mut self.config).is_none() {
            let c = &self.config;
            self.config = Arc::new(Config {
                subject: c.subject.clone(),
                instance: c.instance.clone(),
                hostname: c.hostname.clone(),
                ack_timeout: c.ack_timeout,
            });
        }
        Arc::get_mut(&mut self.config).expect("unique")
    }

    /// The JetStream context (to set up streams with the same connection).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The largest message this hand-off can carry, at most `wanted`: the
    /// server's `max_payload` less room for the headers. Give it to the
    /// server's `max_message_bytes`, so that SIZE tells clients the truth.
    pub fn max_message_bytes(&self, wanted: usize) -> usize {
        let server = self.js.client().server_info().max_payload;
        wanted.min(server.saturating_sub(HEADER_ROOM))
    }

    /// The cluster-wide id of `ctx` (its `Nats-Msg-Id`).
    pub fn message_id(&self, ctx: &Context) -> String {
        format!("{}.{}", self.config.instance, ctx.id())
    }

    fn headers(&self, ctx: &Context, id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::MESSAGE_ID, id);
        let from = ctx.reverse_path().map_or("", |a| a.as_str());
        h.insert(header::MAIL_FROM, format!("<{}>", clean(from)).as_str());
        // One value, not one per recipient: JetStream's direct and raw
        // gets keep only the last value of a repeated header.
        let rcpts: Vec<String> = ctx
            .recipients()
            .iter()
            .map(|r| format!("<{}>", clean(r.address().as_str())))
            .collect();
        h.insert(header::RCPT_TO, rcpts.join(", ").as_str());
        h.insert(header::PEER, ctx.peer_addr().to_string().as_str());
        h.insert(header::LOCAL, ctx.local_addr().to_string().as_str());
        if let Some(helo) = ctx.helo_name() {
            h.insert(header::HELO, clean(helo).as_str());
        }
        if let Some(tls) = ctx.tls() {
            let mut v = String::new();
            let _ = write!(v, "{} {}", tls.version, tls.cipher);
            h.insert(header::TLS, clean(&v).as_str());
        }
        if let Some(id) = ctx.identity() {
            h.insert(header::AUTH, clean(id.as_str()).as_str());
        }
        h.insert(header::HOST, clean(&self.config.hostname).as_str());
        let at = ctx
            .received_at()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        h.insert(header::RECEIVED_AT, at.to_string().as_str());
        h
    }

    async fn publish(self, ctx: Context) -> Result<Reply, BoxError> {
        let id = self.message_id(&ctx);
        let headers = self.headers(&ctx, &id);
        // Any body shape: a spilled one is read without blocking.
        let payload = ctx.body().bytes().await?;
        let message = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(payload);
        let subject = self.config.subject.clone();
        let acked = tokio::time::timeout(self.config.ack_timeout, async {
            self.js.send_publish(subject, message).await?.await
        })
        .await;
        match acked {
            Ok(Ok(ack)) => {
                tracing::info!(id = %id, stream = %ack.stream, seq = ack.sequence, duplicate = ack.duplicate, size = ctx.size(), "handed off");
                Ok(Reply::queued(id))
            }
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                tracing::warn!(id = %id, size = ctx.size(), error = %e, "too large for the queue");
                Err(Box::new(
                    Reply::message_too_large().with_text("Message too big for the queue"),
                ))
            }
            Ok(Err(e)) => {
                tracing::error!(id = %id, error = %e, "hand-off failed");
                Err(Box::new(unavailable()))
            }
            Err(_) => {
                tracing::error!(id = %id, timeout = ?self.config.ack_timeout, "no ack from the queue in time");
                Err(Box::new(unavailable()))
            }
        }
    }
}

/// `451 4.3.0`: the queue did not take the message; the client retries.
fn unavailable() -> Reply {
    Reply::try_again_later().with_text("Queue unavailable, try again later")
}

/// Control characters (which would end a NATS header line) become `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Service<Context> for JetStreamHandoff {
    type Response = Reply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        Box::pin(self.clone().publish(ctx))
    }
}

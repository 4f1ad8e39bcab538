//! The server: a builder for every setting and hook, listeners (plain with
//! optional STARTTLS, or implicit TLS), connection caps, the accept loop
//! with back-off, and graceful shutdown (like axum's `serve`).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::conn::{Connection, Transport};
use crate::context::Context;
use crate::hooks::{Hooks, boxed_authenticator, boxed_hook};
use crate::info::{Identity, SessionInfo};
use crate::layer::{HookLayer, HookLayers};
use crate::observe::{Event, report};
use crate::proto::LineEndings;
use crate::proxy::{TrustedProxies, read_header_with_timeout};
use crate::reply_conv::{BoxError, IntoDelivery, IntoReply};
use crate::shutdown::Shutdown;
use crate::stage::{Authenticate, Connect, Helo, MailFrom, RcptTo};
use crate::tls::TlsConfig;

/// Configures a [`Server`]; every setting has a sensible default.
///
/// ```
/// use std::time::Duration;
/// let server = smtpsrv::Server::builder()
///     .hostname("mx.example.com")
///     .max_message_bytes(10 * 1024 * 1024)
///     .max_recipients(50)
///     .command_timeout(Duration::from_secs(120))
///     .handler_timeout(Duration::from_secs(60))
///     .build();
/// # drop(server);
/// ```
///
/// # Timeouts: who each one waits for
///
/// | setting | default | bounds | when it passes |
/// |---|---|---|---|
/// | [`command_timeout`](Self::command_timeout) | 5 min | the client sending its next command | `421 4.4.2`, closed |
/// | [`data_timeout`](Self::data_timeout) | 10 min | silence while the client sends the data | `421 4.4.2`, closed |
/// | [`handler_timeout`](Self::handler_timeout) | 5 min | each call into your services: hooks, authenticator, message handler (`ready()` included) | `451 4.3.0` (AUTH: `454 4.7.0`), the session goes on |
/// | [`write_timeout`](Self::write_timeout) | the command timeout | writing replies to a slow reader | closed |
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s | a TLS handshake | closed |
///
/// How services are cloned and called is described on [`Server::serve`].
#[derive(Clone, Default)]
#[must_use]
pub struct Builder {
    config: Config,
    hooks: Hooks,
    tls: Option<TlsConfig>,
    hook_layers: HookLayers,
}

impl Builder {
    /// The name in the greeting, EHLO reply and logs (default `localhost`).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.config.hostname = name.into();
        self
    }

    /// The hard size limit of one message, advertised as `SIZE` (default 25 MiB).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.config.max_message_bytes = n;
        self
    }

    /// Recipients per message; past it `452 4.5.3` (default 100).
    pub fn max_recipients(mut self, n: usize) -> Self {
        self.config.max_recipients = n.max(1);
        self
    }

    /// Messages per session, advertised as `LIMITS MAILMAX` (default: no limit).
    pub fn max_messages_per_session(mut self, n: u32) -> Self {
        self.config.max_messages_per_session = Some(n.max(1));
        self
    }

    /// Longest command line, CRLF included (default 1024; RFC minimum 512).
    pub fn max_line_length(mut self, n: usize) -> Self {
        self.config.max_line_len = n.max(512);
        self
    }

    /// How long a command may take to arrive (default 5 minutes; RFC 5321
    /// 4.5.3.2.7 says at least 5). It bounds only the client: hooks are
    /// bounded by [`handler_timeout`](Self::handler_timeout).
    pub fn command_timeout(mut self, t: Duration) -> Self {
        self.config.command_timeout = t;
        self
    }

    /// Longest silence while receiving a message's data (default 10
    /// minutes): re-armed on every read, so a large message sent steadily
    /// may take longer in total. It bounds only the client: the message
    /// handler has its own [`handler_timeout`](Self::handler_timeout).
    pub fn data_timeout(mut self, t: Duration) -> Self {
        self.config.data_timeout = t;
        self
    }

    /// The deadline of each call into your services (default 5 minutes):
    /// the message handler from `ready()` to its answer, and each hook
    /// (`on_connect`, `on_helo`, `on_mail`, `on_rcpt`) and the
    /// authenticator likewise. In streaming mode it also bounds each wait
    /// for the handler to take the next chunk, and the wait for its answer
    /// after the end of the data.
    ///
    /// When it passes, the call's future is dropped and the client gets
    /// `451 4.3.0 Timed out while processing, try again later` (an AUTH
    /// exchange `454 4.7.0`): temporary, because the message or command may
    /// well succeed on the next attempt, and `4.3.0` (mail system) rather
    /// than `4.4.7`, which RFC 3463 reserves for a message that has become
    /// too old. The session goes on.
    ///
    /// The default is half of the 10 minutes RFC 5321 4.5.3.2.6 lets a
    /// client wait for the reply after the end of data, so the server
    /// answers well before the client gives up on a message that the
    /// handler may have stored (which would make the client send it again).
    /// For a tighter limit on part of your stack, use a tower `timeout`
    /// layer: its `Elapsed` is answered `451 4.4.7`, so the two can be told
    /// apart in logs, and the earlier one wins.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = smtpsrv::Server::builder()
    ///     .data_timeout(Duration::from_secs(60))        // a silent client
    ///     .handler_timeout(Duration::from_secs(30));    // your code
    /// # drop(builder);
    /// ```
    pub fn handler_timeout(mut self, t: Duration) -> Self {
        self.config.handler_timeout = t;
        self
    }

    /// Longest time writing replies to a slow client may take (default:
    /// the command timeout); past it the connection is closed.
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.config.write_timeout = Some(t);
        self
    }

    /// Reports connection-level events (connections, commands, replies,
    /// TLS, AUTH, bytes) to `observer`, e.g. for metrics; see
    /// [`observe`](crate::observe).
    pub fn observer(mut self, observer: impl crate::observe::Observer) -> Self {
        self.config.observer = Some(crate::observe::SharedObserver(Arc::new(observer)));
        self
    }

    /// Time allowed for a TLS handshake (default 10 s).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.config.handshake_timeout = t;
        self
    }

    /// Negative replies a session may collect before it is closed with 421
    /// (default 20).
    pub fn max_errors(mut self, n: usize) -> Self {
        self.config.max_errors = n;
        self
    }

    /// What to do with bare CR or LF in a message: reject it with
    /// `550 5.5.2` (the default, against SMTP smuggling) or rewrite them to
    /// CRLF. They never end a message either way.
    pub fn line_endings(mut self, policy: LineEndings) -> Self {
        self.config.line_endings = policy;
        self
    }

    /// Offers STARTTLS with this certificate configuration; it is also used
    /// by implicit-TLS listeners.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.starttls = true;
        self.tls = Some(tls);
        self
    }

    /// Requires STARTTLS before anything but EHLO, NOOP, QUIT and STARTTLS
    /// (`530 5.7.0`).
    pub fn require_tls(mut self, yes: bool) -> Self {
        self.config.require_tls = yes;
        self
    }

    /// Verifies `AUTH PLAIN`/`LOGIN` credentials with a tower service
    /// answering `Some(identity)` (235) or `None` (535 5.7.8).
    ///
    /// ```
    /// use smtpsrv::{Authenticate, BoxError, Identity};
    /// let builder = smtpsrv::Server::builder().authenticator(tower::service_fn(
    ///     |req: Authenticate| async move {
    ///         let ok = req.username() == "ann" && req.password() == "secret";
    ///         Ok::<_, BoxError>(ok.then(|| Identity::new(req.username())))
    ///     },
    /// ));
    /// # drop(builder);
    /// ```
    pub fn authenticator<S>(mut self, service: S) -> Self
    where
        S: Service<Authenticate, Response = Option<Identity>> + CloneService + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.config.auth = true;
        self.hooks.auth = Some(boxed_authenticator(service));
        self
    }

    /// Offers AUTH on unencrypted connections too (default: only over TLS).
    pub fn allow_insecure_auth(mut self, yes: bool) -> Self {
        self.config.allow_insecure_auth = yes;
        self
    }

    /// Requires AUTH before MAIL (`530 5.7.0`): a submission server.
    ///
    /// `require_auth` or `smtpsrv_middleware::require_auth::RequireAuthLayer`?
    /// This setting is the whole-server rule, checked by the session itself
    /// before any hook runs: pick it when every message on every listener
    /// must be authenticated (ports 587 and 465). Pick the layer when the
    /// rule depends on something: which sender addresses each identity may
    /// use (`SenderRules`, `553 5.7.1`), only relaying needs AUTH (put it
    /// on `on_rcpt` behind your own check for local domains), or a stage
    /// other than `MAIL`. They combine: `require_auth(true)` for the `530`,
    /// the layer on `on_mail` for the sender rules.
    pub fn require_auth(mut self, yes: bool) -> Self {
        self.config.require_auth = yes;
        self
    }

    /// Delay before answering a failed AUTH, growing with each failure up
    /// to five times (default 1 s).
    pub fn auth_failure_delay(mut self, t: Duration) -> Self {
        self.config.auth_failure_delay = t;
        self
    }

    /// Speaks LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient.
    pub fn lmtp(mut self, yes: bool) -> Self {
        self.config.lmtp = yes;
        self
    }

    /// Offers DSN (RFC 3461) parameters (default on).
    pub fn dsn(mut self, yes: bool) -> Self {
        self.config.dsn = yes;
        self
    }

    /// Offers CHUNKING/BDAT and BINARYMIME (RFC 3030) (default on).
    pub fn chunking(mut self, yes: bool) -> Self {
        self.config.chunking = yes;
        self
    }

    /// Connections served at once; past it `421 4.7.0` (default 10,000).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.max(1);
        self
    }

    /// Connections from one IP address at once; past it `421 4.7.0` (default 100).
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.config.max_connections_per_ip = n.max(1);
        self
    }

    /// Message bytes held in memory across all connections; past it DATA
    /// and BDAT get `452 4.3.1` (default 1 GiB).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.config.memory_budget = bytes;
        self
    }

    /// Messages larger than this are written to a temporary file while they
    /// arrive instead of being held in memory (default 1 MiB;
    /// `usize::MAX` keeps every message in memory). Only what is in memory
    /// counts against [`memory_budget`](Self::memory_budget). See
    /// [`crate::body`].
    pub fn spill_threshold(mut self, bytes: usize) -> Self {
        self.config.spill_threshold = bytes;
        self
    }

    /// Where spilled messages go (default [`std::env::temp_dir`]). Files
    /// are named `.smtpsrv-<pid>-*` and removed when their message is
    /// dropped; those a killed process left behind are removed by
    /// [`build`](Self::build) (on Linux, where `/proc` says which processes
    /// are gone; files of live servers sharing the directory are kept).
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.spill_dir = Some(dir.into());
        self
    }

    /// Streaming mode (default off): the message service is called when
    /// `DATA` or the first `BDAT` chunk starts, with a body that yields
    /// chunks as they arrive, the socket read no faster than the service
    /// consumes. The reply is still sent only after the end of the data
    /// and once the service has returned. See [`crate::body`].
    pub fn streaming(mut self, yes: bool) -> Self {
        self.config.streaming = yes;
        self
    }

    /// Expects a PROXY protocol v1/v2 header from these peers (and refuses
    /// everyone else), so the real client address is used everywhere.
    pub fn proxy_protocol(mut self, trusted: TrustedProxies) -> Self {
        self.config.proxy = Some(trusted);
        self
    }

    /// After graceful shutdown is signalled, how long a session in the
    /// middle of a transaction may stay silent before it is closed with
    /// `421 4.3.0` (default 60 s; never longer than the usual timeouts).
    /// Idle sessions are closed at once.
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.config.shutdown_grace = t;
        self
    }

    /// Time allowed for the PROXY header to arrive (default 10 s).
    pub fn proxy_header_timeout(mut self, t: Duration) -> Self {
        self.config.proxy_timeout = t;
        self
    }

    /// A hook at connect, before the greeting: a 4xx/5xx answer refuses
    /// (421, e.g. [`Reply::service_unavailable`], closes; 554 and others are
    /// sent, then only QUIT is served).
    ///
    /// ```
    /// use smtpsrv::{BoxError, Connect, Reply, Stage};
    /// let blocked: std::net::IpAddr = "192.0.2.66".parse().unwrap();
    /// let builder = smtpsrv::Server::builder().on_connect(tower::service_fn(
    ///     move |req: Connect| async move {
    ///         if req.session().peer_addr().ip() == blocked {
    ///             return Ok::<_, BoxError>(Reply::service_unavailable().with_text("Blocked"));
    ///         }
    ///         Ok(Reply::ok())
    ///     },
    /// ));
    /// # drop(builder);
    /// ```
    pub fn on_connect<S>(mut self, service: S) -> Self
    where
        S: Service<Connect> + CloneService + Send + 'static,
        S::Response: IntoReply,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.config.hooks.connect = true;
        self.hooks.connect = Some(boxed_hook(service));
        self
    }

    /// A hook at HELO/EHLO/LHLO: refuse or note the name the client gave.
    ///
    /// ```
    /// use smtpsrv::{BoxError, Helo, Reply};
    /// let builder = smtpsrv::Server::builder().on_helo(tower::service_fn(
    ///     |req: Helo| async move {
    ///         if req.name().eq_ignore_ascii_case("localhost") {
    ///             return Ok::<_, BoxError>(Reply::rejected().with_text("Say who you are"));
    ///         }
    ///         Ok(Reply::ok())
    ///     },
    /// ));
    /// # drop(builder);
    /// ```
    pub fn on_helo<S>(mut self, service: S) -> Self
    where
        S: Service<Helo> + CloneService + Send + 'static,
        S::Response: IntoReply,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.config.hooks.helo = true;
        self.hooks.helo = Some(boxed_hook(service));
        self
    }

    /// A hook at MAIL FROM: refuse a sender before any data is read.
    ///
    /// ```
    /// use smtpsrv::{BoxError, MailFrom, Reply};
    /// let builder = smtpsrv::Server::builder().on_mail(tower::service_fn(
    ///     |req: MailFrom| async move {
    ///         if req.reverse_path().is_some_and(|a| a.domain_is("spam.example")) {
    ///             return Ok::<_, BoxError>(Reply::rejected().with_text("Sender refused"));
    ///         }
    ///         Ok(Reply::ok())
    ///     },
    /// ));
    /// # drop(builder);
    /// ```
    pub fn on_mail<S>(mut self, service: S) -> Self
    where
        S: Service<MailFrom> + CloneService + Send + 'static,
        S::Response: IntoReply,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.config.hooks.mail = true;
        self.hooks.mail = Some(boxed_hook(service));
        self
    }

    /// A hook at RCPT TO: refuse one recipient (`550 5.1.1`) and keep the others.
    ///
    /// ```
    /// use smtpsrv::{BoxError, RcptTo, Reply};
    /// let builder = smtpsrv::Server::builder().on_rcpt(tower::service_fn(
    ///     |req: RcptTo| async move {
    ///         let rcpt = req.address();
    ///         if !rcpt.domain_is("example.com") {
    ///             return Ok::<_, BoxError>(Reply::relay_denied()); // 550 5.7.1
    ///         }
    ///         match rcpt.local_part() {
    ///             "ann" | "bob" => Ok(Reply::ok()),
    ///             _ => Ok(Reply::no_such_user()),                  // 550 5.1.1
    ///         }
    ///     },
    /// ));
    /// # drop(builder);
    /// ```
    pub fn on_rcpt<S>(mut self, service: S) -> Self
    where
        S: Service<RcptTo> + CloneService + Send + 'static,
        S::Response: IntoReply,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.config.hooks.rcpt = true;
        self.hooks.rcpt = Some(boxed_hook(service));
        self
    }

    /// Puts `layer` around every hook: the connect, HELO, MAIL and RCPT
    /// hooks and the authenticator, so one tracing, metrics or rate-limit
    /// layer covers every stage (the message service takes it through a
    /// `ServiceBuilder`, as usual).
    ///
    /// Applied by [`build`](Self::build), whatever the order of the builder
    /// calls; several calls stack like `ServiceBuilder::layer` (the first is
    /// outermost). A stage without a hook gets [`Accept`](crate::layer::Accept)
    /// inside the layer, so the layer sees every stage (the protocol is
    /// unchanged: `Accept` gives the default replies); the authenticator is
    /// wrapped only when there is one. See [`crate::layer`] for why this
    /// shape and for a layer of your own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use smtpsrv::tower::timeout::TimeoutLayer;
    /// use smtpsrv::{BoxError, RcptTo, Reply};
    ///
    /// let builder = smtpsrv::Server::builder()
    ///     // Every hook answers within 10 s, or the client gets 451 4.4.7.
    ///     .hook_layer(TimeoutLayer::new(Duration::from_secs(10)))
    ///     .on_rcpt(smtpsrv::tower::service_fn(|req: RcptTo| async move {
    ///         let ours = req.address().domain().is_some_and(|d| d.eq_ignore_ascii_case("example.com"));
    ///         let known = ours && req.address().local_part() == "ann";
    ///         Ok::<_, BoxError>(if known { Reply::ok() } else { Reply::new(550, (5, 1, 1), "No such user") })
    ///     }));
    /// # drop(builder.build());
    /// ```
    pub fn hook_layer<L: HookLayer>(mut self, layer: L) -> Self {
        self.hook_layers.push(layer);
        self
    }

    /// A bare protocol session with these settings and no IO, for fuzzing
    /// and for tests of the state machine. Hooks are not called: a
    /// [`Check`](crate::session::Check) must be answered by the caller.
    pub fn session(&self, peer: SocketAddr, local: SocketAddr) -> crate::session::Session {
        crate::session::Session::new(
            Arc::new(self.config.clone()),
            None,
            SessionInfo::new(peer, local),
        )
    }

    /// The server, without listeners yet. Removes the spill files dead
    /// processes left in the spill directory (see
    /// [`spill_dir`](Self::spill_dir)).
    pub fn build(mut self) -> Server {
        crate::body::remove_stale(&self.config.spill_dir());
        let budget = MemoryBudget::new(self.config.memory_budget);
        let hooks = self.hook_layers.apply(self.hooks, &mut self.config.hooks);
        Server {
            config: Arc::new(self.config),
            hooks,
            tls: self.tls,
            budget,
            listeners: Vec::new(),
        }
    }
}

/// What the server needs of every service you give it besides
/// `tower::Service`: `Clone`, because each connection gets its own clone
/// (see [`Server::serve`]). Implemented for every `Clone` type; it exists
/// so that a service that is not `Clone` is refused with a message that
/// names the fix.
///
/// Most tower layers keep their service `Clone`. Those that do not, such
/// as tower's `rate_limit`, go below a `.buffer(n)`: `Buffer` is `Clone`,
/// and every connection's clone then shares the one service behind it
/// (one rate limit for the whole server, not one per connection).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Clone`, but the server clones each service per connection: put `.buffer(n)` above a tower layer whose service is not `Clone` (such as `rate_limit`), or implement `Clone` for your service",
    label = "not `Clone`: add `.buffer(n)` above `rate_limit` and the like",
    note = "`ServiceBuilder::new().buffer(100).rate_limit(..)`: the buffered service is `Clone`, and all connections share the one service behind it",
    note = "a service of your own: derive or implement `Clone` (keep shared state in an `Arc`)"
)]
pub trait CloneService: Clone {}

impl<T: Clone> CloneService for T {}

/// Pending connections the kernel queues for us: a burst of clients (a
/// spam wave, a load test) should not wait for SYN retries (tokio's
/// `TcpListener::bind` uses 128).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener as [`Server::bind`] does: the first address that
/// works, with address reuse and a 1024-deep backlog (tokio's
/// `TcpListener::bind` queues 128). For [`Server::listener`].
pub async fn bind_listener(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

struct Listener {
    tcp: TcpListener,
    implicit_tls: bool,
}

/// An SMTP server: listeners plus the settings and hooks of a [`Builder`].
///
/// ```no_run
/// use smtpsrv::{BoxError, Context, Server};
/// # async fn run() -> std::io::Result<()> {
/// let handler = tower::service_fn(|ctx: Context| async move {
///     println!("{} bytes from {:?}", ctx.size(), ctx.reverse_path());
///     Ok::<_, BoxError>(())
/// });
/// Server::builder()
///     .hostname("mx.example.com")
///     .build()
///     .bind("0.0.0.0:2525")
///     .await?
///     .serve(handler)
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
///     .await
/// # }
/// ```
pub struct Server {
    config: Arc<Config>,
    hooks: Hooks,
    tls: Option<TlsConfig>,
    budget: Arc<MemoryBudget>,
    listeners: Vec<Listener>,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Listens on `addr` (plain SMTP, with STARTTLS when TLS is configured).
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<Self> {
        let tcp = bind_listener(addr).await?;
        Ok(self.listener(tcp))
    }

    /// Listens on `addr` with implicit TLS (RFC 8314, port 465 style).
    /// Fails when no TLS configuration was given.
    pub async fn bind_implicit_tls(self, addr: impl ToSocketAddrs) -> io::Result<Self> {
        if self.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "implicit TLS needs Builder::tls",
            ));
        }
        let tcp = bind_listener(addr).await?;
        Ok(self.implicit_tls_listener(tcp))
    }

    /// Serves plain SMTP (with STARTTLS when configured) on a bound listener.
    pub fn listener(mut self, tcp: TcpListener) -> Self {
        self.listeners.push(Listener {
            tcp,
            implicit_tls: false,
        });
        self
    }

    /// Serves implicit TLS on a bound listener (needs [`Builder::tls`];
    /// without it every connection is closed).
    pub fn implicit_tls_listener(mut self, tcp: TcpListener) -> Self {
        self.listeners.push(Listener {
            tcp,
            implicit_tls: true,
        });
        self
    }

    /// Serves plain SMTP on an already-bound, listening std listener: one
    /// inherited from systemd socket activation (`LISTEN_FDS`) or a
    /// supervisor, or set up with options tokio does not offer. It is made
    /// non-blocking here. Must be called within a tokio runtime.
    pub fn std_listener(self, tcp: std::net::TcpListener) -> io::Result<Self> {
        tcp.set_nonblocking(true)?;
        Ok(self.listener(TcpListener::from_std(tcp)?))
    }

    /// [`std_listener`](Self::std_listener) with implicit TLS.
    pub fn std_implicit_tls_listener(self, tcp: std::net::TcpListener) -> io::Result<Self> {
        tcp.set_nonblocking(true)?;
        Ok(self.implicit_tls_listener(TcpListener::from_std(tcp)?))
    }

    /// How much of the memory budget holds message bytes, readable while
    /// the server runs (for a metrics gauge).
    pub fn memory_gauge(&self) -> crate::observe::MemoryGauge {
        crate::observe::MemoryGauge(self.budget.clone())
    }

    /// The bound addresses, in the order the listeners were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.tcp.local_addr().ok())
            .collect()
    }

    /// Serves every listener with `service`; await the result (it runs until
    /// an unrecoverable error), or add [`Serve::with_graceful_shutdown`].
    ///
    /// # How your services are called
    ///
    /// - **Cloned per connection.** Each accepted connection gets its own
    ///   clone of `service` and of every hook; state shared between
    ///   connections lives behind an `Arc` in the service (a pool, a
    ///   counter), and a layer's own state is per connection unless it
    ///   shares it (tower's `RateLimit` counts per clone: put it behind
    ///   `.buffer(n)`, see below).
    /// - **`ready()` then `call`, once per request.** For every message
    ///   (after the end of the data; at its start in
    ///   [`streaming`](Builder::streaming) mode) the connection awaits
    ///   `poll_ready`, then calls once with the [`Context`]; for every
    ///   command with a hook (`MAIL`, `RCPT`, ...) likewise with its request.
    ///   A `Service` that is not ready holds back only its own connection.
    /// - **One at a time per connection.** The connection waits for the
    ///   answer before it reads the next command, and sends `250` only once
    ///   the service answered `Ok` (no mail is lost); other connections go
    ///   on meanwhile. Concurrency across connections is bounded by
    ///   [`Builder::max_connections`], or by your `concurrency_limit` layer.
    /// - **What bounds what.** [`Builder::command_timeout`] and
    ///   [`Builder::data_timeout`] bound the client only (waiting for a
    ///   command; silence during the data). [`Builder::handler_timeout`]
    ///   bounds each call into your code, `ready()` included: past it the
    ///   future is dropped and the client gets `451 4.3.0`. A tower
    ///   `timeout` layer inside your stack may set a tighter limit (answered
    ///   `451 4.4.7`); whichever passes first answers.
    /// - **Errors and panics are replies.** See [`error_reply`](crate::error_reply):
    ///   a `Reply` is sent as is, a [`ParseError`](crate::email::ParseError)
    ///   is a permanent `554 5.6.0`, anything else a temporary `451`; a
    ///   panic is caught and answered `451 4.3.0`, and the session goes on.
    ///
    /// # Layers whose service is not `Clone`
    ///
    /// `serve` needs `S: Clone`. A few tower layers build services that are
    /// not: `rate_limit` (`RateLimit` holds a timer), and any service you
    /// wrote without `Clone`. The compiler then says "the trait `Clone` is
    /// not implemented for `RateLimit<..>`". Put `.buffer(n)` above such a
    /// layer: `Buffer` is `Clone` and sends every clone's requests to the one
    /// inner service, which is also what makes a rate limit count all
    /// connections together rather than per connection (`n` is the number
    /// of requests that may wait for it).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use smtpsrv::{BoxError, Context, Server};
    /// use tower::ServiceBuilder;
    /// # async fn run() -> std::io::Result<()> {
    /// let handler = ServiceBuilder::new()
    ///     .buffer(100)                                // Clone, shared by every connection
    ///     .rate_limit(50, Duration::from_secs(1))     // 50 messages a second, server-wide
    ///     .service_fn(|_ctx: Context| async { Ok::<_, BoxError>(()) });
    /// Server::builder().build().bind("127.0.0.1:2525").await?.serve(handler).await
    /// # }
    /// ```
    pub fn serve<S>(self, service: S) -> Serve<S>
    where
        S: Service<Context> + CloneService + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Serve {
            server: self,
            service,
        }
    }

    /// Serves one already-accepted connection over any stream (a test
    /// harness, a Unix socket, an in-memory pipe), until it closes.
    pub async fn serve_connection<IO, S>(
        &self,
        io: IO,
        peer: SocketAddr,
        local: SocketAddr,
        service: S,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Context> + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Connection::new(
            Transport::Plain(io),
            BytesMut::new(),
            SessionInfo::new(peer, local),
            service,
            self.hooks.clone(),
            self.tls.clone(),
            self.config.clone(),
            Some(self.budget.clone()),
            Shutdown::new().watch(),
        )
        .run()
        .await
    }
}

/// A running server; await it, or call [`with_graceful_shutdown`](Self::with_graceful_shutdown).
#[must_use = "a server does nothing until awaited"]
pub struct Serve<S> {
    server: Server,
    service: S,
}

impl<S> Serve<S>
where
    S: Service<Context> + Clone + Send + 'static,
    S::Response: IntoDelivery,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Stops when `signal` completes: no new connections; transactions in
    /// progress finish (a silent one waits at most
    /// [`Builder::shutdown_grace`]); idle sessions get `421 4.3.0` and are
    /// closed. The returned future resolves when every connection is closed.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<S, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            serve: self,
            signal,
        }
    }

    async fn run(self, signal: impl Future<Output = ()> + Send) -> io::Result<()> {
        let Serve { server, service } = self;
        if server.listeners.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no listener"));
        }
        let implicit_tls_config = Arc::new(Config {
            starttls: false,
            ..(*server.config).clone()
        });
        let shared = Arc::new(Shared {
            config: server.config.clone(),
            implicit_tls_config,
            tls: server.tls.clone(),
            budget: server.budget.clone(),
            connections: Arc::new(Semaphore::new(server.config.max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            shutdown: Shutdown::new(),
            tracker: TaskTracker::new(),
        });
        let mut accepting = tokio::task::JoinSet::new();
        for listener in server.listeners {
            accepting.spawn(accept_loop(
                listener,
                shared.clone(),
                service.clone(),
                server.hooks.clone(),
            ));
        }
        tokio::select! {
            _ = signal => {}
            Some(_) = accepting.join_next() => {}
        }
        tracing::info!("shutting down: no new connections");
        shared.shutdown.signal();
        accepting.shutdown().await;
        shared.tracker.close();
        shared.tracker.wait().await;
        tracing::info!("all connections closed");
        Ok(())
    }
}

impl<S> IntoFuture for Serve<S>
where
    S: Service<Context> + Clone + Send + 'static,
    S::Response: IntoDelivery,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run(std::future::pending()))
    }
}

/// A server that stops gracefully when its signal completes.
#[must_use = "a server does nothing until awaited"]
pub struct WithGracefulShutdown<S, F> {
    serve: Serve<S>,
    signal: F,
}

impl<S, F> IntoFuture for WithGracefulShutdown<S, F>
where
    S: Service<Context> + Clone + Send + 'static,
    S::Response: IntoDelivery,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.serve.run(self.signal))
    }
}

/// State shared by the accept loops and connections of one server.
struct Shared {
    config: Arc<Config>,
    /// The same settings without STARTTLS, for implicit-TLS listeners.
    implicit_tls_config: Arc<Config>,
    tls: Option<TlsConfig>,
    budget: Arc<MemoryBudget>,
    connections: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    shutdown: Shutdown,
    tracker: TaskTracker,
}

/// A connection's place under the per-IP cap; released on drop.
struct IpSlot {
    ip: IpAddr,
    shared: Arc<Shared>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// A place for one more connection from `ip`, if it has one left.
    fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            shared: self.clone(),
        })
    }
}

async fn accept_loop<S>(listener: Listener, shared: Arc<Shared>, service: S, hooks: Hooks)
where
    S: Service<Context> + Clone + Send + 'static,
    S::Response: IntoDelivery,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    let mut shutdown = shared.shutdown.watch();
    loop {
        let accepted = tokio::select! {
            () = std::future::poll_fn(|cx| shutdown.poll_signalled(cx)) => return,
            r = listener.tcp.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // EMFILE and friends: wait for connections to close.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let implicit_tls = listener.implicit_tls;
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::info!(%peer, "too many connections; refused");
            shared.tracker.spawn(refuse(stream, implicit_tls));
            continue;
        };
        let shared2 = shared.clone();
        let service = service.clone();
        let hooks = hooks.clone();
        shared.tracker.spawn(async move {
            let _permit = permit;
            handle(stream, peer, implicit_tls, shared2, service, hooks).await;
        });
    }
}

/// Answers a connection over a cap with 421 (on plain listeners; a TLS
/// client could not read it) and closes.
async fn refuse(mut stream: TcpStream, implicit_tls: bool) {
    if !implicit_tls {
        let reply = b"421 4.7.0 Too many connections, try again later\r\n";
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply)).await;
    }
    let _ = stream.shutdown().await;
}

async fn handle<S>(
    mut stream: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    shared: Arc<Shared>,
    service: S,
    hooks: Hooks,
) where
    S: Service<Context> + Send + 'static,
    S::Response: IntoDelivery,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let config = &shared.config;
    let Ok(mut local) = stream.local_addr() else {
        return;
    };
    let mut peer = peer;
    let mut read_buf = BytesMut::new();
    if let Some(trusted) = &config.proxy {
        if trusted.check(peer.ip()).is_err() {
            tracing::info!(%peer, "PROXY header expected from an untrusted peer; closed");
            return;
        }
        // Boxed, like the TLS handshake below: rare steps whose futures
        // would otherwise make every connection's task larger (more to
        // copy when it is spawned, more memory per idle connection).
        let header = read_header_with_timeout(&mut stream, &mut read_buf, config.proxy_timeout);
        match Box::pin(header).await {
            Ok(header) => {
                peer = header.source_or(peer);
                local = header.destination_or(local);
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "bad PROXY header; closed");
                return;
            }
        }
    }
    // The per-IP cap counts the real client: behind a PROXY-speaking load
    // balancer, the balancer's own address would otherwise share one cap.
    let Some(_ip_slot) = shared.admit_ip(peer.ip()) else {
        tracing::info!(%peer, "too many connections from this address; refused");
        Box::pin(refuse(stream, implicit_tls)).await;
        return;
    };
    let transport = if implicit_tls {
        let Some(tls) = &shared.tls else {
            return;
        };
        // Octets read past a PROXY header may be the start of the ClientHello.
        let stream = Rewind::new(read_buf.split().freeze(), stream);
        let handshake =
            tokio::time::timeout(config.handshake_timeout, tls.acceptor().accept(stream));
        match Box::pin(handshake).await {
            Ok(Ok(stream)) => Transport::Tls(Box::new(stream)),
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                report(&config.observer, Event::TlsHandshake { ok: false });
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                report(&config.observer, Event::TlsHandshake { ok: false });
                return;
            }
        }
    } else {
        // Buffered octets stay in `read_buf`, which the connection reads first.
        Transport::Plain(Rewind::new(Bytes::new(), stream))
    };
    // STARTTLS is never offered inside implicit TLS (RFC 8314).
    let (config, tls) = if implicit_tls {
        (shared.implicit_tls_config.clone(), None)
    } else {
        (shared.config.clone(), shared.tls.clone())
    };
    Connection::new(
        transport,
        read_buf,
        SessionInfo::new(peer, local),
        service,
        hooks,
        tls,
        config,
        Some(shared.budget.clone()),
        shared.shutdown.watch(),
    )
    .run()
    .await
}

/// A stream that first yields octets already read from it, so that a TLS
/// handshake can start from bytes that arrived together with a PROXY header.
struct Rewind<IO> {
    buffered: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    fn new(buffered: Bytes, io: IO) -> Self {
        Rewind { buffered, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.buffered.is_empty() {
            let n = self.buffered.len().min(buf.remaining());
            let chunk = self.buffered.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

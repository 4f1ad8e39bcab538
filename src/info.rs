//! Facts about one SMTP session that every stage request and the message
//! [`Context`](crate::Context) expose: who is connected, what they said in
//! HELO/EHLO, TLS, and who authenticated.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::tls::TlsInfo;

/// A process-unique session id, printed as hex in logs and ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The next id. Based on the start time, so ids differ across restarts.
    pub fn next() -> Self {
        static BASE: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0)
                << 8
        });
        SessionId(base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)))
    }

    #[cfg(test)]
    pub(crate) fn from_raw(id: u64) -> Self {
        SessionId(id)
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Who authenticated with `AUTH`: the identity an authenticator returned.
/// The password is never kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(Arc<str>);

impl Identity {
    /// An identity, usually the SASL username.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Identity(name.into())
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the greeting command was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// `HELO name`: plain SMTP, no extensions.
    Helo(String),
    /// `EHLO name`: extended SMTP.
    Ehlo(String),
    /// `LHLO name`: LMTP.
    Lhlo(String),
}

impl Greeting {
    /// The name the client gave.
    pub fn name(&self) -> &str {
        match self {
            Greeting::Helo(n) | Greeting::Ehlo(n) | Greeting::Lhlo(n) => n,
        }
    }

    /// Whether ESMTP extensions may be used (EHLO or LHLO).
    pub fn is_extended(&self) -> bool {
        !matches!(self, Greeting::Helo(_))
    }
}

/// The facts of a session, shared (cheaply, behind an `Arc`) with every stage
/// request and message context.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) greeting: Option<Greeting>,
    pub(crate) tls: Option<Arc<TlsInfo>>,
    pub(crate) identity: Option<Identity>,
    pub(crate) lmtp: bool,
}

impl SessionInfo {
    /// Facts for a new connection (used by the server and by tests of layers).
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        SessionInfo {
            id: SessionId::next(),
            peer,
            local,
            greeting: None,
            tls: None,
            identity: None,
            lmtp: false,
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The client's address: the real one after the PROXY protocol.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The address the client connected to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The HELO/EHLO/LHLO command, once given.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    /// The name given in HELO/EHLO/LHLO.
    pub fn helo_name(&self) -> Option<&str> {
        self.greeting.as_ref().map(Greeting::name)
    }

    /// TLS facts when the session is encrypted (STARTTLS or implicit TLS).
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_deref()
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The authenticated identity, if the client authenticated.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether this is an LMTP session.
    pub fn is_lmtp(&self) -> bool {
        self.lmtp
    }

    /// Sets the authenticated identity (for tests of layers).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sets the greeting (for tests of layers).
    pub fn with_greeting(mut self, greeting: Greeting) -> Self {
        self.greeting = Some(greeting);
        self
    }
}

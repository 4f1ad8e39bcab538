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
    /// Lower-case hex. Written by hand: it is formatted into every
    /// session's log span, and `{:x}` through `fmt` costs several times more.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 16];
        let len = crate::digits::push_hex(&mut text, 0, self.0);
        f.pad(std::str::from_utf8(&text[..len]).unwrap_or_default())
    }
}

/// A socket address displayed as `Display` does (`192.0.2.1:25`,
/// `[2001:db8::1]:25`), written by hand for IPv4: every session's log span
/// carries its peer, and `SocketAddr`'s `Display` through `fmt` costs about
/// 1,700 instructions, a twentieth of a connection's work.
pub(crate) struct DisplayAddr(pub std::net::SocketAddr);

impl fmt::Display for DisplayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let std::net::SocketAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        // At most "255.255.255.255:65535".
        let mut text = [0u8; 21];
        let mut len = 0;
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            len = crate::digits::push_decimal(&mut text, len, u32::from(octet));
            text[len] = if i < 3 { b'.' } else { b':' };
            len += 1;
        }
        len = crate::digits::push_decimal(&mut text, len, u32::from(v4.port()));
        f.pad(std::str::from_utf8(&text[..len]).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_displays_match_the_standard_ones() {
        for id in [0, 1, 0xf, 0x10, 0x018c_2f0a_1b2c_3d00, u64::MAX] {
            assert_eq!(SessionId(id).to_string(), format!("{id:x}"));
            assert_eq!(format!("{:>20}", SessionId(id)), format!("{id:>20x}"));
        }
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:25",
            "10.20.30.40:1234",
            "192.0.2.199:65535",
            "255.255.255.255:65535",
            "[::1]:25",
            "[2001:db8::1%3]:587",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(DisplayAddr(addr).to_string(), addr.to_string());
            assert_eq!(
                format!("{:<30}|", DisplayAddr(addr)),
                format!("{:<30}|", addr.to_string())
            );
        }
    }
}

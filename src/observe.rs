//! Connection-level events for metrics and monitoring.
//!
//! What a tower layer cannot see (connections, commands, replies, TLS
//! handshakes, AUTH outcomes, bytes read) is reported to an [`Observer`]
//! set with [`Builder::observer`](crate::Builder::observer). The core
//! calls it synchronously from the connection's task, so an observer must
//! be cheap (bump a counter) and never block. Without one, nothing is
//! computed. `smtpsrv-middleware`'s `metrics` module has one that feeds
//! Prometheus.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::budget::MemoryBudget;
use crate::proto::Reply;

/// Receives the events of every connection of a server.
pub trait Observer: Send + Sync + 'static {
    /// One event; called on the connection's task.
    fn event(&self, event: Event<'_>);
}

/// Something that happened on a connection.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A connection was accepted and its session starts (on an implicit-TLS
    /// listener, after the handshake: one that fails is only reported as
    /// [`Event::TlsHandshake`]).
    Connected {
        /// The address it came in on (after a PROXY header, the one the
        /// client connected to).
        listener: SocketAddr,
        /// Implicit TLS (port 465 style).
        tls: bool,
    },
    /// The session ended.
    Closed {
        /// As in [`Event::Connected`].
        listener: SocketAddr,
        /// As in [`Event::Connected`].
        tls: bool,
        /// Why.
        reason: CloseReason,
    },
    /// A command line was read; `"invalid"` when it did not parse.
    Command {
        /// The verb in upper case (`"MAIL"`, `"BDAT"`, ...).
        verb: &'a str,
    },
    /// A reply was sent (its final line's code).
    Reply {
        /// The three-digit code.
        code: u16,
    },
    /// A TLS handshake finished (STARTTLS or implicit TLS).
    TlsHandshake {
        /// False when it failed or timed out.
        ok: bool,
    },
    /// An AUTH exchange finished.
    Auth {
        /// True when the credentials were accepted.
        ok: bool,
    },
    /// Octets read from the client (after TLS decryption).
    Received {
        /// How many.
        bytes: usize,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent QUIT.
    Quit,
    /// The client stayed silent past a timeout (421 4.4.2).
    Timeout,
    /// Too many errors in the session (421 4.7.0).
    ErrorLimit,
    /// The server is shutting down (421 4.3.0).
    Shutdown,
    /// The server closed for another reason: a hook or handler answered 421,
    /// a TLS handshake failed, the input could not be decoded.
    ServerClosed,
    /// The client went away (end of stream, reset, a failed write).
    PeerGone,
}

impl CloseReason {
    /// A short label (`"quit"`, `"timeout"`, ...), for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::Timeout => "timeout",
            CloseReason::ErrorLimit => "error_limit",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ServerClosed => "server_closed",
            CloseReason::PeerGone => "peer_gone",
        }
    }

    /// The reason behind a closing reply of the session.
    pub(crate) fn of(reply: &Reply) -> Self {
        let status = reply.status().map(|s| (s.class, s.subject, s.detail));
        match (reply.code(), status) {
            (221, _) => CloseReason::Quit,
            (421, Some((4, 7, 0))) => CloseReason::ErrorLimit,
            _ => CloseReason::ServerClosed,
        }
    }
}

/// The observer a server reports to (a `Config` field: the settings reach
/// every connection already).
#[derive(Clone)]
pub(crate) struct SharedObserver(pub Arc<dyn Observer>);

impl fmt::Debug for SharedObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// Reports `event` when there is an observer.
pub(crate) fn report(observer: &Option<SharedObserver>, event: Event<'_>) {
    if let Some(o) = observer {
        o.0.event(event);
    }
}

/// Reports each reply about to be written: the final line of each (a
/// line whose code is followed by a space, not by `-`).
pub(crate) fn report_replies(observer: &Option<SharedObserver>, written: &[u8]) {
    let Some(o) = observer else {
        return;
    };
    for line in written.split(|&b| b == b'\n') {
        if let [a, b, c, b' ', ..] = line
            && a.is_ascii_digit()
            && b.is_ascii_digit()
            && c.is_ascii_digit()
        {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            o.0.event(Event::Reply { code });
        }
    }
}

/// How much of the server's memory budget holds message bytes now
/// ([`Server::memory_gauge`](crate::Server::memory_gauge)).
#[derive(Debug, Clone)]
pub struct MemoryGauge(pub(crate) Arc<MemoryBudget>);

impl MemoryGauge {
    /// Octets reserved for messages being received, across connections.
    pub fn in_use(&self) -> usize {
        self.0.in_use()
    }

    /// The budget ([`Builder::memory_budget`](crate::Builder::memory_budget)).
    pub fn limit(&self) -> usize {
        self.0.limit()
    }
}

//! [`Context`]: everything a message handler receives.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::body::{Body, BodyError, BodyReader};
use crate::email::{Email, ParseError};
use crate::envelope::{Envelope, Recipient};
use crate::extensions::Extensions;
use crate::info::{Identity, SessionInfo};
use crate::proto::{Address, MailParams};
use crate::tls::TlsInfo;

/// A unique id for one message, for logs and file names: the session id and
/// the message's number within the session, e.g. `18c2f0a1b2c3d00.1`.
///
/// Held inline (no allocation per message): the longest id, a 64-bit hex
/// session id, a dot and a 32-bit number, is 27 octets.
#[derive(Clone, Copy)]
pub struct MessageId {
    text: [u8; MESSAGE_ID_MAX],
    len: u8,
}

const MESSAGE_ID_MAX: usize = 16 + 1 + 10;

impl MessageId {
    pub(crate) fn new(session: &SessionInfo, n: u32) -> Self {
        let mut text = [0u8; MESSAGE_ID_MAX];
        let mut len = crate::digits::push_hex(&mut text, 0, session.id().get());
        text[len] = b'.';
        len = crate::digits::push_decimal(&mut text, len + 1, n);
        MessageId {
            text,
            len: len as u8,
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits, a dot and decimal digits are ever written.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MessageId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One received message with its envelope and the facts of the session it
/// came in: what a message handler (`Service<Context>`) is called with.
///
/// The message bytes are exactly what the client sent, after dot-unstuffing,
/// CRLF line endings kept: no header is added and nothing is rewritten.
///
/// The message is a [`Body`]: in memory, spilled to a temporary file when
/// large, or streaming in streaming mode (see [`crate::body`]). The
/// accessors that return the whole message ([`message`](Self::message),
/// [`parse`](Self::parse), [`into_message`](Self::into_message)) read a
/// spilled body into memory on demand and are an error on a streaming one
/// ([`BodyError::NotBuffered`]; nothing here panics); use
/// [`body`](Self::body) to read any of them chunk by chunk.
#[derive(Debug, Clone)]
pub struct Context {
    id: MessageId,
    session: Arc<SessionInfo>,
    envelope: Arc<Envelope>,
    body: Body,
    received_at: SystemTime,
    extensions: Extensions,
}

impl Context {
    /// A context for a message (the server builds these; public so that
    /// layers and handlers can be tested without a socket).
    pub fn new(session: Arc<SessionInfo>, envelope: Envelope, message: Bytes) -> Self {
        Self::numbered(session, Arc::new(envelope), message, 1)
    }

    pub(crate) fn numbered(
        session: Arc<SessionInfo>,
        envelope: Arc<Envelope>,
        message: Bytes,
        n: u32,
    ) -> Self {
        Context {
            id: MessageId::new(&session, n),
            session,
            envelope,
            body: Body::from(message),
            received_at: SystemTime::now(),
            extensions: Extensions::new(),
        }
    }

    pub(crate) fn set_extensions(&mut self, extensions: Extensions) {
        self.extensions = extensions;
    }

    /// The message's unique id.
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// The session's facts: addresses, HELO name, TLS, identity.
    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// The client's address (the real one after the PROXY protocol).
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.session.peer_addr()
    }

    /// The address the client connected to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.session.local_addr()
    }

    /// The name the client gave in HELO/EHLO/LHLO.
    pub fn helo_name(&self) -> Option<&str> {
        self.session.helo_name()
    }

    /// TLS facts, if the message came over TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.session.tls()
    }

    /// The authenticated identity (never the password).
    pub fn identity(&self) -> Option<&Identity> {
        self.session.identity()
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The reverse-path; `None` is the null sender `<>`.
    pub fn reverse_path(&self) -> Option<&Address> {
        self.envelope.reverse_path()
    }

    /// Every recipient, in `RCPT` order.
    pub fn recipients(&self) -> &[Recipient] {
        self.envelope.recipients()
    }

    /// The `MAIL FROM` parameters.
    pub fn mail_params(&self) -> &MailParams {
        self.envelope.mail_params()
    }

    /// A context whose message is `body` (e.g. a spilled or streaming one
    /// in tests of a handler).
    pub fn with_body(session: Arc<SessionInfo>, envelope: Envelope, body: Body) -> Self {
        let mut ctx = Self::new(session, envelope, Bytes::new());
        ctx.body = body;
        ctx
    }

    /// The raw message (headers and body), as received, in memory.
    ///
    /// Zero-copy for an in-memory body; a spilled body is read from its
    /// file once, on demand (blocking; [`Body::bytes`] does it without).
    ///
    /// # Errors
    ///
    /// [`BodyError::NotBuffered`] on a streaming body (read it with
    /// [`Context::body`], or [`Body::buffer`] it first), [`BodyError::Io`]
    /// when a spilled file cannot be read. A handler that passes either on
    /// with `?` is answered `451`: the client retries, nothing is lost.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use smtpsrv::{Context, Envelope, SessionInfo};
    /// # let session = Arc::new(SessionInfo::new(
    /// #     "192.0.2.1:5000".parse().unwrap(), "127.0.0.1:25".parse().unwrap()));
    /// let ctx = Context::new(session, Envelope::default(), "Subject: x\r\n\r\nhi\r\n".into());
    /// assert!(ctx.message()?.starts_with(b"Subject: x"));
    /// # Ok::<(), smtpsrv::BodyError>(())
    /// ```
    pub fn message(&self) -> Result<&Bytes, BodyError> {
        self.body.as_bytes()
    }

    /// The message, whatever its shape: read it as chunks or as
    /// `AsyncRead` without loading it.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Mutable access to the message, e.g. to [`Body::prepend`] a header.
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Replaces the message body.
    pub fn set_body(&mut self, body: Body) {
        self.body = body;
    }

    /// The message size in octets; 0 for a streaming body, whose size is
    /// not known before its end.
    pub fn size(&self) -> usize {
        self.body.len().map_or(0, |n| n as usize)
    }

    /// The message as an [`AsyncRead`](tokio::io::AsyncRead), e.g. to stream
    /// it into a file or an HTTP body, without loading a spilled body.
    pub fn reader(&self) -> BodyReader {
        self.body.reader()
    }

    /// When the end of the data was received.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// Parses the message (MIME, headers, bodies, attachments). A spilled
    /// body is read into memory for this; a streaming one is
    /// [`ParseError::Unreadable`] (see [`Context::message`]), answered `451`
    /// when passed on with `?`, unlike a message with no header (`554`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use smtpsrv::{Context, Envelope, SessionInfo};
    /// # let session = Arc::new(SessionInfo::new(
    /// #     "192.0.2.1:5000".parse().unwrap(), "127.0.0.1:25".parse().unwrap()));
    /// let raw = "Subject: Hello\r\nFrom: Ann <ann@example.org>\r\n\r\nHi there\r\n";
    /// let ctx = Context::new(session, Envelope::default(), raw.into());
    /// let email = ctx.parse().unwrap();
    /// assert_eq!(email.subject(), Some("Hello"));
    /// assert_eq!(email.from()[0].address.as_deref(), Some("ann@example.org"));
    /// assert_eq!(email.text_body().as_deref(), Some("Hi there\r\n"));
    /// ```
    pub fn parse(&self) -> Result<Email, ParseError> {
        let message = self.message().map_err(ParseError::Unreadable)?;
        Email::parse(message.clone())
    }

    /// Results left by layers (SPF, DKIM, DMARC, ...).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Mutable access, for layers that add results.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Replaces the message with `message` in memory. To put a header on
    /// top of any body (spilled ones stay on disk), use
    /// [`Context::prepend`].
    pub fn set_message(&mut self, message: Bytes) {
        self.body = Body::from(message);
    }

    /// Puts header fields (complete, each ending in CRLF) on top of the
    /// message, whatever its shape (see [`Body::prepend`]).
    pub fn prepend(&mut self, field: &[u8]) {
        self.body.prepend(field);
    }

    /// Takes the message bytes out (loading a spilled body; an error on a
    /// streaming one, like [`Context::message`]).
    pub fn into_message(self) -> Result<Bytes, BodyError> {
        self.body.as_bytes().cloned()
    }

    /// Takes the message body out.
    pub fn into_body(self) -> Body {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(session: u64, n: u32) -> String {
        let mut info = SessionInfo::new(
            "192.0.2.1:1000".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        info.id = crate::info::SessionId::from_raw(session);
        MessageId::new(&info, n).to_string()
    }

    #[test]
    fn message_ids_read_as_session_hex_dot_number() {
        assert_eq!(id(0x18c2f0a1b2c3d00, 1), "18c2f0a1b2c3d00.1");
        assert_eq!(id(0, 0), "0.0");
        assert_eq!(id(u64::MAX, u32::MAX), "ffffffffffffffff.4294967295");
        assert_eq!(id(0xa, 10), format!("{:x}.{}", 0xa, 10));
    }
}

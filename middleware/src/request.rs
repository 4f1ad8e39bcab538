//! [`StageData`]: what layers read and change beyond [`Stage`]: the
//! recipient of a `RCPT` and the message of a `DATA`.
//!
//! Rust has no specialisation, so a layer generic over the stage cannot ask
//! "is this a [`Context`]?". Each request type says what it carries instead;
//! the defaults say "nothing", so a request type of your own needs only
//! `impl StageData for MyRequest {}`.

use smtpsrv::{
    Authenticate, Body, Connect, Context, Helo, MailFrom, MessageId, RcptTo, Recipient, Stage,
};

/// Stage-specific data for layers generic over the stage.
pub trait StageData: Stage {
    /// The recipient being decided on (`RCPT TO` only).
    fn recipient(&self) -> Option<&Recipient> {
        None
    }

    /// The message body (`DATA`/`BDAT` only): in memory, spilled to disk
    /// or, on a streaming server, still arriving. Layers look at its shape
    /// through [`Body`] (its length is known unless it streams) rather than
    /// loading it.
    fn body(&self) -> Option<&Body> {
        None
    }

    /// Mutable access to the body, for layers that buffer a streaming one
    /// or limit it.
    fn body_mut(&mut self) -> Option<&mut Body> {
        None
    }

    /// The message's id (`DATA`/`BDAT` only).
    fn message_id(&self) -> Option<&MessageId> {
        None
    }

    /// Puts a header field (one complete field, ending in CRLF) on top of
    /// the message; returns false where there is no message to change.
    fn prepend_header(&mut self, _field: &str) -> bool {
        false
    }
}

impl StageData for Connect {}
impl StageData for Helo {}
impl StageData for Authenticate {}
impl StageData for MailFrom {}

impl StageData for RcptTo {
    fn recipient(&self) -> Option<&Recipient> {
        Some(RcptTo::recipient(self))
    }
}

impl StageData for Context {
    fn body(&self) -> Option<&Body> {
        Some(Context::body(self))
    }

    fn body_mut(&mut self) -> Option<&mut Body> {
        Some(Context::body_mut(self))
    }

    fn message_id(&self) -> Option<&MessageId> {
        Some(self.id())
    }

    fn prepend_header(&mut self, field: &str) -> bool {
        // Spilled and streaming bodies keep the field apart (no load).
        Context::prepend(self, field.as_bytes());
        true
    }
}

/// The address a stage's reverse-path is checked as: `None` before `MAIL`,
/// `Some(None)` for the null sender.
pub(crate) fn sender<R: Stage>(req: &R) -> Option<Option<&smtpsrv::Address>> {
    req.envelope().map(|e| e.reverse_path())
}

/// The client's IP address, with IPv4-mapped IPv6 addresses (what a
/// dual-stack socket reports for IPv4 clients) turned back into IPv4.
pub(crate) fn client_ip<R: Stage>(req: &R) -> std::net::IpAddr {
    req.session().peer_addr().ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{context, session};

    #[test]
    fn prepend_header_only_changes_messages() {
        let mut ctx = context(
            session(),
            Some("a@example.org"),
            &["b@example.net"],
            "Subject: x\r\n\r\nhi\r\n",
        );
        assert!(ctx.prepend_header("X-Test: 1\r\n"));
        assert_eq!(
            &ctx.message().unwrap()[..],
            b"X-Test: 1\r\nSubject: x\r\n\r\nhi\r\n"
        );
        let mut helo = Helo::new(session(), smtpsrv::Greeting::Ehlo("c.example".into()));
        assert!(!helo.prepend_header("X-Test: 1\r\n"));
        assert!(StageData::body(&helo).is_none());
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        let s = std::sync::Arc::new(smtpsrv::SessionInfo::new(
            "[::ffff:192.0.2.7]:4000".parse().unwrap(),
            "[::]:25".parse().unwrap(),
        ));
        let c = Connect::new(s);
        assert_eq!(
            client_ip(&c),
            "192.0.2.7".parse::<std::net::IpAddr>().unwrap()
        );
    }
}

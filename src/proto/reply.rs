//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, 3463).
//!
//! A [`Reply`] is a value: rejections are replies, not errors. It also
//! implements [`std::error::Error`] so a handler may return `Err(reply)` and
//! have it sent as is.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};

/// Longest reply line we emit, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject, e.g. 1 for addressing, 3 for mail system, 5 for protocol.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// Builds `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// An SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more lines of text (lines are separated by `\n` in `text`).
///
/// The replies handlers and hooks send most have a named constructor
/// (RFC 5321 4.2.2 codes with RFC 3463 enhanced status codes); change the
/// text with [`with_text`](Self::with_text), keeping code and status:
///
/// | constructor | reply | when |
/// |---|---|---|
/// | [`ok`](Self::ok) | `250 2.0.0 OK` | accepted (what `()` means) |
/// | [`queued`](Self::queued) | `250 2.0.0 OK queued as <id>` | accepted, with your id |
/// | [`no_such_user`](Self::no_such_user) | `550 5.1.1 No such user here` | unknown recipient (RCPT) |
/// | [`mailbox_unavailable`](Self::mailbox_unavailable) | `550 5.2.1 Mailbox unavailable` | the mailbox exists but takes no mail |
/// | [`mailbox_full`](Self::mailbox_full) | `452 4.2.2 Mailbox full, try again later` | over quota, for now |
/// | [`relay_denied`](Self::relay_denied) | `550 5.7.1 Relaying denied` | a recipient domain you do not serve |
/// | [`rejected`](Self::rejected) | `550 5.7.1 Message refused` | any permanent policy refusal (say why) |
/// | [`message_too_large`](Self::message_too_large) | `552 5.3.4 Message too big for system` | a size limit |
/// | [`malformed_message`](Self::malformed_message) | `554 5.6.0 Malformed message` | content that can never be accepted |
/// | [`rate_limited`](Self::rate_limited) | `450 4.7.0 Too many requests, slow down` | a rate limit |
/// | [`temporarily_refused`](Self::temporarily_refused) | `451 4.7.1 Refused for now, try again later` | greylisting, a policy that cannot decide now |
/// | [`try_again_later`](Self::try_again_later) | `451 4.3.0 Temporary failure, try again later` | your store or backend failed |
/// | [`insufficient_storage`](Self::insufficient_storage) | `452 4.3.1 Insufficient system storage, try again later` | disk or memory full |
/// | [`auth_required`](Self::auth_required) | `530 5.7.0 Authentication required` | AUTH first |
/// | [`auth_failed`](Self::auth_failed) | `535 5.7.8 Authentication credentials invalid` | wrong credentials |
/// | [`service_unavailable`](Self::service_unavailable) | `421 4.3.2 Service not available, closing connection` | refuse a session (the server closes it) |
///
/// ```
/// use smtpsrv::Reply;
/// let reply = Reply::no_such_user().with_text("No mailbox called ann here");
/// assert_eq!(reply.to_string(), "550 5.1.1 No mailbox called ann here\r\n");
/// assert!(reply.is_permanent());
/// // Any other reply: the code, then (class, subject, detail) for "5.7.26".
/// let reply = Reply::new(550, (5, 7, 26), "Multiple authentication checks failed");
/// assert_eq!(reply.status().unwrap().to_string(), "5.7.26");
/// ```
///
/// # Code and class must agree
///
/// RFC 3463 3.1 requires the enhanced status class to be the reply code's
/// first digit: `Reply::new(451, (5, 3, 0), ..)` is a bug (is it temporary
/// or permanent?). It is loud where bugs are found: in a debug build (tests,
/// `cargo run`) [`Reply::new`] panics, naming both numbers (a panic in a
/// handler is answered with `451 4.3.0`, so even then no mail is lost). In a
/// release build the class is rewritten to the code's (`451 4.3.0`), and
/// [`status`](Self::status) reports what goes on the wire: the code decides,
/// because it is what every client acts on. A typed status per class
/// would make the mistake impossible, but at the price of spelling every
/// reply of every handler in a second vocabulary; the named constructors
/// above cover the common cases without any numbers at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code `(class, subject, detail)`, e.g.
    /// `(5, 1, 1)` for `5.1.1`.
    ///
    /// The code is clamped into 200..=599 so that a reply we emit is always
    /// well formed, whatever a handler passes.
    ///
    /// # Panics
    ///
    /// In debug builds, when the class of a 2xx, 4xx or 5xx reply is not the
    /// code's first digit (see [the type's docs](Reply#code-and-class-must-agree));
    /// release builds rewrite the class instead.
    #[track_caller]
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<Cow<'static, str>>) -> Self {
        let (mut class, subject, detail) = status;
        let code = code.clamp(200, 599);
        let code_class = (code / 100) as u8;
        if matches!(code_class, 2 | 4 | 5) && class != code_class {
            debug_assert!(
                false,
                "Reply::new({code}, ({class}, {subject}, {detail}), ..): the enhanced status \
                 class must be the code's first digit (RFC 3463 3.1), e.g. \
                 ({code_class}, {subject}, {detail}); release builds send that"
            );
            class = code_class;
        }
        Self {
            code,
            status: Some(EnhancedStatus::new(class, subject, detail)),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greetings and EHLO replies).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: code.clamp(200, 599),
            status: None,
            text: text.into(),
        }
    }

    /// `250 2.0.0 OK`: what `()` from a handler means.
    pub fn ok() -> Self {
        Self::new(250, (2, 0, 0), "OK")
    }

    /// `250 2.0.0 OK queued as <id>`: accepted, with the id the sender's
    /// logs will show (your store's, or [`Context::id`](crate::Context::id)).
    pub fn queued(id: impl fmt::Display) -> Self {
        Self::new(250, (2, 0, 0), format!("OK queued as {id}"))
    }

    /// `550 5.1.1 No such user here`: an unknown recipient, at `RCPT TO`
    /// (the transaction's other recipients stay accepted).
    pub fn no_such_user() -> Self {
        Self::new(550, (5, 1, 1), "No such user here")
    }

    /// `550 5.2.1 Mailbox unavailable`: the mailbox exists but does not
    /// take mail (disabled, moved without a forward).
    pub fn mailbox_unavailable() -> Self {
        Self::new(550, (5, 2, 1), "Mailbox unavailable")
    }

    /// `452 4.2.2 Mailbox full, try again later`: over quota, temporary, so
    /// the sender retries for a while before it bounces.
    pub fn mailbox_full() -> Self {
        Self::new(452, (4, 2, 2), "Mailbox full, try again later")
    }

    /// `550 5.7.1 Relaying denied`: a recipient in a domain this server does
    /// not serve, from a client not allowed to relay.
    pub fn relay_denied() -> Self {
        Self::new(550, (5, 7, 1), "Relaying denied")
    }

    /// `550 5.7.1 Message refused`: a permanent policy refusal at any stage;
    /// give the reason with [`with_text`](Self::with_text).
    pub fn rejected() -> Self {
        Self::new(550, (5, 7, 1), "Message refused")
    }

    /// `552 5.3.4 Message too big for system`: over a size limit.
    pub fn message_too_large() -> Self {
        Self::new(552, (5, 3, 4), "Message too big for system")
    }

    /// `554 5.6.0 Malformed message`: content that can never be accepted as
    /// it is (an [`email::ParseError`](crate::email::ParseError) is
    /// answered with this code and status).
    pub fn malformed_message() -> Self {
        Self::new(554, (5, 6, 0), "Malformed message")
    }

    /// `450 4.7.0 Too many requests, slow down`: a rate limit; temporary.
    pub fn rate_limited() -> Self {
        Self::new(450, (4, 7, 0), "Too many requests, slow down")
    }

    /// `451 4.7.1 Refused for now, try again later`: a policy decision that
    /// is not final (greylisting, a policy service that cannot answer now).
    pub fn temporarily_refused() -> Self {
        Self::new(451, (4, 7, 1), "Refused for now, try again later")
    }

    /// `451 4.3.0 Temporary failure, try again later`: your store or backend
    /// failed; what any handler error that is not a reply becomes.
    pub fn try_again_later() -> Self {
        Self::new(451, (4, 3, 0), "Temporary failure, try again later")
    }

    /// `452 4.3.1 Insufficient system storage, try again later`.
    pub fn insufficient_storage() -> Self {
        Self::new(
            452,
            (4, 3, 1),
            "Insufficient system storage, try again later",
        )
    }

    /// `530 5.7.0 Authentication required`.
    pub fn auth_required() -> Self {
        Self::new(530, (5, 7, 0), "Authentication required")
    }

    /// `535 5.7.8 Authentication credentials invalid`.
    pub fn auth_failed() -> Self {
        Self::new(535, (5, 7, 8), "Authentication credentials invalid")
    }

    /// `421 4.3.2 Service not available, closing connection`: from a hook,
    /// refuses the session and makes the server close it (RFC 5321 3.8).
    pub fn service_unavailable() -> Self {
        Self::new(421, (4, 3, 2), "Service not available, closing connection")
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// The text, lines separated by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx: the client should try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: the client must not retry as is.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Replaces the text, keeping code and status.
    pub fn with_text(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        self.text = text.into();
        self
    }

    /// Appends the reply in wire format (CRLF line endings, `-` on every
    /// line but the last) to `dst`. Lines longer than the RFC's 512 octets
    /// are cut; CR and LF inside a line never reach the wire.
    pub fn encode(&self, dst: &mut BytesMut) {
        // Most replies are one line without CR: no splitting, no filtering.
        if memchr::memchr2(b'\n', b'\r', self.text.as_bytes()).is_none() {
            self.encode_line(dst, &self.text, true, false);
            return;
        }
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            self.encode_line(dst, line, last, line.contains('\r'));
        }
    }

    /// One line of the reply: code, `-` or (on the `last`) a space, the
    /// enhanced status, the text without CRs (`has_cr`: the caller looked),
    /// cut to the longest line.
    fn encode_line(&self, dst: &mut BytesMut, line: &str, last: bool, has_cr: bool) {
        // Code, separator and status into one small array, then three
        // slices: each `put` on `BytesMut` checks its room.
        let mut prefix = [0u8; 20];
        prefix[..4].copy_from_slice(&itoa_3(self.code));
        prefix[3] = if last { b' ' } else { b'-' };
        let mut len = 4;
        if let Some(s) = self.status {
            len = crate::digits::push_decimal(&mut prefix, len, u32::from(s.class));
            prefix[len] = b'.';
            len = crate::digits::push_decimal(&mut prefix, len + 1, u32::from(s.subject));
            prefix[len] = b'.';
            len = crate::digits::push_decimal(&mut prefix, len + 1, u32::from(s.detail));
            if !line.is_empty() {
                prefix[len] = b' ';
                len += 1;
            }
        }
        dst.reserve(len + line.len() + 2);
        dst.put_slice(&prefix[..len]);
        let room = MAX_REPLY_LINE - 2 - len;
        if !has_cr {
            dst.put_slice(&line.as_bytes()[..line.len().min(room)]);
        } else {
            for (taken, b) in line.bytes().filter(|&b| b != b'\r').enumerate() {
                if taken == room {
                    break;
                }
                dst.put_u8(b);
            }
        }
        dst.put_slice(b"\r\n");
    }
}

fn itoa_3(code: u16) -> [u8; 4] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        f.write_str(&String::from_utf8_lossy(&buf))
    }
}

impl std::error::Error for Reply {}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut b = BytesMut::new();
        r.encode(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(wire(&Reply::ok()), "250 2.0.0 OK\r\n");
        assert_eq!(
            wire(&Reply::plain(250, "mx.example\nPIPELINING\nSIZE 10")),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        assert_eq!(
            wire(&Reply::new(214, (2, 0, 0), "a\nb")),
            "214-2.0.0 a\r\n214 2.0.0 b\r\n"
        );
        assert_eq!(wire(&Reply::new(334, (2, 0, 0), "")), "334 2.0.0\r\n");
        assert_eq!(wire(&Reply::plain(334, "")), "334 \r\n");
    }

    /// Loud in debug builds (the tests), rewritten in release builds.
    #[test]
    fn a_class_mismatch_is_loud() {
        let built = std::panic::catch_unwind(|| Reply::new(451, (5, 3, 0), "x"));
        if cfg!(debug_assertions) {
            let panic = built.unwrap_err();
            let text = panic.downcast_ref::<String>().unwrap();
            assert!(text.contains("Reply::new(451, (5, 3, 0), ..)"), "{text}");
            assert!(text.contains("(4, 3, 0)"), "{text}");
        } else {
            let reply = built.unwrap();
            assert_eq!(wire(&reply), "451 4.3.0 x\r\n");
            assert_eq!(reply.status().unwrap().to_string(), "4.3.0");
        }
    }

    #[test]
    fn named_constructors_agree_with_their_docs() {
        let all = [
            (Reply::ok(), "250 2.0.0 OK"),
            (Reply::queued("abc"), "250 2.0.0 OK queued as abc"),
            (Reply::no_such_user(), "550 5.1.1 No such user here"),
            (
                Reply::mailbox_unavailable(),
                "550 5.2.1 Mailbox unavailable",
            ),
            (
                Reply::mailbox_full(),
                "452 4.2.2 Mailbox full, try again later",
            ),
            (Reply::relay_denied(), "550 5.7.1 Relaying denied"),
            (Reply::rejected(), "550 5.7.1 Message refused"),
            (
                Reply::message_too_large(),
                "552 5.3.4 Message too big for system",
            ),
            (Reply::malformed_message(), "554 5.6.0 Malformed message"),
            (
                Reply::rate_limited(),
                "450 4.7.0 Too many requests, slow down",
            ),
            (
                Reply::temporarily_refused(),
                "451 4.7.1 Refused for now, try again later",
            ),
            (
                Reply::try_again_later(),
                "451 4.3.0 Temporary failure, try again later",
            ),
            (
                Reply::insufficient_storage(),
                "452 4.3.1 Insufficient system storage, try again later",
            ),
            (Reply::auth_required(), "530 5.7.0 Authentication required"),
            (
                Reply::auth_failed(),
                "535 5.7.8 Authentication credentials invalid",
            ),
            (
                Reply::service_unavailable(),
                "421 4.3.2 Service not available, closing connection",
            ),
        ];
        for (reply, line) in all {
            assert_eq!(wire(&reply), format!("{line}\r\n"));
        }
    }

    #[test]
    fn lines_are_bounded() {
        let long = "x".repeat(2000);
        let w = wire(&Reply::new(250, (2, 0, 0), long));
        assert_eq!(w.len(), MAX_REPLY_LINE);
        assert!(w.ends_with("\r\n"));
        assert_eq!(wire(&Reply::plain(250, "a\rb")), "250 ab\r\n");
        assert_eq!(Reply::plain(99, "x").code(), 200);
    }
}

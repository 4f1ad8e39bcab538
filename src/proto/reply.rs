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
/// ```
/// use smtpsrv::proto::Reply;
/// let reply = Reply::new(550, (5, 1, 1), "No such user here");
/// assert_eq!(reply.to_string(), "550 5.1.1 No such user here\r\n");
/// assert!(reply.is_permanent());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    ///
    /// The code is clamped into 200..=599 so that a reply we emit is always
    /// well formed, whatever a handler passes.
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<Cow<'static, str>>) -> Self {
        let (class, subject, detail) = status;
        Self {
            code: code.clamp(200, 599),
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

    /// Makes the enhanced status agree with the reply code's class, as RFC
    /// 3463 requires; a handler's `Reply::new(451, (5, ..))` is corrected.
    fn status_for_wire(&self) -> Option<EnhancedStatus> {
        self.status.map(|s| {
            let class = (self.code / 100) as u8;
            if matches!(class, 2 | 4 | 5) {
                EnhancedStatus { class, ..s }
            } else {
                s
            }
        })
    }

    /// Appends the reply in wire format (CRLF line endings, `-` on every
    /// line but the last) to `dst`. Lines longer than the RFC's 512 octets
    /// are cut; CR and LF inside a line never reach the wire.
    pub fn encode(&self, dst: &mut BytesMut) {
        let status = self.status_for_wire();
        let mut lines = self.text.split('\n').peekable();
        if lines.peek().is_none() {
            lines = "".split('\n').peekable();
        }
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            let start = dst.len();
            let mut code = itoa_3(self.code);
            code[3] = if last { b' ' } else { b'-' };
            dst.put_slice(&code);
            if let Some(s) = status {
                put_number(dst, u16::from(s.class));
                dst.put_u8(b'.');
                put_number(dst, s.subject);
                dst.put_u8(b'.');
                put_number(dst, s.detail);
                if !line.is_empty() {
                    dst.put_u8(b' ');
                }
            }
            let room = MAX_REPLY_LINE - 2 - (dst.len() - start);
            if !line.contains('\r') {
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
}

/// Appends a number in decimal without going through `fmt`.
fn put_number(dst: &mut BytesMut, mut n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
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

    #[test]
    fn status_class_follows_code_and_lines_are_bounded() {
        assert_eq!(wire(&Reply::new(451, (5, 3, 0), "x")), "451 4.3.0 x\r\n");
        let long = "x".repeat(2000);
        let w = wire(&Reply::new(250, (2, 0, 0), long));
        assert_eq!(w.len(), MAX_REPLY_LINE);
        assert!(w.ends_with("\r\n"));
        assert_eq!(wire(&Reply::plain(250, "a\rb")), "250 ab\r\n");
        assert_eq!(Reply::plain(99, "x").code(), 200);
    }
}

//! A parsed email message with easy accessors, built on [`mail_parser`].
//!
//! [`Email`] keeps the raw message (`Bytes`) and the `mail_parser::Message`
//! that borrows from it, so the raw bytes are never copied: parts that needed
//! no decoding (7bit/8bit/binary, message/rfc822) are handed out as
//! zero-copy slices of them.
//!
//! Why borrow instead of `Message::into_owned()`: an owned message copies the
//! whole raw input once more, and every non-encoded message/rfc822 part keeps
//! its own copy of the *whole outer* message, so a message made of many tiny
//! forwarded parts next to one large blob would multiply its size in memory.
//! `self_cell` gives us the owner + borrower pair without unsafe code here.

use std::{borrow::Cow, fmt, sync::Arc};

use bytes::Bytes;
use mail_parser::{
    Addr, DateTime, Header, HeaderForm, HeaderName, HeaderValue, Message, MessageParser,
    MessagePart, MimeHeaders, PartType,
};

/// The borrowed message, named so that `self_cell` can name its lifetime.
type BorrowedMessage<'raw> = Message<'raw>;

self_cell::self_cell!(
    /// The raw bytes and the message parsed from (and borrowing) them.
    struct ParsedEmail {
        owner: Bytes,

        #[covariant]
        dependent: BorrowedMessage,
    }
);

/// Why a message could not be parsed at all.
///
/// Parsing is lenient: mail-parser (0.11) recovers what it can from
/// malformed MIME, encodings and header values. It reads the message line
/// by line and fails in exactly one case: it reaches the end of the input
/// without finding either a header field or a blank line.
///
/// - A line is a header field when it has a `:` after at least one
///   character other than a space or tab. Other lines are skipped.
/// - An unterminated last line (no line ending) is taken as a field name,
///   colon or not.
/// - A blank line (empty, or only spaces and tabs) ends the header section,
///   even an empty one: everything after it is the body.
///
/// | message | result |
/// |---|---|
/// | empty (`DATA` followed at once by `.`) | `NoHeaders` |
/// | `hello world\r\n`, `hello\r\nworld\r\n` | `NoHeaders` |
/// | `: value\r\n` (no field name) | `NoHeaders` |
/// | `no header here` (no line ending: possible with `BDAT`, not `DATA`) | parsed, one odd field |
/// | `\r\n`, `hello world\r\n\r\nbody\r\n` | parsed: no headers, a body |
/// | `junk\r\nSubject: hi\r\n\r\nbody\r\n` | parsed, the junk line skipped |
///
/// The server answers it by itself with `554 5.6.0`, a permanent failure
/// ([`error_reply`](crate::error_reply)): `ctx.parse()?` in a handler
/// refuses such a message for good, because the same bytes would fail on
/// every retry, except [`Unreadable`](ParseError::Unreadable), which is
/// not the message's fault and is answered `451` (or `552` for a body over
/// a limit). Any other handler error is a temporary `451 4.3.0`.
///
/// `PartialEq` compares [`Unreadable`](ParseError::Unreadable) errors by
/// their text (an I/O error has no equality of its own).
///
/// ```
/// use smtpsrv::email::{Email, ParseError};
/// assert_eq!(Email::parse("hello world\r\n").unwrap_err(), ParseError::NoHeaders);
/// assert!(Email::parse("no header here").is_ok());
/// let reply = smtpsrv::error_reply(Box::new(ParseError::NoHeaders));
/// assert_eq!(reply.to_string(), "554 5.6.0 Malformed message: not an email message: no header found\r\n");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Neither a header field nor a blank line (see the type's docs).
    #[error("not an email message: no header found")]
    NoHeaders,
    /// The message could not be had whole: a streaming body (buffer it
    /// first) or a spilled file that cannot be read. Not the message's
    /// fault, so it is answered `451`, not `554`.
    #[error("message body not readable: {0}")]
    Unreadable(#[source] crate::body::BodyError),
}

impl PartialEq for ParseError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ParseError::NoHeaders, ParseError::NoHeaders) => true,
            (ParseError::Unreadable(a), ParseError::Unreadable(b)) => {
                a.to_string() == b.to_string()
            }
            _ => false,
        }
    }
}

impl Eq for ParseError {}

/// A parsed email message (RFC 5322 + MIME).
///
/// Header accessors decode RFC 2047 encoded words; bodies and text
/// attachments are converted to UTF-8 from any charset mail-parser knows.
/// Cloning is cheap (the parsed message is shared).
#[derive(Clone)]
pub struct Email {
    parsed: Arc<ParsedEmail>,
}

/// One mailbox of an address header. Groups (`team: a@x, b@y;`) are flattened
/// into their members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The display name, decoded (`"Jane Doe"` in `Jane Doe <jane@example.com>`).
    pub name: Option<String>,
    /// The address (`jane@example.com`); `None` when the header held only a name.
    pub address: Option<String>,
}

/// A file carried by a message: an attachment or an embedded (cid) file.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name from `Content-Disposition: ...; filename=` or
    /// `Content-Type: ...; name=` (RFC 2047 / RFC 2231 decoded).
    pub filename: Option<String>,
    /// The media type, `type/subtype` in lower case, without parameters.
    pub content_type: String,
    /// The `Content-ID`, without the angle brackets (what `cid:` URLs name).
    pub content_id: Option<String>,
    /// The content with the transfer encoding (base64, quoted-printable)
    /// removed. For `text/*` parts this is UTF-8 converted from the part's
    /// charset; for `message/rfc822` parts it is the raw nested message,
    /// which [`Email::parse`] accepts as it is.
    pub data: Bytes,
}

impl fmt::Debug for Attachment {
    // The data may be megabytes: show its size, not its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("content_id", &self.content_id)
            .field("size", &self.data.len())
            .finish()
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("message_id", &self.message_id())
            .field("subject", &self.subject())
            .field("size", &self.raw().len())
            .finish_non_exhaustive()
    }
}

impl Email {
    /// Parses a raw message (header and body, CRLF line endings as received).
    ///
    /// Accepts anything that converts into [`Bytes`] (`Bytes`, `Vec<u8>`,
    /// `String`, `&'static [u8]`, `&'static str`); `Bytes` is not copied.
    /// Malformed input is parsed as far as possible; the only error is input
    /// with neither a header field nor a blank line (the exact rule is on
    /// [`ParseError`]). Never panics.
    ///
    /// ```
    /// use smtpsrv::email::Email;
    ///
    /// let raw = "From: Jane Doe <jane@example.com>\r\n\
    ///            To: bob@example.org\r\n\
    ///            Subject: =?UTF-8?Q?Caf=C3=A9?=\r\n\
    ///            \r\n\
    ///            See you there.\r\n";
    /// let email = Email::parse(raw).unwrap();
    /// assert_eq!(email.subject(), Some("Café"));
    /// assert_eq!(email.from()[0].name.as_deref(), Some("Jane Doe"));
    /// assert_eq!(email.to()[0].address.as_deref(), Some("bob@example.org"));
    /// assert_eq!(email.text_body().as_deref(), Some("See you there.\r\n"));
    /// assert!(Email::parse("").is_err());
    /// ```
    pub fn parse(raw: impl Into<Bytes>) -> Result<Email, ParseError> {
        let parsed = ParsedEmail::try_new(raw.into(), |raw| {
            MessageParser::new()
                .parse(raw.as_ref())
                .filter(|message| !message.parts.is_empty())
                .ok_or(ParseError::NoHeaders)
        })?;
        Ok(Email {
            parsed: Arc::new(parsed),
        })
    }

    /// The raw message as it was given to [`Email::parse`].
    pub fn raw(&self) -> &Bytes {
        self.parsed.borrow_owner()
    }

    /// The full mail-parser message, for what the accessors here do not cover.
    pub fn message(&self) -> &Message<'_> {
        self.parsed.borrow_dependent()
    }

    /// The decoded `Subject`.
    pub fn subject(&self) -> Option<&str> {
        self.first_value(HeaderName::Subject)?.as_text()
    }

    /// The first mailbox of `Sender`.
    pub fn sender(&self) -> Option<Mailbox> {
        self.all_mailboxes(HeaderName::Sender).into_iter().next()
    }

    /// The mailboxes of `From` (every `From` header, in order).
    pub fn from(&self) -> Vec<Mailbox> {
        self.all_mailboxes(HeaderName::From)
    }

    /// The mailboxes of `Reply-To`.
    pub fn reply_to(&self) -> Vec<Mailbox> {
        self.all_mailboxes(HeaderName::ReplyTo)
    }

    /// The mailboxes of `To` (every `To` header, as obsolete syntax allows several).
    pub fn to(&self) -> Vec<Mailbox> {
        self.all_mailboxes(HeaderName::To)
    }

    /// The mailboxes of `Cc`.
    pub fn cc(&self) -> Vec<Mailbox> {
        self.all_mailboxes(HeaderName::Cc)
    }

    /// The mailboxes of `Bcc` (rarely present in received mail).
    pub fn bcc(&self) -> Vec<Mailbox> {
        self.all_mailboxes(HeaderName::Bcc)
    }

    /// `Date` as RFC 3339 (`2024-03-01T09:30:00+01:00`); `None` when absent or invalid.
    pub fn date(&self) -> Option<String> {
        self.date_time().map(|date| date.to_rfc3339())
    }

    /// `Date` as mail-parser's [`DateTime`] (has `to_timestamp()`); `None` when
    /// absent or invalid.
    pub fn date_time(&self) -> Option<DateTime> {
        valid_date(self.first_value(HeaderName::Date)?)
    }

    /// `Message-ID`, without the angle brackets.
    pub fn message_id(&self) -> Option<&str> {
        first_text(self.first_value(HeaderName::MessageId)?)
    }

    /// The message ids of `In-Reply-To`, without angle brackets.
    pub fn in_reply_to(&self) -> Vec<String> {
        self.all_texts(HeaderName::InReplyTo)
    }

    /// The message ids of `References`, oldest first, without angle brackets.
    pub fn references(&self) -> Vec<String> {
        self.all_texts(HeaderName::References)
    }

    /// The mailboxes of the most recent `Resent-From` (the topmost one: each
    /// resending prepends a new block of `Resent-*` headers).
    pub fn resent_from(&self) -> Vec<Mailbox> {
        self.first_mailboxes(HeaderName::ResentFrom)
    }

    /// The first mailbox of the most recent `Resent-Sender`.
    pub fn resent_sender(&self) -> Option<Mailbox> {
        self.first_mailboxes(HeaderName::ResentSender)
            .into_iter()
            .next()
    }

    /// The mailboxes of the most recent `Resent-To`.
    pub fn resent_to(&self) -> Vec<Mailbox> {
        self.first_mailboxes(HeaderName::ResentTo)
    }

    /// The mailboxes of the most recent `Resent-Cc`.
    pub fn resent_cc(&self) -> Vec<Mailbox> {
        self.first_mailboxes(HeaderName::ResentCc)
    }

    /// The mailboxes of the most recent `Resent-Bcc`.
    pub fn resent_bcc(&self) -> Vec<Mailbox> {
        self.first_mailboxes(HeaderName::ResentBcc)
    }

    /// The mailboxes of the most recent `Resent-Reply-To` (RFC 822; dropped by
    /// RFC 5322 but still seen).
    pub fn resent_reply_to(&self) -> Vec<Mailbox> {
        // Not a header mail-parser knows, so it was kept raw: parse it here.
        self.message()
            .header_as("Resent-Reply-To", HeaderForm::Addresses)
            .first()
            .map(mailboxes)
            .unwrap_or_default()
    }

    /// The most recent `Resent-Date` as RFC 3339.
    pub fn resent_date(&self) -> Option<String> {
        self.resent_date_time().map(|date| date.to_rfc3339())
    }

    /// The most recent `Resent-Date` as mail-parser's [`DateTime`].
    pub fn resent_date_time(&self) -> Option<DateTime> {
        valid_date(self.first_value(HeaderName::ResentDate)?)
    }

    /// The most recent `Resent-Message-ID`, without the angle brackets.
    pub fn resent_message_id(&self) -> Option<&str> {
        first_text(self.first_value(HeaderName::ResentMessageId)?)
    }

    /// The message's media type, `type/subtype` in lower case without
    /// parameters (`multipart/mixed`); `None` when there is no `Content-Type`
    /// (which MIME reads as `text/plain`).
    pub fn content_type(&self) -> Option<String> {
        self.root().and_then(media_type)
    }

    /// The plain-text body: the inline `text/plain` parts that make up the
    /// message body, joined by line breaks. `None` when there is no such text
    /// (or it is empty); an HTML-only message is *not* converted to text.
    pub fn text_body(&self) -> Option<String> {
        let message = self.message();
        join_bodies(
            body_parts(message, &message.text_body).filter_map(|part| match &part.body {
                PartType::Text(text) => Some(text.as_ref()),
                _ => None,
            }),
        )
    }

    /// The HTML body: the inline `text/html` parts that make up the message
    /// body, joined by line breaks. `None` when there is no such HTML (or it
    /// is empty); a text-only message is not converted to HTML.
    pub fn html_body(&self) -> Option<String> {
        let message = self.message();
        join_bodies(
            body_parts(message, &message.html_body).filter_map(|part| match &part.body {
                PartType::Html(html) => Some(html.as_ref()),
                _ => None,
            }),
        )
    }

    /// The files attached to the message: every part that is not part of the
    /// body and not an [embedded file](Email::embedded_files). This includes
    /// inline images without a `Content-ID`, text attachments and forwarded
    /// messages (`message/rfc822`, whose own attachments stay inside them).
    pub fn attachments(&self) -> Vec<Attachment> {
        self.files(|part| !is_embedded(part))
    }

    /// The files embedded in the body and referenced by `cid:` URLs: parts
    /// with a `Content-ID` that are not marked `Content-Disposition: attachment`
    /// (typically the images of a `multipart/related` HTML body).
    pub fn embedded_files(&self) -> Vec<Attachment> {
        self.files(is_embedded)
    }

    /// The value of the first header with this name (case-insensitive), as it
    /// is in the message: not RFC 2047 decoded, but unfolded (line breaks of
    /// continuation lines removed) and trimmed. Bytes that are not UTF-8 are
    /// replaced with U+FFFD.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.raw_headers(name).next()
    }

    /// The values of every header with this name, in message order, in the
    /// form [`Email::header`] gives.
    pub fn headers(&self, name: &str) -> Vec<Cow<'_, str>> {
        self.raw_headers(name).collect()
    }

    fn raw_headers<'a>(&'a self, name: &str) -> impl Iterator<Item = Cow<'a, str>> {
        let raw = self.raw();
        self.top_headers()
            .iter()
            .filter(move |header| header.name.as_str().eq_ignore_ascii_case(name))
            .map(move |header| {
                let value = raw
                    .get(header.offset_start as usize..header.offset_end as usize)
                    .unwrap_or_default();
                unfold(value)
            })
    }

    fn root(&self) -> Option<&MessagePart<'_>> {
        self.message().parts.first()
    }

    fn top_headers(&self) -> &[Header<'_>] {
        self.root().map_or(&[], |part| part.headers.as_slice())
    }

    fn values(&self, name: HeaderName<'static>) -> impl Iterator<Item = &HeaderValue<'_>> {
        self.top_headers()
            .iter()
            .filter(move |header| header.name == name)
            .map(|header| &header.value)
    }

    fn first_value(&self, name: HeaderName<'static>) -> Option<&HeaderValue<'_>> {
        self.values(name).next()
    }

    fn all_mailboxes(&self, name: HeaderName<'static>) -> Vec<Mailbox> {
        self.values(name).flat_map(mailboxes).collect()
    }

    fn first_mailboxes(&self, name: HeaderName<'static>) -> Vec<Mailbox> {
        self.first_value(name).map(mailboxes).unwrap_or_default()
    }

    fn all_texts(&self, name: HeaderName<'static>) -> Vec<String> {
        self.values(name)
            .filter_map(HeaderValue::as_text_list)
            .flatten()
            .map(|text| text.to_string())
            .collect()
    }

    fn files(&self, wanted: impl Fn(&MessagePart<'_>) -> bool) -> Vec<Attachment> {
        let message = self.message();
        body_parts(message, &message.attachments)
            .filter(|part| wanted(part))
            .map(|part| Attachment {
                filename: part.attachment_name().map(str::to_owned),
                content_type: media_type(part).unwrap_or_else(|| default_media_type(part).into()),
                content_id: part.content_id().map(strip_angle_brackets),
                data: self.share(part_data(part)),
            })
            .collect()
    }

    /// `data` as `Bytes`: a zero-copy slice of the raw message when `data`
    /// lies inside it (parts that needed no decoding), a copy otherwise.
    fn share(&self, data: &[u8]) -> Bytes {
        let raw = self.raw();
        let raw_start = raw.as_ptr() as usize;
        match (data.as_ptr() as usize).checked_sub(raw_start) {
            Some(start) if !data.is_empty() && start.saturating_add(data.len()) <= raw.len() => {
                raw.slice(start..start + data.len())
            }
            _ => Bytes::copy_from_slice(data),
        }
    }
}

/// An embedded file has a Content-ID and is not explicitly an attachment.
fn is_embedded(part: &MessagePart<'_>) -> bool {
    part.content_id().is_some()
        && !part
            .content_disposition()
            .is_some_and(|disposition| disposition.is_attachment())
}

/// The parts named by `ids` (mail-parser's part indexes), skipping any that
/// do not exist rather than panicking.
fn body_parts<'m, 'raw>(
    message: &'m Message<'raw>,
    ids: &'m [u32],
) -> impl Iterator<Item = &'m MessagePart<'raw>> {
    ids.iter()
        .filter_map(|&id| message.parts.get(usize::try_from(id).ok()?))
}

fn part_data<'a>(part: &'a MessagePart<'_>) -> &'a [u8] {
    match &part.body {
        PartType::Text(text) | PartType::Html(text) => text.as_bytes(),
        PartType::Binary(data) | PartType::InlineBinary(data) => data,
        PartType::Message(nested) => nested.raw_message(),
        PartType::Multipart(_) => &[],
    }
}

fn media_type(part: &MessagePart<'_>) -> Option<String> {
    let content_type = part.content_type()?;
    let mut media_type = content_type.ctype().to_ascii_lowercase();
    if let Some(subtype) = content_type.subtype() {
        media_type.push('/');
        media_type.push_str(&subtype.to_ascii_lowercase());
    }
    Some(media_type)
}

/// RFC 2045's default for a part without Content-Type (RFC 2046 for digests,
/// which mail-parser has already applied by parsing the part as a message).
fn default_media_type(part: &MessagePart<'_>) -> &'static str {
    if part.is_message() {
        "message/rfc822"
    } else {
        "text/plain"
    }
}

fn mailboxes(value: &HeaderValue<'_>) -> Vec<Mailbox> {
    value
        .as_address()
        .map(|address| address.iter().map(Mailbox::from_addr).collect())
        .unwrap_or_default()
}

impl Mailbox {
    fn from_addr(addr: &Addr<'_>) -> Mailbox {
        Mailbox {
            name: addr.name.as_deref().map(str::to_owned),
            address: addr.address.as_deref().map(str::to_owned),
        }
    }
}

fn first_text<'a>(value: &'a HeaderValue<'_>) -> Option<&'a str> {
    value.as_text_list()?.first().map(|text| text.as_ref())
}

fn valid_date(value: &HeaderValue<'_>) -> Option<DateTime> {
    value.as_datetime().filter(|date| date.is_valid()).copied()
}

fn strip_angle_brackets(id: &str) -> String {
    let id = id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    id.strip_suffix('>').unwrap_or(id).to_owned()
}

/// Joins body parts, putting a line break between two parts when the first
/// does not end with one, so their lines do not run together. `None` when
/// there is no text at all: mail-parser reports an empty body part for
/// `header CRLF CRLF` but none for a header block without the blank line,
/// and callers should not see that difference.
fn join_bodies<'a>(parts: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut joined: Option<String> = None;
    for part in parts {
        match &mut joined {
            None => joined = Some(part.to_owned()),
            Some(text) => {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push_str("\r\n");
                }
                text.push_str(part);
            }
        }
    }
    joined.filter(|text| !text.is_empty())
}

/// A header value unfolded (RFC 5322 §2.2.3: a line break followed by white
/// space is removed) and trimmed; borrowed when nothing had to change.
fn unfold(value: &[u8]) -> Cow<'_, str> {
    let value = value.trim_ascii();
    if value.contains(&b'\n') || value.contains(&b'\r') {
        let unfolded: Vec<u8> = value
            .iter()
            .copied()
            .filter(|&byte| byte != b'\r' && byte != b'\n')
            .collect();
        Cow::Owned(String::from_utf8_lossy(&unfolded).into_owned())
    } else {
        String::from_utf8_lossy(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a message from lines joined with CRLF (the test sources use `\n`).
    fn crlf(text: &str) -> Bytes {
        Bytes::from(text.replace('\n', "\r\n"))
    }

    fn parse(text: &str) -> Email {
        Email::parse(crlf(text)).unwrap()
    }

    fn mailbox(name: Option<&str>, address: &str) -> Mailbox {
        Mailbox {
            name: name.map(str::to_owned),
            address: Some(address.to_owned()),
        }
    }

    const ALTERNATIVE: &str = "From: Alice <alice@example.com>
To: bob@example.org
Subject: Hello
MIME-Version: 1.0
Content-Type: Multipart/Alternative; boundary=\"alt\"

--alt
Content-Type: text/plain; charset=utf-8

Hello, Bob.
--alt
Content-Type: text/html; charset=utf-8

<p>Hello, <b>Bob</b>.</p>
--alt--
";

    #[test]
    fn alternative_gives_both_bodies_and_no_files() {
        let email = parse(ALTERNATIVE);
        assert_eq!(
            email.content_type().as_deref(),
            Some("multipart/alternative")
        );
        assert_eq!(email.text_body().as_deref(), Some("Hello, Bob."));
        assert_eq!(
            email.html_body().as_deref(),
            Some("<p>Hello, <b>Bob</b>.</p>")
        );
        assert!(email.attachments().is_empty());
        assert!(email.embedded_files().is_empty());
    }

    #[test]
    fn html_only_message_has_no_text_body() {
        let email = parse(
            "Subject: html\nContent-Type: text/html; charset=utf-8\n\n<p>Only <i>HTML</i></p>\n",
        );
        assert_eq!(email.text_body(), None);
        assert_eq!(
            email.html_body().as_deref(),
            Some("<p>Only <i>HTML</i></p>\r\n")
        );

        let alternative_html_only = parse(
            "Subject: html\nContent-Type: multipart/alternative; boundary=b\n\n--b\n\
             Content-Type: text/html\n\n<p>x</p>\n--b--\n",
        );
        assert_eq!(alternative_html_only.text_body(), None);
        assert_eq!(
            alternative_html_only.html_body().as_deref(),
            Some("<p>x</p>")
        );
    }

    #[test]
    fn text_only_message_has_no_html_body() {
        let email = parse("Subject: plain\n\nJust text.\n");
        assert_eq!(email.content_type(), None);
        assert_eq!(email.text_body().as_deref(), Some("Just text.\r\n"));
        assert_eq!(email.html_body(), None);
    }

    #[test]
    fn several_inline_text_parts_are_joined() {
        let email = parse(
            "Subject: parts\nContent-Type: multipart/mixed; boundary=m\n\n--m\n\
             Content-Type: text/plain\n\nfirst\n--m\nContent-Type: text/plain\n\
             Content-Disposition: inline\n\nsecond\n--m--\n",
        );
        assert_eq!(email.text_body().as_deref(), Some("first\r\nsecond"));
    }

    const MIXED: &str = "From: alice@example.com
Subject: Files
Content-Type: multipart/mixed; boundary=\"mix\"

--mix
Content-Type: text/plain

See attached.
--mix
Content-Type: image/png
Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.png
Content-Transfer-Encoding: base64

iVBORw0K
GgoA//4=
--mix
Content-Type: text/plain; charset=utf-8; name=\"notes.txt\"
Content-Disposition: attachment; filename=\"notes.txt\"
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 au =
lait=0D=0A=3D done
--mix--
";

    #[test]
    fn mixed_with_base64_and_quoted_printable_attachments() {
        let email = parse(MIXED);
        assert_eq!(email.text_body().as_deref(), Some("See attached."));
        assert_eq!(email.html_body(), None);
        assert!(email.embedded_files().is_empty());

        let files = email.attachments();
        assert_eq!(files.len(), 2, "{files:?}");

        assert_eq!(files[0].filename.as_deref(), Some("résumé.png"));
        assert_eq!(files[0].content_type, "image/png");
        assert_eq!(files[0].content_id, None);
        assert_eq!(&files[0].data[..], b"\x89PNG\r\n\x1a\n\x00\xff\xfe");

        assert_eq!(files[1].filename.as_deref(), Some("notes.txt"));
        assert_eq!(files[1].content_type, "text/plain");
        assert_eq!(&files[1].data[..], "café au lait\r\n= done".as_bytes());
    }

    const RELATED: &str = "From: alice@example.com
Subject: Logo
Content-Type: multipart/alternative; boundary=\"alt\"

--alt
Content-Type: text/plain

Our logo.
--alt
Content-Type: multipart/related; boundary=\"rel\"; type=\"text/html\"

--rel
Content-Type: text/html

<img src=\"cid:logo@example.com\">
--rel
Content-Type: image/gif; name=\"logo.gif\"
Content-ID: <logo@example.com>
Content-Transfer-Encoding: base64

R0lGODlhAQABAAD/AA==
--rel--
--alt--
";

    #[test]
    fn related_cid_image_is_embedded_not_attached() {
        let email = parse(RELATED);
        assert_eq!(email.text_body().as_deref(), Some("Our logo."));
        assert_eq!(
            email.html_body().as_deref(),
            Some("<img src=\"cid:logo@example.com\">")
        );
        assert!(email.attachments().is_empty(), "{:?}", email.attachments());

        let embedded = email.embedded_files();
        assert_eq!(embedded.len(), 1);
        assert_eq!(embedded[0].content_id.as_deref(), Some("logo@example.com"));
        assert_eq!(embedded[0].content_type, "image/gif");
        assert_eq!(embedded[0].filename.as_deref(), Some("logo.gif"));
        assert_eq!(&embedded[0].data[..], b"GIF89a\x01\x00\x01\x00\x00\xff\x00");
    }

    #[test]
    fn content_id_with_disposition_attachment_is_an_attachment() {
        let email = parse(
            "Subject: x\nContent-Type: multipart/mixed; boundary=m\n\n--m\n\
             Content-Type: text/plain\n\nbody\n--m\nContent-Type: application/pdf\n\
             Content-ID: <doc@x>\nContent-Disposition: attachment; filename=a.pdf\n\n\
             %PDF\n--m--\n",
        );
        assert!(email.embedded_files().is_empty());
        let files = email.attachments();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].content_id.as_deref(), Some("doc@x"));
        assert_eq!(files[0].filename.as_deref(), Some("a.pdf"));
        assert_eq!(&files[0].data[..], b"%PDF");
    }

    #[test]
    fn eight_bit_latin1_body_is_decoded() {
        let mut raw = crlf(
            "Subject: latin\nContent-Type: text/plain; charset=ISO-8859-1\n\
             Content-Transfer-Encoding: 8bit\n\n",
        )
        .to_vec();
        raw.extend_from_slice(b"Caf\xe9 cr\xe8me br\xfbl\xe9e\r\n");
        let email = Email::parse(raw).unwrap();
        assert_eq!(email.text_body().as_deref(), Some("Café crème brûlée\r\n"));
    }

    #[test]
    fn multi_byte_charsets_are_decoded() {
        // Shift_JIS needs mail-parser's "full_encoding" feature.
        let mut raw =
            crlf("Subject: sjis\nContent-Type: text/plain; charset=Shift_JIS\n\n").to_vec();
        raw.extend_from_slice(&[147, 250, 150, 123, 140, 234]);
        let email = Email::parse(raw).unwrap();
        assert_eq!(email.text_body().as_deref(), Some("日本語"));
    }

    #[test]
    fn binary_part_keeps_every_byte_and_is_not_copied() {
        let blob: &[u8] = b"\x00\x01\xff\r\n\n\r\x80 --not-the-boundary\r\nend";
        let mut raw = crlf(
            "Subject: binary\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n\
             Content-Type: text/plain\n\nblob attached\n--bb\n\
             Content-Type: application/octet-stream; name=blob.bin\n\
             Content-Transfer-Encoding: binary\n\n",
        )
        .to_vec();
        raw.extend_from_slice(blob);
        raw.extend_from_slice(b"\r\n--bb--\r\n");
        let email = Email::parse(raw).unwrap();
        assert_eq!(email.text_body().as_deref(), Some("blob attached"));

        let files = email.attachments();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename.as_deref(), Some("blob.bin"));
        assert_eq!(files[0].content_type, "application/octet-stream");
        assert_eq!(&files[0].data[..], blob);

        let raw_range = email.raw().as_ptr_range();
        assert!(
            raw_range.contains(&files[0].data.as_ptr()),
            "data was copied"
        );
    }

    #[test]
    fn encoded_words_in_subject_and_names_are_decoded() {
        let email = parse(
            "From: =?ISO-8859-1?Q?Andr=E9?= Pirard <pirard@example.be>\n\
             To: =?UTF-8?B?Wm/DqyDDhW5nc3Ryw7Zt?= <zoe@example.se>, \
             =?iso-8859-1?b?SvxyZ2Vu?= <j@example.de>\n\
             Cc: \"=?UTF-8?Q?M=C3=BCller?=\" <m@example.de>\n\
             Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?= =?ISO-8859-1?Q?_und_M=FCnchen?=\n\
             \nbody\n",
        );
        assert_eq!(email.subject(), Some("Grüße aus Köln und München"));
        assert_eq!(
            email.from(),
            vec![mailbox(Some("André Pirard"), "pirard@example.be")]
        );
        assert_eq!(
            email.to(),
            vec![
                mailbox(Some("Zoë Ångström"), "zoe@example.se"),
                mailbox(Some("Jürgen"), "j@example.de"),
            ]
        );
        assert_eq!(email.cc(), vec![mailbox(Some("Müller"), "m@example.de")]);
        // The raw accessor leaves encoded words alone.
        assert_eq!(
            email.header("subject").as_deref(),
            Some("=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?= =?ISO-8859-1?Q?_und_M=FCnchen?=")
        );
    }

    const FORWARD: &str = "From: alice@example.com
Subject: Fwd: Lunch
Content-Type: multipart/mixed; boundary=\"outer\"

--outer
Content-Type: text/plain

Forwarding this.
--outer
Content-Type: message/rfc822
Content-Disposition: attachment; filename=\"lunch.eml\"

From: carol@example.net
Subject: Lunch
Content-Type: multipart/mixed; boundary=\"inner\"

--inner
Content-Type: text/plain

Noon?
--inner
Content-Type: application/pdf; name=menu.pdf

%PDF-menu
--inner--
--outer--
";

    #[test]
    fn rfc822_part_is_an_attachment_holding_the_nested_message() {
        let email = parse(FORWARD);
        assert_eq!(email.text_body().as_deref(), Some("Forwarding this."));

        let files = email.attachments();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].content_type, "message/rfc822");
        assert_eq!(files[0].filename.as_deref(), Some("lunch.eml"));

        let expected_start = "From: carol@example.net\r\nSubject: Lunch\r\n";
        assert!(files[0].data.starts_with(expected_start.as_bytes()));
        assert!(files[0].data.ends_with(b"--inner--"), "{:?}", files[0].data);

        let nested = Email::parse(files[0].data.clone()).unwrap();
        assert_eq!(nested.subject(), Some("Lunch"));
        assert_eq!(nested.text_body().as_deref(), Some("Noon?"));
        assert_eq!(
            nested.attachments()[0].filename.as_deref(),
            Some("menu.pdf")
        );
    }

    #[test]
    fn base64_encoded_rfc822_part_is_decoded() {
        // "Subject: Inner\r\n\r\nhi\r\n" in base64.
        let email = parse(
            "Subject: Outer\nContent-Type: multipart/mixed; boundary=o\n\n--o\n\
             Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n\
             U3ViamVjdDogSW5uZXINCg0KaGkNCg==\n--o--\n",
        );
        let files = email.attachments();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].content_type, "message/rfc822");
        assert_eq!(&files[0].data[..], b"Subject: Inner\r\n\r\nhi\r\n");
    }

    #[test]
    fn resent_headers_come_from_the_most_recent_block() {
        let email = parse(
            "Resent-From: Second <second@example.com>\n\
             Resent-Sender: relay2@example.com\n\
             Resent-To: third@example.com, fourth@example.com\n\
             Resent-Cc: cc2@example.com\n\
             Resent-Bcc: bcc2@example.com\n\
             resent-reply-to: \"Replies\" <replies@example.com>\n\
             Resent-Date: Tue, 5 Mar 2024 08:00:00 -0500\n\
             Resent-Message-ID: <resent-2@example.com>\n\
             Resent-From: first@example.com\n\
             Resent-To: second@example.com\n\
             Resent-Cc: cc1@example.com\n\
             Resent-Date: Mon, 4 Mar 2024 08:00:00 +0000\n\
             Resent-Message-ID: <resent-1@example.com>\n\
             From: origin@example.com\n\
             Subject: resent\n\nbody\n",
        );
        assert_eq!(
            email.resent_from(),
            vec![mailbox(Some("Second"), "second@example.com")]
        );
        assert_eq!(
            email.resent_sender(),
            Some(mailbox(None, "relay2@example.com"))
        );
        assert_eq!(
            email.resent_to(),
            vec![
                mailbox(None, "third@example.com"),
                mailbox(None, "fourth@example.com")
            ]
        );
        assert_eq!(email.resent_cc(), vec![mailbox(None, "cc2@example.com")]);
        assert_eq!(email.resent_bcc(), vec![mailbox(None, "bcc2@example.com")]);
        assert_eq!(
            email.resent_reply_to(),
            vec![mailbox(Some("Replies"), "replies@example.com")]
        );
        assert_eq!(
            email.resent_date().as_deref(),
            Some("2024-03-05T08:00:00-05:00")
        );
        assert_eq!(email.resent_message_id(), Some("resent-2@example.com"));
        assert_eq!(email.from(), vec![mailbox(None, "origin@example.com")]);
    }

    #[test]
    fn threading_headers_and_date() {
        let email = parse(
            "Date: Fri, 01 Mar 2024 09:30:00 +0100\n\
             Message-ID: <abc.123@example.com>\n\
             In-Reply-To: <parent@example.com>\n\
             References: <root@example.com>\n <parent@example.com>\n\
             Sender: Secretary <sec@example.com>\n\
             Reply-To: list@example.com\n\
             Bcc: hidden@example.com\n\
             Subject: Re: thread\n\nbody\n",
        );
        assert_eq!(email.date().as_deref(), Some("2024-03-01T09:30:00+01:00"));
        assert_eq!(
            email.date_time().map(|d| d.to_timestamp()),
            Some(1_709_281_800)
        );
        assert_eq!(email.message_id(), Some("abc.123@example.com"));
        assert_eq!(email.in_reply_to(), vec!["parent@example.com".to_owned()]);
        assert_eq!(
            email.references(),
            vec![
                "root@example.com".to_owned(),
                "parent@example.com".to_owned()
            ]
        );
        assert_eq!(
            email.sender(),
            Some(mailbox(Some("Secretary"), "sec@example.com"))
        );
        assert_eq!(email.reply_to(), vec![mailbox(None, "list@example.com")]);
        assert_eq!(email.bcc(), vec![mailbox(None, "hidden@example.com")]);
        // The raw value is unfolded.
        assert_eq!(
            email.header("REFERENCES").as_deref(),
            Some("<root@example.com> <parent@example.com>")
        );
    }

    #[test]
    fn invalid_or_missing_date_is_none() {
        let email = parse("Date: someday soon\nSubject: x\n\nbody\n");
        assert_eq!(email.date(), None);
        assert_eq!(email.date_time(), None);
        assert_eq!(parse("Subject: x\n\nbody\n").date(), None);
    }

    #[test]
    fn groups_are_flattened() {
        let email = parse(
            "To: Team: ann@example.com, \"Bo B\" <bo@example.com>;, solo@example.com, \
             undisclosed-recipients:;\nCc: Empty group:;\nSubject: groups\n\nbody\n",
        );
        assert_eq!(
            email.to(),
            vec![
                mailbox(None, "ann@example.com"),
                mailbox(Some("Bo B"), "bo@example.com"),
                mailbox(None, "solo@example.com"),
            ]
        );
        assert!(email.cc().is_empty());
    }

    #[test]
    fn message_without_body() {
        for raw in [
            "Subject: nothing\nFrom: a@example.com\n",
            "Subject: nothing\nFrom: a@example.com\n\n",
        ] {
            let email = parse(raw);
            assert_eq!(email.subject(), Some("nothing"), "{raw:?}");
            assert_eq!(email.from(), vec![mailbox(None, "a@example.com")]);
            assert_eq!(email.text_body(), None, "{raw:?}");
            assert_eq!(email.html_body(), None);
            assert!(email.attachments().is_empty());
            assert!(email.to().is_empty());
            assert_eq!(email.message_id(), None);
        }
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_finds_all() {
        let email = parse(
            "Received: from a by b; Fri, 01 Mar 2024 09:30:00 +0000\n\
             Received: from c\n by d; Fri, 01 Mar 2024 09:29:00 +0000\n\
             X-Custom: first\nx-custom:  second  \nSubject: h\n\nbody\n",
        );
        assert_eq!(email.header("x-CUSTOM").as_deref(), Some("first"));
        assert_eq!(email.headers("X-Custom"), vec!["first", "second"]);
        assert_eq!(
            email.headers("received"),
            vec![
                "from a by b; Fri, 01 Mar 2024 09:30:00 +0000",
                "from c by d; Fri, 01 Mar 2024 09:29:00 +0000",
            ]
        );
        assert_eq!(email.header("X-Missing"), None);
        assert!(email.headers("X-Missing").is_empty());
    }

    #[test]
    fn raw_and_message_are_available() {
        let raw = crlf(ALTERNATIVE);
        let email = Email::parse(raw.clone()).unwrap();
        assert_eq!(email.raw(), &raw);
        assert_eq!(email.message().text_body_count(), 1);
        let copy = email.clone();
        assert_eq!(copy.subject(), Some("Hello"));
        let debug = format!("{email:?}");
        assert!(debug.contains("Hello"), "{debug}");
    }

    #[test]
    fn email_can_cross_threads() {
        fn assert_send_sync_static<T: Send + Sync + 'static>() {}
        assert_send_sync_static::<Email>();
        assert_send_sync_static::<Attachment>();
        assert_send_sync_static::<ParseError>();
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(
            Email::parse(Bytes::new()).unwrap_err(),
            ParseError::NoHeaders
        );
    }

    /// The exact rule documented on [`ParseError`], pinned against
    /// mail-parser 0.11: no header field and no blank line is an error.
    #[test]
    fn parsing_fails_exactly_without_a_field_or_a_blank_line() {
        let fails: &[&str] = &[
            "",
            "hello world\r\n",
            "hello\r\nworld\r\n",
            ": value\r\n",
            "  leading blanks\r\n",
        ];
        for raw in fails {
            assert_eq!(
                Email::parse(*raw).unwrap_err(),
                ParseError::NoHeaders,
                "{raw:?}"
            );
        }
        let parses: &[(&str, Option<&str>)] = &[
            ("Subject: hi\r\n", Some("hi")),
            ("junk line\r\nSubject: hi\r\n\r\nbody\r\n", Some("hi")),
            // An unterminated last line is taken as a field name.
            ("no header here", None),
            // A blank line ends an (empty) header section: the rest is body.
            ("\r\n", None),
            ("\r\nSubject: x\r\n", None),
            ("hello world\r\n\r\nbody\r\n", None),
        ];
        for (raw, subject) in parses {
            let email = Email::parse(*raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(email.subject(), *subject, "{raw:?}");
        }
        let body = Email::parse("hello world\r\n\r\nbody\r\n").unwrap();
        assert_eq!(body.text_body().as_deref(), Some("body\r\n"));
    }

    /// Every accessor, so that garbage input exercises all of them.
    fn touch_everything(email: &Email) {
        let _ = (
            email.subject(),
            email.sender(),
            email.from(),
            email.reply_to(),
        );
        let _ = (
            email.to(),
            email.cc(),
            email.bcc(),
            email.date(),
            email.message_id(),
        );
        let _ = (email.in_reply_to(), email.references(), email.resent_from());
        let _ = (email.resent_sender(), email.resent_to(), email.resent_cc());
        let _ = (
            email.resent_bcc(),
            email.resent_reply_to(),
            email.resent_date(),
        );
        let _ = (
            email.resent_message_id(),
            email.content_type(),
            email.text_body(),
        );
        let _ = (
            email.html_body(),
            email.header("content-type"),
            email.headers("to"),
        );
        for file in email
            .attachments()
            .into_iter()
            .chain(email.embedded_files())
        {
            if file.content_type == "message/rfc822"
                && let Ok(nested) = Email::parse(file.data)
            {
                let _ = (nested.subject(), nested.text_body(), nested.attachments());
            }
        }
        let _ = format!("{email:?}");
    }

    #[test]
    fn garbage_never_panics() {
        let fixed: [&[u8]; 10] = [
            b"\x00\xff\xfe\r\n\r\n\x00",
            b":\r\n",
            b"\r\n\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x--",
            b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n----\r\n",
            b"Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\n",
            b"Subject: =?UTF-8?B?////?= =?x?Q?=ZZ?=\r\n\r\n",
            b"From: <<<@@@>>>, :;,\"\r\nTo: (((\r\n\r\n",
            b"Content-Type: text/plain; charset=utf-7\r\nContent-Transfer-Encoding: base64\r\n\r\n+++===",
            b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\n\r\n",
        ];
        for raw in fixed {
            if let Ok(email) = Email::parse(raw) {
                touch_everything(&email);
            }
        }

        // Deterministic mutations of the well-formed messages above.
        let seeds = [ALTERNATIVE, MIXED, RELATED, FORWARD];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for round in 0..1500 {
            let mut raw = crlf(seeds[round % seeds.len()]).to_vec();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % raw.len();
                match next() % 4 {
                    0 => raw[at] = next() as u8,
                    1 => {
                        raw.remove(at);
                    }
                    2 => raw.insert(at, b"\r\n-:;<>=?\"\\"[(next() % 11) as usize]),
                    _ => raw.truncate(at),
                }
                if raw.is_empty() {
                    break;
                }
            }
            if let Ok(email) = Email::parse(raw) {
                touch_everything(&email);
                parsed += 1;
            }
        }
        // Most mutants still have headers: the accessors really ran.
        assert!(parsed > 1000, "only {parsed} mutants parsed");
    }
}

//! From raw bytes to what the API shows: the summary fields extracted at
//! ingest, the full message view, headers and parts with Mailpit's part IDs.
//!
//! Part IDs follow the MIME tree: the children of a multipart are numbered
//! from 1 and nested levels are joined with dots (`2`, `1.2`), as Mailpit
//! does. A message that is not multipart is part `1`.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};
use serde::Serialize;
use smtpsrv::email::{Email, Mailbox};

use crate::store::{Address, NewMessage, Stored};

/// Characters kept in a snippet.
const SNIPPET_CHARS: usize = 250;

/// An attachment or inline part in Mailpit's JSON shape.
#[derive(Debug, Clone, Serialize)]
pub struct PartInfo {
    /// Where the part is in the MIME tree (`/api/v1/message/{ID}/part/{PartID}`).
    #[serde(rename = "PartID")]
    pub part_id: String,
    /// File name (may be empty).
    #[serde(rename = "FileName")]
    pub file_name: String,
    /// Media type, `type/subtype`.
    #[serde(rename = "ContentType")]
    pub content_type: String,
    /// Content-ID without angle brackets (may be empty).
    #[serde(rename = "ContentID")]
    pub content_id: String,
    /// Decoded size in bytes.
    #[serde(rename = "Size")]
    pub size: u64,
}

/// One message in full (Mailpit's `Message`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageView {
    /// Database ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// `Message-ID` header without angle brackets.
    #[serde(rename = "MessageID")]
    pub message_id: String,
    /// First `From` mailbox.
    pub from: Option<Address>,
    /// `To` mailboxes.
    pub to: Vec<Address>,
    /// `Cc` mailboxes.
    pub cc: Vec<Address>,
    /// `Bcc` mailboxes.
    pub bcc: Vec<Address>,
    /// `Reply-To` mailboxes.
    pub reply_to: Vec<Address>,
    /// The envelope sender.
    pub return_path: String,
    /// Subject.
    pub subject: String,
    /// The `Date` header, or when it was received (RFC 3339).
    pub date: String,
    /// Tags (always empty).
    pub tags: Vec<String>,
    /// Text body (converted from HTML when there is no text part).
    pub text: String,
    /// HTML body.
    #[serde(rename = "HTML")]
    pub html: String,
    /// Raw size in bytes.
    pub size: u64,
    /// Inline parts (with a Content-ID, not marked as attachments).
    pub inline: Vec<PartInfo>,
    /// Attachments.
    pub attachments: Vec<PartInfo>,
}

fn address(m: &Mailbox) -> Address {
    Address {
        name: m.name.clone().unwrap_or_default(),
        address: m.address.clone().unwrap_or_default(),
    }
}

fn addresses(list: Vec<Mailbox>) -> Vec<Address> {
    list.iter().map(address).collect()
}

/// What the store keeps for a received message. Never fails: a message
/// mail-parser cannot read is stored with empty fields, never dropped.
pub fn extract(
    raw: Bytes,
    return_path: String,
    recipients: &[String],
    created_ms: i64,
) -> NewMessage {
    let mut m = NewMessage {
        created_ms,
        return_path,
        ..NewMessage::default()
    };
    if let Ok(email) = Email::parse(raw.clone()) {
        m.message_id = email.message_id().unwrap_or_default().to_owned();
        m.subject = email.subject().unwrap_or_default().to_owned();
        m.from = email.from().first().map(address);
        m.to = addresses(email.to());
        m.cc = addresses(email.cc());
        m.bcc = addresses(email.bcc());
        m.reply_to = addresses(email.reply_to());
        // Like Mailpit: envelope recipients named in no header were Bcc'd.
        for rcpt in recipients {
            let named =
                m.to.iter()
                    .chain(&m.cc)
                    .chain(&m.bcc)
                    .any(|a| a.address.eq_ignore_ascii_case(rcpt));
            if !named {
                m.bcc.push(Address {
                    name: String::new(),
                    address: rcpt.clone(),
                });
            }
        }
        let message = email.message();
        m.attachments = part_list(message).0.len() as u32;
        m.body = message
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default();
        m.snippet = snippet(&m.body);
    }
    m.raw = raw;
    m
}

/// The first 250 characters of `text` with runs of whitespace collapsed.
pub fn snippet(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in text.split_whitespace() {
        for c in (!out.is_empty())
            .then_some(' ')
            .into_iter()
            .chain(word.chars())
        {
            if count == SNIPPET_CHARS {
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// The full view of a stored message.
pub fn view(stored: &Stored) -> MessageView {
    let created = crate::time::rfc3339_ms(stored.created_ms);
    let email = Email::parse(stored.raw.clone()).ok();
    let summary = extract(
        stored.raw.clone(),
        stored.return_path.clone(),
        &[],
        stored.created_ms,
    );
    let (attachments, inline) = email
        .as_ref()
        .map(|e| {
            let (a, i) = part_list(e.message());
            let info = |(part_id, part): (String, &MessagePart<'_>)| part_info(part_id, part);
            (
                a.into_iter().map(info).collect(),
                i.into_iter().map(info).collect(),
            )
        })
        .unwrap_or_default();
    MessageView {
        id: stored.id.clone(),
        message_id: summary.message_id,
        from: summary.from,
        to: summary.to,
        cc: summary.cc,
        bcc: summary.bcc,
        reply_to: summary.reply_to,
        return_path: stored.return_path.clone(),
        subject: summary.subject,
        date: email
            .as_ref()
            .and_then(|e| e.date_time())
            .map(|d| d.to_rfc3339())
            .unwrap_or(created),
        tags: Vec::new(),
        text: summary.body,
        html: email
            .as_ref()
            .and_then(|e| e.html_body())
            .unwrap_or_default(),
        size: stored.raw.len() as u64,
        inline,
        attachments,
    }
}

fn part_info(part_id: String, part: &MessagePart<'_>) -> PartInfo {
    PartInfo {
        part_id,
        file_name: part.attachment_name().unwrap_or_default().to_owned(),
        content_type: media_type(part),
        content_id: part
            .content_id()
            .map(|c| c.trim_matches(['<', '>']).to_owned())
            .unwrap_or_default(),
        size: part_data_len(part),
    }
}

fn media_type(part: &MessagePart<'_>) -> String {
    match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
        None => match part.body {
            PartType::Message(_) => "message/rfc822".into(),
            PartType::Text(_) => "text/plain".into(),
            PartType::Html(_) => "text/html".into(),
            _ => "application/octet-stream".into(),
        },
    }
}

fn is_inline(part: &MessagePart<'_>) -> bool {
    part.content_id().is_some()
        && !part
            .content_disposition()
            .is_some_and(|d| d.is_attachment())
}

/// Every part's ID, by mail-parser's part index.
fn part_ids(message: &Message<'_>) -> Vec<Option<String>> {
    let mut ids = vec![None; message.parts.len()];
    let mut stack = vec![(0u32, String::new())];
    let mut guard = 0;
    while let Some((index, id)) = stack.pop() {
        guard += 1;
        if guard > message.parts.len() * 2 + 1 {
            break; // a cycle cannot happen, but never loop unbounded
        }
        let Some(part) = message.parts.get(index as usize) else {
            continue;
        };
        if let PartType::Multipart(children) = &part.body {
            for (n, child) in children.iter().enumerate() {
                let child_id = if id.is_empty() {
                    (n + 1).to_string()
                } else {
                    format!("{id}.{}", n + 1)
                };
                stack.push((*child, child_id));
            }
        } else if let Some(slot) = ids.get_mut(index as usize) {
            *slot = Some(if id.is_empty() { "1".into() } else { id });
        }
    }
    ids
}

type Parts<'m, 'x> = Vec<(String, &'m MessagePart<'x>)>;

/// (attachments, inline parts), each with its part ID.
fn part_list<'m, 'x>(message: &'m Message<'x>) -> (Parts<'m, 'x>, Parts<'m, 'x>) {
    let ids = part_ids(message);
    let mut attachments = Vec::new();
    let mut inline = Vec::new();
    for &index in &message.attachments {
        let (Some(part), Some(Some(id))) =
            (message.parts.get(index as usize), ids.get(index as usize))
        else {
            continue;
        };
        if is_inline(part) {
            inline.push((id.clone(), part));
        } else {
            attachments.push((id.clone(), part));
        }
    }
    (attachments, inline)
}

/// A downloadable part: its bytes exactly as attached, media type, file name.
pub struct PartData {
    /// Media type.
    pub content_type: String,
    /// File name (may be empty).
    pub file_name: String,
    /// The content with the transfer encoding removed.
    pub data: Vec<u8>,
}

/// The part `part_id` of `raw`, or `None` when there is no such part.
pub fn part(raw: &Bytes, part_id: &str) -> Option<PartData> {
    let email = Email::parse(raw.clone()).ok()?;
    let message = email.message();
    let ids = part_ids(message);
    let index = ids.iter().position(|id| id.as_deref() == Some(part_id))?;
    let part = message.parts.get(index)?;
    Some(PartData {
        content_type: media_type(part),
        file_name: part.attachment_name().unwrap_or_default().to_owned(),
        data: part_bytes(message.raw_message(), part),
    })
}

fn part_data_len(part: &MessagePart<'_>) -> u64 {
    match &part.body {
        PartType::Text(t) | PartType::Html(t) => t.len() as u64,
        PartType::Binary(b) | PartType::InlineBinary(b) => b.len() as u64,
        PartType::Message(m) => m.raw_message().len() as u64,
        PartType::Multipart(_) => 0,
    }
}

/// The part's bytes. Binary parts are mail-parser's decoding; text parts
/// are decoded here from the raw body so that a non-UTF-8 text attachment
/// comes back byte for byte, not converted to UTF-8.
fn part_bytes(raw: &[u8], part: &MessagePart<'_>) -> Vec<u8> {
    match &part.body {
        PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
        PartType::Message(m) => m.raw_message().to_vec(),
        PartType::Multipart(_) => Vec::new(),
        PartType::Text(t) | PartType::Html(t) => {
            let body = raw
                .get(part.offset_body as usize..part.offset_end as usize)
                .unwrap_or_default();
            match part.encoding {
                Encoding::Base64 => decode_base64(body).unwrap_or_else(|| t.as_bytes().to_vec()),
                Encoding::QuotedPrintable => decode_qp(body),
                Encoding::None => t.as_bytes().to_vec(),
            }
        }
    }
}

fn decode_base64(body: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&clean)
        .ok()
}

fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    while i < body.len() {
        match body[i] {
            b'=' if body.get(i + 1) == Some(&b'\r') && body.get(i + 2) == Some(&b'\n') => i += 3,
            b'=' if body.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' => match (
                body.get(i + 1).and_then(|&b| hex(b)),
                body.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'=');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // The line break before the boundary belongs to the boundary.
    if out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

/// The top-level headers, keyed in Go's canonical form (`Content-Type`),
/// sorted; values unfolded and trimmed, not decoded — like Mailpit.
pub fn headers(raw: &Bytes) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(email) = Email::parse(raw.clone()) else {
        return map;
    };
    for h in email.message().root_part().headers.iter() {
        let value = raw
            .get(h.offset_start as usize..h.offset_end as usize)
            .unwrap_or_default();
        let value = String::from_utf8_lossy(value)
            .replace("\r\n", "")
            .replace('\n', "")
            .trim()
            .to_owned();
        map.entry(canonical_key(h.name.as_str()))
            .or_default()
            .push(value);
    }
    map
}

fn canonical_key(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f
                    .to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = "From: Ann <ann@example.com>\r\nTo: bob@example.org\r\nSubject: Files\r\n\
        Message-ID: <m1@example.com>\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
        --b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n\
        --b2\r\nContent-Type: text/plain\r\n\r\nHello   there\r\n\
        --b2\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>\r\n--b2--\r\n\
        --b1\r\nContent-Type: text/plain; charset=iso-8859-1; name=\"caf.txt\"\r\n\
        Content-Disposition: attachment; filename=\"caf.txt\"\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n\
        --b1\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b1--\r\n";

    #[test]
    fn parts_have_mailpit_ids_and_exact_bytes() {
        let raw = Bytes::from_static(MIXED.as_bytes());
        let m = extract(
            raw.clone(),
            "ann@example.com".into(),
            &["carl@example.net".into()],
            0,
        );
        assert_eq!(m.subject, "Files");
        assert_eq!(m.message_id, "m1@example.com");
        assert_eq!(m.attachments, 2);
        assert_eq!(m.snippet, "Hello there");
        assert_eq!(
            m.bcc[0].address, "carl@example.net",
            "envelope-only recipient is Bcc"
        );
        let v = view(&Stored {
            id: "x".into(),
            created_ms: 0,
            return_path: String::new(),
            raw: raw.clone(),
        });
        let ids: Vec<_> = v.attachments.iter().map(|a| a.part_id.as_str()).collect();
        assert_eq!(ids, ["2", "3"]);
        assert_eq!(v.html.trim(), "<p>Hello</p>");
        assert_eq!(
            part(&raw, "2").unwrap().data,
            b"caf\xe9",
            "latin-1 kept, not converted"
        );
        assert_eq!(part(&raw, "3").unwrap().data, [0, 1, 2, 255]);
        assert_eq!(part(&raw, "1.1").unwrap().content_type, "text/plain");
        assert!(part(&raw, "9").is_none());
        let h = headers(&raw);
        assert_eq!(h["Message-Id"], ["<m1@example.com>"]);
        assert_eq!(h["Mime-Version"], ["1.0"]);
    }

    #[test]
    fn snippet_is_bounded() {
        assert_eq!(snippet(&"ab ".repeat(500)).chars().count(), 250);
        assert_eq!(snippet(" a\r\n\tb "), "a b");
    }
}

//! [`AuthMessage`]: a message parsed once for DKIM and DMARC (mail-auth's
//! [`AuthenticatedMessage`]) and shared through the extensions with later
//! layers and the handler.
//!
//! The parse borrows the message bytes; `self_cell` keeps the bytes and the
//! parse together without unsafe code here, and an `Arc` makes it cheap to
//! clone into the extensions.

use std::sync::Arc;

use bytes::Bytes;
use mail_auth::AuthenticatedMessage;
use smtpsrv::BodyError;

use crate::request::StageData;

/// The borrowed parse, named so that `self_cell` can name its lifetime.
type Borrowed<'raw> = AuthenticatedMessage<'raw>;

self_cell::self_cell!(
    struct Parsed {
        owner: Bytes,

        #[covariant]
        dependent: Borrowed,
    }
);

/// A message parsed for authentication checks, shared by clones.
///
/// ```
/// use smtpsrv_middleware::message::AuthMessage;
/// let m = AuthMessage::parse("From: ann@example.org\r\nSubject: x\r\n\r\nhi\r\n".into()).unwrap();
/// assert_eq!(m.get().from(), "ann@example.org");
/// ```
#[derive(Clone)]
pub struct AuthMessage(Arc<Parsed>);

impl std::fmt::Debug for AuthMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthMessage")
            .field("len", &self.raw().len())
            .field("from", &self.get().from())
            .finish_non_exhaustive()
    }
}

impl AuthMessage {
    /// Parses a message; `None` when it has no header at all.
    pub fn parse(raw: Bytes) -> Option<Self> {
        Parsed::try_new(raw, |raw| AuthenticatedMessage::parse(raw).ok_or(()))
            .ok()
            .map(|p| AuthMessage(Arc::new(p)))
    }

    /// The parse.
    pub fn get(&self) -> &AuthenticatedMessage<'_> {
        self.0.borrow_dependent()
    }

    /// The bytes that were parsed.
    pub fn raw(&self) -> &Bytes {
        self.0.borrow_owner()
    }

    /// The parse a layer left in `req`'s extensions, or a new one (then
    /// left there). `Ok(None)` before `DATA` and for a message without
    /// headers.
    ///
    /// The parse is of the message as it was first seen: headers layers
    /// add later (`Received-SPF`) are not part of what the client signed.
    ///
    /// mail-auth parses a byte slice, so the whole message is in memory
    /// while the parse lives (it is shared with the extensions): an
    /// in-memory body is shared as is; a spilled one is read from its file
    /// (asynchronously; the body stays spilled for the handler); a
    /// streaming one is read to its end and becomes an in-memory body
    /// holding the same bytes, so the handler behind gets it whole. A body
    /// that fails (too large, client gone) or cannot be read is the error.
    pub async fn of<R: StageData>(req: &mut R) -> Result<Option<AuthMessage>, BodyError> {
        if let Some(parsed) = req.extension::<AuthMessage>() {
            return Ok(Some(parsed));
        }
        let Some(body) = req.body_mut() else {
            return Ok(None);
        };
        let raw = body.bytes().await?;
        if body.is_streaming() {
            // What was read (header fields put on top included), whole.
            *body = smtpsrv::Body::from(raw.clone());
        }
        let Some(parsed) = AuthMessage::parse(raw) else {
            return Ok(None);
        };
        req.insert_extension(parsed.clone());
        Ok(Some(parsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[tokio::test]
    async fn parsed_once_and_shared() {
        let mut ctx = context(
            session(),
            None,
            &["b@x.example"],
            "From: a@b.example\r\n\r\nhi\r\n",
        );
        let first = AuthMessage::of(&mut ctx).await.unwrap().unwrap();
        ctx.prepend_header("X-Later: 1\r\n");
        let second = AuthMessage::of(&mut ctx).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first.0, &second.0));
        assert_eq!(second.raw().as_ref(), b"From: a@b.example\r\n\r\nhi\r\n");
        assert_eq!(second.get().from(), "a@b.example");
    }

    #[tokio::test]
    async fn no_message_before_data() {
        let mut req = mail_from(session(), Some("a@b.example"));
        assert!(AuthMessage::of(&mut req).await.unwrap().is_none());
    }
}

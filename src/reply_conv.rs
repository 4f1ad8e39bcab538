//! Turning what services return into SMTP replies, in one place.
//!
//! Rejections are replies, not errors: a handler returns `Ok(Reply)` (or
//! `Err(Reply)`, since [`Reply`] is an error type too). Errors that are not
//! replies are mapped by [`error_reply`] to *temporary* failures, so a
//! sending server retries instead of bouncing mail because a database was
//! down (go-smtpsrv answered those with a permanent 554).

use crate::proto::Reply;

/// The error type services may return; anything `Into<BoxError>` works.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The server's handler deadline
/// ([`Builder::handler_timeout`](crate::Builder::handler_timeout)) passed:
/// a type of its own, so that it gets its own reply and log line, apart
/// from a user's tower `timeout` layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandlerTimeout;

impl std::fmt::Display for HandlerTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the handler deadline (Builder::handler_timeout) passed")
    }
}

impl std::error::Error for HandlerTimeout {}

/// Converts a service's response into a [`Reply`].
///
/// `()` means `250 2.0.0 OK`. Implement it for your own types to return
/// them from handlers.
///
/// ```
/// use smtpsrv::{IntoReply, Reply};
/// struct Stored { id: u64 }
/// impl IntoReply for Stored {
///     fn into_reply(self) -> Reply {
///         Reply::new(250, (2, 0, 0), format!("Queued as {}", self.id))
///     }
/// }
/// assert_eq!(Stored { id: 7 }.into_reply().text(), "Queued as 7");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an SMTP reply: a hook or handler must answer with an `IntoReply` type",
    label = "this answer does not implement `smtpsrv::IntoReply`",
    note = "answer `()` (250 2.0.0 OK), a `smtpsrv::Reply` (`Reply::ok()`, `Reply::no_such_user()`, `Reply::new(550, (5, 7, 1), text)`), or implement `IntoReply` for your type",
    note = "text alone is not a reply: `Reply::ok().with_text(text)` keeps 250 2.0.0 and sends your text"
)]
pub trait IntoReply {
    /// The reply to send.
    fn into_reply(self) -> Reply;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl IntoReply for () {
    fn into_reply(self) -> Reply {
        Reply::ok()
    }
}

impl<T: IntoReply, E: IntoReply> IntoReply for Result<T, E> {
    fn into_reply(self) -> Reply {
        match self {
            Ok(t) => t.into_reply(),
            Err(e) => e.into_reply(),
        }
    }
}

/// What a message handler's response becomes: one reply for the whole
/// message, or (for LMTP) one per accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One reply for every recipient.
    All(Reply),
    /// One reply per recipient, in `RCPT` order.
    PerRecipient(Vec<Reply>),
}

/// A handler response with one reply per recipient, in `RCPT` order: what an
/// LMTP server returns when it accepts some recipients and refuses others.
///
/// On a plain SMTP session only one reply can be sent: 250 when at least one
/// recipient was accepted (the handler owns the others: it must bounce
/// them), otherwise the first refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerRecipient(pub Vec<Reply>);

/// Converts a message handler's response into a [`Delivery`]. Every
/// [`IntoReply`] type is one; so is [`PerRecipient`].
///
/// A handler whose `Ok` type is neither is refused by
/// [`Server::serve`](crate::Server::serve) with this trait's message, which
/// names what to return instead.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot answer a message: the handler's `Ok` type must implement `IntoDelivery`",
    label = "the message service's `Response` must be `()`, a `Reply`, a `PerRecipient` or any `IntoReply` type",
    note = "answer `()` (250 2.0.0 OK) or a `smtpsrv::Reply` (`Reply::ok()`, `Reply::queued(id)`, `Reply::rejected().with_text(why)`); `PerRecipient` for LMTP",
    note = "text alone is not a reply: `Reply::ok().with_text(text)` keeps 250 2.0.0 and sends your text"
)]
pub trait IntoDelivery {
    /// The outcome to report.
    fn into_delivery(self) -> Delivery;
}

impl<T: IntoReply> IntoDelivery for T {
    fn into_delivery(self) -> Delivery {
        Delivery::All(self.into_reply())
    }
}

impl IntoDelivery for Delivery {
    fn into_delivery(self) -> Delivery {
        self
    }
}

impl IntoDelivery for PerRecipient {
    fn into_delivery(self) -> Delivery {
        Delivery::PerRecipient(self.0)
    }
}

/// Maps any error from a service or layer to the reply the client gets.
///
/// - a [`Reply`] is sent as is;
/// - a [`ParseError`](crate::email::ParseError) (what `ctx.parse()?` returns
///   for a message that is not an email at all) becomes `554 5.6.0`: the
///   same bytes would fail again, so the sender must not retry them;
/// - the server's own handler deadline
///   ([`Builder::handler_timeout`](crate::Builder::handler_timeout)) becomes
///   `451 4.3.0 Timed out while processing, try again later`;
/// - `tower::timeout::error::Elapsed` (a `timeout` layer of yours) becomes
///   `451 4.4.7`;
/// - `tower::load_shed::error::Overloaded` becomes `451 4.3.2`;
/// - a [`BodyError`](crate::BodyError) (also inside `ParseError::Unreadable`)
///   becomes [`BodyError::reply`](crate::BodyError::reply): `552` for a
///   body over a limit, `451` for one that could not be read;
/// - anything else becomes `451 4.3.0`, a temporary failure, so that the
///   sender keeps the message and retries.
pub fn error_reply(err: BoxError) -> Reply {
    match err.downcast::<Reply>() {
        Ok(reply) => *reply,
        Err(err) if err.is::<HandlerTimeout>() => {
            tracing::warn!("handler deadline passed; answering 451");
            Reply::try_again_later().with_text("Timed out while processing, try again later")
        }
        Err(err) if err.is::<tower::timeout::error::Elapsed>() => Reply::new(
            451,
            (4, 4, 7),
            "Timed out while processing, try again later",
        ),
        Err(err) if err.is::<tower::load_shed::error::Overloaded>() => {
            Reply::new(451, (4, 3, 2), "Too busy, try again later")
        }
        Err(err) => {
            if let Some(body) = err.downcast_ref::<crate::body::BodyError>() {
                return body.reply();
            }
            match err.downcast_ref::<crate::email::ParseError>() {
                Some(crate::email::ParseError::Unreadable(body)) => body.reply(),
                Some(_) => {
                    Reply::malformed_message().with_text(format!("Malformed message: {err}"))
                }
                None => {
                    tracing::warn!(error = %err, "service error answered with 451");
                    Reply::try_again_later()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparseable_message_is_a_permanent_554() {
        let r = error_reply(Box::new(crate::email::ParseError::NoHeaders));
        assert_eq!(
            (r.code(), r.status().unwrap().to_string()),
            (554, "5.6.0".into())
        );
    }

    #[test]
    fn errors_map_to_temporary_replies() {
        let r = error_reply(Box::new(Reply::new(550, (5, 1, 1), "No such user")));
        assert_eq!(r.code(), 550);
        let r = error_reply(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(
            (r.code(), r.status().unwrap().to_string()),
            (451, "4.4.7".into())
        );
        let r = error_reply(Box::new(tower::load_shed::error::Overloaded::new()));
        assert_eq!(r.code(), 451);
        let r = error_reply(Box::new(HandlerTimeout));
        assert_eq!(
            r.to_string(),
            "451 4.3.0 Timed out while processing, try again later\r\n"
        );
        let r = error_reply("database down".into());
        assert_eq!(
            (r.code(), r.status().unwrap().to_string()),
            (451, "4.3.0".into())
        );
    }

    #[test]
    fn responses_convert() {
        assert_eq!(().into_reply(), Reply::ok());
        let e: Result<(), Reply> = Err(Reply::new(554, (5, 7, 1), "no"));
        assert_eq!(e.into_reply().code(), 554);
        assert_eq!(
            PerRecipient(vec![Reply::ok()]).into_delivery(),
            Delivery::PerRecipient(vec![Reply::ok()])
        );
    }
}

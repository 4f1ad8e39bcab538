//! Requests for the early-decision hooks, one per SMTP stage, and the
//! [`Stage`] trait they (and [`Context`]) share.
//!
//! Each hook is a `tower::Service` for its request type, whose response is
//! any [`IntoReply`](crate::IntoReply): `()` or a 2xx reply accepts, a 4xx or
//! 5xx reply refuses (so does `Err(reply)`), and any other error is a
//! temporary failure. Because every request exposes the session through
//! [`Stage`], one layer (rate limiting, require-auth, logging) can be put in
//! front of any stage.
//!
//! # What a stage carries
//!
//! Rust has no specialisation, so a layer generic over the stage cannot ask
//! "is this a [`Context`]?". Each request type says what it carries
//! instead, through [`Stage`]'s provided methods: the envelope from `MAIL`
//! on, the recipient at `RCPT`, the message (its [`Body`], its bytes, its
//! id, [`prepend_header`](Stage::prepend_header)) at `DATA`/`BDAT`. The
//! defaults say "nothing", so a request type of your own implements only
//! what it has.
//!
//! The message, whatever the body's shape (see [`crate::body`]):
//!
//! | | in memory | spilled to a file | streaming |
//! |---|---|---|---|
//! | [`Stage::body`] | yes | yes, no load | yes, read once as chunks |
//! | [`Stage::message`] | zero-copy | read from the file on the first call (blocking), then kept in memory for the request's life | panics: [`Body::buffer`] it first through [`Stage::body_mut`], or read [`Stage::body`] |
//! | [`Stage::prepend_header`] | rewrites the bytes | kept apart, file untouched | kept apart, sent first |

use std::sync::Arc;

use bytes::Bytes;

use crate::body::{Body, BodyError};
use crate::context::{Context, MessageId};
use crate::envelope::{Envelope, Recipient};
use crate::extensions::SharedExtensions;
use crate::info::{Greeting, SessionInfo};
use crate::proto::{Address, MailParams};
use crate::sasl::Credentials;

/// Which stage a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// A new connection, before the greeting.
    Connect,
    /// HELO, EHLO or LHLO.
    Helo,
    /// AUTH credentials.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// A complete message.
    Data,
}

impl StageKind {
    /// A short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Connect => "connect",
            StageKind::Helo => "helo",
            StageKind::Auth => "auth",
            StageKind::Mail => "mail",
            StageKind::Rcpt => "rcpt",
            StageKind::Data => "data",
        }
    }
}

/// What every stage request exposes, so layers can be generic over stages.
pub trait Stage: Send + 'static {
    /// Which stage this is.
    fn kind(&self) -> StageKind;

    /// The session's facts.
    fn session(&self) -> &SessionInfo;

    /// The envelope so far (from `MAIL FROM` on; `None` before).
    fn envelope(&self) -> Option<&Envelope> {
        None
    }

    /// Leaves a result for later layers, stages and the handler.
    fn insert_extension<T: Clone + Send + Sync + 'static>(&mut self, value: T);

    /// A result left by an earlier layer or stage: a copy, because the
    /// hook requests of a transaction share their map behind a lock (a
    /// handler may borrow from `ctx.extensions()` instead; see
    /// [`extensions`](crate::extensions)).
    fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T>;

    /// The client's IP address, with an IPv4-mapped IPv6 address (what a
    /// dual-stack socket reports for an IPv4 client) turned back into IPv4:
    /// the address to key rate limits and check SPF with.
    fn client_ip(&self) -> std::net::IpAddr {
        self.session().peer_addr().ip().to_canonical()
    }

    /// The recipient being decided on (`RCPT TO` only).
    fn recipient(&self) -> Option<&Recipient> {
        None
    }

    /// The message, whatever its shape (`DATA`/`BDAT` only): read it as
    /// chunks or as `AsyncRead` without loading a spilled body.
    fn body(&self) -> Option<&Body> {
        None
    }

    /// Mutable access to the message (`DATA`/`BDAT` only), e.g. to
    /// [`Body::buffer`] a streaming body before [`Stage::message`].
    fn body_mut(&mut self) -> Option<&mut Body> {
        None
    }

    /// The complete message in memory (`DATA`/`BDAT` only; `None` at
    /// other stages), as [`Body::as_bytes`] gives it: zero-copy in memory;
    /// a spilled body is read from its file on the first call (a blocking
    /// read, kept for the request's life, not counted by the memory budget).
    ///
    /// Never panics: a streaming body is `Some(Err(BodyError::NotBuffered))`
    /// (a layer that needs the whole message in streaming mode calls
    /// [`Body::buffer`] first, through [`Stage::body_mut`], or reads
    /// [`Stage::body`] as chunks), an unreadable spill file
    /// `Some(Err(BodyError::Io))`.
    fn message(&self) -> Option<Result<&Bytes, BodyError>> {
        self.body().map(Body::as_bytes)
    }

    /// The message's id (`DATA`/`BDAT` only).
    fn message_id(&self) -> Option<&MessageId> {
        None
    }

    /// Puts a header field (one or more complete fields, each ending in
    /// CRLF) on top of the message; false where there is no message.
    ///
    /// Works on every body shape without loading it (see
    /// [`Body::prepend`]): a spilled or streaming body keeps the field
    /// apart and yields it first.
    fn prepend_header(&mut self, field: &str) -> bool {
        match self.body_mut() {
            Some(body) => {
                body.prepend(field.as_bytes());
                true
            }
            None => false,
        }
    }
}

macro_rules! shared_extensions_stage {
    () => {
        fn insert_extension<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
            self.extensions.insert(value);
        }

        fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
            self.extensions.get::<T>()
        }
    };
}

/// A new connection, before the greeting. Refuse with a 554 reply (the
/// server then accepts only QUIT) or 421 (the server closes).
#[derive(Debug, Clone)]
pub struct Connect {
    pub(crate) session: Arc<SessionInfo>,
    pub(crate) extensions: SharedExtensions,
}

impl Connect {
    /// A request (for tests of hooks and layers).
    pub fn new(session: Arc<SessionInfo>) -> Self {
        Connect {
            session,
            extensions: SharedExtensions::new(),
        }
    }
}

impl Stage for Connect {
    fn kind(&self) -> StageKind {
        StageKind::Connect
    }
    fn session(&self) -> &SessionInfo {
        &self.session
    }
    shared_extensions_stage!();
}

/// HELO, EHLO or LHLO.
#[derive(Debug, Clone)]
pub struct Helo {
    pub(crate) session: Arc<SessionInfo>,
    pub(crate) greeting: Greeting,
    pub(crate) extensions: SharedExtensions,
}

impl Helo {
    /// A request (for tests of hooks and layers).
    pub fn new(session: Arc<SessionInfo>, greeting: Greeting) -> Self {
        Helo {
            session,
            greeting,
            extensions: SharedExtensions::new(),
        }
    }

    /// The command as given.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The name the client gave.
    pub fn name(&self) -> &str {
        self.greeting.name()
    }
}

impl Stage for Helo {
    fn kind(&self) -> StageKind {
        StageKind::Helo
    }
    fn session(&self) -> &SessionInfo {
        &self.session
    }
    shared_extensions_stage!();
}

/// AUTH credentials to verify: the request type of an authenticator.
///
/// An authenticator is a `Service<Authenticate, Response = Option<Identity>>`:
/// `Some(identity)` accepts (235), `None` refuses (535 5.7.8), an error is a
/// temporary failure (454 4.7.0).
#[derive(Debug, Clone)]
pub struct Authenticate {
    pub(crate) session: Arc<SessionInfo>,
    pub(crate) credentials: Credentials,
    pub(crate) extensions: SharedExtensions,
}

impl Authenticate {
    /// A request (for tests of authenticators and layers).
    pub fn new(session: Arc<SessionInfo>, credentials: Credentials) -> Self {
        Authenticate {
            session,
            credentials,
            extensions: SharedExtensions::new(),
        }
    }

    /// The credentials the client gave.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The username (SASL authentication identity).
    pub fn username(&self) -> &str {
        self.credentials.username()
    }

    /// The authorization identity the client asked to act as (`AUTH PLAIN`'s
    /// authzid, RFC 4616 2), when it gave one.
    ///
    /// When it is present and differs from the username, the exchange
    /// succeeds only if the authenticator returns `Some(Identity)` equal to
    /// it: returning the username (what an authenticator unaware of authzid
    /// does) fails with `535 5.7.8`. An authenticator that supports proxy
    /// authorization checks that the username may act as the authzid and
    /// returns the authzid, which becomes the session's identity.
    ///
    /// ```
    /// use smtpsrv::{Authenticate, BoxError, Identity};
    /// let authenticator = tower::service_fn(|req: Authenticate| async move {
    ///     let password_ok = req.username() == "admin" && req.password() == "secret";
    ///     // admin may act as any user of the domain; everyone else only as themselves.
    ///     let identity = match req.authzid() {
    ///         Some(user) if password_ok && user.ends_with("@example.com") => Some(Identity::new(user)),
    ///         Some(_) => None,
    ///         None => password_ok.then(|| Identity::new(req.username())),
    ///     };
    ///     Ok::<_, BoxError>(identity)
    /// });
    /// # drop(smtpsrv::Server::builder().authenticator(authenticator));
    /// ```
    pub fn authzid(&self) -> Option<&str> {
        self.credentials.authzid()
    }

    /// The password.
    pub fn password(&self) -> &str {
        self.credentials.password()
    }
}

impl Stage for Authenticate {
    fn kind(&self) -> StageKind {
        StageKind::Auth
    }
    fn session(&self) -> &SessionInfo {
        &self.session
    }
    shared_extensions_stage!();
}

/// `MAIL FROM`: decide on the sender before any data is read.
#[derive(Debug, Clone)]
pub struct MailFrom {
    pub(crate) session: Arc<SessionInfo>,
    pub(crate) envelope: Envelope,
    pub(crate) extensions: SharedExtensions,
}

impl MailFrom {
    /// A request (for tests of hooks and layers).
    pub fn new(
        session: Arc<SessionInfo>,
        reverse_path: Option<Address>,
        params: MailParams,
    ) -> Self {
        MailFrom {
            session,
            envelope: Envelope::new(reverse_path, params),
            extensions: SharedExtensions::new(),
        }
    }

    /// The reverse-path; `None` is the null sender `<>`.
    pub fn reverse_path(&self) -> Option<&Address> {
        self.envelope.reverse_path()
    }

    /// The `MAIL` parameters.
    pub fn params(&self) -> &MailParams {
        self.envelope.mail_params()
    }
}

impl Stage for MailFrom {
    fn kind(&self) -> StageKind {
        StageKind::Mail
    }
    fn session(&self) -> &SessionInfo {
        &self.session
    }
    fn envelope(&self) -> Option<&Envelope> {
        Some(&self.envelope)
    }
    shared_extensions_stage!();
}

/// `RCPT TO`: decide on one recipient (`550 5.1.1` for an unknown user)
/// while the others of the transaction stay accepted.
#[derive(Debug, Clone)]
pub struct RcptTo {
    pub(crate) session: Arc<SessionInfo>,
    pub(crate) envelope: Envelope,
    pub(crate) recipient: Recipient,
    pub(crate) extensions: SharedExtensions,
}

impl RcptTo {
    /// A request (for tests of hooks and layers).
    pub fn new(session: Arc<SessionInfo>, envelope: Envelope, recipient: Recipient) -> Self {
        RcptTo {
            session,
            envelope,
            recipient,
            extensions: SharedExtensions::new(),
        }
    }

    /// The recipient asked for.
    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The recipient's address.
    pub fn address(&self) -> &Address {
        self.recipient.address()
    }

    /// The reverse-path of the transaction.
    pub fn reverse_path(&self) -> Option<&Address> {
        self.envelope.reverse_path()
    }
}

impl Stage for RcptTo {
    fn kind(&self) -> StageKind {
        StageKind::Rcpt
    }
    fn session(&self) -> &SessionInfo {
        &self.session
    }
    fn envelope(&self) -> Option<&Envelope> {
        Some(&self.envelope)
    }
    fn recipient(&self) -> Option<&Recipient> {
        Some(&self.recipient)
    }
    shared_extensions_stage!();
}

impl Stage for Context {
    fn kind(&self) -> StageKind {
        StageKind::Data
    }
    fn session(&self) -> &SessionInfo {
        Context::session(self)
    }
    fn envelope(&self) -> Option<&Envelope> {
        Some(Context::envelope(self))
    }
    fn insert_extension<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.extensions_mut().insert(value);
    }
    fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.extensions().get::<T>().cloned()
    }
    fn body(&self) -> Option<&Body> {
        Some(Context::body(self))
    }
    fn body_mut(&mut self) -> Option<&mut Body> {
        Some(Context::body_mut(self))
    }
    fn message(&self) -> Option<Result<&Bytes, BodyError>> {
        Some(Context::message(self))
    }
    fn message_id(&self) -> Option<&MessageId> {
        Some(self.id())
    }
    fn prepend_header(&mut self, field: &str) -> bool {
        Context::prepend(self, field.as_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<SessionInfo> {
        Arc::new(SessionInfo::new(
            "[::ffff:192.0.2.7]:4000".parse().unwrap(),
            "[::]:25".parse().unwrap(),
        ))
    }

    /// What each stage carries, read through `Stage` alone.
    fn carried<R: Stage>(req: &mut R) -> (bool, Option<usize>, bool, bool) {
        (
            req.recipient().is_some(),
            req.message().map(|m| m.unwrap().len()),
            req.message_id().is_some(),
            req.prepend_header("X-Test: 1\r\n"),
        )
    }

    #[test]
    fn stages_carry_what_they_have_and_nothing_else() {
        let helo = &mut Helo::new(session(), Greeting::Ehlo("c.example".into()));
        assert_eq!(carried(helo), (false, None, false, false));
        let to = Recipient::new(Address::parse("b@example.net").unwrap(), Default::default());
        let rcpt = &mut RcptTo::new(session(), Envelope::default(), to);
        assert_eq!(carried(rcpt), (true, None, false, false));
        let ctx = &mut Context::new(session(), Envelope::default(), "Subject: x\r\n\r\n".into());
        assert_eq!(carried(ctx), (false, Some(14), true, true));
        assert_eq!(
            &ctx.message().unwrap()[..],
            b"X-Test: 1\r\nSubject: x\r\n\r\n"
        );
    }

    #[test]
    fn client_ip_turns_mapped_ipv4_back() {
        let ip = Connect::new(session()).client_ip();
        assert_eq!(ip, "192.0.2.7".parse::<std::net::IpAddr>().unwrap());
    }
}

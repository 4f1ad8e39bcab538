//! The SMTP session as a pure state machine: a decoded command in, a reply
//! and what the connection must do next out. No IO, no clock, no tasks: the
//! connection driver (`conn.rs`) owns those, and this module is unit
//! tested without sockets (like hyper's `proto` and mini-redis's `cmd`).
//!
//! Early decisions (hooks) are asynchronous, so the session hands them to
//! the driver as [`Action::Check`] and takes the answer back through
//! [`Session::checked`]; while a check is pending no other input is taken.

use std::sync::Arc;

use bytes::Bytes;

use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::context::Context;
use crate::envelope::{Envelope, Recipient};
use crate::extensions::SharedExtensions;
use crate::info::{Greeting, Identity, SessionInfo};
use crate::proto::{BodyType, Command, CommandError, Reply};
use crate::reply_conv::Delivery;
use crate::sasl::{Mechanism, SaslExchange, SaslStep};
use crate::stage::{Authenticate, Helo, MailFrom, RcptTo};
use crate::tls::TlsInfo;

/// What input the connection reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// SMTP command lines of at most `max_line` octets.
    Command {
        /// Longest line, CRLF included.
        max_line: usize,
    },
    /// A SASL response line (during AUTH).
    AuthResponse {
        /// Longest line, CRLF included.
        max_line: usize,
    },
    /// A DATA body up to `CRLF.CRLF`, at most `max_bytes` kept.
    Data {
        /// Size limit of the message.
        max_bytes: usize,
    },
    /// One BDAT chunk of exactly `size` octets.
    Bdat {
        /// The chunk's size.
        size: u64,
        /// Octets the message may still grow by; 0 with `discard`.
        room: u64,
        /// Drain the chunk without keeping it (the command was refused).
        discard: bool,
        /// First chunk of the message: start a new body.
        first: bool,
    },
}

/// An early decision the driver must ask a hook for.
#[derive(Debug)]
pub enum Check {
    /// HELO/EHLO/LHLO.
    Helo(Helo),
    /// AUTH credentials.
    Auth(Authenticate),
    /// MAIL FROM.
    Mail(MailFrom),
    /// RCPT TO.
    Rcpt(RcptTo),
}

/// What the connection must do after a step of the session.
#[derive(Debug)]
pub enum Action {
    /// Send the reply and read on.
    Reply(Reply),
    /// Send the reply, flush, and close the connection.
    Close(Reply),
    /// Send the reply (220), flush, throw away any buffered input, run the
    /// TLS handshake, then call [`Session::tls_established`].
    StartTls(Reply),
    /// Ask a hook, then call [`Session::checked`] with its answer.
    Check(Check),
    /// Send the reply if any (354 for DATA) and read per
    /// [`Session::input_mode`].
    Receive(Option<Reply>),
    /// Hand the message to the service, then call [`Session::delivered`].
    Deliver(Box<Context>),
    /// The body of a message whose service was called as it began (with
    /// the context from [`Session::streaming_context`]) has ended: wait for
    /// that call's answer, then call [`Session::delivered`] with these
    /// `recipients`. No second context is made for a message already
    /// handed on.
    AwaitAnswer {
        /// The message's recipients, for [`Session::delivered`].
        recipients: usize,
    },
}

/// How the body of a DATA or BDAT transfer ended.
#[derive(Debug)]
pub enum Received {
    /// All of it arrived within the limits.
    Complete(Bytes),
    /// It was larger than the size limit.
    TooLarge,
    /// It had a bare CR or LF and the policy rejects those.
    BareLineEnding,
    /// The server-wide memory budget could not hold it.
    OverBudget,
}

/// An AUTH outcome from the authenticator.
pub type AuthResult = Result<Identity, Reply>;

#[derive(Debug)]
enum State {
    /// Reading commands.
    Command,
    /// A hook is deciding; nothing else is read meanwhile.
    Checking(Pending),
    /// In a SASL exchange.
    Auth(SaslExchange),
    /// Reading a DATA body.
    Data,
    /// Reading a BDAT chunk.
    Bdat {
        size: u64,
        last: bool,
        discard: bool,
        first: bool,
    },
    /// The service has the message.
    Delivering,
    /// The connect hook refused service: only QUIT is answered usefully.
    Refused,
    /// The connection is to be closed.
    Closed,
}

#[derive(Debug)]
enum Pending {
    Helo(Greeting),
    Auth,
    Mail(Envelope, SharedExtensions),
    Rcpt(Recipient),
}

#[derive(Debug)]
struct Transaction {
    /// Shared with the streaming message's [`Context`] (no copy of the
    /// addresses per message); unique, so changed in place, until then.
    envelope: Arc<Envelope>,
    /// The map MAIL and RCPT hooks share; made on first use, since without
    /// those hooks nothing can write to it (no allocation per message).
    extensions: Option<SharedExtensions>,
    /// BDAT octets received so far; `Some` once BDAT was used.
    bdat_size: Option<u64>,
    /// Its context went to a service as the body began
    /// ([`Session::streaming_context`]).
    streamed: bool,
}

/// One SMTP session's protocol state.
#[derive(Debug)]
pub struct Session {
    config: Arc<Config>,
    budget: Option<Arc<MemoryBudget>>,
    info: Arc<SessionInfo>,
    state: State,
    transaction: Option<Transaction>,
    session_extensions: SharedExtensions,
    errors: usize,
    auth_failures: u32,
    messages: u32,
}

fn reply(code: u16, status: (u8, u16, u16), text: &'static str) -> Reply {
    Reply::new(code, status, text)
}

fn bad_sequence(text: &'static str) -> Reply {
    reply(503, (5, 5, 1), text)
}

impl Session {
    pub(crate) fn new(
        config: Arc<Config>,
        budget: Option<Arc<MemoryBudget>>,
        mut info: SessionInfo,
    ) -> Self {
        info.lmtp = config.lmtp;
        Session {
            config,
            budget,
            info: Arc::new(info),
            state: State::Command,
            transaction: None,
            session_extensions: SharedExtensions::new(),
            errors: 0,
            auth_failures: 0,
            messages: 0,
        }
    }

    /// The session's facts.
    pub fn info(&self) -> &Arc<SessionInfo> {
        &self.info
    }

    /// Extensions kept for the whole session (the connect hook's results).
    pub(crate) fn session_extensions(&self) -> &SharedExtensions {
        &self.session_extensions
    }

    /// How many failed AUTH attempts so far (the driver delays replies).
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// Whether a transaction is in progress (MAIL accepted, not finished):
    /// graceful shutdown lets those finish.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some() || !matches!(self.state, State::Command | State::Refused)
    }

    /// Whether the connection is to be closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// What to read next.
    pub fn input_mode(&self) -> InputMode {
        match self.state {
            State::Auth(_) => InputMode::AuthResponse {
                max_line: self.config.max_auth_line_len,
            },
            State::Data => InputMode::Data {
                max_bytes: self.config.max_message_bytes,
            },
            State::Bdat {
                size,
                discard,
                first,
                ..
            } => {
                let used = self
                    .transaction
                    .as_ref()
                    .and_then(|t| t.bdat_size)
                    .unwrap_or(0);
                InputMode::Bdat {
                    size,
                    room: if discard {
                        0
                    } else {
                        (self.config.max_message_bytes as u64).saturating_sub(used)
                    },
                    discard,
                    first,
                }
            }
            _ => InputMode::Command {
                max_line: self.config.max_line_len,
            },
        }
    }

    /// The greeting. `refusal` is the connect hook's negative answer, if any:
    /// a 421 closes, anything else is sent and then only QUIT is served.
    pub fn greeting(&mut self, refusal: Option<Reply>) -> Action {
        match refusal {
            None => Action::Reply(Reply::plain(220, self.config.greeting().to_owned())),
            Some(r) if r.code() == 421 => {
                self.state = State::Closed;
                Action::Close(r)
            }
            Some(r) => {
                self.state = State::Refused;
                Action::Reply(r)
            }
        }
    }

    /// Counts negative replies; past the limit the session ends with 421.
    fn answer(&mut self, r: Reply) -> Action {
        // 421 means the server closes (RFC 5321 3.8), whoever chose it.
        if r.code() == 421 {
            self.state = State::Closed;
            return Action::Close(r);
        }
        if r.code() >= 400 {
            self.errors += 1;
            if self.errors > self.config.max_errors {
                self.state = State::Closed;
                return Action::Close(reply(421, (4, 7, 0), "Too many errors, closing connection"));
            }
        }
        Action::Reply(r)
    }

    /// A command line that was too long (already discarded).
    pub fn line_too_long(&mut self) -> Action {
        if let State::Auth(_) = self.state {
            self.state = State::Command;
            return self.answer(reply(500, (5, 5, 6), "Authentication line too long"));
        }
        self.answer(reply(500, (5, 5, 2), "Line too long"))
    }

    /// A decoded command line.
    pub fn command(&mut self, parsed: Result<Command, CommandError>) -> Action {
        match self.state {
            State::Command => {}
            State::Refused => {
                return match parsed {
                    Ok(Command::Quit) => self.quit(),
                    _ => self.answer(reply(503, (5, 5, 1), "No SMTP service here, only QUIT")),
                };
            }
            _ => {
                // The driver only feeds commands in command mode; be safe.
                return self.answer(bad_sequence("Bad sequence of commands"));
            }
        }
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(e) => return self.answer(e.reply()),
        };
        if self.config.require_tls
            && !self.info.is_tls()
            && !matches!(
                cmd,
                Command::Ehlo { .. }
                    | Command::Helo { .. }
                    | Command::Lhlo { .. }
                    | Command::Noop
                    | Command::Quit
                    | Command::StartTls
            )
        {
            return self.answer(reply(530, (5, 7, 0), "Must issue a STARTTLS command first"));
        }
        match cmd {
            Command::Helo { domain } => self.helo(Greeting::Helo(domain)),
            Command::Ehlo { domain } => self.helo(Greeting::Ehlo(domain)),
            Command::Lhlo { domain } => self.helo(Greeting::Lhlo(domain)),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(Recipient::new(to, params)),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.transaction = None;
                Action::Reply(reply(250, (2, 0, 0), "OK"))
            }
            Command::Noop => Action::Reply(reply(250, (2, 0, 0), "OK")),
            Command::Quit => self.quit(),
            Command::Vrfy { .. } => Action::Reply(reply(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn { .. } => self.answer(reply(502, (5, 5, 1), "EXPN not implemented")),
            Command::Help { .. } => Action::Reply(reply(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response.as_deref()),
        }
    }

    fn quit(&mut self) -> Action {
        self.state = State::Closed;
        Action::Close(Reply::new(221, (2, 0, 0), self.config.closing().to_owned()))
    }

    fn helo(&mut self, greeting: Greeting) -> Action {
        let lmtp_greeting = matches!(greeting, Greeting::Lhlo(_));
        if lmtp_greeting != self.config.lmtp {
            return self.answer(reply(500, (5, 5, 1), "Command not recognized"));
        }
        if self.config.hooks.helo {
            self.state = State::Checking(Pending::Helo(greeting.clone()));
            let mut req = Helo::new(self.info.clone(), greeting);
            req.extensions = self.session_extensions.clone();
            return Action::Check(Check::Helo(req));
        }
        self.accept_helo(greeting)
    }

    fn accept_helo(&mut self, greeting: Greeting) -> Action {
        // A new greeting resets the transaction as RSET does (RFC 5321 4.1.4).
        self.transaction = None;
        let extended = greeting.is_extended();
        let keywords = if extended {
            self.config.ehlo_keywords(self.info.is_tls())
        } else {
            ""
        };
        let text = self.hello(greeting.name(), keywords);
        Arc::make_mut(&mut self.info).greeting = Some(greeting);
        Action::Reply(Reply::plain(250, text))
    }

    /// The `Hello` line for `name`, then `keywords` (an EHLO reply's, or
    /// none for HELO), in one string.
    fn hello(&self, name: &str, keywords: &str) -> String {
        let hostname = &self.config.hostname;
        let mut text = String::with_capacity(hostname.len() + 7 + name.len() + keywords.len());
        text.push_str(hostname);
        text.push_str(" Hello ");
        text.push_str(name);
        text.push_str(keywords);
        text
    }

    fn auth_offered(&self) -> bool {
        self.config.auth_offered(self.info.is_tls())
    }

    fn greeted(&self) -> Option<&Greeting> {
        self.info.greeting.as_ref()
    }

    fn mail(
        &mut self,
        from: Option<crate::proto::Address>,
        params: crate::proto::MailParams,
    ) -> Action {
        let Some(greeting) = self.greeted() else {
            return self.answer(bad_sequence("Send EHLO/HELO first"));
        };
        if !greeting.is_extended() && !params.is_empty() {
            return self.answer(reply(555, (5, 5, 4), "MAIL parameters need EHLO"));
        }
        if self.transaction.is_some() {
            return self.answer(bad_sequence("Nested MAIL command"));
        }
        if self.config.require_auth && self.info.identity.is_none() {
            return self.answer(reply(530, (5, 7, 0), "Authentication required"));
        }
        if let Some(max) = self.config.max_messages_per_session
            && self.messages >= max
        {
            return self.answer(reply(452, (4, 5, 3), "Too many messages in this session"));
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_bytes as u64)
        {
            return self.answer(reply(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        if !self.config.dsn && (params.ret.is_some() || params.envid.is_some()) {
            return self.answer(reply(555, (5, 5, 4), "DSN parameters are not supported"));
        }
        if !self.config.chunking && params.body == Some(BodyType::BinaryMime) {
            return self.answer(reply(555, (5, 5, 4), "BINARYMIME is not supported"));
        }
        if params.requiretls && !self.info.is_tls() {
            return self.answer(reply(555, (5, 5, 4), "REQUIRETLS needs a TLS session"));
        }
        if params.auth.is_some() && !self.config.auth {
            return self.answer(reply(555, (5, 5, 4), "AUTH parameter without AUTH support"));
        }
        let envelope = Envelope::new(from, params);
        if self.config.hooks.mail {
            let extensions = self.new_transaction_extensions();
            let req = MailFrom {
                session: self.info.clone(),
                envelope: envelope.clone(),
                extensions: extensions.clone(),
            };
            self.state = State::Checking(Pending::Mail(envelope, extensions));
            return Action::Check(Check::Mail(req));
        }
        self.accept_mail(envelope, None)
    }

    /// A transaction's map starts with the session's results (connect,
    /// HELO, AUTH), so a MAIL or RCPT hook sees them too.
    fn new_transaction_extensions(&self) -> SharedExtensions {
        SharedExtensions::from(self.session_extensions.snapshot())
    }

    fn accept_mail(&mut self, envelope: Envelope, extensions: Option<SharedExtensions>) -> Action {
        self.transaction = Some(Transaction {
            envelope: Arc::new(envelope),
            extensions,
            bdat_size: None,
            streamed: false,
        });
        Action::Reply(reply(250, (2, 1, 0), "Sender OK"))
    }

    fn rcpt(&mut self, recipient: Recipient) -> Action {
        let Some(t) = &self.transaction else {
            return self.answer(bad_sequence("Need MAIL before RCPT"));
        };
        if t.bdat_size.is_some() {
            return self.answer(bad_sequence("RCPT after BDAT"));
        }
        if !self.greeted().is_some_and(Greeting::is_extended) && !recipient.params.is_empty() {
            return self.answer(reply(555, (5, 5, 4), "RCPT parameters need EHLO"));
        }
        if t.envelope.recipients.len() >= self.config.max_recipients {
            // Not an error: a pipelining client sends all its recipients
            // before it reads this, and must not be cut off for it; it sends
            // the rest in a later transaction (RFC 5321 4.5.3.1.10).
            return Action::Reply(reply(452, (4, 5, 3), "Too many recipients"));
        }
        if !recipient.address.is_ascii() && !t.envelope.params.smtputf8 {
            return self.answer(reply(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
        }
        if !self.config.dsn && !recipient.params.is_empty() {
            return self.answer(reply(555, (5, 5, 4), "DSN parameters are not supported"));
        }
        if self.config.hooks.rcpt {
            let envelope = Envelope::clone(&t.envelope);
            let session_extensions = &self.session_extensions;
            let extensions = match &mut self.transaction {
                Some(t) => t
                    .extensions
                    .get_or_insert_with(|| SharedExtensions::from(session_extensions.snapshot()))
                    .clone(),
                None => self.new_transaction_extensions(),
            };
            let req = RcptTo {
                session: self.info.clone(),
                envelope,
                recipient: recipient.clone(),
                extensions,
            };
            self.state = State::Checking(Pending::Rcpt(recipient));
            return Action::Check(Check::Rcpt(req));
        }
        self.accept_rcpt(recipient)
    }

    fn accept_rcpt(&mut self, recipient: Recipient) -> Action {
        match &mut self.transaction {
            Some(t) => {
                Arc::make_mut(&mut t.envelope).recipients.push(recipient);
                Action::Reply(reply(250, (2, 1, 5), "Recipient OK"))
            }
            None => self.answer(bad_sequence("Need MAIL before RCPT")),
        }
    }

    /// Whether the budget can take at least a first step of a message.
    fn budget_allows(&self, declared: Option<u64>) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        // Only what is held in memory counts (past the spill threshold a
        // message goes to disk).
        let want = declared.map_or(64 * 1024, |s| s.min(self.config.message_memory() as u64));
        budget.available() as u64 >= want
    }

    fn data(&mut self) -> Action {
        let Some(t) = &self.transaction else {
            return self.answer(bad_sequence("Need MAIL command"));
        };
        if t.bdat_size.is_some() {
            return self.answer(bad_sequence("DATA after BDAT"));
        }
        if t.envelope.params.body == Some(BodyType::BinaryMime) {
            return self.answer(bad_sequence("BINARYMIME requires BDAT"));
        }
        if t.envelope.recipients.is_empty() {
            // LMTP wants 503 here (RFC 2033 4.2), SMTP 554 (RFC 5321 3.3).
            let code = if self.config.lmtp { 503 } else { 554 };
            return self.answer(reply(code, (5, 5, 1), "No valid recipients"));
        }
        if !self.budget_allows(t.envelope.params.size) {
            return self.answer(reply(
                452,
                (4, 3, 1),
                "Insufficient system storage, try again later",
            ));
        }
        self.state = State::Data;
        Action::Receive(Some(Reply::plain(354, "End data with <CR><LF>.<CR><LF>")))
    }

    fn bdat(&mut self, size: u64, last: bool) -> Action {
        let usable = self
            .transaction
            .as_ref()
            .is_some_and(|t| !t.envelope.recipients.is_empty());
        let first = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.bdat_size.is_none());
        // Without CHUNKING the chunk is still drained, so that its octets
        // are never read as commands.
        let discard =
            !self.config.chunking || !usable || (first && !self.budget_allows(Some(size)));
        if let (false, Some(t)) = (discard, &mut self.transaction) {
            t.bdat_size.get_or_insert(0);
        }
        self.state = State::Bdat {
            size,
            last,
            discard,
            first,
        };
        Action::Receive(None)
    }

    fn starttls(&mut self) -> Action {
        if self.info.is_tls() {
            return self.answer(bad_sequence("Already in TLS"));
        }
        if !self.config.starttls {
            return self.answer(reply(454, (4, 7, 0), "TLS not available"));
        }
        Action::StartTls(reply(220, (2, 0, 0), "Ready to start TLS"))
    }

    /// The TLS handshake after STARTTLS succeeded: everything is forgotten
    /// and the client must greet again (RFC 3207 4.2).
    pub fn tls_established(&mut self, tls: TlsInfo) {
        let info = Arc::make_mut(&mut self.info);
        info.tls = Some(Arc::new(tls));
        info.greeting = None;
        info.identity = None;
        self.transaction = None;
        self.state = State::Command;
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Action {
        if !self.config.auth {
            return self.answer(reply(502, (5, 5, 1), "AUTH not available"));
        }
        match self.greeted() {
            Some(g) if g.is_extended() => {}
            _ => return self.answer(bad_sequence("Send EHLO first")),
        }
        if self.info.identity.is_some() {
            return self.answer(bad_sequence("Already authenticated"));
        }
        if self.transaction.is_some() {
            return self.answer(bad_sequence("AUTH not allowed during a mail transaction"));
        }
        let Ok(mechanism) = mechanism.parse::<Mechanism>() else {
            return self.answer(reply(
                504,
                (5, 5, 4),
                "Unrecognized authentication mechanism",
            ));
        };
        if !self.auth_offered() {
            return self.answer(reply(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        match SaslExchange::start(mechanism, initial) {
            Ok((exchange, step)) => self.sasl_step(exchange, step),
            Err(e) => self.answer(e.reply()),
        }
    }

    fn sasl_step(&mut self, exchange: SaslExchange, step: SaslStep) -> Action {
        match step {
            SaslStep::Challenge(text) => {
                self.state = State::Auth(exchange);
                Action::Reply(Reply::plain(334, text))
            }
            SaslStep::Done(credentials) => {
                self.state = State::Checking(Pending::Auth);
                let mut req = Authenticate::new(self.info.clone(), credentials);
                req.extensions = self.session_extensions.clone();
                Action::Check(Check::Auth(req))
            }
        }
    }

    /// A client line during an AUTH exchange.
    pub fn auth_response(&mut self, line: &[u8]) -> Action {
        let State::Auth(mut exchange) = std::mem::replace(&mut self.state, State::Command) else {
            return self.answer(bad_sequence("No authentication in progress"));
        };
        match exchange.respond(line) {
            Ok(step) => self.sasl_step(exchange, step),
            Err(e) => self.answer(e.reply()),
        }
    }

    /// The authenticator's answer.
    pub fn authenticated(&mut self, result: AuthResult) -> Action {
        if !matches!(self.state, State::Checking(Pending::Auth)) {
            return self.answer(bad_sequence("No authentication in progress"));
        }
        self.state = State::Command;
        match result {
            Ok(identity) => {
                Arc::make_mut(&mut self.info).identity = Some(identity);
                Action::Reply(reply(235, (2, 7, 0), "Authentication successful"))
            }
            Err(r) => {
                if r.code() == 535 {
                    self.auth_failures += 1;
                }
                self.answer(r)
            }
        }
    }

    /// A hook's answer for a HELO, MAIL or RCPT check: a positive reply
    /// accepts (a 2xx reply's text replaces the default), anything else is
    /// sent as the refusal; a 421 refusal also closes the session.
    pub fn checked(&mut self, answer: Reply) -> Action {
        let State::Checking(pending) = std::mem::replace(&mut self.state, State::Command) else {
            return self.answer(bad_sequence("Nothing to decide"));
        };
        let accepted = answer.code() < 400;
        let custom = answer.code() != 250 || answer.text() != "OK";
        let action = match (pending, accepted) {
            (Pending::Helo(g), true) => return self.accept_helo(g),
            (Pending::Mail(env, ext), true) => self.accept_mail(env, Some(ext)),
            (Pending::Rcpt(r), true) => self.accept_rcpt(r),
            (Pending::Auth, _) => {
                self.state = State::Checking(Pending::Auth);
                return self.authenticated(Err(answer));
            }
            (_, false) => return self.answer(answer),
        };
        match action {
            Action::Reply(_) if custom => Action::Reply(answer),
            other => other,
        }
    }

    /// The end of a DATA body or BDAT chunk.
    pub fn received(&mut self, outcome: Received) -> Action {
        match std::mem::replace(&mut self.state, State::Command) {
            State::Data => self.finish_message(outcome),
            State::Bdat {
                size,
                last,
                discard,
                ..
            } => {
                if discard && !self.config.chunking {
                    return self.answer(reply(502, (5, 5, 1), "BDAT not available"));
                }
                if discard {
                    let busy = self
                        .transaction
                        .as_ref()
                        .is_some_and(|t| !t.envelope.recipients.is_empty());
                    return self.answer(if busy {
                        reply(
                            452,
                            (4, 3, 1),
                            "Insufficient system storage, try again later",
                        )
                    } else {
                        bad_sequence("Need MAIL and RCPT before BDAT")
                    });
                }
                if let Some(t) = &mut self.transaction {
                    t.bdat_size = Some(t.bdat_size.unwrap_or(0).saturating_add(size));
                }
                match outcome {
                    Received::Complete(_) if !last => Action::Reply(Reply::new(
                        250,
                        (2, 0, 0),
                        format!("{size} octets received"),
                    )),
                    outcome => self.finish_message(outcome),
                }
            }
            other => {
                self.state = other;
                self.answer(bad_sequence("No data expected"))
            }
        }
    }

    fn finish_message(&mut self, outcome: Received) -> Action {
        let Some(streamed) = self.transaction.as_ref().map(|t| t.streamed) else {
            return self.answer(bad_sequence("No transaction"));
        };
        if streamed && matches!(outcome, Received::Complete(_)) {
            // Dropped where it is: its envelope went out with the streaming
            // context, and moving it out first would only copy it.
            let recipients = self
                .transaction
                .as_ref()
                .map_or(0, |t| t.envelope.recipients.len());
            self.transaction = None;
            self.messages += 1;
            self.state = State::Delivering;
            return Action::AwaitAnswer { recipients };
        }
        let Some(t) = self.transaction.take() else {
            return self.answer(bad_sequence("No transaction"));
        };
        match outcome {
            Received::Complete(body) => {
                self.messages += 1;
                self.state = State::Delivering;
                let mut ctx = Context::numbered(self.info.clone(), t.envelope, body, self.messages);
                let mut ext = self.session_extensions.snapshot();
                if let Some(transaction) = &t.extensions {
                    ext.extend(transaction.snapshot());
                }
                ctx.set_extensions(ext);
                Action::Deliver(Box::new(ctx))
            }
            Received::TooLarge => self.answer(reply(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            )),
            Received::BareLineEnding => self.answer(reply(
                550,
                (5, 5, 2),
                "Bare CR or LF in message not allowed (RFC 5321 2.3.8)",
            )),
            Received::OverBudget => self.answer(reply(
                452,
                (4, 3, 1),
                "Insufficient system storage, try again later",
            )),
        }
    }

    /// The context of the transaction in progress, for a service called
    /// while its body still arrives (streaming mode): the id, envelope and
    /// extensions an [`Action::Deliver`] would carry. The transaction then
    /// ends with [`Action::AwaitAnswer`] instead.
    pub fn streaming_context(&mut self) -> Option<Context> {
        let t = self.transaction.as_mut()?;
        t.streamed = true;
        let mut ctx = Context::numbered(
            self.info.clone(),
            t.envelope.clone(),
            Bytes::new(),
            self.messages + 1,
        );
        let mut ext = self.session_extensions.snapshot();
        if let Some(transaction) = &t.extensions {
            ext.extend(transaction.snapshot());
        }
        ctx.set_extensions(ext);
        Some(ctx)
    }

    /// The service's answer for a delivered message: the replies to send
    /// (one, or one per recipient in LMTP).
    pub fn delivered(&mut self, delivery: Delivery, recipients: usize) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(if self.config.lmtp {
            recipients.max(1)
        } else {
            1
        });
        self.answer_delivery(delivery, recipients, |r| replies.push(r));
        replies
    }

    /// [`Session::delivered`] without the `Vec`: each reply goes to `send`,
    /// in order (the connection encodes them as they come; one allocation
    /// less per message).
    pub(crate) fn answer_delivery(
        &mut self,
        delivery: Delivery,
        recipients: usize,
        mut send: impl FnMut(Reply),
    ) {
        self.state = State::Command;
        if self.config.lmtp {
            // One reply per recipient, whatever the handler returned.
            let n = recipients.max(1);
            match delivery {
                Delivery::All(r) => {
                    for _ in 1..n {
                        send(r.clone());
                    }
                    send(r);
                }
                Delivery::PerRecipient(v) => {
                    let filler = v
                        .last()
                        .cloned()
                        .unwrap_or_else(|| reply(451, (4, 3, 0), "No answer for this recipient"));
                    let given = v.len();
                    v.into_iter().take(n).for_each(&mut send);
                    for _ in given..n {
                        send(filler.clone());
                    }
                }
            }
            return;
        }
        send(match delivery {
            Delivery::All(r) => r,
            Delivery::PerRecipient(v) => match v.iter().find(|r| r.code() < 400) {
                Some(ok) => ok.clone(),
                // No answer at all is not an acceptance: nothing is lost.
                None => v
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| reply(451, (4, 3, 0), "No answer for this message")),
            },
        });
    }
}

#[cfg(test)]
mod tests;

//! SASL exchanges for SMTP AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN.
//!
//! Sans-IO: [`SaslExchange`] turns client lines into challenges to send
//! (after `334 `) and, at the end, [`Credentials`] to check. It never
//! decides whether the credentials are right; that is the authenticator's
//! job.
//!
//! ```
//! use smtpsrv::sasl::{Mechanism, SaslExchange, SaslStep};
//!
//! // AUTH LOGIN, no initial response.
//! let (mut exchange, step) = SaslExchange::start(Mechanism::Login, None)?;
//! assert!(matches!(step, SaslStep::Challenge(ref c) if c == "VXNlcm5hbWU6"));
//! exchange.respond(b"dXNlcg==")?; // "user"
//! match exchange.respond(b"c2VjcmV0")? { // "secret"
//!     SaslStep::Done(creds) => assert_eq!((creds.username(), creds.password()), ("user", "secret")),
//!     SaslStep::Challenge(_) => unreachable!(),
//! }
//! # Ok::<(), smtpsrv::sasl::SaslError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, PAD_INDIFFERENT};

use crate::proto::Reply;

/// Longest client response we decode, in base64 characters. Real
/// credentials are far shorter; this bounds the work a peer can cause.
pub const MAX_RESPONSE_LEN: usize = 12 * 1024;

/// Standard alphabet; padding optional, as some clients omit it.
const BASE64: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, PAD_INDIFFERENT);

/// `Username:` and `Password:`, base64-encoded, as LOGIN clients expect.
const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// A supported SASL mechanism.
///
/// ```
/// use smtpsrv::sasl::Mechanism;
/// assert_eq!("plain".parse::<Mechanism>(), Ok(Mechanism::Plain));
/// assert_eq!(Mechanism::Login.as_str(), "LOGIN");
/// assert!("CRAM-MD5".parse::<Mechanism>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616: `authzid NUL authcid NUL passwd` in one response.
    Plain,
    /// The de-facto LOGIN mechanism: username, then password.
    Login,
}

impl Mechanism {
    /// Every supported mechanism, in the order to advertise them.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// The upper-case name used in `AUTH` and in the EHLO reply.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mechanism named in `AUTH` is not supported (reply `504 5.5.4`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported SASL mechanism")]
pub struct UnknownMechanism;

impl FromStr for Mechanism {
    type Err = UnknownMechanism;

    /// Case-insensitive, as SASL mechanism names are.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or(UnknownMechanism)
    }
}

/// What a client presented. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    authzid: Option<String>,
    username: String,
    password: String,
    mechanism: Mechanism,
}

impl Credentials {
    /// Credentials as if presented with PLAIN (see
    /// [`with_mechanism`](Self::with_mechanism)); mostly for tests of
    /// authenticators.
    pub fn new(authzid: Option<String>, username: String, password: String) -> Self {
        Self {
            authzid,
            username,
            password,
            mechanism: Mechanism::Plain,
        }
    }

    /// The same credentials, marked as presented with `mechanism`.
    pub fn with_mechanism(mut self, mechanism: Mechanism) -> Self {
        self.mechanism = mechanism;
        self
    }

    /// The identity to act as, if the client asked for one other than its
    /// own (PLAIN only; never empty).
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// The authentication identity (never empty).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password (never empty).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The mechanism the credentials came with.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("mechanism", &self.mechanism)
            .finish()
    }
}

/// The next thing to do in an exchange.
#[derive(Debug, Clone)]
pub enum SaslStep {
    /// Send `334 ` followed by this text (already base64, may be empty)
    /// and feed the client's next line to [`SaslExchange::respond`].
    Challenge(String),
    /// The exchange is over: check these credentials.
    Done(Credentials),
}

/// Why an exchange failed; the exchange is over either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*`.
    #[error("authentication cancelled by the client")]
    Cancelled,
    /// A response was not valid base64.
    #[error("invalid base64 in an authentication response")]
    InvalidBase64,
    /// A response decoded but is not what the mechanism expects (missing
    /// fields, empty name or password, not UTF-8, too long), or came after
    /// the exchange was over.
    #[error("malformed authentication response")]
    Malformed,
}

impl SaslError {
    /// The reply to send the client (RFC 4954 section 4).
    ///
    /// ```
    /// use smtpsrv::sasl::SaslError;
    /// assert_eq!(SaslError::Cancelled.reply().to_string(), "501 5.0.0 Authentication cancelled\r\n");
    /// ```
    pub fn reply(&self) -> Reply {
        match self {
            Self::Cancelled => Reply::new(501, (5, 0, 0), "Authentication cancelled"),
            Self::InvalidBase64 => Reply::new(501, (5, 5, 2), "Invalid base64 data"),
            Self::Malformed => Reply::new(501, (5, 5, 2), "Malformed authentication response"),
        }
    }
}

/// One SASL exchange, from `AUTH` to the credentials.
#[derive(Debug)]
pub struct SaslExchange {
    state: State,
}

enum State {
    /// PLAIN sent `334 `; the next line is the whole response.
    PlainResponse,
    /// LOGIN asked for the username.
    LoginUsername,
    /// LOGIN asked for the password.
    LoginPassword { username: String },
    /// Credentials were produced or an error was returned.
    Finished,
}

impl fmt::Debug for State {
    // By hand so that no future field can leak a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PlainResponse => "PlainResponse",
            Self::LoginUsername => "LoginUsername",
            Self::LoginPassword { .. } => "LoginPassword",
            Self::Finished => "Finished",
        })
    }
}

impl SaslExchange {
    /// Starts an exchange for `AUTH <mechanism> [initial_response]`.
    ///
    /// `initial_response` is the base64 argument as sent (`=` meaning an
    /// empty response). With PLAIN and an initial response the step is
    /// already [`SaslStep::Done`].
    pub fn start(
        mechanism: Mechanism,
        initial_response: Option<&str>,
    ) -> Result<(SaslExchange, SaslStep), SaslError> {
        let mut exchange = SaslExchange {
            state: match mechanism {
                Mechanism::Plain => State::PlainResponse,
                Mechanism::Login => State::LoginUsername,
            },
        };
        let step = match initial_response {
            Some(response) => exchange.respond(response.as_bytes())?,
            None => match mechanism {
                Mechanism::Plain => SaslStep::Challenge(String::new()),
                Mechanism::Login => SaslStep::Challenge(LOGIN_USERNAME_CHALLENGE.to_owned()),
            },
        };
        Ok((exchange, step))
    }

    /// Feeds one client line (without CRLF). After an error or
    /// [`SaslStep::Done`] the exchange is over and further lines are
    /// [`SaslError::Malformed`].
    pub fn respond(&mut self, line: &[u8]) -> Result<SaslStep, SaslError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let decoded = decode(line)?;
        match state {
            State::PlainResponse => parse_plain(&decoded).map(SaslStep::Done),
            State::LoginUsername => {
                let username = non_empty_utf8(decoded)?;
                self.state = State::LoginPassword { username };
                Ok(SaslStep::Challenge(LOGIN_PASSWORD_CHALLENGE.to_owned()))
            }
            State::LoginPassword { username } => {
                let password = non_empty_utf8(decoded)?;
                Ok(SaslStep::Done(
                    Credentials::new(None, username, password).with_mechanism(Mechanism::Login),
                ))
            }
            State::Finished => Err(SaslError::Malformed),
        }
    }
}

/// Decodes one response: `*` cancels, `=` or nothing is empty.
fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    if line.len() > MAX_RESPONSE_LEN {
        return Err(SaslError::Malformed);
    }
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"" | b"=" => Ok(Vec::new()),
        _ => BASE64.decode(line).map_err(|_| SaslError::InvalidBase64),
    }
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616 section 2).
fn parse_plain(decoded: &[u8]) -> Result<Credentials, SaslError> {
    let text = std::str::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let mut fields = text.split('\0');
    let (Some(authzid), Some(username), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed);
    };
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    Ok(Credentials::new(
        authzid,
        username.to_owned(),
        password.to_owned(),
    ))
}

fn non_empty_utf8(decoded: Vec<u8>) -> Result<String, SaslError> {
    match String::from_utf8(decoded) {
        Ok(text) if !text.is_empty() => Ok(text),
        _ => Err(SaslError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn done(step: SaslStep) -> Credentials {
        match step {
            SaslStep::Done(creds) => creds,
            SaslStep::Challenge(c) => panic!("expected credentials, got challenge {c:?}"),
        }
    }

    fn challenge(step: SaslStep) -> String {
        match step {
            SaslStep::Challenge(c) => c,
            SaslStep::Done(creds) => panic!("expected a challenge, got {creds:?}"),
        }
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        assert_eq!("PLAIN".parse(), Ok(Mechanism::Plain));
        assert_eq!("Login".parse(), Ok(Mechanism::Login));
        assert_eq!("login".parse::<Mechanism>(), Ok(Mechanism::Login));
        assert_eq!("XOAUTH2".parse::<Mechanism>(), Err(UnknownMechanism));
        assert_eq!("".parse::<Mechanism>(), Err(UnknownMechanism));
        assert_eq!(Mechanism::Plain.to_string(), "PLAIN");
    }

    #[test]
    fn plain_with_initial_response() {
        let (mut exchange, step) =
            SaslExchange::start(Mechanism::Plain, Some(&b64(b"\0alice\0s3cret"))).unwrap();
        let creds = done(step);
        assert_eq!(creds.authzid(), None);
        assert_eq!(creds.username(), "alice");
        assert_eq!(creds.password(), "s3cret");
        assert_eq!(creds.mechanism(), Mechanism::Plain);
        // The exchange is over.
        assert_eq!(exchange.respond(b"AAAA").err(), Some(SaslError::Malformed));
    }

    #[test]
    fn plain_without_initial_response_sends_empty_challenge() {
        let (mut exchange, step) = SaslExchange::start(Mechanism::Plain, None).unwrap();
        assert_eq!(challenge(step), "");
        let creds = done(exchange.respond(b64(b"\0bob\0pw").as_bytes()).unwrap());
        assert_eq!((creds.username(), creds.password()), ("bob", "pw"));
    }

    #[test]
    fn plain_with_authzid_and_utf8() {
        let payload = b64("admin\0jos\u{e9}\0p\u{e4}ss".as_bytes());
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(&payload)).unwrap();
        let creds = done(step);
        assert_eq!(creds.authzid(), Some("admin"));
        assert_eq!(creds.username(), "jos\u{e9}");
        assert_eq!(creds.password(), "p\u{e4}ss");
    }

    #[test]
    fn plain_equals_sign_is_an_empty_and_so_malformed_response() {
        let err = SaslExchange::start(Mechanism::Plain, Some("=")).unwrap_err();
        assert_eq!(err, SaslError::Malformed);
        let (mut exchange, _) = SaslExchange::start(Mechanism::Plain, None).unwrap();
        assert_eq!(exchange.respond(b"").err(), Some(SaslError::Malformed));
    }

    #[test]
    fn plain_rejects_missing_or_extra_fields() {
        for payload in [
            &b"alice"[..],
            b"alice\0secret",
            b"\0\0secret",
            b"\0alice\0",
            b"a\0b\0c\0d",
            b"\0alice\0\xff\xfe",
        ] {
            let err = SaslExchange::start(Mechanism::Plain, Some(&b64(payload))).unwrap_err();
            assert_eq!(err, SaslError::Malformed, "payload {payload:?}");
        }
    }

    #[test]
    fn bad_base64_is_reported_as_such() {
        let err = SaslExchange::start(Mechanism::Plain, Some("not base64!")).unwrap_err();
        assert_eq!(err, SaslError::InvalidBase64);
        let (mut exchange, _) = SaslExchange::start(Mechanism::Login, None).unwrap();
        assert_eq!(
            exchange.respond(b"@@@@").err(),
            Some(SaslError::InvalidBase64)
        );
        assert_eq!(
            exchange.respond(b"dXNlcg==").err(),
            Some(SaslError::Malformed)
        );
    }

    #[test]
    fn missing_padding_is_tolerated() {
        let unpadded = b64(b"\0al\0pw").trim_end_matches('=').to_owned();
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some(&unpadded)).unwrap();
        assert_eq!(done(step).username(), "al");
    }

    #[test]
    fn star_cancels_at_any_step() {
        let (mut exchange, _) = SaslExchange::start(Mechanism::Plain, None).unwrap();
        assert_eq!(exchange.respond(b"*").err(), Some(SaslError::Cancelled));

        let (mut exchange, _) = SaslExchange::start(Mechanism::Login, None).unwrap();
        assert_eq!(exchange.respond(b"*").err(), Some(SaslError::Cancelled));

        let (mut exchange, _) = SaslExchange::start(Mechanism::Login, None).unwrap();
        challenge(exchange.respond(b64(b"user").as_bytes()).unwrap());
        assert_eq!(exchange.respond(b"*").err(), Some(SaslError::Cancelled));

        let err = SaslExchange::start(Mechanism::Login, Some("*")).unwrap_err();
        assert_eq!(err, SaslError::Cancelled);
    }

    #[test]
    fn login_without_initial_response() {
        let (mut exchange, step) = SaslExchange::start(Mechanism::Login, None).unwrap();
        assert_eq!(challenge(step), "VXNlcm5hbWU6");
        let step = exchange.respond(b64(b"carol").as_bytes()).unwrap();
        assert_eq!(challenge(step), "UGFzc3dvcmQ6");
        let creds = done(exchange.respond(b64(b"hunter2").as_bytes()).unwrap());
        assert_eq!(creds.username(), "carol");
        assert_eq!(creds.password(), "hunter2");
        assert_eq!(creds.authzid(), None);
        assert_eq!(creds.mechanism(), Mechanism::Login);
    }

    #[test]
    fn login_initial_response_skips_the_username_challenge() {
        let (mut exchange, step) =
            SaslExchange::start(Mechanism::Login, Some(&b64(b"dave"))).unwrap();
        assert_eq!(challenge(step), "UGFzc3dvcmQ6");
        let creds = done(exchange.respond(b64(b"pw").as_bytes()).unwrap());
        assert_eq!((creds.username(), creds.password()), ("dave", "pw"));
    }

    #[test]
    fn login_rejects_empty_fields() {
        let err = SaslExchange::start(Mechanism::Login, Some("=")).unwrap_err();
        assert_eq!(err, SaslError::Malformed);
        let (mut exchange, _) = SaslExchange::start(Mechanism::Login, Some(&b64(b"u"))).unwrap();
        assert_eq!(exchange.respond(b"").err(), Some(SaslError::Malformed));
    }

    #[test]
    fn oversized_responses_are_malformed_before_decoding() {
        let huge = "A".repeat(MAX_RESPONSE_LEN + 4);
        let err = SaslExchange::start(Mechanism::Plain, Some(&huge)).unwrap_err();
        assert_eq!(err, SaslError::Malformed);
        // Just under the limit still decodes (and fails only on content).
        let big = "A".repeat(MAX_RESPONSE_LEN);
        let err = SaslExchange::start(Mechanism::Plain, Some(&big)).unwrap_err();
        assert_eq!(err, SaslError::Malformed);
        let (mut exchange, _) = SaslExchange::start(Mechanism::Login, None).unwrap();
        assert_eq!(
            exchange.respond(huge.as_bytes()).err(),
            Some(SaslError::Malformed)
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let creds = Credentials::new(None, "erin".into(), "topsecret".into());
        let shown = format!("{creds:?}");
        assert!(shown.contains("erin"), "{shown}");
        assert!(!shown.contains("topsecret"), "{shown}");

        let (exchange, step) =
            SaslExchange::start(Mechanism::Plain, Some(&b64(b"\0erin\0topsecret"))).unwrap();
        let shown = format!("{step:?} {exchange:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn error_replies() {
        assert_eq!(
            SaslError::Cancelled.reply().to_string(),
            "501 5.0.0 Authentication cancelled\r\n"
        );
        assert_eq!(
            SaslError::InvalidBase64.reply().to_string(),
            "501 5.5.2 Invalid base64 data\r\n"
        );
        assert_eq!(
            SaslError::Malformed.reply().to_string(),
            "501 5.5.2 Malformed authentication response\r\n"
        );
    }
}

//! [`CommandError`]: why a command line or its parameters could not be
//! parsed, and the reply that says so.
//!
//! A module of its own because both the command parser and the MAIL/RCPT
//! parameter parser produce it: with the error in `command`, `command` and
//! `params` imported each other.

use std::fmt;

use super::address::AddressError;
use super::reply::Reply;

/// Why a command line could not be parsed. [`CommandError::reply`] is the
/// answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb: `500 5.5.1`.
    Unrecognized,
    /// The line is not UTF-8: `500 5.5.2`.
    InvalidUtf8,
    /// The arguments do not match the verb's grammar: `501 5.5.2`.
    Syntax {
        /// The grammar quoted back to the client, e.g. `"EHLO domain"`.
        expected: &'static str,
    },
    /// A MAIL/RCPT parameter this parser does not know: `555 5.5.4`.
    UnknownParameter(String),
    /// A known parameter with a malformed or repeated value: `501 5.5.4`.
    BadParameter {
        /// The parameter, upper-cased.
        name: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A malformed recipient address: `501 5.1.3`.
    BadAddress(AddressError),
    /// A malformed sender address: `501 5.1.7`.
    BadSender(AddressError),
    /// A non-ASCII sender without the `SMTPUTF8` parameter: `553 5.6.7`.
    SmtpUtf8Required,
}

impl CommandError {
    /// The reply to send for this error.
    ///
    /// ```
    /// use smtpsrv::proto::Command;
    /// let err = Command::parse(b"MAIL FROM:<a@example.com> X-FOO=1").unwrap_err();
    /// assert_eq!(err.reply().to_string(), "555 5.5.4 Unsupported parameter X-FOO\r\n");
    /// ```
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => Reply::new(500, (5, 5, 1), "Command not recognized"),
            CommandError::InvalidUtf8 => Reply::new(
                500,
                (5, 5, 2),
                "Syntax error, command line is not valid UTF-8",
            ),
            CommandError::Syntax { expected } => Reply::new(
                501,
                (5, 5, 2),
                format!("Syntax error, expected: {expected}"),
            ),
            CommandError::UnknownParameter(name) => {
                Reply::new(555, (5, 5, 4), format!("Unsupported parameter {name}"))
            }
            CommandError::BadParameter { name, expected } => Reply::new(
                501,
                (5, 5, 4),
                format!("Invalid value for {name}, expected: {expected}"),
            ),
            CommandError::BadAddress(e) => {
                Reply::new(501, (5, 1, 3), format!("Bad address syntax: {e}"))
            }
            CommandError::BadSender(e) => {
                Reply::new(501, (5, 1, 7), format!("Bad sender address syntax: {e}"))
            }
            CommandError::SmtpUtf8Required => {
                Reply::new(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
            }
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = self.reply();
        write!(f, "{} {}", reply.code(), reply.text())
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommandError::BadAddress(e) | CommandError::BadSender(e) => Some(e),
            _ => None,
        }
    }
}

//! Typed SMTP commands (RFC 5321 4.1) and the one table that maps every
//! parse error to its reply.
//!
//! [`Command::parse`] takes one command line without its CRLF, as the line
//! receiver delivers it. It only checks grammar: whether a command is
//! allowed now (sequence, enabled extensions, TLS) is the session's call.
//!
//! Leniencies, each one what widely deployed servers accept: trailing
//! spaces, several spaces between arguments and parameters, and one space
//! after `FROM:`/`TO:`. HELO/EHLO/LHLO take any non-empty argument, since
//! judging the client's name is policy, not grammar.
use super::address::{Address, AddressError, strip_source_route};
pub use super::error::CommandError;
use super::params::{MailParams, RcptParams};

/// Grammar of `MAIL`, quoted back in its syntax errors.
pub(crate) const MAIL_SYNTAX: &str = "MAIL FROM:<reverse-path> [parameters]";
/// Grammar of `RCPT`, quoted back in its syntax errors.
pub(crate) const RCPT_SYNTAX: &str = "RCPT TO:<forward-path> [parameters]";

/// Longest SASL mechanism name (RFC 4422 3.1).
const MAX_MECHANISM_LEN: usize = 20;
/// Longest BDAT chunk size, in digits (RFC 3030 2).
const MAX_CHUNK_SIZE_DIGITS: usize = 20;

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`.
    Helo {
        /// The client's name as given.
        domain: String,
    },
    /// `EHLO domain`.
    Ehlo {
        /// The client's name or address literal as given.
        domain: String,
    },
    /// `LHLO domain` (LMTP, RFC 2033).
    Lhlo {
        /// The client's name as given.
        domain: String,
    },
    /// `MAIL FROM:<reverse-path> [parameters]`.
    Mail {
        /// The sender; `None` is the null reverse-path `<>` (bounces).
        from: Option<Address>,
        /// The ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [parameters]`.
    Rcpt {
        /// The recipient (possibly the bare `Postmaster`).
        to: Address,
        /// The ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT chunk-size [LAST]` (RFC 3030).
    Bdat {
        /// The exact number of octets that follow the command line.
        size: u64,
        /// True for the final chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]` (the argument is ignored).
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy {
        /// The user or mailbox to verify.
        arg: String,
    },
    /// `EXPN string`.
    Expn {
        /// The mailing list to expand.
        arg: String,
    },
    /// `HELP [string]`.
    Help {
        /// The topic, if any.
        topic: Option<String>,
    },
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism, upper-cased.
        mechanism: String,
        /// The base64 initial response as sent (`=` means empty), not decoded.
        initial_response: Option<String>,
    },
}

/// The verbs this parser knows, with the grammar quoted in syntax errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Helo,
    Ehlo,
    Lhlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
}

impl Verb {
    const ALL: [Verb; 15] = [
        Verb::Helo,
        Verb::Ehlo,
        Verb::Lhlo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Quit,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Help,
        Verb::StartTls,
        Verb::Auth,
    ];

    fn name(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Lhlo => "LHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Help => "HELP",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
        }
    }

    fn syntax(self) -> &'static str {
        match self {
            Verb::Helo => "HELO domain",
            Verb::Ehlo => "EHLO domain",
            Verb::Lhlo => "LHLO domain",
            Verb::Mail => MAIL_SYNTAX,
            Verb::Rcpt => RCPT_SYNTAX,
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT chunk-size [LAST]",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP [string]",
            Verb::Quit => "QUIT",
            Verb::Vrfy => "VRFY string",
            Verb::Expn => "EXPN string",
            Verb::Help => "HELP [string]",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH mechanism [initial-response]",
        }
    }

    fn from_word(word: &str) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(word))
    }
}

impl Command {
    /// Parses one command line, given without its terminating CRLF.
    ///
    /// ```
    /// use smtpsrv::proto::{Command, BodyType};
    ///
    /// let cmd = Command::parse(b"MAIL FROM:<alice@example.com> BODY=8BITMIME").unwrap();
    /// let Command::Mail { from, params } = cmd else { unreachable!() };
    /// assert_eq!(from.unwrap().domain(), Some("example.com"));
    /// assert_eq!(params.body, Some(BodyType::EightBitMime));
    ///
    /// assert_eq!(Command::parse(b"mail from:<>").unwrap(),
    ///            Command::Mail { from: None, params: Default::default() });
    ///
    /// let err = Command::parse(b"DATA now").unwrap_err();
    /// assert_eq!(err.reply().to_string(), "501 5.5.2 Syntax error, expected: DATA\r\n");
    /// ```
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidUtf8)?;
        let line = line.trim_end_matches(' ');
        // A byte search: `split_once(' ')` goes through the char searcher,
        // which costs more than the rest of parsing a short line.
        let (word, arg) = match line.bytes().position(|b| b == b' ') {
            Some(space) => (&line[..space], line[space + 1..].trim_start_matches(' ')),
            None => (line, ""),
        };
        let verb = Verb::from_word(word).ok_or(CommandError::Unrecognized)?;
        let syntax = CommandError::Syntax {
            expected: verb.syntax(),
        };
        // NUL, a bare CR or LF, or any other control never belongs in a line.
        if arg.bytes().any(|b| b.is_ascii_control()) {
            return Err(syntax);
        }
        let no_arg = |cmd: Command| {
            if arg.is_empty() {
                Ok(cmd)
            } else {
                Err(syntax.clone())
            }
        };
        let required = || {
            if arg.is_empty() {
                Err(syntax.clone())
            } else {
                Ok(arg.to_owned())
            }
        };
        match verb {
            Verb::Helo => required().map(|domain| Command::Helo { domain }),
            Verb::Ehlo => required().map(|domain| Command::Ehlo { domain }),
            Verb::Lhlo => required().map(|domain| Command::Lhlo { domain }),
            Verb::Mail => parse_mail(arg),
            Verb::Rcpt => parse_rcpt(arg),
            Verb::Data => no_arg(Command::Data),
            Verb::Bdat => parse_bdat(arg).ok_or(syntax),
            Verb::Rset => no_arg(Command::Rset),
            Verb::Noop => Ok(Command::Noop),
            Verb::Quit => no_arg(Command::Quit),
            Verb::Vrfy => required().map(|arg| Command::Vrfy { arg }),
            Verb::Expn => required().map(|arg| Command::Expn { arg }),
            Verb::Help => Ok(Command::Help {
                topic: (!arg.is_empty()).then(|| arg.to_owned()),
            }),
            Verb::StartTls => no_arg(Command::StartTls),
            Verb::Auth => parse_auth(arg).ok_or(syntax),
        }
    }

    /// The command's verb in upper case, e.g. `"MAIL"` (for logs and replies).
    pub fn verb(&self) -> &'static str {
        let verb = match self {
            Command::Helo { .. } => Verb::Helo,
            Command::Ehlo { .. } => Verb::Ehlo,
            Command::Lhlo { .. } => Verb::Lhlo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Vrfy { .. } => Verb::Vrfy,
            Command::Expn { .. } => Verb::Expn,
            Command::Help { .. } => Verb::Help,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
        };
        verb.name()
    }
}

/// `FROM:<reverse-path> [parameters]`, the part after `MAIL `.
fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let syntax = CommandError::Syntax {
        expected: MAIL_SYNTAX,
    };
    let (path, params) = split_path(arg, "FROM:").ok_or(syntax)?;
    let from = if path.is_empty() {
        None
    } else {
        let mailbox = strip_source_route(path).map_err(CommandError::BadSender)?;
        let address = Address::parse(mailbox).map_err(CommandError::BadSender)?;
        if address.domain().is_none() {
            return Err(CommandError::BadSender(AddressError::MissingDomain));
        }
        Some(address)
    };
    let params = MailParams::parse(params, MAIL_SYNTAX)?;
    if from.as_ref().is_some_and(|a| !a.is_ascii()) && !params.smtputf8 {
        return Err(CommandError::SmtpUtf8Required);
    }
    Ok(Command::Mail { from, params })
}

/// `TO:<forward-path> [parameters]`, the part after `RCPT `.
fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let syntax = CommandError::Syntax {
        expected: RCPT_SYNTAX,
    };
    let (path, params) = split_path(arg, "TO:").ok_or(syntax)?;
    let mailbox = strip_source_route(path).map_err(CommandError::BadAddress)?;
    let to = Address::parse(mailbox).map_err(CommandError::BadAddress)?;
    let params = RcptParams::parse(params, RCPT_SYNTAX)?;
    Ok(Command::Rcpt { to, params })
}

/// Splits `PREFIX<path> params` into the text between the angle brackets
/// and the parameters. `PREFIX` is matched case-insensitively and may be
/// followed by one space. A `>` inside a quoted local part does not end the
/// path.
fn split_path<'a>(arg: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &arg[prefix.len()..];
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let inner = rest.strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    // Octets: the delimiters are ASCII, so they never occur inside a
    // multi-octet character.
    for (i, &c) in inner.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match c {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else if c == b'"' {
            quoted = true;
        } else if c == b'>' {
            let path = &inner[..i];
            let after = &inner[i + 1..];
            return match after.strip_prefix(' ') {
                Some(params) => Some((path, params)),
                None if after.is_empty() => Some((path, "")),
                None => None,
            };
        }
    }
    None
}

/// `chunk-size [LAST]`.
fn parse_bdat(arg: &str) -> Option<Command> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    let digits_ok = (1..=MAX_CHUNK_SIZE_DIGITS).contains(&size.len())
        && size.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Command::Bdat { size, last })
}

/// `mechanism [initial-response]`.
fn parse_auth(arg: &str) -> Option<Command> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next()?;
    let mechanism_ok = mechanism.len() <= MAX_MECHANISM_LEN
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mechanism_ok {
        return None;
    }
    let initial_response = words.next().map(str::to_owned);
    if words.next().is_some() {
        return None;
    }
    Some(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::params::{BodyType, Notify, Orcpt, Ret};

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn ok(line: &str) -> Command {
        Command::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn simple_commands_in_any_case() {
        let cases: &[(&str, Command)] = &[
            (
                "HELO client.example",
                Command::Helo {
                    domain: "client.example".into(),
                },
            ),
            (
                "helo client.example",
                Command::Helo {
                    domain: "client.example".into(),
                },
            ),
            (
                "EHLO client.example",
                Command::Ehlo {
                    domain: "client.example".into(),
                },
            ),
            (
                "eHlO [192.0.2.1]",
                Command::Ehlo {
                    domain: "[192.0.2.1]".into(),
                },
            ),
            (
                "EHLO  spaced.example  ",
                Command::Ehlo {
                    domain: "spaced.example".into(),
                },
            ),
            (
                "LHLO lmtp.example",
                Command::Lhlo {
                    domain: "lmtp.example".into(),
                },
            ),
            ("DATA", Command::Data),
            ("data", Command::Data),
            ("DATA ", Command::Data),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything at all", Command::Noop),
            ("QUIT", Command::Quit),
            ("quit", Command::Quit),
            ("STARTTLS", Command::StartTls),
            ("StartTLS", Command::StartTls),
            (
                "VRFY alice",
                Command::Vrfy {
                    arg: "alice".into(),
                },
            ),
            (
                "VRFY Alice Smith",
                Command::Vrfy {
                    arg: "Alice Smith".into(),
                },
            ),
            (
                "EXPN staff",
                Command::Expn {
                    arg: "staff".into(),
                },
            ),
            ("HELP", Command::Help { topic: None }),
            (
                "HELP MAIL",
                Command::Help {
                    topic: Some("MAIL".into()),
                },
            ),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "BDAT 1000",
                Command::Bdat {
                    size: 1000,
                    last: false,
                },
            ),
            (
                "bdat 5 last",
                Command::Bdat {
                    size: 5,
                    last: true,
                },
            ),
            (
                "BDAT  5   LAST",
                Command::Bdat {
                    size: 5,
                    last: true,
                },
            ),
            (
                "BDAT 18446744073709551615",
                Command::Bdat {
                    size: u64::MAX,
                    last: false,
                },
            ),
            (
                "AUTH PLAIN",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: None,
                },
            ),
            (
                "auth plain AGFsaWNlAHNlY3JldA==",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AGFsaWNlAHNlY3JldA==".into()),
                },
            ),
            (
                "AUTH LOGIN =",
                Command::Auth {
                    mechanism: "LOGIN".into(),
                    initial_response: Some("=".into()),
                },
            ),
            (
                "AUTH SCRAM-SHA-256",
                Command::Auth {
                    mechanism: "SCRAM-SHA-256".into(),
                    initial_response: None,
                },
            ),
        ];
        for (line, want) in cases {
            let got = ok(line);
            assert_eq!(&got, want, "{line:?}");
            assert!(
                line.to_ascii_uppercase().starts_with(got.verb()),
                "{line:?}"
            );
        }
    }

    #[test]
    fn mail_forms() {
        let plain = |from: Option<&str>| Command::Mail {
            from: from.map(addr),
            params: MailParams::default(),
        };
        let cases: &[(&str, Command)] = &[
            (
                "MAIL FROM:<alice@example.com>",
                plain(Some("alice@example.com")),
            ),
            (
                "mail from:<alice@example.com>",
                plain(Some("alice@example.com")),
            ),
            (
                "MAIL FROM: <alice@example.com>",
                plain(Some("alice@example.com")),
            ),
            (
                "MAIL FROM:<alice@example.com>  ",
                plain(Some("alice@example.com")),
            ),
            ("MAIL FROM:<>", plain(None)),
            ("MAIL FROM: <>", plain(None)),
            (
                "MAIL FROM:<\"a>b\"@example.com>",
                plain(Some("\"a>b\"@example.com")),
            ),
            (
                "MAIL FROM:<\"a\\\"> x\"@example.com>",
                plain(Some("\"a\\\"> x\"@example.com")),
            ),
            (
                "MAIL FROM:<@relay.example:alice@example.com>",
                plain(Some("alice@example.com")),
            ),
            (
                "MAIL FROM:<@r1.example,@r2.example:alice@example.com>",
                plain(Some("alice@example.com")),
            ),
            (
                "MAIL FROM:<alice@[192.0.2.1]>",
                plain(Some("alice@[192.0.2.1]")),
            ),
            (
                "MAIL FROM:<alice@[IPv6:2001:db8::1]>",
                plain(Some("alice@[IPv6:2001:db8::1]")),
            ),
            (
                "MAIL FROM:<ü@exämple.de> SMTPUTF8",
                Command::Mail {
                    from: Some(addr("ü@exämple.de")),
                    params: MailParams {
                        smtputf8: true,
                        ..Default::default()
                    },
                },
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=12345 BODY=8BITMIME",
                Command::Mail {
                    from: Some(addr("a@b.example")),
                    params: MailParams {
                        size: Some(12345),
                        body: Some(BodyType::EightBitMime),
                        ..Default::default()
                    },
                },
            ),
            (
                "MAIL FROM:<a@b.example>   size=1   AUTH=<>  RET=HDRS ENVID=x+2By REQUIRETLS",
                Command::Mail {
                    from: Some(addr("a@b.example")),
                    params: MailParams {
                        size: Some(1),
                        auth: Some("<>".into()),
                        ret: Some(Ret::Headers),
                        envid: Some("x+y".into()),
                        requiretls: true,
                        ..Default::default()
                    },
                },
            ),
            (
                "MAIL FROM:<> BODY=BINARYMIME",
                Command::Mail {
                    from: None,
                    params: MailParams {
                        body: Some(BodyType::BinaryMime),
                        ..Default::default()
                    },
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(&ok(line), want, "{line:?}");
        }
    }

    #[test]
    fn rcpt_forms() {
        let plain = |to: &str| Command::Rcpt {
            to: addr(to),
            params: RcptParams::default(),
        };
        let cases: &[(&str, Command)] = &[
            ("RCPT TO:<bob@example.com>", plain("bob@example.com")),
            ("rcpt to:<bob@example.com>", plain("bob@example.com")),
            ("RCPT TO: <bob@example.com>", plain("bob@example.com")),
            (
                "RCPT TO:<@relay.example:bob@example.com>",
                plain("bob@example.com"),
            ),
            ("RCPT TO:<Postmaster>", plain("Postmaster")),
            ("RCPT TO:<postmaster>", plain("postmaster")),
            ("RCPT TO:<POSTMASTER>", plain("POSTMASTER")),
            ("RCPT TO:<ü@exämple.de>", plain("ü@exämple.de")),
            (
                "RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com",
                Command::Rcpt {
                    to: addr("bob@example.com"),
                    params: RcptParams {
                        notify: Some(Notify {
                            success: true,
                            failure: true,
                            delay: false,
                        }),
                        orcpt: Some(Orcpt {
                            addr_type: "rfc822".into(),
                            address: "b+x@example.com".into(),
                        }),
                    },
                },
            ),
            (
                "RCPT TO:<bob@example.com> NOTIFY=NEVER",
                Command::Rcpt {
                    to: addr("bob@example.com"),
                    params: RcptParams {
                        notify: Some(Notify::default()),
                        orcpt: None,
                    },
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(&ok(line), want, "{line:?}");
        }
        let Command::Rcpt { to, .. } = ok("RCPT TO:<PostMaster>") else {
            unreachable!()
        };
        assert!(to.is_postmaster());
    }

    /// A command line, the reply code and the enhanced status code.
    type ErrorCase = (&'static [u8], u16, (u8, u16, u16));

    /// Every error: the line, the reply code and the enhanced status code.
    #[test]
    fn errors_and_their_replies() {
        let cases: &[ErrorCase] = &[
            // Unrecognized verbs.
            (b"", 500, (5, 5, 1)),
            (b"FOO", 500, (5, 5, 1)),
            (b"MAILFROM:<a@b.c>", 500, (5, 5, 1)),
            (b" MAIL FROM:<a@b.c>", 500, (5, 5, 1)),
            (b"DA\0TA", 500, (5, 5, 1)),
            (b"DATA\r", 500, (5, 5, 1)),
            (b"QUIT\nMAIL", 500, (5, 5, 1)),
            // Invalid UTF-8 anywhere.
            (b"MAIL FROM:<\xff@example.com>", 500, (5, 5, 2)),
            (b"\xc3(", 500, (5, 5, 2)),
            (b"NOOP \xed\xa0\x80", 500, (5, 5, 2)),
            // Arguments where none are allowed, or missing where required.
            (b"DATA x", 501, (5, 5, 2)),
            (b"RSET x", 501, (5, 5, 2)),
            (b"QUIT now", 501, (5, 5, 2)),
            (b"STARTTLS x", 501, (5, 5, 2)),
            (b"EHLO", 501, (5, 5, 2)),
            (b"EHLO   ", 501, (5, 5, 2)),
            (b"HELO", 501, (5, 5, 2)),
            (b"LHLO", 501, (5, 5, 2)),
            (b"VRFY", 501, (5, 5, 2)),
            (b"EXPN", 501, (5, 5, 2)),
            (b"AUTH", 501, (5, 5, 2)),
            (b"AUTH PLAIN a b", 501, (5, 5, 2)),
            (b"AUTH PL@IN", 501, (5, 5, 2)),
            (b"AUTH ABCDEFGHIJKLMNOPQRSTU", 501, (5, 5, 2)),
            // BDAT.
            (b"BDAT", 501, (5, 5, 2)),
            (b"BDAT x", 501, (5, 5, 2)),
            (b"BDAT -1", 501, (5, 5, 2)),
            (b"BDAT +1", 501, (5, 5, 2)),
            (b"BDAT 5 FIRST", 501, (5, 5, 2)),
            (b"BDAT 5 LAST x", 501, (5, 5, 2)),
            (b"BDAT 123456789012345678901", 501, (5, 5, 2)),
            (b"BDAT 18446744073709551616", 501, (5, 5, 2)),
            // Controls inside the line.
            (b"EHLO a\0b", 501, (5, 5, 2)),
            (b"EHLO a\rb", 501, (5, 5, 2)),
            (b"EHLO a\nb", 501, (5, 5, 2)),
            (b"NOOP \x07", 501, (5, 5, 2)),
            (b"MAIL FROM:<a@b.c>\tSIZE=1", 501, (5, 5, 2)),
            (b"RCPT TO:<a@b.c>\r\nDATA", 501, (5, 5, 2)),
            // MAIL grammar.
            (b"MAIL", 501, (5, 5, 2)),
            (b"MAIL FROM", 501, (5, 5, 2)),
            (b"MAIL FROM:", 501, (5, 5, 2)),
            (b"MAIL TO:<a@b.c>", 501, (5, 5, 2)),
            (b"MAIL FROM:a@b.c", 501, (5, 5, 2)),
            (b"MAIL FROM:<a@b.c", 501, (5, 5, 2)),
            (b"MAIL FROM:<\"a@b.c>", 501, (5, 5, 2)),
            (b"MAIL FROM:<a@b.c>SIZE=1", 501, (5, 5, 2)),
            (b"MAIL FROM:  <a@b.c>", 501, (5, 5, 2)),
            (b"MAIL FROM :<a@b.c>", 501, (5, 5, 2)),
            (b"MAIL FROM:<a@b.c> =1", 501, (5, 5, 2)),
            // RCPT grammar.
            (b"RCPT", 501, (5, 5, 2)),
            (b"RCPT TO:", 501, (5, 5, 2)),
            (b"RCPT FROM:<a@b.c>", 501, (5, 5, 2)),
            (b"RCPT TO:<a@b.c>x", 501, (5, 5, 2)),
            // Unknown parameters.
            (b"MAIL FROM:<a@b.c> X-FOO=1", 555, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> NOTIFY=NEVER", 555, (5, 5, 4)),
            (b"RCPT TO:<a@b.c> SIZE=1", 555, (5, 5, 4)),
            (b"RCPT TO:<a@b.c> BODY=8BITMIME", 555, (5, 5, 4)),
            // Malformed parameters.
            (b"MAIL FROM:<a@b.c> SIZE=abc", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> BODY=FOO", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> SMTPUTF8=YES", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> REQUIRETLS=YES", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> RET=FOO", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> SIZE=1 SIZE=1", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> AUTH=a+", 501, (5, 5, 4)),
            (b"MAIL FROM:<a@b.c> ENVID=", 501, (5, 5, 4)),
            (b"RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS", 501, (5, 5, 4)),
            (
                b"RCPT TO:<a@b.c> NOTIFY=SUCCESS NOTIFY=DELAY",
                501,
                (5, 5, 4),
            ),
            (b"RCPT TO:<a@b.c> ORCPT=b@c", 501, (5, 5, 4)),
            // Bad sender addresses: 5.1.7.
            (b"MAIL FROM:<a>", 501, (5, 1, 7)),
            (b"MAIL FROM:<Postmaster>", 501, (5, 1, 7)),
            (b"MAIL FROM:<@b.c>", 501, (5, 1, 7)),
            (b"MAIL FROM:<a@>", 501, (5, 1, 7)),
            (b"MAIL FROM:<a..b@c.d>", 501, (5, 1, 7)),
            (b"MAIL FROM:<a@[300.0.0.1]>", 501, (5, 1, 7)),
            (b"MAIL FROM:<@bad_relay:a@b.c>", 501, (5, 1, 7)),
            // Bad recipient addresses: 5.1.3.
            (b"RCPT TO:<>", 501, (5, 1, 3)),
            (b"RCPT TO:<bob>", 501, (5, 1, 3)),
            (b"RCPT TO:<bob@>", 501, (5, 1, 3)),
            (b"RCPT TO:<@b.c>", 501, (5, 1, 3)),
            (b"RCPT TO:<a b@c.d>", 501, (5, 1, 3)),
            (b"RCPT TO:<a@b_c.d>", 501, (5, 1, 3)),
            (b"RCPT TO:<a@[IPv6:zz]>", 501, (5, 1, 3)),
            (b"RCPT TO:<@r1,r2:a@b.c>", 501, (5, 1, 3)),
            // SMTPUTF8 required for a non-ASCII sender.
            (b"MAIL FROM:<\xc3\xbc@example.com>", 553, (5, 6, 7)),
            (b"MAIL FROM:<a@ex\xc3\xa4mple.de> SIZE=10", 553, (5, 6, 7)),
        ];
        for &(line, code, (class, subject, detail)) in cases {
            let shown = String::from_utf8_lossy(line);
            let err = match Command::parse(line) {
                Err(e) => e,
                Ok(cmd) => panic!("{shown:?} parsed as {cmd:?}"),
            };
            let reply = err.reply();
            assert_eq!(reply.code(), code, "{shown:?}: {err:?}");
            assert_eq!(
                reply.status(),
                Some(crate::proto::EnhancedStatus::new(class, subject, detail)),
                "{shown:?}: {err:?}"
            );
        }
    }

    #[test]
    fn exact_reply_texts() {
        let reply = |line: &[u8]| Command::parse(line).unwrap_err().reply().to_string();
        let cases: &[(&[u8], &str)] = &[
            (b"FOO", "500 5.5.1 Command not recognized\r\n"),
            (
                b"NOOP \xff",
                "500 5.5.2 Syntax error, command line is not valid UTF-8\r\n",
            ),
            (
                b"MAIL FROM:a@b.c",
                "501 5.5.2 Syntax error, expected: MAIL FROM:<reverse-path> [parameters]\r\n",
            ),
            (
                b"RCPT TO:",
                "501 5.5.2 Syntax error, expected: RCPT TO:<forward-path> [parameters]\r\n",
            ),
            (b"EHLO", "501 5.5.2 Syntax error, expected: EHLO domain\r\n"),
            (b"HELO", "501 5.5.2 Syntax error, expected: HELO domain\r\n"),
            (b"DATA x", "501 5.5.2 Syntax error, expected: DATA\r\n"),
            (
                b"BDAT x",
                "501 5.5.2 Syntax error, expected: BDAT chunk-size [LAST]\r\n",
            ),
            (
                b"AUTH",
                "501 5.5.2 Syntax error, expected: AUTH mechanism [initial-response]\r\n",
            ),
            (b"VRFY", "501 5.5.2 Syntax error, expected: VRFY string\r\n"),
            (
                b"MAIL FROM:<a@b.c> x-foo",
                "555 5.5.4 Unsupported parameter X-FOO\r\n",
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=big",
                "501 5.5.4 Invalid value for SIZE, expected: a decimal number of octets\r\n",
            ),
            (
                b"RCPT TO:<bob>",
                "501 5.1.3 Bad address syntax: missing '@' between local part and domain\r\n",
            ),
            (
                b"MAIL FROM:<postmaster>",
                "501 5.1.7 Bad sender address syntax: a domain is required\r\n",
            ),
            (
                b"MAIL FROM:<\xc3\xbc@example.com>",
                "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n",
            ),
        ];
        for &(line, want) in cases {
            assert_eq!(reply(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn error_order_is_left_to_right() {
        // The address is judged before the parameters.
        assert_eq!(
            Command::parse(b"MAIL FROM:<bad> X-FOO"),
            Err(CommandError::BadSender(AddressError::MissingAt))
        );
        // A bad parameter wins over the missing SMTPUTF8.
        assert_eq!(
            Command::parse("MAIL FROM:<ü@example.com> SIZE=x".as_bytes()),
            Err(CommandError::BadParameter {
                name: "SIZE".into(),
                expected: "a decimal number of octets"
            })
        );
    }

    #[test]
    fn verbs_and_error_display() {
        let all = [
            ("HELO a", "HELO"),
            ("EHLO a", "EHLO"),
            ("LHLO a", "LHLO"),
            ("MAIL FROM:<>", "MAIL"),
            ("RCPT TO:<a@b.c>", "RCPT"),
            ("DATA", "DATA"),
            ("BDAT 1", "BDAT"),
            ("RSET", "RSET"),
            ("NOOP", "NOOP"),
            ("QUIT", "QUIT"),
            ("VRFY a", "VRFY"),
            ("EXPN a", "EXPN"),
            ("HELP", "HELP"),
            ("STARTTLS", "STARTTLS"),
            ("AUTH PLAIN", "AUTH"),
        ];
        for (line, verb) in all {
            assert_eq!(ok(line).verb(), verb);
        }
        assert_eq!(
            CommandError::Unrecognized.to_string(),
            "500 Command not recognized"
        );
        let err = CommandError::BadAddress(AddressError::EmptyDomain);
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn hostile_input_never_panics() {
        let long = vec![b'a'; 5000];
        let mut lines: Vec<Vec<u8>> = vec![
            long.clone(),
            [b"MAIL FROM:<".as_slice(), &long, b">"].concat(),
            [b"RCPT TO:<a@".as_slice(), &long, b">"].concat(),
            [b"MAIL FROM:<a@b.c> ".as_slice(), &long].concat(),
            b"MAIL FROM:<\"\\".to_vec(),
            b"MAIL FROM:<\"".to_vec(),
            b"RCPT TO:<@".to_vec(),
            b"RCPT TO:<@:".to_vec(),
            b"RCPT TO:<a@[".to_vec(),
            b"RCPT TO:<a@[]>".to_vec(),
            b"RCPT TO:<a@[:]>".to_vec(),
            "MAIL FROM:<ü".as_bytes().to_vec(),
            "MAIL FROMü:<a@b.c>".as_bytes().to_vec(),
            "RCPT TOü<a@b.c>".as_bytes().to_vec(),
        ];
        for b in 0..=255u8 {
            lines.push(vec![b]);
            lines.push([b"MAIL FROM:<a@b.c> SIZE=".as_slice(), &[b]].concat());
            lines.push([b"RCPT TO:<".as_slice(), &[b], b"@b.c>"].concat());
        }
        for line in &lines {
            // Either result is fine; what matters is no panic and a reply.
            if let Err(e) = Command::parse(line) {
                assert!(e.reply().is_permanent());
            }
        }
        assert_eq!(
            Command::parse(&lines[1]),
            Err(CommandError::BadSender(AddressError::TooLong))
        );
        assert_eq!(
            Command::parse(&lines[2]),
            Err(CommandError::BadAddress(AddressError::TooLong))
        );
    }
}

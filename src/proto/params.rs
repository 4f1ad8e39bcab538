//! ESMTP parameters of `MAIL` and `RCPT` (RFC 5321 4.1.2): SIZE (RFC 1870),
//! BODY (RFC 6152, 3030), SMTPUTF8 (RFC 6531), AUTH (RFC 4954), RET, ENVID,
//! NOTIFY, ORCPT (RFC 3461) and REQUIRETLS (RFC 8689).
//!
//! Parsing is grammar only: whether an extension is enabled (and so whether
//! its parameter is acceptable) is the session's decision.

use super::error::CommandError;

/// Longest decoded ENVID (RFC 3461 4.4).
pub const MAX_ENVID_LEN: usize = 100;

/// Longest decoded ORCPT address (RFC 3461 4.2).
pub const MAX_ORCPT_LEN: usize = 500;

/// Longest parameter name quoted back in an error reply.
const MAX_NAME_IN_ERROR: usize = 64;

/// The parameters of `MAIL FROM:<..> [parameters]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n`: the client's estimate of the message size in octets.
    pub size: Option<u64>,
    /// `BODY=7BIT|8BITMIME|BINARYMIME`.
    pub body: Option<BodyType>,
    /// `SMTPUTF8`: addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// `AUTH=`: the xtext-decoded authenticated submitter, `<>` when unknown.
    pub auth: Option<String>,
    /// `RET=FULL|HDRS`: what a failure DSN should return.
    pub ret: Option<Ret>,
    /// `ENVID=`: the xtext-decoded envelope identifier for DSNs.
    pub envid: Option<String>,
    /// `REQUIRETLS`: the message must only travel over TLS.
    pub requiretls: bool,
}

impl MailParams {
    /// True when no ESMTP parameter was given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Parses space-separated parameters (several spaces are tolerated).
    pub(crate) fn parse(params: &str, syntax: &'static str) -> Result<Self, CommandError> {
        let mut out = Self::default();
        for token in tokens(params, syntax) {
            let (name, value) = token?;
            match name {
                Known::Size => {
                    let n = value.filter(|v| v.len() <= 20).and_then(parse_digits);
                    let n = n.ok_or_else(|| bad("SIZE", "a decimal number of octets"))?;
                    set_once(&mut out.size, n, "SIZE")?;
                }
                Known::Body => {
                    let body = match value {
                        Some(v) if v.eq_ignore_ascii_case("7BIT") => BodyType::SevenBit,
                        Some(v) if v.eq_ignore_ascii_case("8BITMIME") => BodyType::EightBitMime,
                        Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => BodyType::BinaryMime,
                        _ => return Err(bad("BODY", "7BIT, 8BITMIME or BINARYMIME")),
                    };
                    set_once(&mut out.body, body, "BODY")?;
                }
                Known::SmtpUtf8 => set_flag(&mut out.smtputf8, value, "SMTPUTF8")?,
                Known::RequireTls => set_flag(&mut out.requiretls, value, "REQUIRETLS")?,
                Known::Auth => {
                    let mailbox = value
                        .and_then(|v| decode(v, Charset::Utf8))
                        .filter(|v| !v.is_empty());
                    let mailbox =
                        mailbox.ok_or_else(|| bad("AUTH", "an xtext-encoded mailbox or <>"))?;
                    set_once(&mut out.auth, mailbox, "AUTH")?;
                }
                Known::Ret => {
                    let ret = match value {
                        Some(v) if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                        Some(v) if v.eq_ignore_ascii_case("HDRS") => Ret::Headers,
                        _ => return Err(bad("RET", "FULL or HDRS")),
                    };
                    set_once(&mut out.ret, ret, "RET")?;
                }
                Known::EnvId => {
                    let id = value
                        .and_then(decode_xtext)
                        // RFC 3461 4.4: printable US-ASCII once decoded.
                        .filter(|v| !v.is_empty() && v.is_ascii() && v.len() <= MAX_ENVID_LEN);
                    let id = id.ok_or_else(|| {
                        bad(
                            "ENVID",
                            "xtext of at most 100 printable US-ASCII characters",
                        )
                    })?;
                    set_once(&mut out.envid, id, "ENVID")?;
                }
                Known::Notify | Known::Orcpt => return Err(unknown(name.as_str())),
            }
        }
        Ok(out)
    }
}

/// The body's encoding declared by `BODY=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// `7BIT`: plain ASCII lines.
    SevenBit,
    /// `8BITMIME` (RFC 6152): octets above 127 in lines.
    EightBitMime,
    /// `BINARYMIME` (RFC 3030): arbitrary octets; only valid with BDAT.
    BinaryMime,
}

/// `RET=`: what a failure notification should carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `FULL`: the whole message.
    Full,
    /// `HDRS`: only the headers.
    Headers,
}

/// The parameters of `RCPT TO:<..> [parameters]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`: when to send a DSN for this recipient.
    pub notify: Option<Notify>,
    /// `ORCPT=`: the original recipient as the first MTA saw it.
    pub orcpt: Option<Orcpt>,
}

impl RcptParams {
    /// True when no ESMTP parameter was given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Parses space-separated parameters (several spaces are tolerated).
    pub(crate) fn parse(params: &str, syntax: &'static str) -> Result<Self, CommandError> {
        let mut out = Self::default();
        for token in tokens(params, syntax) {
            let (name, value) = token?;
            match name {
                Known::Notify => {
                    let notify = value
                        .and_then(Notify::parse)
                        .ok_or_else(|| bad("NOTIFY", "NEVER or a list of SUCCESS,FAILURE,DELAY"))?;
                    set_once(&mut out.notify, notify, "NOTIFY")?;
                }
                Known::Orcpt => {
                    let orcpt = value.and_then(Orcpt::parse).ok_or_else(|| {
                        bad("ORCPT", "addr-type;xtext, e.g. rfc822;user@example.com")
                    })?;
                    set_once(&mut out.orcpt, orcpt, "ORCPT")?;
                }
                other => return Err(unknown(other.as_str())),
            }
        }
        Ok(out)
    }
}

/// `NOTIFY=`: the events to report. All false means `NEVER`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Notify {
    /// Report successful delivery.
    pub success: bool,
    /// Report failed delivery.
    pub failure: bool,
    /// Report delayed delivery.
    pub delay: bool,
}

impl Notify {
    /// True for `NOTIFY=NEVER`.
    pub fn is_never(&self) -> bool {
        *self == Self::default()
    }

    fn parse(value: &str) -> Option<Notify> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::default());
        }
        let mut notify = Notify::default();
        for keyword in value.split(',') {
            let flag = if keyword.eq_ignore_ascii_case("SUCCESS") {
                &mut notify.success
            } else if keyword.eq_ignore_ascii_case("FAILURE") {
                &mut notify.failure
            } else if keyword.eq_ignore_ascii_case("DELAY") {
                &mut notify.delay
            } else {
                // Includes NEVER inside a list and empty elements.
                return None;
            };
            *flag = true;
        }
        Some(notify)
    }
}

/// `ORCPT=addr-type;xtext`: the original recipient address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt {
    /// The address type as written, usually `rfc822` (or `utf-8`, RFC 6533).
    pub addr_type: String,
    /// The xtext-decoded address.
    pub address: String,
}

impl Orcpt {
    fn parse(value: &str) -> Option<Orcpt> {
        let (addr_type, xtext) = value.split_once(';')?;
        let type_ok = !addr_type.is_empty()
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !type_ok {
            return None;
        }
        // RFC 6533: only the utf-8 address type may carry raw UTF-8.
        let charset = if addr_type.eq_ignore_ascii_case("utf-8") {
            Charset::Utf8
        } else {
            Charset::Ascii
        };
        let address =
            decode(xtext, charset).filter(|a| !a.is_empty() && a.len() <= MAX_ORCPT_LEN)?;
        Some(Orcpt {
            addr_type: addr_type.to_owned(),
            address,
        })
    }
}

/// Decodes xtext (RFC 3461 4): `+XX` (two upper-case hex digits) is the
/// octet with hex value XX; every other character from `!` to `~` but `+`
/// and `=` stands for itself.
///
/// Strict, since a decoded value may end up in a header or a DSN one day:
/// lower-case hex, a lone `+`, `=`, spaces and raw non-ASCII octets are
/// refused (as Postfix does), and so is a value that decodes to a control
/// character (`+0D+0A` would otherwise smuggle a line break into an ENVID).
/// Returns `None` for any of these, or when the octets are not UTF-8.
///
/// ```
/// use smtpsrv::proto::decode_xtext;
/// assert_eq!(decode_xtext("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
/// assert_eq!(decode_xtext("bad+2"), None);
/// assert_eq!(decode_xtext("ab+0D+0Acd"), None); // CR LF once decoded
/// assert_eq!(decode_xtext("lower+2b"), None);   // hexchar is upper-case
/// ```
pub fn decode_xtext(s: &str) -> Option<String> {
    decode(s, Charset::Ascii)
}

/// Which raw octets an xtext value may carry besides `!`..`~`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// RFC 3461 xtext: US-ASCII only.
    Ascii,
    /// RFC 6533's utf-8 forms (`ORCPT=utf-8;..`) and RFC 6531 mailboxes
    /// (`AUTH=`): raw UTF-8 is allowed too.
    Utf8,
}

fn decode(s: &str, charset: Charset) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => {
                let hi = hex_value(bytes.next()?)?;
                let lo = hex_value(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            b'=' => return None,
            b'!'..=b'~' => out.push(b),
            0x80.. if charset == Charset::Utf8 => out.push(b),
            _ => return None,
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// `hexchar = "+" (DIGIT / "A" / "B" / "C" / "D" / "E" / "F")` (RFC 3461 4).
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The parameters this parser knows, for MAIL and RCPT alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Size,
    Body,
    SmtpUtf8,
    Auth,
    Ret,
    EnvId,
    RequireTls,
    Notify,
    Orcpt,
}

impl Known {
    const ALL: [Known; 9] = [
        Known::Size,
        Known::Body,
        Known::SmtpUtf8,
        Known::Auth,
        Known::Ret,
        Known::EnvId,
        Known::RequireTls,
        Known::Notify,
        Known::Orcpt,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Known::Size => "SIZE",
            Known::Body => "BODY",
            Known::SmtpUtf8 => "SMTPUTF8",
            Known::Auth => "AUTH",
            Known::Ret => "RET",
            Known::EnvId => "ENVID",
            Known::RequireTls => "REQUIRETLS",
            Known::Notify => "NOTIFY",
            Known::Orcpt => "ORCPT",
        }
    }
}

/// Splits `KEY[=value] KEY[=value] ...` into known keywords and values,
/// rejecting unknown keywords (555) and values outside the esmtp-value
/// grammar (501). A malformed keyword is a syntax error of the command.
fn tokens<'a>(
    params: &'a str,
    syntax: &'static str,
) -> impl Iterator<Item = Result<(Known, Option<&'a str>), CommandError>> {
    params
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(move |token| token_of(token, syntax))
}

fn token_of<'a>(
    token: &'a str,
    syntax: &'static str,
) -> Result<(Known, Option<&'a str>), CommandError> {
    let (keyword, value) = match token.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (token, None),
    };
    let keyword_ok = keyword
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && keyword
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !keyword_ok {
        return Err(CommandError::Syntax { expected: syntax });
    }
    let known = Known::ALL
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(keyword))
        .ok_or_else(|| unknown(keyword))?;
    if let Some(v) = value {
        // esmtp-value: no '=', no space or control; UTF-8 allowed (RFC 6531).
        let value_ok = !v.is_empty() && v.bytes().all(|b| matches!(b, 33..=60 | 62..=126 | 0x80..));
        if !value_ok {
            return Err(bad(
                known.as_str(),
                "a value without '=', spaces or controls",
            ));
        }
    }
    Ok((known, value))
}

fn parse_digits(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(bad(name, "the parameter at most once"));
    }
    *slot = Some(value);
    Ok(())
}

fn set_flag(flag: &mut bool, value: Option<&str>, name: &'static str) -> Result<(), CommandError> {
    if value.is_some() {
        return Err(bad(name, "no value"));
    }
    if *flag {
        return Err(bad(name, "the parameter at most once"));
    }
    *flag = true;
    Ok(())
}

fn bad(name: &'static str, expected: &'static str) -> CommandError {
    CommandError::BadParameter {
        name: name.to_owned(),
        expected,
    }
}

fn unknown(keyword: &str) -> CommandError {
    let mut name = keyword.to_ascii_uppercase();
    name.truncate(MAX_NAME_IN_ERROR);
    CommandError::UnknownParameter(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNTAX: &str = "test";

    fn bad_param(name: &str) -> impl Fn(&CommandError) -> bool + '_ {
        move |e| matches!(e, CommandError::BadParameter { name: n, .. } if n == name)
    }

    #[test]
    fn xtext_decoding() {
        let cases: &[(&str, Option<&str>)] = &[
            // valid
            ("", Some("")),
            ("plain", Some("plain")),
            ("a+2Bb", Some("a+b")),
            ("+3D+20+2B", Some("= +")),
            ("<>", Some("<>")),
            ("!~", Some("!~")),
            ("+7E+21", Some("~!")),
            // a '+' not followed by exactly two upper-case hex digits
            ("+", None),
            ("+2", None),
            ("a+2", None),
            ("+G0", None),
            ("lower+2b", None),
            ("+2b", None),
            ("+a0", None),
            // '=' and octets outside '!'..'~'
            ("a=b", None),
            ("a b", None),
            ("tab\t", None),
            ("cr\r", None),
            ("del\x7f", None),
            ("ü", None),
            // decoded control characters
            ("+00", None),
            ("ab+0D+0Acd", None),
            ("+09", None),
            ("+7F", None),
            ("+1B[31m", None),
            // decoded octets that are not UTF-8
            ("+FF", None),
            ("+C3", None),
            // decoded non-ASCII that is UTF-8 (allowed by xtext; ENVID refuses it below)
            ("+C3+BC", Some("ü")),
        ];
        for &(input, want) in cases {
            assert_eq!(decode_xtext(input).as_deref(), want, "{input:?}");
        }
        // The UTF-8 forms (ORCPT=utf-8;.., AUTH=) take raw UTF-8 but no
        // control character, raw or encoded.
        assert_eq!(decode("ü+2B", Charset::Utf8).as_deref(), Some("ü+"));
        assert_eq!(decode("ü\u{85}", Charset::Utf8), None); // C1 control NEL
        assert_eq!(decode("+C2+85", Charset::Utf8), None);
        assert_eq!(decode("a+0Ab", Charset::Utf8), None);
    }

    #[test]
    fn xtext_parameters_refuse_injection() {
        for envid in [
            "ENVID=ab+0D+0Acd",
            "ENVID=ab+0Acd",
            "ENVID=+00",
            "ENVID=+C3+BC",
            "ENVID=ü",
            "ENVID=lower+2b",
        ] {
            let err = MailParams::parse(envid, SYNTAX).unwrap_err();
            assert!(bad_param("ENVID")(&err), "{envid}: {err:?}");
        }
        assert_eq!(
            MailParams::parse("ENVID=a+20b", SYNTAX)
                .unwrap()
                .envid
                .as_deref(),
            Some("a b"),
        );
        for auth in [
            "AUTH=a+0D+0A@example.com",
            "AUTH=a+2b@example.com",
            "AUTH=+7F",
        ] {
            let err = MailParams::parse(auth, SYNTAX).unwrap_err();
            assert!(bad_param("AUTH")(&err), "{auth}: {err:?}");
        }
        assert_eq!(
            MailParams::parse("AUTH=ü@example.com", SYNTAX)
                .unwrap()
                .auth
                .as_deref(),
            Some("ü@example.com"),
        );
        for orcpt in [
            "ORCPT=rfc822;a+0D+0A@example.com",
            "ORCPT=rfc822;ü@example.com",
            "ORCPT=rfc822;a+2b@example.com",
            "ORCPT=utf-8;a+0A@example.com",
            "ORCPT=utf-8;\u{85}@example.com",
        ] {
            let err = RcptParams::parse(orcpt, SYNTAX).unwrap_err();
            assert!(bad_param("ORCPT")(&err), "{orcpt}: {err:?}");
        }
        // Whatever parses, no decoded value holds a control character.
        for line in [
            "ENVID=QQ+2B1 AUTH=a+2Bb@example.com",
            "ENVID=+21+7E AUTH=<>",
        ] {
            let p = MailParams::parse(line, SYNTAX).unwrap();
            for v in [p.envid.as_deref(), p.auth.as_deref()]
                .into_iter()
                .flatten()
            {
                assert!(!v.chars().any(char::is_control), "{line}: {v:?}");
            }
        }
    }

    #[test]
    fn mail_params_all_forms() {
        let p = MailParams::parse(
            "size=1000 BODY=8bitmime SMTPUTF8 AUTH=a+2Bb@example.com RET=hdrs ENVID=QQ+2B1 requiretls",
            SYNTAX,
        )
        .unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: true,
                auth: Some("a+b@example.com".into()),
                ret: Some(Ret::Headers),
                envid: Some("QQ+1".into()),
                requiretls: true,
            }
        );
        assert!(!p.is_empty());
        assert!(MailParams::parse("", SYNTAX).unwrap().is_empty());
        assert!(MailParams::parse("   ", SYNTAX).unwrap().is_empty());
        let p = MailParams::parse("AUTH=<>  BODY=7BIT   RET=FULL BODY2=x", SYNTAX);
        assert_eq!(p, Err(CommandError::UnknownParameter("BODY2".into())));
        let p = MailParams::parse("AUTH=<>  BODY=7BIT   RET=FULL", SYNTAX).unwrap();
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert_eq!(p.body, Some(BodyType::SevenBit));
        assert_eq!(p.ret, Some(Ret::Full));
        let p = MailParams::parse("BODY=BINARYMIME SIZE=18446744073709551615", SYNTAX).unwrap();
        assert_eq!(p.body, Some(BodyType::BinaryMime));
        assert_eq!(p.size, Some(u64::MAX));
    }

    #[test]
    fn mail_params_errors() {
        let cases: &[(&str, &str)] = &[
            ("SIZE", "SIZE"),
            ("SIZE=", "SIZE"),
            ("SIZE=abc", "SIZE"),
            ("SIZE=-1", "SIZE"),
            ("SIZE=18446744073709551616", "SIZE"),
            ("SIZE=000000000000000000001", "SIZE"),
            ("SIZE=1 SIZE=2", "SIZE"),
            ("BODY=FOO", "BODY"),
            ("BODY", "BODY"),
            ("SMTPUTF8=YES", "SMTPUTF8"),
            ("SMTPUTF8 smtputf8", "SMTPUTF8"),
            ("REQUIRETLS=1", "REQUIRETLS"),
            ("AUTH", "AUTH"),
            ("AUTH=a+zz", "AUTH"),
            ("RET=FOO", "RET"),
            ("RET=FULL RET=HDRS", "RET"),
            ("ENVID=+", "ENVID"),
            ("ENVID=x=y", "ENVID"),
            ("SIZE=1=2", "SIZE"),
        ];
        for &(input, name) in cases {
            let err = MailParams::parse(input, SYNTAX).unwrap_err();
            assert!(bad_param(name)(&err), "{input}: {err:?}");
        }
        let long_envid = format!("ENVID={}", "x".repeat(MAX_ENVID_LEN + 1));
        assert!(bad_param("ENVID")(
            &MailParams::parse(&long_envid, SYNTAX).unwrap_err()
        ));
        let ok_envid = format!("ENVID={}", "x".repeat(MAX_ENVID_LEN));
        assert!(MailParams::parse(&ok_envid, SYNTAX).is_ok());

        assert_eq!(
            MailParams::parse("X-FOO=1", SYNTAX),
            Err(CommandError::UnknownParameter("X-FOO".into()))
        );
        assert_eq!(
            MailParams::parse("NOTIFY=NEVER", SYNTAX),
            Err(CommandError::UnknownParameter("NOTIFY".into()))
        );
        for malformed in ["=1", "-X=1", "SI_ZE=1", "ü=1"] {
            assert_eq!(
                MailParams::parse(malformed, SYNTAX),
                Err(CommandError::Syntax { expected: SYNTAX }),
                "{malformed}"
            );
        }
        let long = "X".repeat(300);
        match MailParams::parse(&long, SYNTAX) {
            Err(CommandError::UnknownParameter(name)) => assert_eq!(name.len(), MAX_NAME_IN_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rcpt_params_all_forms() {
        let p = RcptParams::parse(
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40c@d.example",
            SYNTAX,
        )
        .unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: true,
                delay: false
            })
        );
        assert_eq!(
            p.orcpt,
            Some(Orcpt {
                addr_type: "rfc822".into(),
                address: "b@c@d.example".into()
            })
        );
        let never = RcptParams::parse("notify=never", SYNTAX)
            .unwrap()
            .notify
            .unwrap();
        assert!(never.is_never());
        let delay = RcptParams::parse("NOTIFY=delay", SYNTAX)
            .unwrap()
            .notify
            .unwrap();
        assert!(delay.delay && !delay.success && !delay.failure);
        let utf8 = RcptParams::parse("ORCPT=utf-8;ü@example.com", SYNTAX).unwrap();
        assert_eq!(utf8.orcpt.unwrap().address, "ü@example.com");
        assert!(RcptParams::parse("", SYNTAX).unwrap().is_empty());
    }

    #[test]
    fn rcpt_params_errors() {
        let cases: &[(&str, &str)] = &[
            ("NOTIFY=NEVER,SUCCESS", "NOTIFY"),
            ("NOTIFY=SUCCESS,NEVER", "NOTIFY"),
            ("NOTIFY=", "NOTIFY"),
            ("NOTIFY", "NOTIFY"),
            ("NOTIFY=SUCCESS,", "NOTIFY"),
            ("NOTIFY=SOMETIMES", "NOTIFY"),
            ("NOTIFY=NEVER NOTIFY=NEVER", "NOTIFY"),
            ("ORCPT", "ORCPT"),
            ("ORCPT=rfc822", "ORCPT"),
            ("ORCPT=;a@b", "ORCPT"),
            ("ORCPT=rfc822;", "ORCPT"),
            ("ORCPT=rfc822;a+2", "ORCPT"),
            ("ORCPT=rfc822;a@b ORCPT=rfc822;a@b", "ORCPT"),
        ];
        for &(input, name) in cases {
            let err = RcptParams::parse(input, SYNTAX).unwrap_err();
            assert!(bad_param(name)(&err), "{input}: {err:?}");
        }
        assert_eq!(
            RcptParams::parse("SIZE=10", SYNTAX),
            Err(CommandError::UnknownParameter("SIZE".into()))
        );
    }
}

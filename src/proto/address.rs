//! Mailboxes as they appear in `MAIL FROM:<..>` and `RCPT TO:<..>`
//! (RFC 5321 4.1.2, with the UTF-8 additions of RFC 6531).
//!
//! An [`Address`] is the mailbox exactly as the client wrote it between the
//! angle brackets, minus any source route: quotes and case are kept, because
//! the local part belongs to the receiving host and only it may decide what
//! is equivalent. Comparison is therefore exact; compare domains with
//! [`Address::domain_is`], which ignores their case.
//!
//! Syntax follows the RFC grammar; lengths are checked leniently (see
//! [`MAX_ADDRESS_LEN`]) because real senders (VERP, SRS, BATV) exceed the
//! RFC's 64-octet local part.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Longest address accepted, in octets. RFC 5321 4.5.3.1.3 says 256 for the
/// whole path, but long local parts exist in the wild; this bound only keeps
/// input finite.
pub const MAX_ADDRESS_LEN: usize = 1000;

/// Longest domain accepted, in octets: the DNS limit (RFC 5321 4.5.3.1.2),
/// since a longer name cannot be resolved anyway.
pub const MAX_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressError {
    /// Nothing between the angle brackets.
    Empty,
    /// No `@` separating local part and domain.
    MissingAt,
    /// Nothing before the `@`.
    EmptyLocalPart,
    /// Nothing after the `@`.
    EmptyDomain,
    /// A domain-less `postmaster` where a full mailbox is required (`MAIL`).
    MissingDomain,
    /// The local part is neither a dot-string nor a quoted string.
    InvalidLocalPart,
    /// A quoted local part without its closing quote.
    UnterminatedQuote,
    /// The domain is not a sequence of dot-separated labels.
    InvalidDomain,
    /// The `[...]` address literal is not IPv4, `IPv6:` or `tag:content`.
    InvalidAddressLiteral,
    /// The `@a,@b:` source route before the mailbox is malformed.
    InvalidSourceRoute,
    /// The domain exceeds [`MAX_DOMAIN_LEN`] octets.
    DomainTooLong,
    /// The address exceeds [`MAX_ADDRESS_LEN`] octets.
    TooLong,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty address",
            Self::MissingAt => "missing '@' between local part and domain",
            Self::EmptyLocalPart => "empty local part before '@'",
            Self::EmptyDomain => "empty domain after '@'",
            Self::MissingDomain => "a domain is required",
            Self::InvalidLocalPart => "invalid local part",
            Self::UnterminatedQuote => "unterminated quoted local part",
            Self::InvalidDomain => "invalid domain",
            Self::InvalidAddressLiteral => "invalid address literal",
            Self::InvalidSourceRoute => "invalid source route",
            Self::DomainTooLong => "domain longer than 255 octets",
            Self::TooLong => "address longer than 1000 octets",
        })
    }
}

impl std::error::Error for AddressError {}

/// A mailbox `local-part@domain`, or the bare `Postmaster` allowed in
/// `RCPT TO:<Postmaster>` (RFC 5321 4.5.1).
///
/// ```
/// use smtpsrv::proto::Address;
/// let a = Address::parse("\"john doe\"@[192.0.2.1]").unwrap();
/// assert_eq!(a.local_part(), "\"john doe\"");
/// assert_eq!(a.domain(), Some("[192.0.2.1]"));
/// assert!(Address::parse("no-at-sign").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    text: String,
    /// Byte index of the `@` that ends the local part; `text.len()` for the
    /// bare postmaster. Derived from `text`, so it never affects equality.
    at: usize,
}

impl Address {
    /// Parses a mailbox (no angle brackets, no source route): a dot-string
    /// or quoted local part, `@`, and a domain or address literal. UTF-8 is
    /// allowed in both parts (RFC 6531); the bare `postmaster` (any case) is
    /// accepted without a domain.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let at = mailbox_split(s)?;
        Ok(Address {
            text: s.to_owned(),
            at,
        })
    }

    /// `Postmaster`, without a domain.
    pub fn postmaster() -> Address {
        Address {
            text: "Postmaster".to_owned(),
            at: "Postmaster".len(),
        }
    }

    /// The mailbox as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part as written (quotes and escapes kept).
    pub fn local_part(&self) -> &str {
        self.text.get(..self.at).unwrap_or_default()
    }

    /// The domain or `[address literal]`; `None` only for the bare postmaster.
    pub fn domain(&self) -> Option<&str> {
        self.text.get(self.at + 1..)
    }

    /// Whether the domain is `domain`, ignoring ASCII case (DNS names are
    /// case-insensitive, RFC 4343): what a "do we serve this recipient"
    /// check wants. Non-ASCII characters compare exactly (an IDN's U-label
    /// does not match its `xn--` A-label); a bare postmaster has no domain
    /// and matches nothing.
    ///
    /// ```
    /// use smtpsrv::Address;
    /// let a = Address::parse("Ann@Example.COM").unwrap();
    /// assert!(a.domain_is("example.com"));
    /// assert!(!a.domain_is("mail.example.com"));
    /// assert!(!Address::postmaster().domain_is("example.com"));
    /// ```
    pub fn domain_is(&self, domain: &str) -> bool {
        self.domain()
            .is_some_and(|own| own.eq_ignore_ascii_case(domain))
    }

    /// True when the address is pure ASCII (no SMTPUTF8 needed).
    pub fn is_ascii(&self) -> bool {
        self.text.is_ascii()
    }

    /// True for `postmaster` in any case with no domain.
    pub fn is_postmaster(&self) -> bool {
        self.at == self.text.len() && self.text.eq_ignore_ascii_case("postmaster")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

/// Splits `user@domain` at the last `@`, without validating either part.
///
/// The last `@` is right for quoted local parts that contain `@`; it is wrong
/// only for general address literals containing `@`, which nobody uses.
///
/// ```
/// use smtpsrv::proto::split_address;
/// assert_eq!(split_address("\"a@b\"@example.com").unwrap(), ("\"a@b\"", "example.com"));
/// assert!(split_address("nobody").is_err());
/// assert!(split_address("@example.com").is_err());
/// ```
pub fn split_address(addr: &str) -> Result<(&str, &str), AddressError> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(if addr.is_empty() {
            AddressError::Empty
        } else {
            AddressError::MissingAt
        });
    };
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    Ok((local, domain))
}

/// Removes an RFC 5321 source route (`@a,@b:`) from the inside of a path,
/// validating the route's domains; a path without one is returned as is.
pub(crate) fn strip_source_route(path: &str) -> Result<&str, AddressError> {
    // Without a colon `@domain` is a mailbox with an empty local part.
    if !path.starts_with('@') {
        return Ok(path);
    }
    let Some((route, mailbox)) = path.split_once(':') else {
        return Ok(path);
    };
    for hop in route.split(',') {
        let domain = hop
            .strip_prefix('@')
            .ok_or(AddressError::InvalidSourceRoute)?;
        if check_domain(domain).is_err() {
            return Err(AddressError::InvalidSourceRoute);
        }
    }
    Ok(mailbox)
}

/// Validates a mailbox and returns the index of the `@` ending its local
/// part (`s.len()` for the bare postmaster).
fn mailbox_split(s: &str) -> Result<usize, AddressError> {
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    if s.eq_ignore_ascii_case("postmaster") {
        return Ok(s.len());
    }
    let at = if s.starts_with('"') {
        let close = quoted_end(s)?;
        match s.as_bytes().get(close + 1) {
            Some(b'@') => close + 1,
            None => return Err(AddressError::MissingAt),
            Some(_) => return Err(AddressError::InvalidLocalPart),
        }
    } else {
        let at = s
            .bytes()
            .position(|b| b == b'@')
            .ok_or(AddressError::MissingAt)?;
        if at == 0 {
            return Err(AddressError::EmptyLocalPart);
        }
        check_dot_string(&s[..at])?;
        at
    };
    let domain = &s[at + 1..];
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    if domain.starts_with('[') {
        check_address_literal(domain)?;
    } else {
        check_domain(domain)?;
    }
    Ok(at)
}

/// RFC 5321 atext plus RFC 6531 UTF8-non-ascii, one octet at a time: every
/// octet of a non-ASCII character is at least 0x80, so a UTF-8 string is
/// atext exactly when all its octets are (a byte test, not a search per
/// character).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || !b.is_ascii()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
}

/// Dot-string: atoms of atext joined by single dots.
fn check_dot_string(local: &str) -> Result<(), AddressError> {
    let valid = local
        .as_bytes()
        .split(|&b| b == b'.')
        .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)));
    if valid {
        Ok(())
    } else {
        Err(AddressError::InvalidLocalPart)
    }
}

/// Index of the closing quote of the quoted string starting at `s[0]`,
/// validating qtextSMTP and quoted-pairSMTP on the way.
fn quoted_end(s: &str) -> Result<usize, AddressError> {
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(i),
            '\\' => match chars.next() {
                Some((_, ' '..='~')) => {}
                Some(_) => return Err(AddressError::InvalidLocalPart),
                None => return Err(AddressError::UnterminatedQuote),
            },
            ' '..='~' => {}
            c if !c.is_ascii() => {}
            _ => return Err(AddressError::InvalidLocalPart),
        }
    }
    Err(AddressError::UnterminatedQuote)
}

/// RFC 5321 Domain: dot-separated labels of letters, digits and inner
/// hyphens; non-ASCII letters count as letters (U-labels, RFC 6531).
pub(crate) fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(AddressError::DomainTooLong);
    }
    // Octets, not characters: a non-ASCII character's first and last octets
    // are both at least 0x80, so the first/last tests mean the same.
    let is_let_dig = |b: u8| b.is_ascii_alphanumeric() || !b.is_ascii();
    let label_ok = |label: &[u8]| {
        label.first().is_some_and(|&b| is_let_dig(b))
            && label.last().is_some_and(|&b| is_let_dig(b))
            && label.iter().all(|&b| is_let_dig(b) || b == b'-')
    };
    if domain.as_bytes().split(|&b| b == b'.').all(label_ok) {
        Ok(())
    } else {
        Err(AddressError::InvalidDomain)
    }
}

/// `[IPv4]`, `[IPv6:addr]` or `[tag:content]` (RFC 5321 4.1.3).
fn check_address_literal(literal: &str) -> Result<(), AddressError> {
    if literal.len() > MAX_DOMAIN_LEN {
        return Err(AddressError::DomainTooLong);
    }
    let inner = literal
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .ok_or(AddressError::InvalidAddressLiteral)?;
    let valid = match inner.split_once(':') {
        None => is_ipv4_literal(inner),
        Some((tag, addr)) if tag.eq_ignore_ascii_case("IPv6") => addr.parse::<Ipv6Addr>().is_ok(),
        Some((tag, content)) => {
            is_ldh_str(tag)
                && !content.is_empty()
                && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126))
        }
    };
    if valid {
        Ok(())
    } else {
        Err(AddressError::InvalidAddressLiteral)
    }
}

/// Snum "." Snum "." Snum "." Snum, each 1-3 digits and at most 255.
fn is_ipv4_literal(s: &str) -> bool {
    let mut parts = 0;
    for snum in s.split('.') {
        parts += 1;
        let digits_ok = (1..=3).contains(&snum.len()) && snum.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok || snum.parse::<u16>().map_or(true, |n| n > 255) {
            return false;
        }
    }
    parts == 4
}

/// Ldh-str as a Standardized-tag: letters, digits, hyphens, not ending in a hyphen.
fn is_ldh_str(s: &str) -> bool {
    !s.is_empty() && !s.ends_with('-') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_mailboxes_keep_their_text_and_parts() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("user@example.com", "user", Some("example.com")),
            (
                "First.Last+tag@Sub.Example.COM",
                "First.Last+tag",
                Some("Sub.Example.COM"),
            ),
            (
                "!#$%&'*+-/=?^_`{|}~@x.y",
                "!#$%&'*+-/=?^_`{|}~",
                Some("x.y"),
            ),
            ("\"a@b\"@example.com", "\"a@b\"", Some("example.com")),
            (
                "\"john doe\"@example.com",
                "\"john doe\"",
                Some("example.com"),
            ),
            (
                "\"a\\\"b\\\\c\"@example.com",
                "\"a\\\"b\\\\c\"",
                Some("example.com"),
            ),
            ("\"\"@example.com", "\"\"", Some("example.com")),
            ("ü@exämple.de", "ü", Some("exämple.de")),
            ("用户@例子.广告", "用户", Some("例子.广告")),
            ("\"ü x\"@example.com", "\"ü x\"", Some("example.com")),
            ("a@123", "a", Some("123")),
            ("a@a-b.c-d", "a", Some("a-b.c-d")),
            ("a@[192.0.2.1]", "a", Some("[192.0.2.1]")),
            ("a@[001.0.2.255]", "a", Some("[001.0.2.255]")),
            ("a@[IPv6:2001:db8::1]", "a", Some("[IPv6:2001:db8::1]")),
            (
                "a@[ipv6:::ffff:192.0.2.1]",
                "a",
                Some("[ipv6:::ffff:192.0.2.1]"),
            ),
            ("a@[x-tag:some!content]", "a", Some("[x-tag:some!content]")),
            ("Postmaster", "Postmaster", None),
            ("POSTMASTER", "POSTMASTER", None),
            ("postmaster@example.com", "postmaster", Some("example.com")),
        ];
        for &(input, local, domain) in cases {
            let a = Address::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(a.as_str(), input);
            assert_eq!(a.to_string(), input);
            assert_eq!(a.local_part(), local, "{input}");
            assert_eq!(a.domain(), domain, "{input}");
            assert_eq!(a.is_ascii(), input.is_ascii());
            assert_eq!(input.parse::<Address>().unwrap(), a);
        }
    }

    #[test]
    fn invalid_mailboxes_say_why() {
        use AddressError::*;
        let long_local = format!("{}@example.com", "a".repeat(MAX_ADDRESS_LEN));
        let long_domain = format!("a@{}.com", "d".repeat(MAX_DOMAIN_LEN));
        let cases: &[(&str, AddressError)] = &[
            ("", Empty),
            ("user", MissingAt),
            ("@example.com", EmptyLocalPart),
            ("user@", EmptyDomain),
            ("\"quoted\"", MissingAt),
            ("\"open@example.com", UnterminatedQuote),
            ("\"a\"b@example.com", InvalidLocalPart),
            ("\"tab\there\"@example.com", InvalidLocalPart),
            (".a@example.com", InvalidLocalPart),
            ("a.@example.com", InvalidLocalPart),
            ("a..b@example.com", InvalidLocalPart),
            ("a b@example.com", InvalidLocalPart),
            ("a(b)@example.com", InvalidLocalPart),
            ("a\0@example.com", InvalidLocalPart),
            ("a@b@example.com", InvalidDomain),
            ("a@-example.com", InvalidDomain),
            ("a@example-.com", InvalidDomain),
            ("a@example..com", InvalidDomain),
            ("a@example.com.", InvalidDomain),
            ("a@exa_mple.com", InvalidDomain),
            ("a@[192.0.2.256]", InvalidAddressLiteral),
            ("a@[192.0.2]", InvalidAddressLiteral),
            ("a@[1.2.3.4.5]", InvalidAddressLiteral),
            ("a@[1.2.3.04x]", InvalidAddressLiteral),
            ("a@[IPv6:not-an-ip]", InvalidAddressLiteral),
            ("a@[tag:]", InvalidAddressLiteral),
            ("a@[tag-:x]", InvalidAddressLiteral),
            ("a@[192.0.2.1", InvalidAddressLiteral),
            ("a@[x:a[b]", InvalidAddressLiteral),
            (&long_local, TooLong),
            (&long_domain, DomainTooLong),
        ];
        for (input, want) in cases {
            assert_eq!(Address::parse(input), Err(*want), "{input:?}");
        }
        assert_eq!(
            MissingAt.to_string(),
            "missing '@' between local part and domain"
        );
    }

    #[test]
    fn lengths_are_lenient_but_bounded() {
        let local = "a".repeat(200);
        assert!(Address::parse(&format!("{local}@example.com")).is_ok());
        let label = "d".repeat(63);
        let domain = [label.as_str(); 4].join(".");
        assert_eq!(domain.len(), 255);
        assert!(Address::parse(&format!("a@{domain}")).is_ok());
    }

    #[test]
    fn postmaster_is_recognised_in_any_case_without_domain() {
        assert!(Address::postmaster().is_postmaster());
        assert_eq!(Address::postmaster().as_str(), "Postmaster");
        assert_eq!(Address::postmaster().domain(), None);
        assert!(Address::parse("pOsTmAsTeR").unwrap().is_postmaster());
        assert!(
            !Address::parse("postmaster@example.com")
                .unwrap()
                .is_postmaster()
        );
        assert!(
            !Address::parse("webmaster@example.com")
                .unwrap()
                .is_postmaster()
        );
    }

    #[test]
    fn split_address_cases() {
        use AddressError::*;
        assert_eq!(
            split_address("user@example.com"),
            Ok(("user", "example.com"))
        );
        assert_eq!(
            split_address("\"a@b\"@example.com"),
            Ok(("\"a@b\"", "example.com"))
        );
        assert_eq!(split_address("ü@exämple.de"), Ok(("ü", "exämple.de")));
        assert_eq!(split_address("a@[192.0.2.1]"), Ok(("a", "[192.0.2.1]")));
        assert_eq!(split_address("user"), Err(MissingAt));
        assert_eq!(split_address(""), Err(Empty));
        assert_eq!(split_address("@example.com"), Err(EmptyLocalPart));
        assert_eq!(split_address("user@"), Err(EmptyDomain));
        assert_eq!(split_address("@"), Err(EmptyLocalPart));
    }

    #[test]
    fn source_routes_are_removed_and_checked() {
        use AddressError::*;
        assert_eq!(strip_source_route("a@b.c"), Ok("a@b.c"));
        assert_eq!(strip_source_route("@relay.example:a@b.c"), Ok("a@b.c"));
        assert_eq!(
            strip_source_route("@r1.example,@r2.example:a@b.c"),
            Ok("a@b.c")
        );
        assert_eq!(
            strip_source_route("@r1.example,r2.example:a@b.c"),
            Err(InvalidSourceRoute)
        );
        assert_eq!(strip_source_route("@:a@b.c"), Err(InvalidSourceRoute));
        assert_eq!(strip_source_route("@r1.example"), Ok("@r1.example"));
        assert_eq!(
            strip_source_route("@bad_host:a@b.c"),
            Err(InvalidSourceRoute)
        );
    }
}

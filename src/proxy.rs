//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), as a
//! listener behind a load balancer receives it.
//!
//! [`parse_header`] is sans-IO: give it the bytes received so far and it says
//! "need more", "here is the header and its length" or why the bytes can
//! never become a valid header. The version is decided from the first byte
//! (`P` for v1, `\r` for v2), and every later byte is checked as soon as it
//! arrives, so a client that speaks first (`EHLO ...`) is refused after one
//! byte instead of waiting for a timeout. [`read_header`] drives the parser
//! over any [`AsyncRead`] without ever buffering more than the protocol
//! allows, and [`TrustedProxies`] says which peers may send a header at all
//! (the spec requires the receiver to filter them: a header from anyone else
//! would let them spoof their address).
//!
//! Choices worth knowing:
//! - v1 is strict: exactly one space between fields, addresses of the
//!   announced family, ports without sign or leading zeroes (the spec forbids
//!   them to avoid octal confusion), at most 107 octets including CRLF.
//!   `UNKNOWN` may carry anything before its CRLF.
//! - v2 accepts exactly the family/transport bytes the spec lists (`0x00`,
//!   `0x11`, `0x12`, `0x21`, `0x22`, `0x31`, `0x32`), for both commands. The
//!   address block length follows from the family (0 for `AF_UNSPEC`) and
//!   whatever follows it must be a sequence of TLVs that fills the declared
//!   length exactly; this also holds for `LOCAL`, whose addresses are ignored
//!   but whose TLVs are still returned. The transport (TCP or UDP) is not
//!   reported.
//! - The `PP2_TYPE_CRC32C` TLV is returned but not verified.
//! - IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are normalised with
//!   [`IpAddr::to_canonical`], so that per-IP policy (SPF `ip4`, rate
//!   limits, logs) sees one form per host whatever the proxy's socket family.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included (`PROXY UNKNOWN` with two full IPv6
/// addresses and ports).
pub const V1_MAX_LEN: usize = 107;
/// The 12 octets every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Length of the fixed part of a v2 header (signature, version/command,
/// family/transport, length).
pub const V2_FIXED_LEN: usize = 16;
/// Longest v2 header: the fixed part plus a 16-bit length.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

const V1_PREFIX: &[u8] = b"PROXY ";
const NOT_PROXY: ProxyError = ProxyError::Malformed("not a PROXY protocol header");

/// Registered v2 TLV types (spec section 2.2).
pub mod tlv {
    /// Application-Layer Protocol Negotiation, as sent by the client.
    pub const ALPN: u8 = 0x01;
    /// The host name the client asked for (TLS SNI), UTF-8.
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32c of the whole header (not verified by this module).
    pub const CRC32C: u8 = 0x03;
    /// Padding, to be ignored.
    pub const NOOP: u8 = 0x04;
    /// An opaque connection id of up to 128 octets chosen by the proxy.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS facts of the client connection, with sub-TLVs.
    pub const SSL: u8 = 0x20;
    /// The network namespace's name.
    pub const NETNS: u8 = 0x30;
}

/// A parsed PROXY header.
///
/// `source` and `destination` are `None` when the header carries no usable
/// address: v1 `UNKNOWN`, v2 `LOCAL` (health checks from the proxy itself),
/// v2 `AF_UNSPEC` and v2 `AF_UNIX`. The connection's real addresses apply
/// then; see [`ProxyHeader::source_or`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// The original client's address.
    pub source: Option<SocketAddr>,
    /// The address the original client connected to.
    pub destination: Option<SocketAddr>,
    /// v2 TLVs `(type, value)` in the order received; empty for v1.
    pub tlvs: Vec<(u8, Bytes)>,
}

impl ProxyHeader {
    /// The client's address: the announced source, or `real_peer` when the
    /// header announces none.
    ///
    /// ```
    /// use smtpsrv::proxy::parse_header;
    /// let (header, _) = parse_header(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
    /// let peer = "192.0.2.9:4000".parse().unwrap();
    /// assert_eq!(header.source_or(peer), peer);
    /// ```
    pub fn source_or(&self, real_peer: SocketAddr) -> SocketAddr {
        self.source.unwrap_or(real_peer)
    }

    /// The local address the client connected to: the announced destination,
    /// or `real_local` when the header announces none.
    pub fn destination_or(&self, real_local: SocketAddr) -> SocketAddr {
        self.destination.unwrap_or(real_local)
    }

    /// The value of the first TLV of type `kind` (see [`tlv`]).
    pub fn tlv(&self, kind: u8) -> Option<&Bytes> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, value)| value)
    }
}

/// Why no PROXY header could be had from a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Reading failed; a connection closed before the header was complete
    /// gives [`io::ErrorKind::UnexpectedEof`].
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not, and can never become, a valid header.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// A v1 header without CRLF within its first 107 octets.
    #[error("PROXY v1 header longer than {V1_MAX_LEN} octets")]
    TooLong,
    /// The peer is not among the [`TrustedProxies`].
    #[error("PROXY header expected from untrusted peer {0}")]
    UntrustedPeer(IpAddr),
    /// No complete header arrived in time.
    #[error("no PROXY header before the timeout")]
    Timeout,
}

/// Parses one PROXY header (v1 or v2) from the start of `buf`.
///
/// `Ok(None)` means the bytes so far are a valid beginning: read more.
/// `Ok(Some((header, consumed)))` gives the header and its length; the bytes
/// after it belong to the proxied protocol. Invalid bytes are refused as soon
/// as they are seen.
///
/// ```
/// use smtpsrv::proxy::{parse_header, ProxyError};
/// let input = b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\nEHLO";
/// let (header, consumed) = parse_header(input).unwrap().unwrap();
/// assert_eq!(header.source, Some("192.0.2.1:5000".parse().unwrap()));
/// assert_eq!(&input[consumed..], b"EHLO");
///
/// assert!(parse_header(b"PROXY TCP4 192.0").unwrap().is_none());
/// assert!(matches!(parse_header(b"EHLO"), Err(ProxyError::Malformed(_))));
/// ```
pub fn parse_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(NOT_PROXY),
    }
}

/// Reads exactly one PROXY header from `io`, through `buf`.
///
/// Bytes already in `buf` are parsed first. On success the header is removed
/// from `buf`, and whatever was read after it (the client's first bytes)
/// stays there. `buf` never grows past the protocol's maximum: 107 octets
/// until a v2 header announces its length, then 16 plus that length. There
/// is no timeout here; wrap the call in one or use
/// [`read_header_with_timeout`].
///
/// ```
/// use bytes::BytesMut;
/// use tokio::io::AsyncWriteExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), smtpsrv::proxy::ProxyError> {
/// let (mut proxy, mut conn) = tokio::io::duplex(256);
/// proxy.write_all(b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 25\r\nQUIT\r\n").await?;
/// let mut buf = BytesMut::new();
/// let header = smtpsrv::proxy::read_header(&mut conn, &mut buf).await?;
/// assert_eq!(header.source, Some("[2001:db8::1]:5000".parse().unwrap()));
/// assert_eq!(&buf[..], b"QUIT\r\n");
/// # Ok(())
/// # }
/// ```
pub async fn read_header<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<ProxyHeader, ProxyError> {
    loop {
        if let Some((header, consumed)) = parse_header(buf)? {
            buf.advance(consumed);
            return Ok(header);
        }
        let room = read_limit(buf).saturating_sub(buf.len());
        if room == 0 {
            // The parser reports TooLong/Malformed before this can happen.
            return Err(ProxyError::Malformed(
                "PROXY header exceeds its maximum length",
            ));
        }
        let read = (&mut *io).take(room as u64).read_buf(buf).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the PROXY header was complete",
            )
            .into());
        }
    }
}

/// [`read_header`] bounded by `timeout`, after which it fails with
/// [`ProxyError::Timeout`]. The spec suggests at least 3 seconds, to cover a
/// TCP retransmission.
pub async fn read_header_with_timeout<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(timeout, read_header(io, buf))
        .await
        .map_err(|_elapsed| ProxyError::Timeout)?
}

/// How many octets `buf` may hold while its header is incomplete.
fn read_limit(buf: &[u8]) -> usize {
    match buf.split_first_chunk::<V2_FIXED_LEN>() {
        Some((fixed, _)) if fixed.starts_with(&V2_SIGNATURE) => {
            let [.., hi, lo] = *fixed;
            V2_FIXED_LEN + usize::from(u16::from_be_bytes([hi, lo]))
        }
        _ => V1_MAX_LEN,
    }
}

// ---------------------------------------------------------------- v1 (text)

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(line_len) = memchr::memmem::find(window, b"\r\n") else {
        check_v1_partial(window)?;
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = window.get(..line_len).ok_or(NOT_PROXY)?;
    check_v1_partial(line)?;
    Ok(Some((parse_v1_line(line)?, line_len + 2)))
}

/// Refuses a v1 line (complete without its CRLF, or still incomplete) as soon
/// as it departs from the grammar, so garbage fails without waiting for CRLF.
fn check_v1_partial(line: &[u8]) -> Result<(), ProxyError> {
    let seen = line.len().min(V1_PREFIX.len());
    if line.get(..seen) != V1_PREFIX.get(..seen) {
        return Err(NOT_PROXY);
    }
    let rest = line.get(V1_PREFIX.len()..).unwrap_or_default();
    if let Some(after) = rest.strip_prefix(b"UNKNOWN") {
        return match after.first() {
            None | Some(b' ' | b'\r') => Ok(()),
            Some(_) => Err(ProxyError::Malformed("unknown PROXY v1 protocol")),
        };
    }
    let (fields, allowed): (&[u8], fn(u8) -> bool) = if let Some(f) = rest.strip_prefix(b"TCP4 ") {
        (f, |b| b.is_ascii_digit() || b == b'.' || b == b' ')
    } else if let Some(f) = rest.strip_prefix(b"TCP6 ") {
        (f, |b| b.is_ascii_hexdigit() || b".: ".contains(&b))
    } else if [&b"UNKNOWN"[..], b"TCP4 ", b"TCP6 "]
        .iter()
        .any(|token| token.starts_with(rest))
    {
        return Ok(());
    } else {
        return Err(ProxyError::Malformed("unknown PROXY v1 protocol"));
    };
    // A CR is only fine as the last byte seen: its LF may still come.
    let fields = fields.strip_suffix(b"\r").unwrap_or(fields);
    if !fields.iter().all(|&b| allowed(b)) {
        return Err(ProxyError::Malformed(
            "invalid character in PROXY v1 header",
        ));
    }
    if fields.iter().filter(|&&b| b == b' ').count() > 3 {
        return Err(ProxyError::Malformed("too many fields in PROXY v1 header"));
    }
    Ok(())
}

/// Parses a complete v1 line, without its CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let rest = line.strip_prefix(V1_PREFIX).ok_or(NOT_PROXY)?;
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader {
            version: 1,
            source: None,
            destination: None,
            tlvs: Vec::new(),
        });
    }
    let text = std::str::from_utf8(rest)
        .map_err(|_| ProxyError::Malformed("invalid character in PROXY v1 header"))?;
    let mut fields = text.split(' ');
    let (Some(protocol), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Malformed(
            "PROXY v1 header needs protocol, two addresses and two ports",
        ));
    };
    let (src_ip, dst_ip) = match protocol {
        "TCP4" => (
            IpAddr::V4(parse_v1_ip::<Ipv4Addr>(src)?),
            IpAddr::V4(parse_v1_ip::<Ipv4Addr>(dst)?),
        ),
        "TCP6" => (
            IpAddr::V6(parse_v1_ip::<Ipv6Addr>(src)?),
            IpAddr::V6(parse_v1_ip::<Ipv6Addr>(dst)?),
        ),
        _ => return Err(ProxyError::Malformed("unknown PROXY v1 protocol")),
    };
    Ok(ProxyHeader {
        version: 1,
        source: Some(SocketAddr::new(
            src_ip.to_canonical(),
            parse_v1_port(sport)?,
        )),
        destination: Some(SocketAddr::new(
            dst_ip.to_canonical(),
            parse_v1_port(dport)?,
        )),
        tlvs: Vec::new(),
    })
}

/// std's parsers already refuse IPv4 octets with leading zeroes.
fn parse_v1_ip<T: FromStr>(text: &str) -> Result<T, ProxyError> {
    text.parse()
        .map_err(|_| ProxyError::Malformed("PROXY v1 address does not match its protocol"))
}

/// A decimal port without sign and without leading zeroes.
fn parse_v1_port(text: &str) -> Result<u16, ProxyError> {
    const BAD_PORT: ProxyError = ProxyError::Malformed("invalid PROXY v1 port");
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return Err(BAD_PORT);
    }
    text.parse().map_err(|_| BAD_PORT)
}

// -------------------------------------------------------------- v2 (binary)

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..seen) != V2_SIGNATURE.get(..seen) {
        return Err(NOT_PROXY);
    }
    // Check the next two bytes as soon as each arrives.
    if let Some(&version_command) = buf.get(12) {
        v2_is_local(version_command)?;
    }
    if let Some(&family) = buf.get(13) {
        v2_address_len(family)?;
    }
    let Some((fixed, after)) = buf.split_first_chunk::<V2_FIXED_LEN>() else {
        return Ok(None);
    };
    let [.., version_command, family, len_hi, len_lo] = *fixed;
    let is_local = v2_is_local(version_command)?;
    let address_len = v2_address_len(family)?;
    let block_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if block_len < address_len {
        return Err(ProxyError::Malformed(
            "PROXY v2 length too short for its address family",
        ));
    }
    let Some(block) = after.get(..block_len) else {
        return Ok(None);
    };
    let (addresses, tlv_bytes) = block.split_at_checked(address_len).ok_or(NOT_PROXY)?;
    let tlvs = parse_tlvs(tlv_bytes)?;
    let (source, destination) = match (is_local, family >> 4) {
        (false, 1) => socket_pair::<4>(addresses)?,
        (false, 2) => socket_pair::<16>(addresses)?,
        // LOCAL: use the real endpoints. AF_UNSPEC, AF_UNIX: no IP to give.
        _ => (None, None),
    };
    Ok(Some((
        ProxyHeader {
            version: 2,
            source,
            destination,
            tlvs,
        },
        V2_FIXED_LEN + block_len,
    )))
}

/// Checks the version/command byte; `true` for LOCAL, `false` for PROXY.
fn v2_is_local(version_command: u8) -> Result<bool, ProxyError> {
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("unsupported PROXY protocol version"));
    }
    match version_command & 0x0f {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err(ProxyError::Malformed("unknown PROXY v2 command")),
    }
}

/// The address block length of a family/transport byte the spec lists.
fn v2_address_len(family: u8) -> Result<usize, ProxyError> {
    match family {
        0x00 => Ok(0),
        0x11 | 0x12 => Ok(2 * 4 + 2 * 2),
        0x21 | 0x22 => Ok(2 * 16 + 2 * 2),
        0x31 | 0x32 => Ok(2 * 108),
        _ => Err(ProxyError::Malformed(
            "unsupported PROXY v2 address family or transport",
        )),
    }
}

type SocketPair = (Option<SocketAddr>, Option<SocketAddr>);

/// Source and destination from an INET (`N` = 4) or INET6 (`N` = 16) block:
/// both addresses, then both ports, in network order.
fn socket_pair<const N: usize>(block: &[u8]) -> Result<SocketPair, ProxyError>
where
    IpAddr: From<[u8; N]>,
{
    let pair = (|| {
        let (src, rest) = block.split_first_chunk::<N>()?;
        let (dst, rest) = rest.split_first_chunk::<N>()?;
        let (sport, rest) = rest.split_first_chunk::<2>()?;
        let (dport, _) = rest.split_first_chunk::<2>()?;
        let addr = |ip: &[u8; N], port: &[u8; 2]| {
            SocketAddr::new(IpAddr::from(*ip).to_canonical(), u16::from_be_bytes(*port))
        };
        Some((Some(addr(src, sport)), Some(addr(dst, dport))))
    })();
    pair.ok_or(ProxyError::Malformed("PROXY v2 address block too short"))
}

/// Splits `bytes` into TLVs that must fill it exactly. The values share one
/// copy of the block.
fn parse_tlvs(bytes: &[u8]) -> Result<Vec<(u8, Bytes)>, ProxyError> {
    let block = Bytes::copy_from_slice(bytes);
    let mut tlvs = Vec::new();
    let mut offset = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((&[kind, len_hi, len_lo], after)) = rest.split_first_chunk::<3>() else {
            return Err(ProxyError::Malformed("truncated PROXY v2 TLV"));
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        let Some((_, after_value)) = after.split_at_checked(len) else {
            return Err(ProxyError::Malformed("PROXY v2 TLV overruns the header"));
        };
        let start = offset + 3;
        tlvs.push((kind, block.slice(start..start + len)));
        offset = start + len;
        rest = after_value;
    }
    Ok(tlvs)
}

// -------------------------------------------------------- trusted proxies

/// The networks whose peers may send a PROXY header. The default trusts
/// nobody.
///
/// Peer addresses are also matched in their canonical form, so an IPv4
/// proxy seen through a dual-stack socket as `::ffff:10.0.0.1` matches
/// `10.0.0.0/8`.
///
/// ```
/// use smtpsrv::proxy::TrustedProxies;
/// let trusted = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1 2001:db8::/32").unwrap();
/// assert!(trusted.contains("10.20.30.40".parse().unwrap()));
/// assert!(trusted.contains("2001:db8::7".parse().unwrap()));
/// assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// An entry of a [`TrustedProxies`] list that is neither an IP address nor
/// a CIDR network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid trusted proxy network {0:?}: expected an address or CIDR such as 10.0.0.0/8")]
pub struct InvalidNetwork(pub String);

impl TrustedProxies {
    /// Trusts the given networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().map(|net| net.trunc()).collect(),
        }
    }

    /// Trusts every peer, IPv4 and IPv6. Only for listeners that nothing but
    /// the proxy can reach.
    pub fn any() -> Self {
        Self::new([
            IpNet::new_assert(Ipv4Addr::UNSPECIFIED.into(), 0),
            IpNet::new_assert(Ipv6Addr::UNSPECIFIED.into(), 0),
        ])
    }

    /// Parses a list of addresses and CIDR networks separated by commas
    /// and/or whitespace, e.g. `"10.0.0.0/8, 127.0.0.1"`. A bare address is a
    /// single host; host bits after the prefix are ignored.
    pub fn parse(list: &str) -> Result<Self, InvalidNetwork> {
        let nets = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidNetwork(entry.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(nets))
    }

    /// Whether `ip` lies in one of the trusted networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// `Ok` for a trusted peer, [`ProxyError::UntrustedPeer`] otherwise.
    pub fn check(&self, peer: IpAddr) -> Result<(), ProxyError> {
        if self.contains(peer) {
            Ok(())
        } else {
            Err(ProxyError::UntrustedPeer(peer))
        }
    }

    /// Whether the list is empty (nobody is trusted).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The trusted networks, host bits cleared.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }
}

impl FromStr for TrustedProxies {
    type Err = InvalidNetwork;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::parse(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const SMTP: &[u8] = b"EHLO client.example\r\n";

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    fn header(source: &str, destination: &str, version: u8) -> ProxyHeader {
        ProxyHeader {
            version,
            source: addr(source),
            destination: addr(destination),
            tlvs: Vec::new(),
        }
    }

    fn no_address(version: u8) -> ProxyHeader {
        ProxyHeader {
            version,
            source: None,
            destination: None,
            tlvs: Vec::new(),
        }
    }

    /// A v2 header: signature, version/command, family, length, block.
    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        out.push(version_command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    /// One TLV: type, 16-bit length, value.
    fn tlv_bytes(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    // 192.0.2.1:5000 -> 198.51.100.1:25
    const INET_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 1, 0x13, 0x88, 0x00, 0x19];

    fn inet6_block() -> Vec<u8> {
        let mut block = Vec::new();
        // 2001:db8::1
        block.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // 2001:db8::2
        block.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        block.extend_from_slice(&[0xff, 0xff, 0x01, 0xbb]); // 65535 -> 443
        block
    }

    fn unix_block() -> Vec<u8> {
        let mut block = vec![0u8; 216];
        block[..14].copy_from_slice(b"/run/proxy.src");
        block[108..122].copy_from_slice(b"/run/proxy.dst");
        block
    }

    fn tlvs(list: &[(u8, &[u8])]) -> Vec<(u8, Bytes)> {
        list.iter()
            .map(|(k, v)| (*k, Bytes::copy_from_slice(v)))
            .collect()
    }

    /// Every valid header of the tests with what it must parse to.
    fn valid_headers() -> Vec<(Vec<u8>, ProxyHeader)> {
        let max_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let mut cases = vec![
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\n".to_vec(),
                header("192.0.2.1:5000", "198.51.100.1:25", 1),
            ),
            (
                b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n".to_vec(),
                header("255.255.255.255:65535", "0.0.0.0:0", 1),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:DB8::2 65535 587\r\n".to_vec(),
                header("[2001:db8::1]:65535", "[2001:db8::2]:587", 1),
            ),
            (
                format!("PROXY TCP6 {max_v6} {max_v6} 65535 65535\r\n").into_bytes(),
                header(
                    &format!("[{max_v6}]:65535"),
                    &format!("[{max_v6}]:65535"),
                    1,
                ),
            ),
            // IPv4-mapped addresses come out as IPv4.
            (
                b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:c633:6401 1 2\r\n".to_vec(),
                header("192.0.2.1:1", "198.51.100.1:2", 1),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), no_address(1)),
            (
                b"PROXY UNKNOWN whatever \x01\xff\n\r it likes\r\n".to_vec(),
                no_address(1),
            ),
            // The longest legal line: 107 octets with its CRLF.
            (
                format!("PROXY UNKNOWN {max_v6} {max_v6} 65535 65535\r\n").into_bytes(),
                no_address(1),
            ),
            (
                v2(0x21, 0x11, &INET_BLOCK),
                header("192.0.2.1:5000", "198.51.100.1:25", 2),
            ),
            // UDP over IPv4.
            (
                v2(0x21, 0x12, &INET_BLOCK),
                header("192.0.2.1:5000", "198.51.100.1:25", 2),
            ),
            (
                v2(0x21, 0x21, &inet6_block()),
                header("[2001:db8::1]:65535", "[2001:db8::2]:443", 2),
            ),
            (v2(0x20, 0x00, &[]), no_address(2)),
            // LOCAL ignores the addresses it carries.
            (v2(0x20, 0x11, &INET_BLOCK), no_address(2)),
            // PROXY with AF_UNSPEC: no address to use.
            (v2(0x21, 0x00, &[]), no_address(2)),
            (v2(0x21, 0x31, &unix_block()), no_address(2)),
        ];

        let mut block = INET_BLOCK.to_vec();
        block.extend(tlv_bytes(tlv::AUTHORITY, b"mx.example.com"));
        block.extend(tlv_bytes(tlv::NOOP, b""));
        block.extend(tlv_bytes(0xe0, &[1, 2, 3]));
        let mut expected = header("192.0.2.1:5000", "198.51.100.1:25", 2);
        expected.tlvs = tlvs(&[
            (tlv::AUTHORITY, b"mx.example.com"),
            (tlv::NOOP, b""),
            (0xe0, &[1, 2, 3]),
        ]);
        cases.push((v2(0x21, 0x11, &block), expected));

        let mut block = inet6_block();
        block.extend(tlv_bytes(tlv::UNIQUE_ID, &[0xaa; 128]));
        let mut expected = header("[2001:db8::1]:65535", "[2001:db8::2]:443", 2);
        expected.tlvs = tlvs(&[(tlv::UNIQUE_ID, &[0xaa; 128])]);
        cases.push((v2(0x21, 0x22, &block), expected));

        // IPv4-mapped IPv6 in a binary header.
        let mut block = vec![0u8; 10];
        block.extend_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
        block.extend_from_slice(&[0u8; 10]);
        block.extend_from_slice(&[0xff, 0xff, 198, 51, 100, 1]);
        block.extend_from_slice(&[0x13, 0x88, 0x00, 0x19]);
        cases.push((
            v2(0x21, 0x21, &block),
            header("192.0.2.1:5000", "198.51.100.1:25", 2),
        ));

        // LOCAL health check with TLVs after AF_UNSPEC.
        let mut expected = no_address(2);
        expected.tlvs = tlvs(&[(tlv::CRC32C, &[0, 0, 0, 0])]);
        cases.push((
            v2(0x20, 0x00, &tlv_bytes(tlv::CRC32C, &[0, 0, 0, 0])),
            expected,
        ));

        let mut block = unix_block();
        block.extend(tlv_bytes(tlv::NETNS, b"blue"));
        let mut expected = no_address(2);
        expected.tlvs = tlvs(&[(tlv::NETNS, b"blue")]);
        cases.push((v2(0x21, 0x32, &block), expected));
        cases
    }

    fn parsed(input: &[u8]) -> (ProxyHeader, usize) {
        parse_header(input).unwrap().expect("a complete header")
    }

    fn malformed(input: &[u8]) -> &'static str {
        match parse_header(input) {
            Err(ProxyError::Malformed(why)) => why,
            other => panic!(
                "{:?}: expected Malformed, got {other:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    #[test]
    fn valid_headers_parse_and_leave_trailing_bytes() {
        for (bytes, expected) in valid_headers() {
            let mut input = bytes.clone();
            input.extend_from_slice(SMTP);
            let (header, consumed) = parsed(&input);
            assert_eq!(header, expected, "{:?}", String::from_utf8_lossy(&bytes));
            assert_eq!(consumed, bytes.len());
        }
    }

    #[test]
    fn valid_headers_byte_by_byte_need_more_until_the_last() {
        for (bytes, expected) in valid_headers() {
            for end in 0..bytes.len() {
                assert!(
                    parse_header(&bytes[..end]).unwrap().is_none(),
                    "{:?} complete after {end} bytes",
                    String::from_utf8_lossy(&bytes)
                );
            }
            assert_eq!(parsed(&bytes), (expected, bytes.len()));
        }
    }

    #[test]
    fn v1_tcp4_example_from_the_checklist() {
        let (header, consumed) = parsed(b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\n");
        assert_eq!(
            header.source_or(addr("127.0.0.1:1").unwrap()),
            addr("192.0.2.1:5000").unwrap()
        );
        assert_eq!(header.destination, addr("198.51.100.1:25"));
        assert_eq!(header.version, 1);
        assert!(header.tlvs.is_empty());
        assert_eq!(consumed, 43);
    }

    #[test]
    fn v1_unknown_keeps_the_real_peer() {
        let (header, _) = parsed(b"PROXY UNKNOWN\r\n");
        let real = addr("203.0.113.5:40000").unwrap();
        assert_eq!(header.source_or(real), real);
        assert_eq!(header.destination_or(real), real);
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000\r\n",
            b"PROXY TCP4 192.0.2.1 5000 25\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 +25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 025\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 -1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 2a\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 99999999 25\r\n",
            b"PROXY TCP4 2001:db8::1 2001:db8::2 5000 25\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.1 5000 25\r\n",
            b"PROXY TCP6 2001:db8::1 192.0.2.1 5000 25\r\n",
            b"PROXY TCP4 192.0.2.256 198.51.100.1 5000 25\r\n",
            b"PROXY TCP4 192.0.02.1 198.51.100.1 5000 25\r\n",
            b"PROXY TCP6 [2001:db8::1] 2001:db8::2 5000 25\r\n",
            b"proxy TCP4 192.0.2.1 198.51.100.1 5000 25\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.1 5000 25\r\n",
            b"PROXY  TCP4 192.0.2.1 198.51.100.1 5000 25\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.1 5000 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25 \r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.1 5000 25\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000\r25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\r\n",
            b"PROXYTCP4 192.0.2.1 198.51.100.1 5000 25\r\n",
        ];
        for case in cases {
            malformed(case);
        }
    }

    #[test]
    fn v1_garbage_is_refused_before_the_crlf() {
        for prefix in [
            &b"E"[..],
            b"EHLO",
            b"p",
            b"PROXI",
            b"PROXY X",
            b"PROXY TCP7",
            b"PROXY TCP4 192.0.2.1 x",
            b"PROXY TCP4 192.0.2.1 2001:",
            b"PROXY TCP4 1 2 3 4 5",
            b"PROXY TCP4 192.0.2.1\n",
            b"PROXY TCP6 2001:db8::g",
            b"PROXY TCP6 ::1\r ",
            b"PROXY UNKNOWN!",
        ] {
            malformed(prefix);
        }
        // A lone CR at the end may still be followed by its LF.
        assert!(
            parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn v1_longer_than_107_octets_is_too_long() {
        let max_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {max_v6} {max_v6} 65535 655350\r\n");
        assert_eq!(line.len(), 108);
        assert!(matches!(
            parse_header(line.as_bytes()),
            Err(ProxyError::TooLong)
        ));
        // Refused as soon as 107 octets hold no CRLF, not only at the end.
        assert!(matches!(
            parse_header(&line.as_bytes()[..107]),
            Err(ProxyError::TooLong)
        ));
        assert!(parse_header(&line.as_bytes()[..106]).unwrap().is_none());

        // A CRLF that would end at octet 108 comes too late.
        let ones = "1".repeat(95);
        let line = format!("PROXY TCP4 {ones}\r\n");
        assert_eq!(line.len(), 108);
        assert!(matches!(
            parse_header(line.as_bytes()),
            Err(ProxyError::TooLong)
        ));
    }

    #[test]
    fn v2_bad_signature_version_and_command_are_refused_early() {
        let good = v2(0x21, 0x11, &INET_BLOCK);
        assert_eq!(malformed(b"\r\n\r\nX"), "not a PROXY protocol header");
        assert_eq!(
            malformed(b"\r\n\r\n\x00\r\nQUIT\r"),
            "not a PROXY protocol header"
        );
        assert_eq!(malformed(b"\r\r"), "not a PROXY protocol header");

        let mut bad_version = good[..13].to_vec();
        bad_version[12] = 0x11;
        assert_eq!(
            malformed(&bad_version),
            "unsupported PROXY protocol version"
        );
        bad_version[12] = 0x31;
        malformed(&bad_version);

        for command in [0x22, 0x2f] {
            let mut bad_command = good[..13].to_vec();
            bad_command[12] = command;
            assert_eq!(malformed(&bad_command), "unknown PROXY v2 command");
        }
    }

    #[test]
    fn v2_unlisted_family_or_transport_is_refused() {
        for family in [0x01, 0x10, 0x13, 0x23, 0x30, 0x41, 0xff] {
            let header = v2(0x21, family, &[0; 12]);
            // Refused on the 14th byte already.
            malformed(&header[..14]);
            malformed(&header);
            // Also under LOCAL.
            malformed(&v2(0x20, family, &[0; 12]));
        }
    }

    #[test]
    fn v2_length_shorter_than_the_family_needs_is_refused() {
        let header = v2(0x21, 0x11, &INET_BLOCK[..11]);
        assert_eq!(
            malformed(&header[..16]),
            "PROXY v2 length too short for its address family"
        );
        malformed(&v2(0x21, 0x21, &inet6_block()[..35]));
        malformed(&v2(0x21, 0x31, &unix_block()[..215]));
    }

    #[test]
    fn v2_tlvs_must_fill_the_declared_length_exactly() {
        // Fewer than three octets left for a TLV.
        let mut block = INET_BLOCK.to_vec();
        block.extend_from_slice(&[tlv::NOOP, 0]);
        assert_eq!(malformed(&v2(0x21, 0x11, &block)), "truncated PROXY v2 TLV");

        // A TLV that claims more than the header holds, even with more bytes
        // after the header.
        let mut block = INET_BLOCK.to_vec();
        block.extend_from_slice(&[tlv::AUTHORITY, 0, 10, b'a', b'b', b'c', b'd']);
        let mut input = v2(0x21, 0x11, &block);
        input.extend_from_slice(SMTP);
        assert_eq!(malformed(&input), "PROXY v2 TLV overruns the header");

        // Same under LOCAL.
        malformed(&v2(0x20, 0x00, &[tlv::NOOP, 0, 1]));
    }

    #[test]
    fn v2_truncated_header_needs_more() {
        let header = v2(0x21, 0x21, &inet6_block());
        assert!(parse_header(&header[..header.len() - 1]).unwrap().is_none());
        assert!(parse_header(&header[..16]).unwrap().is_none());
    }

    #[test]
    fn v2_largest_header_parses() {
        let mut block = INET_BLOCK.to_vec();
        let fill = usize::from(u16::MAX) - block.len() - 3;
        block.extend(tlv_bytes(0xe1, &vec![7; fill]));
        let input = v2(0x21, 0x11, &block);
        assert_eq!(input.len(), V2_MAX_LEN);
        let (header, consumed) = parsed(&input);
        assert_eq!(consumed, V2_MAX_LEN);
        assert_eq!(header.tlv(0xe1).map(Bytes::len), Some(fill));
        assert_eq!(header.tlv(0xe2), None);
    }

    // ------------------------------------------------------------ async

    /// Writes `bytes` from a task; returns the reading side.
    fn feed(bytes: Vec<u8>, pipe_capacity: usize) -> tokio::io::DuplexStream {
        let (mut proxy, conn) = tokio::io::duplex(pipe_capacity);
        tokio::spawn(async move {
            let _ = proxy.write_all(&bytes).await;
        });
        conn
    }

    async fn rest_of_stream(buf: BytesMut, conn: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut rest = buf.to_vec();
        conn.read_to_end(&mut rest).await.unwrap();
        rest
    }

    #[tokio::test]
    async fn read_header_byte_by_byte_keeps_the_smtp_bytes() {
        for (bytes, expected) in valid_headers() {
            let mut input = bytes.clone();
            input.extend_from_slice(SMTP);
            // A one-byte pipe delivers one octet per read.
            let mut conn = feed(input, 1);
            let mut buf = BytesMut::new();
            let header = read_header(&mut conn, &mut buf).await.unwrap();
            assert_eq!(header, expected);
            assert_eq!(rest_of_stream(buf, &mut conn).await, SMTP);
        }
    }

    #[tokio::test]
    async fn read_header_in_one_segment_bounds_what_it_buffers() {
        let smtp = SMTP.repeat(20);
        for (bytes, expected) in valid_headers() {
            let mut input = bytes.clone();
            input.extend_from_slice(&smtp);
            let mut conn = feed(input, 1 << 17);
            tokio::task::yield_now().await;
            let mut buf = BytesMut::new();
            let header = read_header(&mut conn, &mut buf).await.unwrap();
            assert_eq!(header, expected);
            assert!(bytes.len() + buf.len() <= V1_MAX_LEN.max(bytes.len()));
            assert_eq!(rest_of_stream(buf, &mut conn).await, smtp);
        }
    }

    #[tokio::test]
    async fn read_header_leaves_the_first_command_in_buf() {
        let mut input = b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 25\r\n".to_vec();
        input.extend_from_slice(SMTP);
        let (mut proxy, mut conn) = tokio::io::duplex(4096);
        proxy.write_all(&input).await.unwrap();
        let mut buf = BytesMut::new();
        let header = read_header(&mut conn, &mut buf).await.unwrap();
        assert_eq!(header.source, addr("192.0.2.1:5000"));
        assert_eq!(&buf[..], SMTP);
    }

    #[tokio::test]
    async fn read_header_parses_what_is_already_buffered() {
        let (_proxy, mut conn) = tokio::io::duplex(64);
        let mut buf = BytesMut::from(&v2(0x20, 0x00, &[])[..]);
        buf.extend_from_slice(b"QUIT\r\n");
        let header = read_header(&mut conn, &mut buf).await.unwrap();
        assert_eq!(header, no_address(2));
        assert_eq!(&buf[..], b"QUIT\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn client_speaking_first_is_refused_at_once() {
        let (mut proxy, mut conn) = tokio::io::duplex(64);
        proxy.write_all(b"EHLO client.example\r\n").await.unwrap();
        let mut buf = BytesMut::new();
        // With paused time, waiting would turn into a Timeout.
        let result = read_header_with_timeout(&mut conn, &mut buf, Duration::from_secs(5)).await;
        assert!(
            matches!(result, Err(ProxyError::Malformed(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn overlong_v1_stops_at_107_octets() {
        let mut input = b"PROXY TCP4 ".to_vec();
        input.extend_from_slice(&[b'1'; 1000]);
        let mut conn = feed(input, 4096);
        let mut buf = BytesMut::new();
        let result = read_header(&mut conn, &mut buf).await;
        assert!(matches!(result, Err(ProxyError::TooLong)), "{result:?}");
        assert_eq!(buf.len(), V1_MAX_LEN);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_or_stalled_proxy_times_out() {
        let (_proxy, mut conn) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let result = read_header_with_timeout(&mut conn, &mut buf, Duration::from_secs(3)).await;
        assert!(matches!(result, Err(ProxyError::Timeout)), "{result:?}");

        let (mut proxy, mut conn) = tokio::io::duplex(64);
        proxy.write_all(b"PROXY TCP4 192.0.2.1 198.").await.unwrap();
        let mut buf = BytesMut::new();
        let start = tokio::time::Instant::now();
        let result = read_header_with_timeout(&mut conn, &mut buf, Duration::from_secs(3)).await;
        assert!(matches!(result, Err(ProxyError::Timeout)), "{result:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn closed_before_the_header_ends_is_unexpected_eof() {
        let header = v2(0x21, 0x11, &INET_BLOCK);
        let mut conn = feed(header[..20].to_vec(), 64);
        let mut buf = BytesMut::new();
        match read_header(&mut conn, &mut buf).await {
            Err(ProxyError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected EOF, got {other:?}"),
        }
    }

    // ---------------------------------------------------- trusted proxies

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn trusted_ipv4_networks_and_hosts() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1,192.168.1.0/24").unwrap();
        assert!(trusted.contains(ip("10.0.0.0")));
        assert!(trusted.contains(ip("10.255.255.255")));
        assert!(trusted.contains(ip("127.0.0.1")));
        assert!(trusted.contains(ip("192.168.1.77")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(!trusted.contains(ip("127.0.0.2")));
        assert!(!trusted.contains(ip("192.168.2.1")));
        assert!(!trusted.contains(ip("::1")));
        // An IPv4 proxy seen through a dual-stack socket.
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
        assert!(!trusted.contains(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn trusted_ipv6_networks_and_hosts() {
        let trusted: TrustedProxies = "2001:db8::/32 ::1\tfe80::1/128".parse().unwrap();
        assert!(trusted.contains(ip("2001:db8:ffff::1")));
        assert!(trusted.contains(ip("::1")));
        assert!(trusted.contains(ip("fe80::1")));
        assert!(!trusted.contains(ip("2001:db9::1")));
        assert!(!trusted.contains(ip("::2")));
        assert!(!trusted.contains(ip("fe80::2")));
        assert!(!trusted.contains(ip("127.0.0.1")));
    }

    #[test]
    fn trusted_host_bits_are_ignored_and_new_takes_ipnets() {
        let trusted = TrustedProxies::parse("10.1.2.3/8").unwrap();
        assert!(trusted.contains(ip("10.200.0.1")));
        assert_eq!(
            trusted.networks(),
            &["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );

        let trusted = TrustedProxies::new(["172.16.0.0/12".parse::<IpNet>().unwrap()]);
        assert!(trusted.contains(ip("172.31.255.255")));
        assert!(!trusted.contains(ip("172.32.0.0")));
    }

    #[test]
    fn trusted_default_is_nobody_and_any_is_everybody() {
        let nobody = TrustedProxies::default();
        assert!(nobody.is_empty());
        assert!(!nobody.contains(ip("127.0.0.1")));
        assert_eq!(TrustedProxies::parse(" , ").unwrap(), nobody);
        match nobody.check(ip("192.0.2.1")) {
            Err(ProxyError::UntrustedPeer(peer)) => assert_eq!(peer, ip("192.0.2.1")),
            other => panic!("expected UntrustedPeer, got {other:?}"),
        }

        let everybody = TrustedProxies::any();
        for peer in [
            "0.0.0.0",
            "203.0.113.9",
            "255.255.255.255",
            "::",
            "2001:db8::1",
        ] {
            assert!(everybody.contains(ip(peer)), "{peer}");
            assert!(everybody.check(ip(peer)).is_ok());
        }
    }

    #[test]
    fn trusted_list_rejects_bad_entries() {
        for list in [
            "10.0.0.0/33",
            "banana",
            "10.0.0.0/8;",
            "10.0.0.0/8, ::1/129",
            "10.0.0/8",
        ] {
            assert!(TrustedProxies::parse(list).is_err(), "{list}");
        }
        assert_eq!(
            TrustedProxies::parse("127.0.0.1, nope").unwrap_err(),
            InvalidNetwork("nope".to_owned())
        );
    }
}

//! [`Resolver`]: the DNS resolver the SPF, DKIM, DMARC and mailable layers
//! share, a cheap-to-clone handle on mail-auth's [`MessageAuthenticator`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mail_auth::MessageAuthenticator;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};

/// A DNS resolver for the authentication layers.
///
/// Clones share one resolver (and its cache). Build it once and give a
/// clone to every layer.
///
/// ```no_run
/// use smtpsrv_middleware::Resolver;
/// // The system's resolver (/etc/resolv.conf), or a local validating one:
/// let system = Resolver::system()?;
/// let local = Resolver::nameservers(["127.0.0.1:53".parse().unwrap()])?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<MessageAuthenticator>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system's configuration (`/etc/resolv.conf` on Unix).
    pub fn system() -> io::Result<Self> {
        MessageAuthenticator::new_system_conf()
            .map(Self::from)
            .map_err(io::Error::other)
    }

    /// Asks these name servers (UDP, TCP on truncation), in order.
    pub fn nameservers(addrs: impl IntoIterator<Item = SocketAddr>) -> io::Result<Self> {
        Self::nameservers_with(addrs, ResolverOpts::default())
    }

    /// Like [`nameservers`](Self::nameservers), with hickory's options
    /// (timeouts, attempts, cache size).
    pub fn nameservers_with(
        addrs: impl IntoIterator<Item = SocketAddr>,
        options: ResolverOpts,
    ) -> io::Result<Self> {
        let servers = addrs
            .into_iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
            .map(Self::from)
            .map_err(io::Error::other)
    }

    /// mail-auth's authenticator, to call its checks directly.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.inner
    }
}

impl From<MessageAuthenticator> for Resolver {
    fn from(inner: MessageAuthenticator) -> Self {
        Resolver {
            inner: Arc::new(inner),
        }
    }
}

/// What a negative or failed lookup means for a policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupFailure {
    /// NXDOMAIN: the name does not exist.
    NoSuchDomain,
    /// The name exists but has no record of the type asked (NODATA).
    NoRecords,
    /// SERVFAIL, timeout, refused: ask again later.
    Temporary,
}

pub(crate) fn classify(err: &mail_auth::Error) -> LookupFailure {
    use mail_auth::hickory_resolver::proto::op::ResponseCode;
    use mail_auth::{DnsError, Error};
    match err {
        Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)) => LookupFailure::NoSuchDomain,
        Error::Dns(DnsError::RecordNotFound(ResponseCode::NoError)) => LookupFailure::NoRecords,
        Error::Dns(DnsError::InvalidRecordType) => LookupFailure::NoRecords,
        _ => LookupFailure::Temporary,
    }
}

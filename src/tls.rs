//! TLS configuration for STARTTLS (RFC 3207) and implicit TLS (RFC 8314).
//!
//! [`TlsConfig`] loads certificate chains and keys from PEM, picks one per
//! handshake by SNI, can request client certificates and can [`reload`]
//! certificates from disk without a restart. Only TLS 1.2 and 1.3 are
//! offered, with the `ring` crypto provider, so no process-wide default
//! provider has to be installed.
//!
//! `rustls` and `tokio_rustls` are re-exported so that users need no direct
//! dependency on them (and cannot end up with a second, mismatched version).
//!
//! [`reload`]: TlsConfig::reload

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

pub use tokio_rustls;
pub use tokio_rustls::rustls;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Server-side TLS settings, shared by every connection of a listener.
///
/// Cloning is cheap (reference counted) and clones share the certificates:
/// [`reload`](Self::reload) on one clone is seen by all of them. The
/// `with_*` methods return a new, independent configuration.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    /// `None` when the caller brought its own `ServerConfig`.
    certs: Option<Arc<CertStore>>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl TlsConfig {
    /// Loads a certificate chain (end-entity certificate first) and its
    /// private key (PKCS#8, PKCS#1 or SEC1) from PEM files.
    ///
    /// Certificates loaded from files are re-read by [`reload`](Self::reload).
    /// Cert and key may be the same file.
    ///
    /// ```no_run
    /// use smtpsrv::tls::TlsConfig;
    ///
    /// let tls = TlsConfig::from_pem_files("/etc/smtpsrv/cert.pem", "/etc/smtpsrv/key.pem")?
    ///     .with_sni_pem_files("mx.example.org", "/etc/smtpsrv/mx.pem", "/etc/smtpsrv/mx.key")?;
    /// let acceptor = tls.acceptor(); // hand it to the listener
    /// // Later, e.g. on SIGHUP, after the certificates were renewed:
    /// tls.reload()?;
    /// # Ok::<(), smtpsrv::tls::TlsError>(())
    /// ```
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        Self::with_default_cert(CertFiles::new(cert.as_ref(), key.as_ref()).load()?)
    }

    /// Loads a certificate chain and its private key from PEM data in memory.
    ///
    /// Such certificates are kept as they are by [`reload`](Self::reload).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Self::with_default_cert(load_pem(cert_pem, key_pem, None, MEMORY_CERT, MEMORY_KEY)?)
    }

    /// Adds a certificate that is served to clients asking for
    /// `server_name` by SNI (case-insensitive; `*.example.org` matches one
    /// label). Clients without SNI, or asking for another name, get the
    /// first certificate.
    pub fn with_sni_pem_files(
        self,
        server_name: &str,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let store = self.certs.as_ref().ok_or(TlsError::CallerConfig)?;
        let name = normalize_server_name(server_name)?;
        let loaded = CertFiles::new(cert.as_ref(), key.as_ref()).load()?;
        let mut set = CertSet::clone(&store.snapshot());
        set.by_name.retain(|(existing, _)| *existing != name);
        set.by_name.push((name, loaded));
        Self::build(set, self.client_verifier)
    }

    /// Asks clients for a certificate (without requiring one) and verifies
    /// any certificate offered against `roots`. A client whose certificate
    /// does not verify fails the handshake; the accepted chain is in
    /// [`TlsInfo::peer_certificates`].
    pub fn with_client_certificates(self, roots: RootCertStore) -> Result<Self, TlsError> {
        let store = self.certs.as_ref().ok_or(TlsError::CallerConfig)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring_provider())
                .allow_unauthenticated()
                .build()?;
        Self::build(CertSet::clone(&store.snapshot()), Some(verifier))
    }

    /// Re-reads every certificate and key that was loaded from files.
    ///
    /// All or nothing: on any error the certificates in use are kept and the
    /// error is returned. New handshakes use the new certificates; sessions
    /// already established are not affected. A no-op for
    /// [`from_rustls`](Self::from_rustls).
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some(store) = &self.certs else {
            return Ok(());
        };
        let old = store.snapshot();
        let fresh = CertSet {
            default: old.default.reloaded()?,
            by_name: old
                .by_name
                .iter()
                .map(|(name, cert)| Ok((name.clone(), cert.reloaded()?)))
                .collect::<Result<_, TlsError>>()?,
        };
        store.replace(fresh);
        Ok(())
    }

    /// Wraps a `ServerConfig` built by the caller. [`reload`](Self::reload)
    /// does nothing and the `with_*` methods return
    /// [`TlsError::CallerConfig`].
    pub fn from_rustls(config: Arc<ServerConfig>) -> Self {
        Self {
            server: config,
            certs: None,
            client_verifier: None,
        }
    }

    /// An acceptor for one handshake (STARTTLS upgrade or implicit TLS).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }

    fn with_default_cert(default: LoadedCert) -> Result<Self, TlsError> {
        let set = CertSet {
            default,
            by_name: Vec::new(),
        };
        Self::build(set, None)
    }

    fn build(
        set: CertSet,
        client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<Self, TlsError> {
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(set)),
        });
        let builder = ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &client_verifier {
            Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
            None => builder.with_no_client_auth(),
        };
        let server = builder.with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        Ok(Self {
            server: Arc::new(server),
            certs: Some(store),
            client_verifier,
        })
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("TlsConfig");
        match &self.certs {
            Some(store) => {
                let set = store.snapshot();
                let names: Vec<&str> = set.by_name.iter().map(|(n, _)| n.as_str()).collect();
                out.field("default", &set.default.files)
                    .field("sni", &names)
            }
            None => out.field("server", &"caller-built rustls::ServerConfig"),
        };
        out.field("client_certificates", &self.client_verifier.is_some())
            .finish()
    }
}

/// A TLS protocol version, as negotiated.
///
/// Typed, so policy compares values (`info.version == TlsVersion::Tls1_3`)
/// instead of strings; [`Display`](std::fmt::Display) gives the name used
/// in `Received` headers and logs (`TLSv1.3`, as OpenSSL and Postfix write
/// it). The server offers TLS 1.2 and 1.3 only.
///
/// ```
/// use smtpsrv::tls::TlsVersion;
/// assert_eq!(TlsVersion::Tls1_3.to_string(), "TLSv1.3");
/// assert_eq!(TlsVersion::Other(0x0301).to_string(), "TLS 0x0301");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    Tls1_2,
    /// TLS 1.3 (RFC 8446).
    Tls1_3,
    /// Another version, by its wire number (e.g. `0x0301` for TLS 1.0);
    /// `0` when the connection reports none (before its handshake).
    Other(u16),
}

impl TlsVersion {
    /// The name used in headers and logs: `TLSv1.2`, `TLSv1.3`, or
    /// `TLS 0x0301` for another version.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            TlsVersion::Tls1_2 => "TLSv1.2".into(),
            TlsVersion::Tls1_3 => "TLSv1.3".into(),
            TlsVersion::Other(n) => format!("TLS 0x{n:04x}").into(),
        }
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<rustls::ProtocolVersion> for TlsVersion {
    fn from(v: rustls::ProtocolVersion) -> Self {
        match v {
            rustls::ProtocolVersion::TLSv1_2 => TlsVersion::Tls1_2,
            rustls::ProtocolVersion::TLSv1_3 => TlsVersion::Tls1_3,
            other => TlsVersion::Other(u16::from(other)),
        }
    }
}

/// What was negotiated on a TLS connection, for logging and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version (`Display`: `TLSv1.3`, `TLSv1.2`).
    pub version: TlsVersion,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The client's certificate chain, end-entity first; empty if it sent
    /// none (or was not asked for one).
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

impl TlsInfo {
    /// Reads the facts off a server connection, normally after the
    /// handshake: `TlsInfo::from_connection(stream.get_ref().1)` for a
    /// `tokio_rustls::server::TlsStream`.
    pub fn from_connection(conn: &ServerConnection) -> Self {
        let version = conn
            .protocol_version()
            .map_or(TlsVersion::Other(0), TlsVersion::from);
        let cipher = match conn.negotiated_cipher_suite() {
            Some(suite) => {
                let id = suite.suite();
                id.as_str().map_or_else(|| format!("{id:?}"), str::to_owned)
            }
            None => String::new(),
        };
        Self {
            version,
            cipher,
            sni: conn.server_name().map(str::to_owned),
            peer_certificates: conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        }
    }
}

/// Why a certificate, a key or a TLS configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The PEM data holds no `CERTIFICATE` section.
    #[error("no certificate found in {origin}")]
    NoCertificate {
        /// The file, or `in-memory certificate PEM`.
        origin: String,
    },
    /// The PEM data holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key found in {origin}")]
    NoPrivateKey {
        /// The file, or `in-memory key PEM`.
        origin: String,
    },
    /// The PEM data is malformed.
    #[error("invalid PEM in {origin}: {source}")]
    InvalidPem {
        /// The file, or `in-memory ... PEM`.
        origin: String,
        /// The parser's complaint.
        source: pem::Error,
    },
    /// The private key is not the one of the end-entity certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
    },
    /// The certificate or key is unusable (unsupported key type, broken
    /// certificate encoding, ...).
    #[error("cannot use the certificate in {cert} with the key in {key}: {source}")]
    Certificate {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The name given for SNI is empty or not a host name.
    #[error("invalid SNI server name {0:?}")]
    InvalidServerName(String),
    /// The client certificate roots are unusable (e.g. empty).
    #[error("cannot verify client certificates: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificates cannot be added to a configuration made by
    /// [`TlsConfig::from_rustls`]; set them up in the `ServerConfig`.
    #[error("this TlsConfig wraps a caller-built rustls ServerConfig; configure it there")]
    CallerConfig,
}

const MEMORY_CERT: &str = "in-memory certificate PEM";
const MEMORY_KEY: &str = "in-memory key PEM";

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files a certificate was loaded from, so that `reload` can re-read them.
#[derive(Debug, Clone)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(cert: &Path, key: &Path) -> Self {
        Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }
    }

    fn load(&self) -> Result<LoadedCert, TlsError> {
        let cert_pem = read_file(&self.cert)?;
        let key_pem = read_file(&self.key)?;
        load_pem(
            &cert_pem,
            &key_pem,
            Some(self.clone()),
            &self.cert.display().to_string(),
            &self.key.display().to_string(),
        )
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    files: Option<CertFiles>,
    cert_origin: &str,
    key_origin: &str,
) -> Result<LoadedCert, TlsError> {
    let invalid = |origin: &str| {
        let origin = origin.to_owned();
        move |source| TlsError::InvalidPem { origin, source }
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid(cert_origin))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: cert_origin.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey {
                origin: key_origin.to_owned(),
            });
        }
        Err(e) => return Err(invalid(key_origin)(e)),
    };
    // `from_der` checks that the key belongs to the end-entity certificate,
    // so a wrong pairing fails here rather than at the first handshake.
    let certified = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
            cert: cert_origin.to_owned(),
            key: key_origin.to_owned(),
        },
        source => TlsError::Certificate {
            cert: cert_origin.to_owned(),
            key: key_origin.to_owned(),
            source,
        },
    })?;
    Ok(LoadedCert {
        files,
        key: Arc::new(certified),
    })
}

/// Lower-cases and strips a trailing dot; rejects what cannot be a host name.
fn normalize_server_name(name: &str) -> Result<String, TlsError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let host = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    let valid = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(TlsError::InvalidServerName(name.to_owned()))
    }
}

#[derive(Debug, Clone)]
struct LoadedCert {
    /// `None` for PEM given in memory, which `reload` keeps as it is.
    files: Option<CertFiles>,
    key: Arc<CertifiedKey>,
}

impl LoadedCert {
    fn reloaded(&self) -> Result<Self, TlsError> {
        match &self.files {
            Some(files) => files.load(),
            None => Ok(self.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct CertSet {
    default: LoadedCert,
    /// Lower-case names, possibly `*.` wildcards.
    by_name: Vec<(String, LoadedCert)>,
}

impl CertSet {
    fn choose(&self, sni: Option<&str>) -> &LoadedCert {
        let Some(sni) = sni else {
            return &self.default;
        };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        let exact = self
            .by_name
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(sni));
        let wildcard = || {
            let (_, parent) = sni.split_once('.')?;
            self.by_name.iter().find(|(name, _)| {
                name.strip_prefix("*.")
                    .is_some_and(|suffix| suffix.eq_ignore_ascii_case(parent))
            })
        };
        exact
            .or_else(wildcard)
            .map_or(&self.default, |(_, cert)| cert)
    }
}

/// The certificate resolver: one atomic swap point for `reload`.
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertSet>>,
}

impl CertStore {
    fn snapshot(&self) -> Arc<CertSet> {
        // A poisoned lock still holds a complete set: writers only swap an Arc.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, set: CertSet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.snapshot();
        Some(Arc::clone(&set.choose(client_hello.server_name()).key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    use rustls::ClientConfig;
    use rustls::version::{TLS12, TLS13};
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Ca = CertifiedIssuer<'static, KeyPair>;

    /// A certificate and its key as PEM, plus the certificate's DER.
    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "smtpsrv test CA");
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &Ca, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn server_leaf(ca: &Ca, names: &[&str]) -> Leaf {
        leaf(ca, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn roots(ca: &Ca) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        roots
    }

    fn client_trusting(
        ca: &Ca,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots(ca))
    }

    fn client(ca: &Ca) -> ClientConfig {
        client_trusting(ca, &[&TLS13, &TLS12]).with_no_client_auth()
    }

    fn memory_config(leaf: &Leaf) -> TlsConfig {
        TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()
    }

    /// What the two sides saw after a handshake over an in-memory pipe.
    struct Outcome {
        server: TlsInfo,
        served_cert: CertificateDer<'static>,
    }

    async fn handshake(tls: &TlsConfig, client: ClientConfig, name: &str) -> Outcome {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let acceptor = tls.acceptor();
        let (server, client) = tokio::join!(
            acceptor.accept(server_io),
            connector.connect(server_name, client_io)
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());

        // Application data flows both ways over the session.
        client.write_all(b"EHLO client\r\n").await.unwrap();
        client.flush().await.unwrap();
        let mut line = [0u8; 13];
        server.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"EHLO client\r\n");
        server.write_all(b"250 ok\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut reply = [0u8; 8];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"250 ok\r\n");

        let served_cert = client.get_ref().1.peer_certificates().unwrap()[0].clone();
        Outcome {
            server: TlsInfo::from_connection(server.get_ref().1),
            served_cert,
        }
    }

    fn write_pair(dir: &Path, stem: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (cert, key)
    }

    #[tokio::test]
    async fn handshake_reports_version_cipher_and_sni() {
        let ca = ca();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let tls = memory_config(&mx);

        let outcome = handshake(&tls, client(&ca), "mx.example.org").await;
        assert_eq!(outcome.served_cert, mx.der);
        assert_eq!(outcome.server.version, TlsVersion::Tls1_3);
        assert!(
            outcome.server.cipher.starts_with("TLS13_"),
            "{}",
            outcome.server.cipher
        );
        assert_eq!(outcome.server.sni.as_deref(), Some("mx.example.org"));
        assert!(outcome.server.peer_certificates.is_empty());
    }

    #[tokio::test]
    async fn tls12_is_offered() {
        let ca = ca();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let tls12 = client_trusting(&ca, &[&TLS12]).with_no_client_auth();

        let outcome = handshake(&memory_config(&mx), tls12, "mx.example.org").await;
        assert_eq!(outcome.server.version, TlsVersion::Tls1_2);
        assert!(
            outcome.server.cipher.starts_with("TLS_ECDHE_"),
            "{}",
            outcome.server.cipher
        );
    }

    #[tokio::test]
    async fn sni_picks_the_matching_certificate() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let other = server_leaf(&ca, &["smtp.example.net"]);
        let wild = server_leaf(&ca, &["*.wild.example"]);
        let (mx_cert, mx_key) = write_pair(dir.path(), "mx", &mx);
        let (other_cert, other_key) = write_pair(dir.path(), "other", &other);
        let (wild_cert, wild_key) = write_pair(dir.path(), "wild", &wild);
        let tls = TlsConfig::from_pem_files(&mx_cert, &mx_key)
            .unwrap()
            .with_sni_pem_files("SMTP.example.net.", &other_cert, &other_key)
            .unwrap()
            .with_sni_pem_files("*.wild.example", &wild_cert, &wild_key)
            .unwrap();

        let outcome = handshake(&tls, client(&ca), "smtp.example.net").await;
        assert_eq!(outcome.served_cert, other.der);
        assert_eq!(outcome.server.sni.as_deref(), Some("smtp.example.net"));

        let outcome = handshake(&tls, client(&ca), "mx.example.org").await;
        assert_eq!(outcome.served_cert, mx.der);

        let outcome = handshake(&tls, client(&ca), "relay.wild.example").await;
        assert_eq!(outcome.served_cert, wild.der);

        // No SNI at all: the first certificate.
        let mut no_sni = client(&ca);
        no_sni.enable_sni = false;
        let outcome = handshake(&tls, no_sni, "mx.example.org").await;
        assert_eq!(outcome.served_cert, mx.der);
        assert_eq!(outcome.server.sni, None);
    }

    #[test]
    fn sni_names_are_checked() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "mx", &server_leaf(&ca, &["mx.example.org"]));
        for bad in ["", ".", "*.", "bad name", "a..b"] {
            let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
            let err = tls.with_sni_pem_files(bad, &cert, &key).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidServerName(_)),
                "{bad:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn reload_serves_rewritten_files_to_the_next_handshake() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let first = server_leaf(&ca, &["mx.example.org"]);
        let (cert, key) = write_pair(dir.path(), "mx", &first);
        let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
        let clone = tls.clone();
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            first.der
        );

        let second = server_leaf(&ca, &["mx.example.org"]);
        write_pair(dir.path(), "mx", &second);
        // Not re-read until asked.
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            first.der
        );
        tls.reload().unwrap();
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            second.der
        );
        // Clones share the certificates.
        assert_eq!(
            handshake(&clone, client(&ca), "mx.example.org")
                .await
                .served_cert,
            second.der
        );

        // A broken rewrite (key of another certificate) keeps what works.
        let third = server_leaf(&ca, &["mx.example.org"]);
        std::fs::write(&cert, &third.cert_pem).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            second.der
        );
    }

    #[tokio::test]
    async fn reload_covers_sni_certificates_and_is_all_or_nothing() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let other = server_leaf(&ca, &["smtp.example.net"]);
        let (mx_cert, mx_key) = write_pair(dir.path(), "mx", &mx);
        let (other_cert, other_key) = write_pair(dir.path(), "other", &other);
        let tls = TlsConfig::from_pem_files(&mx_cert, &mx_key)
            .unwrap()
            .with_sni_pem_files("smtp.example.net", &other_cert, &other_key)
            .unwrap();

        // The default is renewed but the SNI key file vanished: nothing changes.
        let mx2 = server_leaf(&ca, &["mx.example.org"]);
        write_pair(dir.path(), "mx", &mx2);
        std::fs::remove_file(&other_key).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("other.key"), "{err}");
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            mx.der
        );

        let other2 = server_leaf(&ca, &["smtp.example.net"]);
        write_pair(dir.path(), "other", &other2);
        tls.reload().unwrap();
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            mx2.der
        );
        assert_eq!(
            handshake(&tls, client(&ca), "smtp.example.net")
                .await
                .served_cert,
            other2.der
        );
    }

    #[tokio::test]
    async fn requested_client_certificate_shows_up_in_tls_info() {
        let ca = ca();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let tls = memory_config(&mx)
            .with_client_certificates(roots(&ca))
            .unwrap();

        let user = leaf(
            &ca,
            &["alice.example.org"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let chain = vec![user.der.clone()];
        let key = PrivateKeyDer::from_pem_slice(user.key_pem.as_bytes()).unwrap();
        let with_cert = client_trusting(&ca, &[&TLS13, &TLS12])
            .with_client_auth_cert(chain, key)
            .unwrap();
        let outcome = handshake(&tls, with_cert, "mx.example.org").await;
        assert_eq!(outcome.server.peer_certificates, vec![user.der.clone()]);

        // Requested, not required.
        let outcome = handshake(&tls, client(&ca), "mx.example.org").await;
        assert!(outcome.server.peer_certificates.is_empty());

        // A certificate from an unknown CA is refused.
        let stranger_ca = self::ca();
        let stranger = leaf(
            &stranger_ca,
            &["eve.example"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let key = PrivateKeyDer::from_pem_slice(stranger.key_pem.as_bytes()).unwrap();
        let bad_client = client_trusting(&ca, &[&TLS13])
            .with_client_auth_cert(vec![stranger.der], key)
            .unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(bad_client));
        let name = ServerName::try_from("mx.example.org").unwrap();
        let acceptor = tls.acceptor();
        let (server, _client) = tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        );
        assert!(server.is_err());
    }

    #[test]
    fn client_certificates_need_roots() {
        let ca = ca();
        let tls = memory_config(&server_leaf(&ca, &["mx.example.org"]));
        let err = tls
            .with_client_certificates(RootCertStore::empty())
            .unwrap_err();
        assert!(matches!(err, TlsError::ClientVerifier(_)), "{err}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let (cert, key) = write_pair(dir.path(), "mx", &mx);
        let missing = dir.path().join("missing.pem");

        let err = TlsConfig::from_pem_files(&missing, &key).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        // The key file holds no certificate.
        let err = TlsConfig::from_pem_files(&key, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("mx.key"), "{err}");

        // The certificate file holds no key.
        let err = TlsConfig::from_pem_files(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("mx.crt"), "{err}");

        // A key that belongs to another certificate.
        let other = server_leaf(&ca, &["mx.example.org"]);
        let (_, other_key) = write_pair(dir.path(), "other", &other);
        let err = TlsConfig::from_pem_files(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("mx.crt") && message.contains("other.key"),
            "{message}"
        );

        // Cert and key in one file is fine.
        let combined = dir.path().join("combined.pem");
        std::fs::write(&combined, format!("{}{}", mx.cert_pem, mx.key_pem)).unwrap();
        TlsConfig::from_pem_files(&combined, &combined).unwrap();
    }

    #[test]
    fn in_memory_errors_are_labelled() {
        let ca = ca();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let err = TlsConfig::from_pem(b"", mx.key_pem.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no certificate found in in-memory certificate PEM"
        );
        let err = TlsConfig::from_pem(mx.cert_pem.as_bytes(), b"junk").unwrap_err();
        assert_eq!(err.to_string(), "no private key found in in-memory key PEM");
        let truncated = &mx.cert_pem[..mx.cert_pem.len() / 2];
        let err = TlsConfig::from_pem(truncated.as_bytes(), mx.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::InvalidPem { .. }), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = TlsConfig::from_pem(garbage.as_bytes(), mx.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::Certificate { .. }), "{err}");
    }

    #[tokio::test]
    async fn caller_built_config_is_used_as_is() {
        let ca = ca();
        let mx = server_leaf(&ca, &["mx.example.org"]);
        let key = PrivateKeyDer::from_pem_slice(mx.key_pem.as_bytes()).unwrap();
        let server = ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![mx.der.clone()], key)
            .unwrap();
        let tls = TlsConfig::from_rustls(Arc::new(server));
        tls.reload().unwrap();
        assert_eq!(
            handshake(&tls, client(&ca), "mx.example.org")
                .await
                .served_cert,
            mx.der
        );

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "mx", &mx);
        let err = tls
            .clone()
            .with_sni_pem_files("a.example", &cert, &key)
            .unwrap_err();
        assert!(matches!(err, TlsError::CallerConfig), "{err}");
        let err = tls.with_client_certificates(roots(&ca)).unwrap_err();
        assert!(matches!(err, TlsError::CallerConfig), "{err}");
    }
}

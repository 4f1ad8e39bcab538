//! A throw-away PKI: a test CA and the server certificate it signed, with
//! the matching server and client TLS configurations.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;
use smtpsrv::tls::TlsConfig;
use smtpsrv::tls::rustls::{self, ClientConfig, RootCertStore};

/// A test CA and a server certificate it signed. Keys live only in memory
/// (or in a temporary directory for reload tests).
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The server certificate for `localhost` and `127.0.0.1`.
    pub server: Leaf,
}

/// A certificate, its key, and the certificate's DER.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
}

impl Pki {
    /// A fresh CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "smtpsrv integration test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let server = Self::sign(&ca, &["localhost", "127.0.0.1"]);
        Pki { ca, server }
    }

    fn sign(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Another server certificate from the same CA (e.g. a renewal).
    pub fn renewed(&self) -> Leaf {
        Self::sign(&self.ca, &["localhost", "127.0.0.1"])
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The server's TLS configuration, from PEM in memory.
    pub fn server_tls(&self) -> TlsConfig {
        TlsConfig::from_pem(
            self.server.cert_pem.as_bytes(),
            self.server.key_pem.as_bytes(),
        )
        .unwrap()
    }

    /// A rustls client trusting only the test CA (ring provider).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(config)
    }

    /// lettre's TLS parameters for `localhost`, trusting only the test CA.
    pub fn lettre_tls(&self) -> lettre::transport::smtp::client::TlsParameters {
        use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
        TlsParameters::builder("localhost".into())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(self.ca_pem().as_bytes()).unwrap())
            .build_rustls()
            .unwrap()
    }
}

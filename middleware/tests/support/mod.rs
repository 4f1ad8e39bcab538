//! Shared by the integration tests: the loopback DNS server of the unit
//! tests, a DKIM test key, and a raw SMTP client for protocol details.
#![allow(dead_code)]

#[path = "../../src/test_support/dns.rs"]
pub mod dns;

use std::net::SocketAddr;
use std::time::Duration;

use smtpsrv_middleware::Resolver;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A resolver asking only the loopback server for `zone`.
pub async fn resolver(zone: dns::Zone) -> Resolver {
    let addr = dns::serve(zone).await;
    let mut opts = mail_auth::hickory_resolver::config::ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    Resolver::nameservers_with([addr], opts).unwrap()
}

/// An Ed25519 DKIM key made for one test.
pub struct DkimKey(Vec<u8>);

impl DkimKey {
    pub fn generate() -> Self {
        DkimKey(mail_auth::common::crypto::Ed25519Key::generate_pkcs8().unwrap())
    }

    fn key(&self) -> mail_auth::common::crypto::Ed25519Key {
        mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&self.0).unwrap()
    }

    pub fn publish(&self, zone: dns::Zone, domain: &str, selector: &str) -> dns::Zone {
        use base64::Engine;
        let p = base64::engine::general_purpose::STANDARD.encode(self.key().public_key());
        zone.txt(
            &format!("{selector}._domainkey.{domain}"),
            &format!("v=DKIM1; k=ed25519; p={p}"),
        )
    }

    pub fn sign(&self, message: &str, domain: &str, selector: &str) -> String {
        use mail_auth::common::headers::HeaderWriter;
        let signature = mail_auth::dkim::DkimSigner::from_key(self.key())
            .domain(domain)
            .selector(selector)
            .headers(["From", "To", "Subject"])
            .sign(message.as_bytes())
            .unwrap();
        format!("{}{message}", signature.to_header())
    }
}

/// A scripted SMTP client reading one (possibly multi-line) reply per command.
pub struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> (Self, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut c = RawClient {
            reader: BufReader::new(stream),
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    /// The next reply's last line, or "" at end of stream.
    pub async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    pub async fn send(&mut self, line: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// Whether the server closed the connection.
    pub async fn is_closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }
}

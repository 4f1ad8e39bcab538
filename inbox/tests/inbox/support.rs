//! Starting the binary and talking SMTP to it.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::TcpStream,
};

/// A running `smtpsrv-inbox`, killed on drop.
pub struct Inbox {
    child: Option<Child>,
    pub smtp: SocketAddr,
    pub http: String,
    pub client: reqwest::Client,
}

impl Inbox {
    /// Starts the binary on free loopback ports with extra `args`.
    pub fn start(args: &[&str]) -> Inbox {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtpsrv-inbox"))
            .args([
                "--smtp",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--quiet",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smtpsrv-inbox");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut smtp = None;
        let mut http = None;
        while smtp.is_none() || http.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the inbox prints its addresses within 20 s");
            if let Some(a) = line.strip_prefix("smtp: ") {
                smtp = Some(a.parse().expect("smtp address"));
            } else if let Some(u) = line.strip_prefix("http: ") {
                http = Some(u.trim_end_matches('/').to_owned());
            }
        }
        Inbox {
            child: Some(child),
            smtp: smtp.unwrap(),
            http: http.unwrap(),
            client: {
                crypto_provider();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap()
            },
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// GET, expecting `status`; the body as JSON (or Null when not JSON).
    pub async fn get_json(&self, path: &str, status: u16) -> serde_json::Value {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "GET {path}");
        let bytes = r.bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.bytes().await.unwrap().to_vec(), headers)
    }

    /// `method path` with a raw body; returns (status, body).
    pub async fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let r = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("the inbox did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A scripted SMTP conversation: sends `raw` (CRLF lines, not dot-stuffed
/// yet) and returns the final reply line after the data.
pub async fn smtp_send(addr: SocketAddr, from: &str, to: &[&str], raw: &[u8]) -> String {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (r, mut w) = stream.into_split();
    let mut r = TokioBufReader::new(r);
    let expect = async |r: &mut TokioBufReader<tokio::net::tcp::OwnedReadHalf>, code: &str| {
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    };
    expect(&mut r, "220").await;
    w.write_all(b"EHLO test.example\r\n").await.unwrap();
    expect(&mut r, "250").await;
    w.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
        .await
        .unwrap();
    expect(&mut r, "250").await;
    for rcpt in to {
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await
            .unwrap();
        expect(&mut r, "250").await;
    }
    w.write_all(b"DATA\r\n").await.unwrap();
    expect(&mut r, "354").await;
    let mut data = Vec::new();
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    w.write_all(&data).await.unwrap();
    let reply = expect(&mut r, "2").await;
    w.write_all(b"QUIT\r\n").await.unwrap();
    reply
}

/// A small message with `subject`.
pub fn simple(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@test>\r\n\r\n{body}\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// Installs ring as the process's rustls provider before an HTTP client is
/// built: under `cargo test --workspace` cargo unifies features, so reqwest
/// may come with the root crate's `rustls-no-provider` and panic without one.
pub fn crypto_provider() {
    let _ = smtpsrv::tls::rustls::crypto::ring::default_provider().install_default();
}

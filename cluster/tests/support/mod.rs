//! Real engines for the tests: redis-server and nats-server started on a
//! free loopback port in a temporary directory, killed (by PID) on drop.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until something accepts on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} (is it installed?): {e}"));
        Proc {
            child: Some(child),
            name,
        }
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-server with no persistence, on its own port.
pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let proc = Self::spawn(dir.path(), port);
        Redis { port, dir, proc }
    }

    fn spawn(dir: &Path, port: u16) -> Proc {
        let proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir),
        );
        wait_for_port(port);
        proc
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::spawn(self.dir.path(), self.port);
    }
}

/// A nats-server with JetStream (file storage in a temp dir) and
/// `max_payload` raised as in deploy/cluster/nats-server.conf.
pub struct Nats {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let proc = Self::spawn(dir.path(), port);
        Nats { port, dir, proc }
    }

    fn spawn(dir: &Path, port: u16) -> Proc {
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 32MB\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.join("js").display()
            ),
        )
        .unwrap();
        let proc = Proc::spawn(
            "nats-server",
            Command::new("nats-server").arg("-c").arg(conf),
        );
        wait_for_port(port);
        proc
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::spawn(self.dir.path(), self.port);
    }
}

/// A NATS client that reconnects quickly (tests stop and start servers).
pub async fn nats_client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|n| Duration::from_millis((50 * n as u64).min(300)))
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect to nats")
}

/// Every message of `stream`, in order (bounded by its last sequence).
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut s = js.get_stream(stream).await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// An example binary next to this test's (target/<profile>/examples/).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples --workspace` (a plain `cargo test --workspace` does)",
        path.display()
    );
    path
}

/// A program started with its stdout/stderr in `log`, killed on drop.
pub fn spawn_logged(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        child: Some(child),
        name,
    }
}

/// HAProxy with the shipped deploy/cluster/haproxy.cfg, three mailsink
/// instances (PROXY protocol, Redis rate limits, JetStream hand-off),
/// Redis and NATS: the deployment of deploy/cluster/cluster.sh on free ports.
pub struct Cluster {
    pub redis: Redis,
    pub nats: Nats,
    pub instances: Vec<Proc>,
    pub instance_ports: Vec<u16>,
    pub haproxy: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(rate_per_minute: u32) -> Cluster {
        let redis = Redis::start();
        let nats = Nats::start();
        let dir = tempfile::tempdir().unwrap();
        let mailsink = example_binary("mailsink");
        let mut instances = Vec::new();
        let mut instance_ports = Vec::new();
        for i in 1..=3 {
            let port = free_port();
            instances.push(spawn_logged(
                "mailsink",
                Command::new(&mailsink)
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--hostname", &format!("mx{i}.test")])
                    .args(["--proxy-protocol", "127.0.0.1"])
                    .args(["--rate-limit", &rate_per_minute.to_string()])
                    .args(["--redis", &redis.url()])
                    .args(["--nats", &nats.url(), "--nats-ack-timeout", "1"])
                    .args(["--threads", "1"])
                    .env("RUST_LOG", "warn"),
                &dir.path().join(format!("mx{i}.log")),
            ));
            instance_ports.push(port);
        }
        for &p in &instance_ports {
            wait_for_port(p);
        }
        let port = free_port();
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster/haproxy.cfg");
        let haproxy = spawn_logged(
            "haproxy",
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(cfg)
                .env("CLUSTER_BIND", format!("127.0.0.1:{port}"))
                .env("CLUSTER_RUN", dir.path())
                .env("MX1", format!("127.0.0.1:{}", instance_ports[0]))
                .env("MX2", format!("127.0.0.1:{}", instance_ports[1]))
                .env("MX3", format!("127.0.0.1:{}", instance_ports[2])),
            &dir.path().join("haproxy.log"),
        );
        wait_for_port(port);
        Cluster {
            redis,
            nats,
            instances,
            instance_ports,
            haproxy,
            port,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The logs, for a failing assertion.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["haproxy.log", "mx1.log", "mx2.log", "mx3.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// How one attempt to send a message ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// 250 after the data.
    Accepted,
    /// A 4xx/5xx reply (code), the message was not taken.
    Refused(u16),
    /// The connection broke before the final reply: unknown.
    Broken,
}

/// One attempt: which message (token), which try, what the client saw,
/// and which instance's banner the session had.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub token: String,
    pub attempt: String,
    pub seen: Seen,
    pub instance: String,
}

/// One whole (possibly multi-line) reply: its code and text.
pub async fn read_reply(
    r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let code = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad reply {line:?}")))?;
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
    }
}

/// Sends `tokens` one after the other from `source` through `addr`, each
/// until it is accepted (at most `max_tries` tries): reconnects after a
/// broken connection, retries after a 4xx (pausing `pause`). Every attempt
/// is recorded.
pub async fn send_all(
    addr: SocketAddr,
    source: std::net::IpAddr,
    tokens: Vec<String>,
    max_tries: usize,
    pause: Duration,
) -> Vec<Attempt> {
    use tokio::io::AsyncWriteExt;
    let mut attempts = Vec::new();
    let mut conn: Option<(
        tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
        String,
    )> = None;
    for token in tokens {
        for n in 0..max_tries {
            let attempt = format!("{token}.{n}");
            if conn.is_none() {
                conn = open(addr, source).await.ok();
                if conn.is_none() {
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            let (r, w, instance) = conn.as_mut().unwrap();
            let instance = instance.clone();
            let result: std::io::Result<Seen> = async {
                w.write_all(b"MAIL FROM:<load@client.test>\r\n").await?;
                let (code, _) = read_reply(r).await?;
                if code != 250 {
                    return Ok(Seen::Refused(code));
                }
                w.write_all(b"RCPT TO:<bob@cluster.test>\r\n").await?;
                let (code, _) = read_reply(r).await?;
                if code != 250 {
                    w.write_all(b"RSET\r\n").await?;
                    read_reply(r).await?;
                    return Ok(Seen::Refused(code));
                }
                w.write_all(b"DATA\r\n").await?;
                let (code, _) = read_reply(r).await?;
                if code != 354 {
                    return Ok(Seen::Refused(code));
                }
                let body = format!(
                    "Subject: load {token}\r\nX-Attempt: {attempt}\r\n\r\nmessage {token}\r\n.\r\n"
                );
                w.write_all(body.as_bytes()).await?;
                let (code, _) = read_reply(r).await?;
                Ok(if code == 250 {
                    Seen::Accepted
                } else {
                    Seen::Refused(code)
                })
            }
            .await;
            let seen = result.unwrap_or_else(|_| {
                conn = None;
                Seen::Broken
            });
            let done = seen == Seen::Accepted;
            if matches!(seen, Seen::Refused(421)) {
                conn = None;
            }
            let refused = !done;
            attempts.push(Attempt {
                token: token.clone(),
                attempt,
                seen,
                instance,
            });
            if done {
                break;
            }
            if refused {
                tokio::time::sleep(pause).await;
            }
        }
    }
    if let Some((mut r, mut w, _)) = conn {
        let _ = w.write_all(b"QUIT\r\n").await;
        let _ = read_reply(&mut r).await;
    }
    attempts
}

/// A session from `source` to `addr`, past the banner and EHLO; the
/// banner's first word names the instance.
pub async fn open(
    addr: SocketAddr,
    source: std::net::IpAddr,
) -> std::io::Result<(
    tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    String,
)> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let (code, banner) = read_reply(&mut r).await?;
    if code != 220 {
        return Err(std::io::Error::other(banner));
    }
    let instance = banner
        .get(4..)
        .and_then(|b| b.split_whitespace().next())
        .unwrap_or("")
        .to_owned();
    w.write_all(b"EHLO client.test\r\n").await?;
    let (code, text) = read_reply(&mut r).await?;
    if code != 250 {
        return Err(std::io::Error::other(text));
    }
    Ok((r, w, instance))
}

/// The `X-Attempt` of each message in the stream, with how often it is there.
pub async fn attempts_in_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for m in stream_messages(js, stream).await {
        let text = String::from_utf8_lossy(&m.payload);
        let attempt = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Attempt: "))
            .unwrap_or("?")
            .to_owned();
        *counts.entry(attempt).or_insert(0) += 1;
    }
    counts
}

/// Checks the cluster's promise and returns the duplicates: every attempt
/// a client saw 250 for is in the stream exactly once, no attempt is there
/// twice, every token was accepted once by the client; extra copies exist
/// only for attempts that were not acknowledged to the client.
pub fn check_no_loss(
    attempts: &[Attempt],
    in_stream: &std::collections::HashMap<String, usize>,
) -> usize {
    let mut accepted_tokens = std::collections::HashSet::new();
    let mut duplicates = 0;
    for a in attempts {
        let count = in_stream.get(&a.attempt).copied().unwrap_or(0);
        match a.seen {
            Seen::Accepted => {
                assert_eq!(
                    count, 1,
                    "accepted attempt {} is in the stream {count} times",
                    a.attempt
                );
                assert!(
                    accepted_tokens.insert(a.token.clone()),
                    "token {} accepted twice",
                    a.token
                );
            }
            _ => {
                assert!(count <= 1, "attempt {} stored {count} times", a.attempt);
                duplicates += count;
            }
        }
    }
    let tokens: std::collections::HashSet<_> = attempts.iter().map(|a| a.token.clone()).collect();
    assert_eq!(
        accepted_tokens.len(),
        tokens.len(),
        "some message was never accepted"
    );
    let known: std::collections::HashSet<_> = attempts.iter().map(|a| a.attempt.as_str()).collect();
    for key in in_stream.keys() {
        assert!(
            known.contains(key.as_str()),
            "unknown message {key} in the stream"
        );
    }
    duplicates
}

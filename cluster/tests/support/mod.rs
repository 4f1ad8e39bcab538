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
        let proc = Proc::spawn("nats-server", Command::new("nats-server").arg("-c").arg(conf));
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

//! Runs the example servers as the programs they are: each is spawned on a
//! free port (`--listen 127.0.0.1:0`, the bound address read back from its
//! first stdout line) and driven by a real SMTP client (lettre), or by a
//! scripted TCP conversation where timing matters.
//!
//! The example binaries are found next to this test's binary
//! (`target/<profile>/examples/`). A plain `cargo test` builds them first;
//! with `cargo test --test examples` alone they may be missing or stale,
//! so run `cargo build --examples` before.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtpsrv::email::Email;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc as tokio_mpsc;

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- harness

/// A running example; killed when dropped so no test leaves one behind.
struct Example {
    child: Child,
    addrs: Vec<SocketAddr>,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Example {
    /// Starts `name` with `args` and waits for its `listeners` bound addresses.
    fn start(name: &str, args: &[&str], cwd: Option<&Path>, listeners: usize) -> Example {
        Example::spawn(name, command(name, args, cwd), listeners)
    }

    /// As [`Example::start`], for a command made by the caller (e.g. the
    /// example run under `taskset`).
    fn spawn(name: &str, mut command: Command, listeners: usize) -> Example {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut example = Example {
            child,
            addrs: Vec::new(),
            stdout,
            stderr,
        };
        while example.addrs.len() < listeners {
            let line = example.next_line();
            let addr = line
                .strip_prefix("listening on ")
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("{name}: expected `listening on ADDR`, got {line:?}"));
            example.addrs.push(addr.parse().unwrap());
        }
        example
    }

    fn port(&self) -> u16 {
        self.addrs[0].port()
    }

    fn next_line(&mut self) -> String {
        match self.stdout.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => panic!("no stdout line ({e}); stderr:\n{}", self.stderr()),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The log once `needle` occurs in it `count` times, or as it is after
    /// [`WAIT`]: a line logged before a reply may reach the pipe after it.
    fn log_with(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.stderr();
            if log.matches(needle).count() >= count || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.child).unwrap_or_else(|| {
            panic!(
                "still running after {WAIT:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        })
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(name: &str, args: &[&str], cwd: Option<&Path>) -> Command {
    let mut cmd = Command::new(example_binary(name));
    cmd.args(args);
    in_test_environment(cmd, cwd)
}

/// Sets up `cmd` (an example, or a program that runs one) as every
/// example runs in these tests.
fn in_test_environment(mut cmd: Command, cwd: Option<&Path>) -> Command {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info");
    // The webhook is on 127.0.0.1: no proxy from the environment may sit
    // in between.
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"] {
        cmd.env_remove(var);
    }
    cmd.env_remove("all_proxy").env_remove("ALL_PROXY");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd
}

fn example_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo test` (which builds the examples) or `cargo build --examples`",
                path.display()
            )
        });
    // `cargo test --test examples` alone does not rebuild examples: catch
    // an edited example running as its old binary.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let source = examples.join(format!("{name}.rs"));
    let in_dir = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    };
    let mut sources = match in_dir(&examples.join(name)) {
        files if files.is_empty() => vec![source],
        files => files,
    };
    // The shared modules count for the examples that include them.
    let shares = |source: &PathBuf| {
        std::fs::read_to_string(source).is_ok_and(|text| text.contains("common/mod.rs"))
    };
    if sources.iter().any(shares) {
        sources.extend(in_dir(&examples.join("common")));
    }
    for source in sources {
        let edited = std::fs::metadata(&source).and_then(|m| m.modified());
        assert!(
            edited.is_ok_and(|edited| edited <= built),
            "{} is older than {}: run `cargo build --examples` (or a plain `cargo test`)",
            path.display(),
            source.display()
        );
    }
    path
}

fn lines(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn collect(mut err: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

fn wait_for_exit(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A lettre client for 127.0.0.1:`port` without TLS.
fn client(port: u16) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .hello_name(ClientId::Domain("client.example".into()))
        .timeout(Some(WAIT))
}

fn insecure_tls() -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap()
}

fn envelope(from: Option<&str>, to: &[&str]) -> Envelope {
    Envelope::new(
        from.map(|f| f.parse().unwrap()),
        to.iter().map(|t| t.parse().unwrap()).collect(),
    )
    .unwrap()
}

async fn send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    envelope: &Envelope,
    raw: &[u8],
) -> Result<Response, SmtpError> {
    // lettre always ends the data with CRLF.CRLF, so a message that
    // already ends with a line break would arrive with one more: hand it
    // the message without its last one, and exactly `raw` arrives.
    let raw = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    tokio::time::timeout(WAIT, transport.send_raw(envelope, raw))
        .await
        .expect("SMTP conversation timed out")
}

fn code(err: &SmtpError) -> String {
    err.status().map(|c| c.to_string()).unwrap_or_default()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Splits a stored message into its `Return-Path` line, its `Received`
/// field (folded lines joined) and the rest, read with the wire's CRLF
/// line ends whether the file has LF (mailsink's default) or CRLF.
fn split_trace(stored: &[u8]) -> (String, String, Vec<u8>) {
    let wire = crlf(stored);
    let line_end = |from: usize| {
        from + wire[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a line end")
            + 2
    };
    let first_end = line_end(0);
    let mut end = first_end;
    loop {
        end = line_end(end);
        if wire.get(end) != Some(&b'\t') {
            break;
        }
    }
    let text = |range: std::ops::Range<usize>| String::from_utf8(wire[range].to_vec()).unwrap();
    (
        text(0..first_end),
        text(first_end..end),
        wire[end..].to_vec(),
    )
}

/// `bytes` with every LF not preceded by CR made CR LF.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn write_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

// ---------------------------------------------------------------- mailsink

const ONE: &[u8] = b"From: Ann <ann@example.org>\r\n\
To: Bob <bob@example.com>\r\n\
Subject: one\r\n\
Message-ID: <one@example.org>\r\n\
\r\n\
.a line that starts with a dot\r\n\
caf\xc3\xa9 and a bare \tTAB\r\n\
\r\n\
last line\r\n";

const TWO: &[u8] = b"From: MAILER-DAEMON@example.org\r\n\
Subject: two\r\n\
\r\n\
a bounce, to two recipients\r\n";

#[tokio::test]
async fn mailsink_stores_messages_byte_exact_behind_trace_headers() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let md = maildir.to_str().unwrap();
    let sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            md,
            "--hostname",
            "mx.test",
            "--keep-wire-bytes",
        ],
        None,
        1,
    );
    let transport = client(sink.port()).build();
    let before = SystemTime::now();

    let reply = send(
        &transport,
        &envelope(Some("ann@example.org"), &["bob@example.com"]),
        ONE,
    )
    .await
    .unwrap();
    assert_eq!(reply.code().to_string(), "250");
    assert!(reply.first_line().unwrap().contains("queued as"));
    send(
        &transport,
        &envelope(None, &["bob@example.com", "carol@example.com"]),
        TWO,
    )
    .await
    .unwrap();

    assert!(files(&maildir.join("tmp")).is_empty(), "tmp/ must be empty");
    assert!(maildir.join("cur").is_dir());
    let stored = files(&maildir.join("new"));
    assert_eq!(stored.len(), 2, "one file per message: {stored:?}");
    let mut stored: Vec<Vec<u8>> = stored.iter().map(|p| std::fs::read(p).unwrap()).collect();
    stored.sort_by_key(|bytes| !bytes.ends_with(ONE));

    // One recipient: named in `for`, and the message is byte-exact.
    let (return_path, received, rest) = split_trace(&stored[0]);
    assert_eq!(return_path, "Return-Path: <ann@example.org>\r\n");
    assert!(
        received.starts_with(
            "Received: from client.example ([127.0.0.1])\r\n\tby mx.test (smtpsrv) with ESMTP id "
        ),
        "{received}"
    );
    assert!(
        received.contains("\r\n\tfor <bob@example.com>; "),
        "{received}"
    );
    assert_eq!(rest, ONE);

    // Null sender, two recipients: `<>`, and nobody named in `for`.
    let (return_path, received, rest) = split_trace(&stored[1]);
    assert_eq!(return_path, "Return-Path: <>\r\n");
    assert!(!received.contains("for <"), "{received}");
    assert_eq!(rest, TWO);

    // A standard parser reads the Received field, date included.
    let email = Email::parse(stored[0].clone()).unwrap();
    let trace = email.message().received().expect("Received parsed");
    assert_eq!(format!("{:?}", trace.with), "Some(ESMTP)");
    assert_eq!(trace.for_.as_deref(), Some("bob@example.com"));
    assert_eq!(trace.from_ip, Some("127.0.0.1".parse().unwrap()));
    let date = trace.date.expect("Received date parsed");
    let stamped = date.to_timestamp();
    let earlier = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (earlier - 1..=earlier + 60).contains(&stamped),
        "Received date {date} is not now"
    );

    // One log line per message.
    let log = sink.log_with(" stored ", 2);
    assert_eq!(log.matches(" stored ").count(), 2, "log:\n{log}");
    assert!(
        log.contains(&format!(" size={} ", ONE.len())),
        "log:\n{log}"
    );
}

#[tokio::test]
async fn mailsink_discard_stores_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let sink = Example::start(
        "mailsink",
        &["--listen", "127.0.0.1:0", "--discard"],
        Some(cwd.path()),
        1,
    );
    let reply = send(
        &client(sink.port()).build(),
        &envelope(Some("ann@example.org"), &["bob@example.com"]),
        ONE,
    )
    .await
    .unwrap();
    assert!(reply.is_positive());
    assert!(
        files(cwd.path()).is_empty(),
        "--discard must not write anything"
    );
}

/// The threads of process `pid`, from `/proc/PID/status`.
fn thread_count(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line["Threads:".len()..].trim().parse().unwrap()
}

/// With the default `--threads 0` on one CPU (here: `taskset` to the first
/// CPU this test may use), mailsink runs on the current-thread runtime, as
/// with `--threads 1`: a thread of its own, no worker to wake per message.
/// Given more CPUs it runs worker threads.
#[tokio::test]
async fn mailsink_default_threads_is_one_thread_on_one_cpu() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let first_cpu = allowed.split([',', '-']).next().unwrap();
    let mut taskset = Command::new("taskset");
    taskset
        .args(["-c", first_cpu])
        .arg(example_binary("mailsink"))
        .args(["--listen", "127.0.0.1:0", "--discard"]);
    let pinned = Example::spawn("mailsink", in_test_environment(taskset, None), 1);
    let reply = send(
        &client(pinned.port()).build(),
        &envelope(Some("ann@example.org"), &["bob@example.com"]),
        ONE,
    )
    .await
    .unwrap();
    assert!(reply.is_positive());
    assert_eq!(thread_count(pinned.child.id()), 1, "one CPU, one thread");

    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        let free = Example::start(
            "mailsink",
            &["--listen", "127.0.0.1:0", "--discard"],
            None,
            1,
        );
        assert!(thread_count(free.child.id()) > 2, "a worker per CPU");
    }
}

#[tokio::test]
async fn mailsink_require_auth_refuses_anonymous_mail() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            maildir.to_str().unwrap(),
            "--user",
            "ann:s3cret:with:colons",
            "--user",
            "bob:other",
            "--allow-insecure-auth",
            "--require-auth",
        ],
        None,
        1,
    );
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);

    let anonymous = send(&client(sink.port()).build(), &env, ONE)
        .await
        .unwrap_err();
    assert_eq!(code(&anonymous), "530", "{anonymous}");

    let wrong = client(sink.port())
        .credentials(Credentials::new("ann".into(), "s3cret".into()))
        .build();
    let refused = send(&wrong, &env, ONE).await.unwrap_err();
    assert_eq!(code(&refused), "535", "{refused}");
    assert!(files(&maildir.join("new")).is_empty());

    let right = client(sink.port())
        .credentials(Credentials::new("ann".into(), "s3cret:with:colons".into()))
        .build();
    send(&right, &env, ONE).await.unwrap();
    let stored = files(&maildir.join("new"));
    assert_eq!(stored.len(), 1);
    let bytes = std::fs::read(&stored[0]).unwrap();
    let (_, received, rest) = split_trace(&bytes);
    assert!(received.contains(" with ESMTPA id "), "{received}");
    assert_eq!(rest, ONE);
}

#[tokio::test]
async fn mailsink_starttls_and_implicit_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path());
    let maildir = dir.path().join("md");
    let sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--require-tls",
            "--user",
            "ann:secret",
            "--maildir",
            maildir.to_str().unwrap(),
        ],
        None,
        2,
    );
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);

    let plain = send(&client(sink.port()).build(), &env, ONE)
        .await
        .unwrap_err();
    assert_eq!(code(&plain), "530", "--require-tls: {plain}");

    let starttls = client(sink.port())
        .tls(Tls::Required(insecure_tls()))
        .build();
    send(&starttls, &env, ONE).await.unwrap();
    let implicit = client(sink.addrs[1].port())
        .tls(Tls::Wrapper(insecure_tls()))
        .credentials(Credentials::new("ann".into(), "secret".into()))
        .build();
    send(&implicit, &env, TWO).await.unwrap();

    let stored = files(&maildir.join("new"));
    assert_eq!(stored.len(), 2);
    let mut protocols: Vec<String> = stored
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            let (_, received, _) = split_trace(&bytes);
            assert!(
                received.contains("\t(using TLSv1.3 with cipher "),
                "{received}"
            );
            let with = received.split(" with ").nth(2).unwrap();
            with.split(' ').next().unwrap().to_owned()
        })
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["ESMTPS", "ESMTPSA"]);
}

/// A scripted SMTP client over a blocking socket.
struct Conversation {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conversation {
    fn open(addr: SocketAddr) -> Conversation {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut conversation = Conversation {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert!(conversation.reply().starts_with("220"));
        conversation
    }

    /// The last line of the next reply (empty at end of stream).
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    /// Every line of the next reply.
    fn full_reply(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return text;
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return text;
            }
        }
    }

    fn send(&mut self, data: &str) {
        self.writer.write_all(data.as_bytes()).unwrap();
    }

    fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }
}

#[test]
fn mailsink_finishes_the_transaction_in_progress_on_sigterm_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let mut sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            maildir.to_str().unwrap(),
        ],
        None,
        1,
    );
    let mut busy = Conversation::open(sink.addrs[0]);
    assert!(busy.command("EHLO client.example").starts_with("250"));
    assert!(
        busy.command("MAIL FROM:<ann@example.org>")
            .starts_with("250")
    );
    assert!(busy.command("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(busy.command("DATA").starts_with("354"));
    busy.send("Subject: half way\r\n\r\nfirst half\r\n");
    let mut idle = Conversation::open(sink.addrs[0]);
    assert!(idle.command("EHLO idle.example").starts_with("250"));

    sink.signal("TERM");
    assert!(
        idle.reply().starts_with("421"),
        "idle sessions are told to go"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "must wait for the transaction"
    );

    busy.send("second half\r\n.\r\n");
    let accepted = busy.reply();
    assert!(accepted.starts_with("250"), "{accepted}");
    let status = sink.wait();
    assert!(status.success(), "{status}; stderr:\n{}", sink.stderr());

    let stored = files(&maildir.join("new"));
    assert_eq!(stored.len(), 1);
    let bytes = std::fs::read(&stored[0]).unwrap();
    let (_, _, rest) = split_trace(&bytes);
    assert_eq!(
        rest,
        b"Subject: half way\r\n\r\nfirst half\r\nsecond half\r\n"
    );
}

#[test]
fn mailsink_refuses_invalid_policy_options_at_startup() {
    for args in [
        &["--spf", "maybe"][..],
        &["--rate-limit", "0"],
        &["--dns-server", "localhost"],
    ] {
        let mut child = command("mailsink", args, None)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = wait_for_exit(&mut child).expect("must exit at startup");
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}

/// A tiny DNS server on 127.0.0.1 for the SPF tests: TXT records from
/// `txt` (owner, value), NXDOMAIN for other names. Nothing reaches the
/// network.
async fn dns_server(txt: &[(&str, &str)]) -> SocketAddr {
    use smtpsrv_middleware::mail_auth::hickory_resolver::proto::op::{Message, ResponseCode};
    use smtpsrv_middleware::mail_auth::hickory_resolver::proto::rr::rdata::{SOA, TXT};
    use smtpsrv_middleware::mail_auth::hickory_resolver::proto::rr::{
        Name, RData, Record, RecordType,
    };

    let zone: Vec<(String, String)> = txt
        .iter()
        .map(|(owner, value)| (owner.to_ascii_lowercase(), value.to_string()))
        .collect();
    let answer = move |query: &[u8]| -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let question = request.queries.first()?.clone();
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(question.clone());
        let owner = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let values: Vec<&String> = zone
            .iter()
            .filter(|(name, _)| *name == owner)
            .map(|(_, value)| value)
            .collect();
        if values.is_empty() {
            response.metadata.response_code = ResponseCode::NXDomain;
        } else if question.query_type() == RecordType::TXT {
            for value in values {
                let data = RData::TXT(TXT::new(vec![value.clone()]));
                response.add_answer(Record::from_rdata(question.name().clone(), 60, data));
            }
        }
        if response.answers.is_empty() {
            // Negative answers carry an SOA for their TTL (RFC 2308).
            let name = |s: &str| Name::from_ascii(s).unwrap();
            let soa = SOA::new(
                name("ns.test."),
                name("hostmaster.test."),
                1,
                60,
                60,
                60,
                60,
            );
            response.add_authority(Record::from_rdata(name("test."), 60, RData::SOA(soa)));
        }
        response.to_vec().ok()
    };
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            if let Some(reply) = answer(&buf[..n]) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

/// SPF policies of the test domains for a client on 127.0.0.1.
const SPF_ZONE: &[(&str, &str)] = &[
    ("allowed.example", "v=spf1 ip4:127.0.0.1 -all"),
    ("forbidden.example", "v=spf1 ip4:192.0.2.1 -all"),
];

/// Starts mailsink with `--spf mode`, asking only the test DNS server.
async fn spf_sink(mode: &str, maildir: &Path) -> Example {
    let dns = dns_server(SPF_ZONE).await.to_string();
    Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            maildir.to_str().unwrap(),
            "--hostname",
            "mx.test",
            "--spf",
            mode,
            "--dns-server",
            &dns,
        ],
        None,
        1,
    )
}

/// The stored messages' `Received-SPF` fields (folded lines joined),
/// checking that each sits between `Return-Path` and `Received` and that
/// the client's bytes follow the trace fields untouched.
fn received_spf_fields(maildir: &Path, message: &[u8]) -> Vec<String> {
    let mut fields: Vec<String> = files(&maildir.join("new"))
        .iter()
        .map(|path| {
            let bytes = crlf(&std::fs::read(path).unwrap());
            let text = std::str::from_utf8(&bytes).unwrap();
            let (return_path, rest) = text.split_once("\r\n").unwrap();
            assert!(return_path.starts_with("Return-Path: <"), "{text}");
            assert!(rest.starts_with("Received-SPF: "), "{text}");
            let end = rest.find("\r\nReceived: from ").unwrap();
            assert!(rest.ends_with(std::str::from_utf8(message).unwrap()));
            rest[..end].replace("\r\n", "")
        })
        .collect();
    fields.sort();
    fields
}

#[tokio::test]
async fn mailsink_spf_reject_refuses_a_failing_sender_and_tags_a_passing_one() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let sink = spf_sink("reject", &maildir).await;
    let transport = client(sink.port()).build();

    let refused = send(
        &transport,
        &envelope(Some("ann@forbidden.example"), &["bob@example.com"]),
        ONE,
    )
    .await
    .unwrap_err();
    assert_eq!(code(&refused), "550", "{refused}");
    assert!(refused.to_string().contains("5.7.23"), "{refused}");
    assert!(files(&maildir.join("new")).is_empty());

    let reply = send(
        &transport,
        &envelope(Some("ann@allowed.example"), &["bob@example.com"]),
        ONE,
    )
    .await
    .unwrap();
    assert_eq!(reply.code().to_string(), "250");
    let fields = received_spf_fields(&maildir, ONE);
    assert_eq!(fields.len(), 1);
    assert!(fields[0].starts_with("Received-SPF: pass "), "{fields:?}");
    assert!(fields[0].contains("client-ip=127.0.0.1;"), "{fields:?}");
}

#[tokio::test]
async fn mailsink_spf_tag_stores_the_result_and_refuses_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let sink = spf_sink("tag", &maildir).await;
    let transport = client(sink.port()).build();
    for from in ["ann@allowed.example", "ann@forbidden.example"] {
        let reply = send(&transport, &envelope(Some(from), &["bob@example.com"]), ONE)
            .await
            .unwrap();
        assert_eq!(reply.code().to_string(), "250", "{from}");
    }
    let fields = received_spf_fields(&maildir, ONE);
    assert_eq!(fields.len(), 2);
    assert!(fields[0].starts_with("Received-SPF: fail "), "{fields:?}");
    assert!(fields[0].contains("ann@forbidden.example"), "{fields:?}");
    assert!(fields[1].starts_with("Received-SPF: pass "), "{fields:?}");
    assert!(fields[1].contains("ann@allowed.example"), "{fields:?}");
}

#[tokio::test]
async fn mailsink_rate_limit_refuses_the_third_message_in_a_minute() {
    let sink = Example::start(
        "mailsink",
        &["--listen", "127.0.0.1:0", "--discard", "--rate-limit", "2"],
        None,
        1,
    );
    let transport = client(sink.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);
    for n in 1..=2 {
        let reply = send(&transport, &env, ONE).await.unwrap();
        assert_eq!(reply.code().to_string(), "250", "message {n}");
    }
    let limited = send(&transport, &env, ONE).await.unwrap_err();
    assert_eq!(code(&limited), "450", "{limited}");
    assert!(limited.is_transient());
    assert!(limited.to_string().contains("4.7.0"), "{limited}");
}

// ---------------------------------------------------------------- Maildir readers

#[path = "../examples/common/maildir.rs"]
mod maildir;

/// The LF form of a CRLF message, as a Maildir reader expects it.
fn lf(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes()
}

/// The `,S=` (and `,W=`) sizes in a Maildir++ file name.
fn maildir_sizes(path: &Path) -> (u64, Option<u64>) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let field = |key: &str| {
        name.split(',')
            .find_map(|f| f.strip_prefix(key))
            .map(|v| v.split(':').next().unwrap().parse::<u64>().unwrap())
    };
    (field("S=").expect("a ,S= size"), field("W="))
}

#[tokio::test]
async fn maildir_converts_crlf_to_lf_across_every_chunk_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let md = maildir::Maildir::create(&dir.path().join("md"), "host,with:odd/chars").unwrap();
    // CR LF, a bare CR, a bare CR before CR LF, CR LF at both ends.
    let wire: &[u8] = b"\r\nSubject: a\rb\r\r\n\r\nbody\r\nend\r\n";
    let expected: &[u8] = b"\nSubject: a\rb\r\n\nbody\nend\n";
    let mut names = Vec::new();
    for cut in 0..=wire.len() {
        let mut file = md.begin().unwrap();
        file.write(&wire[..cut]).unwrap();
        file.write(&wire[cut..]).unwrap();
        names.push(file.commit().unwrap());
    }
    // One byte at a time: every CR ends a chunk.
    let mut file = md.begin().unwrap();
    for byte in wire {
        file.write(std::slice::from_ref(byte)).unwrap();
    }
    names.push(file.commit().unwrap());
    // A message ending in a bare CR keeps it.
    let mut file = md.begin().unwrap();
    file.write(b"x\r").unwrap();
    let bare = file.commit().unwrap();

    let new = dir.path().join("md").join("new");
    for name in &names {
        assert!(
            !name.contains(':') && name.contains("\\054with\\072odd\\057"),
            "{name}"
        );
        let path = new.join(name);
        assert_eq!(std::fs::read(&path).unwrap(), expected, "{name}");
        let (size, virtual_size) = maildir_sizes(&path);
        assert_eq!(size, expected.len() as u64, "{name}");
        assert_eq!(
            virtual_size,
            Some(wire.len() as u64 - 1),
            "{name}: LFs counted as CRLF"
        );
    }
    assert_eq!(std::fs::read(new.join(&bare)).unwrap(), b"x\r");
    // Dropped without commit: nothing in tmp/, nothing in new/.
    let mut file = md.begin().unwrap();
    file.write(b"half").unwrap();
    assert_eq!(files(&dir.path().join("md").join("tmp")).len(), 1);
    drop(file);
    assert!(files(&dir.path().join("md").join("tmp")).is_empty());
    assert_eq!(files(&new).len(), names.len() + 1);
}

/// A Dovecot IMAP server on 127.0.0.1 over one Maildir, with a throw-away
/// configuration and user (`test`, password `secret`); killed on drop.
struct Dovecot {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Dovecot {
    fn start(maildir: &Path, dir: &Path) -> Dovecot {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        // Dovecot never reads mail as root: as root, hand the Maildir to
        // `nobody`; otherwise everything runs as the current user.
        let (mail_uid, mail_gid, users) = if uid == "0" {
            for path in [dir, maildir] {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .unwrap();
            }
            chown_tree(maildir, 65534, 65534);
            ("65534".to_owned(), "65534".to_owned(), String::new())
        } else {
            let name = id("-un");
            let users = format!("default_login_user = {name}\ndefault_internal_user = {name}\n");
            (uid, gid, users)
        };
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        if mail_uid == "65534" {
            chown_tree(&home, 65534, 65534);
        }
        let root = dir.display();
        let config = format!(
            "base_dir = {root}/run\n\
             state_dir = {root}/state\n\
             log_path = {root}/dovecot.log\n\
             instance_name = smtpsrv-test-{port}\n\
             protocols = imap\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain\n\
             first_valid_uid = {mail_uid}\n\
             mail_location = maildir:{maildir}\n\
             {users}\
             passdb {{\n  driver = static\n  args = password=secret\n}}\n\
             userdb {{\n  driver = static\n  args = uid={mail_uid} gid={mail_gid} home={home}\n}}\n\
             service imap-login {{\n  chroot =\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n",
            maildir = maildir.display(),
            home = home.display(),
        );
        let conf = dir.join("dovecot.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dovecot ({e}): install the Debian package dovecot-imapd")
            });
        let dovecot = Dovecot {
            child,
            port,
            log: dir.join("dovecot.log"),
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen: {}",
                dovecot.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dovecot
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every message of INBOX over IMAP, in order: its RFC822.SIZE and bytes.
    fn fetch_all(&self) -> Vec<(u64, Vec<u8>)> {
        let mut imap = Imap::open(self.port);
        imap.command("LOGIN test secret");
        let select = imap.command("SELECT INBOX");
        let exists: usize = select
            .iter()
            .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
            .unwrap_or_else(|| panic!("no EXISTS in {select:?}; log:\n{}", self.log()));
        (1..=exists).map(|n| imap.fetch(n)).collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// A minimal IMAP4rev1 client: tagged commands, literals in FETCH.
struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Imap {
    fn open(port: u16) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut imap = Imap {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            tag: 0,
        };
        let greeting = imap.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        imap
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert!(
            self.reader.read_line(&mut line).unwrap() > 0,
            "IMAP server closed"
        );
        line.trim_end_matches("\r\n").to_owned()
    }

    fn send(&mut self, command: &str) -> String {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        write!(self.writer, "{tag} {command}\r\n").unwrap();
        tag
    }

    /// The untagged lines of the answer; panics unless it ends in OK.
    fn command(&mut self, command: &str) -> Vec<String> {
        let tag = self.send(command);
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let line = self.line();
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                assert!(
                    status.starts_with("OK"),
                    "{command}: {line} after {lines:?}"
                );
                return lines;
            }
            lines.push(line);
        }
        panic!("{command}: no tagged answer");
    }

    fn fetch(&mut self, n: usize) -> (u64, Vec<u8>) {
        let tag = self.send(&format!("FETCH {n} (RFC822.SIZE BODY.PEEK[])"));
        let head = self.line();
        let size = head
            .split("RFC822.SIZE ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no RFC822.SIZE in {head}"));
        let literal: usize = head
            .rsplit_once('{')
            .and_then(|(_, rest)| rest.strip_suffix('}')?.parse().ok())
            .unwrap_or_else(|| panic!("no literal in {head}"));
        let mut body = vec![0; literal];
        self.reader.read_exact(&mut body).unwrap();
        for _ in 0..10 {
            let line = self.line();
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                assert!(status.starts_with("OK"), "FETCH {n}: {line}");
                return (size, body);
            }
        }
        panic!("FETCH {n}: no tagged answer");
    }
}

/// BDAT with BODY=BINARYMIME: CR LF, bare CR and bare LF are data here.
const BINARY: &[u8] = b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\n\x02\r\x03\n\x04\xff\r\n";

#[tokio::test]
async fn mailsink_maildir_is_stored_with_lf_and_read_back_by_dovecot_over_imap() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            maildir.to_str().unwrap(),
            "--hostname",
            "mx.test",
        ],
        None,
        1,
    );
    let transport = client(sink.port()).build();
    let to_bob = envelope(Some("ann@example.org"), &["bob@example.com"]);
    let sent = [ONE, MULTIPART, TWO];
    for message in sent {
        let reply = send(&transport, &to_bob, message).await.unwrap();
        assert_eq!(reply.code().to_string(), "250");
    }
    let mut smtp = Conversation::open(sink.addrs[0]);
    assert!(smtp.command("EHLO client.example").starts_with("250"));
    assert!(
        smtp.command("MAIL FROM:<ann@example.org> BODY=BINARYMIME")
            .starts_with("250")
    );
    assert!(smtp.command("RCPT TO:<bob@example.com>").starts_with("250"));
    smtp.send(&format!("BDAT {} LAST\r\n", BINARY.len()));
    smtp.writer.write_all(BINARY).unwrap();
    let reply = smtp.reply();
    assert!(reply.starts_with("250"), "{reply}");
    drop(sink);

    // On disk: LF line ends and Maildir++ sizes; the binary message as sent.
    let stored = files(&maildir.join("new"));
    assert_eq!(stored.len(), 4, "{stored:?}");
    let mut texts = 0;
    for path in &stored {
        let bytes = std::fs::read(path).unwrap();
        let (size, virtual_size) = maildir_sizes(path);
        assert_eq!(size, bytes.len() as u64, "{}", path.display());
        let (_, _, rest) = split_trace(&bytes);
        if rest.starts_with(b"Subject: binary") {
            assert_eq!(virtual_size, None, "a wire-bytes file has no ,W=");
            assert_eq!(
                &bytes[bytes.len() - BINARY.len()..],
                BINARY,
                "BINARYMIME is byte-exact"
            );
            continue;
        }
        texts += 1;
        assert!(
            !bytes.windows(2).any(|w| w == b"\r\n"),
            "CRLF left in {}",
            path.display()
        );
        assert_eq!(virtual_size, Some(crlf(&bytes).len() as u64));
        assert!(
            sent.iter().any(|m| bytes.ends_with(&lf(m))),
            "{}",
            path.display()
        );
    }
    assert_eq!(texts, 3);

    // Dovecot reads each message back with its size; IMAP speaks CRLF.
    let dovecot = Dovecot::start(&maildir, dir.path());
    let fetched = dovecot.fetch_all();
    assert_eq!(fetched.len(), 4, "log:\n{}", dovecot.log());
    for message in sent {
        let (size, body) = fetched
            .iter()
            .find(|(_, body)| body.ends_with(message))
            .unwrap_or_else(|| {
                panic!(
                    "not fetched: {}; log:\n{}",
                    String::from_utf8_lossy(message),
                    dovecot.log()
                )
            });
        assert_eq!(*size, body.len() as u64);
        let (return_path, received, rest) = split_trace(body);
        assert_eq!(return_path, "Return-Path: <ann@example.org>\r\n");
        assert!(received.contains("by mx.test (smtpsrv)"), "{received}");
        assert_eq!(rest, message);
    }
    assert!(
        fetched
            .iter()
            .any(|(_, body)| body.windows(6).any(|w| w == b"\x01\r\n\x02\r\x03")),
        // (Dovecot shows a NUL as 0x80 outside FETCH BINARY.)
        "binary message fetched"
    );
    let log = dovecot.log();
    assert!(!log.contains("Error"), "dovecot log:\n{log}");
}

// ---------------------------------------------------------------- metrics

/// One GET over HTTP/1.1: the status line and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `series` (`name{labels}` exactly as rendered,
/// or a bare name), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn mailsink_metrics_count_the_traffic_that_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            dir.path().join("md").to_str().unwrap(),
            "--user",
            "ann:secret",
            "--allow-insecure-auth",
            "--metrics",
            "127.0.0.1:0",
        ],
        None,
        1,
    );
    let line = sink.next_line();
    let endpoint: SocketAddr = line
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("expected `metrics on ADDR`, got {line:?}"))
        .parse()
        .unwrap();
    let (status, body) = http_get(endpoint, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    assert!(http_get(endpoint, "/nope").0.contains("404"));

    // Two messages on two authenticated connections...
    let transport = client(sink.port())
        .credentials(Credentials::new("ann".into(), "secret".into()))
        .build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);
    for message in [ONE, TWO] {
        send(&transport, &env, message).await.unwrap();
    }
    // ...and one conversation with a failed AUTH, a bad command, a refused
    // recipient and QUIT.
    let mut smtp = Conversation::open(sink.addrs[0]);
    assert!(smtp.command("EHLO client.example").starts_with("250"));
    let bad_auth = smtp.command(&format!("AUTH PLAIN {}", BASE64.encode("\0ann\0wrong")));
    assert!(bad_auth.starts_with("535"), "{bad_auth}");
    assert!(smtp.command("FROB").starts_with("500"));
    assert!(smtp.command("RCPT TO:<bob@example.com>").starts_with("503"));
    assert!(smtp.command("QUIT").starts_with("221"));
    drop(smtp);

    let listener = format!("listener=\"{}\",tls=\"false\"", sink.addrs[0]);
    // The sessions' ends are counted as they close: wait for the third.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = http_get(endpoint, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if sample(&metrics, "smtp_sessions_ended_total{reason=\"quit\"}") >= 3.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "sessions not ended:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&metrics, series), value, "{series} in\n{metrics}");
    };
    expect(&format!("smtp_connections_total{{{listener}}}"), 3.0);
    expect(&format!("smtp_connections_open{{{listener}}}"), 0.0);
    expect("smtp_sessions_ended_total{reason=\"quit\"}", 3.0);
    expect("smtp_auth_total{result=\"success\"}", 2.0);
    expect("smtp_auth_total{result=\"failure\"}", 1.0);
    expect("smtp_commands_total{verb=\"MAIL\"}", 2.0);
    expect("smtp_commands_total{verb=\"DATA\"}", 2.0);
    expect("smtp_commands_total{verb=\"QUIT\"}", 3.0);
    expect("smtp_commands_total{verb=\"invalid\"}", 1.0);
    // 535, 500 and 503.
    expect("smtp_replies_total{class=\"5xx\"}", 3.0);
    expect("smtp_replies_total{class=\"3xx\"}", 2.0);
    expect(
        "smtp_messages_total{result=\"accepted\",status=\"2.0.0\"}",
        2.0,
    );
    expect("smtp_stage_duration_seconds_count{stage=\"data\"}", 2.0);
    expect("smtp_memory_budget_in_use_bytes", 0.0);
    assert!(
        sample(&metrics, "smtp_memory_budget_limit_bytes") > 0.0,
        "{metrics}"
    );
    let received = sample(&metrics, "smtp_received_bytes_total");
    let bodies = (ONE.len() + TWO.len()) as f64;
    assert!(
        received > bodies && received < bodies + 2000.0,
        "{received} bytes received for {bodies} bytes of messages"
    );
}

/// The series the first metrics test cannot reach: TLS handshakes that
/// worked and failed (STARTTLS and implicit), connections by listener and
/// TLS, and sessions ended by each reason but shutdown.
#[tokio::test]
async fn mailsink_metrics_count_tls_handshakes_and_how_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path());
    let mut sink = Example::start(
        "mailsink",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--discard",
            "--command-timeout",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ],
        None,
        2,
    );
    let line = sink.next_line();
    let endpoint: SocketAddr = line
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("expected `metrics on ADDR`, got {line:?}"))
        .parse()
        .unwrap();
    let (plain, implicit) = (sink.addrs[0], sink.addrs[1]);
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);

    // Two messages over TLS that worked: STARTTLS, then implicit TLS.
    let starttls = client(plain.port())
        .tls(Tls::Required(insecure_tls()))
        .build();
    send(&starttls, &env, ONE).await.unwrap();
    let wrapped = client(implicit.port())
        .tls(Tls::Wrapper(insecure_tls()))
        .build();
    send(&wrapped, &env, TWO).await.unwrap();

    // Two handshakes that failed: garbage after STARTTLS's 220, and
    // garbage on the implicit-TLS port.
    let mut smtp = Conversation::open(plain);
    assert!(smtp.command("EHLO client.example").starts_with("250"));
    assert!(smtp.command("STARTTLS").starts_with("220"));
    smtp.send("this is not a ClientHello\r\n\r\n");
    assert!(!smtp.reply().starts_with("2"), "the session went on");
    drop(smtp);
    let mut raw = TcpStream::connect(implicit).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(b"EHLO this is not a ClientHello\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest); // an alert, or nothing; then EOF
    drop(raw);

    // A silent client (timed out after 1 s), one that keeps erring (the
    // error limit), one that leaves without QUIT.
    let mut silent = Conversation::open(plain);
    let bye = silent.reply();
    assert!(bye.starts_with("421 4.4.2"), "{bye}");
    let mut erring = Conversation::open(plain);
    let mut last = String::new();
    for _ in 0..100 {
        last = erring.command("FROB");
        if !last.starts_with("500") {
            break;
        }
    }
    assert!(last.starts_with("421"), "{last}");
    let mut leaving = Conversation::open(plain);
    assert!(leaving.command("EHLO client.example").starts_with("250"));
    drop(leaving);

    // The sessions' ends are counted as they close: wait for all six.
    let ended = |metrics: &str| -> f64 {
        [
            "quit",
            "timeout",
            "error_limit",
            "server_closed",
            "peer_gone",
            "shutdown",
        ]
        .iter()
        .map(|r| {
            sample(
                metrics,
                &format!("smtp_sessions_ended_total{{reason=\"{r}\"}}"),
            )
        })
        .sum()
    };
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = http_get(endpoint, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if ended(&metrics) >= 6.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "sessions not ended:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&metrics, series), value, "{series} in\n{metrics}");
    };
    expect("smtp_tls_handshakes_total{result=\"ok\"}", 2.0);
    expect("smtp_tls_handshakes_total{result=\"failed\"}", 2.0);
    // On the plain listener every session starts without TLS (STARTTLS
    // comes later); on the implicit one only a completed handshake makes
    // a session.
    let on = |addr: SocketAddr, tls: bool| format!("listener=\"{addr}\",tls=\"{tls}\"");
    expect(
        &format!("smtp_connections_total{{{}}}", on(plain, false)),
        5.0,
    );
    expect(
        &format!("smtp_connections_total{{{}}}", on(implicit, true)),
        1.0,
    );
    expect(
        &format!("smtp_connections_open{{{}}}", on(plain, false)),
        0.0,
    );
    expect(
        &format!("smtp_connections_open{{{}}}", on(implicit, true)),
        0.0,
    );
    expect("smtp_sessions_ended_total{reason=\"quit\"}", 2.0);
    expect("smtp_sessions_ended_total{reason=\"server_closed\"}", 1.0);
    expect("smtp_sessions_ended_total{reason=\"timeout\"}", 1.0);
    expect("smtp_sessions_ended_total{reason=\"error_limit\"}", 1.0);
    expect("smtp_sessions_ended_total{reason=\"peer_gone\"}", 1.0);
    expect("smtp_commands_total{verb=\"STARTTLS\"}", 2.0);
    expect(
        "smtp_messages_total{result=\"accepted\",status=\"2.0.0\"}",
        2.0,
    );
}

// ---------------------------------------------------------------- systemd

/// mailsink started by `systemd-socket-activate` as systemd starts it: the
/// listening socket passed as fd 3 (LISTEN_FDS, LISTEN_PID,
/// LISTEN_FDNAMES), readiness and stopping reported to NOTIFY_SOCKET.
#[tokio::test]
async fn mailsink_systemd_serves_the_passed_socket_and_notifies_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let maildir = dir.path().join("md");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(addr.to_string())
        .arg("--fdname=smtp")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg("RUST_LOG=info")
        .arg(example_binary("mailsink"))
        .args(["--systemd", "--hostname", "mx.test", "--maildir"])
        .arg(&maildir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start systemd-socket-activate ({e}): install systemd"));
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut sink = Example {
        child,
        addrs: Vec::new(),
        stdout,
        stderr,
    };
    // systemd-socket-activate starts the service at the first connection;
    // that client is then served by mailsink from the socket's queue.
    let deadline = Instant::now() + WAIT;
    let mut smtp = loop {
        if TcpStream::connect(addr).is_ok() {
            break Conversation::open(addr);
        }
        assert!(
            Instant::now() < deadline,
            "not listening: {}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = sink.next_line();
    assert_eq!(line, format!("listening on {addr} (from systemd)"));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 sent");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    // A transaction in progress when SIGTERM comes still finishes.
    assert!(smtp.command("EHLO client.example").starts_with("250"));
    assert!(
        smtp.command("MAIL FROM:<ann@example.org>")
            .starts_with("250")
    );
    assert!(smtp.command("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(smtp.command("DATA").starts_with("354"));
    sink.signal("TERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1 sent");
    assert_eq!(&buf[..n], b"STOPPING=1");
    smtp.send("Subject: activated\r\n\r\nby systemd\r\n.\r\n");
    let reply = smtp.reply();
    assert!(reply.starts_with("250"), "{reply}");
    // Then the session is closed: shutting down.
    let closed = smtp.reply();
    assert!(closed.is_empty() || closed.starts_with("421"), "{closed}");
    let status = sink.wait();
    assert!(status.success(), "{status:?}; stderr:\n{}", sink.stderr());
    let stored = files(&maildir.join("new"));
    assert_eq!(stored.len(), 1);
    let (_, _, rest) = split_trace(&std::fs::read(&stored[0]).unwrap());
    assert_eq!(rest, b"Subject: activated\r\n\r\nby systemd\r\n");
}

#[test]
fn mailsink_systemd_without_a_passed_socket_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = command("mailsink", &["--systemd", "--discard"], Some(dir.path()))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no socket passed (LISTEN_FDS)"), "{stderr}");
}

// ---------------------------------------------------------------- smtp2http

/// What the test webhook answers, request after request.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never answer (the client's timeout must fire).
    Hang,
}

struct Posted {
    head: String,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1: records each request and answers
/// from `script` (then 200).
async fn webhook(script: &[Answer]) -> (SocketAddr, tokio_mpsc::UnboundedReceiver<Posted>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio_mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 65536];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf[head_end..head_end + length].to_vec();
                let _ = tx.send(Posted { head, body });
                let answer = script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(Answer::Status(200));
                match answer {
                    Answer::Status(code) => {
                        let response = format!(
                            "HTTP/1.1 {code} Test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    }
                    Answer::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    (addr, rx)
}

const MULTIPART: &[u8] = b"From: \"Ann Example\" <ann@example.org>\r\n\
To: Bob <bob@example.com>, carol@example.com\r\n\
Cc: dave@example.net\r\n\
Reply-To: replies@example.org\r\n\
Subject: =?UTF-8?Q?Caf=C3=A9?= report\r\n\
Date: Tue, 01 Jul 2025 10:52:37 +0000\r\n\
Message-ID: <report-1@example.org>\r\n\
In-Reply-To: <question@example.com>\r\n\
References: <start@example.com> <question@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/related; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Plain text body.\r\n\
--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>HTML body <img src=\"cid:logo@example.org\"></p>\r\n\
--alt--\r\n\
--inner\r\n\
Content-Type: image/png\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-ID: <logo@example.org>\r\n\
Content-Disposition: inline\r\n\
\r\n\
iVBORw0KGgo=\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"report.pdf\"\r\n\
Content-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQgZmFrZQ==\r\n\
--outer--\r\n";

#[tokio::test]
async fn smtp2http_posts_the_message_as_json() {
    let (hook, mut posted) = webhook(&[]).await;
    let url = format!("http://{hook}/hook");
    let bridge = Example::start(
        "smtp2http",
        &["--listen", "127.0.0.1:0", "--url", &url, "--raw"],
        None,
        1,
    );
    let env = envelope(
        Some("bounce@example.org"),
        &["bob@example.com", "eve@example.com"],
    );
    let reply = send(&client(bridge.port()).build(), &env, MULTIPART)
        .await
        .unwrap();
    assert_eq!(reply.code().to_string(), "250");

    let request = tokio::time::timeout(WAIT, posted.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        request.head.starts_with("POST /hook HTTP/1.1\r\n"),
        "{}",
        request.head
    );
    assert!(
        request
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        request.head
    );
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();

    assert_eq!(json["id"], "report-1@example.org");
    assert_eq!(json["subject"], "Café report");
    assert_eq!(json["date"], "2025-07-01T10:52:37Z");
    assert_eq!(
        json["references"],
        serde_json::json!(["start@example.com", "question@example.com"])
    );
    assert!(json.get("spf").is_none(), "no SPF layer yet: no spf field");
    assert_eq!(json["body"]["text"], "Plain text body.");
    assert!(
        json["body"]["html"]
            .as_str()
            .unwrap()
            .contains("<p>HTML body"),
        "{}",
        json["body"]
    );

    let addresses = &json["addresses"];
    assert_eq!(
        addresses["from"],
        serde_json::json!({"name": "Ann Example", "address": "ann@example.org"})
    );
    assert_eq!(
        addresses["to"],
        serde_json::json!([
            {"name": "Bob", "address": "bob@example.com"},
            {"address": "carol@example.com"}
        ])
    );
    assert_eq!(
        addresses["cc"],
        serde_json::json!([{"address": "dave@example.net"}])
    );
    assert_eq!(
        addresses["reply_to"],
        serde_json::json!([{"address": "replies@example.org"}])
    );
    assert_eq!(
        addresses["in_reply_to"],
        serde_json::json!(["question@example.com"])
    );
    for empty in ["bcc", "resent_to", "resent_cc", "resent_bcc"] {
        assert_eq!(addresses[empty], serde_json::json!([]), "{empty}");
    }
    assert!(addresses["resent_from"].is_null());

    let envelope = &json["envelope"];
    assert_eq!(envelope["from"], "bounce@example.org");
    assert_eq!(
        envelope["to"],
        serde_json::json!(["bob@example.com", "eve@example.com"])
    );
    assert_eq!(envelope["helo"], "client.example");
    assert_eq!(envelope["tls"], false);
    assert!(
        envelope["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let attachments = json["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    assert_eq!(attachments[0]["filename"], "report.pdf");
    assert_eq!(attachments[0]["content_type"], "application/pdf");
    let data = BASE64
        .decode(attachments[0]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, b"%PDF-1.4 fake");

    let embedded = json["embedded_files"].as_array().unwrap();
    assert_eq!(embedded.len(), 1, "{embedded:?}");
    assert_eq!(embedded[0]["cid"], "logo@example.org");
    assert_eq!(embedded[0]["content_type"], "image/png");
    let data = BASE64
        .decode(embedded[0]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, b"\x89PNG\r\n\x1a\n");

    let raw = BASE64.decode(json["raw"].as_str().unwrap()).unwrap();
    assert_eq!(raw, MULTIPART);
}

#[tokio::test]
async fn smtp2http_answers_451_when_the_webhook_fails_and_any_2xx_is_success() {
    let (hook, mut posted) =
        webhook(&[Answer::Status(500), Answer::Status(204), Answer::Hang]).await;
    let url = format!("http://{hook}/");
    let bridge = Example::start(
        "smtp2http",
        &[
            "--listen",
            "127.0.0.1:0",
            "--url",
            &url,
            "--timeout",
            "1",
            "--retry-for",
            "0",
        ],
        None,
        1,
    );
    let transport = client(bridge.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);

    let failed = send(&transport, &env, ONE).await.unwrap_err();
    assert_eq!(code(&failed), "451", "HTTP 500: {failed}");
    assert!(failed.is_transient());

    let reply = send(&transport, &env, ONE).await.unwrap();
    assert_eq!(reply.code().to_string(), "250", "HTTP 204 is success");

    let timed_out = send(&transport, &env, ONE).await.unwrap_err();
    assert_eq!(code(&timed_out), "451", "webhook timeout: {timed_out}");
    assert!(timed_out.to_string().contains("timed out"), "{timed_out}");

    // Without --raw the raw message is not sent.
    let first = posted.recv().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert!(json.get("raw").is_none());
    assert_eq!(
        json["envelope"]["to"],
        serde_json::json!(["bob@example.com"])
    );
}

/// Go-style spellings of alash3al/smtp2http's flags, each with its meaning.
#[tokio::test]
async fn smtp2http_accepts_the_go_flags_with_their_meaning() {
    let (hook, mut posted) = webhook(&[]).await;
    let url = format!("http://{hook}/in");
    let webhook_flag = format!("-webhook={url}");
    let bridge = Example::start(
        "smtp2http",
        &[
            "-listen=127.0.0.1:0",
            &webhook_flag,
            "-name",
            "gw.example",
            "--msglimit",
            "2000",
            "-timeout.read=2",
            "--timeout.write",
            "2",
            "-domain=example.com",
        ],
        None,
        1,
    );
    let addr = bridge.addrs[0];
    let mut smtp = Conversation::open(addr);
    smtp.send("EHLO client.example\r\n");
    let ehlo = smtp.full_reply();
    assert!(ehlo.starts_with("250-gw.example"), "{ehlo}");
    assert!(ehlo.contains("SIZE 2000"), "{ehlo}");
    assert!(
        smtp.command("MAIL FROM:<ann@example.org>")
            .starts_with("250")
    );
    let other = smtp.command("RCPT TO:<bob@example.net>");
    assert!(other.starts_with("550 5.7.1"), "other domain: {other}");
    let ours = smtp.command("RCPT TO:<bob@EXAMPLE.com>");
    assert!(ours.starts_with("250"), "own domain: {ours}");
    assert!(smtp.command("DATA").starts_with("354"));
    smtp.send(&format!(
        "Subject: big\r\n\r\n{}\r\n.\r\n",
        "x".repeat(3000)
    ));
    let big = smtp.reply();
    assert!(big.starts_with("552"), "over --msglimit: {big}");
    // -timeout.read=2: a silent client is dropped after about 2 s.
    let started = Instant::now();
    let timeout = smtp.reply();
    assert!(timeout.starts_with("421 4.4.2"), "{timeout}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let transport = client(bridge.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);
    let reply = send(&transport, &env, ONE).await.unwrap();
    assert_eq!(reply.code().to_string(), "250");
    let request = tokio::time::timeout(WAIT, posted.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(request.head.starts_with("POST /in "), "{}", request.head);
}

/// smtp2http on a free port, posting to `url` and retrying a failing
/// webhook for `retry_for` seconds.
fn smtp2http_posting_to(url: &str, retry_for: &str) -> Example {
    Example::start(
        "smtp2http",
        &[
            "--listen",
            "127.0.0.1:0",
            "--webhook",
            url,
            "--retry-for",
            retry_for,
        ],
        None,
        1,
    )
}

#[tokio::test]
async fn smtp2http_retries_a_failing_webhook_with_backoff_then_delivers() {
    let (hook, mut posted) = webhook(&[Answer::Status(500), Answer::Status(503)]).await;
    let url = format!("http://{hook}/");
    let bridge = smtp2http_posting_to(&url, "10");
    let transport = client(bridge.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);
    let started = Instant::now();
    let reply = send(&transport, &env, ONE).await.unwrap();
    assert_eq!(
        reply.code().to_string(),
        "250",
        "third attempt answered 200"
    );
    // Pauses of 0.5 s then 1 s between the three attempts.
    assert!(started.elapsed() >= Duration::from_millis(1500));
    for attempt in 0..3 {
        let request = tokio::time::timeout(WAIT, posted.recv())
            .await
            .unwrap()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(json["id"], "one@example.org", "attempt {attempt}");
    }
    assert!(posted.try_recv().is_err(), "no fourth POST");
}

#[tokio::test]
async fn smtp2http_answers_451_after_retrying_an_unreachable_webhook_for_the_bounded_time() {
    // A port nobody listens on: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let bridge = smtp2http_posting_to(&url, "2");
    let transport = client(bridge.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);
    let started = Instant::now();
    let failed = send(&transport, &env, ONE).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(code(&failed), "451", "{failed}");
    assert!(failed.to_string().contains("unreachable"), "{failed}");
    // Attempts at 0, 0.5 and 1.5 s; the next (3.5 s) is past the 2 s bound.
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let log = bridge.log_with("retrying", 2);
    assert_eq!(log.matches("retrying").count(), 2, "{log}");
}

#[tokio::test]
async fn smtp2http_does_not_retry_a_4xx_refusal() {
    let (hook, mut posted) = webhook(&[Answer::Status(403), Answer::Status(429)]).await;
    let url = format!("http://{hook}/");
    let bridge = smtp2http_posting_to(&url, "10");
    let transport = client(bridge.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);

    let refused = send(&transport, &env, ONE).await.unwrap_err();
    assert_eq!(code(&refused), "554", "HTTP 403: {refused}");
    assert!(refused.is_permanent());
    assert!(refused.to_string().contains("5.7.1"), "{refused}");

    let busy = send(&transport, &env, ONE).await.unwrap_err();
    assert_eq!(code(&busy), "451", "HTTP 429: {busy}");
    assert!(busy.is_transient());

    let reply = send(&transport, &env, ONE).await.unwrap();
    assert_eq!(reply.code().to_string(), "250");
    // Exactly one POST per message: the refusals were not retried.
    for _ in 0..3 {
        tokio::time::timeout(WAIT, posted.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(posted.try_recv().is_err(), "a 4xx was retried");
}

#[tokio::test]
async fn smtp2http_metrics_count_messages_by_enhanced_code_and_hook_replies() {
    let (hook, _posted) = webhook(&[Answer::Status(200), Answer::Status(403)]).await;
    let url = format!("http://{hook}/");
    let mut bridge = Example::start(
        "smtp2http",
        &[
            "--listen",
            "127.0.0.1:0",
            "--webhook",
            &url,
            "--domain",
            "example.com",
            "--metrics",
            "127.0.0.1:0",
        ],
        None,
        1,
    );
    let line = bridge.next_line();
    let endpoint: SocketAddr = line.strip_prefix("metrics on ").unwrap().parse().unwrap();
    let transport = client(bridge.port()).build();
    let env = envelope(Some("ann@example.org"), &["bob@example.com"]);
    send(&transport, &env, ONE).await.unwrap();
    let refused = send(&transport, &env, ONE).await.unwrap_err();
    assert_eq!(code(&refused), "554");
    let elsewhere = envelope(Some("ann@example.org"), &["bob@example.net"]);
    let relay = send(&transport, &elsewhere, ONE).await.unwrap_err();
    assert_eq!(code(&relay), "550");

    let (_, metrics) = http_get(endpoint, "/metrics");
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&metrics, series), value, "{series} in\n{metrics}");
    };
    expect(
        "smtp_messages_total{result=\"accepted\",status=\"2.0.0\"}",
        1.0,
    );
    expect(
        "smtp_messages_total{result=\"refused\",status=\"5.7.1\"}",
        1.0,
    );
    expect(
        "smtp_hook_replies_total{stage=\"rcpt\",result=\"accepted\"}",
        2.0,
    );
    expect(
        "smtp_hook_replies_total{stage=\"rcpt\",result=\"refused\"}",
        1.0,
    );
    expect("smtp_stage_duration_seconds_count{stage=\"rcpt\"}", 3.0);
    expect("smtp_stage_duration_seconds_count{stage=\"data\"}", 2.0);
}

// ---------------------------------------------------------------- header_layer

#[tokio::test]
async fn header_layer_stamps_every_message() {
    let mut example = Example::start(
        "header_layer",
        &["--listen", "127.0.0.1:0", "--hostname", "mx.test"],
        None,
        1,
    );
    send(
        &client(example.port()).build(),
        &envelope(Some("ann@example.org"), &["bob@example.com"]),
        ONE,
    )
    .await
    .unwrap();
    let line = example.next_line();
    assert!(line.starts_with("message "), "{line}");
    assert_eq!(example.next_line(), "X-Received-By: mx.test");
    assert_eq!(example.next_line(), "From: Ann <ann@example.org>");
}

// ---------------------------------------------------------------- submission

/// Starts the submission server with a fresh certificate, accounts `ann`
/// (may send as ann@example.com and from example.org) and `bob` (as
/// bob@example.com), a Maildir in `dir` unless `--discard`, and `extra`
/// options.
fn submission(dir: &Path, extra: &[&str]) -> Example {
    let (cert, key) = write_certificate(dir);
    let maildir = dir.join("md");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "submit.test",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--user",
        "ann:ann-secret",
        "--user",
        "bob:bob-secret",
        "--allow",
        "ann=ann@example.com",
        "--allow",
        "ann=@example.org",
        "--allow",
        "bob=bob@example.com",
    ];
    if !extra.contains(&"--discard") {
        args.extend(["--maildir", maildir.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    Example::start("submission", &args, None, 1)
}

/// A STARTTLS client, logged in as `user` when given.
fn submitter(port: u16, user: Option<&str>) -> AsyncSmtpTransport<Tokio1Executor> {
    let builder = client(port).tls(Tls::Required(insecure_tls()));
    match user {
        Some(name) => builder
            .credentials(Credentials::new(name.into(), format!("{name}-secret")))
            .build(),
        None => builder.build(),
    }
}

#[tokio::test]
async fn submission_refuses_mail_before_starttls_and_before_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = submission(dir.path(), &[]);

    // Plain text: nothing but EHLO, NOOP, QUIT and STARTTLS, and no AUTH
    // offered (a password must never cross the network in clear).
    let mut plain = Conversation::open(server.addrs[0]);
    plain.send("EHLO client.example\r\n");
    let ehlo = plain.full_reply();
    assert!(
        ehlo.contains("250-STARTTLS") || ehlo.contains("250 STARTTLS"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let mail = plain.command("MAIL FROM:<ann@example.com>");
    assert!(mail.starts_with("530 5.7.0 "), "{mail}");
    let auth = plain.command("AUTH PLAIN AGFubgBhbm4tc2VjcmV0");
    assert!(auth.starts_with("530 5.7.0 "), "{auth}");

    // TLS without AUTH.
    let env = envelope(Some("ann@example.com"), &["bob@example.net"]);
    let anonymous = send(&submitter(server.port(), None), &env, ONE)
        .await
        .unwrap_err();
    assert_eq!(code(&anonymous), "530", "{anonymous}");
    assert!(anonymous.to_string().contains("5.7.0"), "{anonymous}");
    assert!(files(&dir.path().join("md").join("new")).is_empty());
}

#[tokio::test]
async fn submission_delivers_permitted_senders_and_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = submission(dir.path(), &[]);
    let ann = submitter(server.port(), Some("ann"));
    let to = ["carol@example.net"];

    for from in ["ann@example.com", "news@EXAMPLE.org"] {
        let reply = send(&ann, &envelope(Some(from), &to), ONE).await.unwrap();
        assert_eq!(reply.code().to_string(), "250", "{from}");
    }
    for from in ["bob@example.com", "ann@example.net"] {
        let refused = send(&ann, &envelope(Some(from), &to), ONE)
            .await
            .unwrap_err();
        assert_eq!(code(&refused), "553", "{from}: {refused}");
        assert!(refused.to_string().contains("5.7.1"), "{refused}");
    }
    let bob = submitter(server.port(), Some("bob"));
    send(&bob, &envelope(Some("bob@example.com"), &to), ONE)
        .await
        .unwrap();

    let stored = files(&dir.path().join("md").join("new"));
    assert_eq!(stored.len(), 3);
    for path in stored {
        let bytes = std::fs::read(path).unwrap();
        let (_, received, rest) = split_trace(&bytes);
        assert!(
            received.contains("by submit.test (smtpsrv) with ESMTPSA id "),
            "{received}"
        );
        assert_eq!(rest, ONE);
    }
}

#[tokio::test]
async fn submission_metrics_count_logins_refused_senders_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = submission(dir.path(), &["--discard", "--metrics", "127.0.0.1:0"]);
    let line = server.next_line();
    let endpoint: SocketAddr = line
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("expected `metrics on ADDR`, got {line:?}"))
        .parse()
        .unwrap();
    let (status, body) = http_get(endpoint, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    // Ann sends one message as herself and tries one as bob (553 at MAIL).
    let ann = submitter(server.port(), Some("ann"));
    let to = ["carol@example.net"];
    send(&ann, &envelope(Some("ann@example.com"), &to), ONE)
        .await
        .unwrap();
    let refused = send(&ann, &envelope(Some("bob@example.com"), &to), ONE)
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "553", "{refused}");

    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = http_get(endpoint, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if sample(&metrics, "smtp_sessions_ended_total{reason=\"quit\"}") >= 2.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "sessions not ended:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&metrics, series), value, "{series} in\n{metrics}");
    };
    expect("smtp_tls_handshakes_total{result=\"ok\"}", 2.0);
    expect("smtp_auth_total{result=\"success\"}", 2.0);
    expect(
        "smtp_hook_replies_total{stage=\"mail\",result=\"accepted\"}",
        1.0,
    );
    expect(
        "smtp_hook_replies_total{stage=\"mail\",result=\"refused\"}",
        1.0,
    );
    expect(
        "smtp_messages_total{result=\"accepted\",status=\"2.0.0\"}",
        1.0,
    );
    expect("smtp_stage_duration_seconds_count{stage=\"mail\"}", 2.0);
    expect("smtp_stage_duration_seconds_count{stage=\"data\"}", 1.0);
}

#[tokio::test]
async fn submission_rate_limits_each_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = submission(dir.path(), &["--rate-limit", "2", "--discard"]);
    let ann = submitter(server.port(), Some("ann"));
    let env = envelope(Some("ann@example.com"), &["carol@example.net"]);
    for n in 1..=2 {
        let reply = send(&ann, &env, ONE).await.unwrap();
        assert_eq!(reply.code().to_string(), "250", "message {n}");
    }
    let limited = send(&ann, &env, ONE).await.unwrap_err();
    assert_eq!(code(&limited), "450", "{limited}");
    assert!(limited.to_string().contains("4.7.0"), "{limited}");

    // Same address, another login: its own quota.
    let bob = submitter(server.port(), Some("bob"));
    let env = envelope(Some("bob@example.com"), &["carol@example.net"]);
    let reply = send(&bob, &env, ONE).await.unwrap();
    assert_eq!(reply.code().to_string(), "250");
    assert!(
        !dir.path().join("md").exists(),
        "--discard must not create the Maildir"
    );
}

//! Spilled and streaming message bodies over real sockets on 127.0.0.1.
//!
//! Every protocol test runs in both modes: buffered with a small spill
//! threshold (so large messages go through the temporary file) and
//! streaming (the handler reads the body while it arrives). The handler
//! here records what it read: the bytes of a complete message, or the
//! error its body yielded. A test's spill directory is its own and must be
//! empty when its messages are gone.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, Pki, TestServer, step};
use futures_util::StreamExt;
use smtpsrv::tower::service_fn;
use smtpsrv::{BoxError, Builder, Context, LineEndings, Reply, Server};
use tokio::io::{AsyncRead, AsyncWrite};

/// The memory test runs alone; the others beside each other.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Buffered,
    Streaming,
}

const MODES: [Mode; 2] = [Mode::Buffered, Mode::Streaming];

/// What the handler saw of one message.
#[derive(Debug, Clone)]
struct Seen {
    result: Result<Vec<u8>, String>,
    spilled: bool,
    streaming: bool,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }

    /// Waits (bounded) until `n` messages were seen: a streaming handler
    /// may still be finishing when the client has its reply.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        step(async {
            loop {
                let all = self.all();
                if all.len() >= n {
                    return all;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

/// Reads the whole body chunk by chunk; 250 for a complete one.
async fn read_all(ctx: Context, log: Log) -> Result<Reply, BoxError> {
    let spilled = ctx.body().is_spilled();
    let streaming = ctx.body().is_streaming();
    let mut chunks = ctx.body().chunks();
    let mut got = Vec::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(e) => {
                log.push(Seen {
                    result: Err(format!("{e:?}")),
                    spilled,
                    streaming,
                });
                return Err(e.into());
            }
        }
    }
    log.push(Seen {
        result: Ok(got),
        spilled,
        streaming,
    });
    Ok(Reply::ok())
}

struct Setup {
    server: TestServer,
    log: Log,
    spill_dir: tempfile::TempDir,
}

fn builder(mode: Mode, spill_dir: &Path) -> Builder {
    Server::builder()
        .hostname("mx.test")
        .spill_threshold(64 * 1024)
        .spill_dir(spill_dir)
        .streaming(mode == Mode::Streaming)
}

async fn start(mode: Mode, configure: impl FnOnce(Builder) -> Builder) -> Setup {
    start_counting(mode, configure, false).await
}

/// With `count_only`, the handler keeps no bytes (for huge messages).
async fn start_counting(
    mode: Mode,
    configure: impl FnOnce(Builder) -> Builder,
    count_only: bool,
) -> Setup {
    let spill_dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let handler_log = log.clone();
    let service = service_fn(move |ctx: Context| {
        let log = handler_log.clone();
        async move {
            if !count_only {
                return read_all(ctx, log).await;
            }
            let mut chunks = ctx.body().chunks();
            let mut n = 0;
            while let Some(chunk) = chunks.next().await {
                match chunk {
                    Ok(c) => n += c.len(),
                    Err(e) => {
                        log.push(Seen {
                            result: Err(format!("{e:?}")),
                            spilled: false,
                            streaming: true,
                        });
                        return Err(e.into());
                    }
                }
            }
            log.push(Seen {
                result: Ok(n.to_string().into_bytes()),
                spilled: ctx.body().is_spilled(),
                streaming: ctx.body().is_streaming(),
            });
            Ok(Reply::ok())
        }
    });
    let server = TestServer::serve(configure(builder(mode, spill_dir.path())), service).await;
    Setup {
        server,
        log,
        spill_dir,
    }
}

impl Setup {
    /// The spill directory is empty once no message is in flight.
    async fn assert_no_temp_files(&self) {
        step(async {
            loop {
                let n = std::fs::read_dir(self.spill_dir.path()).unwrap().count();
                if n == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) {
    c.ehlo().await;
    c.cmd("MAIL FROM:<ann@example.org>").await.expect(250, "");
    c.cmd("RCPT TO:<bob@example.net>").await.expect(250, "");
}

/// A message of `len` octets: header, then lines of varied printable text,
/// some starting with a dot.
fn message(len: usize, seed: u8) -> Vec<u8> {
    let mut m = format!("Subject: test {seed}\r\n\r\n").into_bytes();
    let mut i = 0usize;
    while m.len() < len {
        let line_len = 1 + (i * 37 + seed as usize) % 120;
        if i.is_multiple_of(7) {
            m.push(b'.');
        }
        m.extend((0..line_len).map(|j| b'a' + ((i + j) % 26) as u8));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

fn dot_stuff(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 50 + 5);
    let mut line_start = true;
    for &b in m {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Sends `wire` in pieces (the server reads while we write).
async fn send_pieces<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, wire: &[u8]) {
    for piece in wire.chunks(1 << 20) {
        c.send(piece).await;
    }
}

#[tokio::test]
async fn messages_arrive_byte_exact_in_memory_spilled_and_streaming() {
    let _shared = SERIAL.read().await;
    for mode in MODES {
        let s = start(mode, |b| b).await;
        let mut c = s.server.connect().await;
        let sizes = [10, 60 * 1024, 70 * 1024, 3 * 1024 * 1024 + 17];
        for (n, &size) in sizes.iter().enumerate() {
            session(&mut c).await;
            c.cmd("DATA").await.expect(354, "");
            let m = message(size, n as u8);
            send_pieces(&mut c, &dot_stuff(&m)).await;
            c.reply().await.expect(250, "2.0.0");
            let seen = s.log.wait_for(n + 1).await;
            let last = seen.last().unwrap();
            assert_eq!(last.result.as_deref(), Ok(&m[..]), "{mode:?} size {size}");
            assert_eq!(last.streaming, mode == Mode::Streaming);
            // A message that arrives in one read may stay in memory a
            // little past the threshold; a large one is always spilled.
            if m.len() > 1024 * 1024 || mode == Mode::Streaming || m.len() <= 64 * 1024 {
                assert_eq!(last.spilled, mode == Mode::Buffered && m.len() > 64 * 1024);
            }
        }
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;
    }
}

#[tokio::test]
async fn a_quiet_spell_after_a_message_keeps_the_session_and_its_timeout() {
    // After a message the connection keeps its message-sized read buffer
    // for a moment (the next message reuses it), then gives it back while
    // the client stays quiet. Neither step may lose input or a deadline:
    // messages after short and long pauses (40 KiB: more than one read,
    // the buffer grown past its first size) arrive whole, and silence
    // after them is still cut off at the command timeout.
    let _shared = SERIAL.read().await;
    for mode in MODES {
        let s = start(mode, |b| b.command_timeout(Duration::from_millis(700))).await;
        let mut c = s.server.connect().await;
        for (n, pause) in [0u64, 10, 300, 0].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            session(&mut c).await;
            c.cmd("DATA").await.expect(354, "");
            let m = message(40 * 1024, n as u8);
            send_pieces(&mut c, &dot_stuff(&m)).await;
            c.reply().await.expect(250, "2.0.0");
            let seen = s.log.wait_for(n + 1).await;
            let last = seen.last().unwrap();
            assert_eq!(last.result.as_deref(), Ok(&m[..]), "{mode:?} message {n}");
        }
        let silent = std::time::Instant::now();
        c.reply().await.expect(421, "4.4.2");
        let waited = silent.elapsed();
        assert!(
            waited >= Duration::from_millis(600),
            "{mode:?}: closed too early: {waited:?}"
        );
        c.expect_eof().await;
    }
}

#[tokio::test]
async fn bdat_chunks_arrive_byte_exact_and_rset_between_chunks_aborts() {
    let _shared = SERIAL.read().await;
    for mode in MODES {
        let s = start(mode, |b| b).await;
        let mut c = s.server.connect().await;
        session(&mut c).await;
        let m = message(300 * 1024, 3);
        let (a, b) = m.split_at(100 * 1024);
        c.send(format!("BDAT {}\r\n", a.len())).await;
        c.send(a).await;
        c.reply().await.expect(250, "");
        c.send(format!("BDAT {} LAST\r\n", b.len())).await;
        c.send(b).await;
        c.reply().await.expect(250, "2.0.0");
        let seen = s.log.wait_for(1).await;
        assert_eq!(seen[0].result.as_deref(), Ok(&m[..]), "{mode:?}");

        // RSET after a first chunk: never a message.
        session(&mut c).await;
        c.send(format!("BDAT {}\r\n", a.len())).await;
        c.send(a).await;
        c.reply().await.expect(250, "");
        c.cmd("RSET").await.expect(250, "");
        c.cmd("NOOP").await.expect(250, "");
        if mode == Mode::Streaming {
            let seen = s.log.wait_for(2).await;
            assert_eq!(seen[1].result, Err("Aborted".into()));
        } else {
            assert_eq!(s.log.all().len(), 1);
        }
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;
    }
}

/// Bare line endings that some receivers take as the end of the data.
const SMUGGLING_SEPARATORS: &[&str] = &["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r.\r\n"];

#[tokio::test]
async fn smuggling_is_rejected_whole_in_both_modes() {
    let _shared = SERIAL.read().await;
    for mode in MODES {
        let s = start(mode, |b| b).await;
        for sep in SMUGGLING_SEPARATORS {
            let mut c = s.server.connect().await;
            session(&mut c).await;
            c.cmd("DATA").await.expect(354, "");
            // Past the spill threshold before the separator, so the spilled
            // and streamed paths are the ones that see it.
            let mut wire = message(100 * 1024, 1);
            wire.extend_from_slice(
                format!(
                    "hello{sep}MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n\
                     Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n"
                )
                .as_bytes(),
            );
            c.send(&wire).await;
            c.reply().await.expect(550, "5.5.2");
            c.reply().await.expect(221, "");
        }
        if mode == Mode::Streaming {
            let seen = s.log.wait_for(SMUGGLING_SEPARATORS.len()).await;
            assert!(
                seen.iter()
                    .all(|s| s.result == Err("BareLineEnding".into())),
                "{seen:?}"
            );
        } else {
            assert!(s.log.all().is_empty());
        }
        s.assert_no_temp_files().await;
    }
}

#[tokio::test]
async fn oversize_messages_are_drained_with_552_and_the_session_stays_in_sync() {
    let _shared = SERIAL.read().await;
    for mode in MODES {
        let s = start(mode, |b| b.max_message_bytes(256 * 1024)).await;
        let mut c = s.server.connect().await;
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        let big = message(1024 * 1024, 2);
        send_pieces(&mut c, &dot_stuff(&big)).await;
        c.reply().await.expect(552, "5.3.4");
        // BDAT over the limit too.
        session(&mut c).await;
        c.send(format!("BDAT {} LAST\r\n", big.len())).await;
        send_pieces(&mut c, &big).await;
        c.reply().await.expect(552, "5.3.4");
        // The next message in the same session goes through.
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        let small = message(1000, 3);
        c.send(dot_stuff(&small)).await;
        c.reply().await.expect(250, "");
        let seen = s
            .log
            .wait_for(if mode == Mode::Streaming { 3 } else { 1 })
            .await;
        assert_eq!(seen.last().unwrap().result.as_deref(), Ok(&small[..]));
        if mode == Mode::Streaming {
            assert_eq!(seen[0].result, Err("TooLarge".into()));
            assert_eq!(seen[1].result, Err("TooLarge".into()));
        }
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;
    }
}

#[tokio::test]
async fn starttls_then_a_large_message_in_both_modes() {
    let _shared = SERIAL.read().await;
    let pki = Pki::new();
    for mode in MODES {
        let s = start(mode, |b| b.tls(pki.server_tls())).await;
        let mut plain = s.server.connect().await;
        plain.ehlo().await;
        let mut c = plain.starttls(&pki).await;
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        let m = message(2 * 1024 * 1024, 4);
        send_pieces(&mut c, &dot_stuff(&m)).await;
        c.reply().await.expect(250, "");
        let seen = s.log.wait_for(1).await;
        assert_eq!(seen[0].result.as_deref(), Ok(&m[..]), "{mode:?}");
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;
    }
}

/// A 200 MiB message against a 64 MiB limit: drained to its end, 552, the
/// next command answered in order, nothing on disk, memory not grown by
/// anything like the message.
#[tokio::test]
async fn a_200_mib_message_over_a_64_mib_limit_is_drained_with_552() {
    let _alone = SERIAL.write().await;
    for mode in MODES {
        let s = start_counting(mode, |b| b.max_message_bytes(64 * 1024 * 1024), true).await;
        let mut c = s.server.connect().await;
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        let before = rss_kib();
        let line = [b'x'; 1022];
        let mut piece = Vec::with_capacity(1 << 20);
        while piece.len() < (1 << 20) {
            piece.extend_from_slice(&line);
            piece.extend_from_slice(b"\r\n");
        }
        let mut peak = 0;
        for i in 0..200 {
            c.send(&piece).await;
            if i % 20 == 0 {
                let spill: u64 = std::fs::read_dir(s.spill_dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().metadata().unwrap().len())
                    .sum();
                assert!(spill <= 65 * 1024 * 1024, "spill file at {spill} octets");
                peak = peak.max(rss_kib());
            }
        }
        c.send(b".\r\n").await;
        c.reply().await.expect(552, "5.3.4");
        c.cmd("NOOP").await.expect(250, "");
        if mode == Mode::Streaming {
            let seen = s.log.wait_for(1).await;
            assert_eq!(seen[0].result, Err("TooLarge".into()));
        } else {
            assert!(s.log.all().is_empty());
        }
        // The test's own piece is 1 MiB; the server may hold the spill
        // threshold, a few reads and chunks in flight. Other tests of this
        // binary run beside it, so the bound is loose but far below 64 MiB.
        let grown = peak.saturating_sub(before);
        assert!(grown < 48 * 1024, "{mode:?}: RSS grew by {grown} KiB");
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A streaming handler that answers before reading (here: a refusal) gets
/// its reply sent only after the rest of the message was drained; the
/// session goes on in sync.
#[tokio::test]
async fn an_early_answer_is_sent_after_the_message_is_drained() {
    let _shared = SERIAL.read().await;
    let spill_dir = tempfile::tempdir().unwrap();
    let service = service_fn(|ctx: Context| async move {
        drop(ctx);
        Err::<Reply, BoxError>(Box::new(Reply::new(550, (5, 7, 1), "Not for you")))
    });
    let server = TestServer::serve(builder(Mode::Streaming, spill_dir.path()), service).await;
    let mut c = server.connect().await;
    session(&mut c).await;
    c.cmd("DATA").await.expect(354, "");
    let m = dot_stuff(&message(2 * 1024 * 1024, 5));
    let (head, tail) = m.split_at(m.len() / 2);
    send_pieces(&mut c, head).await;
    c.assert_silent(Duration::from_millis(300)).await;
    send_pieces(&mut c, tail).await;
    c.reply().await.expect(550, "5.7.1");
    c.cmd("NOOP").await.expect(250, "");
    c.cmd("QUIT").await.expect(221, "");
    assert_eq!(std::fs::read_dir(spill_dir.path()).unwrap().count(), 0);
}

/// The socket is not read faster than the handler consumes: while the
/// handler waits, the client's writes stall; once it reads, all arrives.
#[tokio::test]
async fn a_slow_streaming_handler_holds_the_client_back() {
    let _shared = SERIAL.read().await;
    let spill_dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let log = Log::default();
    let (g, l) = (gate.clone(), log.clone());
    let service = service_fn(move |ctx: Context| {
        let (g, l) = (g.clone(), l.clone());
        async move {
            let _permit = g.acquire().await?;
            read_all(ctx, l).await
        }
    });
    let server = TestServer::serve(builder(Mode::Streaming, spill_dir.path()), service).await;
    let mut c = server.connect().await;
    session(&mut c).await;
    c.cmd("DATA").await.expect(354, "");
    let m = message(20 * 1024 * 1024, 6);
    let wire = dot_stuff(&m);
    let mut c = c;
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(1 << 20) {
            c.send(piece).await;
        }
        c
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !writer.is_finished(),
        "20 MiB were taken while the handler read nothing"
    );
    gate.add_permits(1);
    let mut c = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the handler reads: the client gets through")
        .unwrap();
    c.reply().await.expect(250, "");
    let seen = log.wait_for(1).await;
    assert_eq!(seen[0].result.as_deref(), Ok(&m[..]));
    c.cmd("QUIT").await.expect(221, "");
    assert_eq!(std::fs::read_dir(spill_dir.path()).unwrap().count(), 0);
}

/// A client that goes away mid-message: a streaming handler's body ends in
/// an error (never a clean end), a spill file is removed.
#[tokio::test]
async fn a_client_gone_mid_message_is_an_error_and_leaves_no_file() {
    let _shared = SERIAL.read().await;
    for mode in MODES {
        let s = start(mode, |b| b).await;
        let mut c = s.server.connect().await;
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        send_pieces(&mut c, &message(1024 * 1024, 7)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
        if mode == Mode::Streaming {
            let seen = s.log.wait_for(1).await;
            assert_eq!(seen[0].result, Err("Aborted".into()));
        }
        s.assert_no_temp_files().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(s.log.all().iter().all(|s| s.result.is_err()));
    }
}

/// Whether spilled, the bytes read, the parsed subject.
type SpilledSeen = (bool, Vec<u8>, Option<String>);

/// The buffered handler sees a complete spilled body that layers can still
/// rewrite (prepend) and parse.
#[tokio::test]
async fn a_spilled_body_can_be_prepended_to_and_parsed() {
    let _shared = SERIAL.read().await;
    let spill_dir = tempfile::tempdir().unwrap();
    let out: Arc<Mutex<Option<SpilledSeen>>> = Arc::default();
    let o = out.clone();
    let service = service_fn(move |mut ctx: Context| {
        let o = o.clone();
        async move {
            ctx.prepend(b"X-Seen: yes\r\n");
            let subject = ctx.parse()?.subject().map(str::to_owned);
            let bytes = ctx.body().bytes().await?;
            *o.lock().unwrap() = Some((ctx.body().is_spilled(), bytes.to_vec(), subject));
            Ok::<_, BoxError>(())
        }
    });
    let server = TestServer::serve(builder(Mode::Buffered, spill_dir.path()), service).await;
    let mut c = server.connect().await;
    session(&mut c).await;
    c.cmd("DATA").await.expect(354, "");
    let m = message(500 * 1024, 9);
    c.send(dot_stuff(&m)).await;
    c.reply().await.expect(250, "");
    let (spilled, bytes, subject) = out.lock().unwrap().clone().unwrap();
    assert!(spilled);
    assert_eq!(&bytes[..13], b"X-Seen: yes\r\n");
    assert_eq!(&bytes[13..], &m[..]);
    assert_eq!(subject.as_deref(), Some("test 9"));
    c.cmd("QUIT").await.expect(221, "");
    step(async {
        while std::fs::read_dir(spill_dir.path()).unwrap().count() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The `.smtpsrv-*` files in `dir`, sorted.
fn spill_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".smtpsrv-"))
        .collect();
    names.sort();
    names
}

/// A crash leaves spill files behind: the next server to start with that
/// directory removes those of dead processes, and only those (other servers
/// may share the directory, the system's temporary one by default).
#[tokio::test]
async fn spill_files_left_by_a_dead_process_are_removed_at_start() {
    let _shared = SERIAL.read().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!(".smtpsrv-{dead}-Ab12Cd");
    let live = ".smtpsrv-1-Ef34Gh".to_owned(); // pid 1 outlives the test
    let own = format!(".smtpsrv-{}-Ij56Kl", std::process::id());
    let kept_anyway = [".smtpsrv-notapid", "notes.txt"];
    for name in [&stale, &live, &own]
        .into_iter()
        .map(String::as_str)
        .chain(kept_anyway)
    {
        std::fs::write(dir.path().join(name), b"left behind").unwrap();
    }
    std::fs::create_dir(dir.path().join(format!(".smtpsrv-{dead}-dir"))).unwrap();

    let log = Log::default();
    let l = log.clone();
    let service = service_fn(move |ctx: Context| read_all(ctx, l.clone()));
    let server = TestServer::serve(builder(Mode::Buffered, dir.path()), service).await;
    let mut expected = vec![
        format!(".smtpsrv-{dead}-dir"),
        live.clone(),
        own.clone(),
        kept_anyway[0].to_owned(),
    ];
    expected.sort();
    // A reused pid would keep the file: only then may it stay.
    if !Path::new(&format!("/proc/{dead}")).exists() {
        assert_eq!(spill_names(dir.path()), expected, "only the dead one goes");
    }
    assert!(dir.path().join("notes.txt").exists());

    // The server's own spill files come and go with their messages.
    let mut c = server.connect().await;
    session(&mut c).await;
    c.cmd("DATA").await.expect(354, "");
    let m = message(300 * 1024, 10);
    c.send(dot_stuff(&m)).await;
    c.reply().await.expect(250, "");
    let seen = log.wait_for(1).await;
    assert!(seen[0].spilled);
    assert_eq!(seen[0].result.as_deref(), Ok(&m[..]));
    c.cmd("QUIT").await.expect(221, "");
    step(async {
        while spill_names(dir.path()).len() > expected.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(dir.path().join(&own).exists() && dir.path().join(&live).exists());
}

/// A message past the spill threshold with a bare LF and a bare CR deep in
/// it (so the spilled and streamed paths are the ones that see them): the
/// default policy drains it with 550 (a streaming handler reads an error,
/// never an end), the session stays in sync; under `Normalize` both become
/// CRLF and the message is accepted, the same in both modes.
#[tokio::test]
async fn bare_line_endings_in_a_large_message_in_both_modes() {
    let _shared = SERIAL.read().await;
    let mut m = message(100 * 1024, 11);
    m.extend_from_slice(b"a bare\nLF and a bare\rCR inside\r\n");
    m.extend_from_slice(&message(50 * 1024, 12));
    let normalized = {
        let mut n = message(100 * 1024, 11);
        n.extend_from_slice(b"a bare\r\nLF and a bare\r\nCR inside\r\n");
        n.extend_from_slice(&message(50 * 1024, 12));
        n
    };
    for mode in MODES {
        let s = start(mode, |b| b).await;
        let mut c = s.server.connect().await;
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        send_pieces(&mut c, &dot_stuff(&m)).await;
        c.reply().await.expect(550, "5.5.2");
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        let good = message(70 * 1024, 13);
        c.send(dot_stuff(&good)).await;
        c.reply().await.expect(250, "");
        let seen = s
            .log
            .wait_for(if mode == Mode::Streaming { 2 } else { 1 })
            .await;
        if mode == Mode::Streaming {
            assert_eq!(seen[0].result, Err("BareLineEnding".into()));
        }
        assert_eq!(seen.last().unwrap().result.as_deref(), Ok(&good[..]));
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;

        let s = start(mode, |b| b.line_endings(LineEndings::Normalize)).await;
        let mut c = s.server.connect().await;
        session(&mut c).await;
        c.cmd("DATA").await.expect(354, "");
        send_pieces(&mut c, &dot_stuff(&m)).await;
        c.reply().await.expect(250, "");
        let seen = s.log.wait_for(1).await;
        assert_eq!(seen[0].result.as_deref(), Ok(&normalized[..]), "{mode:?}");
        assert_eq!(seen[0].spilled, mode == Mode::Buffered);
        c.cmd("QUIT").await.expect(221, "");
        s.assert_no_temp_files().await;
    }
}

/// Peak of `rss_kib` sampled every 10 ms on a thread of its own (the
/// runtime's threads are busy) until `stop`.
fn sample_peak_rss(stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        // Bounded: at most 10 minutes of samples, stopped long before.
        for _ in 0..60_000 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            peak = peak.max(rss_kib());
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// 50 sessions each sending a 20 MiB message at once to a streaming server
/// (1000 MiB in all): every message arrives whole, and the process's RSS
/// (server and clients share it; the clients send one shared 20 MiB buffer,
/// allocated before the baseline) grows by less than 64 MiB. A streaming
/// connection holds its read buffer (reads of at most 256 KiB) and two
/// chunks in flight, about 1 MiB at worst: 50 MiB for 50; buffered, the
/// same load would hold the whole 1000 MiB.
#[tokio::test]
async fn fifty_concurrent_20_mib_messages_stream_in_bounded_memory() {
    let _alone = SERIAL.write().await;
    const SESSIONS: usize = 50;
    const SIZE: usize = 20 * 1024 * 1024;
    let s = start_counting(Mode::Streaming, |b| b, true).await;
    let mut m = b"Subject: big\r\n\r\n".to_vec();
    let line = [b'y'; 1022];
    while m.len() < SIZE {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    let mut wire = m.clone();
    wire.extend_from_slice(b".\r\n");
    let wire = Arc::new(wire);
    let before = rss_kib();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_peak_rss(stop.clone());
    let started = std::time::Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..SESSIONS {
        let mut c = s.server.connect().await;
        let wire = wire.clone();
        clients.spawn(async move {
            session(&mut c).await;
            c.cmd("DATA").await.expect(354, "");
            for piece in wire.chunks(256 * 1024) {
                c.send(piece).await;
            }
            c.reply().await.expect(250, "");
            c.cmd("QUIT").await.expect(221, "");
        });
    }
    let all_done = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
    })
    .await;
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    all_done.expect("50 x 20 MiB within 5 minutes");
    let seen = s.log.wait_for(SESSIONS).await;
    assert_eq!(seen.len(), SESSIONS);
    let whole = m.len().to_string().into_bytes();
    assert!(
        seen.iter()
            .all(|x| x.streaming && x.result.as_deref() == Ok(&whole[..])),
        "every message whole and streamed"
    );
    let grown = peak.saturating_sub(before);
    eprintln!(
        "50 x 20 MiB streamed in {elapsed:?}: RSS {before} KiB before, peak {peak} KiB (+{grown} KiB)"
    );
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    s.assert_no_temp_files().await;
}

//! What one message costs, counted rather than timed: heap allocations per
//! message (a counting global allocator) and, under callgrind, instructions.
//! Counts do not move with the machine's load, so before/after figures are
//! comparable across runs.
//!
//! ```sh
//! cargo bench --bench per_message                  # both modes, 20,000 messages
//! target/release/deps/per_message-* sans-io 2000    # one mode, N messages
//! target/release/deps/per_message-* server 2000 --log
//! target/release/deps/per_message-* server 2000 --metrics
//! ```
//!
//! - `sans-io`: `smtp-source -d`'s transaction (MAIL, RCPT, DATA, 10 KiB
//!   body, each in its own read) through the codec and the session.
//! - `server`: the same conversation over 127.0.0.1 against a real
//!   [`smtpsrv::Server`] on a current-thread runtime with a discarding
//!   handler; only the server thread's allocations are counted. `--log`
//!   installs what `mailsink` installs (a `fmt` subscriber at `info`);
//!   `--metrics` what `mailsink --metrics` adds (the Prometheus recorder,
//!   its connection observer and the `MetricsLayer` on the handler).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[path = "support/transaction.rs"]
mod transaction;

use smtpsrv_middleware::metrics::{Metrics, MetricsLayer};
use transaction::{Transaction, Wire};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static REALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            REALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Counts {
    allocations: u64,
    reallocations: u64,
    bytes: u64,
}

fn counts() -> Counts {
    Counts {
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
        reallocations: REALLOCATIONS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

fn report(mode: &str, messages: u64, before: Counts, after: Counts) {
    let per = |a: u64, b: u64| (b - a) as f64 / messages as f64;
    println!(
        "{mode}: {:.2} allocations + {:.2} reallocations per message ({:.0} bytes allocated), {messages} messages",
        per(before.allocations, after.allocations),
        per(before.reallocations, after.reallocations),
        per(before.bytes, after.bytes),
    );
}

const BODY: usize = 10 * 1024;

fn sans_io(messages: u64) {
    let t = Transaction::new(BODY);
    let mut wire = Wire::new();
    // Warm up: buffers reach their steady size.
    for _ in 0..10 {
        wire.transaction(&t);
    }
    COUNTED.set(true);
    let before = counts();
    for _ in 0..messages {
        wire.transaction(&t);
    }
    let after = counts();
    COUNTED.set(false);
    report("sans-io (codec + session)", messages, before, after);
}

fn server(messages: u64, log: bool, metrics: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let server = std::thread::spawn(move || {
        let _log = log.then(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::set_default(subscriber)
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Installed before counting starts, as mailsink does at start-up.
        let recorder = metrics.then(|| Metrics::install().expect("the only recorder"));
        COUNTED.set(true);
        runtime.block_on(async move {
            let mut builder = smtpsrv::Server::builder().hostname("mx.example");
            if let Some(recorder) = &recorder {
                builder = builder.observer(recorder.observer());
            }
            let server = builder.build().bind(addr).await.expect("bind");
            let handler = tower::service_fn(|_ctx: smtpsrv::Context| async {
                Ok::<_, smtpsrv::BoxError>(())
            });
            let stop = async {
                // Ends when the client closes the control connection.
                let _ = tokio::time::sleep(Duration::from_secs(3600)).await;
            };
            let limit = Duration::from_secs(600);
            // Without metrics no layer at all, so the figure stays the one
            // measured before the metrics existed.
            if recorder.is_some() {
                let handler = tower::ServiceBuilder::new()
                    .layer(MetricsLayer::new())
                    .service(handler);
                let serving = server.serve(handler).with_graceful_shutdown(stop);
                let _ = tokio::time::timeout(limit, serving).await;
            } else {
                let serving = server.serve(handler).with_graceful_shutdown(stop);
                let _ = tokio::time::timeout(limit, serving).await;
            }
        });
    });
    let mut stream = None;
    for _ in 0..100 {
        match TcpStream::connect(addr) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let stream = stream.expect("server did not start");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    let mut expect = |reader: &mut BufReader<TcpStream>, code: &str| loop {
        line.clear();
        reader.read_line(&mut line).expect("reply");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect(&mut reader, "220");
    writer.write_all(b"EHLO client.example\r\n").unwrap();
    expect(&mut reader, "250");
    let t = Transaction::new(BODY);
    let mut send = |n: u64, reader: &mut BufReader<TcpStream>| {
        for _ in 0..n {
            for (write, code) in t.writes.iter().zip(["250", "250", "354", "250"]) {
                writer.write_all(write).unwrap();
                expect(reader, code);
            }
        }
    };
    send(10, &mut reader);
    let before = counts();
    send(messages, &mut reader);
    let after = counts();
    report(
        match (log, metrics) {
            (false, false) => "server over 127.0.0.1, no subscriber",
            (true, false) => "server over 127.0.0.1, fmt subscriber at info",
            (false, true) => "server over 127.0.0.1, metrics (recorder, observer, layer)",
            (true, true) => "server over 127.0.0.1, fmt subscriber at info and metrics",
        },
        messages,
        before,
        after,
    );
    // The server thread is left running; the process exits with main.
    drop(server);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let log = args.iter().any(|a| a == "--log");
    let metrics = args.iter().any(|a| a == "--metrics");
    let mut args = args.iter().filter(|a| !a.starts_with("--"));
    let mode = args.next().map(String::as_str);
    let messages: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    match mode {
        Some("sans-io") => sans_io(messages),
        Some("server") => server(messages, log, metrics),
        None => {
            sans_io(messages);
            server(messages, false, false);
            server(messages, true, false);
            // Last: the recorder, once installed, stays for the process.
            server(messages, false, true);
        }
        Some(other) => {
            eprintln!("unknown mode {other}: sans-io | server [N] [--log] [--metrics]");
            std::process::exit(2);
        }
    }
}

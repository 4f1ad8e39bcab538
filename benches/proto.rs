//! Micro-benchmarks of the hot paths: command parsing, DATA decoding with
//! dot-unstuffing, reply encoding, and one whole transaction through the
//! codec and the session. `cargo bench --bench proto`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use smtpsrv::proto::{Command, DataReceiver, LineEndings, Reply};

#[path = "support/transaction.rs"]
mod transaction;

fn commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_parse");
    for (name, line) in [
        ("ehlo", &b"EHLO client.example.org"[..]),
        (
            "mail",
            b"MAIL FROM:<sender@example.org> SIZE=10240 BODY=8BITMIME",
        ),
        ("rcpt", b"RCPT TO:<recipient@example.net>"),
        ("data", b"DATA"),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| b.iter(|| Command::parse(black_box(line))));
    }
    g.finish();
}

/// A message of `size` octets of 76-column text lines; every `dot_every`-th
/// line starts with a (stuffed) dot.
fn message(size: usize, dot_every: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size + 80);
    let mut n = 0;
    while m.len() < size {
        if dot_every > 0 && n % dot_every == 0 {
            m.extend_from_slice(b"..");
        }
        m.extend_from_slice(&[b'x'; 74]);
        m.extend_from_slice(b"\r\n");
        n += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn data(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_decode");
    for (name, dot_every) in [("plain_10MiB", 0), ("dots_10MiB", 2)] {
        let input = message(10 << 20, dot_every);
        g.throughput(Throughput::Bytes(input.len() as u64));
        // The whole message already buffered (its copy is set up untimed).
        g.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&input[..]),
                |mut src| {
                    let mut out = BytesMut::with_capacity(input.len());
                    let mut rx = DataReceiver::new(usize::MAX, LineEndings::Reject);
                    black_box(rx.feed(&mut src, &mut out));
                    out
                },
                BatchSize::LargeInput,
            )
        });
        // The same message arriving in 64 KiB reads, as from a socket.
        g.bench_function(format!("{name}_64KiB_reads"), |b| {
            b.iter(|| {
                let mut src = BytesMut::new();
                let mut out = BytesMut::with_capacity(input.len());
                let mut rx = DataReceiver::new(usize::MAX, LineEndings::Reject);
                for chunk in input.chunks(64 * 1024) {
                    src.extend_from_slice(chunk);
                    if rx.feed(&mut src, &mut out).is_some() {
                        break;
                    }
                }
                out
            })
        });
    }
    g.finish();
}

fn replies(c: &mut Criterion) {
    let ok = Reply::ok();
    let ehlo = Reply::plain(
        250,
        "mx.example.com Hello client\nPIPELINING\nSIZE 26214400\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
    );
    let mut buf = BytesMut::with_capacity(4096);
    c.bench_function("reply_encode/ok", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&ok).encode(&mut buf);
        })
    });
    c.bench_function("reply_encode/ehlo", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&ehlo).encode(&mut buf);
        })
    });
}

/// `smtp-source -d`'s transaction (MAIL, RCPT, DATA, a 10 KiB body, each
/// in a read of its own) through codec and session, replies encoded: what a
/// message costs us before the socket and the handler.
fn transactions(c: &mut Criterion) {
    let t = transaction::Transaction::new(10 * 1024);
    let mut wire = transaction::Wire::new();
    let mut g = c.benchmark_group("transaction");
    g.throughput(Throughput::Elements(1));
    g.bench_function("smtp_source_10KiB", |b| {
        b.iter(|| black_box(wire.transaction(black_box(&t))))
    });
    g.finish();
}

criterion_group!(benches, commands, data, replies, transactions);
criterion_main!(benches);

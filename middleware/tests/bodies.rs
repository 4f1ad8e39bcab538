//! The message layers on every body shape, over TCP with a real client
//! (lettre) and DNS from the loopback test server: a message spilled to
//! disk and a message on a streaming server go through the size limit,
//! `Received-SPF`, DKIM and DMARC (with `Authentication-Results`), get the
//! same verdicts and headers as in memory, and leave no temporary file.

#[path = "../src/test_support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtpsrv::{BoxError, Context, Reply, Server};
use smtpsrv_middleware::dkim::{DkimLayer, DkimOutcome};
use smtpsrv_middleware::dmarc::{DmarcLayer, DmarcOutcome};
use smtpsrv_middleware::size::SizeLimitLayer;
use smtpsrv_middleware::spf::SpfLayer;
use smtpsrv_middleware::trace::TraceLayer;
use support::{DkimKey, dns::Zone, resolver};
use tokio::sync::mpsc;
use tower::ServiceBuilder;

/// Spill threshold of the buffered server: every test message is larger.
const THRESHOLD: usize = 1024;
/// The policy limit of the size layer (below the server's 25 MiB).
const POLICY_LIMIT: usize = 64 * 1024;

/// What the handler saw of one message.
struct Seen {
    ctx: Context,
    bytes: bytes::Bytes,
    spilled: bool,
    streaming: bool,
}

fn zone(key: &DkimKey) -> Zone {
    let zone = Zone::new()
        .txt("example.org", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.example.org", "v=DMARC1; p=reject")
        .txt("other.example", "v=spf1 ip4:127.0.0.1 -all");
    key.publish(zone, "example.org", "s1")
}

/// Starts a server with the full message stack in front of a handler that
/// reads the body (whatever its shape) and hands what it saw to the test.
async fn start(
    key: &DkimKey,
    spill_dir: &Path,
    streaming: bool,
    with_auth_layers: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let dns = resolver(zone(key)).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(SizeLimitLayer::new(POLICY_LIMIT))
        .layer(SpfLayer::new(dns.clone()).received_spf("mx.test"))
        .option_layer(with_auth_layers.then(|| DkimLayer::new(dns.clone())))
        .option_layer(with_auth_layers.then(|| {
            DmarcLayer::new(dns.clone())
                .reject_on_policy()
                .authentication_results("mx.test")
        }))
        .service_fn(move |ctx: Context| {
            let tx = tx.clone();
            async move {
                let spilled = ctx.body().is_spilled();
                let streaming = ctx.body().is_streaming();
                // `?`: a body over the policy limit is a 552 from here.
                let bytes = ctx.body().bytes().await?;
                tx.send(Seen {
                    ctx,
                    bytes,
                    spilled,
                    streaming,
                })
                .map_err(|_| "receiver gone")?;
                Ok::<_, BoxError>(Reply::new(250, (2, 0, 0), "Queued"))
            }
        });
    let server = Server::builder()
        .hostname("mx.test")
        .spill_threshold(THRESHOLD)
        .spill_dir(spill_dir)
        .streaming(streaming)
        .build()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(async move { server.serve(handler).await });
    (addr, rx)
}

fn client(addr: SocketAddr) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .hello_name(ClientId::Domain("client.example.org".into()))
        .timeout(Some(Duration::from_secs(20)))
        .build()
}

fn envelope(from: &str) -> Envelope {
    Envelope::new(
        Some(from.parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap()
}

/// A message of about `kib` KiB, lines of varied content.
fn message(from: &str, kib: usize) -> String {
    let mut body = String::new();
    for i in 0..kib * 16 {
        // 64 octets a line.
        body.push_str(&format!("line {i:06} {}\r\n", "x".repeat(50)));
    }
    format!("From: {from}\r\nTo: bob@example.net\r\nSubject: Big\r\n\r\n{body}")
}

fn spill_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".smtpsrv-")
        })
        .count()
}

async fn refused(smtp: &AsyncSmtpTransport<Tokio1Executor>, from: &str, raw: &str) -> String {
    let err = smtp
        .send_raw(&envelope(from), raw.as_bytes())
        .await
        .unwrap_err();
    format!(
        "{} {err}",
        err.status().map(|c| c.to_string()).unwrap_or_default()
    )
}

/// The same DKIM/DMARC verdicts and headers as for a message in memory.
async fn auth_layers_judge_large_bodies(streaming: bool) {
    let key = DkimKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut seen) = start(&key, dir.path(), streaming, true).await;
    let smtp = client(addr);

    // Signed by example.org and aligned: accepted with every header on top.
    let original = message("Ann <ann@example.org>", 40);
    let signed = key.sign(&original, "example.org", "s1");
    let response = smtp
        .send_raw(&envelope("ann@example.org"), signed.as_bytes())
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    let got = seen.recv().await.unwrap();
    // Buffered: the body stayed on disk for the handler (the layers read it
    // asynchronously). Streaming: the layers read it to its end first.
    assert_eq!(got.spilled, !streaming);
    assert!(!got.streaming);
    assert!(got.ctx.extensions().get::<DkimOutcome>().unwrap().passed());
    assert!(got.ctx.extensions().get::<DmarcOutcome>().unwrap().passed());
    let text = std::str::from_utf8(&got.bytes).unwrap();
    let (headers, rest) = text.split_once("DKIM-Signature:").unwrap();
    assert!(
        headers.starts_with("Authentication-Results: mx.test;")
            && headers.contains("dkim=pass")
            && headers.contains("dmarc=pass")
            && headers.contains("Received-SPF: pass"),
        "{headers}"
    );
    // The client's bytes follow untouched (lettre adds one CRLF at the end).
    assert!(
        rest.ends_with(&format!(
            "{}\r\n",
            original.split_once("\r\n\r\n").unwrap().1
        )),
        "body changed"
    );
    assert_eq!(
        got.ctx.message().unwrap(),
        &got.bytes,
        "same bytes every way"
    );
    assert_eq!(spill_files(dir.path()), usize::from(!streaming));
    drop(got);
    assert_eq!(
        spill_files(dir.path()),
        0,
        "spill file outlived its message"
    );

    // The same message with one body line changed, from a sender whose SPF
    // passes for another domain: the body hash over the whole large body
    // fails, so DMARC (p=reject) refuses it.
    let tampered = signed.replacen("line 000500", "line 999999", 1);
    assert_ne!(tampered, signed);
    let err = refused(&smtp, "x@other.example", &tampered).await;
    assert!(
        err.starts_with("550") && err.contains("5.7.1") && err.contains("DMARC"),
        "{err}"
    );
    assert_eq!(spill_files(dir.path()), 0);

    // Over the policy limit (64 KiB) without a SIZE hint to refuse at MAIL:
    // 552, nothing handed on, no file left.
    let big = key.sign(&message("Ann <ann@example.org>", 100), "example.org", "s1");
    let err = refused(&smtp, "ann@example.org", &big).await;
    assert!(err.starts_with("552") && err.contains("5.3.4"), "{err}");
    assert!(seen.try_recv().is_err(), "nothing else reached the handler");

    // The session stays usable: the next message is accepted.
    smtp.send_raw(&envelope("ann@example.org"), signed.as_bytes())
        .await
        .unwrap();
    drop(seen.recv().await.unwrap());
    assert_eq!(spill_files(dir.path()), 0);
}

#[tokio::test]
async fn dkim_and_dmarc_verify_a_spilled_message() {
    auth_layers_judge_large_bodies(false).await;
}

#[tokio::test]
async fn dkim_and_dmarc_verify_a_message_on_a_streaming_server() {
    auth_layers_judge_large_bodies(true).await;
}

/// Without DKIM/DMARC, the header layers and the size limit leave a
/// streaming body streaming: the handler reads it as it arrives, with the
/// `Received-SPF` field first, and the limit cuts it at 64 KiB.
#[tokio::test]
async fn header_and_size_layers_keep_a_body_streaming() {
    let key = DkimKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut seen) = start(&key, dir.path(), true, false).await;
    let smtp = client(addr);

    let original = message("ann@example.org", 40);
    smtp.send_raw(&envelope("ann@example.org"), original.as_bytes())
        .await
        .unwrap();
    let got = seen.recv().await.unwrap();
    assert!(got.streaming && !got.spilled);
    let text = std::str::from_utf8(&got.bytes).unwrap();
    assert!(text.starts_with("Received-SPF: pass"), "{}", &text[..80]);
    assert!(text.ends_with(&format!("{original}\r\n")), "body changed");
    assert_eq!(got.ctx.size(), 0, "a streaming body's size is unknown");
    drop(got);

    let err = refused(&smtp, "ann@example.org", &message("ann@example.org", 100)).await;
    assert!(err.starts_with("552") && err.contains("5.3.4"), "{err}");
    assert!(seen.try_recv().is_err());
    assert_eq!(spill_files(dir.path()), 0, "streaming never spills");
}

//! A full stack of our layers, on the MAIL hook and around the message
//! handler, served over TCP and driven by a real client (lettre).

#[path = "../src/test_support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtpsrv::{BoxError, Context, MailFrom, Reply, Server};
use smtpsrv_middleware::dkim::{DkimLayer, DkimOutcome};
use smtpsrv_middleware::dmarc::{DmarcLayer, DmarcOutcome};
use smtpsrv_middleware::mail_auth::SpfResult;
use smtpsrv_middleware::mailable::MailableLayer;
use smtpsrv_middleware::rate_limit::{Quota, RateLimitLayer};
use smtpsrv_middleware::size::SizeLimitLayer;
use smtpsrv_middleware::spf::{SpfLayer, SpfOutcome};
use smtpsrv_middleware::trace::TraceLayer;
use support::{DkimKey, RawClient, dns::Zone, resolver};
use tokio::sync::mpsc;
use tower::ServiceBuilder;

fn zone(key: &DkimKey) -> Zone {
    let zone = Zone::new()
        .txt("example.org", "v=spf1 ip4:127.0.0.1 -all")
        .mx("example.org", 10, "mx.example.org")
        .txt("_dmarc.example.org", "v=DMARC1; p=reject")
        .txt("other.example", "v=spf1 ip4:127.0.0.1 -all")
        .mx("other.example", 10, "mx.other.example")
        .txt("spoof.example", "v=spf1 -all")
        .mx("spoof.example", 10, "mx.spoof.example")
        .mx("nullmx.example", 0, ".");
    key.publish(zone, "example.org", "s1")
}

/// Starts the server; returns its address and the messages it accepted.
async fn start(key: &DkimKey) -> (SocketAddr, mpsc::UnboundedReceiver<Context>) {
    let dns = resolver(zone(key)).await;
    let on_mail = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(RateLimitLayer::per_ip(Quota::per(6, Duration::from_secs(3600))).close_connection())
        .layer(MailableLayer::new(dns.clone()))
        .layer(
            SpfLayer::new(dns.clone())
                .hostname("mx.test")
                .reject_fail()
                .tempfail_temperror(),
        )
        .service_fn(|_: MailFrom| async { Ok::<_, BoxError>(Reply::ok()) });
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(SizeLimitLayer::new(4096))
        .layer(SpfLayer::new(dns.clone()).received_spf("mx.test"))
        .layer(DkimLayer::new(dns.clone()))
        .layer(
            DmarcLayer::new(dns)
                .reject_on_policy()
                .authentication_results("mx.test"),
        )
        .service_fn(move |ctx: Context| {
            let tx = tx.clone();
            async move {
                tx.send(ctx).map_err(|_| "receiver gone")?;
                Ok::<_, BoxError>(Reply::new(250, (2, 0, 0), "Queued"))
            }
        });
    let server = Server::builder()
        .hostname("mx.test")
        .on_mail(on_mail)
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
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn envelope(from: &str, to: &str) -> Envelope {
    Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap()
}

fn message(from: &str, body: &str) -> String {
    format!("From: {from}\r\nTo: bob@example.net\r\nSubject: Stack test\r\n\r\n{body}\r\n")
}

/// The error text of a refused send, with its code and enhanced status.
async fn refused(client: &AsyncSmtpTransport<Tokio1Executor>, env: &Envelope, raw: &str) -> String {
    let err = client.send_raw(env, raw.as_bytes()).await.unwrap_err();
    format!(
        "{} {err}",
        err.status().map(|c| c.to_string()).unwrap_or_default()
    )
}

#[tokio::test]
async fn layers_accept_and_refuse_over_tcp() {
    let key = DkimKey::generate();
    let (addr, mut accepted) = start(&key).await;
    let smtp = client(addr);

    // 1. Aligned SPF and DKIM: accepted, with our headers and outcomes.
    let signed = key.sign(
        &message("Ann <ann@example.org>", "Hello Bob."),
        "example.org",
        "s1",
    );
    let response = smtp
        .send_raw(
            &envelope("ann@example.org", "bob@example.net"),
            signed.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    let ctx = accepted.recv().await.unwrap();
    let spf = ctx.extensions().get::<SpfOutcome>().unwrap();
    assert_eq!(spf.result(), SpfResult::Pass);
    assert_eq!(spf.client_ip().to_string(), "127.0.0.1");
    assert_eq!(spf.helo(), "client.example.org");
    assert!(ctx.extensions().get::<DkimOutcome>().unwrap().passed());
    assert!(ctx.extensions().get::<DmarcOutcome>().unwrap().passed());
    let text = String::from_utf8(ctx.message().unwrap().to_vec()).unwrap();
    let (headers, rest) = text.split_once("DKIM-Signature:").unwrap();
    assert!(
        headers.starts_with("Authentication-Results: mx.test;"),
        "{headers}"
    );
    assert!(
        headers.contains("dkim=pass")
            && headers.contains("spf=pass")
            && headers.contains("dmarc=pass"),
        "{headers}"
    );
    assert!(headers.contains("Received-SPF: pass"), "{headers}");
    // The client's bytes follow untouched (lettre ends the data with one more CRLF).
    assert!(
        rest.ends_with("Subject: Stack test\r\n\r\nHello Bob.\r\n\r\n"),
        "{rest:?}"
    );

    // 2. At MAIL: a sender domain with Null MX, and one SPF refuses.
    let msg = message("x@nullmx.example", "hi");
    let err = refused(
        &smtp,
        &envelope("x@nullmx.example", "bob@example.net"),
        &msg,
    )
    .await;
    assert!(err.starts_with("550") && err.contains("5.7.27"), "{err}");
    let msg = message("x@spoof.example", "hi");
    let err = refused(&smtp, &envelope("x@spoof.example", "bob@example.net"), &msg).await;
    assert!(err.starts_with("550") && err.contains("5.7.23"), "{err}");

    // 3. At DATA: DMARC reject (SPF passes for another domain, no DKIM).
    let spoofed = message("CEO <ceo@example.org>", "Wire the money.");
    let err = refused(
        &smtp,
        &envelope("x@other.example", "bob@example.net"),
        &spoofed,
    )
    .await;
    assert!(
        err.starts_with("550") && err.contains("5.7.1") && err.contains("DMARC"),
        "{err}"
    );

    // 4. At DATA: over the policy size.
    let big = message("ann@example.org", &"x".repeat(5000));
    let err = refused(&smtp, &envelope("ann@example.org", "bob@example.net"), &big).await;
    assert!(err.starts_with("552") && err.contains("5.3.4"), "{err}");
    assert!(accepted.try_recv().is_err(), "nothing else was accepted");

    // 5. The sixth MAIL from this IP in the hour: 421, and the server closes.
    let (mut raw, greeting) = RawClient::connect(addr).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(raw.send("EHLO client.example.org").await.starts_with("250"));
    assert!(
        raw.send("MAIL FROM:<ann@example.org>")
            .await
            .starts_with("250")
    );
    assert!(raw.send("RSET").await.starts_with("250"));
    let limited = raw.send("MAIL FROM:<ann@example.org>").await;
    assert!(limited.starts_with("421 4.7.0"), "{limited}");
    assert!(raw.is_closed().await);
}

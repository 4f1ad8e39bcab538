//! The cluster pieces against the real engines: RedisStore with
//! redis-server, the JetStream hand-off with nats-server, the consumer's
//! exactly-once delivery. Every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smtpsrv::{Address, Context, Envelope, Recipient, Reply, SessionInfo};
use smtpsrv_cluster::consumer::{self, ConsumerConfig, Delivered, IdMaildir};
use smtpsrv_cluster::handoff::{self, header};
use smtpsrv_cluster::{JetStreamHandoff, RedisStore};
use smtpsrv_middleware::rate_limit::{
    Decision, Quota, RateLimitLayer, RateLimitStore, StoreFailurePolicy,
};
use support::*;
use tower::{Layer, Service, ServiceExt};

const BOUND: Duration = Duration::from_secs(30);

fn connect_req(ip: &str) -> smtpsrv::Connect {
    let peer: SocketAddr = format!("{ip}:40000").parse().unwrap();
    smtpsrv::Connect::new(Arc::new(SessionInfo::new(
        peer,
        "127.0.0.1:25".parse().unwrap(),
    )))
}

async fn reply<S, R>(svc: &mut S, req: R) -> Reply
where
    S: Service<R, Response = Reply, Error = smtpsrv::BoxError>,
{
    match tokio::time::timeout(BOUND, svc.ready().await.unwrap().call(req))
        .await
        .expect("the layer never hangs")
    {
        Ok(r) => r,
        Err(e) => smtpsrv::error_reply(e),
    }
}

fn ok_service() -> tower::util::BoxCloneSyncService<smtpsrv::Connect, Reply, smtpsrv::BoxError> {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|_: smtpsrv::Connect| async {
        Ok::<_, smtpsrv::BoxError>(Reply::ok())
    }))
}

#[tokio::test]
async fn redis_bucket_is_shared_atomic_and_expires() {
    let redis = Redis::start();
    // Two stores, two connections: two instances of a cluster.
    let a = RedisStore::open(&redis.url()).unwrap();
    let b = RedisStore::open(&redis.url()).unwrap();
    let quota = Quota::per(50, Duration::from_secs(3600));
    let now = tokio::time::Instant::now();
    let mut checks = Vec::new();
    for i in 0..400 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        checks.push(tokio::spawn(async move {
            store.check("ip:192.0.2.7", quota, 1, now).await
        }));
    }
    let mut allowed = 0;
    for c in checks {
        match c.await.unwrap().expect("redis answers") {
            Decision::Allow => allowed += 1,
            Decision::Deny { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(72));
            }
        }
    }
    assert_eq!(allowed, 50, "racing instances share one bucket of 50");

    // The key expires when the bucket would be full again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(a.redis_key("ip:192.0.2.7"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "pttl {ttl}");
    // A fast quota: full again after ~100 ms, and the key is gone.
    let fast = Quota::per(10, Duration::from_millis(100));
    assert_eq!(
        a.check("ip:fast", fast, 1, now).await.unwrap(),
        Decision::Allow
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(a.redis_key("ip:fast"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a full bucket leaves no key behind");
}

#[tokio::test]
async fn redis_down_follows_the_policy_without_hanging_and_recovers() {
    let mut redis = Redis::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let quota = Quota::per(2, Duration::from_secs(3600));
    let open_layer = RateLimitLayer::per_ip(quota)
        .store(store.clone())
        .namespace("open");
    let failures = open_layer.store_failures();
    let mut open = open_layer.layer(ok_service());
    let mut refuse = RateLimitLayer::per_ip(quota)
        .store(store.clone())
        .namespace("refuse")
        .on_store_failure(StoreFailurePolicy::Refuse)
        .layer(ok_service());
    assert_eq!(reply(&mut open, connect_req("192.0.2.1")).await.code(), 250);
    assert_eq!(reply(&mut open, connect_req("192.0.2.1")).await.code(), 250);
    assert_eq!(reply(&mut open, connect_req("192.0.2.1")).await.code(), 450);
    assert_eq!(failures.get(), 0);

    redis.stop();
    for _ in 0..3 {
        let start = Instant::now();
        let r = reply(&mut open, connect_req("192.0.2.1")).await;
        assert_eq!(r.code(), 250, "fail open: {r:?}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        let start = Instant::now();
        let r = reply(&mut refuse, connect_req("192.0.2.1")).await;
        assert_eq!(
            (r.code(), r.status().map(|e| e.to_string())),
            (451, Some("4.7.0".into())),
            "{r:?}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(failures.get(), 3);

    // Back up (empty: no persistence): the store reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + BOUND;
    loop {
        if store
            .check("probe", quota, 1, tokio::time::Instant::now())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = failures.get();
    assert_eq!(reply(&mut open, connect_req("192.0.2.1")).await.code(), 250);
    assert_eq!(reply(&mut open, connect_req("192.0.2.1")).await.code(), 250);
    assert_eq!(
        reply(&mut open, connect_req("192.0.2.1")).await.code(),
        450,
        "limits again"
    );
    assert_eq!(failures.get(), before);
}

fn message_ctx(body: Bytes, rcpts: &[&str]) -> Context {
    let mut session = SessionInfo::new(
        "192.0.2.9:5555".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    );
    session = session.with_greeting(smtpsrv::Greeting::Ehlo("client.example".into()));
    let mut env = Envelope::new(
        Some(Address::parse("ann@example.org").unwrap()),
        Default::default(),
    );
    for r in rcpts {
        env = env.with_recipient(Recipient::new(
            Address::parse(r).unwrap(),
            Default::default(),
        ));
    }
    Context::new(Arc::new(session), env, body)
}

#[tokio::test]
async fn handoff_250_only_after_the_ack_dedups_by_id_and_carries_big_messages() {
    let nats = Nats::start();
    let client = nats_client(&nats.url()).await;
    let mut handoff = JetStreamHandoff::new(client.clone(), "smtp.in")
        .hostname("mx1.test")
        .ack_timeout(Duration::from_secs(2));
    handoff::ensure_stream(handoff.jetstream(), "SMTP", "smtp.in")
        .await
        .unwrap();
    let body = Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n");
    let ctx = message_ctx(body.clone(), &["bob@example.com", "eve@example.com"]);
    let id = handoff.message_id(&ctx);
    let r = handoff
        .ready()
        .await
        .unwrap()
        .call(ctx.clone())
        .await
        .unwrap();
    assert_eq!(r.code(), 250);
    assert!(r.text().contains(&id), "{r:?}");
    // A retried publish of the same message: acked, stored once.
    let r = handoff.ready().await.unwrap().call(ctx).await.unwrap();
    assert_eq!(r.code(), 250);

    // 5 MiB: over NATS's default 1 MiB max_payload, under the raised one.
    let big: Bytes = {
        let mut v = b"Subject: big\r\n\r\n".to_vec();
        while v.len() < 5 << 20 {
            v.extend_from_slice(&[b'x'; 998]);
            v.extend_from_slice(b"\r\n");
        }
        v.into()
    };
    let big_ctx = message_ctx(big.clone(), &["bob@example.com"]);
    let r = handoff.ready().await.unwrap().call(big_ctx).await.unwrap();
    assert_eq!(r.code(), 250);
    assert!(handoff.max_message_bytes(25 << 20) >= 25 << 20);

    let js = async_nats::jetstream::new(client.clone());
    let msgs = stream_messages(&js, "SMTP").await;
    assert_eq!(msgs.len(), 2, "the duplicate was dropped by Nats-Msg-Id");
    let first = &msgs[0];
    assert_eq!(first.payload, body, "payload is the raw message");
    let h = &first.headers;
    assert_eq!(h.get(header::MESSAGE_ID).unwrap().as_str(), id);
    assert_eq!(
        h.get(header::MAIL_FROM).unwrap().as_str(),
        "<ann@example.org>"
    );
    assert_eq!(
        h.get(header::RCPT_TO).unwrap().as_str(),
        "<bob@example.com>, <eve@example.com>"
    );
    assert_eq!(h.get(header::PEER).unwrap().as_str(), "192.0.2.9:5555");
    assert_eq!(h.get(header::HELO).unwrap().as_str(), "client.example");
    assert_eq!(h.get(header::HOST).unwrap().as_str(), "mx1.test");
    assert_eq!(msgs[1].payload, big);
}

#[tokio::test]
async fn handoff_answers_451_while_nats_is_down_then_recovers() {
    let mut nats = Nats::start();
    let client = nats_client(&nats.url()).await;
    let mut handoff =
        JetStreamHandoff::new(client.clone(), "smtp.in").ack_timeout(Duration::from_millis(800));
    handoff::ensure_stream(handoff.jetstream(), "SMTP", "smtp.in")
        .await
        .unwrap();
    nats.stop();
    for _ in 0..3 {
        let start = Instant::now();
        let ctx = message_ctx(
            Bytes::from_static(b"Subject: x\r\n\r\nx\r\n"),
            &["b@example.com"],
        );
        let err = handoff.ready().await.unwrap().call(ctx).await.unwrap_err();
        let r = smtpsrv::error_reply(err);
        assert_eq!(
            (r.code(), r.status().map(|e| e.to_string())),
            (451, Some("4.3.0".into())),
            "{r:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    nats.restart();
    let deadline = Instant::now() + BOUND;
    let mut accepted = None;
    while Instant::now() < deadline {
        let ctx = message_ctx(
            Bytes::from_static(b"Subject: y\r\n\r\ny\r\n"),
            &["b@example.com"],
        );
        let id = handoff.message_id(&ctx);
        if let Ok(r) = handoff.ready().await.unwrap().call(ctx).await {
            assert_eq!(r.code(), 250);
            accepted = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = accepted.expect("recovered after NATS came back");
    let js = async_nats::jetstream::new(client);
    let msgs = stream_messages(&js, "SMTP").await;
    assert!(
        msgs.iter()
            .any(|m| m.headers.get(header::MESSAGE_ID).map(|v| v.as_str()) == Some(id.as_str())),
        "the acknowledged message is in the stream (file storage survived the restart)"
    );
}

#[tokio::test]
async fn consumer_restarted_mid_stream_delivers_each_message_exactly_once() {
    let nats = Nats::start();
    let client = nats_client(&nats.url()).await;
    let mut handoff = JetStreamHandoff::new(client.clone(), "smtp.in");
    handoff::ensure_stream(handoff.jetstream(), "SMTP", "smtp.in")
        .await
        .unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..300 {
        let ctx = message_ctx(
            Bytes::from(format!("Subject: {i}\r\n\r\nbody {i}\r\n")),
            &["bob@example.com"],
        );
        ids.insert(IdMaildir::file_name(&handoff.message_id(&ctx)));
        handoff.ready().await.unwrap().call(ctx).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let maildir = Arc::new(IdMaildir::create(dir.path()).unwrap());
    let js = async_nats::jetstream::new(client.clone());
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let count = |dir: &std::path::Path| std::fs::read_dir(dir.join("new")).unwrap().count();
    // First run: stopped abruptly after part of the stream.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn({
        let js = js.clone();
        let config = config.clone();
        let maildir = Arc::clone(&maildir);
        async move {
            consumer::run(&js, &config, maildir, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let deadline = Instant::now() + BOUND;
    while count(dir.path()) < 50 {
        assert!(Instant::now() < deadline, "consumer made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.abort();
    drop(stop_tx);
    // A message stored but never acked, as when the consumer dies between
    // the two: redelivered, found already there.
    let first = ids.iter().next().unwrap().clone();
    assert_eq!(
        maildir.deliver(&first, b"", b"again").unwrap(),
        Delivered::AlreadyThere
    );
    // Second run until everything is there, then a little longer so that
    // redeliveries (ack_wait 1 s) would show up as extra files.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn({
        let js = js.clone();
        let maildir = Arc::clone(&maildir);
        async move {
            consumer::run(&js, &config, maildir, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    while count(dir.path()) < ids.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {}",
            count(dir.path()),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(());
    tokio::time::timeout(BOUND, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let names: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path().join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ids, "every message exactly once, by id");
    let one = std::fs::read(dir.path().join("new").join(&first)).unwrap();
    assert!(one.starts_with(
        b"Return-Path: <ann@example.org>\r\nReceived: from client.example ([192.0.2.9])"
    ));
    assert!(!one.ends_with(b"again"));
}
